"""Peer: runai-model-streamer's SafetensorsStreamer. Its tensors are views of the streamer's
reused buffer, so each is cloned (CPU) or copied to the device as it arrives. See _common.py for
the protocol."""
import _common


def load(checkpoint, files, device):
    from runai_model_streamer import SafetensorsStreamer
    tensors = []
    with SafetensorsStreamer() as streamer:
        for path in files:
            streamer.stream_file(path)
            for _, tensor in streamer.get_tensors():
                tensors.append(tensor.clone() if device == "cpu" else tensor.to(device))
    return tensors


_common.main("runai SafetensorsStreamer", "runai-model-streamer", load)
