// CudaUploader: how the fill core (engine/fill.h) reaches CUDA devices. For one device's targets
// it takes the pinned staging pool kept across loads (cuda/pinned_pool.h), makes a CudaSink over
// the targets (casts on the device through the injected cast function) and runs the staged
// pipeline with the options the core resolved; or, opt-in, copies from the page cache pinned in
// place (cuda/page_cache_upload.h). No torch: integration/ injects ATen's device cast.
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
  // The page-cache path (no CPU copy; cached files, no casts, no O_DIRECT, no runs: rule
  // "gpu-upload" otherwise) and its knobs (0: the defaults of cuda/page_cache_upload.h).
  bool page_cache = false;
  uint64_t pin_window_bytes = 0;
  uint32_t pin_windows = 0;
  uint32_t pin_threads = 0;
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
  io::Result<engine::PipelineStats> FromPageCache(const io::Checkpoint& checkpoint,
                                                  std::span<const engine::LoadTarget> targets,
                                                  bool casts, bool direct,
                                                  const engine::ProgressFn& progress,
                                                  DeviceOps& ops, ReadReport& report);

  const CudaUploadOptions options_;
};

}  // namespace shardstream::cuda
