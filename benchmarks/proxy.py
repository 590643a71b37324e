"""The accuracy proxy on ResNet-20 / CIFAR-10: how fast, and how faithful to the test accuracy.

Every piece of the fast proxy measured on the same machine in the same run, against the code
before it (``--baseline-rev``, checked out into a temporary git worktree and run in a subprocess):

1. **Threads**: one complete evaluation with 1 and 2 torch threads on idle cores, and with one
   core taken by another busy process (the oversubscription that made an evaluation 10x slower);
2. **Per evaluation**: complete evaluations (BN re-calibration on 512 images + 5,000 held-out
   images) by the code before and by today's code, same policies;
3. **Prefix reuse**: a policy changed at layer ``k`` only, for every ``k``, scored from the
   kept activations of the unchanged policy against a full pass: time, image-forwards (images
   times the share of the MACs computed) and a check that the scores are bitwise equal;
4. **Fidelity**: Kendall tau against the test accuracy (10,000 test images) of top-1, agreement
   with the FP32 model's predictions and ``exp(-KL)`` to its outputs, each on the first 250 to
   5,000 held-out images, over policies near the budget (the two-stage policies and neighbours of
   them, the kind of policies a search compares);
5. **Racing**: for every pair (incumbent, neighbour) of those policies, whether the paired racing
   rule stops the neighbour's evaluation and whether that was right (a stopped neighbour that in
   fact reaches the incumbent's score is a wrong decision), and the images it saves, for several
   confidence levels.

    python -m benchmarks.cifar_workload     # once: the data and the fine-tuned checkpoint
    python -m benchmarks.proxy              # writes results/proxy.md
    python -m benchmarks.proxy --quick      # a smoke run on the digits task (CI), writes nothing
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.cifar_workload import DATA, task_options
from benchmarks.common import configure_threads, time_call, write_result
from jpq_env import Conventions, LocalEvaluator, Policy, load_task
from jpq_env.core.policy import LayerPolicy
from jpq_env.proxy.racing import RaceRule

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REV = "e482267"  # the last commit before the fast proxy
IMAGE_COUNTS = (250, 500, 1000, 2000, 5000)


def _task(quick: bool, data: Path) -> Any:
    if quick:
        return load_task("digits")
    return load_task("resnet20-cifar", **task_options(data))


def _uniform(graph: Any, w: int, a: int) -> Policy:
    return Policy.uniform(graph, w, a, Conventions(input_bits=8))


def _changed(policy: Policy, layer: int, width: int) -> Policy:
    layers = list(policy.layers)
    lp = layers[layer]
    layers[layer] = LayerPolicy(lp.name, np.where(lp.bits > 0, width, 0), lp.act_bits)
    return Policy(tuple(layers), policy.fingerprint)


# ---- 1. threads ---------------------------------------------------------------------------------


def _busy() -> subprocess.Popen[bytes]:
    """A process that keeps one core busy (a plain Python loop: one thread)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def threads_table(task: Any, repeats: int) -> list[str]:
    rows = []
    for busy in (False, True):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ev = LocalEvaluator(task, device="cpu", prefix_cache_mb=0)
            graph_policy = _uniform(ev.graph, 4, 4)
            policies = iter([_changed(graph_policy, 1, w) for w in (2, 3, 4, 5, 6, 8) * 4])
            _ = ev.fp32_accuracy  # computed once, not timed
            competitor = _busy() if busy else None
            try:
                median, sd = time_call(
                    lambda ev=ev, policies=policies: ev.accuracy(next(policies)), repeats
                )
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
            rows.append(
                f"| {'one core busy' if busy else 'idle'} | {threads} | {median:.2f} ± {sd:.2f} |"
            )
    configure_threads()
    return [
        "## Threads",
        "",
        "One complete evaluation (BN re-calibration + every held-out image), seconds, median ± sd.",
        "",
        "| cores | torch threads | seconds |",
        "|---|---|---|",
        *rows,
    ]


# ---- 2. today's code against the code before ----------------------------------------------------

_BASELINE_SCRIPT = """
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from jpq_env import Conventions, LocalEvaluator, Policy, load_task
options = json.loads(sys.argv[2])
task = load_task(options.pop("task"), **options)
ev = LocalEvaluator(task, device="cpu")
ev.fp32_accuracy
out = []
for w, a in ((4, 4), (3, 3), (5, 5), (6, 4)):
    p = Policy.uniform(ev.graph, w, a, Conventions(input_bits=8))
    start = time.perf_counter()
    acc = ev.accuracy(p)
    out.append([w, a, acc, time.perf_counter() - start])
print(json.dumps(out))
"""


