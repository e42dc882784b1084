// Native dequantization of pre-quantized checkpoint tensors on the host, written straight into
// the destination parameter: MXFP4 (gpt-oss experts: `*_blocks` + `*_scales`) and fine-grained
// FP8 E4M3 with a per-block scale (`weight` + `weight_scale_inv`).
//
// Each function computes what transformers' own op computes, element for element and bit for bit
// (tests/python/test_quantized.py compares them exhaustively): the same float32 products, the same
// one rounding into the output dtype (to nearest even, engine/detail/convert.h). Where
// transformers' result would be a NaN (a NaN scale or weight code), its bits depend on which of
// torch's kernels produced it, so these functions decline such inputs (rule "dequantize",
// kUnsupported) and the caller runs transformers' op instead.
//
// Thread-safe; the work is split over oneTBB tasks. Inputs and output must not overlap; every
// pointer must stay valid for the call. Nothing here knows torch.
#pragma once

#include "io/dtype.h"
#include "io/status.h"

#include <cstddef>
#include <cstdint>

namespace shardstream::engine {

// The shape of an MXFP4 tensor as gpt-oss stores it: blocks U8 [experts, rows, groups,
// group_bytes] (two E2M1 codes per byte, the low nibble first, 32 values per group of 16 bytes)
// and scales U8 [experts, rows, groups] (E8M0: 2^(byte - 127)).
struct Mxfp4Layout {
  uint64_t experts = 0;
  uint64_t rows = 0;
  uint64_t groups = 0;
  uint64_t group_bytes = 0;
};

// Writes the dequantized values into `out`, contiguous [experts, groups * group_bytes * 2, rows]
// (transformers' `convert_moe_packed_tensors`: the values of a row laid out along the middle
// dimension) in `to` (F32, BF16 or F16). Value = E2M1(code) * 2^(scale - 127), rounded once into
// `to`. Errors: rule "dequantize" (kInvalidArgument) for another output dtype or a size that
// overflows; kUnsupported when a scale is 0xFF (NaN in E8M0: transformers' bits vary there).
[[nodiscard]] io::Status DequantizeMxfp4(const uint8_t* blocks, const uint8_t* scales,
                                         const Mxfp4Layout& layout, io::DType to, std::byte* out);

// The shape of a block-scaled FP8 tensor: weight F8_E4M3 [batch, rows, cols] (batch 1 for a
// plain linear weight), scale [batch, scale_rows, scale_cols] with rows % scale_rows == 0 and
// cols % scale_cols == 0: element (i, j) takes scale (i / (rows / scale_rows), j / (cols /
// scale_cols)).
struct BlockScaleLayout {
  uint64_t batch = 0;
  uint64_t rows = 0;
  uint64_t cols = 0;
  uint64_t scale_rows = 0;
  uint64_t scale_cols = 0;
};

// Writes weight * scale (float32 product, as transformers' `Fp8Dequantize`) into `out`,
// contiguous [batch, rows, cols] in `to` (F32, BF16 or F16). `scale_dtype` is F32 or BF16.
// Errors: rule "dequantize" (kInvalidArgument) for other dtypes or a grid that does not divide the
// weight; kUnsupported when a weight code is NaN (0x7F, 0xFF) or a scale is not finite.
[[nodiscard]] io::Status DequantizeFp8BlockScale(const uint8_t* weight, const std::byte* scales,
                                                 io::DType scale_dtype,
                                                 const BlockScaleLayout& layout, io::DType to,
                                                 std::byte* out);

}  // namespace shardstream::engine
