"""The leaderboard (``benchmarks/leaderboard``): every digits entry replays exactly with ``jpq
validate`` (today's code reproduces its held-out accuracy, BOPs and size), and the table is the
one the entries give.
"""

import pytest

from benchmarks.common import load_rows
from benchmarks.leaderboard import ENTRIES, ROOT, table

ROWS = load_rows(ENTRIES)
DIGITS = [r for r in ROWS if r["task"] in ("digits", "digits-deep")]


def test_the_table_is_the_entries():
    assert ROWS and (ROOT / "README.md").read_text() == table(ROWS)
    for row in ROWS:
        assert (ROOT / row["file"]).is_file()


@pytest.mark.parametrize("row", DIGITS, ids=[r["file"] for r in DIGITS])
def test_a_digits_entry_replays_exactly(row, capsys):
    from jpq_agents.cli import main

    assert main(["validate", str(ROOT / row["file"]), "--quiet"]) == 0
    assert (
        "1 evaluations replayed: accuracy, BOPs and size match the log" in capsys.readouterr().out
    )
