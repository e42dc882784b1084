"""Differential tests: `shardstream load` against the reference safetensors reader.

Run:  ~/.cache/shardstream/venv-torch-2.11/bin/python -m pytest -q tests/py/test_load.py
      (SHARDSTREAM_BIN overrides <repo>/build/shardstream; CI=true turns a missing reference
      into a failure instead of a skip.)

Contract under test (shardstream load CKPT [--io auto|pread|mmap|uring] [--zero-copy] [--threads N]
[--chunk-mb N] [--dtype bf16|f16|f32] [--digest] [--json] [--quiet] [--device cpu]):
  --digest:  stdout is one line per tensor, sorted by name (byte order),
             `name\\tDTYPE\\t[d0,d1,...]\\tsha256` (DTYPE/shape as in the file header, sha256 over
             the loaded tensor's bytes); the human report goes to stderr.
  --json:    stdout is one JSON object (path, bytes, tensors, files, seconds, gbps, io,
             zero_copy, threads, chunk_bytes, stages, raw_dtypes, and with --digest `digest`).
  errors:    one line `error: FILE: tensor 'NAME': CAUSE (rule: RULE)` on stderr, exit 1, nothing
             on stdout with --digest; usage errors exit 2.

Each digest is checked against two independent references: the bytes of the tensor that
`safetensors` loads (safe_open(...).get_tensor, i.e. what load_file returns) and the raw bytes
of the file at the tensor's data_offsets (header parsed in Python, support.header_tensors).
F6 tensors, which torch cannot represent, have only the raw-bytes reference.

The CLI links libtorch, so every process start costs ~0.3 s: the runs a test function needs are
started together, in parallel, by its first instance (LoadRunner.prefetch) and then memoised.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import crafted
from conftest import CLI_TIMEOUT_S, FIXTURES_DIR
from support import CliResult, header_tensors, same_path

INDEX = crafted.INDEX_NAME
FIXTURES = ["dtypes", "mixed", "many_10k"]
# The buffered modes pin --direct off: with the default (auto), a checkpoint the page cache has
# mostly dropped is read with O_DIRECT through staging, and the test would check another path.
MODES = {"pread": ("--io", "pread", "--direct", "off"), "mmap": ("--io", "mmap"),
         "uring": ("--io", "uring", "--direct", "off"),
         "direct": ("--io", "pread", "--direct", "on"),
         # The tiny pool of the conformance matrix: 1 MiB chunks, 4 MiB staging, depth 2.
         "direct-uring": ("--io", "uring", "--direct", "on", "--staging-mb", "4", "--chunk-mb",
                          "1", "--queue-depth", "2"),
         "zero-copy": ("--zero-copy",)}
THREADS = [1, 2]
DEFAULT_CHUNK_BYTES = 16 << 20  # reads straight into tensors
STAGED_CHUNK_BYTES = 4 << 20    # reads through staging slots (O_DIRECT)
F6_DTYPES = {"F6_E2M3", "F6_E3M2"}

# Valid crafted cases run through every mode × thread count (the rest run in one mode only).
MATRIX_SAMPLE = [
    "valid-all-dtypes",                         # every dtype: F4 packed, F6 raw bytes, C64 ...
    "valid-unsorted-offsets",                   # header order != data order
    "valid-duplicate-tensor-last-wins",         # only the last 'a' is laid out
    "dir-valid-index-subfolder-shard",          # index + shard below the folder
    "dir-valid-index-shard-with-empty-tensor",  # index + empty tensor in a shard
]

# Valid files (the reference *reader* accepts them) that `load` must reject, as torch (and the
# reference *loader*, load_file) cannot hold them: rule, or None when any rule will do.
LOAD_REJECTS = {
    "valid-only-empty-tensors": "f4-shape",        # F4 [0, 7]: odd last dim
    "valid-zero-dim-then-huge-dims": None,         # dims > INT64_MAX: no torch shape
    "valid-shape-u64-max-values-parse": None,
}

ERROR_LINE = re.compile(r"^error: (?P<file>.+?): (?:tensor '(?P<tensor>.*)': )?(?P<cause>.+) "
                        r"\(rule: (?P<rule>[a-z0-9-]+)\)$", re.S)


# ----------------------------------------------------------------------------------------------
# Running the CLI


class LoadRunner:
    """Runs `shardstream ARGS...`, memoised per argument list; `prefetch` runs many at once."""

    def __init__(self, binary: Path, workers: int):
        self.binary = binary
        self.workers = workers
        self.cache: dict = {}

    def _run(self, key, prefix=()):
        argv = [*prefix, str(self.binary), *key]
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return CliResult(argv, -9999, "", f"timed out after {CLI_TIMEOUT_S} s")
        except OSError as exc:  # e.g. the binary is being rebuilt
            return CliResult(argv, -9999, "", f"cannot run the binary ({exc})")
        # surrogateescape: stdout round-trips byte for byte (names are arbitrary UTF-8).
        return CliResult(argv, proc.returncode, proc.stdout.decode("utf-8", "surrogateescape"),
                         proc.stderr.decode("utf-8", "replace"))

    def prefetch(self, arg_lists):
        keys = [tuple(str(a) for a in args) for args in arg_lists]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if not todo:
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for key, res in zip(todo, pool.map(self._run, todo)):
                self.cache[key] = res

    def __call__(self, *args) -> CliResult:
        key = tuple(str(a) for a in args)
        if key not in self.cache:
            self.cache[key] = self._run(key)
        res = self.cache[key]
        if res.returncode == -9999:
            pytest.fail(res.stderr + f": {' '.join(map(str, res.args))}")
        return res

    def run_with_prefix(self, prefix, *args) -> CliResult:
        return self._run(tuple(str(a) for a in args), prefix)


@pytest.fixture(scope="session")
def load_cli(shardstream_bin):
    return LoadRunner(shardstream_bin, workers=max(2, min(8, (os.cpu_count() or 2) + 1)))


def mode_args(mode):
    return list(MODES[mode])


def load_argv(path, mode=None, threads=None, chunk_mb=None, json_=True, digest=True):
    argv = ["load", str(path), "--quiet"]
    if mode is not None:
        argv += mode_args(mode)
    if threads is not None:
        argv += ["--threads", str(threads)]
    if chunk_mb is not None:
        argv += ["--chunk-mb", str(chunk_mb)]
    if json_:
        argv.append("--json")
    if digest:
        argv.append("--digest")
    return argv


def assert_no_crash(res):
    assert res.returncode >= 0, f"killed by signal {-res.returncode}\n{res.describe()}"
    assert res.returncode <= 124, f"exit code {res.returncode} out of 0..124\n{res.describe()}"


# ----------------------------------------------------------------------------------------------
# Targets and their references


class Target:
    """A checkpoint to load: the CLI argument and its .safetensors files."""

    def __init__(self, tid, arg, shards):
        self.id = tid
        self.arg = Path(arg)
        self.shards = [Path(s) for s in shards]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shape_text(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


@functools.lru_cache(maxsize=None)
def raw_reference(path: str) -> dict:
    """name → (dtype, shape, nbytes, sha256 of the file bytes at data_offsets)."""
    data = Path(path).read_bytes()
    start = 8 + struct.unpack_from("<Q", data)[0]
    out = {}
    for name, (dtype, shape, (begin, end)) in header_tensors(Path(path)).items():
        assert start + end <= len(data), f"{path}: {name!r} past the end of the file"
        out[name] = (dtype, list(shape), end - begin, sha(data[start + begin:start + end]))
    return out


@functools.lru_cache(maxsize=None)
def torch_reference(path: str) -> dict:
    """name → sha256 of the tensor safetensors loads (None: the reference cannot load it, F6)."""
    import torch
    from safetensors import safe_open

    out = {}
    with safe_open(path, "pt") as f:
        for name in f.keys():
            dtype = f.get_slice(name).get_dtype()
            if dtype in F6_DTYPES:
                out[name] = None  # "Dtype not understood": torch has no F6 type
                continue
            t = f.get_tensor(name)
            flat = t.contiguous().reshape(-1).view(torch.uint8)
            out[name] = sha(flat.numpy().tobytes()) if flat.numel() else sha(b"")
    return out


def expected_for(target: Target) -> dict:
    """name → (dtype, shape_text, nbytes, sha_raw, sha_torch) over all shards."""
    out = {}
    for shard in target.shards:
        raw = raw_reference(str(shard))
        tref = torch_reference(str(shard))
        assert sorted(tref) == sorted(raw), f"{shard.name}: reference and header names differ"
        for name, (dtype, shape, nbytes, digest) in raw.items():
            assert name not in out, f"{name!r} in two shards of {target.id}"
            out[name] = (dtype, shape_text(shape), nbytes, digest, tref[name])
    return out


def sorted_names(names):
    return sorted(names, key=lambda n: n.encode("utf-8", "surrogatepass"))


def expected_digest_text(exp: dict) -> str:
    return "".join(f"{n}\t{exp[n][0]}\t{exp[n][1]}\t{exp[n][3]}\n" for n in sorted_names(exp))


def check_references_agree(target, exp):
    """The two references agree wherever both exist (catches a broken reference, not the CLI)."""
    for name, (_, _, _, sha_raw, sha_torch) in exp.items():
        if sha_torch is not None:
            assert sha_raw == sha_torch, f"{target.id}: {name!r}: file bytes and load_file differ"


def check_digest_text(res, target, exp):
    assert_no_crash(res)
    assert res.returncode == 0, f"{target.id}: load failed\n{res.describe()}"
    want = expected_digest_text(exp)
    if res.stdout != want:
        got_lines, want_lines = res.stdout.split("\n"), want.split("\n")
        first = next((i for i, (g, w) in enumerate(zip(got_lines, want_lines)) if g != w),
                     min(len(got_lines), len(want_lines)))
        pytest.fail(f"{target.id}: --digest stdout differs from the references at line {first}:\n"
                    f"  got:      {got_lines[first:first + 1]!r}\n"
                    f"  expected: {want_lines[first:first + 1]!r}\n"
                    f"  ({len(got_lines) - 1} lines vs {len(want_lines) - 1} expected)\n"
                    f"{res.describe()}")
    assert res.stderr.strip(), f"no human report on stderr\n{res.describe()}"
    assert "error:" not in res.stderr, res.describe()


def check_json_report(res, target, exp, mode, threads=None, chunk_mb=None, digest=True):
    assert_no_crash(res)
    assert res.returncode == 0, f"{target.id}: load failed\n{res.describe()}"
    doc = res.json()
    ctx = f"{target.id} [{mode}, threads {threads}]\n{res.describe()}"

    assert same_path(doc.get("path"), target.arg), f"path {doc.get('path')!r}\n{ctx}"
    assert doc.get("tensors") == len(exp), ctx
    assert doc.get("files") == len(target.shards), ctx
    assert doc.get("bytes") == sum(e[2] for e in exp.values()), ctx
    want_io = {"pread": "pread", "mmap": "mmap", "uring": "uring", "direct": "pread",
               "direct-uring": "uring", "zero-copy": "zero-copy", None: "pread"}[mode]
    assert doc.get("io") == want_io, ctx
    assert doc.get("zero_copy") is (mode == "zero-copy"), ctx
    # Direct loads report their copy threads, which oneTBB may cap below the request.
    if threads is not None and mode not in ("zero-copy", "direct", "direct-uring"):
        assert doc.get("threads") == threads, ctx
    elif mode == "zero-copy":  # no reads, so no worker threads: 0 or the requested count
        assert doc.get("threads") in (0, threads), ctx
    else:
        assert isinstance(doc.get("threads"), int) and doc["threads"] >= 1, ctx
    default_chunk = {"zero-copy": 0, "direct": STAGED_CHUNK_BYTES,
                     "direct-uring": 1 << 20}.get(mode, DEFAULT_CHUNK_BYTES)
    if mode == "zero-copy":  # nothing is read
        assert doc.get("chunk_bytes") == 0, ctx
    else:
        assert doc.get("chunk_bytes") == (chunk_mb << 20 if chunk_mb else default_chunk), ctx

    seconds, gbps = doc.get("seconds"), doc.get("gbps")
    assert isinstance(seconds, (int, float)) and seconds > 0 and math.isfinite(seconds), ctx
    assert isinstance(gbps, (int, float)) and gbps >= 0 and math.isfinite(gbps), ctx
    assert gbps == pytest.approx(doc["bytes"] / seconds / 1e9, rel=1e-3, abs=1e-12), ctx
    stages = doc.get("stages")
    assert isinstance(stages, dict) and stages, ctx
    for stage, secs in stages.items():
        assert isinstance(secs, (int, float)) and secs >= 0, f"stage {stage!r}\n{ctx}"

    f6 = {n: e[0] for n, e in exp.items() if e[0] in F6_DTYPES}
    assert doc.get("raw_dtypes") == f6, ctx

    if not digest:
        assert "digest" not in doc, ctx
        return doc
    entries = doc.get("digest")
    assert isinstance(entries, list), f"no digest array\n{ctx}"
    got = []
    for e in entries:
        shape = e.get("shape")
        got.append((e.get("name"), e.get("dtype"),
                    shape_text(shape) if isinstance(shape, list) else shape, e.get("sha256")))
    want = [(n, exp[n][0], exp[n][1], exp[n][3]) for n in sorted_names(exp)]
    if got != want:
        diff = next(((g, w) for g, w in zip(got, want) if g != w), None)
        pytest.fail(f"{target.id}: JSON digest differs (first: got {diff and diff[0]}, "
                    f"expected {diff and diff[1]}; {len(got)} vs {len(want)} entries)\n{ctx}")
    return doc


# ----------------------------------------------------------------------------------------------
# Target fixtures


def write_sharded_fallback(out: Path) -> None:
    """A 3-shard checkpoint with index, written by safetensors.torch.save_file."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(7)
    shards = [
        {"model.embed_tokens.weight": torch.randn(256, 64, generator=g).to(torch.bfloat16),
         "model.layers.0.attn.q.weight": torch.randn(64, 64, generator=g),
         "model.layers.0.norm.weight": torch.ones(64, dtype=torch.float16)},
        {"model.layers.1.mlp.up.weight": torch.randn(96, 64, generator=g).to(torch.float16),
         "model.layers.1.mlp.ids": torch.randint(-2**40, 2**40, (33,), generator=g),
         "model.layers.1.mask": torch.randint(0, 2, (17,), generator=g).bool(),
         "model.layers.1.empty": torch.zeros(0, 4)},
        {"lm_head.weight": torch.randn(256, 64, generator=g).to(torch.bfloat16),
         "model.norm.scale": torch.tensor(1.5),
         "model.bytes": torch.randint(0, 256, (1000,), generator=g).to(torch.uint8)},
    ]
    out.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for i, tensors in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        for k, t in tensors.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                         "weight_map": weight_map}, indent=2))


