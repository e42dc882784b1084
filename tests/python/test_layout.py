"""The slice/stride → runs planner alone: runs applied with numpy give torch's indexing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from shardstream import _layout


def apply_runs(src: torch.Tensor, index, dst: torch.Tensor) -> None:
    dims = _layout.normalize_index(index, tuple(src.shape)) if index is not None \
        else _layout.whole(tuple(src.shape))
    runs = _layout.plan_runs(tuple(src.shape), dims, src.element_size(), dst.stride(),
                             dst.element_size())
    s = src.contiguous().reshape(-1).view(torch.uint8).numpy()
    storage = dst.untyped_storage()
    base = dst.storage_offset() * dst.element_size()
    buf = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()
    if runs is None:
        buf[base:base + s.size] = s
        return
    for so, do, n in runs.tolist():
        buf[base + do:base + do + n] = s[so:so + n]


def random_index(shape, rng):
    items = []
    for n in shape:
        r = rng.random()
        if r < 0.25:
            items.append(rng.randrange(-n, n))
        elif r < 0.5:
            items.append(slice(None))
        else:
            a = rng.randrange(0, n + 1)
            b = rng.randrange(0, n + 2)
            items.append(slice(a, b, rng.choice([None, 1, 2, 3])))
    if rng.random() < 0.3 and items:
        k = rng.randrange(len(items))
        items = items[:k] + [Ellipsis] + items[k + 1:] if rng.random() < 0.5 else items[:k]
    return tuple(items)


@pytest.mark.parametrize("seed", range(200))
def test_random_slices_into_random_views(seed):
    rng = random.Random(seed)
    shape = tuple(rng.randint(1, 5) for _ in range(rng.randint(1, 4)))
    src = torch.arange(int(np.prod(shape)), dtype=torch.int32).reshape(shape)
    index = random_index(shape, rng)
    want = src[index]
    # A destination view: a padded slice of a bigger tensor, or a permuted one.
    pad = rng.randint(0, 2)
    perm = list(range(want.dim()))
    if want.dim() >= 2 and rng.random() < 0.5:
        rng.shuffle(perm)
    inverse = [perm.index(i) for i in range(want.dim())]
    holder_shape = tuple(want.shape[p] + 2 * pad for p in perm)

    def view_of(holder):
        v = holder.permute(inverse) if want.dim() else holder
        return v[tuple(slice(pad, pad + n) for n in want.shape)]

    big = torch.full(holder_shape, -1, dtype=torch.int32)
    expected = big.clone()
    view_of(expected).copy_(want)
    apply_runs(src, index, view_of(big))
    assert torch.equal(big, expected), (shape, index, perm, pad)


def test_whole_contiguous_is_none():
    assert _layout.plan_runs((4, 5), _layout.whole((4, 5)), 4, (5, 1), 4) is None


def test_runs_are_coalesced():
    runs = _layout.plan_runs((8, 16), _layout.normalize_index((slice(2, 6),), (8, 16)), 2,
                             (16, 1), 2)
    assert runs.tolist() == [[2 * 16 * 2, 0, 4 * 16 * 2]]
    runs = _layout.plan_runs((8, 16), _layout.normalize_index((slice(None), slice(0, 8)), (8, 16)),
                             2, (8, 1), 2)
    assert len(runs) == 8 and all(r[2] == 16 for r in runs.tolist())


def test_cast_offsets_in_destination_bytes():
    runs = _layout.plan_runs((4, 4), _layout.normalize_index((slice(None), slice(0, 2)), (4, 4)),
                             2, (2, 1), 4)
    assert runs.tolist() == [[0, 0, 4], [8, 8, 4], [16, 16, 4], [24, 24, 4]]
