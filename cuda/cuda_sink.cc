#include "cuda/cuda_sink.h"

#include <algorithm>
#include <new>
#include <string>
#include <thread>
#include <utility>

namespace shardstream::cuda {
namespace {

// Scratch areas start on 256-byte boundaries (cudaMalloc's alignment), so a cast kernel may use
// vectorised loads on every window.
constexpr uint64_t kScratchAlignment = 256;

uint64_t AlignDown(uint64_t value, uint64_t alignment) { return value / alignment * alignment; }
uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

uint64_t ElementBytes(io::DType dtype) { return io::DTypeBits(dtype) / 8; }
bool WholeBytes(io::DType dtype) { return io::DTypeBits(dtype) % 8 == 0; }

io::Status Invalid(std::string rule, std::string message) {
  return io::Status::Error(io::StatusCode::kInvalidArgument, std::move(rule), std::move(message));
}

}  // namespace

ElementSplit SplitIntoElements(uint64_t begin, uint64_t end, uint64_t element_bytes) {
  ElementSplit split;
  if (begin >= end || element_bytes == 0) return split;
  const uint64_t first = begin / element_bytes;
  const uint64_t last = (end - 1) / element_bytes;  // the element holding the last byte
  const bool head_partial = begin % element_bytes != 0;
  const bool tail_partial = end % element_bytes != 0;
  if (first == last && (head_partial || tail_partial)) {
    split.head = ElementSplit::Partial{first, begin % element_bytes, end - begin};
    split.first_whole = split.end_whole = first;
    return split;
  }
  split.first_whole = head_partial ? first + 1 : first;
  split.end_whole = tail_partial ? last : last + 1;
  if (head_partial) {
    split.head =
        ElementSplit::Partial{first, begin % element_bytes, element_bytes - begin % element_bytes};
  }
  if (tail_partial) split.tail = ElementSplit::Partial{last, 0, end % element_bytes};
  return split;
}

uint32_t MaxConcurrent(std::span<const CopyInterval> intervals) {
  // Sweep the ends in time order; at equal times an end comes before a start (touching is not
  // overlapping).
  std::vector<std::pair<double, int>> points;
  points.reserve(intervals.size() * 2);
  for (const CopyInterval& i : intervals) {
    points.emplace_back(i.start_ms, +1);
    points.emplace_back(i.end_ms, -1);
  }
  std::sort(points.begin(), points.end());
  int open = 0, peak = 0;
  for (const auto& point : points) {
    open += point.second;
    peak = std::max(peak, open);
  }
  return static_cast<uint32_t>(peak);
}

std::vector<DeviceTarget> DeviceTargets(const io::Checkpoint& checkpoint,
                                        std::span<const engine::LoadTarget> targets) {
  std::vector<DeviceTarget> out;
  out.reserve(targets.size());
  for (const engine::LoadTarget& t : targets) {
    const io::TensorInfo& info = checkpoint.tensor(t.source);
    out.push_back(DeviceTarget{t.destination, info.size_bytes(), info.dtype, info.dtype});
  }
  return out;
}

// Work the device finishes with a host function: giving a slot back to the pool, freeing a
// straddling-element cell. Whoever claims it first does it: the host function when the stream
// reaches it, or Finish when a device error means the runtime will never call it.
struct CudaSink::Completion {
  CudaSink* sink = nullptr;
  std::function<void()> release;  // the staging slot's, or empty
  int64_t cell = -1;              // a straddling-element cell to free, or -1
  std::atomic<bool> claimed{false};
  std::atomic<bool> done{false};  // set last: after it the record may be freed
};

// One element of a cast target whose bytes come from more than one piece.
struct CudaSink::Straddle {
  uint32_t cell = 0;
  uint64_t received_bytes = 0;
  std::vector<EventHandle> events;  // one per contribution, recorded after its copy
};

struct CudaSink::StreamState {
  StreamHandle handle = nullptr;
  // Held while one Consume queues its work on this stream: the window area of the scratch is
  // reused by every cast on the stream, and stream order keeps a window's next upload behind its
  // last cast only if no other Consume's work lands in between. Held for microseconds (queueing
  // only, never waiting for the device).
  std::mutex mutex;
  std::byte* window = nullptr;  // this stream's part of the scratch
  uint64_t window_bytes = 0;
};

CudaSink::CudaSink(std::vector<DeviceTarget> targets, CudaSinkOptions options, DeviceOps& ops)
    : targets_(std::move(targets)), options_(std::move(options)), ops_(ops) {}

io::Result<std::unique_ptr<CudaSink>> CudaSink::Create(std::vector<DeviceTarget> targets,
                                                       CudaSinkOptions options, DeviceOps& ops) {
  if (options.streams == 0) return Invalid("cuda-streams", "the CUDA sink needs at least 1 stream");
  for (size_t i = 0; i < targets.size(); ++i) {
    const DeviceTarget& t = targets[i];
    if (t.source_dtype == t.destination_dtype) continue;
    const std::string what = "target " + std::to_string(i) + ": cannot cast " +
                             std::string(io::DTypeName(t.source_dtype)) + " to " +
                             std::string(io::DTypeName(t.destination_dtype));
    if (!options.cast) return Invalid("cast", what + " without a device cast function");
    if (!WholeBytes(t.source_dtype) || !WholeBytes(t.destination_dtype)) {
      return Invalid("cast", what + ": sub-byte dtypes are only loaded as they are");
    }
    if (t.source_bytes % ElementBytes(t.source_dtype) != 0) {
      return Invalid(
          "cast", what + ": " + std::to_string(t.source_bytes) + " bytes are not whole elements");
    }
  }
  std::unique_ptr<CudaSink> sink(new CudaSink(std::move(targets), std::move(options), ops));
  SHARDSTREAM_RETURN_IF_ERROR(sink->Init());
  return sink;
}

io::Status CudaSink::Init() {
  SHARDSTREAM_ASSIGN_OR_RETURN(const int previous, ops_.EnterDevice());
  struct Leave {
    DeviceOps& ops;
    int previous;
    ~Leave() { ops.LeaveDevice(previous); }
  } leave{ops_, previous};

  for (uint32_t i = 0; i < options_.streams; ++i) {
    auto state = std::make_unique<StreamState>();
    SHARDSTREAM_ASSIGN_OR_RETURN(state->handle, ops_.CreateStream());
    streams_.push_back(std::move(state));
  }
  const bool casts = std::any_of(targets_.begin(), targets_.end(), [](const DeviceTarget& t) {
    return t.source_dtype != t.destination_dtype;
  });
  if (casts) {
    const uint64_t cells =
        AlignUp(uint64_t{options_.max_straddling_elements} * kMaxElementBytes, kScratchAlignment);
    const uint64_t per_stream =
        options_.scratch_bytes > cells
            ? AlignDown((options_.scratch_bytes - cells) / options_.streams, kScratchAlignment)
            : 0;
    if (per_stream == 0) {
      return Invalid("cast-scratch",
                     "cast scratch of " + std::to_string(options_.scratch_bytes) +
                         " bytes cannot hold " + std::to_string(options_.max_straddling_elements) +
                         " straddling elements and a " + std::to_string(kScratchAlignment) +
                         "-byte window per stream for " + std::to_string(options_.streams) +
                         " streams");
    }
    const uint64_t total = cells + per_stream * options_.streams;
    SHARDSTREAM_ASSIGN_OR_RETURN(scratch_, ops_.Allocate(total));
    stats_.scratch_bytes = total;
    window_area_bytes_ = per_stream;
    for (uint32_t i = 0; i < options_.streams; ++i) {
      streams_[i]->window = scratch_ + cells + uint64_t{i} * per_stream;
      streams_[i]->window_bytes = per_stream;
    }
    free_cells_.reserve(options_.max_straddling_elements);
    for (uint32_t c = options_.max_straddling_elements; c > 0; --c) free_cells_.push_back(c - 1);
  }
  if (options_.record_timing) {
    SHARDSTREAM_ASSIGN_OR_RETURN(origin_, ops_.CreateEvent(/*timing=*/true));
    SHARDSTREAM_RETURN_IF_ERROR(ops_.RecordEvent(origin_, streams_[0]->handle));
  }
  watchdog_ = std::thread([this] { Watch(); });
  return io::Status::Ok();
}

// A device error (a copy that faulted, a lost device) is sticky and stops every stream, and the
// runtime then never calls the host functions that would give the slots back. Without them the
// pipeline's IO thread waits for a free slot forever and never gets to Finish. Nothing on the hot
// path may wait for the device to find out, so this thread does: only when host functions are
// outstanding and none completed for a whole period, it queries the streams (cudaStreamQuery,
// which does not block). A healthy load completes a slot every few hundred microseconds and never
// triggers it.
void CudaSink::Watch() {
  std::unique_lock<std::mutex> lock(watch_mutex_);
  uint64_t seen = completed_.load();
  while (!stopping_) {
    watch_wake_.wait_for(lock, kWatchdogPeriod);
    if (stopping_) break;
    const uint64_t now = completed_.load();
    if (outstanding_.load() == 0 || now != seen || device_failed_.load()) {
      seen = now;
      continue;
    }
    lock.unlock();
    CheckDevice();
    lock.lock();
  }
}

void CudaSink::CheckDevice() {
  auto entered = ops_.EnterDevice();
  if (!entered.ok()) return;
  io::Status error;
  for (auto& s : streams_) {
    auto ready = ops_.QueryStream(s->handle);
    // An error may be a stale one from an earlier call; a sticky error comes back every time.
    if (!ready.ok() && !ops_.QueryStream(s->handle).ok()) {
      error = std::move(ready).status();
      break;
    }
  }
  ops_.LeaveDevice(*entered);
  if (error.ok()) return;
  {
    std::lock_guard<std::mutex> lock(error_mutex_);
    if (device_error_.ok()) device_error_ = std::move(error);
  }
  device_failed_.store(true);
  FailOutstanding();
}

// The device will run nothing more: do every outstanding host function's job now.
void CudaSink::FailOutstanding() {
  std::lock_guard<std::mutex> lock(completions_mutex_);
  for (auto& c : completions_) Complete(c.get());
}

io::Status CudaSink::DeviceError() const {
  std::lock_guard<std::mutex> lock(error_mutex_);
  return device_error_;
}

CudaSink::~CudaSink() {
  if (watchdog_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(watch_mutex_);
      stopping_ = true;
    }
    watch_wake_.notify_all();
    watchdog_.join();
  }
  // Finish normally did all of this; a sink destroyed without Finish must still not free memory
  // the device is using, nor keep a slot.
  (void)SynchronizeAll();
  {
    std::lock_guard<std::mutex> lock(completions_mutex_);
    for (auto& c : completions_) {
      if (!c->claimed.exchange(true)) {
        if (c->release) c->release();
      }
    }
    completions_.clear();
  }
  for (EventHandle e : all_events_) ops_.DestroyEvent(e);
  for (const auto& [start, end] : timing_) {
    ops_.DestroyEvent(start);
    ops_.DestroyEvent(end);
  }
  if (origin_ != nullptr) ops_.DestroyEvent(origin_);
  if (scratch_ != nullptr) ops_.Free(scratch_);
  for (auto& s : streams_) {
    if (s->handle != nullptr) ops_.DestroyStream(s->handle);
  }
}

