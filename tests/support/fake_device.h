// FakeDevice: a DeviceOps that runs on the CPU, for testing the CUDA sink where there is no GPU.
// A test double: it lives in the tests' support library, never in a production target.
//
// Each stream is a thread executing its queued operations in order, later than they were queued
// (optionally slowed down by `copy_delay`), so that code which forgot to wait for a copy reads
// stale bytes, code that reuses memory too early corrupts results, and code that waits where it
// should not shows up as time. "Device memory" is host memory; a copy is a memcpy. Events, waits
// follow the runtime's documented semantics:
//   - RecordEvent captures the stream's work so far; QueryEvent and SynchronizeEvent ask about
//     the last capture;
//   - an injected asynchronous failure is sticky, like a context error: every stream then skips
//     its remaining work, later calls fail at once, and SynchronizeStream returns the error.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include "cuda/device_ops.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace shardstream::cuda {

struct FakeDeviceOptions {
  // How long each copy takes on its stream (slept before the memcpy).
  std::chrono::microseconds copy_delay{0};
};

class FakeDevice final : public DeviceOps {
 public:
  explicit FakeDevice(FakeDeviceOptions options = {});
  // Destroy every stream, event and allocation first (live_*() say what is left).
  ~FakeDevice() override;

  io::Result<int> EnterDevice() override;
  void LeaveDevice(int previous) noexcept override;
  io::Result<StreamHandle> CreateStream() override;
  void DestroyStream(StreamHandle stream) noexcept override;
  io::Result<EventHandle> CreateEvent(bool timing) override;
  void DestroyEvent(EventHandle event) noexcept override;
  io::Result<std::byte*> Allocate(size_t size_bytes) override;
  void Free(std::byte* data) noexcept override;
  io::Status CopyAsync(std::byte* dst, const std::byte* src, size_t size_bytes,
                       StreamHandle stream) override;
  io::Status RecordEvent(EventHandle event, StreamHandle stream) override;
  io::Result<bool> QueryEvent(EventHandle event) override;
  io::Status SynchronizeEvent(EventHandle event) override;
  io::Status SynchronizeStream(StreamHandle stream) override;
  io::Result<float> ElapsedMs(EventHandle start, EventHandle end) override;

  // Queues `work` on `stream` like a kernel launch (test cast functions use it). Skipped after an
  // error. Fails when the device already failed.
  io::Status Enqueue(StreamHandle stream, std::function<void()> work);

  // Failure injection. The `n`-th CopyAsync call from now on (1-based) fails: with `at_enqueue`
  // the call itself returns the error (as cudaMemcpyAsync does for a bad argument) and nothing is
  // queued; otherwise the copy is queued and fails when the stream runs it, which puts the device
  // into the sticky error state.
  void FailCopy(uint64_t n, bool at_enqueue);
  // QueryEvent and SynchronizeEvent calls so far.
  uint64_t event_queries() const;
  uint64_t event_waits() const;

  // Operations queued or running over all streams.
  uint64_t pending() const;
  // The most copies running at the same moment, over all streams.
  uint32_t peak_concurrent_copies() const;
  uint64_t copies_done() const;
  // Live objects, for leak checks.
  uint32_t live_streams() const;
  uint32_t live_events() const;
  uint32_t live_allocations() const;
  bool failed() const;

 private:
  struct Stream;
  struct Event;
  Stream* StreamOf(StreamHandle handle) const;
  io::Status Push(StreamHandle stream, std::function<void()> op, bool is_copy = false);
  io::Status StickyError(const char* call) const;
  void SetFailed(std::string what);

  const FakeDeviceOptions options_;
  mutable std::mutex mutex_;        // guards everything below and every Event
  std::condition_variable events_;  // an event completed, or the device failed
  std::string failure_;             // the sticky error's description; empty while healthy
  uint64_t copy_calls_ = 0;
  uint64_t fail_copy_at_ = 0;  // 0: no injection
  bool fail_at_enqueue_ = false;
  uint64_t pending_ = 0;
  uint32_t running_copies_ = 0;
  uint32_t peak_running_copies_ = 0;
  uint64_t copies_done_ = 0;
  uint32_t live_streams_ = 0;
  uint32_t live_events_ = 0;
  uint32_t live_allocations_ = 0;
  uint64_t event_queries_ = 0;
  uint64_t event_waits_ = 0;
};

}  // namespace shardstream::cuda
