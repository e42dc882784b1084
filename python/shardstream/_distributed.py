"""Loading on the ranks of a torch.distributed process group: each byte read from storage once.

Every rank opens the same checkpoint (headers only) and builds the same plan from them. The group
first agrees on what it sees: each rank sends the outcome of its own preparation (the files'
sizes and a hash of each header, the tensors it wants whole), and a failure or a difference on any
rank fails the load on every rank (LoadError rule "distributed").

* Replicated tensors (wanted whole, with the same dtype and shape, by every rank): their bytes, in
  file order, are split into one contiguous range per rank (at element boundaries), so each rank
  reads about 1/N of them from storage, straight into its own destinations. Each rank's range is
  cut into buckets of at most `BUCKET_BYTES`; round r broadcasts every rank's bucket r (uint8 views:
  gloo refuses float8 and the unsigned 16/32/64-bit dtypes) while the ranks read bucket r + 1.
  Large pieces go straight from and into the destinations; small ones (and tensors read with a
  cast, or into strided or other-device destinations) travel packed in one buffer per bucket.
* Sharded tensors (`shard=`): this rank's `torch.tensor_split` part along a dimension, read alone
  (dim 0: one range; another dim: strided runs, with no gap read through beyond one O_DIRECT
  block). Nothing is sent for them.
* Tensors only some ranks want (a `names=` filter placing experts): each rank that wants one reads
  it itself; nothing is sent.

Bytes move only over the group (gloo on CPUs, NCCL on GPUs); no transport of our own. A rank that
dies or stalls makes the others' collectives fail within the group's timeout, which ends the load
on them with rule "distributed", never a hang. Every rank must make the same calls in the same
order (as with any collective); a rank that stops iterating early leaves the others to time out.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import re
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from . import _core, _dtypes, _progress
from ._errors import LoadError, error
from ._fill import (Checkpoint, LoadReport, allocate, batches_of, open_checkpoint, parse_device,
                    require_path, target)

# The bound on one rank's bucket of one broadcast round. Packed buffers in flight: at most two
# rounds of one bucket per rank.
BUCKET_BYTES = 32 << 20
# Pieces smaller than this travel packed with their bucket's other small pieces (one collective
# per bucket); larger ones are broadcast straight from and into their destinations.
PACK_BELOW_BYTES = 1 << 20
_PACK_ALIGN = 64  # so that a packed piece can be viewed as any dtype
_POLL_S = 0.05

ShardArg = Union[None, Mapping[str, Optional[int]],
                 Callable[[str], Optional[Tuple[int, int, int]]]]
NamesArg = Union[None, Sequence[str], Callable[[str], bool]]


# ---------------------------------------------------------------------------------------------
# Agreement: every rank takes part in one exchange before any collective that moves bytes, so a
# failure on one rank (a bad file, a missing tensor, a strict-key refusal) ends the load on all.


class _Session:
    def __init__(self, group: Any) -> None:
        self.group = group
        self.voted = False


_SESSION: contextvars.ContextVar = contextvars.ContextVar("shardstream_distributed",
                                                          default=None)


@contextlib.contextmanager
def preparing(group: Any) -> Iterator[None]:
    """Wraps a distributed load's local preparation: an exception raised before this rank has
    voted is voted as a failure first (so the other ranks fail too), then raised as LoadError
    rule "distributed" (its cause chained). Nested uses share the outer session."""
    if _SESSION.get() is not None:
        yield
        return
    session = _Session(group)
    token = _SESSION.set(session)
    try:
        yield
    except LoadError as exc:
        if session.voted or exc.rule == "distributed":
            raise
        _vote_failure(session, exc)
        raise
    except Exception as exc:
        if session.voted:
            raise
        _vote_failure(session, exc)
        raise
    finally:
        _SESSION.reset(token)


def _vote_failure(session: _Session, exc: BaseException) -> None:
    session.voted = True
    rank, _ = _rank_world(session.group)
    infos = _gather(session.group, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    raise _disagreement(infos, rank) from exc


def _gather(group: Any, info: dict) -> List[dict]:
    import torch.distributed as dist

    out: List[Any] = [None] * dist.get_world_size(group)
    try:
        dist.all_gather_object(out, info, group=group)
    except Exception as exc:  # noqa: BLE001 - a dead peer or a timeout, in the backend's words
        raise _collective_error("agreeing on the checkpoint", exc) from exc
    return out


def _collective_error(during: str, exc: BaseException) -> LoadError:
    rank, world = _rank_world_safe()
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return error("distributed", f"rank {rank} of {world}: a collective failed while {during} "
                 f"(a rank died, stalled past the group's timeout or left the load): {text}")


def _rank_world_safe() -> Tuple[Any, Any]:
    session = _SESSION.get()
    try:
        return _rank_world(session.group if session is not None else None)
    except Exception:  # noqa: BLE001 - only for wording an error
        return "?", "?"


def _disagreement(infos: List[dict], rank: int) -> LoadError:
    failed = [(r, i["error"]) for r, i in enumerate(infos) if not i.get("ok")]
    if failed:
        causes = "; ".join(f"rank {r}: {text}" for r, text in failed)
        return error("distributed", f"rank {rank}: the load failed on {len(failed)} of "
                     f"{len(infos)} ranks: {causes}")
    ref = infos[0]["files"]
    for r, info in enumerate(infos):
        files = info["files"]
        if len(files) != len(ref):
            return error("distributed", f"rank {rank}: rank {r} sees {len(files)} checkpoint "
                         f"files, rank 0 sees {len(ref)}")
        for k, (a, b) in enumerate(zip(ref, files)):
            if a[1:] != b[1:]:
                what = "size" if a[1] != b[1] else "header"
                return error("distributed", f"rank {rank}: checkpoint file {k} differs between "
                             f"ranks ({what}: rank 0 has {a[0]} of {a[1]} bytes, rank {r} has "
                             f"{b[0]} of {b[1]} bytes)", file=b[0] if r == rank else a[0])
    return error("distributed", f"rank {rank}: the ranks disagree")


def _rank_world(group: Any) -> Tuple[int, int]:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise error("distributed", "process_group= needs torch.distributed initialised "
                    "(init_process_group) first")
    return dist.get_rank(group), dist.get_world_size(group)


def file_digests(ck: Checkpoint) -> List[tuple]:
    """(path, size, sha256 of the validated header) per file: what ranks compare. The header is
    hashed as the core parsed it (names, dtypes, shapes, offsets, metadata), so two files agree
    exactly when they describe the same tensors at the same places."""
    per_file: List[list] = [[] for _ in ck.files]
    for e in ck.offset_order:
        per_file[e.file].append((e.name, e.dtype, tuple(e.shape), e.begin, e.nbytes))
    out = []
    for k, path in enumerate(ck.files):
        h = hashlib.sha256(repr((per_file[k], sorted((ck.core.metadata(k) or {}).items())))
                           .encode())
        out.append((path, os.stat(path).st_size, h.hexdigest()))
    return out


def header_bytes(ck: Checkpoint) -> int:
    """Bytes of the checkpoint that are not tensor data (headers, read by every rank): files
    hold no holes and no trailing bytes (the validator refuses them)."""
    size = sum(os.stat(p).st_size for p in ck.files)
    return size - sum(e.nbytes for e in ck.entries.values())


def _agree(ck: Checkpoint, group: Any, whole: List[tuple]) -> List[dict]:
    session = _SESSION.get()
    infos = _gather(group, {"ok": True, "files": file_digests(ck), "whole": whole})
    if session is not None:
        session.voted = True
    rank, _ = _rank_world(group)
    seen = [[f[1:] for f in i["files"]] if i.get("ok") else None for i in infos]
    if any(x is None or x != seen[0] for x in seen):
        raise _disagreement(infos, rank)
    return infos


# ---------------------------------------------------------------------------------------------
# Sharding


def shard_of(shard: ShardArg, name: str, group: Any) -> Optional[Tuple[int, int, int]]:
    """(dim, rank, world) of `name` under `shard`, or None when every rank loads it whole.
    A mapping {regex: dim} (the first pattern that re.search finds in the name; dim None: whole)
    means this rank of `group`."""
    if shard is None:
        return None
    if callable(shard):
        got = shard(name)
        if got is None:
            return None
        dim, rank, world = got
        return int(dim), int(rank), int(world)
    for pattern, dim in shard.items():
        if re.search(pattern, name):
            if dim is None:
                return None
            rank, world = _rank_world(group)
            return int(dim), rank, world
    return None


def shard_index(spec: Tuple[int, int, int], shape: tuple, name: str, path: str) -> tuple:
    """The source index of part `rank` of `world` along `dim`, as torch.tensor_split cuts."""
    dim, rank, world = spec
    if not shape:
        raise error("shard", "a scalar cannot be sharded", file=path, tensor=name)
    if dim < 0:
        dim += len(shape)
    if not 0 <= dim < len(shape):
        raise error("shard", f"dim {spec[0]} is outside a tensor of {len(shape)} dimensions",
                    file=path, tensor=name)
    if world < 1 or not 0 <= rank < world:
        raise error("shard", f"rank {rank} of {world} is not a part", file=path, tensor=name)
    n = shape[dim]
    q, extra = divmod(n, world)
    start = rank * q + min(rank, extra)
    stop = start + q + (1 if rank < extra else 0)
    return (slice(None),) * dim + (slice(start, stop),)


def shard_shape(spec: Optional[Tuple[int, int, int]], shape: tuple, name: str = "",
                path: str = "") -> tuple:
    """The shape this rank holds of a tensor of `shape` (whole when `spec` is None)."""
    if spec is None:
        return tuple(shape)
    index = shard_index(spec, shape, name, path)
    dim = len(index) - 1
    out = list(shape)
    out[dim] = index[dim].stop - index[dim].start
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# The plan: replicated pieces, their owners, buckets and rounds.


class _Piece:
    """Bytes [lo, hi) of a replicated destination, read by `owner` and broadcast to the others.
    `split`: a contiguous, same-dtype destination read by element range (else the whole target,
    read by the owner as fill() would, and sent packed)."""

    __slots__ = ("unit", "owner", "lo", "hi", "split", "packed", "offset")

    def __init__(self, unit: "_Unit", owner: int, lo: int, hi: int, split: bool) -> None:
        self.unit, self.owner, self.lo, self.hi, self.split = unit, owner, lo, hi, split
        self.packed = not split or hi - lo < PACK_BELOW_BYTES
        self.offset = 0  # in the bucket's packed buffer

    @property
    def nbytes(self) -> int:
        return self.hi - self.lo


class _Unit:
    __slots__ = ("name", "index", "dst", "entry", "split", "nbytes", "itemsize")

    def __init__(self, ck: Checkpoint, name: str, dst: torch.Tensor, comm: torch.device) -> None:
        e = ck.entry(name)
        self.name, self.index, self.dst, self.entry = name, None, dst, e
        self.nbytes = dst.numel() * dst.element_size()
        self.itemsize = dst.element_size()
        self.split = (dst.dtype == e.tdtype and dst.is_contiguous() and
                      dst.device.type == comm.type and
                      _dtypes.bits(e.dtype) == 8 * e.tdtype.itemsize)


def _bytes_of(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def _split(units: List[_Unit], world: int) -> List[_Piece]:
    """Cuts the units' bytes (in file order) into one contiguous range per rank, at element
    boundaries; a unit that cannot be cut goes whole to the rank holding its middle byte."""
    total = sum(u.nbytes for u in units)
    bound = [total * k // world for k in range(world + 1)]
    pieces: List[_Piece] = []
    owner, cursor = 0, 0
    for u in units:
        if not u.split:
            mid = cursor + u.nbytes // 2
            k = 0
            while k + 1 < world and bound[k + 1] <= mid:
                k += 1
            pieces.append(_Piece(u, k, 0, u.nbytes, False))
            cursor += u.nbytes
            continue
        lo = 0
        while lo < u.nbytes:
            while owner + 1 < world and bound[owner + 1] <= cursor + lo:
                owner += 1
            end = min(u.nbytes, bound[owner + 1] - cursor) // u.itemsize * u.itemsize
            if end <= lo:
                end = lo + u.itemsize
            step = BUCKET_BYTES // u.itemsize * u.itemsize or u.itemsize
            while lo < end:  # no piece larger than a bucket
                hi = min(end, lo + step)
                pieces.append(_Piece(u, owner, lo, hi, True))
                lo = hi
        cursor += u.nbytes
    return pieces


def _buckets(pieces: List[_Piece], world: int) -> List[List[List[_Piece]]]:
    """Per rank, its pieces grouped into buckets of at most BUCKET_BYTES (or one piece)."""
    out: List[List[List[_Piece]]] = [[] for _ in range(world)]
    size = [0] * world
    for p in pieces:
        mine = out[p.owner]
        if not mine or size[p.owner] + p.nbytes > BUCKET_BYTES:
            mine.append([])
            size[p.owner] = 0
        mine[-1].append(p)
        size[p.owner] += p.nbytes
    for per_rank in out:
        for bucket in per_rank:
            offset = 0
            for p in bucket:
                if p.packed:
                    p.offset = offset
                    offset += -(-p.nbytes // _PACK_ALIGN) * _PACK_ALIGN
    return out


def _packed_size(bucket: List[_Piece]) -> int:
    last = [p for p in bucket if p.packed]
    return last[-1].offset + last[-1].nbytes if last else 0


def _read_target(ck: Checkpoint, p: _Piece) -> Optional[tuple]:
    u = p.unit
    if not p.split or (p.lo == 0 and p.hi == u.nbytes):
        return target(ck, u.name, None, u.dst)
    e = u.entry
    device = -1 if u.dst.device.type == "cpu" else (
        u.dst.device.index if u.dst.device.index is not None else torch.cuda.current_device())
    first, count = p.lo // u.itemsize, (p.hi - p.lo) // u.itemsize
    bits = 8 * u.itemsize
    layout = ([u.dst.numel()], bits, [(first, 1, count)], [1], bits)
    return (e.file, e.index, u.dst.data_ptr() + p.lo, device, e.dtype, layout)


# ---------------------------------------------------------------------------------------------
# The load


class _Reader:
    """This rank's reads, one fill job at a time, started ahead of the broadcasts."""

    def __init__(self, ck: Checkpoint, opts: dict) -> None:
        self.ck, self.opts = ck, opts
        self.job = None
        self.read_bytes = 0
        self.report: dict = {}
        self.stages: list = []

    def start(self, targets: List[tuple]) -> None:
        targets = [t for t in targets if t is not None]
        self.job = _core.start_fill(self.ck.core, targets, self.opts, False) if targets else None

    def finish(self) -> None:
        if self.job is None:
            return
        job, self.job = self.job, None
        try:
            while not job.wait(_POLL_S):
                pass
            read = job.result()
        except BaseException:
            job.cancel()
            job.wait(-1.0)
            raise
        self.read_bytes += read["read_bytes"]
        self.report = read
        self.stages.extend(read["stages"])

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.job.wait(-1.0)
            self.job = None


