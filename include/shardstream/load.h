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
// Dtypes: each safetensors dtype loads as its torch dtype (F8_E4M3 as Float8_e4m3fn, U16 as
// UInt16, ...). F4 loads as
// float4_e2m1fn_x2 with the last dimension halved (an odd last dimension is rule "f4-shape"); the
// F6 types, which torch cannot represent, load as flat uint8 bytes and are listed in
// LoadReport::raw_dtypes; asking to cast them is rule "cast".
//
// Failure: LoadFile throws LoadError, naming file, tensor, offset and cause; it never returns a
// partly loaded map. Thread-safe: loads may run concurrently.
//
// This is a public, installed header (include/shardstream/): it includes only torch, the standard
// library and shardstream/read.h, never shardstream's io/ or engine/ internals.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shardstream/read.h"

namespace shardstream {

using TensorMap = std::map<std::string, at::Tensor>;

// The device a load targets: "cpu", or "cuda[:N]" (index 0 when none is given). Anything else
// throws LoadError with rule "device".
c10::Device ParseLoadDevice(const std::string& name);

// How to load: the read options (shardstream/read.h: io, direct, chunk, depth, staging, threads,
// sqpoll, huge pages, progress) and what LoadFile does with the tensors.
struct LoadOptions : ReadOptions {
  // "cpu", or "cuda" / "cuda:N": tensors allocated on that GPU, filled through pinned staging and
  // asynchronous copies, casts (`dtype`) run on the device. Needs a CUDA build, a GPU and
  // LibTorch with CUDA (rule "device" otherwise).
  std::string device = "cpu";
  bool zero_copy = false;     // views into file mappings instead of owned memory
  uint32_t copy_streams = 0;  // CUDA: host-to-device copy streams (0: cuda::kDefaultCopyStreams)
  // CUDA: allocate the device tensors by splitting one block that torch's caching allocator
  // cudaMalloc'd for them all, instead of a cudaMalloc per tensor (detail/torch_cuda.h).
  bool reserve_device_memory = true;
  // Load floating-point tensors in this dtype: each is allocated once in it and converted from
  // bounded scratch (staging_bytes) as it is read, on the CPU with ATen, on a GPU on the device.
  std::optional<c10::ScalarType> dtype;
};

// What a load did: the read fields (shardstream/read.h) and the tensors'.
struct LoadReport : ReadReport {
  // CUDA loads: the peak of torch's allocator on the device after the load (the tensors and
  // anything else the process allocated there).
  uint64_t device_peak_bytes = 0;
  // CUDA loads: cudaMalloc calls torch's caching allocator made while allocating the tensors (1
  // with reserve_device_memory on an otherwise empty cache, one per large tensor without).
  uint64_t device_allocations = 0;
  uint64_t bytes = 0;
  size_t tensors = 0;
  size_t files = 0;
  // From opening the first file to the last byte in place. A CUDA load starts the clock after the
  // process's one-time CUDA start-up (library load, context creation), as Python loaders are
  // timed after torch.cuda.init().
  double seconds = 0;
  // Tensors loaded as bytes: name → the file's dtype, as safetensors spells it ("F6_E2M3").
  std::map<std::string, std::string> raw_dtypes;
  // Every tensor as written in the file (F4 and F6 load with other dtypes and shapes).
  struct FileTensor {
    std::string dtype;  // as safetensors spells it: "BF16", "F8_E4M3", "F4", ...
    std::vector<uint64_t> shape;
  };
  std::map<std::string, FileTensor> file_tensors;
};

// What kind of failure a LoadError is; the rule() names the precise check. (The values are
// those of the engine's status codes, which integration/load.cc checks at compile time.)
enum class ErrorCode : uint8_t {
  kInvalidArgument = 1,  // the caller asked for something impossible (bad option, bad name)
  kNotFound,             // a path or tensor that does not exist
  kInvalidFormat,        // a file that breaks the safetensors format or the shard index rules
  kIoError,              // the OS said no: open/read/stat failed (sys_errno() is set)
  kPermissionDenied,     // EACCES/EPERM on a path
  kResourceExhausted,    // out of memory, staging, file descriptors
  kUnsupported,          // a feature this build or this machine does not have
  kCancelled,            // the progress callback asked to stop
  kInternal,             // a broken invariant inside shardstream: a bug
};
std::string_view ErrorCodeName(ErrorCode code);

// Every failure of LoadFile and LoadInto. what() is one line:
// "FILE: tensor 'NAME': CAUSE (rule: RULE)".
class LoadError : public std::runtime_error {
 public:
  struct Fields {
    std::string rule, file, tensor;
    std::optional<uint64_t> offset;
    ErrorCode code = ErrorCode::kInternal;
    int sys_errno = 0;
  };
  LoadError(const std::string& what, Fields fields)
      : std::runtime_error(what), fields_(std::move(fields)) {}
  const std::string& rule() const { return fields_.rule; }
  const std::string& file() const { return fields_.file; }
  const std::string& tensor() const { return fields_.tensor; }
  std::optional<uint64_t> offset() const { return fields_.offset; }
  ErrorCode code() const { return fields_.code; }
  int sys_errno() const { return fields_.sys_errno; }  // the errno of the failing call, 0 if none

 private:
  Fields fields_;
};

// The tensors and the report of a load. It reads as the name → tensor map itself (range-for,
// `at`, `find`, `size`, `contains`, ...), and holds the map and the report as members:
//
//   auto w = LoadFile(p, options);                 // for (auto& [name, t] : w) ...
//   auto [tensors, report] = LoadFile(p, options);  // the map and the report apart
//   TensorMap m = LoadFile(p);                      // the map alone (moved, not copied)
struct LoadResult {
  TensorMap tensors;
  LoadReport report;

  operator TensorMap() && { return std::move(tensors); }  // NOLINT(google-explicit-constructor)

  using iterator = TensorMap::iterator;
  using const_iterator = TensorMap::const_iterator;
  iterator begin() { return tensors.begin(); }
  iterator end() { return tensors.end(); }
  const_iterator begin() const { return tensors.begin(); }
  const_iterator end() const { return tensors.end(); }
  size_t size() const { return tensors.size(); }
  bool empty() const { return tensors.empty(); }
  bool contains(const std::string& name) const { return tensors.contains(name); }
  size_t count(const std::string& name) const { return tensors.count(name); }
  iterator find(const std::string& name) { return tensors.find(name); }
  const_iterator find(const std::string& name) const { return tensors.find(name); }
  at::Tensor& at(const std::string& name) { return tensors.at(name); }
  const at::Tensor& at(const std::string& name) const { return tensors.at(name); }
  at::Tensor& operator[](const std::string& name) { return tensors[name]; }
};

LoadResult LoadFile(const std::filesystem::path& checkpoint, const LoadOptions& options = {});
// The older form: the report through a pointer (may be null).
TensorMap LoadFile(const std::filesystem::path& checkpoint, const LoadOptions& options,
                   LoadReport* report);

// Reads every tensor of `checkpoint` through the staged pipeline, as a GPU load reads it, and drops
// the bytes: the read path alone, free of destination page faults (`shardstream load --sink
// discard`, the benchmarks). No tensor is allocated; host memory stays within staging_bytes.
// The report holds bytes, seconds and the read fields (readers, slots, overlap, ...). Throws
// LoadError as LoadFile does.
LoadReport ReadAndDiscard(const std::filesystem::path& checkpoint, const ReadOptions& options = {});

// The library's version ("0.1.0"), as shardstreamConfigVersion.cmake gives it.
std::string_view Version();

}  // namespace shardstream
