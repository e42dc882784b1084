// How long parsing and validating a safetensors header takes, for 1, 1k and 20k tensors with
// Llama-like names, and for the bundled 10k-tensor fixture read from disk.
//
//   build/bench/header_parse_bench --benchmark_repetitions=5
#include "bench/llama_header.h"
#include "io/safetensors_header.h"

#include <benchmark/benchmark.h>
#include <filesystem>
#include <string>

namespace {

void BM_ParseHeader(benchmark::State& state) {
  const int tensors = static_cast<int>(state.range(0));
  const std::string header = shardstream::bench::LlamaHeader(tensors);
  const uint64_t file_bytes = shardstream::bench::LlamaFileBytes(header, tensors);
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
