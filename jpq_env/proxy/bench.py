"""JPQ-Bench's surrogate: the accuracy proxy of one task, learned from its real evaluations.

An RL researcher compares algorithms over thousands of episodes; on a CPU a ResNet-20 episode
costs seconds even with the fast proxy. NAS research met the same wall with tabular and surrogate
benchmarks (NAS-Bench-301, HW-NAS-Bench); JPQ-Bench is that for joint pruning and
mixed-precision quantization policies. This module is the model half; the environments
(``jpq_env/JPQBench-*``) are in ``jpq_env.envs.bench`` and the data and the fit in
``benchmarks/jpq_bench.py``.

What a **bench file** holds (one ``.npz``, read with ``allow_pickle=False``: arrays and one JSON
document, no code):

- the task's graph as an agent sees it, without weights or data: layer names, the graph's
  fingerprint, the input shape, and each layer's kernel ranking under the importance criterion
  the data was made with (the order and the scaled scores ``ranked_importance`` gives), so that a
  policy found on the bench means the same kernels on the real task;
- the task's sensitivity table (``jpq_env.proxy.sensitivity``), for features and observations;
- the FP32 model's held-out and test scores, the environment settings of the data, where the data
  came from and how the surrogate scored on policies it was not fitted on;
- the ensemble (``TreeEnsemble``) of a policy's held-out score, and the map from it to the test
  accuracy (``test_map``: linear in log-odds, fitted on the policies with a test score).

**Features** (``policy_features``), per layer: the share of pruned kernels, the mean width of the
kept ones, the shares of kernels in six width bins, the input activation width and its
quantization noise (``2^-bits``), and the log of the sensitivity table's estimate of the KL the
layer's decision adds at the output; globally, the log of the summed estimate. The summed KL alone
orders policies well (``jpq_agents.surrogate``); the ensemble learns how the layers interact.

**Surrogate** (``TreeEnsemble``): 8 gradient-boosted tree models on bootstrap resamples of the
data (member 0 on the data as it is), fitted on the log-odds of the score (``build_bench``); the
prediction is the mean of the members' scores and the spread their standard deviation. Trees
ranked ResNet-20's held-out policies near the budgets better than an ensemble of small ReLU
networks (``Ensemble``, the surrogate of schema-1 files; both compared in
``benchmarks/results/jpq_bench.md``). Inference is numpy only: a step of a bench environment never
runs torch or scikit-learn.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from jpq_env.atomic import atomic_file
from jpq_env.core.graph import LayerGraph
from jpq_env.core.policy import Policy
from jpq_env.errors import ArgumentError, PolicyError
from jpq_env.proxy.evaluator import Evaluator, EvaluatorStats
from jpq_env.proxy.sensitivity import SensitivityTable
from jpq_env.tasks.base import Task

__all__ = [
    "BENCH_SCHEMA",
    "BenchEvaluator",
    "BenchModel",
    "Ensemble",
    "FeatureMap",
    "TreeEnsemble",
    "LAYER_FEATURES",
    "Prediction",
    "bench_names",
    "bench_task",
    "policy_features",
]

BENCH_SCHEMA = 2
"""Version of the bench file's layout written (2: the surrogate may be trees); files of a version
this jpq-env does not read are refused by name."""
_READS = (1, 2)

_WIDTH_BINS = ((1, 2), (3, 3), (4, 4), (5, 6), (7, 8), (9, 32))
LAYER_FEATURES = (
    "sparsity",
    "mean_bits",
    *(f"share_w{lo}" if lo == hi else f"share_w{lo}-{hi}" for lo, hi in _WIDTH_BINS),
    "act_bits",
    "act_noise",
    "log_kl",
)
"""The features of one layer, in order (``policy_features`` repeats them per layer)."""

_EPS = 1e-6
_MAX_WIDTH = 32
_SHIPPED = "bench_models"


class FeatureMap:
    """``policy_features`` for one sensitivity table, with the table's KL estimates tabulated.

    ``SensitivityTable.contribution`` interpolates per call; a bench step must stay far below a
    millisecond, so the weight and activation terms are tabulated once per width (0-32) and a
    layer's features are a ``bincount`` of its widths and a few dot products. The numbers equal
    ``contribution``'s up to floating-point summation order.
    """

    def __init__(self, table: SensitivityTable) -> None:
        self.table = table
        layers = len(table.names)
        widths = np.arange(_MAX_WIDTH + 1)
        self.weight_kl = np.array(
            [[table.weight_kl(i, int(w)) if w > 0 else 0.0 for w in widths] for i in range(layers)]
        )
        self.act_kl = np.array(
            [[table.act_kl(i, int(w)) if w > 0 else 0.0 for w in widths] for i in range(layers)]
        )
        # Width -> bin membership, and the widths as numbers (mean of the kept kernels).
        self.bins = np.array(
            [[1.0 if lo <= w <= hi else 0.0 for lo, hi in _WIDTH_BINS] for w in widths]
        )
        self.prune_x = np.array([0.0, *table.sparsities])
        self.prune_y = [
            np.concatenate([[0.0], np.nan_to_num(table.prune[i], posinf=1e3)])
            for i in range(layers)
        ]

    def __call__(self, policies: Sequence[Policy]) -> np.ndarray:
        """Feature rows ``(n, layers * len(LAYER_FEATURES) + 1)``."""
        layers = len(self.table.names)
        per = len(LAYER_FEATURES)
        out = np.zeros((len(policies), layers * per + 1))
        widths = np.arange(_MAX_WIDTH + 1, dtype=np.float64)
        for row, policy in enumerate(policies):
            if len(policy.layers) != layers:
                raise PolicyError(
                    f"the policy has {len(policy.layers)} layers, the bench's graph {layers}"
                )
            total = 0.0
            for i, lp in enumerate(policy.layers):
                counts = np.bincount(np.minimum(lp.bits, _MAX_WIDTH), minlength=_MAX_WIDTH + 1)
                n = max(lp.bits.size, 1)
                share = counts / n
                kept = n - int(counts[0])
                sparsity = float(share[0])
                act = min(int(lp.act_bits), _MAX_WIDTH)
                kl = float(np.interp(sparsity, self.prune_x, self.prune_y[i])) if counts[0] else 0.0
                kl += float(share[1:] @ self.weight_kl[i, 1:])
                kl += float(self.act_kl[i, act]) * kept / n
                total += kl
                mean_bits = float(counts[1:] @ widths[1:]) / kept / 8.0 if kept else 0.0
                out[row, i * per : (i + 1) * per] = [
                    sparsity,
                    mean_bits,
                    *(share @ self.bins),
                    act / 8.0,
                    2.0**-act,
                    np.log(kl + _EPS),
                ]
            out[row, -1] = np.log(total + _EPS)
        return out


def policy_features(policies: Sequence[Policy], table: SensitivityTable) -> np.ndarray:
    """Feature rows of ``policies``: ``(n, layers * len(LAYER_FEATURES) + 1)``, float64.

    Per layer (``LAYER_FEATURES``): the share of pruned kernels, the kept kernels' mean width / 8,
    the shares of kernels in six width bins, the activation width / 8 and ``2^-width``, and the
    log of the table's estimate of the KL the decision adds at the output; then the log of the
    summed estimate.

    Args:
        policies: Policies made for the table's graph (same layers, in order).
        table: The task's sensitivity table (the KL estimates).
    """
    return FeatureMap(table)(policies)


def log_odds(p: np.ndarray) -> np.ndarray:
    """The log-odds of shares (accuracies), clipped to [1e-3, 1 - 1e-3] first."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def _fit_inputs(
    who: str, x: Any, y: Any, weights: Any, logit: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fit's features, targets (log-odds if ``logit``) and row weights, checked by name."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if x.ndim != 2 or x.shape[0] != n or n < 2 or not np.isfinite(x).all():
        raise ArgumentError(f"{who} needs n >= 2 rows of finite features, got {x.shape}")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ArgumentError(f"{who}: weights must be n finite non-negative numbers")
    return x, (log_odds(y) if logit else y), w


