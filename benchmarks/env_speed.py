"""Episodes per second of the JPQ environment, and an episode against the proxy's forward passes.

Target (environment issue): a whole episode (all decisions, budget enforcement, the cost model and
the accuracy proxy) costs at most 1.25x the proxy's own forward passes (BatchNorm re-calibration
plus the held-out evaluation), so the environment's bookkeeping stays negligible.

    python -m benchmarks.env_speed            # full run, writes results/env_speed.md
    python -m benchmarks.env_speed --quick    # a smoke run (CI), writes nothing
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import time_call, write_result
from jpq_env.envs import JPQEnv
from jpq_env.evaluate import LocalEvaluator


def measure_env(task: str, episodes: int) -> dict[str, float]:
    env = JPQEnv(task=task)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (episodes + 1, 2 * env.num_layers, *env.action_space.shape))
    it = iter(actions)

    def episode() -> None:
        env.reset()
        for a in next(it):
            env.step(a.astype(np.float32))

    episode_s, episode_sd = time_call(episode, episodes)
    evaluator = env.evaluator
    assert isinstance(evaluator, LocalEvaluator) and env.last_policy is not None
    evaluator.compressed.apply(env.last_policy)

    def forward_passes() -> None:
        evaluator._recalibrate()
        evaluator._top1("val")

    proxy_s, proxy_sd = time_call(forward_passes, episodes)
    return {
        "layers": env.num_layers,
        "steps": 2 * env.num_layers,
        "episode_ms": episode_s * 1e3,
        "episode_sd": episode_sd * 1e3,
        "proxy_ms": proxy_s * 1e3,
        "proxy_sd": proxy_sd * 1e3,
        "eps": 1.0 / episode_s,
        "ratio": episode_s / proxy_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, no result file")
    args = parser.parse_args()
    episodes = 3 if args.quick else 100
    rows = []
    for task in ("digits", "digits-deep"):
        r = measure_env(task, episodes)
        rows.append(
            f"| {task} | {r['layers']} | {r['steps']} | {r['eps']:.1f} | "
            f"{r['episode_ms']:.1f} ± {r['episode_sd']:.1f} | {r['proxy_ms']:.1f} ± "
            f"{r['proxy_sd']:.1f} | {r['ratio']:.2f}x | {'yes' if r['ratio'] <= 1.25 else 'no'} |"
        )
        print(rows[-1])
    body = "\n".join(
        [
            "# Environment speed",
            "",
            f"Median over {episodes} episodes of uniformly random actions on `JPQEnv` with its "
            "defaults (BOPs budget 1/64, forward wall, 4 importance groups, BN re-calibration). "
            "The proxy's own forward passes are BN re-calibration on the calibration split plus "
            "top-1 on the held-out split, for an already applied policy. Target: episode <= 1.25x "
            "the forward passes.",
            "",
            "| task | layers | steps | episodes/s | episode (ms) | proxy forward (ms) | ratio "
            "| target met |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    if not args.quick:
        print(f"written to {write_result('env_speed', body)}")


if __name__ == "__main__":
    main()
