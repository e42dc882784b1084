// The element types a safetensors file can declare (the set known to the reference
// implementation, safetensors 0.8), their on-disk names and their sizes in bits.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace shardstream::io {

// Ordered as the reference orders them (by alignment); the order carries no meaning here.
enum class DType : uint8_t {
  kBool,
  kF4,
  kF6E2M3,
  kF6E3M2,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kF8E8M0,
  kF8E4M3Fnuz,
  kF8E5M2Fnuz,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kC64,
  kF64,
  kI64,
  kU64,
};

inline constexpr int kDTypeCount = static_cast<int>(DType::kU64) + 1;

// The name as written in safetensors headers ("BF16", "F8_E4M3", ...).
std::string_view DTypeName(DType dtype);
// Parses a header dtype name; names are case-sensitive, as in the reference.
std::optional<DType> ParseDType(std::string_view name);
// Bits per element: 4 for F4, 6 for the F6 types, 8..128 otherwise.
uint32_t DTypeBits(DType dtype);
// Every dtype, in enum order.
std::span<const DType> AllDTypes();

}  // namespace shardstream::io
