"""JPQ-Bench: real evaluations of ResNet-20 policies, the surrogate fitted on them, its checks.

NAS research compares search algorithms on tabular and surrogate benchmarks (NAS-Bench-101,
-201, -301); JPQ-Bench is one for joint pruning and mixed-precision quantization. This script
makes its data, fits the surrogate that ``jpq_env/JPQBench-ResNet20-v0`` ships, and measures it.

Steps (each resumable; run them in order, the data over as many sittings as it takes):

    python -m benchmarks.cifar_workload                        # once: data and checkpoint
    JPQ_THREADS=1 python -m benchmarks.jpq_bench data --rows 500   # real evaluations
    python -m benchmarks.jpq_bench fit                     # the surrogate, into jpq_env/proxy
    JPQ_THREADS=1 python -m benchmarks.jpq_bench agents         # the agents on the bench
    JPQ_THREADS=1 python -m benchmarks.jpq_bench agents --rerun # the same, another machine
    JPQ_THREADS=1 python -m benchmarks.jpq_bench speed          # bench episode vs real episode
    python -m benchmarks.jpq_bench report                      # results/jpq_bench.md and .png
    python -m benchmarks.jpq_bench quick                       # digits, all steps, small: CI

**The data** (``results/jpq_bench_resnet20-cifar.jsonl``, one JSON line per evaluated policy, of
JPQWeightsActs-v0 on ResNet-20 / CIFAR-10 with the grid's proxy):

- ``id``: 16 hex digits of the policy's hash (a policy appears once);
- ``source``: ``grid`` (a policy a search of ``benchmarks.resnet20_grid`` evaluated, imported from
  its ``evaluations.jsonl``: ``run`` names the search, ``episode`` the evaluation), ``random``
  (uniform random actions: most fall far below the budget, into the accuracy collapse),
  ``structured`` (one action repeated over the layers plus noise ``noise``: the first rows only),
  ``mixed`` (per-layer weight and activation widths within ``spread`` levels of a random centre,
  with the least shared pruning that fits the budget: mixed precision along the budget, where
  searches look) or ``perturb`` (one to three layer
  decisions of a good policy changed: ``parent`` is its id);
- ``sample``: the sample's index (sampled rows; the schedule is a function of it, so a resumed
  run draws the same policies) and ``budget`` (the BOPs target it was drawn under: 1/16 to 1/256);
- ``val``: the proxy's held-out score, over ``val_images`` images (``complete`` false: a grid
  evaluation that racing stopped early, a noisy and, as racing stops the unpromising, low
  estimate); ``test``: top-1 on the 10,000 test images (a third of the sampled rows, else null;
  before sample 315 every third sample index, which in step with the kinds' cycle tested only
  random and mixed policies);
- ``bops_ratio``, ``size_ratio``: the policy's costs as fractions of FP32;
- ``policy``: ``bits`` (per layer, one character per kernel: ``0``-``9``, ``a``-``g`` for
  10-16, ``w`` for 32) and ``act`` (per layer, the input width); ``fingerprint`` names the graph;
- ``commit`` and ``command`` that produced the row.

**The fit** holds out every row whose id ends in 0-2 of 16 hex digits (about a fifth), fits the
surrogate (8 boosted-tree models on bootstrap resamples, ``TreeEnsemble``) and three other models
on the rest (8 small ReLU networks on the same features, the schema-1 surrogate; ridge regression
on the same features; the summed sensitivity KL through a fitted sigmoid as
``jpq_agents.surrogate`` does), and scores them on the held-out complete rows: Kendall tau and
top-10 overlap, all of them and those near the grid's budgets (a BOPs ratio within 25% of 1/64 or
1/128). The shipped model is the surrogate fitted on the fitting rows only, so the numbers
describe it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    RESULTS,
    command,
    commit,
    configure_threads,
    cpu,
    load_rows,
    write_result,
)

ENV_ID = "jpq_env/JPQWeightsActs-v0"
BENCH_ID = "jpq_env/JPQBench-v0"  # any bench, named by the ``bench`` argument
BUDGETS = (1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256)
GRID_BUDGETS = (1 / 64, 1 / 128)
KINDS = ("mixed", "perturb", "mixed", "random", "perturb", "mixed")
SPREAD = (0, 1, 2)  # ``mixed``: how far a layer's width levels stray from the policy's centre
TEST_EVERY = 3
_ID_TESTS_FROM = 315  # samples from this index on choose their test by id (see ``sample_row``)
GRID_RUNS = Path(__file__).parent / "runs" / "resnet20_grid"
SHIPPED = Path(__file__).resolve().parents[1] / "jpq_env" / "proxy" / "bench_models"
_ALPHABET = "0123456789abcdefg"


# --------------------------------------------------------------------------- policy encoding


def encode(policy: Any) -> dict[str, Any]:
    """A policy as the data's compact ``{"bits": [str per layer], "act": [int per layer]}``."""
    return {
        "bits": [
            "".join("w" if b == 32 else _ALPHABET[b] for b in lp.bits) for lp in policy.layers
        ],
        "act": [int(lp.act_bits) for lp in policy.layers],
    }


def decode(row: dict[str, Any], names: Sequence[str]) -> Any:
    """The ``Policy`` of a data row (``names``: the graph's layer names)."""
    from jpq_env import LayerPolicy, Policy

    layers = tuple(
        LayerPolicy(
            name,
            np.array([32 if c == "w" else _ALPHABET.index(c) for c in bits], dtype=np.int64),
            a,
        )
        for name, bits, a in zip(names, row["policy"]["bits"], row["policy"]["act"], strict=True)
    )
    return Policy(layers, row["fingerprint"])


def policy_id(policy: Any) -> str:
    """16 hex digits naming a policy (equal policies, equal ids)."""
    h = hashlib.sha256()
    for part in policy.key():
        h.update(part)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- the real problem


