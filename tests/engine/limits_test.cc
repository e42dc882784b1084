// Limits: a checkpoint of 200,000 tiny tensors loads byte-exact through every path, and its fixed
// cost per tensor (validate, plan, read, copy) is printed and bounded, so that per-tensor work
// that grows faster than linearly (a quadratic lookup, a per-tensor system call) fails here.
#include "engine/pipeline.h"
#include "engine/sink.h"
#include "io/checkpoint.h"
#include "tests/support/test_files.h"

#include <chrono>
#include <cstdio>
#include <gtest/gtest.h>
#include <string>
#include <vector>

namespace shardstream::engine {
namespace {

using Clock = std::chrono::steady_clock;

// The pipeline reading straight into the destinations.
PipelineOptions InPlace() {
  PipelineOptions options;
  options.staged = false;
  return options;
}

constexpr int kTensors = 200'000;
constexpr uint64_t kTensorBytes = 4;
// Generous: measured at ~1-3 µs per tensor and path on a 2-core VM (BENCHMARKS.md). Sanitizer
// builds are slower by an unknown factor and only check correctness.
constexpr double kMaxMicrosecondsPerTensor = 50;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kTimed = false;
#else
constexpr bool kTimed = true;
#endif

double MicrosecondsPerTensor(Clock::time_point start) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count() / kTensors;
}

// Tensor i is "layers.i.w", U8 [4], holding bytes i, i+1, i+2, i+3 (mod 256).
std::string TinyTensorsFile() {
  std::string header = "{";
  std::string data;
  header.reserve(kTensors * 80);
  data.reserve(kTensors * kTensorBytes);
  for (int i = 0; i < kTensors; ++i) {
    if (i) header += ',';
    const uint64_t begin = i * kTensorBytes;
    header += "\"layers." + std::to_string(i) + ".w\":{\"dtype\":\"U8\",\"shape\":[4]," +
              "\"data_offsets\":[" + std::to_string(begin) + "," +
              std::to_string(begin + kTensorBytes) + "]}";
    for (uint64_t b = 0; b < kTensorBytes; ++b) data += static_cast<char>((i + b) & 0xff);
  }
  header += "}";
  return shardstream::testing::SafetensorsBytes(header, data);
}

TEST(LimitsTest, TwoHundredThousandTinyTensorsLoadWithABoundedCostPerTensor) {
  shardstream::testing::ScratchDir dir;
  auto path = dir.Write("tiny.safetensors", TinyTensorsFile());

  auto start = Clock::now();
  auto checkpoint = io::OpenCheckpoint(path);
  const double open_us = MicrosecondsPerTensor(start);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
  ASSERT_EQ(checkpoint->tensor_count(), static_cast<size_t>(kTensors));

  std::vector<std::byte> memory(kTensors * kTensorBytes);
  std::vector<Target> targets;
  targets.reserve(kTensors);
  const auto& tensors = checkpoint->files[0].header.tensors;
  for (uint32_t i = 0; i < tensors.size(); ++i) {
    // Destination by name, not by file order, so a misplaced tensor shows.
    const int index = std::stoi(tensors[i].name.substr(7));
    targets.push_back(Target{{0, i}, memory.data() + index * kTensorBytes});
  }
  auto expect_bytes = [&] {
    for (int i = 0; i < kTensors; ++i) {
      for (uint64_t b = 0; b < kTensorBytes; ++b) {
        ASSERT_EQ(memory[i * kTensorBytes + b], std::byte((i + b) & 0xff)) << "tensor " << i;
      }
    }
  };

  start = Clock::now();
  auto filled = RunPipeline(*checkpoint, targets, nullptr, InPlace());
  const double fill_us = MicrosecondsPerTensor(start);
  ASSERT_TRUE(filled.ok()) << filled.status().ToString();
  expect_bytes();

  std::fill(memory.begin(), memory.end(), std::byte{0});
  CpuSink sink(DestinationsOf(*checkpoint, targets));
  start = Clock::now();
  auto staged = RunPipeline(*checkpoint, targets, &sink, {});
  const double staged_us = MicrosecondsPerTensor(start);
  ASSERT_TRUE(staged.ok()) << staged.status().ToString();
  expect_bytes();

  std::printf(
      "[ cost     ] %d tensors of %llu bytes: open+validate %.2f us/tensor, "
      "in place %.2f us/tensor, staged pipeline %.2f us/tensor\n",
      kTensors, static_cast<unsigned long long>(kTensorBytes), open_us, fill_us, staged_us);
  if (kTimed) {
    EXPECT_LT(open_us, kMaxMicrosecondsPerTensor);
    EXPECT_LT(fill_us, kMaxMicrosecondsPerTensor);
    EXPECT_LT(staged_us, kMaxMicrosecondsPerTensor);
  }
}

}  // namespace
}  // namespace shardstream::engine
