#include "io/safetensors_header.h"

#include "io/file.h"

#include <simdjson.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <unordered_map>

namespace shardstream::io {
namespace {

namespace dom = simdjson::dom;

// The first read of a file takes this much, so that one pread usually covers length prefix and
// header (a 10k-tensor header is ~0.5 MB; typical LLM shards have 5–50 KB headers).
constexpr uint64_t kSpeculativeHeaderReadBytes = 1 << 20;

Status FormatError(std::string rule, std::string message) {
  return Status::Error(StatusCode::kInvalidFormat, std::move(rule), std::move(message));
}

Status JsonError(std::string_view what, simdjson::error_code code) {
  std::string message = "header is not valid JSON: ";
  message += what;
  if (code != simdjson::SUCCESS) {
    message += " (";
    message += simdjson::error_message(code);
    message += ")";
  }
  return FormatError("header-json", std::move(message));
}

// Reads a JSON number as a usize the way serde_json does: only integer tokens, non-negative,
// within u64. simdjson types an integer token as INT64 or UINT64; a token with a fraction or an
// exponent, or "-0", is a DOUBLE, which serde_json also refuses for a usize.
std::optional<uint64_t> AsUnsigned(dom::element element) {
  switch (element.type()) {
    case dom::element_type::UINT64:
      return element.get_uint64().value_unsafe();
    case dom::element_type::INT64: {
      int64_t v = element.get_int64().value_unsafe();
      if (v < 0) return std::nullopt;
      return static_cast<uint64_t>(v);
    }
    default:
      return std::nullopt;
  }
}

std::string_view TypeName(dom::element element) {
  switch (element.type()) {
    case dom::element_type::ARRAY:
      return "an array";
    case dom::element_type::OBJECT:
      return "an object";
    case dom::element_type::INT64:
    case dom::element_type::UINT64:
      return "an integer";
    case dom::element_type::DOUBLE:
      return "a floating-point number";
    case dom::element_type::STRING:
      return "a string";
    case dom::element_type::BOOL:
      return "a boolean";
    case dom::element_type::NULL_VALUE:
      return "null";
  }
  return "a JSON value";
}

Status EntryError(std::string message) { return FormatError("tensor-entry", std::move(message)); }

Status ParseDTypeField(dom::element element, DType* out) {
  std::string_view name;
  if (element.type() == dom::element_type::STRING) {
    name = element.get_string().value_unsafe();
  } else if (element.type() == dom::element_type::OBJECT) {
    // serde's externally tagged enum form: {"F32": null} names the unit variant F32.
    dom::object object = element.get_object().value_unsafe();
    if (object.size() != 1) {
      return EntryError("\"dtype\" written as an object must have exactly one key");
    }
    auto field = *object.begin();
    if (field.value.type() != dom::element_type::NULL_VALUE) {
      return EntryError("\"dtype\" written as an object must map its name to null");
    }
    name = field.key;
  } else {
    return EntryError("\"dtype\" must be a string, not " + std::string(TypeName(element)));
  }
  std::optional<DType> dtype = ParseDType(name);
  if (!dtype) {
    std::string known;
    for (DType d : AllDTypes()) {
      if (!known.empty()) known += ", ";
      known += DTypeName(d);
    }
    return FormatError("dtype", "unknown dtype '" + std::string(name) + "' (known: " + known + ")");
  }
  *out = *dtype;
  return Status::Ok();
}

Status ParseShapeField(dom::element element, std::vector<uint64_t>* out) {
  if (element.type() != dom::element_type::ARRAY) {
    return EntryError("\"shape\" must be an array of non-negative integers, not " +
                      std::string(TypeName(element)));
  }
  dom::array array = element.get_array().value_unsafe();
  out->clear();
  out->reserve(array.size());
  for (dom::element dim : array) {
    std::optional<uint64_t> value = AsUnsigned(dim);
    if (!value) {
      return EntryError("\"shape\" must hold non-negative integers, found " +
                        std::string(TypeName(dim)) +
                        (dim.type() == dom::element_type::INT64 ? " below zero" : ""));
    }
    out->push_back(*value);
  }
  return Status::Ok();
}

Status ParseOffsetsField(dom::element element, TensorInfo* out) {
  if (element.type() != dom::element_type::ARRAY) {
    return EntryError("\"data_offsets\" must be an array [begin, end], not " +
                      std::string(TypeName(element)));
  }
  dom::array array = element.get_array().value_unsafe();
  if (array.size() != 2) {
    return EntryError("\"data_offsets\" must have exactly 2 elements, found " +
                      std::to_string(array.size()));
  }
  std::array<uint64_t, 2> offsets{};
  size_t i = 0;
  for (dom::element value : array) {
    std::optional<uint64_t> v = AsUnsigned(value);
    if (!v) {
      return EntryError("\"data_offsets\" must hold non-negative integers, found " +
                        std::string(TypeName(value)));
    }
    offsets[i++] = *v;
  }
  out->begin = offsets[0];
  out->end = offsets[1];
  return Status::Ok();
}

// One tensor entry, in the object form {"dtype", "shape", "data_offsets"} or serde's sequence
// form [dtype, shape, data_offsets].
Status ParseTensorEntry(dom::element value, TensorInfo* out) {
  if (value.type() == dom::element_type::ARRAY) {
    dom::array array = value.get_array().value_unsafe();
    if (array.size() != 3) {
      return EntryError(
          "an entry written as an array must be [dtype, shape, data_offsets], found " +
          std::to_string(array.size()) + " elements");
    }
    auto it = array.begin();
    SHARDSTREAM_RETURN_IF_ERROR(ParseDTypeField(*it, &out->dtype));
    ++it;
    SHARDSTREAM_RETURN_IF_ERROR(ParseShapeField(*it, &out->shape));
    ++it;
    return ParseOffsetsField(*it, out);
  }
  if (value.type() != dom::element_type::OBJECT) {
    return EntryError("entry must be an object {dtype, shape, data_offsets}, not " +
                      std::string(TypeName(value)));
  }
  bool seen_dtype = false, seen_shape = false, seen_offsets = false;
  dom::object object = value.get_object().value_unsafe();
  for (dom::key_value_pair field : object) {
    bool* seen = nullptr;
    if (field.key == "dtype") {
      seen = &seen_dtype;
    } else if (field.key == "shape") {
      seen = &seen_shape;
    } else if (field.key == "data_offsets") {
      seen = &seen_offsets;
    } else {
      continue;  // The reference ignores unknown fields; so do we.
    }
    if (*seen) return EntryError("field \"" + std::string(field.key) + "\" appears twice");
    *seen = true;
    if (seen == &seen_dtype) {
      SHARDSTREAM_RETURN_IF_ERROR(ParseDTypeField(field.value, &out->dtype));
    } else if (seen == &seen_shape) {
      SHARDSTREAM_RETURN_IF_ERROR(ParseShapeField(field.value, &out->shape));
    } else {
      SHARDSTREAM_RETURN_IF_ERROR(ParseOffsetsField(field.value, out));
    }
  }
  if (!seen_dtype) return EntryError("missing field \"dtype\"");
  if (!seen_shape) return EntryError("missing field \"shape\"");
  if (!seen_offsets) return EntryError("missing field \"data_offsets\"");
  return Status::Ok();
}

Status ParseMetadata(dom::element value, Header* header) {
  if (value.type() == dom::element_type::NULL_VALUE) return Status::Ok();
  if (value.type() != dom::element_type::OBJECT) {
    return FormatError("metadata", "\"__metadata__\" must be an object of strings, not " +
                                       std::string(TypeName(value)));
  }
  std::vector<std::pair<std::string, std::string>> entries;
  std::unordered_map<std::string_view, size_t> position;
  dom::object object = value.get_object().value_unsafe();
  for (dom::key_value_pair field : object) {
    if (field.value.type() != dom::element_type::STRING) {
      return FormatError("metadata", "\"__metadata__\" value for key '" + std::string(field.key) +
                                         "' must be a string, not " +
                                         std::string(TypeName(field.value)));
    }
    std::string_view text = field.value.get_string().value_unsafe();
    auto [it, inserted] = position.emplace(field.key, entries.size());
    if (inserted) {
      entries.emplace_back(std::string(field.key), std::string(text));
    } else {
      entries[it->second].second = std::string(text);  // Last one wins, as in the reference.
    }
  }
  header->metadata = std::move(entries);
  return Status::Ok();
}

// The reference's Metadata::validate, with overflow-checked arithmetic and precise messages.
// Tensors must already be sorted by (begin, end).
Status ValidateLayout(const Header& header) {
  uint64_t expected_begin = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : header.tensors) {
    if (t.end < t.begin) {
      return FormatError("data-offsets", "data_offsets [" + std::to_string(t.begin) + ", " +
                                             std::to_string(t.end) + "] end before they begin")
          .WithTensor(t.name);
    }
    if (t.begin != expected_begin) {
      std::string message;
      if (previous == nullptr) {
        message = "data begins at offset " + std::to_string(t.begin) +
                  ", but the first tensor in the file must begin at 0";
      } else if (t.begin > expected_begin) {
        message = "leaves a hole: begins at offset " + std::to_string(t.begin) +
                  " but the previous tensor '" + previous->name + "' ends at " +
                  std::to_string(expected_begin);
      } else {
        message = "overlaps the previous tensor '" + previous->name + "': begins at offset " +
                  std::to_string(t.begin) + " but that tensor ends at " +
                  std::to_string(expected_begin);
      }
      return FormatError("data-offsets", std::move(message)).WithTensor(t.name);
    }
    expected_begin = t.end;
    previous = &t;

    uint64_t count = 1;
    bool overflow = false;
    for (uint64_t dim : t.shape) {
      if (__builtin_mul_overflow(count, dim, &count)) {
        overflow = true;
        break;
      }
    }
    uint64_t bits = 0;
    if (overflow || __builtin_mul_overflow(count, uint64_t{DTypeBits(t.dtype)}, &bits)) {
      return FormatError("shape-overflow", "shape " + FormatShape(t.shape) + " of " +
                                               std::string(DTypeName(t.dtype)) +
                                               " has a byte size that overflows 64 bits")
          .WithTensor(t.name);
    }
    if (bits % 8 != 0) {
      return FormatError("sub-byte", std::to_string(count) + " elements of " +
                                         std::string(DTypeName(t.dtype)) + " (" +
                                         std::to_string(DTypeBits(t.dtype)) +
                                         " bits each) do not end on a byte boundary")
          .WithTensor(t.name);
    }
    if (t.end - t.begin != bits / 8) {
      return FormatError("size-mismatch",
                         "shape " + FormatShape(t.shape) + " of " +
                             std::string(DTypeName(t.dtype)) + " needs " +
                             std::to_string(bits / 8) + " bytes, but data_offsets [" +
                             std::to_string(t.begin) + ", " + std::to_string(t.end) + "] hold " +
                             std::to_string(t.end - t.begin))
          .WithTensor(t.name);
    }
  }
  uint64_t data_end = 0;
  if (__builtin_add_overflow(expected_begin, header.data_offset(), &data_end) ||
      data_end > header.file_bytes) {
    return FormatError("data-truncated",
                       "tensor data ends at byte " + std::to_string(expected_begin) +
                           " of the data section (file byte " +
                           (data_end >= expected_begin ? std::to_string(data_end) : "> 2^64") +
                           "), but the file has only " + std::to_string(header.file_bytes) +
                           " bytes")
        .WithTensor(previous ? previous->name : std::string());
  }
  if (data_end < header.file_bytes) {
    return FormatError("trailing-bytes",
                       "the file has " + std::to_string(header.file_bytes - data_end) +
                           " bytes after the last tensor's data (file is " +
                           std::to_string(header.file_bytes) + " bytes, data ends at byte " +
                           std::to_string(data_end) + ")");
  }
  return Status::Ok();
}

// serde_json, which the reference uses, reads an integer token that does not fit in i64/u64, and
// "-0", as a floating-point number: valid JSON, but never a usize. simdjson refuses the first
// (NUMBER_ERROR) and reads "-0" as the integer 0. To give the reference's verdict, such tokens are
// rewritten with a ".0" suffix so that simdjson types them as doubles too. Only headers that need
// it pay for this pass (see NeedsNumberRewrite).
bool FitsSerdeInteger(std::string_view token) {
  const bool negative = token.front() == '-';
  std::string_view digits = negative ? token.substr(1) : token;
  if (negative && digits == "0") return false;
  constexpr std::string_view kU64Max = "18446744073709551615";
  constexpr std::string_view kI64MinMagnitude = "9223372036854775808";
  std::string_view limit = negative ? kI64MinMagnitude : kU64Max;
  if (digits.size() != limit.size()) return digits.size() < limit.size();
  return digits <= limit;
}

std::string RewriteSerdeFloats(std::string_view json) {
  std::string out;
  out.reserve(json.size() + 64);
  bool in_string = false;
  for (size_t i = 0; i < json.size();) {
    const char c = json[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < json.size()) {
        out += json[i + 1];
        i += 2;
        continue;
      }
      if (c == '"') in_string = false;
      ++i;
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      ++i;
      continue;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
      size_t end = i + 1;
      while (end < json.size() && json[end] >= '0' && json[end] <= '9') ++end;
      std::string_view token = json.substr(i, end - i);
      out += token;
      const bool fractional =
          end < json.size() && (json[end] == '.' || json[end] == 'e' || json[end] == 'E');
      // A malformed token ("-", "01") is left as it is: simdjson refuses it as serde_json does.
      const std::string_view digits = token.front() == '-' ? token.substr(1) : token;
      const bool well_formed = !digits.empty() && !(digits.size() > 1 && digits.front() == '0');
      if (!fractional && well_formed && !FitsSerdeInteger(token)) out += ".0";
      i = end;
      continue;
    }
    out += c;
    ++i;
  }
  return out;
}

