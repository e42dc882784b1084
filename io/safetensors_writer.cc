#include "io/safetensors_writer.h"

#include "io/file.h"
#include "io/json_writer.h"
#include "io/safetensors_header.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>
#include <unordered_set>

namespace shardstream::io {
namespace {

constexpr std::string_view kMetadataKey = "__metadata__";
constexpr std::string_view kTempSuffix = ".tmp";
// The reference pads the header JSON to a multiple of this, so tensor data starts aligned.
constexpr size_t kHeaderAlignBytes = 8;

// Writes all of `bytes` at the current file offset, retrying EINTR and short writes. `offset` is
// the file offset of bytes[0], for the error only.
Status WriteFull(int fd, std::span<const std::byte> bytes, uint64_t offset) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "write").WithOffset(offset + done);
    }
    // write() returns 0 only for a zero-length request; treat it as "no space" rather than spin.
    if (n == 0) return Status::FromErrno(ENOSPC, "write").WithOffset(offset + done);
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

// Removes the temporary file on every way out of WriteSafetensors (errors, and exceptions from
// the fill callback) unless Commit() was called after the rename.
class TempFileGuard {
 public:
  explicit TempFileGuard(std::filesystem::path path) : path_(std::move(path)) {}
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  ~TempFileGuard() {
    // Best effort: the error being reported matters more than a failed cleanup.
    if (!committed_) ::unlink(path_.c_str());
  }
  void Commit() { committed_ = true; }

 private:
  std::filesystem::path path_;
  bool committed_ = false;
};

}  // namespace

Result<uint64_t> TensorSizeBytes(DType dtype, std::span<const uint64_t> shape) {
  // Folded left to right like the reader (rule shape-overflow), bits last.
  uint64_t count = 1;
  for (uint64_t dim : shape) {
    if (__builtin_mul_overflow(count, dim, &count)) {
      return Status::Error(StatusCode::kInvalidArgument, "shape-overflow",
                           "shape " + FormatShape(shape) + " has more than 2^64 elements");
    }
  }
  uint64_t bits = 0;
  if (__builtin_mul_overflow(count, uint64_t{DTypeBits(dtype)}, &bits)) {
    return Status::Error(StatusCode::kInvalidArgument, "shape-overflow",
                         "shape " + FormatShape(shape) + " of " + std::string(DTypeName(dtype)) +
                             " holds more than 2^64 bits");
  }
  if (bits % 8 != 0) {
    return Status::Error(StatusCode::kInvalidArgument, "sub-byte",
                         std::to_string(count) + " elements of " + std::string(DTypeName(dtype)) +
                             " are " + std::to_string(bits) + " bits, not a whole number of bytes");
  }
  return bits / 8;
}

Result<std::string> BuildSafetensorsHeader(
    std::span<const TensorToWrite> tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  JsonWriter json;
  json.BeginObject();
  if (!metadata.empty()) {
    json.Key(kMetadataKey).BeginObject();
    for (const auto& [key, value] : metadata) json.Field(key, value);
    json.EndObject();
  }
  std::unordered_set<std::string_view> names;
  names.reserve(tensors.size());
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    if (t.name == kMetadataKey || !names.insert(t.name).second) {
      return Status::Error(StatusCode::kInvalidArgument, "tensor-name",
                           t.name == kMetadataKey ? "a tensor may not be called __metadata__"
                                                  : "the name is used by two tensors")
          .WithTensor(t.name);
    }
    Result<uint64_t> size_bytes = TensorSizeBytes(t.dtype, t.shape);
    if (!size_bytes.ok()) return std::move(size_bytes).status().WithTensor(t.name);
    uint64_t end = 0;
    if (__builtin_add_overflow(offset, *size_bytes, &end)) {
      return Status::Error(StatusCode::kInvalidArgument, "shape-overflow",
                           "the tensors together hold more than 2^64 bytes")
          .WithTensor(t.name);
    }
    json.Key(t.name).BeginObject().Field("dtype", DTypeName(t.dtype));
    json.Key("shape").BeginArray();
    for (uint64_t dim : t.shape) json.Uint(dim);
    json.EndArray();
    json.Key("data_offsets").BeginArray().Uint(offset).Uint(end).EndArray();
    json.EndObject();
    offset = end;
  }
  json.EndObject();
  std::string header = json.str();
  header.append((kHeaderAlignBytes - header.size() % kHeaderAlignBytes) % kHeaderAlignBytes, ' ');
  if (header.size() > kMaxHeaderBytes) {
    return Status::Error(StatusCode::kInvalidArgument, "header-too-large",
                         "the header would be " + std::to_string(header.size()) +
                             " bytes, more than readers accept (" +
                             std::to_string(kMaxHeaderBytes) + ")");
  }
  return header;
}

