// The device seam: the few CUDA runtime operations the CUDA sink needs, behind an interface, so
// that the sink's slot accounting, ordering and failure handling run the same code against the
// real runtime (MakeCudaRuntimeOps) and against the fake device of the tests
// (tests/support/fake_device.h: a thread per "stream"), which is how they are tested on machines
// without a GPU.
//
// Handles are the runtime's own types: StreamHandle is cudaStream_t and EventHandle is
// cudaEvent_t (both are pointers to the driver's opaque structs, declared here without including
// CUDA headers, so this header and the sink compile in builds without CUDA). A fake device hands
// out pointers to its own objects under the same types; never mix handles of two DeviceOps.
//
// Every operation that enqueues work (CopyAsync, RecordEvent) returns once the work is queued,
// without waiting for the device. Errors carry rule "cuda" and name the call and the runtime's
// error (e.g. "cudaMemcpyAsync failed: cudaErrorInvalidValue: ...").
//
// Thread-safety: every method may be called from any thread, as the CUDA runtime allows.
#pragma once

#include "io/status.h"

#include <cstddef>
#include <cstdint>
#include <memory>

// The CUDA runtime's opaque types: cudaStream_t is CUstream_st*, cudaEvent_t is CUevent_st*.
struct CUstream_st;
struct CUevent_st;

namespace shardstream::cuda {

using StreamHandle = CUstream_st*;  // == cudaStream_t
using EventHandle = CUevent_st*;    // == cudaEvent_t

class DeviceOps {
 public:
  virtual ~DeviceOps() = default;

  // Makes this ops' device current on the calling thread and returns the previous one, for
  // LeaveDevice. Cheap (thread-local state); the sink brackets each Consume with them.
  [[nodiscard]] virtual io::Result<int> EnterDevice() = 0;
  virtual void LeaveDevice(int previous) noexcept = 0;

  // A non-blocking stream (cudaStreamNonBlocking: no implicit ordering with the legacy default
  // stream). Destroy only after its work finished (SynchronizeStream).
  [[nodiscard]] virtual io::Result<StreamHandle> CreateStream() = 0;
  virtual void DestroyStream(StreamHandle stream) noexcept = 0;
  // An event; `timing` false disables timing (cheaper to record and wait on).
  [[nodiscard]] virtual io::Result<EventHandle> CreateEvent(bool timing) = 0;
  virtual void DestroyEvent(EventHandle event) noexcept = 0;
  // Device memory (cudaMalloc). Free only after every stream using it finished.
  [[nodiscard]] virtual io::Result<std::byte*> Allocate(size_t size_bytes) = 0;
  virtual void Free(std::byte* data) noexcept = 0;

  // Queues a host-to-device copy of `size_bytes` from `src` (pinned host memory for a truly
  // asynchronous copy) to device memory `dst` on `stream`.
  [[nodiscard]] virtual io::Status CopyAsync(std::byte* dst, const std::byte* src,
                                             size_t size_bytes, StreamHandle stream) = 0;
  // Captures the work queued on `stream` so far in `event` (cudaEventRecord).
  [[nodiscard]] virtual io::Status RecordEvent(EventHandle event, StreamHandle stream) = 0;
  // True once the work the event captured finished, false while some is pending (cudaEventQuery;
  // never blocks). An asynchronous error (a copy that failed on the device, a sticky context
  // error) comes back here, as from the waits below.
  [[nodiscard]] virtual io::Result<bool> QueryEvent(EventHandle event) = 0;
  // Blocks until the work the event captured finished (cudaEventSynchronize).
  [[nodiscard]] virtual io::Status SynchronizeEvent(EventHandle event) = 0;
  // Blocks until the stream's work finished (cudaStreamSynchronize). Never on the hot path.
  [[nodiscard]] virtual io::Status SynchronizeStream(StreamHandle stream) = 0;
  // Milliseconds between two completed timing events (cudaEventElapsedTime).
  [[nodiscard]] virtual io::Result<float> ElapsedMs(EventHandle start, EventHandle end) = 0;
};

// The real thing: the CUDA runtime on `device`. Errors: rule "cuda" when the build has no CUDA or
// the device cannot be used (cudaSetDevice's error).
io::Result<std::shared_ptr<DeviceOps>> MakeCudaRuntimeOps(int device);

}  // namespace shardstream::cuda
