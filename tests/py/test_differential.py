"""Differential tests: `shardstream inspect` against the reference safetensors reader.

Run:  ~/.cache/shardstream/venv-torch-2.11/bin/python -m pytest tests/py -q
      (SHARDSTREAM_BIN overrides <repo>/build/shardstream; CI=true turns a missing reference
      into a failure instead of a skip.)

Contract under test (shardstream inspect PATH [--json] [--tensors]):
  exit 0 valid, 1 invalid checkpoint, 2 usage error; on error stderr is exactly one line
  `error: <file path>: [tensor '<name>': ]<cause> (rule: <code>)`; with --json stdout is one
  object, also on error.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

import crafted
from conftest import FIXTURES_DIR
from support import (header_length, header_tensors, parse_sum64, read_reference,
                     same_path)

FILE_CASES = crafted.file_cases()
DIR_CASES = crafted.dir_cases()
FIXTURES = {"dtypes": 22, "mixed": 10, "many_10k": 10000}

SINGLE_FILE_RULES = {
    "header-too-small", "header-too-large", "header-length", "header-utf8", "header-json",
    "header-not-object", "metadata", "tensor-entry", "dtype", "data-offsets", "shape-overflow",
    "sub-byte", "size-mismatch", "data-truncated", "trailing-bytes",
}
DISCOVERY_RULES = {
    "not-found", "no-checkpoint", "index-json", "index-weight-map", "index-shard-path",
    "index-shard-missing", "index-tensor-missing", "index-tensor-unmapped", "duplicate-tensor",
}


def ids(cases):
    return [c.name for c in cases]


# ----------------------------------------------------------------------------------------------
# Contract checks shared by the tests


def inspect(cli, path, *flags):
    return cli("inspect", path, *flags)


def assert_no_crash(res):
    assert res.returncode >= 0, f"killed by signal {-res.returncode}\n{res.describe()}"
    assert res.returncode <= 124, f"exit code {res.returncode} out of 0..124\n{res.describe()}"


def assert_invalid(cli, path, rule, error_path, fragments):
    """Exit 1, JSON verdict/rule/file, and a single `error:` line naming rule, file, fragments."""
    res = inspect(cli, path, "--json", "--tensors")
    assert_no_crash(res)
    assert res.returncode == 1, f"expected exit 1 (rule {rule})\n{res.describe()}"
    doc = res.json()
    assert doc.get("verdict") == "invalid", res.describe()
    err = doc.get("error")
    assert isinstance(err, dict), f"no error object\n{res.describe()}"
    assert err.get("rule") == rule, f"expected rule {rule!r}, got {err.get('rule')!r}\n" \
                                    f"{res.describe()}"
    lines = res.stderr.splitlines()
    assert len(lines) == 1, f"stderr must be exactly one line\n{res.describe()}"
    line = lines[0]
    assert line.startswith("error: "), res.describe()
    assert line.endswith(f"(rule: {rule})"), res.describe()
    if error_path is not None:
        assert error_path.name in line, f"error line does not name {error_path.name}\n" \
                                        f"{res.describe()}"
        assert err.get("file") and same_path(err["file"], error_path), \
            f"error.file should be {error_path}\n{res.describe()}"
    for fragment in fragments:
        assert fragment in line, f"error line lacks {fragment!r}\n{res.describe()}"

    # Without --json: same exit code and the same single stderr line.
    plain = inspect(cli, path)
    assert_no_crash(plain)
    assert plain.returncode == 1, plain.describe()
    assert plain.stderr.splitlines() == lines, plain.describe()


def assert_valid_doc(res, shard_files):
    """Exit 0 and a self-consistent JSON report; returns name → tensor_list entry."""
    assert_no_crash(res)
    assert res.returncode == 0, f"expected a valid checkpoint\n{res.describe()}"
    doc = res.json()
    assert doc.get("verdict") == "valid", res.describe()
    assert doc.get("error") is None, res.describe()
    tensor_list = doc.get("tensor_list")
    assert isinstance(tensor_list, list), f"no tensor_list\n{res.describe()}"
    names = [t["name"] for t in tensor_list]
    dup = [n for n, k in Counter(names).items() if k > 1]
    assert not dup, f"tensor_list repeats {dup[:5]}"
    assert doc["tensors"] == len(tensor_list)

    sizes = {t["name"]: t["data_offsets"][1] - t["data_offsets"][0] for t in tensor_list}
    assert doc["data_bytes"] == sum(sizes.values())
    per_dtype: dict = {}
    for t in tensor_list:
        d = per_dtype.setdefault(t["dtype"], {"tensors": 0, "bytes": 0})
        d["tensors"] += 1
        d["bytes"] += sizes[t["name"]]
    assert doc["dtypes"] == per_dtype

    files = doc["files"]
    assert sorted(Path(f["path"]).resolve() for f in files) == \
        sorted(Path(p).resolve() for p in shard_files)
    for f in files:
        size = os.path.getsize(f["path"])
        n = header_length(f["path"])
        in_file = [t for t in tensor_list if same_path(t["file"], f["path"])]
        assert f["file_bytes"] == size, f
        assert f["header_bytes"] in (n, n + 8), f"header_bytes {f['header_bytes']}, length {n}"
        assert f["data_bytes"] == size - 8 - n, f
        assert f["tensors"] == len(in_file), f
        assert f["data_bytes"] == sum(sizes[t["name"]] for t in in_file), f
    return {t["name"]: t for t in tensor_list}


def assert_matches_header(by_name, path):
    """name/dtype/shape/data_offsets/file of one file equal its header parsed in Python."""
    expected = header_tensors(path)
    got = {n: t for n, t in by_name.items() if same_path(t["file"], path)}
    assert sorted(got) == sorted(expected), f"{path.name}: tensor names differ"
    for name, (dtype, shape, offsets) in expected.items():
        t = got[name]
        assert (t["dtype"], t["shape"], tuple(t["data_offsets"])) == (dtype, shape, offsets), \
            f"{path.name}: tensor {name!r}: got {t}, header says {(dtype, shape, offsets)}"


def assert_matches_reference(by_name, doc_files, paths):
    """The union over `paths` of the reference's names, dtypes, shapes and metadata."""
    expected = {}
    for path in paths:
        ref = read_reference(path)
        assert ref.ok, f"reference rejects {path.name}: {ref.error}"
        for name, info in ref.tensors.items():
            assert name not in expected, f"{name!r} in two shards"
            expected[name] = info
        meta = next(f.get("metadata") for f in doc_files if same_path(f["path"], path))
        assert (meta or {}) == (ref.metadata or {}), f"{path.name}: metadata differs"
    assert sorted(by_name) == sorted(expected)
    for name, (dtype, shape) in expected.items():
        t = by_name[name]
        assert (t["dtype"], t["shape"]) == (dtype, shape), f"{name!r}: {t} vs {(dtype, shape)}"


