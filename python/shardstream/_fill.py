"""The primitive: fill(checkpoint, targets) and what every other entry point shares with it."""

from __future__ import annotations

import operator
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Union

import torch

from . import _core, _dtypes, _layout, _progress
from ._errors import _from_core, error, safetensors_error

_core._set_error_factory(_from_core)

PathLike = Union[str, "os.PathLike[str]"]
# Waits on the core in slices this long, so that Ctrl-C and a raising progress callback cancel a
# load within a fraction of a second.
_POLL_S = 0.05
# Smaller fills without a progress callback run on the calling thread (GIL released): a thread
# start would cost more than the read, and they end well within a poll anyway.
_INLINE_BYTES = 8 << 20


@dataclass
class LoadReport:
    """What a load did. `bytes`: tensor bytes that landed; `seconds`: wall time of the call;
    `stages`: (name, seconds) in order; `io`: the backend that read ("pread", "uring", ...);
    `direct`: O_DIRECT through staging. load_into adds the key lists: `missing` (module keys the
    checkpoint lacks), `unexpected` (checkpoint keys the module lacks), `mismatched` (same key,
    another shape), `tied` (groups of module keys sharing one tensor, filled once) and
    `non_persistent` (buffers computed by `reinit`). `read` holds the core's whole report.
    With `process_group=`, `distributed` holds this rank's counts: `needed_bytes` (its
    destinations), `read_bytes` (read from storage, alignment included, headers apart),
    `header_bytes`, `received_bytes`, `sent_bytes`, and `rank`, `world`, `rounds`."""

    bytes: int = 0
    seconds: float = 0.0
    stages: list = field(default_factory=list)
    io: str = ""
    direct: bool = False
    fallback: str = ""
    tensors: int = 0
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)
    tied: list = field(default_factory=list)
    non_persistent: list = field(default_factory=list)
    read: dict = field(default_factory=dict)
    distributed: dict = field(default_factory=dict)

    @property
    def gb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


class Entry:
    """One checkpoint tensor, as the header says, and the torch dtype and shape it loads as."""

    __slots__ = ("name", "dtype", "shape", "file", "index", "begin", "nbytes", "tdtype", "tshape",
                 "refusal")

    def __init__(self, name: str, dtype: str, shape: tuple, file: int, index: int, begin: int,
                 nbytes: int) -> None:
        self.name, self.dtype, self.shape = name, dtype, shape
        self.file, self.index, self.begin, self.nbytes = file, index, begin, nbytes
        self.tdtype, self.tshape, self.refusal = _dtypes.torch_layout(dtype, shape, nbytes)

    def torch_layout(self) -> tuple:
        return self.tdtype, self.tshape


class Checkpoint:
    """A validated checkpoint (headers only): entries by name and in offset order."""

    def __init__(self, path: PathLike) -> None:
        text = os.fspath(path)
        require_path(text)
        self.core = _core.open_checkpoint(text)
        self.path = text
        self.files: list = self.core.files
        self.entries: dict = {}
        for t in self.core.tensors():
            e = Entry(*t)
            self.entries[e.name] = e
        # safetensors' offset_keys() order: by (begin, end), so an empty tensor comes before the
        # tensor that starts where it sits.
        self.offset_order: list = sorted(self.entries.values(),
                                         key=lambda e: (e.file, e.begin, e.begin + e.nbytes))

    def __deepcopy__(self, memo: dict) -> "Checkpoint":
        return self  # immutable after opening: copies share it

    def entry(self, name: str) -> Entry:
        """The tensor called `name`; LoadError when absent or not representable in torch."""
        e = self.entries.get(name)
        if e is None:
            raise error("missing-tensor", "the checkpoint has no tensor of this name",
                        file=self.path, tensor=name)
        if e.refusal is not None:
            raise error(e.refusal[0], e.refusal[1], file=self.files[e.file], tensor=name)
        return e

    def file_of(self, e: Entry) -> str:
        return self.files[e.file]