io::Status CudaSink::Consume(const engine::StagedSlot& slot,
                             std::span<const engine::Piece> pieces) {
  if (device_failed_.load()) {
    // The device is gone: queue nothing, give the slot back, stop the load.
    if (slot.release) slot.release();
    return DeviceError();
  }
  const uint32_t index = next_stream_.fetch_add(1, std::memory_order_relaxed) % options_.streams;
  StreamState& stream = *streams_[index];
  // The slot's release, handed to the stream behind the copies out of the slot. Allocated first:
  // if even this fails, nothing was queued and the slot can go back at once.
  std::unique_ptr<Completion> completion;
  try {
    completion = std::make_unique<Completion>();
    completion->sink = this;
    completion->release = slot.release;
  } catch (const std::bad_alloc&) {
    if (slot.release) slot.release();
    return io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                             "out of memory while queueing device copies");
  }

  io::Status status;
  auto entered = ops_.EnterDevice();
  std::lock_guard<std::mutex> lock(stream.mutex);
  if (!entered.ok()) {
    status = entered.status();
  } else {
    try {
      status = Enqueue(slot, pieces, index);
    } catch (const std::bad_alloc&) {
      status = io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                                 "out of memory while queueing device copies");
    } catch (const std::exception& e) {
      status = io::Status::Error(io::StatusCode::kInternal, "internal", e.what());
    }
  }
  // Whatever happened, the slot goes back exactly once, after whatever was queued from it.
  io::Status queued = QueueCompletion(stream.handle, std::move(completion));
  if (entered.ok()) ops_.LeaveDevice(*entered);
  return status.ok() ? queued : status;
}

