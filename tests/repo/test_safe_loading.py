"""Safe loading: nothing a user may have downloaded is unpickled or evaluated.

An AST scan of the source finds every call that could run code from a file (``pickle.load``,
``torch.load`` without ``weights_only=True``, ``numpy.load`` with pickles, ``yaml.load``, SB3's
``Algo.load``, ``eval``/``exec`` with builtins); the scanner is itself tested on snippets so that it
cannot pass by finding nothing. Then the real load paths are fed a checkpoint holding a pickled
payload that would create a file if it ran: it is refused and the file never appears.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from jpq_env import load_task
from jpq_env.export.packed import load_compressed
from jpq_env.tasks import digits
from tests import ROOT

SCANNED = ("jpq_env", "agents", "benchmarks")
_PICKLERS = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "marshal", "shelve"}
_LOADERS = {"load", "loads", "Unpickler", "open"}
_SB3 = {"PPO", "DDPG", "MaskablePPO", "SAC", "TD3", "A2C", "DQN", "RecurrentPPO"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _no_builtins(node: ast.AST | None) -> bool:
    """A globals dict literal that sets ``__builtins__`` to an empty dict."""
    if not isinstance(node, ast.Dict):
        return False
    for key, value in zip(node.keys, node.values, strict=True):
        if isinstance(key, ast.Constant) and key.value == "__builtins__":
            return isinstance(value, ast.Dict) and not value.keys
    return False


def unsafe_loads(source: str) -> list[str]:
    """Calls in ``source`` that may execute code from data, as ``line: description``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            loaders = [a.name for a in node.names if a.name in _LOADERS]
            if (node.module or "").split(".")[0] in _PICKLERS and loaders:
                found.append(f"{node.lineno}: imports {loaders} from {node.module}")
            continue
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, tail = name.rpartition(".")
        if head.split(".")[0] in _PICKLERS and tail in _LOADERS:
            found.append(f"{node.lineno}: {name} unpickles")
        elif tail == "load" and head == "torch" and not _is_true(_keyword(node, "weights_only")):
            found.append(f"{node.lineno}: torch.load without weights_only=True")
        elif (
            tail == "load" and head in {"np", "numpy"} and _is_true(_keyword(node, "allow_pickle"))
        ):
            found.append(f"{node.lineno}: numpy.load with allow_pickle=True")
        elif head == "yaml" and tail in {"load", "load_all", "unsafe_load", "full_load"}:
            found.append(f"{node.lineno}: {name} (use yaml.safe_load)")
        elif tail == "load" and head.split(".")[-1] in _SB3:
            found.append(f"{node.lineno}: {name} unpickles parts of the saved agent")
        elif name in {"eval", "exec"}:
            scope = node.args[1] if len(node.args) > 1 else _keyword(node, "globals")
            if not _no_builtins(scope):
                found.append(f"{node.lineno}: {name} with builtins")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.load(open('x', 'rb'))",
        "import pickle\npickle.loads(b'')",
        "from pickle import loads",
        "import cloudpickle\ncloudpickle.load(f)",
        "import torch\ntorch.load('x.pt')",
        "import torch\ntorch.load('x.pt', weights_only=False)",
        "import torch\ntorch.load('x.pt', map_location='cpu', weights_only=flag)",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "import yaml\nyaml.unsafe_load(text)",
        "from stable_baselines3 import PPO\nPPO.load('agent.zip')",
        "eval(text)",
        "eval(text, {'dict': dict})",
        "exec(code, {})",
    ],
)
def test_the_scanner_finds_unsafe_loads(snippet: str):
    assert len(unsafe_loads(snippet)) == 1, snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('x.pt', weights_only=True)",
        "import torch\ntorch.load(path, map_location='cpu', weights_only=True)",
        "import numpy as np\nnp.load('x.npy')",
        "import yaml\nyaml.safe_load(text)",
        "import json\njson.load(f)",
        "eval(text, {'__builtins__': {}, 'dict': dict})",
        "model.load_state_dict(state)",
    ],
)
def test_the_scanner_passes_safe_loads(snippet: str):
    assert unsafe_loads(snippet) == [], snippet


def test_no_unsafe_load_in_the_source():
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20  # the scan really covers the packages
    problems = [
        f"{p.relative_to(ROOT)}:{hit}" for p in files for hit in unsafe_loads(p.read_text())
    ]
    assert problems == []


class _Payload:
    """Unpickling this runs ``touch MARKER``: the proof that a load executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious(path: Path, marker: Path, record: dict) -> Path:
    torch.save({**record, "payload": _Payload(marker)}, path)
    return path


def test_a_malicious_export_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    task = load_task("digits")
    path = _malicious(tmp_path / "model.pt", marker, {"format": "jpq-compressed-v1"})
    with pytest.raises(
        ValueError, match=r"holds Python objects .* unpickle \(\w+\.system\), which could run code"
    ):
        load_compressed(path, task.model, task.example_input)
    assert not marker.exists()
    # The payload is real: an unrestricted load runs it (the control for the assertion above).
    torch.load(path, weights_only=False)  # the control, on our own file
    assert marker.exists()


def test_a_malicious_digits_checkpoint_runs_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setattr(digits, "WEIGHTS_DIR", tmp_path)
    _malicious(tmp_path / digits.CNN_CHECKPOINT, marker, {})
    with pytest.raises(Exception, match="Weights only load failed"):
        digits.digits_task()
    assert not marker.exists()
