"""Agents that search compression policies with jpq-env, and the ``jpq`` command line."""