io::Status CudaSink::Enqueue(const engine::StagedSlot& slot, std::span<const engine::Piece> pieces,
                             uint32_t stream_index) {
  StreamState& stream = *streams_[stream_index];
  EventHandle start = nullptr, end = nullptr;
  if (options_.record_timing) {
    SHARDSTREAM_ASSIGN_OR_RETURN(start, ops_.CreateEvent(/*timing=*/true));
    auto created = ops_.CreateEvent(/*timing=*/true);
    if (!created.ok()) {
      ops_.DestroyEvent(start);
      return created.status();
    }
    end = *created;
    std::lock_guard<std::mutex> lock(stats_mutex_);
    timing_.emplace_back(start, end);
    timing_streams_.push_back(stream_index);
  }
  if (start != nullptr) SHARDSTREAM_RETURN_IF_ERROR(ops_.RecordEvent(start, stream.handle));

  uint64_t copies = 0, bytes = 0;
  for (const engine::Piece& piece : pieces) {
    if (piece.target >= targets_.size()) {
      return io::Status::Error(io::StatusCode::kInternal, "internal",
                               "piece for target " + std::to_string(piece.target) + " of " +
                                   std::to_string(targets_.size()));
    }
    const DeviceTarget& target = targets_[piece.target];
    if (piece.target_offset + piece.length > target.source_bytes ||
        piece.chunk_offset + piece.length > slot.size_bytes) {
      return io::Status::Error(
          io::StatusCode::kInternal, "internal",
          "piece outside its target or slot (target " + std::to_string(piece.target) + ")");
    }
    if (target.source_dtype != target.destination_dtype) {
      SHARDSTREAM_RETURN_IF_ERROR(CastPiece(slot, piece, stream));
      continue;
    }
    io::Status status = ops_.CopyAsync(target.destination + piece.target_offset,
                                       slot.data + piece.chunk_offset, piece.length, stream.handle);
    if (!status.ok()) {
      return io::Status::Error(status.code(), status.rule(),
                               status.message() + " (copying " + std::to_string(piece.length) +
                                   " bytes to target " + std::to_string(piece.target) +
                                   " at byte " + std::to_string(piece.target_offset) + ")");
    }
    ++copies;
    bytes += piece.length;
  }
  if (end != nullptr) SHARDSTREAM_RETURN_IF_ERROR(ops_.RecordEvent(end, stream.handle));
  std::lock_guard<std::mutex> lock(stats_mutex_);
  stats_.copies += copies;
  stats_.copied_bytes += bytes;
  return io::Status::Ok();
}

