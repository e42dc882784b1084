#include "cuda/pinned_pool.h"

#ifdef SHARDSTREAM_HAVE_CUDA
#include "cuda/error.h"

#include <cuda_runtime_api.h>

#include <sys/mman.h>
#endif

#include <chrono>
#include <string>
#include <utility>

namespace shardstream::cuda {

io::Result<std::shared_ptr<engine::StagingPool>> StagingPoolCache::GetOrCreate(
    const Key& key, const Factory& factory, bool* created) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (auto it = pools_.find(key); it != pools_.end()) {
    if (created != nullptr) *created = false;
    return it->second;
  }
  SHARDSTREAM_ASSIGN_OR_RETURN(std::shared_ptr<engine::StagingPool> pool, factory());
  pools_.emplace(key, pool);
  if (created != nullptr) *created = true;
  return pool;
}

void StagingPoolCache::Drop() {
  std::map<Key, std::shared_ptr<engine::StagingPool>> dropped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    dropped.swap(pools_);
  }
  // Unpinning and freeing happen here, outside the lock (or later, in the last load's hands).
}

size_t StagingPoolCache::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pools_.size();
}

namespace {

StagingPoolCache& Cache() {
  static auto* cache = new StagingPoolCache;  // never destroyed: no unpinning after main returns
  return *cache;
}

// The deleter of every pinned pool's shared_ptr; it remembers what pinning the pool cost, for
// PinnedPoolStats::first_pin_seconds of later loads (std::get_deleter finds it).
struct PinnedPoolDeleter {
  double pin_seconds = 0;
  void operator()(engine::StagingPool* pool) const { delete pool; }
};

}  // namespace

#ifdef SHARDSTREAM_HAVE_CUDA

io::Result<std::shared_ptr<engine::StagingPool>> PinnedPool::Create(uint64_t staging_bytes,
                                                                    uint64_t slot_bytes,
                                                                    PinnedPoolStats* stats) {
  double pin_seconds = 0;
  auto pool = engine::StagingPool::Create(
      staging_bytes, slot_bytes,
      [&pin_seconds](std::byte* data, size_t size_bytes) {
        const auto start = std::chrono::steady_clock::now();
        // Pinning faults every page in first; 2 MiB pages make that ~10x fewer faults (the pool's
        // memory is 2 MiB-aligned). Advice only: where THP is off, 4 KiB pages are pinned.
        ::madvise(data, size_bytes, MADV_HUGEPAGE);
        // Portable: the pages count as pinned in every device's context, so one pool can feed
        // any GPU. The pool's memory is page-aligned, as cudaHostRegister wants.
        io::Status status = CudaStatus(cudaHostRegister(data, size_bytes, cudaHostRegisterPortable),
                                       "cudaHostRegister");
        pin_seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (!status.ok()) {
          cudaGetLastError();  // not sticky, but do not leave it for the next caller to find
          return io::Status::Error(status.code(), status.rule(),
                                   status.message() + " (pinning " + std::to_string(size_bytes) +
                                       " bytes of staging memory)");
        }
        return status;
      },
      [](std::byte* data, size_t) { SHARDSTREAM_CUDA_TRY_NOTHROW(cudaHostUnregister(data)); });
  if (!pool.ok()) return std::move(pool).status();
  if (stats != nullptr) {
    *stats = PinnedPoolStats{pin_seconds, (*pool)->allocated_bytes(), false, pin_seconds};
  }
  return std::shared_ptr<engine::StagingPool>(std::move(*pool).release(),
                                              PinnedPoolDeleter{pin_seconds});
}

#else

io::Result<std::shared_ptr<engine::StagingPool>> PinnedPool::Create(uint64_t, uint64_t,
                                                                    PinnedPoolStats*) {
  return io::Status::Error(io::StatusCode::kUnsupported, "cuda",
                           "pinned staging needs CUDA, and shardstream was built without it");
}

#endif

io::Result<std::shared_ptr<engine::StagingPool>> PinnedPool::Shared(int device,
                                                                    uint64_t staging_bytes,
                                                                    uint64_t slot_bytes,
                                                                    PinnedPoolStats* stats) {
  PinnedPoolStats made;
  bool created = false;
  SHARDSTREAM_ASSIGN_OR_RETURN(
      std::shared_ptr<engine::StagingPool> pool,
      Cache().GetOrCreate(
          StagingPoolCache::Key{device, staging_bytes, slot_bytes},
          [&] { return Create(staging_bytes, slot_bytes, &made); }, &created));
  if (stats != nullptr) {
    if (created) {
      *stats = made;
    } else {
      const auto* deleter = std::get_deleter<PinnedPoolDeleter>(pool);
      *stats = PinnedPoolStats{0, pool->allocated_bytes(), true,
                               deleter != nullptr ? deleter->pin_seconds : 0};
    }
  }
  return pool;
}

void PinnedPool::DropCache() { Cache().Drop(); }

size_t PinnedPool::CachedPools() { return Cache().size(); }

}  // namespace shardstream::cuda
