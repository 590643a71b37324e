"""Thread counts (``jpq_env.threads``): the variable that decides, its parsing, the affinity mask
capped by a cgroup quota (v2 and v1 files written here), and torch's setting."""

import os

import pytest
import torch

from jpq_env import threads


@pytest.fixture
def no_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Neither ``JPQ_THREADS`` nor ``OMP_NUM_THREADS`` set (the test suite's workers set one)."""
    monkeypatch.delenv("JPQ_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return monkeypatch


def test_jpq_threads_decides_before_omp_num_threads(no_variables):
    assert threads.thread_variable() is None
    no_variables.setenv("OMP_NUM_THREADS", "3")
    assert threads.thread_variable() == "OMP_NUM_THREADS" and threads.threads_wanted() == 3
    no_variables.setenv("JPQ_THREADS", " 2 ")
    assert threads.thread_variable() == "JPQ_THREADS" and threads.threads_wanted() == 2
    no_variables.setenv("JPQ_THREADS", "  ")  # set but blank: as if unset
    assert threads.thread_variable() == "OMP_NUM_THREADS" and threads.threads_wanted() == 3


def test_without_a_variable_the_usable_cores_decide(no_variables):
    no_variables.setattr(threads, "usable_cores", lambda: 5)
    assert threads.threads_wanted() == 5


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5", "1e3"])
@pytest.mark.parametrize("name", ["JPQ_THREADS", "OMP_NUM_THREADS"])
def test_a_value_that_is_not_a_positive_integer_is_named(no_variables, name, text):
    no_variables.setenv(name, text)
    message = f"{name} must be a positive integer \\(threads\\), got '{text}'"
    with pytest.raises(ValueError, match=message):
        threads.threads_wanted()


def _cgroup(tmp_path, **files: str):
    """A cgroup folder holding ``files`` (``cpu_max`` -> ``cpu.max``, v1 files under ``cpu/``)."""
    names = {
        "cpu_max": "cpu.max",
        "quota_us": "cpu/cpu.cfs_quota_us",
        "period_us": "cpu/cpu.cfs_period_us",
    }
    for key, text in files.items():
        path = tmp_path / names[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        pytest.param({"cpu_max": "150000 100000\n"}, 1.5, id="v2-one-and-a-half"),
        pytest.param({"cpu_max": "max 100000\n"}, None, id="v2-unlimited"),
        pytest.param({"quota_us": "200000\n", "period_us": "100000\n"}, 2.0, id="v1-two"),
        pytest.param({"quota_us": "-1\n", "period_us": "100000\n"}, None, id="v1-unlimited"),
        pytest.param({"cpu_max": "garbage"}, None, id="v2-unreadable"),
        pytest.param({"quota_us": "50000", "period_us": "0"}, None, id="v1-zero-period"),
        pytest.param({}, None, id="no-files"),
    ],
)
def test_cgroup_quota_is_read_from_v2_then_v1_files(tmp_path, files, quota):
    assert threads._cgroup_quota(_cgroup(tmp_path, **files)) == quota


@pytest.mark.parametrize(
    ("mask", "files", "cores"),
    [
        pytest.param(4, {}, 4, id="affinity-only"),
        pytest.param(4, {"cpu_max": "150000 100000"}, 1, id="quota-floors-to-one"),
        pytest.param(4, {"cpu_max": "250000 100000"}, 2, id="quota-below-the-mask"),
        pytest.param(4, {"cpu_max": "800000 100000"}, 4, id="mask-below-the-quota"),
        pytest.param(4, {"cpu_max": "50000 100000"}, 1, id="half-a-core-is-one"),
        pytest.param(2, {"quota_us": "300000", "period_us": "100000"}, 2, id="v1-quota"),
    ],
)
def test_usable_cores_are_the_affinity_mask_capped_by_the_quota(
    tmp_path, monkeypatch, mask, files, cores
):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(mask)))
    assert threads.usable_cores(_cgroup(tmp_path, **files)) == cores


def test_without_an_affinity_call_the_cpu_count_is_used(tmp_path, monkeypatch):
    monkeypatch.delattr(threads.os, "sched_getaffinity")
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 6)
    assert threads.usable_cores(_cgroup(tmp_path)) == 6
    monkeypatch.setattr(threads.os, "cpu_count", lambda: None)  # unknown: one core
    assert threads.usable_cores(_cgroup(tmp_path)) == 1


def test_configure_threads_sets_torch_only_when_it_differs(no_variables):
    calls: list[int] = []
    current = {"n": 4}

    def set_threads(n: int) -> None:
        calls.append(n)
        current["n"] = n

    no_variables.setattr(torch, "get_num_threads", lambda: current["n"])
    no_variables.setattr(torch, "set_num_threads", set_threads)
    pools: list[int] = []
    no_variables.setattr(threads, "_limit_native_pools", pools.append)
    assert threads.configure_threads(2) == 2 and calls == [2]
    assert threads.configure_threads(2) == 2 and calls == [2]  # already 2: left alone
    no_variables.setenv("JPQ_THREADS", "3")
    assert threads.configure_threads() == 3 and calls == [2, 3]
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        threads.configure_threads(0)
    assert calls == [2, 3]
    assert pools == [2, 2, 3]  # the other pools are capped every time (cheap, idempotent)


def test_the_blas_pools_outside_torch_get_the_same_cap(monkeypatch):
    import numpy  # noqa: F401  (loads numpy's OpenBLAS)
    import threadpoolctl

    for name in threads._POOL_VARS:
        monkeypatch.setenv(name, "7")  # restored after the test, like the pools below
    keeper = threadpoolctl.threadpool_limits(limits=None)  # remembers every pool's size
    try:
        threadpoolctl.threadpool_limits(limits=2, user_api="blas")
        blas = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 2 for p in blas)  # numpy's OpenBLAS at least
        threads._limit_native_pools(1)
        blas = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        assert all(p["num_threads"] == 1 for p in blas)
        assert all(os.environ[name] == "1" for name in threads._POOL_VARS)  # later loads, children
    finally:
        keeper.restore_original_limits()
