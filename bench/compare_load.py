#!/usr/bin/env python3
"""Warm-cache CPU load times: shardstream beside safetensors and beside the machine's ceilings.

Every run is a fresh process (no warm destination memory carries over), and runs are
interleaved (A B C D ... A B C D ...) so that drift on a shared machine hits every row alike.
Times are measured inside each process, from the start of the load call to the last byte in
place, so interpreter and libtorch start-up are left out of every row.

Rows:
  shardstream owned      `shardstream load` (preadv into tensors it allocates), also with
                         --huge-pages, --io mmap and --io uring
  shardstream zero-copy  `shardstream load --zero-copy` (views of private mappings, lazy)
  load_file              safetensors.torch.load_file (mmap-backed, lazy)
  load_file + clone      the same, then .clone() of every tensor (owned memory, like ours)
  ceiling: memcpy        bench/fresh_copy_ceiling: the file, mapped and populated, copied by one
                         thread per CPU into fresh anonymous memory (4 KiB or huge pages): what
                         any loader producing owned CPU tensors must pay
  ceiling: page cache    dd of the file to /dev/null (kernel copy-out into a reused buffer: no
                         destination faults; the upper bound for any copy out of the cache)

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


def run_ceiling(binary, path, extra):
    tool = os.path.join(os.path.dirname(binary), "bench", "fresh_copy_ceiling")
    cpus = str(os.cpu_count() or 1)
    out = subprocess.run([tool, path, cpus, *extra], check=True, capture_output=True,
                         text=True).stdout
    return float(out.strip())


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
        "shardstream owned --huge-pages": lambda: run_shardstream(args.bin, args.checkpoint,
                                                                  ["--huge-pages"]),
        "shardstream owned --io mmap": lambda: run_shardstream(args.bin, args.checkpoint,
                                                               ["--io", "mmap"]),
        "shardstream owned --io uring": lambda: run_shardstream(args.bin, args.checkpoint,
                                                                ["--io", "uring"]),
        "shardstream zero-copy": lambda: run_shardstream(args.bin, args.checkpoint,
                                                         ["--zero-copy"]),
        "ceiling: page cache (dd)": lambda: run_dd(files),
    }
    if single_file:
        rows["load_file"] = lambda: run_python(PY_LOAD, args.checkpoint, "lazy")
        rows["load_file + clone"] = lambda: run_python(PY_LOAD, args.checkpoint, "clone")
        rows["ceiling: memcpy into fresh memory"] = lambda: run_ceiling(args.bin, files[0], [])
        rows["ceiling: memcpy into fresh huge pages"] = lambda: run_ceiling(args.bin, files[0],
                                                                            ["--huge-pages"])

    # One untimed pass warms the page cache for every row.
    run_dd(files)
    times = {name: [] for name in rows}
    for r in range(args.repeat):
        for name, fn in rows.items():
            times[name].append(fn())
        print(f"round {r + 1}/{args.repeat} done", file=sys.stderr)

    # Owned rows are compared with the 4 KiB-page memcpy ceiling (or dd when there is none).
    fresh = [n for n in times if n == "ceiling: memcpy into fresh memory"]
    ceiling = statistics.median(times[fresh[0]] if fresh else times["ceiling: page cache (dd)"])
    # Lazy rows (mappings nothing has touched yet) have no ceiling: they have not moved the bytes.
    lazy = {"shardstream zero-copy", "load_file"}
    header = ("| what | median s | min s | max s | GB/s (median) | % of memcpy ceiling |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: |")
    lines = [header] if args.markdown else []
    for name, values in times.items():
        med = statistics.median(values)
        gbps = data_bytes / med / 1e9
        pct = "lazy" if name in lazy else f"{100.0 * ceiling / med:.0f}%"
        if args.markdown:
            lines.append(f"| {name} | {med:.3f} | {min(values):.3f} | {max(values):.3f} | "
                         f"{gbps:.2f} | {pct} |")
        else:
            lines.append(f"{name:48s} median {med:7.3f} s  min {min(values):7.3f}  "
                         f"max {max(values):7.3f}  {gbps:6.2f} GB/s  {pct:>5s} of ceiling")
    print(f"checkpoint {args.checkpoint}: {data_bytes / 1e9:.2f} GB of tensors, "
          f"{len(files)} file(s), {args.repeat} interleaved rounds, "
          f"{os.cpu_count()} CPUs")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
