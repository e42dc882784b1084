"""Random slices into random destination views, end to end through fill() (the engine's
SliceRuns), against torch's indexing; bytes outside the views stay untouched."""

from __future__ import annotations

import random

import pytest
import torch
import safetensors.torch

import shardstream
from shardstream import _layout

SHAPES = [(5,), (4, 3), (3, 4, 5), (2, 3, 2, 4), (1, 6, 1)]


@pytest.fixture(scope="module")
def ranges(tmp_path_factory):
    path = tmp_path_factory.mktemp("layout") / "ranges.safetensors"
    tensors = {}
    for i, shape in enumerate(SHAPES):
        n = 1
        for d in shape:
            n *= d
        tensors[f"t{i}"] = torch.arange(n, dtype=torch.int32).reshape(shape)
        tensors[f"h{i}"] = (torch.arange(n, dtype=torch.float32) / 8).reshape(shape).half()
    safetensors.torch.save_file(tensors, str(path))
    return path, tensors


def random_index(shape, rng):
    items = []
    for n in shape:
        r = rng.random()
        if r < 0.25:
            items.append(rng.randrange(-n, n))
        elif r < 0.5:
            items.append(slice(None))
        else:
            items.append(slice(rng.randrange(0, n + 1), rng.randrange(0, n + 2),
                               rng.choice([None, 1, 2, 3])))
    if rng.random() < 0.3 and items:
        k = rng.randrange(len(items))
        items = items[:k] + [Ellipsis] + items[k + 1:] if rng.random() < 0.5 else items[:k]
    return tuple(items)


@pytest.mark.parametrize("seed", range(120))
def test_random_slices_into_random_views(ranges, seed):
    path, tensors = ranges
    rng = random.Random(seed)
    i = rng.randrange(len(SHAPES))
    name = rng.choice(["t", "h"]) + str(i)
    src = tensors[name]
    index = random_index(tuple(src.shape), rng)
    want = src[index]
    # The destination: a padded and possibly permuted view of a bigger tensor, maybe a cast.
    dtype = src.dtype if name[0] == "t" or rng.random() < 0.5 else torch.float32
    pad = rng.randint(0, 2)
    perm = list(range(want.dim()))
    if want.dim() >= 2 and rng.random() < 0.5:
        rng.shuffle(perm)
    inverse = [perm.index(k) for k in range(want.dim())]
    holder_shape = tuple(want.shape[p] + 2 * pad for p in perm)

    def view_of(holder):
        v = holder.permute(inverse) if want.dim() else holder
        return v[tuple(slice(pad, pad + n) for n in want.shape)]

    big = torch.full(holder_shape, -1, dtype=dtype)
    expected = big.clone()
    view_of(expected).copy_(want.to(dtype))
    shardstream.fill(path, [(name, index, view_of(big))])
    assert torch.equal(big, expected), (name, index, perm, pad)


def test_index_verdicts():
    shape = (2, 3, 4)
    assert _layout.result_shape(_layout.normalize_index((0, ..., 1), shape)) == (3,)
    assert _layout.result_shape(_layout.normalize_index(slice(5, 10), shape)) == (0, 3, 4)
    with pytest.raises(IndexError):
        _layout.normalize_index(2, shape)
    with pytest.raises(ValueError):
        _layout.normalize_index((slice(None, None, -1),), shape)
    with pytest.raises(_layout.Unsupported):
        _layout.normalize_index(None, shape)