@pytest.fixture(scope="session")
def sharded(tmp_path_factory, load_cli, reference):
    """`shardstream generate OUT --preset tiny --shards 3 --seed 7`, else a save_file fallback."""
    out = tmp_path_factory.mktemp("generated") / "ckpt"
    res = load_cli("generate", out, "--preset", "tiny", "--shards", "3", "--seed", "7")
    if res.returncode == 0:
        origin = "shardstream generate"
    else:
        shutil.rmtree(out, ignore_errors=True)
        write_sharded_fallback(out)
        origin = f"save_file fallback (generate: exit {res.returncode}: {res.stderr.strip()[:120]})"
    index = out / INDEX
    if index.is_file():
        wmap = json.loads(index.read_text())["weight_map"]
        shards = sorted({(out / rel).resolve() for rel in wmap.values()})
    else:
        shards = sorted(out.glob("*.safetensors"))
    assert len(shards) == 3, f"{origin}: expected 3 shards, got {shards}"
    print(f"sharded checkpoint from {origin}")
    return Target("sharded", out, shards)


@pytest.fixture(scope="session")
def targets(corpus, sharded):
    """id → Target for the fixtures, the sharded checkpoint and every valid crafted case."""
    out = {f"fixture-{n}": Target(f"fixture-{n}", FIXTURES_DIR / f"{n}.safetensors",
                                  [FIXTURES_DIR / f"{n}.safetensors"]) for n in FIXTURES}
    out["sharded"] = sharded
    for name, (case, path, root) in corpus.items():
        if case.valid:
            out[name] = Target(name, path, case.shard_paths(root))
    return out


