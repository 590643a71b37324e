"""Atomic files (``jpq_env.atomic``): a failed write keeps the old file and leaves no temporary."""

from __future__ import annotations

import pytest
import torch

from jpq_env.atomic import atomic_file, save_atomic, write_atomic


class _Unsaveable:
    def __reduce__(self):
        raise RuntimeError("this object cannot be saved")


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    write_atomic(target, '{"old": 1}')
    with pytest.raises(RuntimeError, match="crash mid-write"), atomic_file(target) as f:
        f.write('{"new": ')
        raise RuntimeError("crash mid-write")
    assert target.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    with pytest.raises(RuntimeError, match="cannot be saved"):  # torch.save fails midway
        save_atomic({"w": torch.zeros(3), "bad": _Unsaveable()}, tmp_path / "result.json")
    assert target.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
