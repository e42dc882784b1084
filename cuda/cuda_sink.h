// CudaSink: the staged pipeline's device sink. Each staged slot's pieces go to device memory with
// asynchronous host-to-device copies on one of K non-blocking streams; Consume then records an
// event behind them and parks the slot's lease behind that event (engine::SlotLease::
// ReleaseAfter), so nothing on the hot path waits for the device. The staging pool reclaims the
// slot once the event completed (cudaEventQuery), or waits for the oldest (cudaEventSynchronize)
// when no slot is free: a device error comes back there, in the thread that waited, and from
// Finish. Casts run on the device: a target whose file dtype differs from its destination dtype
// is uploaded raw into a bounded device scratch window, and the cast function (the native
// conversion kernel, cuda/cast_kernel.h, in every load; a stand-in in tests) converts it on the
// same stream. The plan keeps a cast target's elements whole in every piece (engine/plan.h), so
// every cast is of whole elements.
//
//   auto ops = MakeCudaRuntimeOps(0);                       // or a fake device in CPU tests
//   auto sink = CudaSink::Create(engine::DestinationsOf(checkpoint, targets), {}, *ops);
//   RunPipeline(checkpoint, targets, sink->get(), options);  // options.pool: a PinnedPool
//   // after it returns (on success and failure alike) no copy is pending
//
// Ownership: the destinations (device memory) and the DeviceOps are borrowed and must outlive
// the sink; the sink owns its streams, events and scratch buffer. One sink serves one load. Slots
// parked behind its events may stay in a pool after the sink is gone: its destructor waits for its
// streams first, and those slots then count as free without asking the device.
//
// Thread-safety: Consume may run concurrently from any threads, as engine::Sink requires; Finish
// is called once, after the last Consume returned.
#pragma once

#include "cuda/device_ops.h"
#include "engine/plan.h"
#include "engine/sink.h"
#include "io/checkpoint.h"
#include "io/dtype.h"
#include "io/status.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <utility>
#include <vector>

namespace shardstream::cuda {
namespace detail {
class SlotEvents;     // cuda_sink.cc
class ChunkNotifier;  // cuda_sink.cc
}  // namespace detail

// Converts `elements` elements of `src_dtype` at device address `src` into `dst_dtype` at `dst`,
// asynchronously on `stream` (a cudaStream_t; ATen: c10::cuda::getStreamFromExternal). It must
// only queue work on that stream, never wait for it, and may be called from several threads at
// once (on different streams). `src` stays valid until the queued work finished. An error fails
// the load (the sink adds the tensor's target index).
using DeviceCastFn =
    std::function<io::Status(StreamHandle stream, const std::byte* src, io::DType src_dtype,
                             std::byte* dst, io::DType dst_dtype, uint64_t elements)>;

struct CudaSinkOptions {
  uint32_t streams = kDefaultCopyStreams;  // K non-blocking copy streams, used round-robin
  // Device scratch for casts, allocated once (at Create) and only when some target casts: split
  // evenly between the streams.
  uint64_t scratch_bytes = kDefaultDeviceCastScratchBytes;
  DeviceCastFn cast;  // required when a target's dtypes differ
};

struct CudaSinkStats {
  uint64_t copies = 0;         // host-to-device copies queued
  uint64_t copied_bytes = 0;   // bytes they move
  uint64_t cast_calls = 0;     // cast function calls (one per window)
  uint64_t scratch_bytes = 0;  // device scratch allocated (0 without casts)
  // Most slots parked behind this sink's events at once (until the pool reclaimed them): the
  // copies in flight from the host's side, at least. (On the device, copies in one direction share
  // the copy engines: an H100 runs host-to-device copies of several streams one after another, so
  // device-side intervals need not overlap even when many copies are in flight.)
  uint32_t peak_in_flight = 0;
};

class CudaSink final : public engine::Sink {
 public:
  // Creates the streams and, when a target casts, the scratch buffer. Errors: rule "cast" for a
  // cast without `options.cast`, between sub-byte dtypes (F4, F6), or a target whose size is not
  // whole elements; rule "cast-scratch" when the scratch cannot hold a 256-byte window per
  // stream; rule "cuda" from the device.
  static io::Result<std::unique_ptr<CudaSink>> Create(std::vector<engine::Destination> targets,
                                                      CudaSinkOptions options, DeviceOps& ops);
  // Waits for every stream (in case Finish was not called), then frees what the sink owns.
  ~CudaSink() override;
  CudaSink(const CudaSink&) = delete;
  CudaSink& operator=(const CudaSink&) = delete;

  // Queues the pieces' copies (and casts) on the next stream and an event after them, and parks
  // the slot's lease behind the event; returns without waiting for the device. A piece of a cast
  // target must hold whole elements (rule "internal" otherwise).
  io::Status Consume(engine::StagedSlot slot, std::span<const engine::Piece> pieces) override;
  // Waits for every stream, then reports no more chunks. Returns the first device error (rule
  // "cuda").
  io::Status Finish() override;
  // Each chunk whose Consume returned OK is reported when the event after its copies is seen
  // complete (the pool asking about the slot's fence, or waiting for it), until Finish.
  void SetChunkDone(engine::ChunkDoneFn done) override;

  CudaSinkStats stats() const;

 private:
  struct StreamState;

  CudaSink(std::vector<engine::Destination> targets, CudaSinkOptions options, DeviceOps& ops);
  io::Status Init();
  io::Status Enqueue(const engine::StagedSlot& slot, std::span<const engine::Piece> pieces,
                     uint32_t stream_index);
  io::Status CastPiece(const engine::StagedSlot& slot, const engine::Piece& piece,
                       StreamState& stream);
  // After Enqueue: the slot's lease waits behind an event on the stream; `chunk` (the slot's,
  // when its copies were all queued) is reported once the event completed.
  void Park(engine::SlotLease lease, StreamState& stream, std::optional<uint32_t> chunk);
  io::Status SynchronizeAll();

  const std::vector<engine::Destination> targets_;
  const CudaSinkOptions options_;
  DeviceOps& ops_;
  std::vector<std::unique_ptr<StreamState>> streams_;
  std::atomic<uint32_t> next_stream_{0};
  std::byte* scratch_ = nullptr;                       // one window per stream
  std::shared_ptr<detail::SlotEvents> events_;         // shared with the fences of parked slots
  std::shared_ptr<detail::ChunkNotifier> chunk_done_;  // shared with them too

  mutable std::mutex stats_mutex_;
  CudaSinkStats stats_;  // guarded by stats_mutex_
};

}  // namespace shardstream::cuda