# Fixtures and the sharded checkpoint: every mode × threads 1, 2 (JSON + digest) and every mode
# with the --digest text output; the crafted sample: every mode, 2 threads (JSON + digest).
FULL_TARGETS = [f"fixture-{n}" for n in FIXTURES] + ["sharded"]
MATRIX = [(t, m, n) for t in FULL_TARGETS for m in MODES for n in THREADS] + \
    [(t, m, 2) for t in MATRIX_SAMPLE for m in MODES]
TEXT_MATRIX = [(t, m) for t in FULL_TARGETS for m in MODES]
VALID_CRAFTED = [c.name for c in crafted.cases() if c.valid]


# ----------------------------------------------------------------------------------------------
# Valid checkpoints: digests against both references, JSON report


@pytest.mark.parametrize("tid,mode,threads", MATRIX,
                         ids=[f"{t}-{m}-t{n}" for t, m, n in MATRIX])
def test_load_json_digest(tid, mode, threads, targets, load_cli, reference):
    load_cli.prefetch(load_argv(targets[t].arg, m, n) for t, m, n in MATRIX)
    target = targets[tid]
    exp = expected_for(target)
    check_references_agree(target, exp)
    res = load_cli(*load_argv(target.arg, mode, threads))
    check_json_report(res, target, exp, mode, threads)


