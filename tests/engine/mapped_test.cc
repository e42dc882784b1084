// Mapped CPU destinations (engine/mapped.h): the private mapping's bytes against pread, writes
// that never reach the file, the mapping's lifetime, and the parallel populate step.
#include "engine/mapped.h"

#include "io/file.h"
#include "io/residency.h"
#include "tests/engine/pattern_checkpoint.h"
#include "tests/support/test_executors.h"
#include "tests/support/test_files.h"

#include <atomic>
#include <cstring>
#include <gtest/gtest.h>
#include <memory>
#include <vector>

namespace shardstream::engine {
namespace {

using testing::PatternByte;
using testing::PatternFile;

class MappedTest : public ::testing::Test {
 protected:
  // n U8 tensors of `size` bytes each; odd sizes keep tensors off page boundaries.
  io::Checkpoint Write(int n, uint64_t size) {
    path_ = dir_.Write("pattern.safetensors", PatternFile(n, size));
    auto checkpoint = io::OpenCheckpoint(path_);
    EXPECT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
    return std::move(*checkpoint);
  }

  // The file's bytes at [offset, offset + size), read with pread (the independent reader).
  std::vector<std::byte> Pread(uint64_t offset, uint64_t size) {
    auto file = io::OpenForRead(path_);
    EXPECT_TRUE(file.ok()) << file.status().ToString();
    std::vector<std::byte> out(size);
    EXPECT_TRUE(io::PreadFull(file->fd.get(), out, offset).ok());
    return out;
  }

  // Ranges covering every tensor of file 0.
  static std::vector<PopulateRange> AllTensors(const io::Checkpoint& checkpoint) {
    std::vector<PopulateRange> ranges;
    for (const io::TensorInfo& t : checkpoint.files[0].header.tensors) {
      ranges.push_back({0, t.begin, t.size_bytes()});
    }
    return ranges;
  }

