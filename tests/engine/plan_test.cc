#include "engine/plan.h"

#include "tests/support/test_files.h"

#include <algorithm>
#include <gtest/gtest.h>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace shardstream::engine {
namespace {

using io::TensorLocation;

// A checkpoint built in memory: one file per entry of `files`, each a list of tensor sizes laid out
// back to back after a header of `header_bytes`.
io::Checkpoint MakeCheckpoint(const std::vector<std::vector<uint64_t>>& files,
                              uint64_t header_bytes = 100) {
  io::Checkpoint checkpoint;
  for (size_t f = 0; f < files.size(); ++f) {
    io::CheckpointFile file;
    file.path = "file" + std::to_string(f);
    file.header.header_bytes = header_bytes;
    uint64_t offset = 0;
    for (size_t t = 0; t < files[f].size(); ++t) {
      io::TensorInfo info;
      info.name = "t" + std::to_string(t);
      info.dtype = io::DType::kU8;
      info.shape = {files[f][t]};
      info.begin = offset;
      info.end = offset + files[f][t];
      offset = info.end;
      file.header.tensors.push_back(info);
    }
    file.header.file_bytes = file.header.data_offset() + offset;
    file.header.IndexNames();
    checkpoint.files.push_back(std::move(file));
  }
  return checkpoint;
}

// A plan target whose pieces must hold whole elements of `element_bytes` (1: any bytes): a cast,
// so the tensor is declared in a dtype of that element size and converted into another one.
Target WithElements(io::Checkpoint& checkpoint, TensorLocation location, uint32_t element_bytes,
                    std::vector<Run> runs = {}) {
  Target target{location, nullptr, std::move(runs)};
  io::DType& declared = checkpoint.files[location.file].header.tensors[location.index].dtype;
  switch (element_bytes) {
    case 1:
      declared = io::DType::kU8;
      break;
    case 2:
      declared = io::DType::kF16, target.dtype = io::DType::kF32;
      break;
    case 4:
      declared = io::DType::kF32, target.dtype = io::DType::kF64;
      break;
    case 8:
      declared = io::DType::kF64, target.dtype = io::DType::kF32;
      break;
    default:  // no dtype has elements of this size: a sub-byte one, which cannot be cut at all
      declared = io::DType::kF4, target.dtype = io::DType::kF32;
  }
  return target;
}

uint64_t AlignUpForTest(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

// Whole tensors, as they are stored.
std::vector<Target> Whole(const std::vector<TensorLocation>& locations) {
  std::vector<Target> targets;
  for (const TensorLocation& location : locations) targets.emplace_back(location, nullptr);
  return targets;
}

std::vector<TensorLocation> All(const io::Checkpoint& checkpoint) {
  std::vector<TensorLocation> out;
  for (uint32_t f = 0; f < checkpoint.files.size(); ++f) {
    for (uint32_t t = 0; t < checkpoint.files[f].header.tensors.size(); ++t) out.push_back({f, t});
  }
  return out;
}

// Every byte of every target is covered exactly once, pieces stay inside their chunks, chunks
// are aligned, sorted and within the size limit, and do not overlap, except after a piece cut on
// an element (`element_bytes[i]` > 1 for target i; empty: all 1): then by at most one alignment
// block (less than a block and an element where elements are larger than blocks), and every piece
// of such a target holds whole elements.
void ExpectCoversExactly(const io::Checkpoint& checkpoint,
                         const std::vector<TensorLocation>& targets, const ReadPlan& plan,
                         const PlanOptions& options,
                         const std::vector<uint32_t>& element_bytes = {}) {
  auto element = [&](uint32_t target) {
    return element_bytes.empty() ? uint64_t{1} : uint64_t{element_bytes[target]};
  };
  uint64_t max_element = 1;
  for (uint32_t e : element_bytes) max_element = std::max<uint64_t>(max_element, e);
  std::vector<std::vector<int>> covered(targets.size());
  for (size_t i = 0; i < targets.size(); ++i) {
    covered[i].assign(checkpoint.tensor(targets[i]).size_bytes(), 0);
  }
  uint64_t read_bytes = 0;
  const uint64_t wanted =
      max_element > 1 ? std::max(options.chunk_bytes, 2 * options.alignment_bytes + max_element)
                      : options.chunk_bytes;
  const uint64_t limit =
      (wanted + options.alignment_bytes - 1) / options.alignment_bytes * options.alignment_bytes;
  const uint64_t max_overlap = max_element > 1 ? (max_element <= options.alignment_bytes
                                                      ? options.alignment_bytes
                                                      : options.alignment_bytes + max_element - 2)
                                               : 0;
  for (size_t c = 0; c < plan.chunks.size(); ++c) {
    const Chunk& chunk = plan.chunks[c];
    read_bytes += chunk.length;
    EXPECT_EQ(chunk.file_offset % options.alignment_bytes, 0u);
    EXPECT_EQ(chunk.length % options.alignment_bytes, 0u);
    EXPECT_LE(chunk.length, limit);
    EXPECT_LE(chunk.needed_bytes, chunk.length);
    EXPECT_GT(chunk.piece_count, 0u);
    if (c > 0 && plan.chunks[c - 1].file == chunk.file) {
      EXPECT_LT(plan.chunks[c - 1].file_offset, chunk.file_offset);
      EXPECT_LE(plan.chunks[c - 1].file_offset + plan.chunks[c - 1].length,
                chunk.file_offset + max_overlap);
    }
    const io::Header& header = checkpoint.files[chunk.file].header;
    for (const Piece& piece : plan.PiecesOf(chunk)) {
      ASSERT_EQ(targets[piece.target].file, chunk.file);
      const io::TensorInfo& t = checkpoint.tensor(targets[piece.target]);
      EXPECT_LE(piece.chunk_offset + piece.length, chunk.needed_bytes);
      // The piece's bytes in the file are where the tensor's bytes are.
      EXPECT_EQ(chunk.file_offset + piece.chunk_offset,
                header.data_offset() + t.begin + piece.target_offset);
      EXPECT_EQ(piece.target_offset % element(piece.target), 0u) << "a piece splits an element";
      EXPECT_EQ(piece.length % element(piece.target), 0u) << "a piece splits an element";
      for (uint64_t b = 0; b < piece.length; ++b) ++covered[piece.target][piece.target_offset + b];
    }
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    for (size_t b = 0; b < covered[i].size(); ++b) {
      ASSERT_EQ(covered[i][b], 1) << "target " << i << " byte " << b;
    }
  }
  EXPECT_EQ(plan.read_bytes, read_bytes);
}

TEST(PlanTest, CoalescesAdjacentTensorsIntoOneRead) {
  io::Checkpoint checkpoint = MakeCheckpoint({{10, 20, 30}});
  auto targets = All(checkpoint);
  PlanOptions options;
  auto plan = BuildReadPlan(checkpoint, Whole(targets), options);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_EQ(plan->chunks.size(), 1u);
  EXPECT_EQ(plan->chunks[0].file_offset, 108u);  // 8-byte length + 100-byte header
  EXPECT_EQ(plan->chunks[0].length, 60u);
  EXPECT_EQ(plan->pieces.size(), 3u);
  EXPECT_EQ(plan->payload_bytes, 60u);
  ExpectCoversExactly(checkpoint, targets, *plan, options);
}

TEST(PlanTest, SplitsLargeTensorsAcrossChunks) {
  io::Checkpoint checkpoint = MakeCheckpoint({{1000, 5}});
  auto targets = All(checkpoint);
  PlanOptions options{.chunk_bytes = 256, .alignment_bytes = 1, .max_gap_bytes = 0};
  auto plan = BuildReadPlan(checkpoint, Whole(targets), options);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->chunks.size(), 4u);  // 1005 bytes in 256-byte chunks
  EXPECT_EQ(plan->max_chunk_bytes, 256u);
  ExpectCoversExactly(checkpoint, targets, *plan, options);
}

TEST(PlanTest, AlignsChunksForDirectIo) {
  io::Checkpoint checkpoint = MakeCheckpoint({{1000, 3000, 7}}, /*header_bytes=*/77);
  auto targets = All(checkpoint);
  PlanOptions options{.chunk_bytes = 1000, .alignment_bytes = 512, .max_gap_bytes = 0};
  auto plan = BuildReadPlan(checkpoint, Whole(targets), options);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->chunks[0].file_offset, 0u);  // data starts at 85: rounded down
  EXPECT_EQ(plan->max_chunk_bytes, 1024u);     // chunk size rounded up to the block
  ExpectCoversExactly(checkpoint, targets, *plan, options);
}

