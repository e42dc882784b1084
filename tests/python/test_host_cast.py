"""The core's host dtype conversion (engine/cast.h), through shardstream.fill, against torch's
`.to()`: exhaustively for 16-bit and 8-bit sources, on edge values and random bits for 32/64-bit
ones."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

import shardstream

FLOATS = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16}


def all_values(name: str) -> torch.Tensor:
    if name in ("F16", "BF16"):
        return torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(FLOATS[name])
    if name == "F8_E4M3":
        return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn)
    if name == "F8_E5M2":
        return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e5m2)
    g = torch.Generator().manual_seed(3)
    if name == "F32":
        bits = torch.randint(-(1 << 31), 1 << 31, (1 << 18,), generator=g, dtype=torch.int64)
        edge = torch.tensor([0.0, -0.0, 65504.0, 65519.99, 65520.0, 6.1e-5, 5.96e-8, 2.98e-8,
                             1e-40, float("inf"), -float("inf"), 3.4e38, 1.0 + 2 ** -8,
                             1.0 + 3 * 2 ** -8, 1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11])
        return torch.cat([bits.to(torch.int32).view(torch.float32), edge])
    bits = torch.randint(-(1 << 62), 1 << 62, (1 << 16,), generator=g, dtype=torch.int64)
    return bits.view(torch.float64)


def same_bits_or_both_nan(got: torch.Tensor, want: torch.Tensor) -> None:
    nan = torch.isnan(want.float() if want.dtype != torch.float64 else want)
    assert torch.equal(torch.isnan(got.double()), nan.to(torch.bool)), "NaN-ness differs"
    g = got[~nan].contiguous().view(torch.uint8)
    w = want[~nan].contiguous().view(torch.uint8)
    mismatch = (g != w).nonzero()
    assert mismatch.numel() == 0, f"{mismatch.numel()} bytes differ"


def host_cast(values: torch.Tensor, dst: torch.dtype, tmp_path) -> torch.Tensor:
    """`values` written by safetensors, read back by shardstream.fill into `dst` on the CPU."""
    path = tmp_path / "values.safetensors"
    safetensors.torch.save_file({"v": values.contiguous()}, str(path))
    out = torch.empty(values.shape, dtype=dst)
    shardstream.fill(path, {"v": out})
    return out


@pytest.mark.parametrize("src", ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"])
@pytest.mark.parametrize("dst", ["F64", "F32", "F16", "BF16"])
def test_matches_torch(src, dst, tmp_path):
    if src == dst:
        pytest.skip("a copy")
    values = all_values(src)
    got = host_cast(values, FLOATS[dst], tmp_path)
    same_bits_or_both_nan(got, values.to(FLOATS[dst]))


def test_refuses_other_pairs(tmp_path):
    path = tmp_path / "values.safetensors"
    safetensors.torch.save_file({"f": torch.zeros(2), "c": torch.zeros(1, dtype=torch.complex64)},
                                str(path))
    with pytest.raises(shardstream.LoadError) as info:
        shardstream.fill(path, {"f": torch.empty(2, dtype=torch.int64)})
    assert info.value.rule == "cast"
    with pytest.raises(shardstream.LoadError):
        shardstream.fill(path, {"c": torch.empty(1, dtype=torch.float32)})
