"""shardstream.transformers.from_pretrained against transformers' own from_pretrained, on tiny
models built here from configs (random weights, sharded checkpoints, no hub access): every
state_dict tensor and every buffer (non-persistent ones too) byte-equal, the same ties, equal
logits, and the same loading-info key lists for broken checkpoints."""
import json
import os
import sys
import threading
import warnings

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fill_standin  # noqa: E402
import tiny_models  # noqa: E402

shardstream, FILL = fill_standin.import_shardstream()
if shardstream is None:
    if os.environ.get("SHARDSTREAM_REQUIRE_PACKAGE") == "1":  # scripts/test: never skip
        raise ImportError(FILL)
    pytest.skip(FILL, allow_module_level=True)
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import shardstream.transformers as sst  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.modeling_utils import PreTrainedModel  # noqa: E402

ORIGINAL_LOADER = PreTrainedModel.__dict__["_load_pretrained_model"]
MOE = {"mixtral", "qwen3_moe", "deepseek_v3", "olmoe"}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    built = {}

    def get(name):
        if name not in built:
            folder = tmp_path_factory.mktemp(name)
            tiny_models.build(name, str(folder))
            built[name] = str(folder)
        return built[name]
    return get


def checkpoint_elements(folder):
    """Tensor elements in the checkpoint, from the headers (the independent reader's view)."""
    from safetensors import safe_open
    total = 0
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), "pt") as handle:
                for key in handle.keys():
                    count = 1
                    for d in handle.get_slice(key).get_shape():
                        count *= d
                    total += count
    return total


def raw(tensor):
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def assert_same_model(ref, got, skip=()):
    ref_state, got_state = ref.state_dict(), got.state_dict()
    assert list(got_state) == list(ref_state)
    for key, want in ref_state.items():
        if key in skip:
            continue
        have = got_state[key]
        assert (have.dtype, have.shape, have.device) == (want.dtype, want.shape, want.device), key
        assert torch.equal(raw(have), raw(want)), f"{key}: bytes differ"
    ref_buffers, got_buffers = dict(ref.named_buffers()), dict(got.named_buffers())
    assert list(got_buffers) == list(ref_buffers)
    for key, want in ref_buffers.items():
        have = got_buffers[key]
        assert (have.dtype, have.shape) == (want.dtype, want.shape), key
        assert torch.equal(raw(have), raw(want)), f"buffer {key}: bytes differ"
    # The same tensors share storage (tied weights stay tied, untied ones stay apart).
    def sharing(model):
        groups = {}
        for key, value in model.state_dict(keep_vars=True).items():
            groups.setdefault(value.data_ptr(), []).append(key)
        return sorted(sorted(g) for g in groups.values())
    assert sharing(got) == sharing(ref)
    assert got.training is False and ref.training is False


def assert_same_logits(ref, got):
    ids = torch.tensor(tiny_models.TOKEN_IDS, device=next(ref.parameters()).device)
    with torch.no_grad():
        want = ref(ids).logits
        have = got(ids).logits
    assert torch.equal(have, want)


@pytest.mark.parametrize("name", sorted(tiny_models.ARCHITECTURES))
def test_loads_what_transformers_loads(checkpoints, name):
    folder = checkpoints(name)
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        assert len(set(json.load(f)["weight_map"].values())) > 1  # sharded
    ref, ref_info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    got, info = sst.from_pretrained(folder, output_loading_info=True)
    report = info.pop("shardstream")
    assert report["loader"] == "shardstream", report["reason"]
    assert info == ref_info
    assert type(got) is type(ref)
    assert_same_model(ref, got)
    assert_same_logits(ref, got)
    # What landed: every tensor of the model once (ties share), in its loaded dtype; the
    # checkpoint holds the same elements (bytes differ only where a dtype plan casts).
    landed = {t.data_ptr(): t for t in got.state_dict().values()}.values()
    # Read (owned) or populated (views of the mapping): each landed tensor once.
    assert report["bytes"] + report["populated_bytes"] == sum(t.numel() * t.element_size()
                                                              for t in landed)
    assert sum(t.numel() for t in landed) == checkpoint_elements(folder)
    counts = report["tensors"]
    if name in MOE:
        assert counts["sliced"] > 0 and counts["converted"] == 0, counts
    elif name == "hrm_text":
        assert counts["converted"] > 0, counts
    else:
        assert counts["sliced"] == 0 and counts["converted"] == 0, counts
    assert PreTrainedModel.__dict__["_load_pretrained_model"] is ORIGINAL_LOADER


