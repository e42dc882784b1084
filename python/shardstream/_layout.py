"""Byte layouts: safetensors-style slices and strided destinations → the fill core's runs.

A source slice and a destination view are both described, per dimension of the source tensor,
by an element count and a stride (in elements); dimensions of count one drop out, neighbours that
are contiguous on both sides merge, and what is left enumerates runs of contiguous bytes
(source offset, destination offset, length in source bytes), as engine::FillTarget takes them.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


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
            if item.step is not None:
                step = operator.index(item.step)
                if step == 0:
                    raise ValueError("slice step cannot be zero")
                if step < 0:
                    raise ValueError("step must be greater than zero")
            start, stop, step = item.indices(n)
            dims.append(Dim(start, step, len(range(start, stop, step)), True))
        elif isinstance(item, bool) or item is None:
            raise Unsupported(repr(item))
        else:
            try:
                i = operator.index(item)
            except TypeError:
                raise Unsupported(type(item).__name__) from None
            if i < -n or i >= n:
                raise IndexError(f"index {i} is out of bounds for dimension {len(dims)} "
                                 f"with size {n}")
            dims.append(Dim(i % n, 1, 1, False))
    while len(dims) < len(shape):
        dims.append(Dim(0, 1, shape[len(dims)], True))
    return dims


def whole(shape: Sequence[int]) -> list:
    return [Dim(0, 1, n, True) for n in shape]


def result_shape(dims: Sequence[Dim]) -> tuple:
    return tuple(d.count for d in dims if d.keep)


def contiguous_strides(shape: Sequence[int]) -> list:
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * max(int(shape[i + 1]), 1)
    return strides


class Overlap(Exception):
    """A destination whose elements overlap (an expanded view)."""


def plan_runs(shape: Sequence[int], dims: Sequence[Dim], source_elem: int,
              dst_strides: Sequence[int], dst_elem: int) -> Optional[np.ndarray]:
    """Runs (n × 3 uint64: source byte offset, destination byte offset, length in source bytes)
    that move the slice `dims` of a contiguous tensor of `shape` into a destination with
    `dst_strides` (elements, one per kept dimension). None: the whole tensor, contiguous."""
    src_strides = contiguous_strides(shape)
    base = sum(d.start * s for d, s in zip(dims, src_strides))
    kept = iter(dst_strides)
    axes = []  # (count, source stride, destination stride), outer to inner
    for d, s in zip(dims, src_strides):
        t = next(kept) if d.keep else 0
        if d.count == 0:
            return np.zeros((0, 3), dtype=np.uint64)
        if d.count != 1:
            if t == 0:
                raise Overlap()
            axes.append((d.count, s * d.step, t))
    merged: list = []
    for count, s, t in reversed(axes):
        if merged and merged[-1][1] * merged[-1][0] == s and merged[-1][2] * merged[-1][0] == t:
            inner = merged[-1]
            merged[-1] = (inner[0] * count, inner[1], inner[2])
        else:
            merged.append((count, s, t))
    merged.reverse()
    run = 1
    if merged and merged[-1][1] == 1 and merged[-1][2] == 1:
        run = merged.pop()[0]
    numel = 1
    for n in shape:
        numel *= n
    if not merged and base == 0 and run == numel:
        return None
    src = np.array([base], dtype=np.int64)
    dst = np.array([0], dtype=np.int64)
    for count, s, t in merged:
        steps = np.arange(count, dtype=np.int64)
        src = (src[:, None] + steps * s).reshape(-1)
        dst = (dst[:, None] + steps * t).reshape(-1)
    runs = np.empty((src.size, 3), dtype=np.uint64)
    runs[:, 0] = src * source_elem
    runs[:, 1] = dst * dst_elem
    runs[:, 2] = run * source_elem
    return runs
