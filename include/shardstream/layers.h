// Layers for meta-device skeletons: each constructor takes torch::TensorOptions and registers its
// tensors with exactly those options, uninitialised. With a meta device (SkeletonOptions) nothing
// is allocated and no init kernel runs: the module is shapes and dtypes only, ready for
// Materialize and LoadInto (shardstream/skeleton.h). Stock torch::nn::Linear and Embedding cannot
// do this in C++: they take no device and randomly initialise on the CPU in their constructors.
//
// Built on a real device these layers hold uninitialised memory until something fills them.
// Parameter and buffer names follow PyTorch (`weight`, `bias`, `inv_freq`), so a module tree built
// from them has the state_dict names of its Python counterpart. Forward passes are for inference
// (run them under at::NoGradGuard); a module is not thread-safe while it is loaded.
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <utility>

#include "shardstream/llama_config.h"

namespace shardstream {

// `dtype` on the meta device: what a skeleton's layers are built with.
torch::TensorOptions SkeletonOptions(c10::ScalarType dtype);

// y = x Wᵀ + b. weight [out_features, in_features], bias [out_features] when `bias`.
class Linear : public torch::nn::Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool with_bias,
         const torch::TensorOptions& options);
  // A layer whose weight *is* `tied_weight` (the same tensor, e.g. an lm_head tied to the input
  // embedding): named_parameters() lists it under this layer's name too, and it has one storage.
  explicit Linear(const at::Tensor& tied_weight);

  at::Tensor forward(const at::Tensor& x) const;

  at::Tensor weight;
  at::Tensor bias;  // undefined without bias
};

// Rows of `weight` [num_embeddings, embedding_dim] looked up by index.
class Embedding : public torch::nn::Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, const torch::TensorOptions& options);
  at::Tensor forward(const at::Tensor& indices) const;

  at::Tensor weight;
};

// RMSNorm as Llama computes it: in float32, x / sqrt(mean(x²) + eps), cast back to x's dtype,
// times `weight` [dim].
class RMSNorm : public torch::nn::Module {
 public:
  RMSNorm(int64_t dim, double eps, const torch::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) const;

  at::Tensor weight;
  double eps;
};

// Rotary position embedding. Its buffer `inv_freq` [dim / 2] (float32, on the options' device) is
// non-persistent: checkpoints do not hold it (or hold a stale copy), so the constructor only
// registers it and the re-init stage of LoadInto computes it with ComputeInvFreq, through the
// buffer registry (DefaultBufferRegistry in shardstream/skeleton.h).
class RotaryEmbedding : public torch::nn::Module {
 public:
  RotaryEmbedding(const RopeParameters& rope, const torch::TensorOptions& options);

  // The inverse frequencies as transformers computes them for this rope type, in float32 on
  // `device` (the same ATen operations in the same order, so the values match bit for bit).
  at::Tensor ComputeInvFreq(c10::Device device) const;
  // cos and sin [positions, dim] for integer `positions` [T], in `dtype` (computed in float32).
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& positions,
                                            c10::ScalarType dtype) const;

  const RopeParameters& rope() const { return rope_; }

  at::Tensor inv_freq;

 private:
  RopeParameters rope_;
};

}  // namespace shardstream
