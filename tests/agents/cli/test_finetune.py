"""``jpq finetune``: before and after, with the pruning masks kept."""

import json
from pathlib import Path

import torch

from jpq_agents.cli import main
from jpq_env import Policy


def test_finetune_reports_before_and_after(search_run: Path, capsys, tmp_path):
    out = tmp_path / "tuned.pt"
    assert (
        main(["finetune", str(search_run / "policy.json"), "--epochs", "1", "--out", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "before fine-tuning" in text and out.exists()
    state = torch.load(out, weights_only=True)
    policy = Policy.from_json(json.loads((search_run / "policy.json").read_text()))
    pruned = policy.layers[1].bits == 0
    if pruned.any():  # masks stay fixed: pruned kernels are still zero after training
        assert state["conv2.weight"][torch.from_numpy(pruned)].abs().max() == 0
