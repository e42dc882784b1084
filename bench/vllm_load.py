#!/usr/bin/env python3
"""Weight-loading time in vLLM: `--load-format shardstream` against vLLM's own `safetensors`.

Each run is a fresh process that builds the vLLM model as an engine's worker does (the CPU
platform, one rank) and times the loader's `load_weights(model, model_config)` alone: reading the
checkpoint and every `weight_loader` copy into vLLM's parameters, the same boundaries for both
loaders (process start-up, vLLM's import and model construction are left out). Runs are
interleaved (A B A B ...) over the rounds, warm runs first, then cold; in each run, after the
model is built and just before the clock starts:
  warm: every checkpoint file read into the page cache (and checked resident with mincore);
  cold: the files' pages dropped with posix_fadvise(DONTNEED) (only this checkpoint's pages:
        the machine is shared), and checked with mincore.
The `floor` row, in the same rounds, is what any loader must spend without vLLM in the way: warm,
copying the files from the page cache into fresh memory (every load_weights copies each byte once
into freshly allocated parameters); cold, reading them from storage with O_DIRECT at the device's
pace. A loader at the floor has nothing left to win on this machine.

Run it with the vLLM virtualenv's python (scripts/install-vllm --print-python), with shardstream
installed there (scripts/test-vllm does both):

    shardstream generate /tmp/bench2g --preset small --size-gb 2 --shards 1 --seed 1
    "$(scripts/install-vllm --print-python)" bench/vllm_load.py /tmp/bench2g --repeat 5
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

# "shardstream-copy": load format shardstream with owned CPU tensors (model_loader_extra_config
# {"copy": true}) instead of its default mapped views; in --formats only when asked for.
# "floor": no loader, the least any load must spend (see _floor), measured in the same rounds.
FORMATS = ("shardstream", "safetensors", "shardstream-copy", "floor")
DEFAULT_FORMATS = "shardstream,safetensors,floor"

# The floor's storage reads: requests this large, this many threads (each one in flight).
_FLOOR_REQUEST = 8 << 20
_FLOOR_THREADS = 2


def _child(load_format: str, model: str, mode: str) -> None:
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.plugins import load_general_plugins
    from vllm.utils.torch_utils import set_default_torch_dtype

    load_general_plugins()  # as every vLLM process does: registers `shardstream`
    extra = {"copy": True} if load_format == "shardstream-copy" else {}
    config = EngineArgs(model=model, load_format=load_format.removesuffix("-copy"),
                        model_loader_extra_config=extra, dtype="bfloat16", enforce_eager=True, max_model_len=256, skip_tokenizer_init=True,
                        distributed_executor_backend="uni").create_engine_config()
    with tempfile.TemporaryDirectory() as tmp, set_current_vllm_config(config):
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=f"file://{tmp}/dist")
        initialize_model_parallel(1, 1)
        loader = get_model_loader(config.load_config)
        with set_default_torch_dtype(config.model_config.dtype), torch.device("cpu"):
            model_module = loader.create_model(vllm_config=config,
                                               model_config=config.model_config)
        # The page cache is set up here, just before the clock starts (vLLM's import and the
        # model's construction take long enough on a busy machine for others to evict it).
        files = sorted(glob.glob(os.path.join(model, "*.safetensors")))
        resident = prepare(files, mode)
        start = time.perf_counter()
        loader.load_weights(model_module, config.model_config)
        seconds = time.perf_counter() - start
    _report(seconds, sum(p.numel() * p.element_size() for p in model_module.parameters()),
            resident)


def _report(seconds: float, nbytes: int, resident: float) -> None:
    """A run's figures, the child's last line of stdout (the driver reads it)."""
    import resource

    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "param_bytes": nbytes, "peak_rss_mib": rss_mib,
                      "resident": resident}))


def _floor(model: str, mode: str) -> None:
    """What every loader must spend at least, with no vLLM in the way; one fresh process per run
    like the loaders. warm: copying each file's data from the page cache into fresh memory, as
    every load_weights copies each byte once into freshly allocated parameters (torch's copy_ on
    its threads, from a private mapping of the file). cold: reading the files from storage at
    the device's pace, O_DIRECT (no page cache), 8 MiB requests on two threads. A cold load must
    do both; it can overlap them, so the larger of the two bounds it."""
    import threading

    import torch

    files = sorted(glob.glob(os.path.join(model, "*.safetensors")))
    resident = prepare(files, mode)
    nbytes = 0
    start = time.perf_counter()
    if mode == "warm":
        kept = []
        for path in files:
            size = os.path.getsize(path)
            src = torch.from_file(path, shared=False, size=size, dtype=torch.uint8)
            dst = torch.empty(size, dtype=torch.uint8)
            dst.copy_(src)
            kept.append(dst)
            nbytes += size
    else:
        import mmap

        for path in files:
            size = os.path.getsize(path)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            try:
                errors: list = []

                def reader(offsets: range) -> None:
                    buf = mmap.mmap(-1, _FLOOR_REQUEST)  # page-aligned, as O_DIRECT needs
                    try:
                        for offset in offsets:
                            os.preadv(fd, [buf], offset)
                    except OSError as e:
                        errors.append(e)
                    finally:
                        buf.close()

                # Thread k reads requests k, k + threads, ...: the file front to back, together.
                step = _FLOOR_REQUEST * _FLOOR_THREADS
                threads = [threading.Thread(target=reader,
                                            args=(range(k * _FLOOR_REQUEST, size, step),))
                           for k in range(_FLOOR_THREADS)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if errors:
                    raise errors[0]
            finally:
                os.close(fd)
            nbytes += size
    _report(time.perf_counter() - start, nbytes, resident)


# ---- page cache ------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_PROT_READ, _MAP_SHARED = 1, 1
_PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_fraction(path: str) -> float:
    """The fraction of `path`'s pages in the page cache (mincore on a mapping of it)."""
    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            pages = (size + _PAGE - 1) // _PAGE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            return sum(v & 1 for v in vec) / pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def make_warm(files: list[str]) -> float:
    for path in files:
        if resident_fraction(path) < 0.95:
            with open(path, "rb", buffering=0) as f:
                while f.read(64 << 20):
                    pass
    return min(resident_fraction(p) for p in files)