# ----------------------------------------------------------------------------------------------
# The corpus itself


def test_every_rule_is_covered():
    rules = {c.rule for c in crafted.cases()}
    missing = (SINGLE_FILE_RULES | DISCOVERY_RULES) - rules
    assert not missing, f"no crafted case for {sorted(missing)}"
    assert rules - {None} <= SINGLE_FILE_RULES | DISCOVERY_RULES


def test_corpus_is_deterministic(tmp_path):
    a = crafted.write_corpus(tmp_path / "a")
    b = crafted.write_corpus(tmp_path / "b")
    assert a == b
    for entry in a:
        pa, pb = tmp_path / "a" / entry["path"], tmp_path / "b" / entry["path"]
        if pa.is_file():
            assert pa.read_bytes() == pb.read_bytes(), entry["name"]


@pytest.mark.parametrize("case", FILE_CASES, ids=ids(FILE_CASES))
def test_reference_agrees_with_crafted_expectation(case, corpus, reference):
    _, path, _ = corpus[case.name]
    ref = read_reference(path)
    assert ref.ok == case.valid, (
        f"crafted expectation {case.rule or 'valid'}, reference "
        f"{'accepts' if ref.ok else 'rejects: ' + ref.error} ({case.note})")


@pytest.mark.parametrize("case", DIR_CASES, ids=ids(DIR_CASES))
def test_reference_agrees_with_crafted_shards(case, corpus, reference):
    _, _, root = corpus[case.name]
    bad = case.expected_error_path(root) if case.rule in SINGLE_FILE_RULES else None
    for shard in case.shard_paths(root):
        ref = read_reference(shard)
        should_pass = bad is None or not same_path(shard, bad)
        assert ref.ok == should_pass, f"{shard.name}: reference says {ref.error or 'valid'}"


