// The torch side of the fill core (engine/fill.h), shared by LoadFile and LoadInto: ATen's host
// cast, the CUDA uploader wired to torch's device cast, destination runs from a tensor's strides,
// and one call that runs a fill and throws LoadError. Private to integration/.
#pragma once

#include "engine/fill.h"
#include "integration/load.h"
#include "io/checkpoint.h"

#include <ATen/core/Tensor.h>

#include <span>
#include <vector>

namespace shardstream::detail {

// Converts host memory with ATen (Tensor::copy_ between views of the two buffers). Rule "cast"
// when torch cannot convert the pair.
io::Status AtenHostCast(const std::byte* src, io::DType src_dtype, std::byte* dst,
                        io::DType dst_dtype, uint64_t elements);

// The runs that fill `destination` (a view of any strides) with a whole checkpoint tensor of
// `source_dtype` in the same logical order; empty when `destination` is contiguous.
std::vector<engine::Run> DestinationRuns(const at::Tensor& destination, io::DType source_dtype);

// A fill target for `destination`: its pointer, device, dtype and runs.
engine::FillTarget TargetFor(io::TensorLocation source, io::DType source_dtype,
                             const at::Tensor& destination);

// Runs engine::Fill with `options`' read options, ATen's host cast and (for CUDA targets) the
// CUDA uploader; records what it did in `report` (with each GPU's allocator peak). Throws
// LoadError naming file, tensor and offset.
void FillOrThrow(const io::Checkpoint& checkpoint, std::span<const engine::FillTarget> targets,
                 const LoadOptions& options, LoadReport& report);

}  // namespace shardstream::detail
