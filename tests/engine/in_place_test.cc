#include "engine/pipeline.h"
#include "io/checkpoint.h"
#include "tests/engine/fault_backend.h"
#include "tests/engine/pattern_checkpoint.h"
#include "tests/support/test_files.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <string>
#include <vector>

namespace shardstream::engine {
namespace {

namespace fs = std::filesystem;
using shardstream::testing::ScratchDir;

using testing::ExpectPattern;
using testing::InPlace;
using testing::Loaded;
using testing::PatternFile;
using testing::Prepare;

class InPlaceBackendTest : public ::testing::TestWithParam<io::BackendKind> {};

TEST_P(InPlaceBackendTest, FillsEveryTargetAcrossChunksAndThreads) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
  for (int threads : {1, 2, 4}) {
    Loaded loaded = Prepare(path);
    PipelineOptions options = InPlace();
    options.backend = GetParam();
    options.readers = threads;
    options.chunk_bytes = 4096;  // many chunks, tensors split across them
    auto stats = RunPipeline(loaded.checkpoint, loaded.targets, nullptr, options);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    EXPECT_EQ(stats->payload_bytes, 40u * 3001);
    EXPECT_GT(stats->chunks, 20u);
    ExpectPattern(loaded);
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, InPlaceBackendTest,
                         ::testing::Values(io::BackendKind::kPread, io::BackendKind::kMmap,
                                           io::BackendKind::kUring),
                         [](const auto& p) { return std::string(io::BackendName(p.param)); });

TEST(InPlaceTest, UringKeepsSeveralReadsInFlight) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(64, 5000));
  Loaded loaded = Prepare(path);
  PipelineOptions options = InPlace();
  options.backend = io::BackendKind::kUring;
  options.readers = 1;
  options.queue_depth = 4;
  options.chunk_bytes = 4096;
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, nullptr, options);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  if (!stats->fallback.empty()) GTEST_SKIP() << "io_uring unavailable: " << stats->fallback;
  EXPECT_GT(stats->peak_in_flight, 1u);
  EXPECT_LE(stats->peak_in_flight, 4u);
  ExpectPattern(loaded);
}

TEST(InPlaceTest, UnavailableUringFallsBackToPreadAndSaysWhy) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(8, 1000));
  Loaded loaded = Prepare(path);
  PipelineOptions options = InPlace();
  options.backend = io::BackendKind::kUring;
  ::setenv("SHARDSTREAM_DISABLE_IO_URING", "1", 1);
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, nullptr, options);
  options.fall_back_to_pread = false;
  auto refused = RunPipeline(loaded.checkpoint, loaded.targets, nullptr, options);
  ::unsetenv("SHARDSTREAM_DISABLE_IO_URING");
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_NE(stats->fallback.find("io-uring-unavailable"), std::string::npos) << stats->fallback;
  ExpectPattern(loaded);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().rule(), "io-uring-unavailable");
}

TEST(InPlaceTest, SameTensorTwiceFillsBothDestinations) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(3, 100));
  Loaded loaded = Prepare(path);
  std::vector<std::byte> extra(100, std::byte{0});
  loaded.targets.push_back(Target{{0, 1}, extra.data()});
  ASSERT_TRUE(RunPipeline(loaded.checkpoint, loaded.targets, nullptr, InPlace()).ok());
  ExpectPattern(loaded);
  EXPECT_EQ(extra, loaded.buffers[1]);
}

TEST(InPlaceTest, SubsetLeavesOtherTensorsUntouched) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(5, 64));
  Loaded loaded = Prepare(path);
  std::vector<Target> some = {loaded.targets[1], loaded.targets[3]};
  ASSERT_TRUE(RunPipeline(loaded.checkpoint, some, nullptr, InPlace()).ok());
  EXPECT_EQ(loaded.buffers[0][0], std::byte{0xAA});  // not asked for: still the fill value
  EXPECT_EQ(loaded.buffers[1][1], std::byte((31 + 7) & 0xff));
}

