// Meta skeletons, Materialize and LoadInto: allocation counts, identity of materialised tensors,
// bytes against LoadFile and an independent writer, key reports, renames, tied weights, casts,
// non-persistent buffers.
#include "shardstream/skeleton.h"

#include "tests/integration/tensor_checkpoint.h"
#include "tests/support/test_files.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>

#include <cstdio>
#include <fstream>
#include <gtest/gtest.h>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "shardstream/layers.h"
#include "shardstream/llama.h"

namespace shardstream {
namespace {

using testing::CountingCpuAllocator;
using testing::NamedTensors;
using testing::SameBytes;
using testing::ScratchDir;
using testing::WriteTensors;

constexpr uint64_t kSeed = 20240611;

LlamaConfig TinyConfig(bool tie = false) {
  LlamaConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 176;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 256;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = tie;
  c.rope.dim = 16;
  c.rope.theta = 500000.0;
  return c;
}

// transformers' state_dict names and shapes for `c`, written out independently of the model.
std::vector<std::pair<std::string, std::vector<int64_t>>> HfShapes(const LlamaConfig& c) {
  const int64_t h = c.hidden_size, kv = c.num_key_value_heads * c.head_dim;
  const int64_t q = c.num_attention_heads * c.head_dim, inter = c.intermediate_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"model.embed_tokens.weight", {c.vocab_size, h}}};
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    shapes.push_back({p + "self_attn.q_proj.weight", {q, h}});
    shapes.push_back({p + "self_attn.k_proj.weight", {kv, h}});
    shapes.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    shapes.push_back({p + "self_attn.o_proj.weight", {h, q}});
    shapes.push_back({p + "mlp.gate_proj.weight", {inter, h}});
    shapes.push_back({p + "mlp.up_proj.weight", {inter, h}});
    shapes.push_back({p + "mlp.down_proj.weight", {h, inter}});
    shapes.push_back({p + "input_layernorm.weight", {h}});
    shapes.push_back({p + "post_attention_layernorm.weight", {h}});
  }
  shapes.push_back({"model.norm.weight", {h}});
  if (!c.tie_word_embeddings) shapes.push_back({"lm_head.weight", {c.vocab_size, h}});
  return shapes;
}

// Random weights with those names (norm weights near 1, others small), seeded.
NamedTensors RandomState(const LlamaConfig& c, c10::ScalarType dtype, uint64_t seed = kSeed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  NamedTensors state;
  for (const auto& [name, shape] : HfShapes(c)) {
    at::Tensor t = at::normal(0.0, 0.05, shape, gen, at::TensorOptions().dtype(at::kFloat));
    if (name.ends_with("norm.weight")) t = t + 1.0;
    state.emplace_back(name, t.to(dtype));
  }
  return state;
}

std::shared_ptr<LlamaForCausalLM> Skeleton(const LlamaConfig& c, c10::ScalarType dtype) {
  return std::make_shared<LlamaForCausalLM>(c, SkeletonOptions(dtype));
}

at::Tensor Param(torch::nn::Module& m, const std::string& name) {
  auto params = m.named_parameters();
  if (const at::Tensor* t = params.find(name)) return *t;
  auto buffers = m.named_buffers();
  if (const at::Tensor* t = buffers.find(name)) return *t;
  throw std::runtime_error("no tensor " + name);
}

uint64_t UniqueBytes(torch::nn::Module& m) {
  std::set<const c10::TensorImpl*> seen;
  uint64_t bytes = 0;
  for (const auto& t : m.parameters()) {
    if (seen.insert(t.unsafeGetTensorImpl()).second) bytes += t.nbytes();
  }
  for (const auto& t : m.buffers()) {
    if (seen.insert(t.unsafeGetTensorImpl()).second) bytes += t.nbytes();
  }
  return bytes;
}

