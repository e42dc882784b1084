#include "engine/loader.h"

#include <oneapi/tbb/enumerable_thread_specific.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>

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

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

constexpr auto kProgressInterval = std::chrono::milliseconds(50);

// The first error of a parallel load wins; later ones are consequences.
class FirstError {
 public:
  void Record(io::Status status) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (status_.ok()) status_ = std::move(status);
  }
  io::Status Take() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::move(status_);
  }

 private:
  std::mutex mutex_;
  io::Status status_;
};

// Serialises progress callbacks and rate-limits them.
class ProgressReporter {
 public:
  ProgressReporter(const ProgressFn& fn, uint64_t total) : fn_(fn), total_(total) {}

  // Adds `bytes`; returns false when the callback asked to cancel.
  bool Add(uint64_t bytes) {
    const uint64_t done = done_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    if (!fn_) return true;
    std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return !cancelled_.load(std::memory_order_relaxed);
    const auto now = Clock::now();
    if (done < total_ && now - last_ < kProgressInterval) return !cancelled_;
    last_ = now;
    if (!fn_(Progress{done, total_})) cancelled_ = true;
    return !cancelled_;
  }
  bool Final() {
    if (!fn_) return true;
    std::lock_guard<std::mutex> lock(mutex_);
    if (!fn_(Progress{done_.load(), total_})) cancelled_ = true;
    return !cancelled_;
  }

 private:
  const ProgressFn& fn_;
  const uint64_t total_;
  std::atomic<uint64_t> done_{0};
  std::atomic<bool> cancelled_{false};
  std::mutex mutex_;
  Clock::time_point last_ = Clock::now();
};

// The tensor, if any, whose bytes start at or contain `file_offset` in chunk's file: errors
// name it.
std::string TensorAt(const io::Checkpoint& checkpoint, uint32_t file, uint64_t file_offset) {
  const io::Header& header = checkpoint.files[file].header;
  if (file_offset < header.data_offset()) return {};
  const uint64_t rel = file_offset - header.data_offset();
  for (const io::TensorInfo& t : header.tensors) {
    if (rel >= t.begin && rel < t.end) return t.name;
  }
  return {};
}

}  // namespace

io::Result<FillStats> FillTargets(const io::Checkpoint& checkpoint,
                                  std::span<const LoadTarget> targets, const FillOptions& options) {
  FillStats stats;
  auto stage_start = Clock::now();

  // Files: opened once, checked against the sizes their headers were validated with.
  std::vector<std::filesystem::path> paths;
  std::vector<uint64_t> sizes;
  for (const io::CheckpointFile& f : checkpoint.files) {
    paths.push_back(f.path);
    sizes.push_back(f.header.file_bytes);
  }
  SHARDSTREAM_ASSIGN_OR_RETURN(io::FileSet files, io::FileSet::Open(paths, sizes));
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

  // Read: one task per chunk. Each builds the chunk's iovec list — destinations for pieces, a
  // per-thread scratch buffer for the small gaps read through — and reads it in one request.
  stage_start = Clock::now();
  const int threads = options.threads > 0
                          ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  stats.threads = threads;
  FirstError first_error;
  ProgressReporter progress(options.progress, plan.payload_bytes);
  tbb::task_group_context context;
  struct Worker {
    std::unique_ptr<io::ReadBackend> backend;
    std::vector<iovec> iovecs;
    std::unique_ptr<std::byte[]> scratch;
  };
  tbb::enumerable_thread_specific<Worker> workers;

  auto run_chunk = [&](size_t c) {
    const Chunk& chunk = plan.chunks[c];
    Worker& worker = workers.local();
    if (!worker.backend) {
      worker.backend = options.make_backend ? options.make_backend(files)
                                            : io::MakeBackend(options.backend, files);
      worker.scratch.reset(new std::byte[kDefaultReadGapBytes]);
    }
    worker.iovecs.clear();
    uint64_t cursor = 0;
    for (const Piece& piece : plan.PiecesOf(chunk)) {
      if (piece.chunk_offset > cursor) {
        worker.iovecs.push_back(iovec{worker.scratch.get(), piece.chunk_offset - cursor});
      }
      worker.iovecs.push_back(
          iovec{unique_destinations[piece.target] + piece.target_offset, piece.length});
      cursor = piece.chunk_offset + piece.length;
    }
    io::ReadRequest request{chunk.file, chunk.file_offset, worker.iovecs, c};
    io::Status status = worker.backend->Submit(std::span(&request, 1));
    io::Completion completion;
    if (status.ok()) {
      auto reaped = worker.backend->Reap(std::span(&completion, 1), 1);
      if (!reaped.ok()) {
        status = std::move(reaped).status();
      } else if (*reaped != 1) {
        status = io::Status::Error(io::StatusCode::kInternal, "io", "read did not complete");
      } else {
        status = std::move(completion.status);
      }
    }
    if (!status.ok()) {
      const uint64_t at = status.offset().value_or(chunk.file_offset);
      status.WithTensor(TensorAt(checkpoint, chunk.file, at));
      first_error.Record(std::move(status));
      context.cancel_group_execution();
      return;
    }
    if (!progress.Add(chunk.needed_bytes)) {
      first_error.Record(io::Status::Error(io::StatusCode::kCancelled, "cancelled",
                                           "load cancelled by the progress callback"));
      context.cancel_group_execution();
    }
  };

  tbb::task_arena arena(threads);
  arena.execute([&] {
    tbb::parallel_for(
        tbb::blocked_range<size_t>(0, plan.chunks.size(), 1),
        [&](const tbb::blocked_range<size_t>& range) {
          for (size_t c = range.begin(); c != range.end(); ++c) {
            try {
              run_chunk(c);
            } catch (const std::bad_alloc&) {
              first_error.Record(io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                                                   "out of memory while reading"));
              context.cancel_group_execution();
            } catch (const std::exception& e) {
              first_error.Record(
                  io::Status::Error(io::StatusCode::kInternal, "internal", e.what()));
              context.cancel_group_execution();
            }
          }
        },
        tbb::simple_partitioner(), context);
  });
  if (io::Status error = first_error.Take(); !error.ok()) return error;
  if (!progress.Final()) {
    return io::Status::Error(io::StatusCode::kCancelled, "cancelled",
                             "load cancelled by the progress callback");
  }

  for (const auto& [target, unique] : copies) {
    const uint64_t bytes = checkpoint.tensor(targets[target].source).size_bytes();
    if (bytes > 0) std::memcpy(targets[target].destination, unique_destinations[unique], bytes);
  }
  stats.stages.emplace_back("read", SecondsSince(stage_start));
  return stats;
}

}  // namespace shardstream::engine
