#include "engine/fill.h"

#include "engine/cast.h"
#include "engine/detail/load_support.h"
#include "engine/sink.h"
#include "engine/staging.h"
#include "io/residency.h"
#include "io/stopwatch.h"

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

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

io::Status TargetError(std::string rule, std::string message, const io::Checkpoint& checkpoint,
                       const Target& target) {
  return io::Status::Error(io::StatusCode::kInvalidArgument, std::move(rule), std::move(message))
      .WithTensor(checkpoint.tensor(target.source).name)
      .WithPath(checkpoint.files[target.source.file].path.string());
}

io::Status ValidateRuns(const io::Checkpoint& checkpoint, const Target& target) {
  const io::TensorInfo& t = checkpoint.tensor(target.source);
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
  if (!Casts(checkpoint, target)) return io::Status::Ok();
  const uint64_t from = io::DTypeBits(t.dtype) / 8;
  const uint64_t to = io::DTypeBits(DestinationDType(checkpoint, target)) / 8;
  for (const Run& run : runs) {
    if (run.source_offset % from != 0 || run.length % from != 0 ||
        run.destination_offset % to != 0) {
      return TargetError("cast", "a run does not hold whole elements", checkpoint, target);
    }
  }
  return io::Status::Ok();
}

io::Status Validate(const io::Checkpoint& checkpoint, std::span<const Target> targets,
                    const FillSetup& setup) {
  for (size_t i = 0; i < targets.size(); ++i) {
    const Target& target = targets[i];
    const io::TensorLocation& loc = target.source;
    if (loc.file >= checkpoint.files.size() ||
        loc.index >= checkpoint.files[loc.file].header.tensors.size()) {
      return io::Status::Error(io::StatusCode::kInvalidArgument, "plan-target",
                               "target " + std::to_string(i) + " points outside the checkpoint");
    }
    if (setup.discard) continue;
    if (target.destination == nullptr && checkpoint.tensor(loc).size_bytes() > 0) {
      return TargetError("target", "no destination", checkpoint, target);
    }
    if (target.device != kHostDevice && setup.devices == nullptr) {
      return TargetError("device",
                         "the destination is on cuda:" + std::to_string(target.device) +
                             " and this load has no device uploader",
                         checkpoint, target);
    }
    const std::string refusal =
        CastRefusal(checkpoint.tensor(loc).dtype, DestinationDType(checkpoint, target));
    if (!refusal.empty()) return TargetError("cast", refusal, checkpoint, target);
    SHARDSTREAM_RETURN_IF_ERROR(ValidateRuns(checkpoint, target));
  }
  return io::Status::Ok();
}

uint64_t PayloadOf(const io::Checkpoint& checkpoint, const Target& target) {
  if (target.runs.empty()) return checkpoint.tensor(target.source).size_bytes();
  uint64_t sum = 0;
  for (const Run& run : target.runs) sum += run.length;
  return sum;
}

// Progress of one part of a fill, reported as part of the whole.
ProgressFn PartProgress(const ProgressFn& fn, uint64_t base, uint64_t total) {
  if (!fn) return {};
  return [&fn, base, total](const Progress& p) { return fn(Progress{base + p.done_bytes, total}); };
}

void AddSeconds(double* field, double seconds) { *field = *field < 0 ? seconds : *field + seconds; }

