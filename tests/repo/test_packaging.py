"""The wheel: the license and the hyperparameters shipped, installed beside another ``agents``
package, and used from outside the checkout.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests import ROOT


@pytest.mark.slow
def test_the_wheel_ships_the_license_and_the_hyperparameters(tmp_path):
    # built from a copy: setuptools leaves build/ and *.egg-info behind in the source folder
    junk = shutil.ignore_patterns(".*", "build", "dist", "runs", "*.egg-info", "__pycache__")
    source = shutil.copytree(ROOT, tmp_path / "src", ignore=junk)
    cmd = [
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--no-index", "-q", "-w", str(tmp_path), str(source),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("jpq_env-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    for algo in ("ppo", "ddpg", "ppo_mask"):
        assert f"jpq_agents/hyperparams/{algo}.py" in names
        assert f"jpq_agents/hyperparams/{algo}.yml" in names
    assert not any(n.startswith("agents/") for n in names)  # no generic top-level name
    assert "MIT License" in (ROOT / "LICENSE").read_text()

    # Installed from the wheel into a clean target, beside another package that owns the
    # top-level name `agents` (as openai-agents does), used from outside the checkout.
    target, other, work = tmp_path / "site", tmp_path / "other", tmp_path / "work"
    install = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
        "--target", str(target), str(wheel),
    ]  # fmt: skip
    out = subprocess.run(install, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (other / "agents").mkdir(parents=True)
    (other / "agents" / "__init__.py").write_text("import openai  # what openai-agents does\n")
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(other)])}
    where = "import jpq_agents, jpq_env; print(jpq_agents.__file__); print(jpq_env.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", where], capture_output=True, text=True, cwd=work, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert all(line.startswith(str(target)) for line in out.stdout.split()), out.stdout
    search = [
        str(target / "bin" / "jpq"), "search", "--agent", "random", "--episodes", "3",
        "--out", "run", "--quiet",
    ]  # fmt: skip
    out = subprocess.run(search, capture_output=True, text=True, timeout=300, cwd=work, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((work / "run" / "summary.json").read_text())["evaluations"] == 3
    zoo = [
        sys.executable, "-m", "rl_zoo3.train", "--gym-packages", "jpq_env",
        "--env", "jpq_env/JPQWeights-v0", "--algo", "ppo",
        "--conf-file", "jpq_agents.hyperparams.ppo", "--env-kwargs", "val_images:16",
        "-n", "48", "--log-folder", "zoo", "--eval-freq", "-1", "--seed", "0",
    ]  # fmt: skip
    out = subprocess.run(zoo, capture_output=True, text=True, timeout=600, cwd=work, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Using 'default' hyperparameters" not in out.stdout
    assert list((work / "zoo").rglob("*.zip"))
