#include "io/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>

namespace shardstream::io {

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) Reset(other.Release());
  return *this;
}

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) {
    // close() errors on a read-only fd carry no information we could act on; the fd is gone
    // either way (Linux never leaves it open after EINTR).
    ::close(fd_);
  }
  fd_ = fd;
}

Result<OpenFile> OpenForRead(const std::filesystem::path& path, int extra_flags) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | extra_flags);
  if (fd < 0) return Status::FromErrno(errno, "open").WithPath(path.string());
  OpenFile file{UniqueFd(fd), 0};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Status::FromErrno(errno, "fstat").WithPath(path.string());
  if (!S_ISREG(st.st_mode)) {
    return Status::Error(
               StatusCode::kInvalidArgument, "not-a-file",
               S_ISDIR(st.st_mode) ? "is a directory, expected a file" : "is not a regular file")
        .WithPath(path.string());
  }
  file.size_bytes = static_cast<uint64_t>(st.st_size);
  return file;
}

Status MakeDirectories(const std::filesystem::path& dir) {
  std::string partial;
  for (const std::filesystem::path& part : dir) {
    if (!partial.empty() && partial.back() != '/') partial += '/';
    partial += part.string();
    if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) {
      return Status::FromErrno(errno, "mkdir").WithPath(partial);
    }
  }
  return Status::Ok();
}

Status PreadFull(int fd, std::span<std::byte> dst, uint64_t offset) {
  size_t done = 0;
  while (done < dst.size()) {
    ssize_t n =
        ::pread(fd, dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "pread").WithOffset(offset + done);
    }
    if (n == 0) {
      return Status::Error(StatusCode::kIoError, "file-changed",
                           "unexpected end of file: wanted " + std::to_string(dst.size()) +
                               " bytes, got " + std::to_string(done) +
                               " (was the file truncated while loading?)")
          .WithOffset(offset + done);
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Result<uint32_t> LogicalBlockSize(int fd) {
  constexpr uint32_t kFallbackBlockBytes = 4096;
#ifdef STATX_DIOALIGN
  // statx on the descriptor itself (empty path): the alignment can differ per file (ext4 with
  // encryption, XFS realtime files), so ask about this file, not its filesystem.
  struct statx stx {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
      (stx.stx_mask & STATX_DIOALIGN) != 0) {
    if (stx.stx_dio_offset_align == 0) {
      return Status::Error(StatusCode::kUnsupported, "direct-io-unsupported",
                           "the filesystem does not support O_DIRECT reads of this file");
    }
    const uint32_t align = std::max(stx.stx_dio_offset_align, stx.stx_dio_mem_align);
    if ((align & (align - 1)) == 0) return align;
  }
#endif
  // Older kernels: the filesystem block size is a multiple of the device's logical block size,
  // so aligning to it is a (slightly wasteful) superset of what O_DIRECT needs.
  struct statvfs vfs {};
  if (::fstatvfs(fd, &vfs) == 0 && vfs.f_bsize >= 512 && vfs.f_bsize <= (1u << 20) &&
      (vfs.f_bsize & (vfs.f_bsize - 1)) == 0) {
    return static_cast<uint32_t>(vfs.f_bsize);
  }
  return kFallbackBlockBytes;
}

}  // namespace shardstream::io
