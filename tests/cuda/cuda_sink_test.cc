// The CUDA sink's logic on the CPU: the sink runs against FakeDevice (tests/support/
// fake_device.h), whose streams execute later than queued, so a slot reused before its event, a
// cast before its bytes landed, or a Consume that waits for the device shows up as wrong bytes or
// as time. Built with and without
// CUDA; needs no GPU.
#include "cuda/cuda_sink.h"

#include "engine/pipeline.h"
#include "engine/staging.h"
#include "io/checkpoint.h"
#include "io/dtype.h"
#include "tests/engine/pattern_checkpoint.h"
#include "tests/support/copy_timeline.h"
#include "tests/support/fake_device.h"
#include "tests/support/test_files.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <gtest/gtest.h>
#include <iterator>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace shardstream::cuda {
namespace {

using engine::testing::ExpectPattern;
using engine::testing::Loaded;
using engine::testing::PatternFile;
using engine::testing::Prepare;
using shardstream::testing::ScratchDir;
using Clock = std::chrono::steady_clock;

// ---- A CPU "cast kernel" for the fake device: queued on the stream like a launch, so it reads
// the scratch only when the stream gets there.

uint64_t Bytes(io::DType dtype) { return io::DTypeBits(dtype) / 8; }

double Read(io::DType dtype, const std::byte* p) {
  switch (dtype) {
    case io::DType::kF32: {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case io::DType::kF64: {
      double v;
      std::memcpy(&v, p, 8);
      return v;
    }
    case io::DType::kI16: {
      int16_t v;
      std::memcpy(&v, p, 2);
      return v;
    }
    case io::DType::kI64: {
      int64_t v;
      std::memcpy(&v, p, 8);
      return static_cast<double>(v);
    }
    default:
      ADD_FAILURE() << "test cast does not read " << io::DTypeName(dtype);
      return 0;
  }
}

void Write(io::DType dtype, double value, std::byte* p) {
  switch (dtype) {
    case io::DType::kF32: {
      const auto v = static_cast<float>(value);
      std::memcpy(p, &v, 4);
      return;
    }
    case io::DType::kF64:
      std::memcpy(p, &value, 8);
      return;
    case io::DType::kI64: {
      const auto v = static_cast<int64_t>(value);
      std::memcpy(p, &v, 8);
      return;
    }
    default:
      ADD_FAILURE() << "test cast does not write " << io::DTypeName(dtype);
  }
}

void CastOnHost(const std::byte* src, io::DType src_dtype, std::byte* dst, io::DType dst_dtype,
                uint64_t elements) {
  for (uint64_t i = 0; i < elements; ++i) {
    Write(dst_dtype, Read(src_dtype, src + i * Bytes(src_dtype)), dst + i * Bytes(dst_dtype));
  }
}

DeviceCastFn FakeCast(FakeDevice& device, std::atomic<uint64_t>* elements_cast = nullptr) {
  return [&device, elements_cast](StreamHandle stream, const std::byte* src, io::DType src_dtype,
                                  std::byte* dst, io::DType dst_dtype, uint64_t elements) {
    if (elements_cast != nullptr) elements_cast->fetch_add(elements);
    return device.Enqueue(stream, [=] { CastOnHost(src, src_dtype, dst, dst_dtype, elements); });
  };
}

// A checkpoint of tensors in several dtypes with random values, odd element counts so that
// neither tensors nor chunks line up with elements.
struct TensorSpec {
  std::string name;
  io::DType dtype;
  uint64_t elements;
};

std::string MixedFile(const std::vector<TensorSpec>& specs, uint32_t seed) {
  std::mt19937_64 random(seed);
  std::string header = "{", data;
  for (size_t i = 0; i < specs.size(); ++i) {
    const uint64_t begin = data.size();
    for (uint64_t e = 0; e < specs[i].elements; ++e) {
      std::byte value[8];
      const double v = std::uniform_real_distribution<double>(-1000, 1000)(random);
      switch (specs[i].dtype) {
        case io::DType::kI16: {
          const auto x = static_cast<int16_t>(v);
          std::memcpy(value, &x, 2);
          break;
        }
        case io::DType::kU8:
          value[0] = static_cast<std::byte>(random());
          break;
        default:
          Write(specs[i].dtype, v, value);
      }
      data.append(reinterpret_cast<const char*>(value), Bytes(specs[i].dtype));
    }
    if (i) header += ",";
    header += "\"" + specs[i].name + "\":{\"dtype\":\"" +
              std::string(io::DTypeName(specs[i].dtype)) + "\",\"shape\":[" +
              std::to_string(specs[i].elements) + "],\"data_offsets\":[" + std::to_string(begin) +
              "," + std::to_string(data.size()) + "]}";
  }
  header += "}";
  return shardstream::testing::SafetensorsBytes(header, data);
}

constexpr uint64_t kChunkBytes = 4096;

engine::PipelineOptions TinyPool(uint32_t slots) {
  engine::PipelineOptions options;
  options.backend = io::BackendKind::kPread;
  options.chunk_bytes = kChunkBytes;
  options.staging_bytes = slots * kChunkBytes;
  options.copy_threads = 4;
  return options;
}

// Nothing left on the fake device: no queued work, no stream, event or allocation.
void ExpectNothingLeft(const FakeDevice& device) {
  EXPECT_EQ(device.pending(), 0u);
  EXPECT_EQ(device.live_streams(), 0u);
  EXPECT_EQ(device.live_events(), 0u);
  EXPECT_EQ(device.live_allocations(), 0u);
}

// A slot of `pool` holding `bytes`, as the pipeline hands it to Consume.
engine::StagedSlot SlotWith(engine::StagingPool& pool, const std::byte* bytes, uint64_t size) {
  auto lease = pool.Acquire();
  EXPECT_TRUE(lease.ok()) << lease.status().ToString();
  if (!lease.ok()) return {};
  std::memcpy(lease->data(), bytes, size);
  engine::StagedSlot slot;
  slot.data = lease->data();
  slot.size_bytes = size;
  slot.lease = std::move(*lease);
  return slot;
}

// ---- Pure helpers.

TEST(MaxConcurrentTest, CountsOverlapsButNotTouchingEnds) {
  EXPECT_EQ(MaxConcurrent({}), 0u);
  std::vector<CopyInterval> serial = {{0, 1, 0}, {1, 2, 0}, {2, 3, 1}};
  EXPECT_EQ(MaxConcurrent(serial), 1u);
  std::vector<CopyInterval> overlapping = {{0, 2, 0}, {1, 3, 1}, {1.5, 1.8, 2}, {5, 6, 0}};
  EXPECT_EQ(MaxConcurrent(overlapping), 3u);
}

// ---- Creation.

TEST(CudaSinkCreateTest, CastsNeedACastFunctionWholeBytesAndWholeElements) {
  FakeDevice device;
  std::vector<std::byte> dst(64);
  auto no_fn = CudaSink::Create({{dst.data(), 16, io::DType::kF32, io::DType::kF64}}, {}, device);
  ASSERT_FALSE(no_fn.ok());
  EXPECT_EQ(no_fn.status().rule(), "cast");
  EXPECT_NE(no_fn.status().message().find("F32 to F64"), std::string::npos)
      << no_fn.status().ToString();

  CudaSinkOptions options;
  options.cast = FakeCast(device);
  auto sub_byte =
      CudaSink::Create({{dst.data(), 16, io::DType::kF4, io::DType::kU8}}, options, device);
  ASSERT_FALSE(sub_byte.ok());
  EXPECT_EQ(sub_byte.status().rule(), "cast");
  auto ragged =
      CudaSink::Create({{dst.data(), 15, io::DType::kF32, io::DType::kF64}}, options, device);
  ASSERT_FALSE(ragged.ok());
  EXPECT_EQ(ragged.status().rule(), "cast");

  options.scratch_bytes = 512;  // 128 bytes per stream: less than one 256-byte window
  auto small =
      CudaSink::Create({{dst.data(), 16, io::DType::kF32, io::DType::kF64}}, options, device);
  ASSERT_FALSE(small.ok());
  EXPECT_EQ(small.status().rule(), "cast-scratch") << small.status().ToString();
  ExpectNothingLeft(device);
}

TEST(CudaSinkCreateTest, ScratchIsAllocatedOnlyWhenSomethingCasts) {
  FakeDevice device;
  std::vector<std::byte> dst(64);
  {
    auto sink = CudaSink::Create({{dst.data(), 16, io::DType::kF32, io::DType::kF32}}, {}, device);
    ASSERT_TRUE(sink.ok()) << sink.status().ToString();
    EXPECT_EQ((*sink)->stats().scratch_bytes, 0u);
    EXPECT_EQ(device.live_allocations(), 0u);
    EXPECT_EQ(device.live_streams(), kDefaultCopyStreams);
    EXPECT_TRUE((*sink)->Finish().ok());
  }
  CudaSinkOptions options;
  options.cast = FakeCast(device);
  {
    auto sink =
        CudaSink::Create({{dst.data(), 16, io::DType::kF32, io::DType::kF64}}, options, device);
    ASSERT_TRUE(sink.ok()) << sink.status().ToString();
    EXPECT_EQ(device.live_allocations(), 1u);
    EXPECT_LE((*sink)->stats().scratch_bytes, options.scratch_bytes);
    EXPECT_GT((*sink)->stats().scratch_bytes, options.scratch_bytes / 2);
  }
  ExpectNothingLeft(device);
}

// ---- Through the real pipeline.

class CudaSinkPipelineTest : public ::testing::TestWithParam<uint32_t> {};  // streams

TEST_P(CudaSinkPipelineTest, TinyPoolAndManyChunksGiveEveryByteWithNoSlotReusedEarly) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
  Loaded loaded = Prepare(path);
  // Slow copies: a slot handed back before its copy ran would be overwritten by the next read
  // and the late copy would move the wrong chunk's bytes.
  FakeDevice device(FakeDeviceOptions{std::chrono::microseconds(300)});
  auto pool = engine::StagingPool::Create(2 * kChunkBytes, kChunkBytes);
  ASSERT_TRUE(pool.ok());
  {
    CudaSinkOptions options;
    options.streams = GetParam();
    auto sink = CudaSink::Create(engine::DestinationsOf(loaded.checkpoint, loaded.targets), options,
                                 device);
    ASSERT_TRUE(sink.ok()) << sink.status().ToString();
    engine::PipelineOptions pipeline = TinyPool(2);
    pipeline.pool = pool->get();
    auto stats = engine::RunPipeline(loaded.checkpoint, loaded.targets, sink->get(), pipeline);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    EXPECT_GT(stats->chunks, 25u);
    EXPECT_EQ(stats->peak_slots_in_use, 2u);
    EXPECT_EQ((*pool)->in_use(), 0u);
    EXPECT_EQ(device.pending(), 0u);
    EXPECT_EQ((*sink)->stats().copied_bytes, 40u * 3001);
    // Two slots and slow copies: the IO thread found no slot free and waited on the oldest event
    // (not on a stream, not on a host function) before reusing its slot.
    EXPECT_GT(device.event_waits(), 0u);
    EXPECT_GT(device.event_queries(), 0u);
  }
  ExpectPattern(loaded);
  ExpectNothingLeft(device);
}

// Per-target completion through the CUDA sink: a target is reported once the events after all
// of its copies completed (the fake device copies late, on its own thread, so a report made
// before that would find the destination still holding 0xAA), each exactly once, and most while
// the load still reads: two slots for many chunks make the pool reclaim slots, and so see their
// events complete, during the reads.
TEST_P(CudaSinkPipelineTest, TargetsAreReportedCompleteOnlyAfterTheirCopiesEvents) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
  Loaded loaded = Prepare(path);
  FakeDevice device(FakeDeviceOptions{std::chrono::microseconds(300)});
  auto pool = engine::StagingPool::Create(2 * kChunkBytes, kChunkBytes);
  ASSERT_TRUE(pool.ok());
  std::mutex mutex;
  std::vector<int> reported(loaded.targets.size(), 0);
  std::vector<std::string> early;  // reported before their bytes were there
  size_t calls = 0;
  {
    CudaSinkOptions options;
    options.streams = GetParam();
    auto sink = CudaSink::Create(engine::DestinationsOf(loaded.checkpoint, loaded.targets), options,
                                 device);
    ASSERT_TRUE(sink.ok()) << sink.status().ToString();
    engine::PipelineOptions pipeline = TinyPool(2);
    pipeline.pool = pool->get();
    pipeline.target_done = [&](std::span<const size_t> done) {
      std::lock_guard<std::mutex> lock(mutex);
      ++calls;
      for (size_t t : done) {
        ++reported[t];
        const auto& tensor = loaded.checkpoint.files[0].header.tensors[t];
        const int index = std::stoi(tensor.name.substr(1));
        for (uint64_t b = 0; b < tensor.size_bytes(); ++b) {
          if (loaded.buffers[t][b] != engine::testing::PatternByte(index, b)) {
            early.push_back(tensor.name);
            break;
          }
        }
      }
    };
    auto stats = engine::RunPipeline(loaded.checkpoint, loaded.targets, sink->get(), pipeline);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    // Each reclaimed slot reports its chunk in a call of its own; at most the slots still
    // parked at the end are reported together after Finish.
    EXPECT_GE(calls, stats->chunks - 2);
  }
  ExpectPattern(loaded);
  for (size_t t = 0; t < reported.size(); ++t) EXPECT_EQ(reported[t], 1) << "target " << t;
  EXPECT_TRUE(early.empty()) << early.front() << " was reported before its copy ran";
  ExpectNothingLeft(device);
}

