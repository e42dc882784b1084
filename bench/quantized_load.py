"""gpt-oss-shaped MXFP4 checkpoint: shardstream.transformers.from_pretrained against transformers'
own from_pretrained, time until the model is resident.

Generates (once per folder and shape) a checkpoint with gpt-oss-20b's real tensor shapes and
dtypes (BF16 attention, router, norms and embeddings; experts as MXFP4 `*_blocks` U8 and
`*_scales` U8 E8M0, 32 experts), random values, with as many layers as asked: few on a CPU
machine, all 24 (about 13 GB) on a GPU. Then times both loaders, each run a fresh process,
interleaved (tests/python/time_from_pretrained.py: medians, min and max, the speedup; one byte of
every page of every tensor read inside the clock so that a file-mapped tensor counts as read).

    python bench/quantized_load.py FOLDER [--layers 2] [--vocab 201088] [--runs 5]
                                   [--device cpu|cuda:0] [--experts 32] [--generate-only]

`--vocab` shrinks the embedding and the LM head (2 x 1.1 GB at the real 201088) and `--experts`
the experts per layer (32 real) for a smoke run; every other shape stays gpt-oss-20b's.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# gpt-oss-20b (config.json of openai/gpt-oss-20b).
GPT_OSS_20B = dict(
    architectures=["GptOssForCausalLM"], model_type="gpt_oss", hidden_size=2880,
    intermediate_size=2880, num_local_experts=32, experts_per_token=4, num_experts_per_tok=4,
    num_attention_heads=64, num_key_value_heads=8, head_dim=64, vocab_size=201088,
    max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=150000, sliding_window=128,
    swiglu_limit=7.0, attention_bias=True, attention_dropout=0.0, tie_word_embeddings=False,
    initial_context_length=4096, router_aux_loss_coef=0.9, output_router_logits=False,
    use_cache=True, hidden_act="silu", pad_token_id=199999, eos_token_id=200002,
    rope_scaling={"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                  "original_max_position_embeddings": 4096, "rope_type": "yarn",
                  "truncate": False},
    quantization_config={"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
        "lm_head"]},
    torch_dtype="bfloat16")

SHARD_BYTES = 4 << 30


def layer_tensors(i, config, torch, generator):
    h, heads, kv, d = (config["hidden_size"], config["num_attention_heads"],
                       config["num_key_value_heads"], config["head_dim"])
    experts, inter = config["num_local_experts"], config["intermediate_size"]
    p = f"model.layers.{i}."

    def bf16(*shape):
        return (torch.randn(*shape, generator=generator) * 0.02).to(torch.bfloat16)

    def mxfp4(rows, values):
        blocks = torch.randint(0, 256, (experts, rows, values // 32, 16), dtype=torch.uint8,
                               generator=generator)
        scales = torch.randint(118, 130, (experts, rows, values // 32), dtype=torch.uint8,
                               generator=generator)
        return blocks, scales

    out = {
        p + "input_layernorm.weight": bf16(h), p + "post_attention_layernorm.weight": bf16(h),
        p + "self_attn.q_proj.weight": bf16(heads * d, h), p + "self_attn.q_proj.bias": bf16(heads * d),
        p + "self_attn.k_proj.weight": bf16(kv * d, h), p + "self_attn.k_proj.bias": bf16(kv * d),
        p + "self_attn.v_proj.weight": bf16(kv * d, h), p + "self_attn.v_proj.bias": bf16(kv * d),
        p + "self_attn.o_proj.weight": bf16(h, heads * d), p + "self_attn.o_proj.bias": bf16(h),
        p + "self_attn.sinks": bf16(heads),
        p + "mlp.router.weight": bf16(experts, h), p + "mlp.router.bias": bf16(experts),
        p + "mlp.experts.gate_up_proj_bias": bf16(experts, 2 * inter),
        p + "mlp.experts.down_proj_bias": bf16(experts, h),
    }
    # Dequantized, gate_up_proj is [experts, hidden, 2 * inter] and down_proj [experts, inter,
    # hidden]: blocks hold one row per output column.
    out[p + "mlp.experts.gate_up_proj_blocks"], out[p + "mlp.experts.gate_up_proj_scales"] = \
        mxfp4(2 * inter, h)
    out[p + "mlp.experts.down_proj_blocks"], out[p + "mlp.experts.down_proj_scales"] = \
        mxfp4(h, inter)
    return out


def generate(folder, layers, vocab, experts):
    """Writes config.json, the shards and the index; skips when the same shape is there."""
    import torch
    from safetensors.torch import save_file
    config = dict(GPT_OSS_20B, num_hidden_layers=layers, vocab_size=vocab,
                  num_local_experts=experts, experts_per_token=min(4, experts),
                  num_experts_per_tok=min(4, experts),
                  pad_token_id=min(GPT_OSS_20B["pad_token_id"], vocab - 1),
                  eos_token_id=min(GPT_OSS_20B["eos_token_id"], vocab - 1),
                  layer_types=["sliding_attention" if i % 2 == 0 else "full_attention"
                               for i in range(layers)])
    stamp = os.path.join(folder, ".generated")
    want = json.dumps({"layers": layers, "vocab": vocab, "experts": experts})
    if os.path.isfile(stamp) and open(stamp).read() == want:
        return
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith((".safetensors", ".json")):
            os.remove(os.path.join(folder, name))
    generator = torch.Generator().manual_seed(0)
    h = config["hidden_size"]
    parts = [{"model.embed_tokens.weight": (torch.randn(vocab, h, generator=generator) * 0.02)
              .to(torch.bfloat16)}]
    parts += [layer_tensors(i, config, torch, generator) for i in range(layers)]
    parts.append({"model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
                  "lm_head.weight": (torch.randn(vocab, h, generator=generator) * 0.02)
                  .to(torch.bfloat16)})
    shards, current, size = [], {}, 0
    for part in parts:
        for key, tensor in part.items():
            nbytes = tensor.numel() * tensor.element_size()
            if current and size + nbytes > SHARD_BYTES:
                shards.append(current)
                current, size = {}, 0
            current[key] = tensor
            size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i:05d}-of-{len(shards) - 1:05d}.safetensors"
        save_file(shard, os.path.join(folder, name), metadata={"format": "pt"})
        for key, tensor in shard.items():
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(stamp, "w") as f:
        f.write(want)
    print(json.dumps({"generated": folder, "layers": layers, "vocab": vocab, "experts": experts,
                      "bytes": total, "shards": len(shards)}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=GPT_OSS_20B["vocab_size"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--experts", type=int, default=GPT_OSS_20B["num_local_experts"])
    parser.add_argument("--generate-only", action="store_true")
    args = parser.parse_args()
    generate(args.folder, args.layers, args.vocab, args.experts)
    if args.generate_only:
        return
    command = [sys.executable, os.path.join(ROOT, "tests", "python", "time_from_pretrained.py"),
               args.folder, "--runs", str(args.runs), "--device", args.device, "--warm",
               "--touch"]
    sys.exit(subprocess.run(command).returncode)


if __name__ == "__main__":
    main()
