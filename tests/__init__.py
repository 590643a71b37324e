"""The test suite. Its tree mirrors the packages: the tests of ``jpq_env/envs/decisions.py`` are in
``tests/envs/test_decisions.py``, those of ``agents/jpq_agents/cli/search.py`` in
``tests/agents/cli/test_search.py``; ``tests/repo`` checks the repository as a whole (the README's
examples, scans of the source, the wheel) and ``tests/benchmarks`` the benchmark scripts.

The catalogue of bad inputs, each refused with an error of a known type naming the problem, is
split by where a user meets them: a ``test_bad_inputs.py`` in the folder of the package that
refuses them (``pytest tests -k bad_inputs --collect-only -q`` lists the whole catalogue).

Shared helpers, beside the tests: ``tests.nets`` (small networks), ``tests.bad_tasks`` (task
factories with one thing wrong each), ``tests.generated_nets`` (random networks for the
property-based tests), ``tests.episodes`` (playing episodes, reading a search's log),
``tests.policy_edits`` (hand edits of a policy file), ``tests.proxy.toys`` (toy tasks for the
proxy). ``tests/conftest.py`` says how the suite is spread over xdist workers.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The checkout's root folder."""
