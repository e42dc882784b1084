// Stock torch::nn modules as skeletons: built normally, turned into meta skeletons in place by
// ToMeta, then filled by LoadInto from a checkpoint written with their own values (through
// io::WriteSafetensors, not the loader), byte for byte. And the device rule for real tensors:
// moved and listed, or rule "device"; never filled silently on another device.
#include "integration/detail/device_moves.h"
#include "tests/integration/tensor_checkpoint.h"
#include "tests/support/test_files.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <gtest/gtest.h>
#include <map>
#include <string>
#include <vector>

#include "shardstream/skeleton.h"

namespace shardstream {
namespace {

using testing::NamedTensors;
using testing::SameBytes;
using testing::ScratchDir;
using testing::WriteTensors;

constexpr uint64_t kSeed = 20251201;

// Every parameter and buffer of `module`, by name: the TensorImpl, and a copy of its values.
struct Snapshot {
  std::map<std::string, const c10::TensorImpl*> impls;
  NamedTensors values;
};

Snapshot Take(torch::nn::Module& module) {
  Snapshot s;
  for (const auto& item : module.named_parameters()) {
    s.impls[item.key()] = item.value().unsafeGetTensorImpl();
    s.values.emplace_back(item.key(), item.value().detach().clone());
  }
  for (const auto& item : module.named_buffers()) {
    s.impls[item.key()] = item.value().unsafeGetTensorImpl();
    s.values.emplace_back(item.key(), item.value().detach().clone());
  }
  return s;
}

// The five stock modules the issue names, in one container, with non-trivial values everywhere:
// BatchNorm2d's running statistics come from training forwards, and its num_batches_tracked (a
// persistent int64 buffer) counts them.
torch::nn::Sequential StockModel() {
  torch::manual_seed(kSeed);
  torch::nn::Sequential model(torch::nn::Embedding(torch::nn::EmbeddingOptions(50, 12)),
                              torch::nn::Linear(torch::nn::LinearOptions(12, 20)),
                              torch::nn::LayerNorm(torch::nn::LayerNormOptions({20})),
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3).padding(1)),
                              torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(8)));
  auto bn = model->ptr(4)->as<torch::nn::BatchNorm2dImpl>();
  bn->train();
  for (int i = 0; i < 3; ++i) bn->forward(at::randn({2, 8, 5, 5}) * (i + 1) + i);
  {
    const at::NoGradGuard no_grad;  // the affine parameters away from their 1/0 initialisation
    bn->weight.uniform_(0.5, 1.5);
    bn->bias.uniform_(-0.5, 0.5);
    model->ptr(2)->as<torch::nn::LayerNormImpl>()->weight.uniform_(0.5, 1.5);
    model->ptr(2)->as<torch::nn::LayerNormImpl>()->bias.uniform_(-0.5, 0.5);
  }
  return model;
}

TEST(StockModulesTest, ToMetaKeepsEveryTensorObjectAndReleasesStorage) {
  torch::nn::Sequential model = StockModel();
  const Snapshot before = Take(*model);
  auto linear = model->ptr(1)->as<torch::nn::LinearImpl>();
  const c10::TensorImpl* member = linear->weight.unsafeGetTensorImpl();

  EXPECT_EQ(ToMeta(*model), before.values.size());
  EXPECT_EQ(linear->weight.unsafeGetTensorImpl(), member);  // the member is the same object
  EXPECT_TRUE(linear->weight.is_meta());
  EXPECT_TRUE(linear->weight.requires_grad());
  for (const auto& item : model->named_parameters()) {
    EXPECT_TRUE(item.value().is_meta()) << item.key();
    EXPECT_EQ(item.value().unsafeGetTensorImpl(), before.impls.at(item.key())) << item.key();
  }
  for (const auto& item : model->named_buffers()) {
    EXPECT_TRUE(item.value().is_meta()) << item.key();
    EXPECT_EQ(item.value().unsafeGetTensorImpl(), before.impls.at(item.key())) << item.key();
  }
  const at::Tensor tracked = model->named_buffers()["4.num_batches_tracked"];
  EXPECT_EQ(tracked.scalar_type(), at::kLong);
  EXPECT_EQ(tracked.dim(), 0);
  EXPECT_EQ(ToMeta(*model), 0u);  // already a skeleton
}

TEST(StockModulesTest, SkeletonLoadsByteEqualToTheCheckpointOnTheCpu) {
  torch::nn::Sequential model = StockModel();
  const Snapshot before = Take(*model);
  // Embedding 1, Linear 2, LayerNorm 2, Conv2d 2, BatchNorm2d 2 parameters and 3 buffers.
  ASSERT_EQ(before.values.size(), 12u);
  ScratchDir dir;
  const auto path = dir.path() / "stock.safetensors";
  WriteTensors(path, before.values);

  ToMeta(*model);
  const ModelLoadReport report = LoadInto(*model, path);
  EXPECT_TRUE(report.missing.empty());
  EXPECT_TRUE(report.unexpected.empty());
  EXPECT_TRUE(report.moved.empty());
  EXPECT_EQ(report.tensors, before.values.size());
  for (const auto& [name, expected] : before.values) {
    const at::Tensor loaded = model->named_parameters().contains(name)
                                  ? model->named_parameters()[name]
                                  : model->named_buffers()[name];
    EXPECT_TRUE(loaded.device().is_cpu()) << name;
    EXPECT_EQ(loaded.unsafeGetTensorImpl(), before.impls.at(name)) << name;
    EXPECT_TRUE(SameBytes(loaded, expected)) << name;
  }
  EXPECT_EQ(model->named_buffers()["4.num_batches_tracked"].item<int64_t>(), 3);

  // And the module works: the loaded model computes what the original did.
  torch::nn::Sequential original = StockModel();
  const at::Tensor ids = at::randint(0, 50, {4}, at::kLong);
  auto head = [](torch::nn::Sequential& m, const at::Tensor& x) {
    return m->ptr(2)->as<torch::nn::LayerNormImpl>()->forward(
        m->ptr(1)->as<torch::nn::LinearImpl>()->forward(
            m->ptr(0)->as<torch::nn::EmbeddingImpl>()->forward(x)));
  };
  EXPECT_TRUE(at::equal(head(model, ids), head(original, ids)));
  const at::Tensor image = at::randn({1, 3, 6, 6});
  model->eval();
  original->eval();
  auto conv = [](torch::nn::Sequential& m, const at::Tensor& x) {
    return m->ptr(4)->as<torch::nn::BatchNorm2dImpl>()->forward(
        m->ptr(3)->as<torch::nn::Conv2dImpl>()->forward(x));
  };
  EXPECT_TRUE(at::equal(conv(model, image), conv(original, image)));
}

