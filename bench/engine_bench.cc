// The engine's hot pieces without IO: planning the reads of a checkpoint (1, 1k, 20k tensors;
// buffered and O_DIRECT-aligned) and copying a staged 4 MiB slot into its tensors (CpuSink, 1 to
// 1024 pieces per slot, destinations already faulted in so the copy alone is timed).
//
//   build/bench/engine_bench --benchmark_repetitions=5
#include "bench/llama_header.h"
#include "engine/pipeline.h"
#include "engine/plan.h"
#include "engine/sink.h"
#include "io/checkpoint.h"
#include "io/safetensors_header.h"

#include <benchmark/benchmark.h>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace {

using shardstream::engine::Piece;

constexpr uint64_t kSlotBytes = 4 << 20;  // the staged pipeline's default chunk

void BM_BuildReadPlan(benchmark::State& state) {
  const int tensors = static_cast<int>(state.range(0));
  const uint64_t alignment = static_cast<uint64_t>(state.range(1));
  const std::string header = shardstream::bench::LlamaHeader(tensors);
  auto parsed =
      shardstream::io::ParseHeader(header, shardstream::bench::LlamaFileBytes(header, tensors));
  if (!parsed.ok()) {
    state.SkipWithError(parsed.status().ToString().c_str());
    return;
  }
  shardstream::io::Checkpoint checkpoint;
  checkpoint.files.push_back({"bench.safetensors", std::move(*parsed)});
  std::vector<shardstream::engine::Target> targets;
  for (uint32_t i = 0; i < checkpoint.files[0].header.tensors.size(); ++i)
    targets.emplace_back(shardstream::io::TensorLocation{0, i}, nullptr);
  shardstream::engine::PlanOptions options;
  options.chunk_bytes = kSlotBytes;
  options.alignment_bytes = alignment;
  for (auto _ : state) {
    auto plan = shardstream::engine::BuildReadPlan(checkpoint, targets, options);
    if (!plan.ok()) state.SkipWithError(plan.status().ToString().c_str());
    benchmark::DoNotOptimize(plan);
  }
  state.counters["tensors"] = tensors;
}
BENCHMARK(BM_BuildReadPlan)
    ->ArgNames({"tensors", "align"})
    ->Args({1, 1})
    ->Args({1000, 1})
    ->Args({20000, 1})
    ->Args({20000, 4096})
    ->Unit(benchmark::kMicrosecond);

void BM_SlotCopy(benchmark::State& state) {
  const uint32_t pieces = static_cast<uint32_t>(state.range(0));
  const uint64_t piece_bytes = kSlotBytes / pieces;
  std::vector<std::byte> slot(kSlotBytes, std::byte{0x5a});
  std::vector<std::byte> destination(kSlotBytes, std::byte{0});  // faulted in once, here
  std::vector<shardstream::engine::Destination> targets;
  std::vector<Piece> plan;
  for (uint32_t i = 0; i < pieces; ++i) {
    targets.push_back({destination.data() + i * piece_bytes, piece_bytes,
                       shardstream::io::DType::kU8, shardstream::io::DType::kU8});
    plan.push_back(Piece{i, 0, i * piece_bytes, piece_bytes});
  }
  shardstream::engine::CpuSink sink(std::move(targets));
  for (auto _ : state) {
    shardstream::engine::StagedSlot staged;  // no lease: the slot belongs to no pool
    staged.data = slot.data();
    staged.size_bytes = kSlotBytes;
    shardstream::io::Status status = sink.Consume(std::move(staged), plan);
    if (!status.ok()) state.SkipWithError(status.ToString().c_str());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kSlotBytes));
}
BENCHMARK(BM_SlotCopy)
    ->ArgName("pieces")
    ->Arg(1)
    ->Arg(64)
    ->Arg(1024)
    ->Unit(benchmark::kMicrosecond);

}  // namespace
