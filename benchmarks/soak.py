"""Soak: thousands of random episodes must not drift the model, grow memory or slow down.

A random agent (uniform actions from the action space, seeded) plays the default task through
``gym.make``. Every ``window`` episodes the script records the resident memory (RSS, from
``/proc/self/statm``), the wall-clock and the CPU time of the window. Targets:

- the model's tensors are bitwise the originals at the end (SHA-256 of the state dict);
- RSS after the warm-up stays within 5% of its value at the end of the warm-up (max over the rest);
- episodes stay as fast at the end as at the start: the CPU time per episode of the last thousand
  is at most 1.2x that of the first thousand after warm-up (CPU time, because the wall clock on a
  shared machine measures the other tenants too; the wall-clock rate is reported beside it).

    python -m benchmarks.soak            # 10,000 episodes each of JPQWeights-v0 and
                                         # JPQWeightsActs-v0, writes results/soak.md and
                                         # results/soak.png
    python -m benchmarks.soak --quick    # a smoke run (CI), writes nothing
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import warnings
from dataclasses import dataclass, field

import gymnasium as gym
import torch
from torch import nn

import jpq_env  # noqa: F401 - registers the ids
from benchmarks.common import RESULTS, write_result

RSS_TOLERANCE = 0.05
SLOWDOWN_TOLERANCE = 1.2


def state_hash(model: nn.Module) -> str:
    """SHA-256 over every tensor of the model's state dict (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Soak:
    """What one soak run measured, one entry per window of episodes."""

    env_id: str
    episodes: int
    window: int
    warmup: int
    span: int  # episodes compared at the start and at the end (after warm-up)
    hash_before: str = ""
    hash_after: str = ""
    done: list[int] = field(default_factory=list)  # episodes finished at the end of each window
    rss: list[float] = field(default_factory=list)  # MiB
    wall: list[float] = field(default_factory=list)  # seconds of the window
    cpu: list[float] = field(default_factory=list)  # process CPU seconds of the window

    def _after_warmup(self) -> list[int]:
        return [i for i, d in enumerate(self.done) if d > self.warmup]

    @property
    def rss_warm(self) -> float:
        """RSS at the end of the warm-up (MiB)."""
        return self.rss[max(self._after_warmup()[0] - 1, 0)]

    @property
    def rss_growth(self) -> float:
        """Largest RSS after warm-up relative to ``rss_warm``, minus 1."""
        return max(self.rss[i] for i in self._after_warmup()) / self.rss_warm - 1.0

    def _span(self, first: bool, n: int) -> list[int]:
        idx = self._after_warmup()
        k = max(1, n // self.window)
        return idx[:k] if first else idx[-k:]

    def rate(self, first: bool, n: int) -> tuple[float, float]:
        """(episodes per wall second, CPU ms per episode) over the first or last ``n`` episodes."""
        span = self._span(first, n)
        eps = len(span) * self.window
        return eps / sum(self.wall[i] for i in span), 1e3 * sum(self.cpu[i] for i in span) / eps

    @property
    def slowdown(self) -> float:
        """CPU time per episode of the last ``span`` episodes over that of the first ``span``."""
        return self.rate(False, self.span)[1] / self.rate(True, self.span)[1]

    @property
    def unchanged(self) -> bool:
        """Whether the model's tensors are bitwise the originals."""
        return self.hash_before == self.hash_after

    @property
    def ok(self) -> bool:
        """All three targets met."""
        return (
            self.unchanged
            and self.rss_growth <= RSS_TOLERANCE
            and self.slowdown <= SLOWDOWN_TOLERANCE
        )


def soak(env_id: str, episodes: int, window: int, warmup: int, span: int, seed: int = 0) -> Soak:
    """Play ``episodes`` random episodes of ``env_id`` and measure every ``window`` episodes."""
    with warnings.catch_warnings():  # v0 is current, not "out of date": v1 is another problem
        warnings.simplefilter("ignore", DeprecationWarning)
        env = gym.make(env_id)
    model = env.unwrapped.task.model  # type: ignore[attr-defined]
    result = Soak(env_id, episodes, window, warmup, span, hash_before=state_hash(model))
    env.action_space.seed(seed)
    env.reset(seed=seed)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for episode in range(1, episodes + 1):
        env.reset()
        done = False
        while not done:
            _, _, done, _, _ = env.step(env.action_space.sample())
        if episode % window == 0:
            wall, cpu = time.perf_counter(), time.process_time()
            result.done.append(episode)
            result.rss.append(rss_mb())
            result.wall.append(wall - wall0)
            result.cpu.append(cpu - cpu0)
            wall0, cpu0 = wall, cpu
    env.close()
    result.hash_after = state_hash(model)
    return result


def row(r: Soak) -> str:
    """One Markdown table row of a soak result."""
    (w_first, c_first), (w_last, c_last) = r.rate(True, r.span), r.rate(False, r.span)
    return (
        f"| {r.env_id} | {r.episodes:,} | {'yes' if r.unchanged else 'NO'} | "
        f"{r.rss_warm:.1f} | {max(r.rss):.1f} | {r.rss_growth:+.2%} | "
        f"{w_first:.1f} / {w_last:.1f} | {c_first:.1f} / {c_last:.1f} | {r.slowdown:.2f}x | "
        f"{'yes' if r.ok else 'no'} |"
    )


def plot(results: list[Soak], path: str) -> None:
    """RSS and wall-clock episodes per second against episodes, one line per environment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_eps) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for r in results:
        ax_rss.plot(r.done, r.rss, label=r.env_id)
        ax_eps.plot(r.done, [r.window / w for w in r.wall], label=r.env_id)
        ax_rss.axvline(r.warmup, color="grey", lw=0.5, ls="--")
    ax_rss.set_ylabel("RSS (MiB)")
    ax_eps.set_ylabel("episodes / s (wall)")
    ax_eps.set_xlabel("episodes")
    ax_rss.legend()
    ax_rss.set_title("Soak: random agent on the digits task")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 episodes each, no result file")
    parser.add_argument("--episodes", type=int, default=10_000, help="episodes per environment")
    parser.add_argument("--envs", default="jpq_env/JPQWeights-v0,jpq_env/JPQWeightsActs-v0")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    # One thread: the proxy's batches are small, and on a shared machine extra OpenMP threads
    # mostly spin, which inflates CPU time without speeding anything up.
    torch.set_num_threads(args.threads)
    episodes, window, warmup, span = (
        (100, 10, 20, 30) if args.quick else (args.episodes, 100, args.episodes // 10, 1000)
    )
    results = []
    for env_id in args.envs.split(","):
        results.append(soak(env_id, episodes, window, warmup, span))
        print(row(results[-1]), flush=True)
    body = "\n".join(
        [
            "# Soak",
            "",
            f"{episodes:,} episodes of a random agent (uniform actions, seed 0) per environment "
            "on the default task (digits), through `gym.make`. RSS is sampled every "
            f"{window} episodes; the warm-up is the first {warmup:,} episodes. Targets: the "
            "model's state dict hashes the same before and after (bitwise unchanged); the "
            f"largest RSS after the warm-up is within {RSS_TOLERANCE:.0%} of the RSS at the end "
            f"of the warm-up; CPU time per episode over the last {span:,} episodes is at most "
            f"{SLOWDOWN_TOLERANCE}x that of the first {span:,} after the warm-up. The wall-clock "
            "rate is reported too, but the machine is shared (2 cores, other jobs running), so "
            "it measures the neighbours as much as this code.",
            "",
            "| env | episodes | model unchanged | RSS after warm-up (MiB) | RSS max (MiB) "
            "| RSS growth | episodes/s first / last | CPU ms/episode first / last | slowdown "
            "| targets met |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *(row(r) for r in results),
            "",
            "![RSS and episodes per second over the soak](soak.png)",
        ]
    )
    if not args.quick:
        plot(results, str(RESULTS / "soak.png"))
        print(f"written to {write_result('soak', body)}")
    if not all(r.unchanged for r in results):
        raise SystemExit("the model's tensors changed during the soak")


if __name__ == "__main__":
    main()
