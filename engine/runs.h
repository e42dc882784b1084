// Byte runs of views: how a slice of a checkpoint tensor maps onto a (possibly strided)
// destination, as the contiguous runs the fill core reads (engine/plan.h, Target::runs).
//
// The source is a C-contiguous tensor of `source_shape`; the slice takes, per dimension, `count`
// indices start, start + step, ... (step >= 1). The destination holds the same number of elements
// per dimension at `destination_strides` (in elements, >= 0). Element k of the slice in row-major
// order lands at destination element k of the view in row-major order. Dimensions that are
// contiguous in both are merged, so a whole contiguous tensor is one run and a column slice of a
// matrix is one run per row.
#pragma once

#include "engine/plan.h"
#include "io/status.h"

#include <cstdint>
#include <span>
#include <vector>

namespace shardstream::engine {

struct SliceDim {
  int64_t start = 0;
  int64_t step = 1;
  int64_t count = 0;
};

// The runs of `slice` (one SliceDim per dimension of `source_shape`) into a destination with
// `destination_strides` (one per dimension, in elements). `source_element_bits` may be below 8
// only for an unsliced tensor into a contiguous destination (F4, F6: whole bytes then). Errors:
// rule "slice" for a dimension count mismatch, an index outside the source, a non-positive step,
// or a destination whose elements overlap one another (a stride 0 over more than one index);
// rule "cast" for a sub-byte slice.
io::Result<std::vector<Run>> SliceRuns(std::span<const int64_t> source_shape,
                                       std::span<const SliceDim> slice,
                                       std::span<const int64_t> destination_strides,
                                       uint32_t source_element_bits,
                                       uint32_t destination_element_bits);

// The whole tensor of `shape` into a destination with `destination_strides`: SliceRuns with
// every dimension taken whole.
io::Result<std::vector<Run>> ViewRuns(std::span<const int64_t> shape,
                                      std::span<const int64_t> destination_strides,
                                      uint32_t source_element_bits,
                                      uint32_t destination_element_bits);

}  // namespace shardstream::engine
