"""safe_open and get_slice against safetensors.safe_open."""

from __future__ import annotations

import pytest
import torch
import safetensors
from conftest import FIXTURES, FIXTURES_DIR, raw

import shardstream

INDICES = [
    0, -1, 1, (0, 1), (slice(None), 1), (..., 1), (slice(0, 100),), (slice(0, 5, 2),),
    (1, ..., slice(1, 3)), slice(4, 100), (slice(3, 1),), (), ..., (slice(None), slice(1, 7, 3)),
    (slice(1, 5), 2, slice(None, None, 2)), (-2, -1), (slice(-4, -1),), (slice(None, None, 4),),
]
BAD_INDICES = [6, -7, (0, 0, 0, 0), (slice(None, None, -1),), (slice(0, 2, 0),)]


@pytest.mark.parametrize("name", FIXTURES)
def test_keys_metadata_tensors(name):
    path = str(FIXTURES_DIR / f"{name}.safetensors")
    with safetensors.safe_open(path, "pt") as ref, shardstream.safe_open(path, "pt") as ours:
        assert ours.keys() == ref.keys()
        assert ours.offset_keys() == ref.offset_keys()
        assert ours.metadata() == ref.metadata()
        for key in ref.keys()[:200]:
            a, b = ours.get_tensor(key), ref.get_tensor(key)
            assert a.dtype == b.dtype and a.shape == b.shape and raw(a) == raw(b), key
            s, rs = ours.get_slice(key), ref.get_slice(key)
            assert s.get_shape() == rs.get_shape() and s.get_dtype() == rs.get_dtype()


def test_get_tensors(sample):
    path, _ = sample
    with safetensors.safe_open(str(path), "pt") as ref:
        want = {k: ref.get_tensor(k) for k in ref.keys()}
    got = shardstream.safe_open(path).get_tensors()
    assert sorted(got) == sorted(want)
    for k in want:
        assert raw(got[k]) == raw(want[k])


def test_metadata_absent(tmp_path):
    path = tmp_path / "m.safetensors"
    safetensors.torch.save_file({"a": torch.ones(2)}, str(path))
    assert shardstream.safe_open(path).metadata() is None


@pytest.mark.parametrize("index", INDICES, ids=repr)
@pytest.mark.parametrize("name", ["fused", "half", "bf", "vec"])
def test_slices_match_reference(sample, name, index):
    path, _ = sample
    with safetensors.safe_open(str(path), "pt") as ref:
        rs = ref.get_slice(name)
        try:
            want = rs[index]
        except Exception as exc:  # noqa: BLE001
            with pytest.raises(type(exc)):
                shardstream.safe_open(path).get_slice(name)[index]
            return
    got = shardstream.safe_open(path).get_slice(name)[index]
    assert got.dtype == want.dtype and got.shape == want.shape and raw(got) == raw(want)


@pytest.mark.parametrize("index", BAD_INDICES, ids=repr)
def test_bad_slices_raise_like_reference(sample, index):
    path, _ = sample
    with safetensors.safe_open(str(path), "pt") as ref:
        with pytest.raises(Exception) as want:
            ref.get_slice("fused")[index]
    with pytest.raises(type(want.value)):
        shardstream.safe_open(path).get_slice("fused")[index]


def test_scalar_slice(sample):
    path, _ = sample
    s = shardstream.safe_open(path).get_slice("scalar")
    assert s.get_shape() == [] and raw(s[...]) == raw(torch.tensor(2.5))
    with pytest.raises(IndexError):
        s[0]


def test_slice_reads_only_its_bytes(sample):
    """The core plans to move exactly the selected elements (its progress total; small gaps
    between runs may be read through, as the core coalesces reads)."""
    path, tensors = sample
    got = torch.empty(2, 4, 4)
    seen = []
    shardstream.fill(path, [("fused", (slice(1, 3), slice(None), slice(2, 6)), got)],
                     progress=lambda done, total: seen.append((done, total)))
    assert torch.equal(got, tensors["fused"][1:3, :, 2:6])
    assert seen[-1][1] == got.numel() * 4


def test_missing_and_folder(tmp_path, sample):
    with pytest.raises(FileNotFoundError):
        shardstream.safe_open(tmp_path / "none.safetensors")
    with pytest.raises(OSError):
        shardstream.safe_open(tmp_path)
    path, _ = sample
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.safe_open(path).get_tensor("nope")
    assert info.value.rule == "missing-tensor"
    assert isinstance(info.value, safetensors.SafetensorError)
