"""iter_tensors: completion order, read-ahead bound, subsets, early close."""

from __future__ import annotations

import gc

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
