// Writing safetensors files: the header JSON, its padding, and tensor data streamed from a
// callback, so that files of many GB are written with a few MiB of memory.
//
// The files written are accepted by the reference implementation (safetensors 0.8) and by
// io::ReadHeader. Layout: 8-byte little-endian header length N, N bytes of JSON padded with
// spaces so that N is a multiple of 8 (as the reference's serializer pads, which puts the first
// byte of tensor data on an 8-byte boundary), then every tensor's bytes back to back in the order
// given. Unlike the reference, tensors are not re-sorted by dtype alignment: the caller's order is
// the file order and the header order.
#pragma once

#include "io/dtype.h"
#include "io/status.h"

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace shardstream::io {

// The size of the pieces WriteSafetensors asks its FillFn for (a piece never crosses a tensor
// boundary, so pieces of small tensors are smaller) and of the one buffer it writes from.
inline constexpr size_t kWriteChunkBytes = size_t{4} << 20;

struct TensorToWrite {
  std::string name;  // valid UTF-8; not "__metadata__"; unique within one file
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;  // empty for a 0-d scalar
};

// Produces the bytes of tensor `tensor_index` (an index into the span given to
// WriteSafetensors) that start `offset_in_tensor` bytes into it: exactly out.size() bytes, at
// most kWriteChunkBytes. `out` is only valid during the call. Called from the thread that called
// WriteSafetensors, one call at a time, in file order; each byte of each tensor is asked for
// exactly once. It may throw: WriteSafetensors then removes its temporary file and the exception
// propagates.
using FillFn =
    std::function<void(size_t tensor_index, uint64_t offset_in_tensor, std::span<std::byte> out)>;

// The number of bytes `shape` elements of `dtype` occupy. Errors (kInvalidArgument): rule
// "shape-overflow" when element count × bits overflows 64 bits, rule "sub-byte" when it is not a
// whole number of bytes (F4 and F6 tensors must end on a byte boundary).
Result<uint64_t> TensorSizeBytes(DType dtype, std::span<const uint64_t> shape);

// The padded header JSON (the N bytes after the length prefix) for `tensors` laid out back to
// back in the order given, with "__metadata__" first when `metadata` is not empty. Validates
// every tensor as TensorSizeBytes does and rejects a duplicate name or a tensor called
// "__metadata__" (rule "tensor-name"), and a header over kMaxHeaderBytes (rule
// "header-too-large"); errors name the tensor.
Result<std::string> BuildSafetensorsHeader(
    std::span<const TensorToWrite> tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata);

// Writes a safetensors file at `path`: builds the header (BuildSafetensorsHeader), then streams
// each tensor's bytes from `fill` through one kWriteChunkBytes buffer. The file is written as
// `path` + ".tmp" and renamed over `path` only once it is complete and closed, so a process that
// dies part-way never leaves a partial file under the real name; on any error (and when `fill`
// throws) the temporary file is removed. The data is not fsync'ed: after a power loss the file
// may be missing or empty. Metadata keys are written as given (a duplicate key is not an error;
// readers keep the last).
//
// Errors: those of BuildSafetensorsHeader; a failed system call (open, write, close, rename)
// carries errno (Status::FromErrno), the path it failed on (the ".tmp" file, or `path` for the
// rename) and, for write, the file offset. Thread-safe for distinct paths; two concurrent calls
// for the same path race on the temporary file.
Status WriteSafetensors(const std::filesystem::path& path, std::span<const TensorToWrite> tensors,
                        const std::vector<std::pair<std::string, std::string>>& metadata,
                        const FillFn& fill);

}  // namespace shardstream::io
