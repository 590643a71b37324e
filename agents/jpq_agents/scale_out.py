"""Ray for one search (``jpq search --ray ADDRESS --workers N``): connect, size, clean up.

- Baselines and the two-level controller get a ``RayEvaluator`` pool as the environment's
  evaluator: batches of policies (random search, greedy's probes, the two-level controller's
  batches of episodes and refinement rounds) are spread over its actors (``jpq_agents.batch``),
  single evaluations go to one actor.
- SB3 agents get ``workers`` sub-environments on Ray actors instead (``jpq_agents.ray_vec_env``),
  each with its own accuracy proxy; the driver keeps an in-process evaluator for the final summary.

Without ``--ray`` and ``--workers`` none of this is imported.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ScaleOut"]


class ScaleOut:
    """Context manager: Ray connected and sized for one search, stopped afterwards if started.

    Args:
        address: Cluster address (``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:10001"``) or None
            to start a local Ray on this machine.
        workers: Actors to start; None: one per GPU of the cluster, else one per CPU.
        env_actors: True for SB3 agents (sub-environments on actors, no evaluator pool).
        env_kwargs: The environment's keyword arguments (task name, ``bn_recalibration``).

    Attributes:
        workers: Number of actors.
        num_gpus: GPUs per actor (1 on a cluster with GPUs, else 0).
        evaluator: The ``RayEvaluator`` pool, or None for SB3 agents.
    """

    def __init__(
        self,
        address: str | None,
        workers: int | None,
        env_actors: bool,
        env_kwargs: dict[str, Any],
    ) -> None:
        self.address = address
        self.requested = workers
        self.env_actors = env_actors
        self.env_kwargs = env_kwargs
        self.workers = 0
        self.num_gpus = 0.0
        self.evaluator: Any = None
        self._started = False

    def __enter__(self) -> ScaleOut:
        import ray

        from jpq_env.proxy.ray import RayEvaluator, connect

        self._started = not ray.is_initialized()
        connect(self.address)
        try:
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            self.num_gpus = 1.0 if gpus else 0.0
            self.workers = self.requested or gpus or max(int(resources.get("CPU", 1)), 1)
            if not self.env_actors:
                self.evaluator = RayEvaluator(
                    self.env_kwargs.get("task", "digits"),
                    workers=self.workers,
                    num_gpus=self.num_gpus,
                    bn_recalibration=self.env_kwargs.get("bn_recalibration", True),
                )
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        if self.evaluator is not None:
            self.evaluator.close()
            self.evaluator = None
        if self._started:
            ray.shutdown()