TEST(PlanTest, SkipsLargeGapsAndReadsThroughSmallOnes) {
  io::Checkpoint checkpoint = MakeCheckpoint({{100, 10, 100, 5000, 100}});
  // Targets 0, 2 and 4: a 10-byte gap (read through) and a 5000-byte gap (skipped).
  std::vector<TensorLocation> targets = {{0, 0}, {0, 2}, {0, 4}};
  PlanOptions options{.chunk_bytes = 1 << 20, .alignment_bytes = 1, .max_gap_bytes = 64};
  auto plan = BuildReadPlan(checkpoint, Whole(targets), options);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->chunks.size(), 2u);
  EXPECT_EQ(plan->chunks[0].length, 210u);
  EXPECT_EQ(plan->read_bytes, 310u);
  ExpectCoversExactly(checkpoint, targets, *plan, options);
}

TEST(PlanTest, EmptyTensorsNeedNoRead) {
  io::Checkpoint checkpoint = MakeCheckpoint({{0, 0}});
  auto plan = BuildReadPlan(checkpoint, Whole(All(checkpoint)), PlanOptions{});
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->chunks.empty());
  EXPECT_EQ(plan->payload_bytes, 0u);
}

TEST(PlanTest, SameTensorTwiceFillsBothTargets) {
  io::Checkpoint checkpoint = MakeCheckpoint({{64}});
  std::vector<TensorLocation> targets = {{0, 0}, {0, 0}};
  PlanOptions options;
  auto plan = BuildReadPlan(checkpoint, Whole(targets), options);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->read_bytes, 64u);
  ExpectCoversExactly(checkpoint, targets, *plan, options);
}

