"""The soak benchmark's verdicts (``benchmarks/soak.py``) on synthetic measurements: the targets
(model unchanged, RSS growth, CPU slowdown) and the report row that states them."""

import pytest

from benchmarks.soak import RSS_TOLERANCE, SLOWDOWN_TOLERANCE, Soak, row


def _soak(rss: list[float], cpu: list[float], hash_after: str = "h") -> Soak:
    """Ten windows of 10 episodes, a warm-up of 20, first and last 30 episodes compared."""
    return Soak(
        "jpq_env/JPQWeights-v0",
        episodes=100,
        window=10,
        warmup=20,
        span=30,
        hash_before="h",
        hash_after=hash_after,
        done=list(range(10, 101, 10)),
        rss=rss,
        wall=[0.5] * 10,
        cpu=cpu,
    )


FLAT_RSS = [100.0, 110.0, 120.0, 121.0, 121.0, 122.0, 121.0, 122.0, 123.0, 122.0]


def test_a_steady_soak_meets_its_targets_and_its_row_says_so():
    s = _soak(FLAT_RSS, [1.0] * 10)
    # RSS at the end of the warm-up is the 2nd window's (20 episodes), 110 MiB; the largest after
    # it 123 MiB: +11.8%, over the 5% tolerance. Without that growth the targets are met.
    assert s.rss_warm == 110.0 and s.rss_growth == pytest.approx(123 / 110 - 1)
    assert not s.ok
    s = _soak([100.0, 120.0, *[121.0] * 8], [1.0] * 10)
    assert s.rss_growth == pytest.approx(121 / 120 - 1) and s.rss_growth < RSS_TOLERANCE
    assert s.slowdown == pytest.approx(1.0) and s.unchanged and s.ok
    # 3 windows of 10 episodes at 1 CPU second each: 100 ms per episode, 20 episodes per second.
    assert s.rate(True, 30) == pytest.approx((20.0, 100.0))
    cells = [c.strip() for c in row(s).split("|")[1:-1]]
    assert cells[0] == "jpq_env/JPQWeights-v0" and cells[1] == "100" and cells[2] == "yes"
    assert cells[5] == "+0.83%" and cells[8] == "1.00x" and cells[-1] == "yes"


def test_a_slowdown_or_a_changed_model_fails_the_targets_and_the_row_says_no():
    # CPU per episode doubles over the last 30 episodes after the warm-up: a 2x slowdown.
    slow = _soak([100.0, 120.0, *[121.0] * 8], [1.0] * 7 + [2.0] * 3)
    assert slow.slowdown == pytest.approx(2.0) and slow.slowdown > SLOWDOWN_TOLERANCE
    assert not slow.ok
    assert row(slow).rstrip().endswith("| 2.00x | no |")
    changed = _soak([100.0, 120.0, *[121.0] * 8], [1.0] * 10, hash_after="other")
    assert not changed.unchanged and not changed.ok
    cells = [c.strip() for c in row(changed).split("|")[1:-1]]
    assert cells[2] == "NO" and cells[-1] == "no"
