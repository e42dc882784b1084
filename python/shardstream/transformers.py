"""`shardstream.transformers.from_pretrained`: transformers' own `from_pretrained`, with the weights
read by `shardstream.fill`.

transformers builds every model on the meta device, resolves its config, dtype and per-module dtype
plan, key renames and weight converters, and after loading ties weights, initialises what the
checkpoint did not hold, calls `eval()` and loads the generation config. All of that stays
transformers'. Only the step that reads the weights, `PreTrainedModel._load_pretrained_model`, is
replaced for the duration of one call (on the calling thread only; other threads keep
transformers' loader). The replacement:

- plans from the safetensors headers alone (no tensor data), with transformers' own renaming and
  converter matching, so that it finds the missing, unexpected and mismatched keys before any data
  is read (`strict=True` fails there);
- allocates every loaded parameter and persistent buffer uninitialised on its device (in the dtype
  transformers would give it) and fills them in one `shardstream.fill` call: renamed tensors
  directly, MoE converters made of `MergeModulelist` / `Concatenate` (per-expert weights fused into
  one `gate_up_proj` / `down_proj`) as slice writes straight into the fused parameter;
- for any other converter (transpose, interleave, chunk, ...) reads its sources into scratch
  (bounded per batch), runs transformers' own converter and keeps its result;
- sets each tensor through transformers' `set_param_for_module`, which flags it
  `_is_hf_initialized`, so that transformers' finalisation initialises exactly the rest
  (non-persistent buffers, missing keys) and ties what is tied;
- returns transformers' own `LoadStateDictInfo`.

Checkpoints this does not handle itself are loaded by transformers' own loader, and the report
says so (`info["shardstream"]["loader"] == "transformers"`, with the reason): quantized checkpoints
other than pre-quantized MXFP4 and fine-grained FP8 (`_quantized.py`), a `state_dict=` argument, non-safetensors checkpoints, disk offload,
tensor parallelism (`device_mesh`/`tp_plan`) with weight converters, DeepSpeed ZeRO-3. Tensor
parallelism without converters is loaded here: each rank's slices as transformers' own
`shard_tensor` selects them (shardstream._distributed.dtensor_slices), replicated parameters read
once over the mesh's group.

Which transformers releases get this loader is decided by the internals it uses, not by a version
number: every function it calls (with the parameters it passes, by name and position), class and
attribute it reads, the staticmethod it replaces, and the finalisation transformers runs after it
are checked once per transformers module (`_unsupported_reason`). When one is missing or has
another shape, the load is transformers' own, with a warning and `info["shardstream"]["reason"]`
naming it (e.g. `transformers 5.30.0: core_model_loading.set_param_for_module lacks parameter
'loading_info'`). `TESTED_TRANSFORMERS` is the range the tests pass on (5.16 to 5.25): a newer
release with every internal as expected is loaded here, with one warning per process that it is
untested; a release older than the oldest tested is loaded by transformers (see
`_unsupported_reason`). `scripts/check-upstream` runs the tests against the newest releases.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import os
import re
import threading
import time
import warnings
from typing import Any

import shardstream
import shardstream._distributed
from shardstream import _core, _mapped

__all__ = ["from_pretrained", "CheckpointMismatchError", "TESTED_TRANSFORMERS",
           "SUPPORTED_TRANSFORMERS"]

# The transformers releases tests/python/test_transformers.py passes on (oldest, newest), by minor
# version: tests/python/run_transformers_matrix.sh runs both. Not the gate (the internals are, see
# `_unsupported_reason`): a newer release runs shardstream's loader with a warning, an older one
# transformers' own.
TESTED_TRANSFORMERS = ((5, 16), (5, 25))
# The range's name while it was the gate; kept for code that imports it.
SUPPORTED_TRANSFORMERS = TESTED_TRANSFORMERS

# Upper bound on the scratch that generic converters' sources occupy at once (one converter's
# sources are always read together, even when they alone exceed it): the core's default.
_CONVERT_SCRATCH_BYTES = _core.defaults()["convert_scratch_bytes"]


def _base_error():
    base = getattr(shardstream, "LoadError", None)
    return base if isinstance(base, type) and issubclass(base, ValueError) else ValueError


class CheckpointMismatchError(_base_error()):
    """`strict=True` and the checkpoint does not match the model: raised before any tensor data is
    read. `.missing_keys`, `.unexpected_keys` (sorted lists of parameter names) and
    `.mismatched_keys` (list of (name, checkpoint shape, model shape)) are what transformers'
    `output_loading_info` would report. A `shardstream.LoadError` (rule "strict") where the
    package defines one, else a `ValueError`."""

    def __init__(self, path, missing, unexpected, mismatched):
        self.rule = "strict"
        self.file = str(path)
        self.missing_keys = sorted(missing)
        self.unexpected_keys = sorted(unexpected)
        self.mismatched_keys = sorted((k, tuple(a), tuple(b)) for k, a, b in mismatched)
        first = (self.missing_keys + self.unexpected_keys + [k for k, _, _ in self.mismatched_keys])
        self.tensor = first[0] if first else None
        self.offset = None
        parts = []
        if self.missing_keys:
            parts.append(f"missing from the checkpoint: {', '.join(self.missing_keys)}")
        if self.unexpected_keys:
            parts.append(f"not in the model: {', '.join(self.unexpected_keys)}")
        if self.mismatched_keys:
            parts.append("shape differs (checkpoint vs model): " + ", ".join(
                f"{k} {list(a)} vs {list(b)}" for k, a, b in self.mismatched_keys))
        message = (f"{path}: checkpoint does not match the model (rule strict): "
                   + "; ".join(parts) + ". Pass strict=False to load it as transformers would.")
        Exception.__init__(self, message)

    def __str__(self):
        return self.args[0]


# ---------------------------------------------------------------------------------------------
# The gate: the transformers internals used here, checked by presence and shape; and the hook on
# PreTrainedModel._load_pretrained_model


def _version(text):
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _dotted(version):
    return f"{version[0]}.{version[1]}"


# Every call into transformers made here, with the shape it relies on:
# (module, name, positional parameters, keyword parameters). Positional parameters are named in
# order, since a position means what its name says ("*" where one argument is passed, or for
# `self`); keyword parameters must be accepted; no other parameter may be required.
_CALLS = (
    ("core_model_loading", "rename_source_key",
     ("source_key", "weight_renamings", "weight_converters", "base_model_prefix",
      "meta_state_dict"), ("base_model_prefix", "meta_state_dict")),
    ("core_model_loading", "set_param_for_module",
     ("model", "target_name", "param_value", "loading_info", "hf_quantizer"), ()),
    ("core_model_loading", "dot_natural_key", ("*",), ()),
    ("core_model_loading", "build_glob_alternation", ("*",), ()),
    ("core_model_loading", "WeightConverter.add_tensor",
     ("*", "target_key", "source_key", "source_pattern", "future"), ()),
    ("core_model_loading", "WeightConverter.convert",
     ("*", "layer_name"), ("model", "config", "hf_quantizer", "loading_info")),
    ("core_model_loading", "WeightConverter.was_used", ("*",), ()),
    ("integrations.accelerate", "get_device", ("device_map", "param_name"),
     ("valid_torch_device",)),
    ("integrations.deepspeed", "is_deepspeed_zero3_enabled", (), ()),
    ("modeling_utils", "PreTrainedModel._adjust_missing_and_unexpected_keys", ("*", "*"), ()),
    ("utils.loading_report", "LoadStateDictInfo", (),
     ("missing_keys", "unexpected_keys", "mismatched_keys", "conversion_errors", "error_msgs",
      "skipped_pp_keys")),
)

# The hook's own target, a staticmethod on PreTrainedModel itself, called by transformers as
# (model, state_dict, checkpoint_files, load_config) and returning (LoadStateDictInfo, offload
# index); `_dispatch` passes any further arguments on, and they send the load to transformers.
_LOADER_PARAMETERS = ("model", "state_dict", "checkpoint_files", "load_config")

# Classes used by identity (`isinstance`, `type(op) is`, `except`): (module, name, base).
_CLASSES = (
    ("core_model_loading", "WeightConverter", object),
    ("core_model_loading", "WeightRenaming", object),
    ("core_model_loading", "MergeModulelist", object),
    ("core_model_loading", "Concatenate", object),
    ("core_model_loading", "SkipParameters", Exception),
)

# Attributes read or set on instances: (module, class, names). `WeightConverter`'s
# `quantization_operation` and `distributed_operation`, and the model's `_pp_stage`, are read
# with a default and may be absent.
_ATTRIBUTES = (
    ("core_model_loading", "WeightConverter",
     ("source_patterns", "target_patterns", "operations", "collected_tensors", "layer_targets",
      "force_cpu")),
    ("core_model_loading", "MergeModulelist", ("dim",)),
    ("core_model_loading", "Concatenate", ("dim",)),
    ("modeling_utils", "LoadStateDictConfig",
     ("pretrained_model_name_or_path", "device_map", "dtype", "dtype_plan", "weight_mapping",
      "hf_quantizer", "device_mesh")),
    ("modeling_utils", "PreTrainedModel", ("base_model_prefix",)),
)

# Run by transformers' from_pretrained after the replaced step, on the LoadStateDictInfo that step
# returns: ties, moves what was not loaded off the meta device, initialises it, adjusts the keys.
_FINALISATION = ("modeling_utils", "PreTrainedModel._finalize_model_loading",
                 ("model", "load_config", "loading_info"))

# What transformers' code does that the replacement relies on: (module, function, attribute or
# method name, what it means). A name the function's own code no longer mentions means the
# contract moved (a false alarm only sends loads to transformers' loader, with this reason).
_CONTRACTS = (
    ("core_model_loading", "set_param_for_module", "_is_hf_initialized",
     "no longer sets _is_hf_initialized (what finalisation leaves alone)"),
    ("core_model_loading", "convert_and_load_state_dict_in_model", "_weight_conversions",
     "no longer sets model._weight_conversions (what save_pretrained reverts)"),
    ("modeling_utils", "PreTrainedModel.from_pretrained", "_load_pretrained_model",
     "no longer calls _load_pretrained_model"),
    ("modeling_utils", "PreTrainedModel.from_pretrained", "_finalize_model_loading",
     "no longer calls _finalize_model_loading after _load_pretrained_model (ties, "
     "initialisation of what was not loaded)"),
)


def _resolve(transformers, module, name):
    """(object, None), or (None, what is missing)."""
    import importlib
    try:
        found = importlib.import_module(f"{transformers.__name__}.{module}")
    except ImportError as e:
        return None, f"{module} is not importable ({e})"
    path = module
    for part in name.split("."):
        path = f"{path}.{part}"
        if not hasattr(found, part):
            return None, f"{path} is missing"
        found = getattr(found, part)
    return found, None


def _call_problem(where, func, positional, keywords):
    """None when `func` accepts the call (positional by these names, keywords) and needs nothing
    else; otherwise what differs."""
    import inspect
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return f"{where} has no readable signature"
    kind = inspect.Parameter
    by_name = {p.name: p for p in params}
    ordered = [p for p in params if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind is kind.VAR_POSITIONAL for p in params)
    varkw = any(p.kind is kind.VAR_KEYWORD for p in params)
    for i, want in enumerate(positional):
        if i < len(ordered) and want in ("*", ordered[i].name):
            continue
        if want == "*":
            if varargs:
                continue
            return f"{where} takes {len(ordered)} positional parameters, not {len(positional)}"
        if want not in by_name:
            return f"{where} lacks parameter '{want}'"
        if by_name[want] in ordered:
            return (f"{where} takes '{want}' as parameter {ordered.index(by_name[want]) + 1}, "
                    f"not {i + 1}")
        return f"{where} takes '{want}' by keyword only"
    for want in keywords:
        param = by_name.get(want)
        if param is None and not varkw:
            return f"{where} lacks parameter '{want}'"
        if param is not None and param.kind is kind.POSITIONAL_ONLY:
            return f"{where} takes '{want}' by position only"
    passed = {p.name for p in ordered[:len(positional)]} | set(keywords)
    for param in params:
        if (param.default is kind.empty and param.name not in passed
                and param.kind not in (kind.VAR_POSITIONAL, kind.VAR_KEYWORD)):
            return f"{where} requires parameter '{param.name}'"
    return None


def _has_attribute(cls, name):
    """Whether instances of `cls` have `name`: a dataclass field, a class attribute, slot or
    property, or set by an `__init__` along the class's MRO."""
    import dataclasses
    if dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}:
        return True
    if hasattr(cls, name):
        return True
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        code = getattr(init, "__code__", None)
        if code is not None and name in code.co_names:
            return True
    return False


