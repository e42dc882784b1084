"""Row `python: iter_tensors`: the shardstream Python package's streaming iterator (what vLLM's
and SGLang's weight loaders consume), every tensor taken and kept: on the CPU, views of the file
mapping populated ahead in parallel (touched by the harness; `iter_tensors copy=True`: owned).
See _common.py."""
import _common


def load(checkpoint, files, device):
    import shardstream
    return [t for _, t in shardstream.iter_tensors(checkpoint, device=device)]


_common.main("python: iter_tensors", "shardstream", load)