@pytest.mark.parametrize("name", ["llama", "mixtral"])
def test_cpu_tensors_are_mapped_views_unless_copy(checkpoints, name):
    import hashlib
    folder = checkpoints(name)
    shards = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                    if f.endswith(".safetensors"))

    def digests():
        return [hashlib.sha256(open(f, "rb").read()).hexdigest() for f in shards]

    before = digests()
    ref = AutoModelForCausalLM.from_pretrained(folder)
    got, info = sst.from_pretrained(folder, output_loading_info=True, threads=2)
    report = info["shardstream"]
    counts = report["tensors"]
    assert counts["mapped"] > 0, counts
    assert counts["mapped"] <= counts["direct"]
    assert report["populated_bytes"] > 0 and report["populate_seconds"] > 0
    assert any(stage == "populate" for stage, _ in report["stages"])
    assert_same_model(ref, got)
    assert_same_logits(ref, got)
    mapped = {line.split(maxsplit=5)[5].strip() for line in open("/proc/self/maps")
              if len(line.split(maxsplit=5)) == 6}
    assert any(f in mapped for f in shards)
    with torch.no_grad():  # copy on write: the file never changes
        for p in got.parameters():
            p.zero_()
    assert digests() == before
    owned, info = sst.from_pretrained(folder, output_loading_info=True, copy=True)
    assert info["shardstream"]["tensors"]["mapped"] == 0
    assert info["shardstream"]["populated_bytes"] == 0
    assert_same_model(ref, owned)


def test_loaded_fp32_router_bias_survives_finalisation(checkpoints):
    # deepseek_v3 keeps e_score_correction_bias in fp32 in a bf16 model; it is loaded, so
    # transformers' initialisation (zeros) must not touch it.
    folder = checkpoints("deepseek_v3")
    on_disk = {}
    for f in os.listdir(folder):
        if f.endswith(".safetensors"):
            on_disk.update(load_file(os.path.join(folder, f)))
    got = sst.from_pretrained(folder)
    biases = {k: v for k, v in got.state_dict().items() if k.endswith("e_score_correction_bias")}
    assert biases
    for key, value in biases.items():
        assert value.dtype == torch.float32 and on_disk[key].dtype == torch.float32
        assert torch.count_nonzero(on_disk[key]) > 0
        assert torch.equal(value, on_disk[key]), key


@pytest.mark.parametrize("name", sorted(MOE))
def test_transformers_converter_path_gives_the_same_fused_experts(checkpoints, name,
                                                                  monkeypatch):
    # Without the slice-write plan the MoE experts go through scratch and transformers' own
    # MergeModulelist/Concatenate: the other way to the same bytes.
    monkeypatch.setattr(sst, "_slice_plan", lambda mapping, cml: None)
    monkeypatch.setattr(sst, "_CONVERT_SCRATCH_BYTES", 64 << 10)  # several scratch batches
    folder = checkpoints(name)
    ref = AutoModelForCausalLM.from_pretrained(folder)
    got, info = sst.from_pretrained(folder, output_loading_info=True)
    counts = info["shardstream"]["tensors"]
    assert counts["sliced"] == 0 and counts["converted"] > 0, counts
    assert_same_model(ref, got)


def test_dtype_is_cast_as_transformers_casts(checkpoints):
    folder = checkpoints("mixtral")  # bf16 on disk
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    got = sst.from_pretrained(folder, dtype=torch.float32)
    assert next(got.parameters()).dtype == torch.float32
    assert_same_model(ref, got)


