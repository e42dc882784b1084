#include "io/checkpoint.h"

#include "tests/support/test_files.h"

#include <unistd.h>

#include <filesystem>
#include <gtest/gtest.h>
#include <string>
#include <utility>
#include <vector>

namespace shardstream::io {
namespace {

namespace fs = std::filesystem;
using shardstream::testing::SafetensorsBytes;
using shardstream::testing::ScratchDir;

// A valid file holding U8 tensors of the given names and sizes.
std::string Shard(const std::vector<std::pair<std::string, uint64_t>>& tensors) {
  std::string header = "{";
  std::string data;
  uint64_t offset = 0;
  for (const auto& [name, size] : tensors) {
    if (header.size() > 1) header += ",";
    header += "\"" + name + "\":{\"dtype\":\"U8\",\"shape\":[" + std::to_string(size) +
              "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + size) + "]}";
    offset += size;
    data += std::string(size, static_cast<char>('a' + name.size() % 26));
  }
  header += "}";
  return SafetensorsBytes(header, data);
}

std::string Index(const std::vector<std::pair<std::string, std::string>>& weight_map) {
  std::string json = "{\"metadata\":{\"total_size\":0},\"weight_map\":{";
  for (size_t i = 0; i < weight_map.size(); ++i) {
    if (i) json += ",";
    json += "\"" + weight_map[i].first + "\":\"" + weight_map[i].second + "\"";
  }
  return json + "}}";
}

// Two shards and an index that agree.
void WriteSharded(const ScratchDir& dir) {
  dir.Write("model-00001-of-00002.safetensors", Shard({{"embed", 4}, {"layer.0", 3}}));
  dir.Write("model-00002-of-00002.safetensors", Shard({{"layer.1", 3}, {"head", 5}}));
  dir.Write("model.safetensors.index.json", Index({{"embed", "model-00001-of-00002.safetensors"},
                                                   {"layer.0", "model-00001-of-00002.safetensors"},
                                                   {"layer.1", "model-00002-of-00002.safetensors"},
                                                   {"head", "model-00002-of-00002.safetensors"}}));
}

void ExpectRule(const Result<Checkpoint>& result, std::string_view rule, std::string_view path_end,
                std::string_view tensor = {}) {
  ASSERT_FALSE(result.ok()) << "accepted";
  const Status& s = result.status();
  EXPECT_EQ(s.rule(), rule) << s.ToString();
  EXPECT_TRUE(s.path().ends_with(path_end)) << s.ToString();
  EXPECT_EQ(s.tensor(), tensor) << s.ToString();
}

TEST(CheckpointTest, OpensASingleFile) {
  auto result = OpenCheckpoint(shardstream::testing::Fixture("mixed.safetensors"));
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->layout, CheckpointLayout::kSingleFile);
  EXPECT_EQ(result->tensor_count(), 10u);
  EXPECT_EQ(result->file_bytes(), 11277311u);
}

TEST(CheckpointTest, OpensAnIndexedFolderAndTheIndexItself) {
  ScratchDir dir;
  WriteSharded(dir);
  for (const fs::path& source : {dir.path(), dir.path() / "model.safetensors.index.json"}) {
    auto result = OpenCheckpoint(source);
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    EXPECT_EQ(result->layout, CheckpointLayout::kIndexed);
    ASSERT_EQ(result->files.size(), 2u);
    EXPECT_EQ(result->tensor_count(), 4u);
    EXPECT_EQ(result->data_bytes(), 15u);
    auto head = result->Find("head");
    ASSERT_TRUE(head.has_value());
    EXPECT_EQ(result->files[head->file].path.filename(), "model-00002-of-00002.safetensors");
    EXPECT_EQ(result->tensor(*head).size_bytes(), 5u);
    EXPECT_FALSE(result->Find("nope").has_value());
  }
}

TEST(CheckpointTest, OpensAFolderOfShardsWithoutIndex) {
  ScratchDir dir;
  dir.Write("b.safetensors", Shard({{"y", 2}}));
  dir.Write("a.safetensors", Shard({{"x", 1}}));
  dir.Write("notes.txt", "not a shard");
  auto result = OpenCheckpoint(dir.path());
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->layout, CheckpointLayout::kShardFolder);
  ASSERT_EQ(result->files.size(), 2u);
  EXPECT_EQ(result->files[0].path.filename(), "a.safetensors");
}

TEST(CheckpointTest, PrefersModelSafetensorsInAFolder) {
  ScratchDir dir;
  WriteSharded(dir);
  dir.Write("model.safetensors", Shard({{"only", 1}}));
  auto result = OpenCheckpoint(dir.path());
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->layout, CheckpointLayout::kSingleFile);
  EXPECT_EQ(result->tensor_count(), 1u);
}

TEST(CheckpointTest, MissingPathIsNotFound) {
  ScratchDir dir;
  ExpectRule(OpenCheckpoint(dir.path() / "absent"), "not-found", "absent");
}

TEST(CheckpointTest, EmptyFolderHasNoCheckpoint) {
  ScratchDir dir;
  ExpectRule(OpenCheckpoint(dir.path()), "no-checkpoint", dir.path().filename().string());
}

