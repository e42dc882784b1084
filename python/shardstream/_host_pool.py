"""Owned CPU tensors from a pool of reused host buffers (the core's HostPool, engine/host_pool.h).

A stream's consumer (vLLM's load_weights) copies each tensor into its parameter and drops it; the
next tensor of the same size then lands in the same, already-faulted memory instead of fresh
pages that fault on first touch. Each tensor is `torch.frombuffer` over its own pooled buffer,
which torch keeps alive as long as the tensor, or any view of it, lives: the buffer returns to the
pool only after the consumer dropped its last reference, never while a tensor still refers to it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from . import _core
from ._fill import Checkpoint


class HostTensorPool:
    """Allocates owned CPU tensors from reused buffers; keeps at most `max_cached_bytes` of
    released buffers (freed with the pool once no tensor holds them)."""

    def __init__(self, max_cached_bytes: int) -> None:
        self._pool = _core.HostPool(max_cached_bytes)

    def empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous CPU tensor (its bytes may be a dropped tensor's)."""
        count = 1
        for d in shape:
            count *= d
        nbytes = count * dtype.itemsize
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self._pool.acquire(nbytes), dtype=dtype,
                                count=count).view(shape)

    def allocate(self, ck: Checkpoint, names: Sequence[str]) -> dict:
        """As _fill.allocate on the CPU: name -> tensor in its checkpoint layout, in order."""
        out = {}
        for name in names:
            e = ck.entry(name)
            out[name] = self.empty(e.tshape, e.tdtype)
        return out

    def stats(self) -> dict:
        """allocated, reused, cached_bytes, leased_bytes, peak_leased_bytes."""
        return self._pool.stats()
