// CudaSink: the staged pipeline's device sink. Each staged slot's pieces go to device memory with
// asynchronous host-to-device copies on one of K non-blocking streams, and the slot goes back to
// the staging pool once those copies are done, without Consume or anything else on the hot path
// waiting for the device. Casts run on the device: a target whose file dtype differs from its
// destination dtype is uploaded raw into a bounded device scratch buffer, and a caller-supplied
// cast function (ATen, in integration/) converts it on the same stream.
//
//   auto ops = MakeCudaRuntimeOps(0);                       // or a FakeDevice in CPU tests
//   auto sink = CudaSink::Create(DeviceTargets(checkpoint, targets), {}, *ops);
//   RunStagedPipeline(checkpoint, targets, **sink, options);  // options.pool: a PinnedPool
//   // after it returns (on success and failure alike) no copy is pending and every slot is back
//
// Ownership: the destinations (device memory) and the DeviceOps are borrowed and must outlive
// the sink; the sink owns its streams, events and scratch buffer. One sink serves one load.
//
// Thread-safety: Consume may run concurrently from any threads, as engine::Sink requires; Finish
// is called once, after the last Consume returned.
#pragma once

#include "cuda/device_ops.h"
#include "engine/loader.h"
#include "engine/plan.h"
#include "engine/sink.h"
#include "io/checkpoint.h"
#include "io/dtype.h"
#include "io/status.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <unordered_map>
#include <vector>

namespace shardstream::cuda {

inline constexpr uint32_t kDefaultCopyStreams = 4;
// 32 MiB: 8 MiB of raw bytes per stream per cast window at the default 4 streams, twice the
// staged path's 4 MiB chunk, so a chunk's worth of a cast target goes up and is cast in one step.
inline constexpr uint64_t kDefaultCastScratchBytes = 32ull << 20;
// Elements of cast targets that straddle two pieces (chunk boundaries) and wait for their other
// bytes. At most about one per staging slot is open at once; 4096 of them take 32 KiB of scratch.
inline constexpr uint32_t kDefaultMaxStraddlingElements = 4096;
inline constexpr uint32_t kMaxElementBytes = 8;  // F64, I64, U64, C64
// How long the sink lets its host functions make no progress before it asks the device whether
// it failed (cuda_sink.cc, Watch).
inline constexpr std::chrono::milliseconds kWatchdogPeriod{50};

// Converts `elements` elements of `src_dtype` at device address `src` into `dst_dtype` at `dst`,
// asynchronously on `stream` (a cudaStream_t; ATen: c10::cuda::getStreamFromExternal). It must
// only queue work on that stream, never wait for it, and may be called from several threads at
// once (on different streams). `src` stays valid until the queued work finished. An error fails
// the load (the sink adds the tensor's target index).
using DeviceCastFn =
    std::function<io::Status(StreamHandle stream, const std::byte* src, io::DType src_dtype,
                             std::byte* dst, io::DType dst_dtype, uint64_t elements)>;

// One destination: `destination` is device memory holding the tensor in `destination_dtype`;
// the file holds `source_bytes` bytes of `source_dtype`.
struct DeviceTarget {
  std::byte* destination = nullptr;
  uint64_t source_bytes = 0;
  io::DType source_dtype = io::DType::kU8;
  io::DType destination_dtype = io::DType::kU8;
};

// Targets for a load without casts: each engine target's destination (device memory) receiving
// its tensor's bytes as they are in the file.
std::vector<DeviceTarget> DeviceTargets(const io::Checkpoint& checkpoint,
                                        std::span<const engine::LoadTarget> targets);

struct CudaSinkOptions {
  uint32_t streams = kDefaultCopyStreams;  // K non-blocking copy streams, used round-robin
  // Device scratch for casts, allocated once (at Create) and only when some target casts: the
  // straddling-element area first, the rest split evenly between the streams.
  uint64_t scratch_bytes = kDefaultCastScratchBytes;
  uint32_t max_straddling_elements = kDefaultMaxStraddlingElements;
  DeviceCastFn cast;  // required when a target's dtypes differ
  // Record a timing event before and after each Consume's work (for tests and benchmarks:
  // CopyIntervals). Off by default: the hot path records no events.
  bool record_timing = false;
};

// When one Consume's copies ran on the device, in ms since the sink was created.
struct CopyInterval {
  double start_ms = 0;
  double end_ms = 0;
  uint32_t stream = 0;
};

// The most intervals that overlap at one moment (touching ends do not overlap).
uint32_t MaxConcurrent(std::span<const CopyInterval> intervals);

struct CudaSinkStats {
  uint64_t copies = 0;        // host-to-device copies queued
  uint64_t copied_bytes = 0;  // bytes they move
  uint64_t cast_calls = 0;    // cast function calls (windows and straddling elements)
  uint64_t straddling_elements = 0;
  uint64_t scratch_bytes = 0;    // device scratch allocated (0 without casts)
  uint32_t peak_straddling = 0;  // most straddling elements open at once
  // Most slots whose copies were queued and not yet finished, at once: the copies in flight from
  // the host's side. (On the device, copies in one direction share the copy engines: an H100
  // runs host-to-device copies of several streams one after another, so device-side intervals
  // need not overlap even when many copies are in flight.)
  uint32_t peak_in_flight = 0;
};

class CudaSink final : public engine::Sink {
 public:
  // Creates the streams and, when a target casts, the scratch buffer. Errors: rule "cast" for a
  // cast without `options.cast`, between sub-byte dtypes (F4, F6), or a target whose size is not
  // whole elements; rule "cast-scratch" when the scratch cannot hold the straddling-element area
  // and one element per stream; rule "cuda" from the device.
  static io::Result<std::unique_ptr<CudaSink>> Create(std::vector<DeviceTarget> targets,
                                                      CudaSinkOptions options, DeviceOps& ops);
  // Waits for every stream (in case Finish was not called), then frees what the sink owns.
  ~CudaSink() override;
  CudaSink(const CudaSink&) = delete;
  CudaSink& operator=(const CudaSink&) = delete;