// What a run of the pipeline did, into the report (several runs add up).
void Record(const PipelineStats& stats, const PipelineOptions& pipeline, ReadReport& report) {
  report.direct = report.direct || stats.direct;
  report.io = stats.backend;
  detail::AppendFallback(&report.fallback, stats.fallback);
  report.chunk_bytes = std::max(report.chunk_bytes, pipeline.chunk_bytes != 0 ? pipeline.chunk_bytes
                                                    : pipeline.staged ? kDefaultStagedChunkBytes
                                                                      : kDefaultChunkBytes);
  report.readers = std::max(report.readers, stats.readers);
  report.copy_threads = std::max(report.copy_threads, stats.copy_threads);
  report.threads = std::max(report.threads, static_cast<int>(stats.readers) + stats.copy_threads);
  report.peak_in_flight = std::max(report.peak_in_flight, stats.peak_in_flight);
  report.sqpoll = report.sqpoll || stats.sqpoll;
  report.registered_buffer_bytes =
      std::max(report.registered_buffer_bytes, stats.registered_buffer_bytes);
  report.payload_bytes += stats.payload_bytes;
  report.read_bytes += stats.read_bytes;
  if (stats.slots > 0) {
    AddSeconds(&report.io_busy_seconds, stats.io_busy_seconds);
    AddSeconds(&report.copy_busy_seconds, stats.copy_busy_seconds);
    AddSeconds(&report.overlap_seconds, stats.overlap_seconds);
    report.staging_slots = std::max(report.staging_slots, stats.slots);
    report.slot_bytes = std::max(report.slot_bytes, stats.slot_bytes);
    report.peak_slots_in_use = std::max(report.peak_slots_in_use, stats.peak_slots_in_use);
  }
  for (const std::string& note : stats.notes) {
    if (std::find(report.notes.begin(), report.notes.end(), note) == report.notes.end()) {
      report.notes.push_back(note);
    }
  }
}

// The targets of one pipeline run and the bytes they read.
struct Group {
  std::vector<Target> targets;
  std::vector<size_t> index;  // each target's index in the fill's targets
  uint64_t bytes = 0;
  bool casts = false;
};

// One fill: the setup, the direct-IO decision and the running progress over its groups.
class FillRun {
 public:
  FillRun(const io::Checkpoint& checkpoint, const FillSetup& setup, ReadReport& report)
      : checkpoint_(checkpoint), setup_(setup), report_(report) {}

  io::Status Execute(std::span<const Target> targets);

 private:
  PipelineOptions Options(bool staged, const Group& group) const {
    PipelineOptions pipeline = PipelineOptionsFor(setup_.read, staged, direct_);
    pipeline.make_backend = setup_.make_backend;
    pipeline.executor = setup_.executor;
    pipeline.progress = PartProgress(setup_.read.progress, done_, total_);
    if (setup_.target_done) {
      // The group's indices back to the caller's.
      pipeline.target_done = [this, &group](std::span<const size_t> done) {
        std::vector<size_t> mapped(done.size());
        for (size_t i = 0; i < done.size(); ++i) mapped[i] = group.index[done[i]];
        setup_.target_done(mapped);
      };
    }
    return pipeline;
  }
  io::Status Host(const Group& group, bool staged);
  io::Status Upload(int device, const Group& group);

  const io::Checkpoint& checkpoint_;
  const FillSetup& setup_;
  ReadReport& report_;
  bool direct_ = false;
  uint64_t total_ = 0;
  uint64_t done_ = 0;  // bytes of the groups finished
};

io::Status FillRun::Host(const Group& group, bool staged) {
  if (group.targets.empty()) return io::Status::Ok();
  PipelineOptions pipeline = Options(staged, group);
  if (group.casts) {
    // A cast converts out of the staging slots, the bound on its scratch: slots of at most half
    // the staging memory, so that a read and a conversion can overlap.
    const uint64_t cap = std::max<uint64_t>(
        kStagingAlignment, (setup_.read.staging_bytes / 2) & ~(kStagingAlignment - 1));
    pipeline.chunk_bytes =
        std::min(pipeline.chunk_bytes != 0 ? pipeline.chunk_bytes : kDefaultStagedChunkBytes, cap);
  }
  DiscardSink discard;
  CpuSink copy(DestinationsOf(checkpoint_, group.targets));
  Sink* sink = setup_.discard ? static_cast<Sink*>(&discard) : &copy;
  io::Result<PipelineStats> stats = RunPipeline(checkpoint_, group.targets, sink, pipeline);
  if (!stats.ok()) return stats.status();
  Record(*stats, pipeline, report_);
  if (group.casts) {
    report_.cast_scratch_bytes =
        std::max(report_.cast_scratch_bytes, uint64_t{stats->slots} * stats->slot_bytes);
  }
  done_ += group.bytes;
  return io::Status::Ok();
}

