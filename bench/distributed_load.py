#!/usr/bin/env python3
"""Many ranks, one read: shardstream.load_file(process_group=) against every rank reading all.

Starts N processes on this machine (a gloo group over a TCP store on 127.0.0.1) and times, in
interleaved rounds, two ways for every rank to end up with the whole checkpoint on the CPU:

  distributed  shardstream.load_file(path, direct=True, process_group=group): each rank reads
               about 1/N from storage and the group broadcasts the rest (issue 27);
  independent  shardstream.load_file(path, direct=True) on every rank: each reads everything
               (what vLLM and fastsafetensors do under tensor parallelism).

Both read with O_DIRECT, so every round is cold: the page cache serves neither. Each round starts
on a barrier; its wall time is the slowest rank's. Per rank: bytes read from storage
(/proc/<pid>/io read_bytes, after one unmeasured small load of each kind, so that the headers are
cached and the code faulted in: what the rounds count is the tensor bytes) and, distributed, bytes
received.

    bench/distributed_load.py CHECKPOINT [--ranks 2] [--repeat 3] [--json OUT.json]
    shardstream bench CHECKPOINT --ranks 2 [--repeat 3] [--json OUT.json]   (runs this script)

Prints a markdown table (median, min and max of the rounds).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

MODES = ("distributed", "independent")


def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no read_bytes")


def _die_with_parent() -> None:
    # A killed driver (`shardstream bench --timeout-s`) takes its ranks with it instead of
    # leaving them waiting on a barrier.
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker(args: argparse.Namespace) -> None:
    _die_with_parent()
    import torch
    import torch.distributed as dist

    import shardstream

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", args.port, args.ranks, args.rank == 0,
                          timeout=datetime.timedelta(seconds=120))
    dist.init_process_group("gloo", store=store, rank=args.rank, world_size=args.ranks,
                            timeout=datetime.timedelta(seconds=600))
    # One small load of each kind first, not measured: a process's first load faults in code
    # (shared libraries, lazily imported modules) that /proc/self/io would count as storage reads
    # when its pages are not cached, and reads the headers, which stay cached: the rounds then
    # count the tensor bytes each rank reads (O_DIRECT, never cached).
    with shardstream.safe_open(args.checkpoint, "pt") as f:
        first = next(iter(f.keys()))
    shardstream.load_file(args.checkpoint, direct=True, process_group=dist.group.WORLD,
                          names=[first])
    shardstream.load_file(args.checkpoint, direct=True)
    rows = []
    for r in range(args.repeat):
        for mode in MODES:
            dist.barrier()
            before = _read_bytes()
            t0 = time.perf_counter()
            if mode == "distributed":
                tensors = shardstream.load_file(args.checkpoint, direct=True,
                                                process_group=dist.group.WORLD)
            else:
                tensors = shardstream.load_file(args.checkpoint, direct=True)
            seconds = time.perf_counter() - t0
            rows.append({"mode": mode, "round": r, "rank": args.rank, "seconds": seconds,
                         "read_bytes": _read_bytes() - before,
                         "tensor_bytes": sum(t.numel() * t.element_size()
                                             for t in tensors.values())})
            del tensors
    with open(os.path.join(args.out, f"rank{args.rank}.json"), "w") as f:
        json.dump(rows, f)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _table(rows: list, ranks: int) -> str:
    lines = ["| mode | ranks | wall s (median) | min | max | GB/s per rank | storage GB read "
             "per rank (median) | summed over ranks |",
             "|---|---|---|---|---|---|---|---|"]
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        rounds = sorted({r["round"] for r in mine})
        walls = [max(r["seconds"] for r in mine if r["round"] == k) for k in rounds]
        per_rank = [statistics.median(r["read_bytes"] for r in mine if r["rank"] == k)
                    for k in range(ranks)]
        size = mine[0]["tensor_bytes"]
        wall = statistics.median(walls)
        lines.append(f"| {mode} | {ranks} | {wall:.3f} | {min(walls):.3f} | {max(walls):.3f} | "
                     f"{size / wall / 1e9:.2f} | "
                     f"{' / '.join(f'{b / 1e9:.3f}' for b in per_rank)} | "
                     f"{sum(per_rank) / 1e9:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="write every rank's rows here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    with tempfile.TemporaryDirectory() as out:
        port = _free_port()
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs = [subprocess.Popen([sys.executable, __file__, args.checkpoint, "--worker",
                                   "--ranks", str(args.ranks), "--repeat", str(args.repeat),
                                   "--rank", str(r), "--port", str(port), "--out", out],
                                  env=env) for r in range(args.ranks)]
        # A rank that fails ends the run at once: the others would wait on it until the group's
        # timeout.
        while any(q.poll() is None for q in procs):
            if any(q.returncode for q in procs):
                for q in procs:
                    if q.poll() is None:
                        q.kill()
            time.sleep(0.1)
        codes = [q.wait() for q in procs]
        if any(codes):
            sys.exit(f"distributed_load: ranks exited with {codes}")
        rows = []
        for r in range(args.ranks):
            with open(os.path.join(out, f"rank{r}.json")) as f:
                rows.extend(json.load(f))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "ranks": args.ranks, "rows": rows}, f,
                      indent=1)
    print(_table(rows, args.ranks))


if __name__ == "__main__":
    main()