INSTANTIATE_TEST_SUITE_P(Streams, CudaSinkPipelineTest, ::testing::Values(1u, 4u),
                         [](const ::testing::TestParamInfo<uint32_t>& param_info) {
                           return std::to_string(param_info.param) + "Streams";
                         });

// Chunks of an odd size cut every dtype's elements; the plan ends each piece of a cast target at
// its last whole element and reads the cut element again with the next chunk, so every element
// is cast exactly once, from a whole copy.
TEST(CudaSinkTest, CastsWithPiecesCutOnElementsEqualAHostCast) {
  const std::vector<TensorSpec> specs = {{"a", io::DType::kF32, 3001}, {"b", io::DType::kU8, 777},
                                         {"c", io::DType::kF64, 1501}, {"d", io::DType::kI16, 4099},
                                         {"e", io::DType::kF32, 1},    {"f", io::DType::kF64, 2},
                                         {"g", io::DType::kF32, 5003}, {"h", io::DType::kI16, 3}};
  const uint32_t seed = 1234;
  SCOPED_TRACE("seed " + std::to_string(seed));
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", MixedFile(specs, seed));
  auto checkpoint = io::OpenCheckpoint(path);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
  const auto& tensors = checkpoint->files[0].header.tensors;

  auto cast_to = [](io::DType from) {
    switch (from) {
      case io::DType::kF32:
        return io::DType::kF64;
      case io::DType::kF64:
        return io::DType::kF32;
      case io::DType::kI16:
        return io::DType::kI64;
      default:
        return from;
    }
  };
  std::vector<std::vector<std::byte>> out(tensors.size());
  std::vector<engine::Target> targets;
  std::vector<engine::Destination> device_targets;
  for (uint32_t i = 0; i < tensors.size(); ++i) {
    const io::DType to = cast_to(tensors[i].dtype);
    out[i].assign(tensors[i].numel() * Bytes(to), std::byte{0xAA});
    device_targets.push_back({out[i].data(), tensors[i].size_bytes(), tensors[i].dtype, to});
    targets.push_back(engine::Target{{0, i}, out[i].data()});
    if (to != tensors[i].dtype) targets.back().dtype = to;  // a cast: pieces cut on elements
  }

  FakeDevice device(FakeDeviceOptions{std::chrono::microseconds(100)});
  std::atomic<uint64_t> elements_cast{0};
  {
    CudaSinkOptions options;
    options.cast = FakeCast(device, &elements_cast);
    // Windows of 256 bytes: every piece of a cast target is uploaded and cast in many steps
    // through the same scratch.
    options.scratch_bytes = options.streams * 256;
    auto sink = CudaSink::Create(device_targets, options, device);
    ASSERT_TRUE(sink.ok()) << sink.status().ToString();
    engine::PipelineOptions pipeline = TinyPool(3);
    pipeline.chunk_bytes = 4099;  // odd: chunk boundaries split elements of every width
    pipeline.staging_bytes = 3 * 8192;
    auto stats = engine::RunPipeline(*checkpoint, targets, sink->get(), pipeline);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    EXPECT_GT((*sink)->stats().cast_calls, stats->chunks);
    EXPECT_GT(stats->read_bytes, stats->payload_bytes);  // cut elements were read twice
  }
  uint64_t cast_elements = 0;
  // The expected bytes, straight from the file.
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const uint64_t data_start = checkpoint->files[0].header.data_offset();
  for (uint32_t i = 0; i < tensors.size(); ++i) {
    const io::DType to = cast_to(tensors[i].dtype);
    const auto* src =
        reinterpret_cast<const std::byte*>(bytes.data()) + data_start + tensors[i].begin;
    std::vector<std::byte> expected(out[i].size());
    if (to == tensors[i].dtype) {
      std::memcpy(expected.data(), src, expected.size());
    } else {
      CastOnHost(src, tensors[i].dtype, expected.data(), to, tensors[i].numel());
      cast_elements += tensors[i].numel();
    }
    if (out[i] == expected) continue;
    for (size_t b = 0; b < expected.size(); ++b) {
      ASSERT_EQ(out[i][b], expected[b]) << tensors[i].name << " byte " << b;
    }
  }
  EXPECT_EQ(elements_cast.load(), cast_elements) << "some element was cast twice or never";
  ExpectNothingLeft(device);
}

