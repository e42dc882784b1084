#include "engine/cast.h"

#include "engine/detail/convert.h"

#include <cstring>

namespace shardstream::engine {
namespace {

using io::DType;
using io::DTypeKind;

bool IsInteger(DTypeKind kind) {
  return kind == DTypeKind::kBool || kind == DTypeKind::kUnsigned || kind == DTypeKind::kSigned;
}

// One loop per (source, destination) pair, so that the dispatch happens once per call and the
// compiler sees a plain element loop it can vectorise.
template <DType From, DType To>
void Loop(const unsigned char* src, unsigned char* dst, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) detail::ConvertElement(From, src, To, dst, i);
}

template <DType From>
void ToAny(DType to, const unsigned char* src, unsigned char* dst, uint64_t n) {
  switch (to) {
    case DType::kF64:
      return Loop<From, DType::kF64>(src, dst, n);
    case DType::kF32:
      return Loop<From, DType::kF32>(src, dst, n);
    case DType::kF16:
      return Loop<From, DType::kF16>(src, dst, n);
    case DType::kBF16:
      return Loop<From, DType::kBF16>(src, dst, n);
    default:
      // Integer and bool destinations (from integer sources): the generic loop.
      for (uint64_t i = 0; i < n; ++i) detail::ConvertElement(From, src, to, dst, i);
  }
}

void Dispatch(DType from, DType to, const unsigned char* src, unsigned char* dst, uint64_t n) {
  switch (from) {
#define SHARDSTREAM_CAST_FROM(d) \
  case DType::d:                 \
    return ToAny<DType::d>(to, src, dst, n);
    SHARDSTREAM_CAST_FROM(kBool)
    SHARDSTREAM_CAST_FROM(kU8)
    SHARDSTREAM_CAST_FROM(kI8)
    SHARDSTREAM_CAST_FROM(kU16)
    SHARDSTREAM_CAST_FROM(kI16)
    SHARDSTREAM_CAST_FROM(kU32)
    SHARDSTREAM_CAST_FROM(kI32)
    SHARDSTREAM_CAST_FROM(kU64)
    SHARDSTREAM_CAST_FROM(kI64)
    SHARDSTREAM_CAST_FROM(kF16)
    SHARDSTREAM_CAST_FROM(kBF16)
    SHARDSTREAM_CAST_FROM(kF32)
    SHARDSTREAM_CAST_FROM(kF64)
    SHARDSTREAM_CAST_FROM(kF8E4M3)
    SHARDSTREAM_CAST_FROM(kF8E5M2)
    SHARDSTREAM_CAST_FROM(kF8E4M3Fnuz)
    SHARDSTREAM_CAST_FROM(kF8E5M2Fnuz)
    SHARDSTREAM_CAST_FROM(kF8E8M0)
#undef SHARDSTREAM_CAST_FROM
    default:
      return;  // excluded by CanCast
  }
}

}  // namespace

bool CanCast(DType from, DType to) { return CastRefusal(from, to).empty(); }

std::string CastRefusal(DType from, DType to) {
  if (from == to) return {};
  const DTypeKind f = io::DTypeKindOf(from);
  const DTypeKind t = io::DTypeKindOf(to);
  const std::string pair = "cannot convert " + std::string(io::DTypeName(from)) + " to " +
                           std::string(io::DTypeName(to));
  if (f == DTypeKind::kPacked || t == DTypeKind::kPacked) {
    return pair + ": packed sub-byte values (F4, F6) load only as they are stored";
  }
  if (f == DTypeKind::kComplex || t == DTypeKind::kComplex) {
    return pair + ": complex values load only as they are stored";
  }
  if (t == DTypeKind::kFloat8) {
    return pair + ": shardstream does not round into 8-bit floats while loading";
  }
  if (t == DTypeKind::kFloat) return {};
  if (IsInteger(t) && IsInteger(f)) return {};
  return pair + ": floating-point values convert only into F64, F32, F16 or BF16";
}

io::Status HostCast(const std::byte* src, DType from, std::byte* dst, DType to, uint64_t elements) {
  if (std::string why = CastRefusal(from, to); !why.empty()) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "cast", std::move(why));
  }
  if (from == to) {
    if (elements > 0) std::memcpy(dst, src, elements * io::DTypeBits(from) / 8);
    return io::Status::Ok();
  }
  Dispatch(from, to, reinterpret_cast<const unsigned char*>(src),
           reinterpret_cast<unsigned char*>(dst), elements);
  return io::Status::Ok();
}

}  // namespace shardstream::engine
