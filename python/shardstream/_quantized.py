"""Pre-quantized checkpoints in `shardstream.transformers`' loader: MXFP4 (gpt-oss) and
fine-grained FP8 (`weight` F8_E4M3 + `weight_scale_inv`).

transformers loads a pre-quantized checkpoint with the same loader as any other: the quantizer
adds `WeightConverter`s whose first operation is its load op (`Mxfp4Dequantize`,
`Mxfp4Deserialize`, `Fp8Dequantize`) to `load_config.weight_mapping`, and decides the dtype each
checkpoint tensor is read in. So shardstream's loader keeps its plan and only changes:

- the dtype a tensor is read in: transformers' own rule (`HfQuantizer.get_new_dtype` where the
  loader calls it, else the inline rule older releases have: no cast when the key was renamed or
  the checkpoint dtype is not a float), decided by what the installed transformers' loader code
  does, not by its version;
- converters with a load op are read into bounded scratch and run with the quantizer, as
  transformers runs them; tensors kept quantized (FP8 `weight` and `weight_scale_inv` on a GPU,
  or wherever transformers' environment check lets them stay FP8) are read straight into their
  parameters like any other;
- on the CPU, MXFP4 and FP8 block-scale dequantization runs natively (engine/dequantize.h)
  straight into the parameter, where the native op gives the same bits as transformers' op: that
  is checked once per process for each op, output dtype and scale dtype, on every byte code and a
  spread of scales, by running transformers' op beside it. Inputs the native op declines (NaN
  codes or scales) and any mismatch run transformers' op. The loader reads the next batch of
  converter sources while one batch converts (transformers.py `_convert_batches`).

On-the-fly quantization, other quantization methods and ops not listed here go to transformers'
loader, with the reason named (`unhandled_reason`).
"""
from __future__ import annotations

import threading

from shardstream import _core

__all__ = ["unhandled_reason", "QuantizedLoad"]

# quant_method -> (quantizer class name, the load ops shardstream runs): by identity, resolved in
# the installed transformers.
_METHODS = {
    "mxfp4": ("quantizers.quantizer_mxfp4", "Mxfp4HfQuantizer",
              ("integrations.mxfp4", ("Mxfp4Dequantize", "Mxfp4Deserialize"))),
    "fp8": ("quantizers.quantizer_finegrained_fp8", "FineGrainedFP8HfQuantizer",
            ("integrations.finegrained_fp8", ("Fp8Dequantize",))),
}


def _resolve(module, name):
    import importlib
    try:
        return getattr(importlib.import_module(f"transformers.{module}"), name, None)
    except ImportError:
        return None


def _method(hf_quantizer):
    method = getattr(hf_quantizer.quantization_config, "quant_method", None)
    return str(getattr(method, "value", method))


def _dtype_rule():
    """How the installed transformers' loader picks the dtype a pre-quantized checkpoint tensor is
    read in: "get_new_dtype" (the quantizer decides), "inline" (no cast when renamed or not a
    float), or None when its loader does neither that shardstream knows."""
    import inspect
    from transformers import core_model_loading as cml
    from transformers.quantizers.base import HfQuantizer
    loader = getattr(cml, "convert_and_load_state_dict_in_model", None)
    names = getattr(getattr(loader, "__code__", None), "co_names", ())
    if "get_new_dtype" in names:
        try:
            params = list(inspect.signature(HfQuantizer.get_new_dtype).parameters)
        except (AttributeError, TypeError, ValueError):
            return None
        return "get_new_dtype" if params[1:4] == ["converter", "param", "dtype"] else None
    if "pre_quantized" in names and "get_dtype" in names:
        return "inline"
    return None


def unhandled_reason(hf_quantizer, weight_mapping):
    """None when shardstream's loader loads this quantized checkpoint; otherwise why not."""
    method = _method(hf_quantizer)
    if not getattr(hf_quantizer, "pre_quantized", False):
        return f"on-the-fly quantization ({method}) runs in transformers' loader"
    known = _METHODS.get(method)
    if known is None:
        return f"quantization method '{method}' is loaded by transformers' own loader"
    module, name, (ops_module, op_names) = known
    cls = _resolve(module, name)
    if cls is None or type(hf_quantizer) is not cls:
        return f"quantizer {type(hf_quantizer).__name__} for '{method}' is not transformers' {name}"
    ops = tuple(c for c in (_resolve(ops_module, n) for n in op_names) if c is not None)
    for entry in weight_mapping:
        for op in list(getattr(entry, "operations", ()) or ()):
            if getattr(op, "hf_quantizer", None) is not None and type(op) not in ops:
                return (f"quantized load op {type(op).__name__} is loaded by transformers' own "
                        "loader")
        if getattr(entry, "quantization_operation", None) is not None:
            return "a converter quantizes on load (transformers' loader)"
    if _dtype_rule() is None:
        import transformers
        return (f"transformers {transformers.__version__}: its loader picks pre-quantized dtypes "
                "by a rule shardstream does not know")
    return None


