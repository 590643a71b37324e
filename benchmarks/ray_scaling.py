"""Episodes per second in process against Ray actor pools of 1 and 2 workers.

Each evaluation is padded to a fixed wall time (``PaddedEvaluator``: 20 ms, and 200 ms to emulate
a large model's proxy); episodes are uniformly random and go through a search's batched path
(``jpq_agents.batch.play_many``), the way random search and greedy's probes use a pool. Ray's
start-up (``ray.init`` and the actors building their task) is reported apart from the throughput.

Target (issue 9): with 200 ms evaluations, 2 workers reach at least 1.8x the episodes per second
of 1 worker.

Also measured: whole searches on the same padded evaluators (the two-level controller and greedy
on JPQWeightsActs-v0), evaluations per second in process against pools of 1 and 2 workers, and
whether the pooled search logged the same records as the in-process one.

    python -m benchmarks.ray_scaling            # full run, writes results/ray_scaling.md
    python -m benchmarks.ray_scaling --quick    # a smoke run (CI), writes nothing
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import gymnasium as gym
import numpy as np

import jpq_env  # noqa: F401 - registers the environment ids
from benchmarks.common import write_result
from jpq_agents.batch import play_many
from jpq_agents.search import RunSettings, Search
from jpq_env.proxy.evaluator import LocalEvaluator, PaddedEvaluator
from jpq_env.tasks import load_task

TARGET = 1.8


def random_episodes(n: int) -> list[list[np.ndarray]]:
    env = gym.make("jpq_env/JPQWeights-v0").unwrapped
    env.action_space.seed(0)
    return [[env.action_space.sample() for _ in range(2 * env.num_layers)] for _ in range(n)]


def episodes_per_second(evaluator: Any, episodes: list[list[np.ndarray]]) -> float:
    """Throughput of a search playing ``episodes`` through ``evaluator`` (files in a temp dir)."""
    env = gym.make("jpq_env/JPQWeights-v0", evaluator=evaluator).unwrapped
    env.reset()
    for action in episodes[0]:  # warm-up, not timed: one evaluation per worker
        env.step(action)
    assert env.last_policy is not None
    evaluator.accuracy_many([env.last_policy] * evaluator.workers)
    with (
        tempfile.TemporaryDirectory() as out,
        Search(out, RunSettings("random", len(episodes), 0, {}), env) as search,
    ):
        start = time.perf_counter()
        infos = play_many(search, episodes)
        seconds = time.perf_counter() - start
    assert len(infos) == len(episodes) == search.count
    return len(episodes) / seconds


SEARCHES = ("two-level", "greedy")


def search_rate(agent: str, evaluator: Any, episodes: int) -> tuple[float, list[Any]]:
    """Evaluations per second of a whole ``agent`` search on JPQWeightsActs-v0, and its records."""
    from jpq_agents.run import AGENTS

    env = gym.make("jpq_env/JPQWeightsActs-v0", evaluator=evaluator).unwrapped
    with (
        tempfile.TemporaryDirectory() as out,
        Search(out, RunSettings(agent, episodes, 0, {}), env) as search,
    ):
        start = time.perf_counter()
        AGENTS[agent](search, 0, {"env_id": "jpq_env/JPQWeightsActs-v0"})
        seconds = time.perf_counter() - start
        records = [(r["policy"], r["accuracy"]) for r in search.records]
    return search.count / seconds, records


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, no result file")
    args = parser.parse_args()
    for key, value in (
        ("RAY_USAGE_STATS_ENABLED", "0"),
        ("RAY_AUTH_MODE", "disabled"),
        ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
    ):
        os.environ.setdefault(key, value)
    import ray

    from jpq_env.proxy.ray import RayEvaluator

    load = os.getloadavg()
    pads = (0.02,) if args.quick else (0.02, 0.2)
    n = 4 if args.quick else 40
    episodes = random_episodes(n)
    local = LocalEvaluator(load_task("digits"))
    _ = local.fp32_accuracy
    start = time.perf_counter()
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2
    )
    init_s = time.perf_counter() - start
    rows: list[str] = []
    searches: list[str] = []
    try:
        for pad in pads:
            serial = episodes_per_second(PaddedEvaluator(local, pad), episodes)
            rows.append(f"| {pad * 1e3:.0f} | in process | - | {serial:.2f} | 1.00x | - | - | - |")
            print(rows[-1])
            one = serial
            for workers in (1, 2):
                start = time.perf_counter()
                with RayEvaluator("digits", workers=workers, num_gpus=0, pad_seconds=pad) as pool:
                    startup = time.perf_counter() - start
                    eps = episodes_per_second(pool, episodes)
                if workers == 1:
                    one = eps
                met = "-"
                if workers == 2 and pad >= 0.2:
                    met = "yes" if eps / one >= TARGET else "no"
                rows.append(
                    f"| {pad * 1e3:.0f} | Ray pool | {workers} | {eps:.2f} | {eps / serial:.2f}x "
                    f"| {eps / one:.2f}x | {startup:.1f} | {met} |"
                )
                print(rows[-1])
        pad = pads[-1]
        search_episodes = 12 if args.quick else 60
        for agent in SEARCHES[:1] if args.quick else SEARCHES:
            serial, expected = search_rate(agent, PaddedEvaluator(local, pad), search_episodes)
            searches.append(
                f"| {agent} | {pad * 1e3:.0f} | in process | - | {serial:.2f} | 1.00x | - |"
            )
            print(searches[-1])
            for workers in (2,) if args.quick else (1, 2):
                with RayEvaluator("digits", workers=workers, num_gpus=0, pad_seconds=pad) as pool:
                    eps, records = search_rate(agent, pool, search_episodes)
                same = "yes" if records == expected else "no"
                searches.append(
                    f"| {agent} | {pad * 1e3:.0f} | Ray pool | {workers} | {eps:.2f} | "
                    f"{eps / serial:.2f}x | {same} |"
                )
                print(searches[-1])
    finally:
        start = time.perf_counter()
        ray.shutdown()
        shutdown_s = time.perf_counter() - start
    if args.quick:
        return
    body = "\n".join(
        [
            "# Ray scaling",
            "",
            f"{n} uniformly random episodes of `jpq_env/JPQWeights-v0` (digits task) played "
            "through a "
            "search's batched path (`jpq_agents.batch.play_many`: one batch, queued round-robin "
            "on the "
            "pool's actors). Each evaluation is padded to a fixed wall time "
            "(`PaddedEvaluator`, which sleeps: like waiting for a GPU) to emulate larger models. "
            "Episodes/s exclude start-up; start-up is the pool's actors starting and building "
            f"their task. `ray.init(num_cpus=2)` took {init_s:.1f} s and `ray.shutdown()` "
            f"{shutdown_s:.1f} s on top. Target: 2 workers >= {TARGET}x one worker at 200 ms.",
            "",
            "| evaluation (ms) | evaluator | workers | episodes/s | vs in process | vs 1 worker "
            "| start-up (s) | target met |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "## Whole searches",
            "",
            f"A {search_episodes}-evaluation search of `jpq_env/JPQWeightsActs-v0` (digits) with "
            "every "
            f"evaluation padded to {pads[-1] * 1e3:.0f} ms, by agent: evaluations per second in "
            "process and on pools of 1 and 2 workers (pool start-up excluded), and whether the "
            "pooled search logged exactly the in-process records (policies and accuracies, in "
            "order). The two-level controller evaluates its warm start, each batch of 8 sampled "
            "episodes and each refinement round of 4 neighbours as one batch; greedy each "
            "round's probes.",
            "",
            "| agent | evaluation (ms) | evaluator | workers | evaluations/s | vs in process "
            "| same records |",
            "|---|---|---|---|---|---|---|",
            *searches,
            "",
            f"Machine load average {load[0]:.1f} at the start and {os.getloadavg()[0]:.1f} at "
            "the end (2 cores). Each actor runs torch on one thread (Ray sets "
            "OMP_NUM_THREADS=1), the in-process evaluator on all cores. With 2 workers on 2 "
            "cores the driver shares a core with an actor, so the episodes it plays between "
            "evaluations limit the speed-up when evaluations are short. Ray's start-up is paid "
            "once per search: it pays off when evaluations take hundreds of milliseconds or more "
            "(ImageNet-scale models, one GPU per actor) and across machines.",
        ]
    )
    print(f"wrote {write_result('ray_scaling', body)}")


if __name__ == "__main__":
    main()
