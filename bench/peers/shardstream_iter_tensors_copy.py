"""Row `python: iter_tensors copy=True`: the streaming iterator with owned tensors (the CPU
default is mapped views: `python: iter_tensors`), every tensor taken and kept. See _common.py."""
import _common


def load(checkpoint, files, device):
    import shardstream
    return [t for _, t in shardstream.iter_tensors(checkpoint, device=device, copy=True)]


_common.main("python: iter_tensors copy=True", "shardstream", load, cpu_only=True)
