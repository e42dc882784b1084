#include "python/src/host_cast.h"

#include <array>
#include <cmath>
#include <cstring>
#include <string>

namespace shardstream::python {
namespace {

using io::DType;

uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

float BitsFloat(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return BitsFloat(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent != 0) return BitsFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
  if (mantissa == 0) return BitsFloat(sign);
  // Subnormal half: value = mantissa × 2^-24.
  const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  return sign ? -magnitude : magnitude;
}

uint16_t FloatToHalf(float value) {
  const uint32_t bits = FloatBits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (abs < 0x38800000u) {
    // Result is a half subnormal (or zero): round |value| × 2^24 to an integer, ties to even.
    const float scaled = BitsFloat(abs) * 16777216.0f;  // exact: a power-of-two scale
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)));
  }
  // Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even.
  const uint32_t rebased = abs - (112u << 23);
  const uint32_t rounded = rebased + 0xfffu + ((rebased >> 13) & 1u);
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

float BF16ToFloat(uint16_t b) { return BitsFloat(static_cast<uint32_t>(b) << 16); }

uint16_t FloatToBF16(float value) {
  const uint32_t bits = FloatBits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;  // torch's one NaN
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// F8_E4M3 (fn: no infinities, 0x7f/0xff NaN, bias 7) decoded once into a table.
std::array<float, 256> MakeE4M3Table() {
  std::array<float, 256> table{};
  for (int byte = 0; byte < 256; ++byte) {
    const bool negative = byte & 0x80;
    const int exponent = (byte >> 3) & 0xf;
    const int mantissa = byte & 0x7;
    float magnitude;
    if (exponent == 0xf && mantissa == 0x7) {
      magnitude = std::nanf("");
    } else if (exponent == 0) {
      magnitude = std::ldexp(static_cast<float>(mantissa), -9);
    } else {
      magnitude = std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
    }
    table[byte] = negative ? -magnitude : magnitude;
  }
  return table;
}

const std::array<float, 256>& E4M3Table() {
  static const std::array<float, 256> table = MakeE4M3Table();
  return table;
}

bool IsWideFloat(DType d) {
  return d == DType::kF64 || d == DType::kF32 || d == DType::kF16 || d == DType::kBF16;
}

bool IsSource(DType d) { return IsWideFloat(d) || d == DType::kF8E4M3 || d == DType::kF8E5M2; }

template <typename Load>
void Store(Load load, std::byte* dst, DType to, uint64_t n) {
  switch (to) {
    case DType::kF64:
      for (uint64_t i = 0; i < n; ++i) {
        const double v = load(i);
        std::memcpy(dst + i * 8, &v, 8);
      }
      break;
    case DType::kF32:
      for (uint64_t i = 0; i < n; ++i) {
        const float v = static_cast<float>(load(i));
        std::memcpy(dst + i * 4, &v, 4);
      }
      break;
    case DType::kF16:
      for (uint64_t i = 0; i < n; ++i) {
        const uint16_t v = FloatToHalf(static_cast<float>(load(i)));
        std::memcpy(dst + i * 2, &v, 2);
      }
      break;
    case DType::kBF16:
      for (uint64_t i = 0; i < n; ++i) {
        const uint16_t v = FloatToBF16(static_cast<float>(load(i)));
        std::memcpy(dst + i * 2, &v, 2);
      }
      break;
    default:
      break;  // excluded by CanHostCast
  }
}

template <typename T>
T LoadAt(const std::byte* src, uint64_t i) {
  T v;
  std::memcpy(&v, src + i * sizeof(T), sizeof(T));
  return v;
}

}  // namespace

bool CanHostCast(DType from, DType to) { return from == to || (IsSource(from) && IsWideFloat(to)); }

io::Status HostCast(const std::byte* src, DType from, std::byte* dst, DType to, uint64_t n) {
  if (!CanHostCast(from, to)) {
    return io::Status::Error(io::StatusCode::kUnsupported, "cast",
                             "no host conversion from " + std::string(io::DTypeName(from)) +
                                 " to " + std::string(io::DTypeName(to)) +
                                 " (floating-point F64/F32/F16/BF16 targets only)");
  }
  if (from == to) {
    std::memcpy(dst, src, n * io::DTypeBits(from) / 8);
    return io::Status::Ok();
  }
  switch (from) {
    case DType::kF64:
      Store([src](uint64_t i) { return LoadAt<double>(src, i); }, dst, to, n);
      break;
    case DType::kF32:
      Store([src](uint64_t i) { return LoadAt<float>(src, i); }, dst, to, n);
      break;
    case DType::kF16:
      Store([src](uint64_t i) { return HalfToFloat(LoadAt<uint16_t>(src, i)); }, dst, to, n);
      break;
    case DType::kBF16:
      Store([src](uint64_t i) { return BF16ToFloat(LoadAt<uint16_t>(src, i)); }, dst, to, n);
      break;
    case DType::kF8E4M3: {
      const std::array<float, 256>& table = E4M3Table();
      Store([src, &table](uint64_t i) { return table[static_cast<uint8_t>(src[i])]; }, dst, to, n);
      break;
    }
    case DType::kF8E5M2:
      Store(
          [src](uint64_t i) {
            return HalfToFloat(static_cast<uint16_t>(static_cast<uint8_t>(src[i]) << 8));
          },
          dst, to, n);
      break;
    default:
      break;
  }
  return io::Status::Ok();
}

}  // namespace shardstream::python