class _Header:
    """What transformers' dtype rule reads of a checkpoint tensor: its safetensors dtype."""

    __slots__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = dtype

    def get_dtype(self):
        return self.dtype


# (op class, output dtype, scale dtype) -> whether the native op gave transformers' bits.
_proven = {}
_proven_lock = threading.Lock()


def _bits(tensor):
    import torch
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.contiguous().view(width)


def _fp8_pairs(tensors):
    """[(weight pattern, its scale pattern)] among a converter's source patterns, the scale named
    as the weight plus `_scale_inv` (with or without the `$` anchor some releases add); None when
    a weight pattern has no scale (transformers' op then passes it through or casts it)."""
    plain = {p.rstrip("$"): p for p in tensors}
    pairs = []
    for pattern in tensors:
        bare = pattern.rstrip("$")
        if "scale" in bare:
            continue
        scale = plain.get(bare + "_scale_inv")
        if scale is None or not tensors[pattern] or not tensors[scale]:
            return None
        pairs.append((pattern, scale))
    return pairs or None


def _fp8_native_input(weight, scales):
    """Whether the native FP8 op takes this pair: an E4M3 weight, an F32/BF16 scale grid that
    divides it, batch dimensions alike."""
    import torch
    if (weight.dtype != torch.float8_e4m3fn or scales.dtype not in (torch.float32, torch.bfloat16)
            or weight.dim() < 2 or scales.dim() < 2):
        return False
    rows, cols = weight.shape[-2:]
    srows, scols = scales.shape[-2:]
    batch = weight.numel() // max(1, rows * cols)
    return (srows > 0 and scols > 0 and rows % srows == 0 and cols % scols == 0
            and scales.numel() == batch * srows * scols)


def _mxfp4_probe_input():
    """Every byte with every scale but the NaN one (0xFF), as one [1, 255 * 16, 1, 16] tensor."""
    import torch
    rows = 255 * 16
    blocks = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(16, 16)
    blocks = blocks.repeat(255, 1).reshape(1, rows, 1, 16)
    scales = torch.arange(255, dtype=torch.int32).repeat_interleave(16).to(torch.uint8)
    return blocks.contiguous(), scales.reshape(1, rows, 1).contiguous()


