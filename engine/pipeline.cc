#include "engine/pipeline.h"

#include "engine/detail/load_support.h"
#include "engine/executor.h"
#include "io/file.h"
#include "io/stopwatch.h"
#include "io/uring_backend.h"

#include <fcntl.h>
#include <sys/uio.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <utility>

namespace shardstream::engine {
namespace {

using detail::Cancelled;
using detail::FirstError;
using detail::ProgressReporter;
using io::Clock;

uint64_t AlignDown(uint64_t value, uint64_t alignment) { return value & ~(alignment - 1); }

// Wall-clock accounting of how much reading and copying overlapped: every change in the number of
// reads in flight or copies running closes an interval that is charged to IO, copy, or both.
// The count of reads in flight also gives their peak, over every reader.
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
    peak_reads_ = std::max(peak_reads_, reads_);
  }
  void Fill(PipelineStats* stats) {
    Change(0, 0);
    std::lock_guard<std::mutex> lock(mutex_);
    stats->io_busy_seconds = io_;
    stats->copy_busy_seconds = copy_;
    stats->overlap_seconds = both_;
    stats->peak_in_flight = static_cast<uint32_t>(peak_reads_);
  }

 private:
  std::mutex mutex_;
  int reads_ = 0;
  int copies_ = 0;
  int peak_reads_ = 0;
  double io_ = 0, copy_ = 0, both_ = 0;
  Clock::time_point last_ = Clock::now();
};

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

// A slot: blocking (Acquire) or not (TryAcquire: nullopt when none is free).
io::Result<std::optional<SlotLease>> AcquireSlot(StagingPool& pool, bool block) {
  if (!block) return pool.TryAcquire();
  io::Result<SlotLease> lease = pool.Acquire();
  if (!lease.ok()) return std::move(lease).status();
  return std::optional<SlotLease>(std::move(*lease));
}

// One read of a reader's: the chunk, where it lands (a slot's lease when staged; the targets'
// memory, with gaps into the reader's scratch, in place) and the buffers the read scatters into.
// Its index in Reader::reads is the request id.
struct Read {
  uint32_t chunk = 0;
  SlotLease lease;
  std::vector<iovec> iovecs;
  bool in_flight = false;
};

// One reader's state: its backend (bound to its thread) and its reads. Readers share the plan,
// the pool, the next chunk to read and the copy tasks.
struct Reader {
  std::unique_ptr<io::ReadBackend> backend;
  // The reader consumes each staged slot itself, right after its read, unless it reads with
  // O_DIRECT through io_uring. A buffered read is a copy made by the reading thread (io_uring
  // completes a cached one inline too), so the slot is still in this core's cache, and no copy
  // task waits for a core that the readers hold (with one reader per core, handed-off copies
  // starved until the pool ran dry). An O_DIRECT io_uring read is the device's DMA: the reader's
  // core is free to keep the queue full while copy tasks on other cores empty the slots.
  bool copies_inline = true;
  std::vector<Read> reads;  // one per read in flight at most (the depth)
  std::vector<size_t> free_reads;
  std::unique_ptr<std::byte[]> gap_scratch;  // in place: the gaps read through land here
  std::vector<io::ReadRequest> batch;
  std::vector<io::Completion> done;
  uint32_t outstanding = 0;
  bool broken = false;  // the backend cannot be reaped any more
};

// One run of the pipeline, phase by phase: Open (files, O_DIRECT alignment), Plan, Staging (the
// pool), the readers, and Finish (drain, the sink, the stats).
class PipelineRun {
 public:
  PipelineRun(const io::Checkpoint& checkpoint, std::span<const Target> targets, Sink* sink,
              const PipelineOptions& options)
      : checkpoint_(checkpoint),
        targets_(targets),
        sink_(sink),
        options_(options),
        progress_(options.progress, 0) {}

  io::Result<PipelineStats> Run() {
    SHARDSTREAM_RETURN_IF_ERROR(Open());
    SHARDSTREAM_RETURN_IF_ERROR(Plan());
    SHARDSTREAM_RETURN_IF_ERROR(Staging());
    if (remaining_ && options_.staged && !reports_as_landed_) {
      // A device sink says when each chunk's copies completed (its events).
      sink_->SetChunkDone([this](uint32_t c) { Landed(plan_.PiecesOf(plan_.chunks[c])); });
    }
    StartCopies();
    ReadAll();
    return Finish();
  }

