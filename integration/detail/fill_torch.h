// The torch side of the fill core (engine/fill.h), shared by LoadFile and LoadInto: destination
// runs from a tensor's strides, the fill target of a tensor, and one call that runs a fill (with
// the CUDA uploader for GPU targets) and throws LoadError. Private to integration/.
#pragma once

#include "engine/fill.h"
#include "io/checkpoint.h"

#include <ATen/core/Tensor.h>

#include <span>
#include <vector>

#include "shardstream/load.h"

namespace shardstream::detail {

// The runs that fill `destination` (a view of any strides) with a whole checkpoint tensor of
// `source_dtype` in the same logical order; empty when `destination` is contiguous.
std::vector<engine::Run> DestinationRuns(const at::Tensor& destination, io::DType source_dtype);

// A fill target for `destination`: its pointer, device, dtype and runs.
engine::Target TargetFor(io::TensorLocation source, io::DType source_dtype,
                         const at::Tensor& destination);

// Runs engine::Fill with `options`' read options and (for CUDA targets) the CUDA uploader;
// records what it did in `report` (with each GPU's allocator peak). Throws LoadError naming file,
// tensor and offset.
void FillOrThrow(const io::Checkpoint& checkpoint, std::span<const engine::Target> targets,
                 const LoadOptions& options, LoadReport& report);

}  // namespace shardstream::detail
