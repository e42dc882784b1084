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

// The defaults, in one place, each named for what it bounds. engine/, cuda/, the CLI and the
// Python package (through the extension: shardstream._core.defaults()) all take them from here.
//
// io_uring reads in flight per reader.
inline constexpr uint32_t kDefaultQueueDepth = 8;
// Staging memory: the slots staged reads land in, which a host cast converts out of too. 16 slots
// of the default staged chunk: room for 8 reads in flight and the copies behind them. More did not
// load faster on our 2-core VM (peak slots in use stayed 8–13 at depth 8, cold or warm), and a
// warm load into the 16 MiB of a smaller pool even ran 2–4× faster than into 256 MiB (slots stay
// in the CPU cache; fewer first-touch faults). BENCHMARKS.md has the runs.
inline constexpr uint64_t kDefaultStagingBytes = 64ull << 20;
// The largest read straight into destinations.
inline constexpr uint64_t kDefaultChunkBytes = 16ull << 20;
// The largest read into a staging slot. Staged reads are copied twice (file → slot →
// destination), so slots that stay in cache pay: loading a page-cache-hot 2 GB file into host
// memory on a 2-core VM ran at 8–15 GB/s with 1–4 MiB chunks but 2.5–5.5 GB/s with 16 MiB ones,
// while cold O_DIRECT reads were the same (~2.6–2.9 GB/s) from 2 to 16 MiB.
inline constexpr uint64_t kDefaultStagedChunkBytes = 4ull << 20;
// Unwanted bytes read through between two wanted ranges of a file rather than issuing another
// read.
inline constexpr uint64_t kDefaultReadGapBytes = 64ull << 10;
// CUDA host-to-device copy streams.
inline constexpr uint32_t kDefaultCopyStreams = 4;
// Device memory a cast on a GPU converts out of: 8 MiB of raw bytes per stream at the default 4
// streams, twice the staged chunk, so a chunk's worth of a cast target goes up and is cast in one
// step.
inline constexpr uint64_t kDefaultDeviceCastScratchBytes = 32ull << 20;
// shardstream.iter_tensors: tensor bytes read ahead of what the consumer has taken.
inline constexpr uint64_t kDefaultReadAheadBytes = 512ull << 20;
// shardstream.transformers: the sources of transformers' own weight converters held at once.
inline constexpr uint64_t kDefaultConvertScratchBytes = 512ull << 20;

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
  // Unwanted bytes between two wanted extents that one read takes through rather than splitting
  // it in two; at most kDefaultReadGapBytes (larger values are clamped). O_DIRECT reads always
  // take gaps under one alignment block. 0: never read through a gap (sliced loads that count
  // what they read, e.g. one rank's columns of a tensor-parallel shard).
  uint64_t read_gap_bytes = kDefaultReadGapBytes;
  ProgressFn progress;  // may cancel
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
  uint64_t registered_buffer_bytes = 0;  // staging memory registered with io_uring
  int threads = 0;                       // readers + copy threads of the widest read
  uint32_t readers = 0;                  // threads that issued reads
  int copy_threads = 0;  // threads that emptied staging slots besides the readers (0: none)
  // Bytes of the destinations, and bytes read for them (gaps read through, O_DIRECT alignment).
  uint64_t payload_bytes = 0;
  uint64_t read_bytes = 0;
  // Staged reads: the staging slots (the largest pool used) and the most held at once.
  uint32_t staging_slots = 0;
  uint64_t slot_bytes = 0;
  uint32_t peak_slots_in_use = 0;
  // Staged loads: wall time with a read in flight, with a copy running, and with both; -1 when
  // every read went straight into the destinations (no copies to overlap with).
  double io_busy_seconds = -1;
  double copy_busy_seconds = -1;
  double overlap_seconds = -1;
  // Host casts: the staging memory they converted out of (at most staging_bytes, or one chunk
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