def _comm_device(group: Any) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _global_ranks(group: Any, world: int) -> List[int]:
    import torch.distributed as dist

    return [dist.get_global_rank(group, k) if group is not None else k for k in range(world)]


def distributed_fill(ck: Checkpoint, items: Sequence[tuple], opts: dict, group: Any,
                     shard: ShardArg, progress: _progress.ProgressArg = None) -> LoadReport:
    """The distributed fill: `items` are (name, index, tensor) of this rank; see the module
    docstring. Raises LoadError (rule "distributed" for anything that ends it on every rank)."""
    import torch.distributed as dist

    t0 = time.perf_counter()
    # Count what is read: a gap between two wanted extents (another rank's columns) is skipped
    # unless it is under one O_DIRECT block.
    opts = dict(opts, read_gap_bytes=0)
    with preparing(group):
        rank, world = _rank_world(group)
        comm = _comm_device(group)
        local: List[tuple] = []  # core targets this rank reads for itself alone
        wanted: Dict[str, tuple] = {}  # replicated candidates: name -> (name, index, dst)
        keys: List[tuple] = []
        needed = 0
        for name, index, dst in items:
            if index is None and shard is not None:
                spec = shard_of(shard, name, group)
                if spec is not None:
                    e = ck.entry(name)
                    index = shard_index(spec, e.tshape, name, ck.file_of(e))
            if index is None and name not in wanted and isinstance(dst, torch.Tensor):
                t = target(ck, name, None, dst)  # validates as fill() does
                if t is not None:
                    wanted[name] = (name, None, dst)
                    keys.append((name, str(dst.dtype), tuple(dst.shape)))
                    needed += dst.numel() * dst.element_size()
                continue
            t = target(ck, name, index, dst)
            if t is not None:
                local.append(t)
                needed += dst.numel() * dst.element_size()
        infos = _agree(ck, group, keys)
    t_agree = time.perf_counter()

    # Replicated: what every rank wants whole, as every rank wants it.
    counts: Dict[tuple, int] = {}
    for info in infos:
        for key in info["whole"]:
            counts[key] = counts.get(key, 0) + 1
    everywhere = {key[0] for key, n in counts.items() if n == world}
    units = [_Unit(ck, e.name, wanted[e.name][2], comm)
             for e in ck.offset_order if e.name in everywhere]
    for name, item in wanted.items():
        if name not in everywhere:
            t = target(ck, name, None, item[2])
            if t is not None:
                local.append(t)
    buckets = _buckets(_split(units, world), world)
    ranks = _global_ranks(group, world)
    rounds = max((len(b) for b in buckets), default=0)
    steps = [[_read_target(ck, p) for p in bucket] for bucket in buckets[rank]]
    if local:
        steps.append(local)

    callback, close = _progress.make(progress, needed)
    reader = _Reader(ck, opts)
    received = sent = done = 0
    in_flight: List[tuple] = []  # (work, unpack or None) of the previous round

    def settle(works: List[tuple]) -> int:
        got = 0
        for work, unpack, nbytes in works:
            try:
                work.wait()
            except Exception as exc:  # noqa: BLE001 - the backend's error for a dead peer
                raise _collective_error("broadcasting tensor bytes", exc) from exc
            if unpack is not None:
                unpack()
            got += nbytes
        return got

    try:
        step = 0
        if steps:
            reader.start(steps[0])
        for r in range(rounds):
            if r < len(buckets[rank]):
                reader.finish()
                step += 1
                if step < len(steps):
                    reader.start(steps[step])  # read the next bucket while this one travels
            works: List[tuple] = []
            for k in range(world):
                if r >= len(buckets[k]):
                    continue
                bucket = buckets[k][r]
                size = _packed_size(bucket)
                if size:
                    buf = torch.empty(size, dtype=torch.uint8, device=comm)
                    if k == rank:
                        _pack(bucket, buf)
                    try:
                        w = dist.broadcast(buf, src=ranks[k], group=group, async_op=True)
                    except Exception as exc:  # noqa: BLE001
                        raise _collective_error("broadcasting tensor bytes", exc) from exc
                    unpack = None if k == rank else (lambda b=bucket, f=buf: _unpack(b, f))
                    works.append((w, unpack, 0 if k == rank else sum(
                        p.nbytes for p in bucket if p.packed)))
                    if k == rank:
                        sent += sum(p.nbytes for p in bucket if p.packed)
                for p in bucket:
                    if p.packed:
                        continue
                    view = _bytes_of(p.unit.dst)[p.lo:p.hi]
                    try:
                        w = dist.broadcast(view, src=ranks[k], group=group, async_op=True)
                    except Exception as exc:  # noqa: BLE001
                        raise _collective_error("broadcasting tensor bytes", exc) from exc
                    works.append((w, None, 0 if k == rank else p.nbytes))
                    if k == rank:
                        sent += p.nbytes
            received += settle(in_flight)
            in_flight = works
            if callback is not None:
                done = min(needed, done + sum(p.nbytes for b in (bk[r] for bk in buckets
                                                                   if r < len(bk)) for p in b))
                callback(done, needed)
        received += settle(in_flight)
        in_flight = []
        while step < len(steps):  # this rank's own tensors (sharded, or wanted here only)
            reader.finish()
            step += 1
            if step < len(steps):
                reader.start(steps[step])
        reader.finish()
        if callback is not None:
            callback(needed, needed)
    except LoadError as exc:
        reader.cancel()
        if exc.rule == "distributed":
            raise
        raise error("distributed", f"rank {rank} of {world}: {exc} (the other ranks stop "
                    "within the group's timeout)", file=exc.file, tensor=exc.tensor) from exc
    except BaseException:
        reader.cancel()
        raise
    finally:
        close()
    t_end = time.perf_counter()
    report = LoadReport(bytes=needed, seconds=t_end - t0,
                        stages=[("agree", t_agree - t0)] + reader.stages +
                        [("distributed", t_end - t_agree)],
                        io=reader.report.get("io", ""), direct=reader.report.get("direct", False),
                        fallback=reader.report.get("fallback", ""),
                        tensors=len(wanted) + len(local), read=reader.report)
    report.distributed = {
        "rank": rank, "world": world, "needed_bytes": needed, "read_bytes": reader.read_bytes,
        "header_bytes": header_bytes(ck), "received_bytes": received, "sent_bytes": sent,
        "replicated_tensors": len(units), "local_tensors": len(local), "rounds": rounds,
    }
    return report


