"""Mapped CPU tensors: views of a private, copy-on-write mapping of the checkpoint's files.

A CPU tensor that needs no cast, slice or layout change is handed out as a view of its file's
mapping (as safetensors and transformers do), and the engine's populate workers make the pages
resident ahead of the consumer, in parallel (MADV_POPULATE_READ per chunk), instead of the consumer
faulting them in one at a time. The core maps (engine/mapped.h) and exposes each file's data
section as a writable buffer; `torch.frombuffer` turns a byte range of it into a tensor and keeps
the buffer, hence the mapping, alive while the tensor (or any view of it) lives.

Writes to a view change the process's private copy of that page; the file never changes.
Truncating a file while a view of it lives makes the next access to a page past the new end raise
SIGBUS, as with every mmap-based loader (populate itself reports it as LoadError "file-changed").
"""

from __future__ import annotations

from collections import deque
from typing import Optional, Sequence, Tuple

import torch

from . import _core, _dtypes
from ._fill import Checkpoint, ClosingIterator, Entry, batches_of

# Waits on the core in slices this long, so that Ctrl-C cancels a populate promptly.
_POLL_S = 0.05
# Populates smaller than this run on the calling thread (GIL released): a thread start would cost
# more than the populate.
_INLINE_BYTES = 8 << 20


def mappable(e: Entry, dtype: Optional[torch.dtype] = None) -> bool:
    """Whether checkpoint tensor `e` loads as a view: torch has its dtype, and `dtype` (a load's
    cast of the floating-point tensors) leaves it as stored."""
    if e.tdtype is None:
        return False
    return dtype is None or e.dtype not in _dtypes.FLOATING or dtype == e.tdtype


class MappedCheckpoint:
    """Every file of `ck` mapped privately; `view(e)` is tensor `e` as a view of its file's
    mapping (a new, empty tensor when it has no bytes)."""

    def __init__(self, ck: Checkpoint) -> None:
        self.ck = ck
        self.core = _core.map_checkpoint(ck.core)
        self._buffers: dict = {}

    def view(self, e: Entry) -> torch.Tensor:
        if e.nbytes == 0:
            return torch.empty(e.tshape, dtype=e.tdtype)
        buffer = self._buffers.get(e.file)
        if buffer is None:
            buffer = self._buffers[e.file] = self.core.file(e.file)
        count = e.nbytes // e.tdtype.itemsize
        return torch.frombuffer(buffer, dtype=e.tdtype, count=count,
                                offset=e.begin).view(e.tshape)

    def start_populate(self, entries: Sequence[Entry], threads: Optional[int] = None,
                       inline: Optional[bool] = None, skip_resident: bool = False):
        """Starts making the pages of `entries` resident (the core's PopulateJob); `inline`
        (default: for small populates) runs it to the end on this thread first. `skip_resident`
        leaves chunks already in the page cache to the consumer's own first touch (for a
        consumer working while populate runs: see engine/mapped.h)."""
        ranges = [(e.file, e.begin, e.nbytes) for e in entries if e.nbytes]
        if inline is None:
            inline = sum(r[2] for r in ranges) <= _INLINE_BYTES
        return _core.start_populate(self.core, ranges, threads or 0, 0, inline, skip_resident)


def cancel(job) -> None:
    """Cancels a populate job and waits for its threads to stop."""
    job.cancel()
    job.wait(-1.0)


def wait(job) -> dict:
    """Waits for a populate job (Ctrl-C cancels it) and returns its report: populated_bytes,
    populate_resident_bytes (of those, found in the page cache and left alone), populate_seconds,
    populate_threads, populate_chunks, populate_method."""
    try:
        while not job.wait(_POLL_S):
            pass
        return job.result()
    except BaseException:
        cancel(job)
        raise


def load_views(ck: Checkpoint, entries: Sequence[Entry], threads: Optional[int] = None) -> tuple:
    """(name -> view for `entries`, populate report): every view resident when it returns. The
    views are made while populate runs (on its own threads), not before it starts."""
    mapped = MappedCheckpoint(ck)
    job = mapped.start_populate(entries, threads)
    try:
        views = {e.name: mapped.view(e) for e in entries}
    except BaseException:
        cancel(job)
        raise
    return views, wait(job)


