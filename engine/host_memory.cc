#include "engine/host_memory.h"

#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace shardstream::engine {
namespace {

constexpr size_t kSmallAlignment = 64;

uint64_t RoundUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

// Allocations left before the injected failure; -1 when none is armed.
std::atomic<int64_t> g_allocations_before_fault{-1};

io::Status OutOfMemory(uint64_t size_bytes, std::string_view how, int err) {
  return io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                           std::string(how) + " of " + std::to_string(size_bytes) +
                               " bytes failed: " + std::strerror(err))
      .WithErrno(err);
}

}  // namespace

void FailHostAllocationForTesting(int64_t skip) {
  g_allocations_before_fault.store(skip < 0 ? -1 : skip, std::memory_order_relaxed);
}

bool detail::HostAllocationFaultDue() {
  if (g_allocations_before_fault.load(std::memory_order_relaxed) < 0) return false;
  // Only the caller that moves the count from 0 to -1 fails; later ones see -1 (disarmed).
  int64_t left = g_allocations_before_fault.load(std::memory_order_relaxed);
  while (left >= 0) {
    if (g_allocations_before_fault.compare_exchange_weak(left, left - 1,
                                                         std::memory_order_relaxed)) {
      return left == 0;
    }
  }
  return false;
}

io::Result<std::byte*> AllocateHostBuffer(uint64_t size_bytes, bool huge_pages) {
  if (detail::HostAllocationFaultDue())
    return OutOfMemory(size_bytes, "injected allocation", ENOMEM);
  if (size_bytes < kHugePageBytes) {
    void* data = std::aligned_alloc(kSmallAlignment,
                                    RoundUp(std::max<uint64_t>(size_bytes, 1), kSmallAlignment));
    if (data == nullptr) return OutOfMemory(size_bytes, "aligned_alloc", ENOMEM);
    return static_cast<std::byte*>(data);
  }
  // Over-map by one huge page, then trim both ends so the buffer starts on a 2 MiB boundary:
  // only aligned 2 MiB ranges can be backed by huge pages.
  const uint64_t mapped = RoundUp(size_bytes, kHugePageBytes) + kHugePageBytes;
  void* raw = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return OutOfMemory(size_bytes, "mmap", errno);
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
