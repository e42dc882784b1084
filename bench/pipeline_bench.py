#!/usr/bin/env python3
"""The streaming engine beside the machine's ceilings and the peers, warm and cold, in one run.

For one checkpoint (a single .safetensors file; 2 GB in BENCHMARKS.md), each row runs in a fresh
process, rows are interleaved (A B C ... A B C ...) so that drift on a shared machine hits every
row alike, and every figure is the median of --repeat rounds with min and max. Times are taken
inside each process from the start of the load to the last byte in place (start-up left out).

Warm rows run with the file in the page cache; cold rows drop the file's pages first
(posix_fadvise DONTNEED after fdatasync, which needs no privileges) and check that less than 5% is
still resident before they start.

Rows
  ceiling: fio io_uring      fio --ioengine=io_uring, the pipeline's block size (4 MiB chunks),
                             depth (8) and thread count (1), buffered and O_DIRECT
  ceiling: memcpy            bench/fresh_copy_ceiling: the file copied by one thread per CPU into
                             fresh anonymous memory (4 KiB pages / transparent huge pages)
  discard                    shardstream load --sink discard: the staged pipeline, bytes dropped
  owned                      shardstream load: owned CPU tensors (default, --io uring, --io mmap,
                             --huge-pages)
  zero-copy + touch          shardstream load --zero-copy --touch: views of mappings, then one
                             byte read from every page
  peers                      safetensors.torch.load_file + clone of every tensor (owned copy),
                             load_file + the same touch, runai-model-streamer's SafetensorsStreamer
                             with every tensor cloned (when installed)

Targets (issue 4): discard >= 90% of the matching fio figure; owned >= 80% of the memcpy ceiling
and >= 1.5x the fastest owned-copy peer; zero-copy + touch no slower than load_file + touch.

Usage: bench/pipeline_bench.py CKPT.safetensors [--repeat 5] [--bin build/shardstream]
       [--markdown] [--only warm|cold]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_load import checkpoint_bytes, run_ceiling, run_python, run_shardstream  # noqa: E402

CHUNK_MIB = 4
DEPTH = 8

PY_TOUCH = r"""
import sys, time, torch
from safetensors.torch import load_file
t0 = time.perf_counter()
d = load_file(sys.argv[1])
s = 0
for v in d.values():
    b = v.reshape(-1).view(torch.uint8) if v.numel() else v
    if b.numel():
        s += int(b[::4096].sum())
print(time.perf_counter() - t0)
"""

PY_RUNAI = r"""
import sys, time
from runai_model_streamer import SafetensorsStreamer
t0 = time.perf_counter()
d = {}
with SafetensorsStreamer() as streamer:
    streamer.stream_file(sys.argv[1])
    for name, tensor in streamer.get_tensors():
        d[name] = tensor.clone()
