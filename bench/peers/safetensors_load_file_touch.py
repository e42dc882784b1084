"""Peer: safetensors.torch.load_file for every file, the tensors kept as the views of the file
mapping it returns on the CPU; the harness reads a byte of every page (touch_mapped), so the
clock runs until every byte is resident. The peer of `python: shardstream.load_file mmap=True`.
CPU only (on a GPU, `safetensors load_file` is the row). See _common.py for the protocol."""
import _common


def load(checkpoint, files, device):
    from safetensors.torch import load_file
    tensors = []
    for path in files:
        tensors += list(load_file(path, device=device).values())
    return tensors


_common.main("safetensors load_file + touch", "safetensors", load, cpu_only=True)
