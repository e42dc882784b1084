// The pipeline: the one read engine. Readers pull the chunks of one read plan (engine/plan.h) and
// each chunk is read in one of two ways, chosen per run (PipelineOptions::staged):
//
//   in place:  chunk → ReadBackend scatters it (preadv / io_uring READV) straight into the host
//              destinations its pieces name, small gaps into a scratch buffer; nothing to copy.
//   staged:    chunk → a slot of a bounded staging pool → Sink::Consume(slot lease, pieces)
//              copies (or casts, or uploads) the pieces out → the lease goes back to the pool,
//              at once or behind the fence of the sink's copies (a CUDA event).
//
//   readers (the caller's thread   plan → [acquire slot] → ReadBackend read (queue_depth reads
//   and readers-1 of their own):   in flight each, O_DIRECT when asked) → reaped ──┐
//   oneTBB copy tasks (staged,     Sink::Consume ◄────────────────────────────────┘
//   O_DIRECT io_uring readers):    (every other staged reader consumes its own slots)
//
// Readers share the plan (each takes the next chunk), the pool and the copy tasks; each drives a
// backend of its own. An O_DIRECT io_uring reader never copies: the device DMAs into its slots,
// and its reaped slots go to `copy_threads` oneTBB workers while its next reads are in flight.
// Every other staged reader (buffered reads are copies made by the reading thread; pread is
// synchronous) consumes each slot itself, while the slot is still in its core's cache. Host
// memory for staging is bounded by the pool whatever the checkpoint size, and a slot is reused only
// after the copy out of it finished (for a device sink: after the event recorded behind its
// copies, which the pool asks about). In place reads need host destinations in the file's dtype
// and no O_DIRECT; a tensor wanted whole by several targets is read once and copied into the
// others after the reads, while runs sharing a source tensor are refused (one read cannot scatter
// the same bytes twice; rule "internal"): engine::Fill routes everything else staged.
//
// Failure: the first error wins (a read, a copy, the progress callback cancelling): no more reads
// are issued, reads in flight are drained, running copies finish, every slot goes back to the pool
// and every file is closed before RunPipeline returns the error, which names the file, tensor and
// offset where known. Destinations then hold unspecified bytes.
//
// Thread-safety: independent pipelines may run concurrently (also over one shared pool). The
// checkpoint, targets, sink and pool are borrowed for the duration of the call.
#pragma once

#include "engine/executor.h"
#include "engine/plan.h"
#include "engine/sink.h"
#include "engine/staging.h"
#include "io/checkpoint.h"
#include "io/read_backend.h"
#include "io/status.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "shardstream/read.h"

