"""`shardstream load CKPT --model llama` against independent references.

Run:  ~/.cache/shardstream/venv-torch-2.11/bin/python -m pytest -q tests/py/test_load_model.py

Contract under test: the skeleton path loads every parameter byte for byte as the reference
reader (safetensors) holds it, casts as torch casts (`--dtype`), prints digests in the plain
load's line format, reports missing/unexpected/mismatched/reinitialized keys in --json and fails
strict loads naming them (rule "keys"), ignores a legacy `rotary_emb.inv_freq`, and computes the
same logits as transformers' LlamaForCausalLM built from the same config.json and checkpoint
(rope default/linear/llama3, tied and untied embeddings). `generate` writes a config.json that
transformers loads with no missing, unexpected or mismatched key.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import CLI_TIMEOUT_S, in_ci

TOKENS = [1, 17, 42, 255, 0, 9, 100]


def run(shardstream_bin, *args) -> subprocess.CompletedProcess:
    argv = [str(shardstream_bin), *map(str, args)]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"timed out after {CLI_TIMEOUT_S} s: {' '.join(argv)}")


def run_ok(shardstream_bin, *args) -> subprocess.CompletedProcess:
    res = run(shardstream_bin, *args)
    assert res.returncode == 0, f"{args}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def digests(stdout: str) -> dict:
    out = {}
    for line in stdout.splitlines():
        name, dtype, shape, sha = line.split("\t")
        out[name] = (dtype, shape, sha)
    return out


def sha(tensor) -> str:
    import torch

    return hashlib.sha256(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                          ).hexdigest()


def reference_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


@pytest.fixture(scope="module")
def tiny(shardstream_bin, reference, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "ckpt"
    run_ok(shardstream_bin, "generate", out, "--preset", "tiny", "--dtype", "f32", "--shards",
           "2", "--seed", "7")
    return out


def copy_with(src: Path, dst: Path, tensors: dict, config_edit=None) -> Path:
    """A single-file checkpoint of `tensors` with src's config.json (edited by config_edit)."""
    from safetensors.torch import save_file

    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    if config_edit:
        config_edit(config)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def test_model_digest_equals_plain_load_and_reference(shardstream_bin, tiny):
    model = digests(run_ok(shardstream_bin, "load", tiny, "--model", "llama", "--digest").stdout)
    plain = digests(run_ok(shardstream_bin, "load", tiny, "--digest").stdout)
    assert model == plain
    ref = reference_tensors(tiny)
    assert set(model) == set(ref)
    for name, tensor in ref.items():
        assert model[name] == ("F32", "[" + ",".join(map(str, tensor.shape)) + "]", sha(tensor))


def test_device_map_rules_are_parsed_and_devices_checked(shardstream_bin, tiny):
    plain = digests(run_ok(shardstream_bin, "load", tiny, "--model", "llama", "--digest").stdout)
    mapped = digests(run_ok(shardstream_bin, "load", tiny, "--model", "llama", "--digest",
                            "--device-map", "model.layers.0=cpu,lm_head=cpu").stdout)
    assert mapped == plain
    for bad in ("model.layers.0", "=cpu", "lm_head=", "a=cpu,a=cpu", ".x=cpu", "a=tpu:0"):
        res = run(shardstream_bin, "load", tiny, "--model", "llama", "--device-map", bad)
        assert res.returncode == 2, (bad, res.stderr)
        assert "--device-map" in res.stderr, (bad, res.stderr)
    res = run(shardstream_bin, "load", tiny, "--model", "llama", "--device-map", "lm_head=cpu",
              "--forward", "1,2")
    assert res.returncode == 2 and "--forward" in res.stderr
    # A GPU in the map where there is none (CI): a clear device error, not a crash.
    res = run(shardstream_bin, "load", tiny, "--model", "llama", "--device-map", "lm_head=cuda:0")
    if res.returncode != 0:
        assert res.returncode == 1 and "rule: device" in res.stderr, res.stderr


@pytest.mark.parametrize("flag,torch_dtype,label", [("bf16", "bfloat16", "BF16"),
                                                    ("f16", "float16", "F16")])
def test_dtype_flag_casts_as_torch_does(shardstream_bin, tiny, flag, torch_dtype, label):
    import torch

    res = run_ok(shardstream_bin, "load", tiny, "--model", "llama", "--dtype", flag, "--digest")
    model = digests(res.stdout)
    for name, tensor in reference_tensors(tiny).items():
        assert model[name][0] == label
        assert model[name][2] == sha(tensor.to(getattr(torch, torch_dtype))), name


def test_json_reports_split_and_key_arrays(shardstream_bin, tiny):
    doc = json.loads(run_ok(shardstream_bin, "load", tiny, "--model", "llama", "--json").stdout)
    assert doc["model"] == "llama" and doc["strict"] is True and doc["dtype"] == "F32"
    assert set(doc["split"]) == {"skeleton", "materialize", "stream", "reinit"}
    assert doc["missing"] == [] and doc["unexpected"] == [] and doc["mismatched"] == []
    assert doc["reinitialized"] == ["model.rotary_emb.inv_freq"]
    assert doc["tensors"] == 21 and doc["files"] == 2
    assert doc["bytes"] == sum(t.numel() * 4 for t in reference_tensors(tiny).values())


