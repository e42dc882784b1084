// The native dequantize (engine/dequantize.h) against independent references: E2M1 and E4M3
// decoded from their bit fields with std::ldexp, products taken in double (exact for two floats)
// and rounded once to float. tests/python/test_quantized.py holds the same functions against
// transformers' own ops, bit for bit, over every byte and scale.
#include "engine/dequantize.h"

#include <cmath>
#include <cstring>
#include <gtest/gtest.h>
#include <random>
#include <vector>

namespace shardstream::engine {
namespace {

using io::DType;

float E2M1(uint8_t code) {
  const int exponent = (code >> 1) & 3;
  const int mantissa = code & 1;
  const double magnitude =
      exponent == 0 ? mantissa * 0.5 : std::ldexp(1.0 + mantissa * 0.5, exponent - 1);
  return static_cast<float>((code & 8) ? -magnitude : magnitude);
}

float E4M3(uint8_t code) {
  const int exponent = (code >> 3) & 15;
  const int mantissa = code & 7;
  const double magnitude = exponent == 0 ? std::ldexp(mantissa / 8.0, -6)
                                         : std::ldexp(1.0 + mantissa / 8.0, exponent - 7);
  return static_cast<float>((code & 0x80) ? -magnitude : magnitude);
}

uint32_t Bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

TEST(DequantizeTest, Mxfp4EveryCodeAndScaleIsTheExactProduct) {
  // One expert, one row per scale code (0..254), one group of 16 bytes holding all 256 byte
  // values over 16 rows: every (code, scale) pair appears.
  constexpr uint64_t kRows = 255 * 16;
  Mxfp4Layout layout{1, kRows, 1, 16};
  std::vector<uint8_t> blocks(kRows * 16), scales(kRows);
  for (uint64_t r = 0; r < kRows; ++r) {
    scales[r] = static_cast<uint8_t>(r / 16);
    for (int b = 0; b < 16; ++b) blocks[r * 16 + b] = static_cast<uint8_t>((r % 16) * 16 + b);
  }
  std::vector<float> out(kRows * 32);
  std::vector<uint16_t> out_bf16(kRows * 32);
  ASSERT_TRUE(DequantizeMxfp4(blocks.data(), scales.data(), layout, DType::kF32,
                              reinterpret_cast<std::byte*>(out.data()))
                  .ok());
  ASSERT_TRUE(DequantizeMxfp4(blocks.data(), scales.data(), layout, DType::kBF16,
                              reinterpret_cast<std::byte*>(out_bf16.data()))
                  .ok());
  for (uint64_t r = 0; r < kRows; ++r) {
    for (int b = 0; b < 16; ++b) {
      const uint8_t byte = blocks[r * 16 + b];
      for (int half = 0; half < 2; ++half) {
        const uint8_t code = half ? byte >> 4 : byte & 15;
        const float want = static_cast<float>(std::ldexp(E2M1(code), scales[r] - 127));
        const uint64_t at = (2 * b + half) * kRows + r;  // [1, 32, rows]: transposed
        ASSERT_EQ(Bits(out[at]), Bits(want)) << "scale " << int(scales[r]) << " code " << int(code);
        // Two significant bits: exact in BF16, whose range is float's.
        ASSERT_EQ(out_bf16[at], Bits(want) >> 16) << "scale " << int(scales[r]);
      }
    }
  }
}

TEST(DequantizeTest, Mxfp4LaysEachRowAlongTheMiddleDimension) {
  Mxfp4Layout layout{2, 3, 2, 2};  // out: [2, 8, 3]
  std::vector<uint8_t> blocks(2 * 3 * 2 * 2), scales(2 * 3 * 2);
  for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = static_cast<uint8_t>(i * 37 + 5);
  for (size_t i = 0; i < scales.size(); ++i) scales[i] = static_cast<uint8_t>(120 + i);
  std::vector<float> out(2 * 8 * 3);
  ASSERT_TRUE(DequantizeMxfp4(blocks.data(), scales.data(), layout, DType::kF32,
                              reinterpret_cast<std::byte*>(out.data()))
                  .ok());
  for (int e = 0; e < 2; ++e) {
    for (int r = 0; r < 3; ++r) {
      for (int k = 0; k < 8; ++k) {
        const int g = k / 4, b = (k % 4) / 2, half = k % 2;
        const uint8_t byte = blocks[((e * 3 + r) * 2 + g) * 2 + b];
        const uint8_t code = half ? byte >> 4 : byte & 15;
        const float want = std::ldexp(E2M1(code), scales[(e * 3 + r) * 2 + g] - 127);
        EXPECT_EQ(out[(e * 8 + k) * 3 + r], want) << e << " " << r << " " << k;
      }
    }
  }
}

TEST(DequantizeTest, Mxfp4DeclinesTheNanScaleAndOtherOutputs) {
  Mxfp4Layout layout{1, 1, 1, 16};
  std::vector<uint8_t> blocks(16, 0x21), scales(1, 0xff);
  std::vector<float> out(32);
  io::Status status = DequantizeMxfp4(blocks.data(), scales.data(), layout, DType::kF32,
                                      reinterpret_cast<std::byte*>(out.data()));
  EXPECT_EQ(status.code(), io::StatusCode::kUnsupported);
  EXPECT_EQ(status.rule(), "dequantize");
  scales[0] = 127;
  status = DequantizeMxfp4(blocks.data(), scales.data(), layout, DType::kI32,
                           reinterpret_cast<std::byte*>(out.data()));
  EXPECT_EQ(status.code(), io::StatusCode::kInvalidArgument);
}

TEST(DequantizeTest, Fp8BlockScaleIsTheFloatProductPerBlock) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 random(seed);
  BlockScaleLayout layout{2, 8, 12, 2, 3};  // blocks of 4 x 4
  std::vector<uint8_t> weight(2 * 8 * 12);
  // Codes 0..192 in order (skipping the NaN 0x7f), the rest random with the sign bit set.
  for (size_t i = 0; i < weight.size(); ++i) {
    weight[i] = static_cast<uint8_t>(i < 127 ? i : i + 1);
    if (i % 7 == 6) weight[i] = static_cast<uint8_t>((random() % 0x7f) | 0x80);
  }
  std::vector<float> scales(2 * 2 * 3);
  std::uniform_real_distribution<float> unit(-3.0f, 3.0f);
  for (float& s : scales) s = std::ldexp(unit(random), static_cast<int>(random() % 60) - 30);
  std::vector<float> out(weight.size());
  ASSERT_TRUE(DequantizeFp8BlockScale(weight.data(), reinterpret_cast<std::byte*>(scales.data()),
                                      DType::kF32, layout, DType::kF32,
                                      reinterpret_cast<std::byte*>(out.data()))
                  .ok());
  for (int b = 0; b < 2; ++b) {
    for (int i = 0; i < 8; ++i) {
      for (int j = 0; j < 12; ++j) {
        const size_t at = (b * 8 + i) * 12 + j;
        const double product =
            static_cast<double>(E4M3(weight[at])) * scales[(b * 2 + i / 4) * 3 + j / 4];
        ASSERT_EQ(Bits(out[at]), Bits(static_cast<float>(product))) << b << " " << i << " " << j;
      }
    }
  }
}

TEST(DequantizeTest, Fp8DeclinesNanCodesAndBadGrids) {
  BlockScaleLayout layout{1, 2, 2, 1, 1};
  std::vector<uint8_t> weight = {0x38, 0x7f, 0x00, 0x01};
  float scale = 2.0f;
  std::vector<uint16_t> out(4);
  io::Status status =
      DequantizeFp8BlockScale(weight.data(), reinterpret_cast<std::byte*>(&scale), DType::kF32,
                              layout, DType::kBF16, reinterpret_cast<std::byte*>(out.data()));
  EXPECT_EQ(status.code(), io::StatusCode::kUnsupported);
  weight[1] = 0x38;
  ASSERT_TRUE(DequantizeFp8BlockScale(weight.data(), reinterpret_cast<std::byte*>(&scale),
                                      DType::kF32, layout, DType::kBF16,
                                      reinterpret_cast<std::byte*>(out.data()))
                  .ok());
  EXPECT_EQ(out[0], 0x4000);  // 1.0 * 2 in BF16
  layout.scale_cols = 3;
  status = DequantizeFp8BlockScale(weight.data(), reinterpret_cast<std::byte*>(&scale), DType::kF32,
                                   layout, DType::kBF16, reinterpret_cast<std::byte*>(out.data()));
  EXPECT_EQ(status.code(), io::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shardstream::engine
