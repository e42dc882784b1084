// Pieces of the pipeline (engine/pipeline.cc) that the fill core shares: first-error-wins
// recording, the rate-limited progress reporter, naming the tensor at a file offset for error
// messages, making a backend with its fallback. Private to engine/.
#pragma once

#include "engine/pipeline.h"
#include "io/checkpoint.h"
#include "io/read_backend.h"
#include "io/status.h"
#include "io/stopwatch.h"
#include "io/uring_backend.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace shardstream::engine::detail {

// The status a cancelled load returns.
io::Status Cancelled();

// The first error of a parallel load wins; later ones are its consequences. Recording any error
// also raises stopped(), which tells every reader and copier to wind down. Thread-safe.
class FirstError {
 public:
  void Record(io::Status status);
  bool stopped() const { return stop_.load(std::memory_order_relaxed); }
  io::Status Take();

 private:
  std::mutex mutex_;
  io::Status status_;
  std::atomic<bool> stop_{false};
};

// Serialises progress callbacks and rate-limits them to one per ~50 ms (and one at the end).
// `fn` must outlive the reporter. Thread-safe.
class ProgressReporter {
 public:
  ProgressReporter(const ProgressFn& fn, uint64_t total) : fn_(fn), total_(total) {}

  // Adds `bytes`; returns false once the callback has asked to cancel. A caller never waits for
  // another thread's callback: it skips its report instead.
  bool Add(uint64_t bytes);
  // The final report; false when the callback asked to cancel.
  bool Final();
  // Sets the total before the first Add (when it is known only after planning).
  void SetTotal(uint64_t total) { total_ = total; }

 private:
  const ProgressFn& fn_;
  uint64_t total_;
  std::atomic<uint64_t> done_{0};
  std::atomic<bool> cancelled_{false};
  std::mutex mutex_;
  io::Clock::time_point last_ = io::Clock::now();
};

// The name of the tensor whose bytes contain `file_offset` of checkpoint file `file`, or "" (the
// header, a gap): errors name it.
std::string TensorAt(const io::Checkpoint& checkpoint, uint32_t file, uint64_t file_offset);

// Completes the error of a read of checkpoint file `file` that started at `read_offset`: the
// file's path, the offset where it failed (the status's own, else `read_offset`) and the tensor
// there, each unless the status already names one. Every read error of a load goes through it, so
// that errors name file, tensor and offset whatever backend produced them.
void LocateReadError(io::Status& status, const io::Checkpoint& checkpoint, uint32_t file,
                     uint64_t read_offset);

// The one "make the backend, fall back to pread" of the engine: makes `kind` over `files` (with
// `uring` for io_uring), or, when `factory` is set, whatever it makes. Where io_uring is refused
// and `fall_back_to_pread` is set, makes pread instead and sets *fallback to why (the caller
// appends it to its report with AppendFallback).
io::Result<std::unique_ptr<io::ReadBackend>> MakeReadBackend(
    io::BackendKind kind, const io::FileSet& files, const io::UringOptions& uring,
    const BackendFactory& factory, bool fall_back_to_pread, std::string* fallback);

// The one convention for fallback reports: reasons joined with "; ", each once.
void AppendFallback(std::string* report, const std::string& reason);

}  // namespace shardstream::engine::detail
