"""iter_tensors: the contract of vLLM's and SGLang's weight iterators."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple, Union

import torch

from . import _core, _host_pool, _mapped
from ._errors import error
from ._fill import (Checkpoint, ClosingIterator, PathLike, allocate, batches_of, open_checkpoint,
                    options, parse_device, target)

# The bound on what is read ahead of the consumer, in MiB: the core's default.
DEFAULT_STAGING_MB = _core.defaults()["read_ahead_bytes"] / (1 << 20)
_POLL_S = 0.05


class TensorIterator(ClosingIterator):
    """Yields (name, tensor) tensor by tensor in offset order (files in index order); tensors are
    new and owned. Reads run in batches of at most half of `staging_mb`, the next batch reading
    while the consumer takes the current one, so at most `staging_mb` of tensors are read ahead
    of what the consumer has taken (or one tensor, when a single one is larger). Within a batch,
    each tensor is yielded as soon as the engine reports it complete (every byte in place) and
    every tensor before it has been yielded: one that lands early waits for its predecessors. On
    a GPU a tensor is complete once the events after its copies have completed, as the staging
    pool finds when it reclaims slots (the batch's last ones: when its streams are synchronised).
    `close()` (or leaving a `with` block, or dropping the iterator) cancels the reads in flight.
    `bytes_read`: tensor bytes complete so far; `tensors_read`: how many. `landed_at_first`: per
    batch, (how many of its tensors were complete, its size) when its first tensor became ready
    to hand out, which shows tensors leaving before their batch has landed. On the CPU the
    tensors' memory is reused from tensors the consumer has dropped (never from one it still
    holds, or a view of it), up to `staging_mb` of released buffers kept: `pool_stats()` says
    how often."""

    def __init__(self, ck: Checkpoint, device: torch.device, entries: Sequence,
                 staging_bytes: int, opts: dict) -> None:
        self._ck = ck
        self._device = device
        self._batches: deque = deque(batches_of(entries, staging_bytes))
        self._opts = opts
        # CPU destinations reuse the buffers of tensors the consumer dropped (_host_pool).
        self._pool = _host_pool.HostTensorPool(staging_bytes) if device.type == "cpu" else None
        self._ready: deque = deque()  # complete, in order, not yet taken
        self._ready_bytes = 0
        # The batch reading now: its core job, its (name, tensor)s, which of them are complete,
        # each core target's position in the batch, and the first position not yet ready.
        self._job = None
        self._tensors: list = []
        self._complete = bytearray()  # 1: complete
        self._landed = 0  # how many of the batch are complete
        self._nbytes: list = []
        self._position_of: list = []
        self._frontier = 0
        self._closed = False
        self.bytes_read = 0
        self.tensors_read = 0
        self.peak_ahead_bytes = 0
        self.landed_at_first: list = []
        self.read: dict = {}  # the core's report of the last batch (io, direct, threads, ...)
        self._start_next()

    def _start_next(self) -> None:
        self._tensors, self._position_of, self._frontier, self._landed = [], [], 0, 0
        if not self._batches:
            self._job = None
            return
        batch = self._batches.popleft()
        names = [e.name for e in batch]
        self._tensors = list((allocate(self._ck, names, self._device) if self._pool is None
                              else self._pool.allocate(self._ck, names)).items())
        self._complete = bytearray(len(self._tensors))
        self._nbytes = [e.nbytes for e in batch]
        core_targets = []
        for position, (name, t) in enumerate(self._tensors):
            tt = target(self._ck, name, None, t)
            if tt is None:
                self._complete[position] = 1  # nothing to read (no bytes)
                self._landed += 1
            else:
                core_targets.append(tt)
                self._position_of.append(position)
        self._job = _core.start_fill(self._ck.core, core_targets, self._opts)
        ahead = self._ready_bytes + sum(self._nbytes)
        self.peak_ahead_bytes = max(self.peak_ahead_bytes, ahead)

    def _advance(self) -> None:
        """Waits (in slices, so Ctrl-C and close() get through) until more of the batch is
        complete, moves its completed prefix to the ready queue, and starts the next batch once
        this one has landed. Raises the batch's error when a tensor it waits for never lands."""
        job = self._job
        try:
            # Whether the fill has ended, asked first: every target it reported before ending is
            # then among those taken next.
            ended = job.wait(0.0)
            taken = job.take_completed(0.0 if ended else _POLL_S)
            complete, position_of = self._complete, self._position_of
            for index in taken:
                complete[position_of[index]] = 1
            self._landed += len(taken)
            # The completed prefix (up to the first tensor not complete) is ready, in order.
            start, n = self._frontier, len(self._tensors)
            end = complete.find(0, start)
            end = n if end < 0 else end
            if end > start:
                if start == 0:
                    self.landed_at_first.append((self._landed, n))
                self._ready.extend(self._tensors[start:end])
                ready_bytes = sum(self._nbytes[start:end])
                self._ready_bytes += ready_bytes
                self.bytes_read += ready_bytes
                self.tensors_read += end - start
                self._frontier = end
            if self._frontier == n:
                self.read = job.result()  # every tensor landed: the fill has ended or soon will
                self._start_next()
            elif ended and not self._ready:
                # The fill ended with tensors missing, and those that landed before them have
                # been handed out: result() raises its error.
                self.read = job.result()
                raise error("internal", "the fill ended without completing "
                            f"'{self._tensors[self._frontier][0]}'")
        except BaseException:
            self.close()
            raise

    def pool_stats(self) -> dict:
        """The CPU pool's counts (allocated, reused, cached_bytes, ...); {} on a GPU."""
        return self._pool.stats() if self._pool is not None else {}

    def __iter__(self) -> "TensorIterator":
        return self

    def __next__(self) -> Tuple[str, torch.Tensor]:
        if self._closed:
            raise StopIteration
        while not self._ready:
            if self._job is None:
                self._closed = True
                raise StopIteration
            self._advance()
        name, t = self._ready.popleft()
        self._ready_bytes -= t.numel() * t.element_size()
        return name, t

    def close(self) -> None:
        """Cancels the reads in flight and drops what was read ahead."""
        self._closed = True
        self._batches.clear()
        self._ready.clear()
        self._ready_bytes = 0
        if self._job is not None:
            job = self._job  # the destinations (self._tensors) outlive the reads into them
            job.cancel()
            job.wait(-1.0)
            self._job = None
        self._tensors = []



