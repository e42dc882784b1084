// Sinks: where the pipeline (engine/pipeline.h) puts the bytes of each staged read.
//
// The pipeline reads a chunk into a staging slot, then hands the slot's lease (engine/staging.h)
// and the pieces it holds (engine/plan.h) to Sink::Consume, on the reading thread or on a oneTBB
// worker. The slot goes back to the pool when the sink drops the lease (a CPU sink, when its copy
// is done) or once the fence it parked the lease behind completed (a device sink's event after the
// slot's copies). After every chunk was consumed (or the load failed), the pipeline calls Finish
// once.
//
// CpuSink copies (or casts) into host destinations; DiscardSink drops the bytes (measures the
// reads alone); the CUDA sink (cuda/) copies to the device.
#pragma once

#include "engine/plan.h"
#include "engine/staging.h"
#include "io/checkpoint.h"
#include "io/dtype.h"
#include "io/status.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
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

// What a sink needs of one target: its memory, and the two dtypes. Pieces (in source bytes) land
// at destination + target_offset, scaled to the destination dtype for a cast
// (Destination::Offset); `source_bytes` bounds the target offsets a piece may reach.
struct Destination {
  std::byte* destination = nullptr;
  uint64_t source_bytes = 0;
  io::DType source_dtype = io::DType::kU8;
  io::DType destination_dtype = io::DType::kU8;

  bool casts() const { return source_dtype != destination_dtype; }
  // Where source byte offset `source_offset` of the target lands (whole elements for a cast).
  uint64_t Offset(uint64_t source_offset) const {
    if (!casts()) return source_offset;
    return source_offset / (io::DTypeBits(source_dtype) / 8) *
           (io::DTypeBits(destination_dtype) / 8);
  }
};

// Told that the copies out of chunk `chunk` (an index into the plan's chunks) have completed.
using ChunkDoneFn = std::function<void(uint32_t chunk)>;

// The sink's view of the pipeline's targets, by index.
std::vector<Destination> DestinationsOf(const io::Checkpoint& checkpoint,
                                        std::span<const Target> targets);

class Sink {
 public:
  virtual ~Sink() = default;
  // Moves the pieces out of the slot. Called from any thread, concurrently for different slots;
  // two calls never write the same destination bytes. The sink owns slot.lease: dropping it (at
  // the latest when Consume returns) frees the slot; a sink whose copies outlive Consume parks it
  // behind a fence instead (SlotLease::ReleaseAfter), and the readers meanwhile read into the
  // slots that are free, so the copies of many slots overlap with reading. An error fails the
  // load (the pipeline stops, drains and returns it).
  [[nodiscard]] virtual io::Status Consume(StagedSlot slot, std::span<const Piece> pieces) = 0;
  // Called once, after the last Consume returned, on success and on failure alike; on success it
  // must leave every target complete (a device sink waits for its streams here, after which
  // every fence it parked has completed).
  [[nodiscard]] virtual io::Status Finish() = 0;
  // True when every piece's bytes are in their destination once Consume returned OK (a CPU copy):
  // the pipeline then reports each target complete as its last piece is consumed
  // (PipelineOptions::target_done). False (the default) when copies outlive Consume (a device
  // sink's, behind a fence): the pipeline reports its targets only after Finish succeeded.
  virtual bool CompletesInConsume() const { return false; }
  // For a sink whose copies outlive Consume: after this call it tells `done` about each chunk
  // whose Consume returned OK, once that chunk's copies have completed (a device sink: its event,
  // as the staging pool reclaims the slot), from any thread, at most once per chunk, and never
  // once its Finish has returned (or it is destroyed). Chunks it did not report by then are
  // complete if Finish succeeded. The default reports none (the pipeline reports every target
  // after Finish). `done` must be quick and must not use the staging pool (it may run under the
  // pool's lock).
  virtual void SetChunkDone(ChunkDoneFn done) { (void)done; }
};

// Copies every piece into host memory, converting it with the one host cast (engine/cast.h) when
// its target changes dtype (the plan keeps a cast target's pieces on whole elements). The
// destinations are borrowed and must outlive the load. Thread-safe as Sink requires.
class CpuSink final : public Sink {
 public:
  explicit CpuSink(std::vector<Destination> destinations)
      : destinations_(std::move(destinations)) {}
  io::Status Consume(StagedSlot slot, std::span<const Piece> pieces) override;
  io::Status Finish() override { return io::Status::Ok(); }
  bool CompletesInConsume() const override { return true; }

 private:
  std::vector<Destination> destinations_;
};

// Drops the bytes and counts them: measures the read path without a destination.
class DiscardSink final : public Sink {
 public:
  io::Status Consume(StagedSlot slot, std::span<const Piece> pieces) override;
  io::Status Finish() override { return io::Status::Ok(); }
  bool CompletesInConsume() const override { return true; }

  uint64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }
  uint64_t pieces() const { return pieces_.load(std::memory_order_relaxed); }
  uint64_t slots() const { return slots_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> bytes_{0};
  std::atomic<uint64_t> pieces_{0};
  std::atomic<uint64_t> slots_{0};
};

}  // namespace shardstream::engine
