#include "io/dtype.h"

#include <gtest/gtest.h>

namespace shardstream::io {
namespace {

TEST(DTypeTest, NamesRoundTrip) {
  for (DType d : AllDTypes()) {
    std::optional<DType> parsed = ParseDType(DTypeName(d));
    ASSERT_TRUE(parsed.has_value()) << DTypeName(d);
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(AllDTypes().size(), 22u);  // the reference's list in safetensors 0.8
}

TEST(DTypeTest, NamesAreCaseSensitive) {
  EXPECT_FALSE(ParseDType("f32").has_value());
  EXPECT_FALSE(ParseDType("F8_E4M3FN").has_value());
  EXPECT_FALSE(ParseDType("").has_value());
}

TEST(DTypeTest, BitsMatchTheFormat) {
  EXPECT_EQ(DTypeBits(DType::kF4), 4u);
  EXPECT_EQ(DTypeBits(DType::kF6E3M2), 6u);
  EXPECT_EQ(DTypeBits(DType::kBool), 8u);
  EXPECT_EQ(DTypeBits(DType::kF8E8M0), 8u);
  EXPECT_EQ(DTypeBits(DType::kBF16), 16u);
  EXPECT_EQ(DTypeBits(DType::kC64), 64u);
  EXPECT_EQ(DTypeBits(DType::kU64), 64u);
}

}  // namespace
}  // namespace shardstream::io