def _fp8_probe_input(scale_dtype):
    """Every non-NaN E4M3 code under scales spread over the float range, [2, 256, 64] with a
    [2, 4, 2] scale grid."""
    import torch
    codes = torch.arange(256, dtype=torch.int32)
    codes = codes[(codes & 0x7F) != 0x7F].to(torch.uint8)
    weight = codes.repeat(2 * 256 * 64 // codes.numel() + 1)[:2 * 256 * 64].reshape(2, 256, 64)
    generator = torch.Generator().manual_seed(0)
    mantissa = torch.rand(2, 4, 2, generator=generator) * 4 - 2
    exponent = torch.randint(-60, 60, (2, 4, 2), generator=generator)
    scales = torch.ldexp(mantissa, exponent).to(scale_dtype)
    return weight.view(torch.float8_e4m3fn), scales


def native_mxfp4(blocks, scales, out):
    """engine/dequantize.h's MXFP4 into `out` (contiguous, on the CPU): "" or why declined."""
    return _core.dequantize_mxfp4(blocks.data_ptr(), scales.data_ptr(), list(blocks.shape),
                                  _dtype_name(out.dtype), out.data_ptr())


def native_fp8(weight, scales, out):
    """engine/dequantize.h's FP8 block-scale into `out` (contiguous [..., rows, cols] on the
    CPU, weight's shape): "" or why declined."""
    rows, cols = weight.shape[-2:]
    scale_rows, scale_cols = scales.shape[-2:]
    batch = weight.numel() // (rows * cols) if rows * cols else 0
    return _core.dequantize_fp8(weight.data_ptr(), scales.data_ptr(), _dtype_name(scales.dtype),
                                [batch, rows, cols, scale_rows, scale_cols],
                                _dtype_name(out.dtype), out.data_ptr())


def _dtype_name(dtype):
    from shardstream._dtypes import name_of
    return name_of(dtype)


class QuantizedLoad:
    """One load's quantizer: the dtype rule and the conversions of converters with a load op."""

    def __init__(self, hf_quantizer):
        self.hf_quantizer = hf_quantizer
        self.rule = _dtype_rule()
        self.native = 0
        # checkpoint key -> the dtype transformers reads it in, for F8 weights that a dequantize
        # converter reads as stored (the native op takes F8): cast before transformers' op runs.
        self.deferred = {}
        known = _METHODS[_method(hf_quantizer)][2]
        self.ops = {n: _resolve(known[0], n) for n in known[1]}

    def source_dtype(self, mapping, original_key, renamed_key, header_dtype, planned):
        """The dtype this checkpoint tensor is read in; None for its own dtype. transformers'
        rule, except that an F8 weight a dequantize converter would cast first (older releases)
        is read as stored and cast only where transformers' op runs (`convert`)."""
        if self.rule == "get_new_dtype":
            dtype = self.hf_quantizer.get_new_dtype(mapping, _Header(header_dtype), planned)
        elif original_key != renamed_key or not header_dtype.startswith(("F", "BF")):
            dtype = None
        else:
            dtype = planned
        ops = getattr(mapping, "operations", ())
        if (dtype is not None and header_dtype == "F8_E4M3" and ops
                and type(ops[0]) is self.ops.get("Fp8Dequantize")):
            self.deferred[original_key] = dtype
            return None
        return dtype

    @staticmethod
    def has_load_op(mapping):
        """Whether a converter runs a quantizer's load op (dequantize or deserialize)."""
        return any(getattr(op, "hf_quantizer", None) is not None
                   for op in getattr(mapping, "operations", ()))

    def is_dequantize(self, mapping):
        """Whether a converter dequantizes scaled tensors (not only a weight that the FP8
        converter's "weight" pattern also collects where the checkpoint stores it unquantized)."""
        ops = getattr(mapping, "operations", ())
        if not ops or type(ops[0]) not in (self.ops.get("Mxfp4Dequantize"),
                                           self.ops.get("Fp8Dequantize")):
            return False
        return any(pattern.rstrip("$").endswith(("_scales", "scale_inv")) and sources
                   for pattern, sources in mapping.collected_tensors.items())

    # Native conversion -------------------------------------------------------------------------

    def convert(self, target, mapping, tensors, model):
        """The native dequantize of one converter whose sources are read (`tensors`: source
        pattern -> [tensor], `mapping.collected_tensors` still the planned sources):
        {parameter name: tensor}, or None where transformers' op is to run (on `tensors`, cast as
        transformers would have read them)."""
        out = self._native(target, mapping, tensors, model)
        if out is None and self.deferred:
            for pattern, sources in mapping.collected_tensors.items():
                tensors[pattern] = [t.to(self.deferred[s.key]) if s.key in self.deferred else t
                                    for s, t in zip(sources, tensors[pattern])]
        return out

    def _native(self, target, mapping, tensors, model):
        import torch
        ops = list(mapping.operations)
        if not ops or not all(t.device.type == "cpu" for ts in tensors.values() for t in ts):
            return None
        op = ops[0]
        if len(ops) > 1:
            if type(op) is self.ops.get("Fp8Dequantize"):
                return self._native_fp8_fused(target, mapping, tensors, model)
            return None
        if type(op) is self.ops.get("Mxfp4Dequantize"):
            proj = "gate_up_proj" if "gate_up_proj" in target else "down_proj"
            blocks = tensors.get(f"{proj}_blocks")
            scales = tensors.get(f"{proj}_scales")
            if not blocks or not scales:
                return None
            blocks, scales = blocks[0], scales[0]
            if (blocks.dtype != torch.uint8 or scales.dtype != torch.uint8 or blocks.dim() != 4
                    or tuple(scales.shape) != tuple(blocks.shape[:-1])):
                return None
            dtype = self._proven_dtype(op, target, model, "mxfp4", torch.uint8)
            if dtype is None:
                return None
            e, r, g, b = blocks.shape
            out = torch.empty((e, g * b * 2, r), dtype=dtype)
            if native_mxfp4(blocks.contiguous(), scales.contiguous(), out):
                return None
            self.native += 1
            return {target: out}
        if type(op) is self.ops.get("Fp8Dequantize"):
            pairs = _fp8_pairs(tensors)
            if pairs is None or len(pairs) != 1:
                return None
            (wkey, skey), = pairs
            if len(tensors[wkey]) != 1 or len(tensors[skey]) != 1:
                return None
            weight, scales = tensors[wkey][0], tensors[skey][0]
            if not _fp8_native_input(weight, scales):
                return None
            dtype = self._proven_dtype(op, target, model, "fp8", scales.dtype, (wkey, skey))
            if dtype is None:
                return None
            out = torch.empty(weight.shape, dtype=dtype)
            if native_fp8(weight.contiguous(), scales.contiguous(), out):
                return None
            self.native += 1
            return {target: out}
        return None

    def _native_fp8_fused(self, target, mapping, tensors, model):
        """FP8 experts dequantized straight into the fused parameter (`Fp8Dequantize` then
        `MergeModulelist` / `Concatenate`): each expert's weight into its slice."""
        import types
        import torch
        from transformers import core_model_loading as cml
        from shardstream.transformers import _slice_plan
        patterns = _fp8_pairs(tensors)
        if patterns is None:
            return None
        weights = {w: tensors[w] for w, _ in patterns}
        pairs = {}
        for wkey, skey in patterns:
            if len(tensors[skey]) != len(tensors[wkey]):
                return None
            pairs.update({id(w): s for w, s in zip(tensors[wkey], tensors[skey])})
        shaped = types.SimpleNamespace(
            operations=list(mapping.operations)[1:], target_patterns=mapping.target_patterns,
            source_patterns=[p for p in mapping.source_patterns if p in weights],
            collected_tensors=weights)
        plan = _slice_plan(shaped, cml)
        if plan is None:
            return None
        shape, pieces = plan
        first_scale = next(iter(pairs.values()))
        dtype = self._proven_dtype(mapping.operations[0], target, model, "fp8", first_scale.dtype,
                                   patterns[0])
        if dtype is None:
            return None
        out = torch.empty(shape, dtype=dtype)
        for weight, view in pieces:
            scales = pairs[id(weight)]
            dest = view(out)
            if (not _fp8_native_input(weight, scales) or scales.dtype != first_scale.dtype
                    or not dest.is_contiguous() or tuple(dest.shape) != tuple(weight.shape)):
                return None
            if native_fp8(weight.contiguous(), scales.contiguous(), dest):
                return None
        self.native += 1
        return {target: out}

    def _proven_dtype(self, op, target, model, kind, scale_dtype, keys=None):
        """The dtype transformers' op gives for this target, when the native op has been shown to
        give its bits for that dtype (once per process); else None."""
        import torch
        if kind == "mxfp4":
            proj = "gate_up_proj" if "gate_up_proj" in target else "down_proj"
            blocks, scales = _mxfp4_probe_input()
            inputs = {f"{proj}_blocks": [blocks], f"{proj}_scales": [scales]}
        else:
            weight, scales = _fp8_probe_input(scale_dtype)
            inputs = {keys[0]: [weight], keys[1]: [scales]}
        # transformers' op on a small input for this very target: the dtype it picks (the
        # parameter's, or the op's own default, depending on the release).
        try:
            if kind == "mxfp4":
                small = {k: [v[0][:, :1]] for k, v in inputs.items()}
            else:
                small = {keys[0]: [weight[:1, :8, :]], keys[1]: [scales[:1, :1, :]]}
            dtype = next(iter(op.convert(small, model=model, full_layer_name=target).values()))
            dtype = (dtype[0] if isinstance(dtype, list) else dtype).dtype
        except Exception:  # noqa: BLE001 - transformers' op then runs, and reports its error
            return None
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return None
        key = (type(op), kind, dtype, scale_dtype, keys)
        with _proven_lock:
            verdict = _proven.get(key)
        if verdict is None:
            verdict = _prove(op, target, model, kind, inputs, dtype)
            with _proven_lock:
                _proven[key] = verdict
        return dtype if verdict else None


def _prove(op, target, model, kind, inputs, dtype):
    """Runs transformers' op and the native one on the probe input; whether the bits agree."""
    import torch
    try:
        want = next(iter(op.convert(dict(inputs), model=model, full_layer_name=target).values()))
        want = want[0] if isinstance(want, list) else want
    except Exception:  # noqa: BLE001
        return False
    if want.dtype != dtype:
        return False
    if kind == "mxfp4":
        blocks, scales = inputs[next(k for k in inputs if k.endswith("_blocks"))][0], \
            inputs[next(k for k in inputs if k.endswith("_scales"))][0]
        e, r, g, b = blocks.shape
        got = torch.empty((e, g * b * 2, r), dtype=dtype)
        declined = native_mxfp4(blocks, scales, got)
    else:
        (weight,), (scales,) = inputs.values()
        got = torch.empty(weight.shape, dtype=dtype)
        declined = native_fp8(weight, scales, got)
    return (not declined and tuple(want.shape) == tuple(got.shape)
            and torch.equal(_bits(want.detach()), _bits(got)))
