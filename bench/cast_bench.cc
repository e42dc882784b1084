// CPU dtype casts: the one host cast (engine/cast.h), which converts each staged piece as a load
// with a `dtype` reads it, beside ATen's own conversion of the same values into preallocated
// memory (the reference it must match, tests/python/test_cast.py). bf16 and f16 to f32 and back,
// F8_E4M3 up, 4M elements per cast, single-threaded (a load spreads pieces over its readers).
// GPU loads cast on the device instead.
//
//   build/bench/cast_bench --benchmark_repetitions=5
#include "engine/cast.h"

#include <ATen/ATen.h>

#include <benchmark/benchmark.h>
#include <cstdint>

namespace {

constexpr int64_t kElements = 4 << 20;

at::Tensor Values(at::ScalarType from) { return at::randn({kElements}).to(from); }

void Engine(benchmark::State& state, at::ScalarType from, shardstream::io::DType from_name,
            at::ScalarType to, shardstream::io::DType to_name) {
  const at::Tensor source = Values(from);
  at::Tensor out = at::empty({kElements}, at::TensorOptions().dtype(to));
  for (auto _ : state) {
    shardstream::io::Status status =
        shardstream::engine::HostCast(static_cast<const std::byte*>(source.data_ptr()), from_name,
                                      static_cast<std::byte*>(out.data_ptr()), to_name, kElements);
    if (!status.ok()) state.SkipWithError(status.ToString().c_str());
    benchmark::DoNotOptimize(out.data_ptr());
  }
  state.SetBytesProcessed(
      static_cast<int64_t>(state.iterations() * kElements * at::elementSize(from)));
}

void Aten(benchmark::State& state, at::ScalarType from, at::ScalarType to) {
  const at::Tensor source = Values(from);
  at::Tensor out = at::empty({kElements}, at::TensorOptions().dtype(to));
  for (auto _ : state) {
    out.copy_(source);
    benchmark::DoNotOptimize(out.data_ptr());
  }
  state.SetBytesProcessed(
      static_cast<int64_t>(state.iterations() * kElements * at::elementSize(from)));
}

using shardstream::io::DType;
void BM_EngineBf16ToF32(benchmark::State& s) {
  Engine(s, at::kBFloat16, DType::kBF16, at::kFloat, DType::kF32);
}
void BM_AtenBf16ToF32(benchmark::State& s) { Aten(s, at::kBFloat16, at::kFloat); }
void BM_EngineF32ToBf16(benchmark::State& s) {
  Engine(s, at::kFloat, DType::kF32, at::kBFloat16, DType::kBF16);
}
void BM_AtenF32ToBf16(benchmark::State& s) { Aten(s, at::kFloat, at::kBFloat16); }
void BM_EngineF16ToF32(benchmark::State& s) {
  Engine(s, at::kHalf, DType::kF16, at::kFloat, DType::kF32);
}
void BM_AtenF16ToF32(benchmark::State& s) { Aten(s, at::kHalf, at::kFloat); }
void BM_EngineBf16ToF16(benchmark::State& s) {
  Engine(s, at::kBFloat16, DType::kBF16, at::kHalf, DType::kF16);
}
void BM_AtenBf16ToF16(benchmark::State& s) { Aten(s, at::kBFloat16, at::kHalf); }
void BM_EngineE4m3ToBf16(benchmark::State& s) {
  Engine(s, at::kFloat8_e4m3fn, DType::kF8E4M3, at::kBFloat16, DType::kBF16);
}
void BM_AtenE4m3ToBf16(benchmark::State& s) { Aten(s, at::kFloat8_e4m3fn, at::kBFloat16); }
BENCHMARK(BM_EngineBf16ToF32)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AtenBf16ToF32)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_EngineF32ToBf16)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AtenF32ToBf16)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_EngineF16ToF32)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AtenF16ToF32)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_EngineBf16ToF16)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AtenBf16ToF16)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_EngineE4m3ToBf16)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AtenE4m3ToBf16)->Unit(benchmark::kMicrosecond);

}  // namespace
