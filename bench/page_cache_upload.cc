#include "bench/page_cache_upload.h"

#include "engine/plan.h"
#include "io/read_backend.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace shardstream::bench {

using cuda::DeviceOps;
using cuda::StreamHandle;
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kPageBytes = 4096;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

uint64_t RoundUp(uint64_t value, uint64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// A read-only shared mapping of one file (the configuration cuda_ceiling measured pinning on).
class SharedMapping {
 public:
  static io::Result<std::unique_ptr<SharedMapping>> Map(int fd, uint64_t size_bytes,
                                                        const std::string& path) {
    void* data = ::mmap(nullptr, size_bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (data == MAP_FAILED) return io::Status::FromErrno(errno, "mmap").WithPath(path);
    return std::unique_ptr<SharedMapping>(
        new SharedMapping(static_cast<const std::byte*>(data), size_bytes));
  }
  ~SharedMapping() { ::munmap(const_cast<std::byte*>(data_), size_bytes_); }
  SharedMapping(const SharedMapping&) = delete;
  SharedMapping& operator=(const SharedMapping&) = delete;
  const std::byte* data() const { return data_; }

 private:
  SharedMapping(const std::byte* data, uint64_t size_bytes)
      : data_(data), size_bytes_(size_bytes) {}
  const std::byte* data_;
  uint64_t size_bytes_;
};

// What became of window i. The unpinning thread handles windows in order and waits while one is
// kPending; every window leaves kPending, also after a failure (the pinning threads then mark the
// rest kSkipped), so it never waits forever.
enum class WindowState : uint8_t { kPending, kQueued, kPinnedNotQueued, kSkipped };

// One window: the pinned range and the tensor bytes in it.
struct Window {
  const std::byte* begin = nullptr;
  uint64_t pinned_bytes = 0;
  uint64_t payload_bytes = 0;
  uint32_t chunk = 0;
};

class Upload {
 public:
  Upload(const io::Checkpoint& checkpoint, std::span<const engine::Target> targets,
         const engine::ReadPlan& plan, std::vector<Window> windows,
         std::vector<StreamHandle> streams, const PageCacheUploadOptions& options, DeviceOps& ops,
         HostPinning& pin)
      : checkpoint_(checkpoint),
        targets_(targets),
        plan_(plan),
        windows_(std::move(windows)),
        streams_(std::move(streams)),
        options_(options),
        ops_(ops),
        pin_(pin),
        state_(windows_.size(), WindowState::kPending) {}

  // Runs the pinning threads (the caller is one of them) and the unpinning thread to the end.
  io::Status Run(PageCacheUploadStats& stats) {
    std::thread unpinner([this] { Unpin(); });
    std::vector<std::thread> pinners;
    for (uint32_t t = 1; t < std::max<uint32_t>(1, options_.pin_threads); ++t) {
      pinners.emplace_back([this] { Pin(); });
    }
    Pin();
    for (std::thread& t : pinners) t.join();
    unpinner.join();
    stats.pin_seconds = pin_seconds_.load();
    stats.unpin_seconds = unpin_seconds_;
    stats.copies = copies_.load();
    stats.peak_pinned_windows = peak_pinned_;
    return std::move(error_);
  }

 private:
  void Record(io::Status status) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_.ok()) error_ = std::move(status);
    failed_ = true;
    changed_.notify_all();
  }

  void SetState(size_t i, WindowState state) {
    std::lock_guard<std::mutex> lock(mutex_);
    state_[i] = state;
    if (state != WindowState::kSkipped) {
      ++pinned_now_;
      peak_pinned_ = std::max(peak_pinned_, pinned_now_);
    }
    changed_.notify_all();
  }

  std::string TensorName(const engine::Piece& piece) const {
    return checkpoint_.tensor(targets_[piece.target].source).name;
  }

  void Pin() {
    io::Result<int> previous = ops_.EnterDevice();
    const uint64_t k = streams_.size();
    for (;;) {
      const size_t i = next_.fetch_add(1);
      if (i >= windows_.size()) break;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] { return failed_ || i < unpinned_ + k; });
        if (failed_ || !previous.ok()) {
          state_[i] = WindowState::kSkipped;
          changed_.notify_all();
          if (!previous.ok() && error_.ok()) {
            error_ = previous.status();
            failed_ = true;
          }
          continue;
        }
      }
      const Window& w = windows_[i];
      const engine::Chunk& chunk = plan_.chunks[w.chunk];
      const auto pieces = plan_.PiecesOf(chunk);
      const auto start = Clock::now();
      io::Status pinned = pin_.RegisterHostReadOnly(w.begin, w.pinned_bytes);
      pin_seconds_.fetch_add(Seconds(start));
      if (!pinned.ok()) {
        std::string where = "bytes [" + std::to_string(chunk.file_offset) + ", " +
                            std::to_string(chunk.file_offset + w.pinned_bytes) + ")";
        io::Status error = io::Status::Error(io::StatusCode::kUnsupported, "pin-page-cache",
                                             "cannot pin " + where +
                                                 " of the page cache in place: " + pinned.message())
                               .WithPath(checkpoint_.files[chunk.file].path.string());
        if (!pieces.empty()) error.WithTensor(TensorName(pieces.front()));
        Record(std::move(error));
        SetState(i, WindowState::kSkipped);
        continue;
      }
      StreamHandle stream = streams_[i % k];
      io::Status queued = io::Status::Ok();
      for (const engine::Piece& piece : pieces) {
        queued = ops_.CopyAsync(targets_[piece.target].destination + piece.target_offset,
                                w.begin + piece.chunk_offset, piece.length, stream);
        if (!queued.ok()) {
          queued.WithTensor(TensorName(piece));
          break;
        }
        copies_.fetch_add(1);
      }
      const bool all_queued = queued.ok();  // before the move: a moved-from Status reads as OK
      if (!all_queued) Record(std::move(queued));
      SetState(i, all_queued ? WindowState::kQueued : WindowState::kPinnedNotQueued);
    }
    if (previous.ok()) ops_.LeaveDevice(*previous);
  }

  void Unpin() {
    io::Result<int> previous = ops_.EnterDevice();
    if (!previous.ok()) Record(previous.status());
    uint64_t done_bytes = 0;
    auto last_report = Clock::now();
    for (size_t i = 0; i < windows_.size(); ++i) {
      WindowState state;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] { return state_[i] != WindowState::kPending; });
        state = state_[i];
      }
      if (state != WindowState::kSkipped) {
        // Every copy out of the window is on this stream, and nothing of a later window is yet
        // (window i + K waits for this one to be unpinned).
        io::Status finished = ops_.SynchronizeStream(streams_[i % streams_.size()]);
        const bool copied = finished.ok();  // before the move: a moved-from Status reads as OK
        if (!copied) Record(std::move(finished));
        const auto start = Clock::now();
        // After a device error the context is gone and this may fail; nothing is left to undo.
        (void)pin_.UnregisterHost(windows_[i].begin);
        unpin_seconds_ += Seconds(start);
        if (state == WindowState::kQueued && copied) done_bytes += windows_[i].payload_bytes;
      }
      bool failed = false;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        unpinned_ = i + 1;
        if (state != WindowState::kSkipped) --pinned_now_;
        failed = failed_;
        changed_.notify_all();
      }
      const bool last = i + 1 == windows_.size();
      if (options_.progress && !failed &&
          (last || Clock::now() - last_report >= std::chrono::milliseconds(50))) {
        last_report = Clock::now();
        if (!options_.progress(Progress{done_bytes, plan_.payload_bytes})) {
          Record(io::Status::Error(io::StatusCode::kCancelled, "cancelled",
                                   "load cancelled by the progress callback"));
        }
      }
    }
    if (previous.ok()) ops_.LeaveDevice(*previous);
  }

  const io::Checkpoint& checkpoint_;
  std::span<const engine::Target> targets_;
  const engine::ReadPlan& plan_;
  const std::vector<Window> windows_;
  const std::vector<StreamHandle> streams_;
  const PageCacheUploadOptions& options_;
  DeviceOps& ops_;
  HostPinning& pin_;

  std::atomic<size_t> next_{0};
  std::atomic<double> pin_seconds_{0};
  std::atomic<uint64_t> copies_{0};
  double unpin_seconds_ = 0;  // the unpinning thread's

  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<WindowState> state_;  // guarded
  size_t unpinned_ = 0;             // guarded: windows [0, unpinned_) are done
  uint32_t pinned_now_ = 0;         // guarded
  uint32_t peak_pinned_ = 0;        // guarded
  bool failed_ = false;             // guarded
  io::Status error_;                // guarded
};

}  // namespace