// Names of the ATen operators run on this thread while it lives.
class OpRecorder {
 public:
  OpRecorder() {
    Ops().clear();
    handle_ = at::addThreadLocalCallback(
        at::RecordFunctionCallback(&OnStart).scopes({at::RecordScope::FUNCTION}));
  }
  ~OpRecorder() { at::removeCallback(handle_); }
  static std::vector<std::string>& Ops() {
    static std::vector<std::string> ops;
    return ops;
  }

 private:
  static std::unique_ptr<at::ObserverContext> OnStart(const at::RecordFunction& fn) {
    Ops().emplace_back(fn.name());
    return nullptr;
  }
  at::CallbackHandle handle_;
};

TEST(MaterializeTest, KeepsTheModuleMemberAndNamedParametersOnOneTensor) {
  Linear layer(8, 4, /*with_bias=*/true, SkeletonOptions(at::kFloat));
  const c10::TensorImpl* impl = layer.weight.unsafeGetTensorImpl();
  ASSERT_TRUE(layer.weight.is_meta());
  ASSERT_EQ(layer.named_parameters()["weight"].unsafeGetTensorImpl(), impl);

  const MaterializeStats stats = Materialize(layer);
  EXPECT_EQ(stats.tensors, 2u);
  EXPECT_EQ(stats.bytes, (8 * 4 + 4) * sizeof(float));
  at::Tensor listed = layer.named_parameters()["weight"];
  EXPECT_EQ(layer.weight.unsafeGetTensorImpl(), impl);
  EXPECT_EQ(listed.unsafeGetTensorImpl(), impl);
  EXPECT_TRUE(layer.weight.device().is_cpu());
  EXPECT_FALSE(layer.weight.is_meta());
  EXPECT_EQ(layer.weight.sizes(), (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(layer.weight.scalar_type(), at::kFloat);
  EXPECT_TRUE(layer.weight.requires_grad());  // autograd metadata kept
  EXPECT_NE(layer.weight.data_ptr(), nullptr);
  EXPECT_EQ(listed.data_ptr(), layer.weight.data_ptr());
  // A write through the member is visible through named_parameters(), and the layer computes.
  {
    at::NoGradGuard no_grad;
    layer.weight.fill_(0.5);
    layer.bias.fill_(1.0);
  }
  EXPECT_EQ(listed.sum().item<float>(), 0.5f * 32);
  at::NoGradGuard no_grad;
  const at::Tensor y = layer.forward(at::ones({1, 8}));
  EXPECT_TRUE(at::equal(y, at::full({1, 4}, 5.0f)));
}

TEST(MaterializeTest, SkeletonBuildAllocatesNothingAndRunsOnlyMetaEmpty) {
  LlamaConfig c = TinyConfig();
  c.num_hidden_layers = 8;
  CountingCpuAllocator counting;
  std::shared_ptr<LlamaForCausalLM> model;
  std::vector<std::string> ops;
  {
    OpRecorder recorder;
    model = Skeleton(c, at::kBFloat16);
    ops = OpRecorder::Ops();
  }
  EXPECT_EQ(counting.bytes(), 0u);
  EXPECT_EQ(counting.allocations(), 0u);
  // Every operator that ran is an empty() (on meta: no kernel touches memory); no init kernel
  // (normal_, uniform_, fill_, zero_, ...) ran.
  ASSERT_FALSE(ops.empty()) << "the op recorder saw nothing: it would prove nothing";
  for (const std::string& op : ops) EXPECT_EQ(op, "aten::empty") << op;
  for (const auto& t : model->parameters()) EXPECT_TRUE(t.is_meta());
  for (const auto& t : model->buffers()) EXPECT_TRUE(t.is_meta());
}

TEST(MaterializeTest, AllocatesExactlyTheParameterAndBufferBytes) {
  const LlamaConfig c = TinyConfig();
  auto model = Skeleton(c, at::kBFloat16);
  // Expected from the config alone: bf16 parameters plus the float32 inv_freq [head_dim / 2].
  uint64_t elements = 0;
  for (const auto& [name, shape] : HfShapes(c)) {
    uint64_t n = 1;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    elements += n;
  }
  const uint64_t expected = elements * 2 + (c.head_dim / 2) * 4;

  CountingCpuAllocator counting;
  const MaterializeStats stats = Materialize(*model);
  EXPECT_EQ(counting.bytes(), expected);
  EXPECT_EQ(stats.bytes, expected);
  EXPECT_EQ(counting.allocations(), stats.tensors);
  EXPECT_EQ(UniqueBytes(*model), expected);
  for (const auto& t : model->parameters()) EXPECT_TRUE(t.device().is_cpu());
  // A second call finds nothing left on meta.
  counting.Reset();
  EXPECT_EQ(Materialize(*model).bytes, 0u);
  EXPECT_EQ(counting.bytes(), 0u);
}

TEST(MaterializeTest, TiedWeightsGetOneStorage) {
  auto model = Skeleton(TinyConfig(/*tie=*/true), at::kFloat);
  CountingCpuAllocator counting;
  Materialize(*model);
  const at::Tensor embed = Param(*model, "model.embed_tokens.weight");
  const at::Tensor head = Param(*model, "lm_head.weight");
  EXPECT_EQ(embed.unsafeGetTensorImpl(), head.unsafeGetTensorImpl());
  EXPECT_EQ(embed.data_ptr(), model->lm_head->weight.data_ptr());
  EXPECT_EQ(counting.bytes(), UniqueBytes(*model));
}

TEST(MaterializeTest, DeviceMapPicksTheLongestWholeModulePrefix) {
  DeviceMap map;
  map.fallback = c10::Device("cuda:3");
  map.prefixes = {{"model", c10::Device("cuda:0")}, {"model.layers.1", c10::Device("cuda:1")}};
  EXPECT_EQ(map.For("model.layers.1.mlp.up_proj.weight"), c10::Device("cuda:1"));
  EXPECT_EQ(map.For("model.layers.10.mlp.up_proj.weight"), c10::Device("cuda:0"));
  EXPECT_EQ(map.For("model.layers.1"), c10::Device("cuda:1"));
  EXPECT_EQ(map.For("lm_head.weight"), c10::Device("cuda:3"));
  EXPECT_EQ(map.For("modelx.weight"), c10::Device("cuda:3"));
}

struct Mode {
  std::string name;
  LoadOptions options;
};

std::vector<Mode> Modes() {
  LoadOptions pread;
  pread.io = IoMode::kPread;
  pread.direct = DirectIo::kOff;
  pread.chunk_bytes = 64 << 10;  // many chunks, tensors split across them
  LoadOptions mmap = pread;
  mmap.io = IoMode::kMmap;
  LoadOptions direct = pread;
  direct.direct = DirectIo::kOn;
  direct.staging_bytes = 1 << 20;
  LoadOptions uring = pread;
  uring.io = IoMode::kUring;
  return {{"pread", pread}, {"mmap", mmap}, {"direct", direct}, {"uring", uring}};
}

void PrintTo(const Mode& mode, std::ostream* os) { *os << mode.name; }

class LoadIntoModeTest : public ::testing::TestWithParam<Mode> {};

TEST_P(LoadIntoModeTest, ParametersAreByteIdenticalToLoadFile) {
  const LlamaConfig c = TinyConfig();
  ScratchDir dir;
  const auto path = dir.path() / "model.safetensors";
  const NamedTensors state = RandomState(c, at::kBFloat16);
  WriteTensors(path, state);

  auto model = Skeleton(c, at::kBFloat16);
  ModelLoadOptions options = LlamaLoadOptions();
  options.load = GetParam().options;
  const ModelLoadReport report = LoadInto(*model, path, options);
  EXPECT_TRUE(report.missing.empty());
  EXPECT_TRUE(report.unexpected.empty());
  EXPECT_TRUE(report.mismatched.empty());
  EXPECT_TRUE(report.cast.empty());
  EXPECT_EQ(report.reinitialized, std::vector<std::string>{"model.rotary_emb.inv_freq"});
  EXPECT_EQ(report.tensors, state.size());
  EXPECT_EQ(report.direct, GetParam().options.direct == DirectIo::kOn);

  const TensorMap reference = LoadFile(path, GetParam().options);
  ASSERT_EQ(reference.size(), state.size());
  size_t compared = 0;
  for (const auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    ASSERT_TRUE(reference.count(name)) << name;
    EXPECT_TRUE(SameBytes(item.value(), reference.at(name))) << name;
    ++compared;
  }
  EXPECT_EQ(compared, state.size());
  for (const auto& [name, tensor] : state) EXPECT_TRUE(SameBytes(Param(*model, name), tensor));
}

INSTANTIATE_TEST_SUITE_P(Modes, LoadIntoModeTest, ::testing::ValuesIn(Modes()),
                         [](const auto& p) { return p.param.name; });

TEST(LoadIntoTest, StreamsIntoTheMaterialisedStorageWithoutASecondCopy) {
  const LlamaConfig c = TinyConfig();
  ScratchDir dir;
  const auto path = dir.path() / "model.safetensors";
  WriteTensors(path, RandomState(c, at::kFloat));
  auto model = Skeleton(c, at::kFloat);
  Materialize(*model);
  std::map<std::string, const void*> before;
  for (const auto& item : model->named_parameters()) before[item.key()] = item.value().data_ptr();

  CountingCpuAllocator counting;
  LoadInto(*model, path, LlamaLoadOptions());
  for (const auto& item : model->named_parameters()) {
    EXPECT_EQ(item.value().data_ptr(), before[item.key()]) << item.key();
  }
  // No tensor map, no staging copy through torch: the only torch allocations are the few
  // temporaries of the inv_freq computation, far below one copy of the weights.
  EXPECT_LT(counting.bytes(), UniqueBytes(*model) / 10);
}

TEST(LoadIntoTest, ForwardEqualsAModelFilledByPerTensorCopies) {
  const LlamaConfig c = TinyConfig();
  ScratchDir dir;
  const auto path = dir.path() / "model.safetensors";
  WriteTensors(path, RandomState(c, at::kFloat));

  auto loaded = Skeleton(c, at::kFloat);
  LoadInto(*loaded, path, LlamaLoadOptions());

  // The independent path: LoadFile's map, one copy_ per tensor by name.
  auto copied = Skeleton(c, at::kFloat);
  Materialize(*copied);
  at::NoGradGuard no_grad;
  const TensorMap weights = LoadFile(path);
  for (auto& item : copied->named_parameters()) item.value().copy_(weights.at(item.key()));
  copied->model->rotary_emb->inv_freq.copy_(copied->model->rotary_emb->ComputeInvFreq(c10::kCPU));

  const at::Tensor ids =
      at::tensor(std::vector<int64_t>{1, 17, 42, 255, 0, 9}, at::kLong).view({1, 6});
  const at::Tensor a = loaded->forward(ids);
  const at::Tensor b = copied->forward(ids);
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{1, 6, c.vocab_size}));
  EXPECT_TRUE(at::isfinite(a).all().item<bool>());
  EXPECT_GT(a.abs().max().item<float>(), 0.0f);
  EXPECT_TRUE(at::equal(a, b));
}

