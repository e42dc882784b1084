#include "cuda/device_upload.h"

#include "cuda/cast_kernel.h"
#include "cuda/pinned_pool.h"
#include "engine/staging.h"
#include "io/stopwatch.h"

#include <algorithm>

namespace shardstream::cuda {

io::Result<engine::PipelineStats> CudaUploader::Upload(const io::Checkpoint& checkpoint, int device,
                                                       std::span<const engine::Target> targets,
                                                       engine::PipelineOptions pipeline,
                                                       ReadReport& report) {
  SHARDSTREAM_ASSIGN_OR_RETURN(std::shared_ptr<DeviceOps> ops, MakeCudaRuntimeOps(device));
  std::vector<engine::Destination> destinations = engine::DestinationsOf(checkpoint, targets);
  const bool casts = std::any_of(destinations.begin(), destinations.end(),
                                 [](const engine::Destination& d) { return d.casts(); });
  report.gpu_upload = "staged";

  // Pinned slots, kept across loads: only the first load of a process pays for pinning. A slot
  // holds one chunk plus the O_DIRECT alignment on both ends.
  const uint64_t chunk_bytes =
      pipeline.chunk_bytes != 0 ? pipeline.chunk_bytes : kDefaultStagedChunkBytes;
  const uint64_t slot_bytes = chunk_bytes + 2 * engine::kStagingAlignment;
  const auto pin_start = io::Clock::now();
  PinnedPoolStats pinned;
  SHARDSTREAM_ASSIGN_OR_RETURN(
      std::shared_ptr<engine::StagingPool> pool,
      PinnedPool::Shared(device, std::max(pipeline.staging_bytes, slot_bytes), slot_bytes,
                         &pinned));
  pipeline.pool = pool.get();
  report.pin_seconds = pinned.reused ? 0 : pinned.pin_seconds;
  report.staging_reused = pinned.reused;
  report.stages.emplace_back("pin", io::SecondsSince(pin_start));

  CudaSinkOptions sink_options;
  if (casts) sink_options.cast = DeviceConvert;
  if (options_.copy_streams > 0) sink_options.streams = options_.copy_streams;
  SHARDSTREAM_ASSIGN_OR_RETURN(std::unique_ptr<CudaSink> sink,
                               CudaSink::Create(std::move(destinations), sink_options, *ops));
  io::Result<engine::PipelineStats> stats =
      engine::RunPipeline(checkpoint, targets, sink.get(), pipeline);
  report.copy_streams = sink_options.streams;
  report.device_scratch_bytes = std::max(report.device_scratch_bytes, sink->stats().scratch_bytes);
  return stats;
}

}  // namespace shardstream::cuda