def rewrite(folder, out, edit):
    """Copies the checkpoint in `folder` to `out` as one file, after `edit(tensors)`."""
    tensors = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(folder, f)))
    edit(tensors)
    os.makedirs(out, exist_ok=True)
    for f in ("config.json", "generation_config.json"):
        with open(os.path.join(folder, f)) as src, open(os.path.join(out, f), "w") as dst:
            dst.write(src.read())
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    return out


LAYER0_Q = "model.layers.0.self_attn.q_proj.weight"
BROKEN = {
    "missing": lambda t: t.pop(LAYER0_Q),
    "unexpected": lambda t: t.update({"model.layers.0.extra.weight": torch.ones(3, 4)}),
    "mismatched": lambda t: t.update({LAYER0_Q: t[LAYER0_Q][:-8].clone()}),
    "all": lambda t: (t.pop("model.layers.1.mlp.up_proj.weight"),
                      t.update({"model.extra_bias": torch.zeros(5),
                                LAYER0_Q: t[LAYER0_Q][:, :-4].clone()})),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_checkpoint_reports_the_keys_transformers_reports(checkpoints, tmp_path, case):
    folder = rewrite(checkpoints("llama"), str(tmp_path / case), BROKEN[case])
    ref, ref_info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True,
                                                        ignore_mismatched_sizes=True)
    got, info = sst.from_pretrained(folder, strict=False, output_loading_info=True,
                                    ignore_mismatched_sizes=True)
    assert info["shardstream"]["loader"] == "shardstream"
    for field in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert info[field] == ref_info[field], field
    assert any(ref_info[f] for f in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    # Everything transformers loaded is equal; what it (re)initialised randomly is skipped.
    reinit = set(ref_info["missing_keys"]) | {k for k, _, _ in ref_info["mismatched_keys"]}
    assert_same_model(ref, got, skip=reinit)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_strict_fails_before_reading_and_names_the_keys(checkpoints, tmp_path, case,
                                                         monkeypatch):
    folder = rewrite(checkpoints("llama"), str(tmp_path / case), BROKEN[case])
    _, ref_info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True,
                                                      ignore_mismatched_sizes=True)

    def no_read(*args, **kwargs):
        raise AssertionError("strict=True read tensor data before failing")
    monkeypatch.setattr(shardstream, "fill", no_read)
    with pytest.raises(sst.CheckpointMismatchError) as caught:
        sst.from_pretrained(folder, strict=True, ignore_mismatched_sizes=True)
    error = caught.value
    assert isinstance(error, ValueError) and error.rule == "strict"
    assert error.missing_keys == sorted(ref_info["missing_keys"])
    assert error.unexpected_keys == sorted(ref_info["unexpected_keys"])
    assert error.mismatched_keys == sorted((k, tuple(a), tuple(b))
                                           for k, a, b in ref_info["mismatched_keys"])
    for key in error.missing_keys + error.unexpected_keys:
        assert key in str(error)
    assert PreTrainedModel.__dict__["_load_pretrained_model"] is ORIGINAL_LOADER