  bool keeps_slots() const override { return true; }
  // Queues the pieces' copies (and casts) on the next stream and a host function that releases
  // the slot when they are done; returns without waiting for the device. On an error it still
  // releases the slot exactly once (waiting for that stream, which only the failure path does).
  io::Status Consume(const engine::StagedSlot& slot,
                     std::span<const engine::Piece> pieces) override;
  // Waits for every stream. Releases every slot whose host function can no longer run (after a
  // device error). Returns the first device error (rule "cuda").
  io::Status Finish() override;

  CudaSinkStats stats() const;
  // Whether every stream has finished its work (asks without waiting). After Finish: true.
  io::Result<bool> StreamsIdle() const;
  // Per-Consume device intervals (record_timing only), available after Finish.
  io::Result<std::vector<CopyInterval>> CopyIntervals() const;

 private:
  struct Completion;
  struct Straddle;
  struct StreamState;

  CudaSink(std::vector<DeviceTarget> targets, CudaSinkOptions options, DeviceOps& ops);
  io::Status Init();
  io::Status Enqueue(const engine::StagedSlot& slot, std::span<const engine::Piece> pieces,
                     uint32_t stream_index);
  io::Status CastPiece(const engine::StagedSlot& slot, const engine::Piece& piece,
                       StreamState& stream);
  io::Status Straddling(const std::byte* src, uint32_t target, uint64_t element,
                        uint64_t offset_in_element, uint64_t size_bytes, StreamState& stream);
  io::Status AcquireStraddleSlot(std::unique_lock<std::mutex>& lock, uint32_t* index);
  io::Result<EventHandle> TakeEvent();  // caller holds straddle_mutex_
  io::Status QueueCompletion(StreamHandle stream, std::unique_ptr<Completion> completion);
  static void RunCompletion(void* completion);
  void Complete(Completion* completion);
  io::Status SynchronizeAll();
  void Watch();
  void CheckDevice();
  void FailOutstanding();
  io::Status DeviceError() const;

  const std::vector<DeviceTarget> targets_;
  const CudaSinkOptions options_;
  DeviceOps& ops_;
  std::vector<std::unique_ptr<StreamState>> streams_;
  std::atomic<uint32_t> next_stream_{0};
  std::byte* scratch_ = nullptr;  // straddle area, then one window area per stream
  uint64_t window_area_bytes_ = 0;
  EventHandle origin_ = nullptr;  // timing reference, recorded at Create

  // Host functions in flight: released by the device when their stream reaches them, or by
  // Finish or the watchdog after a device error (the runtime then never calls them).
  std::mutex completions_mutex_;
  std::deque<std::unique_ptr<Completion>> completions_;  // guarded; oldest first
  std::atomic<uint64_t> outstanding_{0};                 // queued, not yet completed
  std::atomic<uint64_t> completed_{0};                   // completed so far
  std::atomic<uint64_t> peak_outstanding_{0};            // most outstanding at once

  // The watchdog: when host functions are outstanding and none completed for a period, it asks
  // the streams (without waiting) whether the device failed; if so it releases every slot, since
  // the pipeline's IO thread may be blocked waiting for one and Finish would never come.
  std::thread watchdog_;
  std::mutex watch_mutex_;
  std::condition_variable watch_wake_;
  bool stopping_ = false;  // guarded by watch_mutex_
  std::atomic<bool> device_failed_{false};
  mutable std::mutex error_mutex_;
  io::Status device_error_;  // guarded by error_mutex_

  // Straddling elements: bytes of one element that arrive in different pieces are assembled in
  // an 8-byte cell of the scratch, and whichever piece brings the last byte casts it.
  std::mutex straddle_mutex_;
  std::unordered_map<uint64_t, Straddle> straddles_;  // key: target << 40 | element; guarded
  std::vector<uint32_t> free_cells_;                  // guarded
  uint32_t cells_in_flight_ = 0;                      // casts queued whose cell is not free yet
  std::vector<EventHandle> free_events_;              // guarded
  std::vector<EventHandle> all_events_;               // guarded; destroyed with the sink

  mutable std::mutex stats_mutex_;
  CudaSinkStats stats_;                                      // guarded by stats_mutex_
  std::vector<std::pair<EventHandle, EventHandle>> timing_;  // guarded by stats_mutex_
  std::vector<uint32_t> timing_streams_;                     // guarded by stats_mutex_
};

// How a piece of a cast target splits into elements: the bytes [begin, end) of the target (in
// the file's dtype, `element_bytes` per element) are a partial element at the head, whole
// elements, and a partial element at the tail; a piece inside one element is only a head.
struct ElementSplit {
  struct Partial {
    uint64_t element = 0;            // index of the element
    uint64_t offset_in_element = 0;  // first byte of the piece inside it
    uint64_t size_bytes = 0;
  };
  std::optional<Partial> head;
  uint64_t first_whole = 0;  // whole elements [first_whole, end_whole)
  uint64_t end_whole = 0;
  std::optional<Partial> tail;
};
ElementSplit SplitIntoElements(uint64_t begin, uint64_t end, uint64_t element_bytes);

}  // namespace shardstream::cuda
