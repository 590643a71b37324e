"""Every writer in the source writes atomically: an AST scan for direct writes, itself tested."""

from __future__ import annotations

import ast

from tests import ROOT


def _direct_writes(source: str) -> list[str]:
    """Calls of torch.save, json.dump, Path.write_text and Path.write_bytes in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else ""
            attr = node.func.attr
            if attr in {"write_text", "write_bytes"} or (name, attr) in {
                ("torch", "save"),
                ("json", "dump"),
            }:
                found.append(f"{name or '...'}.{attr} line {node.lineno}")
    return found


def test_the_direct_write_scan_finds_calls_not_strings():
    code = 'torch.save(x, p)\njson.dump(d, f)\nPath(p).write_text("t")\nmsg = "torch.save(m, p)"\n'
    assert [w.split(" line")[0] for w in _direct_writes(code)] == [
        "torch.save",
        "json.dump",
        "....write_text",
    ]


def test_writers_in_the_source_are_atomic():
    """Result, log and checkpoint writers go through jpq_env.atomic (or the fsynced log append)."""
    direct = []
    for p in sorted([*(ROOT / "jpq_env").rglob("*.py"), *(ROOT / "agents").rglob("*.py")]):
        if p.name not in {"atomic.py", "train_digits.py"}:
            direct += [f"{p.relative_to(ROOT)}: {w}" for w in _direct_writes(p.read_text())]
    assert direct == []
