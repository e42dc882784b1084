#include "engine/plan.h"

#include <algorithm>
#include <string>

namespace shardstream::engine {
namespace {

uint64_t AlignDown(uint64_t value, uint64_t alignment) { return value & ~(alignment - 1); }
uint64_t AlignUp(uint64_t value, uint64_t alignment) {
  return AlignDown(value + alignment - 1, alignment);
}

// A target's bytes in its file.
struct Extent {
  uint64_t begin;  // absolute file offsets
  uint64_t end;
  uint32_t target;
  uint64_t destination_offset;  // where `begin` lands
  uint64_t origin;  // the tensor's first byte: elements start origin + k * element_bytes
  uint32_t element_bytes;
  uint64_t emitted;  // pieces cover [begin, emitted) so far
};

// Emits the chunks for one coalesced run [run_begin, run_end) of `file` and the pieces of the
// extents in it. Chunks follow each other, except where an extent with whole elements reaches past
// a chunk's end: its piece stops at its last whole element there, and the next chunk starts at
// the aligned offset at or before that element (read again), so the element comes whole.
void EmitRun(uint32_t file, uint64_t run_begin, uint64_t run_end, std::span<Extent> extents,
             const PlanOptions& options, uint64_t chunk_bytes, ReadPlan* plan) {
  const uint64_t alignment = options.alignment_bytes;
  const uint64_t aligned_end = AlignUp(run_end, alignment);
  size_t first_extent = 0;  // extents before it are done
  for (uint64_t chunk_begin = AlignDown(run_begin, alignment); chunk_begin < aligned_end;) {
    const uint64_t chunk_end = std::min(chunk_begin + chunk_bytes, aligned_end);
    uint64_t next_begin = chunk_end;
    Chunk chunk;
    chunk.file = file;
    chunk.file_offset = chunk_begin;
    chunk.length = chunk_end - chunk_begin;
    chunk.first_piece = static_cast<uint32_t>(plan->pieces.size());
    uint64_t needed_end = chunk_begin;
    while (first_extent < extents.size() &&
           extents[first_extent].emitted >= extents[first_extent].end) {
      ++first_extent;
    }
    for (size_t i = first_extent; i < extents.size() && extents[i].begin < chunk_end; ++i) {
      Extent& e = extents[i];
      const uint64_t begin = std::max(e.emitted, chunk_begin);
      uint64_t end = std::min(e.end, chunk_end);
      if (e.end > chunk_end && e.element_bytes > 1) {
        end = e.origin + (chunk_end - e.origin) / e.element_bytes * e.element_bytes;
        next_begin = std::min(next_begin, AlignDown(end, alignment));
      }
      if (begin >= end) continue;
      plan->pieces.push_back(Piece{e.target, e.destination_offset + (begin - e.begin),
                                   begin - chunk_begin, end - begin});
      e.emitted = end;
      needed_end = std::max(needed_end, end);
    }
    chunk_begin = next_begin;
    chunk.piece_count = static_cast<uint32_t>(plan->pieces.size()) - chunk.first_piece;
    if (chunk.piece_count == 0) continue;  // a stretch of gap between pieces: nothing to read
    chunk.needed_bytes = needed_end - chunk.file_offset;
    plan->read_bytes += chunk.length;
    plan->max_chunk_bytes = std::max(plan->max_chunk_bytes, chunk.length);
    plan->chunks.push_back(chunk);
  }
}

}  // namespace

io::DType DestinationDType(const io::Checkpoint& checkpoint, const Target& target) {
  return target.dtype.value_or(checkpoint.tensor(target.source).dtype);
}

bool Casts(const io::Checkpoint& checkpoint, const Target& target) {
  return DestinationDType(checkpoint, target) != checkpoint.tensor(target.source).dtype;
}

namespace {

// The extents of target `i` (its whole tensor, or its runs) into `per_file`, and its payload into
// the plan. `element` > 1: a cast target, its pieces cut on whole elements of that many bytes.
io::Status AddExtents(const io::Checkpoint& checkpoint, const Target& target, uint32_t i,
                      uint32_t element, std::vector<std::vector<Extent>>& per_file,
                      ReadPlan& plan) {
  const io::TensorLocation& loc = target.source;
  if (loc.file >= checkpoint.files.size() ||
      loc.index >= checkpoint.files[loc.file].header.tensors.size()) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "plan-target",
                             "target " + std::to_string(i) + " points outside the checkpoint");
  }
  const io::Header& header = checkpoint.files[loc.file].header;
  const io::TensorInfo& t = header.tensors[loc.index];
  const uint64_t base = header.data_offset() + t.begin;
  auto whole = [element](uint64_t bytes) { return bytes % element == 0; };
  // A cast's destination offsets count destination bytes; its pieces count source bytes.
  const uint64_t to_element =
      element > 1 ? io::DTypeBits(DestinationDType(checkpoint, target)) / 8 : 1;
  if (element == 0 || element > kMaxElementBytes || !whole(t.size_bytes())) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "plan-target",
                             "target " + std::to_string(i) + ": " + std::to_string(t.size_bytes()) +
                                 " bytes are not whole elements of " + std::to_string(element) +
                                 " bytes")
        .WithTensor(t.name);
  }
  if (target.runs.empty()) {
    plan.payload_bytes += t.size_bytes();
    if (t.size_bytes() > 0) {
      per_file[loc.file].push_back(Extent{base, base + t.size_bytes(), i, 0, base, element, base});
    }
    return io::Status::Ok();
  }
  for (const Run& run : target.runs) {
    if (run.source_offset > t.size_bytes() || run.length > t.size_bytes() - run.source_offset ||
        !whole(run.source_offset) || !whole(run.length) ||
        run.destination_offset % to_element != 0) {
      return io::Status::Error(
                 io::StatusCode::kInvalidArgument, "plan-target",
                 "target " + std::to_string(i) + " has a run outside its tensor or its elements")
          .WithTensor(t.name);
    }
    plan.payload_bytes += run.length;
    if (run.length == 0) continue;
    const uint64_t begin = base + run.source_offset;
    const uint64_t destination = run.destination_offset / to_element * element;
    per_file[loc.file].push_back(
        Extent{begin, begin + run.length, i, destination, base, element, begin});
  }
  return io::Status::Ok();
}