def _pack(bucket: List[_Piece], buf: torch.Tensor) -> None:
    for p in bucket:
        if p.packed:
            src = _bytes_of(p.unit.dst.contiguous())[p.lo:p.hi]
            buf[p.offset:p.offset + p.nbytes].copy_(src)


def _unpack(bucket: List[_Piece], buf: torch.Tensor) -> None:
    for p in bucket:
        if not p.packed:
            continue
        part = buf[p.offset:p.offset + p.nbytes]
        dst = p.unit.dst
        if p.split:
            _bytes_of(dst)[p.lo:p.hi].copy_(part)
        else:
            dst.copy_(part.view(dst.dtype).view(dst.shape))


# ---------------------------------------------------------------------------------------------
# Front ends


def fill(checkpoint: Any, targets: Any, opts: dict, group: Any, shard: ShardArg,
         progress: _progress.ProgressArg) -> LoadReport:
    from ._fill import _normalize_targets

    with preparing(group):
        ck = open_checkpoint(checkpoint)
        items = list(_normalize_targets(targets))
    return distributed_fill(ck, items, opts, group, shard, progress)


def wanted_entries(ck: Checkpoint, names: NamesArg) -> list:
    """The entries `names` keeps (a list: unknown names are refused; a predicate), file order."""
    if names is None:
        return list(ck.offset_order)
    if callable(names):
        return [e for e in ck.offset_order if names(e.name)]
    wanted = set(names)
    for n in wanted:
        ck.entry(n)
    return [e for e in ck.offset_order if e.name in wanted]


