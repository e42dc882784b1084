// A reference Llama-style decoder built from a Hugging Face config.json, with the parameter names
// of transformers' LlamaForCausalLM (model.embed_tokens.weight, model.layers.N.self_attn.q_proj
// .weight, ..., lm_head.weight), so that its checkpoints load by name.
//
//   LlamaConfig config = ReadLlamaConfig("model/config.json");  // throws LoadError rule "config"
//   auto model = std::make_shared<LlamaForCausalLM>(config, SkeletonOptions(at::kBFloat16));
//   LoadInto(*model, "model/", LlamaLoadOptions());   // materialise, stream, re-init
//   at::Tensor logits = model->forward(input_ids);           // [batch, tokens, vocab]
//
// Built with meta options (SkeletonOptions) it allocates nothing. With tie_word_embeddings,
// lm_head.weight is the embedding's tensor itself: one storage, loaded once. The rotary
// embedding's inv_freq (model.rotary_emb.inv_freq) is non-persistent and computed after loading,
// as transformers computes it (default, linear, llama3 rope types). The forward pass is eager
// attention with grouped-query heads and a causal mask, for checking loads, not for serving.
#pragma once

#include <torch/nn/module.h>

#include <memory>
#include <optional>
#include <vector>

#include "shardstream/layers.h"
#include "shardstream/llama_config.h"
#include "shardstream/skeleton.h"

namespace shardstream {

class LlamaAttention : public torch::nn::Module {
 public:
  LlamaAttention(const LlamaConfig& config, const torch::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;

  std::shared_ptr<Linear> q_proj, k_proj, v_proj, o_proj;

 private:
  int64_t heads_, kv_heads_, head_dim_;
};

class LlamaMLP : public torch::nn::Module {
 public:
  LlamaMLP(const LlamaConfig& config, const torch::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) const;  // down(silu(gate(x)) · up(x))

  std::shared_ptr<Linear> gate_proj, up_proj, down_proj;
};

class LlamaDecoderLayer : public torch::nn::Module {
 public:
  LlamaDecoderLayer(const LlamaConfig& config, const torch::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;

  std::shared_ptr<RMSNorm> input_layernorm;
  std::shared_ptr<LlamaAttention> self_attn;
  std::shared_ptr<RMSNorm> post_attention_layernorm;
  std::shared_ptr<LlamaMLP> mlp;
};

class LlamaModel : public torch::nn::Module {
 public:
  LlamaModel(const LlamaConfig& config, const torch::TensorOptions& options);
  at::Tensor forward(const at::Tensor& input_ids) const;  // final hidden states

  std::shared_ptr<Embedding> embed_tokens;
  std::vector<std::shared_ptr<LlamaDecoderLayer>> layers;  // registered as layers.0, layers.1, ...
  std::shared_ptr<RMSNorm> norm;
  std::shared_ptr<RotaryEmbedding> rotary_emb;
};

class LlamaForCausalLM : public torch::nn::Module {
 public:
  // `options`: dtype of every parameter, and device (meta for a skeleton).
  LlamaForCausalLM(const LlamaConfig& config, const torch::TensorOptions& options);
  // Logits [batch, tokens, vocab] for token ids [batch, tokens] (int64), in the model's dtype.
  at::Tensor forward(const at::Tensor& input_ids) const;

  const LlamaConfig& config() const { return config_; }

  std::shared_ptr<LlamaModel> model;
  std::shared_ptr<Linear> lm_head;

 private:
  LlamaConfig config_;
};

// LoadInto options for a Llama checkpoint: strict, base_model_prefix "model" (a LlamaModel
// checkpoint loads into LlamaForCausalLM), and old transformers' persistent
// `...rotary_emb.inv_freq` ignored.
ModelLoadOptions LlamaLoadOptions();

// The dtype config.json names (torch_dtype / dtype): bfloat16, float16, float32; nullopt when
// absent or unknown.
std::optional<c10::ScalarType> ConfigDType(const LlamaConfig& config);

}  // namespace shardstream
