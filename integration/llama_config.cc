#include "integration/detail/llama_config.h"

#include "integration/detail/errors.h"

#include <simdjson.h>

#include <cmath>
#include <string>
#include <utility>

namespace shardstream {
namespace {

namespace dom = simdjson::dom;

io::Status ConfigError(std::string message) {
  return io::Status::Error(io::StatusCode::kInvalidArgument, "config", std::move(message));
}

bool Present(const dom::object& object, std::string_view key, dom::element& out) {
  return object.at_key(key).get(out) == simdjson::SUCCESS &&
         out.type() != dom::element_type::NULL_VALUE;
}

// A JSON number as a double: configs write rope_theta as 10000 or 500000.0 alike.
io::Result<double> Number(const dom::element& value, std::string_view key) {
  switch (value.type()) {
    case dom::element_type::INT64:
      return static_cast<double>(value.get_int64().value_unsafe());
    case dom::element_type::UINT64:
      return static_cast<double>(value.get_uint64().value_unsafe());
    case dom::element_type::DOUBLE:
      return value.get_double().value_unsafe();
    default:
      return ConfigError("\"" + std::string(key) + "\" must be a number");
  }
}

// Reads the fields of one JSON object into a struct; records the first error.
class Fields {
 public:
  explicit Fields(dom::object object) : object_(object) {}

  void Int(std::string_view key, int64_t& out, bool required) {
    dom::element value;
    if (!Present(object_, key, value)) {
      if (required) Fail("\"" + std::string(key) + "\" is missing");
      return;
    }
    int64_t parsed = 0;
    if (value.get_int64().get(parsed) != simdjson::SUCCESS || parsed <= 0) {
      Fail("\"" + std::string(key) + "\" must be a positive integer");
      return;
    }
    out = parsed;
  }
  void Double(std::string_view key, double& out) {
    dom::element value;
    if (!Present(object_, key, value)) return;
    io::Result<double> parsed = Number(value, key);
    if (!parsed.ok()) {
      Fail(parsed.status());
      return;
    }
    out = *parsed;
  }
  void Bool(std::string_view key, bool& out) {
    dom::element value;
    if (!Present(object_, key, value)) return;
    if (value.get_bool().get(out) != simdjson::SUCCESS) {
      Fail("\"" + std::string(key) + "\" must be true or false");
    }
  }
  void String(std::string_view key, std::string& out) {
    dom::element value;
    if (!Present(object_, key, value)) return;
    std::string_view text;
    if (value.get_string().get(text) != simdjson::SUCCESS) {
      Fail("\"" + std::string(key) + "\" must be a string");
      return;
    }
    out = std::string(text);
  }

  void Fail(std::string message) { Fail(ConfigError(std::move(message))); }
  void Fail(io::Status status) {
    if (status_.ok()) status_ = std::move(status);
  }
  const io::Status& status() const { return status_; }

