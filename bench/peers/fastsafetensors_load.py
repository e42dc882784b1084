"""Peer: fastsafetensors' SafeTensorsFileLoader (without GPUDirect Storage: nogds=True), every
file copied to the device buffer and every tensor taken from it. The tensors are views of one
buffer the loader owns, kept alive until the clock stops. See _common.py for the protocol."""
import _common

_keep = []


def load(checkpoint, files, device):
    from fastsafetensors import SafeTensorsFileLoader
    loader = SafeTensorsFileLoader(None, device, nogds=True)
    loader.add_filenames({0: files})
    buffer = loader.copy_files_to_device()
    tensors = [buffer.get_tensor(name) for name in loader.get_keys()]
    _keep.extend([loader, buffer])
    return tensors


_common.main("fastsafetensors", "fastsafetensors", load)
