"""iter_tensors: completion order, read-ahead bound, subsets, early close."""

from __future__ import annotations

import ctypes
import gc
import json
import mmap
import os

import pytest
import torch
import safetensors
import safetensors.torch
from conftest import FIXTURES_DIR, fd_count, raw, task_count

import shardstream


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    path = tmp_path_factory.mktemp("iter") / "layers.safetensors"
    g = torch.Generator().manual_seed(1)
    tensors = {f"layer.{i}.w": torch.randn(64, 64, generator=g) for i in range(40)}  # 16 KiB each
    tensors["tail.bias"] = torch.arange(5, dtype=torch.int32)
    safetensors.torch.save_file(tensors, str(path))
    return path


def test_offset_order_and_bytes():
    path = FIXTURES_DIR / "many_10k.safetensors"
    with safetensors.safe_open(str(path), "pt") as ref:
        order = ref.offset_keys()
        got = list(shardstream.iter_tensors(path, staging_mb=1))
        assert [n for n, _ in got] == order
        for name, t in got[::97]:
            assert raw(t) == raw(ref.get_tensor(name))


def test_read_ahead_bound(layered):
    budget_mb = 0.1  # ~100 KiB: 6 tensors of 16 KiB
    budget = int(budget_mb * (1 << 20))
    it = shardstream.iter_tensors(layered, staging_mb=budget_mb)
    taken = 0
    for name, t in it:
        taken += t.numel() * t.element_size()
        assert it.bytes_read - taken <= budget, "read too far ahead"
    assert it.peak_ahead_bytes <= budget
    assert it.tensors_read == 41


def test_subsets_read_only_what_they_name(layered):
    ref = safetensors.torch.load_file(str(layered))
    names = ["layer.3.w", "tail.bias", "layer.10.w"]
    it = shardstream.iter_tensors(layered, names=names)
    got = dict(it)
    assert sorted(got) == sorted(names)
    assert it.bytes_read == sum(ref[n].numel() * ref[n].element_size() for n in names)
    for n in names:
        assert torch.equal(got[n], ref[n])
    it = shardstream.iter_tensors(layered, names=lambda n: n.endswith(".7.w"))
    assert [n for n, _ in it] == ["layer.7.w"]
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.iter_tensors(layered, names=["nope"])
    assert info.value.rule == "missing-tensor"


def test_early_close_leaves_nothing(layered):
    list(shardstream.iter_tensors(layered))  # warm-up: oneTBB's workers start once
    tasks, fds = task_count(), fd_count()
    it = shardstream.iter_tensors(layered, staging_mb=0.05)
    name, _ = next(it)
    assert name == "layer.0.w"
    it.close()
    assert list(it) == []
    with shardstream.iter_tensors(layered, staging_mb=0.05) as it2:
        next(it2)
    it3 = shardstream.iter_tensors(layered, staging_mb=0.05)
    next(it3)
    del it3
    gc.collect()
    assert task_count() <= tasks and fd_count() == fds  # oneTBB may retire idle workers


def test_owned_tensors(layered):
    a = dict(shardstream.iter_tensors(layered, staging_mb=0.05))
    b = safetensors.torch.load_file(str(layered))
    for k in b:
        assert torch.equal(a[k], b[k])
        assert a[k].untyped_storage().nbytes() == b[k].numel() * b[k].element_size()


# --- Owned copies (copy=True, and the same iterator serves device="cuda"): tensor by tensor. ---


def _shards(tmp_path, per_file: int = 12):
    """Two shards and their index; within each file safetensors orders data by dtype and name,
    so the offset order is not the names' order."""
    g = torch.Generator().manual_seed(7)
    weight_map = {}
    for k in range(2):
        tensors = {}
        for i in range(per_file):
            n = k * per_file + i
            dtype = (torch.float32, torch.bfloat16, torch.int8)[n % 3]
            t = torch.randn(32 + n, 48, generator=g)
            tensors[f"model.layers.{n}.w"] = (t * 50).to(dtype) if dtype == torch.int8 else \
                t.to(dtype)
        name = f"model-{k + 1:05d}-of-00002.safetensors"
        safetensors.torch.save_file(tensors, str(tmp_path / name))
        weight_map.update({t: name for t in tensors})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index, [tmp_path / f"model-0000{k + 1}-of-00002.safetensors" for k in range(2)]


