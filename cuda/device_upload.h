// CudaUploader: how the fill core (engine/fill.h) reaches CUDA devices. For one device's targets
// it takes the pinned staging pool kept across loads (cuda/pinned_pool.h), makes a CudaSink over
// the targets (casts on the device through the injected cast function) and runs the staged
// pipeline with the options the core resolved. No torch: integration/ injects ATen's device cast.
// (Copying straight from the page cache pinned in place is an experiment in bench/.)
//
// Thread-safety: one uploader may serve concurrent fills (it holds only its options).
#pragma once

#include "cuda/cuda_sink.h"
#include "engine/fill.h"

#include <cstdint>
#include <functional>

namespace shardstream::cuda {

struct CudaUploadOptions {
  uint32_t copy_streams = 0;  // 0: kDefaultCopyStreams
  // The device cast for `device` (needed when a target changes dtype).
  std::function<DeviceCastFn(int device)> cast;
};

class CudaUploader final : public engine::DeviceUploader {
 public:
  explicit CudaUploader(CudaUploadOptions options) : options_(std::move(options)) {}

  io::Result<engine::PipelineStats> Upload(const io::Checkpoint& checkpoint, int device,
                                           std::span<const engine::FillTarget> targets,
                                           engine::PipelineOptions pipeline,
                                           ReadReport& report) override;

 private:
  const CudaUploadOptions options_;
};

}  // namespace shardstream::cuda
