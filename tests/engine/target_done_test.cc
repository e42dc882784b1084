// Per-target completion (PipelineOptions::target_done, FillSetup::target_done): every target is
// reported exactly once, only once all of its bytes are in its destination, and while the load is
// still reading (not at its end), over every backend, route (in place, staged buffered, staged
// O_DIRECT) and reader count.
#include "engine/fill.h"
#include "engine/pipeline.h"
#include "engine/sink.h"
#include "io/checkpoint.h"
#include "io/read_backend.h"
#include "tests/engine/fault_backend.h"
#include "tests/engine/pattern_checkpoint.h"
#include "tests/support/test_files.h"

#include <atomic>
#include <cstring>
#include <gtest/gtest.h>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace shardstream::engine {
namespace {

using shardstream::testing::ScratchDir;
using testing::ExpectPattern;
using testing::Loaded;
using testing::PatternByte;
using testing::PatternFile;
using testing::Prepare;

constexpr uint64_t kTestChunkBytes = 8192;
constexpr int kTensors = 40;
constexpr uint64_t kTensorBytes = 3001;  // odd: tensors straddle chunks and blocks

// What the callback saw: how often each target was reported, and whether its bytes were all
// there when it was.
class Completions {
 public:
  Completions(const Loaded& loaded, std::span<const Target> targets)
      : loaded_(loaded), targets_(targets), reported_(targets.size()) {}

  TargetDoneFn Callback() {
    return [this](std::span<const size_t> done) {
      for (size_t t : done) {
        if (t >= targets_.size()) {
          out_of_range_.fetch_add(1);
          continue;
        }
        const bool ok = BytesThere(t);
        std::lock_guard<std::mutex> lock(mutex_);
        ++reported_[t];
        if (!ok) incomplete_.push_back(t);
      }
    };
  }

  void ExpectEachOnceComplete() {
    std::lock_guard<std::mutex> lock(mutex_);
    EXPECT_EQ(out_of_range_.load(), 0);
    for (size_t t = 0; t < reported_.size(); ++t) {
      EXPECT_EQ(reported_[t], 1) << "target " << t;
    }
    EXPECT_TRUE(incomplete_.empty())
        << "target " << incomplete_.front() << " was reported before its bytes were there";
  }

  bool Reported(size_t t) {
    std::lock_guard<std::mutex> lock(mutex_);
    return reported_[t] > 0;
  }

 private:
  // The target's destination holds the pattern of its source tensor (the whole tensor).
  bool BytesThere(size_t t) const {
    const Target& target = targets_[t];
    const io::TensorInfo& info = loaded_.checkpoint.tensor(target.source);
    const int index = std::stoi(info.name.substr(1));
    for (uint64_t b = 0; b < info.size_bytes(); ++b) {
      if (target.destination[b] != PatternByte(index, b)) return false;
    }
    return true;
  }