TEST(LoadIntoTest, StrictLoadNamesMissingUnexpectedAndMismatchedKeys) {
  const LlamaConfig c = TinyConfig();
  ScratchDir dir;
  NamedTensors state = RandomState(c, at::kBFloat16);
  state.erase(state.begin() + 3);  // model.layers.0.self_attn.v_proj.weight
  state.emplace_back("model.extra.weight", at::zeros({3}, at::kBFloat16));
  for (auto& [name, t] : state) {
    if (name == "model.norm.weight") t = at::zeros({c.hidden_size + 1}, at::kBFloat16);
  }
  const auto path = dir.path() / "model.safetensors";
  WriteTensors(path, state);
  auto model = Skeleton(c, at::kBFloat16);
  try {
    LoadInto(*model, path, LlamaLoadOptions());
    FAIL() << "strict load accepted bad keys";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.rule(), "keys");
    const std::string what = e.what();
    EXPECT_NE(what.find("1 missing (model.layers.0.self_attn.v_proj.weight)"), std::string::npos)
        << what;
    EXPECT_NE(what.find("1 unexpected (model.extra.weight)"), std::string::npos) << what;
    EXPECT_NE(what.find("model.norm.weight: checkpoint [65], model [64]"), std::string::npos)
        << what;
    EXPECT_NE(what.find(path.string()), std::string::npos) << what;
  }
  // Nothing was allocated: the keys were checked before materialising.
  for (const auto& t : model->parameters()) EXPECT_TRUE(t.is_meta());
}