// A load that did not ask the plan for whole elements hands a cast target a piece that splits
// one: a bug, refused clearly rather than cast wrong.
TEST(CudaSinkTest, APieceThatSplitsAnElementIsRefused) {
  FakeDevice device;
  std::vector<std::byte> src(16), dst(32);
  auto pool = engine::StagingPool::Create(4096, 4096);
  ASSERT_TRUE(pool.ok());
  CudaSinkOptions options;
  options.cast = FakeCast(device);
  {
    auto sink =
        CudaSink::Create({{dst.data(), 16, io::DType::kF32, io::DType::kF64}}, options, device);
    ASSERT_TRUE(sink.ok());
    const engine::Piece piece{0, 2, 0, 8};
    io::Status status = (*sink)->Consume(SlotWith(**pool, src.data(), 8), std::span(&piece, 1));
    ASSERT_FALSE(status.ok());
    EXPECT_EQ(status.rule(), "internal");
    EXPECT_NE(status.message().find("whole 4-byte elements"), std::string::npos)
        << status.ToString();
    EXPECT_TRUE((*sink)->Finish().ok());
  }
  EXPECT_EQ((*pool)->in_use(), 0u);
  ExpectNothingLeft(device);
}

TEST(CudaSinkTest, ConsumeReturnsWhileTheDeviceIsStillBusy) {
  constexpr auto kCopy = std::chrono::milliseconds(40);
  FakeDevice device(FakeDeviceOptions{kCopy});
  std::vector<std::byte> src(4096), dst(4096, std::byte{0});
  for (size_t i = 0; i < src.size(); ++i) src[i] = std::byte(i * 13 + 1);
  auto pool = engine::StagingPool::Create(4096, 4096);
  ASSERT_TRUE(pool.ok());
  {
    auto sink = CudaSink::Create({{dst.data(), 4096, io::DType::kU8, io::DType::kU8}}, {}, device);
    ASSERT_TRUE(sink.ok());
    const engine::Piece pieces[] = {
        {0, 0, 0, 1024}, {0, 1024, 1024, 1024}, {0, 2048, 2048, 1024}, {0, 3072, 3072, 1024}};
    engine::StagedSlot slot = SlotWith(**pool, src.data(), src.size());
    const auto start = Clock::now();
    ASSERT_TRUE((*sink)->Consume(std::move(slot), pieces).ok());
    const auto took = Clock::now() - start;
    // Four copies of 40 ms each are queued on one stream: 160 ms of device work.
    EXPECT_LT(took, kCopy / 2) << "Consume waited for the device";
    EXPECT_GT(device.pending(), 0u);
    EXPECT_EQ((*pool)->in_use(), 1u) << "the slot was free before its copies ran";
    auto none = (*pool)->TryAcquire();
    ASSERT_TRUE(none.ok());
    EXPECT_FALSE(none->has_value());
    ASSERT_TRUE((*sink)->Finish().ok());
    EXPECT_EQ((*pool)->in_use(), 0u);
    EXPECT_EQ(device.pending(), 0u);
  }
  EXPECT_EQ(dst, src);
  ExpectNothingLeft(device);
}

