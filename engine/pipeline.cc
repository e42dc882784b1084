#include "engine/pipeline.h"

#include "engine/detail/load_support.h"
#include "engine/executor.h"
#include "io/file.h"
#include "io/uring_backend.h"

#include <fcntl.h>
#include <sys/uio.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

namespace shardstream::engine {
namespace {

using detail::Cancelled;
using detail::Clock;
using detail::FirstError;
using detail::LocateReadError;
using detail::ProgressReporter;

uint64_t AlignDown(uint64_t value, uint64_t alignment) { return value & ~(alignment - 1); }

// Wall-clock accounting of how much reading and copying overlapped: every change in the number of
// reads in flight or copies running closes an interval that is charged to IO, copy, or both.
// One lock per chunk transition (chunks are megabytes), so the cost is noise.
class Activity {
 public:
  void Change(int reads_delta, int copies_delta) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - last_).count();
    if (reads_ > 0) io_ += dt;
    if (copies_ > 0) copy_ += dt;
    if (reads_ > 0 && copies_ > 0) both_ += dt;
    last_ = now;
    reads_ += reads_delta;
    copies_ += copies_delta;
  }
  void Fill(PipelineStats* stats) {
    Change(0, 0);
    std::lock_guard<std::mutex> lock(mutex_);
    stats->io_busy_seconds = io_;
    stats->copy_busy_seconds = copy_;
    stats->overlap_seconds = both_;
  }

 private:
  std::mutex mutex_;
  int reads_ = 0;
  int copies_ = 0;
  double io_ = 0, copy_ = 0, both_ = 0;
  Clock::time_point last_ = Clock::now();
};

// Progress counts tensor bytes, not the gaps and alignment padding a chunk also reads.
uint64_t PayloadBytes(std::span<const Piece> pieces) {
  uint64_t bytes = 0;
  for (const Piece& piece : pieces) bytes += piece.length;
  return bytes;
}

// Opens the files, with O_DIRECT when asked and allowed. Sets *direct to what was used and adds a
// note when O_DIRECT was refused.
io::Result<io::FileSet> OpenFiles(const io::Checkpoint& checkpoint, bool* direct,
                                  std::vector<std::string>* notes) {
  if (*direct) {
    auto files = io::FileSet::Open(checkpoint, O_DIRECT);
    if (files.ok()) return files;
    // EINVAL from open(O_DIRECT) is the filesystem refusing direct IO (tmpfs, some FUSE): read
    // through the page cache instead. Anything else (ENOENT, EACCES) fails the same way buffered.
    if (files.status().sys_errno() != EINVAL) return std::move(files).status();
    notes->push_back("direct: O_DIRECT refused, reading buffered: " + files.status().ToString());
    *direct = false;
  }
  return io::FileSet::Open(checkpoint);
}

// One read in flight: the slot it fills and the chunk it reads.
struct Pending {
  StagingSlot slot;
  uint32_t chunk = 0;
  iovec iov{};
};

}  // namespace