@pytest.mark.parametrize("tid,mode", TEXT_MATRIX, ids=[f"{t}-{m}" for t, m in TEXT_MATRIX])
def test_load_digest_text(tid, mode, targets, load_cli, reference):
    load_cli.prefetch(load_argv(targets[t].arg, m, json_=False) for t, m in TEXT_MATRIX)
    target = targets[tid]
    exp = expected_for(target)
    check_digest_text(load_cli(*load_argv(target.arg, mode, json_=False)), target, exp)


CHUNK_MATRIX = [("pread", 1), ("pread", 2), ("mmap", 1), ("mmap", 2), ("uring", 1), ("uring", 2),
                ("direct", 1), ("direct", 2), ("zero-copy", 2)]


@pytest.mark.parametrize("mode,threads", CHUNK_MATRIX, ids=[f"{m}-t{n}" for m, n in CHUNK_MATRIX])
def test_load_small_chunks(mode, threads, targets, load_cli, reference):
    """--chunk-mb 1 on an 11 MB file with 2 MiB tensors: reads are split into chunks."""
    target = targets["fixture-mixed"]
    assert os.path.getsize(target.arg) > 2 << 20
    load_cli.prefetch(load_argv(target.arg, m, n, chunk_mb=1) for m, n in CHUNK_MATRIX)
    exp = expected_for(target)
    res = load_cli(*load_argv(target.arg, mode, threads, chunk_mb=1))
    check_json_report(res, target, exp, mode, threads, chunk_mb=1)