class _Members:
    """What both ensembles share: the mean and spread of their members' predictions."""

    def predict_members(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        """The number of members."""
        raise NotImplementedError

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation over the members."""
        p = self.predict_members(x)
        return p.mean(0), p.std(0)


@dataclass
class Ensemble(_Members):
    """Bootstrap ensemble of small ReLU networks (numpy inference).

    Attributes:
        members: Per member, its weights and biases ``[W1, b1, W2, b2, W3, b3]`` (``x @ W + b``).
        x_mean: Feature means of the fitting data (features are standardised with them).
        x_scale: Feature standard deviations (1 where a feature was constant).
        y_mean: Target mean.
        y_scale: Target standard deviation.
        logit: The members predict the log-odds of the target (a share in (0, 1)): predictions
            are mapped back through the sigmoid, so they stay inside (0, 1).
    """

    members: list[list[np.ndarray]]
    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: float
    y_scale: float
    logit: bool = False

    def __len__(self) -> int:
        return len(self.members)

    def predict_members(self, x: np.ndarray) -> np.ndarray:
        """Every member's prediction, ``(members, n)``."""
        z0 = (np.asarray(x, dtype=np.float64) - self.x_mean) / self.x_scale
        preds = []
        for w1, b1, w2, b2, w3, b3 in self.members:
            h = np.maximum(z0 @ w1 + b1, 0.0)
            h = np.maximum(h @ w2 + b2, 0.0)
            preds.append((h @ w3 + b3)[:, 0])
        out = np.array(preds) * self.y_scale + self.y_mean
        return 1.0 / (1.0 + np.exp(-out)) if self.logit else out

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        *,
        weights: Sequence[float] | np.ndarray | None = None,
        members: int = 8,
        hidden: int = 64,
        epochs: int = 600,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        seed: int = 0,
        logit: bool = False,
    ) -> Ensemble:
        """Fit ``members`` networks on bootstrap resamples (deterministic for a seed).

        Args:
            x: Feature rows ``(n, features)``.
            y: Targets ``(n,)``.
            weights: Per-row weights of the squared error (None: all 1).
            members: Networks in the ensemble.
            hidden: Width of both hidden layers.
            epochs: Full-batch Adam steps per member.
            lr: Adam's learning rate.
            weight_decay: Adam's L2 penalty (decoupled: AdamW).
            seed: Seed of the resamples and the initial weights.
            logit: Fit the log-odds of ``y`` (accuracies: shares in [0, 1], clipped to
                [1e-3, 1 - 1e-3]); an accuracy's error is not the same at 10% and at 88%.
        """
        x, y, w = _fit_inputs("Ensemble.fit", x, y, weights, logit)
        n = len(y)
        x_mean, x_scale = x.mean(0), x.std(0)
        x_scale = np.where(x_scale > 1e-12, x_scale, 1.0)
        y_mean, y_scale = float(y.mean()), float(y.std()) or 1.0
        xt = torch.tensor((x - x_mean) / x_scale, dtype=torch.float32)
        yt = torch.tensor((y - y_mean) / y_scale, dtype=torch.float32)
        wt = torch.tensor(w, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        fitted = []
        for m in range(members):
            idx = torch.arange(n) if m == 0 else torch.randint(0, n, (n,), generator=gen)
            net = nn.Sequential(
                nn.Linear(x.shape[1], hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, 1),
            )
            with torch.no_grad():
                for p in net.parameters():
                    bound = 1.0 / np.sqrt(p.shape[-1] if p.dim() > 1 else hidden)
                    p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))
            opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
            xb, yb, wb = xt[idx], yt[idx], wt[idx]
            with torch.enable_grad():
                for _ in range(epochs):
                    loss = (wb * (net(xb)[:, 0] - yb).pow(2)).sum() / wb.sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            linears = [m for m in net if isinstance(m, nn.Linear)]
            fitted.append(
                [
                    a
                    for lin in linears
                    for a in (
                        lin.weight.detach().double().numpy().T.copy(),
                        lin.bias.detach().double().numpy().copy(),
                    )
                ]
            )
        return cls(fitted, x_mean, x_scale, y_mean, y_scale, logit)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The ensemble as named arrays (for ``np.savez``)."""
        out = {
            f"{prefix}/x_mean": self.x_mean,
            f"{prefix}/x_scale": self.x_scale,
            f"{prefix}/y": np.array([self.y_mean, self.y_scale]),
            f"{prefix}/logit": np.array([1 if self.logit else 0], dtype=np.uint8),
        }
        for m, arrays in enumerate(self.members):
            for k, a in enumerate(arrays):
                out[f"{prefix}/m{m}/{k}"] = a
        return out

    @classmethod
    def from_arrays(cls, data: Any, prefix: str) -> Ensemble:
        """Read what ``arrays`` wrote."""
        members = []
        m = 0
        while f"{prefix}/m{m}/0" in data:
            members.append([np.asarray(data[f"{prefix}/m{m}/{k}"]) for k in range(6)])
            m += 1
        y = np.asarray(data[f"{prefix}/y"])
        return cls(
            members,
            np.asarray(data[f"{prefix}/x_mean"]),
            np.asarray(data[f"{prefix}/x_scale"]),
            float(y[0]),
            float(y[1]),
            bool(data[f"{prefix}/logit"][0]) if f"{prefix}/logit" in data else False,
        )


@dataclass
class TreeEnsemble(_Members):
    """Bootstrap ensemble of gradient-boosted regression trees (numpy inference).

    Fitted with scikit-learn's ``HistGradientBoostingRegressor`` and kept as plain arrays: every
    tree of every member is one block of a flat node table, so a prediction walks all trees at
    once (one vectorised step per tree level), about as fast as the MLP ensemble.

    Attributes:
        feature: Per node, the feature it splits on (leaves: 0).
        threshold: Per node, the split: ``x[feature] <= threshold`` goes left.
        left: Per node, its left child's index in the table (leaves: itself).
        right: Per node, its right child's index (leaves: itself).
        value: Per node, the leaf's contribution (inner nodes: 0).
        roots: Per tree, its root's index.
        tree_member: Per tree, the member it belongs to.
        baselines: Per member, its constant (the boosting's starting prediction).
        depth: The deepest path: steps a prediction takes.
        logit: The members predict the log-odds of the target (mapped back through the sigmoid).
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    tree_member: np.ndarray
    baselines: np.ndarray
    depth: int
    logit: bool = True

    _FIELDS: ClassVar[tuple[str, ...]] = (
        "feature",
        "threshold",
        "left",
        "right",
        "value",
        "roots",
        "tree_member",
        "baselines",
    )

    def __len__(self) -> int:
        return len(self.baselines)

    def predict_members(self, x: np.ndarray) -> np.ndarray:
        """Every member's prediction, ``(members, n)``."""
        x = np.asarray(x, dtype=np.float64)
        node = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        rows = np.arange(len(x))[:, None]
        for _ in range(self.depth):  # leaves point at themselves: extra steps stay put
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        per_tree = self.value[node]  # (n, trees)
        members = len(self.baselines)
        out = np.zeros((members, len(x)))
        np.add.at(out, self.tree_member, per_tree.T)
        out += self.baselines[:, None]
        return 1.0 / (1.0 + np.exp(-out)) if self.logit else out

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        *,
        weights: Sequence[float] | np.ndarray | None = None,
        members: int = 8,
        seed: int = 0,
        logit: bool = False,
        **params: Any,
    ) -> TreeEnsemble:
        """Fit ``members`` boosted-tree models on bootstrap resamples (deterministic for a seed).

        Args:
            x: Feature rows ``(n, features)``.
            y: Targets ``(n,)``.
            weights: Per-row weights of the squared error (None: all 1).
            members: Models in the ensemble (member 0 on the data as it is).
            seed: Seed of the resamples and the models.
            logit: Fit the log-odds of ``y`` (accuracies, clipped to [1e-3, 1 - 1e-3]).
            params: More arguments of ``HistGradientBoostingRegressor`` (its defaults otherwise:
                100 trees of at most 31 leaves, learning rate 0.1; leaves of at least 20 rows,
                fewer on small data: ``n // 20``, at least 2, so 40 policies still split).
        """
        from sklearn.ensemble import HistGradientBoostingRegressor

        x, target, w = _fit_inputs("TreeEnsemble.fit", x, y, weights, logit)
        n = len(target)
        params.setdefault("min_samples_leaf", max(2, min(20, n // 20)))
        rng = np.random.default_rng(seed)
        tables: list[np.ndarray] = []
        roots, tree_member, baselines = [], [], []
        offset = 0
        for m in range(members):
            idx = np.arange(n) if m == 0 else rng.integers(0, n, n)
            model = HistGradientBoostingRegressor(random_state=seed + m, **params)
            model.fit(x[idx], target[idx], sample_weight=w[idx])
            baselines.append(float(np.ravel(model._baseline_prediction)[0]))
            for (tree,) in model._predictors:  # one tree per boosting round (a regressor)
                nodes = tree.nodes
                if nodes["is_categorical"].any():
                    raise ArgumentError("TreeEnsemble: categorical splits are not supported")
                roots.append(offset)
                tree_member.append(m)
                tables.append(nodes)
                offset += len(nodes)
        nodes = np.concatenate(tables)
        starts = np.repeat(np.array(roots), [len(t) for t in tables])
        leaf = nodes["is_leaf"].astype(bool)
        own = np.arange(len(nodes))
        return cls(
            feature=np.where(leaf, 0, nodes["feature_idx"]).astype(np.int64),
            threshold=np.where(leaf, 0.0, nodes["num_threshold"]).astype(np.float64),
            left=np.where(leaf, own, nodes["left"].astype(np.int64) + starts),
            right=np.where(leaf, own, nodes["right"].astype(np.int64) + starts),
            value=np.where(leaf, nodes["value"], 0.0).astype(np.float64),
            roots=np.array(roots, dtype=np.int64),
            tree_member=np.array(tree_member, dtype=np.int64),
            baselines=np.array(baselines, dtype=np.float64),
            depth=int(nodes["depth"].max()),
            logit=logit,
        )

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The ensemble as named arrays (for ``np.savez``)."""
        out = {f"{prefix}/trees/{k}": np.asarray(getattr(self, k)) for k in self._FIELDS}
        out[f"{prefix}/trees/meta"] = np.array([self.depth, 1 if self.logit else 0])
        return out

    @classmethod
    def from_arrays(cls, data: Any, prefix: str) -> TreeEnsemble:
        """Read what ``arrays`` wrote, checking that every child index is inside the table."""
        fields = {k: np.asarray(data[f"{prefix}/trees/{k}"]) for k in cls._FIELDS}
        depth, logit = (int(v) for v in np.asarray(data[f"{prefix}/trees/meta"]))
        n = len(fields["value"])
        for k in ("left", "right", "roots"):
            if len(fields[k]) and (fields[k].min() < 0 or fields[k].max() >= n):
                raise ArgumentError(f"'{prefix}' trees: a {k} index is outside the node table")
        return cls(**fields, depth=depth, logit=bool(logit))


def load_ensemble(data: Any, prefix: str) -> Ensemble | TreeEnsemble:
    """The ensemble stored under ``prefix`` (trees or networks, whichever the file holds)."""
    if f"{prefix}/trees/meta" in data:
        return TreeEnsemble.from_arrays(data, prefix)
    return Ensemble.from_arrays(data, prefix)


@dataclass
class BenchModel:
    """A bench file in memory: the task's graph as agents see it, its table, the ensembles.

    Attributes:
        meta: The JSON document (schema, task, architecture, input shape, classes, layer names,
            fingerprint, importance ranking, env settings, FP32 scores, data and fit records).
        table: The task's sensitivity table.
        val: The ensemble predicting the held-out score (boosted trees; networks in files made
            before schema 2).
        test: An ensemble predicting the test accuracy (None: none). A bench made by
            ``build_bench`` predicts test accuracy through ``meta["test_map"]`` instead: the
            held-out score's log-odds mapped linearly (an ensemble fitted on the few tested
            policies, mostly poor ones, was 30 points low on the best ResNet-20 policies).
    """

    meta: dict[str, Any]
    table: SensitivityTable
    val: Ensemble | TreeEnsemble
    test: Ensemble | TreeEnsemble | None = None
    _features: FeatureMap | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The bench's name (its task's)."""
        return str(self.meta["task"])

    def predict(self, policies: Sequence[Policy]) -> dict[str, np.ndarray]:
        """Predicted held-out and test scores, each with the ensemble's spread."""
        if self._features is None:
            self._features = FeatureMap(self.table)
        x = self._features(policies)
        members = self.val.predict_members(x)
        out = {"val": members.mean(0), "val_std": members.std(0)}
        test_map = self.meta.get("test_map")
        if test_map is not None:  # each member's score through the fitted logit-linear map
            z = test_map["slope"] * log_odds(members) + test_map["intercept"]
            tests = 1.0 / (1.0 + np.exp(-z))
            out["test"], out["test_std"] = tests.mean(0), tests.std(0)
        elif self.test is not None:
            out["test"], out["test_std"] = self.test.predict(x)
        return out

    def save(self, path: str | Path) -> None:
        """Write the bench file (``.npz``, compressed; no pickled objects)."""
        meta = dict(self.meta, schema=BENCH_SCHEMA, sensitivity=self.table.to_json())
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        arrays.update(self.val.arrays("val"))
        if self.test is not None:
            arrays.update(self.test.arrays("test"))
        with atomic_file(path, "wb") as f:  # never a half-written bench file
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, name_or_path: str | Path) -> BenchModel:
        """Read a bench file: a path, or the name of one shipped with jpq-env (``bench_names``).

        Raises:
            ArgumentError: If there is no such file or bench, or the file is not a bench file.
        """
        path = Path(name_or_path)
        if not path.suffix:
            shipped = resources.files("jpq_env.proxy") / _SHIPPED / f"{name_or_path}.npz"
            if not shipped.is_file():
                raise ArgumentError(
                    f"no bench named '{name_or_path}': the shipped benches are {bench_names()}"
                )
            path = Path(str(shipped))
        try:
            data = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise ArgumentError(f"bench file '{path}' does not exist") from None
        except (OSError, ValueError) as exc:
            # numpy's reason for a text file is about pickles, which says nothing useful here.
            raise ArgumentError(
                f"'{path}' is not a bench file: not an .npz archive of arrays and JSON as "
                "BenchModel.save writes"
            ) from exc
        with data:
            if "meta" not in data:
                raise ArgumentError(f"'{path}' is not a bench file: no 'meta' entry")
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("schema") not in _READS:
                raise ArgumentError(
                    f"'{path}' is a bench file of schema {meta.get('schema')!r}; this jpq-env "
                    f"reads schemas {', '.join(map(str, _READS))}"
                )
            val = load_ensemble(data, "val")
            test = Ensemble.from_arrays(data, "test") if "test/y" in data else None  # older files
        table = SensitivityTable.from_json(meta.pop("sensitivity"))
        return cls(meta, table, val, test)

    def digest(self) -> str:
        """A short hash of the model's arrays and meta (names the exact surrogate in results)."""
        h = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode())
        for ens in (self.val, self.test):
            if ens is not None:
                for a in ens.arrays("").values():
                    h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:12]