io::Result<PageCacheUploadStats> UploadFromPageCache(const io::Checkpoint& checkpoint,
                                                     std::span<const engine::Target> targets,
                                                     const PageCacheUploadOptions& options,
                                                     DeviceOps& ops, HostPinning& pin) {
  const auto start = Clock::now();
  if (options.window_bytes < kPageBytes || options.windows_in_flight == 0) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "pin-page-cache",
                             "pinning windows must be at least one page, and at least one must "
                             "be in flight");
  }
  engine::PlanOptions plan_options;
  plan_options.chunk_bytes = RoundUp(options.window_bytes, kPageBytes);
  plan_options.alignment_bytes = kPageBytes;  // windows start on page boundaries of the mapping
  SHARDSTREAM_ASSIGN_OR_RETURN(engine::ReadPlan plan,
                               engine::BuildReadPlan(checkpoint, targets, plan_options));

  SHARDSTREAM_ASSIGN_OR_RETURN(io::FileSet files, io::FileSet::Open(checkpoint));
  std::vector<std::unique_ptr<SharedMapping>> maps(files.size());
  std::vector<Window> windows;
  windows.reserve(plan.chunks.size());
  PageCacheUploadStats stats;
  for (uint32_t c = 0; c < plan.chunks.size(); ++c) {
    const engine::Chunk& chunk = plan.chunks[c];
    if (!maps[chunk.file]) {
      SHARDSTREAM_ASSIGN_OR_RETURN(
          maps[chunk.file], SharedMapping::Map(files.fd(chunk.file), files.size_bytes(chunk.file),
                                               files.path(chunk.file).string()));
    }
    // The mapping ends with the file's last page; the plan's alignment padding may go past it.
    const uint64_t mapped = RoundUp(files.size_bytes(chunk.file), kPageBytes);
    Window w;
    w.begin = maps[chunk.file]->data() + chunk.file_offset;
    w.pinned_bytes = std::min(chunk.length, mapped - chunk.file_offset);
    for (const engine::Piece& piece : plan.PiecesOf(chunk)) w.payload_bytes += piece.length;
    w.chunk = c;
    stats.pinned_bytes += w.pinned_bytes;
    stats.payload_bytes += w.payload_bytes;
    windows.push_back(w);
  }
  stats.windows = windows.size();

  // K streams: window i's copies go on stream i % K, which its unpinning waits for.
  const uint32_t k = std::max<uint32_t>(
      1, std::min<uint32_t>(options.windows_in_flight,
                            static_cast<uint32_t>(std::max<size_t>(windows.size(), 1))));
  SHARDSTREAM_ASSIGN_OR_RETURN(int previous, ops.EnterDevice());
  std::vector<StreamHandle> streams;
  io::Status status = io::Status::Ok();
  for (uint32_t s = 0; s < k && status.ok(); ++s) {
    io::Result<StreamHandle> stream = ops.CreateStream();
    if (stream.ok()) {
      streams.push_back(*stream);
    } else {
      status = stream.status();
    }
  }
  if (status.ok() && !windows.empty()) {
    Upload upload(checkpoint, targets, plan, std::move(windows), streams, options, ops, pin);
    status = upload.Run(stats);
  }
  for (StreamHandle stream : streams) {
    (void)ops.SynchronizeStream(stream);  // already idle: Run waited for every window
    ops.DestroyStream(stream);
  }
  ops.LeaveDevice(previous);
  SHARDSTREAM_RETURN_IF_ERROR(status);

  // Pinned pages keep their bytes whatever happens to the file; a file that changed size while
  // loading fails the load instead of passing off what was pinned as its contents.
  for (size_t f = 0; f < files.size(); ++f) {
    struct stat st {};
    if (::fstat(files.fd(f), &st) != 0) {
      return io::Status::FromErrno(errno, "fstat").WithPath(files.path(f).string());
    }
    if (static_cast<uint64_t>(st.st_size) != files.size_bytes(f)) {
      return io::Status::Error(io::StatusCode::kIoError, "file-changed",
                               "the file changed size while loading (" +
                                   std::to_string(files.size_bytes(f)) + " bytes, now " +
                                   std::to_string(st.st_size) + ")")
          .WithPath(files.path(f).string());
    }
  }
  stats.seconds = Seconds(start);
  return stats;
}

}  // namespace shardstream::bench
