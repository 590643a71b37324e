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


def test_finetune_shows_its_progress(capsys):
    from jpq_env import Policy
    from jpq_env.envs import JPQEnv
    from jpq_env.proxy.finetune import finetune

    env = JPQEnv(val_images=32)
    policy = Policy.uniform(env.graph, 4, 8, env.conventions)
    finetune(env.evaluator, policy, epochs=1, batch_size=256, progress=True)
    err = capsys.readouterr().err
    assert "fine-tuning" in err and "loss=" in err
    finetune(env.evaluator, policy, epochs=1, batch_size=256)
    assert "fine-tuning" not in capsys.readouterr().err  # quiet unless asked
