// The read step shared by LoadFile and LoadInto: given destinations for some tensors of an open
// checkpoint, fill them through the engine with the IO strategy LoadOptions asks for (backend,
// O_DIRECT through the staged pipeline or buffered reads straight into the destinations). No
// torch types: destinations are plain memory. Private to integration/.
#pragma once

#include "cuda/cuda_sink.h"
#include "engine/loader.h"
#include "integration/load.h"
#include "io/checkpoint.h"

#include <span>
#include <string>
#include <utility>
#include <vector>

namespace shardstream::detail {

// Fills every target's destination (each holding the tensor's bytes, contiguous, host memory that
// outlives the call). Records in `report` what read the bytes (io, fallback, threads,
// peak_in_flight, direct, notes) and returns the engine's stages, (name, seconds), in order.
// Throws LoadError naming file, tensor and offset; destinations then hold unspecified bytes.
std::vector<std::pair<std::string, double>> ReadTargets(const io::Checkpoint& checkpoint,
                                                        std::span<const engine::LoadTarget> targets,
                                                        const LoadOptions& options, bool direct,
                                                        LoadReport& report);

// The same into device memory on CUDA device `device`: the staged pipeline (O_DIRECT as `direct`
// says, else buffered reads) into pinned staging slots kept across loads (cuda/pinned_pool.h),
// emptied by a CudaSink (cuda/cuda_sink.h) with cudaMemcpyAsync on several streams. A target whose
// device_targets entry has another destination dtype is cast on the device (ATen, through the
// torch CUDA plugin, integration/detail/torch_cuda.h). device_targets[i] describes targets[i].
// Records the pinning cost (stage "pin", 0 when the pool was reused) and returns the stages.
std::vector<std::pair<std::string, double>> ReadDeviceTargets(
    const io::Checkpoint& checkpoint, int device, std::span<const engine::LoadTarget> targets,
    std::vector<cuda::DeviceTarget> device_targets, const LoadOptions& options, bool direct,
    LoadReport& report);

}  // namespace shardstream::detail
