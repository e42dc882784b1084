#include "integration/dtype.h"

#include <limits>
#include <string>
#include <utility>

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

std::optional<io::DType> SafetensorsDType(c10::ScalarType dtype) {
  for (io::DType d : io::AllDTypes()) {
    if (TorchDType(d) == dtype) return d;
  }
  return std::nullopt;
}

io::Result<std::vector<int64_t>> TorchShape(const io::TensorInfo& t) {
  auto error = [&](std::string rule, std::string message) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, std::move(rule), std::move(message))
        .WithTensor(t.name);
  };
  const uint32_t bits = io::DTypeBits(t.dtype);
  if (bits == 6) return std::vector<int64_t>{static_cast<int64_t>(t.size_bytes())};
  for (uint64_t dim : t.shape) {
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return error("torch-shape", "dimension " + std::to_string(dim) + " of shape " +
                                      io::FormatShape(t.shape) + " exceeds torch's int64 sizes");
    }
  }
  std::vector<int64_t> shape(t.shape.begin(), t.shape.end());
  if (t.dtype == io::DType::kF4) {
    if (shape.empty() || shape.back() % 2 != 0) {
      return error("f4-shape", "F4 tensor of shape " + io::FormatShape(t.shape) +
                                   " has an odd last dimension; torch packs F4 values in pairs "
                                   "(float4_e2m1fn_x2)");
    }
    shape.back() /= 2;
  }
  return shape;
}

}  // namespace shardstream
