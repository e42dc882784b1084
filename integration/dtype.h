// safetensors dtypes as torch dtypes.
#pragma once

#include "io/dtype.h"

#include <c10/core/ScalarType.h>

#include <optional>

namespace shardstream {

// The torch dtype a safetensors dtype loads as: F8_E4M3 → Float8_e4m3fn, F8_E5M2 → Float8_e5m2,
// the FNUZ types → Float8_*fnuz, F8_E8M0 → Float8_e8m0fnu, F4 → Float4_e2m1fn_x2 (two values per
// element, so the last dimension halves), C64 → ComplexFloat, U16/U32/U64 → UInt16/32/64.
// nullopt for the F6 types, which torch cannot represent: they load as uint8 bytes.
std::optional<c10::ScalarType> TorchDType(io::DType dtype);

// The dtype a tensor is stored with in torch: TorchDType, or Byte for the F6 types.
c10::ScalarType StorageDType(io::DType dtype);

}  // namespace shardstream
