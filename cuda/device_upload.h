// CudaUploader: how the fill core (engine/fill.h) reaches CUDA devices. For one device's targets
// it takes the pinned staging pool kept across loads (cuda/pinned_pool.h), makes a CudaSink over
// the targets (casts on the device with the conversion kernel, cuda/cast_kernel.h) and runs the
// pipeline with the options the core resolved. No torch: the C++ library and the Python package
// upload, and cast, through this same path.
// (Copying straight from the page cache pinned in place is an experiment in bench/.)
//
// Thread-safety: one uploader may serve concurrent fills (it holds only its options).
#pragma once

#include "cuda/cuda_sink.h"
#include "engine/fill.h"

#include <cstdint>

namespace shardstream::cuda {

struct CudaUploadOptions {
  uint32_t copy_streams = 0;  // 0: kDefaultCopyStreams
};

class CudaUploader final : public engine::DeviceUploader {
 public:
  explicit CudaUploader(CudaUploadOptions options) : options_(options) {}

  io::Result<engine::PipelineStats> Upload(const io::Checkpoint& checkpoint, int device,
                                           std::span<const engine::Target> targets,
                                           engine::PipelineOptions pipeline,
                                           ReadReport& report) override;

 private:
  const CudaUploadOptions options_;
};

}  // namespace shardstream::cuda