@pytest.mark.parametrize("io,direct", [("pread", False), ("uring", False), ("uring", True),
                                       ("pread", True)])
def test_copies_come_in_offset_order_files_in_index_order(tmp_path, io, direct):
    index, files = _shards(tmp_path)
    order, ref = [], {}
    for f in files:
        with safetensors.safe_open(str(f), "pt") as r:
            order += r.offset_keys()
            ref.update({n: r.get_tensor(n) for n in r.keys()})
    it = shardstream.iter_tensors(index, copy=True, io=io, direct=direct, staging_mb=0.2)
    got = list(it)
    assert [n for n, _ in got] == order
    for name, t in got:
        assert raw(t) == raw(ref[name]), name
    assert it.tensors_read == len(order)
    # A batch's first tensor is ready once it is complete: at least one, at most the batch.
    assert len(it.landed_at_first) > 1
    assert all(0 < done <= size for done, size in it.landed_at_first)


def test_first_tensor_comes_before_its_batch_has_landed(tmp_path, monkeypatch):
    """One batch of four 8 MiB tensors whose last one can never land: a test seam over
    _core.start_fill points its destination at a read-only page, so the real engine's read into
    it fails (EFAULT). Per batch, nothing would come out; tensor by tensor, the tensors that
    landed come out in order, then the error. One pread reader (threads=1) reads the 16 MiB
    chunks in file order, so the first chunk (t0, t1) lands before the failing one is read: no
    timing is involved."""
    path = tmp_path / "four.safetensors"
    tensors = {f"t{i}": torch.full((2 << 20,), float(i + 1)) for i in range(4)}  # 8 MiB each
    safetensors.torch.save_file(tensors, str(path))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    size = 8 << 20
    read_only = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1,
                          0)
    assert read_only not in (None, ctypes.c_void_p(-1).value)
    real_start_fill = shardstream._core.start_fill

    def start_fill(core, targets, opts, *args):
        targets = list(targets)
        last = list(targets[-1])
        last[2] = read_only
        targets[-1] = tuple(last)
        return real_start_fill(core, targets, opts, *args)

    monkeypatch.setattr(shardstream._core, "start_fill", start_fill)
    it = shardstream.iter_tensors(path, copy=True, threads=1, io="pread", direct=False)
    got = []
    with pytest.raises(shardstream.LoadError):
        for name, t in it:
            got.append(name)
            assert torch.equal(t, tensors[name]), name
    assert got[:1] == ["t0"] and got == ["t0", "t1", "t2"][:len(got)]
    done, size = it.landed_at_first[0]
    assert size == 4 and done < size  # ready while its batch had not landed
    libc.munmap(ctypes.c_void_p(read_only), ctypes.c_size_t(8 << 20))


def test_kept_copies_stay_intact_while_iteration_reuses_the_pool(layered):
    ref = safetensors.torch.load_file(str(layered))
    budget_mb = 0.05  # ~3 tensors of 16 KiB: the pool must recycle
    it = shardstream.iter_tensors(layered, copy=True, staging_mb=budget_mb, threads=1)
    kept, taken = {}, 0
    for i, (name, t) in enumerate(it):
        taken += t.numel() * t.element_size()
        assert it.bytes_read - taken <= int(budget_mb * (1 << 20)), "read too far ahead"
        if i % 4 == 0:
            kept[name] = t
        elif i % 4 == 1:
            kept[name] = t[3:9]  # a view keeps its whole buffer out of the pool
        del t
    assert it.peak_ahead_bytes <= int(budget_mb * (1 << 20))
    assert it.pool_stats()["reused"] > 0
    for name, t in kept.items():
        want = ref[name] if t.shape == ref[name].shape else ref[name][3:9]
        assert torch.equal(t, want), name
