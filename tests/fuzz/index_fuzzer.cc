// Fuzz target: the shard index parser (io/checkpoint.h ParseShardIndex). The input is the JSON
// text of a model.safetensors.index.json. An accepted index must only name shards inside the
// index's folder: a shard name that is empty, absolute or has a ".." component aborts.
#include "io/checkpoint.h"
#include "tests/fuzz/fuzz_verdict.h"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

namespace shardstream::fuzz {

std::string Verdict(const uint8_t* data, size_t size) {
  std::string_view json(reinterpret_cast<const char*>(data), size);
  auto mapping = io::ParseShardIndex(json, "fuzz/model.safetensors.index.json");
  if (!mapping.ok()) {
    if (mapping.status().rule().empty()) std::abort();
    return mapping.status().rule();
  }
  for (const auto& [tensor, shard] : *mapping) {
    const std::filesystem::path path(shard);
    bool escapes = shard.empty() || path.is_absolute();
    for (const auto& part : path) escapes = escapes || part == "..";
    if (escapes) {
      std::fprintf(stderr, "index invariant broken: shard '%s' escapes the folder\n",
                   shard.c_str());
      std::abort();
    }
  }
  return "valid";
}

}  // namespace shardstream::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)shardstream::fuzz::Verdict(data, size);
  return 0;
}