  shardstream::testing::ScratchDir dir_;
  std::filesystem::path path_;
};

TEST_F(MappedTest, ViewsAreByteEqualToPread) {
  io::Checkpoint checkpoint = Write(5, 4096 * 3 + 17);
  auto mapped = MappedCheckpoint::Map(checkpoint);
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  ASSERT_EQ(mapped->size(), 1u);
  const uint64_t data_offset = checkpoint.files[0].header.data_offset();
  std::span<std::byte> data = mapped->Data(0);
  ASSERT_EQ(data.size(), checkpoint.files[0].header.data_bytes());
  for (const io::TensorInfo& t : checkpoint.files[0].header.tensors) {
    std::vector<std::byte> want = Pread(data_offset + t.begin, t.size_bytes());
    ASSERT_EQ(std::memcmp(data.data() + t.begin, want.data(), want.size()), 0) << t.name;
    EXPECT_EQ(data[t.begin + 5], PatternByte(std::stoi(t.name.substr(1)), 5)) << t.name;
  }
}

TEST_F(MappedTest, WritesToTheMappingNeverReachTheFile) {
  io::Checkpoint checkpoint = Write(2, 8192 + 3);
  const uint64_t data_offset = checkpoint.files[0].header.data_offset();
  const std::vector<std::byte> before = Pread(data_offset, 2 * (8192 + 3));
  {
    auto mapped = MappedCheckpoint::Map(checkpoint);
    ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
    std::span<std::byte> data = mapped->Data(0);
    std::memset(data.data(), 0x5A, data.size());  // every page, copy on write
    EXPECT_EQ(data[100], std::byte{0x5A});
    // A second mapping of the same file still sees the file's bytes.
    auto other = MappedCheckpoint::Map(checkpoint);
    ASSERT_TRUE(other.ok()) << other.status().ToString();
    EXPECT_EQ(std::memcmp(other->Data(0).data(), before.data(), before.size()), 0);
  }
  EXPECT_EQ(Pread(data_offset, before.size()), before);
}

TEST_F(MappedTest, FileMappingLivesWhileAnyHolderDoes) {
  io::Checkpoint checkpoint = Write(3, 5000);
  std::shared_ptr<io::MappedFile> kept;
  uint64_t data_offset = 0;
  {
    auto mapped = MappedCheckpoint::Map(checkpoint);
    ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
    kept = mapped->file(0);
    data_offset = mapped->data_offset(0);
  }  // the MappedCheckpoint is gone; `kept` holds the mapping
  const io::TensorInfo& t2 = checkpoint.files[0].header.tensors[2];
  const std::byte* view = kept->data() + data_offset + t2.begin;
  for (uint64_t b = 0; b < t2.size_bytes(); ++b) ASSERT_EQ(view[b], PatternByte(2, b)) << b;
}

TEST_F(MappedTest, MapRefusesAFileThatChangedSinceValidation) {
  io::Checkpoint checkpoint = Write(2, 4096);
  shardstream::testing::Truncate(path_, checkpoint.files[0].header.file_bytes - 1);
  auto mapped = MappedCheckpoint::Map(checkpoint);
  ASSERT_FALSE(mapped.ok());
  EXPECT_EQ(mapped.status().rule(), "file-changed");
  EXPECT_EQ(mapped.status().path(), path_.string());
}

TEST_F(MappedTest, PopulateCountsTheBytesOfTheRangesOnce) {
  io::Checkpoint checkpoint = Write(4, 100000 + 7);
  auto mapped = MappedCheckpoint::Map(checkpoint);
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  const auto& tensors = checkpoint.files[0].header.tensors;
  // t0 twice, t1 overlapping t0's tail and an empty range: t0 ∪ t1 ∪ t3.
  std::vector<PopulateRange> ranges = {
      {0, tensors[0].begin, tensors[0].size_bytes()},
      {0, tensors[3].begin, tensors[3].size_bytes()},
      {0, tensors[0].begin, tensors[0].size_bytes()},
      {0, tensors[1].begin - 10, tensors[1].size_bytes() + 10},
      {0, tensors[2].begin, 0},
  };
  PopulateOptions options;
  options.chunk_bytes = 64 << 10;
  options.threads = 2;
  PopulateReport report;
  ASSERT_TRUE(Populate(*mapped, ranges, options, &report).ok());
  EXPECT_EQ(report.populated_bytes,
            tensors[0].size_bytes() + tensors[1].size_bytes() + tensors[3].size_bytes());
  EXPECT_GE(report.chunks, 3u * 100000 / (64 << 10));
  EXPECT_EQ(report.method, "madvise");  // Linux >= 5.14; the touch fallback has its own test
  EXPECT_GT(report.seconds, 0.0);
  EXPECT_GE(report.threads, 1);
}

TEST_F(MappedTest, PopulateMakesAColdFileResidentOnSeveralThreads) {
  // 64 MiB in 256 chunks, dropped from the page cache first: every chunk waits on the disk, so
  // the workers overlap (a warm populate of 64 MiB takes about a millisecond, over before a
  // second thread has started on a busy machine, and proves nothing about parallelism).
  io::Checkpoint checkpoint = Write(16, (4ull << 20) + 1);
  auto file = io::OpenForRead(path_);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  for (ExecutorKind kind : shardstream::testing::kTestExecutors) {
    SCOPED_TRACE(std::string(ExecutorName(kind)));
    ASSERT_TRUE(io::DropCachedPages(file->fd.get()).ok());
    auto cold = io::ResidentFraction(file->fd.get(), file->size_bytes);
    ASSERT_TRUE(cold.ok()) << cold.status().ToString();
    if (*cold > 0.5) GTEST_SKIP() << "the page cache kept the file (tmpfs?): nothing to populate";
    auto mapped = MappedCheckpoint::Map(checkpoint);
    ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
    PopulateOptions options;
    options.threads = 4;
    options.chunk_bytes = 256 << 10;
    options.executor = kind;
    std::atomic<uint64_t> done{0};
    options.done_bytes = &done;
    PopulateReport report;
    ASSERT_TRUE(Populate(*mapped, AllTensors(checkpoint), options, &report).ok());
    EXPECT_GE(report.threads, 2) << report.chunks << " chunks in " << report.seconds << " s";
    EXPECT_LE(report.threads, 4);
    EXPECT_EQ(report.populated_bytes, checkpoint.files[0].header.data_bytes());
    EXPECT_EQ(done.load(), report.populated_bytes);
    auto warm = io::ResidentFraction(file->fd.get(), file->size_bytes);
    ASSERT_TRUE(warm.ok());
    EXPECT_GT(*warm, 0.99) << "populate left pages out of the page cache (cold: " << *cold << ")";
  }
}

TEST_F(MappedTest, SkipResidentLeavesWarmChunksAndPopulatesColdOnes) {
  io::Checkpoint checkpoint = Write(8, (1ull << 20) + 1);
  auto file = io::OpenForRead(path_);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  const uint64_t data_bytes = checkpoint.files[0].header.data_bytes();
  PopulateOptions options;
  options.threads = 2;
  options.chunk_bytes = 1 << 20;
  options.skip_resident = true;
  std::atomic<uint64_t> done{0};
  options.done_bytes = &done;

  // Warm: every chunk is left alone, counted, and no thread populates.
  {
    auto mapped = MappedCheckpoint::Map(checkpoint);
    ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
    PopulateReport first;
    ASSERT_TRUE(Populate(*mapped, AllTensors(checkpoint), {}, &first).ok());  // makes it warm
    EXPECT_EQ(first.resident_bytes, 0u) << "skip_resident is off by default";
    PopulateReport report;
    ASSERT_TRUE(Populate(*mapped, AllTensors(checkpoint), options, &report).ok());
    EXPECT_EQ(report.populated_bytes, data_bytes);
    EXPECT_EQ(report.resident_bytes, data_bytes);
    EXPECT_EQ(report.threads, 0);
    EXPECT_EQ(done.load(), data_bytes);
  }

  // Cold: nothing is resident, so every chunk is populated (and the file is resident after).
  ASSERT_TRUE(io::DropCachedPages(file->fd.get()).ok());
  auto cold = io::ResidentFraction(file->fd.get(), file->size_bytes);
  ASSERT_TRUE(cold.ok()) << cold.status().ToString();
  if (*cold > 0.01) GTEST_SKIP() << "the page cache kept the file (tmpfs?): nothing is cold";
  auto mapped = MappedCheckpoint::Map(checkpoint);
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  done = 0;
  PopulateReport report;
  ASSERT_TRUE(Populate(*mapped, AllTensors(checkpoint), options, &report).ok());
  EXPECT_EQ(report.populated_bytes, data_bytes);
  EXPECT_EQ(report.resident_bytes, 0u);
  EXPECT_GE(report.threads, 1);
  EXPECT_EQ(done.load(), data_bytes);
  auto warm = io::ResidentFraction(file->fd.get(), file->size_bytes);
  ASSERT_TRUE(warm.ok());
  EXPECT_GT(*warm, 0.99);
  const std::byte* data = mapped->Data(0).data();
  for (const auto& t : checkpoint.files[0].header.tensors) {
    for (uint64_t b = 0; b < t.size_bytes(); b += 4093) {
      ASSERT_EQ(data[t.begin + b], PatternByte(std::stoi(t.name.substr(1)), b)) << t.name;
    }
  }
}

TEST_F(MappedTest, TouchFallbackLeavesTheSameBytes) {
  io::Checkpoint checkpoint = Write(3, 70000 + 1);
  auto mapped = MappedCheckpoint::Map(checkpoint);
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  PopulateOptions options;
  options.method = PopulateMethod::kTouch;
  PopulateReport report;
  ASSERT_TRUE(Populate(*mapped, AllTensors(checkpoint), options, &report).ok());
  EXPECT_EQ(report.method, "touch");
  EXPECT_EQ(report.populated_bytes, 3u * (70000 + 1));
  const uint64_t data_offset = checkpoint.files[0].header.data_offset();
  std::vector<std::byte> want = Pread(data_offset, report.populated_bytes);
  EXPECT_EQ(std::memcmp(mapped->Data(0).data(), want.data(), want.size()), 0);
}

TEST_F(MappedTest, RangeOutsideTheDataSectionIsRefusedBeforeAnyPage) {
  io::Checkpoint checkpoint = Write(1, 4096);
  auto mapped = MappedCheckpoint::Map(checkpoint);
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  PopulateReport report;
  std::vector<PopulateRange> past_end = {{0, 4000, 97}};
  io::Status status = Populate(*mapped, past_end, {}, &report);
  EXPECT_EQ(status.rule(), "populate-range");
  EXPECT_EQ(status.path(), path_.string());
  std::vector<PopulateRange> overflow = {{0, 1, ~0ull}};
  EXPECT_EQ(Populate(*mapped, overflow, {}, &report).rule(), "populate-range");
  std::vector<PopulateRange> no_file = {{1, 0, 1}};
  EXPECT_EQ(Populate(*mapped, no_file, {}, &report).rule(), "populate-range");
}

TEST_F(MappedTest, TruncatedWhileMappedIsAnErrorNotSigbus) {
  io::Checkpoint checkpoint = Write(4, 64 << 10);
  auto mapped = MappedCheckpoint::Map(checkpoint);
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  shardstream::testing::Truncate(path_, 4096);
  PopulateOptions options;
  options.method = PopulateMethod::kMadvise;  // the touch fallback would raise SIGBUS here
  PopulateReport report;
  io::Status status = Populate(*mapped, AllTensors(checkpoint), options, &report);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.rule(), "file-changed") << status.ToString();
  EXPECT_EQ(status.path(), path_.string());
}

TEST_F(MappedTest, CancelStopsPopulate) {
  io::Checkpoint checkpoint = Write(2, 1 << 20);
  auto mapped = MappedCheckpoint::Map(checkpoint);
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  std::atomic<bool> cancel{true};
  PopulateOptions options;
  options.cancel = &cancel;
  PopulateReport report;
  EXPECT_EQ(Populate(*mapped, AllTensors(checkpoint), options, &report).rule(), "cancelled");
}

}  // namespace
}  // namespace shardstream::engine