TEST(CheckpointTest, SeveralIndexesAreAmbiguous) {
  ScratchDir dir;
  dir.Write("a.safetensors.index.json", Index({}));
  dir.Write("b.safetensors.index.json", Index({}));
  ExpectRule(OpenCheckpoint(dir.path()), "ambiguous-index", dir.path().filename().string());
}

TEST(CheckpointTest, IndexThatIsNotJson) {
  ScratchDir dir;
  auto index = dir.Write("model.safetensors.index.json", "{\"weight_map\": ");
  ExpectRule(OpenCheckpoint(index), "index-json", "model.safetensors.index.json");
}

TEST(CheckpointTest, IndexWithoutWeightMap) {
  ScratchDir dir;
  auto index = dir.Write("model.safetensors.index.json", "{\"metadata\":{}}");
  ExpectRule(OpenCheckpoint(index), "index-weight-map", "model.safetensors.index.json");
}

TEST(CheckpointTest, IndexWithNonStringShard) {
  ScratchDir dir;
  auto index = dir.Write("model.safetensors.index.json", "{\"weight_map\":{\"a\":1}}");
  ExpectRule(OpenCheckpoint(index), "index-weight-map", "model.safetensors.index.json", "a");
}

TEST(CheckpointTest, IndexShardOutsideTheFolder) {
  ScratchDir dir;
  dir.Write("outside.safetensors", Shard({{"a", 1}}));
  auto index =
      dir.Write("sub/model.safetensors.index.json", Index({{"a", "../outside.safetensors"}}));
  ExpectRule(OpenCheckpoint(index), "index-shard-path", "model.safetensors.index.json", "a");
  auto absolute = dir.Write("abs/model.safetensors.index.json",
                            Index({{"a", (dir.path() / "outside.safetensors").string()}}));
  ExpectRule(OpenCheckpoint(absolute), "index-shard-path", "model.safetensors.index.json", "a");
}

TEST(CheckpointTest, IndexNamesAMissingShard) {
  ScratchDir dir;
  WriteSharded(dir);
  fs::remove(dir.path() / "model-00002-of-00002.safetensors");
  auto result = OpenCheckpoint(dir.path());
  ExpectRule(result, "index-shard-missing", "model.safetensors.index.json");
  EXPECT_NE(result.status().message().find("model-00002-of-00002.safetensors"), std::string::npos);
}

TEST(CheckpointTest, IndexMapsATensorToAShardWithoutIt) {
  ScratchDir dir;
  WriteSharded(dir);
  dir.Write("model.safetensors.index.json", Index({{"embed", "model-00001-of-00002.safetensors"},
                                                   {"layer.0", "model-00001-of-00002.safetensors"},
                                                   {"layer.1", "model-00002-of-00002.safetensors"},
                                                   {"head", "model-00002-of-00002.safetensors"},
                                                   {"ghost", "model-00001-of-00002.safetensors"}}));
  ExpectRule(OpenCheckpoint(dir.path()), "index-tensor-missing", "model.safetensors.index.json",
             "ghost");
}

TEST(CheckpointTest, ShardTensorMissingFromTheIndex) {
  ScratchDir dir;
  WriteSharded(dir);
  dir.Write("model.safetensors.index.json", Index({{"embed", "model-00001-of-00002.safetensors"},
                                                   {"layer.1", "model-00002-of-00002.safetensors"},
                                                   {"head", "model-00002-of-00002.safetensors"}}));
  ExpectRule(OpenCheckpoint(dir.path()), "index-tensor-unmapped",
             "model-00001-of-00002.safetensors", "layer.0");
}

TEST(CheckpointTest, TensorInTwoShards) {
  ScratchDir dir;
  dir.Write("s1.safetensors", Shard({{"a", 1}, {"dup", 2}}));
  dir.Write("s2.safetensors", Shard({{"dup", 2}}));
  auto index = dir.Write("model.safetensors.index.json",
                         Index({{"a", "s1.safetensors"}, {"dup", "s2.safetensors"}}));
  ExpectRule(OpenCheckpoint(index), "duplicate-tensor", "s2.safetensors", "dup");
  fs::remove(index);
  ExpectRule(OpenCheckpoint(dir.path()), "duplicate-tensor", "s2.safetensors", "dup");
}

TEST(CheckpointTest, InvalidShardReportsTheShardsOwnRule) {
  ScratchDir dir;
  WriteSharded(dir);
  dir.Write("model-00002-of-00002.safetensors", SafetensorsBytes("{}", "junk"));
  ExpectRule(OpenCheckpoint(dir.path()), "trailing-bytes", "model-00002-of-00002.safetensors");
}

TEST(CheckpointTest, SymlinkLoopIsAClearError) {
  ScratchDir dir;
  fs::create_symlink(dir.path() / "loop2", dir.path() / "loop1");
  fs::create_symlink(dir.path() / "loop1", dir.path() / "loop2");
  ExpectRule(OpenCheckpoint(dir.path() / "loop1"), "symlink-loop", "loop1");
}

