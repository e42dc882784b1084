// The CUDA sink on a real GPU, through the real staged pipeline and pinned pools: byte-exact
// against the CPU loader, with tiny pools, with copies overlapping, and failing cleanly. Every
// test skips, with the reason, where there is no GPU.
#include "cuda/cuda_sink.h"
#include "cuda/device.h"
#include "cuda/device_ops.h"
#include "cuda/error.h"
#include "cuda/pinned_pool.h"
#include "engine/pipeline.h"
#include "io/checkpoint.h"
#include "io/read_backend.h"
#include "tests/engine/fault_backend.h"
#include "tests/engine/pattern_checkpoint.h"
#include "tests/support/copy_timeline.h"
#include "tests/support/test_files.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <chrono>
#include <gtest/gtest.h>
#include <string>
#include <vector>

namespace shardstream::cuda {
namespace {

using engine::testing::PatternFile;
using shardstream::testing::ScratchDir;

#define SHARDSTREAM_REQUIRE_GPU()                                            \
  do {                                                                       \
    DeviceProbe probe = ProbeDevices();                                      \
    if (probe.device_count == 0) GTEST_SKIP() << "no GPU: " << probe.reason; \
  } while (0)

// Device memory for every tensor of a checkpoint, one allocation, each target 256-byte aligned.
struct DeviceLoad {
  std::vector<engine::Target> targets;
  std::vector<uint64_t> sizes;
  std::byte* base = nullptr;
  uint64_t total = 0;

  explicit DeviceLoad(const io::Checkpoint& checkpoint) {
    std::vector<uint64_t> offsets;
    for (uint32_t f = 0; f < checkpoint.files.size(); ++f) {
      for (uint32_t i = 0; i < checkpoint.files[f].header.tensors.size(); ++i) {
        const uint64_t size = checkpoint.files[f].header.tensors[i].size_bytes();
        offsets.push_back(total);
        sizes.push_back(size);
        targets.push_back(engine::Target{{f, i}, nullptr});
        total += (size + 255) / 256 * 256;
      }
    }
    void* p = nullptr;
    SHARDSTREAM_CUDA_TRY(cudaMalloc(&p, std::max<uint64_t>(total, 1)));
    SHARDSTREAM_CUDA_TRY(cudaMemset(p, 0xAA, std::max<uint64_t>(total, 1)));
    base = static_cast<std::byte*>(p);
    for (size_t k = 0; k < targets.size(); ++k) targets[k].destination = base + offsets[k];
  }
  ~DeviceLoad() { SHARDSTREAM_CUDA_TRY_NOTHROW(cudaFree(base)); }

