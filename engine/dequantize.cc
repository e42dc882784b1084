#include "engine/dequantize.h"

#include "engine/detail/convert.h"
#include "engine/executor.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace shardstream::engine {
namespace {

using io::DType;
using io::Status;
using io::StatusCode;

// E2M1 codes 0..15 (sign, two exponent bits, one mantissa bit), as transformers' FP4_VALUES.
constexpr std::array<float, 16> kE2M1Values = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,
                                               4.0f,  6.0f,  -0.0f, -0.5f, -1.0f, -1.5f,
                                               -2.0f, -3.0f, -4.0f, -6.0f};
constexpr int kScaleCodes = 256;
constexpr uint8_t kE8M0Nan = 0xff;
// Output bytes per input byte at most: two values, F32.
constexpr uint64_t kMxfp4WidestBytesPerByte = 2 * sizeof(float);
// Rows of an MXFP4 tile: the output is transposed (a row's values go down the middle dimension),
// so a tile writes runs of this many adjacent output elements per code while its rows' input
// lines stay in cache.
constexpr uint64_t kMxfp4RowTile = 64;
// Output elements per FP8 task: large enough that a task's overhead is noise.
constexpr uint64_t kFp8GrainElements = 1 << 16;

Status Invalid(std::string message) {
  return Status::Error(StatusCode::kInvalidArgument, "dequantize", std::move(message));
}

Status Declined(std::string message) {
  return Status::Error(StatusCode::kUnsupported, "dequantize", std::move(message));
}

bool IsOutputDType(DType to) {
  return to == DType::kF32 || to == DType::kBF16 || to == DType::kF16;
}

// a * b (or fails), for sizes computed from caller-given dimensions.
bool Multiply(uint64_t a, uint64_t b, uint64_t* out) {
  if (b != 0 && a > std::numeric_limits<uint64_t>::max() / b) return false;
  *out = a * b;
  return true;
}

// Runs body(begin, end) over [0, count) in blocks of at least `grain` items, on the engine's
// executor (oneTBB, or std::threads in ThreadSanitizer builds: engine/executor.h), a few blocks
// per worker so that uneven blocks even out. Returns when every block has run.
template <typename Body>
void ParallelFor(uint64_t count, uint64_t grain, const Body& body) {
  const int workers = HardwareConcurrency(DefaultExecutor());
  constexpr uint64_t kBlocksPerWorker = 4;
  const uint64_t most = (count + std::max<uint64_t>(grain, 1) - 1) / std::max<uint64_t>(grain, 1);
  const uint64_t blocks =
      std::min<uint64_t>(most, static_cast<uint64_t>(workers) * kBlocksPerWorker);
  if (blocks <= 1 || workers <= 1) {
    body(uint64_t{0}, count);
    return;
  }
  const uint64_t step = (count + blocks - 1) / blocks;
  std::unique_ptr<TaskGroup> group = MakeTaskGroup(workers);
  for (uint64_t begin = 0; begin < count; begin += step) {
    const uint64_t end = std::min(count, begin + step);
    group->Run([&body, begin, end] { body(begin, end); });
  }
  group->Wait();
}