def require_path(path: str) -> None:
    """FileNotFoundError, worded as safetensors words it, unless `path` exists."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file or directory: {path}")


def open_checkpoint(checkpoint: Union[PathLike, Checkpoint]) -> Checkpoint:
    return checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)


def allocate(ck: "Checkpoint", names: Sequence[str], device: torch.device,
             dtype: Optional[torch.dtype] = None) -> dict:
    """New uninitialised tensors for `names` of `ck` on `device`, name -> tensor in the order
    given: each in its checkpoint layout, the floating-point ones in `dtype` when it is set."""
    out = {}
    for name in names:
        e = ck.entry(name)
        tdtype = dtype if dtype is not None and e.dtype in _dtypes.FLOATING else e.tdtype
        out[name] = torch.empty(e.tshape, dtype=tdtype, device=device)
    return out


def parse_device(device: Any) -> torch.device:
    """"cpu", "cuda", "cuda:N", an int N or a torch.device; raises LoadError rule "device"."""
    if isinstance(device, int) and not isinstance(device, bool):
        device = torch.device("cuda", device)
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise error("device", f"unknown device {device!r} ({exc})") from None
    if d.type == "cuda":
        check_cuda(d)
    elif d.type != "cpu":
        raise error("device", f"device {d} is not supported (cpu or cuda:N)")
    return d


# What safetensors 0.8 accepts as a device name, alone ("cuda" is index 0) or as "name:N".
_ACCELERATORS = ("cuda", "musa", "mps", "npu", "xpu", "xla", "mlu", "hpu")
_USIZE_MAX = (1 << 64) - 1


def _parse_index(text: str) -> int:
    # Rust's usize parse, whose ValueError safetensors passes on: "+" allowed, ASCII digits only.
    if not text:
        raise ValueError("cannot parse integer from empty string")
    digits = text[1:] if text[0] == "+" else text
    if not digits or any(c not in "0123456789" for c in digits):
        raise ValueError("invalid digit found in string")
    if int(digits) > _USIZE_MAX:
        raise ValueError("number too large to fit in target type")
    return int(digits)


def safetensors_device(device: Any) -> str:
    """`device` as safetensors 0.8 spells it after parsing: "cpu", "cuda:0" (for "cuda" too),
    "mps", "npu:1", ..., or "N" for a bare index N (torch picks the accelerator); None is "cpu".
    Raises what safetensors raises for what it cannot parse (LoadError rule "device" with its
    text, ValueError for a bad index). A torch.device, which safetensors refuses, is taken too.
    Whether shardstream can fill that device is parse_device's question."""
    if device is None:
        return "cpu"
    if isinstance(device, torch.device):
        return str(device)
    if isinstance(device, str):
        if device == "cpu":
            return device
        if device in _ACCELERATORS:
            return "mps" if device == "mps" else f"{device}:0"
        kind, colon, rest = device.partition(":")
        if colon and kind in _ACCELERATORS:
            if ":" in rest:
                raise safetensors_error(f"device {device} is invalid", rule="device")
            index = _parse_index(rest)
            if kind != "mps":
                return f"{kind}:{index}"
            if index == 0:
                return "mps"
            raise safetensors_error(f"device {device} is invalid: only mps or mps:0 is supported",
                                    rule="device")
        raise safetensors_error(f"device {device} is invalid", rule="device")
    try:
        index = operator.index(device)
    except TypeError:
        index = -1
    if not 0 <= index <= _USIZE_MAX:
        raise safetensors_error(f"device {device!r} is invalid", rule="device")
    return str(index)


def check_cuda(d: torch.device) -> None:
    """Raises LoadError rule "device" unless tensors can be filled on CUDA device `d`."""
    if not torch.cuda.is_available():
        raise error("device", f"cannot load onto {d}: no GPU here (torch.cuda.is_available() is "
                    "False)")
    if d.index is not None and d.index >= torch.cuda.device_count():
        raise error("device", f"cannot load onto {d}: torch sees {torch.cuda.device_count()} "
                    "GPU(s)")
    if not _core.cuda_built():
        raise error("device", f"cannot load onto {d}: {_core.cuda_reason()}")


def options(threads: Optional[int], io: str, direct: Union[str, bool], staging_mb: Optional[float],
            **extra) -> dict:
    if isinstance(direct, bool):
        direct = "on" if direct else "off"
    out = {"io": io, "direct": direct, "threads": threads}
    if staging_mb is not None:
        if staging_mb <= 0:
            raise error("option", f"staging_mb must be positive, not {staging_mb}")
        out["staging_bytes"] = int(staging_mb * (1 << 20))
    out.update(extra)
    return out


