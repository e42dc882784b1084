"""load_file and safe_open: drop-ins for safetensors.torch.load_file and safetensors.safe_open."""

from __future__ import annotations

import errno as _errno
import os
from typing import Any, Dict, List, Optional, Union

import torch

from . import _layout, _progress
from ._fill import Checkpoint, PathLike, allocate, fill, open_checkpoint, parse_device

_BACKENDS = (None, "mmap", "pread")


def _check_backend(backend: Optional[str]) -> None:
    # safetensors' `backend` picks how it maps the file; shardstream always reads with its own
    # backends (io=), so the value is only checked.
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be None, 'mmap' or 'pread', not {backend!r}")


def load_file(filename: PathLike, device: Union[str, int, torch.device] = "cpu", *,
              backend: Optional[str] = None, dtype: Optional[torch.dtype] = None,
              threads: Optional[int] = None, io: str = "auto", direct: Union[str, bool] = "auto",
              staging_mb: Optional[float] = None,
              progress: _progress.ProgressArg = None) -> Dict[str, torch.Tensor]:
    """Loads every tensor of a checkpoint into new tensors on `device`.

    `filename`: a .safetensors file, a folder of shards or an index JSON. Returns name → tensor
    with the names, dtypes, shapes and bytes of `safetensors.torch.load_file` (in offset
    order, as it returns them); each tensor owns its memory (torch's allocator). `dtype` casts the
    floating-point (F64/F32/F16/BF16) tensors on the way in; `backend` is accepted for
    compatibility and ignored (`io` picks how bytes are read: "auto", "pread", "mmap", "uring").
    `direct`: O_DIRECT ("auto": when most of the checkpoint is not in the page cache).
    `staging_mb` bounds staging and cast scratch. Raises FileNotFoundError for a missing path and
    LoadError for anything shardstream refuses (rule "device" without a usable GPU). The GIL is
    released while reading; Ctrl-C cancels."""
    _check_backend(backend)
    d = parse_device(device)
    ck = open_checkpoint(filename)
    tensors = allocate(ck, [e.name for e in ck.offset_order], d, dtype)
    fill(ck, tensors, threads=threads, io=io, direct=direct, staging_mb=staging_mb,
         progress=progress)
    return tensors


class SafeSlice:
    """A lazy view of one checkpoint tensor: get_shape(), get_dtype() and indexing, which reads
    only the bytes the index selects (ints, slices with positive steps, ...)."""

    def __init__(self, owner: "SafeOpen", name: str) -> None:
        self._owner = owner
        self._entry = owner._ck.entry(name)

    def get_shape(self) -> List[int]:
        return list(self._entry.shape)

    def get_dtype(self) -> str:
        return self._entry.dtype

    def __getitem__(self, index: Any) -> torch.Tensor:
        e = self._entry
        tdtype, tshape = e.torch_layout()
        try:
            dims = _layout.normalize_index(index, tshape)
        except _layout.Unsupported:
            return self._owner.get_tensor(e.name)[index]
        out = torch.empty(_layout.result_shape(dims), dtype=tdtype, device=self._owner._device)
        self._owner._fill([(e.name, index, out)])
        return out


class SafeOpen:
    """safetensors.safe_open for PyTorch: `keys()` (sorted), `offset_keys()` (file order),
    `metadata()` (None when the file has none), `get_tensor(name)`, `get_tensors()`,
    `get_slice(name)`. Tensors are new, owned, on `device`; each call reads only what it returns.
    A missing file: FileNotFoundError; a folder: OSError (use load_file for sharded folders)."""

    def __init__(self, filename: PathLike, framework: str = "pt",
                 device: Union[str, int, torch.device] = "cpu", *,
                 backend: Optional[str] = None) -> None:
        _check_backend(backend)
        if framework not in ("pt", "torch", "pytorch"):
            raise ValueError(f"shardstream.safe_open supports framework='pt' only, not "
                             f"{framework!r}")
        path = os.fspath(filename)
        if os.path.isdir(path):
            raise IsADirectoryError(_errno.EISDIR, "Is a directory", path)
        self._device = parse_device(device)
        self._ck = open_checkpoint(path)

    def __enter__(self) -> "SafeOpen":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def keys(self) -> List[str]:
        return sorted(self._ck.entries)

    def offset_keys(self) -> List[str]:
        return [e.name for e in self._ck.offset_order]

    def metadata(self) -> Optional[Dict[str, str]]:
        return self._ck.core.metadata(0) if self._ck.files else None

    def _fill(self, targets) -> None:
        fill(self._ck, targets)

    def get_tensor(self, name: str) -> torch.Tensor:
        return _allocate_one(self, name)

    def get_tensors(self) -> Dict[str, torch.Tensor]:
        tensors = allocate(self._ck, self.keys(), self._device)
        self._fill(tensors)
        return tensors

    def get_slice(self, name: str) -> SafeSlice:
        return SafeSlice(self, name)


def _allocate_one(f: SafeOpen, name: str) -> torch.Tensor:
    tensors = allocate(f._ck, [name], f._device)
    f._fill(tensors)
    return tensors[name]


def safe_open(filename: PathLike, framework: str = "pt",
              device: Union[str, int, torch.device] = "cpu", *,
              backend: Optional[str] = None) -> SafeOpen:
    """Opens a .safetensors file lazily (headers only); see SafeOpen."""
    return SafeOpen(filename, framework, device, backend=backend)