def _baseline(rev: str, options: dict[str, Any], threads: int) -> list[list[float]] | None:
    """Complete evaluations by the code at ``rev`` (None if it cannot be checked out)."""
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp) / "baseline"
        made = subprocess.run(
            ["git", "worktree", "add", "--detach", str(where), rev],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            print(f"cannot check out {rev}: {made.stderr.strip()}", file=sys.stderr)
            return None
        try:
            env = {**os.environ, "PYTHONPATH": str(where)}
            done = subprocess.run(
                [sys.executable, "-c", _BASELINE_SCRIPT, str(threads), json.dumps(options)],
                cwd=where,
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return None
            return json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT)


def evaluation_table(task: Any, options: dict[str, Any], rev: str) -> tuple[list[str], float]:
    threads = torch.get_num_threads()
    before = _baseline(rev, dict(options), threads) if rev else None
    ev = LocalEvaluator(task, device="cpu", prefix_cache_mb=0)
    _ = ev.fp32_accuracy
    rows, now_times = [], []
    for i, (w, a) in enumerate(((4, 4), (3, 3), (5, 5), (6, 4))):
        start = time.perf_counter()
        acc = ev.accuracy(_uniform(ev.graph, w, a))
        seconds = time.perf_counter() - start
        now_times.append(seconds)
        old = before[i] if before else None
        old_text = f"{old[3]:.2f} s ({100 * old[2]:.2f}%)" if old else "n/a"
        rows.append(f"| W{w}A{a} | {old_text} | {seconds:.2f} s ({100 * acc:.2f}%) |")
    mean_now = statistics.mean(now_times)
    lines = [
        "## One complete evaluation: the code before and today's",
        "",
        f"Before: commit `{rev or 'not run'}`; today: this commit (prefix reuse off). "
        f"{threads} threads. "
        "Held-out accuracy in brackets: today's evaluates the held-out split in batches of "
        f"{ev.batch_size} channels-last images in a seeded order, so the last digits may differ.",
        "",
        "| policy | before | today |",
        "|---|---|---|",
        *rows,
    ]
    if before:
        old_mean = statistics.mean(r[3] for r in before)
        lines += ["", f"Mean: {old_mean:.2f} s before, {mean_now:.2f} s today "
                  f"({old_mean / mean_now:.1f}x)."]  # fmt: skip
    return lines, mean_now


# ---- 3. prefix reuse ----------------------------------------------------------------------------


def prefix_table(task: Any) -> list[str]:
    reuse = LocalEvaluator(task, device="cpu")
    full = LocalEvaluator(task, device="cpu", prefix_cache_mb=0)
    graph = reuse.graph
    base = _uniform(graph, 4, 4)
    reuse.set_incumbent(base)
    reuse.accuracy(base)
    full.accuracy(base)
    equal = True
    times_reuse, times_full = [], []
    forwards_reuse = forwards_full = 0.0
    for k in range(1, len(graph)):
        candidate = _changed(base, k, 3)
        f0, r0 = full.stats.image_forwards, reuse.stats.image_forwards
        start = time.perf_counter()
        a = reuse.accuracy(candidate)
        times_reuse.append(time.perf_counter() - start)
        start = time.perf_counter()
        b = full.accuracy(candidate)
        times_full.append(time.perf_counter() - start)
        equal &= a == b
        forwards_reuse += reuse.stats.image_forwards - r0
        forwards_full += full.stats.image_forwards - f0
    kept = ", ".join(graph.names[c.layer] for c in reuse.prefix_checkpoints)
    return [
        "## Prefix reuse",
        "",
        f"W4A4 changed to 3-bit weights at one layer, for each of layers 2-{len(graph)} in turn; "
        f"activations kept before {kept} (within 1024 MB).",
        "",
        "| | mean seconds | image-forwards |",
        "|---|---|---|",
        f"| full pass | {statistics.mean(times_full):.2f} | {forwards_full:,.0f} |",
        f"| prefix reuse | {statistics.mean(times_reuse):.2f} | {forwards_reuse:,.0f} "
        f"({forwards_reuse / forwards_full:.2f} of full) |",
        "",
        f"Scores bitwise equal to the full pass: {'yes' if equal else 'NO'}.",
    ]


# ---- 4. fidelity and 5. racing ------------------------------------------------------------------


def _neighbours(graph: Any, base: Policy, rng: np.random.Generator, n: int) -> list[Policy]:
    out = []
    for _ in range(n):
        layers = list(base.layers)
        k = int(rng.integers(1, len(layers)))
        lp = layers[k]
        if rng.random() < 0.5:
            width = int(rng.choice([2, 3, 4, 5, 6, 8]))
            bits = np.where(lp.bits > 0, width, 0)
            layers[k] = LayerPolicy(lp.name, bits, lp.act_bits)
        else:
            layers[k] = LayerPolicy(lp.name, lp.bits, int(rng.choice([2, 3, 4, 5, 6, 8])))
        out.append(Policy(tuple(layers), base.fingerprint))
    return out


def _per_image(ev: LocalEvaluator, policy: Policy) -> dict[str, Any]:
    """Per held-out image: correct, agrees with FP32, -KL to FP32; and the test accuracy."""
    reference = ev._fp32_logits
    module = ev.prepare(policy)
    logits = []
    with torch.no_grad():
        for x, _ in ev._val_iter():
            logits.append(module(x))
    out = torch.cat(logits)
    y = torch.cat([y for _, y in ev._val_iter()])
    p = torch.log_softmax(reference.double(), 1)
    q = torch.log_softmax(out.double(), 1)
    return {
        "top1": (out.argmax(1) == y).double(),
        "agreement": (out.argmax(1) == reference.argmax(1)).double(),
        "kl": -(p.exp() * (p - q)).sum(1),
        "test": ev._top1("test"),
    }


def _kendall(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b)[0])


