// File descriptors and whole-range reads with errno-carrying errors.
#pragma once

#include "io/status.h"

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <utility>

namespace shardstream::io {

// Owns one file descriptor; closes it on destruction. Move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// An open regular file and what fstat said about it when it was opened.
struct OpenFile {
  UniqueFd fd;
  uint64_t size_bytes = 0;
};

// Opens `path` read-only with O_CLOEXEC (plus `extra_flags`, e.g. O_DIRECT) and checks that it is
// a regular file. A filesystem that refuses O_DIRECT (tmpfs) fails the open with EINVAL: callers
// that asked for it reopen without it. Errors name the path and carry errno (ENOENT → kNotFound,
// EACCES → kPermissionDenied, ELOOP → rule "symlink-loop"); a directory or device is rule
// "not-a-file".
Result<OpenFile> OpenForRead(const std::filesystem::path& path, int extra_flags = 0);

// mkdir -p: creates `dir` and any missing parents (mode 0755). Errors name the component that
// could not be made. POSIX only: processes that link the PyPI torch wheel must not call
// std::filesystem's operations, which its libtorch.so interposes.
Status MakeDirectories(const std::filesystem::path& dir);

// Reads exactly dst.size() bytes at `offset`, retrying EINTR and short reads. Reaching end of file
// early is an error with rule "file-changed" (the file shrank after it was validated). Thread-safe
// (pread does not move the file offset).
Status PreadFull(int fd, std::span<std::byte> dst, uint64_t offset);

// The alignment O_DIRECT reads of `fd` need, in bytes (a power of two): file offsets, lengths and
// buffer addresses must all be multiples of it. From statx(STATX_DIOALIGN) where the kernel
// reports it (6.1+; the larger of the offset and memory alignments), else the filesystem's block
// size (fstatvfs f_bsize, a multiple of the logical block size), else 4096. Errors: rule
// "direct-io-unsupported" (kUnsupported) when statx says the file cannot be read with O_DIRECT.
// Thread-safe.
Result<uint32_t> LogicalBlockSize(int fd);

}  // namespace shardstream::io
