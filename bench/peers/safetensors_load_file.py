"""Peer: safetensors.torch.load_file for every file. On the CPU, load_file returns tensors backed
by a mapping of the file (lazy), so each is cloned: owned memory holding every byte, as
`shardstream load` returns. See _common.py for the protocol."""
import _common


def load(checkpoint, files, device):
    from safetensors.torch import load_file
    tensors = []
    for path in files:
        loaded = load_file(path, device=device)
        tensors += [t.clone() for t in loaded.values()] if device == "cpu" else list(
            loaded.values())
    return tensors


_common.main("safetensors load_file", "safetensors", load,
             name=lambda device: "safetensors load_file" + (" + clone" if device == "cpu" else ""))
