#include "engine/host_pool.h"

#include "engine/host_memory.h"

#include <algorithm>

namespace shardstream::engine {

// Shared by the pool and its leases: whichever goes last frees the cached buffers.
struct HostLease::State {
  std::mutex mutex;
  const uint64_t max_cached_bytes;
  bool pool_alive = true;                    // guarded by mutex
  std::multimap<uint64_t, std::byte*> free;  // size → buffer; guarded by mutex
  HostPoolStats stats;                       // guarded by mutex

  explicit State(uint64_t max_cached) : max_cached_bytes(max_cached) {}
  ~State() {
    for (const auto& [size, data] : free) FreeHostBuffer(data, size);
  }
};

HostLease& HostLease::operator=(HostLease&& other) noexcept {
  if (this != &other) {
    Release();
    state_ = std::move(other.state_);
    data_ = std::exchange(other.data_, nullptr);
    size_bytes_ = std::exchange(other.size_bytes_, 0);
  }
  return *this;
}

void HostLease::Release() noexcept {
  if (data_ == nullptr) return;
  bool keep = false;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->stats.leased_bytes -= size_bytes_;
    keep =
        state_->pool_alive && state_->stats.cached_bytes + size_bytes_ <= state_->max_cached_bytes;
    if (keep) {
      state_->free.emplace(size_bytes_, data_);
      state_->stats.cached_bytes += size_bytes_;
    }
  }
  if (!keep) FreeHostBuffer(data_, size_bytes_);
  data_ = nullptr;
  size_bytes_ = 0;
  state_.reset();
}

HostBufferPool::HostBufferPool(uint64_t max_cached_bytes)
    : state_(std::make_shared<HostLease::State>(max_cached_bytes)) {}

HostBufferPool::~HostBufferPool() {
  std::multimap<uint64_t, std::byte*> free;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->pool_alive = false;  // leases still out free their buffers on release
    free.swap(state_->free);
    state_->stats.cached_bytes = 0;
  }
  for (const auto& [size, data] : free) FreeHostBuffer(data, size);
}

io::Result<HostLease> HostBufferPool::Acquire(uint64_t size_bytes) {
  if (size_bytes == 0) {
    return io::Status::InvalidArgument("memory", "a pooled host buffer needs at least one byte");
  }
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    auto it = state_->free.find(size_bytes);
    if (it != state_->free.end()) {
      std::byte* data = it->second;
      state_->free.erase(it);
      HostPoolStats& s = state_->stats;
      s.cached_bytes -= size_bytes;
      s.leased_bytes += size_bytes;
      s.peak_leased_bytes = std::max(s.peak_leased_bytes, s.leased_bytes);
      ++s.reused;
      return HostLease(state_, data, size_bytes);
    }
  }
  // Allocated outside the lock: a large buffer's mapping may take a while.
  SHARDSTREAM_ASSIGN_OR_RETURN(std::byte * data, AllocateHostBuffer(size_bytes));
  std::lock_guard<std::mutex> lock(state_->mutex);
  HostPoolStats& s = state_->stats;
  s.leased_bytes += size_bytes;
  s.peak_leased_bytes = std::max(s.peak_leased_bytes, s.leased_bytes);
  ++s.allocated;
  return HostLease(state_, data, size_bytes);
}

HostPoolStats HostBufferPool::stats() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->stats;
}

}  // namespace shardstream::engine
