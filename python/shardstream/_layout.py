"""safetensors-style indexing: an index → per-dimension (start, step, count), with the
verdicts of safetensors 0.8: torch's for framework "pt" (normalize_index), safetensors' own slicer's
for framework "np" (numpy_index). The runs themselves are the engine's (engine/runs.h, SliceRuns),
computed in the extension from these and the destination's strides.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from ._errors import safetensors_error

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


# safe_open(framework="np") slices with safetensors' own slicer (its Rust crate), whose verdicts
# differ from torch's: slice bounds are unsigned and must lie inside the dimension, ints are 32-bit,
# lists other than [] are refused, and sub-byte dtypes must be cut on byte boundaries. Its errors
# are SafetensorError with its text, or the builtins its argument conversion raises.
_I32 = (-(1 << 31), (1 << 31) - 1)
_U64_MAX = (1 << 64) - 1
_UNSUPPORTED = "Unsupported slice index at position {}: expected slice, int, or ellipsis"


@dataclass(frozen=True)
class _Narrow:
    start: Optional[int]  # None: from 0
    stop: Optional[int]  # None: to the end
    step: int

    def __str__(self) -> str:
        start = "" if self.start is None else self.start
        stop = "" if self.stop is None else self.stop
        return f"{start}:{stop}" if self.step == 1 else f"{start}:{stop}:{self.step}"


def _slice_error(text: str) -> Exception:
    return safetensors_error(text, rule="slice")


def _unsigned(value: Any) -> Optional[int]:
    # A slice bound, converted as safetensors converts it (a Rust usize).
    if value is None:
        return None
    v = operator.index(value)
    if v < 0:
        raise OverflowError("can't convert negative int to unsigned")
    if v > _U64_MAX:
        raise OverflowError("int too big to convert")
    return v


def _step(value: Any) -> int:
    if value is None:
        return 1
    v = operator.index(value)
    if not _INT64[0] <= v <= _INT64[1]:
        raise OverflowError("Python int too large to convert to C long")
    if v <= 0:
        raise _slice_error(f"Slice step must be a positive integer, got {v}")
    return v


def _select(item: Any) -> Optional[int]:
    # An int index as safetensors takes it (a Rust i32, through __index__), or None.
    try:
        i = operator.index(item)
    except Exception:  # noqa: BLE001 - whatever __index__ raises, safetensors calls it unsupported
        return None
    return i if _I32[0] <= i <= _I32[1] else None


def _indexers(index: Any, shape: Sequence[int]) -> list:
    # safetensors' parse_indexers: per given dimension an int (resolved) or a _Narrow.
    if isinstance(index, list):
        if index:
            raise _slice_error("Non empty lists are not implemented")
        return [_Narrow(0, 0, 1)]
    items = index if isinstance(index, tuple) else (index,)
    if sum(1 for i in items if i is Ellipsis) > 1:
        raise _slice_error("Only one ellipsis (...) is allowed in slice index")
    expansion = max(len(shape) - sum(1 for i in items if i is not Ellipsis), 0)
    out: list = []
    for item in items:
        if item is Ellipsis:
            out.extend(_Narrow(None, None, 1) for _ in range(expansion))
        elif isinstance(item, slice):
            out.append(_Narrow(_unsigned(item.start), _unsigned(item.stop), _step(item.step)))
        else:
            i = _select(item)
            if i is None:
                raise _slice_error(_UNSUPPORTED.format(len(out)))
            if i < 0:
                size = shape[len(out)] if len(out) < len(shape) else 0
                if i + size < 0:
                    raise _slice_error(f"Invalid index {i} for dimension {len(out)} of size {size}")
                i += size
            out.append(i)
    return out


def _misaligned(positions: Any, span_bits: int) -> bool:
    return span_bits % 8 != 0 and any(n * span_bits % 8 for n in positions)


def _check_ranges(indexers: list, shape: Sequence[int], bits: int) -> Optional[str]:
    """safetensors' slice_byte_ranges without the ranges: the cause it would fail with, checked in
    its order (innermost dimension first), or None."""
    if len(indexers) > len(shape):
        return "more slicing indexes than dimensions in tensor"
    misaligned = ("The slice is slicing for subbytes dtypes, and the slice does not end up at a "
                  "byte boundary, this is invalid.")
    span = bits  # bits of one step along the current dimension
    ranged = False  # whether a byte range has been cut yet
    for i in reversed(range(len(shape))):
        dim = shape[i]
        if i < len(indexers):
            start, stop, step = _bounds(indexers[i], dim)
            if start >= dim or stop > dim:
                asked = start if start >= dim else max(stop - 1, 0)
                return f"index {asked} out of bounds for tensor dimension #{i} of size {dim}"
            kept = range(start, stop, step)
            if not ranged:
                if step == 1 and start == 0 and stop == dim:
                    pass
                elif step == 1:
                    if _misaligned((start, stop), span):
                        return misaligned
                    ranged = True
                else:
                    if _misaligned(kept, span) or _misaligned((n + 1 for n in kept), span):
                        return misaligned
                    ranged = len(kept) > 0
            else:
                if _misaligned(kept, span):
                    return misaligned
                ranged = len(kept) > 0
        span *= dim
    if not ranged and span % 8:
        return misaligned
    return None


def _bounds(indexer: Any, dim: int) -> Tuple[int, int, int]:
    if isinstance(indexer, _Narrow):
        return (0 if indexer.start is None else indexer.start,
                dim if indexer.stop is None else indexer.stop, indexer.step)
    return indexer, indexer + 1, 1


def numpy_index(index: Any, shape: Sequence[int], bits: int) -> Tuple[tuple, List[int]]:
    """`index` on a tensor of `shape` (elements of `bits` bits) as safe_open(framework="np")
    takes it: (an equivalent index for normalize_index, the result's shape), or safetensors' error.
    One divergence: a slice whose start lies past its stop selects nothing here, where
    safetensors 0.8 underflows an unsigned size and raises SystemError."""
    indexers = _indexers(index, shape)
    cause = _check_ranges(indexers, shape, bits)
    if cause is not None:
        shown = ", ".join(str(i) for i in indexers)
        raise _slice_error(f"Error during slicing [{shown}] with shape {list(shape)}: {cause}")
    equivalent: list = []
    result: List[int] = []
    for indexer, dim in zip(indexers, shape):
        start, stop, step = _bounds(indexer, dim)
        if isinstance(indexer, _Narrow):
            count = len(range(start, stop, step))
            last = start + (count - 1) * step if count else start - 1
            equivalent.append(slice(start, last + 1, step))
            result.append(count)
        else:
            equivalent.append(start)
    result.extend(shape[len(indexers):])
    return tuple(equivalent), result
