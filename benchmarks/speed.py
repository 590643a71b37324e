"""Speed and scaling: an episode against the proxy's forward passes, whole searches, parallel envs.

Targets (reported, not tested):

- an episode (all decisions, budget enforcement, the cost model and the accuracy proxy) costs at
  most 1.25x the proxy's own forward passes (BatchNorm re-calibration plus the held-out
  evaluation), so the environment's bookkeeping stays negligible;
- a 300-episode two-level search on the default task finishes within 60 s on 2 cores.

Also measured: the environment's own cost per layer step as the network grows (the default task,
the deeper task, torchvision's resnet18 at 32x32 on random data), and episodes per second with 2
environments in parallel processes (Gymnasium's ``AsyncVectorEnv``) against one.

    python -m benchmarks.speed            # full run, writes results/speed.md
    python -m benchmarks.speed --quick    # a smoke run (CI), writes nothing
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from benchmarks.apply_vs_proxy import resnet18_32
from benchmarks.common import write_result
from jpq_env.envs import JPQEnv
from jpq_env.envs.wrappers import FlatBoxView
from jpq_env.proxy.evaluator import LocalEvaluator

ACTS = [2, 3, 4, 5, 6, 8]


def measure_env(env: JPQEnv, episodes: int, warmup: int = 2) -> dict[str, float]:
    """An episode of random actions against the proxy's forward passes, timed in pairs.

    Each episode is followed at once by the proxy's own forward passes (BN re-calibration and
    the held-out top-1) for the policy it just applied, so the two timings of a pair see the same
    machine state; the ratio is the median of the per-pair ratios (two medians of blocks timed
    minutes apart drift with the machine's load).
    """
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (warmup + episodes, 2 * env.num_layers, *env.action_space.shape))
    evaluator = env.evaluator
    assert isinstance(evaluator, LocalEvaluator)
    episode_s, proxy_s = [], []
    for i, episode in enumerate(actions):
        start = time.perf_counter()
        env.reset()
        for a in episode:
            env.step(a.astype(np.float32))
        middle = time.perf_counter()
        assert env.last_policy is not None
        evaluator.compressed.apply(env.last_policy)  # already applied by the episode: not timed
        middle2 = time.perf_counter()
        evaluator._recalibrate()
        evaluator._top1("val")
        end = time.perf_counter()
        if i >= warmup:
            episode_s.append(middle - start)
            proxy_s.append(end - middle2)
    ep, px = np.array(episode_s), np.array(proxy_s)
    steps = 2 * env.num_layers
    return {
        "layers": env.num_layers,
        "episode_ms": float(np.median(ep)) * 1e3,
        "episode_sd": float(np.std(ep)) * 1e3,
        "proxy_ms": float(np.median(px)) * 1e3,
        "proxy_sd": float(np.std(px)) * 1e3,
        "step_ms": float(np.median(np.maximum(ep - px, 0.0))) * 1e3 / steps,
        "eps": 1.0 / float(np.median(ep)),
        "ratio": float(np.median(ep / px)),
    }


def search_seconds(env_id: str, episodes: int) -> float:
    """Wall time of a whole two-level search, set-up and summary included."""
    from jpq_agents.run import run_search

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_search("two-level", Path(tmp) / "run", episodes, env_id=env_id, progress=False)
    return time.perf_counter() - start


def _view() -> gym.Env[Any, Any]:
    return FlatBoxView(gym.make("jpq_env/JPQWeightsActs-v0"))


def parallel_eps(workers: int, episodes: int) -> float:
    """Episodes per second of random actions with ``workers`` environments (processes if > 1)."""
    vec: gym.vector.VectorEnv[Any, Any, Any]
    if workers == 1:
        vec = gym.vector.SyncVectorEnv([_view])
    else:
        vec = gym.vector.AsyncVectorEnv([_view] * workers, context="fork")
    try:
        vec.action_space.seed(0)
        vec.reset(seed=0)
        finished = 0
        vec.step(vec.action_space.sample())  # start-up (process launch, first forward) excluded
        start = time.perf_counter()
        while finished < episodes:
            _, _, terminated, truncated, _ = vec.step(vec.action_space.sample())
            finished += int(np.sum(terminated | truncated))
        return finished / (time.perf_counter() - start)
    finally:
        vec.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, no result file")
    args = parser.parse_args()
    episodes = 3 if args.quick else 100
    cases = [
        ("digits, JPQWeights-v0", lambda: JPQEnv(), episodes),
        ("digits, JPQWeightsActs-v0", lambda: JPQEnv(act_bits=ACTS, budget_bops=1 / 128), episodes),
        ("digits-deep, JPQWeights-v0", lambda: JPQEnv(task="digits-deep"), episodes),
        (
            "resnet18 32x32 (random data, 512 val)",
            lambda: JPQEnv(task=resnet18_32(64, 32) if args.quick else resnet18_32(512, 128)),
            max(2, episodes // 10),
        ),
    ]
    rows = []
    for name, make, n in cases:
        r = measure_env(make(), n)
        rows.append(
            f"| {name} | {r['layers']} | {r['eps']:.1f} | "
            f"{r['episode_ms']:.1f} ± {r['episode_sd']:.1f} | {r['proxy_ms']:.1f} ± "
            f"{r['proxy_sd']:.1f} | {r['step_ms']:.2f} | {r['ratio']:.2f}x | "
            f"{'yes' if r['ratio'] <= 1.25 else 'no'} |"
        )
        print(rows[-1], flush=True)
    search_episodes = 10 if args.quick else 300
    searches = []
    for env_id in ("jpq_env/JPQWeightsActs-v0", "jpq_env/JPQWeights-v0"):
        s = search_seconds(env_id, search_episodes)
        searches.append(
            f"| two-level, {env_id}, default task | {search_episodes} | {s:.1f} | "
            f"{'yes' if s <= 60 else 'no'} |"
        )
        print(searches[-1], flush=True)
    parallel_episodes = 6 if args.quick else 200
    one, two = parallel_eps(1, parallel_episodes), parallel_eps(2, parallel_episodes)
    parallel = [
        f"| 1 (in process) | {one:.1f} | 1.00x |",
        f"| 2 (AsyncVectorEnv, 2 processes) | {two:.1f} | {two / one:.2f}x |",
    ]
    print(*parallel, sep="\n")
    body = "\n".join(
        [
            "# Speed and scaling",
            "",
            "## An episode against the proxy's forward passes",
            "",
            f"Medians over {episodes} episodes (resnet18: {max(2, episodes // 10)}) of uniformly "
            "random actions on `JPQEnv` (BOPs budget 1/64 on v0, 1/128 on v1, forward wall, 4 "
            "importance groups, BN re-calibration). The proxy's own forward passes are BN "
            "re-calibration on the calibration split plus top-1 on the held-out split, for an "
            "already applied policy. Timed in pairs: each episode, then at once the forward "
            "passes of the policy it applied; the ratio is the median of the pairs' ratios and "
            "the environment's own cost per step the median of each pair's difference divided "
            "by its 2 x layers steps. Target: episode <= 1.25x the forward passes.",
            "",
            "| task | layers | episodes/s | episode (ms) | proxy forward (ms) | env per step (ms) "
            "| ratio | target met |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "## A whole search",
            "",
            "Wall time of `jpq search` with the two-level controller (environment set-up, the "
            "search, the reference points, test scores and the summary). Target: <= 60 s.",
            "",
            "| search | evaluations | seconds | target met |",
            "|---|---|---|---|",
            *searches,
            "",
            "## Parallel environments",
            "",
            f"Episodes per second over {parallel_episodes} episodes of random actions on "
            "`FlatBoxView(JPQWeightsActs-v0)`, process start-up excluded. Each worker process "
            "runs torch on "
            "one thread (jpq_env's fork hook), the single in-process env on all cores.",
            "",
            "| environments | episodes/s | speed-up |",
            "|---|---|---|",
            *parallel,
        ]
    )
    if not args.quick:
        print(f"written to {write_result('speed', body)}")


if __name__ == "__main__":
    main()