TEST(PlanTest, RejectsBadOptionsAndTargets) {
  io::Checkpoint checkpoint = MakeCheckpoint({{8}});
  auto targets = All(checkpoint);
  EXPECT_EQ(BuildReadPlan(checkpoint, Whole(targets), {.chunk_bytes = 0}).status().rule(),
            "plan-options");
  EXPECT_EQ(BuildReadPlan(checkpoint, Whole(targets), {.alignment_bytes = 3}).status().rule(),
            "plan-options");
  std::vector<TensorLocation> bad = {{0, 1}};
  EXPECT_EQ(BuildReadPlan(checkpoint, Whole(bad), {}).status().rule(), "plan-target");
}

TEST(PlanTest, RandomLayoutsAreCoveredExactly) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  for (int round = 0; round < 50; ++round) {
    std::vector<std::vector<uint64_t>> files(1 + rng() % 3);
    for (auto& sizes : files) {
      sizes.resize(1 + rng() % 20);
      for (auto& s : sizes) s = rng() % 4 == 0 ? 0 : rng() % 3000;
    }
    io::Checkpoint checkpoint = MakeCheckpoint(files, rng() % 600);
    std::vector<TensorLocation> targets;
    for (const TensorLocation& loc : All(checkpoint)) {
      if (rng() % 3 != 0) targets.push_back(loc);
    }
    std::shuffle(targets.begin(), targets.end(), rng);
    PlanOptions options{.chunk_bytes = 1 + rng() % 4096,
                        .alignment_bytes = uint64_t{1} << (rng() % 13),
                        .max_gap_bytes = rng() % 2000};
    auto plan = BuildReadPlan(checkpoint, Whole(targets), options);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    ExpectCoversExactly(checkpoint, targets, *plan, options);
  }
}