io::Status CudaSink::CastPiece(const engine::StagedSlot& slot, const engine::Piece& piece,
                               StreamState& stream) {
  const DeviceTarget& target = targets_[piece.target];
  const uint64_t src_bytes = ElementBytes(target.source_dtype);
  const uint64_t dst_bytes = ElementBytes(target.destination_dtype);
  // The slot address of byte `b` of the target (b inside this piece).
  auto source = [&](uint64_t b) {
    return slot.data + piece.chunk_offset + (b - piece.target_offset);
  };
  auto cast = [&](const std::byte* src, uint64_t element, uint64_t count) -> io::Status {
    io::Status status =
        options_.cast(stream.handle, src, target.source_dtype,
                      target.destination + element * dst_bytes, target.destination_dtype, count);
    if (!status.ok()) {
      return io::Status::Error(status.code(), status.rule(),
                               status.message() + " (casting " + std::to_string(count) +
                                   " elements of target " + std::to_string(piece.target) + ")");
    }
    std::lock_guard<std::mutex> lock(stats_mutex_);
    ++stats_.cast_calls;
    return io::Status::Ok();
  };

  const ElementSplit split =
      SplitIntoElements(piece.target_offset, piece.target_offset + piece.length, src_bytes);
  if (split.head) {
    SHARDSTREAM_RETURN_IF_ERROR(Straddling(source(piece.target_offset), piece.target,
                                           split.head->element, split.head->offset_in_element,
                                           split.head->size_bytes, stream));
  }
  // Whole elements go up window by window. The next window's upload reuses the same scratch; the
  // stream runs it only after the previous window's cast, so nothing waits on the host.
  const uint64_t window_elements = stream.window_bytes / src_bytes;
  uint64_t copies = 0, bytes = 0;
  for (uint64_t e = split.first_whole; e < split.end_whole;) {
    const uint64_t n = std::min(window_elements, split.end_whole - e);
    SHARDSTREAM_RETURN_IF_ERROR(
        ops_.CopyAsync(stream.window, source(e * src_bytes), n * src_bytes, stream.handle));
    ++copies;
    bytes += n * src_bytes;
    SHARDSTREAM_RETURN_IF_ERROR(cast(stream.window, e, n));
    e += n;
  }
  {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    stats_.copies += copies;
    stats_.copied_bytes += bytes;
  }
  if (split.tail) {
    const uint64_t first_byte = split.tail->element * src_bytes;
    SHARDSTREAM_RETURN_IF_ERROR(Straddling(source(first_byte), piece.target, split.tail->element, 0,
                                           split.tail->size_bytes, stream));
  }
  return io::Status::Ok();
}