def _internal_problems(transformers):
    """Every internal of `transformers` used here that is missing or has another shape, in
    words that name it; empty when all are as expected."""
    import inspect
    problems = []
    for module, name, positional, keywords in _CALLS:
        found, missing = _resolve(transformers, module, name)
        if missing is None:
            missing = _call_problem(f"{module}.{name}", found, positional, keywords)
        if missing is not None:
            problems.append(missing)
    for module, name, base in _CLASSES:
        cls, missing = _resolve(transformers, module, name)
        if missing is None and not (isinstance(cls, type) and issubclass(cls, base)):
            missing = f"{module}.{name} is not a {'class' if base is object else base.__name__}"
        if missing is not None:
            problems.append(missing)
    for module, name, attributes in _ATTRIBUTES:
        cls, missing = _resolve(transformers, module, name)
        if missing is None and not isinstance(cls, type):
            missing = f"{module}.{name} is not a class"
        if missing is None:
            absent = [a for a in attributes if not _has_attribute(cls, a)]
            if absent:
                missing = f"{module}.{name} lacks attribute '{absent[0]}'"
        if missing is not None:
            problems.append(missing)
    dtypes, missing = _resolve(transformers, "modeling_utils", "str_to_torch_dtype")
    if missing is None and not isinstance(dtypes, dict):
        missing = "modeling_utils.str_to_torch_dtype is not a dict"
    if missing is not None:
        problems.append(missing)
    model_class, missing = _resolve(transformers, "modeling_utils", "PreTrainedModel")
    if missing is None:
        # The hook replaces a staticmethod found in the class's own __dict__ (while a hook is
        # installed, the original it keeps).
        with _hook_lock:
            loader = (_hook_original if _hook_users else
                      vars(model_class).get("_load_pretrained_model"))
        if not isinstance(loader, staticmethod):
            problems.append("modeling_utils.PreTrainedModel._load_pretrained_model is not a "
                            "staticmethod of PreTrainedModel itself")
        else:
            missing = _call_problem("modeling_utils.PreTrainedModel._load_pretrained_model",
                                    loader.__func__, _LOADER_PARAMETERS, ())
            if missing is not None:
                problems.append(missing)
    module, name, positional = _FINALISATION
    found, missing = _resolve(transformers, module, name)
    if missing is None:
        missing = _call_problem(f"{module}.{name}", found, positional, ())
    if missing is not None:
        problems.append(missing)
    for module, name, mentioned, meaning in _CONTRACTS:
        func, missing = _resolve(transformers, module, name)
        if missing is None:
            code = getattr(inspect.unwrap(getattr(func, "__func__", func)), "__code__", None)
            if code is None or mentioned not in code.co_names:
                missing = f"{module}.{name} {meaning}"
        if missing is not None:
            problems.append(missing)
    return list(dict.fromkeys(problems))  # one line per internal that several checks name


