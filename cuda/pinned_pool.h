// PinnedPool: staging pools (engine/staging.h) whose memory is pinned, so that cudaMemcpyAsync
// out of a slot is a true asynchronous DMA, and a process-wide cache that keeps them across loads
// so only the first load pays for pinning.
//
// Pinning: StagingPool allocates page-aligned memory and its allocate hook registers the whole
// allocation with cudaHostRegister (cudaHostRegisterPortable: usable from every device's context);
// its free hook unregisters it. cudaHostAlloc would need StagingPool to take memory from a caller
// (an allocator hook instead of the allocate hook), which engine/ does not offer yet; the setup
// times of both are compared by bench/cuda_ceiling.
//
//   PinnedPoolStats stats;
//   auto pool = PinnedPool::Shared(0, 64 << 20, 4 << 20, &stats);  // pins on first use
//   options.pool = pool->get();                                     // engine::PipelineOptions
//
// A cached pool lives until DropCache() and the last shared_ptr to it are gone; loads that still
// hold one keep it alive. Thread-safety: everything here may be called from any thread; the pools
// are StagingPools, which may be shared by concurrent loads.
#pragma once

#include "engine/staging.h"
#include "io/status.h"

#include <compare>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

namespace shardstream::cuda {

struct PinnedPoolStats {
  double pin_seconds = 0;        // cudaHostRegister of the whole pool; 0 when reused
  uint64_t pinned_bytes = 0;     // the pool's allocation
  bool reused = false;           // came from the cache: this load paid no pinning
  double first_pin_seconds = 0;  // what pinning this pool cost when it was made
};

// A cache of staging pools keyed by (device, staging_bytes, slot_bytes). The factory runs under
// the cache's lock, so two loads asking for the same key at once pin once. Generic over the
// factory so that it is tested without a GPU.
class StagingPoolCache {
 public:
  struct Key {
    int device = 0;
    uint64_t staging_bytes = 0;
    uint64_t slot_bytes = 0;
    auto operator<=>(const Key&) const = default;
  };
  using Factory = std::function<io::Result<std::shared_ptr<engine::StagingPool>>()>;

  // The cached pool for `key`, or the factory's (cached on success). `created` says which.
  io::Result<std::shared_ptr<engine::StagingPool>> GetOrCreate(const Key& key,
                                                               const Factory& factory,
                                                               bool* created = nullptr);
  // Forgets every pool; each is freed (and unpinned) once no load holds it.
  void Drop();
  size_t size() const;

 private:
  mutable std::mutex mutex_;
  std::map<Key, std::shared_ptr<engine::StagingPool>> pools_;  // guarded by mutex_
};

class PinnedPool {
 public:
  // A new pool of floor(staging_bytes / slot_bytes) slots, pinned. Errors: the StagingPool's
  // (rule "staging", "memory"), rule "cuda" when cudaHostRegister refuses (no GPU, memlock), or
  // when the build has no CUDA.
  static io::Result<std::shared_ptr<engine::StagingPool>> Create(uint64_t staging_bytes,
                                                                 uint64_t slot_bytes,
                                                                 PinnedPoolStats* stats = nullptr);
  // The process-wide cached pool for (device, staging_bytes, slot_bytes), made on first use.
  static io::Result<std::shared_ptr<engine::StagingPool>> Shared(int device, uint64_t staging_bytes,
                                                                 uint64_t slot_bytes,
                                                                 PinnedPoolStats* stats = nullptr);
  static void DropCache();
  static size_t CachedPools();
};

}  // namespace shardstream::cuda