// Tied aliases (one TensorImpl under two names, as transformers ties embeddings) stay one tensor
// through ToMeta and are filled once, from the one name the checkpoint has.
struct TiedImpl : torch::nn::Module {
  TiedImpl() {
    linear = register_module("linear", torch::nn::Linear(4, 4));
    auto child = register_module("child", std::make_shared<torch::nn::Module>());
    child->register_parameter("weight", linear->weight);
  }
  torch::nn::Linear linear{nullptr};
};

TEST(StockModulesTest, TiedAliasesStayOneTensorThroughToMetaAndLoadOnce) {
  torch::manual_seed(kSeed);
  TiedImpl model;
  const at::Tensor original = model.linear->weight.detach().clone();
  const at::Tensor bias = model.linear->bias.detach().clone();
  ScratchDir dir;
  const auto path = dir.path() / "tied.safetensors";
  WriteTensors(path, {{"linear.weight", original}, {"linear.bias", bias}});

  EXPECT_EQ(ToMeta(model), 2u);  // the alias counts once
  auto params = model.named_parameters();
  EXPECT_EQ(params["child.weight"].unsafeGetTensorImpl(),
            params["linear.weight"].unsafeGetTensorImpl());
  const ModelLoadReport report = LoadInto(model, path);
  EXPECT_EQ(report.tied, std::vector<std::string>{"child.weight"});
  EXPECT_TRUE(SameBytes(model.linear->weight, original));
  EXPECT_TRUE(SameBytes(model.named_parameters()["child.weight"], original));
  EXPECT_TRUE(SameBytes(model.linear->bias, bias));
}

// The rule itself, over devices alone (no GPU needed): every real tensor whose device differs
// from the map's is a move; CUDA without an index is cuda:0; meta tensors are Materialize's.
TEST(StockModulesTest, RealTensorsOnAnotherDeviceThanTheMapAreMoves) {
  const c10::Device cpu(c10::kCPU), cuda0(c10::kCUDA, 0), cuda1(c10::kCUDA, 1);
  const std::vector<std::pair<std::string, c10::Device>> tensors = {
      {"a.weight", cpu}, {"b.weight", cuda0}, {"c.weight", cuda1}, {"d.weight", c10::kMeta}};
  DeviceMap to_gpu{c10::Device(c10::kCUDA), {{"c", cuda1}}};
  const std::vector<detail::DeviceMove> moves = detail::PlanDeviceMoves(tensors, to_gpu);
  ASSERT_EQ(moves.size(), 1u);
  EXPECT_EQ(detail::DescribeMove(moves[0]), "a.weight: cpu -> cuda:0");

  const std::vector<detail::DeviceMove> to_cpu = detail::PlanDeviceMoves(tensors, DeviceMap{});
  ASSERT_EQ(to_cpu.size(), 2u);
  EXPECT_EQ(detail::DescribeMove(to_cpu[0]), "b.weight: cuda:0 -> cpu");
  EXPECT_EQ(detail::DescribeMove(to_cpu[1]), "c.weight: cuda:1 -> cpu");
  EXPECT_TRUE(detail::PlanDeviceMoves({{"a.weight", cpu}}, DeviceMap{}).empty());
}

// A module built on the CPU and loaded with device cuda:0 never gets its CPU tensors filled:
// on a GPU machine they move (integration_gpu_tests); here the load fails with rule "device"
// before any byte is read, and the module is left as it was.
TEST(StockModulesTest, RealCpuTensorsAreNeverFilledWhenAGpuIsAskedFor) {
  torch::manual_seed(kSeed);
  torch::nn::Linear linear(8, 4);
  const at::Tensor weight = linear->weight.detach().clone();
  ScratchDir dir;
  const auto path = dir.path() / "linear.safetensors";
  WriteTensors(path, {{"weight", at::zeros({4, 8})}, {"bias", at::zeros({4})}});
  for (const bool move : {true, false}) {
    ModelLoadOptions options;
    options.load.device = "cuda:0";
    options.move_real_tensors = move;
    try {
      const ModelLoadReport report = LoadInto(*linear, path, options);
      // A GPU is here: the tensors moved there (move) or the load refused (no move).
      ASSERT_TRUE(move) << "filled without moving: the rule is broken";
      EXPECT_TRUE(linear->weight.is_cuda());
      EXPECT_EQ(report.moved.size(), 2u);
      return;
    } catch (const LoadError& e) {
      EXPECT_EQ(e.rule(), "device") << e.what();
      EXPECT_TRUE(linear->weight.device().is_cpu());
      EXPECT_TRUE(SameBytes(linear->weight, weight)) << "touched by a failed load";
    }
  }
}

}  // namespace
}  // namespace shardstream
