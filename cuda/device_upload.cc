#include "cuda/device_upload.h"

#include "cuda/page_cache_upload.h"
#include "cuda/pinned_pool.h"
#include "engine/staging.h"

#include <algorithm>
#include <chrono>

namespace shardstream::cuda {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

io::Status UploadError(std::string message) {
  return io::Status::Error(io::StatusCode::kInvalidArgument, "gpu-upload", std::move(message));
}

}  // namespace

io::Result<engine::PipelineStats> CudaUploader::FromPageCache(
    const io::Checkpoint& checkpoint, std::span<const engine::LoadTarget> targets, bool casts,
    bool direct, const engine::ProgressFn& progress, DeviceOps& ops, ReadReport& report) {
  io::Result<bool> supported = ops.ReadOnlyRegistrationSupported();
  const bool runs = std::any_of(targets.begin(), targets.end(),
                                [](const engine::LoadTarget& t) { return !t.runs.empty(); });
  std::string why_not;
  if (casts) {
    why_not = "casts run on the staged path";
  } else if (runs) {
    why_not = "views and slices run on the staged path";
  } else if (direct) {
    why_not = "O_DIRECT reads were asked for";
  } else if (!supported.ok() || !*supported) {
    why_not = supported.ok() ? "the device cannot read read-only registered host memory"
                             : supported.status().ToString();
  }
  if (!why_not.empty()) return UploadError("page-cache upload asked for, but " + why_not);
  PageCacheUploadOptions upload;
  upload.progress = progress;
  if (options_.pin_window_bytes != 0) upload.window_bytes = options_.pin_window_bytes;
  if (options_.pin_windows != 0) upload.windows_in_flight = options_.pin_windows;
  if (options_.pin_threads != 0) upload.pin_threads = options_.pin_threads;
  SHARDSTREAM_ASSIGN_OR_RETURN(PageCacheUploadStats stats,
                               UploadFromPageCache(checkpoint, targets, upload, ops));
  report.gpu_upload = "page-cache";
  report.pinned_page_cache_bytes = stats.pinned_bytes;
  report.copy_streams = upload.windows_in_flight;
  engine::PipelineStats pipeline;
  pipeline.backend = "page-cache";
  pipeline.payload_bytes = stats.payload_bytes;
  pipeline.read_bytes = stats.pinned_bytes;
  pipeline.copy_threads = static_cast<int>(upload.pin_threads);
  pipeline.seconds = stats.seconds;
  return pipeline;
}

io::Result<engine::PipelineStats> CudaUploader::Upload(const io::Checkpoint& checkpoint, int device,
                                                       std::span<const engine::FillTarget> targets,
                                                       engine::PipelineOptions pipeline,
                                                       ReadReport& report) {
  SHARDSTREAM_ASSIGN_OR_RETURN(std::shared_ptr<DeviceOps> ops, MakeCudaRuntimeOps(device));
  std::vector<engine::LoadTarget> load_targets;
  std::vector<DeviceTarget> device_targets;
  load_targets.reserve(targets.size());
  device_targets.reserve(targets.size());
  bool casts = false;
  for (const engine::FillTarget& t : targets) {
    const io::TensorInfo& info = checkpoint.tensor(t.source);
    const bool cast = info.dtype != t.dtype;
    casts = casts || cast;
    // The sink copies piece bytes to destination + piece offset: for runs, the destination
    // extent bounds them. A cast on the device converts whole tensors only.
    uint64_t extent = info.size_bytes();
    if (!t.runs.empty()) {
      if (cast) {
        return io::Status::Error(io::StatusCode::kInvalidArgument, "cast",
                                 "a cast into a view or slice of a CUDA tensor is not supported; "
                                 "load the whole tensor, or in its own dtype")
            .WithTensor(info.name)
            .WithPath(checkpoint.files[t.source.file].path.string());
      }
      extent = 0;
      for (const engine::Run& run : t.runs) {
        extent = std::max(extent, run.destination_offset + run.length);
      }
    }
    load_targets.emplace_back(t.source, t.destination, t.runs);
    device_targets.push_back(DeviceTarget{t.destination, extent, info.dtype, t.dtype});
  }
  if (options_.page_cache) {
    return FromPageCache(checkpoint, load_targets, casts, pipeline.direct, pipeline.progress, *ops,
                         report);
  }
  report.gpu_upload = "staged";

  // Pinned slots, kept across loads: only the first load of a process pays for pinning. A slot
  // holds one chunk plus the O_DIRECT alignment on both ends.
  const uint64_t slot_bytes = pipeline.chunk_bytes + 2 * engine::kStagingAlignment;
  const auto pin_start = std::chrono::steady_clock::now();
  PinnedPoolStats pinned;
  SHARDSTREAM_ASSIGN_OR_RETURN(
      std::shared_ptr<engine::StagingPool> pool,
      PinnedPool::Shared(device, std::max(pipeline.staging_bytes, slot_bytes), slot_bytes,
                         &pinned));
  pipeline.pool = pool.get();
  report.pin_seconds = pinned.reused ? 0 : pinned.pin_seconds;
  report.staging_reused = pinned.reused;
  report.stages.emplace_back("pin", SecondsSince(pin_start));

  CudaSinkOptions sink_options;
  if (casts && options_.cast) sink_options.cast = options_.cast(device);
  if (options_.copy_streams > 0) sink_options.streams = options_.copy_streams;
  SHARDSTREAM_ASSIGN_OR_RETURN(std::unique_ptr<CudaSink> sink,
                               CudaSink::Create(std::move(device_targets), sink_options, *ops));
  io::Result<engine::PipelineStats> stats =
      engine::RunStagedPipeline(checkpoint, load_targets, *sink, pipeline);
  report.copy_streams = sink_options.streams;
  report.device_scratch_bytes = std::max(report.device_scratch_bytes, sink->stats().scratch_bytes);
  return stats;
}

}  // namespace shardstream::cuda
