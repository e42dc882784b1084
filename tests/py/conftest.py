"""Fixtures shared by the Python differential tests.

- `shardstream_bin`: $SHARDSTREAM_BIN, else <repo>/build/shardstream; a missing binary fails.
- `reference`: the `safetensors` package (the reference reader); missing → skip, or fail when
  CI=true.
- `corpus`: every crafted case materialised once per session.
- `cli`: runs `shardstream inspect`, memoised per argument list.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
FIXTURES_DIR = REPO_ROOT / "tests" / "data" / "fixtures"
CLI_TIMEOUT_S = 60

sys.path.insert(0, str(HERE))
import crafted  # noqa: E402
from support import CliResult  # noqa: E402


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def reference():
    """The reference reader: module `safetensors` (needs torch for framework "pt")."""
    try:
        import safetensors  # noqa: F401
        import torch  # noqa: F401
        from safetensors import safe_open  # noqa: F401
    except ImportError as exc:
        reason = f"reference reader unavailable ({exc}); install safetensors and torch"
        if in_ci():
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    return safetensors


@pytest.fixture(scope="session")
def shardstream_bin() -> Path:
    env = os.environ.get("SHARDSTREAM_BIN")
    path = Path(env) if env else REPO_ROOT / "build" / "shardstream"
    origin = "SHARDSTREAM_BIN" if env else "default location (SHARDSTREAM_BIN unset)"
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"shardstream binary not found or not executable at {path} ({origin}); "
                    f"build it (cmake --build build) or set SHARDSTREAM_BIN", pytrace=False)
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """name → (case, CLI argument path, root folder) for every crafted case."""
    root = tmp_path_factory.mktemp("crafted")
    return {c.name: (c, c.materialize(root), root) for c in crafted.cases()}


@pytest.fixture(scope="session")
def cli(shardstream_bin):
    cache: dict = {}

    def run(*args) -> CliResult:
        key = tuple(str(a) for a in args)
        if key not in cache:
            argv = [str(shardstream_bin), *key]
            try:
                proc = subprocess.run(argv, capture_output=True, timeout=CLI_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"timed out after {CLI_TIMEOUT_S} s: {' '.join(argv)}")
            cache[key] = CliResult(argv, proc.returncode,
                                   proc.stdout.decode("utf-8", "replace"),
                                   proc.stderr.decode("utf-8", "replace"))
        return cache[key]

    return run