io::Status CudaSink::AcquireStraddleSlot(std::unique_lock<std::mutex>& lock, uint32_t* cell) {
  while (free_cells_.empty()) {
    if (cells_in_flight_ == 0) {
      return io::Status::Error(
          io::StatusCode::kResourceExhausted, "cast-scratch",
          "more than " + std::to_string(options_.max_straddling_elements) +
              " elements straddle chunk boundaries at once; raise max_straddling_elements");
    }
    // Every cell waits for a cast already queued: wait for the device to run them. A slow path
    // (open straddles are about one per staging slot, far below the default cell count), the one
    // place outside Finish that waits for streams; their host functions then have freed the
    // cells. After a device error they never will, and the error comes back instead.
    lock.unlock();
    io::Status status = SynchronizeAll();
    lock.lock();
    SHARDSTREAM_RETURN_IF_ERROR(status);
    if (free_cells_.empty() && cells_in_flight_ > 0) {
      return io::Status::Error(io::StatusCode::kInternal, "internal",
                               "straddling-element cells not freed after their streams finished");
    }
  }
  *cell = free_cells_.back();
  free_cells_.pop_back();
  return io::Status::Ok();
}

io::Result<EventHandle> CudaSink::TakeEvent() {
  if (!free_events_.empty()) {
    EventHandle e = free_events_.back();
    free_events_.pop_back();
    return e;
  }
  SHARDSTREAM_ASSIGN_OR_RETURN(EventHandle e, ops_.CreateEvent(/*timing=*/false));
  all_events_.push_back(e);
  return e;
}

