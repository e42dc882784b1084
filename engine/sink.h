// Sinks: where the staged pipeline (engine/pipeline.h) puts the bytes of each finished read.
//
// The pipeline reads a chunk into a staging slot, then hands the slot's lease (engine/staging.h)
// and the pieces it holds (engine/plan.h) to Sink::Consume on a oneTBB worker. The slot goes back
// to the pool when the sink drops the lease (a CPU sink, when its memcpy is done) or once the
// fence it parked the lease behind completed (a device sink's event after the slot's copies).
// After every chunk was consumed (or the load failed), the pipeline calls Finish once.
//
// CpuSink copies into host destinations; DiscardSink drops the bytes (benchmarks the IO alone);
// the CUDA sink (cuda/) copies to the device.
#pragma once

#include "engine/loader.h"
#include "engine/plan.h"
#include "engine/staging.h"
#include "io/status.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace shardstream::engine {

// A chunk that has been read: data[0, size_bytes) holds file `file` from `file_offset`. Piece
// offsets (Piece::chunk_offset) are relative to `data`. The memory at `data` is the lease's: valid
// until the lease is dropped or its fence completed. Move-only (it carries the lease).
struct StagedSlot {
  const std::byte* data = nullptr;
  uint64_t size_bytes = 0;  // the chunk's needed bytes
  uint64_t file_offset = 0;
  uint32_t file = 0;
  uint32_t chunk = 0;  // index into ReadPlan::chunks
  // The slot's lease. Empty for a slot that belongs to no pool (benchmarks, tests).
  SlotLease lease;
};

class Sink {
 public:
  virtual ~Sink() = default;
  // Moves the pieces out of the slot. Called from any thread, concurrently for different slots;
  // two calls never write the same destination bytes. The sink owns slot.lease: dropping it (at
  // the latest when Consume returns) frees the slot; a sink whose copies outlive Consume parks it
  // behind a fence instead (SlotLease::ReleaseAfter), and the IO thread meanwhile reads into the
  // slots that are free, so the copies of many slots overlap with reading. An error fails the
  // load (the pipeline stops, drains and returns it).
  [[nodiscard]] virtual io::Status Consume(StagedSlot slot, std::span<const Piece> pieces) = 0;
  // Called once, after the last Consume returned, on success and on failure alike; on success it
  // must leave every target complete (a device sink waits for its streams here, after which
  // every fence it parked has completed).
  [[nodiscard]] virtual io::Status Finish() = 0;
};

// Copies every piece into host memory: destinations[piece.target] + piece.target_offset. The
// destinations (one per target given to the pipeline, each holding the tensor's bytes) are
// borrowed and must outlive the load. Thread-safe as Sink requires.
class CpuSink final : public Sink {
 public:
  explicit CpuSink(std::span<const LoadTarget> targets);
  io::Status Consume(StagedSlot slot, std::span<const Piece> pieces) override;
  io::Status Finish() override { return io::Status::Ok(); }

 private:
  std::vector<std::byte*> destinations_;
};

// Drops the bytes and counts them: measures the read path without a destination.
class DiscardSink final : public Sink {
 public:
  io::Status Consume(StagedSlot slot, std::span<const Piece> pieces) override;
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
