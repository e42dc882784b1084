// Element conversions between safetensors dtypes, for the host cast (engine/cast.cc) and the
// device cast kernel (cuda/cast_kernel.cu): the same functions on both sides, so a cast gives the
// same bits wherever it runs. Plain bit arithmetic, no tables: every decode of a 16- or 8-bit float
// to float is exact; encodes round to nearest even, as torch's `.to()` does. NaN payloads are not
// kept (torch's own CPU and GPU kernels differ there too); NaN stays NaN.
//
// Which pairs convert is engine/cast.h's CanCast; these functions assume it said yes.
#pragma once

#include "io/dtype.h"

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define SHARDSTREAM_HOST_DEVICE __host__ __device__
#else
#define SHARDSTREAM_HOST_DEVICE
#endif

namespace shardstream::engine::detail {

SHARDSTREAM_HOST_DEVICE inline uint32_t FloatBits(float value) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
#endif
}

SHARDSTREAM_HOST_DEVICE inline float BitsFloat(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
#endif
}

inline constexpr uint32_t kFloatQuietNan = 0x7fc00000u;

// `mantissa` (an integer below 2^24) times 2^exponent (exponent >= -126), exactly: a product with
// an exact power of two, which rounds nothing where the result is representable.
SHARDSTREAM_HOST_DEVICE inline float Scaled(uint32_t mantissa, int exponent) {
  return static_cast<float>(mantissa) * BitsFloat(static_cast<uint32_t>(exponent + 127) << 23);
}

SHARDSTREAM_HOST_DEVICE inline float Signed(bool negative, float magnitude) {
  return negative ? -magnitude : magnitude;
}

// IEEE half (F16), without branches, so that element loops vectorise. With the half's exponent
// and mantissa shifted into a float's places, adding 224 to the exponent field and scaling by
// 2^-112 rebiases a normal value exactly (15 → 127) and keeps exponent 31 at 255, infinity or NaN;
// a subnormal half is its mantissa times 2^-24, which a float with exponent -1 (0.5) and that
// mantissa in its low bits gives after subtracting 0.5.
SHARDSTREAM_HOST_DEVICE inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t magnitude = static_cast<uint32_t>(h & 0x7fffu) << 17;  // exponent at bit 27
  const float normal = BitsFloat((magnitude >> 4) + (224u << 23)) * BitsFloat(0x07800000u);
  const float subnormal = BitsFloat((magnitude >> 17) | (126u << 23)) - 0.5f;
  return BitsFloat(sign | FloatBits(magnitude < (1u << 27) ? subnormal : normal));
}

// Rounds to nearest even, without branches: every case is computed and one is selected.
SHARDSTREAM_HOST_DEVICE inline uint16_t FloatToHalf(float value) {
  const uint32_t bits = FloatBits(value);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t abs = bits & 0x7fffffffu;
  // Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even.
  const uint32_t rebased = abs - (112u << 23);
  const uint32_t normal = (rebased + 0xfffu + ((rebased >> 13) & 1u)) >> 13;
  // Subnormal (below 2^-14): |value| × 2^24 rounded to an integer by the float unit (round to
  // nearest even), read off the low bits of 2^23 + it, where floats are spaced by exactly 1.
  const float small = abs < 0x38800000u ? BitsFloat(abs) : 0.0f;
  const uint32_t subnormal = FloatBits(small * 16777216.0f + 8388608.0f) - 0x4b000000u;
  const uint32_t magnitude = abs > 0x7f800000u    ? 0x7e00u  // NaN
                             : abs >= 0x477ff000u ? 0x7c00u  // rounds to infinity
                             : abs < 0x38800000u  ? subnormal
                                                  : normal;
  return static_cast<uint16_t>(sign | magnitude);
}

// bfloat16 (BF16): the upper half of a float.
SHARDSTREAM_HOST_DEVICE inline float BF16ToFloat(uint16_t b) {
  return BitsFloat(static_cast<uint32_t>(b) << 16);
}

