"""What every peer driver of `shardstream bench --peers` shares (bench/peers/*.py).

A driver loads a checkpoint the way one peer library does and reports the same figures as
`shardstream load --json`, one JSON object on its last line of stdout:

    python3 DRIVER.py CKPT [--device cpu|cuda:N]          -> {"seconds": S, "bytes": B, ...}
    python3 DRIVER.py CKPT [--device ...] --probe         -> {"peer": NAME, "version": V}, exit 0
                                                             exit 3: not installed, 4: not
                                                             applicable ({"peer", "reason"})

`seconds` runs from the start of the load call to the last byte in place (on a GPU, after
torch.cuda.synchronize; on the CPU, after reading one byte of every page of tensors that are views
of a file mapping, touched_mapped_bytes in the report); interpreter, import and CUDA start-up are outside it, as they are for
shardstream's own figure (a driver's `prepare` imports what its library would import lazily
inside the call: transformers' loading modules and the model's own module). `bytes` counts the tensor bytes the peer produced; the harness fails a
run whose count differs from the checkpoint's, so a peer that loaded nothing is never shown fast.
Peak RSS is measured by the harness (wait4). Any exception is a failed run (exit 1).

Also: `python3 _common.py --versions` prints the versions of the Python packages involved.
"""
import argparse
import importlib
import importlib.metadata
import json
import os
import sys
import time

NOT_INSTALLED = 3
NOT_APPLICABLE = 4
PACKAGES = ("torch", "safetensors", "transformers", "runai-model-streamer", "fastsafetensors",
            "instanttensor", "matplotlib", "numpy")


def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def checkpoint_files(path):
    """The .safetensors files of a checkpoint, as `shardstream` finds them (io/checkpoint.h)."""
    if os.path.isfile(path) and path.endswith(".json"):
        with open(path) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(os.path.dirname(path), n) for n in names]
    if os.path.isfile(path):
        return [path]
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    indexes = sorted(f for f in os.listdir(path) if f.endswith(".safetensors.index.json"))
    if indexes:
        index = "model.safetensors.index.json" if "model.safetensors.index.json" in indexes \
            else indexes[0]
        return checkpoint_files(os.path.join(path, index))
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))


def tensor_bytes(tensors):
    """Bytes of distinct storage among `tensors` (tied weights count once)."""
    seen, total = set(), 0
    for t in tensors:
        key = (t.device, t.data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def file_mappings():
    """(start, end) of this process's mappings of .safetensors files (/proc/self/maps)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5].endswith(".safetensors"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


def touch_mapped(tensors):
    """Reads one byte of every 4 KiB page of each CPU tensor whose storage lies in a mapping of a
    checkpoint file: a peer that returns views of the file (transformers on the CPU) has read
    nothing yet, and the clock runs to the last byte in place. Owned tensors are left alone.
    Returns the bytes of storage touched."""
    import torch
    ranges = file_mappings()
    if not ranges:
        return 0
    seen, touched = set(), 0
    for t in tensors:
        if t.device.type != "cpu":
            continue
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen or not any(start <= ptr < end for start, end in ranges):
            continue
        seen.add(ptr)
        view = torch.empty(0, dtype=torch.uint8).set_(storage)
        int(view[::4096].sum())
        touched += storage.nbytes()
    return touched


def import_transformers_for(model_dir):
    """Imports, outside the clock, the modules transformers' from_pretrained would import lazily
    inside it (seconds on this machine, the same for every loader built on it): its loading
    machinery and the model class's own module."""
    import importlib
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    importlib.import_module("transformers.modeling_utils")
    importlib.import_module("transformers.core_model_loading")
    MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(model_dir))]


def main(peer, package, load, name=None, applicable=None, cuda_only=False, cpu_only=False,
         prepare=None):
    """Runs a driver: `load(checkpoint, files, device)` returns the loaded tensors (kept alive
    until the clock stops). `name(device)` names the row; `applicable(checkpoint)` returns a
    reason when the peer cannot load this checkpoint; `cuda_only`: the peer loads onto a GPU only
    (not applicable to `--device cpu`, whether installed or not); `cpu_only`: a CPU-only row
    (mapped views), not applicable to a GPU device. `prepare(checkpoint)` runs before the clock
    starts (imports the library would make lazily inside the call)."""
    parser = argparse.ArgumentParser(description=f"shardstream bench peer: {peer}")
    parser.add_argument("checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args()
    label = name(args.device) if name else peer
    if args.probe:
        if cuda_only and not args.device.startswith("cuda"):
            print(json.dumps({"peer": label, "reason": f"{package} loads onto CUDA devices only"}))
            sys.exit(NOT_APPLICABLE)
        if cpu_only and args.device != "cpu":
            print(json.dumps({"peer": label, "reason": "a CPU row (views of the file mapping)"}))
            sys.exit(NOT_APPLICABLE)
        module = package.replace("-", "_")
        try:
            importlib.import_module(module)
        except ImportError as e:
            print(json.dumps({"peer": label, "reason": f"{package} not installed ({e})"}))
            sys.exit(NOT_INSTALLED)
        reason = applicable(args.checkpoint) if applicable else None
        if reason:
            print(json.dumps({"peer": label, "reason": reason}))
            sys.exit(NOT_APPLICABLE)
        print(json.dumps({"peer": label, "version": version(package) or "?"}))
        return
    import torch
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.init()
        torch.zeros(1, device=args.device)
        torch.cuda.synchronize()
    files = checkpoint_files(args.checkpoint)
    if prepare:
        prepare(args.checkpoint)
    start = time.perf_counter()
    tensors = load(args.checkpoint, files, args.device)
    if cuda:
        torch.cuda.synchronize()
    touched = touch_mapped(tensors)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "bytes": tensor_bytes(tensors), "tensors": len(tensors),
                      "touched_mapped_bytes": touched, "peer": label}))


if __name__ == "__main__" and sys.argv[1:] == ["--versions"]:
    print(json.dumps({p: version(p) for p in PACKAGES} | {"python": sys.version.split()[0]}))