// `json` must be followed by simdjson::SIMDJSON_PADDING readable bytes.
Result<Header> ParsePadded(const char* json, size_t length, uint64_t file_bytes) {
  Header header;
  header.header_bytes = length;
  header.file_bytes = file_bytes;

  if (!simdjson::validate_utf8(json, length)) {
    // Point at the first bad byte: it helps when a writer forgot to encode a name.
    size_t good = 0;
    for (size_t step = length; step > 0; step /= 2) {
      while (good + step <= length && simdjson::validate_utf8(json, good + step)) good += step;
    }
    return FormatError("header-utf8",
                       "header is not valid UTF-8 (first bad byte at header offset " +
                           std::to_string(good) + ")")
        .WithOffset(kHeaderLengthBytes + good);
  }
  if (length >= 3 && std::memcmp(json, "\xEF\xBB\xBF", 3) == 0) {
    return JsonError("it starts with a byte-order mark", simdjson::SUCCESS);
  }

  dom::parser parser;
  if (auto code = parser.allocate(std::max<size_t>(length, 1), kMaxJsonDepth); code) {
    return Status::Error(
        StatusCode::kResourceExhausted, "header-json",
        "cannot allocate the JSON parser: " + std::string(simdjson::error_message(code)));
  }
  dom::element root;
  auto code = parser.parse(json, length, /*realloc_if_needed=*/false).get(root);
  std::string rewritten;  // must outlive `root` when used
  if (code == simdjson::NUMBER_ERROR ||
      (code == simdjson::SUCCESS &&
       std::string_view(json, length).find("-0") != std::string::npos)) {
    rewritten = RewriteSerdeFloats(std::string_view(json, length));
    if (rewritten.size() != length || std::memcmp(rewritten.data(), json, length) != 0) {
      if (auto c = parser.allocate(rewritten.size(), kMaxJsonDepth); c) return JsonError("", c);
      code = parser.parse(rewritten).get(root);
    }
  }
  if (code) {
    if (code == simdjson::DEPTH_ERROR) {
      return JsonError("nested deeper than " + std::to_string(kMaxJsonDepth) + " levels", code);
    }
    if (code == simdjson::EMPTY) return JsonError("the header is empty", code);
    return JsonError("syntax error", code);
  }
  if (root.type() != dom::element_type::OBJECT) {
    return FormatError("header-not-object",
                       "header must be a JSON object, not " + std::string(TypeName(root)));
  }

  dom::object object = root.get_object().value_unsafe();
  header.tensors.reserve(object.size());
  std::unordered_map<std::string_view, size_t> position;
  position.reserve(object.size());
  bool seen_metadata = false;
  for (dom::key_value_pair field : object) {
    if (field.key == "__metadata__") {
      if (seen_metadata) return FormatError("metadata", "\"__metadata__\" appears twice");
      seen_metadata = true;
      SHARDSTREAM_RETURN_IF_ERROR(ParseMetadata(field.value, &header));
      continue;
    }
    TensorInfo info;
    SHARDSTREAM_RETURN_IF_ERROR(ParseTensorEntry(field.value, &info).WithTensor(field.key));
    auto [it, inserted] = position.emplace(field.key, header.tensors.size());
    if (inserted) {
      info.name = std::string(field.key);
      header.tensors.push_back(std::move(info));
    } else {
      // A repeated name replaces the earlier entry, as the reference's HashMap insert does.
      info.name = std::move(header.tensors[it->second].name);
      header.tensors[it->second] = std::move(info);
    }
  }

  // Writers usually emit the header in file order; sort only when they did not.
  auto by_offsets = [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  };
  if (!std::is_sorted(header.tensors.begin(), header.tensors.end(), by_offsets)) {
    std::stable_sort(header.tensors.begin(), header.tensors.end(), by_offsets);
  }
  SHARDSTREAM_RETURN_IF_ERROR(ValidateLayout(header));
  header.IndexNames();
  return header;
}

}  // namespace

