"""Pre-quantized checkpoints through shardstream.transformers.from_pretrained, against
transformers' own from_pretrained on the CPU: tiny sharded MXFP4 gpt-oss and fine-grained FP8
qwen3 / qwen3_moe checkpoints generated here (F32 and BF16 FP8 scales), dequantized (transformers'
default without a GPU, and `dequantize=True`, in bf16 and float32), kept quantized (FP8 with
transformers' environment check stubbed; MXFP4 deserialized through a stub kernel hub), and with
a scale missing. Every state_dict tensor byte-equal, equal logits, the same loading info, and the
loader that ran is shardstream's. The native dequantize (engine/dequantize.h) is held against
transformers' own ops, bit for bit, over every byte x scale pair. `test_on_a_gpu` runs where a
CUDA device is (the quantizer's ops on the device, on uploaded bytes).

tests/python/run_transformers_matrix.sh runs this file on the newest and the oldest transformers
shardstream is tested with."""
import json
import os
import sys
import types

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fill_standin  # noqa: E402
import tiny_models  # noqa: E402

shardstream, FILL = fill_standin.import_shardstream()
if shardstream is None:
    if os.environ.get("SHARDSTREAM_REQUIRE_PACKAGE") == "1":
        raise ImportError(FILL)
    pytest.skip(FILL, allow_module_level=True)
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers requires it for both quantizers
import shardstream.transformers as sst  # noqa: E402
from shardstream import _quantized  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

FP8_BLOCK = 16
FP8_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def raw(tensor):
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def save_sharded(tensors, folder, shards=3):
    """`tensors` into `shards` safetensors files and their index (key order kept)."""
    keys = list(tensors)
    per = (len(keys) + shards - 1) // shards
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k].contiguous() for k in keys[i * per:(i + 1) * per]}
        save_file(part, os.path.join(folder, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)


def read_checkpoint(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), "pt") as handle:
                for key in handle.keys():
                    out[key] = handle.get_tensor(key)
    return out


def rewrite(folder, tensors, quantization_config):
    for name in os.listdir(folder):
        if name.endswith(".safetensors") or name.endswith(".index.json"):
            os.remove(os.path.join(folder, name))
    save_sharded(tensors, folder)
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["quantization_config"] = quantization_config
    with open(path, "w") as f:
        json.dump(config, f)


