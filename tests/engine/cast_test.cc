// The one cast (engine/cast.h): its verdicts, and its values on the cases that decide rounding,
// special values and integer wrap-around. (tests/integration/dtype_test.cc holds it against
// ATen's own conversion for every pair; tests/python/test_cast.py does the same through the
// Python package.)
#include "engine/cast.h"

#include <cmath>
#include <cstring>
#include <gtest/gtest.h>
#include <limits>
#include <vector>

namespace shardstream::engine {
namespace {

using io::DType;

template <typename To, typename From>
std::vector<To> Cast(const std::vector<From>& values, DType from, DType to) {
  std::vector<To> out(values.size());
  io::Status status = HostCast(reinterpret_cast<const std::byte*>(values.data()), from,
                               reinterpret_cast<std::byte*>(out.data()), to, values.size());
  EXPECT_TRUE(status.ok()) << status.ToString();
  return out;
}

float Bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

TEST(CastTest, VerdictsFollowTheKinds) {
  EXPECT_TRUE(CanCast(DType::kBF16, DType::kF32));
  EXPECT_TRUE(CanCast(DType::kF8E4M3, DType::kBF16));
  EXPECT_TRUE(CanCast(DType::kF8E8M0, DType::kF64));
  EXPECT_TRUE(CanCast(DType::kI64, DType::kF16));
  EXPECT_TRUE(CanCast(DType::kBool, DType::kF32));
  EXPECT_TRUE(CanCast(DType::kU8, DType::kI64));
  EXPECT_TRUE(CanCast(DType::kI32, DType::kBool));
  EXPECT_TRUE(CanCast(DType::kF4, DType::kF4));  // as stored: a copy
  EXPECT_FALSE(CanCast(DType::kF32, DType::kI32));
  EXPECT_FALSE(CanCast(DType::kF32, DType::kF8E4M3));
  EXPECT_FALSE(CanCast(DType::kF4, DType::kF32));
  EXPECT_FALSE(CanCast(DType::kF6E2M3, DType::kU8));
  EXPECT_FALSE(CanCast(DType::kC64, DType::kF32));
  EXPECT_FALSE(CanCast(DType::kF32, DType::kC64));
  for (DType from : io::AllDTypes()) {
    for (DType to : io::AllDTypes()) {
      EXPECT_EQ(CanCast(from, to), CastRefusal(from, to).empty());
      if (!CanCast(from, to)) {
        std::byte in[16] = {}, out[16];
        io::Status status = HostCast(in, from, out, to, 1);
        EXPECT_EQ(status.rule(), "cast") << io::DTypeName(from) << " -> " << io::DTypeName(to);
        EXPECT_NE(status.message().find(std::string(io::DTypeName(from))), std::string::npos);
      }
    }
  }
}

TEST(CastTest, HalfAndBFloat16RoundToNearestEven) {
  // 1 + 2^-11 lies halfway between two halves: ties go to the even one (1.0); a hair above goes
  // up. BF16 the same with 2^-8.
  const std::vector<float> f = {1.0f + 0x1p-11f,
                                1.0f + 0x1p-11f + 0x1p-20f,
                                1.0f + 3 * 0x1p-11f,
                                65504.0f,
                                65520.0f,
                                0x1p-24f,
                                0x1p-25f,
                                -0.0f};
  const std::vector<uint16_t> half = Cast<uint16_t>(f, DType::kF32, DType::kF16);
  EXPECT_EQ(half, (std::vector<uint16_t>{0x3c00, 0x3c01, 0x3c02, 0x7bff, 0x7c00, 0x0001, 0x0000,
                                         0x8000}));
  const std::vector<float> b = {1.0f + 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f, 1.0f + 3 * 0x1p-8f};
  EXPECT_EQ(Cast<uint16_t>(b, DType::kF32, DType::kBF16),
            (std::vector<uint16_t>{0x3f80, 0x3f81, 0x3f82}));
  const std::vector<float> nan = {std::numeric_limits<float>::quiet_NaN()};
  const uint16_t half_nan = Cast<uint16_t>(nan, DType::kF32, DType::kF16)[0];
  const uint16_t bf16_nan = Cast<uint16_t>(nan, DType::kF32, DType::kBF16)[0];
  EXPECT_EQ(half_nan & 0x7c00, 0x7c00);
  EXPECT_NE(half_nan & 0x03ff, 0);
  EXPECT_EQ(bf16_nan & 0x7f80, 0x7f80);
  EXPECT_NE(bf16_nan & 0x007f, 0);
}

TEST(CastTest, EightBitFloatsDecodeExactly) {
  auto decode = [](DType from, std::vector<uint8_t> bytes) {
    return Cast<float>(bytes, from, DType::kF32);
  };
  // E4M3 (fn): 0x7e is the largest (448), 0x01 the smallest subnormal (2^-9), 0x7f is NaN.
  auto e4m3 = decode(DType::kF8E4M3, {0x38, 0x7e, 0x01, 0x80, 0xb8, 0x7f});
  EXPECT_EQ(e4m3[0], 1.0f);
  EXPECT_EQ(e4m3[1], 448.0f);
  EXPECT_EQ(e4m3[2], 0x1p-9f);
  EXPECT_EQ(std::signbit(e4m3[3]), true);
  EXPECT_EQ(e4m3[4], -1.0f);
  EXPECT_TRUE(std::isnan(e4m3[5]));
  // E5M2: the upper byte of a half; 0x7c is infinity.
  auto e5m2 = decode(DType::kF8E5M2, {0x3c, 0x7b, 0x01, 0x7c});
  EXPECT_EQ(e5m2[0], 1.0f);
  EXPECT_EQ(e5m2[1], 57344.0f);
  EXPECT_EQ(e5m2[2], 0x1p-16f);
  EXPECT_TRUE(std::isinf(e5m2[3]));
  // FNUZ: bias one higher, 0x80 the only NaN, no negative zero.
  auto e4m3fnuz = decode(DType::kF8E4M3Fnuz, {0x40, 0x7f, 0x01, 0x80});
  EXPECT_EQ(e4m3fnuz[0], 1.0f);
  EXPECT_EQ(e4m3fnuz[1], 240.0f);
  EXPECT_EQ(e4m3fnuz[2], 0x1p-10f);
  EXPECT_TRUE(std::isnan(e4m3fnuz[3]));
  auto e5m2fnuz = decode(DType::kF8E5M2Fnuz, {0x40, 0x7f, 0x01, 0x80});
  EXPECT_EQ(e5m2fnuz[0], 1.0f);
  EXPECT_EQ(e5m2fnuz[1], 57344.0f);
  EXPECT_EQ(e5m2fnuz[2], 0x1p-17f);
  EXPECT_TRUE(std::isnan(e5m2fnuz[3]));
  // E8M0: a bare exponent, 2^(b - 127), 0xff NaN.
  auto e8m0 = decode(DType::kF8E8M0, {127, 0, 254, 0xff});
  EXPECT_EQ(e8m0[0], 1.0f);
  EXPECT_EQ(e8m0[1], Bits(0x00400000));  // 2^-127
  EXPECT_EQ(e8m0[2], 0x1p127f);
  EXPECT_TRUE(std::isnan(e8m0[3]));
}

TEST(CastTest, IntegersConvertAsCxxDoes) {
  const std::vector<int64_t> big = {(int64_t{1} << 24) + 1, -3, int64_t{1} << 53};
  const std::vector<float> as_float = Cast<float>(big, DType::kI64, DType::kF32);
  for (size_t i = 0; i < big.size(); ++i) EXPECT_EQ(as_float[i], static_cast<float>(big[i]));
  const std::vector<int32_t> wide = {300, -1, 65537};
  EXPECT_EQ(Cast<uint8_t>(wide, DType::kI32, DType::kU8), (std::vector<uint8_t>{44, 255, 1}));
  EXPECT_EQ(Cast<int64_t>(wide, DType::kI32, DType::kI64), (std::vector<int64_t>{300, -1, 65537}));
  const std::vector<uint8_t> flags = {0, 1, 7};
  EXPECT_EQ(Cast<uint8_t>(flags, DType::kU8, DType::kBool), (std::vector<uint8_t>{0, 1, 1}));
  EXPECT_EQ(Cast<double>(flags, DType::kBool, DType::kF64), (std::vector<double>{0, 1, 1}));
}

}  // namespace
}  // namespace shardstream::engine