@pytest.mark.parametrize("name", VALID_CRAFTED)
def test_load_crafted_valid(name, targets, corpus, load_cli, reference):
    """Every valid crafted case, default io, --digest text (and exact rejections for the few
    that torch cannot represent)."""
    load_cli.prefetch(load_argv(targets[n].arg, json_=False) for n in VALID_CRAFTED)
    target = targets[name]
    res = load_cli(*load_argv(target.arg, json_=False))
    if name in LOAD_REJECTS:
        assert_load_error(res, LOAD_REJECTS[name], stdout_empty=True)
        return
    exp = expected_for(target)
    check_references_agree(target, exp)
    check_digest_text(res, target, exp)


def test_load_json_without_digest_and_io_auto(targets, load_cli, reference):
    target = targets["sharded"]
    res = load_cli("load", target.arg, "--quiet", "--json", "--io", "auto")
    check_json_report(res, target, expected_for(target), None, digest=False)


@pytest.mark.parametrize("extra", [("--io", "uring"), ("--io", "auto", "--direct", "on")],
                         ids=["uring", "auto-staged"])
def test_load_uring_unavailable_falls_back_to_pread(extra, targets, load_cli, reference):
    """Where io_uring cannot be set up, --io uring (and --io auto on the staged O_DIRECT path,
    which picks io_uring) reads with pread and says why, once."""
    target = targets["sharded"]
    res = load_cli.run_with_prefix(["env", "SHARDSTREAM_DISABLE_IO_URING=1"], "load", target.arg,
                                   "--quiet", "--json", "--digest", *extra)
    assert res.returncode == 0, res.describe()
    doc = res.json()
    assert doc["io"] == "pread", res.describe()
    assert "io-uring-unavailable" in doc["fallback"], res.describe()
    lines = [l for l in res.stderr.splitlines() if "io_uring unavailable" in l]
    assert len(lines) == 1, res.describe()
    exp = expected_for(target)
    got = {d["name"]: d["sha256"] for d in doc["digest"]}
    assert got == {name: e[3] for name, e in exp.items()}, res.describe()