TEST(CheckpointTest, UnreadableFileIsPermissionDenied) {
  ScratchDir dir;
  auto path = dir.Write("locked.safetensors", Shard({{"a", 1}}));
  fs::permissions(path, fs::perms::none);
  shardstream::testing::ExpectTrueWithoutPrivileges([&] {
    auto result = OpenCheckpoint(path);
    return !result.ok() && result.status().rule() == "permission-denied" &&
           result.status().path() == path.string();
  });
}

}  // namespace
}  // namespace shardstream::io

namespace shardstream::io {
namespace {

// Limits and hostile filesystems: each a clear error naming the file and the rule.

TEST(CheckpointLimitsTest, ZeroByteFileIsHeaderTooSmall) {
  ScratchDir dir;
  auto path = dir.Write("empty.safetensors", "");
  ExpectRule(OpenCheckpoint(path), "header-too-small", "empty.safetensors");
  ExpectRule(OpenCheckpoint(dir.path()), "header-too-small", "empty.safetensors");
}

TEST(CheckpointLimitsTest, FolderWithoutSafetensorsHasNoCheckpoint) {
  ScratchDir dir;
  dir.Write("config.json", "{}");
  dir.Write("README.md", "weights elsewhere");
  dir.Write("sub/model.safetensors", Shard({{"a", 1}}));  // not looked for in subfolders
  auto result = OpenCheckpoint(dir.path());
  ExpectRule(result, "no-checkpoint", dir.path().filename().string());
  EXPECT_EQ(result.status().code(), StatusCode::kNotFound);
}

// A loop where model.safetensors should be used to be skipped, and the folder then reported as
// holding no checkpoint; a looping shard was silently left out of a shard folder.
TEST(CheckpointLimitsTest, SymlinkLoopInsideAFolderIsAClearError) {
  {
    ScratchDir dir;
    fs::create_symlink(dir.path() / "model.safetensors", dir.path() / "model.safetensors");
    ExpectRule(OpenCheckpoint(dir.path()), "symlink-loop", "model.safetensors");
  }
  {
    ScratchDir dir;
    dir.Write("a.safetensors", Shard({{"a", 1}}));
    fs::create_symlink(dir.path() / "b.safetensors", dir.path() / "b.safetensors");
    ExpectRule(OpenCheckpoint(dir.path()), "symlink-loop", "b.safetensors");
  }
  {
    ScratchDir dir;
    fs::create_symlink(dir.path() / "x.safetensors.index.json",
                       dir.path() / "model.safetensors.index.json");
    fs::create_symlink(dir.path() / "model.safetensors.index.json",
                       dir.path() / "x.safetensors.index.json");
    ExpectRule(OpenCheckpoint(dir.path()), "symlink-loop", "model.safetensors.index.json");
  }
}

TEST(CheckpointLimitsTest, DanglingSymlinkInAFolderIsSkipped) {
  ScratchDir dir;
  dir.Write("a.safetensors", Shard({{"a", 1}}));
  fs::create_symlink(dir.path() / "gone", dir.path() / "b.safetensors");
  auto result = OpenCheckpoint(dir.path());
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->files.size(), 1u);
}

TEST(CheckpointLimitsTest, UnreadableFolderIsPermissionDenied) {
  ScratchDir dir;
  const fs::path folder = dir.path() / "locked";
  dir.Write("locked/model.safetensors", Shard({{"a", 1}}));
  // The scratch folder is 0700: let the unprivileged child reach `locked`, so that it is the
  // folder's own permissions that stop it.
  shardstream::testing::Chmod(dir.path(), 0755);
  shardstream::testing::Chmod(folder, 0);
  shardstream::testing::ExpectTrueWithoutPrivileges([&] {
    auto result = OpenCheckpoint(folder);
    return !result.ok() && result.status().rule() == "permission-denied" &&
           result.status().path().find("locked") != std::string::npos;
  });
  shardstream::testing::Chmod(folder, 0755);
}

TEST(CheckpointLimitsTest, IndexOverTheSizeLimitIsRefusedWithoutReadingIt) {
  ScratchDir dir;
  auto index = dir.Write("model.safetensors.index.json", "{}");
  shardstream::testing::Truncate(index, kMaxIndexBytes + 1);  // sparse: nothing to read
  ExpectRule(OpenCheckpoint(dir.path()), "index-too-large", "model.safetensors.index.json");
}

TEST(ShardIndexTest, ParsesTheWeightMapLastDuplicateWinning) {
  auto map =
      ParseShardIndex(R"({"weight_map":{"b":"s2","a":"s1","b":"s3"},"metadata":{}})", "i.json");
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  EXPECT_EQ(*map, (WeightMap{{"a", "s1"}, {"b", "s3"}}));
  auto bad = ParseShardIndex(R"({"weight_map":{"a":"../s"}})", "dir/i.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().rule(), "index-shard-path");
  EXPECT_EQ(bad.status().path(), "dir/i.json");
  EXPECT_EQ(bad.status().tensor(), "a");
}

}  // namespace
}  // namespace shardstream::io
