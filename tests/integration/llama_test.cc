// config.json parsing and the rotary inverse frequencies, against formulas computed here in double
// precision (independently of ATen and of integration/layers.cc).
#include "shardstream/llama.h"

#include "integration/detail/llama_config.h"

#include <ATen/ATen.h>

#include <cmath>
#include <gtest/gtest.h>
#include <numbers>
#include <string>
#include <vector>

#include "shardstream/llama_config.h"

namespace shardstream {
namespace {

// What `shardstream generate --preset tiny` writes (cli/generate.cc), field for field.
constexpr std::string_view kGeneratedTiny = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "head_dim": 16,
  "hidden_act": "silu",
  "hidden_size": 64,
  "initializer_range": 0.02,
  "intermediate_size": 176,
  "max_position_embeddings": 4096,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 4,
  "num_hidden_layers": 2,
  "num_key_value_heads": 2,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "use_cache": true,
  "vocab_size": 256
})";

TEST(LlamaConfigTest, ParsesTheGeneratedConfig) {
  io::Result<LlamaConfig> config = detail::ParseLlamaConfig(kGeneratedTiny);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->intermediate_size, 176);
  EXPECT_EQ(config->num_hidden_layers, 2);
  EXPECT_EQ(config->num_attention_heads, 4);
  EXPECT_EQ(config->num_key_value_heads, 2);
  EXPECT_EQ(config->head_dim, 16);
  EXPECT_EQ(config->vocab_size, 256);
  EXPECT_EQ(config->max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(config->rms_norm_eps, 1e-5);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_EQ(config->torch_dtype, "bfloat16");
  EXPECT_EQ(ConfigDType(*config), at::kBFloat16);
  EXPECT_EQ(config->rope.type, RopeType::kDefault);
  EXPECT_DOUBLE_EQ(config->rope.theta, 500000.0);
  EXPECT_EQ(config->rope.dim, 16);
}

TEST(LlamaConfigTest, AppliesTransformersDefaultsAndReadsBothRopeForms) {
  // Minimal: kv heads default to heads, head_dim to hidden / heads, theta 10000 (an integer).
  auto minimal = detail::ParseLlamaConfig(R"({"hidden_size": 32, "intermediate_size": 64,
      "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10, "rope_theta": 10000,
      "tie_word_embeddings": true})");
  ASSERT_TRUE(minimal.ok()) << minimal.status().ToString();
  EXPECT_EQ(minimal->num_key_value_heads, 4);
  EXPECT_EQ(minimal->head_dim, 8);
  EXPECT_DOUBLE_EQ(minimal->rope.theta, 10000.0);
  EXPECT_TRUE(minimal->tie_word_embeddings);
  EXPECT_FALSE(ConfigDType(*minimal).has_value());

  // transformers 4: rope_scaling next to rope_theta (Llama 3.1).
  auto v4 = detail::ParseLlamaConfig(R"({"hidden_size": 32, "intermediate_size": 64,
      "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10,
      "rope_theta": 500000.0, "max_position_embeddings": 131072,
      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}})");
  ASSERT_TRUE(v4.ok()) << v4.status().ToString();
  EXPECT_EQ(v4->rope.type, RopeType::kLlama3);
  EXPECT_DOUBLE_EQ(v4->rope.factor, 8.0);
  EXPECT_EQ(v4->rope.original_max_position_embeddings, 8192);

  // transformers 5: rope_parameters holds the theta too; "dtype" replaces torch_dtype.
  auto v5 = detail::ParseLlamaConfig(R"({"hidden_size": 32, "intermediate_size": 64,
      "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10, "dtype": "float32",
      "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1234.0}})");
  ASSERT_TRUE(v5.ok()) << v5.status().ToString();
  EXPECT_EQ(v5->rope.type, RopeType::kLinear);
  EXPECT_DOUBLE_EQ(v5->rope.theta, 1234.0);
  EXPECT_EQ(ConfigDType(*v5), at::kFloat);
}

