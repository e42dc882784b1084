// The fill core (engine/fill.h): strided destinations, source slices, casts out of bounded
// staging and progress over every phase, on each host route (in place, staged).
#include "engine/fill.h"

#include "engine/runs.h"
#include "tests/engine/pattern_checkpoint.h"

#include <cstring>
#include <gtest/gtest.h>
#include <vector>

namespace shardstream::engine {
namespace {

using testing::PatternByte;
using testing::PatternFile;

class FillTest : public ::testing::TestWithParam<DirectIo> {
 protected:
  // t0..t3, 4096 + 13 bytes each (odd, so no tensor starts on a block boundary).
  void SetUp() override {
    path_ = dir_.Write("pattern.safetensors", PatternFile(4, kSize));
    auto checkpoint = io::OpenCheckpoint(path_);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
    checkpoint_ = std::move(*checkpoint);
    setup_.read.direct = GetParam();
  }

  static constexpr uint64_t kSize = 4096 + 13;
  shardstream::testing::ScratchDir dir_;
  std::filesystem::path path_;
  io::Checkpoint checkpoint_;
  FillSetup setup_;
};

TEST_P(FillTest, StridedDestinationGetsTheSliceAndNothingElse) {
  // t1 as a [1, 4109] row is not interesting; view it as 7 rows of 587 and take columns
  // [100, 300) of rows 1..6 (every second one) into a [3, 200] view of a [3, 256] buffer.
  const std::vector<int64_t> shape = {7, 587};
  const std::vector<SliceDim> slice = {{1, 2, 3}, {100, 1, 200}};
  const std::vector<int64_t> strides = {256, 1};
  auto runs = SliceRuns(shape, slice, strides, 8, 8);
  ASSERT_TRUE(runs.ok()) << runs.status().ToString();
  EXPECT_EQ(runs->size(), 3u);
  std::vector<std::byte> buffer(3 * 256, std::byte{0xAA});
  std::vector<Target> targets(1);
  targets[0].source = {0, 1};
  targets[0].destination = buffer.data();
  targets[0].runs = *runs;
  ReadReport report;
  ASSERT_TRUE(Fill(checkpoint_, targets, setup_, &report).ok());
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t c = 0; c < 256; ++c) {
      const std::byte got = buffer[r * 256 + c];
      const std::byte want =
          c < 200 ? PatternByte(1, static_cast<uint64_t>((1 + 2 * r) * 587 + 100 + c))
                  : std::byte{0xAA};
      ASSERT_EQ(got, want) << "row " << r << " column " << c;
    }
  }
  EXPECT_EQ(report.direct, GetParam() == DirectIo::kOn);
}

TEST_P(FillTest, TwoSlicesOfOneTensorGoStagedAndBothLand) {
  // Halves of t2 into two buffers, and the whole of t2 into a third: one source, three targets.
  std::vector<std::byte> first(kSize / 2, std::byte{0}), second(kSize - kSize / 2, std::byte{0});
  std::vector<std::byte> whole(kSize, std::byte{0});
  std::vector<Target> targets(3);
  for (auto& t : targets) t.source = {0, 2};
  targets[0].destination = first.data();
  targets[0].runs = {engine::Run{0, 0, kSize / 2}};
  targets[1].destination = second.data();
  targets[1].runs = {engine::Run{kSize / 2, 0, kSize - kSize / 2}};
  targets[2].destination = whole.data();
  ASSERT_TRUE(Fill(checkpoint_, targets, setup_, nullptr).ok());
  for (uint64_t b = 0; b < kSize; ++b) {
    ASSERT_EQ(whole[b], PatternByte(2, b)) << b;
    ASSERT_EQ(b < kSize / 2 ? first[b] : second[b - kSize / 2], PatternByte(2, b)) << b;
  }
}

