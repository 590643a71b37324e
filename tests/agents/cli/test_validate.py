"""``jpq validate``: a run and its policy file replayed, the first mismatching episode named; the
summary's provenance (versions, date, speed, the defaulted budget).
"""

import json
from pathlib import Path

import pytest

from jpq_agents.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("validate") / "run"
    argv = ["search", "--agent", "random", "--episodes", "5", "--out", str(out), "--quiet"]
    assert main([*argv, "--env", "jpq_env/JPQWeights-v0"]) == 0  # the default budget, 1/64
    return out


def test_validate_replays_a_run_and_its_policy_file(run_dir, capsys):
    assert main(["validate", str(run_dir)]) == 0
    assert (
        "5 evaluations replayed: accuracy, BOPs and size match the log" in capsys.readouterr().out
    )
    assert main(["validate", str(run_dir / "policy.json")]) == 0
    assert "1 evaluations replayed" in capsys.readouterr().out


def test_validate_names_the_first_mismatching_episode(run_dir, tmp_path, capsys):
    import shutil

    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    log = copy / "evaluations.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    records[2]["accuracy"] += 1e-9  # one logged score off by a hair
    records[3]["size_ratio"] *= 2
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["validate", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "mismatch at episode 2: accuracy logged" in err
    policy = json.loads((copy / "policy.json").read_text())
    policy["bops_ratio"] /= 2
    (copy / "policy.json").write_text(json.dumps(policy))
    assert main(["validate", str(copy / "policy.json")]) == 1
    assert f"episode {policy['episode']}: bops_ratio logged" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "missing")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_the_summary_says_versions_date_speed_and_the_defaulted_budget(run_dir):
    from importlib import metadata

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["budget"] == {"bops": 1 / 64}
    assert summary["versions"]["torch"] == metadata.version("torch")
    assert summary["versions"]["jpq-env"] == metadata.version("jpq-env")
    assert summary["date"].endswith("+00:00") and summary["date"][:2] == "20"
    assert summary["seconds_per_evaluation"] == pytest.approx(summary["seconds"] / 5, abs=0.01)


def _duplicate(records):
    return [*records[:3], records[2], *records[3:]]


def _field(index, key, value):
    def edit(records):
        records[index][key] = value
        return records

    return edit


def _layer_bits(index, bits):
    def edit(records):
        records[index]["policy"][0]["bits"] = bits
        return records

    return edit


LOG_EDITS = {  # each: the edit, the line it breaks, and what the message says
    "a duplicated episode": (_duplicate, 4, "expected the record of episode 3, got 2"),
    "an accuracy out of range": (_field(1, "accuracy", 1.5), 2, "'accuracy' must be"),
    "a width that is a string": (_layer_bits(2, ["8"]), 3, "'policy' must be"),
    "an edited complete last line": (_field(4, "reward", "high"), 5, "'reward' must be"),
    "a missing episode": (lambda r: [*r[:1], *r[2:]], 2, "expected the record of episode 1"),
    "an episode written as true": (_field(1, "episode", True), 2, "episode 1, got True"),
}


@pytest.mark.parametrize("case", list(LOG_EDITS))
def test_bad_inputs_validate_and_resume_refuse_the_same_edited_logs(
    case, run_dir, tmp_path, capsys
):
    """One reader of logs (``jpq_agents.search.read_log``): what resume refuses, validate refuses,
    naming ``file:line`` and what is wrong."""
    import shutil

    edit, line, message = LOG_EDITS[case]
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    log = copy / "evaluations.jsonl"
    records = edit([json.loads(x) for x in log.read_text().splitlines()])
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    edited = log.read_bytes()
    assert main(["validate", str(copy), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{log}:{line}" in err and message in err
    argv = ["search", "--agent", "random", "--episodes", "5", "--out", str(copy), "--quiet"]
    assert main([*argv, "--env", "jpq_env/JPQWeights-v0", "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume: {log}:{line}" in err and message in err
    assert log.read_bytes() == edited  # nothing rewritten


def test_bad_inputs_validate_names_where_a_malformed_policy_is(run_dir, tmp_path, capsys):
    import shutil

    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    log = copy / "evaluations.jsonl"
    records = [json.loads(x) for x in log.read_text().splitlines()]
    records[1]["policy"][0]["bits"] = records[1]["policy"][0]["bits"][:-1]  # a kernel short
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["validate", str(copy), "--quiet"]) == 2
    assert f"{log}:2: layer" in capsys.readouterr().err
    policy_file = copy / "policy.json"
    policy = json.loads(policy_file.read_text())
    policy["layers"][0]["act_bits"] = 99
    policy_file.write_text(json.dumps(policy))
    assert main(["validate", str(policy_file)]) == 2
    assert f"{policy_file}: layer" in capsys.readouterr().err
