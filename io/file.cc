#include "io/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

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

}  // namespace shardstream::io
