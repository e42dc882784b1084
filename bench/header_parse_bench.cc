// How long parsing and validating a safetensors header takes, for 1, 1k and 20k tensors with
// Llama-like names, and for the bundled 10k-tensor fixture read from disk.
//
//   build/bench/header_parse_bench --benchmark_repetitions=5
#include "io/safetensors_header.h"

#include <benchmark/benchmark.h>
#include <filesystem>
#include <string>

namespace {

std::string MakeHeader(int tensors) {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  uint64_t offset = 0;
  for (int i = 0; i < tensors; ++i) {
    const uint64_t size = 4096ull * 2;
    header += ",\"model.layers." + std::to_string(i / 9) + ".mlp.proj_" + std::to_string(i % 9) +
              ".weight\":{\"dtype\":\"BF16\",\"shape\":[64,64],\"data_offsets\":[" +
              std::to_string(offset) + "," + std::to_string(offset + size) + "]}";
    offset += size;
  }
  header += "}";
  return header;
}

void BM_ParseHeader(benchmark::State& state) {
  const int tensors = static_cast<int>(state.range(0));
  const std::string header = MakeHeader(tensors);
  const uint64_t file_bytes = 8 + header.size() + 8192ull * tensors;
  for (auto _ : state) {
    auto parsed = shardstream::io::ParseHeader(header, file_bytes);
    if (!parsed.ok()) state.SkipWithError(parsed.status().ToString().c_str());
    benchmark::DoNotOptimize(parsed);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * header.size()));
  state.counters["tensors"] = tensors;
}
BENCHMARK(BM_ParseHeader)->Arg(1)->Arg(1000)->Arg(20000)->Unit(benchmark::kMicrosecond);

void BM_ReadHeaderMany10kFixture(benchmark::State& state) {
  const std::filesystem::path path =
      std::filesystem::path(SHARDSTREAM_SOURCE_DIR) / "tests/data/fixtures/many_10k.safetensors";
  for (auto _ : state) {
    auto parsed = shardstream::io::ReadHeader(path);
    if (!parsed.ok()) state.SkipWithError(parsed.status().ToString().c_str());
    benchmark::DoNotOptimize(parsed);
  }
}
BENCHMARK(BM_ReadHeaderMany10kFixture)->Unit(benchmark::kMicrosecond);

}  // namespace
