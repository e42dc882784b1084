#include "engine/runs.h"

#include <string>

namespace shardstream::engine {
namespace {

io::Status SliceError(std::string message) {
  return io::Status::Error(io::StatusCode::kInvalidArgument, "slice", std::move(message));
}

// One dimension after merging: `count` steps of `source_stride` / `destination_stride` elements.
struct Dim {
  int64_t count;
  int64_t source_stride;
  int64_t destination_stride;
};

}  // namespace

io::Result<std::vector<Run>> SliceRuns(std::span<const int64_t> source_shape,
                                       std::span<const SliceDim> slice,
                                       std::span<const int64_t> destination_strides,
                                       uint32_t source_element_bits,
                                       uint32_t destination_element_bits) {
  const size_t rank = source_shape.size();
  if (slice.size() != rank || destination_strides.size() != rank) {
    return SliceError("the slice has " + std::to_string(slice.size()) + " and the destination " +
                      std::to_string(destination_strides.size()) + " dimensions for a tensor of " +
                      std::to_string(rank));
  }
  // Source strides of the C-contiguous tensor, and the offset of the slice's first element.
  std::vector<int64_t> source_strides(rank, 1);
  for (size_t d = rank; d-- > 1;) source_strides[d - 1] = source_strides[d] * source_shape[d];
  int64_t first = 0;
  uint64_t elements = 1;
  std::vector<Dim> dims;
  for (size_t d = 0; d < rank; ++d) {
    const SliceDim& s = slice[d];
    if (s.step < 1) return SliceError("dimension " + std::to_string(d) + ": step must be >= 1");
    if (s.count < 0 || s.start < 0 ||
        (s.count > 0 && s.start + (s.count - 1) * s.step >= source_shape[d])) {
      return SliceError("dimension " + std::to_string(d) + ": indices outside [0, " +
                        std::to_string(source_shape[d]) + ")");
    }
    if (destination_strides[d] < 0 || (destination_strides[d] == 0 && s.count > 1)) {
      return SliceError("dimension " + std::to_string(d) +
                        ": the destination's elements overlap (stride " +
                        std::to_string(destination_strides[d]) + ")");
    }
    elements *= static_cast<uint64_t>(s.count);
    first += s.start * source_strides[d];
    if (s.count != 1)
      dims.push_back(Dim{s.count, s.step * source_strides[d], destination_strides[d]});
  }
  if (elements == 0) return std::vector<Run>{};
  // Merge from the innermost outwards: the run is contiguous in both while strides line up.
  int64_t run_elements = 1;
  while (!dims.empty() && dims.back().source_stride == run_elements &&
         dims.back().destination_stride == run_elements) {
    run_elements *= dims.back().count;
    dims.pop_back();
  }
  const bool whole_bytes = source_element_bits % 8 == 0 && destination_element_bits % 8 == 0;
  if (!whole_bytes && !dims.empty()) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "cast",
                             "sub-byte elements can only be read whole, into a contiguous "
                             "destination");
  }
  auto bytes = [](uint64_t count, uint32_t bits) { return count * bits / 8; };
  std::vector<Run> runs;
  std::vector<int64_t> index(dims.size(), 0);
  int64_t source = first;
  int64_t destination = 0;
  while (true) {
    runs.push_back(Run{bytes(static_cast<uint64_t>(source), source_element_bits),
                       bytes(static_cast<uint64_t>(destination), destination_element_bits),
                       bytes(static_cast<uint64_t>(run_elements), source_element_bits)});
    size_t d = dims.size();
    while (d > 0) {  // odometer over the outer dimensions
      --d;
      source += dims[d].source_stride;
      destination += dims[d].destination_stride;
      if (++index[d] < dims[d].count) break;
      source -= dims[d].source_stride * dims[d].count;
      destination -= dims[d].destination_stride * dims[d].count;
      index[d] = 0;
      if (d == 0) return runs;
    }
    if (dims.empty()) return runs;
  }
}

io::Result<std::vector<Run>> ViewRuns(std::span<const int64_t> shape,
                                      std::span<const int64_t> destination_strides,
                                      uint32_t source_element_bits,
                                      uint32_t destination_element_bits) {
  std::vector<SliceDim> whole;
  whole.reserve(shape.size());
  for (int64_t size : shape) whole.push_back(SliceDim{0, 1, size});
  return SliceRuns(shape, whole, destination_strides, source_element_bits,
                   destination_element_bits);
}

}  // namespace shardstream::engine