template <typename T, typename EncodeFn>
void RunMxfp4(const uint8_t* blocks, const uint8_t* scales, const Mxfp4Layout& l, EncodeFn encode,
              T* out) {
  // table[scale * 16 + code]: the float32 product E2M1(code) * 2^(scale - 127), as torch.ldexp
  // computes it (a float32 power of two times the value), rounded once into T.
  std::vector<T> table(static_cast<size_t>(kScaleCodes) * kE2M1Values.size());
  for (int s = 0; s < kScaleCodes; ++s) {
    const float power = detail::E8M0ToFloat(static_cast<uint8_t>(s));
    for (size_t c = 0; c < kE2M1Values.size(); ++c) {
      table[s * kE2M1Values.size() + c] = encode(kE2M1Values[c] * power);
    }
  }
  const uint64_t row_bytes = l.groups * l.group_bytes;
  const uint64_t values = row_bytes * 2;  // the output's middle dimension
  const uint64_t tiles = (l.rows + kMxfp4RowTile - 1) / kMxfp4RowTile;
  ParallelFor(l.experts * tiles, 1, [&](uint64_t first, uint64_t last) {
    for (uint64_t t = first; t != last; ++t) {
      const uint64_t e = t / tiles;
      const uint64_t r0 = (t % tiles) * kMxfp4RowTile;
      const uint64_t r1 = std::min(l.rows, r0 + kMxfp4RowTile);
      T* expert_out = out + e * values * l.rows;
      for (uint64_t g = 0; g < l.groups; ++g) {
        for (uint64_t r = r0; r < r1; ++r) {
          const uint64_t row = e * l.rows + r;
          const T* lut = table.data() + scales[row * l.groups + g] * 16;
          const uint8_t* in = blocks + row * row_bytes + g * l.group_bytes;
          T* o = expert_out + g * l.group_bytes * 2 * l.rows + r;
          for (uint64_t b = 0; b < l.group_bytes; ++b) {
            const uint8_t byte = in[b];
            o[(2 * b) * l.rows] = lut[byte & 0x0f];
            o[(2 * b + 1) * l.rows] = lut[byte >> 4];
          }
        }
      }
    }
  });
}

template <typename T, typename EncodeFn>
bool RunFp8(const uint8_t* weight, const float* scales, const BlockScaleLayout& l, EncodeFn encode,
            T* out) {
  std::array<float, 256> decoded{};
  for (int b = 0; b < 256; ++b) decoded[b] = detail::E4M3ToFloat(static_cast<uint8_t>(b));
  const uint64_t block_rows = l.rows / l.scale_rows;
  const uint64_t block_cols = l.cols / l.scale_cols;
  const uint64_t rows_per_task =
      std::max<uint64_t>(1, kFp8GrainElements / std::max<uint64_t>(1, l.cols));
  std::atomic<bool> nan_code{false};
  ParallelFor(l.batch * l.rows, rows_per_task, [&](uint64_t first, uint64_t last) {
    uint8_t any_nan = 0;
    for (uint64_t row = first; row != last; ++row) {
      const uint64_t batch = row / l.rows;
      const uint64_t i = row % l.rows;
      const float* scale_row = scales + (batch * l.scale_rows + i / block_rows) * l.scale_cols;
      const uint8_t* in = weight + row * l.cols;
      T* o = out + row * l.cols;
      for (uint64_t sj = 0; sj < l.scale_cols; ++sj) {
        const float scale = scale_row[sj];
        for (uint64_t j = sj * block_cols; j < (sj + 1) * block_cols; ++j) {
          const uint8_t code = in[j];
          any_nan |= static_cast<uint8_t>((code & 0x7fu) == 0x7fu);
          o[j] = encode(decoded[code] * scale);
        }
      }
    }
    if (any_nan) nan_code.store(true, std::memory_order_relaxed);
  });
  return !nan_code.load(std::memory_order_relaxed);
}

}  // namespace