TEST(LlamaConfigTest, RejectsWhatTheModelCannotRepresent) {
  const std::string base = R"("hidden_size": 32, "intermediate_size": 64,
      "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10)";
  for (const std::string& json :
       {std::string("{") + R"("intermediate_size": 64})",  // no hidden_size
        "{" + base + R"(, "model_type": "mistralx"})", "{" + base + R"(, "hidden_act": "gelu"})",
        "{" + base + R"(, "num_key_value_heads": 3})",
        "{" + base + R"(, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})",
        std::string(R"({"hidden_size": -4, "intermediate_size": 64, "num_hidden_layers": 1,
                        "num_attention_heads": 4, "vocab_size": 10})"),
        std::string("[1, 2]"), std::string("{")}) {
    io::Result<LlamaConfig> config = detail::ParseLlamaConfig(json);
    ASSERT_FALSE(config.ok()) << json;
    EXPECT_EQ(config.status().rule(), "config") << json;
  }
}

// inv_freq[i] = 1 / theta^(2i / dim), then the scaling of `rope`: in double precision.
std::vector<double> ExpectedInvFreq(const RopeParameters& rope) {
  std::vector<double> out;
  for (int64_t i = 0; i < rope.dim; i += 2) {
    const double base = 1.0 / std::pow(rope.theta, static_cast<double>(i) / rope.dim);
    if (rope.type == RopeType::kDefault) {
      out.push_back(base);
    } else if (rope.type == RopeType::kLinear) {
      out.push_back(base / rope.factor);
    } else {  // llama3: long wavelengths scaled by 1/factor, short kept, a smooth ramp between
      const double wavelen = 2 * std::numbers::pi / base;
      const double old = static_cast<double>(rope.original_max_position_embeddings);
      if (wavelen < old / rope.high_freq_factor) {
        out.push_back(base);
      } else if (wavelen > old / rope.low_freq_factor) {
        out.push_back(base / rope.factor);
      } else {
        const double smooth =
            (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
        out.push_back((1 - smooth) * base / rope.factor + smooth * base);
      }
    }
  }
  return out;
}

void ExpectInvFreq(const RopeParameters& rope) {
  RotaryEmbedding rotary(rope, SkeletonOptions(at::kBFloat16));
  EXPECT_TRUE(rotary.inv_freq.is_meta());
  EXPECT_EQ(rotary.inv_freq.scalar_type(), at::kFloat);
  const at::Tensor got = rotary.ComputeInvFreq(c10::kCPU);
  const std::vector<double> want = ExpectedInvFreq(rope);
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  ASSERT_EQ(got.scalar_type(), at::kFloat);
  for (size_t i = 0; i < want.size(); ++i) {
    // float32 arithmetic against double: a few ulp.
    EXPECT_NEAR(got[i].item<float>(), want[i], 4e-6 * want[i] + 1e-30) << "i=" << i;
  }
}

TEST(RotaryEmbeddingTest, InvFreqMatchesTheFormulaForEachRopeType) {
  RopeParameters rope;
  rope.dim = 128;
  rope.theta = 500000.0;
  ExpectInvFreq(rope);  // default
  rope.type = RopeType::kLinear;
  rope.factor = 4.0;
  ExpectInvFreq(rope);
  rope.type = RopeType::kLlama3;  // Llama 3.1's published values
  rope.factor = 8.0;
  rope.low_freq_factor = 1.0;
  rope.high_freq_factor = 4.0;
  rope.original_max_position_embeddings = 8192;
  ExpectInvFreq(rope);
  // All three llama3 regimes occur for these values (else the test would not cover the ramp).
  int low = 0, mid = 0, high = 0;
  for (int64_t i = 0; i < rope.dim; i += 2) {
    const double wavelen =
        2 * std::numbers::pi * std::pow(rope.theta, static_cast<double>(i) / rope.dim);
    if (wavelen < 8192 / 4.0) {
      ++high;
    } else if (wavelen > 8192 / 1.0) {
      ++low;
    } else {
      ++mid;
    }
  }
  EXPECT_GT(low, 0);
  EXPECT_GT(mid, 0);
  EXPECT_GT(high, 0);
}

}  // namespace
}  // namespace shardstream
