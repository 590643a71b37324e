"""What the ``jpq`` command offers, by name, without importing torch (``jpq --help``, ``jpq list``).

``AGENT_NAMES`` is the static list of ``jpq_agents.run.AGENTS`` (a test keeps them equal), so the
command line can offer the choices before any heavy module loads; ``listing()`` imports the
registries themselves to print tasks, agents, reward designs and environment ids.
"""

from __future__ import annotations

__all__ = ["AGENT_NAMES", "listing", "version"]

AGENT_NAMES: tuple[str, ...] = (
    "two-level",
    "ddpg",
    "ppo",
    "maskable-ppo",
    "random",
    "uniform",
    "two-stage",
    "greedy",
    "tpe",
    "tpe-warm",
    "cmaes",
    "cmaes-warm",
)
"""Every agent ``jpq search --agent`` accepts (the keys of ``jpq_agents.run.AGENTS``)."""


def version() -> str:
    """The installed distribution's version (the source's when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("jpq-env")
    except metadata.PackageNotFoundError:  # pragma: no cover - a bare checkout on sys.path
        import re
        from pathlib import Path

        cfg = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text()
        found = re.search(r"^version\s*=\s*(\S+)", cfg, re.MULTILINE)
        return found.group(1) if found else "unknown"


def listing() -> str:
    """Tasks, agents, reward designs and environment ids, one section each."""
    import gymnasium as gym

    import jpq_env  # noqa: F401 - registers the ids (the benches whose file ships)
    from jpq_env.envs.registration import BENCHES, PRESETS
    from jpq_env.envs.rewards import REWARDS
    from jpq_env.tasks.registry import BUILTIN_TASKS

    # The renamed ids still work (with a warning) but are not offered.
    ids = [f"{env_id}  {kwargs or '(defaults)'}" for env_id, kwargs in PRESETS.items()]
    # JPQ-Bench: the real problem scored by a surrogate (registered where the bench file ships).
    ids += [
        f"{env_id}  {kwargs} (JPQ-Bench: scores predicted by a surrogate)"
        for env_id, kwargs in BENCHES.items()
        if env_id in gym.registry
    ]
    sections = {
        "tasks (--task; or package.module:factory)": sorted(BUILTIN_TASKS),
        "agents (jpq search --agent)": list(AGENT_NAMES),
        "reward designs (--reward)": sorted(REWARDS),
        "environment ids (--env)": ids,
    }
    return "\n\n".join(
        "\n".join([title, *(f"  {line}" for line in lines)]) for title, lines in sections.items()
    )
