#include "io/safetensors_writer.h"

#include "io/file.h"
#include "io/safetensors_header.h"
#include "tests/support/test_files.h"

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <gtest/gtest.h>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace shardstream::io {
namespace {

namespace fs = std::filesystem;
using shardstream::testing::ScratchDir;

// A byte that depends on the tensor and the position in it, so misplaced pieces show.
std::byte PatternByte(size_t tensor_index, uint64_t offset) {
  return static_cast<std::byte>((tensor_index * 131 + offset * 7 + (offset >> 8)) & 0xff);
}

// Fills with PatternByte and records every call, to check the writer's contract on pieces.
struct RecordingFill {
  struct Call {
    size_t tensor_index;
    uint64_t offset;
    size_t size;
  };
  std::vector<Call> calls;

  FillFn AsFillFn() {
    return [this](size_t tensor_index, uint64_t offset, std::span<std::byte> out) {
      calls.push_back({tensor_index, offset, out.size()});
      for (size_t i = 0; i < out.size(); ++i) out[i] = PatternByte(tensor_index, offset + i);
    };
  }
};

std::vector<std::byte> ReadAll(const fs::path& path) {
  Result<OpenFile> file = OpenForRead(path);
  EXPECT_TRUE(file.ok()) << file.status().ToString();
  if (!file.ok()) return {};
  std::vector<std::byte> bytes(file->size_bytes);
  Status status = PreadFull(file->fd.get(), bytes, 0);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return bytes;
}

std::vector<fs::path> ListDir(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir)) out.push_back(entry.path());
  return out;
}

const std::vector<std::pair<std::string, std::string>> kMetadata = {{"format", "pt"},
                                                                    {"note", "a \"quoted\" value"}};

TEST(SafetensorsWriterTest, WrittenFileReadsBackWithSameTensorsAndBytes) {
  ScratchDir dir;
  const fs::path path = dir.path() / "model.safetensors";
  // Mixed dtypes, a scalar, an empty tensor, an odd-sized one (data not a multiple of 8), a
  // sub-byte dtype that ends on a byte, and one larger than a write chunk (split into pieces).
  const std::vector<TensorToWrite> tensors = {
      {"embed", DType::kBF16, {7, 3}}, {"scalar", DType::kF32, {}},
      {"empty", DType::kF16, {0, 5}},  {"odd", DType::kU8, {13}},
      {"packed", DType::kF4, {6}},     {"big", DType::kI32, {kWriteChunkBytes / 4 + 1000}},
      {"tail", DType::kF64, {2, 2}},
  };
  RecordingFill fill;
  Status status = WriteSafetensors(path, tensors, kMetadata, fill.AsFillFn());
  ASSERT_TRUE(status.ok()) << status.ToString();

  Result<Header> header = ReadHeader(path);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(header->header_bytes % 8, 0u);
  EXPECT_EQ(header->data_offset() % 8, 0u);
  ASSERT_TRUE(header->metadata.has_value());
  EXPECT_EQ(*header->metadata, kMetadata);

  // ReadHeader sorts by offset; the writer lays tensors out in the given order, so the two
  // orders agree (ties between empty tensors aside, and there is only one here).
  const std::vector<uint64_t> expected_sizes = {42, 4, 0, 13, 3, kWriteChunkBytes + 4000, 32};
  ASSERT_EQ(header->tensors.size(), tensors.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo* info = header->Find(tensors[i].name);
    ASSERT_NE(info, nullptr) << tensors[i].name;
    EXPECT_EQ(info->dtype, tensors[i].dtype) << tensors[i].name;
    EXPECT_EQ(info->shape, tensors[i].shape) << tensors[i].name;
    EXPECT_EQ(info->begin, offset) << tensors[i].name;
    EXPECT_EQ(info->size_bytes(), expected_sizes[i]) << tensors[i].name;
    offset += expected_sizes[i];
  }

  const std::vector<std::byte> bytes = ReadAll(path);
  ASSERT_EQ(bytes.size(), header->file_bytes);
  // The prefix is N, and the header's padding (if any) is spaces.
  uint64_t declared = 0;
  for (int i = 0; i < 8; ++i) declared |= std::to_integer<uint64_t>(bytes[i]) << (8 * i);
  EXPECT_EQ(declared, header->header_bytes);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorInfo* info = header->Find(tensors[i].name);
    for (uint64_t j = 0; j < info->size_bytes(); ++j) {
      ASSERT_EQ(bytes[header->data_offset() + info->begin + j], PatternByte(i, j))
          << tensors[i].name << " byte " << j;
    }
  }

  // Each byte was asked for once, in file order, in pieces of at most kWriteChunkBytes that never
  // cross a tensor boundary; the empty tensor was never asked for.
  uint64_t expected_offset = 0;
  size_t expected_tensor = 0;
  for (const RecordingFill::Call& call : fill.calls) {
    while (expected_tensor < tensors.size() && expected_offset == expected_sizes[expected_tensor]) {
      ++expected_tensor;
      expected_offset = 0;
    }
    ASSERT_EQ(call.tensor_index, expected_tensor);
    ASSERT_EQ(call.offset, expected_offset);
    ASSERT_GT(call.size, 0u);
    ASSERT_LE(call.size, kWriteChunkBytes);
    expected_offset += call.size;
  }
  EXPECT_EQ(expected_tensor, tensors.size() - 1);
  EXPECT_EQ(expected_offset, expected_sizes.back());

  EXPECT_EQ(ListDir(dir.path()), std::vector<fs::path>{path}) << "a .tmp file was left behind";
}

