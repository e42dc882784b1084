// Host destinations reused across a stream of loads (iter_tensors with owned CPU tensors).
//
// A fresh buffer costs a page fault per 4 KiB on first touch, which bounds a copy into it (about
// 3.5 GB/s on a 2-core VM); a buffer that already held a tensor of the same size does not. A
// streaming consumer (vLLM's load_weights) copies each tensor into its parameter and drops it, so
// the next tensor of that size can land in the same, already-faulted memory.
//
// HostBufferPool hands out HostLeases; a lease's buffer goes back to the pool only when the lease
// is destroyed, i.e. when its owner (in Python: the buffer object every tensor made from it holds)
// has gone, never while anything still refers to it. Released buffers are kept by exact size up
// to `max_cached_bytes` in total; beyond that they are freed.
#pragma once

#include "io/status.h"

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace shardstream::engine {

class HostBufferPool;

// One buffer of a HostBufferPool, owned until destruction, when it returns to its pool (or is
// freed when the pool is full or gone). Move-only. The bytes are uninitialised, or whatever the
// previous holder left.
class HostLease {
 public:
  HostLease() = default;
  HostLease(HostLease&& other) noexcept
      : state_(std::move(other.state_)),
        data_(std::exchange(other.data_, nullptr)),
        size_bytes_(std::exchange(other.size_bytes_, 0)) {}
  HostLease& operator=(HostLease&& other) noexcept;
  HostLease(const HostLease&) = delete;
  HostLease& operator=(const HostLease&) = delete;
  ~HostLease() { Release(); }

  std::byte* data() const { return data_; }
  uint64_t size_bytes() const { return size_bytes_; }

 private:
  friend class HostBufferPool;
  struct State;
  HostLease(std::shared_ptr<State> state, std::byte* data, uint64_t size_bytes)
      : state_(std::move(state)), data_(data), size_bytes_(size_bytes) {}
  void Release() noexcept;

  std::shared_ptr<State> state_;
  std::byte* data_ = nullptr;
  uint64_t size_bytes_ = 0;
};

struct HostPoolStats {
  uint64_t allocated = 0;     // buffers made fresh (AllocateHostBuffer)
  uint64_t reused = 0;        // leases served from a released buffer
  uint64_t cached_bytes = 0;  // released buffers held now
  uint64_t leased_bytes = 0;  // buffers out in leases now
  uint64_t peak_leased_bytes = 0;
};

// Thread-safe. Leases may outlive the pool: their buffers are then freed on release.
class HostBufferPool {
 public:
  explicit HostBufferPool(uint64_t max_cached_bytes);
  ~HostBufferPool();
  HostBufferPool(const HostBufferPool&) = delete;
  HostBufferPool& operator=(const HostBufferPool&) = delete;

  // A buffer of exactly `size_bytes` (> 0; 64-byte aligned): a released one of that size when
  // there is one, else a new one from the process's HostAllocator. Errors: rule "memory".
  [[nodiscard]] io::Result<HostLease> Acquire(uint64_t size_bytes);
  HostPoolStats stats() const;

 private:
  std::shared_ptr<HostLease::State> state_;
};

}  // namespace shardstream::engine
