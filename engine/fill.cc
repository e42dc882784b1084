#include "engine/fill.h"

#include "engine/detail/load_support.h"
#include "engine/host_memory.h"
#include "engine/sink.h"
#include "engine/staging.h"
#include "io/residency.h"

#include <algorithm>
#include <exception>
#include <map>
#include <memory>
#include <set>
#include <string>

namespace shardstream {

std::optional<IoMode> ParseIoMode(std::string_view name) {
  if (name == "auto") return IoMode::kAuto;
  if (name == "pread") return IoMode::kPread;
  if (name == "mmap") return IoMode::kMmap;
  if (name == "uring" || name == "io_uring") return IoMode::kUring;
  return std::nullopt;
}

std::string_view IoModeName(IoMode mode) {
  switch (mode) {
    case IoMode::kAuto:
      return "auto";
    case IoMode::kPread:
      return "pread";
    case IoMode::kMmap:
      return "mmap";
    case IoMode::kUring:
      return "uring";
  }
  return "auto";
}

std::optional<DirectIo> ParseDirectIo(std::string_view name) {
  if (name == "off") return DirectIo::kOff;
  if (name == "on") return DirectIo::kOn;
  if (name == "auto") return DirectIo::kAuto;
  return std::nullopt;
}

}  // namespace shardstream

namespace shardstream::engine {
namespace {

using detail::Clock;
using detail::SecondsSince;

// Casts split a tensor into pieces of at most this many source bytes, so that several threads
// convert one large tensor together.
constexpr uint64_t kCastPieceBytes = 4ull << 20;
constexpr uint64_t kScratchAlignBytes = 64;

io::Status TargetError(std::string rule, std::string message, const io::Checkpoint& checkpoint,
                       const FillTarget& target) {
  return io::Status::Error(io::StatusCode::kInvalidArgument, std::move(rule), std::move(message))
      .WithTensor(checkpoint.tensor(target.source).name)
      .WithPath(checkpoint.files[target.source.file].path.string());
}

bool Casts(const io::Checkpoint& checkpoint, const FillTarget& target) {
  return checkpoint.tensor(target.source).dtype != target.dtype;
}

// The whole tensor as one run when a target has none.
std::vector<Run> RunsOf(const io::Checkpoint& checkpoint, const FillTarget& target) {
  if (!target.runs.empty()) return target.runs;
  return {Run{0, 0, checkpoint.tensor(target.source).size_bytes()}};
}

io::Status Validate(const io::Checkpoint& checkpoint, std::span<const FillTarget> targets,
                    const FillSetup& setup) {
  for (size_t i = 0; i < targets.size(); ++i) {
    const FillTarget& target = targets[i];
    const io::TensorLocation& loc = target.source;
    if (loc.file >= checkpoint.files.size() ||
        loc.index >= checkpoint.files[loc.file].header.tensors.size()) {
      return io::Status::Error(io::StatusCode::kInvalidArgument, "plan-target",
                               "target " + std::to_string(i) + " points outside the checkpoint");
    }
    const io::TensorInfo& t = checkpoint.tensor(loc);
    if (target.destination == nullptr && t.size_bytes() > 0) {
      return TargetError("target", "no destination", checkpoint, target);
    }
    if (target.device != kHostDevice && setup.devices == nullptr) {
      return TargetError("device",
                         "the destination is on cuda:" + std::to_string(target.device) +
                             " and this load has no device uploader",
                         checkpoint, target);
    }
    std::vector<Run> runs = target.runs;
    std::sort(runs.begin(), runs.end(),
              [](const Run& a, const Run& b) { return a.source_offset < b.source_offset; });
    for (size_t r = 0; r < runs.size(); ++r) {
      if (runs[r].source_offset > t.size_bytes() ||
          runs[r].length > t.size_bytes() - runs[r].source_offset) {
        return TargetError("slice", "a run lies outside the tensor's bytes", checkpoint, target);
      }
      if (r > 0 && runs[r - 1].source_offset + runs[r - 1].length > runs[r].source_offset) {
        return TargetError("slice", "two runs read the same bytes", checkpoint, target);
      }
    }
    if (!Casts(checkpoint, target)) continue;
    const uint32_t from_bits = io::DTypeBits(t.dtype);
    const uint32_t to_bits = io::DTypeBits(target.dtype);
    if (from_bits < 8 || to_bits < 8) {
      return TargetError("cast",
                         std::string("cannot convert ") + std::string(io::DTypeName(t.dtype)) +
                             " to " + std::string(io::DTypeName(target.dtype)) +
                             ": sub-byte values are packed data",
                         checkpoint, target);
    }
    for (const Run& run : runs) {
      if (run.source_offset % (from_bits / 8) != 0 || run.length % (from_bits / 8) != 0) {
        return TargetError("cast", "a run does not hold whole elements", checkpoint, target);
      }
    }
    if (target.device == kHostDevice && !setup.cast) {
      return TargetError("cast", "a dtype change needs a cast function", checkpoint, target);
    }
  }
  return io::Status::Ok();
}

// Progress of one phase of a fill, reported as part of the whole.
ProgressFn PhaseProgress(const ProgressFn& fn, uint64_t base, uint64_t total) {
  if (!fn) return {};
  return [&fn, base, total](const Progress& p) { return fn(Progress{base + p.done_bytes, total}); };
}

void AddSeconds(double* field, double seconds) { *field = *field < 0 ? seconds : *field + seconds; }

void RecordStaged(const PipelineStats& stats, const PipelineOptions& pipeline, ReadReport& report) {
  report.direct = report.direct || stats.direct;
  report.io = stats.backend;
  detail::AppendFallback(&report.fallback, stats.fallback);
  report.chunk_bytes = std::max(report.chunk_bytes, pipeline.chunk_bytes);
  report.threads = static_cast<int>(stats.readers) + stats.copy_threads;
  report.peak_in_flight = std::max(report.peak_in_flight, stats.peak_in_flight);
  report.sqpoll = report.sqpoll || stats.sqpoll;
  AddSeconds(&report.io_busy_seconds, stats.io_busy_seconds);
  AddSeconds(&report.copy_busy_seconds, stats.copy_busy_seconds);
  AddSeconds(&report.overlap_seconds, stats.overlap_seconds);
  for (const std::string& note : stats.notes) {
    if (std::find(report.notes.begin(), report.notes.end(), note) == report.notes.end()) {
      report.notes.push_back(note);
    }
  }
}

// One fill: the setup, the direct-IO decision and the running progress over its phases.
class FillRun {
 public:
  FillRun(const io::Checkpoint& checkpoint, const FillSetup& setup, ReadReport& report)
      : checkpoint_(checkpoint), setup_(setup), report_(report) {}

