#include "integration/dtype.h"

#include <gtest/gtest.h>

namespace shardstream {
namespace {

TEST(TorchDTypeTest, ElementSizesMatchTheFormat) {
  for (io::DType d : io::AllDTypes()) {
    std::optional<c10::ScalarType> torch_type = TorchDType(d);
    const uint32_t bits = io::DTypeBits(d);
    if (bits == 6) {
      EXPECT_FALSE(torch_type.has_value()) << io::DTypeName(d);
      EXPECT_EQ(StorageDType(d), c10::ScalarType::Byte);
      continue;
    }
    ASSERT_TRUE(torch_type.has_value()) << io::DTypeName(d);
    // F4 packs two values per torch element.
    const uint32_t values_per_element = d == io::DType::kF4 ? 2 : 1;
    EXPECT_EQ(c10::elementSize(*torch_type) * 8, bits * values_per_element) << io::DTypeName(d);
  }
}

TEST(TorchDTypeTest, MapsTheFloat8Family) {
  EXPECT_EQ(TorchDType(io::DType::kF8E4M3), c10::ScalarType::Float8_e4m3fn);
  EXPECT_EQ(TorchDType(io::DType::kF8E5M2), c10::ScalarType::Float8_e5m2);
  EXPECT_EQ(TorchDType(io::DType::kF8E4M3Fnuz), c10::ScalarType::Float8_e4m3fnuz);
  EXPECT_EQ(TorchDType(io::DType::kF8E5M2Fnuz), c10::ScalarType::Float8_e5m2fnuz);
  EXPECT_EQ(TorchDType(io::DType::kF8E8M0), c10::ScalarType::Float8_e8m0fnu);
}

TEST(TorchDTypeTest, MapsUnsignedAndComplex) {
  EXPECT_EQ(TorchDType(io::DType::kU16), c10::ScalarType::UInt16);
  EXPECT_EQ(TorchDType(io::DType::kU32), c10::ScalarType::UInt32);
  EXPECT_EQ(TorchDType(io::DType::kU64), c10::ScalarType::UInt64);
  EXPECT_EQ(TorchDType(io::DType::kC64), c10::ScalarType::ComplexFloat);
  EXPECT_EQ(TorchDType(io::DType::kBool), c10::ScalarType::Bool);
}

}  // namespace
}  // namespace shardstream