// Sorts one file's extents, coalesces those closer than `max_gap` into runs, and emits each run's
// chunks.
void EmitFile(uint32_t file, std::vector<Extent>& extents, uint64_t max_gap,
              const PlanOptions& options, uint64_t chunk_bytes, ReadPlan* plan) {
  if (extents.empty()) return;
  std::sort(extents.begin(), extents.end(), [](const Extent& a, const Extent& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.target < b.target;
  });
  size_t run_first = 0;
  uint64_t run_begin = extents[0].begin;
  uint64_t run_end = extents[0].end;
  for (size_t i = 1; i <= extents.size(); ++i) {
    if (i < extents.size() && extents[i].begin <= run_end + max_gap) {
      run_end = std::max(run_end, extents[i].end);
      continue;
    }
    EmitRun(file, run_begin, run_end, std::span(extents).subspan(run_first, i - run_first), options,
            chunk_bytes, plan);
    if (i < extents.size()) {
      run_first = i;
      run_begin = extents[i].begin;
      run_end = extents[i].end;
    }
  }
}

}  // namespace

io::Result<ReadPlan> BuildReadPlan(const io::Checkpoint& checkpoint,
                                   std::span<const Target> targets, const PlanOptions& options) {
  const uint64_t alignment = options.alignment_bytes;
  if (options.chunk_bytes == 0 || alignment == 0 || (alignment & (alignment - 1)) != 0) {
    return io::Status::Error(
        io::StatusCode::kInvalidArgument, "plan-options",
        "chunk size must be positive and alignment a power of two (got chunk " +
            std::to_string(options.chunk_bytes) + ", alignment " + std::to_string(alignment) + ")");
  }
  // A cast target's pieces hold whole source elements (Target, kMaxElementBytes).
  std::vector<uint32_t> element_bytes(targets.size(), 1);
  for (size_t i = 0; i < targets.size(); ++i) {
    const io::TensorLocation& loc = targets[i].source;
    if (loc.file < checkpoint.files.size() &&
        loc.index < checkpoint.files[loc.file].header.tensors.size() &&
        Casts(checkpoint, targets[i])) {
      element_bytes[i] = io::DTypeBits(checkpoint.tensor(loc).dtype) / 8;  // 0: sub-byte, refused
    }
  }
  // A chunk must hold a whole element after the (at most alignment - 1) bytes before it that an
  // aligned start reads again, and still move on: two blocks and an element.
  const uint32_t max_element_bytes = std::max<uint32_t>(
      1, element_bytes.empty() ? 1 : *std::max_element(element_bytes.begin(), element_bytes.end()));
  const uint64_t min_chunk_bytes = max_element_bytes > 1 ? 2 * alignment + max_element_bytes : 1;
  const uint64_t chunk_bytes = AlignUp(std::max(options.chunk_bytes, min_chunk_bytes), alignment);

  std::vector<std::vector<Extent>> per_file(checkpoint.files.size());
  ReadPlan plan;
  for (uint32_t i = 0; i < targets.size(); ++i) {
    SHARDSTREAM_RETURN_IF_ERROR(
        AddExtents(checkpoint, targets[i], i, element_bytes[i], per_file, plan));
  }
  // Runs further apart than one alignment block never share a block, so chunks never overlap.
  const uint64_t max_gap = std::max(options.max_gap_bytes, alignment);
  for (uint32_t file = 0; file < per_file.size(); ++file) {
    EmitFile(file, per_file[file], max_gap, options, chunk_bytes, &plan);
  }
  return plan;
}

}  // namespace shardstream::engine
