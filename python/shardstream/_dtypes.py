"""safetensors dtype names ↔ torch dtypes, as safetensors.torch maps them, and ↔ numpy dtypes, as
safe_open(framework="np") maps them."""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch

from . import _core

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
# Refusals that safetensors makes in the same words (its torch and numpy dtype lookups): safe_open
# and load_file raise them with safetensors' text.
SAFETENSORS_WORDED = ("f4-shape", "torch-dtype")


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
            return None, None, ("f4-shape", "f4_x2 dtype requires that the last dim be divisible "
                                f"by 2 in torch: got {list(shape)}")
        return TORCH["F4"], tuple(shape[:-1]) + (shape[-1] // 2,), None
    if dtype not in TORCH:
        return None, None, ("torch-dtype", f"Dtype not understood: {dtype}")
    return TORCH[dtype], tuple(shape), None


def name_of(dtype: torch.dtype) -> Optional[str]:
    return NAME.get(dtype)


@functools.lru_cache(maxsize=None)
def bits(dtype: str) -> int:
    """Bits per element of a checkpoint dtype, from io/'s table (through the extension)."""
    return _core.dtype_bits(dtype)


def numpy_dtype(dtype: str) -> Any:
    """The numpy dtype safe_open(framework="np") gives a checkpoint dtype, looked up as
    safetensors 0.8 looks it up, so with its verdicts: "BF16" is ``numpy.dtype("bfloat16")``
    (TypeError unless a package such as ml_dtypes has registered it), the F8 and F4 names are
    numpy attributes (AttributeError where numpy lacks them, as it does today), "BOOL" is
    `bool`; a dtype with no numpy name at all (F6) is None (the caller refuses it)."""
    import numpy

    if dtype == "BOOL":
        return numpy.dtype(bool)
    if dtype == "BF16":
        return numpy.dtype("bfloat16")
    if dtype not in _NAMES:
        return None
    return numpy.dtype(getattr(numpy, _NAMES[dtype]))