def make_cold(files: list[str]) -> float:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return max(resident_fraction(p) for p in files)


def prepare(files: list[str], mode: str) -> float:
    """Makes the files resident (warm) or not (cold), retrying when someone else's work evicts
    or reads them meanwhile; returns the resident fraction reached, or exits when it cannot."""
    for _ in range(5):
        resident = make_warm(files) if mode == "warm" else make_cold(files)
        if (mode == "warm" and resident >= 0.95) or (mode == "cold" and resident <= 0.01):
            return resident
    sys.exit(f"error: {mode} run, but {resident:.3f} of the checkpoint stays resident")


# ---- driver ----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model folder (config.json and safetensors)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per loader and mode")
    parser.add_argument("--modes", default="warm,cold")
    parser.add_argument("--json", help="write every run here")
    parser.add_argument("--formats", default=DEFAULT_FORMATS,
                        help="load formats, interleaved: shardstream (mapped views on the CPU), "
                        "safetensors, shardstream-copy (owned tensors), floor (no loader: warm, "
                        "a copy of the files into fresh memory; cold, an O_DIRECT read of them)")
    parser.add_argument("--child", choices=FORMATS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("warm", "cold"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    formats = args.formats.split(",")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown load format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    if args.child == "floor":
        _floor(args.model, args.mode)
        return
    if args.child:
        _child(args.child, args.model, args.mode)
        return

    files = sorted(glob.glob(os.path.join(args.model, "*.safetensors")))
    checkpoint_bytes = sum(os.path.getsize(f) for f in files)
    runs = []
    for mode in args.modes.split(","):
        for round_ in range(args.repeat):
            for load_format in formats:
                out = subprocess.run([sys.executable, __file__, args.model, "--child",
                                      load_format, "--mode", mode],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"error: {load_format} run failed:\n{out.stderr[-4000:]}")
                run = json.loads(out.stdout.strip().splitlines()[-1])
                run.update(mode=mode, round=round_, load_format=load_format)
                runs.append(run)
                print(f"{mode} {round_} {load_format:16s} {run['seconds']:.3f} s "
                      f"(resident before: {run['resident']:.3f}, peak RSS {run['peak_rss_mib']:.0f} MiB)",
                      file=sys.stderr, flush=True)

    import torch
    import vllm

    import shardstream

    print(f"vllm {vllm.__version__}, torch {torch.__version__}, shardstream "
          f"{shardstream.__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, kernel {platform.release()}")
    print(f"checkpoint {args.model}: {len(files)} file(s), {checkpoint_bytes:,} bytes; "
          f"{args.repeat} runs per row, interleaved; time of load_weights in a fresh process\n")
    print("| mode | load format | median s | min s | max s | GB/s (median) | peak RSS MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    medians = {}
    for mode in args.modes.split(","):
        for load_format in formats:
            rows = [r for r in runs if r["mode"] == mode and r["load_format"] == load_format]
            secs = [r["seconds"] for r in rows]
            median = statistics.median(secs)
            medians[mode, load_format] = median
            print(f"| {mode} | {load_format} | {median:.3f} | {min(secs):.3f} | {max(secs):.3f} | "
                  f"{checkpoint_bytes / 1e9 / median:.2f} | "
                  f"{max(r['peak_rss_mib'] for r in rows):.0f} |")
    for mode in args.modes.split(","):
        for ours in ("shardstream", "shardstream-copy"):
            if (mode, "safetensors") in medians and (mode, ours) in medians:
                print(f"\n{mode}: safetensors / {ours} = "
                      f"{medians[mode, 'safetensors'] / medians[mode, ours]:.2f}x", end="")
                if (mode, "floor") in medians:
                    print(f"; floor / {ours} = "
                          f"{medians[mode, 'floor'] / medians[mode, ours]:.2f}, floor / "
                          f"safetensors = {medians[mode, 'floor'] / medians[mode, 'safetensors']:.2f}",
                          end="")
    print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "checkpoint_bytes": checkpoint_bytes, "runs": runs,
                       "argv": sys.argv}, f, indent=1)


if __name__ == "__main__":
    main()
