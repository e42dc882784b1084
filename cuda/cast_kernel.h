// The device cast: converts elements between dtypes on a GPU, with the same element functions as
// the host cast (engine/detail/convert.h), so a cast gives the same bits on the CPU and on the
// device. The CUDA sink runs it on each window of raw bytes it uploaded (cuda/cuda_sink.h): for
// C++ loads and the Python package alike, with no torch involved.
#pragma once

#include "cuda/device_ops.h"
#include "io/dtype.h"
#include "io/status.h"

#include <cstddef>
#include <cstdint>

namespace shardstream::cuda {

// Queues the conversion of `elements` values of `from` at device address `src` into `to` at
// device address `dst` on `stream`, and returns without waiting (a cuda::DeviceCastFn). The pair
// must be one engine::CanCast allows (rule "cast" otherwise); rule "cuda" for a launch the device
// refuses, and rule "cast" in builds without a CUDA compiler (no kernels).
[[nodiscard]] io::Status DeviceConvert(StreamHandle stream, const std::byte* src, io::DType from,
                                       std::byte* dst, io::DType to, uint64_t elements);

}  // namespace shardstream::cuda
