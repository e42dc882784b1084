// LoadFile: the C++ counterpart of safetensors.torch.load_file.
//
//   shardstream::LoadOptions options;          // CPU, pread, one thread per core
//   shardstream::TensorMap weights = shardstream::LoadFile("model/", options);
//   at::Tensor w = weights.at("model.embed_tokens.weight");
//
// CHECKPOINT is a .safetensors file, a shard index, or a folder (io/checkpoint.h). Every file is
// validated before a byte of tensor data is read. Owned tensors are allocated once, uninitialised,
// then filled straight from the files by oneTBB tasks; with `zero_copy` they are instead views into
// private (copy-on-write) mappings of the files, kept alive by the tensors, like safe_open: nothing
// is read until touched, and truncating a mapped file while its tensors live kills the process
// with SIGBUS, as with every mmap-based loader.
//
// Dtypes: each safetensors dtype loads as its torch dtype (integration/dtype.h). F4 loads as
// float4_e2m1fn_x2 with the last dimension halved (an odd last dimension is rule "f4-shape"); the
// F6 types, which torch cannot represent, load as flat uint8 bytes and are listed in
// LoadReport::raw_dtypes; asking to cast them is rule "cast".
//
// Failure: LoadFile throws LoadError, naming file, tensor, offset and cause; it never returns a
// partly loaded map. Thread-safe: loads may run concurrently.
#pragma once

#include "engine/loader.h"
#include "engine/pipeline.h"
#include "io/dtype.h"
#include "io/status.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace shardstream {

using TensorMap = std::map<std::string, at::Tensor>;

enum class IoMode : uint8_t {
  kAuto,   // buffered reads straight into tensors: pread (BENCHMARKS.md: io_uring's depth buys
           // nothing when page faults bound the load); staged O_DIRECT reads: io_uring
  kPread,  // preadv straight into the tensors
  kMmap,   // copy out of a mapping of each file (SIGBUS if a file is truncated meanwhile)
  kUring,  // io_uring readv straight into the tensors, `queue_depth` reads in flight per thread;
           // falls back to pread (LoadReport::fallback says why) where io_uring is unavailable
};
std::optional<IoMode> ParseIoMode(std::string_view name);

// The device a load targets: "cpu", or "cuda[:N]" (index 0 when none is given). Anything else
// throws LoadError with rule "device".
c10::Device ParseLoadDevice(const std::string& name);  // "auto", "pread", "mmap", "uring"

// O_DIRECT for the reads. kAuto reads with O_DIRECT through the bounded staged pipeline when less
// than half of the checkpoint is in the page cache (sampled with mincore): cold loads skip the
// cache's extra copy and readahead limits (2.9 GB/s against 0.5 GB/s buffered on our test VM),
// warm ones read straight into the tensors.
enum class DirectIo : uint8_t { kOff, kOn, kAuto };
std::optional<DirectIo> ParseDirectIo(std::string_view name);  // "off", "on", "auto"

// How bytes reach a GPU. kStaged: the staged pipeline (reads into pinned staging slots, copies
// from them). kPageCache: the page cache pinned in place and copied from, no CPU copy
// (cuda/page_cache_upload.h); for cached files without casts (rule "gpu-upload" otherwise).
// kAuto is kStaged: on an H100 host the page-cache path loaded a cached 4 GB checkpoint no faster
// (0.142 s against 0.143 s, BENCHMARKS.md), and the pinned file pages count in the process's RSS
// (4.2 GB against 0.6 GB), so it stays opt-in until a host shows it ahead.
enum class GpuUpload : uint8_t { kAuto, kStaged, kPageCache };
std::optional<GpuUpload> ParseGpuUpload(std::string_view name);  // "auto", "staged", "page-cache"

struct LoadOptions {
  // "cpu", or "cuda" / "cuda:N": tensors allocated on that GPU, filled through pinned staging and
  // asynchronous copies, casts (`dtype`) run on the device. Needs a CUDA build, a GPU and
  // LibTorch with CUDA (rule "device" otherwise).
  std::string device = "cpu";
  IoMode io = IoMode::kAuto;
  bool zero_copy = false;   // views into file mappings instead of owned memory
  bool huge_pages = false;  // back large tensors with transparent huge pages (engine/host_memory.h)
  int threads = 0;          // 0: one per core
  // Largest single read. 0: the path's default, 16 MiB straight into tensors
  // (engine::kDefaultChunkBytes), 4 MiB through staging (engine::kDefaultStagedChunkBytes).
  uint64_t chunk_bytes = 0;
  uint32_t queue_depth = engine::kDefaultQueueDepth;      // io_uring reads in flight per thread
  DirectIo direct = DirectIo::kAuto;                      // O_DIRECT (staged) or buffered reads
  uint64_t staging_bytes = engine::kDefaultStagingBytes;  // bound on staging memory (direct)
  bool sqpoll = false;  // io_uring: a kernel thread polls for submissions (falls back if refused)
  uint32_t copy_streams = 0;  // CUDA: host-to-device copy streams (0: cuda::kDefaultCopyStreams)
  // CUDA: allocate the device tensors by splitting one block that torch's caching allocator
  // cudaMalloc'd for them all, instead of a cudaMalloc per tensor (detail/torch_cuda.h).
  bool reserve_device_memory = true;
  GpuUpload gpu_upload = GpuUpload::kAuto;  // CUDA: staged slots or the page cache pinned in place
  // The page-cache path's bytes per pinning call, windows pinned at once, pinning threads (0: the
  // defaults of cuda/page_cache_upload.h).
  uint64_t pin_window_bytes = 0;
  uint32_t pin_windows = 0;
  uint32_t pin_threads = 0;
  std::optional<c10::ScalarType> dtype;  // cast floating-point tensors to this after loading
  engine::ProgressFn progress;           // may cancel (LoadError with rule "cancelled")
};

