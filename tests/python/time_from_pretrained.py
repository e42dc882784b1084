"""Times transformers' from_pretrained against shardstream.transformers.from_pretrained, each run
a fresh process, interleaved (A B A B ...), from the call to a ready model (interpreter, imports
and CUDA start-up outside the clock, as in bench/peers/_common.py). Prints one JSON line per run
and the medians:

    python tests/python/time_from_pretrained.py MODEL_DIR [--runs 5] [--device cpu|cuda:N]
                                                [--warm | --cold] [--touch]

SHARDSTREAM_FILL_STANDIN=1 times shardstream.transformers over the stand-in fill (for the
integration's own overhead, not shardstream's IO)."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def touch(model):
    """Reads one byte of every 4 KiB page of every tensor: a tensor that is a view of the file
    mapping (transformers on the CPU) has read nothing until then."""
    total = 0
    for t in {t.data_ptr(): t for t in model.state_dict().values()}.values():
        total += int(t.detach().reshape(-1).view(torch_module().uint8)[::4096].sum())
    return total


def torch_module():
    import torch
    return torch


def child(which, folder, device, touch_pages=False):
    sys.path.insert(0, HERE)
    import torch
    if which == "shardstream":
        import fill_standin
        module, kind = fill_standin.import_shardstream()
        if module is None:
            raise SystemExit(kind)
        import shardstream.transformers as sst
    from transformers import AutoModelForCausalLM
    # transformers imports these lazily inside from_pretrained (seconds on a loaded machine):
    # start-up, kept outside the clock for both rows.
    import transformers.core_model_loading  # noqa: F401
    import transformers.modeling_utils  # noqa: F401
    if device.startswith("cuda"):
        torch.zeros(1, device=device)
        torch.cuda.synchronize()
    start = time.perf_counter()
    if which == "shardstream":
        model, info = sst.from_pretrained(folder, device=device, output_loading_info=True)
        report = info["shardstream"]
        extra = {"loader": report["loader"], "weights_seconds": report["seconds"],
                 "stages": report["stages"], "fill": kind}
    else:
        kwargs = {"device_map": device} if device != "cpu" else {}
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        extra = {}
    if touch_pages:
        touch(model)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    nbytes = sum(t.numel() * t.element_size() for t in
                 {t.data_ptr(): t for t in model.state_dict().values()}.values())
    print(json.dumps({"which": which, "seconds": seconds, "bytes": nbytes, **extra}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", choices=["transformers", "shardstream"])
    parser.add_argument("--warm", action="store_true",
                        help="read every checkpoint file before each run (a shared machine "
                             "evicts the page cache between runs)")
    parser.add_argument("--touch", action="store_true",
                        help="inside the clock, read one byte of every page of every tensor")
    parser.add_argument("--cold", action="store_true",
                        help="posix_fadvise(DONTNEED) every checkpoint file before each run")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.folder, args.device, args.touch)
    times = {"transformers": [], "shardstream": []}
    for _ in range(args.runs):
        for which in times:
            if args.cold:
                for name in sorted(os.listdir(args.folder)):
                    if name.endswith(".safetensors"):
                        fd = os.open(os.path.join(args.folder, name), os.O_RDONLY)
                        os.fsync(fd)
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        os.close(fd)
            if args.warm:
                for name in sorted(os.listdir(args.folder)):
                    if name.endswith(".safetensors"):
                        with open(os.path.join(args.folder, name), "rb") as f:
                            while f.read(64 << 20):
                                pass
            command = [sys.executable, __file__, args.folder, "--device", args.device,
                       "--child", which] + (["--touch"] if args.touch else [])
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{which} failed:\n{out.stderr[-3000:]}")
            line = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(line), flush=True)
            times[which].append(line["seconds"])
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"median_seconds": medians, "min": {k: min(v) for k, v in times.items()},
                      "max": {k: max(v) for k, v in times.items()},
                      "speedup": medians["transformers"] / medians["shardstream"]}))


if __name__ == "__main__":
    main()
