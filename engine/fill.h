// The fill core: the one function every front end (LoadFile, LoadInto, the CLI, the Python
// package) calls to move checkpoint bytes into destinations it has allocated.
//
//   std::vector<engine::Target> targets = ...;  // checkpoint tensor → pointer, device, dtype, runs
//   engine::FillSetup setup;
//   setup.read = options;                       // shardstream::ReadOptions, as the caller got them
//   ReadReport report;
//   io::Status status = engine::Fill(checkpoint, targets, setup, &report);
//
// A destination is plain memory (host or a CUDA device's) described by engine::Target
// (engine/plan.h): a whole tensor, a contiguous slice of a larger one, a strided view (a slice of
// a fused parameter, a tensor-parallel shard) given run by run, in the file's dtype or another
// (a cast, engine/cast.h). A source slice is expressed the same way: runs name the bytes of the
// checkpoint tensor that are read, so nothing outside them is read.
//
// Routing, decided here once for every caller; the read options are turned into the pipeline's
// here only (PipelineOptionsFor), and every route runs the one pipeline (engine/pipeline.h):
//   - O_DIRECT or buffered (ReadOptions::direct; kAuto samples the page cache with mincore);
//   - host targets in their own dtype, buffered, each source read by one target: in place
//     (scattered reads straight into the destinations; a whole tensor wanted twice is read once
//     and copied);
//   - every other host target (O_DIRECT, casts, runs sharing a source): staged, into a CpuSink
//     that copies or casts each piece out of the staging slots;
//   - device targets: per device, staged into the DeviceUploader's sink (cuda/ implements it:
//     pinned staging, cudaMemcpyAsync, casts on the device). engine/ never includes cuda/.
//
// Failure: an error Status naming file, tensor, offset and rule; destinations then hold
// unspecified bytes. Cancelling through ReadOptions::progress returns rule "cancelled".
// Thread-safe: independent fills may run concurrently.
#pragma once

#include "engine/executor.h"
#include "engine/pipeline.h"
#include "engine/plan.h"
#include "io/checkpoint.h"
#include "io/read_backend.h"
#include "io/status.h"

#include <span>

#include "shardstream/read.h"

namespace shardstream::engine {

// Where device targets go: cuda/ implements it (cuda/device_upload.h). Given one device's
// targets and the pipeline's options as the core resolved them (backend, O_DIRECT, chunk, depth,
// progress), it provides the pool and sink, runs the pipeline and records its device fields
// (pin_seconds, copy_streams, ...) in `report`.
class DeviceUploader {
 public:
  virtual ~DeviceUploader() = default;
  [[nodiscard]] virtual io::Result<PipelineStats> Upload(const io::Checkpoint& checkpoint,
                                                         int device,
                                                         std::span<const Target> targets,
                                                         PipelineOptions pipeline,
                                                         ReadReport& report) = 0;
};

struct FillSetup {
  ReadOptions read;
  DeviceUploader* devices = nullptr;  // required when a target is on a device (rule "device")
  // Read every target staged and drop the bytes (DiscardSink): the read path alone, as a GPU load
  // reads it, free of destination page faults. Destinations may then be null.
  bool discard = false;
  BackendFactory make_backend;  // tests: overrides the backend ReadOptions::io names
  ExecutorKind executor = DefaultExecutor();
  // Told targets' indices (into the targets given to Fill) once all their bytes are in place:
  // host targets as their last piece is copied or read (mid-fill, from reader and copy threads),
  // device targets once the events after their copies are seen complete (mid-fill, as the
  // staging pool reclaims slots; the rest when that device's streams are synchronised, at the end
  // of its part of the fill). Thread-safe and quick, as PipelineOptions::target_done says. Exactly
  // once per target on success; on failure, only targets that are complete.
  TargetDoneFn target_done;
};

// The one kAuto rule (shardstream/read.h): io_uring for O_DIRECT reads, pread for buffered ones
// (into destinations or staging slots alike).
io::BackendKind ResolveBackend(IoMode mode, bool direct);

// Decides once, before any read, whether a fill with `read` uses O_DIRECT: DirectIo::kOn, or
// kAuto when less than half of the checkpoint is in the page cache (recorded in
// report.resident_fraction). Errors: rule "direct" for O_DIRECT with mmap.
io::Result<bool> ChooseDirect(const io::Checkpoint& checkpoint, const ReadOptions& read,
                              ReadReport& report);

// The pipeline's options for `read` (backend by the kAuto rule, chunk, staging, depth, sqpoll,
// readers, copy threads, progress), staged or in place, with O_DIRECT as `direct` says: the one
// place read options become pipeline options.
PipelineOptions PipelineOptionsFor(const ReadOptions& read, bool staged, bool direct);

// Fills every target (see the header comment). Appends its stages ("read", "upload", "pin") to
// report->stages and sets the read fields.
[[nodiscard]] io::Status Fill(const io::Checkpoint& checkpoint, std::span<const Target> targets,
                              const FillSetup& setup, ReadReport* report);

}  // namespace shardstream::engine
