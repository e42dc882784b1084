#include "engine/loader.h"

#include "engine/detail/load_support.h"
#include "engine/executor.h"
#include "io/uring_backend.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

namespace shardstream::engine {
namespace {

using detail::Cancelled;
using detail::Clock;
using detail::FirstError;
using detail::LocateReadError;
using detail::ProgressReporter;
using detail::SecondsSince;

// A tensor wanted twice is read once and copied afterwards: one read cannot scatter the same
// bytes into two places. Targets with runs are never merged (their runs say which bytes).
struct UniqueTargets {
  std::vector<LoadTarget> unique;
  std::vector<std::pair<size_t, size_t>> copies;  // (target, unique index it copies)
};

io::Result<UniqueTargets> Deduplicate(std::span<const LoadTarget> targets) {
  UniqueTargets out;
  std::map<std::pair<uint32_t, uint32_t>, size_t> seen;
  for (size_t i = 0; i < targets.size(); ++i) {
    const auto key = std::make_pair(targets[i].source.file, targets[i].source.index);
    auto [it, inserted] = seen.emplace(key, out.unique.size());
    if (inserted) {
      out.unique.push_back(targets[i]);
    } else if (targets[i].runs.empty() && out.unique[it->second].runs.empty()) {
      out.copies.emplace_back(i, it->second);
    } else {
      return io::Status::Error(io::StatusCode::kInternal, "internal",
                               "two targets with runs share a source tensor; read them staged");
    }
  }
  return out;
}

// The state the read workers share.
struct Shared {
  Shared(const io::Checkpoint& c, const io::FileSet& f, const ReadPlan& p,
         const std::vector<LoadTarget>& t, const FillOptions& o)
      : checkpoint(c),
        files(f),
        plan(p),
        targets(t),
        options(o),
        progress(o.progress, p.payload_bytes) {}

  const io::Checkpoint& checkpoint;
  const io::FileSet& files;
  const ReadPlan& plan;
  const std::vector<LoadTarget>& targets;
  const FillOptions& options;
  FirstError error;
  ProgressReporter progress;
  std::atomic<size_t> next_chunk{0};
  std::atomic<uint32_t> in_flight{0};
  std::atomic<uint32_t> peak_in_flight{0};
  std::mutex fallback_mutex;
  std::string fallback;
};

// One worker: its own backend, up to `queue_depth` chunks in flight (one for the synchronous
// backends, whose Submit does the read). A chunk is one request: its iovec list scatters the file
// range into the destinations it covers, and a scratch buffer swallows the small gaps read
// through.
class Worker {
 public:
  explicit Worker(Shared& shared) : s_(shared) {}

  void Run() {
    if (!MakeBackend()) return;
    const size_t depth = backend_->kind() == io::BackendKind::kUring
                             ? std::max<uint32_t>(1, s_.options.queue_depth)
                             : 1;
    slots_.resize(depth);
    for (size_t i = depth; i > 0; --i) free_slots_.push_back(i - 1);
    scratch_.reset(new std::byte[kDefaultReadGapBytes]);
    done_.resize(depth);
    while (!s_.error.stopped() || outstanding_ > 0) {
      if (!SubmitMore()) return;
      if (outstanding_ == 0) return;
      if (!ReapSome()) return;
    }
  }

 private:
  struct Slot {
    std::vector<iovec> iovecs;
    size_t chunk = 0;
  };

  bool Fail(io::Status status) {
    s_.error.Record(std::move(status));
    return false;
  }

  bool MakeBackend() {
    io::UringOptions uring;
    uring.queue_depth = std::clamp<uint32_t>(s_.options.queue_depth, 1, io::kMaxUringQueueDepth);
    uring.sqpoll = s_.options.sqpoll;
    std::string fallback;
    auto made =
        detail::MakeReadBackend(s_.options.backend, s_.files, uring, s_.options.make_backend,
                                s_.options.fall_back_to_pread, &fallback);
    if (!fallback.empty()) {
      std::lock_guard<std::mutex> lock(s_.fallback_mutex);
      detail::AppendFallback(&s_.fallback, fallback);
    }
    if (!made.ok()) return Fail(std::move(made).status());
    backend_ = std::move(*made);
    return true;
  }

  // Builds the iovecs of chunk `c` into slot `s`.
  bool Prepare(size_t c, Slot& slot) {
    slot.chunk = c;
    slot.iovecs.clear();
    uint64_t cursor = 0;
    for (const Piece& piece : s_.plan.PiecesOf(s_.plan.chunks[c])) {
      if (piece.chunk_offset < cursor) {
        return Fail(io::Status::Error(io::StatusCode::kInternal, "internal",
                                      "overlapping pieces in one scattered read"));
      }
      if (piece.chunk_offset > cursor) {
        slot.iovecs.push_back(iovec{scratch_.get(), piece.chunk_offset - cursor});
      }
      slot.iovecs.push_back(
          iovec{s_.targets[piece.target].destination + piece.target_offset, piece.length});
      cursor = piece.chunk_offset + piece.length;
    }
    return true;
  }

