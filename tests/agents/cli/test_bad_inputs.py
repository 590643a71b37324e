"""The catalogue of bad inputs: each is refused with an error of a known type naming the problem.

Grouped by where a user meets them: actions, environment arguments, tasks (user factories, models,
data: ``make_task`` splits given as lists of samples, samples of a shape or dtype the model cannot
take, named by split and sample index; a held-out split cut from train, warned about), names of
agents and environments, policy files, paths and result directories (a ``jpq search`` that cannot
start leaves no ``--out`` folders). Each case has an id; ``pytest tests/test_bad_inputs.py
--collect-only -q`` lists the catalogue.

Covered next to their modules and not repeated here: a bad ``jpq search`` argument on the command
line (``test_cli_search.py::test_bad_search_arguments``: unknown agent, budget 0 or above 1,
episodes 0), ``jpq evaluate`` on a missing, non-JSON or other-model policy file and ``jpq search``
into a directory holding another run (``test_cli_search.py``), a malicious checkpoint
(``test_safe_loading.py``), a torn or edited evaluation log (``test_crash_safety.py``), missing
digits checkpoints (``test_digits.py``), a baseline that runs out of policies before its budget
(``test_agents.py::test_baselines_that_run_out_of_policies_say_why``,
``test_cli_search.py::test_a_baseline_that_stops_early_says_so_and_why``), the files line of
``jpq search`` (``test_cli_search.py::test_search_lists_the_files_it_wrote``), a kernel left
without live inputs (``test_coupled_channels.py``).
"""

# ruff: noqa: E501 - the catalogue is a table, one case per line
from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from jpq_agents.cli import main
from jpq_agents.run import AGENTS, run_search
from jpq_agents.search import LOG_NAME, RUN_NAME, RunSettings, Search, SearchError
from jpq_env import (
    GraphError,
    LayerGraph,
    LayerPolicy,
    LocalEvaluator,
    Policy,
    PolicyError,
    Task,
    TaskError,
    load_task,
    make_task,
)
from jpq_env.envs import JPQEnv
from jpq_env.envs.rewards import (
    GalenR6Reward,
    GalenR7Reward,
    HAQReward,
    LagrangianReward,
    MnasNetReward,
)
from jpq_env.export.packed import export_compressed, load_compressed
from jpq_env.proxy.evaluator import PaddedEvaluator
from jpq_env.proxy.finetune import finetune
from tests import bad_tasks
from tests.nets import PlainNet

ACTS = [2, 3, 4, 5, 6, 8]


@pytest.fixture(scope="module")
def env() -> JPQEnv:
    return JPQEnv()


@pytest.fixture(scope="module")
def v1(env: JPQEnv) -> JPQEnv:
    return JPQEnv(act_bits=ACTS, budget_bops=1 / 128, evaluator=env.evaluator)


# ---- actions ----------------------------------------------------------------------------------

ACTIONS = [
    pytest.param(np.full(5, np.nan, dtype=np.float32), "NaN or inf", id="action-nan"),
    pytest.param(np.array([np.inf, 0, 0, 0, 0], dtype=np.float32), "NaN or inf", id="action-inf"),
    pytest.param(np.array([0, 0, -np.inf, 0, 0]), "NaN or inf", id="action-minus-inf"),
    pytest.param(np.zeros(4, dtype=np.float32), r"shape \(4,\), expected \(5,\)", id="action-short"),
    pytest.param(np.zeros((1, 5), dtype=np.float32), r"shape \(1, 5\)", id="action-batched"),
    pytest.param(np.float32(0.0), r"shape \(\), expected \(5,\)", id="action-scalar"),
    pytest.param(np.array(["a"] * 5), "numeric array .* dtype <U1", id="action-strings"),
    pytest.param(np.zeros(5, dtype=complex), "dtype complex128", id="action-complex"),
    pytest.param(np.zeros(5, dtype=bool), "dtype bool", id="action-bool"),
    pytest.param(None, "numeric array .* dtype object", id="action-none"),
    pytest.param(np.array([1.5, 0, 0, 0, 0], dtype=np.float32), r"lie in \[-1, 1\]", id="action-above-1"),
    pytest.param(np.array([0, 0, 0, -1.01, 0]), r"lie in \[-1, 1\]", id="action-below-minus-1"),
]  # fmt: skip


@pytest.mark.parametrize(("action", "message"), ACTIONS)
@pytest.mark.parametrize("phase", [0, 1], ids=["layer-phase", "channel-phase"])
def test_bad_action_is_named_and_changes_nothing(env: JPQEnv, action, message, phase):
    env.reset(seed=0)
    if phase:
        env.step(np.zeros(env.action_size, dtype=np.float32))
    obs_before, decisions_before = env._obs(), env.decisions
    with pytest.raises(ValueError, match=message):
        env.step(action)
    assert env.current_layer == 0 and env.phase == phase
    assert np.array_equal(env._obs(), obs_before)
    assert [d is None for d in env.decisions] == [d is None for d in decisions_before]
    env.step(np.zeros(env.action_size, dtype=np.float32))  # the episode goes on
    assert env.phase == 1 - phase


@pytest.mark.parametrize(
    ("action", "message"),
    [
        pytest.param(np.zeros(5, dtype=np.float32), r"shape \(5,\), expected \(6,\)", id="v1-short"),
        pytest.param(np.array([0, 2, 0, 0, 0, 0], dtype=np.float32), r"lie in \[-1, 1\]", id="v1-act-entry-out-of-range"),
        pytest.param(np.array([0, np.nan, 0, 0, 0, 0]), "NaN or inf", id="v1-act-entry-nan"),
    ],
)  # fmt: skip
def test_bad_v1_action_is_named(v1: JPQEnv, action, message):
    v1.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        v1.step(action)
    assert v1.current_layer == 0 and v1.phase == 0


def test_step_before_reset_and_after_termination():
    env = JPQEnv()
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(5, dtype=np.float32))
    env.reset()
    done = False
    while not done:
        done = env.step(np.zeros(5, dtype=np.float32))[2]
    with pytest.raises(RuntimeError, match="episode has terminated"):
        env.step(np.zeros(5, dtype=np.float32))


# ---- environment arguments: budgets, bit choices, names ---------------------------------------