def iter_tensors(checkpoint: Union[PathLike, Checkpoint],
                 device: Union[str, int, torch.device] = "cpu", *,
                 names: Union[None, Sequence[str], Callable[[str], bool]] = None,
                 threads: Optional[int] = None, io: str = "auto",
                 direct: Union[str, bool] = "auto",
                 staging_mb: Optional[float] = None, copy: bool = False,
                 process_group: Any = None,
                 shard: Any = None) -> Iterator[Tuple[str, torch.Tensor]]:
    """Streams a checkpoint's tensors as they land (see TensorIterator). `names`: a list (only
    those are read; an unknown name: LoadError rule "missing-tensor") or a predicate on the
    name. `staging_mb` (default 512) bounds what is read ahead of the consumer; `threads`, `io`
    and `direct` are load_file's read options. On the CPU the tensors are views of a private,
    copy-on-write mapping of the files, made resident at most `staging_mb` ahead of the consumer
    by parallel populate workers (`threads`; see shardstream._mapped.MappedTensorIterator);
    `copy=True` gives owned tensors. `process_group`, `shard`: as in fill(), batch by batch
    (shardstream._distributed.DistributedIterator), always owned tensors."""
    if process_group is not None:
        from . import _distributed

        mb = DEFAULT_STAGING_MB if staging_mb is None else staging_mb
        return _distributed.iter_tensors(checkpoint, device, names, int(mb * (1 << 20)),
                                         options(threads, io, direct, None), process_group, shard)
    d = parse_device(device)
    ck = open_checkpoint(checkpoint)
    if names is None:
        entries = ck.offset_order
    elif callable(names):
        entries = [e for e in ck.offset_order if names(e.name)]
    else:
        wanted = set(names)
        for n in wanted:
            ck.entry(n)
        entries = [e for e in ck.offset_order if e.name in wanted]
    for e in entries:
        ck.entry(e.name)  # refuses what torch cannot hold, before any read
    mb = DEFAULT_STAGING_MB if staging_mb is None else staging_mb
    if mb <= 0:
        raise error("option", f"staging_mb must be positive, not {staging_mb}")
    if d.type == "cpu" and not copy:
        return _mapped.MappedTensorIterator(ck, entries, threads, int(mb * (1 << 20)))
    return TensorIterator(ck, d, entries, int(mb * (1 << 20)),
                          options(threads, io, direct, None))