# ----------------------------------------------------------------------------------------------
# Single files: contract and differential


@pytest.mark.parametrize("case", FILE_CASES, ids=ids(FILE_CASES))
def test_single_file_contract(case, corpus, cli):
    _, path, root = corpus[case.name]
    if case.valid:
        res = inspect(cli, path, "--json", "--tensors")
        by_name = assert_valid_doc(res, [path])
        assert_matches_header(by_name, path)
        assert same_path(res.json()["path"], path)
    else:
        assert_invalid(cli, path, case.rule, case.expected_error_path(root), case.fragments)


@pytest.mark.parametrize("case", FILE_CASES, ids=ids(FILE_CASES))
def test_single_file_matches_reference(case, corpus, cli, reference):
    _, path, _ = corpus[case.name]
    ref = read_reference(path)
    res = inspect(cli, path, "--json", "--tensors")
    assert_no_crash(res)
    assert (res.returncode == 0) == ref.ok, (
        f"reference {'accepts' if ref.ok else 'rejects (' + ref.error + ')'}, "
        f"shardstream exit {res.returncode}\n{res.describe()}")
    if ref.ok:
        doc = res.json()
        by_name = {t["name"]: t for t in doc["tensor_list"]}
        assert_matches_reference(by_name, doc["files"], [path])


# ----------------------------------------------------------------------------------------------
# Folders, indexes and shards


@pytest.mark.parametrize("case", DIR_CASES, ids=ids(DIR_CASES))
def test_sharded_checkpoint(case, corpus, cli, request):
    _, path, root = corpus[case.name]
    if not case.valid:
        assert_invalid(cli, path, case.rule, case.expected_error_path(root), case.fragments)
        return
    shards = case.shard_paths(root)
    res = inspect(cli, path, "--json", "--tensors")
    by_name = assert_valid_doc(res, shards)
    for shard in shards:
        assert_matches_header(by_name, shard)
    request.getfixturevalue("reference")
    assert_matches_reference(by_name, res.json()["files"], shards)


def test_folder_argument_with_trailing_slash(corpus, cli):
    _, path, _ = corpus["dir-valid-index"]
    res = inspect(cli, f"{path}/", "--json", "--tensors")
    assert_valid_doc(res, corpus["dir-valid-index"][0].shard_paths(corpus["dir-valid-index"][2]))


# ----------------------------------------------------------------------------------------------
# Reference fixtures written by the safetensors crate


@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture(name, cli, reference):
    path = FIXTURES_DIR / f"{name}.safetensors"
    listing = parse_sum64(FIXTURES_DIR / f"{name}.sum64.txt")
    assert len(listing) == FIXTURES[name]

    res = inspect(cli, path, "--json", "--tensors")
    by_name = assert_valid_doc(res, [path])
    doc = res.json()
    assert doc["tensors"] == FIXTURES[name]
    in_order = sorted(doc["tensor_list"], key=lambda t: tuple(t["data_offsets"]))
    got = [(t["name"], t["dtype"], t["shape"]) for t in in_order]
    assert got == listing, next(
        (f"first difference at #{i}: {g} vs listing {e}"
         for i, (g, e) in enumerate(zip(got, listing)) if g != e), "lengths differ")
    assert_matches_header(by_name, path)
    assert_matches_reference(by_name, doc["files"], [path])


# ----------------------------------------------------------------------------------------------
# Usage errors


@pytest.mark.parametrize("argv", [
    [], ["inspect"], ["inspect", "--no-such-flag", "x.safetensors"], ["no-such-command"],
], ids=["no-args", "inspect-without-path", "unknown-flag", "unknown-command"])
def test_usage_error_exits_2(argv, cli):
    res = cli(*argv)
    assert_no_crash(res)
    assert res.returncode == 2, res.describe()
