#include "engine/sink.h"

#include "engine/cast.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace shardstream::engine {

std::vector<Destination> DestinationsOf(const io::Checkpoint& checkpoint,
                                        std::span<const Target> targets) {
  std::vector<Destination> out;
  out.reserve(targets.size());
  for (const Target& t : targets) {
    const io::TensorInfo& info = checkpoint.tensor(t.source);
    Destination d{t.destination, info.size_bytes(), info.dtype, DestinationDType(checkpoint, t)};
    if (!t.runs.empty()) {
      // Pieces of runs land at the run's destination offset (in source bytes, as the plan counts
      // them) plus their offset inside the run.
      d.source_bytes = 0;
      const uint64_t from = io::DTypeBits(d.source_dtype) / 8;
      const uint64_t to = d.casts() ? io::DTypeBits(d.destination_dtype) / 8 : 1;
      for (const Run& run : t.runs) {
        const uint64_t begin =
            d.casts() ? run.destination_offset / to * from : run.destination_offset;
        d.source_bytes = std::max(d.source_bytes, begin + run.length);
      }
    }
    out.push_back(d);
  }
  return out;
}

io::Status CpuSink::Consume(StagedSlot slot, std::span<const Piece> pieces) {
  for (const Piece& piece : pieces) {
    // The plan guarantees these; checking costs nothing per chunk and turns a planning bug into an
    // error instead of a wild write.
    if (piece.target >= destinations_.size() ||
        destinations_[piece.target].destination == nullptr ||
        piece.chunk_offset + piece.length > slot.size_bytes ||
        piece.target_offset + piece.length > destinations_[piece.target].source_bytes) {
      return io::Status::Error(io::StatusCode::kInternal, "sink",
                               "piece of target " + std::to_string(piece.target) +
                                   " has no destination or lies outside its chunk or target")
          .WithOffset(slot.file_offset + piece.chunk_offset);
    }
    const Destination& d = destinations_[piece.target];
    std::byte* out = d.destination + d.Offset(piece.target_offset);
    if (!d.casts()) {
      std::memcpy(out, slot.data + piece.chunk_offset, piece.length);
      continue;
    }
    SHARDSTREAM_RETURN_IF_ERROR(HostCast(slot.data + piece.chunk_offset, d.source_dtype, out,
                                         d.destination_dtype,
                                         piece.length / (io::DTypeBits(d.source_dtype) / 8)));
  }
  return io::Status::Ok();
}

io::Status DiscardSink::Consume(StagedSlot slot, std::span<const Piece> pieces) {
  (void)slot;
  uint64_t bytes = 0;
  for (const Piece& piece : pieces) bytes += piece.length;
  bytes_.fetch_add(bytes, std::memory_order_relaxed);
  pieces_.fetch_add(pieces.size(), std::memory_order_relaxed);
  slots_.fetch_add(1, std::memory_order_relaxed);
  return io::Status::Ok();
}

}  // namespace shardstream::engine
