"""Bad export paths, each refused with an error naming the problem.

Part of the catalogue of bad inputs (``pytest tests -k bad_inputs --collect-only -q`` lists it).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from jpq_agents.cli import main
from jpq_env import Policy
from jpq_env.envs import JPQEnv
from jpq_env.export.packed import export_compressed, load_compressed


@pytest.fixture(scope="module")
def env() -> JPQEnv:
    return JPQEnv()


@pytest.fixture(scope="module")
def policy_json(env: JPQEnv) -> dict[str, Any]:
    return Policy.uniform(env.graph, 8, 8, env.conventions).to_json()


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