io::Status FillRun::Upload(int device, const Group& group) {
  PipelineOptions pipeline = Options(/*staged=*/true, group);
  const auto start = io::Clock::now();
  io::Result<PipelineStats> stats =
      setup_.devices->Upload(checkpoint_, device, group.targets, pipeline, report_);
  if (!stats.ok()) return stats.status();
  Record(*stats, pipeline, report_);
  report_.stages.emplace_back("upload", io::SecondsSince(start));
  done_ += group.bytes;
  return io::Status::Ok();
}

io::Status FillRun::Execute(std::span<const Target> targets) {
  SHARDSTREAM_RETURN_IF_ERROR(Validate(checkpoint_, targets, setup_));
  SHARDSTREAM_ASSIGN_OR_RETURN(direct_, ChooseDirect(checkpoint_, setup_.read, report_));

  // Route: host in place, host staged, and one group per device. A source wanted by several host
  // targets is read in place when they all want it whole (the pipeline reads it once and copies
  // it); with runs, one scattered read cannot fill them all, so they go staged.
  std::map<std::pair<uint32_t, uint32_t>, std::pair<int, bool>> sources;  // count, any runs
  for (const Target& t : targets) {
    if (t.device != kHostDevice || Casts(checkpoint_, t)) continue;
    auto& [count, runs] = sources[{t.source.file, t.source.index}];
    ++count;
    runs = runs || !t.runs.empty();
  }
  Group in_place, staged;
  std::map<int, Group> devices;
  for (size_t i = 0; i < targets.size(); ++i) {
    const Target& t = targets[i];
    const uint64_t bytes = PayloadOf(checkpoint_, t);
    total_ += bytes;
    const bool cast = Casts(checkpoint_, t);
    Group* group = &staged;
    if (t.device != kHostDevice) {
      group = &devices[t.device];
    } else if (!cast && !direct_ && !setup_.discard) {
      const auto& [count, runs] = sources[{t.source.file, t.source.index}];
      if (count == 1 || !runs) group = &in_place;
    }
    group->targets.push_back(t);
    group->index.push_back(i);
    group->bytes += bytes;
    group->casts = group->casts || cast;
  }

  auto stage_start = io::Clock::now();
  SHARDSTREAM_RETURN_IF_ERROR(Host(in_place, /*staged=*/false));
  SHARDSTREAM_RETURN_IF_ERROR(Host(staged, /*staged=*/true));
  if (!in_place.targets.empty() || !staged.targets.empty()) {
    report_.stages.emplace_back("read", io::SecondsSince(stage_start));
  }
  for (const auto& [device, group] : devices) {
    SHARDSTREAM_RETURN_IF_ERROR(Upload(device, group));
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

PipelineOptions PipelineOptionsFor(const ReadOptions& read, bool staged, bool direct) {
  PipelineOptions pipeline;
  pipeline.staged = staged;
  pipeline.backend = ResolveBackend(read.io, direct);
  pipeline.fall_back_to_pread = true;
  pipeline.direct = direct;
  pipeline.chunk_bytes = read.chunk_bytes;
  pipeline.staging_bytes = read.staging_bytes;
  pipeline.queue_depth = read.queue_depth;
  pipeline.read_gap_bytes = read.read_gap_bytes;
  pipeline.sqpoll = read.sqpoll;
  pipeline.copy_threads = read.threads;
  // Buffered reads are copies made by the reading threads: one reader per worker thread. O_DIRECT
  // takes the pipeline's own count (DefaultReaders).
  if (!direct) pipeline.readers = static_cast<uint32_t>(std::max(read.threads, 0));
  pipeline.progress = read.progress;
  return pipeline;
}

io::Status Fill(const io::Checkpoint& checkpoint, std::span<const Target> targets,
                const FillSetup& setup, ReadReport* report) {
  ReadReport local;
  return FillRun(checkpoint, setup, report != nullptr ? *report : local).Execute(targets);
}

}  // namespace shardstream::engine
