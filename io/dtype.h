// The element types a safetensors file can declare (the set known to the reference
// implementation, safetensors 0.8): the one dtype table of shardstream. Every layer and front end
// derives what it knows about a dtype from here: its on-disk name and size, what kind of number
// it holds, the torch dtype it loads as (integration/ maps the name to a c10::ScalarType, the
// Python package to a torch attribute, through the extension) and which dtypes a load may
// convert it to (engine/cast.h).
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

// What an element holds.
enum class DTypeKind : uint8_t {
  kBool,
  kUnsigned,  // U8 .. U64
  kSigned,    // I8 .. I64
  kFloat,     // F16, BF16, F32, F64
  kFloat8,    // the 8-bit floats (E4M3, E5M2, their FNUZ forms, E8M0)
  kComplex,   // C64
  kPacked,    // sub-byte floats (F4, F6): several values share bytes
};

// The name as written in safetensors headers ("BF16", "F8_E4M3", ...).
std::string_view DTypeName(DType dtype);
// Parses a header dtype name; names are case-sensitive, as in the reference.
std::optional<DType> ParseDType(std::string_view name);
// Bits per element: 4 for F4, 6 for the F6 types, 8..128 otherwise.
uint32_t DTypeBits(DType dtype);
DTypeKind DTypeKindOf(DType dtype);
// The torch dtype it loads as, by torch's Python name ("bfloat16", "float8_e4m3fn",
// "float4_e2m1fn_x2" for F4: two values per element, so the last dimension halves); empty for the
// F6 types, which torch cannot represent (they load as uint8 bytes).
std::string_view TorchDTypeName(DType dtype);
// Every dtype, in enum order.
std::span<const DType> AllDTypes();

}  // namespace shardstream::io
