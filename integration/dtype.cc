#include "integration/dtype.h"

namespace shardstream {

std::optional<c10::ScalarType> TorchDType(io::DType dtype) {
  using io::DType;
  switch (dtype) {
    case DType::kBool:
      return c10::ScalarType::Bool;
    case DType::kF4:
      return c10::ScalarType::Float4_e2m1fn_x2;
    case DType::kF6E2M3:
    case DType::kF6E3M2:
      return std::nullopt;
    case DType::kU8:
      return c10::ScalarType::Byte;
    case DType::kI8:
      return c10::ScalarType::Char;
    case DType::kF8E5M2:
      return c10::ScalarType::Float8_e5m2;
    case DType::kF8E4M3:
      return c10::ScalarType::Float8_e4m3fn;
    case DType::kF8E8M0:
      return c10::ScalarType::Float8_e8m0fnu;
    case DType::kF8E4M3Fnuz:
      return c10::ScalarType::Float8_e4m3fnuz;
    case DType::kF8E5M2Fnuz:
      return c10::ScalarType::Float8_e5m2fnuz;
    case DType::kI16:
      return c10::ScalarType::Short;
    case DType::kU16:
      return c10::ScalarType::UInt16;
    case DType::kF16:
      return c10::ScalarType::Half;
    case DType::kBF16:
      return c10::ScalarType::BFloat16;
    case DType::kI32:
      return c10::ScalarType::Int;
    case DType::kU32:
      return c10::ScalarType::UInt32;
    case DType::kF32:
      return c10::ScalarType::Float;
    case DType::kC64:
      return c10::ScalarType::ComplexFloat;
    case DType::kF64:
      return c10::ScalarType::Double;
    case DType::kI64:
      return c10::ScalarType::Long;
    case DType::kU64:
      return c10::ScalarType::UInt64;
  }
  return std::nullopt;
}

c10::ScalarType StorageDType(io::DType dtype) {
  return TorchDType(dtype).value_or(c10::ScalarType::Byte);
}

}  // namespace shardstream
