"""One rank of tests/python/test_distributed.py: joins a gloo group over a TCP store on
127.0.0.1, runs the scenarios named on the command line with shardstream, compares every tensor
with the reference reader (safetensors, or torch.tensor_split of it) and writes what it saw to
OUT/rank<R>.json. Exits 0 when the scenarios ran (the test judges the results).

    python distributed_worker.py RANK WORLD PORT OUT CHECKPOINT SCENARIO[,SCENARIO...]

A LoadError is recorded (rule, text, seconds into the load), not raised.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from safetensors.torch import load_file as reference_load

import shardstream
from shardstream import _distributed

GROUP_TIMEOUT_S = 10
# Small buckets so that a checkpoint of a few MiB takes several broadcast rounds, with pieces
# that travel packed and pieces that go straight into their destinations.
_distributed.BUCKET_BYTES = 1 << 20
_distributed.PACK_BELOW_BYTES = 256 << 10
# Sharded along dim 0 or dim 1 by name: "row" and "col" tensors.
SHARD = {r"\.row$": 0, r"\.col$": 1}


def storage_read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return -1


def raw(t: torch.Tensor) -> bytes:
    if t.numel() == 0:
        return b""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def differences(ours: dict, ref: dict) -> list:
    out = [n for n in ref if n not in ours] + [n for n in ours if n not in ref]
    for name, r in ref.items():
        t = ours.get(name)
        if t is not None and (t.dtype != r.dtype or t.shape != r.shape or raw(t) != raw(r)):
            out.append(name)
    return out


def sharded_reference(ref: dict, rank: int, world: int) -> dict:
    """What this rank holds: torch.tensor_split of the reference for the sharded names."""
    out = {}
    for name, t in ref.items():
        dim = 0 if name.endswith(".row") else 1 if name.endswith(".col") else None
        out[name] = torch.tensor_split(t, world, dim)[rank] if dim is not None else t
    return out


def run(scenario: str, rank: int, world: int, path: str, ref: dict) -> dict:
    g = dist.group.WORLD
    before = storage_read_bytes()
    t0 = time.monotonic()
    result: dict = {}

    def mark(result: dict) -> None:
        # Right after the load: comparing with the reference (safetensors maps the file) could
        # read from storage too.
        result["storage_read_bytes"] = storage_read_bytes() - before
    if scenario == "fill":
        targets = {n: torch.empty_like(t) for n, t in ref.items()}
        calls = []
        report = shardstream.fill(path, targets, direct=True, process_group=g,
                                  progress=lambda done, total: calls.append((done, total)))
        mark(result)
        result["diff"] = differences(targets, ref)
        result["report"] = report.distributed
        result["progress"] = calls
    elif scenario == "load_file":
        tensors = shardstream.load_file(path, direct=True, process_group=g)
        mark(result)
        result["diff"] = differences(tensors, ref)
    elif scenario == "sharded":
        # Only the sharded tensors: each rank reads its own part and nothing travels.
        keep = [n for n in ref if n.endswith((".row", ".col"))]
        want = {n: t for n, t in sharded_reference(ref, rank, world).items() if n in keep}
        tensors, report = _distributed.load_file(
            path, torch.device("cpu"), None, keep, shardstream._fill.options(None, "auto", True,
                                                                              None),
            g, SHARD, None)
        mark(result)
        result["diff"] = differences(tensors, want)
        result["report"] = report.distributed
    elif scenario == "mixed":
        # Replicated and sharded together, through the public load_file and iter_tensors.
        want = sharded_reference(ref, rank, world)
        tensors = shardstream.load_file(path, direct=True, process_group=g, shard=SHARD)
        result["diff"] = differences(tensors, want)
        it = shardstream.iter_tensors(path, direct=True, staging_mb=2, process_group=g,
                                      shard=SHARD)
        got = dict(it)
        result["iter_diff"] = differences(got, want)
        result["iter_batches"] = len(it.reports)
        result["report"] = it.totals()
    elif scenario == "experts":
        # names= places tensors on one rank each: read by that rank alone, nothing sent.
        mine = [n for i, n in enumerate(sorted(ref)) if i % world == rank]
        tensors = shardstream.load_file(path, direct=True, process_group=g, names=mine)
        mark(result)
        result["diff"] = differences(tensors, {n: ref[n] for n in mine})
    elif scenario == "load_into":
        module = torch.nn.Module()
        for name, t in sharded_reference(ref, rank, world).items():
            if t.dtype.is_floating_point:
                leaf = module
                parts = name.split(".")
                for p in parts[:-1]:
                    if not hasattr(leaf, p):
                        leaf.add_module(p, torch.nn.Module())
                    leaf = getattr(leaf, p)
                leaf.register_parameter(parts[-1], torch.nn.Parameter(
                    torch.empty(t.shape, dtype=t.dtype, device="meta"), requires_grad=False))
        report = shardstream.load_into(module, path, device="cpu", strict=False,
                                       process_group=g, shard=SHARD)
        state = module.state_dict()
        want = {n: t for n, t in sharded_reference(ref, rank, world).items() if n in state}
        result["diff"] = differences(dict(state), want)
        result["report"] = report.distributed
    elif scenario == "die":
        real_finish = _distributed._Reader.finish

        def finish_then_die(self):
            real_finish(self)
            if rank == 1:
                os._exit(3)

        _distributed._Reader.finish = finish_then_die
        shardstream.load_file(path, direct=True, process_group=g)
    elif scenario == "stall":
        real_finish = _distributed._Reader.finish

        def finish_slowly(self):
            real_finish(self)
            if rank == 1:
                time.sleep(GROUP_TIMEOUT_S + 2)  # past the others' timeout

        _distributed._Reader.finish = finish_slowly
        shardstream.load_file(path, direct=True, process_group=g)
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    result["seconds"] = time.monotonic() - t0
    result.setdefault("storage_read_bytes", storage_read_bytes() - before)
    return result


def main() -> None:
    rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    out, path, scenarios = sys.argv[4], sys.argv[5], sys.argv[6].split(",")
    path = path.replace("{rank}", str(rank))
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0,
                          timeout=datetime.timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=GROUP_TIMEOUT_S))
    try:
        ref = reference_load(path)
    except Exception:  # noqa: BLE001 - the bad-file cases: the reference refuses it too
        ref = {}
    # One small load first, not measured: the first distributed load of a process faults in code
    # (shared libraries, lazily imported modules) whose pages /proc/self/io would count as storage
    # reads when they are not cached. Only when every rank could read its file (the bad-file
    # scenarios leave one without a reference), so that every rank makes the same calls.
    every = [None] * world
    dist.all_gather_object(every, sorted(ref)[:1])
    if all(every) and all(names == every[0] for names in every):
        first = every[0][0]
        try:
            shardstream.load_file(path, direct=True, process_group=dist.group.WORLD,
                                  names=[first])
        except shardstream.LoadError:
            pass  # a scenario of bad files: the measured scenarios say what happened
    results = {}
    for scenario in scenarios:
        t0 = time.monotonic()
        try:
            results[scenario] = run(scenario, rank, world, path, ref)
        except shardstream.LoadError as exc:
            results[scenario] = {"error": exc.rule, "text": str(exc),
                                 "seconds": time.monotonic() - t0}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    # Leave without a barrier: a failed group cannot take part in one.
    os._exit(0)


if __name__ == "__main__":
    main()
