// Host memory for CPU loads and staging.
//
// First-touch page faults, not copying, bound a load into fresh memory. Large buffers come from
// their own anonymous mapping, 2 MiB-aligned; with `huge_pages` it is marked MADV_HUGEPAGE so the
// reading threads fault it in 2 MiB at a time. Small buffers come from the C allocator. Each buffer
// is independent: freeing one returns its memory at once.
//
// Huge pages are a measured trade-off, not a default (BENCHMARKS.md): a 2 GB load ran at 15 GB/s
// into huge pages the kernel had just freed, but at 1–4.5 GB/s when the 2 MiB blocks came back
// from the hypervisor (free page reporting on a VM: 89% of the time in clear_page_erms), against
// a steady 4.4 GB/s into 4 KiB pages.
#pragma once

#include "io/status.h"

#include <cstddef>
#include <cstdint>

namespace shardstream::engine {

// Buffers at least this large get their own huge-page mapping.
inline constexpr uint64_t kHugePageBytes = 2ull << 20;

// Where host buffers come from: every tensor LoadFile and LoadInto allocate and every staging
// pool (hence pinned pools too) goes through the process's one HostAllocator. The system's is the
// only one production uses; the seam lets a test stand in for it (tests/support wraps it to fail
// the n-th allocation as if memory ran out). Implementations must be thread-safe.
class HostAllocator {
 public:
  virtual ~HostAllocator() = default;
  // An uninitialised buffer of `size_bytes`, aligned to `alignment_bytes` (a power of two, at
  // most 4096). Errors: rule "memory" (kResourceExhausted, with errno).
  [[nodiscard]] virtual io::Result<std::byte*> Allocate(uint64_t size_bytes,
                                                        uint64_t alignment_bytes,
                                                        bool huge_pages) = 0;
  // Frees a buffer of this allocator, with the size it was allocated with.
  virtual void Free(std::byte* data, uint64_t size_bytes) noexcept = 0;
};

// The system allocator described above, and the one in use now.
HostAllocator& SystemHostAllocator();
HostAllocator& CurrentHostAllocator();
// Installs `allocator` (null: the system's) for every allocation from now on and returns the one
// it replaces. Buffers must be freed by the allocator that made them: install before a load and
// restore after it.
HostAllocator* SetHostAllocator(HostAllocator* allocator);

// An uninitialised buffer of `size_bytes` from the process's allocator (64-byte aligned at least).
// Free it with FreeHostBuffer(data, size_bytes). Errors: rule "memory". Thread-safe.
io::Result<std::byte*> AllocateHostBuffer(uint64_t size_bytes, bool huge_pages = false);
void FreeHostBuffer(std::byte* data, uint64_t size_bytes) noexcept;

}  // namespace shardstream::engine