io::Status CudaSink::Straddling(const std::byte* src, uint32_t target, uint64_t element,
                                uint64_t offset_in_element, uint64_t size_bytes,
                                StreamState& stream) {
  const DeviceTarget& t = targets_[target];
  const uint64_t element_bytes = ElementBytes(t.source_dtype);
  const uint64_t key = (uint64_t{target} << 40) | element;
  if (element >> 40 != 0 || target >> 24 != 0) {
    return Invalid("cast", "target " + std::to_string(target) + " is too large to cast");
  }

  // 1. Find or open the element's cell; take an event for this contribution.
  uint32_t cell = 0;
  EventHandle event = nullptr;
  {
    std::unique_lock<std::mutex> lock(straddle_mutex_);
    auto it = straddles_.find(key);
    if (it == straddles_.end()) {
      SHARDSTREAM_RETURN_IF_ERROR(AcquireStraddleSlot(lock, &cell));
      it = straddles_.emplace(key, Straddle{cell, 0, {}}).first;
      std::lock_guard<std::mutex> stats_lock(stats_mutex_);
      ++stats_.straddling_elements;
      stats_.peak_straddling =
          std::max(stats_.peak_straddling, static_cast<uint32_t>(straddles_.size()));
    }
    cell = it->second.cell;
    SHARDSTREAM_ASSIGN_OR_RETURN(event, TakeEvent());
  }
  std::byte* cell_data = scratch_ + uint64_t{cell} * kMaxElementBytes;

  // 2. Upload this piece's bytes of the element, and mark when they have landed. Every
  // contributor records an event: which one completes the element is only known in step 3.
  io::Status status = ops_.CopyAsync(cell_data + offset_in_element, src, size_bytes, stream.handle);
  if (status.ok()) status = ops_.RecordEvent(event, stream.handle);

  // 3. Count the bytes; the contributor that brings the last one casts the element.
  std::vector<EventHandle> events;
  {
    std::lock_guard<std::mutex> lock(straddle_mutex_);
    Straddle& straddle = straddles_.at(key);
    straddle.events.push_back(event);
    if (!status.ok()) return status;  // the load fails; the cell stays until the sink goes
    straddle.received_bytes += size_bytes;
    if (straddle.received_bytes < element_bytes) return io::Status::Ok();
    events = std::move(straddle.events);
    straddles_.erase(key);
    ++cells_in_flight_;
  }
  // Order the cast after every contribution's upload (on whichever stream it ran). The events
  // can be recorded again at once: a wait uses the capture made before it was queued.
  for (EventHandle e : events) {
    if (status.ok()) status = ops_.WaitEvent(stream.handle, e);
  }
  {
    std::lock_guard<std::mutex> lock(straddle_mutex_);
    free_events_.insert(free_events_.end(), events.begin(), events.end());
  }
  if (status.ok()) {
    status = options_.cast(stream.handle, cell_data, t.source_dtype,
                           t.destination + element * ElementBytes(t.destination_dtype),
                           t.destination_dtype, 1);
    if (status.ok()) {
      std::lock_guard<std::mutex> lock(stats_mutex_);
      ++stats_.cast_calls;
    }
  }
  // The cell is free again once the cast has read it.
  auto completion = std::make_unique<Completion>();
  completion->sink = this;
  completion->cell = cell;
  io::Status queued = QueueCompletion(stream.handle, std::move(completion));
  return status.ok() ? queued : status;
}

