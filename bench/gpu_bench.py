#!/usr/bin/env python3
"""GPU loads: shardstream beside the machine's ceilings and the peers, warm and cold, in one run.

A ~4 GB bf16 Llama-shaped checkpoint (`shardstream generate --preset llama-1b --size-gb 4
--shards 2`, whose config.json transformers loads as LlamaForCausalLM) is loaded to cuda:0 by:

  shardstream LoadFile   `shardstream load DIR --device cuda:0` (tensors map: reads into pinned
                         staging slots, copies from them)
  shardstream LoadInto   `shardstream load DIR --model llama --device cuda:0` (meta skeleton,
                         materialised on the GPU, streamed into, inv_freq recomputed)
  load_file              safetensors.torch.load_file(path, device="cuda:0") for every shard
  from_pretrained        transformers AutoModelForCausalLM.from_pretrained(DIR,
                         device_map="cuda:0", dtype=torch.bfloat16) (warm only: it takes long)

beside the ceilings measured in the same run: pinned host-to-device copies and page cache to
pinned memory (bench/cuda_ceiling), and storage (fio with O_DIRECT if installed, else an O_DIRECT
read loop here). Every run is a fresh process, rows are interleaved (A B C ... A B C ...), times
are taken inside each process from the start of the load to the last byte on the device
(start-up excluded), and each figure is the median of --repeat rounds with min and max. Cold runs
drop the files' pages first (fdatasync + POSIX_FADV_DONTNEED).

Also reported per row: extra GPU memory (torch's peak allocation minus the parameter bytes, plus
shardstream's cast scratch) and the process's peak host RSS.

Usage: bench/gpu_bench.py [--build-dir build] [--checkpoint DIR] [--repeat 3] [--json OUT] [--sweep]
(--sweep: only warm shardstream rows over the tuning knobs, with each row's stage times.)
"""
import argparse
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time



def drop_pages(files):
    """Drops the files' pages (fdatasync + POSIX_FADV_DONTNEED: no privileges needed)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_pages(files):
    for path in files:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


PY_LOAD_FILE = r"""
import json, sys, time, torch
from safetensors.torch import load_file
torch.cuda.init(); torch.zeros(1, device="cuda:0"); torch.cuda.synchronize()
t0 = time.perf_counter()
tensors = {}
for path in sys.argv[1:]:
    tensors.update(load_file(path, device="cuda:0"))
torch.cuda.synchronize()
seconds = time.perf_counter() - t0
params = sum(t.numel() * t.element_size() for t in tensors.values())
print(json.dumps({"seconds": seconds, "peak": torch.cuda.max_memory_allocated(0), "params": params}))
"""

PY_FROM_PRETRAINED = r"""
import json, sys, time, torch
from transformers import AutoModelForCausalLM
torch.cuda.init(); torch.zeros(1, device="cuda:0"); torch.cuda.synchronize()
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map="cuda:0",
                                             dtype=torch.bfloat16)
torch.cuda.synchronize()
seconds = time.perf_counter() - t0
params = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(json.dumps({"seconds": seconds, "peak": torch.cuda.max_memory_allocated(0), "params": params}))
"""


def run(argv, env=None):
    """Runs argv to completion; returns (stdout, peak RSS in bytes from wait4)."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, env=env)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage (Popen never waits)
        errors.seek(0)
        err = errors.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n"
                           f"{err.decode(errors='replace')[-2000:]}")
    return out.decode(), usage.ru_maxrss * 1024


def shard_files(directory):
    return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                  if f.endswith(".safetensors"))


def storage_ceiling(files):
    """Seconds to read every file with O_DIRECT, 16 MiB at a time: fio if present, else here."""
    drop_pages(files)
    if shutil.which("fio"):
        total = 0.0
        for path in files:
            out = subprocess.run(["fio", "--name=storage", f"--filename={path}", "--readonly",
                                  "--rw=read", "--bs=16M", "--iodepth=8", "--ioengine=io_uring",
                                  "--direct=1", "--output-format=json"],
                                 check=True, capture_output=True, text=True).stdout
            job = json.loads(out[out.index("{"):])["jobs"][0]["read"]
            total += job["io_bytes"] / job["bw_bytes"]
        return total, "fio io_uring O_DIRECT, 16 MiB, depth 8"
    buf = mmap.mmap(-1, 16 << 20)  # page-aligned, as O_DIRECT wants
    t0 = time.perf_counter()
    for path in files:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            while os.readv(fd, [buf]) == len(buf):
                pass
        finally:
            os.close(fd)
    return time.perf_counter() - t0, "O_DIRECT read loop, 16 MiB, depth 1 (no fio here)"


