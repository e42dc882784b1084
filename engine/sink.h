// Sinks: where the staged pipeline (engine/pipeline.h) puts the bytes of each finished read.
//
// The pipeline reads a chunk into a staging slot, then hands the slot and the pieces it holds
// (engine/plan.h) to Sink::Consume on a oneTBB worker; when Consume returns, the slot goes back
// to the pool and is overwritten by a later read. After every chunk was consumed (or the load
// failed), the pipeline calls Finish once.
//
// CpuSink copies into host destinations; DiscardSink drops the bytes (benchmarks the IO alone);
// the CUDA sink (cuda/) copies to the device.
#pragma once

#include "engine/loader.h"
#include "engine/plan.h"
#include "io/status.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace shardstream::engine {

// A chunk that has been read: data[0, size_bytes) holds file `file` from `file_offset`. Piece
// offsets (Piece::chunk_offset) are relative to `data`. The struct is valid during Consume; the
// memory at `data` until the slot is released (when Consume returns, unless the sink keeps slots).
struct StagedSlot {
  const std::byte* data = nullptr;
  uint64_t size_bytes = 0;  // the chunk's needed bytes
  uint64_t file_offset = 0;
  uint32_t file = 0;
  uint32_t chunk = 0;  // index into ReadPlan::chunks
  uint32_t slot = 0;   // the staging slot's index (a CUDA sink keeps an event per slot)
  // Gives the slot back to the pool, for sinks that keep slots (Sink::keeps_slots); empty for
  // the others. Call it exactly once, from any thread, when nothing reads the slot any more.
  std::function<void()> release;
};

class Sink {
 public:
  virtual ~Sink() = default;
  // Moves the pieces out of the slot. Called from any thread, concurrently for different slots;
  // two calls never write the same destination bytes. When Consume returns the sink must no
  // longer read slot.data: a sink with asynchronous copies waits for them before it returns.
  // An error fails the load (the pipeline stops, drains and returns it).
  [[nodiscard]] virtual io::Status Consume(const StagedSlot& slot,
                                           std::span<const Piece> pieces) = 0;
  // False (the default): the sink is done with the slot when Consume returns, and the pipeline
  // releases it then. True: copies out of the slot may still run after Consume returned (a device
  // sink's cudaMemcpyAsync); the sink calls slot.release() exactly once for every slot it is
  // given, whatever Consume returns (so Consume must not throw), once nothing reads it any more,
  // and Finish returns only after every slot was released. The IO thread meanwhile reads into
  // the slots that are free, so the copies of many slots overlap with reading.
  virtual bool keeps_slots() const { return false; }
  // Called once, after the last Consume returned, on success and on failure alike; on success it
  // must leave every target complete (a device sink waits for its streams here).
  [[nodiscard]] virtual io::Status Finish() = 0;
};

// Copies every piece into host memory: destinations[piece.target] + piece.target_offset. The
// destinations (one per target given to the pipeline, each holding the tensor's bytes) are
// borrowed and must outlive the load. Thread-safe as Sink requires.
class CpuSink final : public Sink {
 public:
  explicit CpuSink(std::span<const LoadTarget> targets);
  io::Status Consume(const StagedSlot& slot, std::span<const Piece> pieces) override;
  io::Status Finish() override { return io::Status::Ok(); }

 private:
  std::vector<std::byte*> destinations_;
};

// Drops the bytes and counts them: measures the read path without a destination.
class DiscardSink final : public Sink {
 public:
  io::Status Consume(const StagedSlot& slot, std::span<const Piece> pieces) override;
  io::Status Finish() override { return io::Status::Ok(); }

  uint64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }
  uint64_t pieces() const { return pieces_.load(std::memory_order_relaxed); }
  uint64_t slots() const { return slots_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> bytes_{0};
  std::atomic<uint64_t> pieces_{0};
  std::atomic<uint64_t> slots_{0};
};

}  // namespace shardstream::engine