io::Result<PipelineStats> RunStagedPipeline(const io::Checkpoint& checkpoint,
                                            std::span<const LoadTarget> targets, Sink& sink,
                                            const PipelineOptions& options) {
  const auto start = Clock::now();
  PipelineStats stats;

  bool direct = options.direct;
  SHARDSTREAM_ASSIGN_OR_RETURN(io::FileSet files, OpenFiles(checkpoint, &direct, &stats.notes));

  // O_DIRECT: every read offset and length must be a multiple of the files' alignment (the
  // largest over files, since one plan covers them all).
  uint32_t alignment = 1;
  if (direct) {
    for (size_t i = 0; i < files.size() && direct; ++i) {
      auto block = io::LogicalBlockSize(files.fd(i));
      if (block.ok()) {
        alignment = std::max(alignment, *block);
      } else {
        stats.notes.push_back("direct: reading buffered: " + block.status().ToString());
        direct = false;
      }
    }
    if (!direct) {
      alignment = 1;
      SHARDSTREAM_ASSIGN_OR_RETURN(files, io::FileSet::Open(checkpoint));
    }
  }
  // The last block of a file whose size is not a multiple of the alignment cannot be read with
  // O_DIRECT without reading past the end, which the backends rightly call "file-changed". Those
  // tails (under one block per file) are read with pread from a buffered descriptor instead.
  std::optional<io::FileSet> buffered;
  if (direct) {
    SHARDSTREAM_ASSIGN_OR_RETURN(buffered, io::FileSet::Open(checkpoint));
  }
  stats.direct = direct;
  stats.alignment_bytes = alignment;

  std::vector<io::TensorLocation> sources;
  sources.reserve(targets.size());
  for (const LoadTarget& target : targets) sources.push_back(target.source);
  PlanOptions plan_options;
  plan_options.chunk_bytes = options.chunk_bytes;
  plan_options.alignment_bytes = alignment;
  plan_options.max_gap_bytes = kDefaultReadGapBytes;
  SHARDSTREAM_ASSIGN_OR_RETURN(ReadPlan plan, BuildReadPlan(checkpoint, sources, plan_options));
  stats.payload_bytes = plan.payload_bytes;
  stats.read_bytes = plan.read_bytes;
  stats.chunks = plan.chunks.size();

  // Staging. Declared before the backend so that it outlives it: the backend's destructor may
  // still be waiting for the kernel to finish reads into slots.
  std::unique_ptr<StagingPool> own_pool;
  StagingPool* pool = options.pool;
  const uint64_t slot_bytes = std::max<uint64_t>(plan.max_chunk_bytes, 1);
  if (pool == nullptr) {
    // No more slots than chunks: a small checkpoint does not pay for (or register) a large pool.
    const uint64_t wanted =
        std::max<uint64_t>(plan.chunks.size(), 1) * StagingSlotBytes(slot_bytes);
    SHARDSTREAM_ASSIGN_OR_RETURN(
        own_pool, StagingPool::Create(std::min(options.staging_bytes, wanted), slot_bytes));
    pool = own_pool.get();
  } else if (pool->slot_bytes() < slot_bytes) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "staging",
                             "staging slots of " + std::to_string(pool->slot_bytes()) +
                                 " bytes cannot hold a chunk of " + std::to_string(slot_bytes) +
                                 " bytes; lower the chunk size");
  }
  const uint32_t peak_before = pool->in_use();
  pool->ResetPeak();
  stats.slots = pool->slot_count();
  stats.slot_bytes = pool->slot_bytes();

  // The backend is made on this thread, which is the only one to use it (io_uring binds a ring
  // to its creating thread).
  std::unique_ptr<io::ReadBackend> backend;
  if (options.make_backend) {
    backend = options.make_backend(files);
  } else {
    io::UringOptions uring;
    uring.queue_depth = std::clamp<uint32_t>(options.queue_depth, 1, io::kMaxUringQueueDepth);
    uring.sqpoll = options.sqpoll;
    uring.async_reads = !direct && options.async_buffered_reads;
    if (options.register_buffers) {
      uring.fixed_buffers.push_back(iovec{pool->data(), pool->allocated_bytes()});
    }
    auto made = io::MakeBackendOrError(options.backend, files, &uring);
    if (!made.ok() && options.backend == io::BackendKind::kUring && options.fall_back_to_pread) {
      stats.fallback = made.status().ToString();
      made = io::MakeBackendOrError(io::BackendKind::kPread, files);
    }
    if (!made.ok()) return std::move(made).status();
    backend = std::move(*made);
  }
  if (backend == nullptr) {
    return io::Status::Error(io::StatusCode::kInternal, "internal", "no read backend");
  }
  stats.backend = std::string(io::BackendName(backend->kind()));
  if (const auto* ring = dynamic_cast<const io::UringBackend*>(backend.get())) {
    stats.sqpoll = ring->setup().sqpoll;
    stats.registered_buffer_bytes = ring->setup().registered_buffer_bytes;
    for (const std::string& fallback : ring->setup().fallbacks) {
      stats.notes.push_back("io_uring: " + fallback);
    }
  }
  // A synchronous backend does the read inside Submit: more than one request per batch would only
  // delay the first copy.
  const uint32_t depth =
      backend->kind() == io::BackendKind::kUring
          ? std::clamp<uint32_t>(options.queue_depth, 1, std::max<uint32_t>(1, pool->slot_count()))
          : 1;

  // oneTBB has max_allowed_parallelism - 1 workers (cores - 1 unless a global_control says
  // otherwise); asking an arena for more only makes oneTBB print a warning. The copy tasks are
  // queued, never run by this thread: it must not be pulled into copying while finished reads sit
  // unreaped. The group tracks the copies; this thread waits for them only at the end.
  const int workers = std::max(1, HardwareConcurrency(options.executor) - 1);
  const int copy_threads =
      std::min(options.copy_threads > 0 ? options.copy_threads : workers, workers);
  stats.copy_threads = copy_threads;
  std::unique_ptr<TaskGroup> copies = MakeTaskGroup(copy_threads, options.executor);

  FirstError error;
  Activity activity;
  ProgressReporter progress(options.progress, plan.payload_bytes);
  std::atomic<uint64_t> copy_nanos{0};

  auto fail_chunk = [&](io::Status status, uint32_t c) {
    LocateReadError(status, checkpoint, plan.chunks[c].file, plan.chunks[c].file_offset);
    error.Record(std::move(status));
  };

  // Hands a filled slot to a copy task, which releases it when the sink is done with it (or, for
  // a sink that keeps slots, the sink releases it when its asynchronous copies are done).
  const bool sink_keeps_slots = sink.keeps_slots();
  auto dispatch = [&](StagingSlot slot, uint32_t c) {
    copies->Run([&, slot, c] {
      const Chunk& chunk = plan.chunks[c];
      bool released_by_sink = false;
      if (!error.stopped()) {
        StagedSlot staged{
            slot.data, chunk.needed_bytes, chunk.file_offset, chunk.file, c, slot.index, {}};
        if (sink_keeps_slots) {
          staged.release = [pool, slot] { pool->Release(slot); };
          released_by_sink = true;
        }
        activity.Change(0, +1);
        const auto copy_start = Clock::now();
        io::Status status;
        // The task boundary: nothing may escape into oneTBB, which would terminate.
        try {
          status = sink.Consume(staged, plan.PiecesOf(chunk));
        } catch (const std::bad_alloc&) {
          status = io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                                     "out of memory while copying");
        } catch (const std::exception& e) {
          status = io::Status::Error(io::StatusCode::kInternal, "internal", e.what());
        }
        copy_nanos.fetch_add(
            static_cast<uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - copy_start)
                    .count()),
            std::memory_order_relaxed);
        activity.Change(0, -1);
        if (!status.ok()) {
          fail_chunk(std::move(status), c);
        } else if (!progress.Add(PayloadBytes(plan.PiecesOf(chunk)))) {
          error.Record(Cancelled());
        }
      }
      // Only now, with the sink done reading it, may the slot take another read.
      if (!released_by_sink) pool->Release(slot);
    });
  };

  // The IO loop: keep `depth` reads in flight while slots are free; reap; dispatch.
  std::vector<Pending> pending(pool->slot_count());  // by slot index, which is the request id
  std::vector<io::ReadRequest> batch;
  std::vector<io::Completion> done(depth);
  uint32_t outstanding = 0;
  uint32_t next = 0;
  const auto chunk_count = static_cast<uint32_t>(plan.chunks.size());
  bool backend_broken = false;
  while (true) {
    batch.clear();
    while (!error.stopped() && next < chunk_count && outstanding + batch.size() < depth) {
      // Block for a slot only when no read of ours is in flight; otherwise reap first, which is
      // what frees the slots (through the copies it dispatches).
      std::optional<StagingSlot> slot =
          (outstanding == 0 && batch.empty()) ? pool->Acquire() : pool->TryAcquire();
      if (!slot) {
        if (outstanding == 0 && batch.empty()) {
          error.Record(io::Status::Error(io::StatusCode::kCancelled, "cancelled",
                                         "the staging pool was cancelled"));
        }
        break;
      }
      if (error.stopped()) {  // a copy failed while we waited for its slot
        pool->Release(*slot);
        break;
      }
      const uint32_t c = next++;
      const Chunk& chunk = plan.chunks[c];
      uint64_t read_bytes = chunk.needed_bytes;
      if (direct) {
        // Whole aligned blocks up to the last one inside the file; the partial block at the end
        // of the file (if needed) comes from the buffered descriptor.
        const uint64_t file_bytes = files.size_bytes(chunk.file);
        read_bytes = std::min(chunk.length, AlignDown(file_bytes, alignment) - chunk.file_offset);
        if (chunk.needed_bytes > read_bytes) {
          const uint64_t tail_offset = chunk.file_offset + read_bytes;
          io::Status status = io::PreadFull(
              buffered->fd(chunk.file),
              std::span(slot->data + read_bytes, chunk.needed_bytes - read_bytes), tail_offset);
          if (!status.ok()) {
            fail_chunk(std::move(status), c);
            pool->Release(*slot);
            break;
          }
        }
      }
      if (read_bytes == 0) {
        dispatch(*slot, c);
        continue;
      }
      Pending& p = pending[slot->index];
      p.slot = *slot;
      p.chunk = c;
      p.iov = iovec{slot->data, read_bytes};
      batch.push_back(
          io::ReadRequest{chunk.file, chunk.file_offset, std::span(&p.iov, 1), slot->index});
    }
    if (!batch.empty()) {
      activity.Change(static_cast<int>(batch.size()), 0);
      if (io::Status status = backend->Submit(batch); !status.ok()) {
        error.Record(std::move(status));
        // A failed Submit may have queued some of the batch: the slots stay with their requests
        // until the backend is destroyed below.
        outstanding += static_cast<uint32_t>(batch.size());
        backend_broken = true;
        break;
      }
      outstanding += static_cast<uint32_t>(batch.size());
      stats.peak_in_flight = std::max(stats.peak_in_flight, outstanding);
    }
    if (outstanding == 0) {
      if (error.stopped() || next >= chunk_count) break;
      continue;
    }
    auto reaped = backend->Reap(done, 1);
    if (!reaped.ok()) {
      error.Record(std::move(reaped).status());
      backend_broken = true;
      break;
    }
    activity.Change(-static_cast<int>(*reaped), 0);
    for (size_t i = 0; i < *reaped; ++i) {
      Pending& p = pending[done[i].id];
      p.iov = {};
      --outstanding;
      if (!done[i].status.ok()) {
        fail_chunk(std::move(done[i].status), p.chunk);
        pool->Release(p.slot);
      } else if (error.stopped()) {
        pool->Release(p.slot);  // draining: the bytes are not wanted any more
      } else {
        dispatch(p.slot, p.chunk);
      }
    }
  }
  if (backend_broken) {
    // The backend cannot be reaped any more; its destructor waits until the kernel is done with
    // every buffer, after which the slots of the lost requests can go back.
    activity.Change(-static_cast<int>(outstanding), 0);
    backend.reset();
    for (Pending& p : pending) {
      if (p.iov.iov_base != nullptr) pool->Release(p.slot);
    }
  }
  backend.reset();

  // Every copy must be finished before the slots, the plan and this frame go away.
  copies->Wait();
  io::Status finish = sink.Finish();
  if (sink_keeps_slots && own_pool != nullptr && own_pool->in_use() > 0) {
    // A sink broke its contract: copies may still read slots. Leaking the pool is the only safe
    // thing left to do with it.
    finish = io::Status::Error(io::StatusCode::kInternal, "sink",
                               "the sink still holds " + std::to_string(own_pool->in_use()) +
                                   " staging slots after Finish");
    (void)own_pool.release();
  }

  activity.Fill(&stats);
  stats.copy_thread_seconds = static_cast<double>(copy_nanos.load()) * 1e-9;
  stats.peak_slots_in_use = std::max(pool->peak_in_use(), peak_before) - peak_before;
  stats.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (io::Status status = error.Take(); !status.ok()) return status;
  if (!finish.ok()) return finish;
  if (!progress.Final()) return Cancelled();
  return stats;
}

}  // namespace shardstream::engine
