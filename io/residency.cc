#include "io/residency.h"

#include "io/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <vector>

namespace shardstream::io {
namespace {

constexpr uint64_t kWindowBytes = 1 << 20;
constexpr uint64_t kMaxWindows = 64;

}  // namespace

Result<double> ResidentFraction(int fd, uint64_t size_bytes) {
  if (size_bytes == 0) return 1.0;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  // Mapping a file reads nothing: mincore then reports which of its pages the cache holds.
  void* map = ::mmap(nullptr, size_bytes, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) return Status::FromErrno(errno, "mmap for mincore");
  const uint64_t windows = std::min(kMaxWindows, (size_bytes + kWindowBytes - 1) / kWindowBytes);
  const uint64_t stride = windows > 1 ? (size_bytes - kWindowBytes) / (windows - 1) : 0;
  std::vector<unsigned char> residency(kWindowBytes / page + 1);
  uint64_t resident = 0, total = 0;
  for (uint64_t w = 0; w < windows; ++w) {
    const uint64_t begin = std::min(size_bytes, w * stride) / page * page;
    const uint64_t length = std::min(kWindowBytes, size_bytes - begin);
    const uint64_t pages = (length + page - 1) / page;
    if (::mincore(static_cast<char*>(map) + begin, length, residency.data()) != 0) {
      const int err = errno;
      ::munmap(map, size_bytes);
      return Status::FromErrno(err, "mincore");
    }
    for (uint64_t p = 0; p < pages; ++p) resident += residency[p] & 1;
    total += pages;
  }
  ::munmap(map, size_bytes);
  return total ? static_cast<double>(resident) / static_cast<double>(total) : 1.0;
}

Result<double> CheckpointResidentFraction(const Checkpoint& checkpoint) {
  double resident_bytes = 0, all_bytes = 0;
  for (const CheckpointFile& f : checkpoint.files) {
    SHARDSTREAM_ASSIGN_OR_RETURN(OpenFile file, OpenForRead(f.path));
    Result<double> fraction = ResidentFraction(file.fd.get(), file.size_bytes);
    const double bytes = static_cast<double>(f.header.file_bytes);
    resident_bytes += (fraction.ok() ? *fraction : 1.0) * bytes;
    all_bytes += bytes;
  }
  return all_bytes > 0 ? resident_bytes / all_bytes : 1.0;
}

Status DropCachedPages(int fd) {
  // fdatasync may fail on a read-only descriptor of some filesystems; clean pages drop anyway.
  (void)::fdatasync(fd);
  if (const int err = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); err != 0) {
    return Status::FromErrno(err, "posix_fadvise(DONTNEED)");
  }
  return Status::Ok();
}

uint64_t PeakResidentBytes() {
  std::FILE* status = std::fopen("/proc/self/status", "re");
  if (status == nullptr) return 0;
  char line[256];
  uint64_t kib = 0;
  while (std::fgets(line, sizeof line, status) != nullptr) {
    if (std::sscanf(line, "VmHWM: %lu kB", &kib) == 1) break;
  }
  std::fclose(status);
  return kib << 10;
}

}  // namespace shardstream::io
