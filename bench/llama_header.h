// A safetensors header with Llama-like tensor names for the micro benchmarks: `tensors` BF16
// tensors of 64×64, laid out back to back.
#pragma once

#include <cstdint>
#include <string>

namespace shardstream::bench {

inline constexpr uint64_t kLlamaHeaderTensorBytes = uint64_t{64} * 64 * 2;

inline std::string LlamaHeader(int tensors) {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  uint64_t offset = 0;
  for (int i = 0; i < tensors; ++i) {
    header += ",\"model.layers." + std::to_string(i / 9) + ".mlp.proj_" + std::to_string(i % 9) +
              ".weight\":{\"dtype\":\"BF16\",\"shape\":[64,64],\"data_offsets\":[" +
              std::to_string(offset) + "," + std::to_string(offset + kLlamaHeaderTensorBytes) +
              "]}";
    offset += kLlamaHeaderTensorBytes;
  }
  header += "}";
  return header;
}

// The size of the file the header describes.
inline uint64_t LlamaFileBytes(const std::string& header, int tensors) {
  return 8 + header.size() + kLlamaHeaderTensorBytes * static_cast<uint64_t>(tensors);
}

}  // namespace shardstream::bench
