#include "io/dtype.h"

#include <array>

namespace shardstream::io {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  uint32_t bits;
  DTypeKind kind;
  std::string_view torch_name;
};

using enum DTypeKind;
constexpr std::array<DTypeInfo, kDTypeCount> kDTypes = {{
    {DType::kBool, "BOOL", 8, kBool, "bool"},
    {DType::kF4, "F4", 4, kPacked, "float4_e2m1fn_x2"},
    {DType::kF6E2M3, "F6_E2M3", 6, kPacked, ""},
    {DType::kF6E3M2, "F6_E3M2", 6, kPacked, ""},
    {DType::kU8, "U8", 8, kUnsigned, "uint8"},
    {DType::kI8, "I8", 8, kSigned, "int8"},
    {DType::kF8E5M2, "F8_E5M2", 8, kFloat8, "float8_e5m2"},
    {DType::kF8E4M3, "F8_E4M3", 8, kFloat8, "float8_e4m3fn"},
    {DType::kF8E8M0, "F8_E8M0", 8, kFloat8, "float8_e8m0fnu"},
    {DType::kF8E4M3Fnuz, "F8_E4M3FNUZ", 8, kFloat8, "float8_e4m3fnuz"},
    {DType::kF8E5M2Fnuz, "F8_E5M2FNUZ", 8, kFloat8, "float8_e5m2fnuz"},
    {DType::kI16, "I16", 16, kSigned, "int16"},
    {DType::kU16, "U16", 16, kUnsigned, "uint16"},
    {DType::kF16, "F16", 16, kFloat, "float16"},
    {DType::kBF16, "BF16", 16, kFloat, "bfloat16"},
    {DType::kI32, "I32", 32, kSigned, "int32"},
    {DType::kU32, "U32", 32, kUnsigned, "uint32"},
    {DType::kF32, "F32", 32, kFloat, "float32"},
    {DType::kC64, "C64", 64, kComplex, "complex64"},
    {DType::kF64, "F64", 64, kFloat, "float64"},
    {DType::kI64, "I64", 64, kSigned, "int64"},
    {DType::kU64, "U64", 64, kUnsigned, "uint64"},
}};

constexpr bool TableMatchesEnum() {
  for (int i = 0; i < kDTypeCount; ++i) {
    if (static_cast<int>(kDTypes[i].dtype) != i) return false;
  }
  return true;
}
static_assert(TableMatchesEnum(), "kDTypes must list the DType enumerators in order");

constexpr std::array<DType, kDTypeCount> MakeAll() {
  std::array<DType, kDTypeCount> all{};
  for (int i = 0; i < kDTypeCount; ++i) all[i] = kDTypes[i].dtype;
  return all;
}
constexpr std::array<DType, kDTypeCount> kAll = MakeAll();

const DTypeInfo& Info(DType dtype) { return kDTypes[static_cast<int>(dtype)]; }

}  // namespace

std::string_view DTypeName(DType dtype) { return Info(dtype).name; }

uint32_t DTypeBits(DType dtype) { return Info(dtype).bits; }

DTypeKind DTypeKindOf(DType dtype) { return Info(dtype).kind; }

std::string_view TorchDTypeName(DType dtype) { return Info(dtype).torch_name; }

std::optional<DType> ParseDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return std::nullopt;
}

std::span<const DType> AllDTypes() { return kAll; }

}  // namespace shardstream::io
