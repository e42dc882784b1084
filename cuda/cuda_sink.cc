#include "cuda/cuda_sink.h"

#include <algorithm>
#include <new>
#include <shared_mutex>
#include <string>
#include <utility>

namespace shardstream::cuda {
namespace {

// Scratch windows start on 256-byte boundaries (cudaMalloc's alignment), so a cast kernel may use
// vectorised loads on every window.
constexpr uint64_t kScratchAlignment = 256;

uint64_t AlignDown(uint64_t value, uint64_t alignment) { return value / alignment * alignment; }

uint64_t ElementBytes(io::DType dtype) { return io::DTypeBits(dtype) / 8; }
bool WholeBytes(io::DType dtype) { return io::DTypeBits(dtype) % 8 == 0; }

io::Status Invalid(std::string rule, std::string message) {
  return io::Status::Error(io::StatusCode::kInvalidArgument, std::move(rule), std::move(message));
}

io::Status Internal(std::string message) {
  return io::Status::Error(io::StatusCode::kInternal, "internal", std::move(message));
}

}  // namespace

// The sink's slot events, shared with the fences of the slots parked behind them: those fences
// may outlive the sink in a pool kept across loads. Close (the sink's destructor, after its
// streams finished) destroys every event; a fence asked afterwards is complete without asking the
// device (which may be gone with its DeviceOps).
namespace detail {

class SlotEvents {
 public:
  explicit SlotEvents(DeviceOps& ops) : ops_(ops) {}

  // An event for the next slot: a recycled one, or a new one. Never waits for the device.
  io::Result<EventHandle> Take() {
    std::lock_guard<std::mutex> lock(mutex_);
    EventHandle event = nullptr;
    if (!free_.empty()) {
      event = free_.back();
      free_.pop_back();
    } else {
      SHARDSTREAM_ASSIGN_OR_RETURN(event, ops_.CreateEvent(/*timing=*/false));
      all_.push_back(event);
    }
    peak_ = std::max(peak_, ++outstanding_);
    return event;
  }
  // Back from a fence the pool is done with (or from a record that failed).
  void Give(EventHandle event) {
    std::shared_lock<std::shared_mutex> alive(alive_);
    if (closed_) return;
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(event);
    --outstanding_;
  }
  io::Result<bool> Ready(EventHandle event) {
    std::shared_lock<std::shared_mutex> alive(alive_);
    if (closed_) return true;
    return ops_.QueryEvent(event);
  }
  io::Status Wait(EventHandle event) {
    std::shared_lock<std::shared_mutex> alive(alive_);
    if (closed_) return io::Status::Ok();
    return ops_.SynchronizeEvent(event);
  }
  void Close() {
    std::unique_lock<std::shared_mutex> alive(alive_);
    closed_ = true;
    std::lock_guard<std::mutex> lock(mutex_);
    for (EventHandle event : all_) ops_.DestroyEvent(event);
    all_.clear();
    free_.clear();
  }
  uint32_t peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    return peak_;
  }

 private:
  DeviceOps& ops_;
  // Shared while a fence asks the device about its event, exclusive for Close: a slow
  // cudaEventSynchronize in one fence never blocks Take on the hot path, which takes mutex_ only.
  std::shared_mutex alive_;
  bool closed_ = false;  // guarded by alive_
  std::mutex mutex_;
  std::vector<EventHandle> free_;  // guarded by mutex_
  std::vector<EventHandle> all_;   // guarded by mutex_
  uint32_t outstanding_ = 0;       // guarded by mutex_
  uint32_t peak_ = 0;              // guarded by mutex_
};

// Where a sink's fences report their chunk complete: the pipeline's callback until the sink's
// Finish (or destructor) disarms it. The lock makes disarming wait for a report in progress, so
// that no report reaches a pipeline that has returned (fences may outlive it in a shared pool).
class ChunkNotifier {
 public:
  void Set(engine::ChunkDoneFn done) {
    std::lock_guard<std::mutex> lock(mutex_);
    done_ = std::move(done);
  }
  void Notify(uint32_t chunk) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (done_) done_(chunk);
  }

 private:
  std::mutex mutex_;
  engine::ChunkDoneFn done_;
};

}  // namespace detail

namespace {

// A parked slot's fence: the event recorded after the slot's copies. Reports the slot's chunk
// (when its copies were all queued) the first time the event is seen complete.
class EventFence final : public engine::SlotFence {
 public:
  EventFence(std::shared_ptr<detail::SlotEvents> events, EventHandle event,
             std::shared_ptr<detail::ChunkNotifier> notifier, std::optional<uint32_t> chunk)
      : events_(std::move(events)), event_(event), notifier_(std::move(notifier)), chunk_(chunk) {}
  ~EventFence() override { events_->Give(event_); }
  io::Result<bool> Ready() override {
    io::Result<bool> ready = events_->Ready(event_);
    if (ready.ok() && *ready) Report();
    return ready;
  }
  io::Status Wait() override {
    io::Status status = events_->Wait(event_);
    if (status.ok()) Report();
    return status;
  }

