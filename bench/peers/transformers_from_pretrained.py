"""Peer: transformers AutoModelForCausalLM.from_pretrained(dtype="auto"), for checkpoints in a
folder with a config.json. On a GPU with `device_map=DEVICE` (which needs accelerate; without it
the model is loaded on the CPU and moved with .to(DEVICE), as a user without accelerate would). Bytes: the model's parameters and persistent buffers
(state_dict, tied weights once). See _common.py for the protocol."""
import os

import _common


def model_dir(checkpoint):
    return checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))


def applicable(checkpoint):
    if not os.path.isfile(os.path.join(model_dir(checkpoint), "config.json")):
        return "no config.json next to the checkpoint"
    return None


def load(checkpoint, files, device):
    from transformers import AutoModelForCausalLM
    import importlib.util
    if device != "cpu" and importlib.util.find_spec("accelerate"):
        model = AutoModelForCausalLM.from_pretrained(model_dir(checkpoint), dtype="auto",
                                                     device_map=device)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir(checkpoint), dtype="auto")
        if device != "cpu":
            model = model.to(device)
    return list(model.state_dict().values())


_common.main("transformers from_pretrained", "transformers", load, applicable=applicable,
             prepare=lambda checkpoint: _common.import_transformers_for(model_dir(checkpoint)))
