// CPU dtype casts as `LoadFile` with `dtype` runs them (ATen's Tensor::to after loading): bf16 and
// f16 to f32 and back, 4M elements (8 MiB of bf16) per cast. GPU loads cast on the device instead.
//
//   build/bench/cast_bench --benchmark_repetitions=5
#include <ATen/ATen.h>

#include <benchmark/benchmark.h>
#include <cstdint>

namespace {

constexpr int64_t kElements = 4 << 20;

void Cast(benchmark::State& state, at::ScalarType from, at::ScalarType to) {
  const at::Tensor source = at::randn({kElements}).to(from);
  for (auto _ : state) {
    at::Tensor cast = source.to(to);
    benchmark::DoNotOptimize(cast.data_ptr());
  }
  state.SetBytesProcessed(
      static_cast<int64_t>(state.iterations() * kElements * at::elementSize(from)));
}

void BM_CastBf16ToF32(benchmark::State& state) { Cast(state, at::kBFloat16, at::kFloat); }
void BM_CastF32ToBf16(benchmark::State& state) { Cast(state, at::kFloat, at::kBFloat16); }
void BM_CastF16ToF32(benchmark::State& state) { Cast(state, at::kHalf, at::kFloat); }
void BM_CastBf16ToF16(benchmark::State& state) { Cast(state, at::kBFloat16, at::kHalf); }
BENCHMARK(BM_CastBf16ToF32)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CastF32ToBf16)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CastF16ToF32)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_CastBf16ToF16)->Unit(benchmark::kMicrosecond);

}  // namespace
