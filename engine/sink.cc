#include "engine/sink.h"

#include <cstring>
#include <string>

namespace shardstream::engine {

CpuSink::CpuSink(std::span<const LoadTarget> targets) {
  destinations_.reserve(targets.size());
  for (const LoadTarget& target : targets) destinations_.push_back(target.destination);
}

io::Status CpuSink::Consume(StagedSlot slot, std::span<const Piece> pieces) {
  for (const Piece& piece : pieces) {
    // The plan guarantees these; checking costs nothing per 16 MiB chunk and turns a planning bug
    // into an error instead of a wild write.
    if (piece.target >= destinations_.size() || destinations_[piece.target] == nullptr ||
        piece.chunk_offset + piece.length > slot.size_bytes) {
      return io::Status::Error(io::StatusCode::kInternal, "sink",
                               "piece of target " + std::to_string(piece.target) +
                                   " has no destination or lies outside its chunk")
          .WithOffset(slot.file_offset + piece.chunk_offset);
    }
    std::memcpy(destinations_[piece.target] + piece.target_offset, slot.data + piece.chunk_offset,
                piece.length);
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
