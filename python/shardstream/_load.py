"""load_file and safe_open: drop-ins for safetensors.torch.load_file and safetensors.safe_open.

They keep safetensors 0.8's contract: the same tensors (pt) or numpy arrays (np), the same
names, order and bytes, and for what safetensors refuses the same exception type and message
(SafetensorError with its text, which LoadError subclasses, or the builtin it raises).
What shardstream takes beyond it (folders and index files in load_file, torch.device objects,
backend=None) and where it cannot follow (other devices and frameworks) is listed in the README.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Dict, List, Optional, Union

import torch

from . import _dtypes, _layout, _mapped, _progress
from ._errors import error, safetensors_error
from ._fill import (Checkpoint, Entry, PathLike, allocate, fill, open_checkpoint, options,
                    parse_device, require_path, safetensors_device)

_BACKENDS = ("mmap", "pread")
_TORCH = ("pt", "torch", "pytorch")
_NUMPY = ("np", "numpy")
# Frameworks safetensors knows and shardstream does not fill (their tensors are not torch's).
_OTHER = ("tf", "tensorflow", "jax", "flax", "mlx", "paddle")

DeviceArg = Union[str, int, torch.device, None]


def _str_argument(name: str, value: Any) -> str:
    # The TypeError safetensors' binding raises for an argument that is not a str.
    if isinstance(value, str):
        return value
    what = "'None'" if value is None else f"'{type(value).__name__}' object"
    raise TypeError(f"argument '{name}': {what} is not an instance of 'str'")


def _path_argument(filename: Any) -> str:
    try:
        path = os.fspath(filename)
    except TypeError as exc:
        raise TypeError(f"argument 'filename': {exc}") from None
    return _str_argument("filename", path)


def _check_backend(backend: Optional[str]) -> None:
    # safetensors' `backend` picks how it maps the file; shardstream always reads with its own
    # backends (io=), so the value is only checked. None (safetensors: TypeError) means "mmap".
    if backend is None:
        return
    _str_argument("backend", backend)
    if backend not in _BACKENDS:
        quoted = '"' + backend.replace("\\", "\\\\").replace('"', '\\"') + '"'
        raise safetensors_error(f'backend {quoted} is invalid (expected one of: "mmap", "pread")',
                                rule="backend")


def _torch_device(spelled: str) -> torch.device:
    # A safetensors device spelling → the torch.device shardstream fills (LoadError otherwise).
    return parse_device(int(spelled) if spelled.isdecimal() else spelled)


def _refuse(ck: Checkpoint, e: Entry) -> None:
    """Raises the refusal for a tensor torch cannot hold (F6, an odd F4 dimension, ...)."""
    rule, reason = e.refusal
    if rule in _dtypes.SAFETENSORS_WORDED:
        raise safetensors_error(reason, rule=rule, file=ck.file_of(e), tensor=e.name)
    raise error(rule, reason, file=ck.file_of(e), tensor=e.name)


def load_file(filename: PathLike, device: DeviceArg = "cpu", *, backend: Optional[str] = None,
              dtype: Optional[torch.dtype] = None, threads: Optional[int] = None,
              io: str = "auto", direct: Union[str, bool] = "auto",
              staging_mb: Optional[float] = None,
              progress: _progress.ProgressArg = None, mmap: bool = False,
              process_group: Any = None, shard: Any = None,
              names: Any = None) -> Dict[str, torch.Tensor]:
    """Loads every tensor of a checkpoint into new tensors on `device`.

    `filename`: a .safetensors file, a folder of shards or an index JSON. Returns name → tensor
    with the names, dtypes, shapes and bytes of `safetensors.torch.load_file` (in offset
    order, as it returns them); each tensor owns its memory (torch's allocator). `device` takes
    safetensors' spellings ("cpu", "cuda", "cuda:N", N, None) and a torch.device. `dtype` casts
    the floating-point (F64/F32/F16/BF16) tensors on the way in; `backend` ("mmap", "pread") is
    checked as safetensors checks it and otherwise ignored (`io` picks how bytes are read:
    "auto", "pread", "mmap", "uring"). `direct`: O_DIRECT ("auto": when most of the checkpoint
    is not in the page cache). `staging_mb` bounds staging and cast scratch. Raises what
    safetensors raises for a missing file (FileNotFoundError) and for a bad device or backend
    or a tensor torch cannot hold (LoadError, a SafetensorError, with its text), and LoadError
    for anything else shardstream refuses (rule "device" without a usable GPU). The GIL is
    released while reading; Ctrl-C cancels.

    `mmap=True` (device "cpu" only; rule "option" otherwise): each tensor that `dtype` leaves as
    stored is a view of a private, copy-on-write mapping of its file instead of a copy, made
    resident by parallel populate workers (`threads`) before this returns. Writing to a view never
    changes the file; the mapping lives while any view does. Truncating the file while a view
    lives raises SIGBUS on the next access, as with every mmap loader.

    `process_group`, `shard`: as in fill(); each rank gets the replicated tensors whole and its
    own part of the sharded ones (owned tensors: not with `mmap=True`). `names`: a list or a
    predicate; only those tensors are loaded (with process_group only)."""
    path = _path_argument(filename)
    spelled = safetensors_device(device)
    _check_backend(backend)
    if process_group is not None:
        from . import _distributed

        if mmap:
            raise error("option", "mmap=True maps this process's own file: with process_group= "
                        "the ranks share the reads into owned tensors (mmap=False)")
        opts = options(threads, io, direct, staging_mb)
        return _distributed.load_file(path, _torch_device(spelled), dtype, names, opts,
                                      process_group, shard, progress)[0]
    if shard is not None or names is not None:
        raise error("option", "shard= and names= need process_group=")
    require_path(path)
    ck = open_checkpoint(path)
    d = _torch_device(spelled)
    for e in ck.offset_order:
        if e.refusal is not None:
            _refuse(ck, e)
    if mmap:
        if d.type != "cpu":
            raise error("option", f"mmap=True maps the file into CPU memory: device {d} needs "
                        "mmap=False")
        return _load_mapped(ck, dtype, threads, io, direct, staging_mb, progress)
    tensors = allocate(ck, [e.name for e in ck.offset_order], d, dtype)
    fill(ck, tensors, threads=threads, io=io, direct=direct, staging_mb=staging_mb,
         progress=progress)
    return tensors


def _load_mapped(ck: Checkpoint, dtype: Optional[torch.dtype], threads: Optional[int], io: str,
                 direct: Union[str, bool], staging_mb: Optional[float],
                 progress: _progress.ProgressArg) -> Dict[str, torch.Tensor]:
    """load_file(mmap=True): views where `dtype` leaves a tensor as stored, owned casts for the
    rest, in offset order."""
    mapped = [e for e in ck.offset_order if _mapped.mappable(e, dtype)]
    views, _ = _mapped.load_views(ck, mapped, threads)
    cast = [e.name for e in ck.offset_order if e.name not in views]
    owned = allocate(ck, cast, torch.device("cpu"), dtype) if cast else {}
    if owned:
        fill(ck, owned, threads=threads, io=io, direct=direct, staging_mb=staging_mb,
             progress=progress)
    return {e.name: views[e.name] if e.name in views else owned[e.name] for e in ck.offset_order}


class _Reader:
    """What an open safe_open reads from: the checkpoint's headers, the device and the framework.
    Shared by the handle and its slices, so that a slice taken inside a `with` block still reads
    after the block (as safetensors' slices do)."""

    def __init__(self, ck: Checkpoint, device: Optional[torch.device], numpy: bool) -> None:
        self.ck = ck
        self.device = device
        self.numpy = numpy

    def entry(self, name: Any) -> Entry:
        e = self.ck.entries.get(_str_argument("name", name))
        if e is None:
            raise safetensors_error(f"File does not contain tensor {name}", rule="missing-tensor",
                                    file=self.ck.path, tensor=name)
        return e

    def torch_entry(self, name: Any) -> Entry:
        e = self.entry(name)
        if e.refusal is not None:
            _refuse(self.ck, e)
        return e

    def numpy_dtype(self, e: Entry) -> Any:
        dtype = _dtypes.numpy_dtype(e.dtype)
        if dtype is None:
            raise safetensors_error(f"Dtype not understood: {e.dtype}", rule="numpy-dtype",
                                    file=self.ck.file_of(e), tensor=e.name)
        return dtype

    def tensors(self, names: List[str]) -> Dict[str, Any]:
        """name → tensor (or numpy array) for `names`, read in one fill."""
        if not self.numpy:
            for name in names:
                self.torch_entry(name)
            out = allocate(self.ck, names, self.device)
            fill(self.ck, out)
            return out
        entries = [self.entry(name) for name in names]
        dtypes = [self.numpy_dtype(e) for e in entries]
        out = {e.name: torch.empty(e.tshape, dtype=e.tdtype, device="cpu")
               for e in entries if _numel(e.shape)}
        fill(self.ck, out)
        return {e.name: _to_numpy(out.get(e.name), dtype, e.shape)
                for e, dtype in zip(entries, dtypes)}

    def slice(self, e: Entry, index: Any) -> Any:
        """`index` of tensor `e`, reading only the bytes it selects."""
        if self.numpy:
            equivalent, shape = _layout.numpy_index(index, e.shape, _dtypes.bits(e.dtype))
            dtype = self.numpy_dtype(e)
            out = torch.empty(shape, dtype=e.tdtype, device="cpu") if _numel(shape) else None
            if out is not None:
                fill(self.ck, [(e.name, equivalent, out)])
            return _to_numpy(out, dtype, shape)
        if e.refusal is not None:
            _refuse(self.ck, e)
        try:
            dims = _layout.normalize_index(index, e.tshape)
        except _layout.Unsupported:
            return self.tensors([e.name])[e.name][index]
        except (IndexError, ValueError, TypeError):
            verdict = _torch_verdict(e, index)
            if verdict is None:
                raise
            raise verdict from None
        out = torch.empty(_layout.result_shape(dims), dtype=e.tdtype, device=self.device)
        fill(self.ck, [(e.name, index, out)])
        return out


def _torch_verdict(e: Entry, index: Any) -> Optional[BaseException]:
    """The error torch raises for `index` on tensor `e` (found on the meta device: no bytes), so
    that a refused index is refused in torch's words; None where torch takes it."""
    try:
        torch.empty(e.tshape, dtype=e.tdtype, device="meta")[index]
    except Exception as exc:  # noqa: BLE001 - torch's verdict, whatever its type
        return exc
    return None


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _to_numpy(t: Optional[torch.Tensor], dtype: Any, shape) -> Any:
    """The numpy array safetensors builds for these bytes (frombuffer, then reshape; zeros when
    empty), sharing the tensor's memory."""
    import numpy

    if t is None:
        return numpy.zeros(shape, dtype=dtype)
    return t.reshape(-1).view(torch.uint8).numpy().view(dtype).reshape(shape)


class SafeSlice:
    """A lazy view of one checkpoint tensor, as safetensors' get_slice returns: get_shape() and
    get_dtype() (the header's), and indexing, which reads only the bytes the index selects and
    takes indices as safetensors does (torch's indexing for "pt", safetensors' own slicer for
    "np"). Keeps reading after its handle is closed."""

    def __init__(self, reader: _Reader, name: str) -> None:
        self._reader = reader
        self._entry = reader.entry(name)

    def get_shape(self) -> List[int]:
        return list(self._entry.shape)

    def get_dtype(self) -> str:
        return self._entry.dtype

    def __getitem__(self, index: Any) -> Any:
        return self._reader.slice(self._entry, index)


class SafeOpen:
    """safetensors.safe_open: `keys()` (sorted), `offset_keys()` (file order), `metadata()`
    (None when the file has none), `get_tensor(name)`, `get_tensors()` (offset order),
    `get_slice(name)`. framework "pt" (also "torch", "pytorch") gives torch tensors on `device`,
    "np" (also "numpy") numpy arrays on the CPU with safetensors' numpy dtypes. Results are new
    and owned; each call reads only what it returns. After the `with` block every method raises
    SafetensorError "File is closed". A missing file: FileNotFoundError; a folder: OSError (use
    load_file for sharded folders)."""

    def __init__(self, filename: PathLike, framework: str = "pt", device: DeviceArg = "cpu", *,
                 backend: Optional[str] = None) -> None:
        # Checked in safetensors' order: the arguments, the file, the device for the framework,
        # the header.
        path = _path_argument(filename)
        framework = _str_argument("framework", framework)
        if framework not in _TORCH + _NUMPY + _OTHER:
            raise safetensors_error(f"framework {framework} is invalid", rule="framework")
        spelled = safetensors_device(device)
        _check_backend(backend)
        if framework in _OTHER:
            raise error("framework", f"framework {framework} is not supported by shardstream: "
                        "use pt (torch tensors) or np (numpy arrays)")
        numpy = framework in _NUMPY
        require_path(path)
        if numpy and spelled != "cpu":
            raise safetensors_error(f"Device {spelled} is not supported for framework numpy",
                                    rule="device")
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        ck = open_checkpoint(path)
        self._reader: Optional[_Reader] = _Reader(
            ck, None if numpy else _torch_device(spelled), numpy)

    def __enter__(self) -> "SafeOpen":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._reader = None

    def _open(self) -> _Reader:
        if self._reader is None:
            raise safetensors_error("File is closed", rule="closed")
        return self._reader

    def keys(self) -> List[str]:
        return sorted(self._open().ck.entries)

    def offset_keys(self) -> List[str]:
        return [e.name for e in self._open().ck.offset_order]

    def metadata(self) -> Optional[Dict[str, str]]:
        ck = self._open().ck
        return ck.core.metadata(0) if ck.files else None

    def get_tensor(self, name: str) -> Any:
        """The tensor (pt) or array (np) `name`, read whole."""
        return self._open().tensors([_str_argument("name", name)])[name]

    def get_tensors(self) -> Dict[str, Any]:
        """Every tensor, name → tensor in offset order (as safetensors returns them)."""
        reader = self._open()
        return reader.tensors([e.name for e in reader.ck.offset_order])

    def get_slice(self, name: str) -> SafeSlice:
        return SafeSlice(self._open(), name)


def safe_open(filename: PathLike, framework: str = "pt", device: DeviceArg = "cpu", *,
              backend: Optional[str] = None) -> SafeOpen:
    """Opens a .safetensors file lazily (headers only); see SafeOpen."""
    return SafeOpen(filename, framework, device, backend=backend)