def bench_names() -> list[str]:
    """Names of the bench files shipped with jpq-env."""
    folder = resources.files("jpq_env.proxy") / _SHIPPED
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".npz")] for p in folder.iterdir() if p.name.endswith(".npz"))


def _skeleton(architecture: str, num_classes: int) -> nn.Module:
    """The task's architecture with untrained weights (the bench never runs it)."""
    from jpq_env.tasks.digits import DeepDigitsNet, DigitsCNN
    from jpq_env.tasks.vision import ARCHITECTURES

    builders: dict[str, Any] = {"digits": DigitsCNN, "digits-deep": DeepDigitsNet, **ARCHITECTURES}
    if architecture not in builders:
        raise ArgumentError(
            f"bench architecture '{architecture}' is not built in (one of {sorted(builders)}): "
            "give the network the bench was made for as model= "
            "(gym.make('jpq_env/JPQBench-v0', bench=..., model=net))"
        )
    torch.manual_seed(0)
    model: nn.Module = builders[architecture](num_classes).eval()
    return model


def bench_task(model: BenchModel, network: nn.Module | None = None) -> Task:
    """The bench's task: its architecture, no data (every score comes from the surrogate).

    Args:
        model: The bench.
        network: The network the bench was made for, where jpq-env does not build its
            architecture (a user's own model; a copy is used, its weights do not matter).

    Raises:
        ArgumentError: If the architecture's graph is not the one the bench was made for.
    """
    meta = model.meta
    if network is None:
        net = _skeleton(meta["architecture"], int(meta["num_classes"]))
        made = f"this jpq-env builds for '{meta['architecture']}'"
    elif isinstance(network, nn.Module):
        net = copy.deepcopy(network).eval()
        made = f"the model given ({type(network).__name__})"
    else:
        raise ArgumentError(f"model must be a torch.nn.Module, got {type(network).__name__}")
    example = torch.zeros(1, *meta["input_shape"])
    graph = LayerGraph.from_module(net, example)
    if graph.fingerprint != meta["fingerprint"]:
        raise ArgumentError(
            f"bench '{model.name}' was made for another graph than {made} (fingerprint "
            f"{meta['fingerprint']}, got {graph.fingerprint})"
        )
    empty = TensorDataset(torch.zeros(0, *meta["input_shape"]), torch.zeros(0, dtype=torch.long))
    return Task(
        name=f"bench:{model.name}",
        model=net,
        example_input=example,
        train=empty,
        val=empty,
        calib=empty,
        test=empty,
        num_classes=int(meta["num_classes"]),
        details={"bench": f"scores predicted by JPQ-Bench's surrogate ({model.digest()})"},
    )


