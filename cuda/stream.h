// RAII for the CUDA runtime's streams, events and current device. Only in builds with CUDA.
//
//   Stream stream;                          // owning, non-blocking, on the current device
//   StreamView view = stream;               // non-owning: pass it around, copy it freely
//   Event done;                             // timing disabled (cheapest)
//   done.Record(view);  done.Synchronize();
//   { DeviceGuard guard(1); ... }           // device 1 current inside, the old one restored after
//
// Constructors throw CudaError (file:line, the call, the error name) when the runtime refuses;
// destructors never throw (they log a failure on stderr). Types are move-only, except StreamView.
// Thread-safety: as the runtime's (calls on one object from several threads are fine; moving or
// destroying one while another thread uses it is not).
#pragma once

#include "cuda/error.h"

#include <cuda_runtime_api.h>

#include <utility>

namespace shardstream::cuda {

// A stream someone else owns (or the legacy default stream, nullptr). Cheap to copy.
class StreamView {
 public:
  constexpr StreamView() = default;
  constexpr explicit StreamView(cudaStream_t stream) : stream_(stream) {}
  cudaStream_t get() const { return stream_; }
  // Blocks until the stream's work finished; throws its error.
  void Synchronize() const { SHARDSTREAM_CUDA_TRY(cudaStreamSynchronize(stream_)); }
  // True when all work finished; throws an error other than cudaErrorNotReady.
  bool Ready() const;

 private:
  cudaStream_t stream_ = nullptr;
};

// An owned stream created with cudaStreamNonBlocking, on the device current at construction.
class Stream {
 public:
  explicit Stream(unsigned flags = cudaStreamNonBlocking);
  ~Stream();
  Stream(Stream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  cudaStream_t get() const { return stream_; }
  StreamView view() const { return StreamView(stream_); }
  operator StreamView() const { return view(); }  // NOLINT(google-explicit-constructor)

 private:
  cudaStream_t stream_ = nullptr;
};

// An owned event. Timing is off by default: such events are cheaper to record and to wait on.
class Event {
 public:
  enum class Timing : bool { kDisabled, kEnabled };
  explicit Event(Timing timing = Timing::kDisabled);
  ~Event();
  Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  cudaEvent_t get() const { return event_; }
  void Record(StreamView stream) { SHARDSTREAM_CUDA_TRY(cudaEventRecord(event_, stream.get())); }
  // Makes work queued on `stream` from now on wait for this event's last capture.
  void Wait(StreamView stream) const {
    SHARDSTREAM_CUDA_TRY(cudaStreamWaitEvent(stream.get(), event_, 0));
  }
  void Synchronize() const { SHARDSTREAM_CUDA_TRY(cudaEventSynchronize(event_)); }
  // Milliseconds from `start` to this event; both recorded with timing and completed.
  float MillisecondsSince(const Event& start) const;

 private:
  cudaEvent_t event_ = nullptr;
};

// Makes `device` current on this thread for the guard's lifetime; restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

}  // namespace shardstream::cuda
