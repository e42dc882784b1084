"""Differential tests over the fuzz corpora: shardstream's verdict on every input equals the
reference reader's (`safetensors.safe_open(path, "pt")` + `keys()`).

- The committed regression corpus (tests/fuzz/corpus/header/: inputs the fuzzer found, crashes
  that were fixed) goes through `shardstream inspect --json`, and its rule must equal the fuzz
  target's verdict (tests/fuzz/header_replay), so the replay tool speaks for the CLI.
- Every entry of the corpora in $SHARDSTREAM_FUZZ_CORPUS (folders separated by ':'; scripts/fuzz
  passes the corpus it grew and its seeds; default: the committed corpus) goes through the replay
  tool in bulk ($SHARDSTREAM_FUZZ_REPLAY, default build/tests/fuzz/header_replay) and is compared
  with the reference. Any disagreement is a validator bug.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from support import read_reference

COMMITTED = REPO_ROOT / "tests" / "fuzz" / "corpus" / "header"
BATCH = 500  # inputs per replay run (argv length)


def replay_tool() -> Path:
    env = os.environ.get("SHARDSTREAM_FUZZ_REPLAY")
    path = Path(env) if env else REPO_ROOT / "build" / "tests" / "fuzz" / "header_replay"
    if not path.is_file():
        pytest.fail(f"fuzz replay tool not found at {path} (build it, or set "
                    f"SHARDSTREAM_FUZZ_REPLAY)", pytrace=False)
    return path


def corpus_files() -> list:
    env = os.environ.get("SHARDSTREAM_FUZZ_CORPUS")
    folders = [Path(p) for p in env.split(":") if p] if env else [COMMITTED]
    return sorted(f for d in folders for f in d.rglob("*") if f.is_file())


def replay_verdicts(files: list) -> dict:
    """path → "valid" or the rule, from the fuzz target itself."""
    out = {}
    tool = replay_tool()
    for i in range(0, len(files), BATCH):
        batch = files[i:i + BATCH]
        proc = subprocess.run([str(tool), *map(str, batch)], capture_output=True, timeout=600)
        assert proc.returncode == 0, f"replay failed ({proc.returncode}): {proc.stderr[-2000:]!r}"
        for line in proc.stdout.decode().splitlines():
            verdict, path = line.split("\t", 1)
            out[path] = verdict
    assert len(out) == len(files), "replay skipped inputs"
    return out


def test_committed_corpus_is_not_empty():
    assert len(list(COMMITTED.iterdir())) >= 10


def test_committed_corpus_cli_matches_reference_and_replay(cli, reference):
    files = sorted(COMMITTED.iterdir())
    verdicts = replay_verdicts(files)
    for path in files:
        ref = read_reference(path)
        res = cli("inspect", path, "--json")
        assert res.returncode in (0, 1), res.describe()
        assert (res.returncode == 0) == ref.ok, (
            f"{path.name}: reference {'accepts' if ref.ok else 'rejects: ' + ref.error}\n"
            f"{res.describe()}")
        err = res.json().get("error") or {}
        assert verdicts[str(path)] == ("valid" if ref.ok else err.get("rule")), path.name


def test_fuzz_corpus_matches_reference(reference):
    files = corpus_files()
    assert files, "empty corpus"
    verdicts = replay_verdicts(files)
    mismatches = []
    for path in files:
        ref = read_reference(path)
        ours = verdicts[str(path)]
        if (ours == "valid") != ref.ok:
            mismatches.append(f"{path}: shardstream {ours}, reference "
                              f"{'valid' if ref.ok else ref.error[:200]}")
    print(f"{len(files)} corpus entries compared with the reference")
    assert not mismatches, f"{len(mismatches)} of {len(files)} disagree:\n" + \
        "\n".join(mismatches[:20])