def test_strict_fails_naming_keys_and_no_strict_reports_them(shardstream_bin, tiny, tmp_path):
    import torch

    tensors = reference_tensors(tiny)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.1.mlp.extra"] = torch.zeros(3)
    tensors["model.norm.weight"] = torch.ones(65)
    bad = copy_with(tiny, tmp_path / "bad", tensors)
    res = run(shardstream_bin, "load", bad, "--model", "llama")
    assert res.returncode == 1 and res.stdout == ""
    line = res.stderr.strip()
    assert re.match(r"^error: .*\(rule: keys\)$", line), line
    assert "1 missing (model.layers.1.mlp.up_proj.weight)" in line
    assert "1 unexpected (model.layers.1.mlp.extra)" in line
    assert "model.norm.weight: checkpoint [65], model [64]" in line

    doc = json.loads(run_ok(shardstream_bin, "load", bad, "--model", "llama", "--no-strict",
                            "--json").stdout)
    assert doc["missing"] == ["model.layers.1.mlp.up_proj.weight"]
    assert doc["unexpected"] == ["model.layers.1.mlp.extra"]
    assert doc["mismatched"] == ["model.norm.weight"]
    assert doc["strict"] is False


def test_legacy_inv_freq_is_ignored(shardstream_bin, tiny, tmp_path):
    import torch

    tensors = reference_tensors(tiny)
    for i in range(2):
        tensors[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.full((8,), 3.0)
    legacy = copy_with(tiny, tmp_path / "legacy", tensors)
    doc = json.loads(run_ok(shardstream_bin, "load", legacy, "--model", "llama", "--json").stdout)
    assert doc["unexpected"] == []
    assert sorted(doc["ignored"]) == [f"model.layers.{i}.self_attn.rotary_emb.inv_freq"
                                      for i in range(2)]


def test_config_flag_and_config_errors(shardstream_bin, tiny, tmp_path):
    single = tmp_path / "model.safetensors"
    copy_with(tiny, tmp_path / "c", reference_tensors(tiny))
    shutil.copy(tmp_path / "c" / "model.safetensors", single)
    res = run(shardstream_bin, "load", single, "--model", "llama")  # no config.json beside it
    assert res.returncode == 1 and "(rule: config)" in res.stderr, res.stderr
    run_ok(shardstream_bin, "load", single, "--model", "llama", "--config",
           tiny / "config.json")
    assert run(shardstream_bin, "load", tiny, "--model", "gpt2").returncode == 2
    assert run(shardstream_bin, "load", tiny, "--no-strict").returncode == 2
    assert run(shardstream_bin, "load", tiny, "--model", "llama", "--zero-copy").returncode == 2


# ----------------------------------------------------------------------------------------------
# Against transformers


@pytest.fixture(scope="module")
def transformers_pkg():
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        if in_ci():
            pytest.fail(f"CI=true and transformers is unavailable ({exc})")
        pytest.skip(f"transformers unavailable ({exc})")
    return transformers


def set_rope(kind):
    def edit(config):
        if kind == "linear":
            config["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}
        elif kind == "llama3":
            # Small original context so that head_dim 16's wavelengths fall in all three regimes.
            config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 256}
    return edit


@pytest.mark.parametrize("rope", ["default", "linear", "llama3"])
@pytest.mark.parametrize("tie", [False, True])
def test_logits_and_parameters_match_transformers(shardstream_bin, tiny, tmp_path,
                                                  transformers_pkg, rope, tie):
    import torch
    from transformers import LlamaForCausalLM

    tensors = reference_tensors(tiny)
    if tie:
        del tensors["lm_head.weight"]

    def edit(config):
        set_rope(rope)(config)
        config["tie_word_embeddings"] = tie

    ckpt = copy_with(tiny, tmp_path / "ckpt", tensors, edit)
    hf, info = LlamaForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32,
                                                attn_implementation="eager",
                                                output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    with torch.no_grad():
        want = hf(torch.tensor([TOKENS])).logits[0]

    res = run_ok(shardstream_bin, "load", ckpt, "--model", "llama", "--json", "--digest",
                 "--forward", ",".join(map(str, TOKENS)))
    doc = json.loads(res.stdout)
    got = torch.tensor(doc["logits"], dtype=torch.float32)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert doc["next_tokens"] == want.argmax(-1).tolist()
    assert doc["tied"] == (["lm_head.weight"] if tie else [])

    # Every parameter and persistent buffer transformers holds, byte for byte.
    ours = {d["name"]: d["sha256"] for d in doc["digest"]}
    theirs = {name: sha(t) for name, t in hf.state_dict().items()}
    assert ours == theirs


def test_generated_config_describes_the_generated_tensors(shardstream_bin, tmp_path,
                                                          transformers_pkg):
    """generate's config.json: transformers builds from it, on meta, exactly the tensors the
    checkpoint holds (names and shapes)."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    out = tmp_path / "g"
    run_ok(shardstream_bin, "generate", out, "--preset", "tiny")
    config = AutoConfig.from_pretrained(str(out))
    assert config.model_type == "llama" and config.architectures == ["LlamaForCausalLM"]
    with torch.device("meta"):
        hf = LlamaForCausalLM(config)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        shapes = {name: list(f.get_slice(name).get_shape()) for name in f.keys()}
    assert shapes == {name: list(t.shape) for name, t in hf.state_dict().items()}
