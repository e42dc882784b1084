"""safetensors dtype names ↔ torch dtypes, as safetensors.torch maps them."""

from __future__ import annotations

from typing import Optional

import torch

_NAMES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
    "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32",
    "F64": "float64", "I64": "int64", "U64": "uint64", "C64": "complex64",
    "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F4": "float4_e2m1fn_x2",
}
TORCH: dict = {name: getattr(torch, attr) for name, attr in _NAMES.items() if hasattr(torch, attr)}
NAME: dict = {dtype: name for name, dtype in TORCH.items()}
# Host casts the core does itself (python/src/host_cast.h): floating point, as LoadFile's dtype.
CASTABLE = ("F64", "F32", "F16", "BF16")
SUB_BYTE = ("F4", "F6_E2M3", "F6_E3M2")


_INT64_MAX = (1 << 63) - 1


def torch_layout(dtype: str, shape: tuple, nbytes: int) -> tuple:
    """(torch dtype, shape, None) a checkpoint tensor loads as, or (None, None, (rule, reason))
    for what torch cannot hold, which safetensors.torch refuses too: F6 (no torch dtype), F4 with
    an odd last dimension (float4_e2m1fn_x2 packs two values a byte, halving it), dimensions
    beyond int64."""
    if any(d > _INT64_MAX for d in shape):
        return None, None, ("torch-shape", f"shape {list(shape)} does not fit torch's int64 sizes")
    if dtype == "F4":
        if not shape or shape[-1] % 2:
            return None, None, ("f4-shape", f"F4 needs an even last dimension for torch's "
                                f"float4_e2m1fn_x2, got {list(shape)}")
        return TORCH["F4"], tuple(shape[:-1]) + (shape[-1] // 2,), None
    if dtype not in TORCH:
        return None, None, ("torch-dtype", f"{dtype} has no torch dtype")
    return TORCH[dtype], tuple(shape), None


def name_of(dtype: torch.dtype) -> Optional[str]:
    return NAME.get(dtype)
