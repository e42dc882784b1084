// Test checkpoints whose bytes identify themselves, for the engine suites: tensor "tK" holds
// byte (K * 31 + b * 7) & 0xff at position b, so any misplaced, missing or duplicated byte shows.
#pragma once

#include "engine/pipeline.h"
#include "io/checkpoint.h"
#include "tests/support/test_files.h"

#include <cstddef>
#include <filesystem>
#include <gtest/gtest.h>
#include <string>
#include <utility>
#include <vector>

namespace shardstream::engine::testing {

inline std::byte PatternByte(int tensor, uint64_t position) {
  return std::byte((tensor * 31 + position * 7) & 0xff);
}

// A valid file of U8 tensors "t{first}".."t{first+n-1}", each `size` bytes of the pattern. Odd
// sizes keep tensors and the file end off every block boundary.
inline std::string PatternFile(int n, uint64_t size, int first = 0) {
  std::string header = "{";
  std::string data;
  for (int i = 0; i < n; ++i) {
    if (i) header += ",";
    header += "\"t" + std::to_string(first + i) + "\":{\"dtype\":\"U8\",\"shape\":[" +
              std::to_string(size) + "],\"data_offsets\":[" + std::to_string(i * size) + "," +
              std::to_string((i + 1) * size) + "]}";
    for (uint64_t b = 0; b < size; ++b) data += static_cast<char>(PatternByte(first + i, b));
  }
  header += "}";
  return shardstream::testing::SafetensorsBytes(header, data);
}

// A checkpoint's first file and one buffer per tensor, filled with 0xAA.
struct Loaded {
  io::Checkpoint checkpoint;
  std::vector<std::vector<std::byte>> buffers;
  std::vector<Target> targets;
};

inline Loaded Prepare(const std::filesystem::path& path) {
  auto checkpoint = io::OpenCheckpoint(path);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
  Loaded loaded{std::move(*checkpoint), {}, {}};
  const auto& tensors = loaded.checkpoint.files[0].header.tensors;
  loaded.buffers.resize(tensors.size());
  for (uint32_t i = 0; i < tensors.size(); ++i) {
    loaded.buffers[i].assign(tensors[i].size_bytes(), std::byte{0xAA});
    loaded.targets.push_back(Target{{0, i}, loaded.buffers[i].data()});
  }
  return loaded;
}

// The pipeline's in-place route (reads straight into the destinations), with pread unless a test
// says otherwise.
inline PipelineOptions InPlace() {
  PipelineOptions options;
  options.staged = false;
  options.backend = io::BackendKind::kPread;
  return options;
}

inline void ExpectPattern(const Loaded& loaded) {
  const auto& tensors = loaded.checkpoint.files[0].header.tensors;
  std::vector<std::byte> expected;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int index = std::stoi(tensors[i].name.substr(1));
    expected.resize(tensors[i].size_bytes());
    for (uint64_t b = 0; b < expected.size(); ++b) expected[b] = PatternByte(index, b);
    if (loaded.buffers[i] == expected) continue;
    for (uint64_t b = 0; b < expected.size(); ++b) {
      ASSERT_EQ(loaded.buffers[i][b], expected[b]) << tensors[i].name << " byte " << b;
    }
  }
}

}  // namespace shardstream::engine::testing
