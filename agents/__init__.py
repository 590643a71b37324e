"""The repository folder that holds the agents' package; it is not a package to import.

The agents install as ``jpq_agents`` (``agents/jpq_agents``), the one import path from anywhere:
importing ``agents`` from the repository root would load a second copy of every module (two
``SearchError`` classes, two run-lock registries).
"""

raise ImportError(
    "the repository's agents/ folder holds the package jpq_agents: import jpq_agents "
    "(pip install -e . makes it importable), not agents"
)