TEST(LoadIntoTest, NonStrictLoadReportsKeysAndZeroFillsWhatItCouldNotLoad) {
  const LlamaConfig c = TinyConfig();
  ScratchDir dir;
  NamedTensors state = RandomState(c, at::kBFloat16);
  state.erase(state.begin() + 3);
  state.emplace_back("model.extra.weight", at::zeros({3}, at::kBFloat16));
  for (auto& [name, t] : state) {
    if (name == "model.norm.weight") t = at::ones({c.hidden_size + 1}, at::kBFloat16);
  }
  const auto path = dir.path() / "model.safetensors";
  WriteTensors(path, state);
  auto model = Skeleton(c, at::kBFloat16);
  ModelLoadOptions options = LlamaLoadOptions();
  options.strict = false;
  const ModelLoadReport report = LoadInto(*model, path, options);
  EXPECT_EQ(report.missing, std::vector<std::string>{"model.layers.0.self_attn.v_proj.weight"});
  EXPECT_EQ(report.unexpected, std::vector<std::string>{"model.extra.weight"});
  ASSERT_EQ(report.mismatched.size(), 1u);
  EXPECT_EQ(report.mismatched[0].name, "model.norm.weight");
  EXPECT_EQ(report.mismatched[0].checkpoint_shape, (std::vector<int64_t>{c.hidden_size + 1}));
  EXPECT_EQ(report.mismatched[0].model_shape, (std::vector<int64_t>{c.hidden_size}));
  EXPECT_EQ(Param(*model, "model.layers.0.self_attn.v_proj.weight").count_nonzero().item<int64_t>(),
            0);
  EXPECT_EQ(Param(*model, "model.norm.weight").count_nonzero().item<int64_t>(), 0);
  for (const auto& [name, t] : state) {
    if (name == "model.extra.weight" || name == "model.norm.weight") continue;
    EXPECT_TRUE(SameBytes(Param(*model, name), t)) << name;
  }
}

