"""Evaluating policies on a pool of Ray actors: the accuracy proxy across GPUs and machines.

Needs the optional extra ``jpq_env[ray]`` (``ray[default]``). Importing this module imports Ray;
nothing else in ``jpq_env`` does, so the default in-process path never pays for it.

``RayEvaluator`` starts ``workers`` actors. Each builds the task from its name (a built-in name or
``package.module:factory``: nothing heavy is pickled) and a ``LocalEvaluator`` on it once, on its
own GPU when ``num_gpus`` is set, then scores the policies sent to it as JSON dicts. It is an
``Evaluator`` (``fp32_accuracy``, ``accuracy``) with batch methods, ``accuracy_many`` and
``iter_accuracy``, which spread policies over the actors and return the accuracies in order. The
actors run the same code as the in-process evaluator, so on the CPU the numbers are identical.

Fault tolerance is Ray's: actors are created with ``max_restarts`` and ``max_task_retries``, so an
actor that dies (a lost node, a killed process) is restarted, rebuilds its task, and the
evaluation it was running is submitted again; the caller gets exactly one answer per policy.

Why not ``ray.util.ActorPool``: it hands a queued policy to an actor only when the driver
collects a result, so actors sit idle while the driver plays episodes; queueing calls on the
actors directly keeps them busy (measured in ``benchmarks/ray_scaling.py``). It is also a
developer API that may change between Ray releases.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import ray

from jpq_env.core.policy import Policy
from jpq_env.errors import ArgumentError
from jpq_env.proxy.evaluator import Evaluator, LocalEvaluator, PaddedEvaluator
from jpq_env.tasks import Task, load_task

__all__ = ["RayEvaluator", "connect"]


def connect(address: str | None = None, **init_kwargs: Any) -> None:
    """Connect this process to Ray, once.

    Args:
        address: ``None`` starts a local Ray on this machine; ``"auto"`` joins the cluster this
            machine belongs to (``ray start`` or a ``ray job submit`` job); ``"HOST:PORT"`` or
            ``"ray://HOST:10001"`` names a cluster.
        **init_kwargs: Passed to ``ray.init`` (``num_cpus``, ``runtime_env``, ...).

    Raises:
        ConnectionError: If Ray cannot start or reach the cluster; says how to with jpq's own
            flags (Ray's message speaks of an ``--address`` flag jpq does not have).
    """
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, **init_kwargs)
    except ConnectionError as exc:
        if address is None:  # a local start that failed (RAY_ADDRESS set, a stale cluster file)
            raise ConnectionError(
                f"could not start a local Ray: {exc} (if RAY_ADDRESS is set, unset it; after a "
                "crashed cluster, `ray stop` clears what it left)"
            ) from exc
        raise ConnectionError(
            f"could not connect to a Ray cluster at {address!r}: {exc} (with jpq: start one with "
            "`ray start --head` and pass --ray auto, name a running one with --ray HOST:PORT, or "
            "leave out --ray to start a local Ray for --workers N)"
        ) from exc


class _EvaluatorActor:
    """One worker: a task and its ``LocalEvaluator``, built once, then many evaluations."""

    def __init__(self, task: str, options: dict[str, Any], pad_seconds: float) -> None:
        import torch

        options = dict(options)
        if "device" not in options:  # the GPU Ray gave this actor, if any
            gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
            options["device"] = "cuda" if gpus and torch.cuda.is_available() else "cpu"
        local = LocalEvaluator(load_task(task), **options)
        self.local = local
        self.evaluator: Any = PaddedEvaluator(local, pad_seconds) if pad_seconds else local

    def describe(self) -> dict[str, Any]:
        """Where this actor runs: process, node, visible GPUs, torch device."""
        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(self.local.device),
        }

    def fp32_accuracy(self) -> float:
        return float(self.evaluator.fp32_accuracy)

    def val_images(self) -> int:
        return int(self.local.val_images)

    def accuracy(self, policy: dict[str, Any]) -> float:
        return float(self.evaluator.accuracy(Policy.from_json(policy)))

    def test_accuracy(self, policy: dict[str, Any] | None) -> float:
        return float(self.local.test_accuracy(None if policy is None else Policy.from_json(policy)))


class RayEvaluator(Evaluator):
    """The accuracy proxy on a pool of Ray actors (an ``Evaluator`` with workers; no racing).

    Args:
        task: Task name: built-in or ``package.module:factory`` (importable on every node).
        workers: Number of actors (>= 1).
        num_gpus: GPUs per actor; ``None``: 1 if the cluster has GPUs, else 0 (CPU actors).
        num_cpus: CPUs reserved per actor.
        max_restarts: Times Ray restarts a dead actor (-1: without limit).
        max_task_retries: Times Ray resubmits an evaluation whose actor died (-1: without limit).
        pad_seconds: Least wall time per evaluation (emulates a large model; benchmarks, tests).
        **options: Keyword arguments of ``LocalEvaluator`` (``bn_recalibration``, ``act_range``,
            ``weight_method``, ``batch_size``, ``device``; JSON-able values).

    Raises:
        TypeError: If ``task`` is a ``Task`` object (actors rebuild the task from its name).
        ValueError: If ``workers`` < 1.
    """

    def __init__(
        self,
        task: str,
        *,
        workers: int = 2,
        num_gpus: float | None = None,
        num_cpus: float = 1.0,
        max_restarts: int = 3,
        max_task_retries: int = 3,
        pad_seconds: float = 0.0,
        **options: Any,
    ) -> None:
        if isinstance(task, Task) or not isinstance(task, str):
            raise TypeError(
                "RayEvaluator needs the task's name (built-in or 'package.module:factory'), "
                f"not a {type(task).__name__}: each actor builds its own copy"
            )
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ArgumentError(f"workers must be a positive integer, got {workers!r}")
        connect()
        if num_gpus is None:
            num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        self.task = task
        self.num_gpus = float(num_gpus)
        actor_class: Any = ray.remote(_EvaluatorActor).options(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            max_restarts=max_restarts,
            max_task_retries=max_task_retries,
        )
        self.actors: list[Any] = [
            actor_class.remote(task, options, pad_seconds) for _ in range(workers)
        ]
        # Wait for every actor to build its task: errors surface here, not mid-search.
        self._fp32: float = ray.get([a.fp32_accuracy.remote() for a in self.actors])[0]
        self.val_images: int = int(ray.get(self.actors[0].val_images.remote()))
        """Held-out images of a complete evaluation (as ``LocalEvaluator.val_images``)."""

    @property
    def workers(self) -> int:  # type: ignore[override]
        """Number of actors (how many evaluations run at once)."""
        return len(self.actors)

    @property
    def fp32_accuracy(self) -> float:
        """Accuracy of the uncompressed model, as in ``LocalEvaluator.fp32_accuracy``."""
        return self._fp32

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        """Accuracy of the model compressed by ``policy`` (one evaluation on one actor)."""
        return self.accuracy_many([policy])[0]

    def accuracy_many(self, policies: Sequence[Policy]) -> list[float]:
        """Accuracies of ``policies``, in order, evaluated on the actors in parallel."""
        return list(self.iter_accuracy(policies))

    def iter_accuracy(self, policies: Iterable[Policy]) -> Iterator[float]:
        """Submit every policy now; return an iterator of their accuracies, in order.

        Each policy is sent as soon as ``policies`` yields it, so the actors start on the first
        ones while the caller still produces the rest (a lazy iterable pipelines the two), and
        the caller can use each accuracy as soon as it is done. Policies go round-robin to the
        actors' queues (Ray runs an actor's calls one after another), so no actor waits for the
        driver between evaluations.
        """
        refs = [
            self.actors[k % len(self.actors)].accuracy.remote(policy.to_json())
            for k, policy in enumerate(policies)
        ]
        return (float(ray.get(ref)) for ref in refs)

    def test_accuracy(self, policy: Policy | None) -> float:
        """Test-split accuracy (final reports only); ``None`` scores the FP32 model."""
        job = None if policy is None else policy.to_json()
        return float(ray.get(self.actors[0].test_accuracy.remote(job)))

    def describe(self) -> list[dict[str, Any]]:
        """Per actor: process id, node id, ``CUDA_VISIBLE_DEVICES`` and torch device."""
        return list(ray.get([a.describe.remote() for a in self.actors]))

    def close(self) -> None:
        """Stop the actors (their resources go back to the cluster)."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def __enter__(self) -> RayEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
