"""`shardstream generate` against the reference reader.

Run:  ~/.cache/shardstream/venv-torch-2.11/bin/python -m pytest tests/py/test_generate.py -q

Contract under test (shardstream generate OUT_DIR [--preset] [--shards] [--dtype] [--seed]
[--force]): the files are valid for the reference `safetensors` package, the index maps every
tensor to the shard that holds it, config.json describes the same Llama shape, and contents
depend only on (seed, preset, dtype): same seed → same bytes, another seed → other bytes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

GENERATE_TIMEOUT_S = 60

# The tiny preset: hidden 64, intermediate 176, 2 layers, vocab 256, 4 heads, 2 kv heads.
TINY = {"hidden": 64, "inter": 176, "layers": 2, "vocab": 256, "heads": 4, "kv_heads": 2}
TORCH_DTYPES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}
HEADER_DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}


def expected_tiny_shapes() -> dict:
    """name → shape, in state_dict order, as generate must write them."""
    h, inter = TINY["hidden"], TINY["inter"]
    kv = TINY["kv_heads"] * (h // TINY["heads"])
    shapes = {"model.embed_tokens.weight": [TINY["vocab"], h]}
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": [h],
            p + "self_attn.q_proj.weight": [h, h],
            p + "self_attn.k_proj.weight": [kv, h],
            p + "self_attn.v_proj.weight": [kv, h],
            p + "self_attn.o_proj.weight": [h, h],
            p + "mlp.gate_proj.weight": [inter, h],
            p + "mlp.up_proj.weight": [inter, h],
            p + "mlp.down_proj.weight": [h, inter],
            p + "post_attention_layernorm.weight": [h],
        })
    shapes["model.norm.weight"] = [h]
    shapes["lm_head.weight"] = [TINY["vocab"], h]
    return shapes


def generate(shardstream_bin, out: Path, *flags) -> subprocess.CompletedProcess:
    argv = [str(shardstream_bin), "generate", str(out), *map(str, flags)]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=GENERATE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"timed out after {GENERATE_TIMEOUT_S} s: {' '.join(argv)}")


def generate_ok(shardstream_bin, out: Path, *flags) -> None:
    res = generate(shardstream_bin, out, *flags)
    assert res.returncode == 0, f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"


def checkpoint_files(out: Path) -> dict:
    """file name → bytes, for every file generate wrote."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def load_all(out: Path) -> dict:
    """name → tensor over every .safetensors file in `out`, via the reference reader."""
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(out.glob("*.safetensors")):
        for name, tensor in load_file(str(shard)).items():
            assert name not in tensors, f"{name} is in two shards"
            tensors[name] = tensor
    return tensors