TEST(LoadIntoTest, RenameRulesMapCheckpointNames) {
  const LlamaConfig c = TinyConfig();
  ScratchDir dir;
  const NamedTensors state = RandomState(c, at::kBFloat16);
  // A checkpoint with another naming scheme: "transformer." prefix, "h.N." for "layers.N.".
  NamedTensors renamed;
  for (const auto& [name, t] : state) {
    std::string other = std::regex_replace(name, std::regex(R"(^model\.layers\.(\d+)\.)"), "h.$1.");
    renamed.emplace_back("transformer." + other, t);
  }
  const auto path = dir.path() / "model.safetensors";
  WriteTensors(path, renamed);

  auto model = Skeleton(c, at::kBFloat16);
  ModelLoadOptions options = LlamaLoadOptions();
  options.renames = {Rename::StripPrefix("transformer"),
                     Rename::Regex(R"(^h\.(\d+)\.)", "model.layers.$1.")};
  const ModelLoadReport report = LoadInto(*model, path, options);
  EXPECT_TRUE(report.unexpected.empty());
  for (const auto& [name, t] : state) EXPECT_TRUE(SameBytes(Param(*model, name), t)) << name;

  // Without the rules every name is unexpected.
  auto other = Skeleton(c, at::kBFloat16);
  EXPECT_THROW(LoadInto(*other, path, LlamaLoadOptions()), LoadError);
  EXPECT_THROW(Rename::Regex("(", "x"), LoadError);
  EXPECT_EQ(Rename::AddPrefix("model").Apply("norm.weight"), "model.norm.weight");
  EXPECT_EQ(Rename::StripPrefix("model").Apply("modelx.norm"), "modelx.norm");
}