TEST(CudaSinkTest, SeveralCopiesAreInFlightAtOnce) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(24, 4000));
  Loaded loaded = Prepare(path);
  FakeDevice device(FakeDeviceOptions{std::chrono::milliseconds(3)});
  {
    CopyTimeline timeline(device);
    CudaSinkOptions options;
    auto sink = CudaSink::Create(engine::DestinationsOf(loaded.checkpoint, loaded.targets), options,
                                 timeline);
    ASSERT_TRUE(sink.ok()) << sink.status().ToString();
    auto stats = engine::RunPipeline(loaded.checkpoint, loaded.targets, sink->get(), TinyPool(8));
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    auto intervals = timeline.Intervals();
    ASSERT_TRUE(intervals.ok()) << intervals.status().ToString();
    EXPECT_EQ(intervals->size(), stats->chunks);
    EXPECT_GE(MaxConcurrent(*intervals), 2u) << "the event timeline shows one copy at a time";
  }
  EXPECT_GE(device.peak_concurrent_copies(), 2u);
  ExpectPattern(loaded);
  ExpectNothingLeft(device);
}

// Many threads acquiring slots and consuming at once onto shared streams, for the sanitizers: a
// plain target and a cast target filled from small pieces (cut on elements) in random order,
// through a pool smaller than the pieces, so slots come back through their events.
TEST(CudaSinkTest, ConcurrentConsumersFillPlainAndCastTargets) {
  constexpr uint64_t kElements = 3000;
  std::vector<std::byte> source(kElements * 4);
  std::vector<float> values(kElements);
  for (uint64_t i = 0; i < kElements; ++i) values[i] = static_cast<float>(i) * 0.5f - 7;
  std::memcpy(source.data(), values.data(), source.size());
  std::vector<std::byte> plain(source.size(), std::byte{0}), cast(kElements * 8, std::byte{0});
  FakeDevice device(FakeDeviceOptions{std::chrono::microseconds(50)});
  auto pool = engine::StagingPool::Create(8 * 4096, 4096);
  ASSERT_TRUE(pool.ok());
  {
    CudaSinkOptions options;
    options.cast = FakeCast(device);
    options.scratch_bytes = 64 << 10;
    auto sink = CudaSink::Create({{plain.data(), source.size(), io::DType::kF32, io::DType::kF32},
                                  {cast.data(), source.size(), io::DType::kF32, io::DType::kF64}},
                                 options, device);
    ASSERT_TRUE(sink.ok()) << sink.status().ToString();
    // Cut the bytes at random points; each cut piece goes to both targets.
    std::mt19937 random(99);
    std::vector<uint64_t> cuts = {0, source.size()};
    for (int i = 0; i < 300; ++i) cuts.push_back(random() % kElements * 4);
    for (uint64_t at = 4000; at < source.size(); at += 4000) cuts.push_back(at);  // fits a slot
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    std::vector<size_t> order(cuts.size() - 1);
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), random);
    std::atomic<size_t> next{0};
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&] {
        for (size_t k; (k = next.fetch_add(1)) < order.size();) {
          const uint64_t begin = cuts[order[k]], end = cuts[order[k] + 1];
          const engine::Piece pieces[] = {{0, begin, 0, end - begin}, {1, begin, 0, end - begin}};
          engine::StagedSlot slot = SlotWith(**pool, source.data() + begin, end - begin);
          if (!(*sink)->Consume(std::move(slot), pieces).ok()) failures.fetch_add(1);
        }
      });
    }
    for (std::thread& t : threads) t.join();
    EXPECT_EQ(failures.load(), 0);
    ASSERT_TRUE((*sink)->Finish().ok());
  }
  EXPECT_EQ((*pool)->in_use(), 0u);
  EXPECT_EQ(plain, source);
  std::vector<double> got(kElements);
  std::memcpy(got.data(), cast.data(), cast.size());
  for (uint64_t i = 0; i < kElements; ++i) ASSERT_EQ(got[i], values[i]) << "element " << i;
  ExpectNothingLeft(device);
}

