// The bundled fixtures were written by the official Rust implementation, with an independent
// per-tensor checksum list. Reading every tensor's bytes at the offsets our parser computes and
// checksumming them checks names, dtypes, shapes, order and offsets at once.
#include "io/file.h"
#include "io/safetensors_header.h"
#include "tests/support/test_files.h"

#include <fstream>
#include <gtest/gtest.h>
#include <sstream>
#include <string>
#include <vector>

namespace shardstream::io {
namespace {

struct Expected {
  std::string name, dtype, shape;
  uint64_t sum64;
};

// NAME.sum64.txt: `name DTYPE [d0, d1] sum64hex` per line, in data-offset order. Names have no
// spaces; shapes do.
std::vector<Expected> LoadSums(const std::string& fixture) {
  std::ifstream in(shardstream::testing::Fixture(fixture + ".sum64.txt"));
  std::vector<Expected> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    size_t first_space = line.find(' ');
    size_t second_space = line.find(' ', first_space + 1);
    size_t last_space = line.rfind(' ');
    Expected e;
    e.name = line.substr(0, first_space);
    e.dtype = line.substr(first_space + 1, second_space - first_space - 1);
    e.shape = line.substr(second_space + 1, last_space - second_space - 1);
    e.sum64 = std::stoull(line.substr(last_space + 1), nullptr, 16);
    out.push_back(std::move(e));
  }
  return out;
}

// Wrapping sum of little-endian u64 words, the last partial word zero-padded.
uint64_t Sum64(std::span<const std::byte> bytes) {
  uint64_t sum = 0;
  for (size_t i = 0; i < bytes.size(); i += 8) {
    uint64_t word = 0;
    for (size_t j = 0; j < 8 && i + j < bytes.size(); ++j) {
      word |= std::to_integer<uint64_t>(bytes[i + j]) << (8 * j);
    }
    sum += word;
  }
  return sum;
}

class FixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureTest, EveryTensorMatchesTheReferenceChecksums) {
  const std::string fixture = GetParam();
  const auto path = shardstream::testing::Fixture(fixture + ".safetensors");
  std::vector<Expected> expected = LoadSums(fixture);
  ASSERT_FALSE(expected.empty());

  Result<OpenFile> file = OpenForRead(path);
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  Result<Header> header = ReadHeader(file->fd.get(), file->size_bytes, path);
  ASSERT_TRUE(header.ok()) << header.status().ToString();
  ASSERT_EQ(header->tensors.size(), expected.size());

  // Empty tensors may sit anywhere among equal offsets; compare the rest in order, all by name.
  for (size_t i = 0; i < expected.size(); ++i) {
    const Expected& e = expected[i];
    const TensorInfo* t = header->Find(e.name);
    ASSERT_NE(t, nullptr) << e.name;
    EXPECT_EQ(DTypeName(t->dtype), e.dtype) << e.name;
    EXPECT_EQ(FormatShape(t->shape), e.shape) << e.name;
    if (t->size_bytes() > 0) {
      EXPECT_EQ(header->tensors[i].name, e.name) << "order at " << i;
    }
    std::vector<std::byte> bytes(t->size_bytes());
    ASSERT_TRUE(PreadFull(file->fd.get(), bytes, header->data_offset() + t->begin).ok());
    EXPECT_EQ(Sum64(bytes), e.sum64) << e.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureTest, ::testing::Values("dtypes", "mixed", "many_10k"));

TEST(FixtureTest, KnownValuesInTheDTypesFixture) {
  const auto path = shardstream::testing::Fixture("dtypes.safetensors");
  Result<OpenFile> file = OpenForRead(path);
  ASSERT_TRUE(file.ok());
  Result<Header> header = ReadHeader(file->fd.get(), file->size_bytes, path);
  ASSERT_TRUE(header.ok()) << header.status().ToString();

  const TensorInfo* scalar = header->Find("scalar_f32");
  ASSERT_NE(scalar, nullptr);
  EXPECT_TRUE(scalar->shape.empty());
  float value = 0;
  ASSERT_TRUE(PreadFull(file->fd.get(), std::as_writable_bytes(std::span(&value, 1)),
                        header->data_offset() + scalar->begin)
                  .ok());
  EXPECT_EQ(value, 3.25f);

  const TensorInfo* weird = header->Find("weird.name/with-chars_\xc3\xa9");
  EXPECT_NE(weird, nullptr);
  ASSERT_TRUE(header->metadata.has_value());
}

}  // namespace
}  // namespace shardstream::io
