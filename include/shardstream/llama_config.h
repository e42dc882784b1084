// The parts of a Hugging Face Llama config.json that shape the model, parsed without torch.
//
// Reads the fields transformers' LlamaConfig reads, with its defaults: hidden_size,
// intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads (default: the
// attention heads), head_dim (default hidden_size / num_attention_heads), vocab_size,
// rms_norm_eps, max_position_embeddings, tie_word_embeddings, attention_bias, mlp_bias,
// hidden_act (only "silu"), torch_dtype (or transformers 5's "dtype"), and the rotary settings in
// either form: transformers 4's rope_theta + rope_scaling, or transformers 5's rope_parameters.
// Thread-safe (pure functions).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace shardstream {

enum class RopeType : uint8_t {
  kDefault,  // inv_freq = 1 / theta^(2i / dim)
  kLinear,   // default / factor
  kLlama3,   // Llama 3.1's wavelength-dependent scaling (factor, low/high_freq_factor, ...)
};
std::string_view RopeTypeName(RopeType type);

// How the rotary embedding's inverse frequencies are computed (transformers' rope init functions).
struct RopeParameters {
  int64_t dim = 0;  // rotated dimensions per head: head_dim
  double theta = 10000.0;
  RopeType type = RopeType::kDefault;
  double factor = 1.0;                              // linear, llama3
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct LlamaConfig {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  std::string torch_dtype;  // "bfloat16", "float16", "float32", or empty when the config has none
  RopeParameters rope;
};

// Parses config.json text. Throws LoadError (shardstream/load.h) rule "config" naming the field
// that is missing, malformed or unsupported (a model_type other than llama, a rope type other than
// default/linear/llama3, a hidden_act other than silu, inconsistent head counts).
LlamaConfig ParseLlamaConfig(std::string_view json);
// Reads and parses a config.json file; errors carry its path.
LlamaConfig ReadLlamaConfig(const std::filesystem::path& path);

}  // namespace shardstream