TEST(InPlaceTest, FileReplacedAfterValidationIsDetectedAtOpen) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(4, 100));
  Loaded loaded = Prepare(path);
  shardstream::testing::Truncate(path, 300);
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, nullptr, InPlace());
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().rule(), "file-changed");
  EXPECT_EQ(stats.status().path(), path.string());
}

TEST(InPlaceTest, FileShrinkingWhileReadingIsAClearError) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(8, 1000));
  Loaded loaded = Prepare(path);
  PipelineOptions options = InPlace();
  options.readers = 1;  // one backend, so "the second Submit" is the load's second read
  options.chunk_bytes = 1024;
  options.make_backend = [&](const io::FileSet& files) {
    testing::FaultPlan plan;
    plan.before_submit = [&](int submit) {
      if (submit == 2) shardstream::testing::Truncate(path, 200);
    };
    return std::make_unique<testing::FaultBackend>(io::MakeBackend(io::BackendKind::kPread, files),
                                                   std::move(plan));
  };
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, nullptr, options);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().rule(), "file-changed") << stats.status().ToString();
  EXPECT_EQ(stats.status().path(), path.string());
  EXPECT_FALSE(stats.status().tensor().empty()) << stats.status().ToString();
  EXPECT_TRUE(stats.status().offset().has_value());
}

TEST(InPlaceTest, ProgressReachesTheTotalAndCanCancel) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(10, 5000));
  Loaded loaded = Prepare(path);
  uint64_t last_done = 0, total = 0;
  PipelineOptions options = InPlace();
  options.progress = [&](const Progress& p) {
    EXPECT_GE(p.done_bytes, last_done);
    last_done = p.done_bytes;
    total = p.total_bytes;
    return true;
  };
  ASSERT_TRUE(RunPipeline(loaded.checkpoint, loaded.targets, nullptr, options).ok());
  EXPECT_EQ(last_done, 50000u);
  EXPECT_EQ(total, 50000u);

  options.progress = [](const Progress&) { return false; };
  auto cancelled = RunPipeline(loaded.checkpoint, loaded.targets, nullptr, options);
  ASSERT_FALSE(cancelled.ok());
  EXPECT_EQ(cancelled.status().rule(), "cancelled");
}

// Every other tensor: the chunks read through the gaps between them, but progress counts only
// the targets' bytes, so it ends on the total and never passes it.
TEST(InPlaceTest, ProgressCountsTargetBytesNotTheGapsReadThrough) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(10, 5000));
  Loaded loaded = Prepare(path);
  std::vector<Target> half;
  for (size_t i = 0; i < loaded.targets.size(); i += 2) half.push_back(loaded.targets[i]);
  uint64_t last_done = 0, total = 0;
  PipelineOptions options = InPlace();
  options.readers = 1;
  options.progress = [&](const Progress& p) {
    EXPECT_LE(p.done_bytes, p.total_bytes);
    last_done = p.done_bytes;
    total = p.total_bytes;
    return true;
  };
  auto stats = RunPipeline(loaded.checkpoint, half, nullptr, options);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_GT(stats->read_bytes, stats->payload_bytes);  // the gaps were read through
  EXPECT_EQ(total, 25000u);
  EXPECT_EQ(last_done, 25000u);
}

TEST(InPlaceTest, OpensNoFileDescriptorsThatOutliveTheLoad) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(4, 100));
  const auto count_fds = shardstream::testing::CountOpenFds;
  Loaded loaded = Prepare(path);
  const size_t before = count_fds();
  ASSERT_TRUE(RunPipeline(loaded.checkpoint, loaded.targets, nullptr, InPlace()).ok());
  shardstream::testing::Truncate(path, 10);
  ASSERT_FALSE(RunPipeline(loaded.checkpoint, loaded.targets, nullptr, InPlace()).ok());
  EXPECT_EQ(count_fds(), before);
}

}  // namespace
}  // namespace shardstream::engine