  bool SubmitMore() {
    batch_.clear();
    while (!s_.error.stopped() && !free_slots_.empty()) {
      const size_t c = s_.next_chunk.fetch_add(1, std::memory_order_relaxed);
      if (c >= s_.plan.chunks.size()) break;
      const size_t index = free_slots_.back();
      free_slots_.pop_back();
      if (!Prepare(c, slots_[index])) return false;
      const Chunk& chunk = s_.plan.chunks[c];
      batch_.push_back(io::ReadRequest{chunk.file, chunk.file_offset, slots_[index].iovecs, index});
    }
    if (batch_.empty()) return true;
    if (io::Status status = backend_->Submit(batch_); !status.ok()) return Fail(std::move(status));
    outstanding_ += batch_.size();
    const auto added = static_cast<uint32_t>(batch_.size());
    const uint32_t now = s_.in_flight.fetch_add(added) + added;
    uint32_t peak = s_.peak_in_flight.load(std::memory_order_relaxed);
    while (now > peak && !s_.peak_in_flight.compare_exchange_weak(peak, now)) {
    }
    return true;
  }

  bool ReapSome() {
    auto reaped = backend_->Reap(done_, 1);
    if (!reaped.ok()) return Fail(std::move(reaped).status());  // the backend drains on exit
    for (size_t i = 0; i < *reaped; ++i) {
      const size_t index = done_[i].id;
      const Chunk& chunk = s_.plan.chunks[slots_[index].chunk];
      --outstanding_;
      s_.in_flight.fetch_sub(1, std::memory_order_relaxed);
      free_slots_.push_back(index);
      if (io::Status& status = done_[i].status; !status.ok()) {
        LocateReadError(status, s_.checkpoint, chunk.file, chunk.file_offset);
        Fail(std::move(status));
      } else if (!s_.progress.Add(s_.plan.PayloadOf(chunk))) {
        Fail(Cancelled());
      }
    }
    return true;
  }

  Shared& s_;
  std::unique_ptr<io::ReadBackend> backend_;
  std::vector<Slot> slots_;
  std::vector<size_t> free_slots_;
  std::unique_ptr<std::byte[]> scratch_;
  std::vector<io::ReadRequest> batch_;
  std::vector<io::Completion> done_;
  size_t outstanding_ = 0;
};

}  // namespace

io::Result<FillStats> FillTargets(const io::Checkpoint& checkpoint,
                                  std::span<const LoadTarget> targets, const FillOptions& options) {
  FillStats stats;
  auto stage_start = Clock::now();

  // Files: opened once, checked against the sizes their headers were validated with.
  SHARDSTREAM_ASSIGN_OR_RETURN(io::FileSet files, io::FileSet::Open(checkpoint));
  stats.stages.emplace_back("open", SecondsSince(stage_start));

  stage_start = Clock::now();
  SHARDSTREAM_ASSIGN_OR_RETURN(UniqueTargets unique, Deduplicate(targets));
  PlanOptions plan_options;
  plan_options.chunk_bytes = options.chunk_bytes;
  plan_options.alignment_bytes = 1;
  plan_options.max_gap_bytes = kDefaultReadGapBytes;
  SHARDSTREAM_ASSIGN_OR_RETURN(
      ReadPlan plan, BuildReadPlan(checkpoint, detail::PlanTargetsOf(unique.unique), plan_options));
  stats.payload_bytes = plan.payload_bytes;
  stats.read_bytes = plan.read_bytes;
  stats.chunks = plan.chunks.size();
  stats.stages.emplace_back("plan", SecondsSince(stage_start));

  // Read: `threads` workers take chunks in file order from a shared counter. They run as tasks
  // (oneTBB, or std::threads under TSan: engine/executor.h); this thread waits, and with oneTBB
  // may run one of them itself.
  stage_start = Clock::now();
  const int threads = options.threads > 0
                          ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  stats.threads = threads;
  Shared shared(checkpoint, files, plan, unique.unique, options);
  std::unique_ptr<TaskGroup> workers = MakeTaskGroup(threads, options.executor);
  for (int i = 0; i < threads; ++i) {
    workers->Run([&] {
      // The task boundary: nothing may escape into the executor, which would terminate.
      try {
        Worker(shared).Run();
      } catch (const std::bad_alloc&) {
        shared.error.Record(io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                                              "out of memory while reading"));
      } catch (const std::exception& e) {
        shared.error.Record(io::Status::Error(io::StatusCode::kInternal, "internal", e.what()));
      }
    });
  }
  workers->Wait();
  stats.peak_in_flight = shared.peak_in_flight.load();
  stats.fallback = shared.fallback;
  if (io::Status error = shared.error.Take(); !error.ok()) return error;
  if (!shared.progress.Final()) return Cancelled();

  for (const auto& [target, index] : unique.copies) {
    const uint64_t bytes = checkpoint.tensor(targets[target].source).size_bytes();
    if (bytes > 0)
      std::memcpy(targets[target].destination, unique.unique[index].destination, bytes);
  }
  stats.stages.emplace_back("read", SecondsSince(stage_start));
  return stats;
}

}  // namespace shardstream::engine