 private:
  io::Status Open();
  io::Status Deduplicate();
  io::Status Plan();
  io::Status Staging();
  void StartCopies();
  void ReadAll();
  void RunReader(Reader& reader);
  io::Status Backend(Reader& reader);
  void Loop(Reader& reader);
  std::optional<SlotLease> TakeSlot(const Reader& reader, bool* stop);
  bool Prepare(Reader& reader, uint32_t c, SlotLease lease);
  bool Scatter(Reader& reader, Read& read);
  void Reap(Reader& reader);
  void CloseReader(Reader& reader);
  io::Result<PipelineStats> Finish();
  void Copy(SlotLease lease, uint32_t c);
  void CountTargets();
  void Landed(std::span<const Piece> pieces);
  void Done(std::vector<size_t>& planned) const;

  void FailChunk(io::Status status, uint32_t c) {
    detail::LocateReadError(status, checkpoint_, plan_.chunks[c].file, plan_.chunks[c].file_offset);
    error_.Record(std::move(status));
  }

  const io::Checkpoint& checkpoint_;
  const std::span<const Target> targets_;
  std::span<const Target> planned_ = targets_;  // what the plan reads (in place: unique_)
  std::vector<Target> unique_;
  std::vector<std::pair<size_t, size_t>> duplicates_;  // (target, unique_ index it copies)
  std::vector<size_t> unique_origin_;                  // in place: unique_ index → target index
  // Per planned target, its payload bytes not yet in their destination (target_done only): the
  // piece that brings it to zero reports the target complete, so each is reported once.
  std::unique_ptr<std::atomic<uint64_t>[]> remaining_;
  bool reports_as_landed_ = false;  // pieces report completion when they land (else at Finish)
  Sink* const sink_;
  const PipelineOptions& options_;
  const Clock::time_point start_ = Clock::now();
  PipelineStats stats_;

  bool direct_ = false;
  uint32_t alignment_ = 1;
  std::optional<io::FileSet> files_;
  // The last block of a file whose size is not a multiple of the alignment cannot be read with
  // O_DIRECT without reading past the end, which the backends rightly call "file-changed". Those
  // tails (under one block per file) are read with pread from a buffered descriptor instead.
  std::optional<io::FileSet> buffered_;
  ReadPlan plan_;

  // Staging. Declared before the readers' backends so that it outlives them: a backend's
  // destructor may still be waiting for the kernel to finish reads into slots.
  std::unique_ptr<StagingPool> own_pool_;
  StagingPool* pool_ = nullptr;
  uint32_t peak_before_ = 0;
  uint32_t reader_count_ = 1;
  std::mutex setup_mutex_;        // the readers' backend setup reports into stats_
  bool copy_tasks_used_ = false;  // some reader handed its slots to copy tasks (under the mutex)

  std::unique_ptr<TaskGroup> copies_;
  // Slots handed to copy tasks, by slot index (a task takes the lease out; the slot cannot be
  // leased again before, so a reader and a task never touch one entry at once).
  std::vector<std::pair<SlotLease, uint32_t>> handed_;
  FirstError error_;
  Activity activity_;
  ProgressReporter progress_;
  std::atomic<uint64_t> copy_nanos_{0};
  std::atomic<uint32_t> next_{0};  // the next chunk to read
};

io::Status PipelineRun::Open() {
  direct_ = options_.staged && options_.direct;
  SHARDSTREAM_ASSIGN_OR_RETURN(files_, OpenFiles(checkpoint_, &direct_, &stats_.notes));
  // O_DIRECT: every read offset and length must be a multiple of the files' alignment (the
  // largest over files, since one plan covers them all).
  if (direct_) {
    for (size_t i = 0; i < files_->size() && direct_; ++i) {
      auto block = io::LogicalBlockSize(files_->fd(i));
      if (block.ok()) {
        alignment_ = std::max(alignment_, *block);
      } else {
        stats_.notes.push_back("direct: reading buffered: " + block.status().ToString());
        direct_ = false;
      }
    }
    if (!direct_) {
      alignment_ = 1;
      SHARDSTREAM_ASSIGN_OR_RETURN(files_, io::FileSet::Open(checkpoint_));
    }
  }
  if (direct_) {
    SHARDSTREAM_ASSIGN_OR_RETURN(buffered_, io::FileSet::Open(checkpoint_));
  }
  stats_.direct = direct_;
  stats_.alignment_bytes = alignment_;
  return io::Status::Ok();
}

