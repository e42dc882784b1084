#!/usr/bin/env python3
"""Warm-cache CPU load times: shardstream beside safetensors and beside the machine's ceilings.

Every run is a fresh process (no warm destination memory carries over), and runs are
interleaved (A B C D ... A B C D ...) so that drift on a shared machine hits every row alike.
Times are measured inside each process, from the start of the load call to the last byte in
place, so interpreter and libtorch start-up are left out of every row.

Rows:
  shardstream owned      `shardstream load` (pread into tensors it allocates)
  shardstream zero-copy  `shardstream load --zero-copy` (views of private mappings, lazy)
  load_file              safetensors.torch.load_file (mmap-backed, lazy)
  load_file + clone      the same, then .clone() of every tensor (owned memory, like ours)
  ceiling: read          one read(2) of the whole file into a fresh buffer (1 thread)
  ceiling: page cache    dd of the file to /dev/null (kernel copy-out, no destination faults)

Usage: bench/compare_load.py CKPT [--repeat 5] [--bin build/shardstream] [--markdown]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PY_LOAD = r"""
import sys, time
from safetensors.torch import load_file
t0 = time.perf_counter()
d = load_file(sys.argv[1])
if sys.argv[2] == "clone":
    d = {k: v.clone() for k, v in d.items()}
print(time.perf_counter() - t0)
"""

PY_READ = r"""
import os, sys, time
path = sys.argv[1]
size = os.path.getsize(path)
t0 = time.perf_counter()
buf = bytearray(size)
with open(path, "rb", buffering=0) as f:
    view = memoryview(buf)
    done = 0
    while done < size:
        done += f.readinto(view[done:])
print(time.perf_counter() - t0)
"""


def checkpoint_bytes(binary, path):
    out = subprocess.run([binary, "inspect", path, "--json"], check=True, capture_output=True,
                         text=True).stdout
    info = json.loads(out)
    files = [f["path"] for f in info["files"]]
    return info["data_bytes"], files


def run_shardstream(binary, path, extra):
    out = subprocess.run([binary, "load", path, "--json", "--quiet", *extra], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["seconds"]


def run_python(code, *args):
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True,
                         text=True).stdout
    return float(out.strip().splitlines()[-1])


def run_dd(files):
    t0 = time.perf_counter()
    for f in files:
        subprocess.run(["dd", f"if={f}", "of=/dev/null", "bs=16M"], check=True,
                       capture_output=True)
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "build",
                                                      "shardstream"))
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    data_bytes, files = checkpoint_bytes(args.bin, args.checkpoint)
    single_file = len(files) == 1
    rows = {
        "shardstream owned": lambda: run_shardstream(args.bin, args.checkpoint, []),
        "shardstream zero-copy": lambda: run_shardstream(args.bin, args.checkpoint,
                                                         ["--zero-copy"]),
        "ceiling: page cache (dd)": lambda: run_dd(files),
    }
    if single_file:
        rows["load_file"] = lambda: run_python(PY_LOAD, args.checkpoint, "lazy")
        rows["load_file + clone"] = lambda: run_python(PY_LOAD, args.checkpoint, "clone")
        rows["ceiling: read into fresh memory"] = lambda: run_python(PY_READ, args.checkpoint)

    # One untimed pass warms the page cache for every row.
    run_dd(files)
    times = {name: [] for name in rows}
    for r in range(args.repeat):
        for name, fn in rows.items():
            times[name].append(fn())
        print(f"round {r + 1}/{args.repeat} done", file=sys.stderr)

    ceiling = min(statistics.median(times[n]) for n in times if n.startswith("ceiling"))
    header = ("| what | median s | min s | max s | GB/s (median) | % of fastest ceiling |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: |")
    lines = [header] if args.markdown else []
    for name, values in times.items():
        med = statistics.median(values)
        gbps = data_bytes / med / 1e9
        pct = 100.0 * ceiling / med
        if args.markdown:
            lines.append(f"| {name} | {med:.3f} | {min(values):.3f} | {max(values):.3f} | "
                         f"{gbps:.2f} | {pct:.0f}% |")
        else:
            lines.append(f"{name:34s} median {med:7.3f} s  min {min(values):7.3f}  "
                         f"max {max(values):7.3f}  {gbps:6.2f} GB/s  {pct:4.0f}% of ceiling")
    print(f"checkpoint {args.checkpoint}: {data_bytes / 1e9:.2f} GB of tensors, "
          f"{len(files)} file(s), {args.repeat} interleaved rounds, "
          f"{os.cpu_count()} CPUs")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