// ---- Failures: whatever fails, no work stays queued, every slot goes back, and the error comes
// back to the thread that waits (for a slot, or in Finish).

struct FailureCase {
  const char* name;
  bool at_enqueue;
  const char* call;  // the call the error must name
};

class CudaSinkFailureTest : public ::testing::TestWithParam<FailureCase> {};

TEST_P(CudaSinkFailureTest, FailingCopyMidLoadLeavesNothingPendingAndEverySlotFree) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
  Loaded loaded = Prepare(path);
  FakeDevice device(FakeDeviceOptions{std::chrono::microseconds(200)});
  auto pool = engine::StagingPool::Create(4 * kChunkBytes, kChunkBytes);
  ASSERT_TRUE(pool.ok());
  {
    auto sink =
        CudaSink::Create(engine::DestinationsOf(loaded.checkpoint, loaded.targets), {}, device);
    ASSERT_TRUE(sink.ok());
    device.FailCopy(7, GetParam().at_enqueue);
    engine::PipelineOptions options = TinyPool(4);
    options.pool = pool->get();
    auto stats = engine::RunPipeline(loaded.checkpoint, loaded.targets, sink->get(), options);
    ASSERT_FALSE(stats.ok());
    EXPECT_EQ(stats.status().rule(), "cuda") << stats.status().ToString();
    EXPECT_NE(stats.status().message().find(GetParam().call), std::string::npos)
        << stats.status().ToString();
    EXPECT_EQ(device.pending(), 0u);
    EXPECT_EQ((*pool)->in_use(), 0u);
    EXPECT_EQ(device.failed(), !GetParam().at_enqueue);
  }
  ExpectNothingLeft(device);
}

