// The fill core: the one function every front end (LoadFile, LoadInto, the CLI, the Python
// package) calls to move checkpoint bytes into destinations it has allocated.
//
//   std::vector<engine::FillTarget> targets = ...;  // checkpoint tensor → pointer, device, layout
//   engine::FillSetup setup;
//   setup.read = options;                           // shardstream::ReadOptions
//   setup.cast = MyCast;                            // when a host destination changes dtype
//   ReadReport report;
//   io::Status status = engine::Fill(checkpoint, targets, setup, &report);
//
// A destination is plain memory (host or a CUDA device's) described by a base pointer, a dtype
// and, for views, runs of contiguous bytes: a whole tensor, a contiguous slice of a larger one,
// a strided view (a slice of a fused parameter, a tensor-parallel shard) given run by run. A
// source slice is expressed the same way: runs name the bytes of the checkpoint tensor that are
// read, so nothing outside them is read.
//
// Routing, decided here once for every caller:
//   - O_DIRECT or buffered (ReadOptions::direct; kAuto samples the page cache with mincore);
//   - host targets in their own dtype: read straight into place (buffered) or through the staged
//     pipeline into place (O_DIRECT);
//   - host targets in another dtype: read into bounded scratch (ReadOptions::staging_bytes, or
//     one element run when that is larger) and converted by the injected HostCastFn;
//   - device targets: per device, the staged pipeline into the DeviceUploader (cuda/ implements
//     it: pinned staging, cudaMemcpyAsync, casts on the device). engine/ never includes cuda/.
//
// Failure: an error Status naming file, tensor, offset and rule; destinations then hold
// unspecified bytes. Cancelling through ReadOptions::progress returns rule "cancelled".
// Thread-safe: independent fills may run concurrently.
#pragma once

#include "engine/executor.h"
#include "engine/loader.h"
#include "engine/pipeline.h"
#include "io/checkpoint.h"
#include "io/dtype.h"
#include "io/read_backend.h"
#include "io/status.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "shardstream/read.h"

namespace shardstream::engine {

inline constexpr int kHostDevice = -1;

struct FillTarget {
  io::TensorLocation source;
  std::byte* destination = nullptr;  // host memory, or device memory when device >= 0
  int device = kHostDevice;          // -1: host; N: CUDA device N (FillSetup::devices)
  io::DType dtype = io::DType::kU8;  // the destination's; differs from the file's: a cast
  // Empty: the whole tensor, contiguous at `destination`. Otherwise only these bytes of the
  // source tensor are read, each run landing at destination + destination_offset (in the
  // destination dtype's bytes: for a cast, length / source element size × destination element
  // size). Runs of one target must not overlap; for a cast they hold whole elements.
  std::vector<Run> runs;
};

// Converts `elements` values of `src_dtype` at host address `src` into `dst_dtype` at host
// address `dst` (contiguous both). Called from any thread, concurrently for different ranges. An
// error fails the load (the core adds file and tensor).
using HostCastFn =
    std::function<io::Status(const std::byte* src, io::DType src_dtype, std::byte* dst,
                             io::DType dst_dtype, uint64_t elements)>;

// Where device targets go: cuda/ implements it (cuda/device_upload.h). Given one device's
// targets and the staged pipeline's options as the core resolved them (backend, O_DIRECT, chunk,
// depth, progress), it provides the pool and sink, runs the pipeline and records its device
// fields (pin_seconds, copy_streams, ...) in `report`.
class DeviceUploader {
 public:
  virtual ~DeviceUploader() = default;
  [[nodiscard]] virtual io::Result<PipelineStats> Upload(const io::Checkpoint& checkpoint,
                                                         int device,
                                                         std::span<const FillTarget> targets,
                                                         PipelineOptions pipeline,
                                                         ReadReport& report) = 0;
};

struct FillSetup {
  ReadOptions read;
  HostCastFn cast;                    // required when a host target changes dtype (rule "cast")
  DeviceUploader* devices = nullptr;  // required when a target is on a device (rule "device")
  BackendFactory make_backend;        // tests: overrides the backend ReadOptions::io names
  ExecutorKind executor = DefaultExecutor();
};

// The one kAuto rule (shardstream/read.h): io_uring for O_DIRECT reads, pread for buffered ones
// (into destinations or staging slots alike).
io::BackendKind ResolveBackend(IoMode mode, bool direct);

// Decides once, before any read, whether a fill with `read` uses O_DIRECT: DirectIo::kOn, or
// kAuto when less than half of the checkpoint is in the page cache (recorded in
// report.resident_fraction). Errors: rule "direct" for O_DIRECT with mmap.
io::Result<bool> ChooseDirect(const io::Checkpoint& checkpoint, const ReadOptions& read,
                              ReadReport& report);

// The staged pipeline's options for `read` (backend by the kAuto rule, chunk, staging, depth,
// sqpoll, copy threads, progress) with O_DIRECT as `direct` says.
PipelineOptions StagedOptions(const ReadOptions& read, bool direct);

// Fills every target (see the header comment). Appends its stages ("read", "cast", "upload",
// "pin cuda:N") to report->stages and sets the read fields.
[[nodiscard]] io::Status Fill(const io::Checkpoint& checkpoint, std::span<const FillTarget> targets,
                              const FillSetup& setup, ReadReport* report);

}  // namespace shardstream::engine
