"""Benchmark scripts: run each as ``python -m benchmarks.NAME``."""
