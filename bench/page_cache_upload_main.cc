// The page-cache upload experiment (bench/page_cache_upload.h) beside the library's staged path,
// on one cached checkpoint:
//
//   build/bench/page_cache_upload CKPT [--runs N] [--device D] [--window-mb M] [--windows K]
//                                      [--pin-threads T]
//
// Each run uploads every tensor of CKPT (a .safetensors file or a sharded index) into one device
// buffer, first through the page cache pinned in place, then through the staged path (a
// PinnedPool and the CudaSink, as `shardstream load --device cuda:D` does), and prints one line
// per run: path, seconds, GB/s. The first run's bytes are copied back and compared with the file,
// so a wrong experiment cannot report a rate. Exit status 2 when there is no GPU.
#include "bench/page_cache_upload.h"
#include "cuda/cuda_sink.h"
#include "cuda/device_ops.h"
#include "cuda/error.h"
#include "cuda/pinned_pool.h"
#include "engine/pipeline.h"
#include "io/checkpoint.h"

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using namespace shardstream;
using Clock = std::chrono::steady_clock;

class RuntimePinning final : public bench::HostPinning {
 public:
  io::Status RegisterHostReadOnly(const std::byte* data, size_t size_bytes) override {
    io::Status status =
        cuda::CudaStatus(cudaHostRegister(const_cast<std::byte*>(data), size_bytes,
                                          cudaHostRegisterReadOnly | cudaHostRegisterPortable),
                         "cudaHostRegister");
    if (!status.ok()) cudaGetLastError();  // not sticky: leave nothing for the next call
    return status;
  }
  io::Status UnregisterHost(const std::byte* data) override {
    return cuda::CudaStatus(cudaHostUnregister(const_cast<std::byte*>(data)), "cudaHostUnregister");
  }
};

int Fail(const std::string& what) {
  std::fprintf(stderr, "page_cache_upload: %s\n", what.c_str());
  return 1;
}

uint64_t Arg(int argc, char** argv, const char* name, uint64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return std::strtoull(argv[i + 1], nullptr, 10);
  }
  return fallback;
}

int Run(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr,
                 "usage: page_cache_upload CKPT [--runs N] [--device D] [--window-mb M] "
                 "[--windows K] [--pin-threads T]\n");
    return 1;
  }
  const int device = static_cast<int>(Arg(argc, argv, "--device", 0));
  const uint64_t runs = Arg(argc, argv, "--runs", 3);
  bench::PageCacheUploadOptions options;
  options.window_bytes = Arg(argc, argv, "--window-mb", bench::kDefaultPinWindowBytes >> 20) << 20;
  options.windows_in_flight =
      static_cast<uint32_t>(Arg(argc, argv, "--windows", bench::kDefaultPinnedWindows));
  options.pin_threads =
      static_cast<uint32_t>(Arg(argc, argv, "--pin-threads", bench::kDefaultPinThreads));

  auto ops = cuda::MakeCudaRuntimeOps(device);
  if (!ops.ok()) {
    std::fprintf(stderr, "page_cache_upload: no GPU: %s\n", ops.status().ToString().c_str());
    return 2;
  }
  auto checkpoint = io::OpenCheckpoint(argv[1]);
  if (!checkpoint.ok()) return Fail(checkpoint.status().ToString());

  // One device buffer for every tensor, back to back; host copies of the files for the check.
  uint64_t total = 0;
  std::vector<std::pair<io::TensorLocation, uint64_t>> layout;  // tensor, offset in the buffer
  for (uint32_t f = 0; f < checkpoint->files.size(); ++f) {
    for (uint32_t t = 0; t < checkpoint->files[f].header.tensors.size(); ++t) {
      layout.emplace_back(io::TensorLocation{f, t}, total);
      total += checkpoint->files[f].header.tensors[t].size_bytes();
    }
  }
  SHARDSTREAM_CUDA_TRY(cudaSetDevice(device));
  void* buffer = nullptr;
  SHARDSTREAM_CUDA_TRY(cudaMalloc(&buffer, std::max<uint64_t>(total, 1)));
  std::vector<engine::Target> targets;
  targets.reserve(layout.size());
  for (const auto& [location, offset] : layout) {
    targets.emplace_back(location, static_cast<std::byte*>(buffer) + offset);
  }
  std::vector<std::byte> expected(total);
  {
    std::vector<engine::Target> host;
    host.reserve(layout.size());
    for (const auto& [location, offset] : layout)
      host.emplace_back(location, expected.data() + offset);
    engine::PipelineOptions in_place;
    in_place.staged = false;
    auto read = engine::RunPipeline(*checkpoint, host, nullptr, in_place);
    if (!read.ok()) return Fail(read.status().ToString());
  }
  auto check = [&](const char* path) -> bool {
    std::vector<std::byte> got(total);
    SHARDSTREAM_CUDA_TRY(cudaMemcpy(got.data(), buffer, total, cudaMemcpyDeviceToHost));
    if (got == expected) return true;
    std::fprintf(stderr, "page_cache_upload: %s: the device bytes differ from the file\n", path);
    return false;
  };
  SHARDSTREAM_CUDA_TRY(cudaMemset(buffer, 0, total));

  RuntimePinning pinning;
  const uint64_t chunk_bytes = kDefaultStagedChunkBytes;
  auto pool = cuda::PinnedPool::Shared(device, kDefaultStagingBytes,
                                       chunk_bytes + 2 * engine::kStagingAlignment);
  if (!pool.ok()) return Fail(pool.status().ToString());
  const double gb = static_cast<double>(total) / 1e9;
  for (uint64_t run = 0; run < runs; ++run) {
    auto start = Clock::now();
    auto cached = bench::UploadFromPageCache(*checkpoint, targets, options, **ops, pinning);
    double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (!cached.ok()) return Fail("page-cache: " + cached.status().ToString());
    std::printf("page-cache run %llu: %.3f s, %.2f GB/s (%llu windows of %llu MiB, %u in flight)\n",
                static_cast<unsigned long long>(run), seconds, gb / seconds,
                static_cast<unsigned long long>(cached->windows),
                static_cast<unsigned long long>(options.window_bytes >> 20),
                options.windows_in_flight);
    if (run == 0 && !check("page-cache")) return 1;
    if (run == 0) SHARDSTREAM_CUDA_TRY(cudaMemset(buffer, 0, total));

    start = Clock::now();
    auto sink = cuda::CudaSink::Create(engine::DestinationsOf(*checkpoint, targets), {}, **ops);
    if (!sink.ok()) return Fail(sink.status().ToString());
    engine::PipelineOptions pipeline;
    pipeline.chunk_bytes = chunk_bytes;
    pipeline.pool = pool->get();
    auto staged = engine::RunPipeline(*checkpoint, targets, sink->get(), pipeline);
    seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (!staged.ok()) return Fail("staged: " + staged.status().ToString());
    std::printf("staged     run %llu: %.3f s, %.2f GB/s\n", static_cast<unsigned long long>(run),
                seconds, gb / seconds);
    if (run == 0 && !check("staged")) return 1;
    std::fflush(stdout);
  }
  SHARDSTREAM_CUDA_TRY(cudaFree(buffer));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "page_cache_upload: %s\n", e.what());
    return 1;
  }
}