uint64_t TensorInfo::numel() const {
  uint64_t count = 1;
  for (uint64_t dim : shape) count *= dim;
  return count;
}

Header::Header(const Header& other)
    : header_bytes(other.header_bytes),
      file_bytes(other.file_bytes),
      tensors(other.tensors),
      metadata(other.metadata) {
  IndexNames();
}

Header& Header::operator=(const Header& other) {
  if (this != &other) {
    header_bytes = other.header_bytes;
    file_bytes = other.file_bytes;
    tensors = other.tensors;
    metadata = other.metadata;
    IndexNames();
  }
  return *this;
}

void Header::IndexNames() {
  by_name_.clear();
  by_name_.reserve(tensors.size());
  for (uint32_t i = 0; i < tensors.size(); ++i) by_name_.emplace(tensors[i].name, i);
}

const TensorInfo* Header::Find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors[it->second];
}

std::string FormatShape(std::span<const uint64_t> shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  out += "]";
  return out;
}

Result<uint64_t> ParseHeaderLength(std::span<const std::byte> prefix, uint64_t file_bytes) {
  if (file_bytes < kHeaderLengthBytes || prefix.size() < kHeaderLengthBytes) {
    return FormatError("header-too-small", "file has " + std::to_string(file_bytes) +
                                               " bytes, fewer than the 8-byte header length");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | std::to_integer<uint64_t>(prefix[i]);
  if (n > kMaxHeaderBytes) {
    return FormatError("header-too-large", "header length " + std::to_string(n) +
                                               " exceeds the limit of " +
                                               std::to_string(kMaxHeaderBytes) + " bytes");
  }
  if (n + kHeaderLengthBytes > file_bytes) {
    return FormatError("header-length", "header length " + std::to_string(n) +
                                            " runs past the end of the file (" +
                                            std::to_string(file_bytes) + " bytes)");
  }
  return n;
}

Result<Header> ParseHeader(std::string_view json, uint64_t file_bytes) {
  simdjson::padded_string padded(json);
  return ParsePadded(padded.data(), json.size(), file_bytes);
}

Result<Header> ReadHeader(int fd, uint64_t file_bytes, const std::filesystem::path& path) {
  // One buffer holds prefix + header + simdjson's padding; the first read is speculative.
  uint64_t first = std::min(file_bytes, kSpeculativeHeaderReadBytes);
  std::unique_ptr<std::byte[]> buffer(new std::byte[first + simdjson::SIMDJSON_PADDING]);
  if (Status s = PreadFull(fd, std::span(buffer.get(), first), 0); !s.ok()) {
    return std::move(s).WithPath(path.string());
  }
  auto length = ParseHeaderLength(std::span(buffer.get(), first), file_bytes);
  if (!length.ok()) return std::move(length).status().WithPath(path.string());
  const uint64_t total = kHeaderLengthBytes + *length;
  if (total > first) {
    std::unique_ptr<std::byte[]> bigger(new std::byte[total + simdjson::SIMDJSON_PADDING]);
    std::memcpy(bigger.get(), buffer.get(), first);
    buffer = std::move(bigger);
    if (Status s = PreadFull(fd, std::span(buffer.get() + first, total - first), first); !s.ok()) {
      return std::move(s).WithPath(path.string());
    }
  }
  std::memset(buffer.get() + total, 0, simdjson::SIMDJSON_PADDING);
  auto header = ParsePadded(reinterpret_cast<const char*>(buffer.get()) + kHeaderLengthBytes,
                            *length, file_bytes);
  if (!header.ok()) return std::move(header).status().WithPath(path.string());
  return header;
}

Result<Header> ReadHeader(const std::filesystem::path& path) {
  SHARDSTREAM_ASSIGN_OR_RETURN(OpenFile file, OpenForRead(path));
  return ReadHeader(file.fd.get(), file.size_bytes, path);
}

}  // namespace shardstream::io
