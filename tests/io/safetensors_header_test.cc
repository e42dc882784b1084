#include "io/safetensors_header.h"

#include "tests/support/test_files.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <gtest/gtest.h>
#include <string>
#include <utility>
#include <vector>

namespace shardstream::io {
namespace {

using shardstream::testing::SafetensorsBytes;
using shardstream::testing::SafetensorsBytesWithLength;
using shardstream::testing::ScratchDir;

// Parses a whole file image held in memory, as ReadHeader would after reading it.
Result<Header> ParseImage(const std::string& image) {
  auto length =
      ParseHeaderLength(std::as_bytes(std::span(image.data(), image.size())), image.size());
  if (!length.ok()) return length.status();
  return ParseHeader(std::string_view(image).substr(8, *length), image.size());
}

std::string Entry(std::string_view name, std::string_view dtype, std::string_view shape,
                  uint64_t begin, uint64_t end) {
  return "\"" + std::string(name) + "\":{\"dtype\":\"" + std::string(dtype) +
         "\",\"shape\":" + std::string(shape) + ",\"data_offsets\":[" + std::to_string(begin) +
         "," + std::to_string(end) + "]}";
}

struct BadCase {
  std::string name;
  std::string image;     // whole file bytes
  std::string rule;      // expected rule
  std::string tensor;    // expected tensor in the error ("" for none)
  std::string fragment;  // expected in the message
};

std::vector<BadCase> BadCases() {
  const std::string a2 = Entry("a", "U8", "[2]", 0, 2);
  std::vector<BadCase> cases = {
      {"Empty", "", "header-too-small", "", "fewer than the 8-byte"},
      {"SevenBytes", std::string(7, '\0'), "header-too-small", "", "7 bytes"},
      {"HeaderTooLarge", SafetensorsBytesWithLength(100'000'001, "{}"), "header-too-large", "",
       "exceeds the limit of 100000000"},
      {"HeaderPastEnd", SafetensorsBytesWithLength(3, "{}"), "header-length", "",
       "runs past the end"},
      {"InvalidUtf8", SafetensorsBytes("{\"a\xff\":{}}"), "header-utf8", "", "not valid UTF-8"},
      {"Overlong", SafetensorsBytes("{\"\xc0\xaf\":{}}"), "header-utf8", "", "first bad byte"},
      {"EmptyHeader", SafetensorsBytes(""), "header-json", "", "empty"},
      {"TrailingGarbage", SafetensorsBytes("{" + a2 + "} x", "xy"), "header-json", "", ""},
      {"TrailingComma", SafetensorsBytes("{" + a2 + ",}", "xy"), "header-json", "", ""},
      {"TrailingNul", SafetensorsBytes("{" + a2 + std::string("}\0", 2), "xy"), "header-json", "",
       ""},
      {"ByteOrderMark", SafetensorsBytes("\xEF\xBB\xBF{" + a2 + "}", "xy"), "header-json", "",
       "byte-order mark"},
      {"LoneSurrogate", SafetensorsBytes("{\"\\ud800\":{}}"), "header-json", "", ""},
      {"ControlCharInName", SafetensorsBytes("{\"a\x01\":{}}"), "header-json", "", ""},
      {"TooDeep",
       SafetensorsBytes("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"x\":" +
                            std::string(126, '[') + std::string(126, ']') + "}}",
                        "xy"),
       "header-json", "", "nested deeper than 127"},
      {"NumberOutOfRange",
       SafetensorsBytes(
           "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"x\":1e999}}", "xy"),
       "header-json", "", ""},
      {"TopLevelArray", SafetensorsBytes("[]"), "header-not-object", "", "not an array"},
      {"MetadataNotObject", SafetensorsBytes("{\"__metadata__\":[]}"), "metadata", "",
       "must be an object"},
      {"MetadataValueNotString", SafetensorsBytes("{\"__metadata__\":{\"k\":1}}"), "metadata", "",
       "key 'k' must be a string"},
      {"MetadataTwice", SafetensorsBytes("{\"__metadata__\":{},\"__metadata__\":{}}"), "metadata",
       "", "appears twice"},
      {"TensorNull", SafetensorsBytes("{\"a\":null}"), "tensor-entry", "a", "not null"},
      {"MissingShape", SafetensorsBytes("{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,0]}}"),
       "tensor-entry", "a", "missing field \"shape\""},
      {"DuplicateField",
       SafetensorsBytes("{\"a\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[2],"
                        "\"data_offsets\":[0,2]}}",
                        "xy"),
       "tensor-entry", "a", "appears twice"},
      {"NegativeDim", SafetensorsBytes("{" + Entry("a", "U8", "[-1]", 0, 2) + "}", "xy"),
       "tensor-entry", "a", "below zero"},
      {"NegativeZeroDim", SafetensorsBytes("{" + Entry("a", "U8", "[-0]", 0, 0) + "}"),
       "tensor-entry", "a", "non-negative integers"},
      {"FloatDim", SafetensorsBytes("{" + Entry("a", "U8", "[2.0]", 0, 2) + "}", "xy"),
       "tensor-entry", "a", "floating-point"},
      {"OffsetsThree",
       SafetensorsBytes("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2,3]}}", "xy"),
       "tensor-entry", "a", "exactly 2"},
      {"ArrayFormTooShort", SafetensorsBytes("{\"a\":[\"U8\",[2]]}", "xy"), "tensor-entry", "a",
       "[dtype, shape, data_offsets]"},
      {"DTypeNumber",
       SafetensorsBytes("{\"a\":{\"dtype\":5,\"shape\":[2],\"data_offsets\":[0,2]}}", "xy"),
       "tensor-entry", "a", "\"dtype\" must be a string"},
      {"UnknownDType", SafetensorsBytes("{" + Entry("a", "u8", "[2]", 0, 2) + "}", "xy"), "dtype",
       "a", "unknown dtype 'u8'"},
      {"FirstNotAtZero", SafetensorsBytes("{" + Entry("a", "U8", "[2]", 1, 3) + "}", "xyz"),
       "data-offsets", "a", "must begin at 0"},
      {"Hole", SafetensorsBytes("{" + a2 + "," + Entry("b", "U8", "[1]", 3, 4) + "}", "xyzw"),
       "data-offsets", "b", "leaves a hole"},
      {"Overlap",
       SafetensorsBytes(
           "{" + Entry("a", "U8", "[2]", 0, 2) + "," + Entry("b", "U8", "[2]", 1, 3) + "}", "xyz"),
       "data-offsets", "b", "overlaps the previous tensor 'a'"},
      {"EndBeforeBegin",
       SafetensorsBytes("{" + Entry("a", "U8", "[0]", 0, 0) + "," + Entry("b", "U8", "[0]", 2, 1) +
                        "}"),
       "data-offsets", "b", "end before they begin"},
      {"ShapeOverflow",
       SafetensorsBytes("{" + Entry("a", "U8", "[4294967296,4294967296,0]", 0, 0) + "}"),
       "shape-overflow", "a", "overflows 64 bits"},
      {"BitsOverflow",
       SafetensorsBytes("{" + Entry("a", "F32", "[4611686018427387904]", 0, 0) + "}"),
       "shape-overflow", "a", ""},
      {"SubByte", SafetensorsBytes("{" + Entry("a", "F4", "[3]", 0, 2) + "}", "xy"), "sub-byte",
       "a", "byte boundary"},
      {"SizeMismatch", SafetensorsBytes("{" + Entry("a", "F32", "[2]", 0, 4) + "}", "xyzw"),
       "size-mismatch", "a", "needs 8 bytes"},
      {"Truncated", SafetensorsBytes("{" + Entry("a", "U8", "[4]", 0, 4) + "}", "xy"),
       "data-truncated", "a", "only"},
      {"TrailingBytes", SafetensorsBytes("{" + a2 + "}", "xyz"), "trailing-bytes", "",
       "1 bytes after"},
  };
  return cases;
}

// gtest names the case by its name rather than dumping its bytes.
void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class BadHeaderTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadHeaderTest, IsRefusedWithItsRule) {
  const BadCase& c = GetParam();
  Result<Header> header = ParseImage(c.image);
  ASSERT_FALSE(header.ok()) << "accepted: " << c.name;
  const Status& s = header.status();
  EXPECT_EQ(s.rule(), c.rule) << s.ToString();
  EXPECT_EQ(s.tensor(), c.tensor) << s.ToString();
  EXPECT_NE(s.message().find(c.fragment), std::string::npos) << s.ToString();
  EXPECT_NE(s.ToString().find("(rule: " + c.rule + ")"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Rules, BadHeaderTest, ::testing::ValuesIn(BadCases()),
                         [](const auto& test_info) { return test_info.param.name; });

TEST(SafetensorsHeaderTest, ParsesTensorsSortedByOffset) {
  std::string header = "{" + Entry("late", "F32", "[2]", 4, 12) + "," +
                       Entry("early", "I16", "[2]", 0, 4) +
                       ",\"__metadata__\":{\"format\":\"pt\"}}";
  Result<Header> h = ParseImage(SafetensorsBytes(header, std::string(12, 'x')));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->tensors[0].name, "early");
  EXPECT_EQ(h->tensors[0].dtype, DType::kI16);
  EXPECT_EQ(h->tensors[1].name, "late");
  EXPECT_EQ(h->tensors[1].shape, (std::vector<uint64_t>{2}));
  EXPECT_EQ(h->data_offset(), 8 + header.size());
  EXPECT_EQ(h->data_bytes(), 12u);
  ASSERT_TRUE(h->metadata.has_value());
  EXPECT_EQ(h->metadata->at(0), (std::pair<std::string, std::string>{"format", "pt"}));
  ASSERT_NE(h->Find("late"), nullptr);
  EXPECT_EQ(h->Find("late")->begin, 4u);
  EXPECT_EQ(h->Find("missing"), nullptr);
}

TEST(SafetensorsHeaderTest, AcceptsWhitespaceAroundTheObject) {
  std::string header = " \n{" + Entry("a", "U8", "[2]", 0, 2) + "}\t\r\n  ";
  Result<Header> h = ParseImage(SafetensorsBytes(header, "xy"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->tensors.size(), 1u);
}

TEST(SafetensorsHeaderTest, EmptyObjectIsAValidFileWithNoTensors) {
  Result<Header> h = ParseImage(SafetensorsBytes("{}"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_TRUE(h->tensors.empty());
  EXPECT_FALSE(h->metadata.has_value());
}

TEST(SafetensorsHeaderTest, NullMetadataIsAbsentMetadata) {
  Result<Header> h = ParseImage(SafetensorsBytes("{\"__metadata__\":null}"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_FALSE(h->metadata.has_value());
}

TEST(SafetensorsHeaderTest, RepeatedMetadataKeyKeepsTheLastValue) {
  Result<Header> h = ParseImage(SafetensorsBytes("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->metadata->size(), 1u);
  EXPECT_EQ(h->metadata->at(0).second, "b");
}

TEST(SafetensorsHeaderTest, RepeatedTensorNameKeepsTheLastEntry) {
  std::string header =
      "{" + Entry("a", "U8", "[2]", 0, 2) + "," + Entry("a", "I16", "[1]", 0, 2) + "}";
  Result<Header> h = ParseImage(SafetensorsBytes(header, "xy"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors.size(), 1u);
  EXPECT_EQ(h->tensors[0].dtype, DType::kI16);
}

TEST(SafetensorsHeaderTest, EmptyTensorsMayShareOffsets) {
  std::string header = "{" + Entry("a", "U8", "[2]", 0, 2) + "," + Entry("b", "U8", "[0]", 0, 0) +
                       "," + Entry("c", "F32", "[3,0]", 2, 2) + "," +
                       Entry("d", "F32", "[0]", 2, 2) + "}";
  Result<Header> h = ParseImage(SafetensorsBytes(header, "xy"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->tensors.size(), 4u);
}

TEST(SafetensorsHeaderTest, ScalarHasOneElement) {
  Result<Header> h =
      ParseImage(SafetensorsBytes("{" + Entry("s", "F32", "[]", 0, 4) + "}", "abcd"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_TRUE(h->tensors[0].shape.empty());
  EXPECT_EQ(h->tensors[0].numel(), 1u);
}

TEST(SafetensorsHeaderTest, AcceptsTheReferencesAlternativeSpellings) {
  // serde accepts a struct as a sequence and a unit enum variant as {"NAME": null}; so does the
  // reference, so we must too.
  Result<Header> h = ParseImage(
      SafetensorsBytes("{\"a\":[\"U8\",[2],[0,2]],\"b\":{\"dtype\":{\"I8\":null},\"shape\":[1],"
                       "\"data_offsets\":[2,3],\"extra\":{\"ignored\":[1.5,null]}}}",
                       "xyz"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors.size(), 2u);
  EXPECT_EQ(h->tensors[1].dtype, DType::kI8);
}

TEST(SafetensorsHeaderTest, AcceptsNestingUpToTheReferenceLimit) {
  // 1 (top) + 1 (tensor) + 125 arrays = 127 containers: accepted; one more is refused.
  std::string header = "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"x\":" +
                       std::string(125, '[') + std::string(125, ']') + "}}";
  Result<Header> h = ParseImage(SafetensorsBytes(header, "xy"));
  EXPECT_TRUE(h.ok()) << h.status().ToString();
}

TEST(SafetensorsHeaderTest, SubByteDTypesEndingOnAByteAreValid) {
  Result<Header> h = ParseImage(SafetensorsBytes(
      "{" + Entry("f4", "F4", "[4]", 0, 2) + "," + Entry("f6", "F6_E2M3", "[4]", 2, 5) + "}",
      "abcde"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->Find("f6")->size_bytes(), 3u);
}

TEST(SafetensorsHeaderTest, ReadHeaderNamesTheFileInErrors) {
  ScratchDir dir;
  auto path = dir.Write("bad.safetensors",
                        SafetensorsBytes("{" + Entry("w", "F32", "[2]", 0, 4) + "}", "abcd"));
  Result<Header> h = ReadHeader(path);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().path(), path.string());
  EXPECT_EQ(h.status().tensor(), "w");
  EXPECT_EQ(h.status().ToString().rfind(path.string() + ": tensor 'w': ", 0), 0u)
      << h.status().ToString();
}

TEST(SafetensorsHeaderTest, ReadHeaderHandlesHeadersLargerThanTheFirstRead) {
  // Past the 1 MiB speculative read: the rest of the header is read in a second pass.
  std::string header = "{\"__metadata__\":{\"pad\":\"" + std::string(1500000, 'p') + "\"}," +
                       Entry("a", "U8", "[2]", 0, 2) + "}";
  ScratchDir dir;
  auto path = dir.Write("big.safetensors", SafetensorsBytes(header, "xy"));
  Result<Header> h = ReadHeader(path);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->header_bytes, header.size());
  EXPECT_EQ(h->tensors.size(), 1u);
}

TEST(SafetensorsHeaderTest, ReadHeaderRefusesADirectory) {
  ScratchDir dir;
  Result<Header> h = ReadHeader(dir.path());
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().rule(), "not-a-file");
}

TEST(SafetensorsHeaderTest, ParsesTwentyThousandTensors) {
  std::string header = "{";
  for (int i = 0; i < 20000; ++i) {
    if (i) header += ",";
    header +=
        Entry("layer." + std::to_string(i) + ".weight", "BF16", "[2]", 4ull * i, 4ull * i + 4);
  }
  header += "}";
  Result<Header> h = ParseImage(SafetensorsBytes(header, std::string(80000, '\0')));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->tensors.size(), 20000u);
  EXPECT_EQ(h->Find("layer.19999.weight")->begin, 79996u);
}

}  // namespace
}  // namespace shardstream::io

namespace shardstream::io {
namespace {

using Clock = std::chrono::steady_clock;

// A header of exactly `bytes` bytes: tensors with long names (U8 [1], one byte each) up to the
// size, padded with trailing spaces (valid JSON whitespace). Returns it and its tensor count.
std::pair<std::string, uint64_t> HeaderOfSize(uint64_t bytes) {
  const std::string pad(160, 'n');
  std::string header = "{";
  header.reserve(bytes);
  uint64_t n = 0;
  while (true) {
    std::string entry = "\"" + pad + std::to_string(n) +
                        "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" +
                        std::to_string(n) + "," + std::to_string(n + 1) + "]}";
    if (header.size() + 1 + entry.size() + 1 > bytes) break;
    if (n) header += ',';
    header += entry;
    ++n;
  }
  header += '}';
  header.append(bytes - header.size(), ' ');
  return {std::move(header), n};
}

double ParseSeconds(const std::string& header, uint64_t tensors) {
  const auto start = Clock::now();
  Result<Header> h = ParseHeader(header, kHeaderLengthBytes + header.size() + tensors);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_TRUE(h.ok()) << h.status().ToString();
  if (h.ok()) {
    EXPECT_EQ(h->tensors.size(), tensors);
  }
  return seconds;
}

// The largest header the format allows parses in time linear in its size: 10× the bytes (and
// tensors) may take at most 40× the time; quadratic work would take 100×. The slack is for caches:
// the name tables of 442k tensors miss where those of 44k did not (~0.6 vs ~1.4 µs per tensor). The
// biggest file is also read through ReadHeader, as a load would.
TEST(HeaderLimitsTest, HeaderAtTheLimitParsesInLinearTime) {
  auto [small, small_tensors] = HeaderOfSize(kMaxHeaderBytes / 10);
  const double small_seconds =
      std::min(ParseSeconds(small, small_tensors), ParseSeconds(small, small_tensors));
  auto [large, large_tensors] = HeaderOfSize(kMaxHeaderBytes);
  ASSERT_EQ(large.size(), kMaxHeaderBytes);
  const double large_seconds = ParseSeconds(large, large_tensors);
  std::printf("[ parse    ] %llu-byte header (%llu tensors): %.3f s; %llu bytes: %.3f s\n",
              static_cast<unsigned long long>(large.size()),
              static_cast<unsigned long long>(large_tensors), large_seconds,
              static_cast<unsigned long long>(small.size()), small_seconds);
  EXPECT_LT(large_seconds, 40 * small_seconds + 0.1);

  ScratchDir dir;
  auto path =
      dir.Write("limit.safetensors", SafetensorsBytes(large, std::string(large_tensors, 'x')));
  Result<Header> h = ReadHeader(path);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->header_bytes, kMaxHeaderBytes);
  EXPECT_EQ(h->tensors.size(), large_tensors);
}

// 50 million '[' then as many ']': refused at the nesting limit, without recursing (no stack
// overflow) and fast.
TEST(HeaderLimitsTest, NestingAsDeepAsTheLimitAllowsIsRefusedWithoutRecursion) {
  const std::string header =
      std::string(kMaxHeaderBytes / 2, '[') + std::string(kMaxHeaderBytes / 2, ']');
  const auto start = Clock::now();
  Result<Header> h = ParseHeader(header, kHeaderLengthBytes + header.size());
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().rule(), "header-json");
  EXPECT_NE(h.status().message().find("nested deeper"), std::string::npos) << h.status().ToString();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - start).count(), 30.0);
}

TEST(HeaderLimitsTest, MetadataValueFillingTheHeaderIsAccepted) {
  const std::string prefix = "{\"__metadata__\":{\"k\":\"";
  const std::string suffix = "\"}}";
  std::string header =
      prefix + std::string(kMaxHeaderBytes - prefix.size() - suffix.size(), 'v') + suffix;
  Result<Header> h = ParseHeader(header, kHeaderLengthBytes + header.size());
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_TRUE(h->metadata.has_value());
  EXPECT_EQ(h->metadata->at(0).second.size(), kMaxHeaderBytes - prefix.size() - suffix.size());
}

}  // namespace
}  // namespace shardstream::io