def test_user_key_mapping_renames_as_transformers_does(checkpoints, tmp_path):
    def rename(tensors):
        for key in [k for k in tensors if k.startswith("model.")]:
            tensors["decoder." + key[len("model."):]] = tensors.pop(key)
    folder = rewrite(checkpoints("qwen3_moe"), str(tmp_path / "renamed"), rename)
    mapping = {r"^decoder\.": "model."}
    ref, ref_info = AutoModelForCausalLM.from_pretrained(folder, key_mapping=mapping,
                                                        output_loading_info=True)
    got, info = sst.from_pretrained(folder, key_mapping=mapping, output_loading_info=True)
    assert info["shardstream"]["loader"] == "shardstream"
    assert not any(ref_info[f] for f in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert info["shardstream"]["tensors"]["sliced"] > 0
    assert_same_model(ref, got)


def test_mismatched_shape_raises_like_transformers_without_ignore(checkpoints, tmp_path):
    folder = rewrite(checkpoints("llama"), str(tmp_path / "m"), BROKEN["mismatched"])
    with pytest.raises(RuntimeError) as want:
        AutoModelForCausalLM.from_pretrained(folder)
    with pytest.raises(RuntimeError) as have:
        sst.from_pretrained(folder, strict=False)
    assert LAYER0_Q in str(want.value) or "ignore_mismatched_sizes" in str(want.value)
    assert type(have.value) is type(want.value)


def test_other_threads_keep_transformers_loader(checkpoints, monkeypatch):
    folder = checkpoints("qwen2")
    real_fill = shardstream.fill
    seen = {"fills_off_main": 0}
    other = {}

    def fill(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            seen["fills_off_main"] += 1
        elif not other:
            # While this thread is inside shardstream's loader, another thread loads with
            # plain transformers: it must get transformers' own loader.
            def load():
                other["model"] = AutoModelForCausalLM.from_pretrained(folder)
            thread = threading.Thread(target=load)
            thread.start()
            thread.join()
        return real_fill(*args, **kwargs)
    monkeypatch.setattr(shardstream, "fill", fill)
    got = sst.from_pretrained(folder, copy=True)  # owned tensors: the load goes through fill
    assert seen["fills_off_main"] == 0
    assert_same_model(other["model"], got)
    assert PreTrainedModel.__dict__["_load_pretrained_model"] is ORIGINAL_LOADER


@pytest.fixture
def fresh_gate(monkeypatch):
    """The gate's cached verdicts and warned-about versions, empty for one test."""
    monkeypatch.setattr(sst, "_verdicts", {})
    monkeypatch.setattr(sst, "_untested_warned", set())


def set_transformers_version(monkeypatch, version):
    # transformers re-executes its __init__ into a new module object when processing_utils is
    # first imported (direct_transformers_import), so the one imported above may be stale: patch
    # what `import transformers` gives now, as shardstream.transformers reads it.
    import transformers as current
    monkeypatch.setattr(current, "__version__", version)


def range_tested():
    (low_major, low_minor), (high_major, high_minor) = sst.TESTED_TRANSFORMERS
    return f"{low_major}.{low_minor} to {high_major}.{high_minor}"


def test_unsupported_transformers_falls_back_with_a_warning(checkpoints, monkeypatch, fresh_gate):
    # Older than the oldest tested release: transformers' own loader.
    folder = checkpoints("llama")
    low_major, low_minor = sst.TESTED_TRANSFORMERS[0]
    set_transformers_version(monkeypatch, f"{low_major}.{low_minor - 1}.0")
    with pytest.warns(UserWarning, match="outside the range"):
        got, info = sst.from_pretrained(folder, output_loading_info=True)
    assert info["shardstream"]["loader"] == "transformers"
    assert_same_model(AutoModelForCausalLM.from_pretrained(folder), got)


def test_tested_range_covers_this_transformers():
    assert sst._unsupported_reason() is None, sst._unsupported_reason()


def test_newer_untested_transformers_with_the_same_internals_loads_and_warns_once(
        checkpoints, monkeypatch, fresh_gate):
    folder = checkpoints("mixtral")  # renames and fused experts: most internals in use
    ref, ref_info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    set_transformers_version(monkeypatch, "5.99.0")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got, info = sst.from_pretrained(folder, output_loading_info=True)
        again, again_info = sst.from_pretrained(folder, output_loading_info=True)
    ours = [str(w.message) for w in record if "shardstream" in str(w.message)]
    assert len(ours) == 1, ours
    assert "transformers 5.99.0 is newer" in ours[0] and range_tested() in ours[0], ours[0]
    for model, model_info in ((got, info), (again, again_info)):
        report = model_info.pop("shardstream")
        assert report["loader"] == "shardstream", report["reason"]
        assert report["tensors"]["sliced"] > 0, report["tensors"]
        assert model_info == ref_info
        assert_same_model(ref, model)
    assert PreTrainedModel.__dict__["_load_pretrained_model"] is ORIGINAL_LOADER


def renamed_set_param_for_module(monkeypatch):
    # transformers itself passes these arguments by position, so its own loader still works;
    # shardstream's check goes by the names.
    from transformers import core_model_loading
    original = core_model_loading.set_param_for_module

    def set_param_for_module(model, target_name, param_value, info, hf_quantizer):
        return original(model, target_name, param_value, info, hf_quantizer)
    monkeypatch.setattr(core_model_loading, "set_param_for_module", set_param_for_module)
    return "core_model_loading.set_param_for_module lacks parameter 'loading_info'"


def removed_get_device(monkeypatch):
    # transformers' loader holds its own reference (imported by name); shardstream looks it up.
    from transformers.integrations import accelerate
    monkeypatch.delattr(accelerate, "get_device")
    return "integrations.accelerate.get_device is missing"


@pytest.mark.parametrize("change", [renamed_set_param_for_module, removed_get_device])
def test_changed_internal_falls_back_naming_it(checkpoints, monkeypatch, fresh_gate, change):
    folder = checkpoints("mixtral")
    ref, ref_info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    internal = change(monkeypatch)

    def no_read(*args, **kwargs):
        raise AssertionError("shardstream's loader ran although an internal changed")
    monkeypatch.setattr(shardstream, "fill", no_read)
    with pytest.warns(UserWarning) as record:
        got, info = sst.from_pretrained(folder, output_loading_info=True)
    ours = [str(w.message) for w in record if "shardstream" in str(w.message)]
    want = f"transformers {transformers.__version__}: "
    assert any(want in m and internal in m and "own loader" in m for m in ours), ours
    report = info.pop("shardstream")
    assert report["loader"] == "transformers"
    assert report["reason"].startswith(want) and internal in report["reason"], report["reason"]
    assert info == ref_info
    assert_same_model(ref, got)
    assert PreTrainedModel.__dict__["_load_pretrained_model"] is ORIGINAL_LOADER


def test_the_verdict_is_checked_once_per_transformers(monkeypatch, fresh_gate):
    calls = []
    real = sst._internal_problems
    monkeypatch.setattr(sst, "_internal_problems", lambda t: calls.append(t) or real(t))
    assert sst._unsupported_reason() is None
    assert sst._unsupported_reason() is None
    assert len(calls) == 1
    set_transformers_version(monkeypatch, "5.99.0")  # another version: checked again
    assert sst._unsupported_reason() is None
    assert len(calls) == 2


def test_a_model_without_tied_weight_keys_is_left_to_transformers():
    class Model:
        pass
    reason = sst._model_reason(Model())
    assert reason.startswith(f"transformers {transformers.__version__}: ")
    assert "all_tied_weights_keys" in reason


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        sst.from_pretrained(str(tmp_path))


def test_several_devices_need_accelerate(checkpoints):
    import importlib.util
    if importlib.util.find_spec("accelerate") is not None:
        pytest.skip("accelerate is installed: device_map dispatch goes through it")
    with pytest.raises(ValueError, match="accelerate"):
        sst.from_pretrained(checkpoints("llama"), device_map={"model": "cpu", "lm_head": 0})


def test_device_arguments():
    assert sst._device_map("cpu", None) is None
    assert sst._device_map(None, None) is None
    assert sst._device_map("cuda:1", None) == "cuda:1"
    assert sst._device_map(0, None) == "cuda:0"
    assert sst._device_map("cpu", "cuda:0") == "cuda:0"
    assert sst._device_map("cpu", {"": "cpu"}) == {"": "cpu"}
    with pytest.raises(ValueError, match="either device= or device_map="):
        sst._device_map("cuda:0", {"": "cuda:0"})
    with pytest.raises(ValueError, match="not a torch device"):
        sst._device_map("gpu0", None)


@pytest.mark.parametrize("name", ["llama", "mixtral"])
def test_cuda_matches_transformers_device_map(checkpoints, name):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    folder = checkpoints(name)
    ref = AutoModelForCausalLM.from_pretrained(folder, device_map="cuda:0")
    got = sst.from_pretrained(folder, device="cuda:0")
    assert next(got.parameters()).device == torch.device("cuda", 0)
    assert_same_model(ref, got)
    assert_same_logits(ref, got)
