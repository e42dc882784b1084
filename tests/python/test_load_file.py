"""load_file against safetensors.torch.load_file: fixtures, generated and crafted files."""

from __future__ import annotations

import json

import pytest
import torch
import safetensors
import safetensors.torch
from conftest import FIXTURES, FIXTURES_DIR, assert_same, crafted, raw

import shardstream

IO_MODES = ["auto", "pread", "mmap", "uring"]


@pytest.mark.parametrize("io", IO_MODES)
@pytest.mark.parametrize("name", FIXTURES)
def test_fixtures_match_reference(name, io):
    path = FIXTURES_DIR / f"{name}.safetensors"
    assert_same(shardstream.load_file(path, io=io), safetensors.torch.load_file(str(path)))


@pytest.mark.parametrize("direct", ["on", "off"])
def test_direct_and_buffered_match(direct):
    path = FIXTURES_DIR / "mixed.safetensors"
    assert_same(shardstream.load_file(path, direct=direct),
                safetensors.torch.load_file(str(path)))


def test_generated_edge_cases(tmp_path):
    """0-d and empty tensors, unaligned offsets, non-ASCII names, every torch dtype."""
    tensors = {
        "scalar": torch.tensor(-1.5, dtype=torch.float64),
        "empty": torch.zeros(0, 5, dtype=torch.float16),
        "odd_bytes": torch.arange(3, dtype=torch.uint8),  # leaves the next tensor unaligned
        "après/ü.名前": torch.arange(7, dtype=torch.int16),
        "bool": torch.tensor([True, False, True]),
        "c64": torch.randn(4, dtype=torch.complex64),
        "u32": torch.arange(5).to(torch.uint32),
        "f8": torch.randn(6).to(torch.float8_e4m3fn),
        "big": torch.randn(300, 301),
    }
    path = tmp_path / "edge.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    assert_same(shardstream.load_file(path), safetensors.torch.load_file(str(path)))


def test_sharded_index_and_folder(tmp_path):
    shards = {"a.safetensors": {"x": torch.randn(4, 4), "y": torch.arange(3)},
              "b.safetensors": {"z": torch.randn(2).to(torch.bfloat16)}}
    weight_map = {}
    reference = {}
    for file, tensors in shards.items():
        safetensors.torch.save_file(tensors, str(tmp_path / file))
        reference.update(safetensors.torch.load_file(str(tmp_path / file)))
        weight_map.update({k: file for k in tensors})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for target in (index, tmp_path):
        assert_same(shardstream.load_file(target), reference)


@pytest.mark.parametrize("case", crafted.file_cases(), ids=lambda c: c.name)
def test_crafted_files_same_verdict(case, corpus):
    _, path, _ = corpus[case.name]
    try:
        ref = safetensors.torch.load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the reference's verdict, whatever its type
        ref_error = exc
    else:
        ref_error = None
    if case.valid and ref_error is None:
        assert_same(shardstream.load_file(path), ref)
        return
    if case.valid:
        # A valid file that torch cannot hold (F6, an odd F4 dimension, sizes beyond int64):
        # safetensors.torch refuses it, and so does shardstream.
        with pytest.raises(shardstream.LoadError) as info:
            shardstream.load_file(path)
        assert info.value.rule in ("torch-dtype", "f4-shape", "torch-shape"), str(info.value)
        return
    assert ref_error is not None, "the reference accepts an invalid case"
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.load_file(path)
    e = info.value
    assert e.rule == case.rule
    assert isinstance(e, safetensors.SafetensorError) and isinstance(e, ValueError)
    assert e.file == str(path)
    assert str(e).startswith(f"{path}: ") and str(e).endswith(f"(rule: {case.rule})")


@pytest.mark.parametrize("case", crafted.dir_cases(), ids=lambda c: c.name)
def test_crafted_checkpoints(case, corpus):
    _, path, root = corpus[case.name]
    if case.valid:
        loaded = shardstream.load_file(path)
        ref = {}
        for shard in case.shard_paths(root):
            ref.update(safetensors.torch.load_file(str(shard)))
        assert loaded and set(loaded) <= set(ref)
        for name, t in loaded.items():
            assert t.dtype == ref[name].dtype and raw(t) == raw(ref[name]), name
        return
    if case.rule == "not-found":
        with pytest.raises(FileNotFoundError):
            shardstream.load_file(path)
        return
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.load_file(path)
    assert info.value.rule == case.rule


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        shardstream.load_file(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtype_casts_floats_like_torch(sample, dtype):
    path, _ = sample
    ref = safetensors.torch.load_file(str(path))
    ours = shardstream.load_file(path, dtype=dtype)
    for name, t in ref.items():
        want = t.to(dtype) if t.dtype in (torch.float32, torch.float16, torch.bfloat16,
                                          torch.float64) else t
        assert ours[name].dtype == want.dtype, name
        assert raw(ours[name]) == raw(want), name


def test_backend_accepted(sample):
    path, _ = sample
    for backend in (None, "mmap", "pread"):
        assert_same(shardstream.load_file(path, backend=backend),
                    safetensors.torch.load_file(str(path)))
    with pytest.raises(ValueError):
        shardstream.load_file(path, backend="nope")


def test_device_without_gpu(sample):
    path, _ = sample
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: tests/python/test_gpu.py covers cuda")
    for device in ("cuda", "cuda:0", 0):
        with pytest.raises(shardstream.LoadError) as info:
            shardstream.load_file(path, device=device)
        assert info.value.rule == "device"


def test_progress_callable(sample):
    path, _ = sample
    seen = []
    shardstream.load_file(path, progress=lambda done, total: seen.append((done, total)))
    total = sum(t.numel() * t.element_size() for t in safetensors.torch.load_file(str(path)).values())
    assert seen and seen[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_progress_true(sample, capsys):
    pytest.importorskip("tqdm")
    path, _ = sample
    assert_same(shardstream.load_file(path, progress=True),
                safetensors.torch.load_file(str(path)))