// The element-whole cut: a 40-byte tensor of 4-byte elements in 10-byte chunks goes in pieces of
// 8 bytes, each next chunk starting at the first byte of the element the previous one cut.
TEST(PlanTest, CastTargetPiecesEndAtTheirLastWholeElement) {
  io::Checkpoint checkpoint = MakeCheckpoint({{40}});
  const uint64_t base = checkpoint.files[0].header.data_offset();
  std::vector<Target> targets = {WithElements(checkpoint, {0, 0}, 4)};
  auto plan = BuildReadPlan(checkpoint, targets, PlanOptions{.chunk_bytes = 10});
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_EQ(plan->chunks.size(), 5u);
  for (size_t c = 0; c < 5; ++c) {
    const Chunk& chunk = plan->chunks[c];
    EXPECT_EQ(chunk.file_offset, base + 8 * c);
    ASSERT_EQ(chunk.piece_count, 1u);
    const Piece& piece = plan->PiecesOf(chunk)[0];
    EXPECT_EQ(piece.target_offset, 8 * c);
    EXPECT_EQ(piece.length, 8u);
    EXPECT_EQ(piece.chunk_offset, 0u);
  }
  EXPECT_EQ(plan->payload_bytes, 40u);

  // Aligned for O_DIRECT: the next read starts at the block holding the cut element's first
  // byte, so at most one block is read twice; a raw neighbour's bytes still land once.
  io::Checkpoint two = MakeCheckpoint({{1000, 5000}}, 4096 - 8 - 6);  // data starts at 4090
  std::vector<Target> mixed = {WithElements(two, {0, 0}, 8), WithElements(two, {0, 1}, 1)};
  std::vector<TensorLocation> locations = {{0, 0}, {0, 1}};
  const PlanOptions aligned{.chunk_bytes = 4096, .alignment_bytes = 512};
  auto cut = BuildReadPlan(two, mixed, aligned);
  ASSERT_TRUE(cut.ok()) << cut.status().ToString();
  ExpectCoversExactly(two, locations, *cut, aligned, {8, 1});
  ASSERT_EQ(two.files[0].header.data_offset(), 4090u);
  EXPECT_LE(cut->read_bytes,
            AlignUpForTest(4090 + 6000, 512) - 3584 + 512 * (cut->chunks.size() - 1));
}

TEST(PlanTest, ElementSizesThatDoNotDivideTheTensorOrItsRunsAreRefused) {
  io::Checkpoint checkpoint = MakeCheckpoint({{42}});  // not whole 4-byte elements
  std::vector<Target> ragged = {WithElements(checkpoint, {0, 0}, 4)};
  auto plan = BuildReadPlan(checkpoint, ragged, PlanOptions{});
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().rule(), "plan-target");
  EXPECT_EQ(plan.status().tensor(), "t0");
  io::Checkpoint whole = MakeCheckpoint({{40}});
  std::vector<Target> split_run = {WithElements(whole, {0, 0}, 4, {engine::Run{2, 0, 8}})};
  auto runs = BuildReadPlan(whole, split_run, PlanOptions{});
  ASSERT_FALSE(runs.ok());
  EXPECT_EQ(runs.status().rule(), "plan-target");
  std::vector<Target> zero = {WithElements(whole, {0, 0}, 0)};
  EXPECT_FALSE(BuildReadPlan(whole, zero, PlanOptions{}).ok());
}

TEST(PlanTest, RandomLayoutsWithWholeElementTargetsAreCoveredExactly) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const uint32_t widths[] = {1, 2, 4, 8};
  for (int round = 0; round < 100; ++round) {
    std::vector<std::vector<uint64_t>> files(1 + rng() % 3);
    std::vector<std::vector<uint32_t>> file_widths(files.size());
    for (size_t f = 0; f < files.size(); ++f) {
      files[f].resize(1 + rng() % 20);
      file_widths[f].resize(files[f].size());
      for (size_t t = 0; t < files[f].size(); ++t) {
        const uint32_t w = widths[rng() % 4];
        file_widths[f][t] = w;
        files[f][t] = rng() % 4 == 0 ? 0 : (rng() % 3000) / w * w;
      }
    }
    // Odd header sizes: elements do not line up with blocks.
    io::Checkpoint checkpoint = MakeCheckpoint(files, rng() % 600);
    std::vector<TensorLocation> targets;
    for (const TensorLocation& loc : All(checkpoint)) {
      if (rng() % 3 != 0) targets.push_back(loc);
    }
    std::shuffle(targets.begin(), targets.end(), rng);
    std::vector<Target> plan_targets;
    std::vector<uint32_t> element_bytes;
    for (const TensorLocation& loc : targets) {
      element_bytes.push_back(file_widths[loc.file][loc.index]);
      plan_targets.push_back(WithElements(checkpoint, loc, element_bytes.back()));
    }
    PlanOptions options{.chunk_bytes = 1 + rng() % 4096,
                        .alignment_bytes = uint64_t{1} << (rng() % 13),
                        .max_gap_bytes = rng() % 2000};
    SCOPED_TRACE("round " + std::to_string(round) + ", chunk " +
                 std::to_string(options.chunk_bytes) + ", alignment " +
                 std::to_string(options.alignment_bytes));
    auto plan = BuildReadPlan(checkpoint, plan_targets, options);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    ExpectCoversExactly(checkpoint, targets, *plan, options, element_bytes);
  }
}

}  // namespace
}  // namespace shardstream::engine
