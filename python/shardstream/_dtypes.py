"""safetensors dtype names ↔ torch dtypes, as safetensors.torch maps them, and ↔ numpy dtypes, as
safe_open(framework="np") maps them. Derived from the core's one dtype table (io/dtype.h, through
the extension): bits, kind and torch dtype name per safetensors name; which pairs a load converts
is the core's verdict too (cast_refusal)."""

from __future__ import annotations

from typing import Any, Optional

import torch

from . import _core

# name -> (bits, kind, torch dtype name or "")
TABLE: dict = _core.dtypes()
TORCH: dict = {name: getattr(torch, attr) for name, (_, _, attr) in TABLE.items()
               if attr and hasattr(torch, attr)}
NAME: dict = {dtype: name for name, dtype in TORCH.items()}
# What a load's `dtype=` converts: the floating-point tensors (as LoadFile's dtype option).
FLOATING = tuple(name for name, (_, kind, _) in TABLE.items() if kind in ("float", "float8"))
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


def bits(dtype: str) -> int:
    """Bits per element of a checkpoint dtype."""
    return TABLE[dtype][0]


def cast_refusal(source: str, destination: str) -> str:
    """Why a load does not convert `source` into `destination`, or "" when it does (the core's
    verdict, the same for every front end)."""
    return _core.cast_refusal(source, destination)


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
    attr = TABLE[dtype][2] if dtype in TABLE else ""
    if not attr:
        return None
    return numpy.dtype(getattr(numpy, attr))
