// CopyTimeline: when a CUDA sink's copies ran on the device, for tests that check copies overlap.
// A DeviceOps that forwards everything to another (the fake device, or the CUDA runtime) and
// records a timing event on a stream before the first copy queued after the stream's last event,
// and another when the next event is recorded there: the sink records one (the slot's fence)
// after each Consume's copies, so each interval is one Consume's work. After the streams
// finished, Intervals() turns them into milliseconds. A test double in the tests' support
// library: production sinks record one event per slot and nothing else.
//
// Thread-safety: every method may be called from any thread, as DeviceOps requires.
#pragma once

#include "cuda/device_ops.h"

#include <cstdint>
#include <map>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

namespace shardstream::cuda {

// When one copy ran on the device, in ms since the timeline's first event.
struct CopyInterval {
  double start_ms = 0;
  double end_ms = 0;
  uint32_t stream = 0;  // streams numbered in the order their first copy came
};

// The most intervals that overlap at one moment (touching ends do not overlap).
uint32_t MaxConcurrent(std::span<const CopyInterval> intervals);

class CopyTimeline final : public DeviceOps {
 public:
  explicit CopyTimeline(DeviceOps& device) : device_(device) {}
  // Destroys the events it recorded (their streams must have finished).
  ~CopyTimeline() override;

  // Every copy's interval; call once the streams have finished.
  io::Result<std::vector<CopyInterval>> Intervals();

  io::Result<int> EnterDevice() override { return device_.EnterDevice(); }
  void LeaveDevice(int previous) noexcept override { device_.LeaveDevice(previous); }
  io::Result<StreamHandle> CreateStream() override { return device_.CreateStream(); }
  void DestroyStream(StreamHandle stream) noexcept override { device_.DestroyStream(stream); }
  io::Result<EventHandle> CreateEvent(bool timing) override { return device_.CreateEvent(timing); }
  void DestroyEvent(EventHandle event) noexcept override { device_.DestroyEvent(event); }
  io::Result<std::byte*> Allocate(size_t size_bytes) override {
    return device_.Allocate(size_bytes);
  }
  void Free(std::byte* data) noexcept override { device_.Free(data); }
  io::Status CopyAsync(std::byte* dst, const std::byte* src, size_t size_bytes,
                       StreamHandle stream) override;
  io::Status RecordEvent(EventHandle event, StreamHandle stream) override;
  io::Result<bool> QueryEvent(EventHandle event) override { return device_.QueryEvent(event); }
  io::Status SynchronizeEvent(EventHandle event) override {
    return device_.SynchronizeEvent(event);
  }
  io::Status SynchronizeStream(StreamHandle stream) override {
    return device_.SynchronizeStream(stream);
  }
  io::Result<float> ElapsedMs(EventHandle start, EventHandle end) override {
    return device_.ElapsedMs(start, end);
  }

 private:
  io::Result<EventHandle> Recorded(StreamHandle stream);

  struct Interval {
    EventHandle start = nullptr;
    EventHandle end = nullptr;
    uint32_t stream = 0;
  };

  DeviceOps& device_;
  std::mutex mutex_;
  std::vector<Interval> intervals_;           // closed ones; guarded by mutex_
  std::map<StreamHandle, uint32_t> numbers_;  // guarded by mutex_
  std::map<StreamHandle, EventHandle> open_;  // a stream's start event; guarded by mutex_
};

}  // namespace shardstream::cuda