// In place, a tensor wanted whole by several targets is read once, into the first, and copied
// into the others after the reads (one read cannot scatter the same bytes twice). Runs sharing a
// source cannot be read in place at all (engine::Fill routes them staged).
io::Status PipelineRun::Deduplicate() {
  std::map<std::pair<uint32_t, uint32_t>, size_t> seen;
  for (size_t i = 0; i < targets_.size(); ++i) {
    const Target& t = targets_[i];
    auto [it, first] = seen.emplace(std::make_pair(t.source.file, t.source.index), unique_.size());
    if (first) {
      unique_.push_back(t);
      unique_origin_.push_back(i);
    } else if (t.runs.empty() && unique_[it->second].runs.empty()) {
      duplicates_.emplace_back(i, it->second);
    } else {
      return io::Status::Error(io::StatusCode::kInternal, "internal",
                               "two targets with runs share a source tensor; read them staged");
    }
  }
  planned_ = unique_;
  return io::Status::Ok();
}

io::Status PipelineRun::Plan() {
  if (!options_.staged) SHARDSTREAM_RETURN_IF_ERROR(Deduplicate());
  PlanOptions plan_options;
  plan_options.chunk_bytes =
      options_.chunk_bytes != 0 ? options_.chunk_bytes
                                : (options_.staged ? kDefaultStagedChunkBytes : kDefaultChunkBytes);
  plan_options.alignment_bytes = alignment_;
  // Clamped: in-place reads drop the gaps they take through into a scratch of the default size.
  plan_options.max_gap_bytes = std::min(options_.read_gap_bytes, kDefaultReadGapBytes);
  SHARDSTREAM_ASSIGN_OR_RETURN(plan_, BuildReadPlan(checkpoint_, planned_, plan_options));
  stats_.payload_bytes = plan_.payload_bytes;
  stats_.read_bytes = plan_.read_bytes;
  stats_.chunks = plan_.chunks.size();
  progress_.SetTotal(plan_.payload_bytes);
  CountTargets();
  return io::Status::Ok();
}

// Each planned target's payload, summed over its pieces (the bytes Landed will count down).
void PipelineRun::CountTargets() {
  if (!options_.target_done) return;
  remaining_ = std::make_unique<std::atomic<uint64_t>[]>(planned_.size());  // zeroed
  for (const Piece& piece : plan_.pieces) {
    remaining_[piece.target].fetch_add(piece.length, std::memory_order_relaxed);
  }
  // Staged into a sink whose copies outlive Consume, completion is known when the sink reports a
  // chunk's copies done (Sink::SetChunkDone), or after its Finish.
  reports_as_landed_ = !options_.staged || (sink_ != nullptr && sink_->CompletesInConsume());
}

// The pieces' bytes are in their destinations. acq_rel: the thread that brings a target to zero
// has seen every other thread's writes into it (their release), and so does whoever it tells.
void PipelineRun::Landed(std::span<const Piece> pieces) {
  std::vector<size_t> done;
  for (const Piece& piece : pieces) {
    if (piece.length == 0) continue;
    if (remaining_[piece.target].fetch_sub(piece.length, std::memory_order_acq_rel) ==
        piece.length) {
      done.push_back(piece.target);
    }
  }
  Done(done);
}

// Reports planned targets by their indices in the caller's targets (in place, planned_ holds
// each source once), in one call.
void PipelineRun::Done(std::vector<size_t>& planned) const {
  if (planned.empty()) return;
  if (!unique_origin_.empty()) {
    for (size_t& t : planned) t = unique_origin_[t];
  }
  options_.target_done(planned);
}