def _allocate_sharded(ck: Checkpoint, entries: list, device: torch.device,
                      dtype: Optional[torch.dtype], shard: ShardArg, group: Any) -> dict:
    out = {}
    for e in entries:
        ck.entry(e.name)
        spec = shard_of(shard, e.name, group)
        if spec is None:
            out.update(allocate(ck, [e.name], device, dtype))
            continue
        tdtype = dtype if dtype is not None and e.dtype in _dtypes.FLOATING else e.tdtype
        shape = shard_shape(spec, e.tshape, e.name, ck.file_of(e))
        out[e.name] = torch.empty(shape, dtype=tdtype, device=device)
    return out


def load_file(path: str, device: torch.device, dtype: Optional[torch.dtype], names: NamesArg,
              opts: dict, group: Any, shard: ShardArg,
              progress: _progress.ProgressArg) -> Tuple[Dict[str, torch.Tensor], LoadReport]:
    with preparing(group):
        require_path(path)
        ck = open_checkpoint(path)
        tensors = _allocate_sharded(ck, wanted_entries(ck, names), device, dtype, shard, group)
    report = distributed_fill(ck, [(n, None, t) for n, t in tensors.items()], opts, group, shard,
                              progress)
    return tensors, report


class DistributedIterator:
    """iter_tensors on a process group: batches of the checkpoint's file order (the same on every
    rank), each a distributed fill of what this rank wants from it; yields (name, tensor) of one
    batch while nothing else reads. `reports`: one LoadReport per batch. Iterate to the end on
    every rank (the batches are collectives)."""

    def __init__(self, ck: Checkpoint, device: torch.device, entries: list, staging_bytes: int,
                 opts: dict, group: Any, shard: ShardArg) -> None:
        self._ck, self._device, self._opts = ck, device, opts
        self._group, self._shard = group, shard
        keep = {e.name for e in entries}
        # Every rank cuts the same batches (from every tensor), then keeps its own in them.
        self._batches = [[e for e in b if e.name in keep]
                         for b in batches_of(ck.offset_order, staging_bytes)]
        self._ready: list = []
        self.reports: List[LoadReport] = []
        self.bytes_read = 0
        self.tensors_read = 0

    def __iter__(self) -> "DistributedIterator":
        return self

    def __next__(self) -> Tuple[str, torch.Tensor]:
        while not self._ready:
            if not self._batches:
                raise StopIteration
            batch = self._batches.pop(0)
            with preparing(self._group):
                tensors = _allocate_sharded(self._ck, batch, self._device, None, self._shard,
                                            self._group)
            report = distributed_fill(self._ck, [(n, None, t) for n, t in tensors.items()],
                                      self._opts, self._group, self._shard)
            self.reports.append(report)
            self.bytes_read += report.bytes
            self.tensors_read += len(tensors)
            self._ready = list(tensors.items())
        return self._ready.pop(0)

    def totals(self) -> dict:
        """The per-rank byte counts of the batches so far, summed (`header_bytes`: the
        checkpoint's headers, once: every batch reports the same ones)."""
        out: Dict[str, int] = {}
        for r in self.reports:
            for k, v in r.distributed.items():
                if k == "header_bytes":
                    out[k] = v
                elif k.endswith("_bytes"):
                    out[k] = out.get(k, 0) + v
        return out


