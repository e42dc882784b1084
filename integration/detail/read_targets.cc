#include "integration/detail/read_targets.h"

#include "cuda/page_cache_upload.h"
#include "cuda/pinned_pool.h"
#include "engine/pipeline.h"
#include "engine/sink.h"
#include "engine/staging.h"
#include "integration/detail/torch_cuda.h"
#include "io/read_backend.h"

#include <algorithm>
#include <chrono>

namespace shardstream::detail {
namespace {

// The backend of buffered reads straight into the destinations (staged reads:
// StagedPipelineOptions).
io::BackendKind Backend(IoMode mode) {
  switch (mode) {
    case IoMode::kMmap:
      return io::BackendKind::kMmap;
    case IoMode::kUring:
      return io::BackendKind::kUring;
    case IoMode::kAuto:  // straight into tensors, pread: BENCHMARKS.md (fault-bound, depth buys
                         // nothing)
    case IoMode::kPread:
      return io::BackendKind::kPread;
  }
  return io::BackendKind::kPread;
}

// Runs the staged pipeline into `sink` and records what it did in `report`. Returns the seconds
// the pipeline took. Throws LoadError naming file, tensor and offset.
double RunStaged(const io::Checkpoint& checkpoint, std::span<const engine::LoadTarget> targets,
                 engine::Sink& sink, const engine::PipelineOptions& pipeline, LoadReport& report) {
  const auto start = std::chrono::steady_clock::now();
  io::Result<engine::PipelineStats> stats =
      engine::RunStagedPipeline(checkpoint, targets, sink, pipeline);
  if (!stats.ok()) {
    ThrowIfError(io::Status(stats.status()).WithPath(checkpoint.source.string()));
  }
  report.direct = stats->direct;
  report.io = stats->backend;
  if (!stats->fallback.empty()) {
    report.fallback =
        report.fallback.empty() ? stats->fallback : report.fallback + "; " + stats->fallback;
  }
  report.chunk_bytes = pipeline.chunk_bytes;
  report.threads = stats->copy_threads;
  report.peak_in_flight = std::max(report.peak_in_flight, stats->peak_in_flight);
  report.sqpoll = stats->sqpoll;
  report.io_busy_seconds = stats->io_busy_seconds;
  report.copy_busy_seconds = stats->copy_busy_seconds;
  report.overlap_seconds = stats->overlap_seconds;
  report.notes.insert(report.notes.end(), stats->notes.begin(), stats->notes.end());
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::vector<std::pair<std::string, double>> ReadTargets(const io::Checkpoint& checkpoint,
                                                        std::span<const engine::LoadTarget> targets,
                                                        const LoadOptions& options, bool direct,
                                                        LoadReport& report) {
  std::vector<std::pair<std::string, double>> stages;
  if (direct) {
    engine::CpuSink sink(targets);
    engine::PipelineOptions pipeline = StagedPipelineOptions(options);
    pipeline.direct = true;
    stages.emplace_back("read", RunStaged(checkpoint, targets, sink, pipeline, report));
    return stages;
  }
  engine::FillOptions fill;
  fill.backend = Backend(options.io);
  report.io = std::string(io::BackendName(fill.backend));
  fill.threads = options.threads;
  fill.chunk_bytes = options.chunk_bytes != 0 ? options.chunk_bytes : engine::kDefaultChunkBytes;
  report.chunk_bytes = fill.chunk_bytes;
  fill.queue_depth = options.queue_depth;
  fill.sqpoll = options.sqpoll;
  fill.progress = options.progress;
  io::Result<engine::FillStats> stats = engine::FillTargets(checkpoint, targets, fill);
  ThrowIfError(stats.status());
  report.threads = stats->threads;
  report.peak_in_flight = std::max(report.peak_in_flight, stats->peak_in_flight);
  if (!stats->fallback.empty()) {
    report.fallback = stats->fallback;
    report.io = std::string(io::BackendName(io::BackendKind::kPread));
  }
  return std::move(stats->stages);
}

std::vector<std::pair<std::string, double>> ReadDeviceTargets(
    const io::Checkpoint& checkpoint, int device, std::span<const engine::LoadTarget> targets,
    std::vector<cuda::DeviceTarget> device_targets, const LoadOptions& options, bool direct,
    LoadReport& report) {
  std::vector<std::pair<std::string, double>> stages;
  const TorchCudaPlugin& plugin =
      RequireTorchCuda(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device)));
  io::Result<std::shared_ptr<cuda::DeviceOps>> ops = cuda::MakeCudaRuntimeOps(device);
  ThrowIfError(ops.status());