io::Status PipelineRun::Staging() {
  if (!options_.staged) return io::Status::Ok();
  if (sink_ == nullptr) {
    return io::Status::Error(io::StatusCode::kInternal, "internal", "a staged read needs a sink");
  }
  pool_ = options_.pool;
  const uint64_t slot_bytes = std::max<uint64_t>(plan_.max_chunk_bytes, 1);
  if (pool_ == nullptr) {
    // No more slots than chunks: a small checkpoint does not pay for (or register) a large pool.
    const uint64_t wanted =
        std::max<uint64_t>(plan_.chunks.size(), 1) * StagingSlotBytes(slot_bytes);
    SHARDSTREAM_ASSIGN_OR_RETURN(
        own_pool_, StagingPool::Create(std::min(options_.staging_bytes, wanted), slot_bytes));
    pool_ = own_pool_.get();
  } else if (pool_->slot_bytes() < slot_bytes) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "staging",
                             "staging slots of " + std::to_string(pool_->slot_bytes()) +
                                 " bytes cannot hold a chunk of " + std::to_string(slot_bytes) +
                                 " bytes; lower the chunk size");
  }
  peak_before_ = pool_->in_use();
  pool_->ResetPeak();
  stats_.slots = pool_->slot_count();
  stats_.slot_bytes = pool_->slot_bytes();
  return io::Status::Ok();
}

io::Status PipelineRun::Backend(Reader& reader) {
  // Made on the reader's thread, the only one to use it (io_uring binds a ring to its creating
  // thread).
  io::UringOptions uring;
  uring.queue_depth = std::clamp<uint32_t>(options_.queue_depth, 1, io::kMaxUringQueueDepth);
  uring.sqpoll = options_.sqpoll;
  uring.async_reads = options_.staged && !direct_ && options_.async_buffered_reads;
  if (pool_ != nullptr && options_.register_buffers) {
    uring.fixed_buffers.push_back(iovec{pool_->data(), pool_->allocated_bytes()});
  }
  std::string fallback;
  SHARDSTREAM_ASSIGN_OR_RETURN(
      reader.backend,
      detail::MakeReadBackend(options_.backend, *files_, uring, options_.make_backend,
                              options_.fall_back_to_pread, &fallback));
  // A synchronous backend does the read inside Submit: more than one request per batch would only
  // delay the first copy. Staged, the slots are shared out among the readers.
  const uint32_t cap =
      pool_ != nullptr ? std::max<uint32_t>(1, pool_->slot_count() / reader_count_) : UINT32_MAX;
  const uint32_t depth = reader.backend->kind() == io::BackendKind::kUring
                             ? std::clamp<uint32_t>(options_.queue_depth, 1, cap)
                             : 1;
  reader.copies_inline = !direct_ || reader.backend->kind() != io::BackendKind::kUring;
  reader.reads.resize(depth);
  for (size_t i = depth; i > 0; --i) reader.free_reads.push_back(i - 1);
  reader.done.resize(depth);
  if (!options_.staged) reader.gap_scratch.reset(new std::byte[kDefaultReadGapBytes]);

  std::lock_guard<std::mutex> lock(setup_mutex_);
  if (options_.staged && !reader.copies_inline) copy_tasks_used_ = true;
  if (!fallback.empty()) detail::AppendFallback(&stats_.fallback, fallback);
  if (!stats_.backend.empty()) return io::Status::Ok();  // the first reader reports the setup
  stats_.backend = std::string(io::BackendName(reader.backend->kind()));
  if (const auto* ring = dynamic_cast<const io::UringBackend*>(reader.backend.get())) {
    stats_.sqpoll = ring->setup().sqpoll;
    stats_.registered_buffer_bytes = ring->setup().registered_buffer_bytes;
    for (const std::string& note : ring->setup().fallbacks) {
      stats_.notes.push_back("io_uring: " + note);
    }
  }
  return io::Status::Ok();
}

void PipelineRun::StartCopies() {
  if (!options_.staged) return;
  // oneTBB has max_allowed_parallelism - 1 workers (cores - 1 unless a global_control says
  // otherwise); asking an arena for more only makes oneTBB print a warning. The copy tasks are
  // queued, never run by a reader: it must not be pulled into copying while finished reads sit
  // unreaped. The group tracks the copies; they are waited for only at the end.
  const int workers = std::max(1, HardwareConcurrency(options_.executor) - 1);
  const int copy_threads =
      std::min(options_.copy_threads > 0 ? options_.copy_threads : workers, workers);
  stats_.copy_threads = copy_threads;
  copies_ = MakeTaskGroup(copy_threads, options_.executor);
  handed_.resize(pool_->slot_count());
}

