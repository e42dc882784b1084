// LoadFile and LoadInto onto a GPU (ctest label "gpu"): every fixture, a sharded checkpoint and a
// many-chunk file through a tiny pool byte-identical to the CPU load; casts equal ATen's own cast
// on the device; a second load reuses the pinned staging; a Llama skeleton loaded on the GPU
// equals the CPU one. Skips, with the reason, where there is no GPU.
#include "cuda/device.h"
#include "tests/integration/tensor_checkpoint.h"
#include "tests/support/test_files.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <dirent.h>
#include <filesystem>
#include <gtest/gtest.h>
#include <string>
#include <vector>

#include "shardstream/llama.h"
#include "shardstream/load.h"
#include "shardstream/skeleton.h"

namespace shardstream {
namespace {

namespace fs = std::filesystem;
using testing::NamedTensors;
using testing::SameBytes;
using testing::ScratchDir;
using testing::WriteTensors;

// Skips the test unless a GPU is there; the first CUDA load then must not fail for want of the
// plugin (that is a failure, not a skip).
#define SKIP_WITHOUT_GPU()                                                        \
  do {                                                                            \
    const cuda::DeviceProbe probe = cuda::ProbeDevices();                         \
    if (probe.device_count == 0) GTEST_SKIP() << "no GPU here: " << probe.reason; \
  } while (0)

LoadOptions Cuda(LoadOptions options = {}) {
  options.device = "cuda:0";
  return options;
}

void ExpectSameAsCpu(const fs::path& checkpoint, const LoadOptions& gpu_options) {
  LoadOptions cpu_options = gpu_options;
  cpu_options.device = "cpu";
  const TensorMap cpu = LoadFile(checkpoint, cpu_options);
  LoadReport report;
  const TensorMap gpu = LoadFile(checkpoint, gpu_options, &report);
  ASSERT_EQ(cpu.size(), gpu.size());
  for (const auto& [name, tensor] : cpu) {
    const at::Tensor& on_gpu = gpu.at(name);
    ASSERT_TRUE(on_gpu.is_cuda()) << name;
    ASSERT_TRUE(SameBytes(tensor, on_gpu.cpu())) << checkpoint << ": " << name;
  }
}

TEST(CudaLoadTest, EveryFixtureEqualsTheCpuLoad) {
  SKIP_WITHOUT_GPU();
  // POSIX listing: libtorch from the wheel interposes some std::filesystem functions.
  const std::string folder = SHARDSTREAM_TEST_DATA_DIR "/fixtures";
  std::vector<fs::path> fixtures;
  DIR* dir = ::opendir(folder.c_str());
  ASSERT_NE(dir, nullptr) << folder;
  while (const dirent* entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    if (name.ends_with(".safetensors")) fixtures.push_back(fs::path(folder) / name);
  }
  ::closedir(dir);
  ASSERT_FALSE(fixtures.empty());
  for (const fs::path& fixture : fixtures) {
    SCOPED_TRACE(fixture.string());
    ASSERT_NO_FATAL_FAILURE(ExpectSameAsCpu(fixture, Cuda()));
    LoadOptions buffered = Cuda();
    buffered.direct = DirectIo::kOff;
    ASSERT_NO_FATAL_FAILURE(ExpectSameAsCpu(fixture, buffered));
    LoadOptions direct = Cuda();
    direct.direct = DirectIo::kOn;
    ASSERT_NO_FATAL_FAILURE(ExpectSameAsCpu(fixture, direct));
  }
}

NamedTensors RandomTensors(int count, int64_t elements, c10::ScalarType dtype, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  NamedTensors tensors;
  for (int i = 0; i < count; ++i) {
    // Odd sizes keep tensor boundaries off chunk and element-pair boundaries.
    at::Tensor t = at::normal(0.0, 1.0, {elements + 2 * i + 1}, gen, at::kFloat).to(dtype);
    tensors.emplace_back("t" + std::to_string(i), t);
  }
  return tensors;
}

TEST(CudaLoadTest, ShardedCheckpointAndTinyPoolWithManyChunks) {
  SKIP_WITHOUT_GPU();
  ScratchDir dir;
  const NamedTensors all = RandomTensors(12, 700001, at::kBFloat16, 7);
  WriteTensors(dir.path() / "a.safetensors", NamedTensors(all.begin(), all.begin() + 5));
  WriteTensors(dir.path() / "b.safetensors", NamedTensors(all.begin() + 5, all.end()));
  ASSERT_NO_FATAL_FAILURE(ExpectSameAsCpu(dir.path(), Cuda()));
  LoadOptions tiny = Cuda();
  tiny.chunk_bytes = 1 << 20;     // ~16 chunks in flight over a 2-slot pool:
  tiny.staging_bytes = 3u << 20;  // a slot reused before its copy finished would show
  tiny.queue_depth = 2;
  tiny.direct = DirectIo::kOn;
  ASSERT_NO_FATAL_FAILURE(ExpectSameAsCpu(dir.path(), tiny));
  tiny.direct = DirectIo::kOff;
  ASSERT_NO_FATAL_FAILURE(ExpectSameAsCpu(dir.path(), tiny));
}

// The dtype option casts on the device: the result equals ATen's own cast there, bit for bit.
TEST(CudaLoadTest, CastsEqualAtensOwnCastOnTheDevice) {
  SKIP_WITHOUT_GPU();
  const std::vector<std::pair<c10::ScalarType, c10::ScalarType>> casts = {
      {at::kBFloat16, at::kFloat}, {at::kFloat, at::kBFloat16}, {at::kHalf, at::kBFloat16}};
  for (const auto& [from, to] : casts) {
    SCOPED_TRACE(std::string(c10::toString(from)) + " -> " + c10::toString(to));
    ScratchDir dir;
    // Odd element counts with 2- and 4-byte elements: the plan cuts pieces on elements.
    const NamedTensors tensors = RandomTensors(6, 300001, from, 11);
    WriteTensors(dir.path() / "m.safetensors", tensors);
    LoadOptions options = Cuda();
    options.dtype = to;
    options.chunk_bytes = (1 << 20) + 1;  // chunk boundaries inside elements
    const TensorMap gpu = LoadFile(dir.path() / "m.safetensors", options);
    for (const auto& [name, tensor] : tensors) {
      const at::Tensor expected = tensor.to(at::Device(at::kCUDA, 0)).to(to).cpu();
      ASSERT_TRUE(SameBytes(expected, gpu.at(name).cpu())) << name;
    }
  }
}

TEST(CudaLoadTest, SecondLoadReusesThePinnedStaging) {
  SKIP_WITHOUT_GPU();
  ScratchDir dir;
  WriteTensors(dir.path() / "m.safetensors", RandomTensors(3, 100000, at::kFloat, 3));
  LoadOptions options = Cuda();
  options.staging_bytes = 40u << 20;  // a pool no other test made
  LoadReport first, second;
  (void)LoadFile(dir.path() / "m.safetensors", options, &first);
  (void)LoadFile(dir.path() / "m.safetensors", options, &second);
  EXPECT_FALSE(first.staging_reused);
  EXPECT_GT(first.pin_seconds, 0.0);
  EXPECT_TRUE(second.staging_reused);
  EXPECT_EQ(second.pin_seconds, 0.0);
  EXPECT_GE(second.copy_streams, 1u);
}

// The device tensors come out of one caching-allocator block: one cudaMalloc for the load (none
// when the cache already holds a block that fits), not one per tensor, and no higher peak.
TEST(CudaLoadTest, DeviceTensorsShareOneReservedAllocation) {
  SKIP_WITHOUT_GPU();
  ScratchDir dir;
  // Over 10 MiB each: without the reservation, torch gives each its own cudaMalloc.
  const NamedTensors tensors = RandomTensors(12, (11 << 20) / 4, at::kFloat, 11);
  WriteTensors(dir.path() / "big.safetensors", tensors);
  uint64_t tensor_bytes = 0;
  for (const auto& [name, tensor] : tensors) tensor_bytes += tensor.nbytes();
  LoadReport report;
  const TensorMap gpu = LoadFile(dir.path() / "big.safetensors", Cuda(), &report);
  EXPECT_LE(report.device_allocations, 1u);
  // Rounding: 512 bytes per tensor, a 2 MiB-rounded block.
  EXPECT_LE(report.device_peak_bytes, tensor_bytes + (4u << 20));
  for (const auto& [name, tensor] : tensors) {
    ASSERT_TRUE(SameBytes(tensor, gpu.at(name).cpu())) << name;
  }
}

TEST(CudaLoadTest, WithoutTheReservationEveryLargeTensorIsACudaMalloc) {
  SKIP_WITHOUT_GPU();
  ScratchDir dir;
  const NamedTensors tensors = RandomTensors(6, (13 << 20) / 4, at::kFloat, 13);
  WriteTensors(dir.path() / "big.safetensors", tensors);
  LoadOptions options = Cuda();
  options.reserve_device_memory = false;
  LoadReport report;
  const TensorMap gpu = LoadFile(dir.path() / "big.safetensors", options, &report);
  // Each test runs in its own process (gtest_discover_tests): nothing was cached before.
  EXPECT_EQ(report.device_allocations, tensors.size());
  for (const auto& [name, tensor] : tensors) {
    ASSERT_TRUE(SameBytes(tensor, gpu.at(name).cpu())) << name;
  }
}

TEST(CudaLoadTest, ZeroCopyOntoAGpuIsRefused) {
  SKIP_WITHOUT_GPU();
  LoadOptions options = Cuda();
  options.zero_copy = true;
  try {
    (void)LoadFile(SHARDSTREAM_TEST_DATA_DIR "/fixtures/mixed.safetensors", options);
    FAIL() << "zero-copy onto cuda:0 loaded";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.rule(), "device") << e.what();
  }
}

TEST(CudaLoadTest, LlamaSkeletonOnTheGpuEqualsTheCpuOne) {
  SKIP_WITHOUT_GPU();
  LlamaConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 176;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 256;
  c.rope.dim = 16;
  c.rope.theta = 500000.0;
  ScratchDir dir;
  // A bf16 checkpoint loaded into an f32 model: every tensor is cast on the device.
  NamedTensors state;
  at::Generator gen = at::detail::createCPUGenerator(5);
  {
    auto probe = std::make_shared<LlamaForCausalLM>(c, SkeletonOptions(at::kFloat));
    for (const auto& item : probe->named_parameters()) {
      state.emplace_back(
          item.key(),
          at::normal(0.0, 0.05, item.value().sizes(), gen, at::kFloat).to(at::kBFloat16));
    }
  }
  WriteTensors(dir.path() / "model.safetensors", state);
  auto on_cpu = std::make_shared<LlamaForCausalLM>(c, SkeletonOptions(at::kFloat));
  auto on_gpu = std::make_shared<LlamaForCausalLM>(c, SkeletonOptions(at::kFloat));
  ModelLoadOptions cpu_options = LlamaLoadOptions();
  ModelLoadOptions gpu_options = LlamaLoadOptions();
  gpu_options.load.device = "cuda:0";
  (void)LoadInto(*on_cpu, dir.path(), cpu_options);
  const ModelLoadReport report = LoadInto(*on_gpu, dir.path(), gpu_options);
  EXPECT_EQ(report.cast.size(), state.size());
  auto gpu_params = on_gpu->named_parameters();
  for (const auto& item : on_cpu->named_parameters()) {
    const at::Tensor& g = gpu_params[item.key()];
    ASSERT_TRUE(g.is_cuda()) << item.key();
    ASSERT_TRUE(SameBytes(item.value(), g.cpu())) << item.key();
  }
  auto gpu_buffers = on_gpu->named_buffers();
  for (const auto& item : on_cpu->named_buffers()) {
    EXPECT_TRUE(at::allclose(item.value(), gpu_buffers[item.key()].cpu(), 1e-6, 1e-6))
        << item.key();
  }
}

}  // namespace
}  // namespace shardstream