def build_mxfp4(folder, seed=0):
    """A tiny gpt-oss whose experts are stored as gpt-oss stores them: `*_blocks` (U8, two E2M1
    codes a byte) and `*_scales` (U8 E8M0 exponents), one per 32 values."""
    tiny_models.build("gpt_oss", folder, seed=seed)
    tensors = read_checkpoint(folder)
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in tensors.items():
        if key.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            experts, values, rows = value.shape  # dequantized: [E, G * 32, R]
            blocks = torch.randint(0, 256, (experts, rows, values // 32, 16), dtype=torch.uint8,
                                   generator=generator)
            scales = torch.randint(118, 130, (experts, rows, values // 32), dtype=torch.uint8,
                                   generator=generator)
            out[key + "_blocks"], out[key + "_scales"] = blocks, scales
        else:
            out[key] = value
    rewrite(folder, out, {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]})


def fp8_quantize(weight, scale_dtype):
    """Block-wise F8_E4M3 weight and its `weight_scale_inv` (what the weight is multiplied by)."""
    rows, cols = weight.shape
    blocks = weight.float().reshape(rows // FP8_BLOCK, FP8_BLOCK, cols // FP8_BLOCK, FP8_BLOCK)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale = (amax / 448.0).to(scale_dtype)
    q = (blocks / scale.float()[:, None, :, None]).clamp(-448, 448).reshape(rows, cols)
    return q.to(torch.float8_e4m3fn), scale


def build_fp8(name, folder, scale_dtype, seed=0):
    tiny_models.build(name, folder, seed=seed)
    out = {}
    for key, value in read_checkpoint(folder).items():
        module = key.rsplit(".", 2)
        if key.endswith(".weight") and module[-2] in FP8_LINEAR and value.dim() == 2:
            out[key], out[key[:-len("weight")] + "weight_scale_inv"] = fp8_quantize(value,
                                                                                   scale_dtype)
        else:
            out[key] = value
    rewrite(folder, out, {"quant_method": "fp8", "activation_scheme": "dynamic",
                          "weight_block_size": [FP8_BLOCK, FP8_BLOCK]})


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    built = {}

    def get(kind, name="gpt_oss", scale_dtype=None):
        key = (kind, name, scale_dtype)
        if key not in built:
            folder = str(tmp_path_factory.mktemp(f"{kind}-{name}"))
            if kind == "mxfp4":
                build_mxfp4(folder)
            else:
                build_fp8(name, folder, scale_dtype)
            built[key] = folder
        return built[key]
    return get


def load_both(folder, **kwargs):
    """transformers' load and shardstream's, each from the same RNG state (what the checkpoint
    does not hold is initialised the same)."""
    torch.manual_seed(1)
    ref, ref_info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True,
                                                         **kwargs)
    torch.manual_seed(1)
    got, info = sst.from_pretrained(folder, output_loading_info=True, **kwargs)
    report = info.pop("shardstream")
    assert report["loader"] == "shardstream", report["reason"]
    return ref, ref_info, got, info, report


def fp8_tp_plan_bug(folder, monkeypatch):
    """transformers 5.16's FineGrainedFP8HfQuantizer.update_tp_plan raises for every model with a
    tensor-parallel plan, before any weight is read. Where it does, shardstream.transformers (which
    runs inside transformers' from_pretrained) must fail the same way; the quantizer's method is
    then stubbed to return the config unchanged, for both loaders, so that the load itself is
    still compared."""
    from transformers import AutoConfig
    from transformers.quantizers.quantizer_finegrained_fp8 import FineGrainedFP8HfQuantizer
    if not hasattr(FineGrainedFP8HfQuantizer, "update_tp_plan"):
        return  # newer releases plan parallelism elsewhere
    config = AutoConfig.from_pretrained(folder)
    quantizer = FineGrainedFP8HfQuantizer(config.quantization_config, pre_quantized=True)
    try:
        quantizer.update_tp_plan(config)
        return
    except Exception as e:  # noqa: BLE001
        want = e
    with pytest.raises(type(want)) as got:
        sst.from_pretrained(folder)
    assert str(got.value) == str(want)
    monkeypatch.setattr(FineGrainedFP8HfQuantizer, "update_tp_plan", lambda self, config: config)


def assert_same_model(ref, got):
    ref_state, got_state = ref.state_dict(), got.state_dict()
    assert list(got_state) == list(ref_state)
    for key, want in ref_state.items():
        have = got_state[key]
        assert (have.dtype, have.shape) == (want.dtype, want.shape), key
        assert torch.equal(raw(have), raw(want)), f"{key}: bytes differ"
        assert type(have) is type(want), key
    for (key, want), (_, have) in zip(ref.named_buffers(), got.named_buffers()):
        assert torch.equal(raw(have), raw(want)), f"buffer {key}: bytes differ"


def assert_same_logits(ref, got):
    ids = torch.tensor(tiny_models.TOKEN_IDS)
    with torch.no_grad():
        want, have = ref(ids).logits, got(ids).logits
    assert torch.isfinite(want).all()
    assert torch.equal(have, want)


# ---------------------------------------------------------------------------------------------
# The native dequantize against transformers' own ops


def test_native_mxfp4_is_bit_equal_to_transformers_for_every_byte_and_scale():
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    blocks, scales = _quantized._mxfp4_probe_input()  # every byte x every scale but 0xFF
    assert blocks.numel() == 256 * 255
    for dtype in (torch.bfloat16, torch.float32, torch.float16):
        want = convert_moe_packed_tensors(blocks, scales, dtype=dtype)
        got = torch.empty(want.shape, dtype=dtype)
        assert _quantized.native_mxfp4(blocks, scales, got) == ""
        assert torch.equal(raw(got), raw(want)), dtype
    # A larger layout (experts, several groups, rows over a tile) lands where transformers puts it.
    generator = torch.Generator().manual_seed(7)
    blocks = torch.randint(0, 256, (3, 130, 4, 16), dtype=torch.uint8, generator=generator)
    scales = torch.randint(0, 255, (3, 130, 4), dtype=torch.uint8, generator=generator)
    want = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)
    got = torch.empty(want.shape, dtype=torch.bfloat16)
    assert _quantized.native_mxfp4(blocks, scales, got) == ""
    assert torch.equal(raw(got), raw(want))
    # The NaN scale is declined: transformers' op runs there.
    scales[0, 0, 0] = 255
    assert "0xFF" in _quantized.native_mxfp4(blocks, scales, got)


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
def test_native_fp8_is_bit_equal_to_transformers(scale_dtype):
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    op = Fp8Dequantize(None)
    weight, scales = _quantized._fp8_probe_input(scale_dtype)  # every non-NaN code
    for dtype in (torch.bfloat16, torch.float32, torch.float16):
        want = op._dequantize_one(weight, scales, output_dtype=dtype)
        got = torch.empty(weight.shape, dtype=dtype)
        assert _quantized.native_fp8(weight, scales, got) == ""
        assert torch.equal(raw(got), raw(want)), dtype
    nan = weight.clone()
    nan.view(torch.uint8)[0, 0, 0] = 0x7F
    assert "NaN" in _quantized.native_fp8(nan, scales, got)