// The readers: the calling thread and `readers - 1` threads of their own (never oneTBB workers:
// a reader blocks on the disk and on free slots, and a blocked oneTBB worker is one copy task
// fewer, on a small machine the only one). Staged, no more readers than chunks, nor than half the
// slots: a device sink parks each slot until its copy is done, so a reader needs a second slot to
// read into meanwhile. In place, as many as asked (a reader without a chunk ends at once).
void PipelineRun::ReadAll() {
  const uint64_t wanted = options_.readers > 0 ? options_.readers : DefaultReaders(direct_);
  const uint64_t cap = pool_ != nullptr
                           ? std::min<uint64_t>(plan_.chunks.size(), pool_->slot_count() / 2)
                           : kMaxReaders;
  reader_count_ =
      static_cast<uint32_t>(std::clamp<uint64_t>(std::min(wanted, cap), 1, kMaxReaders));
  stats_.readers = reader_count_;
  std::vector<Reader> readers(reader_count_);
  std::unique_ptr<TaskGroup> others;
  if (reader_count_ > 1) {
    others = MakeTaskGroup(static_cast<int>(reader_count_ - 1), ExecutorKind::kThreads);
    for (uint32_t i = 1; i < reader_count_; ++i) {
      others->Run([this, &readers, i] { RunReader(readers[i]); });
    }
  }
  RunReader(readers[0]);
  if (others) others->Wait();
  if (!copy_tasks_used_) stats_.copy_threads = 0;
}

void PipelineRun::RunReader(Reader& reader) {
  // A reader's thread is a task boundary: nothing may escape it.
  try {
    if (io::Status status = Backend(reader); !status.ok()) {
      error_.Record(std::move(status));
      return;
    }
    Loop(reader);
  } catch (const std::bad_alloc&) {
    error_.Record(io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                                    "out of memory while reading"));
  } catch (const std::exception& e) {
    error_.Record(io::Status::Error(io::StatusCode::kInternal, "internal", e.what()));
  }
  CloseReader(reader);
}

// Consumes a filled slot, here or on a copy task (see Reader::copies_inline): the sink gets its
// lease and frees the slot, or parks it behind its copies' fence.
void PipelineRun::Copy(SlotLease lease, uint32_t c) {
  const Chunk& chunk = plan_.chunks[c];
  if (error_.stopped()) return;  // draining: the lease frees the slot
  StagedSlot staged{lease.data(),    chunk.needed_bytes, chunk.file_offset, chunk.file, c,
                    std::move(lease)};
  activity_.Change(0, +1);
  const auto copy_start = Clock::now();
  io::Status status;
  // The task boundary: nothing may escape into oneTBB, which would terminate.
  try {
    status = sink_->Consume(std::move(staged), plan_.PiecesOf(chunk));
  } catch (const std::bad_alloc&) {
    status = io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                               "out of memory while copying");
  } catch (const std::exception& e) {
    status = io::Status::Error(io::StatusCode::kInternal, "internal", e.what());
  }
  copy_nanos_.fetch_add(
      static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - copy_start).count()),
      std::memory_order_relaxed);
  activity_.Change(0, -1);
  if (!status.ok()) {
    FailChunk(std::move(status), c);
    return;
  }
  if (remaining_ && reports_as_landed_) Landed(plan_.PiecesOf(chunk));
  if (!progress_.Add(plan_.PayloadOf(chunk))) error_.Record(Cancelled());
}

// In place: the chunk's iovecs scatter the file range into the targets' memory, gaps into the
// reader's scratch.
bool PipelineRun::Scatter(Reader& reader, Read& read) {
  read.iovecs.clear();
  uint64_t cursor = 0;
  for (const Piece& piece : plan_.PiecesOf(plan_.chunks[read.chunk])) {
    if (piece.chunk_offset < cursor) {
      error_.Record(io::Status::Error(io::StatusCode::kInternal, "internal",
                                      "overlapping pieces in one scattered read"));
      return false;
    }
    if (piece.chunk_offset > cursor) {
      read.iovecs.push_back(iovec{reader.gap_scratch.get(), piece.chunk_offset - cursor});
    }
    read.iovecs.push_back(
        iovec{planned_[piece.target].destination + piece.target_offset, piece.length});
    cursor = piece.chunk_offset + piece.length;
  }
  return true;
}

