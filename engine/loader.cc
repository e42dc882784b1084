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

}  // namespace

io::Result<FillStats> FillTargets(const io::Checkpoint& checkpoint,
                                  std::span<const LoadTarget> targets, const FillOptions& options) {
  FillStats stats;
  auto stage_start = Clock::now();

  // Files: opened once, checked against the sizes their headers were validated with.
  SHARDSTREAM_ASSIGN_OR_RETURN(io::FileSet files, io::FileSet::Open(checkpoint));
  stats.stages.emplace_back("open", SecondsSince(stage_start));

  // Plan. A tensor wanted twice is read once and copied afterwards: one read cannot scatter the
  // same bytes into two places.
  stage_start = Clock::now();
  std::vector<io::TensorLocation> unique_sources;
  std::vector<std::byte*> unique_destinations;
  std::vector<std::pair<size_t, size_t>> copies;  // (target, unique index it copies)
  {
    std::map<std::pair<uint32_t, uint32_t>, size_t> seen;
    for (size_t i = 0; i < targets.size(); ++i) {
      const auto key = std::make_pair(targets[i].source.file, targets[i].source.index);
      auto [it, inserted] = seen.emplace(key, unique_sources.size());
      if (inserted) {
        unique_sources.push_back(targets[i].source);
        unique_destinations.push_back(targets[i].destination);
      } else {
        copies.emplace_back(i, it->second);
      }
    }
  }
  PlanOptions plan_options;
  plan_options.chunk_bytes = options.chunk_bytes;
  plan_options.alignment_bytes = 1;
  plan_options.max_gap_bytes = kDefaultReadGapBytes;
  SHARDSTREAM_ASSIGN_OR_RETURN(ReadPlan plan,
                               BuildReadPlan(checkpoint, unique_sources, plan_options));
  stats.payload_bytes = plan.payload_bytes;
  stats.read_bytes = plan.read_bytes;
  stats.chunks = plan.chunks.size();
  stats.stages.emplace_back("plan", SecondsSince(stage_start));

  // Read: `threads` workers, each with its own backend, take chunks in file order from a shared
  // counter and keep up to `queue_depth` of them in flight (one for the synchronous backends,
  // whose Submit does the read). A chunk is one request: its iovec list scatters the file range
  // into the destinations it covers, and a per-worker scratch buffer swallows the small gaps read
  // through.
  stage_start = Clock::now();
  const int threads = options.threads > 0
                          ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  stats.threads = threads;
  FirstError first_error;
  ProgressReporter progress(options.progress, plan.payload_bytes);
  std::atomic<size_t> next_chunk{0};
  std::atomic<uint32_t> in_flight{0};
  std::atomic<uint32_t> peak_in_flight{0};
  std::atomic<bool> fell_back{false};

  auto fail = [&](io::Status status) { first_error.Record(std::move(status)); };

  auto run_worker = [&] {
    std::unique_ptr<io::ReadBackend> backend;
    if (options.make_backend) {
      backend = options.make_backend(files);
    } else {
      io::UringOptions uring;
      uring.queue_depth = std::clamp<uint32_t>(options.queue_depth, 1, io::kMaxUringQueueDepth);
      uring.sqpoll = options.sqpoll;
      auto made = io::MakeBackendOrError(options.backend, files, &uring);
      if (!made.ok() && options.backend == io::BackendKind::kUring && options.fall_back_to_pread) {
        // io_uring refused (old kernel, seccomp): pread does the same job, only with less overlap.
        if (!fell_back.exchange(true)) stats.fallback = made.status().ToString();
        made = io::MakeBackendOrError(io::BackendKind::kPread, files);
      }
      if (!made.ok()) return fail(std::move(made).status());
      backend = std::move(*made);
    }
    const size_t depth =
        backend->kind() == io::BackendKind::kUring ? std::max<uint32_t>(1, options.queue_depth) : 1;
    struct Slot {
      std::vector<iovec> iovecs;
      size_t chunk = 0;
    };
    std::vector<Slot> slots(depth);
    std::vector<size_t> free_slots;
    for (size_t i = depth; i > 0; --i) free_slots.push_back(i - 1);
    std::unique_ptr<std::byte[]> scratch(new std::byte[kDefaultReadGapBytes]);
    std::vector<io::ReadRequest> batch;
    std::vector<io::Completion> done(depth);
    size_t outstanding = 0;
    while (true) {
      batch.clear();
      while (!first_error.stopped() && !free_slots.empty()) {
        const size_t c = next_chunk.fetch_add(1, std::memory_order_relaxed);
        if (c >= plan.chunks.size()) break;
        const size_t s = free_slots.back();
        free_slots.pop_back();
        Slot& slot = slots[s];
        slot.chunk = c;
        slot.iovecs.clear();
        const Chunk& chunk = plan.chunks[c];
        uint64_t cursor = 0;
        for (const Piece& piece : plan.PiecesOf(chunk)) {
          if (piece.chunk_offset > cursor) {
            slot.iovecs.push_back(iovec{scratch.get(), piece.chunk_offset - cursor});
          }
          slot.iovecs.push_back(
              iovec{unique_destinations[piece.target] + piece.target_offset, piece.length});
          cursor = piece.chunk_offset + piece.length;
        }
        batch.push_back(io::ReadRequest{chunk.file, chunk.file_offset, slot.iovecs, s});
      }
      if (!batch.empty()) {
        if (io::Status status = backend->Submit(batch); !status.ok())
          return fail(std::move(status));
        outstanding += batch.size();
        const uint32_t now = in_flight.fetch_add(static_cast<uint32_t>(batch.size())) +
                             static_cast<uint32_t>(batch.size());
        uint32_t peak = peak_in_flight.load(std::memory_order_relaxed);
        while (now > peak && !peak_in_flight.compare_exchange_weak(peak, now)) {
        }
      }
      if (outstanding == 0) return;
      auto reaped = backend->Reap(done, 1);
      if (!reaped.ok()) return fail(std::move(reaped).status());  // the backend drains on exit
      for (size_t i = 0; i < *reaped; ++i) {
        const size_t s = done[i].id;
        const Chunk& chunk = plan.chunks[slots[s].chunk];
        --outstanding;
        in_flight.fetch_sub(1, std::memory_order_relaxed);
        free_slots.push_back(s);
        if (io::Status& status = done[i].status; !status.ok()) {
          LocateReadError(status, checkpoint, chunk.file, chunk.file_offset);
          fail(std::move(status));
        } else if (!progress.Add(chunk.needed_bytes)) {
          fail(Cancelled());
        }
      }
    }
  };

  // The workers run as tasks (oneTBB, or std::threads under TSan: engine/executor.h); this thread
  // waits, and with oneTBB may run one of them itself.
  std::unique_ptr<TaskGroup> workers = MakeTaskGroup(threads, options.executor);
  for (int i = 0; i < threads; ++i) {
    workers->Run([&] {
      // The task boundary: nothing may escape into the executor, which would terminate.
      try {
        run_worker();
      } catch (const std::bad_alloc&) {
        fail(io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                               "out of memory while reading"));
      } catch (const std::exception& e) {
        fail(io::Status::Error(io::StatusCode::kInternal, "internal", e.what()));
      }
    });
  }
  workers->Wait();
  stats.peak_in_flight = peak_in_flight.load();
  if (io::Status error = first_error.Take(); !error.ok()) return error;
  if (!progress.Final()) {
    return Cancelled();
  }

  for (const auto& [target, unique] : copies) {
    const uint64_t bytes = checkpoint.tensor(targets[target].source).size_bytes();
    if (bytes > 0) std::memcpy(targets[target].destination, unique_destinations[unique], bytes);
  }
  stats.stages.emplace_back("read", SecondsSince(stage_start));
  return stats;
}

}  // namespace shardstream::engine