print(time.perf_counter() - t0)
"""

PY_CLONE = r"""
import sys, time
from safetensors.torch import load_file
t0 = time.perf_counter()
d = {k: v.clone() for k, v in load_file(sys.argv[1]).items()}
print(time.perf_counter() - t0)
"""


def drop_pages(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm_pages(path):
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def resident_fraction(path):
    """The share of the file in the page cache (util-linux fincore), or None without fincore."""
    if not shutil.which("fincore"):
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                         capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return int(out.stdout.split()[0]) / max(os.path.getsize(path), 1)


def run_fio(path, direct):
    out = subprocess.run(
        ["fio", "--name=ceiling", f"--filename={path}", "--readonly", "--rw=read",
         f"--bs={CHUNK_MIB}M", f"--iodepth={DEPTH}", "--ioengine=io_uring", "--numjobs=1",
         f"--direct={1 if direct else 0}", "--output-format=json"],
        check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]["read"]
    return job["io_bytes"] / job["bw_bytes"]


def shardstream_touch(binary, path):
    out = subprocess.run([binary, "load", path, "--json", "--quiet", "--zero-copy", "--touch"],
                         check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    return report["seconds"] + report["touch_seconds"]


def have_module(name):
    return subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True).returncode == 0


def rows_for(binary, path, cold):
    discard = ["--sink", "discard", "--staging-mb", "64"]
    rows = {}
    if shutil.which("fio"):
        rows["ceiling: fio io_uring O_DIRECT"] = lambda: run_fio(path, True)
        rows["ceiling: fio io_uring buffered"] = lambda: run_fio(path, False)
    rows.update({
        "discard: uring O_DIRECT": lambda: run_shardstream(binary, path, discard + ["--io", "uring", "--direct", "on"]),
        "discard: pread O_DIRECT": lambda: run_shardstream(binary, path, discard + ["--io", "pread", "--direct", "on"]),
        "discard: uring buffered": lambda: run_shardstream(binary, path, discard + ["--io", "uring", "--direct", "off"]),
        "discard: pread buffered": lambda: run_shardstream(binary, path, discard + ["--io", "pread", "--direct", "off"]),
        "owned: default (auto)": lambda: run_shardstream(binary, path, []),
        "owned: --io uring": lambda: run_shardstream(binary, path, ["--io", "uring"]),
    })
    if not cold:
        rows.update({
            "owned: --io mmap": lambda: run_shardstream(binary, path, ["--io", "mmap"]),
            "owned: --huge-pages": lambda: run_shardstream(binary, path, ["--huge-pages"]),
            "zero-copy + touch": lambda: shardstream_touch(binary, path),
            "peer: load_file + touch": lambda: run_python(PY_TOUCH, path),
            "ceiling: memcpy into fresh memory": lambda: run_ceiling(binary, path, []),
            "ceiling: memcpy into fresh huge pages": lambda: run_ceiling(binary, path, ["--huge-pages"]),
        })
    rows["peer: load_file + clone"] = lambda: run_python(PY_CLONE, path)
    if have_module("runai_model_streamer"):
        rows["peer: runai SafetensorsStreamer + clone"] = lambda: run_python(PY_RUNAI, path)
    return rows


def measure(binary, path, cold, repeat):
    rows = rows_for(binary, path, cold)
    times = {name: [] for name in rows}
    residency = []
    for r in range(repeat):
        for name, fn in rows.items():
            if cold:
                drop_pages(path)
                residency.append(resident_fraction(path))
                if residency[-1] is not None and residency[-1] > 0.05:
                    sys.exit(f"could not drop the page cache for {path}: "
                             f"{residency[-1]:.0%} still resident")
            else:
                warm_pages(path)
            times[name].append(fn())
        print(f"{'cold' if cold else 'warm'} round {r + 1}/{repeat} done", file=sys.stderr)
    return times, residency


def table(times, data_bytes, markdown):
    lines = []
    if markdown:
        lines += ["| row | median s | min s | max s | GB/s (median) |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, values in times.items():
        med = statistics.median(values)
        gbps = data_bytes / med / 1e9
        if markdown:
            lines.append(f"| {name} | {med:.3f} | {min(values):.3f} | {max(values):.3f} | {gbps:.2f} |")
        else:
            lines.append(f"{name:44s} median {med:7.3f} s  min {min(values):7.3f}  "
                         f"max {max(values):7.3f}  {gbps:6.2f} GB/s")
    return lines


def ratios(times):
    med = {name: statistics.median(v) for name, v in times.items()}
    out = []

    def ratio(a, b, what):
        if a in med and b in med:
            out.append(f"{what}: {100 * med[b] / med[a]:.0f}%  ({a} vs {b})")

    ratio("discard: uring O_DIRECT", "ceiling: fio io_uring O_DIRECT", "discard vs fio, direct")
    ratio("discard: uring buffered", "ceiling: fio io_uring buffered", "discard vs fio, buffered")
    ratio("owned: default (auto)", "ceiling: memcpy into fresh memory", "owned vs memcpy ceiling")
    peers = [n for n in med if n.startswith("peer:") and "touch" not in n]
    if peers and "owned: default (auto)" in med:
        best = min(peers, key=lambda n: med[n])
        out.append(f"owned vs fastest owned-copy peer ({best}): "
                   f"{med[best] / med['owned: default (auto)']:.2f}x")
    if "zero-copy + touch" in med and "peer: load_file + touch" in med:
        out.append(f"zero-copy + touch vs load_file + touch: "
                   f"{med['peer: load_file + touch'] / med['zero-copy + touch']:.2f}x")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "build",
                                                      "shardstream"))
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--only", choices=["warm", "cold"])
    args = parser.parse_args()

    data_bytes, files = checkpoint_bytes(args.bin, args.checkpoint)
    if len(files) != 1:
        sys.exit("pipeline_bench.py takes one .safetensors file (fio and the ceilings read one file)")
    path = files[0]
    print(f"checkpoint {path}: {data_bytes / 1e9:.2f} GB of tensors, {args.repeat} interleaved "
          f"rounds, {os.cpu_count()} CPUs, kernel {os.uname().release}")
    for cold in (False, True):
        if args.only and args.only != ("cold" if cold else "warm"):
            continue
        times, residency = measure(args.bin, path, cold, args.repeat)
        print(f"\n{'cold (pages dropped before each run)' if cold else 'warm (page cache)'}")
        if cold and residency:
            known = [r for r in residency if r is not None]
            if known:
                print(f"residency before cold runs: max {max(known):.3f}")
        print("\n".join(table(times, data_bytes, args.markdown)))
        for line in ratios(times):
            print("  " + line)


if __name__ == "__main__":
    main()
