// A small streaming JSON writer: safetensors headers, shard indexes, the CLI's --json output.
// Produces compact, valid JSON: strings are escaped (control characters as \u00XX; UTF-8 passes
// through as is).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace shardstream::io {

class JsonWriter {
 public:
  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  JsonWriter& Key(std::string_view key);
  JsonWriter& String(std::string_view value);
  JsonWriter& Uint(uint64_t value);
  JsonWriter& Int(int64_t value);
  JsonWriter& Double(double value);
  JsonWriter& Bool(bool value);
  JsonWriter& Null();

  // Key(k) followed by a value.
  JsonWriter& Field(std::string_view key, std::string_view value) { return Key(key).String(value); }
  JsonWriter& Field(std::string_view key, const char* value) { return Key(key).String(value); }
  JsonWriter& Field(std::string_view key, uint64_t value) { return Key(key).Uint(value); }
  JsonWriter& Field(std::string_view key, double value) { return Key(key).Double(value); }
  JsonWriter& Field(std::string_view key, bool value) { return Key(key).Bool(value); }

  const std::string& str() const { return out_; }

 private:
  void Separate();
  void Escaped(std::string_view text);

  std::string out_;
  std::vector<bool> first_in_scope_;  // one per open object/array
  bool after_key_ = false;
};

}  // namespace shardstream::io
