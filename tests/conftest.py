"""Test-wide set-up: how xdist spreads the suite, private caches, the session's local Ray.

``make test`` runs the suite on up to two xdist workers (setup.cfg's ``addopts``; ``-n 0`` runs it
in one process):

- each worker, and every process it starts, runs torch on one thread (``JPQ_THREADS=1``, read by
  ``jpq_env.threads``, and ``OMP_NUM_THREADS=1``, unless they are set already): two workers with a
  thread per core each would oversubscribe the cores (a benchmark's quick mode was measured 5x
  slower, spinning OpenMP threads included);
- tests are handed out one at a time, except those in ``SAME_WORKER``: the tests that use the
  local Ray (one per worker; two would compete for the cores and the actors' start-up) and the
  files whose tests share an expensive fixture, each kept on one worker so that it is made once.
  (xdist's own ``--dist loadgroup`` cannot do it here: with pytest 9 the group it appends to a
  test's id is lost, so every test is its own group.)
"""

import os
import tempfile

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # set by xdist before it imports this file
    # OMP_NUM_THREADS too: the subprocesses the tests start (benchmarks, RL Zoo, vector envs)
    # do not all read JPQ_THREADS, and torch's OpenMP threads spin on a busy core.
    os.environ.setdefault("JPQ_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from jpq_env.threads import configure_threads

    configure_threads()

MAX_WORKERS = 2  # the suite's expensive fixtures are shared per worker; more rarely pays

# Tests that run on one worker, by group: node ids starting with any of the prefixes.
SAME_WORKER = {
    "ray": (
        "tests/proxy/test_ray.py::",
        "tests/agents/test_ray_vec_env.py::",
        "tests/agents/test_scale_out.py::",
        "tests/benchmarks/test_quick_modes.py::test_ray_scaling",
    ),
    # tests/agents/cli/conftest.py's session-scoped search_run
    "search_run": (
        "tests/agents/cli/test_search.py::",
        "tests/agents/cli/test_evaluate.py::",
        "tests/agents/cli/test_export.py::",
        "tests/agents/cli/test_finetune.py::",
    ),
    # module-scoped runs and logs that several tests of the file read
    "batch": ("tests/agents/test_batch.py::",),
    "finished_run": ("tests/agents/cli/test_bad_inputs.py::",),
    "ppo_run": ("tests/agents/test_sb3.py::",),
    "validate": ("tests/agents/cli/test_validate.py::",),
    "two_stage_optuna": ("tests/agents/test_optuna_search.py::",),
    "two_stage_learner": ("tests/agents/two_level/test_learner.py::",),
}


@pytest.hookimpl(optionalhook=True)  # xdist's hook: unknown under -p no:xdist
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per usable core, at most ``MAX_WORKERS`` (0: no workers)."""
    from jpq_env.threads import usable_cores

    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):  # xdist's own variable decides
        return None
    workers = min(MAX_WORKERS, usable_cores())
    return workers if workers > 1 else 0


@pytest.hookimpl(optionalhook=True)  # xdist's hook: unknown under -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Per-test scheduling (xdist's default ``--dist load``), ``SAME_WORKER`` kept together.

    Another ``--dist`` mode given on the command line is left to xdist.
    """
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SameWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            group = next((g for g, ids in SAME_WORKER.items() if nodeid.startswith(ids)), None)
            return group or nodeid

    return SameWorker(config, log)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir():
    """``JPQ_CACHE_DIR`` (the sensitivity tables' disk cache) in a folder removed afterwards.

    ``SB3_LOGDIR`` too: SB3 makes a ``SB3-<time>`` folder in the system's temporary folder for
    every model that learns without a logger set (tests that call ``.learn`` directly), and
    leaves it there.
    """
    with tempfile.TemporaryDirectory(prefix="jpq-cache-") as folder:
        old = {k: os.environ.get(k) for k in ("JPQ_CACHE_DIR", "SB3_LOGDIR")}
        os.environ["JPQ_CACHE_DIR"] = folder
        os.environ["SB3_LOGDIR"] = os.path.join(folder, "sb3")
        yield folder
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---- Ray ----------------------------------------------------------------------------------------
# One local Ray per session (2 logical CPUs, 2 logical GPUs, loopback only, no dashboard, no usage
# stats), shut down at the end. The tests that use it are in SAME_WORKER["ray"], so that they run
# on one worker and never start a second Ray. Skipped when the ``ray`` extra is missing.

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


@pytest.fixture(scope="session")
def ray_module():
    """The ``ray`` module, with Ray's usage stats, auth and dashboard off (skips without Ray)."""
    ray = pytest.importorskip(
        "ray", reason="Ray is not installed: pip install 'jpq-env[ray]' to run the Ray tests"
    )
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    yield ray
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def local_ray(ray_module):
    """The session's local Ray (started again if a test replaced it by a cluster)."""
    if not ray_module.is_initialized():
        ray_module.init(
            address="local",  # a new instance, never another process's local Ray
            num_cpus=2,
            num_gpus=2,
            include_dashboard=False,
            object_store_memory=100 * 1024**2,
        )
    return ray_module
