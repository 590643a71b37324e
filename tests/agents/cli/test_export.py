"""``jpq export``: the bit-packed file scores what ``jpq evaluate`` reports."""

import json
from pathlib import Path

import torch

from jpq_agents.cli import main
from jpq_env import LocalEvaluator, Policy, load_task
from jpq_env.export.packed import load_compressed
from jpq_env.export.packing import read_container
from jpq_env.proxy.data import iter_batches


def test_evaluate_and_export_agree(search_run: Path, capsys, tmp_path):
    policy_file = search_run / "policy.json"
    assert main(["evaluate", str(policy_file)]) == 0
    out = capsys.readouterr().out
    policy = Policy.from_json(json.loads(policy_file.read_text()))
    task = load_task("digits")
    expected = LocalEvaluator(task).test_accuracy(policy)
    assert f"test accuracy {expected:.2%}" in out
    for name in ("conv1", "conv4", "fc2"):
        assert name in out
    ckpt = tmp_path / "model.pt"
    assert main(["export", str(policy_file), "--out", str(ckpt)]) == 0
    header, tensors = read_container(ckpt)  # bit-packed levels (format v2)
    assert header["format"] == "jpq-compressed-v2" and tensors["payload"].dtype == torch.uint8
    model = load_compressed(ckpt, task.model, task.example_input)
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in iter_batches(task.test, 512))
    assert correct / len(task.test) == expected
