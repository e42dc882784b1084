// Destination memory for CPU loads.
//
// First-touch page faults, not copying, bound a load into fresh memory. Large buffers come from
// their own anonymous mapping, 2 MiB-aligned; with `huge_pages` it is marked MADV_HUGEPAGE so the
// reading threads fault it in 2 MiB at a time. Small buffers come from malloc. Each buffer is
// independent: freeing one returns its memory at once.
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

// An uninitialised buffer of `size_bytes` (64-byte aligned at least). Free it with
// FreeHostBuffer(data, size_bytes). Errors: rule "memory" (ENOMEM and friends). Thread-safe.
io::Result<std::byte*> AllocateHostBuffer(uint64_t size_bytes, bool huge_pages = false);
void FreeHostBuffer(std::byte* data, uint64_t size_bytes) noexcept;

// Fault injection for tests; production code never calls it. Makes the host allocation `skip`
// allocations from now (0: the next one) fail as if the system were out of memory (rule "memory",
// ENOMEM), once; a negative `skip` disarms it. Counts every AllocateHostBuffer (tensors, scratch)
// and every staging pool allocation (StagingPool::Create, hence pinned pools too). Process-wide
// and thread-safe; costs one relaxed atomic load per allocation when disarmed.
void FailHostAllocationForTesting(int64_t skip);

namespace detail {
// True when the armed allocation failure is due now (it is then disarmed). For allocators.
bool HostAllocationFaultDue();
}  // namespace detail

// The process's peak resident memory so far (VmHWM in /proc/self/status), 0 if unknown.
uint64_t PeakResidentBytes();

}  // namespace shardstream::engine