namespace shardstream::engine {

// Makes the read backend of one reader. The seam for fault injection: tests wrap a real backend
// to fail, shorten or delay reads.
using BackendFactory = std::function<std::unique_ptr<io::ReadBackend>(const io::FileSet&)>;

// Told that targets `targets` (indices in the targets given to RunPipeline) are complete: every
// byte of each is in its destination (after the memcpy or read into it; for a sink whose copies
// outlive Consume, once it reports the chunks' copies complete, Sink::SetChunkDone, or after its
// Finish). One call per chunk at most, for the targets whose
// last piece that chunk held, so a consumer wakes per chunk, not per tensor. Each target is
// reported exactly once on success, from any reader or copy thread, concurrently for different
// targets: the callback must be thread-safe and quick (it runs on the read path), and the span
// is valid only during the call. On failure, the targets already reported are complete and the
// rest are not reported.
using TargetDoneFn = std::function<void(std::span<const size_t> targets)>;

struct PipelineOptions {
  // Through staging slots into `sink` (true), or straight into the targets' host memory.
  bool staged = true;
  // kUring or kPread (kMmap copies out of a mapping). io_uring keeps `queue_depth` reads in
  // flight per reader; where it is refused, `fall_back_to_pread` decides.
  io::BackendKind backend = io::BackendKind::kUring;
  BackendFactory make_backend;     // overrides `backend` when set (tests inject faults here)
  bool fall_back_to_pread = true;  // io_uring refused: use pread, say why in stats.fallback
  // Staged only: open files with O_DIRECT and align reads for it. A filesystem that refuses
  // (tmpfs) falls back to buffered reads, noted in PipelineStats::notes.
  bool direct = false;
  // The largest read; one slot holds one chunk. 0: kDefaultStagedChunkBytes staged,
  // kDefaultChunkBytes in place.
  uint64_t chunk_bytes = 0;
  uint64_t staging_bytes = kDefaultStagingBytes;  // bound on staging memory (when `pool` is null)
  // A pool to use instead of making one (e.g. pinned memory kept across loads). Its slots must
  // hold the largest chunk (rule "staging" otherwise); it must not be cancelled.
  StagingPool* pool = nullptr;
  // Reads in flight per reader (io_uring; pread does one at a time), staged: at most one per slot.
  uint32_t queue_depth = kDefaultQueueDepth;
  // Gaps between wanted extents read through (PlanOptions::max_gap_bytes); at most
  // kDefaultReadGapBytes, the size of the in-place gap scratch.
  uint64_t read_gap_bytes = kDefaultReadGapBytes;
  // Threads issuing reads, each with a backend of its own (0: DefaultReaders). A buffered read of
  // a cached file is a copy done by the thread that asks for it, so warm loads need one reader
  // per core; cold O_DIRECT reads need only depth.
  uint32_t readers = 0;
  // io_uring: a kernel thread polls the submission ring (io/uring_backend.h; falls back when
  // refused, noted in PipelineStats::notes).
  bool sqpoll = false;
  // io_uring, staged: register the staging memory as fixed buffers, so reads into slots skip
  // pinning their pages each time. Falls back to plain reads (noted) when registration fails.
  bool register_buffers = true;
  // io_uring, buffered reads: hand every read to the kernel's worker threads (UringOptions::
  // async_reads), so that copies out of a warm page cache run on several cores at once instead of
  // inside the reader's io_uring_enter. On by default where there are more than 4 cores.
  bool async_buffered_reads = std::thread::hardware_concurrency() > 4;
  // oneTBB workers running Consume for O_DIRECT io_uring readers. 0, or more than oneTBB has: all
  // of its workers (one per core less one, unless a tbb::global_control says otherwise).
  int copy_threads = 0;
  ExecutorKind executor = DefaultExecutor();  // where the copy tasks run (engine/executor.h)
  ProgressFn progress;                        // counts bytes that reached their destinations
  // Per-target completion (see TargetDoneFn). Costs one atomic subtraction per piece when set.
  TargetDoneFn target_done;
};

// The most readers a pipeline starts, and how many it starts by default: one per core for buffered
// reads (each read of cached data is a copy by its reader), one for O_DIRECT (queue depth keeps
// the device busy; a second reader was slower on our VM's disk, BENCHMARKS.md).
inline constexpr uint32_t kMaxReaders = 64;
uint32_t DefaultReaders(bool direct);

struct PipelineStats {
  uint64_t payload_bytes = 0;  // bytes of the targets
  uint64_t read_bytes = 0;     // bytes read (payload, gaps read through, O_DIRECT alignment)
  size_t chunks = 0;
  double seconds = 0;                    // open to return
  bool direct = false;                   // O_DIRECT was used
  uint32_t alignment_bytes = 1;          // the read alignment planned with
  uint32_t peak_in_flight = 0;           // most reads in flight at once, over every reader
  std::string backend;                   // "pread", "mmap" or "uring": what read the bytes
  bool sqpoll = false;                   // io_uring's submission polling thread was used
  uint64_t registered_buffer_bytes = 0;  // staging memory registered with io_uring
  uint32_t slots = 0;                    // slots in the pool (0 in place)
  uint64_t slot_bytes = 0;
  uint32_t peak_slots_in_use = 0;  // most slots held at once (reading or being copied)
  int copy_threads = 0;            // the copy workers used (0: every reader copied its own slots)
  uint32_t readers = 0;            // the threads that issued reads
  // Wall time during which at least one read was in flight, at least one copy ran, and both.
  double io_busy_seconds = 0;
  double copy_busy_seconds = 0;
  double overlap_seconds = 0;
  double copy_thread_seconds = 0;  // summed over copy tasks
  std::string fallback;            // why io_uring was asked for and not used (empty if it was)
  std::vector<std::string> notes;  // other fallbacks (O_DIRECT refused, io_uring setup options)
};

// Reads `targets` (of `checkpoint`): staged into `sink`, whose Piece::target i is targets[i]
// (destinations are only used by sinks that need them, so they may be null for DiscardSink); in
// place into the targets' destinations (`sink` unused, may be null). Errors: those of
// BuildReadPlan and FileSet::Open, rule "staging" when the staging memory cannot hold one chunk,
// read errors (rule "file-changed" when a file shrank), the sink's errors, and rule "cancelled"
// when the progress callback returned false.
io::Result<PipelineStats> RunPipeline(const io::Checkpoint& checkpoint,
                                      std::span<const Target> targets, Sink* sink,
                                      const PipelineOptions& options);

}  // namespace shardstream::engine