ARGUMENTS = [
    pytest.param({"budget_bops": 1e-6}, ValueError, "infeasible budget", id="budget-infeasible"),
    pytest.param({"budget_bops": 0.0}, ValueError, r"BOPs budget must be a fraction of FP32 in \(0, 1\]", id="budget-zero"),
    pytest.param({"budget_bops": -0.1}, ValueError, "BOPs budget .* got -0.1", id="budget-negative"),
    pytest.param({"budget_bops": 1.5}, ValueError, "BOPs budget .* got 1.5", id="budget-above-1"),
    pytest.param({"budget_bops": float("nan")}, ValueError, "BOPs budget .* got nan", id="budget-nan"),
    pytest.param({"budget_bops": True}, ValueError, "BOPs budget", id="budget-bool"),
    pytest.param({"budget_bops": "1/64"}, ValueError, "BOPs budget .* got '1/64'", id="budget-string"),
    pytest.param({"budget_bops": None, "budget_size": 2.0}, ValueError, "size budget", id="size-budget-above-1"),
    pytest.param({"budget_bops": None, "budget_size": 0}, ValueError, "size budget", id="size-budget-zero"),
    pytest.param({"budget_bops": None}, ValueError, "give at least one budget", id="no-budget"),
    pytest.param({"bits": []}, ValueError, "bits must not be empty", id="bits-empty"),
    pytest.param({"bits": [2, -1]}, ValueError, r"bits \[-1\] outside", id="bits-negative"),
    pytest.param({"bits": [0, 4]}, ValueError, r"bits \[0\] outside", id="bits-zero"),
    pytest.param({"bits": [4, 33]}, ValueError, r"bits \[33\] outside", id="bits-above-32"),
    pytest.param({"bits": [4, 17]}, ValueError, r"bits \[17\] outside the supported widths", id="bits-unsupported"),
    pytest.param({"bits": [4, 4, 8]}, ValueError, "bits has duplicates", id="bits-duplicates"),
    pytest.param({"bits": [2.5, 4]}, ValueError, "bits must be integers", id="bits-float"),
    pytest.param({"act_bits": []}, ValueError, "act_bits must not be empty", id="act-bits-empty"),
    pytest.param({"act_bits": [4, 4]}, ValueError, "act_bits has duplicates", id="act-bits-duplicates"),
    pytest.param({"act_bits": [0, 8]}, ValueError, r"act_bits \[0\] outside", id="act-bits-zero"),
    pytest.param({"act_bits": 64}, ValueError, r"act_bits \[64\] outside", id="act-bits-above-32"),
    pytest.param({"reward": "nope"}, ValueError, "unknown reward design 'nope'", id="unknown-reward"),
    pytest.param({"task": "nope"}, TaskError, "unknown task 'nope'", id="unknown-task"),
    pytest.param({"importance": "l7"}, ValueError, "unknown importance criterion 'l7'", id="unknown-criterion"),
    pytest.param({"enforcement": "soft"}, ValueError, "unknown enforcement 'soft'", id="unknown-enforcement"),
    pytest.param({"render_mode": "human"}, ValueError, r"unknown render_mode 'human': choose one of \['ansi', 'rgb_array', None\]", id="unknown-render-mode"),
    pytest.param({"max_sparsity": 1.0}, ValueError, r"max_sparsity must be a finite number in \[0, 1\), got 1.0", id="max-sparsity-1"),
    pytest.param({"channel_groups": -2}, ValueError, "channel_groups must be an integer >= 0, got -2", id="channel-groups-negative"),
    pytest.param({"shaping": "x"}, ValueError, "shaping must be a finite number >= 0, got 'x'", id="shaping-string"),
    pytest.param({"first_last_bits": 0}, ValueError, "first_last_bits=0 is not a supported width", id="first-last-bits-zero"),
    pytest.param({"input_bits": 3.5}, ValueError, "input_bits must be an integer or None, got 3.5", id="input-bits-float"),
    pytest.param({"shaping": float("nan")}, ValueError, "shaping must be a finite number >= 0, got nan", id="shaping-nan"),
    pytest.param({"shaping": float("inf")}, ValueError, "shaping must be a finite number >= 0, got inf", id="shaping-inf"),
    pytest.param({"bn_recalibration": "no"}, ValueError, "bn_recalibration must be True or False, got 'no'", id="bn-recalibration-string"),
    pytest.param({"bn_recalibration": 0}, ValueError, "bn_recalibration must be True or False, got 0", id="bn-recalibration-int"),
    pytest.param({"max_sparsity": False}, ValueError, r"max_sparsity must be a finite number in \[0, 1\), got False", id="max-sparsity-bool"),
    pytest.param({"task_options": [1, 2]}, ValueError, r"task_options must be a mapping of names to values \(a dict\) or None, got list \[1, 2\]", id="task-options-list"),
    pytest.param({"task_options": {1: 2}}, ValueError, "task_options must have string keys", id="task-options-int-key"),
    pytest.param({"task": 3}, TaskError, "task must be a built-in name, a factory path .* got int 3", id="task-not-a-string"),
    pytest.param({"importance": ["l1"]}, ValueError, r"unknown importance criterion \['l1'\]", id="importance-list"),
    pytest.param({"reward": ["galen"]}, ValueError, r"unknown reward design \['galen'\]", id="reward-list"),
    pytest.param({"bits": 4}, ValueError, "bits must be a list of integer widths, got 4", id="bits-not-a-list"),
    pytest.param({"evaluator": object()}, ValueError, r"evaluator must be .* or have an accuracy\(policy\) method", id="evaluator-not-an-evaluator"),
    pytest.param({"device": 3}, ValueError, "device must be 'auto', 'cpu' or 'cuda.*got 3", id="device-int"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "error", "message"), ARGUMENTS)
def test_bad_argument_is_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        JPQEnv(**kwargs)


def test_numpy_budgets_are_accepted():
    assert JPQEnv(budget_bops=np.float32(0.05)).budget.bops == pytest.approx(0.05)


def test_numpy_scalars_are_accepted_where_python_ones_are(env: JPQEnv):
    other = JPQEnv(
        act_bits=np.int64(8),
        max_sparsity=np.float32(0.5),
        channel_groups=np.int64(2),
        shaping=np.float64(0.1),
        bn_recalibration=np.bool_(True),
        evaluator=env.evaluator,
    )
    assert (other.space.max_sparsity, other.channel_slots, other.shaping) == (0.5, 2, 0.1)


# ---- arguments of the other public constructors -------------------------------------------------

CONSTRUCTORS = [
    pytest.param(lambda: LocalEvaluator(_good_task(), bn_recalibration="no"), "bn_recalibration must be True or False, got 'no'", id="evaluator-bn-recalibration-string"),
    pytest.param(lambda: LocalEvaluator(_good_task(), batch_size=True), "batch_size must be an integer >= 1 or None, got True", id="evaluator-batch-size-bool"),
    pytest.param(lambda: LocalEvaluator(_good_task(), batch_size=2.5), "batch_size must be an integer >= 1 or None, got 2.5", id="evaluator-batch-size-float"),
    pytest.param(lambda: LocalEvaluator("digits"), "task must be a jpq_env.Task, got str", id="evaluator-task-name"),  # type: ignore[arg-type]
    pytest.param(lambda: PaddedEvaluator(None, float("nan")), "seconds must be a finite number >= 0, got nan", id="padded-evaluator-nan"),
    pytest.param(lambda: GalenR6Reward(beta=float("nan")), "beta must be a finite number >= 0, got nan", id="reward-galen-beta-nan"),
    pytest.param(lambda: GalenR7Reward(beta=-1.0), "beta must be a finite number >= 0, got -1.0", id="reward-galen-r7-beta-negative"),
    pytest.param(lambda: HAQReward(scale=float("inf")), "scale must be a finite number > 0, got inf", id="reward-haq-scale-inf"),
    pytest.param(lambda: MnasNetReward(w=0.07), "w must be a finite number <= 0, got 0.07", id="reward-mnasnet-positive-exponent"),
    pytest.param(lambda: LagrangianReward(mu=-1.0), "mu must be a finite number >= 0, got -1.0", id="reward-lagrangian-mu-negative"),
    pytest.param(lambda: LagrangianReward(lr="0.5"), "lr must be a finite number >= 0, got '0.5'", id="reward-lagrangian-lr-string"),
]  # fmt: skip


def _good_task() -> Task:
    return load_task("tests.bad_tasks:good")


def _good_graph() -> LayerGraph:
    task = _good_task()
    return LayerGraph.from_module(task.model, task.example_input)


