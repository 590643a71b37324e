"""``jpq evaluate``: bad policy files named."""

import json

from jpq_agents.cli import main


def test_bad_policy_files_are_named(tmp_path, search_run, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["evaluate", str(bad)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    bad.write_text(json.dumps({"schema": 1, "layers": "x"}))
    assert main(["evaluate", str(bad)]) == 2
    assert "fingerprint" in capsys.readouterr().err
    assert main(["evaluate", str(search_run / "policy.json"), "--task", "digits-deep"]) == 2
    assert "made for another model" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.json")]) == 2
    assert "cannot read policy file" in capsys.readouterr().err
