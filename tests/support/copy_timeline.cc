#include "tests/support/copy_timeline.h"

#include <algorithm>

namespace shardstream::cuda {

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

CopyTimeline::~CopyTimeline() {
  for (const Interval& interval : intervals_) {
    device_.DestroyEvent(interval.start);
    device_.DestroyEvent(interval.end);
  }
  for (const auto& [stream, start] : open_) device_.DestroyEvent(start);
}

io::Result<EventHandle> CopyTimeline::Recorded(StreamHandle stream) {
  SHARDSTREAM_ASSIGN_OR_RETURN(EventHandle event, device_.CreateEvent(/*timing=*/true));
  if (io::Status status = device_.RecordEvent(event, stream); !status.ok()) {
    device_.DestroyEvent(event);
    return status;
  }
  return event;
}

io::Status CopyTimeline::CopyAsync(std::byte* dst, const std::byte* src, size_t size_bytes,
                                   StreamHandle stream) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    numbers_.emplace(stream, static_cast<uint32_t>(numbers_.size()));
    if (!open_.contains(stream)) {
      SHARDSTREAM_ASSIGN_OR_RETURN(EventHandle start, Recorded(stream));
      open_[stream] = start;
    }
  }
  return device_.CopyAsync(dst, src, size_bytes, stream);
}

io::Status CopyTimeline::RecordEvent(EventHandle event, StreamHandle stream) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto open = open_.find(stream);
    if (open != open_.end()) {
      SHARDSTREAM_ASSIGN_OR_RETURN(EventHandle end, Recorded(stream));
      intervals_.push_back(Interval{open->second, end, numbers_[stream]});
      open_.erase(open);
    }
  }
  return device_.RecordEvent(event, stream);
}

io::Result<std::vector<CopyInterval>> CopyTimeline::Intervals() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<CopyInterval> out;
  if (intervals_.empty()) return out;
  const EventHandle origin = intervals_.front().start;
  for (const Interval& interval : intervals_) {
    SHARDSTREAM_ASSIGN_OR_RETURN(const float from, device_.ElapsedMs(origin, interval.start));
    SHARDSTREAM_ASSIGN_OR_RETURN(const float to, device_.ElapsedMs(origin, interval.end));
    out.push_back(CopyInterval{from, to, interval.stream});
  }
  // The first interval recorded need not be the first to run: measure from the earliest start.
  const double earliest =
      std::min_element(out.begin(), out.end(), [](const CopyInterval& a, const CopyInterval& b) {
        return a.start_ms < b.start_ms;
      })->start_ms;
  for (CopyInterval& interval : out) {
    interval.start_ms -= earliest;
    interval.end_ms -= earliest;
  }
  return out;
}

}  // namespace shardstream::cuda
