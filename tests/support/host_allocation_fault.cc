#include "tests/support/host_allocation_fault.h"

#include <cerrno>
#include <cstring>
#include <string>

namespace shardstream::testing {

HostAllocationFault::HostAllocationFault(int64_t skip)
    : left_(skip), previous_(engine::SetHostAllocator(this)) {}

HostAllocationFault::~HostAllocationFault() { engine::SetHostAllocator(previous_); }

io::Result<std::byte*> HostAllocationFault::Allocate(uint64_t size_bytes, uint64_t alignment_bytes,
                                                     bool huge_pages) {
  // Only the caller that moves the count from 0 to -1 fails; later ones see it below zero.
  if (left_.fetch_sub(1) == 0) {
    return io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                             "injected allocation of " + std::to_string(size_bytes) +
                                 " bytes failed: " + std::strerror(ENOMEM))
        .WithErrno(ENOMEM);
  }
  return previous_->Allocate(size_bytes, alignment_bytes, huge_pages);
}

void HostAllocationFault::Free(std::byte* data, uint64_t size_bytes) noexcept {
  previous_->Free(data, size_bytes);
}

}  // namespace shardstream::testing
