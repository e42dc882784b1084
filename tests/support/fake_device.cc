#include "tests/support/fake_device.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <new>
#include <set>
#include <thread>
#include <utility>

namespace shardstream::cuda {

using Clock = std::chrono::steady_clock;

// A stream: a thread that runs queued operations in order. The queue has its own lock so that a
// running operation (which may take the device lock) never holds it.
struct FakeDevice::Stream {
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<std::function<void()>> queue;  // guarded by mutex
  bool busy = false;                        // guarded by mutex: an operation is running
  bool stopping = false;                    // guarded by mutex
  std::thread thread;
};

// Guarded by FakeDevice::mutex_. `recorded` counts captures; `completed` maps each capture whose
// stream reached it to when. Captures complete independently: an event recorded again on a fast
// stream must not release a wait for its earlier capture on a slow one.
struct FakeDevice::Event {
  uint64_t recorded = 0;
  std::map<uint64_t, Clock::time_point> completed;
  bool timing = false;
  bool Done(uint64_t capture) const { return capture == 0 || completed.count(capture) != 0; }
};

namespace {

// Every fake object the process made, so that a handle that is not one is caught (as the runtime
// would return cudaErrorInvalidResourceHandle) instead of being dereferenced.
std::mutex g_objects_mutex;
std::set<const void*>& Objects() {
  static auto* objects = new std::set<const void*>;
  return *objects;
}
void Track(const void* p) {
  std::lock_guard<std::mutex> lock(g_objects_mutex);
  Objects().insert(p);
}
void Untrack(const void* p) {
  std::lock_guard<std::mutex> lock(g_objects_mutex);
  Objects().erase(p);
}
bool Tracked(const void* p) {
  std::lock_guard<std::mutex> lock(g_objects_mutex);
  return Objects().count(p) != 0;
}

io::Status FakeError(const char* call, std::string what) {
  return io::Status::Error(io::StatusCode::kIoError, "cuda",
                           std::string(call) + " failed: " + what + " (fake device)");
}

}  // namespace

FakeDevice::FakeDevice(FakeDeviceOptions options) : options_(options) {}

FakeDevice::~FakeDevice() = default;

io::Result<int> FakeDevice::EnterDevice() { return 0; }
void FakeDevice::LeaveDevice(int) noexcept {}

io::Status FakeDevice::StickyError(const char* call) const {
  // Caller holds mutex_.
  return FakeError(call, "cudaErrorLaunchFailure: " + failure_);
}

void FakeDevice::SetFailed(std::string what) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (failure_.empty()) failure_ = std::move(what);
  }
  events_.notify_all();  // waits on events that will never complete give up
}

io::Result<StreamHandle> FakeDevice::CreateStream() {
  auto* stream = new Stream;
  stream->thread = std::thread([this, stream] {
    std::unique_lock<std::mutex> lock(stream->mutex);
    for (;;) {
      stream->changed.wait(lock, [&] { return stream->stopping || !stream->queue.empty(); });
      if (stream->queue.empty()) return;
      std::function<void()> op = std::move(stream->queue.front());
      stream->queue.pop_front();
      stream->busy = true;
      lock.unlock();
      op();
      {
        std::lock_guard<std::mutex> device_lock(mutex_);
        --pending_;
      }
      lock.lock();
      stream->busy = false;
      stream->changed.notify_all();
    }
  });
  Track(stream);
  std::lock_guard<std::mutex> lock(mutex_);
  ++live_streams_;
  return reinterpret_cast<StreamHandle>(stream);
}

void FakeDevice::DestroyStream(StreamHandle handle) noexcept {
  Stream* stream = StreamOf(handle);
  if (stream == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(stream->mutex);
    stream->stopping = true;  // the thread drains the queue first
  }
  stream->changed.notify_all();
  stream->thread.join();
  Untrack(stream);
  delete stream;
  std::lock_guard<std::mutex> lock(mutex_);
  --live_streams_;
}

FakeDevice::Stream* FakeDevice::StreamOf(StreamHandle handle) const {
  auto* stream = reinterpret_cast<Stream*>(handle);
  return Tracked(stream) ? stream : nullptr;
}

io::Result<EventHandle> FakeDevice::CreateEvent(bool timing) {
  auto* event = new Event;
  event->timing = timing;
  Track(event);
  std::lock_guard<std::mutex> lock(mutex_);
  ++live_events_;
  return reinterpret_cast<EventHandle>(event);
}

void FakeDevice::DestroyEvent(EventHandle handle) noexcept {
  auto* event = reinterpret_cast<Event*>(handle);
  if (!Tracked(event)) return;
  Untrack(event);
  std::lock_guard<std::mutex> lock(mutex_);
  delete event;
  --live_events_;
}

io::Result<std::byte*> FakeDevice::Allocate(size_t size_bytes) {
  auto* data = new (std::nothrow) std::byte[std::max<size_t>(size_bytes, 1)];
  if (data == nullptr) return FakeError("cudaMalloc", "cudaErrorMemoryAllocation");
  std::lock_guard<std::mutex> lock(mutex_);
  ++live_allocations_;
  return data;
}

void FakeDevice::Free(std::byte* data) noexcept {
  if (data == nullptr) return;
  delete[] data;
  std::lock_guard<std::mutex> lock(mutex_);
  --live_allocations_;
}

io::Status FakeDevice::Push(StreamHandle handle, std::function<void()> op, bool is_copy) {
  Stream* stream = StreamOf(handle);
  if (stream == nullptr) {
    return FakeError("stream operation", "cudaErrorInvalidResourceHandle");
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!failure_.empty()) return StickyError(is_copy ? "cudaMemcpyAsync" : "stream operation");
    ++pending_;
  }
  {
    std::lock_guard<std::mutex> lock(stream->mutex);
    stream->queue.push_back(std::move(op));
  }
  stream->changed.notify_all();
  return io::Status::Ok();
}

