"""The two-level ablation benchmark (``benchmarks/two_level_ablation.py``): its learners with and
without the learning signals, and the commands its report lists."""


def test_ablation_learners_run_with_and_without_the_learning_signals():
    from benchmarks import two_level_ablation as ablation
    from jpq_agents.run import LEARNER_ENV

    def kwargs(variant: str) -> dict:
        return ablation.env_kwargs({"case": "digits:v1:1/128", "variant": variant})

    assert kwargs("default") == {"task": "digits", "budget_bops": 1 / 128, "sensitivity": True}
    assert ablation._register("ppo-no-signals") == "ppo"
    # Without signals: every signal the learner gets by default is turned off.
    off = kwargs("ppo-no-signals")
    assert set(LEARNER_ENV["ppo"]) <= set(off)
    assert not any(off[k] for k in LEARNER_ENV["ppo"])
    assert "sensitivity" not in kwargs("ppo")  # run_search gives the defaults


def test_ablation_report_lists_the_commands_of_the_rows_that_record_them():
    from benchmarks import two_level_ablation as ablation

    rows = [{"command": "c1"}, {"command": "c1"}, {"command": "c2"}, {}]
    text = ablation._commands(rows)
    assert "`c1` (2 rows)" in text and "`c2` (1 row)" in text and "; 1 row predates" in text
    assert ablation._commands([{}]) == ""