 private:
  void Report() {
    if (chunk_) notifier_->Notify(*std::exchange(chunk_, std::nullopt));
  }

  std::shared_ptr<detail::SlotEvents> events_;
  EventHandle event_;
  std::shared_ptr<detail::ChunkNotifier> notifier_;
  std::optional<uint32_t> chunk_;
};

}  // namespace

struct CudaSink::StreamState {
  StreamHandle handle = nullptr;
  // Held while one Consume queues its work on this stream: the window of the scratch is reused by
  // every cast on the stream, and stream order keeps a window's next upload behind its last cast
  // only if no other Consume's work lands in between. Held for microseconds (queueing only, never
  // waiting for the device).
  std::mutex mutex;
  std::byte* window = nullptr;  // this stream's part of the scratch
  uint64_t window_bytes = 0;
};

CudaSink::CudaSink(std::vector<engine::Destination> targets, CudaSinkOptions options,
                   DeviceOps& ops)
    : targets_(std::move(targets)),
      options_(std::move(options)),
      ops_(ops),
      events_(std::make_shared<detail::SlotEvents>(ops)),
      chunk_done_(std::make_shared<detail::ChunkNotifier>()) {}

io::Result<std::unique_ptr<CudaSink>> CudaSink::Create(std::vector<engine::Destination> targets,
                                                       CudaSinkOptions options, DeviceOps& ops) {
  if (options.streams == 0) return Invalid("cuda-streams", "the CUDA sink needs at least 1 stream");
  for (size_t i = 0; i < targets.size(); ++i) {
    const engine::Destination& t = targets[i];
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
  const bool casts = std::any_of(targets_.begin(), targets_.end(),
                                 [](const engine::Destination& t) { return t.casts(); });
  if (casts) {
    const uint64_t per_stream =
        AlignDown(options_.scratch_bytes / options_.streams, kScratchAlignment);
    if (per_stream == 0) {
      return Invalid("cast-scratch", "cast scratch of " + std::to_string(options_.scratch_bytes) +
                                         " bytes cannot hold a " +
                                         std::to_string(kScratchAlignment) +
                                         "-byte window per stream for " +
                                         std::to_string(options_.streams) + " streams");
    }
    const uint64_t total = per_stream * options_.streams;
    SHARDSTREAM_ASSIGN_OR_RETURN(scratch_, ops_.Allocate(total));
    stats_.scratch_bytes = total;
    for (uint32_t i = 0; i < options_.streams; ++i) {
      streams_[i]->window = scratch_ + uint64_t{i} * per_stream;
      streams_[i]->window_bytes = per_stream;
    }
  }
  return io::Status::Ok();
}

CudaSink::~CudaSink() {
  // Finish normally did this; a sink destroyed without Finish must still not free memory the
  // device is using. Afterwards every event has completed (or the device failed and will run
  // nothing more), so fences left in a pool may stop asking the device.
  (void)SynchronizeAll();
  chunk_done_->Set({});
  events_->Close();
  if (scratch_ != nullptr) ops_.Free(scratch_);
  for (auto& s : streams_) {
    if (s->handle != nullptr) ops_.DestroyStream(s->handle);
  }
}

io::Status CudaSink::Consume(engine::StagedSlot slot, std::span<const engine::Piece> pieces) {
  const uint32_t index = next_stream_.fetch_add(1, std::memory_order_relaxed) % options_.streams;
  StreamState& stream = *streams_[index];
  io::Status status;
  auto entered = ops_.EnterDevice();
  if (!entered.ok()) return entered.status();  // nothing queued: the lease frees the slot
  {
    std::lock_guard<std::mutex> lock(stream.mutex);
    try {
      status = Enqueue(slot, pieces, index);
    } catch (const std::bad_alloc&) {
      status = io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                                 "out of memory while queueing device copies");
    } catch (const std::exception& e) {
      status = Internal(e.what());
    }
    // Whatever happened, some copies out of the slot may be queued: it is free only after them.
    // The chunk is complete after them only if they were all queued.
    const uint32_t chunk = slot.chunk;
    Park(std::move(slot.lease), stream,
         status.ok() ? std::optional<uint32_t>(chunk) : std::nullopt);
  }
  ops_.LeaveDevice(*entered);
  return status;
}

