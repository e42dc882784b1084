// Host-side dtype conversion for the Python package's fill (engine::HostCastFn). Torch-free, so
// the extension never links LibTorch. Floating-point only, as LoadFile's `dtype` is: F64, F32,
// F16 and BF16 to each other (round to nearest even, NaN kept quiet, as torch's `.to()`), and
// the F8 types F8_E4M3 and F8_E5M2 up to any of those. Anything else: rule "cast".
#pragma once

#include "io/dtype.h"
#include "io/status.h"

#include <cstddef>
#include <cstdint>

namespace shardstream::python {

// True when HostCast converts `from` into `to` (the same dtype included: a copy).
bool CanHostCast(io::DType from, io::DType to);

// Converts `elements` contiguous values; thread-safe. Matches engine::HostCastFn.
io::Status HostCast(const std::byte* src, io::DType src_dtype, std::byte* dst, io::DType dst_dtype,
                    uint64_t elements);

}  // namespace shardstream::python
