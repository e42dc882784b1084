// The one cast of shardstream: which dtype pairs a load converts as it reads (CanCast, the same
// verdict for every front end: LoadFile, LoadInto, the CLI, the Python package, host and device
// destinations alike) and the host conversion itself. The device conversion (cuda/) runs the
// same element functions (engine/detail/convert.h) in a kernel.
//
// What converts: any bool, integer or floating-point source (F64, F32, F16, BF16 and the five
// 8-bit floats) into F64, F32, F16 or BF16, with torch's `.to()` results (exact decodes, one
// rounding to nearest even; F64 into a 16-bit float rounds through F32, as torch does); bool and
// integer sources into bool or integer destinations, keeping the low bits as C++ and torch do.
// Never: complex values, the packed sub-byte floats (F4, F6), or into an 8-bit float.
// A dtype into itself is a copy.
#pragma once

#include "io/dtype.h"
#include "io/status.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace shardstream::engine {

bool CanCast(io::DType from, io::DType to);

// Why `from` does not convert into `to` (for the rule "cast" error), or "" when it does.
std::string CastRefusal(io::DType from, io::DType to);

// Converts `elements` contiguous values of `from` at host address `src` into `to` at `dst`.
// Thread-safe; the two ranges must not overlap. Rule "cast" when CanCast says no.
[[nodiscard]] io::Status HostCast(const std::byte* src, io::DType from, std::byte* dst,
                                  io::DType to, uint64_t elements);

}  // namespace shardstream::engine