class MappedTensorIterator(ClosingIterator):
    """iter_tensors on the CPU without copies: yields (name, view) in offset order (files in
    index order), each a view of its file's private mapping, while populate jobs make the pages
    resident ahead of the consumer on the core's worker threads. The tensors are cut into
    windows of about half of `ahead_bytes` (one tensor when it is larger): the window after the
    consumer's is populated while it takes its own, so at most `ahead_bytes` is made resident
    ahead of it (`peak_ahead_bytes`) and a checkpoint larger than memory is not populated only to
    be evicted before it is used. Chunks already in the page cache are left to the consumer's
    own first touch (`populate_resident_bytes`): the consumer works while populate runs, and on a
    warm file mapping the pages for it would only take a core from it. Nothing is allocated: the
    pages are the page cache's. `read`
    holds the populate report, the windows' summed, once iteration has ended (populated_bytes,
    populate_seconds, populate_threads, ...); a populate error (the file truncated under the
    mapping) is raised there. `close()` (or leaving a `with` block, or dropping the iterator)
    cancels the populates in flight; views already yielded stay valid."""

    def __init__(self, ck: Checkpoint, entries: Sequence[Entry], threads: Optional[int],
                 ahead_bytes: int) -> None:
        self._mapped = MappedCheckpoint(ck)
        self._entries = list(entries)
        self._threads = threads
        # Windows as [first, end) entry indexes, and each entry's window.
        self._windows: list = []
        self._window_of: list = []
        first = 0
        for k, window in enumerate(batches_of(self._entries, ahead_bytes)):
            self._windows.append((first, first + len(window)))
            self._window_of.extend([k] * len(window))
            first += len(window)
        self._jobs: deque = deque()  # populate jobs started and not yet collected, oldest first
        self._started = 0            # windows whose populate has started
        self._started_bytes = 0
        self._next = 0
        self._closed = False
        self.bytes_read = 0
        self.tensors_read = 0
        self.peak_ahead_bytes = 0
        self.read: dict = {"populated_bytes": 0, "populate_resident_bytes": 0,
                           "populate_seconds": 0.0, "populate_threads": 0,
                           "populate_chunks": 0, "populate_method": "", "populate_windows": 0}
        self._populate_through(0)

    def _populate_through(self, window: int) -> None:
        """Starts the populates of every window up to `window` + 1; at most two run at once."""
        last = min(window + 1, len(self._windows) - 1)
        while self._started <= last:
            while len(self._jobs) >= 2:
                self._collect(self._jobs.popleft())  # the consumer is past it already
            first, end = self._windows[self._started]
            entries = self._entries[first:end]
            self._jobs.append(self._mapped.start_populate(entries, self._threads, inline=False,
                                                          skip_resident=True))
            self._started += 1
            self._started_bytes += sum(e.nbytes for e in entries)
            self.peak_ahead_bytes = max(self.peak_ahead_bytes,
                                        self._started_bytes - self.bytes_read)

    def _collect(self, job) -> None:
        try:
            report = wait(job)
        except BaseException:
            self.close()
            raise
        r = self.read
        r["populated_bytes"] += report["populated_bytes"]
        r["populate_resident_bytes"] += report["populate_resident_bytes"]
        r["populate_seconds"] += report["populate_seconds"]
        r["populate_chunks"] += report["populate_chunks"]
        r["populate_threads"] = max(r["populate_threads"], report["populate_threads"])
        r["populate_method"] = report["populate_method"]
        r["populate_windows"] += 1

    def __iter__(self) -> "MappedTensorIterator":
        return self

    def __next__(self) -> Tuple[str, torch.Tensor]:
        if self._closed:
            raise StopIteration
        if self._next == len(self._entries):
            while self._jobs:
                self._collect(self._jobs.popleft())
            self._closed = True
            raise StopIteration
        e = self._entries[self._next]
        self._populate_through(self._window_of[self._next])
        self._next += 1
        view = self._mapped.view(e)
        self.bytes_read += e.nbytes
        self.tensors_read += 1
        return e.name, view

    def close(self) -> None:
        """Cancels the populates in flight; views already yielded stay valid."""
        self._closed = True
        jobs, self._jobs = self._jobs, deque()
        for job in jobs:
            job.cancel()
        for job in jobs:
            job.wait(-1.0)



class ViewPlanner:
    """Views for a loader that fills many checkpoints' tensors (shardstream.transformers): `view`
    hands out a view where one serves (CPU, the stored dtype), None where the caller must
    allocate and fill; `populate` then makes every handed-out view resident, all checkpoints'
    ranges on the same worker threads in turn."""

    def __init__(self, threads: Optional[int] = None) -> None:
        self._threads = threads
        self._mapped: dict = {}  # id(checkpoint) -> (MappedCheckpoint, [Entry])

    def view(self, ck: Checkpoint, name: str, dtype: torch.dtype,
             device) -> Optional[torch.Tensor]:
        e = ck.entries.get(name)
        if e is None or not mappable(e) or e.tdtype != dtype:
            return None
        if torch.device(device).type != "cpu":
            return None
        slot = self._mapped.get(id(ck))
        if slot is None:
            slot = self._mapped[id(ck)] = (MappedCheckpoint(ck), [])
        slot[1].append(e)
        return slot[0].view(e)

    @property
    def tensors(self) -> int:
        return sum(len(entries) for _, entries in self._mapped.values())

    def populate(self) -> dict:
        """Populates every view handed out; the reports summed (threads: the most any used)."""
        total = {"populated_bytes": 0, "populate_seconds": 0.0, "populate_threads": 0}
        for mapped, entries in self._mapped.values():
            report = wait(mapped.start_populate(entries, self._threads))
            total["populated_bytes"] += report["populated_bytes"]
            total["populate_seconds"] += report["populate_seconds"]
            total["populate_threads"] = max(total["populate_threads"],
                                            report["populate_threads"])
        return total
