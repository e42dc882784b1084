"""Shared fixtures for the shardstream Python package's tests (pytest tests/python).

The package must be importable (scripts/test installs it into the project virtualenv); the
reference reader is the `safetensors` package; crafted files come from tests/py/crafted.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
FIXTURES_DIR = REPO_ROOT / "tests" / "data" / "fixtures"
FIXTURES = ["dtypes", "mixed", "many_10k"]

sys.path.append(str(REPO_ROOT / "tests" / "py"))  # crafted.py (after tests/python: conftest)
import crafted  # noqa: E402

import torch  # noqa: E402
import safetensors  # noqa: E402
import safetensors.torch  # noqa: E402

import shardstream  # noqa: E402,F401 - fails early when the package is not installed


def raw(t: torch.Tensor) -> bytes:
    """A tensor's bytes (any dtype, 0-d and empty included)."""
    if t.numel() == 0:
        return b""
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(ours: dict, ref: dict) -> None:
    assert list(ours) == list(ref)
    for name in ref:
        a, b = ours[name], ref[name]
        assert a.dtype == b.dtype, name
        assert a.shape == b.shape, name
        assert raw(a) == raw(b), name


def task_count() -> int:
    return len(os.listdir("/proc/self/task"))


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """name → (case, path, root) for every crafted case, materialised once."""
    root = tmp_path_factory.mktemp("crafted")
    return {c.name: (c, c.materialize(root), root) for c in crafted.cases()}


@pytest.fixture
def sample(tmp_path):
    """A small checkpoint with the shapes the tests need, and its tensors."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "fused": torch.randn(6, 4, 8, generator=g),
        "vec": torch.arange(10, dtype=torch.int64),
        "half": torch.randn(5, 7, generator=g).to(torch.float16),
        "bf": torch.randn(3, 9, generator=g).to(torch.bfloat16),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "odd": torch.arange(3, dtype=torch.uint8),
    }
    path = tmp_path / "sample.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
    return path, tensors