# The verdict per transformers module (identity and version): the check costs under a millisecond
# once transformers' modules are imported, but from_pretrained may run often.
_verdicts = {}
_untested_warned = set()
_gate_lock = threading.Lock()


def _unsupported_reason():
    """None when shardstream's loader may run under the installed transformers; otherwise why
    not, naming the version and each internal that is missing or has another shape.

    A release newer than TESTED_TRANSFORMERS runs shardstream's loader when every internal is
    present as expected (`_warn_if_untested` says so once). A release older than the oldest tested
    one is loaded by transformers: releases before it are never tested again (nothing but this
    check would vouch for them, and a same-named internal there may behave differently), while
    `pip install shardstream[transformers]` requires the oldest tested one anyway."""
    import transformers
    key = (id(transformers), transformers.__version__)
    verdict = _verdicts.get(key)
    if verdict is None:
        text = transformers.__version__
        low, high = TESTED_TRANSFORMERS
        if _version(text) < low:
            reason = (f"transformers {text} is outside the range shardstream was tested with "
                      f"({_dotted(low)} to {_dotted(high)}), below its oldest release; "
                      f"shardstream's loader needs transformers>={_dotted(low)}")
        else:
            problems = _internal_problems(transformers)
            reason = f"transformers {text}: " + "; ".join(problems) if problems else None
        verdict = _verdicts[key] = (reason,)
    return verdict[0]


def _warn_if_untested(stacklevel):
    """Warns once per process and version when transformers is newer than the newest tested
    release (and `_unsupported_reason()` found every internal as expected)."""
    import transformers
    text = transformers.__version__
    low, high = TESTED_TRANSFORMERS
    if _version(text) <= high:
        return
    with _gate_lock:
        if text in _untested_warned:
            return
        _untested_warned.add(text)
    warnings.warn(f"shardstream.transformers: transformers {text} is newer than the releases "
                  f"shardstream was tested with ({_dotted(low)} to {_dotted(high)}); every "
                  "transformers internal shardstream uses is present with the expected "
                  "signatures, so shardstream reads the weights", stacklevel=stacklevel + 1)