POLICY_ARGUMENTS = [
    pytest.param(lambda: LayerPolicy("conv", [2.7, 4]), r"layer 'conv': bits must be integer widths, got dtype float64", id="layer-policy-float-bits"),
    pytest.param(lambda: LayerPolicy("conv", [True, False]), "bits must be integer widths, got dtype bool", id="layer-policy-bool-bits"),
    pytest.param(lambda: LayerPolicy("conv", [4], act_bits=8.0), r"layer 'conv': act_bits must be an integer, got 8.0", id="layer-policy-float-act-bits"),
    pytest.param(lambda: Policy.uniform(_good_graph(), True), "w_bits must be an integer >= 0, got True", id="policy-uniform-bool-width"),
    pytest.param(lambda: Policy.uniform(_good_graph(), 4, 0), "a_bits must be an integer >= 1, got 0", id="policy-uniform-zero-act-bits"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "message"), POLICY_ARGUMENTS)
def test_bad_policy_argument_is_named(build, message):
    with pytest.raises(PolicyError, match=message):
        build()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"epochs": True}, "epochs must be an integer >= 1, got True", id="finetune-epochs-bool"),
        pytest.param({"lr": float("nan")}, "lr must be a finite number > 0, got nan", id="finetune-lr-nan"),
        pytest.param({"batch_size": 0}, "batch_size must be an integer >= 1, got 0", id="finetune-batch-size-zero"),
    ],
)  # fmt: skip
def test_bad_finetune_argument_is_named(env: JPQEnv, kwargs, message):
    policy = Policy.uniform(env.graph, 8, 8, env.conventions)
    with pytest.raises(ValueError, match=message):
        finetune(env.evaluator, policy, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("build", "message"), CONSTRUCTORS)
def test_bad_constructor_argument_is_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def _data(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 4)


MAKE_TASK = [
    pytest.param({"val_size": True}, r"val_size must be a count of samples \(an integer >= 1\) or a fraction in \(0, 1\), got True", id="make-task-val-size-bool"),
    pytest.param({"val_size": float("nan")}, "val_size must be a count of samples .* got nan", id="make-task-val-size-nan"),
    pytest.param({"val_size": "10"}, "val_size must be a count of samples .* got '10'", id="make-task-val-size-string"),
    pytest.param({"calib_size": True}, "calib_size must be an integer >= 1, got True", id="make-task-calib-size-bool"),
    pytest.param({"calib_size": 2.5}, "calib_size must be an integer >= 1, got 2.5", id="make-task-calib-size-float"),
    pytest.param({"seed": "0"}, "seed must be an integer, got '0'", id="make-task-seed-string"),
    pytest.param({"num_classes": True}, "num_classes must be an integer >= 1 or None, got True", id="make-task-num-classes-bool"),
    pytest.param({"name": 3}, "name must be a non-empty string, got 3", id="make-task-name-int"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "message"), MAKE_TASK)
def test_bad_make_task_argument_is_named(kwargs, message):
    args = {"train": _data(40), "test": _data(8, seed=1), "val_size": 8, "calib_size": 8} | kwargs
    with pytest.raises(TaskError, match=message):
        make_task(_good_task().model, **args)


def _pairs(n: int, seed: int = 0, **at: Any) -> list[Any]:
    """``n`` (input, label) samples as a list; ``at`` replaces sample ``int(key[1:])`` (``s3=...``)."""
    data = _data(n, seed)
    samples: list[Any] = [(x, int(y)) for x, y in data]
    for key, sample in at.items():
        samples[int(key[1:])] = sample
    return samples


_X = torch.zeros(3, 8, 8)

# Splits given as lists of samples, and samples the model cannot take: the split and the sample.
MAKE_TASK_DATA = [
    pytest.param({"train": _pairs(40, s3=(torch.zeros(3, 9, 9), 1))}, r"sample 3 of the train split has an input of shape \(3, 9, 9\) and dtype torch.float32, but sample 0 has \(3, 8, 8\)", id="data-list-sample-wrong-shape"),
    pytest.param({"test": _pairs(8, s5=(_X.double(), 1))}, r"sample 5 of the test split has an input of shape \(3, 8, 8\) and dtype torch.float64, but sample 0 has \(3, 8, 8\) and torch.float32", id="data-list-sample-wrong-dtype"),
    pytest.param({"train": _pairs(40, s2=_X)}, r"sample 2 of the train split is a tensor of shape \(3, 8, 8\), not an \(input, label\) pair", id="data-list-sample-not-a-pair"),
    pytest.param({"train": _pairs(40, s0=(np.zeros((3, 8, 8)), 1))}, "sample 0 of the train split has an input of type ndarray: inputs must be tensors", id="data-list-input-not-a-tensor"),
    pytest.param({"test": _pairs(8, s1=(_X, torch.tensor([1, 2])))}, r"sample 1 of the test split has a label of shape \(2,\): one class index per sample", id="data-list-label-not-a-class"),
    pytest.param({"test": _pairs(8, s1=(_X, "cat"))}, "sample 1 of the test split has a label of str", id="data-list-label-string"),
    pytest.param({"test": []}, "the test split is empty", id="data-list-empty"),
    pytest.param({"test": (np.zeros((4, 3, 8, 8)), np.zeros(4))}, r"the test split as a pair \(inputs, labels\) must be two tensors, got ndarray and ndarray", id="data-pair-of-arrays"),
    pytest.param({"test": {"x": 1}}, "got dict: not a torch.utils.data.Dataset, tuple or list", id="data-dict"),
    pytest.param({"test": 3}, "got int: it has no __len__ and __getitem__", id="data-int"),
    pytest.param({"train": (_data(40).tensors[0][:, 0], _data(40).tensors[1]), "test": (torch.zeros(4, 8, 8), torch.zeros(4, dtype=torch.long))}, r"cannot run on sample 0 of the val split \(sample \d+ of train, which val is cut from\) as a batch of one \(shape \(1, 8, 8\), dtype torch.float32\).*its first layer '0' \(Conv2d, 3 input channels\) takes torch.float32 inputs shaped \(batch, 3, height, width\), so each sample should be \(3, height, width\)", id="data-samples-miss-the-channel-axis"),
    pytest.param({"train": (torch.zeros(40, 3, 8, 8, dtype=torch.uint8), torch.arange(40) % 4), "test": (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))}, r"cannot run on sample 0 of the val split .*dtype torch.uint8\).*takes torch.float32 inputs .*: convert the inputs to torch.float32", id="data-uint8-inputs"),
    pytest.param({"test": (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))}, r"sample 0 of the test split has an input of shape \(3, 8, 8\) and dtype torch.uint8, but the model is traced with samples of shape \(3, 8, 8\) and dtype torch.float32", id="data-one-split-of-another-dtype"),
    pytest.param({"example_input": torch.zeros(1, 3, 8, 8, dtype=torch.float64), "test": (torch.zeros(4, 3, 8, 8, dtype=torch.float64), torch.zeros(4, dtype=torch.long)), "val": (torch.zeros(4, 3, 8, 8, dtype=torch.float64), torch.zeros(4, dtype=torch.long)), "train": (torch.zeros(40, 3, 8, 8, dtype=torch.float64), torch.arange(40) % 4)}, r"cannot run on example_input \(shape \(1, 3, 8, 8\), dtype torch.float64\).*convert the inputs to torch.float32", id="data-example-input-of-another-dtype"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "message"), MAKE_TASK_DATA)