io::Status FakeDevice::CopyAsync(std::byte* dst, const std::byte* src, size_t size_bytes,
                                 StreamHandle stream) {
  bool fail_now = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const uint64_t call = ++copy_calls_;
    if (fail_copy_at_ != 0 && call == fail_copy_at_) {
      if (fail_at_enqueue_) {
        return FakeError("cudaMemcpyAsync", "cudaErrorInvalidValue: injected failure");
      }
      fail_now = true;
    }
  }
  return Push(
      stream,
      [this, dst, src, size_bytes, fail_now] {
        {
          std::lock_guard<std::mutex> lock(mutex_);
          if (!failure_.empty()) return;  // a dead context runs nothing
          ++running_copies_;
          peak_running_copies_ = std::max(peak_running_copies_, running_copies_);
        }
        if (options_.copy_delay.count() > 0) std::this_thread::sleep_for(options_.copy_delay);
        if (!fail_now) std::memcpy(dst, src, size_bytes);
        {
          std::lock_guard<std::mutex> lock(mutex_);
          --running_copies_;
          ++copies_done_;
        }
        if (fail_now) SetFailed("injected asynchronous copy failure");
      },
      /*is_copy=*/true);
}

io::Status FakeDevice::RecordEvent(EventHandle handle, StreamHandle stream) {
  auto* event = reinterpret_cast<Event*>(handle);
  if (!Tracked(event)) return FakeError("cudaEventRecord", "cudaErrorInvalidResourceHandle");
  uint64_t capture = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    capture = ++event->recorded;
  }
  return Push(stream, [this, event, capture] {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!failure_.empty()) return;
      event->completed.emplace(capture, Clock::now());
    }
    events_.notify_all();
  });
}

io::Result<bool> FakeDevice::QueryEvent(EventHandle handle) {
  auto* event = reinterpret_cast<Event*>(handle);
  if (!Tracked(event)) return FakeError("cudaEventQuery", "cudaErrorInvalidResourceHandle");
  std::lock_guard<std::mutex> lock(mutex_);
  ++event_queries_;
  if (!failure_.empty()) return StickyError("cudaEventQuery");
  return event->Done(event->recorded);  // the last capture, as the runtime asks
}

io::Status FakeDevice::SynchronizeEvent(EventHandle handle) {
  auto* event = reinterpret_cast<Event*>(handle);
  if (!Tracked(event)) return FakeError("cudaEventSynchronize", "cudaErrorInvalidResourceHandle");
  std::unique_lock<std::mutex> lock(mutex_);
  ++event_waits_;
  const uint64_t capture = event->recorded;
  events_.wait(lock, [&] { return !failure_.empty() || event->Done(capture); });
  if (!failure_.empty()) return StickyError("cudaEventSynchronize");
  return io::Status::Ok();
}

io::Status FakeDevice::Enqueue(StreamHandle stream, std::function<void()> work) {
  return Push(stream, [this, work = std::move(work)] {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!failure_.empty()) return;
    }
    work();
  });
}

io::Status FakeDevice::SynchronizeStream(StreamHandle handle) {
  Stream* stream = StreamOf(handle);
  if (stream == nullptr) {
    return FakeError("cudaStreamSynchronize", "cudaErrorInvalidResourceHandle");
  }
  {
    std::unique_lock<std::mutex> lock(stream->mutex);
    stream->changed.wait(lock, [&] { return stream->queue.empty() && !stream->busy; });
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (!failure_.empty()) return StickyError("cudaStreamSynchronize");
  return io::Status::Ok();
}

io::Result<float> FakeDevice::ElapsedMs(EventHandle start_handle, EventHandle end_handle) {
  auto* start = reinterpret_cast<Event*>(start_handle);
  auto* end = reinterpret_cast<Event*>(end_handle);
  if (!Tracked(start) || !Tracked(end)) {
    return FakeError("cudaEventElapsedTime", "cudaErrorInvalidResourceHandle");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (!start->timing || !end->timing) {
    return FakeError("cudaEventElapsedTime", "cudaErrorInvalidResourceHandle: timing disabled");
  }
  // The last capture of each, as the runtime measures.
  if (start->recorded == 0 || end->recorded == 0 || !start->Done(start->recorded) ||
      !end->Done(end->recorded)) {
    return FakeError("cudaEventElapsedTime", "cudaErrorNotReady");
  }
  return std::chrono::duration<float, std::milli>(end->completed.at(end->recorded) -
                                                  start->completed.at(start->recorded))
      .count();
}

void FakeDevice::FailCopy(uint64_t n, bool at_enqueue) {
  std::lock_guard<std::mutex> lock(mutex_);
  fail_copy_at_ = n == 0 ? 0 : copy_calls_ + n;
  fail_at_enqueue_ = at_enqueue;
}

uint64_t FakeDevice::pending() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pending_;
}
uint32_t FakeDevice::peak_concurrent_copies() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return peak_running_copies_;
}
uint64_t FakeDevice::copies_done() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return copies_done_;
}
uint32_t FakeDevice::live_streams() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return live_streams_;
}
uint32_t FakeDevice::live_events() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return live_events_;
}
uint64_t FakeDevice::event_queries() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return event_queries_;
}
uint64_t FakeDevice::event_waits() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return event_waits_;
}

uint32_t FakeDevice::live_allocations() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return live_allocations_;
}
bool FakeDevice::failed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return !failure_.empty();
}

}  // namespace shardstream::cuda