  const Loaded& loaded_;
  std::span<const Target> targets_;
  std::mutex mutex_;
  std::vector<int> reported_;
  std::vector<size_t> incomplete_;
  std::atomic<int> out_of_range_{0};
};

enum class Route { kInPlace, kStagedBuffered, kStagedDirect };

// Backend × route × readers.
using Params = std::tuple<io::BackendKind, Route, uint32_t>;

class TargetDoneTest : public ::testing::TestWithParam<Params> {
 protected:
  PipelineOptions Options() const {
    const auto [backend, route, readers] = GetParam();
    PipelineOptions options;
    options.staged = route != Route::kInPlace;
    options.backend = backend;
    options.fall_back_to_pread = false;  // a refused io_uring must be a skip
    options.direct = route == Route::kStagedDirect;
    options.chunk_bytes = kTestChunkBytes;
    options.staging_bytes = 8 * kTestChunkBytes;
    options.queue_depth = 4;
    options.readers = readers;
    options.copy_threads = 2;
    return options;
  }
  bool Unavailable(const io::Result<PipelineStats>& stats, std::string* why) const {
    if (!stats.ok() && stats.status().rule() == "io-uring-unavailable") {
      *why = stats.status().ToString();
      return true;
    }
    if (stats.ok() && std::get<1>(GetParam()) == Route::kStagedDirect && !stats->direct) {
      *why = "O_DIRECT refused here";
      return true;
    }
    return false;
  }
};

TEST_P(TargetDoneTest, EveryTargetReportedOnceAfterItsBytesLanded) {
  ScratchDir dir;
  Loaded loaded = Prepare(dir.Write("m.safetensors", PatternFile(kTensors, kTensorBytes)));
  std::vector<Target> targets = loaded.targets;
  // In place, a tensor wanted twice is read once and copied after the reads: reported then.
  std::vector<std::byte> twice(kTensorBytes, std::byte{0xAA});
  targets.push_back(Target{{0, 3}, twice.data()});
  Completions completions(loaded, targets);
  PipelineOptions options = Options();
  options.target_done = completions.Callback();
  CpuSink sink(DestinationsOf(loaded.checkpoint, targets));
  auto stats = RunPipeline(loaded.checkpoint, targets, options.staged ? &sink : nullptr, options);
  std::string why;
  if (Unavailable(stats, &why)) GTEST_SKIP() << why;
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  ExpectPattern(loaded);
  completions.ExpectEachOnceComplete();
}

INSTANTIATE_TEST_SUITE_P(
    BackendsRoutesReaders, TargetDoneTest,
    ::testing::Combine(::testing::Values(io::BackendKind::kPread, io::BackendKind::kUring),
                       ::testing::Values(Route::kInPlace, Route::kStagedBuffered,
                                         Route::kStagedDirect),
                       ::testing::Values(1u, 3u)),
    [](const ::testing::TestParamInfo<Params>& param_info) {
      const Route route = std::get<1>(param_info.param);
      return std::string(io::BackendName(std::get<0>(param_info.param))) +
             (route == Route::kInPlace          ? "InPlace"
              : route == Route::kStagedBuffered ? "StagedBuffered"
                                                : "StagedDirect") +
             std::to_string(std::get<2>(param_info.param)) + "Readers";
    });

// The first target is reported while the load still reads: with one pread reader, each submit is
// one chunk read synchronously, so when the last chunk is submitted the first target (whose bytes
// came in the first chunks) must already have been reported. No timing involved.
TEST(TargetDone, FirstTargetReportedBeforeTheLastChunkIsRead) {
  for (const bool staged : {false, true}) {
    SCOPED_TRACE(staged ? "staged" : "in place");
    ScratchDir dir;
    Loaded loaded = Prepare(dir.Write("m.safetensors", PatternFile(kTensors, kTensorBytes)));
    Completions completions(loaded, loaded.targets);
    PipelineOptions options;
    options.staged = staged;
    options.backend = io::BackendKind::kPread;
    options.chunk_bytes = kTestChunkBytes;
    options.staging_bytes = 4 * kTestChunkBytes;
    options.readers = 1;
    options.target_done = completions.Callback();
    const uint64_t chunks = (kTensors * kTensorBytes + kTestChunkBytes - 1) / kTestChunkBytes;
    int last_submit = 0;
    bool first_reported_before_last_read = false;
    options.make_backend = [&](const io::FileSet& files) -> std::unique_ptr<io::ReadBackend> {
      testing::FaultPlan plan;
      plan.before_submit = [&](int submit) {
        last_submit = submit;
        if (static_cast<uint64_t>(submit) == chunks) {
          first_reported_before_last_read = completions.Reported(0);
        }
      };
      return std::make_unique<testing::FaultBackend>(
          io::MakeBackend(io::BackendKind::kPread, files), plan);
    };
    CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
    auto stats = RunPipeline(loaded.checkpoint, loaded.targets, staged ? &sink : nullptr, options);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    ASSERT_EQ(stats->chunks, chunks);
    EXPECT_EQ(static_cast<uint64_t>(last_submit), chunks);
    EXPECT_TRUE(first_reported_before_last_read);
    completions.ExpectEachOnceComplete();
  }
}

// Through the fill core, whose routes split the targets into groups: indices come back as the
// caller's. Targets 1 and 2 share a source with runs (read staged); 0 and 3 read in place.
TEST(TargetDone, FillReportsTheCallersIndicesAcrossRoutes) {
  ScratchDir dir;
  Loaded loaded = Prepare(dir.Write("m.safetensors", PatternFile(4, kTensorBytes)));
  std::vector<std::byte> half_a(kTensorBytes, std::byte{0xAA});
  std::vector<std::byte> half_b(kTensorBytes, std::byte{0xAA});
  const uint64_t half = kTensorBytes / 2;
  std::vector<Target> targets = {loaded.targets[0], loaded.targets[1], loaded.targets[1],
                                 loaded.targets[3]};
  targets[1].destination = half_a.data();
  targets[1].runs = {engine::Run{0, 0, half}};
  targets[2].destination = half_b.data();
  targets[2].runs = {engine::Run{half, half, kTensorBytes - half}};
  std::mutex mutex;
  std::vector<int> reported(targets.size(), 0);
  FillSetup setup;
  setup.read.direct = DirectIo::kOff;
  setup.read.io = IoMode::kPread;
  setup.target_done = [&](std::span<const size_t> done) {
    std::lock_guard<std::mutex> lock(mutex);
    for (size_t t : done) {
      ASSERT_LT(t, reported.size());
      ++reported[t];
    }
  };
  ReadReport report;
  io::Status status = Fill(loaded.checkpoint, targets, setup, &report);
  ASSERT_TRUE(status.ok()) << status.ToString();
  for (size_t t = 0; t < targets.size(); ++t) EXPECT_EQ(reported[t], 1) << "target " << t;
  for (uint64_t b = 0; b < kTensorBytes; ++b) {
    const std::byte want = PatternByte(1, b);
    ASSERT_EQ(b < half ? half_a[b] : half_b[b], want) << "byte " << b;
  }
}

}  // namespace
}  // namespace shardstream::engine
