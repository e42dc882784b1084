#include "engine/host_memory.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace shardstream::engine {
namespace {

constexpr size_t kSmallAlignment = 64;

uint64_t RoundUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

}  // namespace

io::Result<std::byte*> AllocateHostBuffer(uint64_t size_bytes, bool huge_pages) {
  if (size_bytes < kHugePageBytes) {
    void* data = std::aligned_alloc(kSmallAlignment,
                                    RoundUp(std::max<uint64_t>(size_bytes, 1), kSmallAlignment));
    if (data == nullptr) {
      return io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                               "cannot allocate " + std::to_string(size_bytes) + " bytes");
    }
    return static_cast<std::byte*>(data);
  }
  // Over-map by one huge page, then trim both ends so the buffer starts on a 2 MiB boundary:
  // only aligned 2 MiB ranges can be backed by huge pages.
  const uint64_t mapped = RoundUp(size_bytes, kHugePageBytes) + kHugePageBytes;
  void* raw = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    return io::Status::FromErrno(errno, "mmap of " + std::to_string(size_bytes) + " bytes");
  }
  const auto begin = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = RoundUp(begin, kHugePageBytes);
  const uint64_t length = RoundUp(size_bytes, kHugePageBytes);
  if (aligned > begin) ::munmap(raw, aligned - begin);
  const uintptr_t end = begin + mapped;
  if (end > aligned + length)
    ::munmap(reinterpret_cast<void*>(aligned + length), end - aligned - length);
  // Advice only: where THP is off (never), this fails harmlessly and 4 KiB pages are used.
  if (huge_pages) ::madvise(reinterpret_cast<void*>(aligned), length, MADV_HUGEPAGE);
  return reinterpret_cast<std::byte*>(aligned);
}

void FreeHostBuffer(std::byte* data, uint64_t size_bytes) noexcept {
  if (data == nullptr) return;
  if (size_bytes < kHugePageBytes) {
    std::free(data);
  } else {
    ::munmap(data, RoundUp(size_bytes, kHugePageBytes));
  }
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

}  // namespace shardstream::engine