  // The page cache pinned in place, when asked for (GpuUpload::kPageCache): raw bytes only.
  if (options.gpu_upload == GpuUpload::kPageCache) {
    const bool casts = std::any_of(
        device_targets.begin(), device_targets.end(),
        [](const cuda::DeviceTarget& t) { return t.source_dtype != t.destination_dtype; });
    io::Result<bool> supported = (*ops)->ReadOnlyRegistrationSupported();
    std::string why_not;
    if (casts) {
      why_not = "casts run on the staged path";
    } else if (direct) {
      why_not = "O_DIRECT reads were asked for";
    } else if (!supported.ok() || !*supported) {
      why_not = supported.ok() ? "the device cannot read read-only registered host memory"
                               : supported.status().ToString();
    }
    if (!why_not.empty()) {
      ThrowIfError(io::Status::Error(io::StatusCode::kInvalidArgument, "gpu-upload",
                                     "page-cache upload asked for, but " + why_not)
                       .WithPath(checkpoint.source.string()));
    }
    cuda::PageCacheUploadOptions upload;
    upload.progress = options.progress;
    if (options.pin_window_bytes != 0) upload.window_bytes = options.pin_window_bytes;
    if (options.pin_windows != 0) upload.windows_in_flight = options.pin_windows;
    if (options.pin_threads != 0) upload.pin_threads = options.pin_threads;
    const auto start = std::chrono::steady_clock::now();
    io::Result<cuda::PageCacheUploadStats> stats =
        cuda::UploadFromPageCache(checkpoint, targets, upload, **ops);
    ThrowIfError(io::Status(stats.status()).WithPath(checkpoint.source.string()));
    report.gpu_upload = "page-cache";
    report.io = "page-cache";
    report.pinned_page_cache_bytes = stats->pinned_bytes;
    report.copy_streams = upload.windows_in_flight;
    report.threads = static_cast<int>(upload.pin_threads);
    report.chunk_bytes = upload.window_bytes;
    report.direct = false;
    report.device_peak_bytes =
        std::max(report.device_peak_bytes, plugin.peak_allocated_bytes(device));
    stages.emplace_back(
        "upload", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return stages;
  }
  report.gpu_upload = "staged";

  engine::PipelineOptions pipeline = StagedPipelineOptions(options);
  pipeline.direct = direct;
  // Pinned slots, kept across loads: only the first load of a process pays for pinning. A slot
  // holds one chunk plus the O_DIRECT alignment on both ends.
  const uint64_t slot_bytes = pipeline.chunk_bytes + 2 * engine::kStagingAlignment;
  const auto pin_start = std::chrono::steady_clock::now();
  cuda::PinnedPoolStats pinned;
  io::Result<std::shared_ptr<engine::StagingPool>> pool = cuda::PinnedPool::Shared(
      device, std::max(options.staging_bytes, slot_bytes), slot_bytes, &pinned);
  ThrowIfError(pool.status());
  pipeline.pool = pool->get();
  report.pin_seconds = pinned.reused ? 0 : pinned.pin_seconds;
  report.staging_reused = pinned.reused;
  stages.emplace_back(
      "pin", std::chrono::duration<double>(std::chrono::steady_clock::now() - pin_start).count());

  cuda::CudaSinkOptions sink_options;
  sink_options.cast = TorchCudaCast(plugin, device);
  if (options.copy_streams > 0) sink_options.streams = options.copy_streams;
  io::Result<std::unique_ptr<cuda::CudaSink>> sink =
      cuda::CudaSink::Create(std::move(device_targets), sink_options, **ops);
  ThrowIfError(io::Status(sink.status()).WithPath(checkpoint.source.string()));

  const double upload_seconds = RunStaged(checkpoint, targets, **sink, pipeline, report);
  report.copy_streams = sink_options.streams;
  report.device_scratch_bytes =
      std::max(report.device_scratch_bytes, (*sink)->stats().scratch_bytes);
  report.device_peak_bytes =
      std::max(report.device_peak_bytes, plugin.peak_allocated_bytes(device));
  stages.emplace_back("upload", upload_seconds);
  return stages;
}

}  // namespace shardstream::detail