// U8 → U16, zero-extended (the one host cast, engine/cast.h): a cast any reader can check.
TEST_P(FillTest, CastsGoThroughScratchNoLargerThanTheStagingBound) {
  setup_.read.staging_bytes = 16 << 10;  // below the 16,436 bytes the casts read
  std::vector<std::vector<uint16_t>> out(4, std::vector<uint16_t>(kSize, 0xBEEF));
  std::vector<Target> targets(4);
  for (uint32_t i = 0; i < 4; ++i) {
    targets[i].source = {0, i};
    targets[i].destination = reinterpret_cast<std::byte*>(out[i].data());
    targets[i].dtype = io::DType::kU16;
  }
  std::vector<Progress> seen;
  setup_.read.progress = [&](const Progress& p) {
    seen.push_back(p);
    return true;
  };
  ReadReport report;
  io::Status status = Fill(checkpoint_, targets, setup_, &report);
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_LE(report.cast_scratch_bytes, 16u << 10);
  EXPECT_GT(report.cast_scratch_bytes, 0u);
  for (int i = 0; i < 4; ++i) {
    for (uint64_t b = 0; b < kSize; ++b) {
      ASSERT_EQ(out[i][b], static_cast<uint16_t>(PatternByte(i, b))) << "t" << i << " " << b;
    }
  }
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().done_bytes, 4 * kSize);
  for (const Progress& p : seen) EXPECT_EQ(p.total_bytes, 4 * kSize);
  for (size_t i = 1; i < seen.size(); ++i) EXPECT_GE(seen[i].done_bytes, seen[i - 1].done_bytes);
}

TEST_P(FillTest, ACastTheCastTableRefusesIsRuleCast) {
  std::vector<uint16_t> out(kSize);
  std::vector<Target> targets(1);
  targets[0].source = {0, 0};
  targets[0].destination = reinterpret_cast<std::byte*>(out.data());
  targets[0].dtype = io::DType::kF8E4M3;  // U8 into an 8-bit float: never
  io::Status status = Fill(checkpoint_, targets, setup_, nullptr);
  EXPECT_EQ(status.rule(), "cast");
  EXPECT_EQ(status.tensor(), "t0");
}

TEST_P(FillTest, ADeviceTargetWithoutAnUploaderIsRuleDevice) {
  std::vector<std::byte> out(kSize);
  std::vector<Target> targets(1);
  targets[0].source = {0, 3};
  targets[0].destination = out.data();
  targets[0].device = 0;
  io::Status status = Fill(checkpoint_, targets, setup_, nullptr);
  EXPECT_EQ(status.rule(), "device");
  EXPECT_EQ(status.tensor(), "t3");
}

TEST_P(FillTest, RunsOutsideTheTensorOrOverlappingAreRuleSlice) {
  std::vector<std::byte> out(2 * kSize);
  std::vector<Target> targets(1);
  targets[0].source = {0, 0};
  targets[0].destination = out.data();
  targets[0].runs = {engine::Run{kSize - 10, 0, 11}};
  EXPECT_EQ(Fill(checkpoint_, targets, setup_, nullptr).rule(), "slice");
  targets[0].runs = {engine::Run{0, 0, 100}, engine::Run{99, 200, 10}};
  EXPECT_EQ(Fill(checkpoint_, targets, setup_, nullptr).rule(), "slice");
}