SHARDSTREAM_HOST_DEVICE inline uint16_t FloatToBF16(float value) {
  const uint32_t bits = FloatBits(value);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x40u;
  return static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// The 8-bit floats, decoded exactly. A sign bit, ExponentBits of exponent biased by Bias and
// MantissaBits of mantissa, subnormal below exponent 1; NaN and infinity encodings differ per
// type and are decoded by the callers.
template <int ExponentBits, int MantissaBits, int Bias>
SHARDSTREAM_HOST_DEVICE inline float MiniFloatToFloat(uint8_t b) {
  const bool negative = (b & 0x80u) != 0;
  const uint32_t exponent = (b >> MantissaBits) & ((1u << ExponentBits) - 1);
  const uint32_t mantissa = b & ((1u << MantissaBits) - 1);
  if (exponent == 0) return Signed(negative, Scaled(mantissa, 1 - Bias - MantissaBits));
  return BitsFloat((negative ? 0x80000000u : 0u) | ((exponent + 127 - Bias) << 23) |
                   (mantissa << (23 - MantissaBits)));
}

// F8_E4M3 (torch float8_e4m3fn): bias 7, no infinities, S.1111.111 is NaN.
SHARDSTREAM_HOST_DEVICE inline float E4M3ToFloat(uint8_t b) {
  if ((b & 0x7fu) == 0x7fu) return BitsFloat(kFloatQuietNan);
  return MiniFloatToFloat<4, 3, 7>(b);
}

// F8_E5M2 (torch float8_e5m2): the upper byte of an IEEE half.
SHARDSTREAM_HOST_DEVICE inline float E5M2ToFloat(uint8_t b) {
  return HalfToFloat(static_cast<uint16_t>(b << 8));
}

// The FNUZ forms: bias one higher, no infinities, no negative zero: 0x80 is the only NaN.
SHARDSTREAM_HOST_DEVICE inline float E4M3FnuzToFloat(uint8_t b) {
  if (b == 0x80u) return BitsFloat(kFloatQuietNan);
  return MiniFloatToFloat<4, 3, 8>(b);
}

SHARDSTREAM_HOST_DEVICE inline float E5M2FnuzToFloat(uint8_t b) {
  if (b == 0x80u) return BitsFloat(kFloatQuietNan);
  return MiniFloatToFloat<5, 2, 16>(b);
}

// F8_E8M0 (torch float8_e8m0fnu): a bare exponent, 2^(b - 127); 0xff is NaN.
SHARDSTREAM_HOST_DEVICE inline float E8M0ToFloat(uint8_t b) {
  if (b == 0xffu) return BitsFloat(kFloatQuietNan);
  if (b == 0) return BitsFloat(0x00400000u);  // 2^-127, a float subnormal
  return BitsFloat(static_cast<uint32_t>(b) << 23);
}

template <typename T>
SHARDSTREAM_HOST_DEVICE inline T LoadAt(const unsigned char* src, uint64_t i) {
  T value;
  std::memcpy(&value, src + i * sizeof(T), sizeof(T));
  return value;
}

template <typename T>
SHARDSTREAM_HOST_DEVICE inline void StoreAt(unsigned char* dst, uint64_t i, T value) {
  std::memcpy(dst + i * sizeof(T), &value, sizeof(T));
}

// Element i of a `from` array as a float (F32, F16, BF16 destinations) or a double (F64), as
// torch converts each: floats decode exactly, F64 rounds once to float, integers convert with
// one rounding to the destination's precision.
template <typename Wide>
SHARDSTREAM_HOST_DEVICE inline Wide ReadWide(io::DType from, const unsigned char* src, uint64_t i) {
  using io::DType;
  switch (from) {
    case DType::kBool:
      return src[i] != 0 ? Wide(1) : Wide(0);
    case DType::kU8:
      return static_cast<Wide>(src[i]);
    case DType::kI8:
      return static_cast<Wide>(static_cast<int8_t>(src[i]));
    case DType::kU16:
      return static_cast<Wide>(LoadAt<uint16_t>(src, i));
    case DType::kI16:
      return static_cast<Wide>(LoadAt<int16_t>(src, i));
    case DType::kU32:
      return static_cast<Wide>(LoadAt<uint32_t>(src, i));
    case DType::kI32:
      return static_cast<Wide>(LoadAt<int32_t>(src, i));
    case DType::kU64:
      return static_cast<Wide>(LoadAt<uint64_t>(src, i));
    case DType::kI64:
      return static_cast<Wide>(LoadAt<int64_t>(src, i));
    case DType::kF16:
      return static_cast<Wide>(HalfToFloat(LoadAt<uint16_t>(src, i)));
    case DType::kBF16:
      return static_cast<Wide>(BF16ToFloat(LoadAt<uint16_t>(src, i)));
    case DType::kF32:
      return static_cast<Wide>(LoadAt<float>(src, i));
    case DType::kF64:
      return static_cast<Wide>(LoadAt<double>(src, i));
    case DType::kF8E4M3:
      return static_cast<Wide>(E4M3ToFloat(src[i]));
    case DType::kF8E5M2:
      return static_cast<Wide>(E5M2ToFloat(src[i]));
    case DType::kF8E4M3Fnuz:
      return static_cast<Wide>(E4M3FnuzToFloat(src[i]));
    case DType::kF8E5M2Fnuz:
      return static_cast<Wide>(E5M2FnuzToFloat(src[i]));
    case DType::kF8E8M0:
      return static_cast<Wide>(E8M0ToFloat(src[i]));
    default:
      return Wide(0);  // not a source CanCast allows
  }
}

// Element i of an integer or bool `from` array, as the two's complement bits of a 64-bit value:
// narrowing keeps the low bits, as C++ (and torch) convert integers.
SHARDSTREAM_HOST_DEVICE inline uint64_t ReadInteger(io::DType from, const unsigned char* src,
                                                    uint64_t i) {
  using io::DType;
  switch (from) {
    case DType::kBool:
      return src[i] != 0 ? 1u : 0u;
    case DType::kU8:
      return src[i];
    case DType::kI8:
      return static_cast<uint64_t>(static_cast<int64_t>(static_cast<int8_t>(src[i])));
    case DType::kU16:
      return LoadAt<uint16_t>(src, i);
    case DType::kI16:
      return static_cast<uint64_t>(static_cast<int64_t>(LoadAt<int16_t>(src, i)));
    case DType::kU32:
      return LoadAt<uint32_t>(src, i);
    case DType::kI32:
      return static_cast<uint64_t>(static_cast<int64_t>(LoadAt<int32_t>(src, i)));
    case DType::kU64:
    case DType::kI64:
      return LoadAt<uint64_t>(src, i);
    default:
      return 0;  // not a source CanCast allows
  }
}

// Converts element i of `src` (`from`) into element i of `dst` (`to`).
SHARDSTREAM_HOST_DEVICE inline void ConvertElement(io::DType from, const unsigned char* src,
                                                   io::DType to, unsigned char* dst, uint64_t i) {
  using io::DType;
  switch (to) {
    case DType::kF64:
      return StoreAt(dst, i, ReadWide<double>(from, src, i));
    case DType::kF32:
      return StoreAt(dst, i, ReadWide<float>(from, src, i));
    case DType::kF16:
      return StoreAt(dst, i, FloatToHalf(ReadWide<float>(from, src, i)));
    case DType::kBF16:
      return StoreAt(dst, i, FloatToBF16(ReadWide<float>(from, src, i)));
    case DType::kBool:
      dst[i] = ReadInteger(from, src, i) != 0 ? 1 : 0;
      return;
    case DType::kU8:
    case DType::kI8:
      dst[i] = static_cast<unsigned char>(ReadInteger(from, src, i));
      return;
    case DType::kU16:
    case DType::kI16:
      return StoreAt(dst, i, static_cast<uint16_t>(ReadInteger(from, src, i)));
    case DType::kU32:
    case DType::kI32:
      return StoreAt(dst, i, static_cast<uint32_t>(ReadInteger(from, src, i)));
    case DType::kU64:
    case DType::kI64:
      return StoreAt(dst, i, ReadInteger(from, src, i));
    default:
      return;  // not a destination CanCast allows
  }
}

}  // namespace shardstream::engine::detail