TEST(SafetensorsWriterTest, HeaderPaddingMatchesTheReferenceWriter) {
  // The reference pads the JSON with spaces to a multiple of 8 and puts __metadata__ first.
  const std::vector<TensorToWrite> tensors = {{"a", DType::kU8, {2}}};
  Result<std::string> header = BuildSafetensorsHeader(tensors, {{"k", "v"}});
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  const std::string json =
      R"({"__metadata__":{"k":"v"},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  EXPECT_EQ(*header, json + std::string((8 - json.size() % 8) % 8, ' '));

  Result<std::string> no_metadata = BuildSafetensorsHeader(tensors, {});
  ASSERT_TRUE(no_metadata.ok());
  EXPECT_EQ(no_metadata->rfind(R"({"a":)", 0), 0u) << *no_metadata;
}

TEST(SafetensorsWriterTest, NoTensorsWritesAValidEmptyFile) {
  ScratchDir dir;
  const fs::path path = dir.path() / "empty.safetensors";
  Status status = WriteSafetensors(path, {}, {}, [](size_t, uint64_t, std::span<std::byte>) {
    ADD_FAILURE() << "fill called for a file without tensors";
  });
  ASSERT_TRUE(status.ok()) << status.ToString();
  Result<Header> header = ReadHeader(path);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_TRUE(header->tensors.empty());
  EXPECT_EQ(header->data_bytes(), 0u);
}

TEST(SafetensorsWriterTest, ReplacesAnExistingFile) {
  ScratchDir dir;
  const fs::path path = dir.Write("m.safetensors", std::string(100, 'x'));
  const std::vector<TensorToWrite> tensors = {{"t", DType::kU8, {3}}};
  RecordingFill fill;
  ASSERT_TRUE(WriteSafetensors(path, tensors, {}, fill.AsFillFn()).ok());
  Result<Header> header = ReadHeader(path);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  EXPECT_EQ(header->tensors.size(), 1u);
}

TEST(SafetensorsWriterTest, MissingDirectoryIsAnErrorWithPathAndErrno) {
  ScratchDir dir;
  const fs::path path = dir.path() / "no-such-dir" / "model.safetensors";
  const std::vector<TensorToWrite> tensors = {{"t", DType::kU8, {3}}};
  RecordingFill fill;
  Status status = WriteSafetensors(path, tensors, {}, fill.AsFillFn());
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_EQ(status.sys_errno(), ENOENT);
  EXPECT_EQ(status.path(), path.string() + ".tmp");
  EXPECT_NE(status.ToString().find("open"), std::string::npos) << status.ToString();
  EXPECT_TRUE(fill.calls.empty());
}

