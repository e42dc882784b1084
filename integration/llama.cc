#include "shardstream/llama.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <string>

namespace shardstream {
namespace {

// [x1, x2] → [-x2, x1] over the last dimension, as transformers' rotate_half.
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

}  // namespace

LlamaAttention::LlamaAttention(const LlamaConfig& c, const torch::TensorOptions& options)
    : heads_(c.num_attention_heads), kv_heads_(c.num_key_value_heads), head_dim_(c.head_dim) {
  const int64_t q_dim = heads_ * head_dim_;
  const int64_t kv_dim = kv_heads_ * head_dim_;
  q_proj = register_module(
      "q_proj", std::make_shared<Linear>(c.hidden_size, q_dim, c.attention_bias, options));
  k_proj = register_module(
      "k_proj", std::make_shared<Linear>(c.hidden_size, kv_dim, c.attention_bias, options));
  v_proj = register_module(
      "v_proj", std::make_shared<Linear>(c.hidden_size, kv_dim, c.attention_bias, options));
  o_proj = register_module(
      "o_proj", std::make_shared<Linear>(q_dim, c.hidden_size, c.attention_bias, options));
}

at::Tensor LlamaAttention::forward(const at::Tensor& x, const at::Tensor& cos,
                                   const at::Tensor& sin) const {
  const int64_t batch = x.size(0);
  const int64_t tokens = x.size(1);
  at::Tensor q = q_proj->forward(x).view({batch, tokens, heads_, head_dim_}).transpose(1, 2);
  at::Tensor k = k_proj->forward(x).view({batch, tokens, kv_heads_, head_dim_}).transpose(1, 2);
  at::Tensor v = v_proj->forward(x).view({batch, tokens, kv_heads_, head_dim_}).transpose(1, 2);
  q = q * cos + RotateHalf(q) * sin;  // cos, sin [tokens, head_dim] broadcast over batch, heads
  k = k * cos + RotateHalf(k) * sin;
  if (kv_heads_ != heads_) {  // grouped-query attention: query head h reads kv head h / groups
    k = k.repeat_interleave(heads_ / kv_heads_, 1);
    v = v.repeat_interleave(heads_ / kv_heads_, 1);
  }
  const double scaling = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  at::Tensor scores = at::matmul(q, k.transpose(2, 3)) * scaling;
  const at::Tensor mask =
      at::full({tokens, tokens}, -std::numeric_limits<float>::infinity(), scores.options()).triu(1);
  scores = scores + mask;
  const at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  const at::Tensor out =
      at::matmul(probs, v).transpose(1, 2).reshape({batch, tokens, heads_ * head_dim_});
  return o_proj->forward(out);
}

LlamaMLP::LlamaMLP(const LlamaConfig& c, const torch::TensorOptions& options) {
  gate_proj = register_module(
      "gate_proj",
      std::make_shared<Linear>(c.hidden_size, c.intermediate_size, c.mlp_bias, options));
  up_proj = register_module(
      "up_proj", std::make_shared<Linear>(c.hidden_size, c.intermediate_size, c.mlp_bias, options));
  down_proj = register_module(
      "down_proj",
      std::make_shared<Linear>(c.intermediate_size, c.hidden_size, c.mlp_bias, options));
}

at::Tensor LlamaMLP::forward(const at::Tensor& x) const {
  return down_proj->forward(at::silu(gate_proj->forward(x)) * up_proj->forward(x));
}

LlamaDecoderLayer::LlamaDecoderLayer(const LlamaConfig& c, const torch::TensorOptions& options) {
  // Registered in transformers' order, so named_parameters() lists them as its state_dict does.
  self_attn = register_module("self_attn", std::make_shared<LlamaAttention>(c, options));
  mlp = register_module("mlp", std::make_shared<LlamaMLP>(c, options));
  input_layernorm = register_module(
      "input_layernorm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, options));
  post_attention_layernorm =
      register_module("post_attention_layernorm",
                      std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, options));
}

at::Tensor LlamaDecoderLayer::forward(const at::Tensor& x, const at::Tensor& cos,
                                      const at::Tensor& sin) const {
  const at::Tensor h = x + self_attn->forward(input_layernorm->forward(x), cos, sin);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

LlamaModel::LlamaModel(const LlamaConfig& c, const torch::TensorOptions& options) {
  embed_tokens = register_module("embed_tokens",
                                 std::make_shared<Embedding>(c.vocab_size, c.hidden_size, options));
  // Submodule names cannot contain dots: "layers" is a plain container of "0", "1", ...
  auto list = register_module("layers", std::make_shared<torch::nn::Module>("layers"));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    layers.push_back(
        list->register_module(std::to_string(i), std::make_shared<LlamaDecoderLayer>(c, options)));
  }
  norm = register_module("norm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, options));
  rotary_emb = register_module("rotary_emb", std::make_shared<RotaryEmbedding>(c.rope, options));
}

at::Tensor LlamaModel::forward(const at::Tensor& input_ids) const {
  at::Tensor h = embed_tokens->forward(input_ids);
  const at::Tensor positions =
      at::arange(input_ids.size(1), at::TensorOptions().dtype(at::kLong).device(h.device()));
  const auto [cos, sin] = rotary_emb->forward(positions, h.scalar_type());
  for (const auto& layer : layers) h = layer->forward(h, cos, sin);
  return norm->forward(h);
}

LlamaForCausalLM::LlamaForCausalLM(const LlamaConfig& c, const torch::TensorOptions& options)
    : config_(c) {
  model = register_module("model", std::make_shared<LlamaModel>(c, options));
  lm_head = register_module(
      "lm_head", c.tie_word_embeddings
                     ? std::make_shared<Linear>(model->embed_tokens->weight)
                     : std::make_shared<Linear>(c.hidden_size, c.vocab_size, false, options));
}

at::Tensor LlamaForCausalLM::forward(const at::Tensor& input_ids) const {
  return lm_head->forward(model->forward(input_ids));
}

ModelLoadOptions LlamaLoadOptions() {
  ModelLoadOptions options;
  options.base_model_prefix = "model";
  // transformers < 4.31 saved each layer's rotary inv_freq as a persistent buffer.
  options.ignore_checkpoint.push_back(R"((.*\.)?rotary_emb\.inv_freq)");
  return options;
}

std::optional<c10::ScalarType> ConfigDType(const LlamaConfig& config) {
  if (config.torch_dtype == "bfloat16") return at::kBFloat16;
  if (config.torch_dtype == "float16") return at::kHalf;
  if (config.torch_dtype == "float32") return at::kFloat;
  return std::nullopt;
}

}  // namespace shardstream
