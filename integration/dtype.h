// safetensors dtypes as torch dtypes.
#pragma once

#include "io/dtype.h"
#include "io/safetensors_header.h"
#include "io/status.h"

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace shardstream {

// The torch dtype a safetensors dtype loads as: F8_E4M3 → Float8_e4m3fn, F8_E5M2 → Float8_e5m2,
// the FNUZ types → Float8_*fnuz, F8_E8M0 → Float8_e8m0fnu, F4 → Float4_e2m1fn_x2 (two values per
// element, so the last dimension halves), C64 → ComplexFloat, U16/U32/U64 → UInt16/32/64.
// nullopt for the F6 types, which torch cannot represent: they load as uint8 bytes.
std::optional<c10::ScalarType> TorchDType(io::DType dtype);

// The dtype a tensor is stored with in torch: TorchDType, or Byte for the F6 types.
c10::ScalarType StorageDType(io::DType dtype);

// The safetensors dtype a torch dtype is written as: the inverse of TorchDType (Float4_e2m1fn_x2
// → F4). nullopt for torch dtypes safetensors has no name for (e.g. QInt8, ComplexDouble).
std::optional<io::DType> SafetensorsDType(c10::ScalarType dtype);

// The torch shape a checkpoint tensor loads with: its own shape, except F4 (last dimension halved;
// an odd one is rule "f4-shape") and F6 (flat bytes). Dimensions beyond int64 are rule
// "torch-shape". Errors name the tensor, not the file.
io::Result<std::vector<int64_t>> TorchShape(const io::TensorInfo& tensor);

}  // namespace shardstream