TEST(SafetensorsWriterTest, ParentThatIsAFileIsAnError) {
  // Unwritable even for root (the tests may run as root, where permission bits do not stop
  // writes): a regular file used as a directory gives ENOTDIR.
  ScratchDir dir;
  const fs::path file = dir.Write("plain-file", "x");
  const std::vector<TensorToWrite> tensors = {{"t", DType::kU8, {3}}};
  RecordingFill fill;
  Status status = WriteSafetensors(file / "model.safetensors", tensors, {}, fill.AsFillFn());
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.sys_errno(), ENOTDIR);
  EXPECT_EQ(status.path(), (file / "model.safetensors").string() + ".tmp");
}

TEST(SafetensorsWriterTest, FailedRenameRemovesTheTemporaryFile) {
  // The target is a non-empty directory: everything is written, then rename() fails.
  ScratchDir dir;
  const fs::path path = dir.path() / "model.safetensors";
  dir.Write("model.safetensors/inside", "x");
  const std::vector<TensorToWrite> tensors = {{"t", DType::kU8, {3}}};
  RecordingFill fill;
  Status status = WriteSafetensors(path, tensors, {}, fill.AsFillFn());
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.sys_errno(), 0);
  EXPECT_EQ(status.path(), path.string());
  EXPECT_NE(status.ToString().find("rename"), std::string::npos) << status.ToString();
  EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
}

TEST(SafetensorsWriterTest, ThrowingFillRemovesTheTemporaryFile) {
  ScratchDir dir;
  const fs::path path = dir.path() / "model.safetensors";
  const std::vector<TensorToWrite> tensors = {{"t", DType::kU8, {kWriteChunkBytes * 2}}};
  int calls = 0;
  auto fill = [&](size_t, uint64_t, std::span<std::byte>) {
    if (++calls == 2) throw std::runtime_error("generator failed");
  };
  EXPECT_THROW((void)WriteSafetensors(path, tensors, {}, fill), std::runtime_error);
  EXPECT_TRUE(ListDir(dir.path()).empty());
}

TEST(SafetensorsWriterTest, SubByteTensorThatDoesNotEndOnAByteIsRejected) {
  ScratchDir dir;
  const fs::path path = dir.path() / "model.safetensors";
  const std::vector<TensorToWrite> tensors = {{"ok", DType::kU8, {1}},
                                              {"nibbles", DType::kF4, {3}}};
  RecordingFill fill;
  Status status = WriteSafetensors(path, tensors, {}, fill.AsFillFn());
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.rule(), "sub-byte");
  EXPECT_EQ(status.tensor(), "nibbles");
  EXPECT_TRUE(fill.calls.empty());
  EXPECT_TRUE(ListDir(dir.path()).empty());
}

TEST(SafetensorsWriterTest, ShapeOverflowIsRejected) {
  Result<uint64_t> size =
      TensorSizeBytes(DType::kF32, std::vector<uint64_t>{1ull << 32, 1ull << 31});
  ASSERT_FALSE(size.ok());
  EXPECT_EQ(size.status().rule(), "shape-overflow");
  EXPECT_EQ(*TensorSizeBytes(DType::kF6E2M3, std::vector<uint64_t>{4, 3}), 9u);
}

TEST(SafetensorsWriterTest, DuplicateAndReservedNamesAreRejected) {
  const std::vector<TensorToWrite> duplicate = {{"w", DType::kU8, {1}}, {"w", DType::kU8, {1}}};
  Result<std::string> header = BuildSafetensorsHeader(duplicate, {});
  ASSERT_FALSE(header.ok());
  EXPECT_EQ(header.status().rule(), "tensor-name");
  EXPECT_EQ(header.status().tensor(), "w");

  const std::vector<TensorToWrite> reserved = {{"__metadata__", DType::kU8, {1}}};
  EXPECT_EQ(BuildSafetensorsHeader(reserved, {}).status().rule(), "tensor-name");
}

}  // namespace
}  // namespace shardstream::io
