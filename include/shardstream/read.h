// How shardstream reads a checkpoint, and what a read did: the one options block every front end
// embeds (LoadFile, LoadInto, the CLI, the Python package) and the report the fill core writes.
//
// Plain C++ with no torch, io/ or engine/ types, so that it is part of the installed public
// headers and the torch-free layers (engine/, cuda/, the Python binding) share it.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardstream {

// What reads the bytes. The one kAuto rule (engine/fill.h, ResolveBackend): O_DIRECT reads use
// io_uring, where queue depth keeps the device busy; buffered reads use pread, from one thread per
// core, whether into destinations or into staging slots (onto a GPU): a buffered read of cached
// data is a copy made by the thread that asks for it, so threads are what it needs, and io_uring
// completes such reads inline, one after another in the submitting thread (BENCHMARKS.md). kUring
// and kAuto fall back to pread, with one line in ReadReport::fallback, where io_uring cannot be
// set up (old kernel, seccomp, SHARDSTREAM_DISABLE_IO_URING=1).
enum class IoMode : uint8_t {
  kAuto,
  kPread,  // preadv
  kMmap,   // copy out of a mapping of each file (SIGBUS if a file is truncated meanwhile)
  kUring,  // io_uring, `queue_depth` reads in flight per thread
};
std::optional<IoMode> ParseIoMode(std::string_view name);  // "auto", "pread", "mmap", "uring"
std::string_view IoModeName(IoMode mode);

// O_DIRECT for the reads. kAuto reads with O_DIRECT through the bounded staged pipeline when less
// than half of the checkpoint is in the page cache (sampled with mincore): cold loads skip the
// cache's extra copy and readahead limits, warm ones read straight into the destinations.
enum class DirectIo : uint8_t { kOff, kOn, kAuto };
std::optional<DirectIo> ParseDirectIo(std::string_view name);  // "off", "on", "auto"

struct Progress {
  uint64_t done_bytes = 0;
  uint64_t total_bytes = 0;
};
// Called from one thread at a time, at most every ~50 ms and once at the end. Return false to
// cancel the load (rule "cancelled").
using ProgressFn = std::function<bool(const Progress&)>;

inline constexpr uint32_t kDefaultQueueDepth = 8;
// The bound on staging memory (staged reads) and on cast scratch (casts read into it first).
inline constexpr uint64_t kDefaultStagingBytes = 64ull << 20;

struct ReadOptions {
  IoMode io = IoMode::kAuto;
  DirectIo direct = DirectIo::kAuto;
  // Largest single read. 0: the path's default, 16 MiB straight into destinations, 4 MiB through
  // staging.
  uint64_t chunk_bytes = 0;
  uint32_t queue_depth = kDefaultQueueDepth;  // io_uring reads in flight per thread
  uint64_t staging_bytes = kDefaultStagingBytes;
  int threads = 0;          // 0: one per core
  bool sqpoll = false;      // io_uring: a kernel thread polls for submissions (falls back)
  bool huge_pages = false;  // host memory the load allocates: transparent huge pages
  ProgressFn progress;      // may cancel
};

// What a read did. Written by the fill core; front ends extend it (LoadReport).
struct ReadReport {
  std::string io;               // "pread", "mmap", "uring" (or "zero-copy"): what read the bytes
  std::string fallback;         // why the asked-for backend was not used; several: joined with "; "
  uint32_t peak_in_flight = 0;  // most reads in flight at once
  uint64_t chunk_bytes = 0;     // largest single read used (0: no reads)
  bool direct = false;          // read with O_DIRECT through staging slots
  double resident_fraction = -1;  // page-cache residency sampled for DirectIo::kAuto (-1: not)
  bool sqpoll = false;            // io_uring's polling thread was used
  int threads = 0;
  // Staged loads: wall time with a read in flight, with a copy running, and with both; -1 when
  // every read went straight into the destinations (no copies to overlap with).
  double io_busy_seconds = -1;
  double copy_busy_seconds = -1;
  double overlap_seconds = -1;
  // Casts: bytes of host scratch the core used for them (at most staging_bytes, or one element
  // when that is larger; never the checkpoint's size).
  uint64_t cast_scratch_bytes = 0;
  // CUDA loads: seconds spent pinning the staging pool (0 when a pool kept from an earlier load
  // of this process was reused, staging_reused), the copy streams used, the cast scratch the sink
  // cudaMalloc'd, and how bytes went up ("staged").
  double pin_seconds = 0;
  bool staging_reused = false;
  uint32_t copy_streams = 0;
  uint64_t device_scratch_bytes = 0;
  std::string gpu_upload;
  std::vector<std::string> notes;  // other fallbacks taken (O_DIRECT refused, ...)
  // (stage, seconds) in order.
  std::vector<std::pair<std::string, double>> stages;
};

}  // namespace shardstream
