#include "engine/staging.h"

#include "engine/host_memory.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>

namespace shardstream::engine {
namespace {

io::Status Cancelled() {
  return io::Status::Error(io::StatusCode::kCancelled, "cancelled",
                           "the staging pool was cancelled");
}

}  // namespace

io::Result<std::unique_ptr<StagingPool>> StagingPool::Create(uint64_t staging_bytes,
                                                             uint64_t slot_bytes,
                                                             StagingAllocateHook on_allocate,
                                                             StagingFreeHook on_free) {
  if (slot_bytes == 0 || slot_bytes > UINT64_MAX - kStagingAlignment) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "staging",
                             "staging slot size must be positive");
  }
  const uint64_t aligned_slot = StagingSlotBytes(slot_bytes);
  const uint64_t count = staging_bytes / aligned_slot;
  if (count == 0) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "staging",
                             "staging memory of " + std::to_string(staging_bytes) +
                                 " bytes cannot hold one slot of " + std::to_string(aligned_slot) +
                                 " bytes (the largest read); raise staging bytes or lower the "
                                 "chunk size");
  }
  if (count > UINT32_MAX) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "staging",
                             "too many staging slots: " + std::to_string(count));
  }
  const uint64_t total = count * aligned_slot;
  // O_DIRECT reads need page-aligned buffers. The pool frees them with the allocator that made
  // them.
  HostAllocator& allocator = CurrentHostAllocator();
  auto memory = allocator.Allocate(total, kStagingAlignment, /*huge_pages=*/false);
  if (!memory.ok()) {
    return io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                             "cannot allocate " + std::to_string(total) +
                                 " bytes of staging memory: " + memory.status().message())
        .WithErrno(memory.status().sys_errno());
  }
  if (on_allocate) {
    if (io::Status status = on_allocate(*memory, total); !status.ok()) {
      allocator.Free(*memory, total);
      return status;
    }
  }
  return std::unique_ptr<StagingPool>(
      new StagingPool(*memory, total, aligned_slot, std::move(on_free), allocator));
}

StagingPool::StagingPool(std::byte* memory, uint64_t allocated_bytes, uint64_t slot_bytes,
                         StagingFreeHook on_free, HostAllocator& allocator)
    : memory_(memory),
      allocated_bytes_(allocated_bytes),
      slot_bytes_(slot_bytes),
      on_free_(std::move(on_free)),
      allocator_(allocator) {
  const auto count = static_cast<uint32_t>(allocated_bytes / slot_bytes);
  slots_.reserve(count);
  free_.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    slots_.push_back(StagingSlot{memory_ + uint64_t{i} * slot_bytes, slot_bytes, i});
  }
  // Handed out lowest index first (free_ is used as a stack), so a load that needs few slots
  // touches only the front of the allocation.
  for (uint32_t i = count; i > 0; --i) free_.push_back(i - 1);
}

StagingPool::~StagingPool() {
  // The memory is freed below: whatever still reads a parked slot must be done first.
  for (Parked& parked : parked_) (void)parked.fence->Wait();
  parked_.clear();
  if (on_free_) on_free_(memory_, allocated_bytes_);
  allocator_.Free(memory_, allocated_bytes_);
}

SlotLease& SlotLease::operator=(SlotLease&& other) noexcept {
  if (this != &other) {
    Reset();
    pool_ = std::exchange(other.pool_, nullptr);
    slot_ = other.slot_;
  }
  return *this;
}

void SlotLease::Reset() {
  if (pool_ != nullptr) std::exchange(pool_, nullptr)->Release(slot_.index);
}

void SlotLease::ReleaseAfter(std::unique_ptr<SlotFence> fence) {
  if (fence == nullptr) return Reset();
  if (pool_ != nullptr) std::exchange(pool_, nullptr)->Park(slot_.index, std::move(fence));
}

void StagingPool::ReclaimLocked() {
  // Fences complete roughly in the order they were parked, but streams run side by side: ask each
  // (cudaEventQuery does not block), so a slow stream does not hold back the others' slots.
  for (auto it = parked_.begin(); it != parked_.end();) {
    io::Result<bool> ready = it->fence->Ready();
    if (ready.ok() && !*ready) {
      ++it;
      continue;
    }
    if (!ready.ok() && fence_error_.ok()) fence_error_ = std::move(ready).status();
    free_.push_back(it->index);
    it = parked_.erase(it);
  }
}

std::optional<SlotLease> StagingPool::TakeLocked() {
  if (cancelled_ || free_.empty()) return std::nullopt;
  const uint32_t index = free_.back();
  free_.pop_back();
  peak_in_use_ = std::max(peak_in_use_, static_cast<uint32_t>(slots_.size() - free_.size()));
  return SlotLease(this, slots_[index]);
}

io::Result<SlotLease> StagingPool::Acquire() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    if (cancelled_) return Cancelled();
    ReclaimLocked();
    if (!fence_error_.ok()) return std::exchange(fence_error_, io::Status::Ok());
    if (std::optional<SlotLease> lease = TakeLocked()) return std::move(*lease);
    if (parked_.empty()) {
      slot_freed_.wait(lock);
      continue;
    }
    // Nothing free: wait for the oldest fence, outside the lock (Release and Park go on), then
    // take its slot (or whichever is free by then). A device error surfaces here, in the thread
    // that waited.
    Parked oldest = std::move(parked_.front());
    parked_.pop_front();
    lock.unlock();
    io::Status status = oldest.fence->Wait();
    oldest.fence.reset();
    lock.lock();
    free_.push_back(oldest.index);
    if (!status.ok()) {
      lock.unlock();
      slot_freed_.notify_one();
      return status;
    }
  }
}

io::Result<std::optional<SlotLease>> StagingPool::TryAcquire() {
  std::lock_guard<std::mutex> lock(mutex_);
  ReclaimLocked();
  if (!fence_error_.ok()) return std::exchange(fence_error_, io::Status::Ok());
  return TakeLocked();
}

void StagingPool::Release(uint32_t index) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(index);
  }
  slot_freed_.notify_one();
}

void StagingPool::Park(uint32_t index, std::unique_ptr<SlotFence> fence) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    parked_.push_back(Parked{index, std::move(fence)});
  }
  // A waiter blocked with nothing parked now has a fence to wait on.
  slot_freed_.notify_one();
}

void StagingPool::Cancel() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    cancelled_ = true;
  }
  slot_freed_.notify_all();
}

void StagingPool::Reset() {
  std::lock_guard<std::mutex> lock(mutex_);
  cancelled_ = false;
}

uint32_t StagingPool::in_use() {
  std::lock_guard<std::mutex> lock(mutex_);
  ReclaimLocked();
  return static_cast<uint32_t>(slots_.size() - free_.size());
}

uint32_t StagingPool::peak_in_use() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return peak_in_use_;
}

void StagingPool::ResetPeak() {
  std::lock_guard<std::mutex> lock(mutex_);
  peak_in_use_ = static_cast<uint32_t>(slots_.size() - free_.size());
}

}  // namespace shardstream::engine
