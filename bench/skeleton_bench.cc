// The meta-skeleton path against building a model the ordinary way.
//
//   skeleton_bench [--runs N] [CKPT_DIR ...]
//
// 1. Builds LlamaForCausalLM on the meta device for a ~20B-parameter config (and the 1B and 3B
//    shapes) N times: milliseconds, no memory.
// 2. For each checkpoint folder (with config.json, e.g. from `shardstream generate --preset
//    llama-1b` / `llama-3b`), N interleaved runs of
//      skeleton: build on meta → LoadInto (materialise, stream straight into place, reinit);
//      baseline: build on the CPU (allocated) → random init as transformers' _init_weights does
//                (normal(0, 0.02) weights, ones for norms, inv_freq computed) → LoadFile with
//                zero_copy (mapped views, like safe_open) → copy_ each tensor into its
//                parameter (what load_state_dict does).
//    Both end with the same bytes in the same model (checked after the first pair).
// Prints every run and, per config and method, the median with min and max. Not a test: run by
// hand, on a quiet machine, with the checkpoint in the page cache for warm numbers.
#include "integration/detail/llama_config.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "shardstream/layers.h"
#include "shardstream/llama.h"
#include "shardstream/load.h"
#include "shardstream/skeleton.h"

namespace {

using shardstream::LlamaConfig;
using shardstream::LlamaForCausalLM;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Summary {
  double median, min, max;
};

Summary Summarise(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  const double median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  return {median, v.front(), v.back()};
}

LlamaConfig Shape(int64_t hidden, int64_t inter, int64_t layers, int64_t heads, int64_t kv) {
  LlamaConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = inter;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv;
  c.head_dim = hidden / heads;
  c.vocab_size = 128256;
  c.rms_norm_eps = 1e-5;
  c.rope.dim = c.head_dim;
  c.rope.theta = 500000.0;
  return c;
}

uint64_t ParameterCount(const torch::nn::Module& m) {
  uint64_t n = 0;
  for (const auto& t : m.parameters()) n += static_cast<uint64_t>(t.numel());
  return n;
}

void BenchSkeletonBuild(const std::string& label, const LlamaConfig& config, int runs) {
  std::vector<double> ms;
  uint64_t params = 0;
  for (int i = 0; i < runs; ++i) {
    const auto start = Clock::now();
    auto model =
        std::make_shared<LlamaForCausalLM>(config, shardstream::SkeletonOptions(at::kBFloat16));
    ms.push_back(Since(start) * 1e3);
    params = ParameterCount(*model);
  }
  const Summary s = Summarise(ms);
  std::printf(
      "skeleton-build %-6s %6.2fB params  median %.2f ms  [min %.2f, max %.2f]  (%d runs)\n",
      label.c_str(), static_cast<double>(params) / 1e9, s.median, s.min, s.max, runs);
}

// transformers' LlamaPreTrainedModel._init_weights: normal(0, initializer_range) for linear and
// embedding weights, ones for RMSNorm weights.
void RandomInit(LlamaForCausalLM& model) {
  at::NoGradGuard no_grad;
  for (const auto& item : model.named_parameters()) {
    at::Tensor t = item.value();
    if (item.key().ends_with("norm.weight")) {
      t.fill_(1.0);
    } else {
      t.normal_(0.0, 0.02);
    }
  }
  auto& rotary = *model.model->rotary_emb;
  rotary.inv_freq.copy_(rotary.ComputeInvFreq(c10::kCPU));
}

uint64_t Checksum(const torch::nn::Module& m) {
  uint64_t sum = 0;
  for (const auto& t : m.parameters()) {
    const auto* bytes = static_cast<const uint8_t*>(t.data_ptr());
    const size_t n = t.nbytes();
    for (size_t i = 0; i < n; i += 4096) sum = sum * 1099511628211ull + bytes[i];
  }
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 5;
  std::vector<std::string> checkpoints;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--runs") == 0 && i + 1 < argc) {
      runs = std::atoi(argv[++i]);
    } else {
      checkpoints.emplace_back(argv[i]);
    }
  }
  if (runs < 1) runs = 1;

  // ~20.3B parameters: hidden 6144, MLP 16384, 48 layers, 48 heads, 8 kv heads, vocab 128256.
  BenchSkeletonBuild("20b", Shape(6144, 16384, 48, 48, 8), std::max(runs, 20));
  BenchSkeletonBuild("1b", Shape(2048, 8192, 16, 32, 8), std::max(runs, 20));
  BenchSkeletonBuild("3b", Shape(3072, 8192, 28, 24, 8), std::max(runs, 20));

  for (const std::string& dir : checkpoints) {
    shardstream::io::Result<LlamaConfig> config =
        shardstream::detail::ReadLlamaConfig(std::filesystem::path(dir) / "config.json");
    if (!config.ok()) {
      std::fprintf(stderr, "error: %s\n", config.status().ToString().c_str());
      return 1;
    }
    const c10::ScalarType dtype = shardstream::ConfigDType(*config).value_or(at::kBFloat16);
    std::map<std::string, std::vector<double>> times;
    uint64_t skeleton_sum = 0, baseline_sum = 0;
    for (int run = 0; run < runs; ++run) {
      // Alternate which method goes first, so neither always inherits the other's page cache.
      for (int k = 0; k < 2; ++k) {
        const bool skeleton = (run + k) % 2 == 0;
        if (skeleton) {
          const auto start = Clock::now();
          auto model =
              std::make_shared<LlamaForCausalLM>(*config, shardstream::SkeletonOptions(dtype));
          const double build = Since(start);
          const shardstream::ModelLoadReport report =
              shardstream::LoadInto(*model, dir, shardstream::LlamaLoadOptions());
          const double total = Since(start);
          double materialize = 0, stream = 0, reinit = 0;
          for (const auto& [stage, s] : report.stages) {
            if (stage == "materialize") materialize = s;
            if (stage == "stream" || stage == "cast") stream += s;
            if (stage == "reinit") reinit = s;
          }
          times["skeleton total"].push_back(total);
          times["skeleton build"].push_back(build);
          times["skeleton materialize"].push_back(materialize);
          times["skeleton stream"].push_back(stream);
          times["skeleton reinit"].push_back(reinit);
          std::printf(
              "%s run %d skeleton: total %.3f s (build %.4f materialize %.3f stream %.3f "
              "reinit %.4f, %s)\n",
              dir.c_str(), run, total, build, materialize, stream, reinit,
              report.direct ? "O_DIRECT" : "buffered");
          if (run == 0) skeleton_sum = Checksum(*model);
        } else {
          const auto start = Clock::now();
          auto model = std::make_shared<LlamaForCausalLM>(
              *config, at::TensorOptions().dtype(dtype).device(c10::kCPU));
          const double build = Since(start);
          auto stage = Clock::now();
          RandomInit(*model);
          const double init = Since(stage);
          stage = Clock::now();
          double load = 0, copy = 0;
          {
            // zero_copy: views into the mapped files, as transformers reads with safe_open; the
            // copies below then read the page cache once, and no second full copy is held.
            shardstream::LoadOptions views;
            views.zero_copy = true;
            shardstream::TensorMap weights = shardstream::LoadFile(dir, views);
            load = Since(stage);
            stage = Clock::now();
            at::NoGradGuard no_grad;
            for (auto& item : model->named_parameters()) {
              item.value().copy_(weights.at(item.key()));
            }
            copy = Since(stage);
          }
          const double total = Since(start);
          times["baseline total"].push_back(total);
          times["baseline build"].push_back(build);
          times["baseline init"].push_back(init);
          times["baseline loadfile"].push_back(load);
          times["baseline copy"].push_back(copy);
          std::printf(
              "%s run %d baseline: total %.3f s (build %.4f init %.3f loadfile %.3f copy "
              "%.3f)\n",
              dir.c_str(), run, total, build, init, load, copy);
          if (run == 0) baseline_sum = Checksum(*model);
        }
        std::fflush(stdout);
      }
    }
    if (skeleton_sum != baseline_sum) {
      std::fprintf(stderr, "error: the two methods loaded different bytes\n");
      return 1;
    }
    std::printf("summary %s (%d interleaved runs each; seconds, median [min, max])\n", dir.c_str(),
                runs);
    for (const auto& [name, v] : times) {
      const Summary s = Summarise(v);
      std::printf("  %-22s %.3f  [%.3f, %.3f]\n", name.c_str(), s.median, s.min, s.max);
    }
  }
  return 0;
}