def test_tiny_three_shards_match_index_config_and_reference(shardstream_bin, reference, cli,
                                                            tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = tmp_path / "tiny"
    generate_ok(shardstream_bin, out, "--preset", "tiny", "--shards", 3, "--seed", 11)

    shard_names = [f"model-{k:05d}-of-00003.safetensors" for k in (1, 2, 3)]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        shard_names + ["model.safetensors.index.json", "config.json"])

    index = json.loads((out / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]
    expected = expected_tiny_shapes()
    assert list(weight_map) == list(expected), "index must list every tensor, in file order"

    total = 0
    seen_order = []
    for shard in shard_names:
        tensors = load_file(str(out / shard))
        assert tensors, f"{shard} holds no tensors"
        with safe_open(str(out / shard), "pt") as f:
            assert f.metadata() == {"format": "pt", "generator": "shardstream generate",
                                    "seed": "11"}
        for name, tensor in tensors.items():
            assert weight_map[name] == shard, f"{name}: index says {weight_map[name]}"
            assert list(tensor.shape) == expected[name], name
            assert tensor.dtype == torch.bfloat16, name
            values = tensor.float()
            assert torch.isfinite(values).all(), f"{name} has non-finite values"
            assert values.abs().max() < 2, f"{name}: the top exponent bit must be clear"
            assert values.abs().max() > 0, f"{name} is all zeros"
            total += tensor.numel() * tensor.element_size()
        seen_order += [n for n in weight_map if weight_map[n] == shard]
    assert seen_order == list(expected), "shards must split the tensor list in order"
    assert index["metadata"]["total_size"] == total

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["model_type"] == "llama"
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"],
            config["vocab_size"], config["num_attention_heads"], config["num_key_value_heads"]) == (
                TINY["hidden"], TINY["inter"], TINY["layers"], TINY["vocab"], TINY["heads"],
                TINY["kv_heads"])
    assert config["tie_word_embeddings"] is False
    assert config["torch_dtype"] == "bfloat16"
    assert config["hidden_act"] == "silu"
    assert config["rms_norm_eps"] == pytest.approx(1e-5)
    assert config["rope_theta"] == 500000.0
    assert config["max_position_embeddings"] == 4096

    res = cli("inspect", out, "--json")
    assert res.returncode == 0, res.describe()
    doc = res.json()
    assert doc["verdict"] == "valid", res.describe()
    assert doc["tensors"] == len(expected)
    assert doc["data_bytes"] == total
    assert len(doc["files"]) == 3


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_every_dtype_is_finite_and_declared_in_config(shardstream_bin, reference, tmp_path,
                                                      dtype):
    import torch

    out = tmp_path / dtype
    generate_ok(shardstream_bin, out, "--preset", "tiny", "--dtype", dtype)
    assert (out / "model.safetensors").is_file()
    assert not (out / "model.safetensors.index.json").exists()
    tensors = load_all(out)
    assert set(tensors) == set(expected_tiny_shapes())
    for name, tensor in tensors.items():
        assert str(tensor.dtype) == f"torch.{TORCH_DTYPES[dtype]}", name
        values = tensor.float()
        assert torch.isfinite(values).all() and values.abs().max() < 2, name
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == TORCH_DTYPES[dtype]


def test_same_seed_gives_same_bytes_and_another_seed_differs(shardstream_bin, reference,
                                                             tmp_path):
    import torch

    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate_ok(shardstream_bin, tmp_path / name, "--preset", "tiny", "--shards", 3,
                    "--seed", seed)
    a, b, c = (checkpoint_files(tmp_path / n) for n in "abc")
    assert a == b, "two runs with the same seed must write identical files"
    assert a.keys() == c.keys()
    tensors_a, tensors_c = load_all(tmp_path / "a"), load_all(tmp_path / "c")
    for name in tensors_a:
        assert not torch.equal(tensors_a[name], tensors_c[name]), f"{name} ignores the seed"

    # Contents depend on the seed and the name, not on where the shard boundaries fall.
    generate_ok(shardstream_bin, tmp_path / "single", "--preset", "tiny", "--seed", 5)
    tensors_single = load_all(tmp_path / "single")
    assert tensors_single.keys() == tensors_a.keys()
    for name in tensors_a:
        assert torch.equal(tensors_single[name], tensors_a[name]), name


def test_non_empty_output_dir_needs_force(shardstream_bin, reference, cli, tmp_path):
    out = tmp_path / "ckpt"
    generate_ok(shardstream_bin, out, "--preset", "tiny", "--shards", 3)
    res = generate(shardstream_bin, out, "--preset", "tiny")
    assert res.returncode == 1, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--force" in lines[0], lines

    # --force replaces the earlier checkpoint, stale shards included, and leaves other files.
    (out / "notes.txt").write_text("keep me")
    generate_ok(shardstream_bin, out, "--preset", "tiny", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors",
                                                      "notes.txt"]
    res = cli("inspect", out, "--json")
    assert res.returncode == 0 and res.json()["verdict"] == "valid", res.describe()


@pytest.mark.parametrize("flags", [
    ["--preset", "nope"],
    ["--dtype", "f8"],
    ["--shards", "0"],
    ["--shards", "22"],  # tiny has 21 tensors
    ["--preset", "tiny", "--size-gb", "1"],
    ["--size-gb", "-1"],
    ["--size-gb", "nan"],
])
def test_bad_arguments_are_usage_errors(shardstream_bin, tmp_path, flags):
    if "--preset" not in flags:
        flags = ["--preset", "tiny", *flags]
    out = tmp_path / "never"
    res = generate(shardstream_bin, out, *flags)
    assert res.returncode == 2, f"{flags}: exit {res.returncode}, stderr {res.stderr!r}"
    assert res.stderr.startswith("error: ")
    assert not out.exists(), "a usage error must not create OUT_DIR"
