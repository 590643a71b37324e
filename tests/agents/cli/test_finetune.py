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


def test_finetune_prints_each_epoch_and_resumes_from_its_checkpoints(search_run, capsys, tmp_path):
    from jpq_agents.cli.finetune import RECIPES as CLI_RECIPES
    from jpq_env.proxy.finetune import RECIPES

    assert CLI_RECIPES == RECIPES  # the CLI's copy (it imports no torch for --help)
    args = ["finetune", str(search_run / "policy.json"), "--epochs", "2"]
    args += ["--checkpoints", str(tmp_path / "ckpt"), "--out", str(tmp_path / "a.pt")]
    assert main(args) == 0
    first = capsys.readouterr().out
    lines = [line for line in first.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch-001.pt", "epoch-002.pt"]
    # started again: nothing left to train, the same history from the checkpoints
    assert main([*args[:-1], str(tmp_path / "b.pt")]) == 0
    again = capsys.readouterr().out
    assert [x for x in again.splitlines() if x.startswith("epoch ")] == lines
    assert f"continued from the checkpoint of epoch 2 in {tmp_path / 'ckpt'}" in again
    # more epochs are another fine-tune (the schedule spans them all): refused, saying why
    assert main([*args[:3], "3", *args[4:-1], str(tmp_path / "c.pt")]) == 2
    err = capsys.readouterr().err
    assert "another fine-tune (epochs 2 there, 3 here)" in err and "cosine schedule" in err
    # distillation options belong to the lsq recipe
    assert main([*args[:-1], str(tmp_path / "d.pt"), "--recipe", "ste", "--distill", "0.9"]) == 2
    assert "--distill apply to --recipe lsq only" in capsys.readouterr().err
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