# ---------------------------------------------------------------------------------------------
# Loads


@pytest.mark.parametrize("dtype", ["auto", "float32"])
@pytest.mark.parametrize("explicit", [False, True], ids=["default", "dequantize"])
def test_mxfp4_gpt_oss_dequantized(checkpoints, explicit, dtype):
    folder = checkpoints("mxfp4")
    kwargs = {"dtype": getattr(torch, dtype) if dtype != "auto" else "auto"}
    if explicit:
        kwargs["quantization_config"] = transformers.Mxfp4Config(dequantize=True)
    ref, ref_info, got, info, report = load_both(folder, **kwargs)
    assert info == ref_info
    assert_same_model(ref, got)
    assert_same_logits(ref, got)
    counts = report["tensors"]
    # 2 layers x (gate_up_proj, down_proj), all dequantized by the native op.
    assert counts["dequantized"] == 4 and counts["native_dequantized"] == 4, counts
    assert counts["direct"] > 0


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", ["qwen3", "qwen3_moe"])
@pytest.mark.parametrize("mode", ["default", "dequantize", "dequantize-float32"])
def test_fp8_dequantized(checkpoints, name, scale_dtype, mode, monkeypatch):
    folder = checkpoints("fp8", name, scale_dtype)
    kwargs = {}
    if mode != "default":
        kwargs["quantization_config"] = transformers.FineGrainedFP8Config(
            dequantize=True, weight_block_size=[FP8_BLOCK, FP8_BLOCK])
    if mode.endswith("float32"):
        kwargs["dtype"] = torch.float32
    fp8_tp_plan_bug(folder, monkeypatch)
    ref, ref_info, got, info, report = load_both(folder, **kwargs)
    assert info == ref_info
    assert_same_model(ref, got)
    assert_same_logits(ref, got)
    counts = report["tensors"]
    assert counts["dequantized"] > 0, counts
    # Every scaled weight by the native op (the probe proved it bit-equal for this dtype).
    assert counts["native_dequantized"] == counts["dequantized"], counts


@pytest.mark.parametrize("name", ["qwen3", "qwen3_moe"])
def test_fp8_kept_quantized(checkpoints, name, monkeypatch):
    from transformers.quantizers.quantizer_finegrained_fp8 import FineGrainedFP8HfQuantizer
    # transformers keeps FP8 only where it finds a GPU: its check is stubbed to say it did.
    monkeypatch.setattr(FineGrainedFP8HfQuantizer, "validate_environment",
                        lambda self, *a, **k: None)
    folder = checkpoints("fp8", name, torch.float32)
    fp8_tp_plan_bug(folder, monkeypatch)
    ref, ref_info, got, info, report = load_both(folder)
    assert info == ref_info
    assert_same_model(ref, got)
    assert any(t.dtype == torch.float8_e4m3fn for t in got.state_dict().values())
    counts = report["tensors"]
    assert counts["dequantized"] == 0 and counts["direct"] > 0, counts
    if name == "qwen3_moe":
        assert counts["sliced"] > 0, counts  # F8 experts and their scales as slice writes


class _Wrapped:
    """The stub hub's swizzled tensor: holds the bytes; its shape is overwritten by
    transformers."""

    def __init__(self, data):
        self.data = data.detach().clone()
        self.shape = data.shape