TEST(LoadIntoTest, BaseModelPrefixIsAddedOrStripped) {
  ScratchDir dir;
  // A LlamaModel checkpoint (names without "model.") into LlamaForCausalLM with tied embeddings:
  // strict passes, since lm_head is the embedding.
  const LlamaConfig tied = TinyConfig(/*tie=*/true);
  NamedTensors base;
  for (const auto& [name, t] : RandomState(tied, at::kFloat)) base.emplace_back(name.substr(6), t);
  const auto base_path = dir.path() / "base.safetensors";
  WriteTensors(base_path, base);
  auto model = Skeleton(tied, at::kFloat);
  const ModelLoadReport report = LoadInto(*model, base_path, LlamaLoadOptions());
  EXPECT_TRUE(report.missing.empty());
  for (const auto& [name, t] : base) EXPECT_TRUE(SameBytes(Param(*model, "model." + name), t));

  // A LlamaForCausalLM checkpoint into a bare LlamaModel: "model." stripped, lm_head unexpected.
  const LlamaConfig c = TinyConfig();
  const NamedTensors full = RandomState(c, at::kFloat);
  const auto full_path = dir.path() / "full.safetensors";
  WriteTensors(full_path, full);
  LlamaModel bare(c, SkeletonOptions(at::kFloat));
  ModelLoadOptions options = LlamaLoadOptions();
  options.strict = false;
  const ModelLoadReport bare_report = LoadInto(bare, full_path, options);
  EXPECT_EQ(bare_report.unexpected, std::vector<std::string>{"lm_head.weight"});
  EXPECT_TRUE(bare_report.missing.empty());
  EXPECT_TRUE(SameBytes(bare.norm->weight, full[full.size() - 2].second));
}

TEST(LoadIntoTest, TiedWeightsLoadOnceShareStorageAndAreNeverMissing) {
  const LlamaConfig c = TinyConfig(/*tie=*/true);
  ScratchDir dir;
  const NamedTensors state = RandomState(c, at::kFloat);  // no lm_head.weight
  const auto path = dir.path() / "model.safetensors";
  WriteTensors(path, state);
  auto model = Skeleton(c, at::kFloat);
  const ModelLoadReport report = LoadInto(*model, path, LlamaLoadOptions());
  EXPECT_TRUE(report.missing.empty());
  EXPECT_EQ(report.tied, std::vector<std::string>{"lm_head.weight"});
  EXPECT_EQ(report.tensors, state.size());
  EXPECT_EQ(model->lm_head->weight.data_ptr(), model->model->embed_tokens->weight.data_ptr());
  EXPECT_TRUE(SameBytes(model->lm_head->weight, state[0].second));

  // A checkpoint that also holds lm_head.weight (as some exporters write): loaded once from the
  // embedding, the duplicate ignored, not unexpected.
  NamedTensors both = state;
  both.emplace_back("lm_head.weight", at::zeros_like(state[0].second));
  const auto both_path = dir.path() / "both.safetensors";
  WriteTensors(both_path, both);
  auto again = Skeleton(c, at::kFloat);
  const ModelLoadReport both_report = LoadInto(*again, both_path, LlamaLoadOptions());
  EXPECT_TRUE(both_report.unexpected.empty());
  EXPECT_EQ(both_report.ignored, std::vector<std::string>{"lm_head.weight"});
  EXPECT_TRUE(SameBytes(again->lm_head->weight, state[0].second));
}