Status DequantizeMxfp4(const uint8_t* blocks, const uint8_t* scales, const Mxfp4Layout& layout,
                       DType to, std::byte* out) {
  if (!IsOutputDType(to)) {
    return Invalid("MXFP4 dequantizes into F32, BF16 or F16, not " +
                   std::string(io::DTypeName(to)));
  }
  uint64_t rows = 0, scale_count = 0, bytes = 0;
  if (!Multiply(layout.experts, layout.rows, &rows) ||
      !Multiply(rows, layout.groups, &scale_count) ||
      !Multiply(scale_count, layout.group_bytes, &bytes) ||
      !Multiply(bytes, kMxfp4WidestBytesPerByte, &bytes)) {
    return Invalid("MXFP4 tensor size overflows");
  }
  if (scale_count == 0 || layout.group_bytes == 0) return Status::Ok();
  for (uint64_t i = 0; i < scale_count; ++i) {
    if (scales[i] == kE8M0Nan) {
      return Declined("MXFP4 scale " + std::to_string(i) +
                      " is 0xFF (NaN in E8M0); left to the framework's own dequantize");
    }
  }
  switch (to) {
    case DType::kF32:
      RunMxfp4<float>(
          blocks, scales, layout, [](float v) { return v; }, reinterpret_cast<float*>(out));
      break;
    case DType::kBF16:
      RunMxfp4<uint16_t>(blocks, scales, layout, detail::FloatToBF16,
                         reinterpret_cast<uint16_t*>(out));
      break;
    default:
      RunMxfp4<uint16_t>(blocks, scales, layout, detail::FloatToHalf,
                         reinterpret_cast<uint16_t*>(out));
      break;
  }
  return Status::Ok();
}

Status DequantizeFp8BlockScale(const uint8_t* weight, const std::byte* scales, DType scale_dtype,
                               const BlockScaleLayout& layout, DType to, std::byte* out) {
  if (!IsOutputDType(to)) {
    return Invalid("FP8 dequantizes into F32, BF16 or F16, not " + std::string(io::DTypeName(to)));
  }
  if (scale_dtype != DType::kF32 && scale_dtype != DType::kBF16) {
    return Invalid("FP8 block scales are F32 or BF16 here, not " +
                   std::string(io::DTypeName(scale_dtype)));
  }
  if (layout.scale_rows == 0 || layout.scale_cols == 0 || layout.rows % layout.scale_rows != 0 ||
      layout.cols % layout.scale_cols != 0) {
    return Invalid("weight (" + std::to_string(layout.rows) + ", " + std::to_string(layout.cols) +
                   ") is not divisible by the scale grid (" + std::to_string(layout.scale_rows) +
                   ", " + std::to_string(layout.scale_cols) + ")");
  }
  uint64_t elements = 0, scale_count = 0, bytes = 0;
  if (!Multiply(layout.batch, layout.rows, &elements) ||
      !Multiply(elements, layout.cols, &elements) || !Multiply(elements, 4, &bytes) ||
      !Multiply(layout.batch, layout.scale_rows, &scale_count) ||
      !Multiply(scale_count, layout.scale_cols, &scale_count)) {
    return Invalid("FP8 tensor size overflows");
  }
  if (elements == 0) return Status::Ok();
  // The scales as float32 (transformers' `scales.to(torch.float32)`: exact from BF16).
  std::vector<float> scale_values(scale_count);
  for (uint64_t i = 0; i < scale_count; ++i) {
    float value;
    if (scale_dtype == DType::kF32) {
      std::memcpy(&value, scales + i * sizeof(float), sizeof value);
    } else {
      uint16_t bits;
      std::memcpy(&bits, scales + i * sizeof bits, sizeof bits);
      value = detail::BF16ToFloat(bits);
    }
    if ((detail::FloatBits(value) & 0x7f800000u) == 0x7f800000u) {
      return Declined("FP8 scale " + std::to_string(i) +
                      " is not finite; left to the framework's own dequantize");
    }
    scale_values[i] = value;
  }
  bool finite = false;
  switch (to) {
    case DType::kF32:
      finite = RunFp8<float>(
          weight, scale_values.data(), layout, [](float v) { return v; },
          reinterpret_cast<float*>(out));
      break;
    case DType::kBF16:
      finite = RunFp8<uint16_t>(weight, scale_values.data(), layout, detail::FloatToBF16,
                                reinterpret_cast<uint16_t*>(out));
      break;
    default:
      finite = RunFp8<uint16_t>(weight, scale_values.data(), layout, detail::FloatToHalf,
                                reinterpret_cast<uint16_t*>(out));
      break;
  }
  if (!finite) {
    return Declined("an FP8 weight code is NaN; left to the framework's own dequantize");
  }
  return Status::Ok();
}

}  // namespace shardstream::engine