struct LoadReport {
  std::string io;        // "pread", "mmap", "uring" or "zero-copy": what actually read the bytes
  std::string fallback;  // why the asked-for backend was not used (empty when it was)
  uint32_t peak_in_flight = 0;    // most reads in flight at once
  uint64_t chunk_bytes = 0;       // largest single read used (0: zero-copy, no reads)
  bool direct = false;            // read with O_DIRECT through staging slots
  double resident_fraction = -1;  // page-cache residency sampled for DirectIo::kAuto (-1: not)
  bool sqpoll = false;            // io_uring's polling thread was used
  // CUDA loads: seconds spent pinning the staging pool (0 when a pool kept from an earlier load
  // of this process was reused, staging_reused), and the copy streams used.
  double pin_seconds = 0;
  bool staging_reused = false;
  uint32_t copy_streams = 0;
  // CUDA loads: the peak of torch's allocator on the device after the load (the tensors and
  // anything else the process allocated there), and the cast scratch the sink cudaMalloc'd.
  uint64_t device_peak_bytes = 0;
  uint64_t device_scratch_bytes = 0;
  // CUDA loads: cudaMalloc calls torch's caching allocator made while allocating the tensors (1
  // with reserve_device_memory on an otherwise empty cache, one per large tensor without).
  uint64_t device_allocations = 0;
  // CUDA loads: "staged" or "page-cache" (GpuUpload), and the bytes the page-cache path pinned.
  std::string gpu_upload;
  uint64_t pinned_page_cache_bytes = 0;
  // Staged (direct) loads: wall time with a read in flight, with a copy running, and with both;
  // -1 when the reads went straight into the tensors (no copies to overlap with).
  double io_busy_seconds = -1;
  double copy_busy_seconds = -1;
  double overlap_seconds = -1;
  std::vector<std::string> notes;  // fallbacks taken (O_DIRECT refused, ...)
  uint64_t bytes = 0;
  size_t tensors = 0;
  size_t files = 0;
  int threads = 0;
  // From opening the first file to the last byte in place. A CUDA load starts the clock after the
  // process's one-time CUDA start-up (library load, context creation), as Python loaders are
  // timed after torch.cuda.init().
  double seconds = 0;
  std::vector<std::pair<std::string, double>> stages;
  std::map<std::string, io::DType> raw_dtypes;  // tensors loaded as bytes: name → file dtype
  // Every tensor as written in the file (F4 and F6 load with other dtypes and shapes).
  struct FileTensor {
    io::DType dtype;
    std::vector<uint64_t> shape;
  };
  std::map<std::string, FileTensor> file_tensors;
};

// Every failure of LoadFile. what() is one line: "FILE: tensor 'NAME': CAUSE (rule: RULE)".
class LoadError : public std::runtime_error {
 public:
  explicit LoadError(const io::Status& status);
  const std::string& rule() const { return rule_; }
  const std::string& file() const { return file_; }
  const std::string& tensor() const { return tensor_; }
  std::optional<uint64_t> offset() const { return offset_; }
  io::StatusCode code() const { return code_; }

 private:
  std::string rule_, file_, tensor_;
  std::optional<uint64_t> offset_;
  io::StatusCode code_;
};

// The staged pipeline's options for a load with `options`: the one mapping from LoadOptions (also
// used by the CLI's --sink discard). IoMode::kAuto reads with io_uring (pread where refused).
engine::PipelineOptions StagedPipelineOptions(const LoadOptions& options);

// Decides once, before any read, whether a load with `options` reads with O_DIRECT: DirectIo::kOn,
// or kAuto when less than half of the checkpoint is in the page cache (sampled with mincore;
// recorded in report.resident_fraction). Throws LoadError (rule "direct" for O_DIRECT with mmap).
bool ChooseDirectIo(const io::Checkpoint& checkpoint, const LoadOptions& options,
                    LoadReport& report);

// Throws LoadError when `status` is an error. The one place a Status becomes an exception.
void ThrowIfError(const io::Status& status);

TensorMap LoadFile(const std::filesystem::path& checkpoint, const LoadOptions& options = {},
                   LoadReport* report = nullptr);

}  // namespace shardstream
