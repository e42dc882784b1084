// Fills caller-provided destinations with tensor bytes from a validated checkpoint.
//
// The caller allocates every destination once (any memory: plain, pinned, a torch tensor's
// storage) and says which tensor goes where; FillTargets plans coalesced chunked reads
// (engine/plan.h), opens each file once, and runs the chunks as oneTBB tasks, each reading its
// file range straight into the destinations it covers. It never touches torch.
//
// A load either fills every target or returns an error naming file, tensor (where one is at
// fault), offset and cause; on error, destinations hold unspecified bytes and must not be used.
// Cancelling through the progress callback returns rule "cancelled". Thread-safe: independent
// loads may run concurrently.
#pragma once

#include "engine/executor.h"
#include "engine/plan.h"
#include "io/checkpoint.h"
#include "io/read_backend.h"
#include "io/status.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "shardstream/read.h"

namespace shardstream::engine {

// Where one tensor's bytes go: without runs, `destination` holds tensor(source).size_bytes()
// bytes; with runs (borrowed, non-overlapping), each run's bytes land at destination +
// run.destination_offset.
struct LoadTarget {
  LoadTarget() = default;
  LoadTarget(io::TensorLocation source_tensor, std::byte* destination_bytes,
             std::span<const Run> destination_runs = {}, uint32_t whole_element_bytes = 1)
      : source(source_tensor),
        destination(destination_bytes),
        runs(destination_runs),
        element_bytes(whole_element_bytes) {}

  io::TensorLocation source;
  std::byte* destination = nullptr;
  std::span<const Run> runs;
  // Pieces hold whole elements of this size (PlanTarget::element_bytes): a device cast's input.
  uint32_t element_bytes = 1;
};

using shardstream::kDefaultQueueDepth;
using shardstream::Progress;
using shardstream::ProgressFn;

inline constexpr uint64_t kDefaultReadGapBytes = 64 << 10;

// Makes the read backend of one worker thread. The seam for fault injection: tests wrap a real
// backend to fail, shorten or delay reads.
using BackendFactory = std::function<std::unique_ptr<io::ReadBackend>(const io::FileSet&)>;

struct FillOptions {
  io::BackendKind backend = io::BackendKind::kPread;
  BackendFactory make_backend;  // overrides `backend` when set
  int threads = 0;              // 0: one per core
  uint64_t chunk_bytes = kDefaultChunkBytes;
  uint32_t queue_depth = kDefaultQueueDepth;  // reads in flight per thread (io_uring only)
  bool sqpoll = false;  // io_uring: a polling kernel thread per ring (io/uring_backend.h)
  bool fall_back_to_pread = true;  // io_uring refused: use pread, say why in FillStats::fallback
  ProgressFn progress;
  ExecutorKind executor = DefaultExecutor();  // where the read workers run
};

struct FillStats {
  uint64_t payload_bytes = 0;  // bytes that landed in destinations
  uint64_t read_bytes = 0;     // bytes read (payload and small gaps)
  size_t chunks = 0;
  int threads = 0;
  uint32_t peak_in_flight = 0;  // most reads in flight at once, over all threads
  std::string fallback;         // why io_uring was not used, when it was asked for and refused
  // (stage, seconds) in order: open, plan, read.
  std::vector<std::pair<std::string, double>> stages;
};

// Targets with runs must not share their source tensor with another target (one read cannot
// scatter the same bytes twice; rule "internal" otherwise): engine::Fill routes those through the
// staged pipeline, which can.
io::Result<FillStats> FillTargets(const io::Checkpoint& checkpoint,
                                  std::span<const LoadTarget> targets, const FillOptions& options);

}  // namespace shardstream::engine
