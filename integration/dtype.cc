#include "integration/dtype.h"

#include <array>
#include <limits>
#include <string>
#include <string_view>
#include <utility>

namespace shardstream {

std::optional<c10::ScalarType> TorchDType(io::DType dtype) {
  // io/'s dtype table names the torch dtype (as torch's Python names it); torch maps the name.
  static const auto table = [] {
    std::array<std::optional<c10::ScalarType>, io::kDTypeCount> out{};
    const auto& by_name = c10::getStringToDtypeMap();
    for (io::DType d : io::AllDTypes()) {
      const std::string_view name = io::TorchDTypeName(d);
      if (name.empty()) continue;
      auto it = by_name.find(std::string(name));
      if (it != by_name.end()) out[static_cast<size_t>(d)] = it->second;
    }
    return out;
  }();
  return table[static_cast<size_t>(dtype)];
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