def _device_index(t: torch.Tensor, name: str, path: str) -> int:
    dev = t.device
    if dev.type == "cpu":
        return -1
    if dev.type == "cuda":
        check_cuda(dev)
        return dev.index if dev.index is not None else torch.cuda.current_device()
    raise error("device", f"destination is on {dev}: shardstream fills cpu and cuda tensors",
                file=path, tensor=name)


def target(ck: Checkpoint, name: str, index: Any, dst: torch.Tensor) -> Optional[tuple]:
    """The core's target tuple for filling `dst` from checkpoint tensor `name` (sliced by `index`,
    or whole when None); None when there is nothing to read (an empty selection). A source slice
    or a strided destination goes to the core as its layout, which engine::SliceRuns turns into
    runs of contiguous bytes."""
    e = ck.entries.get(name)
    if e is not None and e.tdtype is None and isinstance(dst, torch.Tensor):
        # No torch dtype (F6): the bytes as they are stored, as the C++ LoadFile holds them, into
        # a byte tensor; anything else is a cast the core's table refuses.
        if index is None and dst.dtype == torch.uint8 and dst.is_contiguous() and \
                dst.numel() == e.nbytes:
            device = _device_index(dst, name, ck.file_of(e))
            return (e.file, e.index, dst.data_ptr(), device, e.dtype, None) if e.nbytes else None
        dst_name = _dtypes.name_of(dst.dtype)
        refusal = _dtypes.cast_refusal(e.dtype, dst_name) if dst_name is not None else ""
        if refusal:
            raise error("cast", refusal, file=ck.file_of(e), tensor=name)
    e = ck.entry(name)
    path = ck.file_of(e)
    if not isinstance(dst, torch.Tensor):
        raise TypeError(f"destination for '{name}' must be a torch.Tensor, not "
                        f"{type(dst).__name__}")
    device = _device_index(dst, name, path)
    tdtype, tshape = e.tdtype, e.tshape
    if index is None and dst.dtype == tdtype and dst.is_contiguous():
        if tuple(dst.shape) != tshape:
            raise error("shape", f"destination shape {list(dst.shape)} differs from the "
                        f"tensor's {list(tshape)}", file=path, tensor=name)
        return (e.file, e.index, dst.data_ptr(), device, e.dtype, None) if e.nbytes else None
    if index is None:
        dims = _layout.whole(tshape)
    else:
        try:
            dims = _layout.normalize_index(index, tshape)
        except _layout.Unsupported as exc:
            raise error("slice", f"unsupported source index ({exc}): use ints, slices with "
                        "positive steps and ...", file=path, tensor=name) from None
    shape = _layout.result_shape(dims)
    if tuple(dst.shape) != shape:
        raise error("shape", f"destination shape {list(dst.shape)} differs from the "
                    f"{'slice' if index is not None else 'tensor'}'s {list(shape)}",
                    file=path, tensor=name)
    if dst.dtype == tdtype:
        dst_name = e.dtype
    else:
        dst_name = _dtypes.name_of(dst.dtype)
        refusal = (f"cannot convert {e.dtype} to {dst.dtype}: safetensors has no such dtype"
                   if dst_name is None else _dtypes.cast_refusal(e.dtype, dst_name))
        if refusal:
            raise error("cast", refusal, file=path, tensor=name)
    if dst.numel() == 0:
        return None
    slice_dims = [(d.start, d.step, d.count) for d in dims]
    kept = iter(dst.stride())
    strides = [next(kept) if d.keep else 0 for d in dims]
    layout = (list(tshape), tdtype.itemsize * 8, slice_dims, strides, dst.element_size() * 8)
    return (e.file, e.index, dst.data_ptr(), device, dst_name, layout)


