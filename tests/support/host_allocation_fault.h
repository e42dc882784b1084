// HostAllocationFault: makes one host allocation fail as if memory ran out, through the engine's
// HostAllocator seam (engine/host_memory.h). A test double: it lives in the tests' support
// library, never in a production target.
//
//   testing::HostAllocationFault fault(2);  // the third allocation from now fails, once
//
// Counts every allocation that goes through the seam (tensors LoadFile and LoadInto allocate,
// staging pools, pinned pools); the failing one is rule "memory" with ENOMEM, every other is the
// system allocator's. Installs itself for its lifetime and puts back the allocator it replaced.
// Thread-safe.
#pragma once

#include "engine/host_memory.h"

#include <atomic>
#include <cstdint>

namespace shardstream::testing {

class HostAllocationFault final : public engine::HostAllocator {
 public:
  // `skip` allocations succeed, then one fails.
  explicit HostAllocationFault(int64_t skip);
  ~HostAllocationFault() override;
  HostAllocationFault(const HostAllocationFault&) = delete;
  HostAllocationFault& operator=(const HostAllocationFault&) = delete;

  io::Result<std::byte*> Allocate(uint64_t size_bytes, uint64_t alignment_bytes,
                                  bool huge_pages) override;
  void Free(std::byte* data, uint64_t size_bytes) noexcept override;

  bool fired() const { return left_.load() < 0; }

 private:
  std::atomic<int64_t> left_;
  engine::HostAllocator* previous_;
};

}  // namespace shardstream::testing