@pytest.mark.parametrize("extra", [("--direct", "on"), ("--direct", "off"),
                                   ("--io", "uring", "--direct", "on", "--staging-mb", "8")],
                         ids=["direct", "buffered", "uring-direct-tiny-staging"])
def test_load_sink_discard_reads_every_byte(extra, targets, load_cli):
    """--sink discard runs the staged pipeline into staging and drops the bytes: all counted."""
    for tid in ("sharded", "fixture-mixed"):
        target = targets[tid]
        res = load_cli("load", target.arg, "--quiet", "--json", "--sink", "discard", *extra)
        assert res.returncode == 0, res.describe()
        doc = res.json()
        exp = expected_for(target)
        assert doc["sink"] == "discard", res.describe()
        assert doc["bytes"] == sum(e[2] for e in exp.values()), res.describe()
        assert doc["discarded_bytes"] == doc["bytes"], res.describe()
        assert doc["read_bytes"] >= doc["bytes"], res.describe()
        assert doc["direct"] is ("on" in extra), res.describe()
        assert doc["peak_slots_in_use"] <= doc["slots"], res.describe()


def test_load_sink_discard_refuses_what_needs_tensors(targets, load_cli):
    target = targets["sharded"]
    for extra in (["--digest"], ["--zero-copy"], ["--dtype", "f32"], ["--io", "mmap"]):
        res = load_cli("load", target.arg, "--quiet", "--sink", "discard", *extra)
        assert res.returncode == 2 and res.stdout == "", res.describe()
    res = load_cli("load", target.arg, "--quiet", "--sink", "gpu")
    assert res.returncode == 2, res.describe()
    # Less staging than one 4 MiB slot: a clear error, not a hang.
    mixed = targets["fixture-mixed"]
    res = load_cli("load", mixed.arg, "--quiet", "--sink", "discard", "--direct", "on",
                   "--staging-mb", "1")
    assert_load_error(res, "staging", file=mixed.arg)


def test_load_fixture_listing_matches(targets, load_cli):
    """The digest names/dtypes/shapes are those of the fixtures' own sum64 listings."""
    from support import parse_sum64

    for n in FIXTURES:
        listing = parse_sum64(FIXTURES_DIR / f"{n}.sum64.txt")
        res = load_cli(*load_argv(targets[f"fixture-{n}"].arg, "pread", 1))
        got = sorted((e["name"], e["dtype"], shape_text(e["shape"]) if isinstance(e["shape"], list)
                      else e["shape"]) for e in res.json()["digest"])
        want = sorted((name, dtype, shape_text(shape)) for name, dtype, shape in listing)
        assert got == want, f"{n}: digest entries differ from {n}.sum64.txt"


# ----------------------------------------------------------------------------------------------
# Errors


