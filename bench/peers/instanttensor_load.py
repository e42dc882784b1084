"""Peer: InstantTensor's safe_open over every file at once (its recommended multi-file form), each
tensor taken with copy=True (owned device memory, as `shardstream load` returns). It loads onto
CUDA devices only (safe_open raises ValueError for any other), so on `--device cpu` the probe says
"not applicable". See _common.py for the protocol."""
import _common


def load(checkpoint, files, device):
    from instanttensor import safe_open
    with safe_open(files, framework="pt", device=device) as f:
        return [tensor for _, tensor in f.tensors()]


_common.main("instanttensor safe_open", "instanttensor", load, cuda_only=True)