 private:
  dom::object object_;
  io::Status status_;
};

// transformers 4: rope_scaling = {"rope_type" or "type": ..., "factor": ...} next to rope_theta;
// transformers 5: rope_parameters = {"rope_type": ..., "rope_theta": ..., ...}.
void ReadRope(const dom::object& root, Fields& fields, RopeParameters& rope,
              int64_t max_position_embeddings) {
  fields.Double("rope_theta", rope.theta);
  dom::element scaling;
  if (!Present(root, "rope_parameters", scaling) && !Present(root, "rope_scaling", scaling)) {
    return;
  }
  dom::object object;
  if (scaling.get_object().get(object) != simdjson::SUCCESS) {
    fields.Fail("\"rope_scaling\" / \"rope_parameters\" must be an object or null");
    return;
  }
  Fields inner(object);
  std::string type = "default";
  inner.String("type", type);
  inner.String("rope_type", type);
  inner.Double("rope_theta", rope.theta);
  inner.Double("factor", rope.factor);
  inner.Double("low_freq_factor", rope.low_freq_factor);
  inner.Double("high_freq_factor", rope.high_freq_factor);
  rope.original_max_position_embeddings = max_position_embeddings;
  inner.Int("original_max_position_embeddings", rope.original_max_position_embeddings, false);
  if (!inner.status().ok()) {
    fields.Fail(inner.status());
    return;
  }
  if (type == "default") {
    rope.type = RopeType::kDefault;
  } else if (type == "linear") {
    rope.type = RopeType::kLinear;
  } else if (type == "llama3") {
    rope.type = RopeType::kLlama3;
    if (!(rope.high_freq_factor > rope.low_freq_factor)) {
      fields.Fail("llama3 rope scaling needs high_freq_factor > low_freq_factor");
    }
  } else {
    fields.Fail("rope type '" + type + "' is not supported (default, linear, llama3)");
  }
  if (!(rope.factor > 0) || !std::isfinite(rope.factor)) {
    fields.Fail("rope scaling \"factor\" must be a positive number");
  }
}

}  // namespace

std::string_view RopeTypeName(RopeType type) {
  switch (type) {
    case RopeType::kDefault:
      return "default";
    case RopeType::kLinear:
      return "linear";
    case RopeType::kLlama3:
      return "llama3";
  }
  return "default";
}

namespace detail {

io::Result<LlamaConfig> ParseLlamaConfig(std::string_view json) {
  simdjson::padded_string padded(json);
  dom::parser parser;
  dom::element root_element;
  if (auto code = parser.parse(padded).get(root_element); code) {
    return ConfigError(std::string("not valid JSON (") + simdjson::error_message(code) + ")");
  }
  dom::object root;
  if (root_element.get_object().get(root) != simdjson::SUCCESS) {
    return ConfigError("config.json must be a JSON object");
  }
  LlamaConfig config;
  Fields fields(root);
  std::string model_type;
  fields.String("model_type", model_type);
  if (!model_type.empty() && model_type != "llama") {
    fields.Fail("model_type '" + model_type + "' is not llama");
  }
  std::string act = "silu";
  fields.String("hidden_act", act);
  if (act != "silu") fields.Fail("hidden_act '" + act + "' is not supported (silu)");
  fields.Int("hidden_size", config.hidden_size, true);
  fields.Int("intermediate_size", config.intermediate_size, true);
  fields.Int("num_hidden_layers", config.num_hidden_layers, true);
  fields.Int("num_attention_heads", config.num_attention_heads, true);
  fields.Int("vocab_size", config.vocab_size, true);
  config.num_key_value_heads = config.num_attention_heads;
  fields.Int("num_key_value_heads", config.num_key_value_heads, false);
  if (config.num_attention_heads > 0) {
    config.head_dim = config.hidden_size / config.num_attention_heads;
  }
  fields.Int("head_dim", config.head_dim, false);
  fields.Int("max_position_embeddings", config.max_position_embeddings, false);
  fields.Double("rms_norm_eps", config.rms_norm_eps);
  fields.Bool("tie_word_embeddings", config.tie_word_embeddings);
  fields.Bool("attention_bias", config.attention_bias);
  fields.Bool("mlp_bias", config.mlp_bias);
  fields.String("torch_dtype", config.torch_dtype);
  fields.String("dtype", config.torch_dtype);  // transformers 5 renamed it
  double partial_rotary_factor = 1.0;
  fields.Double("partial_rotary_factor", partial_rotary_factor);
  if (partial_rotary_factor != 1.0)
    fields.Fail("Llama rotates whole heads: partial_rotary_factor must be 1");
  ReadRope(root, fields, config.rope, config.max_position_embeddings);
  if (!fields.status().ok()) return fields.status();

  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    return ConfigError("num_attention_heads (" + std::to_string(config.num_attention_heads) +
                       ") is not a multiple of num_key_value_heads (" +
                       std::to_string(config.num_key_value_heads) + ")");
  }
  config.rope.dim = config.head_dim;
  if (config.rope.dim % 2 != 0) {
    return ConfigError("head_dim (" + std::to_string(config.head_dim) +
                       ") must be even for rotary embeddings");
  }
  return config;
}

io::Result<LlamaConfig> ReadLlamaConfig(const std::filesystem::path& path) {
  simdjson::padded_string text;
  if (auto code = simdjson::padded_string::load(path.string()).get(text); code) {
    return io::Status::Error(
               io::StatusCode::kNotFound, "config",
               std::string("cannot read the model config (") + simdjson::error_message(code) + ")")
        .WithPath(path.string());
  }
  io::Result<LlamaConfig> config = ParseLlamaConfig(std::string_view(text.data(), text.size()));
  if (!config.ok()) return std::move(config).status().WithPath(path.string());
  return config;
}

}  // namespace detail

LlamaConfig ParseLlamaConfig(std::string_view json) {
  io::Result<LlamaConfig> config = detail::ParseLlamaConfig(json);
  ThrowIfError(config.status());
  return std::move(config).value();
}

LlamaConfig ReadLlamaConfig(const std::filesystem::path& path) {
  io::Result<LlamaConfig> config = detail::ReadLlamaConfig(path);
  ThrowIfError(config.status());
  return std::move(config).value();
}

}  // namespace shardstream
