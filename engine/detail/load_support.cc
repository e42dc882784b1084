#include "engine/detail/load_support.h"

#include <algorithm>

namespace shardstream::engine::detail {
namespace {

constexpr auto kProgressInterval = std::chrono::milliseconds(50);

}  // namespace

io::Status Cancelled() {
  return io::Status::Error(io::StatusCode::kCancelled, "cancelled",
                           "load cancelled by the progress callback");
}

void FirstError::Record(io::Status status) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (status_.ok()) status_ = std::move(status);
  stop_.store(true, std::memory_order_relaxed);
}

io::Status FirstError::Take() {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::move(status_);
}

bool ProgressReporter::Add(uint64_t bytes) {
  const uint64_t done = done_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  if (!fn_) return true;
  std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
  if (!lock.owns_lock()) return !cancelled_.load(std::memory_order_relaxed);
  const auto now = io::Clock::now();
  if (done < total_ && now - last_ < kProgressInterval) return !cancelled_;
  last_ = now;
  if (!fn_(Progress{done, total_})) cancelled_ = true;
  return !cancelled_;
}

bool ProgressReporter::Final() {
  if (!fn_) return true;
  std::lock_guard<std::mutex> lock(mutex_);
  if (!fn_(Progress{done_.load(), total_})) cancelled_ = true;
  return !cancelled_;
}

std::string TensorAt(const io::Checkpoint& checkpoint, uint32_t file, uint64_t file_offset) {
  const io::Header& header = checkpoint.files[file].header;
  if (file_offset < header.data_offset()) return {};
  const uint64_t rel = file_offset - header.data_offset();
  // Tensors are sorted by (begin, end) and contiguous: the last one beginning at or before `rel`
  // (skipping empty ones, which hold no byte) is the candidate. Binary search: headers may list
  // millions of tensors.
  auto it = std::upper_bound(header.tensors.begin(), header.tensors.end(), rel,
                             [](uint64_t r, const io::TensorInfo& t) { return r < t.begin; });
  while (it != header.tensors.begin()) {
    --it;
    if (rel >= it->begin && rel < it->end) return it->name;
    if (it->end <= rel) break;
  }
  return {};
}

void LocateReadError(io::Status& status, const io::Checkpoint& checkpoint, uint32_t file,
                     uint64_t read_offset) {
  const uint64_t offset = status.offset().value_or(read_offset);
  status.WithPath(checkpoint.files[file].path.string())
      .WithTensor(TensorAt(checkpoint, file, offset))
      .WithOffset(offset);
}

io::Result<std::unique_ptr<io::ReadBackend>> MakeReadBackend(
    io::BackendKind kind, const io::FileSet& files, const io::UringOptions& uring,
    const BackendFactory& factory, bool fall_back_to_pread, std::string* fallback) {
  if (factory) {
    std::unique_ptr<io::ReadBackend> made = factory(files);
    if (made == nullptr) {
      return io::Status::Error(io::StatusCode::kInternal, "internal", "no read backend");
    }
    return made;
  }
  auto made = io::MakeBackendOrError(kind, files, &uring);
  if (!made.ok() && kind == io::BackendKind::kUring && fall_back_to_pread) {
    // io_uring refused (old kernel, seccomp): pread does the same job, only with less overlap.
    *fallback = made.status().ToString();
    made = io::MakeBackendOrError(io::BackendKind::kPread, files);
  }
  return made;
}

void AppendFallback(std::string* report, const std::string& reason) {
  if (reason.empty() || report->find(reason) != std::string::npos) return;
  *report = report->empty() ? reason : *report + "; " + reason;
}

}  // namespace shardstream::engine::detail