def _stub_hub():
    def convert_layout(tensor, layout, **options):
        return _Wrapped(tensor)

    layout = types.SimpleNamespace(
        make_default_matmul_mxfp4_w_layout=lambda mx_axis: ("mxfp4", {}),
        StridedLayout="strided")
    return types.SimpleNamespace(
        tensor=types.SimpleNamespace(FP4="fp4", convert_layout=convert_layout,
                                     wrap_torch_tensor=lambda t, dtype=None: t),
        tensor_details=types.SimpleNamespace(layout=layout),
        matmul_ogs=types.SimpleNamespace(
            PrecisionConfig=lambda weight_scale, flex_ctx: types.SimpleNamespace(
                weight_scale=weight_scale, flex_ctx=flex_ctx),
            FlexCtx=lambda rhs_data: ("flex", rhs_data), InFlexData=lambda: "in"))


def test_mxfp4_deserialized_through_a_stub_kernel_hub(checkpoints, monkeypatch):
    from transformers.integrations import hub_kernels
    from transformers.quantizers.quantizer_mxfp4 import Mxfp4HfQuantizer
    monkeypatch.setattr(Mxfp4HfQuantizer, "validate_environment", lambda self, *a, **k: None)
    monkeypatch.setattr(hub_kernels, "get_kernel", lambda *a, **k: _stub_hub())
    # A CUDA build of torch without a GPU: the swizzle stays on the CPU.
    import transformers.integrations.mxfp4 as mxfp4
    if hasattr(mxfp4, "get_current_accelerator"):
        monkeypatch.setattr(mxfp4, "get_current_accelerator", lambda: None)
    if hasattr(torch, "accelerator"):  # what older releases ask instead
        monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: None)
    import inspect
    before = Mxfp4HfQuantizer._process_model_before_weight_loading
    if "use_kernels" in inspect.signature(before).parameters:
        # Older releases deserialize on the CPU only with use_kernels=True (which would also
        # kernelize the model through the `kernels` package): the quantizer is told so alone.
        monkeypatch.setattr(Mxfp4HfQuantizer, "_process_model_before_weight_loading",
                            lambda self, model, use_kernels=False, **k: before(
                                self, model, use_kernels=True, **k))
    folder = checkpoints("mxfp4")
    ref, ref_info, got, info, report = load_both(folder)
    assert info == ref_info
    assert_same_model(ref, got)
    swizzled = 0
    for (name, want), (_, have) in zip(ref.named_modules(), got.named_modules()):
        for proj in ("gate_up_proj", "down_proj"):
            if isinstance(getattr(want, proj, None), _Wrapped):
                swizzled += 1
                assert isinstance(getattr(have, proj), _Wrapped), name
                assert getattr(have, proj).shape == getattr(want, proj).shape
                assert torch.equal(raw(getattr(have, proj).data), raw(getattr(want, proj).data))
                ws = getattr(want, f"{proj}_precision_config").weight_scale
                hs = getattr(have, f"{proj}_precision_config").weight_scale
                assert torch.equal(raw(hs.data), raw(ws.data)), name
    assert swizzled == 4
    assert report["tensors"]["dequantized"] == 0 and report["tensors"]["converted"] == 4


def _drop(folder, suffix):
    """Removes the first checkpoint key ending in `suffix` (from its shard and the index)."""
    index_path = os.path.join(folder, "model.safetensors.index.json")
    with open(index_path) as f:
        index = json.load(f)
    key = next(k for k in sorted(index["weight_map"]) if k.endswith(suffix))
    shard = os.path.join(folder, index["weight_map"].pop(key))
    with safe_open(shard, "pt") as handle:
        kept = {k: handle.get_tensor(k) for k in handle.keys() if k != key}
    save_file(kept, shard, metadata={"format": "pt"})
    with open(index_path, "w") as f:
        json.dump(index, f)
    return key


@pytest.mark.parametrize("kind", ["mxfp4", "fp8"])
def test_missing_scale_gives_what_transformers_gives(tmp_path, kind, monkeypatch):
    folder = str(tmp_path)
    if kind == "mxfp4":
        build_mxfp4(folder)
        _drop(folder, "mlp.experts.down_proj_scales")
    else:
        build_fp8("qwen3", folder, torch.float32)
        _drop(folder, "mlp.down_proj.weight_scale_inv")
        fp8_tp_plan_bug(folder, monkeypatch)
    torch.manual_seed(1)
    try:
        ref, ref_info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
        ref_error = None
    except Exception as e:  # noqa: BLE001 - whatever transformers does, shardstream does too
        ref_error = e
    torch.manual_seed(1)
    if ref_error is not None:  # MXFP4: transformers reports the conversion error and raises
        with pytest.raises(type(ref_error)) as error:
            sst.from_pretrained(folder, strict=False)
        assert str(error.value) == str(ref_error)
        return
    got, info = sst.from_pretrained(folder, output_loading_info=True, strict=False)
    report = info.pop("shardstream")
    assert report["loader"] == "shardstream", report["reason"]
    assert info.keys() == ref_info.keys()
    for key in ref_info:
        assert _comparable(info[key]) == _comparable(ref_info[key]), key
    assert_same_model(ref, got)