def ceilings(build_dir, files):
    tool = os.path.join(build_dir, "bench", "cuda_ceiling")
    out, _ = run([tool, "--json", "--file", files[0], "--threads", str(os.cpu_count() or 1)])
    figures = {}
    for line in out.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            figures[row["figure"]] = row["value"]
    h2d = max(v for k, v in figures.items() if k.startswith("h2d_pinned"))
    cache = max(v for k, v in figures.items() if k.startswith("cache_to_pinned"))
    return h2d, cache, figures


# --sweep: the warm path over the knobs that bound it, each row beside the default in the same run.
# Warm reads are pread readers, one per core up to half the slots, each uploading its own slots:
# fewer readers (--threads), more slots for more readers (--staging-mb), and io_uring readers
# that hand their slots to copy tasks (--io uring) show what bounds that.
SWEEP = ([], ["--threads", "4"], ["--staging-mb", "128"], ["--io", "uring"],
         ["--no-device-reserve"], ["--copy-streams", "8"], ["--copy-streams", "1"],
         ["--chunk-mb", "2", "--staging-mb", "32"],
         ["--chunk-mb", "2", "--queue-depth", "12", "--staging-mb", "48"],
         ["--chunk-mb", "2", "--queue-depth", "16", "--staging-mb", "64"],
         ["--chunk-mb", "1", "--queue-depth", "16", "--staging-mb", "32"],
         ["--chunk-mb", "1", "--queue-depth", "32", "--staging-mb", "64"],
         ["--queue-depth", "12", "--staging-mb", "96"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-dir", default=os.environ.get("SHARDSTREAM_BUILD_DIR", "build"))
    parser.add_argument("--checkpoint")
    parser.add_argument("--size-gb", type=float, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--sweep", action="store_true",
                        help="only warm shardstream rows, over queue depth, chunk, staging, copy "
                             "streams and device reservation, with each row's stage times")
    args = parser.parse_args()
    binary = os.environ.get("SHARDSTREAM_BIN", os.path.join(args.build_dir, "shardstream"))
    ckpt = args.checkpoint or os.path.join(args.build_dir, f"gpu-bench-{args.size_gb:g}g")
    if not os.path.exists(os.path.join(ckpt, "config.json")):
        t0 = time.perf_counter()
        run([binary, "generate", ckpt, "--preset", "llama-1b", "--size-gb", str(args.size_gb),
             "--shards", "2", "--seed", "1", "--force"])
        print(f"generated {ckpt} in {time.perf_counter() - t0:.1f} s", flush=True)
    files = shard_files(ckpt)
    data_bytes = json.loads(run([binary, "inspect", ckpt, "--json"])[0])["data_bytes"]

    import torch  # noqa: E402  (only for the report's versions and card)
    card = torch.cuda.get_device_name(0)
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for module in ("safetensors", "transformers"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip() if shutil.which(
                                "nvidia-smi") else "?"
    print(f"card {card}, driver {driver}, {versions}, {os.cpu_count()} CPUs, kernel "
          f"{os.uname().release}; checkpoint {ckpt}: {data_bytes / 1e9:.2f} GB in "
          f"{len(files)} files", flush=True)

    h2d, cache, figures = ceilings(args.build_dir, files)
    storage_s, storage_how = storage_ceiling(files)
    print(f"ceiling: pinned H2D {h2d:.2f} GB/s, page cache -> pinned {cache:.2f} GB/s, "
          f"storage {data_bytes / storage_s / 1e9:.2f} GB/s ({storage_how})", flush=True)

    details = {}  # row name -> shardstream's own figures per run (stages, reads in flight)

    def shardstream(name, extra):
        def go():
            out, rss = run([binary, "load", ckpt, "--device", "cuda:0", "--json", "--quiet", *extra])
            report = json.loads(out)
            extra_gpu = report["device_peak_bytes"] - data_bytes + report["device_scratch_bytes"]
            figures = dict(report.get("stages", {}))
            for key in ("peak_in_flight", "io_busy_seconds", "copy_busy_seconds", "pin_seconds"):
                if isinstance(report.get(key), (int, float)):
                    figures[key] = report[key]
            details.setdefault(name, []).append(figures)
            return report["seconds"], extra_gpu, rss
        return (name, go)

    def python(code, *argv):
        def go():
            out, rss = run([sys.executable, "-c", code, *argv])
            report = json.loads(out.strip().splitlines()[-1])
            return report["seconds"], report["peak"] - report["params"], rss
        return go

    def ours(name, temp, extra):
        return (name, temp, shardstream(f"{temp} {name}", extra)[1])

    if args.sweep:
        rows = [ours("shardstream LoadInto (llama)", "warm", ["--model", "llama"])]
        rows += [ours(" ".join(["shardstream LoadFile", *flags]), "warm", flags) for flags in SWEEP]
    else:
        rows = [ours("shardstream LoadFile", "warm", [])]
        rows += [ours("shardstream LoadInto (llama)", "warm", ["--model", "llama"]),
                 ("safetensors load_file", "warm", python(PY_LOAD_FILE, *files))]
        if versions["transformers"]:
            rows.append(("transformers from_pretrained", "warm",
                         python(PY_FROM_PRETRAINED, ckpt)))
        rows += [ours("shardstream LoadFile", "cold", []),
                 ours("shardstream LoadInto (llama)", "cold", ["--model", "llama"]),
                 ("safetensors load_file", "cold", python(PY_LOAD_FILE, *files))]

    results = {(name, temp): [] for name, temp, _ in rows}
    for r in range(args.repeat):
        for name, temp, fn in rows:
            (drop_pages if temp == "cold" else warm_pages)(files)
            try:
                seconds, extra_gpu, rss = fn()
                results[(name, temp)].append((seconds, extra_gpu, rss))
                print(f"  round {r + 1}: {temp} {name}: {seconds:.3f} s, "
                      f"{data_bytes / seconds / 1e9:.2f} GB/s", flush=True)
            except Exception as e:  # a failed peer is shown as failed, never as fast
                results[(name, temp)].append(None)
                print(f"  round {r + 1}: {temp} {name}: FAILED: {str(e).splitlines()[0]}",
                      flush=True)

    ceiling = min(h2d, cache)
    print(f"\n| row | median s | min s | max s | GB/s | % of min(H2D, cache->pinned) = "
          f"{ceiling:.1f} GB/s | extra GPU MiB | peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    medians = {}
    table = []
    for (name, temp), runs in results.items():
        ok = [x for x in runs if x is not None]
        if not ok:
            print(f"| {temp} {name} | failed | | | | | | |")
            continue
        times = [x[0] for x in ok]
        med = statistics.median(times)
        medians[(name, temp)] = med
        gbps = data_bytes / med / 1e9
        extra = max(x[1] for x in ok) / 2**20
        rss = max(x[2] for x in ok) / 2**20
        pct = f"{100 * gbps / ceiling:.0f}%" if temp == "warm" else "-"
        print(f"| {temp} {name} | {med:.3f} | {min(times):.3f} | {max(times):.3f} | {gbps:.2f} | "
              f"{pct} | {extra:.0f} | {rss:.0f} |")
        table.append({"row": name, "cache": temp, "median_s": med, "min_s": min(times),
                      "max_s": max(times), "gbps": gbps, "extra_gpu_bytes": max(x[1] for x in ok),
                      "peak_rss_bytes": max(x[2] for x in ok), "failed_runs": len(runs) - len(ok)})
    if details:
        print("\nshardstream's own figures, median over runs (seconds unless named):")
        for name, runs in details.items():
            keys = sorted({k for run in runs for k in run})
            parts = [f"{k} {statistics.median(r[k] for r in runs if k in r):.3f}" for k in keys]
            print(f"  {name}: " + ", ".join(parts))
    for temp in ("warm", "cold"):
        ours = medians.get(("shardstream LoadFile", temp))
        for (name, t), med in medians.items():
            if t == temp and not name.startswith("shardstream") and ours:
                print(f"  {temp}: shardstream LoadFile is {med / ours:.2f}x {name}")
        into = medians.get(("shardstream LoadInto (llama)", temp))
        hf = medians.get(("transformers from_pretrained", temp))
        if into and hf:
            print(f"  {temp}: shardstream LoadInto is {hf / into:.2f}x from_pretrained")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "driver": driver, "versions": versions,
                       "checkpoint": ckpt, "data_bytes": data_bytes, "ceilings": figures,
                       "storage_seconds": storage_s, "storage_how": storage_how,
                       "rows": table, "details": details, "command": sys.argv}, f, indent=1)


if __name__ == "__main__":
    main()