INSTANTIATE_TEST_SUITE_P(Copies, CudaSinkFailureTest,
                         ::testing::Values(FailureCase{"RefusedAtEnqueue", true, "cudaMemcpyAsync"},
                                           // A sticky device error: later calls fail, and so do the
                                           // events the pool asks about and waits on.
                                           FailureCase{"FailsOnTheDevice", false,
                                                       "cudaErrorLaunchFailure"}),
                         [](const ::testing::TestParamInfo<FailureCase>& param_info) {
                           return std::string(param_info.param.name);
                         });

TEST(CudaSinkTest, CastFailureIsReturnedAndTheSlotStillGoesBack) {
  FakeDevice device;
  std::vector<std::byte> src(16), dst(32);
  CudaSinkOptions options;
  options.cast = [](StreamHandle, const std::byte*, io::DType, std::byte*, io::DType, uint64_t) {
    return io::Status::Error(io::StatusCode::kUnsupported, "cast", "no kernel for this");
  };
  auto pool = engine::StagingPool::Create(4096, 4096);
  ASSERT_TRUE(pool.ok());
  {
    auto sink =
        CudaSink::Create({{dst.data(), 16, io::DType::kF32, io::DType::kF64}}, options, device);
    ASSERT_TRUE(sink.ok());
    const engine::Piece piece{0, 0, 0, 16};
    io::Status status = (*sink)->Consume(SlotWith(**pool, src.data(), 16), std::span(&piece, 1));
    ASSERT_FALSE(status.ok());
    EXPECT_EQ(status.rule(), "cast");
    EXPECT_NE(status.message().find("target 0"), std::string::npos) << status.ToString();
    EXPECT_TRUE((*sink)->Finish().ok());
  }
  EXPECT_EQ((*pool)->in_use(), 0u);
  ExpectNothingLeft(device);
}

TEST(CudaSinkTest, DestroyedWithoutFinishStillWaitsAndReleases) {
  FakeDevice device(FakeDeviceOptions{std::chrono::milliseconds(20)});
  std::vector<std::byte> src(64, std::byte{7}), dst(64);
  auto pool = engine::StagingPool::Create(4096, 4096);
  ASSERT_TRUE(pool.ok());
  {
    auto sink = CudaSink::Create({{dst.data(), 64, io::DType::kU8, io::DType::kU8}}, {}, device);
    ASSERT_TRUE(sink.ok());
    const engine::Piece piece{0, 0, 0, 64};
    ASSERT_TRUE((*sink)->Consume(SlotWith(**pool, src.data(), 64), std::span(&piece, 1)).ok());
  }
  // The slot stays parked in the pool; with the sink gone its event counts as complete.
  EXPECT_EQ((*pool)->in_use(), 0u);
  EXPECT_EQ(dst, src);
  ExpectNothingLeft(device);
}

}  // namespace
}  // namespace shardstream::cuda