def assert_load_error(res, rule, stdout_empty=True, file=None, tensor=None, fragments=()):
    """Exit 1, exactly one stderr line `error: FILE: [tensor 'NAME': ]CAUSE (rule: RULE)`."""
    assert_no_crash(res)
    assert res.returncode == 1, f"expected exit 1 (rule {rule})\n{res.describe()}"
    if stdout_empty:
        assert res.stdout == "", f"partial output on stdout after a failure\n{res.describe()}"
    lines = res.stderr.splitlines()
    assert len(lines) == 1, f"stderr must be exactly one line, got {len(lines)}\n{res.describe()}"
    m = ERROR_LINE.match(lines[0])
    assert m, f"stderr is not `error: FILE: ... (rule: RULE)`\n{res.describe()}"
    if rule is not None:
        assert m["rule"] == rule, f"expected rule {rule!r}, got {m['rule']!r}\n{res.describe()}"
    if file is not None:
        assert same_path(m["file"], file) or Path(m["file"]).name == Path(file).name, \
            f"error names {m['file']!r}, expected {file}\n{res.describe()}"
    if tensor is not None:
        assert m["tensor"] == tensor, f"expected tensor {tensor!r}\n{res.describe()}"
    for fragment in fragments:
        assert fragment in lines[0], f"error line lacks {fragment!r}\n{res.describe()}"
    return m


def _first_case_per_rule():
    seen = {}
    for c in crafted.cases():
        if not c.valid:
            seen.setdefault(c.rule, c.name)
    return list(seen.values())


INVALID_SAMPLE = _first_case_per_rule()
# Of those, the ones whose whole error line is also compared with `inspect`'s (each inspect run
# costs a process start; test_differential already checks inspect's rule for every case).
COMPARE_WITH_INSPECT = {"header-utf8-invalid-byte", "data-offsets-hole", "sub-byte-f4-odd",
                        "data-truncated-one-byte", "index-shard-path-parent",
                        "duplicate-tensor-no-index"}


@pytest.mark.parametrize("name", INVALID_SAMPLE)
def test_load_invalid_same_rule_as_inspect(name, corpus, load_cli, cli):
    """One crafted invalid case per rule: load fails with inspect's rule, on the same file."""
    load_cli.prefetch(["load", corpus[n][1], "--digest", "--quiet"] for n in INVALID_SAMPLE)
    case, path, root = corpus[name]
    res = load_cli("load", path, "--digest", "--quiet")
    assert_load_error(res, case.rule, file=case.expected_error_path(root),
                      fragments=case.fragments)
    if name in COMPARE_WITH_INSPECT:
        ins = cli("inspect", path, "--json", "--tensors")
        assert (ins.json().get("error") or {}).get("rule") == case.rule, ins.describe()
        assert res.stderr.strip() == ins.stderr.strip(), \
            f"load and inspect error lines differ:\n  load:    {res.stderr.strip()!r}\n" \
            f"  inspect: {ins.stderr.strip()!r}"


def test_load_missing_shard(corpus, load_cli):
    case, path, root = corpus["index-shard-missing"]
    for flags in (["--digest"], ["--json", "--digest"], []):
        res = load_cli("load", path, "--quiet", *flags)
        m = assert_load_error(res, "index-shard-missing", stdout_empty=bool(flags),
                              fragments=("missing-shard.safetensors",))
        assert m["file"].endswith(INDEX), res.describe()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_load_permission_denied(tmp_path, load_cli, shardstream_bin):
    """An unreadable file: rule permission-denied, exit 1, nothing on stdout."""
    locked = tmp_path / "locked"
    f = _write(locked / "model.safetensors", crafted.st_file([("a", "F32", [4])]))
    f.chmod(0)
    locked.chmod(0o700)
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if not setpriv:
            pytest.skip("running as root and setpriv is missing: cannot drop privileges")
        nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = load_cli.run_with_prefix(nobody, "--help")
        if probe.returncode == 0:
            prefix = nobody  # nobody cannot traverse the 0700 folder nor read the 000 file
        else:
            # nobody cannot even start the binary (libtorch lives under /root); stay root but
            # without the capabilities that bypass file permissions.
            caps = "-dac_override,-dac_read_search"
            prefix = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]
    try:
        for flags in (["--digest"], ["--json", "--digest"]):
            res = load_cli.run_with_prefix(prefix, "load", f, "--quiet", *flags)
            assert_load_error(res, "permission-denied", file=f)
    finally:
        locked.chmod(0o755)
        f.chmod(0o644)