io::Status CudaSink::QueueCompletion(StreamHandle stream, std::unique_ptr<Completion> completion) {
  Completion* c = completion.get();
  {
    std::lock_guard<std::mutex> lock(completions_mutex_);
    // Forget the ones the device has finished (they come back roughly in order).
    while (!completions_.empty() && completions_.front()->done.load(std::memory_order_acquire)) {
      completions_.pop_front();
    }
    completions_.push_back(std::move(completion));
    const uint64_t now = outstanding_.fetch_add(1) + 1;
    uint64_t peak = peak_outstanding_.load(std::memory_order_relaxed);
    while (now > peak && !peak_outstanding_.compare_exchange_weak(peak, now)) {
    }
  }
  // cudaLaunchHostFunc rather than a reclaimer thread waiting on per-slot events: the release
  // then happens on the stream, exactly when its copies are done, without a thread of ours
  // polling or sleeping, and a slow stream does not hold back the slots of the others (a
  // reclaimer waiting in order would). The function only takes the pool's lock (no CUDA call, as
  // the runtime requires). The price: the runtime calls nothing after a context error, so Finish
  // releases whatever was never called.
  io::Status status = ops_.LaunchHostFunc(stream, &CudaSink::RunCompletion, c);
  if (!status.ok()) {
    // Not queued: wait for what was queued before it (the failure path only), then do its job.
    (void)ops_.SynchronizeStream(stream);
    Complete(c);
  }
  return status;
}

void CudaSink::RunCompletion(void* completion) {
  auto* c = static_cast<Completion*>(completion);
  c->sink->Complete(c);
}

void CudaSink::Complete(Completion* c) {
  if (c->claimed.exchange(true, std::memory_order_acq_rel)) return;
  outstanding_.fetch_sub(1);
  completed_.fetch_add(1);
  if (c->release) c->release();
  if (c->cell >= 0) {
    std::lock_guard<std::mutex> lock(straddle_mutex_);
    free_cells_.push_back(static_cast<uint32_t>(c->cell));
    --cells_in_flight_;
  }
  c->done.store(true, std::memory_order_release);  // last touch of *c
}

io::Status CudaSink::SynchronizeAll() {
  io::Status first;
  for (auto& s : streams_) {
    io::Status status = ops_.SynchronizeStream(s->handle);
    if (!status.ok() && first.ok()) first = std::move(status);
  }
  return first;
}

io::Status CudaSink::Finish() {
  auto entered = ops_.EnterDevice();
  io::Status status = entered.ok() ? SynchronizeAll() : entered.status();
  // With every stream finished, every host function the runtime will ever call has returned.
  // The rest (after a device error, or never queued) is done here, so every slot is back.
  std::deque<std::unique_ptr<Completion>> completions;
  {
    std::lock_guard<std::mutex> lock(completions_mutex_);
    completions.swap(completions_);
  }
  for (auto& c : completions) {
    Complete(c.get());
    // Claimed by a host function still returning: it must be done with *c before c is freed.
    while (!c->done.load(std::memory_order_acquire)) std::this_thread::yield();
  }
  if (entered.ok()) ops_.LeaveDevice(*entered);
  if (status.ok()) status = DeviceError();
  return status;
}

io::Result<bool> CudaSink::StreamsIdle() const {
  bool idle = true;
  for (const auto& s : streams_) {
    SHARDSTREAM_ASSIGN_OR_RETURN(const bool ready, ops_.QueryStream(s->handle));
    idle = idle && ready;
  }
  return idle;
}

CudaSinkStats CudaSink::stats() const {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  CudaSinkStats stats = stats_;
  stats.peak_in_flight = static_cast<uint32_t>(peak_outstanding_.load());
  return stats;
}

io::Result<std::vector<CopyInterval>> CudaSink::CopyIntervals() const {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  std::vector<CopyInterval> out;
  if (origin_ == nullptr) return out;
  for (size_t i = 0; i < timing_.size(); ++i) {
    SHARDSTREAM_ASSIGN_OR_RETURN(const float start, ops_.ElapsedMs(origin_, timing_[i].first));
    SHARDSTREAM_ASSIGN_OR_RETURN(const float end, ops_.ElapsedMs(origin_, timing_[i].second));
    out.push_back(CopyInterval{start, end, timing_streams_[i]});
  }
  return out;
}

}  // namespace shardstream::cuda
