// The read plan: which bytes of which files to read, in what chunks, and where each byte goes.
//
// Given the tensors to load, BuildReadPlan sorts their byte ranges per file, coalesces neighbours
// (reading through small unwanted gaps rather than issuing another read), splits the result into
// chunks of at most `chunk_bytes`, and rounds every chunk out to `alignment_bytes` so it can be
// read with O_DIRECT. Each chunk lists its pieces: the parts of target tensors it holds, with
// their offsets inside the chunk buffer and inside the tensor. A tensor larger than a chunk is
// split across chunks; a chunk may hold pieces of many small tensors.
//
// The plan is plain data: no IO, no allocation beyond its vectors, no torch. Thread-safe to read.
#pragma once

#include "io/checkpoint.h"
#include "io/dtype.h"
#include "io/status.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "shardstream/read.h"

namespace shardstream::engine {

struct PlanOptions {
  uint64_t chunk_bytes = kDefaultChunkBytes;  // upper bound on one read (rounded up to alignment)
  uint64_t alignment_bytes = 1;               // power of two; 512 or 4096 for O_DIRECT
  uint64_t max_gap_bytes = kDefaultReadGapBytes;  // unwanted bytes read through to save a read
};

// A part of a target's source tensor and where it lands: `length` bytes from `source_offset`
// inside the tensor go to destination + `destination_offset` (in the destination dtype's bytes:
// for a cast, `length` / source element size × destination element size of them). A whole tensor
// is one run (0, 0, size); views and slices are several (engine/runs.h makes them).
struct Run {
  uint64_t source_offset = 0;
  uint64_t destination_offset = 0;
  uint64_t length = 0;
};

inline constexpr int kHostDevice = -1;

// One destination of a load, as every front end describes it to the engine: the checkpoint tensor
// `source` (whole, or only the bytes its runs name, so nothing outside them is read) lands at
// `destination`, memory on the host or on CUDA device `device`, in `dtype` (unset: as stored;
// another dtype: a cast, engine/cast.h). Runs of one target must not overlap; for a cast they
// hold whole elements. The memory is the caller's and must outlive the load.
struct Target {
  Target() = default;
  Target(io::TensorLocation source_tensor, std::byte* destination_bytes,
         std::vector<Run> source_runs = {})
      : source(source_tensor), destination(destination_bytes), runs(std::move(source_runs)) {}

  io::TensorLocation source;
  std::byte* destination = nullptr;
  int device = kHostDevice;
  std::optional<io::DType> dtype;
  std::vector<Run> runs;
};

// The dtype a target's bytes land in, and whether that is a cast.
io::DType DestinationDType(const io::Checkpoint& checkpoint, const Target& target);
bool Casts(const io::Checkpoint& checkpoint, const Target& target);

// A cast target's pieces hold whole source elements: a piece ends at the last element that fits
// in its chunk, and the next chunk starts at or before that element's first byte (re-reading at
// most one alignment block, and the few bytes of the element), so no element is split between two
// chunks and each piece converts on its own. Element sizes are at most kMaxElementBytes.
inline constexpr uint32_t kMaxElementBytes = 16;
// A part of one target tensor that one chunk holds.
struct Piece {
  uint32_t target = 0;  // index into the targets passed to BuildReadPlan
  // Where the bytes land, from the target's destination, counted in the source dtype's bytes: the
  // offset inside the tensor for a whole-tensor target, the run's destination offset + the offset
  // inside the run otherwise. For a cast, the sink scales it (and the length) to the destination
  // dtype (engine/sink.h); otherwise it is the byte offset itself.
  uint64_t target_offset = 0;
  uint64_t chunk_offset = 0;  // first byte inside the chunk's buffer
  uint64_t length = 0;
};

// One read: `length` bytes of file `file` from `file_offset`, both multiples of the alignment.
// Only the first `needed_bytes` must be read: the rest is alignment padding that may lie past the
// end of the file.
struct Chunk {
  uint32_t file = 0;
  uint64_t file_offset = 0;
  uint64_t length = 0;
  uint64_t needed_bytes = 0;
  uint32_t first_piece = 0;  // pieces[first_piece, first_piece + piece_count)
  uint32_t piece_count = 0;
};

struct ReadPlan {
  // Sorted by (file, file_offset). Chunks overlap only where a piece was cut on an element (a
  // cast target): by less than one alignment block and one element.
  std::vector<Chunk> chunks;
  std::vector<Piece> pieces;     // grouped by chunk
  uint64_t payload_bytes = 0;    // bytes of the targets (of their runs, where they have runs)
  uint64_t read_bytes = 0;       // bytes the chunks read (payload + gaps + alignment)
  uint64_t max_chunk_bytes = 0;  // the largest chunk: what one staging slot must hold

  std::span<const Piece> PiecesOf(const Chunk& chunk) const {
    return std::span(pieces).subspan(chunk.first_piece, chunk.piece_count);
  }
  // The target bytes a chunk carries (what progress counts): its pieces, not the gaps and
  // alignment it also reads.
  uint64_t PayloadOf(const Chunk& chunk) const {
    uint64_t bytes = 0;
    for (const Piece& piece : PiecesOf(chunk)) bytes += piece.length;
    return bytes;
  }
};

// Plans the reads for `targets` (tensors of `checkpoint`; the same tensor may appear twice, e.g. to
// fill two destinations). Empty tensors and runs produce no piece. Errors: rule "plan-options"
// for a zero chunk size or an alignment that is not a power of two, "plan-target" for a location
// outside the checkpoint, a run outside its tensor or a cast run that is not whole elements.
io::Result<ReadPlan> BuildReadPlan(const io::Checkpoint& checkpoint,
                                   std::span<const Target> targets, const PlanOptions& options);

}  // namespace shardstream::engine