def test_bad_make_task_data_is_named(kwargs, message):
    args = {"train": _data(40), "test": _data(8, seed=1), "val_size": 8, "calib_size": 8} | kwargs
    with pytest.raises(TaskError, match=message):
        make_task(_good_task().model, **args)


def test_the_make_task_data_control_is_good():
    """Splits as lists of samples (Python or NumPy labels) are taken, stacked, as they are."""
    train = [(x, np.int64(y)) for x, y in _pairs(40)]
    with pytest.warns(UserWarning, match="val="):
        task = make_task(
            _good_task().model, train=train, test=_pairs(8, seed=1), val_size=8, calib_size=8
        )
    assert (len(task.train), len(task.val), len(task.test)) == (32, 8, 8)
    assert torch.equal(task.test.tensors[0], _data(8, seed=1).tensors[0])


def test_held_out_split_cut_from_train_is_warned_once():
    """Without val=, the search scores data cut from train: one warning naming the option."""
    args = {"train": _data(40), "test": _data(8, seed=1), "val_size": 8, "calib_size": 8}
    with pytest.warns(UserWarning) as caught:
        make_task(_good_task().model, **args)
    about_val = [w for w in caught if "val=" in str(w.message)]
    assert len(about_val) == 1 and about_val[0].filename == __file__  # points at the caller
    assert "held-out split the search scores (8 samples) is cut from train" in str(
        about_val[0].message
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_task(_good_task().model, **args, val=_data(8, seed=2))  # val given: nothing to say


def test_make_task_takes_numpy_sizes():
    task = make_task(
        _good_task().model, train=_data(40), test=_data(8, seed=1), val_size=np.float32(0.25),
        calib_size=np.int64(8),
    )  # fmt: skip
    assert (len(task.val), len(task.train), len(task.calib)) == (10, 30, 8)


# ---- tasks: user factories, models and data ---------------------------------------------------

TASKS = [
    pytest.param("no_such_package_xyz.tasks:make", TaskError, "cannot import module 'no_such_package_xyz.tasks'", id="factory-unimportable"),
    pytest.param("tests.bad_tasks:missing", TaskError, "module 'tests.bad_tasks' has no function 'missing'", id="factory-missing"),
    pytest.param("tests.bad_tasks:CLASSES", TaskError, "has no function 'CLASSES'", id="factory-not-callable"),
    pytest.param("tests.bad_tasks:returns_a_tuple", TaskError, "returned tuple, expected jpq_env.Task", id="factory-returns-tuple"),
    pytest.param("tests.bad_tasks:raises", TaskError, "factory 'tests.bad_tasks:raises' failed: RuntimeError: the dataset server is down", id="factory-raises"),
    pytest.param("tests.bad_tasks:no_compressible_layers", GraphError, "no compressible layer", id="model-no-compressible-layers"),
    pytest.param("tests.bad_tasks:untraceable", GraphError, "cannot trace the model with torch.fx", id="model-untraceable"),
    pytest.param("tests.bad_tasks:wrong_num_classes", TaskError, r"outputs shape \(8, 4\) on the calib split, expected \(batch, 10\)", id="model-wrong-num-classes"),
    pytest.param("tests.bad_tasks:wrong_input_shape", TaskError, r"cannot run on the val split \(inputs of shape \(8, 1, 8, 8\)\)", id="data-wrong-shape"),
    pytest.param("tests.bad_tasks:labels_out_of_range", TaskError, r"val split has labels outside \[0, 4\)", id="data-labels-out-of-range"),
    pytest.param("tests.bad_tasks:float_labels", TaskError, r"calib split has torch.float32 labels", id="data-float-labels"),
    pytest.param("tests.bad_tasks:empty_val", TaskError, "the val split is empty", id="data-empty"),
    pytest.param("tests.bad_tasks:inputs_only", TaskError, r"calib split must hold \(inputs, labels\), got 1 tensors", id="data-no-labels"),
]  # fmt: skip


# Models that would compress to a wrong result without a word: refused wherever a model enters.
MODELS = [
    pytest.param("nan_weight", r"NaN or inf in 1 tensor: '0.weight' \(1 NaN of 108\)", id="model-nan-weight"),
    pytest.param("inf_buffer", r"NaN or inf in 1 tensor: '1.running_var' \(1 inf of 4\)", id="model-inf-buffer"),
    pytest.param("shared_weight", r"the weight of layer 'a' is the same tensor as b.weight .*model.a.weight = torch.nn.Parameter", id="model-shared-weight"),
    pytest.param("tied_to_uncompressed", "the weight of layer 'conv' is the same tensor as up.weight", id="model-weight-tied-to-uncompressed"),
    pytest.param("weight_read_in_forward", r"'fc.weight' is read directly in forward\(\)", id="model-weight-read-in-forward"),
    pytest.param("weight_normed", r"layer '0' has a parametrization on 'weight' \(_WeightNorm.*remove_parametrizations\(model.get_submodule\('0'\), 'weight'\)", id="model-parametrized-weight-norm"),
    pytest.param("old_weight_norm", r"old-style torch.nn.utils.weight_norm hook.*remove_weight_norm\(model.get_submodule\('0'\)\)", id="model-old-weight-norm"),
    pytest.param("old_spectral_norm", r"old-style torch.nn.utils.spectral_norm hook.*remove_spectral_norm", id="model-old-spectral-norm"),
    pytest.param("called_twice", "module 'conv' is called more than once", id="model-module-called-twice"),
    pytest.param("untraceable", "cannot trace the model with torch.fx", id="model-untraceable"),
]  # fmt: skip

ENTRY_POINTS = {
    "graph": lambda name, t: LayerGraph.from_module(t.model, t.example_input),
    "make-task": lambda name, t: make_task(t.model, train=t.train, test=t.test, val_size=4, calib_size=4),
    "evaluator": lambda name, t: LocalEvaluator(t, device="cpu"),
    "env": lambda name, t: JPQEnv(task=f"tests.bad_tasks:{name}", budget_bops=0.5),
}  # fmt: skip


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize(("factory", "message"), MODELS)
def test_bad_model_is_refused_wherever_it_enters(factory, message, entry):
    task = getattr(bad_tasks, factory)()
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    with pytest.raises(GraphError, match=message):
        ENTRY_POINTS[entry](factory, task)
    after = task.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(v, after[k]) or v.isnan().any() for k, v in before.items())


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_the_bad_model_control_is_good(entry):
    ENTRY_POINTS[entry]("good", bad_tasks.good())


def test_the_bad_task_control_is_good():
    env = JPQEnv(task="tests.bad_tasks:good", budget_bops=0.5)
    env.reset(seed=0)
    done = False
    while not done:
        done = env.step(np.zeros(env.action_size, dtype=np.float32))[2]


@pytest.mark.parametrize(("spec", "error", "message"), TASKS)
def test_bad_task_is_named(spec, error, message):
    with pytest.raises(error, match=message):
        JPQEnv(task=spec, budget_bops=0.5)