  // Copies every target back and compares it with the CPU loader's bytes.
  void ExpectEqualsCpuLoad(const io::Checkpoint& checkpoint) const {
    std::vector<std::vector<std::byte>> cpu(targets.size());
    std::vector<engine::Target> cpu_targets = targets;
    for (size_t k = 0; k < targets.size(); ++k) {
      cpu[k].assign(sizes[k], std::byte{0x55});
      cpu_targets[k].destination = cpu[k].data();
    }
    engine::PipelineOptions in_place;
    in_place.staged = false;
    auto filled = engine::RunPipeline(checkpoint, cpu_targets, nullptr, in_place);
    ASSERT_TRUE(filled.ok()) << filled.status().ToString();
    for (size_t k = 0; k < targets.size(); ++k) {
      std::vector<std::byte> back(sizes[k]);
      ASSERT_EQ(cudaMemcpy(back.data(), targets[k].destination, sizes[k], cudaMemcpyDeviceToHost),
                cudaSuccess);
      ASSERT_TRUE(back == cpu[k]) << checkpoint.tensor(targets[k].source).name << " differs";
    }
  }
};

struct LoadResult {
  io::Result<engine::PipelineStats> stats = io::Status::Ok();
  CudaSinkStats sink;
  bool idle_after = false;
};

// Loads through CudaSink over the runtime with `pool`.
LoadResult Load(const io::Checkpoint& checkpoint, const DeviceLoad& device,
                engine::StagingPool* pool, uint64_t chunk_bytes, CudaSinkOptions sink_options = {},
                engine::BackendFactory make_backend = {}) {
  LoadResult result;
  auto ops = MakeCudaRuntimeOps(0);
  EXPECT_TRUE(ops.ok()) << ops.status().ToString();
  if (!ops.ok()) return result;
  auto sink =
      CudaSink::Create(engine::DestinationsOf(checkpoint, device.targets), sink_options, **ops);
  EXPECT_TRUE(sink.ok()) << sink.status().ToString();
  if (!sink.ok()) return result;
  engine::PipelineOptions options;
  options.backend = io::BackendKind::kPread;
  options.chunk_bytes = chunk_bytes;
  options.pool = pool;
  options.make_backend = std::move(make_backend);
  result.stats = engine::RunPipeline(checkpoint, device.targets, sink->get(), options);
  result.sink = (*sink)->stats();
  // Every slot free again means every event recorded after a slot's copies has completed: no
  // copy out of staging is still pending.
  result.idle_after = pool != nullptr && pool->in_use() == 0;
  return result;
}

std::shared_ptr<engine::StagingPool> Pinned(uint64_t staging_bytes, uint64_t slot_bytes) {
  auto pool = PinnedPool::Create(staging_bytes, slot_bytes);
  EXPECT_TRUE(pool.ok()) << pool.status().ToString();
  return pool.ok() ? *pool : nullptr;
}

TEST(GpuSinkTest, EveryFixtureLoadsByteIdenticalToTheCpuLoad) {
  SHARDSTREAM_REQUIRE_GPU();
  auto pool = Pinned(16 << 20, 1 << 20);
  ASSERT_NE(pool, nullptr);
  for (const char* name : {"dtypes.safetensors", "mixed.safetensors", "many_10k.safetensors"}) {
    SCOPED_TRACE(name);
    auto checkpoint = io::OpenCheckpoint(shardstream::testing::Fixture(name));
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
    DeviceLoad device(*checkpoint);
    LoadResult result = Load(*checkpoint, device, pool.get(), 1 << 20);
    ASSERT_TRUE(result.stats.ok()) << result.stats.status().ToString();
    EXPECT_TRUE(result.idle_after);
    EXPECT_EQ(pool->in_use(), 0u);
    device.ExpectEqualsCpuLoad(*checkpoint);
  }
}

TEST(GpuSinkTest, TinyPinnedPoolAndManyChunksGiveEveryByte) {
  SHARDSTREAM_REQUIRE_GPU();
  ScratchDir dir;
  dir.Write("a.safetensors", PatternFile(40, 30011, 0));
  dir.Write("b.safetensors", PatternFile(7, 200003, 40));
  auto checkpoint = io::OpenCheckpoint(dir.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
  DeviceLoad device(*checkpoint);
  auto pool = Pinned(2 * 8192, 8192);  // two slots
  ASSERT_NE(pool, nullptr);
  LoadResult result = Load(*checkpoint, device, pool.get(), 8192);
  ASSERT_TRUE(result.stats.ok()) << result.stats.status().ToString();
  EXPECT_GT(result.stats->chunks, 300u);
  EXPECT_EQ(result.stats->peak_slots_in_use, 2u);
  EXPECT_EQ(pool->in_use(), 0u);
  device.ExpectEqualsCpuLoad(*checkpoint);
}

// Slots handed to the sink faster than the link drains them (as a warm pipeline with many copy
// threads does): Consume queues and returns, so several slots' copies are in flight at once, and
// every byte still lands where it belongs. The device-side timeline is printed: whether copies of
// several streams overlap there depends on the card's copy engines (an H100 runs same-direction
// copies one after another).
TEST(GpuSinkTest, EventTimelineShowsCopiesInFlightTogether) {
  SHARDSTREAM_REQUIRE_GPU();
  constexpr uint64_t kSlotBytes = 32ull << 20;
  constexpr uint32_t kSlots = 8;
  auto pool = Pinned(kSlots * kSlotBytes, kSlotBytes);
  ASSERT_NE(pool, nullptr);
  void* dst = nullptr;
  ASSERT_EQ(cudaMalloc(&dst, kSlots * kSlotBytes), cudaSuccess);
  auto ops = MakeCudaRuntimeOps(0);
  ASSERT_TRUE(ops.ok());
  CopyTimeline timeline(**ops);
  CudaSinkOptions options;
  auto sink = CudaSink::Create(
      {{static_cast<std::byte*>(dst), kSlots * kSlotBytes, io::DType::kU8, io::DType::kU8}},
      options, timeline);
  ASSERT_TRUE(sink.ok()) << sink.status().ToString();
  std::vector<engine::SlotLease> slots;
  for (uint32_t i = 0; i < kSlots; ++i) {
    auto slot = pool->TryAcquire();
    ASSERT_TRUE(slot.ok() && slot->has_value());
    std::byte* data = (**slot).data();
    for (uint64_t b = 0; b < kSlotBytes; b += 4096) data[b] = std::byte((i * 31 + b) & 0xff);
    slots.push_back(std::move(**slot));
  }
  for (uint32_t i = 0; i < kSlots; ++i) {
    std::byte* data = slots[i].data();
    engine::StagedSlot staged{data, kSlotBytes, i * kSlotBytes, 0, i, std::move(slots[i])};
    const engine::Piece piece{0, i * kSlotBytes, 0, kSlotBytes};
    ASSERT_TRUE((*sink)->Consume(std::move(staged), std::span(&piece, 1)).ok());
  }
  ASSERT_TRUE((*sink)->Finish().ok());
  EXPECT_EQ(pool->in_use(), 0u);
  const CudaSinkStats stats = (*sink)->stats();
  auto intervals = timeline.Intervals();
  ASSERT_TRUE(intervals.ok()) << intervals.status().ToString();
  std::printf(
      "copies: %zu, in flight at once: %u queued and unfinished, %u overlapping on the "
      "device\n",
      intervals->size(), stats.peak_in_flight, MaxConcurrent(*intervals));
  EXPECT_GE(stats.peak_in_flight, 2u);
  std::vector<std::byte> back(kSlots * kSlotBytes);
  ASSERT_EQ(cudaMemcpy(back.data(), dst, back.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  for (uint32_t i = 0; i < kSlots; ++i) {
    for (uint64_t b = 0; b < kSlotBytes; b += 4096) {
      ASSERT_EQ(back[i * kSlotBytes + b], std::byte((i * 31 + b) & 0xff)) << i << " " << b;
    }
  }
  ASSERT_EQ(cudaFree(dst), cudaSuccess);
}

TEST(GpuSinkTest, ConsumeReturnsBeforeTheCopyFinishes) {
  SHARDSTREAM_REQUIRE_GPU();
  constexpr uint64_t kBytes = 1ull << 30;  // ~20 ms over PCIe 5
  auto pool = Pinned(kBytes, kBytes);
  ASSERT_NE(pool, nullptr);
  auto slot = pool->TryAcquire();
  ASSERT_TRUE(slot.ok() && slot->has_value());
  void* dst = nullptr;
  ASSERT_EQ(cudaMalloc(&dst, kBytes), cudaSuccess);
  auto ops = MakeCudaRuntimeOps(0);
  ASSERT_TRUE(ops.ok());
  double consume_ms = 0;
  {
    auto sink = CudaSink::Create(
        {{static_cast<std::byte*>(dst), kBytes, io::DType::kU8, io::DType::kU8}}, {}, **ops);
    ASSERT_TRUE(sink.ok());
    engine::StagedSlot staged{(**slot).data(), kBytes, 0, 0, 0, std::move(**slot)};
    const engine::Piece piece{0, 0, 0, kBytes};
    const auto start = std::chrono::steady_clock::now();
    ASSERT_TRUE((*sink)->Consume(std::move(staged), std::span(&piece, 1)).ok());
    consume_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(pool->in_use(), 1u) << "the slot came back before a 1 GiB copy could have finished";
    ASSERT_TRUE((*sink)->Finish().ok());
    EXPECT_EQ(pool->in_use(), 0u);
  }
  std::printf("Consume of a 1 GiB copy returned in %.3f ms\n", consume_ms);
  EXPECT_LT(consume_ms, 5.0);
  ASSERT_EQ(cudaFree(dst), cudaSuccess);
}

TEST(GpuSinkTest, FailingBackendMidLoadLeavesNoStreamWorkAndFreesTheSlots) {
  SHARDSTREAM_REQUIRE_GPU();
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(30, 300007));
  auto checkpoint = io::OpenCheckpoint(path);
  ASSERT_TRUE(checkpoint.ok());
  DeviceLoad device(*checkpoint);
  auto pool = Pinned(4 * 65536, 65536);
  ASSERT_NE(pool, nullptr);
  LoadResult result = Load(*checkpoint, device, pool.get(), 65536, {},
                           [](const io::FileSet& files) -> std::unique_ptr<io::ReadBackend> {
                             // Reads fail with EIO from the 20th Submit on: the load stops
                             // midway.
                             return std::make_unique<engine::testing::FaultBackend>(
                                 io::MakeBackend(io::BackendKind::kPread, files),
                                 engine::testing::FaultPlan{nullptr, 20, EIO});
                           });
  ASSERT_FALSE(result.stats.ok());
  EXPECT_EQ(result.stats.status().rule(), "io") << result.stats.status().ToString();
  EXPECT_TRUE(result.idle_after) << "stream work still pending after the load returned";
  EXPECT_GT(result.sink.copies, 0u) << "failed before any copy: the test checks nothing";
  EXPECT_EQ(pool->in_use(), 0u);
}

TEST(GpuSinkTest, RefusedCopyIsRuleCudaNamingTheCallAndFreesTheSlots) {
  SHARDSTREAM_REQUIRE_GPU();
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(30, 30011));
  auto checkpoint = io::OpenCheckpoint(path);
  ASSERT_TRUE(checkpoint.ok());
  DeviceLoad device(*checkpoint);
  DeviceLoad broken(*checkpoint);
  // Tensor 10 goes to an address that is no device memory: cudaMemcpyAsync refuses it.
  broken.targets[10].destination = reinterpret_cast<std::byte*>(uintptr_t{0x1000});
  auto pool = Pinned(4 * 8192, 8192);
  ASSERT_NE(pool, nullptr);
  LoadResult result = Load(*checkpoint, broken, pool.get(), 8192);
  ASSERT_FALSE(result.stats.ok());
  EXPECT_EQ(result.stats.status().rule(), "cuda") << result.stats.status().ToString();
  EXPECT_NE(result.stats.status().message().find("cudaMemcpyAsync"), std::string::npos)
      << result.stats.status().ToString();
  EXPECT_TRUE(result.idle_after);
  EXPECT_EQ(pool->in_use(), 0u);
  // The device is still usable: a clean load right after works.
  LoadResult again = Load(*checkpoint, device, pool.get(), 8192);
  ASSERT_TRUE(again.stats.ok()) << again.stats.status().ToString();
  device.ExpectEqualsCpuLoad(*checkpoint);
}

// The cast machinery on real streams and events, with a "cast" that is a device-to-device copy
// between two 4-byte dtypes: the bytes must arrive unchanged, which only happens when every
// window was uploaded before its cast ran, and when the plan cut every piece on whole elements.
TEST(GpuSinkTest, CastPathOrdersUploadsBeforeCastsOnRealStreams) {
  SHARDSTREAM_REQUIRE_GPU();
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(12, 4 * 100003));
  auto checkpoint = io::OpenCheckpoint(path);
  ASSERT_TRUE(checkpoint.ok());
  DeviceLoad device(*checkpoint);
  // Declare the U8 bytes as F32 going to I32: a cast, so the plan cuts pieces on 4-byte elements.
  std::vector<engine::Target> load = device.targets;
  for (engine::Target& t : load) {
    checkpoint->files[0].header.tensors[t.source.index].dtype = io::DType::kF32;
    t.dtype = io::DType::kI32;
  }
  std::vector<engine::Destination> targets = engine::DestinationsOf(*checkpoint, load);
  auto ops = MakeCudaRuntimeOps(0);
  ASSERT_TRUE(ops.ok());
  std::atomic<uint64_t> elements{0};
  CudaSinkOptions options;
  options.scratch_bytes = 64 << 10;  // small windows: many uploads through each
  options.cast = [&elements](StreamHandle stream, const std::byte* src, io::DType, std::byte* dst,
                             io::DType, uint64_t n) {
    elements.fetch_add(n);
    return CudaStatus(cudaMemcpyAsync(dst, src, n * 4, cudaMemcpyDeviceToDevice, stream),
                      "cudaMemcpyAsync");
  };
  auto sink = CudaSink::Create(targets, options, **ops);
  ASSERT_TRUE(sink.ok()) << sink.status().ToString();
  auto pool = Pinned(8 * 8192, 8192);
  ASSERT_NE(pool, nullptr);
  engine::PipelineOptions pipeline;
  pipeline.backend = io::BackendKind::kPread;
  pipeline.chunk_bytes = 8191;  // odd: the plan cuts pieces on elements and reads them again
  pipeline.pool = pool.get();
  auto stats = engine::RunPipeline(*checkpoint, load, sink->get(), pipeline);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_GT(stats->read_bytes, stats->payload_bytes);
  EXPECT_EQ(elements.load(), 12u * 100003);
  device.ExpectEqualsCpuLoad(*checkpoint);
}

TEST(GpuPinnedPoolTest, SecondLoadReusesThePinnedPoolAndPaysNoPinning) {
  SHARDSTREAM_REQUIRE_GPU();
  PinnedPool::DropCache();
  PinnedPoolStats first, second;
  auto a = PinnedPool::Shared(0, 64 << 20, 4 << 20, &first);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = PinnedPool::Shared(0, 64 << 20, 4 << 20, &second);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->get(), b->get());
  EXPECT_FALSE(first.reused);
  EXPECT_TRUE(second.reused);
  EXPECT_GT(first.pin_seconds, 0.0);
  EXPECT_EQ(second.pin_seconds, 0.0);
  EXPECT_EQ(second.first_pin_seconds, first.pin_seconds);
  std::printf("pinning 64 MiB took %.3f ms\n", first.pin_seconds * 1e3);
  cudaPointerAttributes attributes{};
  ASSERT_EQ(cudaPointerGetAttributes(&attributes, (*a)->data()), cudaSuccess);
  EXPECT_EQ(attributes.type, cudaMemoryTypeHost) << "the staging memory is not pinned";
  PinnedPool::DropCache();
  EXPECT_EQ(PinnedPool::CachedPools(), 0u);
}

}  // namespace
}  // namespace shardstream::cuda
