#include "shardstream/layers.h"

#include <ATen/ATen.h>

#include <cmath>
#include <numbers>

namespace shardstream {

torch::TensorOptions SkeletonOptions(c10::ScalarType dtype) {
  return torch::TensorOptions().dtype(dtype).device(c10::kMeta);
}

Linear::Linear(int64_t in_features, int64_t out_features, bool with_bias,
               const torch::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({out_features, in_features}, options));
  if (with_bias) bias = register_parameter("bias", at::empty({out_features}, options));
}

Linear::Linear(const at::Tensor& tied_weight) {
  // register_parameter stores the tensor itself (same TensorImpl), not a copy.
  weight = register_parameter("weight", tied_weight, tied_weight.requires_grad());
}

at::Tensor Linear::forward(const at::Tensor& x) const { return at::linear(x, weight, bias); }

Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim,
                     const torch::TensorOptions& options) {
  weight = register_parameter("weight", at::empty({num_embeddings, embedding_dim}, options));
}

at::Tensor Embedding::forward(const at::Tensor& indices) const {
  return at::embedding(weight, indices);
}

RMSNorm::RMSNorm(int64_t dim, double eps_value, const torch::TensorOptions& options)
    : eps(eps_value) {
  weight = register_parameter("weight", at::empty({dim}, options));
}

at::Tensor RMSNorm::forward(const at::Tensor& x) const {
  at::Tensor h = x.to(at::kFloat);
  const at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(variance + eps);
  return weight * h.to(x.scalar_type());
}

RotaryEmbedding::RotaryEmbedding(const RopeParameters& rope, const torch::TensorOptions& options)
    : rope_(rope) {
  inv_freq = register_buffer("inv_freq", at::empty({rope.dim / 2}, options.dtype(at::kFloat)));
}

at::Tensor RotaryEmbedding::ComputeInvFreq(c10::Device device) const {
  // transformers' _compute_default_rope_parameters:
  //   1 / (base ** (arange(0, dim, 2, int64).float() / dim))
  const at::Tensor exponents =
      at::arange(0, rope_.dim, 2, at::TensorOptions().dtype(at::kLong).device(device))
          .to(at::kFloat) /
      static_cast<double>(rope_.dim);
  // Python's `scalar / tensor` is tensor.reciprocal() * scalar (torch/_tensor.py __rtruediv__),
  // while C++'s is a fill and a division: spelled out so the bits match transformers'.
  at::Tensor inv = at::pow(rope_.theta, exponents).reciprocal();
  switch (rope_.type) {
    case RopeType::kDefault:
      return inv;
    case RopeType::kLinear:
      return inv / rope_.factor;
    case RopeType::kLlama3: {
      // transformers' _compute_llama3_parameters, step for step.
      const double old_context = static_cast<double>(rope_.original_max_position_embeddings);
      const double low_freq_wavelen = old_context / rope_.low_freq_factor;
      const double high_freq_wavelen = old_context / rope_.high_freq_factor;
      const at::Tensor wavelen = inv.reciprocal() * (2 * std::numbers::pi);
      at::Tensor llama = at::where(wavelen > low_freq_wavelen, inv / rope_.factor, inv);
      const at::Tensor smooth = (wavelen.reciprocal() * old_context - rope_.low_freq_factor) /
                                (rope_.high_freq_factor - rope_.low_freq_factor);
      const at::Tensor smoothed = (1 - smooth) * llama / rope_.factor + smooth * llama;
      const at::Tensor medium =
          (wavelen < high_freq_wavelen).logical_not() & (wavelen > low_freq_wavelen).logical_not();
      return at::where(medium, smoothed, llama);
    }
  }
  return inv;
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::forward(const at::Tensor& positions,
                                                           c10::ScalarType dtype) const {
  // As transformers: freqs = inv_freq ⊗ positions in float32, emb = [freqs, freqs].
  const at::Tensor freqs = at::outer(positions.to(at::kFloat), inv_freq.to(at::kFloat));
  const at::Tensor emb = at::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

}  // namespace shardstream