@dataclass
class Prediction:
    """The bench's answer for one policy: predicted scores and the ensembles' spread."""

    val: float = 0.0
    val_std: float = 0.0
    test: float | None = None
    test_std: float | None = None


class BenchEvaluator(Evaluator):
    """An evaluator whose scores are the bench's predictions (deterministic, microseconds).

    ``accuracy`` is the predicted held-out score, clipped to [0, 1]; ``test_accuracy`` the
    predicted test accuracy (of the FP32 model: the recorded one); ``prediction`` holds the last
    prediction with the ensembles' spread.

    Args:
        model: The bench.
    """

    def __init__(self, model: BenchModel) -> None:
        self.model = model
        self.stats: EvaluatorStats = EvaluatorStats()
        self.prediction = Prediction()
        self._fp32 = model.meta["fp32"]

    @property
    def fp32_accuracy(self) -> float:
        """The real proxy's held-out score of the FP32 model (recorded with the data)."""
        return float(self._fp32["val"])

    def _check(self, policy: Policy) -> None:
        if policy.fingerprint != self.model.meta["fingerprint"]:
            raise PolicyError(
                f"the policy was made for another model than bench '{self.model.name}'"
            )

    def accuracy(self, policy: Policy, *, at_least: float | None = None) -> float:
        """The predicted held-out score of ``policy`` (``at_least`` is ignored: no racing)."""
        self._check(policy)
        start = time.perf_counter()
        pred = self.model.predict([policy])
        self.prediction = Prediction(
            float(pred["val"][0]),
            float(pred["val_std"][0]),
            float(pred["test"][0]) if "test" in pred else None,
            float(pred["test_std"][0]) if "test_std" in pred else None,
        )
        self.stats.evaluations += 1
        self.stats.complete += 1
        self.stats.seconds += time.perf_counter() - start
        return float(np.clip(self.prediction.val, 0.0, 1.0))

    def test_accuracy(self, policy: Policy | None) -> float:
        """The predicted test accuracy of ``policy`` (None: the FP32 model's, as recorded).

        NaN when the bench predicts no test accuracy (its data had no test scores).
        """
        if policy is None:
            return float(self._fp32["test"])
        self._check(policy)
        pred = self.model.predict([policy])
        if "test" not in pred:
            return float("nan")
        return float(np.clip(pred["test"][0], 0.0, 1.0))
