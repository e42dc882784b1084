#include "cuda/device_upload.h"

#include "cuda/pinned_pool.h"
#include "engine/staging.h"

#include <algorithm>
#include <chrono>

namespace shardstream::cuda {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

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
    device_targets.push_back(DeviceTarget{t.destination, extent, info.dtype, t.dtype});
    // A cast target's pieces hold whole elements: the device casts each piece on its own.
    load_targets.emplace_back(t.source, t.destination, t.runs,
                              WholeElementBytes(device_targets.back()));
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