Status WriteSafetensors(const std::filesystem::path& path, std::span<const TensorToWrite> tensors,
                        const std::vector<std::pair<std::string, std::string>>& metadata,
                        const FillFn& fill) {
  SHARDSTREAM_ASSIGN_OR_RETURN(std::string header, BuildSafetensorsHeader(tensors, metadata));
  std::vector<uint64_t> sizes;
  sizes.reserve(tensors.size());
  uint64_t data_bytes = 0;
  for (const TensorToWrite& t : tensors) {
    // Cannot fail: BuildSafetensorsHeader validated every tensor and the sum.
    sizes.push_back(*TensorSizeBytes(t.dtype, t.shape));
    data_bytes += sizes.back();
  }

  const std::filesystem::path temp_path = path.string() + std::string(kTempSuffix);
  const std::string temp_name = temp_path.string();
  // O_TRUNC: a .tmp left by an earlier crash is stale by definition. 0644 before umask, as
  // open(2)-created files usually are.
  int raw_fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (raw_fd < 0) return Status::FromErrno(errno, "open").WithPath(temp_name);
  UniqueFd fd(raw_fd);
  TempFileGuard guard(temp_path);

  // The prefix and header go out in one write: they are small and the data follows at once.
  std::vector<std::byte> buffer(
      std::max<size_t>(kHeaderLengthBytes + header.size(),
                       static_cast<size_t>(std::min<uint64_t>(data_bytes, kWriteChunkBytes))));
  const uint64_t header_len = header.size();
  for (size_t i = 0; i < kHeaderLengthBytes; ++i) {
    buffer[i] = static_cast<std::byte>((header_len >> (8 * i)) & 0xff);
  }
  std::memcpy(buffer.data() + kHeaderLengthBytes, header.data(), header.size());
  uint64_t file_offset = 0;
  SHARDSTREAM_RETURN_IF_ERROR(
      WriteFull(fd.get(), std::span(buffer).first(kHeaderLengthBytes + header.size()), file_offset)
          .WithPath(temp_name));
  file_offset += kHeaderLengthBytes + header.size();
  if (data_bytes > 0) buffer.resize(std::min<uint64_t>(data_bytes, kWriteChunkBytes));

  // Pieces of consecutive tensors are packed into the buffer, which is written whenever it is
  // full: many small tensors (norm weights) cost one write, not one each.
  size_t used = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    for (uint64_t done = 0; done < sizes[i];) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(sizes[i] - done, buffer.size() - used));
      fill(i, done, std::span(buffer).subspan(used, n));
      used += n;
      done += n;
      if (used == buffer.size()) {
        SHARDSTREAM_RETURN_IF_ERROR(WriteFull(fd.get(), buffer, file_offset).WithPath(temp_name));
        file_offset += used;
        used = 0;
      }
    }
  }
  if (used > 0) {
    SHARDSTREAM_RETURN_IF_ERROR(
        WriteFull(fd.get(), std::span(buffer).first(used), file_offset).WithPath(temp_name));
  }

  // close() can report a deferred write error (NFS, quotas): check it before publishing the file.
  if (::close(fd.Release()) != 0) return Status::FromErrno(errno, "close").WithPath(temp_name);
  if (::rename(temp_path.c_str(), path.c_str()) != 0) {
    return Status::FromErrno(errno, "rename").WithPath(path.string());
  }
  guard.Commit();
  return Status::Ok();
}

}  // namespace shardstream::io