class Problem:
    """The real task, its evaluator and one environment per budget (built once per process)."""

    def __init__(self, quick: bool) -> None:
        import gymnasium as gym

        import jpq_env  # noqa: F401  (registers the ids)
        from jpq_env import LocalEvaluator, load_task

        self.quick = quick
        if quick:
            self.task = load_task("digits")
            self.name = "digits"
            self.task_options: dict[str, Any] = {}
        else:
            from benchmarks.cifar_workload import DATA, WEIGHTS_NAME, task_options

            if not (DATA / WEIGHTS_NAME).exists():
                sys.exit("run `python -m benchmarks.cifar_workload` first (data and checkpoint)")
            options = task_options(DATA)
            self.task = load_task("resnet20-cifar", **options)
            self.name = "resnet20-cifar"
            self.task_options = {k: v for k, v in options.items() if k not in ("data", "weights")}
        self.envs: dict[float, Any] = {}
        first = gym.make(ENV_ID, task=self.task, budget_bops=BUDGETS[0]).unwrapped
        self.graph = first.graph
        self.evaluator = LocalEvaluator(self.task, self.graph, device="cpu")
        first.close()
        for b in BUDGETS:
            self.envs[b] = gym.make(
                ENV_ID, task=self.task, budget_bops=b, evaluator=self.evaluator
            ).unwrapped
        self.space = self.envs[BUDGETS[0]].space

    @property
    def settings(self) -> dict[str, Any]:
        """The environment settings every score depends on (``jpq_env.envs.bench.FIXED``)."""
        env = self.envs[BUDGETS[0]]
        return {
            "bits": list(env.bits),
            "act_bits": list(env.space.act_bits),
            "importance": "l1",
            "input_bits": env.conventions.input_bits,
            "first_last_bits": env.conventions.first_last_bits,
            "bn_recalibration": True,
        }

    def costs(self, policy: Any) -> tuple[float, float]:
        """The policy's BOPs and size as fractions of FP32."""
        from jpq_env import measure

        report = measure(self.graph, policy)
        return float(report.bops_ratio), float(report.size_ratio)


_PROBLEM: dict[bool, Problem] = {}


def problem(quick: bool) -> Problem:
    """The process's ``Problem`` (built on first use)."""
    if quick not in _PROBLEM:
        _PROBLEM[quick] = Problem(quick)
    return _PROBLEM[quick]


# --------------------------------------------------------------------------- sampling


