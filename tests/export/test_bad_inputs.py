"""Bad export paths, each refused with an error naming the problem.

Part of the catalogue of bad inputs (``pytest tests -k bad_inputs --collect-only -q`` lists it).
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from typing import Any

import pytest
import torch

from jpq_agents.cli import main
from jpq_env import Policy
from jpq_env.envs import JPQEnv
from jpq_env.export.packed import ExportFormatError, export_compressed, load_compressed
from jpq_env.export.packing import MAGIC, join_container, split_container


@pytest.fixture(scope="module")
def env() -> JPQEnv:
    return JPQEnv()


@pytest.fixture(scope="module")
def policy_json(env: JPQEnv) -> dict[str, Any]:
    return Policy.uniform(env.graph, 8, 8, env.conventions).to_json()


def test_missing_export_path_is_named(tmp_path, env: JPQEnv):
    task = env.task
    with pytest.raises(ValueError, match=r"no export at '.*missing.pt'"):
        load_compressed(tmp_path / "missing.pt", task.model, task.example_input)


def test_export_into_a_missing_directory_is_named(tmp_path, env: JPQEnv, policy_json, capsys):
    policy = Policy.from_json(policy_json)
    with pytest.raises(FileNotFoundError, match=r"directory '.*no_dir' does not exist"):
        export_compressed(env.evaluator, policy, tmp_path / "no_dir" / "model.pt")  # type: ignore[arg-type]
    (tmp_path / "policy.json").write_text(json.dumps(policy_json))
    target = tmp_path / "no_dir" / "model.pt"
    assert main(["export", str(tmp_path / "policy.json"), "--out", str(target)]) == 2
    assert f"directory '{target.parent}' does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "policy.json"]


# --- The export loader checks every field it decodes (one mechanism: packing.Fields) ---------


@pytest.fixture(scope="module")
def export_file(env: JPQEnv, policy_json, tmp_path_factory):
    """The bytes of a v2 export of a W8A8 policy."""
    path = tmp_path_factory.mktemp("export") / "model.jpq"
    export_compressed(env.evaluator, Policy.from_json(policy_json), path)
    return path.read_bytes()


def _edited(data: bytes, edit) -> bytes:
    """The export with its JSON header changed by ``edit(header)`` (a dict, or raw bytes)."""
    header, blob = split_container("export", data)
    new = edit(header)
    if isinstance(new, bytes):  # raw header bytes, stored uncompressed
        return MAGIC + struct.pack("<Q", len(new)) + new + blob
    return join_container(header, blob)


def _first_layer(header):
    return next(iter(header["layers"].values()))


def _set(where, key, value):
    def edit(header):
        where(header)[key] = value

    return edit


def _tensor(name, key, value):
    return _set(lambda h: h["tensors"][name], key, value)


HEADER_EDITS = {
    "act_bits far out of range": (_set(_first_layer, "act_bits", 1000), "act_bits must be"),
    "act_bits not an integer": (_set(_first_layer, "act_bits", 7.9), r"act_bits .*got 7\.9"),
    "act_bits zero": (_set(_first_layer, "act_bits", 0), "act_bits must be"),
    "act_bits between 16 and 32": (_set(_first_layer, "act_bits", 20), "1-16 or 32"),
    "act_bits a string": (_set(_first_layer, "act_bits", "8"), "act_bits must be"),
    "all_inputs not a flag": (_set(_first_layer, "all_inputs", "yes"), "all_inputs must be"),
    "binary kernel out of range": (
        _set(_first_layer, "binary_as_2_bits", [10**6]),
        "binary_as_2_bits entry",
    ),
    "payload beyond the blob": (_set(_first_layer, "payload_bytes", 10**12), "payload_bytes"),
    "negative payload": (_set(_first_layer, "payload_bytes", -1), "payload_bytes"),
    "offset of 1e999": (_tensor("payload", "offset", "1e999"), "offset must be"),
    "shape whose product overflows int64": (
        _tensor("payload", "shape", [2**32, 2**32, 16]),
        "dimension must be an integer in",
    ),
    "seventy dimensions": (_tensor("payload", "shape", [1] * 70), "has 70 dimensions"),
    "a dimension of 2**63 beside a zero": (
        _tensor("payload", "shape", [0, 2**63]),
        "dimension must be an integer in",
    ),
    "payload stored as int8": (_tensor("payload", "dtype", "int8"), "'payload' must be uint8"),
    "tensors overlapping (a copy per entry)": (
        lambda h: h["tensors"]["scales"].update(offset=h["tensors"]["payload"]["offset"]),
        "overlap in the file",
    ),
    "negative dimension": (_tensor("payload", "shape", [-4]), "dimension must be"),
    "unknown dtype": (_tensor("payload", "dtype", "complex128"), "which exports do not store"),
    "layers not a table": (_set(lambda h: h, "layers", [1, 2]), "'layers' must be a table"),
    "missing fingerprint": (_set(lambda h: h, "fingerprint", None), "'fingerprint' must be"),
    "reversed activation range": (
        _set(lambda h: h["act_ranges"], 0, [3.0, -3.0]),
        "ends reversed",
    ),
    "activation range too short": (
        _set(lambda h: h["act_ranges"], 1, [1.0]),
        "must hold 2 items",
    ),
    "state shape larger than its tensor": (
        _set(lambda h: h["state"][0], 2, [10**9]),
        "state '.*' shape",
    ),
    "deeply nested header": (
        lambda h: b'{"format": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "nested",
    ),
    "non-finite number in the header": (
        lambda h: json.dumps(h).replace('"act_ranges": [[', '"act_ranges": [[1e999, ').encode(),
        "not finite",
    ),
    "NaN in the header": (
        lambda h: json.dumps(h).replace('"act_ranges": [[', '"act_ranges": [[NaN, ').encode(),
        "NaN is not a number",
    ),
}


@pytest.mark.parametrize("case", list(HEADER_EDITS))
def test_bad_inputs_every_decoded_export_field_is_checked(case, env, export_file, tmp_path):
    edit, message = HEADER_EDITS[case]
    path = tmp_path / "edited.jpq"
    path.write_bytes(_edited(export_file, edit))
    with pytest.raises(ExportFormatError, match=rf"'{re.escape(str(path))}'.*{message}"):
        load_compressed(path, env.task.model, env.task.example_input)


def test_bad_inputs_non_finite_weights_in_an_export_are_refused(env, export_file, tmp_path):
    header, blob = split_container("export", export_file)
    data = bytearray(export_file)
    for name in ("scales", "state/float32"):
        at = len(export_file) - len(blob) + header["tensors"][name]["offset"]
        bad = data.copy()
        bad[at : at + 4] = struct.pack("<f", float("nan"))
        path = tmp_path / f"{name.replace('/', '_')}.jpq"
        path.write_bytes(bytes(bad))
        with pytest.raises(ExportFormatError, match=f"'{name}' holds non-finite values"):
            load_compressed(path, env.task.model, env.task.example_input)


def test_bad_inputs_an_old_format_file_cannot_make_the_loader_allocate(env, tmp_path):
    """A first-format (zip) file declaring a storage far larger than it holds is refused before
    ``torch.load`` allocates it."""
    small = tmp_path / "small.pt"
    torch.save({"format": "jpq-compressed-v1", "x": torch.zeros(10)}, small)
    with zipfile.ZipFile(small) as archive:
        entries = {i.filename: archive.read(i) for i in archive.infolist()}
    table = next(n for n in entries if n.endswith("data.pkl"))
    raw = entries[table]
    at = raw.index(b"K\nt")  # BININT1 10, TUPLE: the storage's element count
    entries[table] = raw[:at] + b"J" + struct.pack("<i", 2**30) + raw[at + 2 :]
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    assert big.stat().st_size < 2000
    message = rf"'{re.escape(str(big))}' is damaged: .*declares 1073741824 values"
    with pytest.raises(ExportFormatError, match=message):
        load_compressed(big, env.task.model, env.task.example_input)
    with pytest.raises(ExportFormatError, match="'fingerprint' must be a string"):  # well-formed
        load_compressed(small, env.task.model, env.task.example_input)