def test_load_device_cuda(corpus, load_cli):
    _, path, _ = corpus["valid-minimal"]
    for device in ("cuda", "cuda:0"):
        res = load_cli("load", path, "--device", device, "--digest", "--quiet")
        assert_no_crash(res)
        assert res.returncode == 1, res.describe()
        assert res.stdout == "", res.describe()
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") \
            and lines[0].endswith("(rule: device)"), res.describe()
    res = load_cli("load", path, "--device", "cpu", "--digest", "--quiet")
    assert res.returncode == 0, res.describe()


def test_load_f4_odd_last_dim(tmp_path, load_cli):
    """F4 [2, 3]: 6 values = 3 whole bytes (valid file), but torch's float4_e2m1fn_x2 needs an
    even last dim."""
    f = _write(tmp_path / "f4odd.safetensors",
               crafted.st_file([("ok", "F4", [3, 2]), ("w", "F4", [2, 3])]))
    for mode in ("pread", "zero-copy"):
        res = load_cli(*load_argv(f, mode, json_=False))
        assert_load_error(res, "f4-shape", file=f, tensor="w")


def test_load_f4_even_last_dim_is_halved(tmp_path, load_cli, reference):
    """F4 [3, 2] loads (as float4_e2m1fn_x2 [3, 1]); the digest keeps the file's shape."""
    f = _write(tmp_path / "f4ok.safetensors", crafted.st_file([("ok", "F4", [3, 2])]))
    target = Target("f4-even", f, [f])
    exp = expected_for(target)
    check_references_agree(target, exp)
    check_digest_text(load_cli(*load_argv(f, "pread", json_=False)), target, exp)


@pytest.mark.parametrize("case_name,dtype", [("valid-dtype-f6-e2m3", "bf16"),
                                             ("valid-dtype-f6-e3m2", "f16"),
                                             ("valid-all-dtypes", "f32")])
def test_load_f6_with_dtype_is_cast_error(case_name, dtype, corpus, load_cli):
    _, path, _ = corpus[case_name]
    res = load_cli("load", path, "--dtype", dtype, "--digest", "--quiet")
    assert_load_error(res, "cast", file=path)


USAGE_ERRORS = {
    "zero-copy-with-io-pread": ["--zero-copy", "--io", "pread"],
    "zero-copy-with-io-mmap": ["--io", "mmap", "--zero-copy"],
    "bad-io": ["--io", "direct"],
    "bad-dtype": ["--dtype", "f8"],
    "chunk-mb-zero": ["--chunk-mb", "0"],
    "threads-not-a-number": ["--threads", "two"],
    "unknown-flag": ["--no-such-flag"],
    "two-paths": ["EXTRA"],
}


@pytest.mark.parametrize("flags", list(USAGE_ERRORS.values()), ids=list(USAGE_ERRORS))
def test_load_usage_error_exits_2(flags, corpus, load_cli):
    _, path, _ = corpus["valid-minimal"]
    argvs = [["load", path, "--digest", "--quiet",
              *[str(path) if a == "EXTRA" else a for a in fl]] for fl in USAGE_ERRORS.values()]
    load_cli.prefetch(argvs + [["load", "--digest"]])
    res = load_cli("load", path, "--digest", "--quiet",
                   *[str(path) if a == "EXTRA" else a for a in flags])
    assert_no_crash(res)
    assert res.returncode == 2, f"expected a usage error\n{res.describe()}"
    assert res.stdout == "", res.describe()
    assert res.stderr.strip(), f"no message on stderr\n{res.describe()}"


def test_load_without_path_exits_2(load_cli):
    res = load_cli("load", "--digest")
    assert_no_crash(res)
    assert res.returncode == 2, res.describe()
    assert res.stdout == "", res.describe()
