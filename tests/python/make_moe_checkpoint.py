"""Writes a qwen3_moe-shaped checkpoint of about SIZE_GB (default 1) with transformers'
save_pretrained (per-expert tensors on disk, as transformers saves MoE models), for timing
shardstream.transformers.from_pretrained against transformers' from_pretrained:

    python tests/python/make_moe_checkpoint.py OUT_DIR [SIZE_GB]
"""
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main(out, size_gb=1.0):
    shape = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                 moe_intermediate_size=384, num_experts=16, num_experts_per_tok=4,
                 num_attention_heads=16, num_key_value_heads=4, head_dim=64,
                 decoder_sparse_step=1, mlp_only_layers=[], tie_word_embeddings=False,
                 max_position_embeddings=4096)
    probe = AutoConfig.for_model("qwen3_moe", num_hidden_layers=1, **shape)
    with torch.device("meta"):
        one = sum(p.numel() for p in AutoModelForCausalLM.from_config(probe).parameters())
        layer = one - 2 * 32000 * 1024
    layers = max(1, round((size_gb * 1e9 / 2 - 2 * 32000 * 1024) / layer))
    config = AutoConfig.for_model("qwen3_moe", num_hidden_layers=layers, **shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=generator)
    model.save_pretrained(out, max_shard_size="400MB")
    print(f"{out}: qwen3_moe, {layers} layers, "
          f"{sum(p.numel() for p in model.parameters()) * 2 / 1e9:.2f} GB")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 1.0)