class CastTest : public ::testing::TestWithParam<std::pair<c10::ScalarType, c10::ScalarType>> {};

TEST_P(CastTest, EqualsAtensOwnCast) {
  const auto [file_dtype, model_dtype] = GetParam();
  const LlamaConfig c = TinyConfig();
  ScratchDir dir;
  const NamedTensors state = RandomState(c, file_dtype);
  const auto path = dir.path() / "model.safetensors";
  WriteTensors(path, state);
  auto model = Skeleton(c, model_dtype);
  ModelLoadOptions options = LlamaLoadOptions();
  options.load.staging_bytes = 40 << 10;  // smaller than the embedding: many scratch batches
  options.load.direct = DirectIo::kOff;
  const ModelLoadReport report = LoadInto(*model, path, options);
  EXPECT_EQ(report.cast.size(), state.size());
  for (const auto& [name, t] : state) {
    const at::Tensor loaded = Param(*model, name);
    EXPECT_EQ(loaded.scalar_type(), model_dtype);
    EXPECT_TRUE(SameBytes(loaded, at::_to_copy(t, model_dtype))) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CastTest,
                         ::testing::Values(std::pair{at::kBFloat16, at::kFloat},
                                           std::pair{at::kFloat, at::kBFloat16},
                                           std::pair{at::kHalf, at::kBFloat16}),
                         [](const auto& p) {
                           return std::string(c10::toString(p.param.first)) + "To" +
                                  c10::toString(p.param.second);
                         });

TEST(LoadIntoTest, LegacyInvFreqInTheCheckpointIsIgnoredNotUnexpected) {
  const LlamaConfig c = TinyConfig();
  ScratchDir dir;
  NamedTensors state = RandomState(c, at::kBFloat16);
  // transformers < 4.31 saved a (stale, here deliberately wrong) inv_freq per layer.
  state.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", at::full({8}, 7.0f));
  state.emplace_back("model.layers.1.self_attn.rotary_emb.inv_freq", at::full({8}, 7.0f));
  state.emplace_back("model.rotary_emb.inv_freq", at::full({8}, 7.0f));
  const auto path = dir.path() / "model.safetensors";
  WriteTensors(path, state);
  auto model = Skeleton(c, at::kBFloat16);
  const ModelLoadReport report = LoadInto(*model, path, LlamaLoadOptions());  // strict
  EXPECT_TRUE(report.unexpected.empty());
  EXPECT_EQ(report.ignored.size(), 3u);
  EXPECT_EQ(report.reinitialized, std::vector<std::string>{"model.rotary_emb.inv_freq"});
  EXPECT_TRUE(SameBytes(model->model->rotary_emb->inv_freq,
                        model->model->rotary_emb->ComputeInvFreq(c10::kCPU)));
  EXPECT_NE(model->model->rotary_emb->inv_freq[0].item<float>(), 7.0f);
}

// A module with a persistent buffer and a position-ids buffer declared by pattern.
class WithBuffers : public torch::nn::Module {
 public:
  explicit WithBuffers(const torch::TensorOptions& options) {
    table = register_buffer("table", at::empty({4}, options));
    position_ids = register_buffer("position_ids", at::empty({6}, options.dtype(at::kLong)));
  }
  at::Tensor table, position_ids;
};

TEST(LoadIntoTest, BuffersAreReinitialisedByPatternOrMissingWithoutAnInitialiser) {
  ScratchDir dir;
  const auto path = dir.path() / "model.safetensors";
  WriteTensors(path, {{"table", at::arange(4, at::kFloat)}});
  BufferRegistry registry;
  registry.AddForPattern(R"((.*\.)?position_ids)", [](torch::nn::Module&, at::Tensor& buffer) {
    buffer.copy_(at::arange(buffer.numel(), buffer.options()));
  });
  WithBuffers module(SkeletonOptions(at::kFloat));
  ModelLoadOptions options;
  options.buffers = &registry;
  const ModelLoadReport report = LoadInto(module, path, options);
  EXPECT_EQ(report.reinitialized, std::vector<std::string>{"position_ids"});
  EXPECT_TRUE(at::equal(module.position_ids, at::arange(6, at::kLong)));
  EXPECT_TRUE(at::equal(module.table, at::arange(4, at::kFloat)));

  // With the default registry position_ids has no initialiser: a missing key, never left
  // uninitialised.
  WithBuffers plain(SkeletonOptions(at::kFloat));
  try {
    LoadInto(plain, path);
    FAIL() << "a buffer with neither checkpoint entry nor initialiser loaded";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.rule(), "keys");
    EXPECT_NE(std::string(e.what()).find("1 missing (position_ids)"), std::string::npos);
  }
}

