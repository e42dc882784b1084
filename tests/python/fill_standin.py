"""A stand-in for `shardstream.fill`, for developing `shardstream.transformers` before the package
(issue 16) is installed: it reads through the `safetensors` package (`safe_open` + `get_slice`) and
copies into the destinations. Tests use it only when SHARDSTREAM_FILL_STANDIN=1; it is never the
implementation."""
import importlib
import json
import os
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LoadError(ValueError):
    def __init__(self, message, rule=None, file=None, tensor=None, offset=None):
        super().__init__(message)
        self.rule, self.file, self.tensor, self.offset = rule, file, tensor, offset


class LoadReport:
    def __init__(self, nbytes, seconds):
        self.bytes, self.seconds, self.stages, self.io, self.direct = (
            nbytes, seconds, [("standin", seconds)], "safetensors", False)


def _files(checkpoint):
    path = os.fspath(checkpoint)
    if path.endswith(".json"):
        with open(path) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(os.path.dirname(path), n) for n in names]
    if os.path.isfile(path):
        return [path]
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return [os.path.join(path, "model.safetensors")]
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        return _files(index)
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))


def fill(checkpoint, targets, *, threads=None, io="auto", direct="auto", staging_mb=None,
         progress=None):
    from safetensors import safe_open
    start = time.perf_counter()
    items = list(targets.items()) if isinstance(targets, dict) else list(targets)
    where = {}
    handles = {}
    for file in _files(checkpoint):
        handles[file] = safe_open(file, framework="pt", device="cpu")
        for key in handles[file].keys():
            where[key] = file
    total = 0
    for item in items:
        name, index, dest = (item[0], None, item[1]) if len(item) == 2 else item
        if name not in where:
            raise LoadError(f"{checkpoint}: no tensor {name}", rule="name", tensor=name)
        piece = handles[where[name]].get_slice(name)
        value = piece[index] if index is not None else piece[:]
        if tuple(value.shape) != tuple(dest.shape):
            raise LoadError(f"{name}: shape {list(value.shape)} vs destination "
                            f"{list(dest.shape)}", rule="shape", tensor=name)
        dest.copy_(value)
        total += dest.numel() * dest.element_size()  # what landed, as the package counts
    return LoadReport(total, time.perf_counter() - start)


def import_shardstream():
    """(module, "real" | "standin"), or (None, reason). SHARDSTREAM_FILL_STANDIN=1 takes the
    stand-in even where the package is importable (while the package is being developed)."""
    if os.environ.get("SHARDSTREAM_FILL_STANDIN") == "1":
        return _standin(), "standin"
    try:
        module = importlib.import_module("shardstream")
        if hasattr(module, "fill"):
            # The checkout's pure-Python submodules (shardstream.transformers) come first, so that
            # the tests test this tree even where an older build of the package is installed.
            here = os.path.join(REPO, "python", "shardstream")
            if os.path.isdir(here) and here not in module.__path__:
                module.__path__.insert(0, here)
            return module, "real"
        reason = "the shardstream package has no fill"
    except ImportError as e:
        reason = f"the shardstream package is not importable ({e})"
    return None, reason


def _standin():
    for name in [n for n in sys.modules if n == "shardstream" or n.startswith("shardstream.")]:
        del sys.modules[name]
    module = types.ModuleType("shardstream")
    module.__path__ = [os.path.join(REPO, "python", "shardstream")]
    module.fill, module.LoadError, module.LoadReport = fill, LoadError, LoadReport
    sys.modules["shardstream"] = module
    return module