def _model_reason(model):
    """Why shardstream's loader cannot load into this model instance (an internal set per
    instance is missing), or None."""
    if not isinstance(getattr(model, "all_tied_weights_keys", None), dict):
        import transformers
        return (f"transformers {transformers.__version__}: the model lacks "
                "PreTrainedModel.all_tied_weights_keys (a dict)")
    return None


_hook_lock = threading.Lock()
_hook_users = 0
_hook_original = None  # the staticmethod object found on PreTrainedModel
_thread_state = threading.local()


def _dispatch(model, state_dict, checkpoint_files, load_config, *args, **kwargs):
    """Installed as PreTrainedModel._load_pretrained_model while any shardstream call runs: the
    first call on a thread inside `from_pretrained` goes to shardstream, every other call (other
    threads, adapters) to transformers' original."""
    session = getattr(_thread_state, "session", None)
    original = _hook_original.__func__
    # Only the load of the folder this session was asked for (a model whose __init__ loads a
    # sub-model with from_pretrained of its own leaves that one to transformers).
    if (session is None or session.used or os.fspath(
            load_config.pretrained_model_name_or_path or "") != session.path):
        return original(model, state_dict, checkpoint_files, load_config, *args, **kwargs)
    session.used = True
    return session.load(original, model, state_dict, checkpoint_files, load_config, *args,
                        **kwargs)


@contextlib.contextmanager
def _hooked(session):
    global _hook_users, _hook_original
    from transformers.modeling_utils import PreTrainedModel
    with _hook_lock:
        if _hook_users == 0:
            _hook_original = PreTrainedModel.__dict__["_load_pretrained_model"]
            PreTrainedModel._load_pretrained_model = staticmethod(_dispatch)
        _hook_users += 1
    previous = getattr(_thread_state, "session", None)
    _thread_state.session = session
    try:
        yield
    finally:
        _thread_state.session = previous
        with _hook_lock:
            _hook_users -= 1
            if _hook_users == 0:
                PreTrainedModel._load_pretrained_model = _hook_original
                _hook_original = None


# ---------------------------------------------------------------------------------------------
# Headers


def _open_checkpoints(checkpoint_files):
    """The checkpoint files, opened through shardstream's validator (headers only): the folder's
    index when it names exactly these files (one fill for them all), else one per file."""
    from shardstream._fill import open_checkpoint
    files = [os.path.abspath(f) for f in checkpoint_files]
    folder = os.path.dirname(files[0])
    index = os.path.join(folder, "model.safetensors.index.json")
    if (len(files) > 1 and all(os.path.dirname(f) == folder for f in files)
            and os.path.isfile(index)
            and not os.path.isfile(os.path.join(folder, "model.safetensors"))):
        try:
            indexed = open_checkpoint(index)
        except shardstream.LoadError:
            indexed = None  # transformers chose these files itself: validate them one by one
        if indexed is not None and sorted(os.path.abspath(f) for f in indexed.files) == sorted(files):
            return [indexed]
    return [open_checkpoint(f) for f in files]


def _nbytes(shape, dtype):
    import torch
    count = 1
    for d in shape:
        count *= d
    return count * torch.empty((), dtype=dtype).element_size()


class _Source:
    """A checkpoint tensor known from its header, standing where transformers keeps a future."""

    __slots__ = ("key", "file", "shape", "dtype", "device")

    def __init__(self, key, file, shape, dtype, device):
        self.key, self.file, self.shape, self.dtype, self.device = key, file, shape, dtype, device


# ---------------------------------------------------------------------------------------------
# The loader


def _slice_plan(mapping, cml):
    """For a converter that only stacks (`MergeModulelist`) and/or concatenates (`Concatenate`):
    (output shape, [(source, view function)]) where view(param) is the part of the fused
    parameter that source fills. None for any other converter, or when the sources' shapes are
    such that transformers' converter would fail (it then runs, and reports the error itself)."""
    ops = list(mapping.operations)
    merge = concat = None
    if len(ops) == 2 and type(ops[0]) is cml.MergeModulelist and type(ops[1]) is cml.Concatenate:
        merge, concat = ops
    elif len(ops) == 1 and type(ops[0]) is cml.MergeModulelist:
        merge = ops[0]
        if len(mapping.source_patterns) != 1:
            return None
    elif len(ops) == 1 and type(ops[0]) is cml.Concatenate:
        concat = ops[0]
    else:
        return None
    if len(mapping.target_patterns) != 1 or getattr(mapping, "quantization_operation", None):
        return None
    if getattr(mapping, "distributed_operation", None) is not None:
        return None
    # Per source pattern, in the order transformers' ops combine them.
    groups = []
    for pattern in mapping.source_patterns:
        sources = mapping.collected_tensors.get(pattern)
        if not sources:
            continue
        shapes = {tuple(s.shape) for s in sources}
        if merge is not None:
            if len(shapes) != 1:
                return None
            inner = list(shapes.pop())
            dim = merge.dim if merge.dim >= 0 else merge.dim + len(inner) + 1
            if not 0 <= dim <= len(inner):
                return None
            shape = inner[:dim] + [len(sources)] + inner[dim:]
            groups.append((shape, [(s, ("select", dim, i)) for i, s in enumerate(sources)]))
        else:
            for s in sources:
                groups.append((list(s.shape), [(s, None)]))
    if not groups:
        return None
    if concat is None:
        shape, pieces = groups[0]
        return shape, [(s, _view(sel, None)) for s, sel in pieces]
    rank = len(groups[0][0])
    dim = concat.dim if concat.dim >= 0 else concat.dim + rank
    if not 0 <= dim < rank or any(len(g[0]) != rank for g in groups):
        return None
    rest = {tuple(d for i, d in enumerate(g[0]) if i != dim) for g in groups}
    if len(rest) != 1:
        return None
    out = list(groups[0][0])
    out[dim] = sum(g[0][dim] for g in groups)
    plan, offset = [], 0
    for shape, pieces in groups:
        narrow = (dim, offset, shape[dim])
        plan.extend((s, _view(sel, narrow)) for s, sel in pieces)
        offset += shape[dim]
    return out, plan


