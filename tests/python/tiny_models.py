"""Tiny causal LMs built from configs (random init, no hub access), saved sharded, for comparing
`shardstream.transformers.from_pretrained` with transformers' own `from_pretrained`."""
import torch

COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)

MOE = dict(num_local_experts=4, num_experts_per_tok=2)

# model_type -> (config overrides, dtype the checkpoint is saved in)
ARCHITECTURES = {
    "llama": ({}, torch.bfloat16),
    "mistral": ({"sliding_window": None}, torch.float32),
    "qwen2": ({}, torch.bfloat16),
    "qwen3": ({}, torch.float16),
    "gemma2": ({"query_pre_attn_scalar": 16, "sliding_window": 8}, torch.bfloat16),
    "phi3": ({}, torch.bfloat16),
    "mixtral": (dict(MOE), torch.bfloat16),
    "qwen3_moe": ({"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 48,
                   "decoder_sparse_step": 1, "mlp_only_layers": []}, torch.bfloat16),
    "gpt_oss": ({"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 8,
                 "layer_types": ["sliding_attention", "full_attention"],
                 "rope_parameters": {"rope_type": "default", "rope_theta": 150000.0}},
                torch.bfloat16),
    # MLA attention, shared experts, and an fp32 router bias (e_score_correction_bias) that
    # finalisation must not re-initialise.
    "deepseek_v3": ({"n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                     "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1,
                     "topk_group": 1, "kv_lora_rank": 16, "q_lora_rank": 24,
                     "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "head_dim": 8,
                     "rope_scaling": None}, torch.bfloat16),
    "olmoe": ({"num_experts": 4, "num_experts_per_tok": 2}, torch.bfloat16),
    "tied_qwen2": ({"tie_word_embeddings": True}, torch.bfloat16),
    # A converter that is not a slice write (Chunk: fused gqkv/gate_up split into projections).
    "hrm_text": ({"num_layers_per_stack": 1, "H_cycles": 1, "L_cycles": 1, "L_bp_cycles": [1]},
                 torch.bfloat16),
}

MODEL_TYPE = {"tied_qwen2": "qwen2"}

TOKEN_IDS = [[1, 17, 42, 99, 3, 150, 7, 64, 12, 5]]


def build(name, folder, seed=0, max_shard_size="40KB"):
    """Saves a random tiny `name` model (sharded) into `folder`; returns its config."""
    from transformers import AutoConfig, AutoModelForCausalLM
    overrides, dtype = ARCHITECTURES[name]
    model_type = MODEL_TYPE.get(name, name)
    config = AutoConfig.for_model(model_type, **{**COMMON, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    # Non-zero everywhere so a tensor left uninitialised or zeroed cannot pass as loaded.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
        for module in model.modules():
            if "e_score_correction_bias" in module._buffers:  # fp32 even in a bf16 model
                bias = module._buffers["e_score_correction_bias"]
                module._buffers["e_score_correction_bias"] = torch.randn(bias.shape)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    return config