def _two_stage(ev: LocalEvaluator, budget: float) -> list[Policy]:
    """The two-stage (prune-then-quantize) policies of the budget, through the environment."""
    import gymnasium as gym

    from jpq_agents.play import jpq, least_uniform_pruning, level_pairs, play, uniform_choices

    env = gym.make(
        "jpq_env/JPQWeightsActs-v0", task=ev.task, budget_bops=budget, evaluator=_NoEval()
    )
    base = jpq(env)
    n = base.num_layers
    out = []
    for w, a in level_pairs(base):
        pruned = least_uniform_pruning(base, [w] * n, [a] * n)
        if pruned is not None:
            play(env, uniform_choices(base, pruned, [w] * n, [a] * n))
            assert base.last_policy is not None
            out.append(base.last_policy)
    return out


class _NoEval:
    """Stands in for the proxy when only the applied policies are wanted."""

    fp32_accuracy = 1.0

    def accuracy(self, policy: Policy) -> float:
        return 0.0


def fidelity_and_racing(task: Any, neighbours: int, budget: float) -> list[str]:
    ev = LocalEvaluator(task, device="cpu", prefix_cache_mb=0, metric="kl")
    rng = np.random.default_rng(0)
    bases = _two_stage(ev, budget)
    policies = list(bases)
    for base in bases[: max(1, len(bases) // 3)]:
        policies += _neighbours(ev.graph, base, rng, neighbours)
    results = [_per_image(ev, p) for p in policies]
    test = [r["test"] for r in results]
    total = ev.val_images
    counts = [n for n in IMAGE_COUNTS if n <= total] or [total]
    lines = [
        "## Fidelity: Kendall tau against the test accuracy",
        "",
        f"{len(policies)} policies at 1/{1 / budget:.0f} of FP32 BOPs: {len(bases)} two-stage "
        f"policies and {len(policies) - len(bases)} neighbours of them (one layer's weight or "
        f"activation width changed); test accuracy on {len(task.test):,} images. Each score on "
        "the first N held-out images (the proxy's seeded order).",
        "",
        "| held-out images | top-1 | agreement with FP32 | exp(-KL) to FP32 |",
        "|---|---|---|---|",
    ]
    for n in counts:
        taus = [
            _kendall([float(r[m][:n].mean()) for r in results], test)
            for m in ("top1", "agreement", "kl")
        ]
        lines.append(f"| {n:,} | {taus[0]:.3f} | {taus[1]:.3f} | {taus[2]:.3f} |")
    lines += [
        "",
        "## Racing",
        "",
        "Every ordered pair (incumbent, candidate) of those policies: the candidate is raced "
        "(top-1, paired with the incumbent's per-image results, batches of "
        f"{ev.batch_size}, no decision before a tenth of the split) against the incumbent's "
        "score (ties pass, as the refinement accepts them). Wrong: stopped, but the full "
        "evaluation reaches the incumbent's score.",
        "",
        "| z | pairs | stopped | wrong decisions | images scored (share of full) |",
        "|---|---|---|---|---|",
    ]
    batch = ev.batch_size
    for z in (1.5, 2.0, 3.0):
        stopped = wrong = 0
        images = 0
        pairs = 0
        for a, b in itertools.permutations(results, 2):
            pairs += 1
            rule = RaceRule(0.0, total, z, max(batch, total // 10))  # reach the same score
            seen = total
            d = b["top1"] - a["top1"]
            for end in range(batch, total, batch):
                if rule.lost(d[:end]):
                    seen = end
                    break
            images += seen
            if seen < total:
                stopped += 1
                wrong += int(float(b["top1"].mean()) >= float(a["top1"].mean()))
        lines.append(
            f"| {z} | {pairs} | {stopped} | {wrong} ({100 * wrong / max(stopped, 1):.1f}% of "
            f"stops) | {images / (pairs * total):.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits, a few repeats, no result")
    parser.add_argument("--data", type=Path, default=DATA, help="the prepared workload")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="the code before")
    parser.add_argument("--budget", type=float, default=1 / 128, help="BOPs budget of section 4")
    parser.add_argument("--neighbours", type=int, default=6, help="per third of the bases")
    args = parser.parse_args()
    configure_threads()
    task = _task(args.quick, args.data)
    options = (
        {"task": "digits"} if args.quick else {"task": "resnet20-cifar", **task_options(args.data)}
    )
    sections = [
        threads_table(task, 2 if args.quick else 5),
        evaluation_table(task, options, "" if args.quick else args.baseline_rev)[0],
        prefix_table(task),
        fidelity_and_racing(task, 2 if args.quick else args.neighbours, args.budget),
    ]
    body = "\n".join(
        ["# The accuracy proxy: speed and fidelity", ""]
        + [line for section in sections for line in [*section, ""]]
    )
    print(body)
    if not args.quick:
        write_result("proxy", body)


if __name__ == "__main__":
    main()