// Prepares the read of chunk `c` (into `lease`'s slot when staged) and queues it in the reader's
// batch; a staged chunk with nothing left to read asynchronously (an O_DIRECT tail only) is
// consumed at once. False when the chunk failed.
bool PipelineRun::Prepare(Reader& reader, uint32_t c, SlotLease lease) {
  const Chunk& chunk = plan_.chunks[c];
  const size_t index = reader.free_reads.back();
  Read& read = reader.reads[index];
  read.chunk = c;
  if (!options_.staged) {
    if (!Scatter(reader, read)) return false;
  } else {
    const StagingSlot slot = lease.slot();
    uint64_t read_bytes = chunk.needed_bytes;
    if (direct_) {
      // Whole aligned blocks up to the last one inside the file; the partial block at the end of
      // the file (if needed) comes from the buffered descriptor.
      const uint64_t file_bytes = files_->size_bytes(chunk.file);
      read_bytes = std::min(chunk.length, AlignDown(file_bytes, alignment_) - chunk.file_offset);
      if (chunk.needed_bytes > read_bytes) {
        const uint64_t tail_offset = chunk.file_offset + read_bytes;
        io::Status status = io::PreadFull(
            buffered_->fd(chunk.file),
            std::span(slot.data + read_bytes, chunk.needed_bytes - read_bytes), tail_offset);
        if (!status.ok()) {
          FailChunk(std::move(status), c);
          return false;  // the lease frees the slot
        }
      }
    }
    if (read_bytes == 0) {  // the chunk was all tail: nothing left to read asynchronously
      Copy(std::move(lease), c);
      return true;
    }
    read.iovecs.assign(1, iovec{slot.data, read_bytes});
    read.lease = std::move(lease);
  }
  reader.free_reads.pop_back();
  read.in_flight = true;
  reader.batch.push_back(io::ReadRequest{chunk.file, chunk.file_offset, read.iovecs, index});
  return true;
}

// A staged read's slot, blocking only when the reader has nothing in flight (otherwise reaping
// first is what frees slots, through the copies it dispatches). Acquire also reclaims the slots a
// device sink parked behind its copies, and a device error comes back here. nullopt with *stop
// set: the reader is done queueing for now.
std::optional<SlotLease> PipelineRun::TakeSlot(const Reader& reader, bool* stop) {
  const bool idle = reader.outstanding == 0 && reader.batch.empty();
  io::Result<std::optional<SlotLease>> slot = AcquireSlot(*pool_, idle);
  if (!slot.ok()) {
    error_.Record(std::move(slot).status());
    *stop = true;
    return std::nullopt;
  }
  if (!*slot || error_.stopped())
    *stop = true;  // a copy failed while we waited: the lease frees it
  return std::move(*slot);
}

void PipelineRun::Reap(Reader& reader) {
  auto reaped = reader.backend->Reap(reader.done, 1);
  if (!reaped.ok()) {
    error_.Record(std::move(reaped).status());
    reader.broken = true;
    return;
  }
  activity_.Change(-static_cast<int>(*reaped), 0);
  for (size_t i = 0; i < *reaped; ++i) {
    const size_t index = reader.done[i].id;
    Read& read = reader.reads[index];
    read.in_flight = false;
    --reader.outstanding;
    reader.free_reads.push_back(index);
    SlotLease lease = std::move(read.lease);
    if (!reader.done[i].status.ok()) {
      FailChunk(std::move(reader.done[i].status), read.chunk);
    } else if (error_.stopped()) {
      // Draining: the bytes are not wanted any more; the lease frees the slot.
    } else if (!options_.staged) {
      const Chunk& chunk = plan_.chunks[read.chunk];
      if (remaining_) Landed(plan_.PiecesOf(chunk));
      if (!progress_.Add(plan_.PayloadOf(chunk))) error_.Record(Cancelled());
    } else if (reader.copies_inline) {
      Copy(std::move(lease), read.chunk);
    } else {
      const uint32_t slot = lease.slot().index;
      handed_[slot] = {std::move(lease), read.chunk};
      copies_->Run([this, slot] { Copy(std::move(handed_[slot].first), handed_[slot].second); });
    }
  }
}

