"""The layers: ``jpq_env.core`` imports nothing from the layers above it (data flows one way)."""


def test_the_core_imports_nothing_from_the_layers_above_it():
    """jpq_env.core (policy, costs, graph) is the bottom layer: data flows one way, up from it."""
    import ast
    from pathlib import Path

    import jpq_env.core

    above = ("jpq_env.proxy", "jpq_env.export", "jpq_env.envs", "jpq_env.tasks", "jpq_agents")
    above += ("gymnasium",)
    found = []
    for path in sorted(Path(jpq_env.core.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports too
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [
                f"{path.name}: {name}"
                for name in names
                if any(name == top or name.startswith(f"{top}.") for top in above)
            ]
    assert not found
