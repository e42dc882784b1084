"""shardstream: safetensors checkpoints into PyTorch tensors and modules, as fast as storage
allows.

    import shardstream
    weights = shardstream.load_file("model_dir/")          # like safetensors.torch.load_file
    report = shardstream.load_into(model, "model_dir/")    # straight into a module's tensors

The extension (shardstream._core) does not link LibTorch: any torch 2.x works with one build.
"""

from __future__ import annotations

from ._errors import LoadError
from ._fill import LoadReport, fill
from ._iter import TensorIterator, iter_tensors
from ._load import SafeOpen, SafeSlice, load_file, safe_open
from ._module import load_into

__version__ = "0.1.0"
__all__ = [
    "LoadError",
    "LoadReport",
    "SafeOpen",
    "SafeSlice",
    "TensorIterator",
    "fill",
    "iter_tensors",
    "load_file",
    "load_into",
    "safe_open",
]