def _comparable(value):
    if isinstance(value, dict):
        return {k: str(v) for k, v in value.items()}
    if isinstance(value, (set, list)):
        return sorted(str(v) for v in value)
    return value


def test_on_the_fly_quantization_stays_with_transformers(tmp_path):
    folder = str(tmp_path)
    tiny_models.build("qwen3", folder)
    from transformers.quantizers.quantizer_finegrained_fp8 import FineGrainedFP8HfQuantizer
    reason = _quantized.unhandled_reason(
        FineGrainedFP8HfQuantizer(transformers.FineGrainedFP8Config(), pre_quantized=False), [])
    assert "on-the-fly" in reason


@pytest.mark.parametrize("kind", ["mxfp4", "fp8"])
def test_batches_read_while_the_previous_converts(checkpoints, kind, monkeypatch):
    """With a scratch bound below one converter, every converter is a batch of its own: each is
    read on the reader thread while the one before converts, and the result is still
    transformers'."""
    monkeypatch.setattr(sst, "_CONVERT_SCRATCH_BYTES", 1)
    folder = checkpoints("mxfp4") if kind == "mxfp4" else checkpoints("fp8", "qwen3_moe",
                                                                        torch.bfloat16)
    if kind == "fp8":
        fp8_tp_plan_bug(folder, monkeypatch)
    threads = set()
    read = sst._Session._read_batch

    def spy(self, batch):
        import threading
        threads.add(threading.current_thread().name)
        return read(self, batch)
    monkeypatch.setattr(sst._Session, "_read_batch", spy)
    ref, ref_info, got, info, report = load_both(folder)
    assert info == ref_info
    assert_same_model(ref, got)
    assert_same_logits(ref, got)
    assert any(name.startswith("shardstream-convert-read") for name in threads), threads
    assert report["tensors"]["native_dequantized"] > 0, report["tensors"]


@pytest.mark.parametrize("kind", ["mxfp4", "fp8"])
def test_on_a_gpu(checkpoints, kind, monkeypatch):
    """On a GPU the quantizer's ops run on the device, on the bytes the pipeline uploaded (MXFP4
    dequantized; FP8 kept quantized where transformers keeps it, straight into its
    parameters)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if not shardstream._core.cuda_built():
        pytest.skip("this shardstream build has no CUDA")
    kwargs = {"device_map": "cuda:0"}
    if kind == "mxfp4":
        folder = checkpoints("mxfp4")
        kwargs["quantization_config"] = transformers.Mxfp4Config(dequantize=True)
    else:
        folder = checkpoints("fp8", "qwen3_moe", torch.float32)
        fp8_tp_plan_bug(folder, monkeypatch)
    torch.manual_seed(1)
    ref, ref_info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True,
                                                         **kwargs)
    torch.manual_seed(1)
    got, info = sst.from_pretrained(folder, output_loading_info=True, **kwargs)
    report = info.pop("shardstream")
    assert report["loader"] == "shardstream", report["reason"]
    assert info == ref_info
    assert_same_model(ref, got)
    assert all(t.device.type == "cuda" for t in got.state_dict().values())
    assert report["tensors"]["native_dequantized"] == 0  # the native op is the CPU's
    if kind == "mxfp4":
        ids = torch.tensor(tiny_models.TOKEN_IDS, device="cuda:0")
        with torch.no_grad():
            assert torch.equal(got(ids).logits, ref(ids).logits)


def test_other_quantization_methods_stay_with_transformers():
    quantizer = types.SimpleNamespace(
        pre_quantized=True, quantization_config=types.SimpleNamespace(quant_method="awq"))
    assert _quantized.unhandled_reason(quantizer, []) == (
        "quantization method 'awq' is loaded by transformers' own loader")