  io::Status Execute(std::span<const FillTarget> targets);

 private:
  // `chunk_cap` (0: none) bounds the chunk size, for staged reads into cast scratch: a slot of
  // the staging pool (bounded by staging_bytes too) must hold one chunk however the pieces of a
  // batch coalesce.
  PipelineOptions Staged(uint64_t chunk_cap = 0) const {
    PipelineOptions pipeline = StagedOptions(setup_.read, direct_);
    if (chunk_cap != 0) pipeline.chunk_bytes = std::min(pipeline.chunk_bytes, chunk_cap);
    pipeline.make_backend = setup_.make_backend;
    pipeline.executor = setup_.executor;
    return pipeline;
  }
  io::Status ReadHost(std::span<const LoadTarget> targets, bool staged, uint64_t bytes,
                      uint64_t chunk_cap = 0);
  io::Status CastHost(std::span<const FillTarget> targets);
  io::Status Upload(int device, std::span<const FillTarget> targets, uint64_t bytes);

  const io::Checkpoint& checkpoint_;
  const FillSetup& setup_;
  ReadReport& report_;
  bool direct_ = false;
  uint64_t total_ = 0;
  uint64_t done_ = 0;  // bytes of the phases finished
};

// Host destinations in their own dtype: straight into place, or staged (O_DIRECT, or targets
// whose runs share a source tensor, which one scattered read cannot fill).
io::Status FillRun::ReadHost(std::span<const LoadTarget> targets, bool staged, uint64_t bytes,
                             uint64_t chunk_cap) {
  if (targets.empty()) return io::Status::Ok();
  const ProgressFn progress = PhaseProgress(setup_.read.progress, done_, total_);
  if (staged || direct_) {
    CpuSink sink(targets);
    PipelineOptions pipeline = Staged(chunk_cap);
    pipeline.progress = progress;
    io::Result<PipelineStats> stats = RunStagedPipeline(checkpoint_, targets, sink, pipeline);
    if (!stats.ok()) return stats.status();
    RecordStaged(*stats, pipeline, report_);
  } else {
    FillOptions fill;
    fill.backend = ResolveBackend(setup_.read.io, /*direct=*/false);
    fill.make_backend = setup_.make_backend;
    fill.threads = setup_.read.threads;
    fill.chunk_bytes = setup_.read.chunk_bytes != 0 ? setup_.read.chunk_bytes : kDefaultChunkBytes;
    fill.queue_depth = setup_.read.queue_depth;
    fill.sqpoll = setup_.read.sqpoll;
    fill.progress = progress;
    fill.executor = setup_.executor;
    io::Result<FillStats> stats = FillTargets(checkpoint_, targets, fill);
    if (!stats.ok()) return stats.status();
    report_.io = std::string(io::BackendName(fill.backend));
    if (!stats->fallback.empty()) {
      detail::AppendFallback(&report_.fallback, stats->fallback);
      report_.io = std::string(io::BackendName(io::BackendKind::kPread));
    }
    report_.chunk_bytes = std::max(report_.chunk_bytes, fill.chunk_bytes);
    report_.threads = stats->threads;
    report_.peak_in_flight = std::max(report_.peak_in_flight, stats->peak_in_flight);
  }
  done_ += bytes;
  return io::Status::Ok();
}

// Host destinations in another dtype: batches of raw bytes read into bounded scratch, then the
// cast function converts each piece into place, pieces spread over the workers.
io::Status FillRun::CastHost(std::span<const FillTarget> targets) {
  struct Item {
    size_t target;
    Run run;  // source bytes → destination offset (destination dtype bytes)
  };
  // Scratch: the staging bound, or less when the casts need less; never below one element.
  uint64_t total = 0;
  uint64_t largest_element = 1;
  for (const FillTarget& target : targets) {
    largest_element = std::max<uint64_t>(
        largest_element, io::DTypeBits(checkpoint_.tensor(target.source).dtype) / 8);
    for (const Run& run : RunsOf(checkpoint_, target)) total += run.length;
  }
  if (total == 0) return io::Status::Ok();
  const uint64_t scratch_bytes =
      std::max(std::min(setup_.read.staging_bytes, total + kScratchAlignBytes),
               largest_element + kScratchAlignBytes);
  std::vector<Item> items;
  for (size_t i = 0; i < targets.size(); ++i) {
    const uint64_t element = io::DTypeBits(checkpoint_.tensor(targets[i].source).dtype) / 8;
    const uint64_t piece =
        std::max<uint64_t>(std::min(kCastPieceBytes, scratch_bytes - kScratchAlignBytes) / element,
                           1) *
        element;
    const uint64_t to_element = io::DTypeBits(targets[i].dtype) / 8;
    for (const Run& run : RunsOf(checkpoint_, targets[i])) {
      for (uint64_t at = 0; at < run.length; at += piece) {
        const uint64_t length = std::min(piece, run.length - at);
        items.push_back(Item{i, Run{run.source_offset + at,
                                    run.destination_offset + at / element * to_element, length}});
      }
    }
  }
  SHARDSTREAM_ASSIGN_OR_RETURN(std::byte * scratch, AllocateHostBuffer(scratch_bytes));
  struct Free {
    std::byte* data;
    uint64_t bytes;
    ~Free() { FreeHostBuffer(data, bytes); }
  } free_scratch{scratch, scratch_bytes};
  report_.cast_scratch_bytes = std::max(report_.cast_scratch_bytes, scratch_bytes);
  const uint64_t chunk_cap = std::max<uint64_t>(
      kStagingAlignment, (setup_.read.staging_bytes / 2) & ~(kStagingAlignment - 1));

  for (size_t first = 0; first < items.size();) {
    // One batch: items laid out in scratch; one load target per fill target, its runs pointing
    // into scratch.
    std::vector<uint64_t> offsets;
    std::vector<std::vector<Run>> runs;
    std::vector<size_t> owners;
    uint64_t used = 0;
    uint64_t bytes = 0;
    size_t end = first;
    for (; end < items.size(); ++end) {
      const uint64_t offset =
          (used + kScratchAlignBytes - 1) / kScratchAlignBytes * kScratchAlignBytes;
      if (end > first && offset + items[end].run.length > scratch_bytes) break;
      if (owners.empty() || owners.back() != items[end].target) {
        owners.push_back(items[end].target);
        runs.emplace_back();
      }
      runs.back().push_back(Run{items[end].run.source_offset, offset, items[end].run.length});
      offsets.push_back(offset);
      used = offset + items[end].run.length;
      bytes += items[end].run.length;
    }
    std::vector<LoadTarget> batch;
    for (size_t k = 0; k < owners.size(); ++k) {
      batch.push_back(LoadTarget{targets[owners[k]].source, scratch, runs[k]});
    }
    SHARDSTREAM_RETURN_IF_ERROR(ReadHost(batch, /*staged=*/false, bytes, chunk_cap));

    detail::FirstError error;
    std::unique_ptr<TaskGroup> casts = MakeTaskGroup(
        setup_.read.threads > 0 ? setup_.read.threads : HardwareConcurrency(setup_.executor),
        setup_.executor);
    for (size_t k = first; k < end; ++k) {
      casts->Run([&, k] {
        const Item& item = items[k];
        const FillTarget& target = targets[item.target];
        const io::DType from = checkpoint_.tensor(target.source).dtype;
        io::Status status;
        try {
          status = setup_.cast(scratch + offsets[k - first], from,
                               target.destination + item.run.destination_offset, target.dtype,
                               item.run.length / (io::DTypeBits(from) / 8));
        } catch (const std::exception& e) {
          status = io::Status::Error(io::StatusCode::kInternal, "cast", e.what());
        }
        if (!status.ok()) {
          error.Record(std::move(status)
                           .WithTensor(checkpoint_.tensor(target.source).name)
                           .WithPath(checkpoint_.files[target.source.file].path.string()));
        }
      });
    }
    casts->Wait();
    SHARDSTREAM_RETURN_IF_ERROR(error.Take());
    first = end;
  }
  return io::Status::Ok();
}

io::Status FillRun::Upload(int device, std::span<const FillTarget> targets, uint64_t bytes) {
  PipelineOptions pipeline = Staged();
  pipeline.progress = PhaseProgress(setup_.read.progress, done_, total_);
  const auto start = Clock::now();
  io::Result<PipelineStats> stats =
      setup_.devices->Upload(checkpoint_, device, targets, pipeline, report_);
  if (!stats.ok()) return stats.status();
  RecordStaged(*stats, pipeline, report_);
  report_.stages.emplace_back("upload", SecondsSince(start));
  done_ += bytes;
  return io::Status::Ok();
}

io::Status FillRun::Execute(std::span<const FillTarget> targets) {
  SHARDSTREAM_RETURN_IF_ERROR(Validate(checkpoint_, targets, setup_));
  SHARDSTREAM_ASSIGN_OR_RETURN(direct_, ChooseDirect(checkpoint_, setup_.read, report_));

  // Route: host in place (scattered reads), host in place staged (runs sharing a source), host
  // casts, and one group per device.
  std::map<std::pair<uint32_t, uint32_t>, std::pair<int, bool>> sources;  // count, any runs
  for (const FillTarget& t : targets) {
    if (t.device != kHostDevice || Casts(checkpoint_, t)) continue;
    auto& [count, runs] = sources[{t.source.file, t.source.index}];
    ++count;
    runs = runs || !t.runs.empty();
  }
  std::vector<LoadTarget> in_place, shared;
  uint64_t in_place_bytes = 0, shared_bytes = 0;
  std::vector<FillTarget> casts;
  std::map<int, std::pair<std::vector<FillTarget>, uint64_t>> devices;
  auto bytes_of = [&](const FillTarget& t) {
    if (t.runs.empty()) return checkpoint_.tensor(t.source).size_bytes();
    uint64_t sum = 0;
    for (const Run& run : t.runs) sum += run.length;
    return sum;
  };
  for (const FillTarget& t : targets) {
    const uint64_t bytes = bytes_of(t);
    total_ += bytes;
    if (t.device != kHostDevice) {
      devices[t.device].first.push_back(t);
      devices[t.device].second += bytes;
    } else if (Casts(checkpoint_, t)) {
      casts.push_back(t);
    } else {
      const auto& [count, runs] = sources[{t.source.file, t.source.index}];
      const bool staged = count > 1 && runs;
      (staged ? shared : in_place).push_back(LoadTarget{t.source, t.destination, t.runs});
      (staged ? shared_bytes : in_place_bytes) += bytes;
    }
  }

  auto stage_start = Clock::now();
  SHARDSTREAM_RETURN_IF_ERROR(ReadHost(in_place, /*staged=*/false, in_place_bytes));
  SHARDSTREAM_RETURN_IF_ERROR(ReadHost(shared, /*staged=*/true, shared_bytes));
  if (!in_place.empty() || !shared.empty())
    report_.stages.emplace_back("read", SecondsSince(stage_start));
  if (!casts.empty()) {
    stage_start = Clock::now();
    SHARDSTREAM_RETURN_IF_ERROR(CastHost(casts));
    report_.stages.emplace_back("cast", SecondsSince(stage_start));
  }
  for (auto& [device, group] : devices) {
    SHARDSTREAM_RETURN_IF_ERROR(Upload(device, group.first, group.second));
  }
  if (setup_.read.progress && total_ == 0 && !setup_.read.progress(Progress{0, 0})) {
    return detail::Cancelled();
  }
  return io::Status::Ok();
}

}  // namespace

io::BackendKind ResolveBackend(IoMode mode, bool direct) {
  switch (mode) {
    case IoMode::kPread:
      return io::BackendKind::kPread;
    case IoMode::kMmap:
      return io::BackendKind::kMmap;
    case IoMode::kUring:
      return io::BackendKind::kUring;
    case IoMode::kAuto:
      break;
  }
  return direct ? io::BackendKind::kUring : io::BackendKind::kPread;
}

io::Result<bool> ChooseDirect(const io::Checkpoint& checkpoint, const ReadOptions& read,
                              ReadReport& report) {
  const bool mmap = read.io == IoMode::kMmap;
  bool direct = read.direct == DirectIo::kOn;
  if (read.direct == DirectIo::kAuto && !mmap) {
    SHARDSTREAM_ASSIGN_OR_RETURN(report.resident_fraction,
                                 io::CheckpointResidentFraction(checkpoint));
    direct = report.resident_fraction < 0.5;
  }
  if (direct && mmap) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "direct",
                             "O_DIRECT reads need --io pread or uring, not mmap");
  }
  return direct;
}

PipelineOptions StagedOptions(const ReadOptions& read, bool direct) {
  PipelineOptions pipeline;
  pipeline.backend = ResolveBackend(read.io, direct);
  pipeline.fall_back_to_pread = true;
  pipeline.direct = direct;
  if (read.chunk_bytes != 0) pipeline.chunk_bytes = read.chunk_bytes;
  pipeline.staging_bytes = read.staging_bytes;
  pipeline.queue_depth = read.queue_depth;
  pipeline.sqpoll = read.sqpoll;
  pipeline.copy_threads = read.threads;
  // Buffered reads are copies made by the reading threads: one reader per worker thread. O_DIRECT
  // takes the pipeline's own count (DefaultReaders).
  if (!direct) pipeline.readers = static_cast<uint32_t>(std::max(read.threads, 0));
  pipeline.progress = read.progress;
  return pipeline;
}

io::Status Fill(const io::Checkpoint& checkpoint, std::span<const FillTarget> targets,
                const FillSetup& setup, ReadReport* report) {
  ReadReport local;
  return FillRun(checkpoint, setup, report != nullptr ? *report : local).Execute(targets);
}

}  // namespace shardstream::engine