// Whether the mapping holding `address` in this process was madvised MADV_HUGEPAGE ("hg" in its
// VmFlags line of /proc/self/smaps).
bool MadvisedHugePages(const void* address) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<uintptr_t>(address);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &begin, &end) == 2 && line.find(':') > 8) {
      inside = begin <= at && at < end;
    } else if (inside && line.starts_with("VmFlags:")) {
      return line.find(" hg") != std::string::npos;
    }
  }
  return false;
}

TEST(LoadIntoTest, HugePagesBackTheMaterialisedHostTensors) {
  ScratchDir dir;
  const auto path = dir.path() / "model.safetensors";
  at::Generator gen = at::detail::createCPUGenerator(kSeed);
  const at::Tensor weight = at::normal(0.0, 1.0, {1024, 1024}, gen);  // 4 MiB: two huge pages
  WriteTensors(path, {{"weight", weight}});
  for (const bool huge : {true, false}) {
    Linear layer(1024, 1024, false, SkeletonOptions(at::kFloat));
    ModelLoadOptions options;
    options.load.huge_pages = huge;
    LoadInto(layer, path, options);
    EXPECT_TRUE(SameBytes(layer.weight, weight));
    EXPECT_EQ(MadvisedHugePages(layer.weight.data_ptr()), huge) << "huge_pages " << huge;
  }
}

// A module whose parameter is a transposed view: the fill core writes it through its strides.
struct TransposedParameter : torch::nn::Module {
  explicit TransposedParameter(c10::ScalarType dtype)
      : weight(register_parameter("weight",
                                  at::full({3, 5}, -1.0, at::TensorOptions().dtype(dtype)).t())) {}
  at::Tensor weight;
};

TEST(LoadIntoTest, AStridedParameterIsFilledThroughItsStrides) {
  ScratchDir dir;
  const auto path = dir.path() / "model.safetensors";
  const at::Tensor reference =
      at::arange(15, at::TensorOptions().dtype(at::kFloat)).reshape({5, 3});
  WriteTensors(path, {{"weight", reference.to(at::kBFloat16)}});
  for (const c10::ScalarType dtype : {at::kBFloat16, at::kFloat}) {  // raw, then a cast
    TransposedParameter module(dtype);
    ASSERT_FALSE(module.weight.is_contiguous());
    const ModelLoadReport report = LoadInto(module, path);
    EXPECT_TRUE(at::equal(module.weight.to(at::kFloat), reference)) << c10::toString(dtype);
    EXPECT_EQ(report.cast.size(), dtype == at::kFloat ? 1u : 0u);
  }
}

TEST(LoadIntoTest, RejectsOptionsThatCannotApply) {
  ScratchDir dir;
  const auto path = dir.path() / "model.safetensors";
  WriteTensors(path, {{"weight", at::zeros({2, 2})}});
  Linear layer(2, 2, false, SkeletonOptions(at::kFloat));
  ModelLoadOptions options;
  options.load.zero_copy = true;
  EXPECT_THROW(LoadInto(layer, path, options), LoadError);
  options.load.zero_copy = false;
  options.load.dtype = at::kHalf;
  EXPECT_THROW(LoadInto(layer, path, options), LoadError);
}

}  // namespace
}  // namespace shardstream