def _view(select, narrow):
    def view(param):
        if narrow is not None:
            param = param.narrow(*narrow)
        if select is not None:
            param = param.select(select[1], select[2])
        return param
    return view


class _Session:
    """One `from_pretrained` call: its options, and what the loader did."""

    def __init__(self, path, strict, fill_options, copy=False):
        self.path = path
        self.strict = strict
        self.fill_options = fill_options
        self.copy = copy  # False: CPU tensors in their stored dtype are views of the mapping
        self.process_group = None  # tensor parallelism on a 1-D mesh: its group
        self.used = False
        self.quantized = None  # a _quantized.QuantizedLoad for a pre-quantized checkpoint
        self.report = {"loader": "transformers", "reason": None, "bytes": 0, "seconds": 0.0,
                       "stages": [], "tensors": {"direct": 0, "sliced": 0, "converted": 0,
                                                 "dequantized": 0, "native_dequantized": 0,
                                                 "mapped": 0},
                       "populated_bytes": 0, "populate_seconds": 0.0}

    def load(self, original, model, state_dict, checkpoint_files, load_config, *args, **kwargs):
        reason = _model_reason(model)
        if reason is not None:
            warnings.warn(f"shardstream.transformers: {reason}; loading with transformers' own "
                          "loader", stacklevel=2)
        else:
            reason = self._unhandled(model, state_dict, checkpoint_files, load_config, args,
                                     kwargs)
        if reason is not None:
            self.report["reason"] = reason
            start = time.perf_counter()
            result = original(model, state_dict, checkpoint_files, load_config, *args, **kwargs)
            self.report["seconds"] = time.perf_counter() - start
            return result
        self.report["loader"] = "shardstream"
        # Planning makes a few objects per checkpoint tensor; with torch and transformers loaded
        # each collection the allocations trigger walks millions of objects (0.1 s apiece here),
        # which cost more than the plan itself. Nothing planned is cyclic garbage.
        collecting = gc.isenabled()
        gc.disable()
        try:
            result = self._load(model, checkpoint_files, load_config)
        finally:
            if collecting:
                gc.enable()
        if isinstance(result, str):  # found while planning, before any read
            self.report["loader"] = "transformers"
            self.report["reason"] = result
            start = time.perf_counter()
            result = original(model, state_dict, checkpoint_files, load_config, *args, **kwargs)
            self.report["seconds"] = time.perf_counter() - start
        return result

    @staticmethod
    def _unhandled(model, state_dict, checkpoint_files, load_config, args, kwargs):
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
        if args or kwargs:
            return "expected_keys given"
        if state_dict is not None:
            return "a state_dict was given"
        if not checkpoint_files or not all(str(f).endswith(".safetensors")
                                           for f in checkpoint_files):
            return "the checkpoint is not safetensors"
        if load_config.hf_quantizer is not None:
            from shardstream._quantized import unhandled_reason
            reason = unhandled_reason(load_config.hf_quantizer, load_config.weight_mapping or [])
            if reason is not None:
                return reason
        if load_config.device_map is not None and "disk" in load_config.device_map.values():
            return "disk offload"
        if is_deepspeed_zero3_enabled():
            return "DeepSpeed ZeRO-3"
        if getattr(model, "_pp_stage", None) is not None:
            return "pipeline parallelism"
        return None

    # The replacement for transformers' _load_pretrained_model.
    def _load(self, model, checkpoint_files, load_config):
        import torch
        from transformers import core_model_loading as cml
        from transformers.integrations.accelerate import get_device
        from transformers.modeling_utils import str_to_torch_dtype
        from transformers.utils.loading_report import LoadStateDictInfo

        start = time.perf_counter()
        stages = []
        device_map = load_config.device_map or {"": "cpu"}
        dtype = load_config.dtype
        dtype_plan = load_config.dtype_plan or {}
        weight_mapping = load_config.weight_mapping or []
        base_model_prefix = model.base_model_prefix
        meta_state_dict = model.state_dict()
        hf_quantizer = load_config.hf_quantizer
        if hf_quantizer is not None:
            from shardstream._quantized import QuantizedLoad
            self.quantized = QuantizedLoad(hf_quantizer)
        quantized = self.quantized

        info = LoadStateDictInfo(missing_keys=set(meta_state_dict.keys()), unexpected_keys=set(),
                                 mismatched_keys=set(), conversion_errors={}, error_msgs=[],
                                 skipped_pp_keys=set())

        # 1. Headers, through shardstream's validator: every checkpoint key with its checkpoint,
        #    shape and dtype (later files win, as in transformers' merged state dict).
        sources = {}
        for checkpoint in _open_checkpoints(checkpoint_files):
            for e in checkpoint.offset_order:
                sources[e.name] = (checkpoint, list(e.shape), e.dtype)

        renamings = [e for e in weight_mapping if isinstance(e, cml.WeightRenaming)]
        converters = [e for e in weight_mapping if isinstance(e, cml.WeightConverter)]
        pattern_to_converter = {k: c for c in converters for k in c.source_patterns}
        if dtype_plan:
            dtype_alt, dtype_by_group, _ = cml.build_glob_alternation(list(dtype_plan.keys()))

        # 2. Match keys exactly as transformers' convert_and_load_state_dict_in_model does,
        #    collecting _Source placeholders where it collects futures.
        to_load = {}
        for original_key in sorted(sources, key=cml.dot_natural_key):
            file, shape, dtype_name = sources[original_key]
            renamed_key, source_pattern = cml.rename_source_key(
                original_key, renamings, converters, base_model_prefix, meta_state_dict)
            if renamed_key not in meta_state_dict and original_key in meta_state_dict:
                renamed_key, source_pattern = cml.rename_source_key(
                    original_key, [], [], base_model_prefix=base_model_prefix,
                    meta_state_dict=meta_state_dict)
            if renamed_key in meta_state_dict:
                empty_param = meta_state_dict[renamed_key]
                if source_pattern is not None:
                    mapping = to_load.get(renamed_key)
                    if mapping is None:  # each target gets its own converter, as in transformers
                        mapping = copy.deepcopy(pattern_to_converter[source_pattern])
                        to_load[renamed_key] = mapping
                else:
                    # A plain rename: transformers makes a WeightRenaming (one regex compiled per
                    # key) to hold one future; a list does, and the first source wins as there.
                    mapping = to_load.setdefault(renamed_key, [])
                    source_pattern = original_key
                target_dtype = dtype
                match = dtype_alt.search(renamed_key) if dtype_plan else None
                if match is not None:
                    target_dtype = dtype_plan[dtype_by_group[match.lastgroup]]
                elif empty_param is not None and empty_param.dtype != target_dtype:
                    target_dtype = empty_param.dtype
                if quantized is not None:
                    target_dtype = quantized.source_dtype(mapping, original_key, renamed_key,
                                                          dtype_name, target_dtype)
                if target_dtype is None:
                    target_dtype = str_to_torch_dtype.get(dtype_name, empty_param.dtype)
                device = get_device(device_map, renamed_key, valid_torch_device=True)
                if isinstance(mapping, cml.WeightConverter) and mapping.force_cpu:
                    device = "cpu"
                source = _Source(original_key, file, shape, target_dtype, device)
                if isinstance(mapping, list):
                    mapping.append(source)
                else:
                    mapping.add_tensor(renamed_key, original_key, source_pattern, source)
            elif source_pattern is not None:
                mapping = pattern_to_converter[source_pattern]
                for k in mapping.target_patterns:
                    info.unexpected_keys.add(renamed_key.replace(mapping.target_patterns[0], k))
            else:
                info.unexpected_keys.add(renamed_key)

        # 3. Plan each target: direct, sliced into a fused parameter, or converted.
        direct, fused, converted = [], [], []
        expected_loaded = set()
        for target, mapping in to_load.items():
            expected = tuple(meta_state_dict[target].shape)
            if isinstance(mapping, list):
                source = mapping[0]
                expected_loaded.add(target)
                if tuple(source.shape) != expected:
                    # As set_param_for_module: a mismatched key is not also missing.
                    info.missing_keys.discard(target)
                    info.mismatched_keys.add((target, torch.Size(source.shape),
                                              torch.Size(expected)))
                else:
                    direct.append((target, source))
                continue
            plan = _slice_plan(mapping, cml)
            if plan is None:
                converted.append((target, mapping))
                if quantized is not None and quantized.has_load_op(mapping):
                    # A load op may act on the module (deserialize): no trial run on meta tensors.
                    expected_loaded.add(target)
                    continue
                expected_loaded.update(self._converter_targets(mapping, target, model, cml,
                                                                 meta_state_dict))
                continue
            shape, pieces = plan
            expected_loaded.add(target)
            if tuple(shape) != expected:
                info.missing_keys.discard(target)
                info.mismatched_keys.add((target, torch.Size(shape), torch.Size(expected)))
            else:
                fused.append((target, pieces))
        stages.append(("plan", time.perf_counter() - start))
        mesh = getattr(load_config, "device_mesh", None)
        if mesh is not None and (fused or converted):
            return "tensor parallelism (device_mesh) with weight converters"
        if mesh is not None and not (hasattr(cml, "DtensorShardOperation")
                                     and hasattr(cml, "is_dtensor")):
            return ("tensor parallelism (device_mesh): core_model_loading lacks "
                    "DtensorShardOperation or is_dtensor")
        self.process_group = shardstream._distributed.mesh_group(mesh)

        if self.strict:
            self._check_strict(model, info, expected_loaded)

        # 4. Allocate uninitialised destinations and fill them in one pass.
        mark = time.perf_counter()
        targets, loaded = [], []
        # Mapped views where they serve (shardstream._mapped), owned tensors for the rest.
        # Under tensor parallelism the ranks share the reads (fill with the mesh's group) instead.
        views = (None if self.copy or mesh is not None
                 else _mapped.ViewPlanner(self.fill_options.get("threads")))
        for target, source in direct:
            empty = meta_state_dict[target]
            if mesh is not None and cml.is_dtensor(empty):
                # This rank's part, at the offsets transformers' own shard_tensor reads.
                shape, parts = shardstream._distributed.dtensor_slices(
                    cml.DtensorShardOperation(empty), source.shape, source.dtype)
                dest = torch.empty(shape, dtype=source.dtype, device=source.device)
                targets.extend((source, index, dest if narrow is None else dest.narrow(*narrow))
                               for index, narrow in parts)
                loaded.append((target, dest))
                continue
            dest = None if views is None else views.view(source.file, source.key, source.dtype,
                                                          source.device)
            if dest is None:
                dest = torch.empty(source.shape, dtype=source.dtype, device=source.device)
                targets.append((source, dest))
            loaded.append((target, dest))
        for target, pieces in fused:
            first = pieces[0][0]
            dest = torch.empty(meta_state_dict[target].shape, dtype=first.dtype,
                               device=first.device)
            targets.extend((source, view(dest)) for source, view in pieces)
            loaded.append((target, dest))
        stages.append(("allocate", time.perf_counter() - mark))
        mark = time.perf_counter()
        self._fill(targets)
        stages.append(("fill", time.perf_counter() - mark))
        if views is not None and views.tensors:
            mark = time.perf_counter()
            self.report.update(views.populate())
            self.report["tensors"]["mapped"] = views.tensors
            stages.append(("populate", time.perf_counter() - mark))
        self.report["tensors"]["direct"] = len(direct)
        self.report["tensors"]["sliced"] = len(fused)

        mark = time.perf_counter()
        for target, dest in loaded:
            cml.set_param_for_module(model, target, dest, info, hf_quantizer)
        del loaded, targets

        # 5. Other converters: sources into scratch (bounded per batch), transformers' convert.
        #    A quantized load reads the next batch while this one converts (dequantizing is its
        #    cost on a CPU), in half the batch bound, so that both batches stay within it.
        overlap = quantized is not None
        limit = _CONVERT_SCRATCH_BYTES // 2 if overlap else _CONVERT_SCRATCH_BYTES
        batches, batch, batch_bytes = [], [], 0
        for target, mapping in converted:
            size = sum(_nbytes(s.shape, s.dtype) for ss in mapping.collected_tensors.values()
                       for s in ss)
            if batch and batch_bytes + size > limit:
                batches.append(batch)
                batch, batch_bytes = [], 0
            batch.append((target, mapping))
            batch_bytes += size
        if batch:
            batches.append(batch)
        self._convert_batches(batches, overlap, model, info, device_map, cml, get_device)
        dequantized = sum(1 for _, m in converted if quantized and quantized.is_dequantize(m))
        self.report["tensors"]["converted"] = len(converted) - dequantized
        self.report["tensors"]["dequantized"] = dequantized
        self.report["tensors"]["native_dequantized"] = quantized.native if quantized else 0
        stages.append(("set+convert", time.perf_counter() - mark))

        model._weight_conversions = [c for c in weight_mapping if c.was_used()]
        self.report["seconds"] = time.perf_counter() - start
        self.report["stages"] = stages + self.report["stages"]
        return info, None

    @staticmethod
    def _converter_targets(mapping, target, model, cml, meta_state_dict):
        """The parameter names a generic converter will produce: found by running it on meta
        tensors (no data); when that fails, the names transformers collected."""
        import torch
        trial = copy.deepcopy(mapping)
        trial.collected_tensors = {
            pattern: [torch.empty(s.shape, dtype=s.dtype, device="meta") for s in ss]
            for pattern, ss in mapping.collected_tensors.items()}
        try:
            out = trial.convert(target, model=model, config=model.config, hf_quantizer=None,
                                loading_info=None)
        except Exception:  # noqa: BLE001 - any failure here surfaces in the real conversion
            return set(mapping.layer_targets.keys())
        # Shape mismatches are reported by set_param_for_module after the real conversion.
        return {name for name in out if name in meta_state_dict}

    def _check_strict(self, model, info, expected_loaded):
        """Raises CheckpointMismatchError when transformers' final report would name keys: what
        finalisation removes (tied keys whose partner is loaded, `_keys_to_ignore_on_load_*`,
        legacy rotary/position-id buffers) is removed from a copy first."""
        from transformers.utils.loading_report import LoadStateDictInfo
        missing = set(info.missing_keys) - expected_loaded
        tied = dict(getattr(model, "all_tied_weights_keys", {}) or {})
        groups = {}
        for target, source in tied.items():
            groups.setdefault(source, {source}).add(target)
        for members in groups.values():
            if members - missing:
                missing -= members
        final = LoadStateDictInfo(missing_keys=missing, unexpected_keys=set(info.unexpected_keys),
                                  mismatched_keys=set(info.mismatched_keys), conversion_errors={},
                                  error_msgs=[], skipped_pp_keys=set())
        model._adjust_missing_and_unexpected_keys(final)
        if final.missing_keys or final.unexpected_keys or final.mismatched_keys:
            raise CheckpointMismatchError(self.path, final.missing_keys, final.unexpected_keys,
                                          final.mismatched_keys)

    def _fill(self, targets):
        """One shardstream.fill per checkpoint the sources come from (the whole folder when its
        index names exactly transformers' files)."""
        by_checkpoint = {}
        for source, *index, dest in targets:  # (source, dest) or (source, index, dest)
            by_checkpoint.setdefault(id(source.file), (source.file, []))[1].append(
                (source.key, index[0] if index else None, dest))
        for checkpoint, items in by_checkpoint.values():
            report = shardstream.fill(checkpoint, items, process_group=self.process_group,
                                      **self.fill_options)
            self.report["bytes"] += int(getattr(report, "bytes", 0) or 0)
            for key, value in (getattr(report, "distributed", None) or {}).items():
                if key.endswith("_bytes"):
                    counts = self.report.setdefault("distributed", {})
                    counts[key] = counts.get(key, 0) + value
            for name, seconds in getattr(report, "stages", None) or []:
                self.report["stages"].append((f"fill.{name}", seconds))

    def _convert_batches(self, batches, overlap, model, info, device_map, cml, get_device):
        """Reads each batch's sources into scratch and converts them, in order; with `overlap`,
        a reader thread reads batch i + 1 while batch i converts."""
        if not overlap or len(batches) < 2:
            for batch in batches:
                self._convert_batch(batch, self._read_batch(batch), model, info, device_map, cml,
                                    get_device)
            return
        from concurrent.futures import ThreadPoolExecutor
        # Leaving the block (an error included) waits for a read in flight: no fill outlives
        # the load.
        with ThreadPoolExecutor(1, thread_name_prefix="shardstream-convert-read") as reader:
            pending = reader.submit(self._read_batch, batches[0])
            for i, batch in enumerate(batches):
                scratch = pending.result()
                pending = (reader.submit(self._read_batch, batches[i + 1])
                           if i + 1 < len(batches) else None)
                self._convert_batch(batch, scratch, model, info, device_map, cml, get_device)
                del scratch

    def _read_batch(self, batch):
        """One batch's converter sources, read into fresh scratch: per converter, source pattern
        -> [tensor]."""
        import torch
        targets, scratch = [], []
        for target, mapping in batch:
            tensors = {}
            for pattern, ss in mapping.collected_tensors.items():
                tensors[pattern] = []
                for s in ss:
                    dest = torch.empty(s.shape, dtype=s.dtype, device=s.device)
                    targets.append((s, dest))
                    tensors[pattern].append(dest)
            scratch.append(tensors)
        self._fill(targets)
        return scratch

    def _convert_batch(self, batch, scratch, model, info, device_map, cml, get_device):
        hf_quantizer = self.quantized.hf_quantizer if self.quantized else None
        for (target, mapping), tensors in zip(batch, scratch):
            out = self.quantized.convert(target, mapping, tensors, model) if hf_quantizer else None
            if out is None:
                mapping.collected_tensors = tensors
                try:
                    out = mapping.convert(target, model=model, config=model.config,
                                          hf_quantizer=hf_quantizer, loading_info=info)
                except cml.SkipParameters:
                    continue
            for name, value in out.items():
                value = value[0] if isinstance(value, list) else value
                if getattr(mapping, "force_cpu", False):
                    value = value.to(get_device(device_map, name))
                cml.set_param_for_module(model, name, value, info, hf_quantizer)


