// StagingPool: the bounded host memory that reads land in before sinks copy them out.
//
// One allocation of at most `staging_bytes`, carved into equal slots of `slot_bytes` (both
// multiples of kStagingAlignment, so every slot can take an O_DIRECT read). The pipeline's IO
// thread acquires a slot per chunk read as a SlotLease and hands the lease to the sink; the slot
// is free again when the lease is dropped (a CPU sink, after its memcpy) or, for a lease parked
// behind a SlotFence (a device sink's event recorded after the slot's copies), once the fence has
// completed: Acquire reclaims such slots itself, polling every fence and, when no slot is free,
// waiting on the oldest. A slot is reused only after every copy out of it has finished. Memory
// never exceeds `staging_bytes`, whatever the size of the checkpoint: loads simply wait.
//
// Thread-safety: every method may be called from any thread (one mutex and condition variable).
// A pool may outlive many loads (a CUDA pool pins its memory once and keeps it) and may be shared
// by concurrent loads, which then take turns for slots.
#pragma once

#include "engine/host_memory.h"
#include "io/status.h"

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace shardstream::engine {

inline constexpr uint64_t kStagingAlignment = 4096;

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

class StagingPool;

// Work that reads a parked slot (a device sink's copies out of it): the pool asks Ready() without
// blocking when it looks for a free slot, and Wait()s on the oldest one when none is free. An
// error (a failed copy, a lost device) comes back from Acquire in the thread that waited; the
// slot is free after either. Called under the pool's lock (Ready) or outside it (Wait), never
// concurrently for one fence; a fence is destroyed by the pool, once done.
class SlotFence {
 public:
  virtual ~SlotFence() = default;
  [[nodiscard]] virtual io::Result<bool> Ready() = 0;
  [[nodiscard]] virtual io::Status Wait() = 0;
};

// A slot held: move-only; the slot goes back to its pool when the lease is destroyed or reset,
// or, through ReleaseAfter, once a fence completed. Not thread-safe itself (one owner at a time);
// the pool it returns to is.
class SlotLease {
 public:
  SlotLease() = default;
  SlotLease(SlotLease&& other) noexcept
      : pool_(std::exchange(other.pool_, nullptr)), slot_(other.slot_) {}
  SlotLease& operator=(SlotLease&& other) noexcept;
  SlotLease(const SlotLease&) = delete;
  SlotLease& operator=(const SlotLease&) = delete;
  ~SlotLease() { Reset(); }

  explicit operator bool() const { return pool_ != nullptr; }
  const StagingSlot& slot() const { return slot_; }
  std::byte* data() const { return slot_.data; }
  // Gives the slot back now.
  void Reset();
  // Gives the slot back once `fence` completed: the pool keeps it until then. A null fence is
  // Reset().
  void ReleaseAfter(std::unique_ptr<SlotFence> fence);

 private:
  friend class StagingPool;
  SlotLease(StagingPool* pool, StagingSlot slot) : pool_(pool), slot_(slot) {}
  StagingPool* pool_ = nullptr;
  StagingSlot slot_;
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
  // Every lease must have been dropped (a lease outliving its pool is a use after free). Waits
  // for the fences of parked slots, so no device copy still reads the memory it frees.
  ~StagingPool();

  // Blocks until a slot is free (reclaiming parked slots whose fence completed, waiting on the
  // oldest fence when nothing else is free) and hands it out. Errors: rule "cancelled" once the
  // pool is cancelled; a fence's error (its slot is free again, the next call may succeed).
  io::Result<SlotLease> Acquire();
  // A free slot (after reclaiming completed fences), nullopt at once when none is free or the pool
  // is cancelled, or a fence's error.
  io::Result<std::optional<SlotLease>> TryAcquire();
  // Makes every blocked and future Acquire fail with rule "cancelled" until Reset(). Leases held
  // stay valid.
  void Cancel();
  void Reset();

  uint32_t slot_count() const { return static_cast<uint32_t>(slots_.size()); }
  // The one allocation every slot lies in: [data(), data() + allocated_bytes()). For registering it
  // once (io_uring fixed buffers, cudaHostRegister).
  std::byte* data() const { return memory_; }
  uint64_t slot_bytes() const { return slot_bytes_; }
  uint64_t allocated_bytes() const { return allocated_bytes_; }  // <= staging_bytes
  // Slots leased or parked behind a fence that has not completed.
  uint32_t in_use();
  // The most slots held at once since creation (or ResetPeak).
  uint32_t peak_in_use() const;
  void ResetPeak();

 private:
  friend class SlotLease;
  struct Parked {
    uint32_t index = 0;
    std::unique_ptr<SlotFence> fence;
  };

  StagingPool(std::byte* memory, uint64_t allocated_bytes, uint64_t slot_bytes,
              StagingFreeHook on_free, HostAllocator& allocator);
  void Release(uint32_t index);
  void Park(uint32_t index, std::unique_ptr<SlotFence> fence);
  // Frees the parked slots whose fence completed (or failed: the first error is kept in
  // fence_error_ for the next Acquire or TryAcquire to return).
  void ReclaimLocked();
  std::optional<SlotLease> TakeLocked();

  std::byte* const memory_;
  const uint64_t allocated_bytes_;
  const uint64_t slot_bytes_;
  StagingFreeHook on_free_;
  HostAllocator& allocator_;  // made the memory; frees it
  std::vector<StagingSlot> slots_;

  mutable std::mutex mutex_;
  std::condition_variable slot_freed_;
  std::vector<uint32_t> free_;  // indices of free slots; guarded by mutex_
  std::deque<Parked> parked_;   // slots behind fences, oldest first; guarded by mutex_
  io::Status fence_error_;      // guarded by mutex_
  bool cancelled_ = false;      // guarded by mutex_
  uint32_t peak_in_use_ = 0;    // guarded by mutex_
};

}  // namespace shardstream::engine
