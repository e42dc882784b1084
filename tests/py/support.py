"""Helpers for the differential tests: CLI results, the reference reader, header parsing."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest


@dataclass
class CliResult:
    args: list
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (f"$ {' '.join(map(str, self.args))}\nexit {self.returncode}\n"
                f"stdout: {self.stdout[:2000]!r}\nstderr: {self.stderr[:2000]!r}")

    def json(self) -> dict:
        try:
            doc = json.loads(self.stdout)
        except ValueError as exc:
            pytest.fail(f"stdout is not one JSON document ({exc})\n{self.describe()}")
        assert isinstance(doc, dict), f"stdout JSON is not an object\n{self.describe()}"
        return doc


@dataclass
class RefResult:
    ok: bool
    error: str = ""
    tensors: Optional[dict] = None  # name → (dtype, shape list)
    metadata: Optional[dict] = None


def read_reference(path: Path) -> RefResult:
    """safe_open(path, "pt") + keys(): the reference verdict, then dtype/shape of each tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            names = list(f.keys())
            metadata = f.metadata()
            tensors = {}
            for name in names:
                sl = f.get_slice(name)
                tensors[name] = (sl.get_dtype(), list(sl.get_shape()))
    except BaseException as exc:  # pyo3 PanicException derives from BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return RefResult(ok=False, error=f"{type(exc).__name__}: {exc}")
    return RefResult(ok=True, tensors=tensors, metadata=metadata)


def header_tensors(path: Path) -> dict:
    """name → (dtype, shape, (begin, end)) from a file's own header, parsed in Python.

    Only for files the reference accepts. Handles the reference's quirks: array-form tensors,
    `{"DTYPE": null}` dtypes, duplicate names (last wins, as with dict)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if isinstance(info, list):
            dtype, shape, offsets = info
        else:
            dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if isinstance(dtype, dict):
            (dtype,) = dtype.keys()
        out[name] = (dtype, list(shape), tuple(offsets))
    return out


def header_length(path: Path) -> int:
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


def same_path(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def parse_sum64(path: Path) -> list:
    """[(name, dtype, shape)] from a NAME.sum64.txt listing, in file (data-offset) order."""
    import re

    line_re = re.compile(r"^(.*) (\S+) \[([0-9, ]*)\] ([0-9a-f]{16})$")
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        m = line_re.match(line)
        assert m, f"{path}: unparsable line {line!r}"
        shape = [int(d) for d in m.group(3).split(",") if d.strip()]
        out.append((m.group(1), m.group(2), shape))
    return out