# ---------------------------------------------------------------------------------------------
# Public entry point


def _single_device(value):
    """The torch device `value` names ("cpu", "cuda:1", 0, torch.device), or None ("auto")."""
    import torch
    if isinstance(value, int) and not isinstance(value, bool):
        return torch.device("cuda", value)
    try:
        return torch.device(value)
    except (TypeError, RuntimeError, ValueError):
        return None


def _device_map(device, device_map):
    """The device_map to hand transformers: None for the CPU (as transformers' default), a device
    string for one device, the caller's map otherwise (several devices need accelerate)."""
    if device_map is None:
        single = _single_device("cpu" if device is None else device)
        if single is None:
            raise ValueError(f"from_pretrained: device={device!r} is not a torch device")
        return None if single.type == "cpu" else str(single)
    if device not in (None, "cpu"):
        raise ValueError("from_pretrained: pass either device= or device_map=, not both")
    if isinstance(device_map, dict):
        devices = {str(_single_device(v) or v) for v in device_map.values()}
        several = len(devices) > 1
        if "disk" in devices:
            warnings.warn("shardstream: disk offload is loaded by transformers' own loader",
                          stacklevel=3)
    else:
        several = _single_device(device_map) is None  # "auto", "balanced", ...
    if several:
        import importlib.util
        if importlib.util.find_spec("accelerate") is None:
            raise ValueError(
                f"from_pretrained: device_map={device_map!r} places the model on several "
                "devices, which transformers dispatches through accelerate; install "
                "accelerate (pip install accelerate) or pass a single device= instead")
    return device_map


