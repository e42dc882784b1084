// StagingPool: the bounded host memory that reads land in before sinks copy them out.
//
// One allocation of at most `staging_bytes`, carved into equal slots of `slot_bytes` (both
// multiples of kStagingAlignment, so every slot can take an O_DIRECT read). The pipeline's IO
// thread acquires a slot per chunk read and the copy task that empties it releases it; a slot is
// reused only after every copy out of it has finished. Memory never exceeds `staging_bytes`,
// whatever the size of the checkpoint: loads simply wait for a free slot.
//
// Thread-safety: every method may be called from any thread (one mutex and condition variable).
// A pool may outlive many loads (a CUDA pool pins its memory once and keeps it) and may be shared
// by concurrent loads, which then take turns for slots.
#pragma once

#include "io/status.h"

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace shardstream::engine {

inline constexpr uint64_t kStagingAlignment = 4096;
// 16 slots of the default 4 MiB chunk: room for 8 reads in flight and the copies behind them. More
// did not load faster on our 2-core VM (peak slots in use stayed 8–13 at depth 8, cold or warm),
// and a warm load into the 16 MiB of a smaller pool even ran 2–4× faster than into 256 MiB
// (slots stay in the CPU cache; fewer first-touch faults). BENCHMARKS.md has the runs.
inline constexpr uint64_t kDefaultStagingBytes = 64ull << 20;

// The size a slot of `slot_bytes` takes in a pool: rounded up to kStagingAlignment.
inline uint64_t StagingSlotBytes(uint64_t slot_bytes) {
  return (slot_bytes + kStagingAlignment - 1) & ~(kStagingAlignment - 1);
}

// Called once with the whole allocation after it was made, e.g. to pin it (cudaHostRegister). An
// error fails StagingPool::Create. The memory stays valid until the pool is destroyed.
using StagingAllocateHook = std::function<io::Status(std::byte* data, size_t size_bytes)>;
// Called once before the memory is freed (e.g. cudaHostUnregister). Must not fail.
using StagingFreeHook = std::function<void(std::byte* data, size_t size_bytes)>;

// One slot: `size_bytes` of memory at `data`, owned by the pool. `index` is 0..slot_count()-1.
struct StagingSlot {
  std::byte* data = nullptr;
  uint64_t size_bytes = 0;
  uint32_t index = 0;
};

class StagingPool {
 public:
  // A pool of floor(staging_bytes / slot_bytes) slots, slot_bytes rounded up to
  // kStagingAlignment. Errors: rule "staging" (kInvalidArgument) when not even one slot fits or
  // slot_bytes is zero; rule "memory" when the allocation fails; whatever on_allocate returns.
  static io::Result<std::unique_ptr<StagingPool>> Create(uint64_t staging_bytes,
                                                         uint64_t slot_bytes,
                                                         StagingAllocateHook on_allocate = {},
                                                         StagingFreeHook on_free = {});
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;
  // Every slot must have been released (slots still held point to freed memory afterwards).
  ~StagingPool();

  // Blocks until a slot is free and hands it out, or returns nullopt once the pool is cancelled.
  std::optional<StagingSlot> Acquire();
  // A free slot, or nullopt at once when none is free or the pool is cancelled.
  std::optional<StagingSlot> TryAcquire();
  // Gives back a slot from Acquire/TryAcquire. Wakes one waiter.
  void Release(const StagingSlot& slot);
  // Makes every blocked and future Acquire return nullopt until Reset(). Slots held stay held
  // and must still be released.
  void Cancel();
  void Reset();

  uint32_t slot_count() const { return static_cast<uint32_t>(slots_.size()); }
  // The one allocation every slot lies in: [data(), data() + allocated_bytes()). For registering it
  // once (io_uring fixed buffers, cudaHostRegister).
  std::byte* data() const { return memory_; }
  uint64_t slot_bytes() const { return slot_bytes_; }
  uint64_t allocated_bytes() const { return allocated_bytes_; }  // <= staging_bytes
  uint32_t in_use() const;
  // The most slots held at once since creation (or ResetPeak).
  uint32_t peak_in_use() const;
  void ResetPeak();

 private:
  StagingPool(std::byte* memory, uint64_t allocated_bytes, uint64_t slot_bytes,
              StagingFreeHook on_free);
  std::optional<StagingSlot> TakeLocked();

  std::byte* const memory_;
  const uint64_t allocated_bytes_;
  const uint64_t slot_bytes_;
  StagingFreeHook on_free_;
  std::vector<StagingSlot> slots_;

  mutable std::mutex mutex_;
  std::condition_variable slot_freed_;
  std::vector<uint32_t> free_;  // indices of free slots; guarded by mutex_
  bool cancelled_ = false;      // guarded by mutex_
  uint32_t peak_in_use_ = 0;    // guarded by mutex_
};

}  // namespace shardstream::engine