def iter_tensors(checkpoint: Any, device: Any, names: NamesArg, staging_bytes: int, opts: dict,
                 group: Any, shard: ShardArg) -> DistributedIterator:
    with preparing(group):
        d = parse_device(device)
        ck = open_checkpoint(checkpoint)
        entries = wanted_entries(ck, names)
        for e in entries:
            ck.entry(e.name)
    return DistributedIterator(ck, d, entries, staging_bytes, opts, group, shard)


# ---------------------------------------------------------------------------------------------
# transformers tensor parallelism: the slices its shard_tensor reads, read through fill instead.


class _SliceRecorder:
    """Stands where transformers' loader puts a safetensors get_slice: answers the checkpoint
    tensor's shape, records every index asked for and returns meta tensors of the selected shape,
    so transformers' own sharding code says which bytes this rank needs without reading any."""

    def __init__(self, shape: Sequence[int], dtype: torch.dtype) -> None:
        self._meta = torch.empty(tuple(shape), dtype=dtype, device="meta")
        self.indices: list = []

    def get_shape(self) -> List[int]:
        return list(self._meta.shape)

    def __getitem__(self, index: Any) -> torch.Tensor:
        self.indices.append(index)
        return self._meta[index]


def dtensor_slices(shard_operation: Any, shape: Sequence[int],
                   dtype: torch.dtype) -> Tuple[tuple, List[tuple]]:
    """(local shape, [(source index, narrow or None)]) of this rank's part of a checkpoint tensor
    of `shape`, as transformers' `shard_operation.shard_tensor` (DtensorShardOperation, from the
    parameter's DTensor placements) selects it: one index, or several concatenated along one
    dimension (_StridedShard, fused gate/up), each landing in `narrow` = (dim, start, length) of
    the local tensor."""
    recorder = _SliceRecorder(shape, dtype)
    local = shard_operation.shard_tensor(recorder, tensor_idx=None, device="meta", dtype=dtype)
    local_shape = tuple(local.shape)
    if len(recorder.indices) == 1:
        return local_shape, [(recorder.indices[0], None)]
    parts = [recorder._meta[i] for i in recorder.indices]
    dims = [d for d in range(len(local_shape))
            if any(p.shape[d] != local_shape[d] for p in parts)]
    if len(dims) != 1:
        raise error("shard", f"transformers' shard_tensor concatenated {len(parts)} slices in a "
                    "way shardstream cannot map onto one dimension")
    dim, start, out = dims[0], 0, []
    for index, part in zip(recorder.indices, parts):
        out.append((index, (dim, start, part.shape[dim])))
        start += part.shape[dim]
    return local_shape, out


def mesh_group(device_mesh: Any) -> Any:
    """The process group replicated tensors are broadcast over: the group of the mesh's one
    dimension with more than one rank (transformers builds its mesh with the others of size 1);
    None when several dimensions have more than one rank (each rank then reads what it holds
    itself) or none has."""
    if device_mesh is None:
        return None
    wide = [d for d, n in enumerate(device_mesh.shape) if n > 1]
    return device_mesh.get_group(wide[0]) if len(wide) == 1 else None