def from_pretrained(path: str | os.PathLike, *, model_class: Any = None, device: Any = "cpu",
                    device_map: Any = None, dtype: Any = "auto", strict: bool = True,
                    output_loading_info: bool = False, threads: int | None = None,
                    io: str = "auto", direct: str = "auto", staging_mb: int | None = None,
                    copy: bool = False, **kwargs):
    """Loads a transformers model from a local folder (its `config.json` and a `.safetensors`
    checkpoint, sharded or not) with the tensors read by `shardstream.fill`.

    Everything else is transformers' `model_class.from_pretrained(path, dtype=dtype, ...)`
    (`model_class` defaults to `AutoModelForCausalLM`; `**kwargs` go to it unchanged, e.g.
    `attn_implementation`, `ignore_mismatched_sizes`). `device` ("cpu", "cuda:N" or an int) places
    every tensor there; `device_map` (not with `device`) is transformers', and several devices
    need accelerate. `threads`, `io`, `direct`, `staging_mb` are `shardstream.fill`'s.

    On the CPU, a parameter or buffer that takes the checkpoint tensor as stored (same dtype, no
    converter) is a view of a private, copy-on-write mapping of the file, as transformers' own
    loader gives, made resident by parallel populate workers before this returns (`threads`);
    writes never reach the file, and truncating the file under a live model raises SIGBUS.
    `copy=True` gives every tensor its own memory instead.

    `strict=True` raises CheckpointMismatchError, before any tensor data is read, when
    transformers' loading info would name missing, unexpected or mismatched keys; `strict=False`
    behaves as transformers does (initialises missing weights, warns, raises on mismatched shapes
    unless `ignore_mismatched_sizes=True`).

    Returns the model (in eval mode), or with `output_loading_info=True` `(model, info)`: the dict
    transformers returns plus `info["shardstream"]`: loader ("shardstream", or "transformers" with
    its `reason` when the checkpoint needs transformers' own loader), bytes read, seconds in the
    weight-loading step, stage times, how many tensors went each way (`mapped`: views) and
    `populated_bytes` / `populate_seconds` of the mapped views.
    """
    import transformers
    if model_class is None:
        model_class = transformers.AutoModelForCausalLM
    folder = os.fspath(path)
    if not os.path.isdir(folder) or not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"{folder}: not a folder with a config.json")
    device_map = _device_map(device, device_map)
    fill_options = {k: v for k, v in (("threads", threads), ("io", io), ("direct", direct),
                                       ("staging_mb", staging_mb)) if v not in (None, "auto")}
    session = _Session(folder, strict, fill_options, copy)
    reason = _unsupported_reason()
    if reason is None:
        _warn_if_untested(stacklevel=2)
    call_kwargs = dict(kwargs, dtype=dtype, output_loading_info=True)
    if device_map is not None:
        call_kwargs["device_map"] = device_map
    start = time.perf_counter()
    if reason is not None:
        warnings.warn(f"shardstream.transformers: {reason}; loading with transformers' own "
                      "loader", stacklevel=2)
        session.report["reason"] = reason
        model, info = model_class.from_pretrained(folder, **call_kwargs)
    else:
        with _hooked(session):
            model, info = model_class.from_pretrained(folder, **call_kwargs)
        if not session.used:
            session.report["reason"] = "transformers did not call _load_pretrained_model"
    if strict and session.report["loader"] != "shardstream":
        if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
            raise CheckpointMismatchError(folder, info["missing_keys"], info["unexpected_keys"],
                                          info["mismatched_keys"])
    session.report["total_seconds"] = time.perf_counter() - start
    info["shardstream"] = session.report
    return (model, info) if output_loading_info else model