// A gap between two wanted tensors is read through by default (one read instead of two) and
// skipped with read_gap_bytes = 0, which sliced loads use to count what they read.
TEST(FillGapTest, ReadGapBytesZeroSkipsTheGapThatTheDefaultReadsThrough) {
  constexpr uint64_t kSize = 4096 + 13;
  shardstream::testing::ScratchDir dir;
  auto checkpoint = io::OpenCheckpoint(dir.Write("gap.safetensors", PatternFile(3, kSize)));
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
  std::vector<std::byte> first(kSize), last(kSize);
  std::vector<Target> targets(2);
  targets[0].source = {0, 0};
  targets[0].destination = first.data();
  targets[1].source = {0, 2};  // t1, between them, is not wanted
  targets[1].destination = last.data();
  FillSetup setup;
  setup.read.direct = DirectIo::kOff;
  for (uint64_t gap : {kDefaultReadGapBytes, uint64_t{0}}) {
    setup.read.read_gap_bytes = gap;
    ReadReport report;
    ASSERT_TRUE(Fill(*checkpoint, targets, setup, &report).ok());
    EXPECT_EQ(report.payload_bytes, 2 * kSize);
    EXPECT_EQ(report.read_bytes, gap == 0 ? 2 * kSize : 3 * kSize) << "read_gap_bytes " << gap;
    for (uint64_t b = 0; b < kSize; ++b) {
      ASSERT_EQ(first[b], PatternByte(0, b)) << b;
      ASSERT_EQ(last[b], PatternByte(2, b)) << b;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Routes, FillTest, ::testing::Values(DirectIo::kOff, DirectIo::kOn),
                         [](const auto& param_info) {
                           return param_info.param == DirectIo::kOn ? "Staged" : "Scattered";
                         });

TEST(SliceRunsTest, AWholeContiguousTensorIsOneRun) {
  const std::vector<int64_t> shape = {4, 5, 6}, strides = {30, 6, 1};
  auto runs = ViewRuns(shape, strides, 16, 16);
  ASSERT_TRUE(runs.ok());
  ASSERT_EQ(runs->size(), 1u);
  EXPECT_EQ((*runs)[0].length, 4u * 5 * 6 * 2);
}

TEST(SliceRunsTest, ATransposedDestinationIsOneRunPerElement) {
  const std::vector<int64_t> shape = {2, 3}, strides = {1, 2};  // a [3, 2] tensor transposed
  auto runs = ViewRuns(shape, strides, 32, 32);
  ASSERT_TRUE(runs.ok());
  ASSERT_EQ(runs->size(), 6u);
  // Source element (i, j) = i * 3 + j lands at destination element i + 2 j.
  for (uint64_t k = 0; k < 6; ++k) {
    EXPECT_EQ((*runs)[k].source_offset, 4 * k);
    EXPECT_EQ((*runs)[k].destination_offset, 4 * (k / 3 + 2 * (k % 3)));
    EXPECT_EQ((*runs)[k].length, 4u);
  }
}

TEST(SliceRunsTest, ARowSliceOfAMatrixIsOneRunAndACastScalesDestinationOffsets) {
  const std::vector<int64_t> shape = {8, 16};
  const std::vector<SliceDim> slice = {{2, 1, 3}, {0, 1, 16}};
  const std::vector<int64_t> strides = {16, 1};
  auto runs = SliceRuns(shape, slice, strides, 16, 32);  // BF16 → F32
  ASSERT_TRUE(runs.ok());
  ASSERT_EQ(runs->size(), 1u);
  EXPECT_EQ((*runs)[0].source_offset, 2u * 16 * 2);
  EXPECT_EQ((*runs)[0].destination_offset, 0u);
  EXPECT_EQ((*runs)[0].length, 3u * 16 * 2);
}

TEST(SliceRunsTest, BadSlicesAreRuleSlice) {
  const std::vector<int64_t> shape = {4, 4}, strides = {4, 1};
  EXPECT_EQ(
      SliceRuns(shape, std::vector<SliceDim>{{0, 1, 5}, {0, 1, 4}}, strides, 8, 8).status().rule(),
      "slice");
  EXPECT_EQ(
      SliceRuns(shape, std::vector<SliceDim>{{0, 0, 2}, {0, 1, 4}}, strides, 8, 8).status().rule(),
      "slice");
  const std::vector<int64_t> overlapping = {0, 1};
  EXPECT_EQ(SliceRuns(shape, std::vector<SliceDim>{{0, 1, 2}, {0, 1, 4}}, overlapping, 8, 8)
                .status()
                .rule(),
            "slice");
  EXPECT_TRUE(
      SliceRuns(shape, std::vector<SliceDim>{{0, 1, 0}, {0, 1, 4}}, strides, 8, 8)->empty());
}

}  // namespace
}  // namespace shardstream::engine
