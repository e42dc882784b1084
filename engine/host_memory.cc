#include "engine/host_memory.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
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

io::Status OutOfMemory(uint64_t size_bytes, std::string_view how, int err) {
  return io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                           std::string(how) + " of " + std::to_string(size_bytes) +
                               " bytes failed: " + std::strerror(err))
      .WithErrno(err);
}

class SystemAllocator final : public HostAllocator {
 public:
  io::Result<std::byte*> Allocate(uint64_t size_bytes, uint64_t alignment_bytes,
                                  bool huge_pages) override {
    if (size_bytes < kHugePageBytes) {
      const uint64_t alignment = std::max<uint64_t>(alignment_bytes, kSmallAlignment);
      void* data = nullptr;
      if (int err = ::posix_memalign(&data, alignment,
                                     RoundUp(std::max<uint64_t>(size_bytes, 1), alignment));
          err != 0) {
        return OutOfMemory(size_bytes, "posix_memalign", err);
      }
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

  void Free(std::byte* data, uint64_t size_bytes) noexcept override {
    if (data == nullptr) return;
    if (size_bytes < kHugePageBytes) {
      std::free(data);
    } else {
      ::munmap(data, RoundUp(size_bytes, kHugePageBytes));
    }
  }
};

std::atomic<HostAllocator*> g_allocator{nullptr};

}  // namespace

HostAllocator& CurrentHostAllocator() {
  HostAllocator* allocator = g_allocator.load(std::memory_order_acquire);
  return allocator != nullptr ? *allocator : SystemHostAllocator();
}

HostAllocator& SystemHostAllocator() {
  static SystemAllocator* system = new SystemAllocator();  // never destroyed: outlives every buffer
  return *system;
}

HostAllocator* SetHostAllocator(HostAllocator* allocator) {
  HostAllocator* previous = g_allocator.exchange(allocator, std::memory_order_acq_rel);
  return previous != nullptr ? previous : &SystemHostAllocator();
}

io::Result<std::byte*> AllocateHostBuffer(uint64_t size_bytes, bool huge_pages) {
  return CurrentHostAllocator().Allocate(size_bytes, kSmallAlignment, huge_pages);
}

void FreeHostBuffer(std::byte* data, uint64_t size_bytes) noexcept {
  CurrentHostAllocator().Free(data, size_bytes);
}

}  // namespace shardstream::engine
