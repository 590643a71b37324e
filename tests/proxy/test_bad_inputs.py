"""Bad inputs of the accuracy proxy, each refused with an error naming the problem.

Part of the catalogue of bad inputs (``pytest tests -k bad_inputs --collect-only -q`` lists it):
the evaluators' constructor arguments, fine-tuning arguments, and a test split whose samples
disagree in shape.
"""

# ruff: noqa: E501 - the catalogue is a table, one case per line
from __future__ import annotations

import pytest

from jpq_env import LocalEvaluator, Policy, Task, TaskError, load_task
from jpq_env.envs import JPQEnv
from jpq_env.proxy.evaluator import PaddedEvaluator
from jpq_env.proxy.finetune import finetune
from tests import bad_tasks


@pytest.fixture(scope="module")
def env() -> JPQEnv:
    return JPQEnv()


def _good_task() -> Task:
    return load_task("tests.bad_tasks:good")


CONSTRUCTORS = [
    pytest.param(lambda: LocalEvaluator(_good_task(), bn_recalibration="no"), "bn_recalibration must be True or False, got 'no'", id="evaluator-bn-recalibration-string"),
    pytest.param(lambda: LocalEvaluator(_good_task(), batch_size=True), "batch_size must be an integer >= 1 or None, got True", id="evaluator-batch-size-bool"),
    pytest.param(lambda: LocalEvaluator(_good_task(), batch_size=2.5), "batch_size must be an integer >= 1 or None, got 2.5", id="evaluator-batch-size-float"),
    pytest.param(lambda: LocalEvaluator("digits"), "task must be a jpq_env.Task, got str", id="evaluator-task-name"),  # type: ignore[arg-type]
    pytest.param(lambda: PaddedEvaluator(None, float("nan")), "seconds must be a finite number >= 0, got nan", id="padded-evaluator-nan"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "message"), CONSTRUCTORS)
def test_bad_constructor_argument_is_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"epochs": True}, "epochs must be an integer >= 1, got True", id="finetune-epochs-bool"),
        pytest.param({"lr": float("nan")}, "lr must be a finite number > 0, got nan", id="finetune-lr-nan"),
        pytest.param({"batch_size": 0}, "batch_size must be an integer >= 1, got 0", id="finetune-batch-size-zero"),
        pytest.param({"recipe": "adamw"}, r"unknown recipe 'adamw': choose one of \['lsq', 'ste'\]", id="finetune-recipe-unknown"),
        pytest.param({"distill": 1.5}, "distill must be a finite number", id="finetune-distill-above-one"),
        pytest.param({"temperature": 0}, "temperature must be a finite number > 0", id="finetune-temperature-zero"),
        pytest.param({"dropout": 0.1}, r"unknown fine-tuning options \['dropout'\]", id="finetune-unknown-option"),
    ],
)  # fmt: skip
def test_bad_finetune_argument_is_named(env: JPQEnv, kwargs, message):
    policy = Policy.uniform(env.graph, 8, 8, env.conventions)
    with pytest.raises(ValueError, match=message):
        finetune(env.evaluator, policy, **kwargs)  # type: ignore[arg-type]


def test_a_test_split_sample_of_another_shape_is_named():
    task = bad_tasks._task(test=bad_tasks.OddSample(8, 5))
    evaluator = LocalEvaluator(task)
    with pytest.raises(
        TaskError,
        match=r"the test split: sample 5 is a torch.float32 tensor of shape \(3, 4, 8\) but sample 0 is a torch.float32 tensor of shape \(3, 8, 8\)",
    ):
        evaluator.check_split("test")