// One reader's loop: keep `depth` reads in flight while chunks are left (and, staged, slots are
// free); reap; consume.
void PipelineRun::Loop(Reader& reader) {
  const auto chunk_count = static_cast<uint32_t>(plan_.chunks.size());
  while (!reader.broken) {
    reader.batch.clear();
    bool stop = false;
    while (!stop && !error_.stopped() && next_.load(std::memory_order_relaxed) < chunk_count &&
           !reader.free_reads.empty()) {
      std::optional<SlotLease> lease;
      if (options_.staged) {
        lease = TakeSlot(reader, &stop);
        if (stop) break;
      }
      const uint32_t c = next_.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunk_count) break;  // another reader took the last chunk; the lease frees the slot
      if (!Prepare(reader, c, lease ? std::move(*lease) : SlotLease())) break;
    }
    if (!reader.batch.empty()) {
      const auto count = static_cast<uint32_t>(reader.batch.size());
      activity_.Change(static_cast<int>(count), 0);
      io::Status status = reader.backend->Submit(reader.batch);
      // A failed Submit may have queued some of the batch: the slots stay with their reads until
      // the backend is destroyed (CloseReader).
      reader.outstanding += count;
      if (!status.ok()) {
        error_.Record(std::move(status));
        reader.broken = true;
        break;
      }
    }
    if (reader.outstanding == 0) {
      if (error_.stopped() || next_.load(std::memory_order_relaxed) >= chunk_count) break;
      continue;
    }
    Reap(reader);
  }
}

void PipelineRun::CloseReader(Reader& reader) {
  if (reader.broken) {
    // The backend cannot be reaped any more; its destructor waits until the kernel is done with
    // every buffer, after which the slots of its lost reads can go back.
    activity_.Change(-static_cast<int>(reader.outstanding), 0);
    reader.backend.reset();
    for (Read& read : reader.reads) {
      if (!read.in_flight) continue;
      read.in_flight = false;
      read.lease.Reset();
    }
  }
  reader.backend.reset();
}

io::Result<PipelineStats> PipelineRun::Finish() {
  // Every copy must be finished before the slots, the plan and this frame go away.
  io::Status finish;
  if (copies_ != nullptr) copies_->Wait();
  if (options_.staged) finish = sink_->Finish();

  activity_.Fill(&stats_);
  stats_.copy_thread_seconds = static_cast<double>(copy_nanos_.load()) * 1e-9;
  if (pool_ != nullptr) {
    stats_.peak_slots_in_use = std::max(pool_->peak_in_use(), peak_before_) - peak_before_;
  }
  stats_.seconds = io::SecondsSince(start_);
  if (io::Status status = error_.Take(); !status.ok()) return status;
  if (!finish.ok()) return finish;
  if (!progress_.Final()) return Cancelled();
  for (const auto& [target, index] : duplicates_) {
    const uint64_t bytes = checkpoint_.tensor(targets_[target].source).size_bytes();
    if (bytes > 0) std::memcpy(targets_[target].destination, unique_[index].destination, bytes);
  }
  if (remaining_) {
    std::vector<size_t> copied;
    for (const auto& [target, index] : duplicates_) copied.push_back(target);
    if (!copied.empty()) options_.target_done(copied);
    // What no landed piece reported: targets without payload (empty tensors and runs) and, for a
    // sink whose copies outlive Consume, those whose chunks it did not report before its Finish
    // (which waited for every copy, and after which it reports nothing more).
    std::vector<bool> has_pieces(planned_.size(), false);
    for (const Piece& piece : plan_.pieces)
      has_pieces[piece.target] = has_pieces[piece.target] || piece.length > 0;
    std::vector<size_t> rest;
    for (size_t t = 0; t < planned_.size(); ++t) {
      if (!has_pieces[t] || remaining_[t].load(std::memory_order_acquire) > 0) rest.push_back(t);
    }
    Done(rest);
  }
  return stats_;
}

}  // namespace

uint32_t DefaultReaders(bool direct) {
  const auto cores = std::max(1u, std::thread::hardware_concurrency());
  return direct ? 1 : std::min(cores, kMaxReaders);
}

io::Result<PipelineStats> RunPipeline(const io::Checkpoint& checkpoint,
                                      std::span<const Target> targets, Sink* sink,
                                      const PipelineOptions& options) {
  return PipelineRun(checkpoint, targets, sink, options).Run();
}

}  // namespace shardstream::engine
