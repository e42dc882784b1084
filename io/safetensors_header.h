// The safetensors header: parsing and validation exactly as strict as the reference
// implementation (safetensors 0.8, Rust), plus precise errors.
//
// File layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the tensor
// data. The JSON maps tensor names to {dtype, shape, data_offsets: [begin, end]} (offsets relative
// to the first byte after the header) and may hold "__metadata__", a string→string map.
//
// A file is accepted iff the reference's safe_open accepts it. Rules, each with the rule id its
// errors carry:
//   header-too-small   the file is shorter than 8 bytes
//   header-too-large   N > 100,000,000
//   header-length      8 + N > file size
//   header-utf8        the N header bytes are not valid UTF-8
//   header-json        not valid JSON (RFC 8259; no BOM; nesting at most 127 deep; numbers in
//   range) header-not-object  the JSON value is not an object metadata           "__metadata__" is
//   not null or a string→string object, or appears twice tensor-entry       a tensor entry is not
//   {dtype, shape, data_offsets} (unknown extra fields are
//                      ignored; the array form [dtype, shape, data_offsets] is accepted), a field
//                      is missing or repeated, a shape or offset is not a non-negative integer
//   dtype              an unknown dtype name
//   data-offsets       sorted by (begin, end), each tensor must begin where the previous one ends
//                      (the first at 0) and end no earlier than it begins
//   shape-overflow     element count × dtype bits overflows 64 bits (folded left to right)
//   sub-byte           element count × dtype bits is not a whole number of bytes (F4, F6)
//   size-mismatch      end − begin differs from element count × dtype size
//   data-truncated     the tensor data runs past the end of the file
//   trailing-bytes     the file continues after the last tensor's data
// Duplicate tensor names are accepted and the last one wins, as in the reference; so do duplicate
// keys inside "__metadata__".
#pragma once

#include "io/dtype.h"
#include "io/status.h"

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace shardstream::io {

inline constexpr uint64_t kHeaderLengthBytes = 8;
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// serde_json's recursion limit, as the reference meets it: 127 nested containers are accepted,
// 128 are refused.
inline constexpr uint32_t kMaxJsonDepth = 127;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;  // empty for a 0-d scalar
  uint64_t begin = 0;           // byte offsets relative to the start of the data section
  uint64_t end = 0;

  uint64_t size_bytes() const { return end - begin; }
  // Element count (1 for a scalar). Validated headers never overflow it.
  uint64_t numel() const;
};

// A validated header. Tensors are sorted by (begin, end), i.e. in file order.
class Header {
 public:
  Header() = default;
  // Copies rebuild the name index (it points into `tensors`); moves keep it, since a moved
  // vector keeps its elements where they are.
  Header(const Header& other);
  Header& operator=(const Header& other);
  Header(Header&&) noexcept = default;
  Header& operator=(Header&&) noexcept = default;

  uint64_t header_bytes = 0;  // N: the length of the JSON
  uint64_t file_bytes = 0;    // the file's size when it was validated
  std::vector<TensorInfo> tensors;
  // "__metadata__" in file order, duplicate keys resolved (last wins); nullopt when absent/null.
  std::optional<std::vector<std::pair<std::string, std::string>>> metadata;

  // First byte of tensor data in the file.
  uint64_t data_offset() const { return kHeaderLengthBytes + header_bytes; }
  uint64_t data_bytes() const { return file_bytes - data_offset(); }

  // The tensor called `name`, or nullptr. O(1).
  const TensorInfo* Find(std::string_view name) const;
  // Rebuilds the name index; call after changing `tensors` by hand.
  void IndexNames();

 private:
  std::unordered_map<std::string_view, uint32_t> by_name_;  // views of tensors[i].name
};

// Decodes the 8-byte length prefix and checks it against the file size (rules header-too-small,
// header-too-large, header-length). `prefix` may be shorter than 8 bytes only when the file is.
Result<uint64_t> ParseHeaderLength(std::span<const std::byte> prefix, uint64_t file_bytes);

// Parses and validates the N header bytes of a file of `file_bytes` bytes. Errors name the tensor
// and rule but not the file (the caller adds it with WithPath). Copies `json` once into a padded
// buffer; ReadHeader avoids that copy.
Result<Header> ParseHeader(std::string_view json, uint64_t file_bytes);

// Reads and validates the header of the file at `path`, or of an already open `fd` whose size is
// `file_bytes`. Errors carry the path. Reads only the header, never tensor data. Thread-safe.
Result<Header> ReadHeader(const std::filesystem::path& path);
Result<Header> ReadHeader(int fd, uint64_t file_bytes, const std::filesystem::path& path);

// "[2, 3]" — shapes as they are printed in errors and reports.
std::string FormatShape(std::span<const uint64_t> shape);

}  // namespace shardstream::io
