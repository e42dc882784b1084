"""safetensors-style indexing: an index → per-dimension (start, step, count), with the
verdicts of safetensors 0.8 (IndexError, ValueError). The runs themselves are the engine's
(engine/runs.h, SliceRuns), computed in the extension from these and the destination's strides.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional, Sequence

_INT64 = (-(1 << 63), (1 << 63) - 1)


@dataclass(frozen=True)
class Dim:
    start: int
    step: int
    count: int
    keep: bool  # False for an int index: the dimension is dropped from the result


class Unsupported(Exception):
    """An index outside safetensors' slicing (None, tensors, lists...): read whole, then index."""


def normalize_index(index, shape: Sequence[int]) -> list:
    """Per-dimension Dims for `index` on a tensor of `shape`, with safetensors 0.8's verdicts:
    ints (negative too; out of range: IndexError), slices with positive steps (ends clamped; a
    negative or zero step: ValueError), one `...`."""
    items = index if isinstance(index, tuple) else (index,)
    for item in items:
        if item is not Ellipsis and not isinstance(item, slice) and _int(item) is None:
            raise Unsupported(type(item).__name__)  # None, bools, tensors, lists: torch's own
    if sum(1 for i in items if i is Ellipsis) > 1:
        raise Unsupported("several ellipses")
    explicit = sum(1 for i in items if i is not Ellipsis)
    if explicit > len(shape):
        if not shape:
            raise IndexError("invalid index of a 0-dim tensor")
        raise IndexError(f"too many indices for tensor of dimension {len(shape)}")
    dims: list = []
    for item in items:
        if item is Ellipsis:
            for _ in range(len(shape) - explicit):
                n = shape[len(dims)]
                dims.append(Dim(0, 1, n, True))
            continue
        n = shape[len(dims)]
        if isinstance(item, slice):
            if any(_beyond_int64(v) for v in (item.start, item.stop, item.step)):
                raise Unsupported("a slice bound beyond int64")  # torch's own verdict
            if item.step is not None:
                step = operator.index(item.step)
                if step == 0:
                    raise ValueError("slice step cannot be zero")
                if step < 0:
                    raise ValueError("step must be greater than zero")
            start, stop, step = item.indices(n)
            dims.append(Dim(start, step, len(range(start, stop, step)), True))
        else:
            i = _int(item)
            if i < -n or i >= n:
                raise IndexError(f"index {i} is out of bounds for dimension {len(dims)} "
                                 f"with size {n}")
            dims.append(Dim(i % n, 1, 1, False))
    while len(dims) < len(shape):
        dims.append(Dim(0, 1, shape[len(dims)], True))
    return dims


def _int(item: Any) -> Optional[int]:
    # An int index as torch takes one (ints, numpy integer scalars, 0-d integer tensors, other
    # __index__ objects), or None for what torch indexes otherwise: bools, None, and tensors and
    # arrays of one dimension or more (advanced indexing, even with one element).
    if isinstance(item, bool) or item is None or getattr(item, "ndim", 0) != 0:
        return None
    try:
        return operator.index(item)
    except TypeError:
        return None


def _beyond_int64(value: Any) -> bool:
    try:
        return value is not None and not _INT64[0] <= operator.index(value) <= _INT64[1]
    except TypeError:
        return False


def whole(shape: Sequence[int]) -> list:
    return [Dim(0, 1, n, True) for n in shape]


def result_shape(dims: Sequence[Dim]) -> tuple:
    return tuple(d.count for d in dims if d.keep)