def schedule(i: int) -> dict[str, Any]:
    """Sample ``i``'s kind, budget and spread (a fixed function of ``i``: resumable)."""
    return {
        "kind": KINDS[i % len(KINDS)],
        "budget": BUDGETS[(i // len(KINDS)) % len(BUDGETS)],
        "spread": SPREAD[(i // (len(KINDS) * len(BUDGETS))) % len(SPREAD)],
    }


def _episode(env: Any, actions: Any, seed: int) -> tuple[Any, dict[str, Any]]:
    """Run one episode with ``actions(step)``; the final policy and ``info`` (scored by the env)."""
    env.reset(seed=seed)
    step, info, done = 0, {}, False
    while not done:
        _, _, done, _, info = env.step(actions(step))
        step += 1
    return env.last_policy, info


def _perturb(prob: Problem, base: Any, rng: np.random.Generator) -> Any:
    """``base`` with one to three layer decisions moved one step (None: no valid move drawn).

    A move changes a group of kernels' width, the activation width, or prunes or restores a
    kernel or two in importance order.
    """
    from jpq_env import LayerPolicy, Policy

    space = prob.space
    layers = list(base.layers)
    bits, acts = list(space.bits), list(space.act_bits)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(len(layers)))
        lp = layers[i]
        order = np.asarray(space.orders[i])
        new_bits, new_act = lp.bits.copy(), lp.act_bits
        move = rng.choice(["width", "act", "prune"])
        kept = order[lp.bits[order] > 0]  # most important first
        if move == "act":
            if i in space.fixed_act or lp.act_bits not in acts:
                continue
            j = acts.index(lp.act_bits) + int(rng.choice([-1, 1]))
            new_act = acts[min(max(j, 0), len(acts) - 1)]
        elif move == "width" and kept.size:
            groups = np.array_split(kept, 4)
            group = groups[int(rng.integers(len(groups)))]
            if not group.size or int(lp.bits[group[0]]) not in bits:
                continue
            j = bits.index(int(lp.bits[group[0]])) + int(rng.choice([-1, 1]))
            new_bits[group] = bits[min(max(j, 0), len(bits) - 1)]
        elif move == "prune" and kept.size:
            n = int(rng.integers(1, 3))
            if rng.random() < 0.5 and space.max_pruned(i) >= (lp.bits == 0).sum() + n:
                new_bits[kept[-n:]] = 0
            else:
                pruned = order[lp.bits[order] == 0][:n]
                new_bits[pruned] = lp.bits[kept[-1]]
        layers[i] = LayerPolicy(lp.name, new_bits, int(new_act))
    policy = Policy(tuple(layers), base.fingerprint)
    try:
        policy.validate(prob.graph, allowed_bits=[0, *bits, 32])
    except Exception:
        return None
    return None if policy.key() == base.key() else policy


def _mixed(env: Any, spread: int, rng: np.random.Generator, seed: int) -> Any:
    """A mixed-precision policy at the budget (None: too wide even at the largest sparsity).

    Per-layer weight and activation width levels around a random centre (``spread`` levels
    either way), with the least shared pruning that fits. What searches explore: mixed precision
    along the budget (uniform random actions mostly fall far below it, into the collapse).
    """
    from jpq_agents.batch import choice_actions
    from jpq_agents.play import least_uniform_pruning, uniform_choices

    n = len(env.graph)
    nb, na = len(env.bits), len(env.space.act_bits)
    levels = np.clip(rng.integers(nb) + rng.integers(-spread, spread + 1, n), 0, nb - 1)
    acts = np.clip(rng.integers(na) + rng.integers(-spread, spread + 1, n), 0, na - 1)
    levels, acts = [int(v) for v in levels], [int(v) for v in acts]
    pruned = least_uniform_pruning(env, levels, acts)
    if pruned is None:
        return None
    actions = choice_actions(env, uniform_choices(env, pruned, levels, acts))
    policy, _ = _episode(env, lambda k: actions[k], seed)
    return policy


def _parents(rows: list[dict[str, Any]], budget: float) -> list[dict[str, Any]]:
    """The best complete rows near ``budget`` (BOPs ratio within 25%): perturbations' parents."""
    near = [
        r
        for r in rows
        if r["complete"] and abs(math.log(r["bops_ratio"] / budget)) < math.log(1.25)
    ]
    return sorted(near, key=lambda r: (-r["val"], r["id"]))[:20]


def sample_row(i: int, rows: list[dict[str, Any]], quick: bool) -> dict[str, Any] | None:
    """Draw and score sample ``i`` (None: already in the data, or no valid perturbation)."""
    prob = problem(quick)
    start = time.perf_counter()
    plan = schedule(i)
    budget, kind = plan["budget"], plan["kind"]
    env = prob.envs[budget]
    rng = np.random.default_rng([i, 1234])
    slots = env.action_space.shape[0]
    parent = None
    if kind == "perturb":
        pool = _parents(rows, budget)
        if pool:
            parent = pool[int(rng.integers(len(pool)))]
            policy = _perturb(prob, decode(parent, prob.graph.names), rng)
            if policy is None:
                return None
        else:
            kind = "random"  # nothing good near this budget yet
    if kind == "random":
        policy, _ = _episode(env, lambda _: rng.uniform(-1, 1, slots).astype(np.float32), i)
    elif kind == "mixed":
        policy = _mixed(env, plan["spread"], rng, i)
        if policy is None:
            return None  # too wide for the budget even at the largest sparsity
    pid = policy_id(policy)
    if any(r["id"] == pid for r in rows):
        return None
    val = prob.evaluator.accuracy(policy)
    images = prob.evaluator.last.images if prob.evaluator.last else prob.evaluator.val_images
    # A third of the policies by their id, whatever their kind (``i % 3`` fell in step with the
    # kinds' cycle: the first rows tested random and mixed policies only, no perturbation).
    tested = int(pid, 16) % TEST_EVERY == 0 if i >= _ID_TESTS_FROM else i % TEST_EVERY == 0
    test = prob.evaluator.test_accuracy(policy) if tested else None
    bops, size = prob.costs(policy)
    return {
        "id": pid,
        "source": kind,
        "sample": i,
        "budget": budget,
        **({"spread": plan["spread"]} if kind == "mixed" else {}),
        **({"parent": parent["id"]} if parent else {}),
        "val": float(val),
        "val_images": int(images),
        "complete": True,
        "test": None if test is None else float(test),
        "bops_ratio": bops,
        "size_ratio": size,
        "seconds": round(time.perf_counter() - start, 2),
        "fingerprint": policy.fingerprint,
        "policy": encode(policy),
    }


def import_grid(rows: list[dict[str, Any]], runs: Path, quick: bool) -> list[dict[str, Any]]:
    """Rows for the policies the grid's searches evaluated that the data does not hold yet."""
    from jpq_env import Policy

    prob = problem(quick)
    seen = {r["id"] for r in rows}
    new = []
    for log in sorted(runs.glob("*/evaluations.jsonl")):
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption
            policy = Policy.from_layers(rec["policy"], prob.graph.fingerprint)
            pid = policy_id(policy)
            if pid in seen or rec.get("split", "val") != "val":
                continue
            seen.add(pid)
            new.append(
                {
                    "id": pid,
                    "source": "grid",
                    "run": log.parent.name,
                    "episode": rec["episode"],
                    "val": float(rec["accuracy"]),
                    "val_images": int(rec.get("proxy_images", prob.evaluator.val_images)),
                    "complete": bool(rec.get("proxy_complete", True)),
                    "test": None,
                    "bops_ratio": float(rec["bops_ratio"]),
                    "size_ratio": float(rec["size_ratio"]),
                    "fingerprint": policy.fingerprint,
                    "policy": encode(policy),
                }
            )
    return new


def data_path(quick: bool, folder: Path = RESULTS) -> Path:
    return folder / f"jpq_bench_{'digits' if quick else 'resnet20-cifar'}.jsonl"


def build_data(rows_wanted: int, quick: bool, path: Path, runs: Path = GRID_RUNS) -> None:
    """Import the grid's evaluations, then score samples until ``rows_wanted`` sampled rows."""
    from tqdm import tqdm

    rows = load_rows(path)
    stamp = {"commit": commit(), "command": command()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        if runs.is_dir():
            new = import_grid(rows, runs, quick)
            for r in new:
                f.write(json.dumps({**r, **stamp}) + "\n")
            rows += new
            print(f"imported {len(new)} grid evaluations ({len(rows)} rows)", flush=True)
        done = {r["sample"] for r in rows if "sample" in r}
        sampled = len(done)
        i = max(done, default=-1) + 1
        bar = tqdm(total=rows_wanted, initial=min(sampled, rows_wanted), desc="policies scored")
        while sampled < rows_wanted:
            row = sample_row(i, rows, quick)
            i += 1
            if row is None:
                continue
            row.update(stamp, commit=commit())  # the code as this row ends (a long run spans edits)
            f.write(json.dumps(row) + "\n")
            f.flush()
            rows.append(row)
            sampled += 1
            bar.update(1)
        bar.close()
    print(f"{len(rows)} rows in {path}", flush=True)


# --------------------------------------------------------------------------- the surrogate


def held_out(row: dict[str, Any]) -> bool:
    """Rows kept out of the fit (ids ending in 0-2: about a fifth), to score the surrogates."""
    return row["id"][-1] in "012"


def near_budgets(row: dict[str, Any], budgets: Sequence[float] = GRID_BUDGETS) -> bool:
    """A BOPs ratio within 25% of one of the grid's budgets."""
    return any(abs(math.log(row["bops_ratio"] / b)) < math.log(1.25) for b in budgets)


def ranking(pred: np.ndarray, real: np.ndarray, k: int = 10) -> dict[str, float]:
    """Kendall tau (tau-b), the top-``k`` overlap and the mean absolute error, in points."""
    from scipy.stats import kendalltau

    top = len(set(np.argsort(-pred)[:k]) & set(np.argsort(-real)[:k])) / min(k, len(real))
    tau = float(kendalltau(pred, real).statistic) if len(real) > 1 else float("nan")
    return {
        "tau": round(tau, 4),
        "top10": round(top, 2),
        "mae": round(float(np.abs(pred - real).mean()) * 100, 2),
        "n": len(real),
    }


def _weights(rows: Sequence[dict[str, Any]], full: int) -> np.ndarray:
    """Row weights of the fit: a raced evaluation counts for the share of the images it scored."""
    return np.array([1.0 if r["complete"] else r["val_images"] / full for r in rows])


def compare_models(
    model: Any,
    prob: Problem,
    fit: list[dict[str, Any]],
    hold: list[dict[str, Any]],
    seed: int,
    epochs: int = 600,
) -> dict[str, dict[str, Any]]:
    """The bench's surrogate and three other models, scored on the held-out complete rows.

    The others are fitted on the same rows: an ensemble of 8 small ReLU networks on the same
    features and targets (the schema-1 surrogate; ``epochs`` Adam steps each), ridge regression
    on the same features, and the summed sensitivity KL through a fitted sigmoid
    (``jpq_agents.surrogate``; complete rows only: it takes no row weights).
    """
    from sklearn.linear_model import Ridge

    from jpq_agents.surrogate import Surrogate
    from jpq_env.proxy.bench import Ensemble, policy_features

    names, table = prob.graph.names, model.table
    fit_policies = [decode(r, names) for r in fit]
    hold_policies = [decode(r, names) for r in hold]
    x_fit, x_hold = policy_features(fit_policies, table), policy_features(hold_policies, table)
    y_fit = np.array([r["val"] for r in fit])
    y_hold = np.array([r["val"] for r in hold])
    w_fit = _weights(fit, prob.evaluator.val_images)
    near = np.array([near_budgets(r) for r in hold])
    predicted = model.predict(hold_policies)
    preds: dict[str, np.ndarray] = {"8 boosted-tree models (shipped)": predicted["val"]}
    mlp = Ensemble.fit(x_fit, y_fit, weights=w_fit, epochs=epochs, seed=seed, logit=True)
    preds["8 ReLU networks, same features"] = mlp.predict(x_hold)[0]
    mu, sd = x_fit.mean(0), np.where(x_fit.std(0) > 1e-12, x_fit.std(0), 1.0)
    ridge = Ridge(alpha=1.0).fit((x_fit - mu) / sd, y_fit, sample_weight=w_fit)
    preds["ridge, same features"] = ridge.predict((x_hold - mu) / sd)
    complete = [i for i, r in enumerate(fit) if r["complete"]]
    kl = Surrogate(table, prob.evaluator.fp32_accuracy, floor=1 / prob.task.num_classes, seed=seed)
    kl.fit([fit_policies[i] for i in complete], [fit[i]["val"] for i in complete])
    preds["summed KL + sigmoid (jpq_agents.surrogate)"] = kl.predict(hold_policies)[0]
    metrics: dict[str, dict[str, Any]] = {}
    for name, p in preds.items():
        metrics[name] = {"all": ranking(p, y_hold)}
        if near.sum() > 1:
            metrics[name]["near"] = ranking(p[near], y_hold[near])
    tested = [i for i, r in enumerate(hold) if r.get("test") is not None]
    if "test" in predicted and len(tested) > 1:
        real = np.array([hold[i]["test"] for i in tested])
        known = [i for i, r in enumerate(fit) if r.get("test") is not None]
        ens = Ensemble.fit(
            x_fit[known], np.array([fit[i]["test"] for i in known]), seed=seed, logit=True
        )
        metrics["test accuracy"] = {
            "shipped": ranking(predicted["test"][tested], real),
            "test ensemble": ranking(ens.predict(x_hold[tested])[0], real),
        }
    return metrics


def fit_bench(
    data: Path, out: Path, quick: bool, epochs: int = 600, seed: int = 0
) -> dict[str, Any]:
    """Fit the bench on ``data`` (the fitting rows) and write the bench file ``out``."""
    import torch

    from jpq_env.envs.bench import build_bench

    prob = problem(quick)
    rows = load_rows(data)
    fit = [r for r in rows if not held_out(r)]
    hold = [r for r in rows if held_out(r) and r["complete"]]
    if len(fit) < 10 or len(hold) < 2:
        sys.exit(f"{data} holds {len(rows)} rows: make more with `jpq_bench data` first")
    torch.manual_seed(seed)
    names = prob.graph.names
    model = build_bench(
        prob.envs[BUDGETS[0]],
        [decode(r, names) for r in fit],
        [r["val"] for r in fit],
        test=[r.get("test") for r in fit],
        weights=_weights(fit, prob.evaluator.val_images),
        seed=seed,
        meta={
            "data": {
                "file": data.name,
                "rows": len(rows),
                "fit_rows": len(fit),
                "test_rows": sum(r.get("test") is not None for r in fit),
                "sha256": hashlib.sha256(data.read_bytes()).hexdigest()[:16],
            },
            "commit": commit(),
            "command": command(),
            # What the real task needs besides its data and weights (jpq validate --real).
            "task_options": prob.task_options,
        },
    )
    model.meta["metrics"] = compare_models(model, prob, fit, hold, seed, epochs)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return model.meta


# --------------------------------------------------------------------------- agents and speed

AGENTS = ("two-level", "greedy", "cmaes-warm", "ppo", "random", "two-stage", "uniform")
ONCE = ("two-stage", "uniform")  # deterministic: one seed


def check_agents(agents: Sequence[str]) -> None:
    """Raise ValueError naming the agents of ``agents`` the leaderboard does not have."""
    unknown = [a for a in agents if a not in AGENTS]
    if unknown:
        raise ValueError(f"unknown agents {unknown}: the leaderboard's are {', '.join(AGENTS)}")


def _folder(root: Path, run: dict[str, Any]) -> Path:
    """A leaderboard search's run folder under ``root``."""
    return root / "-".join(_agent_key(run))


def agent_runs(
    episodes: Sequence[int],
    seeds: int,
    budgets: Sequence[float],
    agents: Sequence[str] = AGENTS,
) -> list[dict[str, Any]]:
    """The leaderboard's searches: every agent of ``agents``, budget, length and seed.

    In that order (lengths, then budgets, then agents in ``AGENTS``' order, then seeds), so that
    a resumed run fills the shorter searches first. Deterministic agents (``ONCE``) run once.

    Raises:
        ValueError: If ``agents`` names an agent the leaderboard does not have.
    """
    check_agents(agents)
    return [
        {"agent": a, "budget": b, "episodes": n, "seed": s}
        for n in episodes
        for b in budgets
        for a in AGENTS
        if a in agents
        for s in range(1 if a in ONCE else seeds)
    ]


def _agent_key(row: dict[str, Any]) -> tuple[str, ...]:
    return (row["agent"], f"{row['budget']:.8f}", str(row["episodes"]), str(row["seed"]))


def one_agent(run: dict[str, Any]) -> dict[str, Any]:
    """One search on the bench, its row (a module-level function: ``run_grid`` may fork)."""
    import shutil

    from jpq_agents.compare import load_run
    from jpq_agents.run import run_search

    out = _folder(Path(run["out"]), run)
    if out.exists():
        shutil.rmtree(out)  # a row costs one whole search
    summary = run_search(
        run["agent"],
        out,
        run["episodes"],
        seed=run["seed"],
        env_id=BENCH_ID,
        env_kwargs={"bench": run["bench"], "budget_bops": run["budget"]},
        progress=False,
    )
    curve = load_run(out).best
    best = summary.get("best") or {}
    return {
        **{k: run[k] for k in ("agent", "budget", "episodes", "seed")},
        "val": best.get("accuracy_val"),
        "test": best.get("accuracy_test"),
        "evaluations": summary["evaluations"],
        "seconds": round(float(summary["seconds"]), 2),
        "curve_best_val": [None if math.isnan(v) else round(float(v), 5) for v in curve],
        "bench": run["bench_digest"],
        "cpu": run.get("cpu"),
        "commit": run["commit"],
    }


def run_agents(
    bench: str,
    log: Path,
    episodes: Sequence[int],
    seeds: int,
    budgets: Sequence[float],
    out: Path,
    agents: Sequence[str] = AGENTS,
    jobs: int = 1,
    rerun: bool = False,
) -> list[dict[str, Any]]:
    """The bench's leaderboard runs not in ``log`` yet, row by row (``jobs`` processes).

    With ``rerun``, ``log`` holds searches run again (``rerun_table`` compares them with the
    leaderboard's rows): one row per search and CPU, as float kernels differ across CPUs.
    """
    from benchmarks.common import run_grid
    from jpq_env.proxy.bench import BenchModel

    digest = BenchModel.load(bench).digest()
    extra = {"bench": bench, "bench_digest": digest, "commit": commit(), "out": str(out)}
    extra["cpu"] = cpu()
    runs = [{**r, **extra} for r in agent_runs(episodes, seeds, budgets, agents)]

    def describe(row: dict[str, Any]) -> str:
        return (
            f"{row['agent']} 1/{round(1 / row['budget'])} {row['episodes']} episodes seed "
            f"{row['seed']}: predicted test {row['test']}, {row['seconds']} s"
        )

    def per_cpu(row: dict[str, Any]) -> tuple[str, ...]:
        return (*_agent_key(row), _cpu_of(row))

    key = per_cpu if rerun else _agent_key
    return run_grid(runs, log, one_agent, key, jobs=jobs, describe=describe)


def _cpu_of(row: dict[str, Any]) -> str:
    """The CPU a row ran on (rows from before it was recorded: "not recorded")."""
    return str(row.get("cpu") or "not recorded")


def rerun_table(rows: Sequence[dict[str, Any]], reruns: Sequence[dict[str, Any]]) -> list[str]:
    """Report lines: leaderboard searches run again (on another machine), against their rows.

    Per agent, budget and length: the recorded and the rerun best predicted held-out score over
    the same seeds, and how many reruns found exactly the recorded score.
    """
    if not reruns:
        return []
    recorded = {_agent_key(r): r for r in rows}
    out = [
        "",
        "## Searches run again",
        "",
        "Leaderboard searches run again with the same seeds (`python -m benchmarks.jpq_bench "
        "agents --rerun`, rows in `jpq_bench_rerun_runs.jsonl`): the best predicted held-out "
        "score (%) recorded and rerun, mean ± sd over the same seeds, and the reruns that found "
        "exactly the recorded score. The bench is deterministic; float kernels are not the same "
        "on every CPU, so a learning agent's search can take another path on another machine.",
        "",
        "| agent | budget | evaluations | CPU (rerun) | seeds | recorded | rerun | identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[Any, ...], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for r in reruns:
        old = recorded.get(_agent_key(r))
        if old is not None and r.get("val") is not None and old.get("val") is not None:
            g = (r["agent"], r["budget"], r["episodes"], _cpu_of(r))
            groups.setdefault(g, []).append((old, r))
    for (agent, budget, n, where), pairs in sorted(
        groups.items(), key=lambda kv: (AGENTS.index(kv[0][0]), -kv[0][1], kv[0][2], kv[0][3])
    ):
        cpus = sorted({_cpu_of(old) for old, _ in pairs})
        same = sum(old["val"] == new["val"] for old, new in pairs)
        out.append(
            f"| {agent} | 1/{round(1 / budget)} | {n:,} | {where} (recorded: {', '.join(cpus)}) "
            f"| {len(pairs)} | {_mean_sd([old['val'] for old, _ in pairs])} | "
            f"{_mean_sd([new['val'] for _, new in pairs])} | {same} of {len(pairs)} |"
        )
    return out


def speed(
    bench: str, quick: bool, real_episodes: int = 10, bench_episodes: int = 200
) -> dict[str, Any]:
    """Seconds per episode on the bench and on the real environment (random actions, 1/64).

    Both after a warm-up, interleaved: one real episode, then ``bench_episodes /
    real_episodes`` bench episodes, ``real_episodes`` times.
    """
    from jpq_env.envs.bench import JPQBenchEnv

    rng = np.random.default_rng(0)  # one stream: every episode draws new actions (no cache helps)

    def timed(env: Any, n: int) -> float:
        slots = env.action_space.shape[0]
        start = time.perf_counter()
        for _ in range(n):
            seed = int(rng.integers(2**31))
            _episode(env, lambda _: rng.uniform(-1, 1, slots).astype(np.float32), seed)
        return (time.perf_counter() - start) / n

    fast = JPQBenchEnv(bench=bench, budget_bops=1 / 64)
    real = problem(quick).envs[1 / 64]
    timed(fast, 3)  # warm-up
    timed(real, 1)
    # Interleaved (a real episode, then its share of bench episodes), so that a change of load
    # on the machine during the measurement weighs on both sides alike.
    b_times, r_times = [], []
    for _ in range(real_episodes):
        r_times.append(timed(real, 1))
        b_times.append(timed(fast, max(bench_episodes // real_episodes, 1)))
    b, r = float(np.mean(b_times)), float(np.mean(r_times))
    return {
        "bench_ms": round(b * 1000, 3),
        "real_s": round(r, 3),
        "speedup": round(r / b),
        "steps": 2 * len(fast.graph),
        "bench_episodes": bench_episodes,
        "real_episodes": real_episodes,
    }


# --------------------------------------------------------------------------- validation

CHECKED = ("two-level", "greedy", "cmaes-warm")
"""Agents whose best bench policies ``validate`` re-scores by default (the leaderboard's top)."""


def validation_runs(
    rows: Sequence[dict[str, Any]],
    agents: Sequence[str] = CHECKED,
    lengths: Sequence[int] = (300, 1000),
    seeds: int = 3,
) -> list[dict[str, Any]]:
    """The leaderboard searches (rows of its log) whose best policy ``validate`` re-scores."""
    runs: dict[tuple[str, ...], dict[str, Any]] = {}  # one per search (the log's last row)
    for r in rows:
        if (
            r["agent"] in agents
            and r["episodes"] in lengths
            and r["seed"] < seeds
            and r.get("val") is not None
        ):
            keys = ("agent", "budget", "episodes", "seed")  # and the bench file's digest
            runs[_agent_key(r)] = {**{k: r[k] for k in keys}, "bench": r.get("bench")}
    return list(runs.values())


def run_validation(
    runs: Sequence[dict[str, Any]], log: Path, folder: Path, quick: bool
) -> list[dict[str, Any]]:
    """Each run's best policy re-scored with the real proxy (``jpq validate --real``), row by row.

    How far long searches exploit the surrogate: a policy the bench over-rates scores below its
    prediction on the real proxy, and the ensemble's spread may say so in advance. Runs whose
    folder is not on this machine are skipped (named).
    """
    from benchmarks.common import run_grid
    from jpq_agents.validate import replay_real

    options, weights = None, {}
    if not quick:
        from benchmarks.cifar_workload import DATA, task_options

        options = task_options(DATA)
        # The checkpoint is prepared on each machine (its last bits, and a few test images,
        # differ across CPUs): each row names the one that scored it.
        digest = hashlib.sha256(Path(options["weights"]).read_bytes()).hexdigest()[:12]
        weights = {"weights": digest}
    here = [r for r in runs if (_folder(folder, r) / "policy.json").is_file()]
    for r in runs:
        if r not in here:
            print(f"skipped (no run folder here): {_folder(folder, r)}", flush=True)
    envs: dict[str, Any] = {}  # one real environment for every policy

    def one(run: dict[str, Any]) -> dict[str, Any]:
        [row] = replay_real(_folder(folder, run), task_options=options, envs=envs)
        del row["where"]
        return {**run, **row, **weights, "commit": commit()}

    def describe(row: dict[str, Any]) -> str:
        gap = (row["real_val"] - row["predicted_val"]) * 100
        return (
            f"{row['agent']} 1/{round(1 / row['budget'])} {row['episodes']} episodes seed "
            f"{row['seed']}: held-out predicted {row['predicted_val']:.4f} "
            f"(spread {row['predicted_val_std']:.4f}), real {row['real_val']:.4f} ({gap:+.2f})"
        )

    return run_grid(here, log, one, _agent_key, describe=describe)


def _checkpoints(rows: Sequence[dict[str, Any]]) -> str:
    """Which prepared checkpoints scored the rows (rows before the digest was recorded: none)."""
    seen = Counter(r.get("weights", "not recorded") for r in rows)
    return (
        "The real proxy's checkpoint (`resnet20-jpeg-ft.pt`, prepared on each machine by `python "
        "-m benchmarks.cifar_workload`; sha256 prefix: rows): "
        + ", ".join(f"{k}: {v}" for k, v in sorted(seen.items()))
        + "."
    )


def validation_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Report lines: predicted against real scores of the searches' best policies, per length."""
    from scipy.stats import spearmanr

    if not rows:
        return []
    out = [
        "",
        "## Long searches against the real proxy",
        "",
        "The best policy of leaderboard searches, re-scored with the real proxy (`python -m "
        "benchmarks.jpq_bench validate`, rows in `jpq_bench_validate_runs.jsonl`): held-out "
        "score predicted and real, the gap (real - predicted, points) and the ensemble's spread; "
        "mean ± sd over the seeds. " + _checkpoints(rows),
        "",
        "| budget | agent | evaluations | searches | predicted held-out | real held-out | "
        "gap (points) | spread (points) | predicted test | real test |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for budget, agent, n in itertools.product(
        sorted({r["budget"] for r in rows}, reverse=True),
        AGENTS,
        sorted({r["episodes"] for r in rows}),
    ):
        sel = [r for r in rows if (r["budget"], r["agent"], r["episodes"]) == (budget, agent, n)]
        if sel:
            gaps = [r["real_val"] - r["predicted_val"] for r in sel]
            out.append(
                f"| 1/{round(1 / budget)} | {agent} | {n:,} | {len(sel)} | "
                f"{_mean_sd([r['predicted_val'] for r in sel])} | "
                f"{_mean_sd([r['real_val'] for r in sel])} | {_mean_sd(gaps)} | "
                f"{_mean_sd([r['predicted_val_std'] for r in sel])} | "
                f"{_mean_sd([r['predicted_test'] for r in sel])} | "
                f"{_mean_sd([r['real_test'] for r in sel])} |"
            )
    # Per budget (pooled, the two budgets' different accuracy levels would weigh in).
    rhos = []
    for budget in sorted({r["budget"] for r in rows}, reverse=True):
        sel = [r for r in rows if r["budget"] == budget]
        over = [r["predicted_val"] - r["real_val"] for r in sel]
        spread = [r["predicted_val_std"] for r in sel]
        if len(sel) > 2 and np.ptp(over) > 0 and np.ptp(spread) > 0:  # else no correlation
            rho = spearmanr(spread, over).statistic
            rhos.append(f"1/{round(1 / budget)} {rho:.3f} ({len(sel)} policies)")
    if rhos:
        out.append(
            "\nSpearman correlation of the spread with the over-prediction (predicted - real): "
            + ", ".join(rhos)
            + "."
        )
    return out


# --------------------------------------------------------------------------- report

AGENTS_LOG = RESULTS / "jpq_bench_agents_runs.jsonl"
VALIDATE_LOG = RESULTS / "jpq_bench_validate_runs.jsonl"
RERUN_LOG = RESULTS / "jpq_bench_rerun_runs.jsonl"
SPEED_LOG = RESULTS / "jpq_bench_speed_runs.jsonl"
GRID_LOG = RESULTS / "resnet20_grid_runs.jsonl"


def _verdict(ok: bool) -> str:
    return "yes" if ok else "no"


def _mean_sd(xs: Sequence[float]) -> str:
    a = np.array(xs, dtype=float) * 100
    return f"{a.mean():.2f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.2f}"


def agreement(
    bench_rows: list[dict[str, Any]],
    grid_rows: list[dict[str, Any]],
    episodes: int = 300,
    field: str = "test",
) -> tuple[list[list[Any]], float | None]:
    """Per (agent, budget) the best policies' ``field`` on the bench (predicted) and on the grid.

    ``field``: ``test`` (test accuracy) or ``val`` (the held-out score the searches ranked by).
    Returns the rows and Kendall tau between the two means over the agents both have, per budget,
    averaged over the budgets.
    """
    from scipy.stats import kendalltau

    table = []
    for budget in sorted({r["budget"] for r in bench_rows}, reverse=True):
        for agent in AGENTS:
            b = [
                r[field]
                for r in bench_rows
                if r["agent"] == agent and r["budget"] == budget and r["episodes"] == episodes
            ]
            g = [
                r[field]
                for r in grid_rows
                if r["agent"] == agent and abs(r["budget"] - budget) < 1e-12 and "task" not in r
            ]
            if b:
                table.append([agent, budget, b, g])
    # Per budget (pooling budgets would count every 1/64 agent above every 1/128 one as agreement).
    taus = []
    for budget in sorted({row[1] for row in table}):
        pairs = [(np.mean(b), np.mean(g)) for _, bud, b, g in table if bud == budget and b and g]
        if len(pairs) > 2:
            taus.append(float(kendalltau(*zip(*pairs, strict=True)).statistic))
    return table, (float(np.mean(taus)) if taus else None)


def leaderboard(rows: list[dict[str, Any]]) -> list[str]:
    """The bench's leaderboard: per budget, every agent at every search length it ran.

    Cells: the best policy's predicted held-out score (what the searches rank by), mean ± sd over
    the seeds run, the seeds in brackets; the predicted test accuracy is in the log.
    """
    lengths = sorted({r["episodes"] for r in rows})
    out = [
        "",
        "## Leaderboard on the bench",
        "",
        "Best predicted held-out score (%) of each search, mean ± sd over seeds (seeds run in "
        "brackets); learning curves in the picture below. Rows in "
        "`jpq_bench_agents_runs.jsonl` (`python -m benchmarks.jpq_bench agents --episodes "
        "300,1000,10000 --seeds 10` resumes row by row).",
    ]
    for budget in sorted({r["budget"] for r in rows}, reverse=True):

        def score(agent: str, n: int, budget: float = budget) -> str:
            vals = [
                r["val"]
                for r in rows
                if r["agent"] == agent and r["budget"] == budget and r["episodes"] == n
            ]
            return f"{_mean_sd(vals)} ({len(vals)})" if vals else "-"

        out += ["", f"### 1/{round(1 / budget)} of FP32 BOPs", "", *_by_agent(lengths, score)]
    return out + search_costs(rows, lengths)


def _by_agent(lengths: Sequence[int], cell: Callable[[str, int], str]) -> list[str]:
    """A table with a row per agent that ran (``cell(agent, length)``, "-" if not run)."""
    out = [
        "| agent | " + " | ".join(f"{n:,} episodes" for n in lengths) + " |",
        "|---|" + "---|" * len(lengths),
    ]
    for agent in AGENTS:
        cells = [cell(agent, n) for n in lengths]
        if any(c != "-" for c in cells):
            out.append(f"| {agent} | " + " | ".join(cells) + " |")
    return out


def search_costs(rows: list[dict[str, Any]], lengths: Sequence[int]) -> list[str]:
    """What one search costs: its mean wall seconds per length, over budgets and seeds.

    The bench makes evaluations nearly free, so what is left is the agent's own compute (a
    model-based agent fits and imagines between evaluations): the reason a row may be missing.
    """
    out = [
        "",
        "### Seconds per search",
        "",
        "Wall seconds of one search as recorded (`JPQ_THREADS=1`; `--jobs 2` runs two at once "
        "on the two cores), mean over budgets and seeds, searches in brackets. Rows before "
        "commit 34d6369 ran with numpy's OpenBLAS on two threads besides torch's one, which "
        "slowed CMA-ES searches 2-4x (each row names its commit).",
        "",
    ]

    def seconds(agent: str, n: int) -> str:
        secs = [r["seconds"] for r in rows if r["agent"] == agent and r["episodes"] == n]
        return f"{statistics.mean(secs):,.1f} ({len(secs)})" if secs else "-"

    return out + _by_agent(lengths, seconds)


def report(
    model_path: Path,
    agents_log: Path,
    speed_log: Path,
    grid_log: Path,
    data: Path,
    validate_log: Path | None = None,
    rerun_log: Path | None = None,
) -> str:
    """The bench's report: data, surrogate against simpler models, agents, speed, targets."""
    from jpq_env.proxy.bench import BenchModel

    model = BenchModel.load(model_path)
    meta = model.meta
    rows = load_rows(data)
    out = [f"# JPQ-Bench: {meta['task']}", ""]
    out += ["## The data", "", "| source | rows | complete | with test |", "|---|---|---|---|"]
    for source in ("grid", "random", "structured", "mixed", "perturb"):
        sel = [r for r in rows if r["source"] == source]
        if sel:
            out.append(
                f"| {source} | {len(sel)} | {sum(r['complete'] for r in sel)} | "
                f"{sum(r.get('test') is not None for r in sel)} |"
            )
    out += [
        "",
        f"Fitted on {meta['data']['fit_rows']} rows (data sha256 {meta['data']['sha256']}); the "
        "rest (ids ending in 0-2) held out. FP32: held-out "
        f"{meta['fp32']['val'] * 100:.2f}%, test {meta['fp32']['test'] * 100:.2f}%.",
        "",
        "## The surrogate against simpler models (held-out complete rows, never fitted on)",
        "",
        "| model | tau, all | top-10, all | MAE (points) | tau, near 1/64 and 1/128 | "
        "top-10, near | rows near |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in meta["metrics"].items():
        if name == "test accuracy":
            continue
        a = m["all"]
        n = m.get("near", {})
        out.append(
            f"| {name} | {a['tau']:.3f} | {a['top10']:.1f} | {a['mae']:.2f} | "
            f"{n.get('tau', float('nan')):.3f} | {n.get('top10', float('nan')):.1f} | "
            f"{n.get('n', 0)} |"
        )
    shipped = next(k for k in meta["metrics"] if "shipped" in k)
    near = meta["metrics"][shipped].get("near", {})
    tests = meta["metrics"].get("test accuracy", {})
    test = tests.get("shipped", {})
    if tests:
        alt = tests["test ensemble"]
        out += [
            "",
            f"Test accuracy of {test['n']} held-out policies, predicted from the held-out score "
            f"through a logit-linear map (what the bench ships): Kendall tau {test['tau']:.3f}, "
            f"top-10 {test['top10']:.1f}, MAE {test['mae']:.2f} points; an ensemble fitted on "
            f"the tested policies instead: tau {alt['tau']:.3f}, MAE {alt['mae']:.2f} points "
            "(its policies are mostly poor ones: it was 30 points low on the best ResNet-20 "
            "policies).",
        ]
    targets = [
        ("surrogate vs real proxy near the budgets, Kendall tau >= 0.9", near.get("tau")),
        ("predicted vs real test accuracy, Kendall tau >= 0.85", test.get("tau")),
    ]
    bench_rows = load_rows(agents_log)
    if bench_rows:
        grid = load_rows(grid_log)
        table, tau = agreement(bench_rows, grid)
        vals, tau_val = agreement(bench_rows, grid, field="val")
        out += [
            "",
            "## Agents: the bench against the real grid (300 evaluations)",
            "",
            "The best policy of each search: its held-out score (what the search ranked by) and "
            "its test accuracy, predicted on the bench, measured on the real grid; mean ± sd "
            "over seeds.",
            "",
            "| agent | budget | bench held-out | real held-out | bench test | real test | seeds "
            "(bench, real) |",
            "|---|---|---|---|---|---|---|",
        ]
        for (agent, budget, b, g), (_, _, bv, gv) in zip(table, vals, strict=True):
            out.append(
                f"| {agent} | 1/{round(1 / budget)} | {_mean_sd(bv)} | "
                f"{_mean_sd(gv) if gv else '-'} | {_mean_sd(b)} | {_mean_sd(g) if g else '-'} | "
                f"{len(b)}, {len(g)} |"
            )
        out.append(
            f"\nKendall tau of the agents' order, bench against grid, per budget (mean): held-out "
            f"{'-' if tau_val is None else f'{tau_val:.3f}'}, test "
            f"{'-' if tau is None else f'{tau:.3f}'}."
        )
        targets.append(
            ("agents' ranking by held-out score, bench vs grid (per budget), tau >= 0.8", tau_val)
        )
        targets.append(("the same by test accuracy (the issue names no split), tau >= 0.8", tau))
        out += leaderboard(bench_rows)
    if validate_log is not None:
        out += validation_table(load_rows(validate_log))
    if rerun_log is not None:
        out += rerun_table(load_rows(agents_log), load_rows(rerun_log))
    speeds = load_rows(speed_log)
    if speeds:
        s = speeds[-1]
        out += [
            "",
            "## Speed (same machine, random actions at 1/64)",
            "",
            f"A bench episode ({s['steps']} steps): {s['bench_ms']} ms; a real episode: "
            f"{s['real_s']} s; **{s['speedup']}x** (commit {s['commit']}, `{s['command']}`).",
        ]
        targets.append(("bench episode >= 1000x faster than the real one", s["speedup"] / 1000))
    out += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, value in targets:
        if value is None:
            out.append(f"| {name} | not measured | no |")
            continue
        if name.startswith("bench episode"):
            out.append(f"| {name} | {value * 1000:.0f}x | {_verdict(value >= 1)} |")
        else:
            goal = float(name.rsplit(">= ", 1)[1])
            out.append(f"| {name} | {value:.3f} | {_verdict(value >= goal)} |")
    return "\n".join(out)


def plot(model_path: Path, data: Path, agents_log: Path, path: Path) -> None:
    """Predicted against real held-out scores, and the agents' best-so-far on the bench."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jpq_env.proxy.bench import BenchModel

    model = BenchModel.load(model_path)
    rows = [r for r in load_rows(data) if held_out(r) and r["complete"]]
    names = model.meta["names"]
    pred = model.predict([decode(r, names) for r in rows])["val"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    real = np.array([r["val"] for r in rows])
    near = np.array([near_budgets(r) for r in rows])
    axes[0].scatter(real[~near] * 100, pred[~near] * 100, s=6, alpha=0.5, label="other budgets")
    axes[0].scatter(real[near] * 100, pred[near] * 100, s=8, label="near 1/64, 1/128")
    axes[0].plot([0, 100], [0, 100], "k--", lw=0.8)
    axes[0].set(xlabel="real held-out score (%)", ylabel="predicted (%)", title="held-out policies")
    axes[0].legend()
    runs = [r for r in load_rows(agents_log) if r["budget"] == 1 / 64]
    for agent in AGENTS:
        mine = [r for r in runs if r["agent"] == agent]
        if not mine:
            continue
        longest = max(r["episodes"] for r in mine)  # each agent's longest searches, mean curve
        curves = [r["curve_best_val"] for r in mine if r["episodes"] == longest]
        size = min(len(c) for c in curves)
        arr = np.array([[np.nan if v is None else v for v in c[:size]] for c in curves]) * 100
        with np.errstate(all="ignore"):
            mean = np.nanmean(arr, 0)
        axes[1].plot(
            np.arange(1, size + 1),
            mean,
            label=f"{agent} ({len(curves)} seed{'s' if len(curves) > 1 else ''})",
        )
    axes[1].set_xscale("log")
    axes[1].set(xlabel="evaluations", ylabel="best predicted held-out (%)", title="agents at 1/64")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- entry point


def quick() -> None:
    """Every step on digits, small, in a temporary folder (CI's smoke run; no result files)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = data_path(True, folder)
        build_data(48, True, data, runs=folder / "no-grid")
        bench = folder / "digits.npz"
        fit_bench(data, bench, True, epochs=60)
        log = folder / "agents.jsonl"
        rows = run_agents(str(bench), log, [12], 1, [1 / 64], folder / "runs")
        checked = folder / "validate.jsonl"
        run_validation(validation_runs(rows, lengths=[12]), checked, folder / "runs", True)
        s = speed(str(bench), True, real_episodes=2, bench_episodes=20)
        speed_log = folder / "speed.jsonl"
        speed_log.write_text(json.dumps({**s, "commit": commit(), "command": command()}) + "\n")
        print(report(bench, log, speed_log, folder / "no-grid.jsonl", data, checked))


RUNS = Path(__file__).parent / "runs" / "jpq_bench"


def _names(parser: argparse.ArgumentParser, given: str | None, default: Sequence[str]) -> list[str]:
    """The agents named by ``--agents`` (default ``default``); unknown names end the program."""
    agents = [a.strip() for a in given.split(",") if a.strip()] if given else list(default)
    try:
        check_agents(agents)
    except ValueError as exc:
        parser.error(str(exc))
    return agents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "step",
        nargs="?",
        choices=["data", "fit", "agents", "validate", "speed", "report"],
        default=None,
    )
    parser.add_argument("--quick", action="store_true", help="every step on digits, no files")
    parser.add_argument("--rows", type=int, default=500, help="data: sampled rows wanted")
    parser.add_argument(
        "--epochs", type=int, default=600, help="fit: Adam steps per network of the compared MLPs"
    )
    parser.add_argument(
        "--episodes",
        default=None,
        help="agents, validate: comma-separated lengths (default 300; validate: 300,1000)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="agents, validate: seeds 0..N-1")
    parser.add_argument("--budgets", default="1/64,1/128", help="agents: BOPs budgets")
    parser.add_argument(
        "--agents",
        default=None,
        help="agents, validate: comma-separated subset (default all; validate: "
        + ",".join(CHECKED)
        + ")",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="agents: searches at once (worker processes run torch on one thread each)",
    )
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="agents: run leaderboard searches again (another machine) into "
        "jpq_bench_rerun_runs.jsonl, compared in the report",
    )
    args = parser.parse_args()
    configure_threads()
    if args.quick or args.step is None:
        if not args.quick:
            parser.error("name a step (data, fit, agents, validate, speed, report) or give --quick")
        quick()
        return
    data = data_path(False)
    bench = SHIPPED / "resnet20-cifar.npz"
    if args.step == "data":
        build_data(args.rows, False, data)
    elif args.step == "fit":
        meta = fit_bench(data, bench, False, epochs=args.epochs)
        print(json.dumps(meta["metrics"], indent=1))
    elif args.step == "agents":
        budgets = [
            1 / float(b.split("/")[1]) if "/" in b else float(b) for b in args.budgets.split(",")
        ]
        episodes = [int(n) for n in (args.episodes or "300").split(",")]
        agents = _names(parser, args.agents, AGENTS)
        if args.rerun:
            run_agents(
                "resnet20-cifar",
                RERUN_LOG,
                episodes,
                args.seeds,
                budgets,
                RUNS / "rerun",
                agents,
                args.jobs,
                rerun=True,
            )
        else:
            run_agents(
                "resnet20-cifar", AGENTS_LOG, episodes, args.seeds, budgets, RUNS, agents, args.jobs
            )
    elif args.step == "validate":
        lengths = [int(n) for n in (args.episodes or "300,1000").split(",")]
        agents = _names(parser, args.agents, CHECKED)
        todo = validation_runs(load_rows(AGENTS_LOG), agents, lengths, args.seeds)
        run_validation(todo, VALIDATE_LOG, RUNS, False)
    elif args.step == "speed":
        s = speed("resnet20-cifar", False)
        with SPEED_LOG.open("a") as f:
            f.write(json.dumps({**s, "commit": commit(), "command": command()}) + "\n")
        print(s)
    if args.step == "data":
        return
    body = report(bench, AGENTS_LOG, SPEED_LOG, GRID_LOG, data, VALIDATE_LOG, RERUN_LOG)
    if args.step in ("report", "fit", "agents", "validate", "speed"):
        plot(bench, data, AGENTS_LOG, RESULTS / "jpq_bench.png")
        print(write_result("jpq_bench", body + "\n\n![JPQ-Bench](jpq_bench.png)"))


if __name__ == "__main__":
    main()
