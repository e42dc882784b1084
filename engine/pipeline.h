// The staged pipeline: reads land in a bounded pool of staging slots, sinks copy them out.
//
//   readers (the caller's thread   plan → acquire slot → ReadBackend read into it (queue_depth
//   and readers-1 of their own):   reads in flight each, O_DIRECT when asked) → reaped read ─┐
//   oneTBB copy tasks:             Sink::Consume(slot lease, pieces) → drop  ◄─────────────┘
//                                  the lease, or park it behind the copies' fence
//
// Readers share the plan (each takes the next chunk), the pool and the copy tasks; each drives a
// backend of its own. An O_DIRECT io_uring reader never copies: the device DMAs into its slots,
// and its reaped slots go to `copy_threads` oneTBB workers while its next reads are in flight.
// Every other reader (buffered reads, which are copies made by the reading thread, or
// synchronous pread) consumes each slot itself, while the slot is still in its core's cache.
// So O_DIRECT (one io_uring reader, depth keeps the disk busy) overlaps reads with copies, and a
// warm buffered load (one pread reader per core, each read a copy out of the page cache) spreads
// the copies over every core. Host memory is bounded by the staging pool whatever the checkpoint
// size, and a slot is reused only after the copy out of it finished (for a device sink: after the
// event recorded behind its copies, which the pool asks about).
// This is the path that feeds GPUs (a CUDA sink over pinned slots); with CpuSink it loads into host
// memory, and with DiscardSink it measures the reads alone.
//
// Failure: the first error wins (a read, a copy, the progress callback cancelling): no more reads
// are issued, reads in flight are drained, running copies finish, every slot goes back to the pool
// and every file is closed before RunStagedPipeline returns the error, which names the file,
// tensor and offset where known. Destinations then hold unspecified bytes.
//
// Thread-safety: independent pipelines may run concurrently (also over one shared pool). The
// checkpoint, targets, sink and pool are borrowed for the duration of the call.
#pragma once

#include "engine/loader.h"
#include "engine/plan.h"
#include "engine/sink.h"
#include "engine/staging.h"
#include "io/checkpoint.h"
#include "io/read_backend.h"
#include "io/status.h"

#include <cstdint>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace shardstream::engine {

// Staged reads are copied twice (file → slot → destination), so slots that stay in cache pay:
// loading a page-cache-hot 2 GB file into host memory on a 2-core VM ran at 8–15 GB/s with 1–4 MiB
// chunks but 2.5–5.5 GB/s with 16 MiB ones, while cold O_DIRECT reads were the same (~2.6–2.9 GB/s)
// from 2 to 16 MiB.
inline constexpr uint64_t kDefaultStagedChunkBytes = 4ull << 20;

struct PipelineOptions {
  // kUring or kPread (kMmap works, uselessly). io_uring keeps `queue_depth` reads in flight per
  // reader; where it is refused, `fall_back_to_pread` decides.
  io::BackendKind backend = io::BackendKind::kUring;
  BackendFactory make_backend;  // overrides `backend` when set (tests inject faults here)
  bool fall_back_to_pread =
      true;  // io_uring refused: use pread, say why in PipelineStats::fallback
  // Open files with O_DIRECT and align reads for it. A filesystem that refuses (tmpfs) falls back
  // to buffered reads, noted in PipelineStats::notes.
  bool direct = false;
  uint64_t chunk_bytes = kDefaultStagedChunkBytes;  // largest read; one slot holds one chunk
  uint64_t staging_bytes = kDefaultStagingBytes;    // bound on staging memory (when `pool` is null)
  // A pool to use instead of making one (e.g. pinned memory kept across loads). Its slots must
  // hold the largest chunk (rule "staging" otherwise); it must not be cancelled.
  StagingPool* pool = nullptr;
  // Reads in flight per reader (io_uring; pread does one at a time), at most one per slot.
  uint32_t queue_depth = kDefaultQueueDepth;
  // Threads issuing reads, each with a backend of its own (0: DefaultReaders). A buffered read of
  // a cached file is a copy done by the thread that asks for it, so warm loads need one reader
  // per core; cold O_DIRECT reads need only depth.
  uint32_t readers = 0;
  // io_uring: a kernel thread polls the submission ring (io/uring_backend.h; falls back when
  // refused, noted in PipelineStats::notes).
  bool sqpoll = false;
  // io_uring: register the staging memory as fixed buffers, so reads into slots skip pinning
  // their pages each time. Falls back to plain reads (noted) when registration fails.
  bool register_buffers = true;
  // io_uring, buffered reads: hand every read to the kernel's worker threads (UringOptions::
  // async_reads), so that copies out of a warm page cache run on several cores at once instead of
  // inside the IO thread's io_uring_enter. On by default where there are more than 4 cores.
  bool async_buffered_reads = std::thread::hardware_concurrency() > 4;
  // oneTBB workers running Consume. 0, or more than oneTBB has: all of its workers (one per core
  // less one, which the IO thread uses, unless a tbb::global_control says otherwise).
  int copy_threads = 0;
  ExecutorKind executor = DefaultExecutor();  // where the copy tasks run (engine/executor.h)
  ProgressFn progress;                        // progress counts bytes that reached the sink
};

// The most readers a pipeline starts, and how many it starts by default: one per core for buffered
// reads (each read of cached data is a copy by its reader), one for O_DIRECT (queue depth keeps
// the device busy; a second reader was slower on our VM's disk, BENCHMARKS.md).
inline constexpr uint32_t kMaxReaders = 64;
uint32_t DefaultReaders(bool direct);

struct PipelineStats {
  uint64_t payload_bytes = 0;  // bytes handed to the sink
  uint64_t read_bytes = 0;     // bytes read (payload, gaps read through, O_DIRECT alignment)
  size_t chunks = 0;
  double seconds = 0;                    // open to return
  bool direct = false;                   // O_DIRECT was used
  uint32_t alignment_bytes = 1;          // the read alignment planned with
  uint32_t peak_in_flight = 0;           // most reads in flight at once
  std::string backend;                   // "pread", "mmap" or "uring": what read the bytes
  bool sqpoll = false;                   // io_uring's submission polling thread was used
  uint64_t registered_buffer_bytes = 0;  // staging memory registered with io_uring
  uint32_t slots = 0;                    // slots in the pool
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

// Loads `targets` (tensors of `checkpoint`) through staging slots into `sink`. Target i is
// Piece::target == i for the sink; destinations are only used by sinks that need them (CpuSink),
// so they may be null for DiscardSink. Errors: those of BuildReadPlan and FileSet::Open, rule
// "staging" when the staging memory cannot hold one chunk, read errors (rule "file-changed" when a
// file shrank), the sink's errors, and rule "cancelled" when the progress callback returned false.
io::Result<PipelineStats> RunStagedPipeline(const io::Checkpoint& checkpoint,
                                            std::span<const LoadTarget> targets, Sink& sink,
                                            const PipelineOptions& options);

}  // namespace shardstream::engine