void CudaSink::Park(engine::SlotLease lease, StreamState& stream, std::optional<uint32_t> chunk) {
  if (!lease) return;
  io::Result<EventHandle> event = events_->Take();
  io::Status recorded = event.ok() ? ops_.RecordEvent(*event, stream.handle) : event.status();
  std::unique_ptr<engine::SlotFence> fence;
  if (recorded.ok()) {
    try {
      fence = std::make_unique<EventFence>(events_, *event, chunk_done_, chunk);
    } catch (const std::bad_alloc&) {
      recorded = io::Status::Error(io::StatusCode::kResourceExhausted, "memory", "no fence");
    }
  }
  if (fence != nullptr) return lease.ReleaseAfter(std::move(fence));
  // No event behind the copies (the failure path only): wait for the stream before the slot is
  // free; its error, if any, comes back from Finish.
  if (event.ok()) events_->Give(*event);
  if (ops_.SynchronizeStream(stream.handle).ok() && chunk) chunk_done_->Notify(*chunk);
}

io::Status CudaSink::Enqueue(const engine::StagedSlot& slot, std::span<const engine::Piece> pieces,
                             uint32_t stream_index) {
  StreamState& stream = *streams_[stream_index];

  uint64_t copies = 0, bytes = 0;
  for (const engine::Piece& piece : pieces) {
    if (piece.target >= targets_.size()) {
      return Internal("piece for target " + std::to_string(piece.target) + " of " +
                      std::to_string(targets_.size()));
    }
    const engine::Destination& target = targets_[piece.target];
    if (piece.target_offset + piece.length > target.source_bytes ||
        piece.chunk_offset + piece.length > slot.size_bytes) {
      return Internal("piece outside its target or slot (target " + std::to_string(piece.target) +
                      ")");
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
  std::lock_guard<std::mutex> lock(stats_mutex_);
  stats_.copies += copies;
  stats_.copied_bytes += bytes;
  return io::Status::Ok();
}

io::Status CudaSink::CastPiece(const engine::StagedSlot& slot, const engine::Piece& piece,
                               StreamState& stream) {
  const engine::Destination& target = targets_[piece.target];
  const uint64_t src_bytes = ElementBytes(target.source_dtype);
  const uint64_t dst_bytes = ElementBytes(target.destination_dtype);
  if (piece.target_offset % src_bytes != 0 || piece.length % src_bytes != 0) {
    // The plan cuts cast targets on elements (engine/plan.h): a load that did not
    // ask for it is a bug, not a file to cast.
    return Internal("piece of cast target " + std::to_string(piece.target) + " at byte " +
                    std::to_string(piece.target_offset) + " is not whole " +
                    std::to_string(src_bytes) + "-byte elements");
  }
  // Window by window: the next window's upload reuses the same scratch; the stream runs it only
  // after the previous window's cast, so nothing waits on the host.
  const uint64_t window_elements = stream.window_bytes / src_bytes;
  const std::byte* source = slot.data + piece.chunk_offset;
  const uint64_t first = piece.target_offset / src_bytes;
  const uint64_t count = piece.length / src_bytes;
  uint64_t copies = 0, casts = 0;
  for (uint64_t e = 0; e < count;) {
    const uint64_t n = std::min(window_elements, count - e);
    SHARDSTREAM_RETURN_IF_ERROR(
        ops_.CopyAsync(stream.window, source + e * src_bytes, n * src_bytes, stream.handle));
    ++copies;
    io::Status status =
        options_.cast(stream.handle, stream.window, target.source_dtype,
                      target.destination + (first + e) * dst_bytes, target.destination_dtype, n);
    if (!status.ok()) {
      return io::Status::Error(status.code(), status.rule(),
                               status.message() + " (casting " + std::to_string(n) +
                                   " elements of target " + std::to_string(piece.target) + ")");
    }
    ++casts;
    e += n;
  }
  std::lock_guard<std::mutex> lock(stats_mutex_);
  stats_.copies += copies;
  stats_.copied_bytes += piece.length;
  stats_.cast_calls += casts;
  return io::Status::Ok();
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
  // Reports stop here whatever happens: the pipeline reports the rest itself on success.
  struct Disarm {
    detail::ChunkNotifier& notifier;
    ~Disarm() { notifier.Set({}); }
  } disarm{*chunk_done_};
  SHARDSTREAM_ASSIGN_OR_RETURN(const int previous, ops_.EnterDevice());
  io::Status status = SynchronizeAll();
  ops_.LeaveDevice(previous);
  return status;
}

void CudaSink::SetChunkDone(engine::ChunkDoneFn done) { chunk_done_->Set(std::move(done)); }

CudaSinkStats CudaSink::stats() const {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  CudaSinkStats stats = stats_;
  stats.peak_in_flight = events_->peak();
  return stats;
}

}  // namespace shardstream::cuda