def run(ck: Checkpoint, targets: Sequence[tuple], opts: dict, nbytes: int,
        progress: _progress.ProgressArg = None, keep_alive: Any = None) -> LoadReport:
    """Runs one fill to the end. Ctrl-C or an exception from the progress callback cancels it
    (the core stops within one poll), then re-raises."""
    t0 = time.perf_counter()
    callback, close = _progress.make(progress, nbytes)
    try:
        job = _core.start_fill(ck.core, list(targets), opts,
                               callback is None and nbytes <= _INLINE_BYTES)
        try:
            last = None
            while not job.wait(_POLL_S):
                if callback is not None:
                    now = job.progress()
                    if now != last and now[1]:
                        last = now
                        callback(min(now[0], now[1]), now[1])
            if callback is not None:
                now = job.progress()
                if now != last and now[1]:
                    # The core's count may include gap bytes it read through: clamp.
                    callback(min(now[0], now[1]), now[1])
            read = job.result()
        except BaseException:
            job.cancel()
            job.wait(-1.0)
            raise
    finally:
        close()
    del keep_alive
    return LoadReport(bytes=nbytes, seconds=time.perf_counter() - t0, stages=read["stages"],
                      io=read["io"], direct=read["direct"], fallback=read["fallback"],
                      tensors=len(targets), read=read)


def batches_of(entries: Sequence[Entry], staging_bytes: int) -> List[list]:
    """`entries` in order, cut into batches of at most half of `staging_bytes` (a larger entry is
    a batch of its own): what the iterators read (or populate) while the consumer takes the
    previous batch, so that two batches stay within the bound."""
    half = max(staging_bytes // 2, 1)
    batches: List[list] = []
    batch: list = []
    size = 0
    for e in entries:
        if batch and size + e.nbytes > half:
            batches.append(batch)
            batch, size = [], 0
        batch.append(e)
        size += e.nbytes
    if batch:
        batches.append(batch)
    return batches


class ClosingIterator:
    """What every tensor iterator shares: a context manager whose exit, like the iterator's
    collection, calls `close()` (which a subclass defines and which must be idempotent)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _normalize_targets(targets) -> Iterable[tuple]:
    items = targets.items() if isinstance(targets, Mapping) else targets
    for item in items:
        if isinstance(item, tuple) and len(item) == 2:
            yield item[0], None, item[1]
        elif isinstance(item, tuple) and len(item) == 3:
            yield item
        else:
            raise TypeError("a target is (name, tensor) or (name, source_index, tensor)")


def fill(checkpoint: Union[PathLike, Checkpoint], targets, *, threads: Optional[int] = None,
         io: str = "auto", direct: Union[str, bool] = "auto", staging_mb: Optional[float] = None,
         progress: _progress.ProgressArg = None, process_group: Any = None,
         shard: Any = None) -> LoadReport:
    """Fills caller-allocated tensors with checkpoint bytes; nothing else is read.

    `checkpoint`: a .safetensors file, a folder of shards or an index JSON. `targets`: a dict
    {name: tensor} or an iterable of (name, tensor) or (name, source_index, tensor); a tensor may
    be a strided view (filled through its strides, bytes outside it untouched) on the CPU (or a
    GPU); `source_index` selects part of the checkpoint tensor with get_slice semantics and only
    those bytes are read. Shapes must match (rule "shape"); another dtype is a cast on the way
    (the core's one cast table: bool, integer and floating sources into F64/F32/F16/BF16, integers
    into integers; on a GPU it runs on the device). A name may appear in several targets. Raises LoadError; on error the destinations
    hold unspecified bytes. The GIL is released while reading.

    `process_group` (a torch.distributed group; every rank calls fill with the same checkpoint):
    each byte is read from storage once across the group. Whole-tensor targets that every rank
    has (same dtype and shape) are read 1/N per rank and broadcast; targets with a source index,
    `shard=` parts (a callable name -> (dim, rank, world) or None, or {regex: dim} for this rank
    of the group, split as torch.tensor_split) and tensors only some ranks ask for are read by
    their rank alone. Any failure ends the load on every rank (rule "distributed");
    `report.distributed` counts this rank's bytes. See the README's distributed section."""
    if process_group is not None:
        from . import _distributed

        opts = options(threads, io, direct, staging_mb)
        return _distributed.fill(checkpoint, targets, opts, process_group, shard, progress)
    if shard is not None:
        raise error("option", "shard= needs process_group=")
    ck = open_checkpoint(checkpoint)
    opts = options(threads, io, direct, staging_mb)
    core_targets = []
    tensors = []
    nbytes = 0
    for name, index, dst in _normalize_targets(targets):
        t = target(ck, name, index, dst)
        if t is None:
            continue
        core_targets.append(t)
        tensors.append(dst)
        nbytes += dst.numel() * dst.element_size()
    return run(ck, core_targets, opts, nbytes, progress, tensors)
