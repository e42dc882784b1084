// Read backends: how bytes get from checkpoint files into memory.
//
// A load opens its files once (FileSet), then each worker thread drives its own ReadBackend:
// Submit a batch of requests, Reap their completions. A request scatters one contiguous file range
// into a list of buffers (iovecs), so that a chunk holding parts of many tensors lands in all of
// them with one read. Backends handle EINTR, EAGAIN and short reads themselves; every other failure
// is a Status naming the file, offset and length. A file that ends early (it shrank after its
// header was validated) is rule "file-changed".
//
//   pread  preadv(2) straight into the destinations; the default, and safe if files change.
//   mmap   memcpy out of a read-only mapping of each file; if a file is truncated while mapped,
//          the process gets SIGBUS and dies, as with every mmap-based loader. Never the default.
//   uring  io_uring (io/uring_backend.h): many reads in flight per thread. Needs liburing at build
//          time and a kernel that allows io_uring at run time; where it is missing,
//          MakeBackendOrError says so (rule "io-uring-unavailable") and callers use pread.
//
// Backends are not thread-safe: one per thread. FileSet and MappedFile are immutable after creation
// and may be shared by every thread.
#pragma once

#include "io/checkpoint.h"
#include "io/file.h"
#include "io/status.h"

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace shardstream::io {

// A read-only (copy-on-write when `writable` was asked for) mapping of a whole file. Unmapped when
// the last owner lets go; tensors that view it hold a shared_ptr.
class MappedFile {
 public:
  // Maps `size_bytes` of `fd` with MAP_PRIVATE. With `writable`, pages may be written (copy on
  // write, the file never changes), as torch expects of tensor memory. Errors carry `path`.
  static Result<std::shared_ptr<MappedFile>> Map(int fd, uint64_t size_bytes,
                                                 const std::filesystem::path& path,
                                                 bool writable = false);
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::byte* data() const { return data_; }
  uint64_t size_bytes() const { return size_bytes_; }

 private:
  MappedFile(std::byte* data, uint64_t size_bytes) : data_(data), size_bytes_(size_bytes) {}
  std::byte* data_;
  uint64_t size_bytes_;
};

// The files of one load, opened once with O_CLOEXEC, with the sizes their headers were validated
// against. Opening fails with rule "file-changed" when a file's size differs from that.
class FileSet {
 public:
  // `extra_flags` are added to every open (O_DIRECT for the staged pipeline).
  static Result<FileSet> Open(std::span<const std::filesystem::path> paths,
                              std::span<const uint64_t> expected_sizes, int extra_flags = 0);
  // Every file of a validated checkpoint, in its order, checked against its header's file size.
  static Result<FileSet> Open(const Checkpoint& checkpoint, int extra_flags = 0);

  size_t size() const { return files_.size(); }
  int fd(size_t i) const { return files_[i].fd.get(); }
  uint64_t size_bytes(size_t i) const { return files_[i].size_bytes; }
  const std::filesystem::path& path(size_t i) const { return paths_[i]; }

  // The file's mapping, created on first use (thread-safe) and shared.
  Result<std::shared_ptr<MappedFile>> Mapping(size_t i) const;

 private:
  std::vector<OpenFile> files_;
  std::vector<std::filesystem::path> paths_;
  std::shared_ptr<std::vector<std::shared_ptr<MappedFile>>> mappings_;
  std::shared_ptr<std::mutex> mapping_mutex_;
};

// One contiguous range of one file, scattered into `buffers` (their lengths add up to the range).
// The buffers must stay valid until the request is reaped.
struct ReadRequest {
  uint32_t file = 0;  // index into the FileSet
  uint64_t offset = 0;
  std::span<const iovec> buffers;
  uint64_t id = 0;  // returned in the completion
};

struct Completion {
  uint64_t id = 0;
  Status status;
};

enum class BackendKind : uint8_t { kPread, kMmap, kUring };
// "pread", "mmap", "uring". ParseBackend also accepts "io_uring".
std::string_view BackendName(BackendKind kind);
std::optional<BackendKind> ParseBackend(std::string_view name);

class ReadBackend {
 public:
  virtual ~ReadBackend() = default;
  virtual BackendKind kind() const = 0;
  // Queues (and for synchronous backends performs) the requests. An error here means the
  // backend itself failed; a failed read is reported in its completion.
  [[nodiscard]] virtual Status Submit(std::span<const ReadRequest> requests) = 0;
  // Moves up to out.size() completions into `out`, waiting until at least `min_completions`
  // (bounded by what is outstanding) are available. Returns how many were written.
  [[nodiscard]] virtual Result<size_t> Reap(std::span<Completion> out, size_t min_completions) = 0;
};

// A backend of `kind` reading the files of `files`, which must outlive it. pread and mmap always
// succeed. kUring is made with default UringOptions; when io_uring is unavailable (built without
// liburing, kernel without it, forbidden by seccomp) MakeBackend returns nullptr, so callers that
// may ask for kUring must check, or use MakeBackendOrError, which says why.
std::unique_ptr<ReadBackend> MakeBackend(BackendKind kind, const FileSet& files);
// Setting SHARDSTREAM_DISABLE_IO_URING=1 in the environment makes kUring unavailable.
// MakeBackend with the reason for a failure: for kUring, rule "io-uring-unavailable" with errno
// (kUnsupported when this build has no liburing), after which the caller may fall back to pread.
// `uring` configures a kUring backend (io/uring_backend.h; defaults when null) and is ignored for
// the others.
struct UringOptions;
Result<std::unique_ptr<ReadBackend>> MakeBackendOrError(BackendKind kind, const FileSet& files,
                                                        const UringOptions* uring = nullptr);

namespace detail {
// For backend implementations: the error for a file that ended at `offset + got_bytes` inside a
// request for `wanted_bytes` at `offset`. Rule "file-changed", offset set to where the file ended.
Status FileChanged(uint64_t offset, uint64_t wanted_bytes, uint64_t got_bytes);
}  // namespace detail

}  // namespace shardstream::io
