"""Every dtype × dtype pair through shardstream.fill: the verdict is the core's one cast table
(`_core.cast_refusal`, the same function the C++ library asks: tests/integration/dtype_test.cc
walks the same pairs through LoadInto), a refused pair fails with rule "cast" before any read,
and an accepted one equals torch's `.to()` bit for bit (NaN for NaN)."""

from __future__ import annotations

import json
import struct

import pytest
import torch

import shardstream
from shardstream import _core, _dtypes

NAMES = sorted(_core.dtypes())
ELEMENTS = 64


def source_bytes(name: str) -> bytes:
    """ELEMENTS values of dtype `name` as raw bytes: every byte pattern for 8-bit types, seeded
    random bits otherwise, so NaNs, infinities, subnormals and negative integers all occur."""
    bits = _core.dtypes()[name][0]
    size = ELEMENTS * bits // 8
    if name == "BOOL":
        return bytes(i % 2 for i in range(size))
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    return torch.randint(0, 256, (size,), generator=g, dtype=torch.int32).to(torch.uint8).numpy(
    ).tobytes()


def write(path, name: str, data: bytes) -> None:
    """A one-tensor safetensors file of dtype `name` (written here, as the format says: every
    dtype, F6 included, which torch cannot hold)."""
    header = json.dumps({"v": {"dtype": name, "shape": [ELEMENTS],
                               "data_offsets": [0, len(data)]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def as_torch(name: str, data: bytes) -> torch.Tensor:
    """The bytes as the torch tensor safetensors.torch gives (F4: pairs in float4_e2m1fn_x2)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(_dtypes.TORCH[name])


def same_bits_or_both_nan(got: torch.Tensor, want: torch.Tensor) -> None:
    if want.is_floating_point() and want.element_size() > 1:
        nan = torch.isnan(want.double())
        assert torch.equal(torch.isnan(got.double()), nan), "NaN-ness differs"
        got, want = got[~nan], want[~nan]
    assert got.contiguous().view(torch.uint8).tolist() == want.contiguous().view(
        torch.uint8).tolist()


@pytest.mark.parametrize("dst", NAMES)
@pytest.mark.parametrize("src", NAMES)
def test_every_pair_follows_the_core_verdict(src, dst, tmp_path):
    data = source_bytes(src)
    path = tmp_path / "v.safetensors"
    write(path, src, data)
    refusal = _core.cast_refusal(src, dst)
    assert _dtypes.cast_refusal(src, dst) == refusal
    if dst not in _dtypes.TORCH:  # F6: no torch dtype to fill; its own bytes, as uint8 (below)
        assert refusal or src == dst
        return
    if src not in _dtypes.TORCH:
        assert refusal, f"{src} -> {dst} accepted without a torch source dtype"
    shape = (ELEMENTS // 2,) if dst == "F4" else (ELEMENTS,)
    out = torch.zeros(shape, dtype=_dtypes.TORCH[dst])
    if refusal:
        with pytest.raises(shardstream.LoadError) as info:
            shardstream.fill(path, {"v": out})
        assert info.value.rule in ("cast", "shape"), info.value
        if src in _dtypes.TORCH and (src == "F4") == (dst == "F4"):
            assert info.value.rule == "cast" and refusal in str(info.value)
        assert not out.view(torch.uint8).any(), "a refused cast wrote bytes"
        return
    shardstream.fill(path, {"v": out})
    same_bits_or_both_nan(out, as_torch(src, data).to(_dtypes.TORCH[dst]))


def test_raw_f6_bytes_fill_a_byte_tensor(tmp_path):
    """F6 has no torch dtype: fill takes its bytes as they are stored, as the C++ LoadFile does
    (load_file and safe_open refuse it, as safetensors does)."""
    data = source_bytes("F6_E2M3")
    path = tmp_path / "v.safetensors"
    write(path, "F6_E2M3", data)
    with pytest.raises(shardstream.LoadError):
        shardstream.load_file(path)
    out = torch.zeros(len(data), dtype=torch.uint8)
    shardstream.fill(path, {"v": out})
    assert out.numpy().tobytes() == data