# ---- names of agents and environments ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"agent": "nope"}, "unknown agent 'nope': choose one of", id="unknown-agent"),
        pytest.param({"env_id": "nope/Nope-v0"}, "unknown environment id 'nope/Nope-v0'", id="unknown-env-id"),
        pytest.param({"episodes": 0}, "episodes must be at least 1", id="episodes-zero"),
    ],
)  # fmt: skip
def test_bad_search_name_is_named(tmp_path, kwargs, message):
    args = {"agent": "random", "out": tmp_path / "run", "episodes": 2, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        run_search(**args)
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ---- policy files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_json(env: JPQEnv) -> dict[str, Any]:
    return Policy.uniform(env.graph, 8, 8, env.conventions).to_json()


def _edit(fn: Callable[[dict[str, Any]], object]) -> Callable[[dict[str, Any]], str]:
    def edit(data: dict[str, Any]) -> str:
        data = json.loads(json.dumps(data))
        fn(data)
        return json.dumps(data)

    return edit


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], str]:
    def put(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return _edit(put)


POLICIES = [
    pytest.param(lambda d: json.dumps(d)[: len(json.dumps(d)) // 2], PolicyError, "is not valid JSON", id="policy-truncated"),
    pytest.param(lambda d: "", PolicyError, "is not valid JSON", id="policy-empty-file"),
    pytest.param(lambda d: "[1, 2]", PolicyError, "not a jpq-env policy", id="policy-not-an-object"),
    pytest.param(_set(("schema",), 2), PolicyError, r"schema 1 expected", id="policy-other-schema"),
    pytest.param(_set(("fingerprint",), None), PolicyError, "needs a 'fingerprint' string", id="policy-no-fingerprint"),
    pytest.param(_set(("layers",), []), PolicyError, "non-empty 'layers' list", id="policy-no-layers"),
    pytest.param(_set(("layers", 0, "bits", 0), "8"), PolicyError, r"layer entry 0: needs .*'bits' \(non-empty list of integers\)", id="policy-bits-as-strings"),
    pytest.param(_set(("layers", 1, "act_bits"), 8.0), PolicyError, r"layer entry 1: needs .*'act_bits' \(integer\)", id="policy-float-act-bits"),
    pytest.param(_set(("layers", 1, "bits", 0), 2**40), PolicyError, r"layer entry 1 \('conv2'\): bit-widths out of range", id="policy-huge-bits"),
    pytest.param(_set(("layers", 1, "bits", 0), -1), PolicyError, r"'conv2': weight bit-width -1 is outside", id="policy-negative-bits"),
    pytest.param(_set(("layers", 1, "bits", 0), 33), PolicyError, r"'conv2': weight bit-width 33 is outside", id="policy-bits-above-32"),
    pytest.param(_set(("layers", 1, "act_bits"), 0), PolicyError, r"'conv2': activation bit-width 0 is not supported", id="policy-act-bits-zero"),
    pytest.param(_edit(lambda d: d["layers"][1]["bits"].pop()), PolicyError, r"'conv2': expected \d+ bit-widths, got", id="policy-kernel-missing"),
    pytest.param(_edit(lambda d: d["layers"].pop(1)), PolicyError, "made for another model: its layers", id="policy-layer-missing"),
    pytest.param(_set(("layers", 1, "name"), "conv9"), PolicyError, "made for another model: its layers", id="policy-layer-renamed"),
    pytest.param(_set(("fingerprint",), "0" * 16), PolicyError, "made for another model: same layer names, other shapes", id="policy-fingerprint-edited"),
    pytest.param(_edit(lambda d: d["layers"][-1]["bits"].__setitem__(0, 0)), PolicyError, "produces the network's output: its kernels cannot be pruned", id="policy-output-pruned"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "error", "message"), POLICIES)
def test_bad_policy_file_is_named(tmp_path, env: JPQEnv, policy_json, edit, error, message):
    path = tmp_path / "policy.json"
    path.write_text(edit(policy_json))
    with pytest.raises(error, match=message):
        Policy.load(path).validate(env.graph)


def test_the_policy_control_is_good(tmp_path, env: JPQEnv, policy_json):
    (tmp_path / "policy.json").write_text(json.dumps(policy_json))
    Policy.load(tmp_path / "policy.json").validate(env.graph)


def test_policy_for_another_model_is_named(tmp_path, policy_json):
    other = LayerGraph.from_module(PlainNet(), torch.randn(1, 3, 8, 8))
    (tmp_path / "policy.json").write_text(json.dumps(policy_json))
    with pytest.raises(PolicyError, match=r"made for another model: its layers \['conv1', 'conv2'"):
        Policy.load(tmp_path / "policy.json").validate(other)


def test_hand_edited_policy_through_the_cli(tmp_path, policy_json, capsys):
    path = tmp_path / "policy.json"
    path.write_text(_set(("layers", 2, "bits", 0), 40)(policy_json))
    assert main(["evaluate", str(path)]) == 2
    assert "weight bit-width 40 is outside the allowed set" in capsys.readouterr().err


# ---- paths and result directories -------------------------------------------------------------


def test_missing_policy_path_is_named(tmp_path):
    with pytest.raises(
        PolicyError, match=r"cannot read policy file '.*nowhere.json': No such file"
    ):
        Policy.load(tmp_path / "nowhere.json")


def test_missing_export_path_is_named(tmp_path, env: JPQEnv):
    task = env.task
    with pytest.raises(ValueError, match=r"no export at '.*missing.pt'"):
        load_compressed(tmp_path / "missing.pt", task.model, task.example_input)


def test_export_into_a_missing_directory_is_named(tmp_path, env: JPQEnv, policy_json, capsys):
    policy = Policy.from_json(policy_json)
    with pytest.raises(FileNotFoundError, match=r"directory '.*no_dir' does not exist"):
        export_compressed(env.evaluator, policy, tmp_path / "no_dir" / "model.pt")  # type: ignore[arg-type]
    (tmp_path / "policy.json").write_text(json.dumps(policy_json))
    target = tmp_path / "no_dir" / "model.pt"
    assert main(["export", str(tmp_path / "policy.json"), "--out", str(target)]) == 2
    assert f"directory '{target.parent}' does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "policy.json"]


def test_search_output_that_is_a_file_is_named(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    for out in (tmp_path / "afile", tmp_path / "afile" / "run"):
        argv = ["search", "--agent", "random", "--episodes", "2", "--out", str(out), "--quiet"]
        assert main(argv) == 2
        assert f"cannot use '{out}' as the output directory" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "mine"


SEARCH_ARGUMENTS = [
    pytest.param(["--task", "no_such_package_xyz.tasks:make"], "cannot import module 'no_such_package_xyz.tasks'", id="search-task-module-unknown"),
    pytest.param(["--task", "tests.bad_tasks:missing"], "module 'tests.bad_tasks' has no function 'missing'", id="search-task-factory-missing"),
    pytest.param(["--task", "tests.bad_tasks:raises"], "the dataset server is down", id="search-task-factory-raises"),
    pytest.param(["--task-option", "nope=1"], r"task 'digits' does not take the options \['nope'\]", id="search-task-option-unknown"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "message"), SEARCH_ARGUMENTS)
def test_search_that_cannot_start_leaves_no_directory(tmp_path, capsys, extra, message):
    """The folders --out names are created to lock the run: one that cannot start removes them."""
    out = tmp_path / "runs" / "run"
    argv = ["search", "--agent", "random", "--episodes", "2", "--out", str(out), "--quiet"]
    assert main([*argv, *extra]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # neither run/ nor runs/ is left behind
    out.mkdir(parents=True)  # a folder the user made is the user's: it stays, empty
    assert main([*argv, *extra]) == 2
    assert out.is_dir() and list(out.iterdir()) == []


def test_search_that_fails_after_it_started_keeps_its_directory(tmp_path, monkeypatch):
    def broken(search: Search, seed: int, opts: dict[str, Any]) -> None:
        search.env.reset(seed=seed)
        raise RuntimeError("the agent broke")

    monkeypatch.setitem(AGENTS, "random", broken)
    with pytest.raises(RuntimeError, match="the agent broke"):
        run_search("random", tmp_path / "run", 2, progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [RUN_NAME]  # kept, as written


def _search(out: Path, env: JPQEnv, agent: str = "random", resume: bool = False) -> Search:
    fresh = JPQEnv(evaluator=env.evaluator)  # resume wraps the evaluator: keep the fixture clean
    return Search(out, RunSettings(agent, 2, 0), fresh, resume=resume)


@pytest.mark.parametrize(
    ("prepare", "resume", "message"),
    [
        pytest.param(lambda d: (d / RUN_NAME).write_text("{}"), False, "already holds a run: pass --resume", id="results-dir-holds-a-run"),
        pytest.param(lambda d: (d / LOG_NAME).write_text("{}\n"), True, f"holds no run \\({RUN_NAME} is missing\\): it holds {LOG_NAME}", id="resume-without-run-file"),
        pytest.param(lambda d: (d / RUN_NAME).write_text('{"agent": "greedy", "episodes": 2, "seed": 0, "env": {}}'), True, "holds a run with other settings", id="resume-other-settings"),
        pytest.param(lambda d: (d / RUN_NAME).write_text('{"agent": "ran'), True, f"{RUN_NAME}' is not valid JSON", id="resume-truncated-run-file"),
        pytest.param(lambda d: (d / RUN_NAME).write_text("[]"), True, f"{RUN_NAME}' holds list, not a run's settings", id="resume-run-file-a-list"),
        pytest.param(lambda d: (d / RUN_NAME).write_text("null"), True, f"{RUN_NAME}' holds NoneType, not a run's settings", id="resume-run-file-null"),
        pytest.param(lambda d: (d / RUN_NAME).write_text('{"agent": "random", "episodes": "2", "seed": 0, "env": {}}'), True, r"needs 'episodes' \(int\), got '2'", id="resume-run-file-episodes-a-string"),
        pytest.param(lambda d: (d / RUN_NAME).write_bytes(b'{"agent": "\xff"}'), True, "is not UTF-8 text", id="resume-run-file-undecodable"),
        pytest.param(lambda d: [(d / n).write_text("mine") for n in ("policy.json", "summary.json", "reference.jsonl")], False, "is not empty and holds no run", id="out-holds-the-users-files"),
    ],
)  # fmt: skip
def test_results_directory_of_another_run_is_named(tmp_path, env: JPQEnv, prepare, resume, message):
    prepare(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(SearchError, match=message):
        _search(tmp_path, env, resume=resume)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing overwritten


# ---- trust: a policy file never runs code, no result lost or silently wrong --------------------


def _random_run(out: Path, episodes: int, *extra: str) -> int:
    argv = ["search", "--agent", "random", "--episodes", str(episodes), "--out", str(out)]
    return main([*argv, "--quiet", *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trust") / "run"
    assert _random_run(out, 6) == 0
    return out


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@pytest.mark.parametrize("command", ["evaluate", "finetune", "export"])
def test_a_policy_file_never_chooses_code_to_import(
    tmp_path, policy_json, monkeypatch, capsys, command
):
    monkeypatch.chdir(tmp_path)
    evil = {**policy_json, "task": "os:system", "env": {"task_options": {"command": "touch PWNED"}}}
    (tmp_path / "evil.json").write_text(json.dumps(evil))
    argv = [command, "evil.json"] + (["--out", "out.pt"] if command != "evaluate" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "names the task factory 'os:system': a policy file never chooses code to import" in err
    assert "--task os:system" in err  # how to run it, if the user trusts it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.json"]  # no PWNED, no out.pt


def test_a_factory_the_user_names_runs_with_the_files_options(tmp_path, capsys):
    task = load_task("tests.bad_tasks:good")
    graph = LayerGraph.from_module(task.model, task.example_input)
    data = {
        **Policy.uniform(graph, 8, 8).to_json(),
        "task": "tests.bad_tasks:good",
        "env": {"task_options": {}},
    }
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert main(["evaluate", str(tmp_path / "p.json")]) == 2
    assert "never chooses code" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "p.json"), "--task", "tests.bad_tasks:good"]) == 0
    assert "test accuracy" in capsys.readouterr().out


POLICY_FILE_FIELDS = [
    pytest.param(lambda d: {**d, "env": {"task_options": [1, 2]}}, "'env.task_options' must be an object of named options, got [1, 2]", id="policy-task-options-a-list"),
    pytest.param(lambda d: {**d, "env": [1]}, "'env' must be an object", id="policy-env-a-list"),
    pytest.param(lambda d: {**d, "task": 3}, "'task' must be a string, got 3", id="policy-task-a-number"),
    pytest.param(lambda d: {**d, "env": {"bn_recalibration": "no"}}, "env.bn_recalibration must be True or False, got 'no'", id="policy-recalibration-a-string"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), POLICY_FILE_FIELDS)
def test_bad_policy_file_field_is_named_by_the_cli(tmp_path, policy_json, capsys, edit, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(edit(policy_json)))
    assert main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "is nested too deeply", id="policy-nested-100000-deep"),
        pytest.param(b'{"schema": 1, "\xff": 2}', "is not UTF-8 text", id="policy-undecodable"),
    ],
)  # fmt: skip
def test_unreadable_policy_file_is_named(tmp_path, capsys, content, message):
    path = tmp_path / "p.json"
    path.write_bytes(content)
    assert main(["evaluate", str(path)]) == 2
    assert f"policy file '{path}' {message}" in capsys.readouterr().err


def test_a_policy_with_nothing_left_is_evaluated(tmp_path, env: JPQEnv, capsys):
    # Every kernel but the output layer's pruned: the output layer loses all its inputs too.
    policy = Policy.uniform(env.graph, 0, 8)
    layers = list(policy.layers)
    last = layers[-1]
    layers[-1] = LayerPolicy(last.name, np.full(len(last.bits), 8), last.act_bits)
    data = Policy(tuple(layers), policy.fingerprint).to_json()
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert main(["evaluate", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "BOPs 0 = 0.00000 of FP32 (0)" in out
    assert "test accuracy" in out


def test_a_resumed_run_never_shrinks(finished_run, capsys):
    before = _files(finished_run)
    assert _random_run(finished_run, 3, "--resume") == 2
    err = capsys.readouterr().err
    assert "cannot resume with 3 episodes: the run in" in err and "was started for 6" in err
    assert "--episodes 6 or more" in err
    assert _files(finished_run) == before


def test_out_holding_the_users_files_is_refused(tmp_path, capsys):
    for name in ("policy.json", "summary.json", "reference.jsonl"):
        (tmp_path / name).write_text(f"the user's {name}")
    before = _files(tmp_path)
    for resume in ([], ["--resume"]):
        assert _random_run(tmp_path, 2, *resume) == 2
        err = capsys.readouterr().err
        assert "is not empty and holds no run (run.json is missing): it holds policy.json" in err
    assert _files(tmp_path) == before


def test_an_empty_out_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["search", "--agent", "random", "--episodes", "2", "--out", "", "--quiet"]
    assert main(argv) == 2
    assert "out must name a directory, got ''" in capsys.readouterr().err
    assert not (tmp_path / LOG_NAME).exists() and not (tmp_path / RUN_NAME).exists()


def _edit_log(run: Path, target: Path, line: int, change: Callable[[dict[str, Any]], None]) -> None:
    for name in ("run.json", LOG_NAME, "policy.json"):
        (target / name).write_bytes((run / name).read_bytes())
    records = [json.loads(x) for x in (target / LOG_NAME).read_text().splitlines()]
    change(records[line])
    (target / LOG_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))


LOG_EDITS = [
    pytest.param(lambda r: r.pop("policy"), r"line 2 of .*'policy' must be a list of layers", id="log-record-without-policy"),
    pytest.param(lambda r: r.update(accuracy="high"), r"line 2 of .*'accuracy' must be a number in \[0, 1\], got 'high'", id="log-accuracy-a-string"),
    pytest.param(lambda r: r.update(accuracy=float("nan")), r"'accuracy' must be a number in \[0, 1\], got nan", id="log-accuracy-nan"),
    pytest.param(lambda r: r.update(budget_met="yes"), r"'budget_met' must be true or false", id="log-budget-met-a-string"),
    pytest.param(lambda r: r["policy"][0].update(bits="8"), r"'policy' must be a list of layers", id="log-bits-a-string"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "message"), LOG_EDITS)
def test_an_edited_log_record_is_named(finished_run, tmp_path, capsys, change, message):
    _edit_log(finished_run, tmp_path, 1, change)
    before = _files(tmp_path)
    assert _random_run(tmp_path, 6, "--resume") == 2
    assert re.search(message, capsys.readouterr().err)
    assert _files(tmp_path) == before


def test_an_edited_accuracy_never_becomes_the_result(finished_run, tmp_path, capsys):
    records = [json.loads(x) for x in (finished_run / LOG_NAME).read_text().splitlines()]
    within = [r["episode"] for r in records if r["budget_met"]]
    assert within, "the fixture run needs a policy within budget"
    _edit_log(finished_run, tmp_path, within[0], lambda r: r.update(accuracy=0.999))
    before = _files(tmp_path)
    assert _random_run(tmp_path, 6, "--resume") == 2
    err = capsys.readouterr().err
    assert (
        f"episode {within[0]} of" in err
        and "claims held-out accuracy 0.999, the proxy gives" in err
    )
    assert _files(tmp_path) == before  # policy.json still the real best


def test_an_untouched_log_resumes_to_the_same_files(finished_run, tmp_path):
    _edit_log(finished_run, tmp_path, 0, lambda r: None)
    assert _random_run(tmp_path, 6, "--resume") == 0
    assert (tmp_path / "policy.json").read_bytes() == (finished_run / "policy.json").read_bytes()


def test_equivalent_settings_resume_and_a_difference_is_named(finished_run, tmp_path, capsys):
    _edit_log(finished_run, tmp_path, 0, lambda r: None)
    assert _random_run(tmp_path, 6, "--resume", "--budget-bops", "1/128", "--device", "cpu") == 0
    capsys.readouterr()
    assert _random_run(tmp_path, 6, "--resume", "--budget-bops", "1/64") == 2
    err = capsys.readouterr().err
    assert "env.budget_bops is 0.0078125 there, 0.015625 here" in err


def test_result_files_are_readable_by_others(finished_run):
    for name in ("policy.json", "summary.json", "run.json", LOG_NAME, "reference.jsonl"):
        mode = (finished_run / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~_umask(), (name, oct(mode))


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import os

    from jpq_env.atomic import write_atomic

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    search = Search(tmp_path / "run", RunSettings("random", 2, 0), JPQEnv())
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"cannot write '.*summary.json': No space left on device"):
        write_atomic(tmp_path / "summary.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary file left behind
    info = {
        "accuracy": 0.5,
        "accuracy_fp32": 0.9,
        "bops_ratio": 0.01,
        "size_ratio": 0.1,
        "budget_met": True,
        "policy": [],
    }
    with pytest.raises(
        SearchError, match=r"cannot append episode 0 to '.*evaluations.jsonl': No space left"
    ):
        search.record(info, 0.0)
    search.release()


@pytest.mark.parametrize("seed", ["-1", str(2**32), "one"])
def test_a_bad_seed_is_refused_before_any_work(tmp_path, capsys, seed):
    with pytest.raises(SystemExit) as stop:
        _random_run(tmp_path / "run", 2, "--seed", seed)
    assert stop.value.code == 2
    assert "--seed" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
        run_search("random", tmp_path / "lib", 2, seed=-1)


def test_a_grad_tensor_action_is_taken(env: JPQEnv):
    fresh, twin = JPQEnv(evaluator=env.evaluator), JPQEnv(evaluator=env.evaluator)
    fresh.reset(seed=0)
    twin.reset(seed=0)
    action = torch.full(fresh.action_space.shape, 0.5, requires_grad=True)
    obs = fresh.step(action)[0]
    assert np.array_equal(obs, twin.step(np.full(fresh.action_space.shape, 0.5))[0])


def test_channel_groups_beyond_the_widest_layer_are_refused(env: JPQEnv):
    with pytest.raises(
        ValueError,
        match=r"channel_groups=1000000000 is more than the 64 kernels of the widest layer and than 256",
    ):
        JPQEnv(evaluator=env.evaluator, channel_groups=10**9)


class _ShapeOf(torch.utils.data.Dataset):
    """A map-style split (not tensors) whose sample ``odd`` has another input shape or label."""

    def __init__(self, n: int, odd: int, shape: bool = True) -> None:
        self.base, self.odd, self.shape = bad_tasks._data(n), odd, shape

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.base[i]
        if i == self.odd:
            return (x[:, :4], int(y)) if self.shape else (x, 99)
        return x, int(y)


def test_a_test_split_sample_of_another_shape_is_named():
    task = bad_tasks._task(test=_ShapeOf(8, 5))
    evaluator = LocalEvaluator(task)
    with pytest.raises(
        TaskError,
        match=r"the test split: sample 5 is a torch.float32 tensor of shape \(3, 4, 8\) but sample 0 is a torch.float32 tensor of shape \(3, 8, 8\)",
    ):
        evaluator.check_split("test")


def test_a_bad_test_label_fails_before_the_search(tmp_path, monkeypatch):
    monkeypatch.setattr(
        bad_tasks,
        "late_bad_label",
        lambda: bad_tasks._task(test=_ShapeOf(8, 6, shape=False)),
        raising=False,
    )
    with pytest.raises(TaskError, match=r"the test split has labels outside \[0, 4\)"):
        run_search(
            "random",
            tmp_path / "run",
            2,
            env_kwargs={"task": "tests.bad_tasks:late_bad_label"},
            progress=False,
        )
    assert not (tmp_path / "run" / LOG_NAME).exists()  # before the first evaluation


def test_finetune_into_a_directory_fails_before_training(tmp_path, policy_json, capsys):
    (tmp_path / "p.json").write_text(json.dumps(policy_json))
    (tmp_path / "weights").mkdir()
    assert main(["finetune", str(tmp_path / "p.json"), "--out", str(tmp_path / "weights")]) == 2
    assert f"--out '{tmp_path / 'weights'}' is a directory" in capsys.readouterr().err
    assert list((tmp_path / "weights").iterdir()) == []


def test_rl_zoo_policy_kwargs_are_parsed_never_run():
    from jpq_agents.sb3 import policy_kwargs

    assert policy_kwargs("dict(net_arch=[64, 64])") == {"net_arch": [64, 64]}
    assert policy_kwargs('{"net_arch": dict(pi=[32], vf=[16])}') == {
        "net_arch": {"pi": [32], "vf": [16]}
    }
    for code in [
        '__import__("os").system("touch PWNED")',
        "().__class__.__bases__",
        'dict(a=open("f"))',
    ]:
        with pytest.raises(ValueError, match="only dict"):
            policy_kwargs(code)


@pytest.mark.slow
def test_sigterm_stops_a_search_with_the_resume_hint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "jpq_agents.cli",
        "search",
        "--agent",
        "random",
        "--episodes",
        "100000",
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    deadline = time.monotonic() + 120
    while (
        not ((out / LOG_NAME).exists() and (out / LOG_NAME).stat().st_size)
        and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err


# ---- trust, second round: what an independent hostile audit found ----------------------------


def _copy_run(run: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for p in run.iterdir():
        if p.is_file() and not p.name.startswith("."):
            (target / p.name).write_bytes(p.read_bytes())
    return target


def test_a_lock_link_in_a_run_folder_never_writes_through(finished_run, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's data")
    for resume in (["--resume"], []):
        run = tmp_path / f"run{len(resume)}"
        if resume:
            _copy_run(finished_run, run)
        else:
            run.mkdir()
        (run / ".lock").symlink_to(precious)
        assert _random_run(run, 6, *resume) == 2
        assert ".lock' is a symbolic link" in capsys.readouterr().err
        assert precious.read_text() == "the user's data"


def test_a_run_file_that_is_a_link_is_refused(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    (run / LOG_NAME).unlink()
    (run / LOG_NAME).symlink_to(tmp_path / "elsewhere.jsonl")
    assert _random_run(run, 6, "--resume") == 2
    assert "holds symbolic links (evaluations.jsonl)" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere.jsonl").exists()


def test_finetune_and_export_never_overwrite_their_inputs(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    policy = run / "policy.json"
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"the user's model")
    data = json.loads(policy.read_text())
    data["env"]["task_options"] = {"weights": str(weights)}
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(data))
    before = _files(run)
    cases = [
        (["export", str(policy), "--out", str(policy)], "is an input of this command"),
        (["export", str(policy), "--out", str(run / LOG_NAME)], "is a file of the run in"),
        (["finetune", str(mine), "--out", str(weights)], "is an input of this command"),
        (["export", str(policy), "--out", str(weights)], "exists: pass --force to replace it"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert _files(run) == before and weights.read_bytes() == b"the user's model"
    out = tmp_path / "model.pt"
    assert main(["export", str(policy), "--out", str(out)]) == 0
    assert main(["export", str(policy), "--out", str(out)]) == 2  # a second time: refused
    assert main(["export", str(policy), "--out", str(out), "--force"]) == 0


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda r: r.update(accuracy=0.0), id="log-best-lowered"),
        pytest.param(lambda r: r.update(proxy_complete=False, proxy_images=10), id="log-best-marked-raced"),
    ],
)  # fmt: skip
def test_a_log_edited_to_demote_the_best_is_refused(finished_run, tmp_path, capsys, edit):
    best = json.loads((finished_run / "policy.json").read_text())["episode"]
    _edit_log(finished_run, tmp_path, best, edit)
    before = _files(tmp_path)
    assert _random_run(tmp_path, 6, "--resume") == 2
    err = capsys.readouterr().err
    assert f"episode {best}" in err and "edited" in err
    assert _files(tmp_path) == before


def _cifar(root: Path, data: Any = None, labels: Any = None) -> Path:
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, size=(12, 3072), dtype=np.uint8) if data is None else data,
            "labels": [int(v) for v in rng.integers(0, 10, size=12)] if labels is None else labels,
        }
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)
    return root


CIFAR_BATCHES = [
    pytest.param({"data": np.full((12, 3072), 0.5, dtype=np.float32)}, r"'data' must be uint8 pixels \(0-255\), got float32", id="cifar-float-pixels"),
    pytest.param({"data": np.full((12, 3072), 765, dtype=np.int64)}, "'data' must be uint8 pixels", id="cifar-int64-pixels"),
    pytest.param({"labels": [3.7] * 12}, "'labels' must be integers, got float64", id="cifar-float-labels"),
    pytest.param({"labels": ["x"] * 12}, "'labels' must be integers", id="cifar-string-labels"),
]  # fmt: skip


@pytest.mark.parametrize(("batch", "message"), CIFAR_BATCHES)
def test_a_bad_cifar_batch_is_named(tmp_path, batch, message):
    from jpq_env.tasks.image_data import cifar10_data

    root = _cifar(tmp_path, **batch)
    with pytest.raises(TaskError, match=rf"CIFAR-10 batch '.*data_batch_1': {message}"):
        cifar10_data(root)


@pytest.mark.parametrize("option", ["std=1,1,1e-300", "mean=1e308,0,0"])
def test_channel_statistics_beyond_float32_are_refused(option):
    from jpq_env.tasks.vision import channel_stats

    name, _, value = option.partition("=")
    with pytest.raises(TaskError, match=f"{name} must be three"):
        channel_stats(value, name)


@pytest.mark.parametrize("device", ["meta", "xpu", "hpu"])
def test_an_unsupported_device_is_one_line(tmp_path, capsys, device):
    assert main(["report", "--device", device, "--quiet"]) == 2
    assert f"unsupported device '{device}'" in capsys.readouterr().err


def test_a_weights_file_with_objects_is_refused_in_one_line(tmp_path):
    import os

    from jpq_env.tasks.vision import _state_dict

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(TaskError) as err:
        _state_dict(tmp_path / "evil.pt")
    assert "refused, nothing was executed" in str(err.value)
    assert "weights_only` set to `False`" not in str(err.value) and "\n" not in str(err.value)


def test_resume_of_an_unknown_env_id_says_so(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    settings = json.loads((run / RUN_NAME).read_text())
    settings["env"]["id"] = "os:system"
    (run / RUN_NAME).write_text(json.dumps(settings))
    assert _random_run(run, 6, "--resume") == 2
    err = capsys.readouterr().err
    assert "env.id 'os:system' there is not a registered environment" in err
    assert "budget_bops" not in err


def test_smaller_audit_cases(tmp_path, policy_json, capsys):
    with pytest.raises(SystemExit):
        main(["search", "--agent", "ddpg", "--warmup-episodes", "-5", "--out", str(tmp_path / "r")])
    assert "--warmup-episodes: must be at least 0" in capsys.readouterr().err
    with pytest.raises(PolicyError, match="schema 1 expected"):
        Policy.from_json({**policy_json, "schema": True})
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**policy_json, "env": {"task": "digits-deep"}, "task": "digits"}))
    assert main(["evaluate", str(path)]) == 2
    assert "'task' is 'digits' but 'env.task' is 'digits-deep'" in capsys.readouterr().err


def test_a_policy_departing_from_the_search_conventions_is_noted(tmp_path, env: JPQEnv, capsys):
    policy = Policy.uniform(env.graph, 8, 8, env.conventions)
    data = policy.to_json()
    data["layers"][0]["act_bits"] = 2  # the network input is pinned at 8 bits in a search
    (tmp_path / "p.json").write_text(json.dumps(data))
    assert main(["evaluate", str(tmp_path / "p.json")]) == 0
    assert "departs from its search's conventions in conv1" in capsys.readouterr().err
    (tmp_path / "q.json").write_text(json.dumps(policy.to_json()))
    assert main(["evaluate", str(tmp_path / "q.json")]) == 0
    assert "departs" not in capsys.readouterr().err
