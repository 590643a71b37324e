"""The fine-tune benchmark's Kendall tau: does the proxy's ranking survive the fine-tune?"""

import pytest

from benchmarks.resnet20_finetune import preference


def _row(val, before, after, epochs=1, budget=1 / 64, source="frontier:x"):
    return {
        "source": source,
        "budget": budget,
        "epochs": epochs,
        "val_before": val,
        "test_before": before,
        "test_after": after,
    }


def test_tau_counts_each_policy_once_and_compares_before_and_after():
    rows = [
        _row(0.90, 0.84, 0.86),
        _row(0.90, 0.84, 0.86, source="two-stage"),  # the same policy found twice: counted once
        _row(0.88, 0.83, 0.87),
        _row(0.85, 0.80, 0.85),
        _row(0.80, 0.79, 0.84),
        _row(0.70, 0.60, 0.80, epochs=3),  # another recipe length: its own line
        _row(0.95, 0.90, 0.91, budget=1 / 128),  # another budget: left out
    ]
    tau = preference(rows)
    assert set(tau) == {1}
    n, before, after = tau[1]
    assert n == 4
    assert before == pytest.approx(1.0)  # the proxy orders the test accuracies before exactly
    # After: pairs (0.90,0.86) (0.88,0.87) (0.85,0.85) (0.80,0.84): 5 concordant, 1 discordant.
    assert after == pytest.approx((5 - 1) / 6)


def test_sources_take_each_agents_best_entry_by_the_held_out_score(tmp_path, monkeypatch):
    """The policy fine-tuned per agent is its best by held-out score (never by test), the lowest
    seed among equals; other tasks and budgets and agents without an entry are left out."""
    import json

    import benchmarks.resnet20_finetune as ft

    def entry(agent, seed, val, test, budget=1 / 128, task="resnet20-cifar"):
        return {"task": task, "budget": budget, "agent": agent, "seed": seed, "val": val,
                "test": test}  # fmt: skip

    rows = [
        entry("two-level", 0, 0.68, 0.66),
        entry("two-level", 2, 0.70, 0.65),  # best held-out, not best test
        entry("two-level", 1, 0.67, 0.69),
        entry("greedy", 1, 0.69, 0.65),
        entry("greedy", 0, 0.69, 0.65),  # a tie: the lowest seed
        entry("uniform", 0, 0.99, 0.99, budget=1 / 64),  # another budget
        entry("cmaes-warm", 0, 0.99, 0.99, task="digits"),  # another task
    ]
    (tmp_path / "entries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(ft, "LEADERBOARD", tmp_path / "resnet20-cifar")
    assert ft.sources(1 / 128) == [
        ("two-level", "1_128/two-level-seed2.policy.json"),
        ("greedy", "1_128/greedy-seed0.policy.json"),
    ]
    assert ft.sources(1 / 64) == [("uniform", "1_64/uniform-seed0.policy.json")]


def test_a_policy_fine_tuned_before_with_the_same_recipe_is_not_run_again(tmp_path, monkeypatch):
    """Two agents that found the same policy share one fine-tune: the second row copies the
    first's numbers (and says so); another recipe, or another policy, would run (not reached)."""
    import json

    import benchmarks.resnet20_finetune as ft
    from jpq_env import Policy, load_task
    from jpq_env.core.graph import LayerGraph

    task = load_task("digits")
    graph = LayerGraph.from_module(task.model, task.example_input)
    policy = Policy.uniform(graph, 4, 4)
    (tmp_path / "lb" / "1_64").mkdir(parents=True)
    policy.save(tmp_path / "lb" / "1_64" / "b.policy.json")
    monkeypatch.setattr(ft, "LEADERBOARD", tmp_path / "lb")
    recipe = {"budget": 1 / 64, "epochs": 1, "seed": 0, "lr": 0.01, "distill": 0.5}
    first = {**recipe, "source": "a", "test_after": 0.9, "policy_digest": ft._digest(policy),
             "command": "old"}  # fmt: skip
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(first) + "\n")

    def no_finetune(run):
        raise AssertionError("the shared policy was fine-tuned again")

    monkeypatch.setattr(ft, "_evaluator", no_finetune)
    run = {**recipe, "source": "b", "policy": "1_64/b.policy.json", "log": str(log), "commit": "c"}
    row = ft.one(run)
    assert row["source"] == "b" and row["same_as"] == "a" and row["test_after"] == 0.9
    assert "command" not in row and row["commit"] == "c"
    with pytest.raises(AssertionError, match="fine-tuned again"):
        ft.one({**run, "lr": 0.003})  # another recipe: a fine-tune of its own
