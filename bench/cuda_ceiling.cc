// The GPU upload ceilings a loader is measured against, on this machine, now:
//
//   h2d_pinned_Kstreams   cudaMemcpyAsync from pinned memory, large transfers, over 1 and K streams
//   cache_to_pinned       memcpy from a mapped, page-cache-resident file into pinned memory, with
//                         N threads (what the staged pipeline's read path does at best when warm)
//   page_cache_*          the page cache pinned in place (cudaHostRegister ReadOnly of a mapped
//                         file) and copied from without a CPU copy
//   pin_register/alloc    setting up the staging memory: cudaHostRegister of fresh page-aligned
//                         memory (what PinnedPool does) vs cudaHostAlloc, and their teardown
//
//   build/bench/cuda_ceiling [--json] [--gib N] [--streams K] [--threads N] [--staging-mb M]
//                            [--file PATH]
//
// Prints one line per figure as it is measured (one JSON object per line with --json). Without
// --file it writes a temporary file of the transfer size under $TMPDIR and reads it while it is
// still in the page cache. Exit status 2 when there is no GPU.
#include "cuda/error.h"

#include <cuda_runtime_api.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using shardstream::cuda::CudaError;

constexpr uint64_t kTransferBytes = 64ull << 20;  // one cudaMemcpyAsync
constexpr int kRepeats = 3;                       // best of

bool g_json = false;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void Row(const char* name, double value, const char* unit, const std::string& detail) {
  if (g_json) {
    std::printf("{\"figure\":\"%s\",\"value\":%.4f,\"unit\":\"%s\",\"detail\":\"%s\"}\n", name,
                value, unit, detail.c_str());
  } else {
    std::printf("%-24s %10.3f %-5s %s\n", name, value, unit, detail.c_str());
  }
  std::fflush(stdout);
}

// Best GB/s of copying `bytes` from pinned `host` to `device` over `streams` streams, each
// taking every streams-th 64 MiB transfer.
double PinnedH2D(const char* host, char* device, uint64_t bytes, int stream_count) {
  std::vector<cudaStream_t> streams(stream_count);
  for (auto& s : streams)
    SHARDSTREAM_CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  double best = 0;
  for (int r = 0; r < kRepeats + 1; ++r) {  // the first round warms up
    SHARDSTREAM_CUDA_TRY(cudaDeviceSynchronize());
    const auto start = Clock::now();
    uint64_t k = 0;
    for (uint64_t at = 0; at < bytes; at += kTransferBytes, ++k) {
      SHARDSTREAM_CUDA_TRY(cudaMemcpyAsync(device + at, host + at,
                                           std::min(kTransferBytes, bytes - at),
                                           cudaMemcpyHostToDevice, streams[k % stream_count]));
    }
    for (auto& s : streams) SHARDSTREAM_CUDA_TRY(cudaStreamSynchronize(s));
    const double gbps = static_cast<double>(bytes) / Seconds(start) / 1e9;
    if (r > 0) best = std::max(best, gbps);
  }
  for (auto& s : streams) SHARDSTREAM_CUDA_TRY(cudaStreamDestroy(s));
  return best;
}

// Best GB/s of memcpy from `src` into `dst` with `threads` threads, 4 MiB at a time (the staged
// pipeline's chunk).
double CopyRate(const char* src, char* dst, uint64_t bytes, int threads) {
  double best = 0;
  for (int r = 0; r < kRepeats; ++r) {
    const auto start = Clock::now();
    std::vector<std::thread> workers;
    workers.reserve(threads);
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([=] {
        constexpr uint64_t kStep = 4ull << 20;
        const uint64_t steps = (bytes + kStep - 1) / kStep;
        for (uint64_t i = steps * t / threads; i < steps * (t + 1) / threads; ++i) {
          const uint64_t at = i * kStep;
          std::memcpy(dst + at, src + at, std::min(kStep, bytes - at));
        }
      });
    }
    for (std::thread& w : workers) w.join();
    best = std::max(best, static_cast<double>(bytes) / Seconds(start) / 1e9);
  }
  return best;
}

// The page cache itself as the DMA source, no CPU copy: windows of a read-only shared mapping of
// the file are pinned with cudaHostRegister(ReadOnly), copied to the device and unpinned, one
// after another. Rows: the pinning rate, and the end-to-end rate of the serial loop (a pipelined
// loader would reach about min(pinning, H2D)). Prints why when the driver refuses.
void RegisteredPageCache(int fd, uint64_t bytes, char* device, uint64_t window,
                         const std::string& detail) {
  void* map = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) throw std::runtime_error("mmap of the file failed");
  cudaStream_t stream;
  SHARDSTREAM_CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  double pin_s = 0, unpin_s = 0;
  const auto start = Clock::now();
  std::string failure;
  for (uint64_t at = 0; at < bytes && failure.empty(); at += window) {
    char* from = static_cast<char*>(map) + at;
    const uint64_t n = std::min(window, bytes - at);
    auto t = Clock::now();
    const cudaError_t pinned =
        cudaHostRegister(from, n, cudaHostRegisterReadOnly | cudaHostRegisterPortable);
    pin_s += Seconds(t);
    if (pinned != cudaSuccess) {
      failure = std::string(cudaGetErrorName(pinned)) + ": " + cudaGetErrorString(pinned);
      cudaGetLastError();
      break;
    }
    SHARDSTREAM_CUDA_TRY(cudaMemcpyAsync(device + at, from, n, cudaMemcpyHostToDevice, stream));
    SHARDSTREAM_CUDA_TRY(cudaStreamSynchronize(stream));
    t = Clock::now();
    SHARDSTREAM_CUDA_TRY(cudaHostUnregister(from));
    unpin_s += Seconds(t);
  }
  const double total_s = Seconds(start);
  SHARDSTREAM_CUDA_TRY(cudaStreamDestroy(stream));
  ::munmap(map, bytes);
  const std::string w = std::to_string(window >> 20) + " MiB windows";
  if (!failure.empty()) {
    Row("page_cache_register", 0, "GB/s", "refused: " + failure);
    return;
  }
  const double gb = static_cast<double>(bytes) / 1e9;
  Row(("page_cache_pin_" + std::to_string(window >> 20) + "m").c_str(), gb / pin_s, "GB/s",
      detail + ", " + w + " (cudaHostRegister ReadOnly of the mapped file; unpin " +
          std::to_string(gb / unpin_s).substr(0, 6) + " GB/s)");
  Row(("page_cache_serial_h2d_" + std::to_string(window >> 20) + "m").c_str(), gb / total_s, "GB/s",
      detail + ", " + w + " (pin, copy, unpin one window at a time)");
}

int Run(int argc, char** argv) {
  uint64_t bytes = 1ull << 30;
  int streams = 4;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  uint64_t staging = 64ull << 20;
  std::string file;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "cuda_ceiling: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--json") {
      g_json = true;
    } else if (arg == "--gib") {
      bytes = static_cast<uint64_t>(std::atof(next()) * (1ull << 30));
    } else if (arg == "--streams") {
      streams = std::max(1, std::atoi(next()));
    } else if (arg == "--threads") {
      threads = std::max(1, std::atoi(next()));
    } else if (arg == "--staging-mb") {
      staging = std::strtoull(next(), nullptr, 10) << 20;
    } else if (arg == "--file") {
      file = next();
    } else {
      std::fprintf(stderr,
                   "usage: cuda_ceiling [--json] [--gib N] [--streams K] [--threads N] "
                   "[--staging-mb M] [--file PATH]\n");
      return 2;
    }
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "cuda_ceiling: no GPU (%s)\n", cudaGetErrorName(cudaGetLastError()));
    return 2;
  }
  cudaDeviceProp prop{};
  SHARDSTREAM_CUDA_TRY(cudaGetDeviceProperties(&prop, 0));
  const std::string size_detail = std::to_string(bytes >> 20) + " MiB";

  // --- Pinning setup: what the first load pays for its staging memory.
  {
    double register_s = 1e9, register_thp_s = 1e9, unregister_s = 1e9, alloc_s = 1e9, free_s = 1e9;
    for (int r = 0; r < kRepeats; ++r) {
      // Huge-page advice first (what PinnedPool does), on a 2 MiB-aligned range.
      const size_t huge = 2ull << 20;
      void* raw = ::mmap(nullptr, staging + huge, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (raw == MAP_FAILED) throw std::runtime_error("mmap of staging memory failed");
      void* aligned = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(raw) + huge - 1) &
                                              ~static_cast<uintptr_t>(huge - 1));
      ::madvise(aligned, staging, MADV_HUGEPAGE);
      auto start = Clock::now();
      SHARDSTREAM_CUDA_TRY(cudaHostRegister(aligned, staging, cudaHostRegisterPortable));
      register_thp_s = std::min(register_thp_s, Seconds(start));
      SHARDSTREAM_CUDA_TRY(cudaHostUnregister(aligned));
      ::munmap(raw, staging + huge);

      void* fresh =
          ::mmap(nullptr, staging, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (fresh == MAP_FAILED) throw std::runtime_error("mmap of staging memory failed");
      start = Clock::now();
      SHARDSTREAM_CUDA_TRY(cudaHostRegister(fresh, staging, cudaHostRegisterPortable));
      register_s = std::min(register_s, Seconds(start));
      start = Clock::now();
      SHARDSTREAM_CUDA_TRY(cudaHostUnregister(fresh));
      unregister_s = std::min(unregister_s, Seconds(start));
      ::munmap(fresh, staging);
      void* pinned = nullptr;
      start = Clock::now();
      SHARDSTREAM_CUDA_TRY(cudaHostAlloc(&pinned, staging, cudaHostAllocPortable));
      alloc_s = std::min(alloc_s, Seconds(start));
      start = Clock::now();
      SHARDSTREAM_CUDA_TRY(cudaFreeHost(pinned));
      free_s = std::min(free_s, Seconds(start));
    }
    const std::string detail = std::to_string(staging >> 20) + " MiB staging, best of 3";
    Row("pin_register_ms", register_s * 1e3, "ms", detail + " (cudaHostRegister of fresh mmap)");
    Row("pin_register_thp_ms", register_thp_s * 1e3, "ms",
        detail + " (the same after madvise(MADV_HUGEPAGE), as PinnedPool does)");
    Row("pin_unregister_ms", unregister_s * 1e3, "ms", detail);
    Row("pin_hostalloc_ms", alloc_s * 1e3, "ms", detail + " (cudaHostAlloc)");
    Row("pin_freehost_ms", free_s * 1e3, "ms", detail);
  }

  // --- Pinned host-to-device.
  char* host = nullptr;
  char* device = nullptr;
  SHARDSTREAM_CUDA_TRY(
      cudaHostAlloc(reinterpret_cast<void**>(&host), bytes, cudaHostAllocPortable));
  SHARDSTREAM_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&device), bytes));
  std::memset(host, 0x5A, bytes);
  const std::string h2d_detail = size_detail + " in 64 MiB transfers to " + prop.name;
  Row("h2d_pinned_1stream", PinnedH2D(host, device, bytes, 1), "GB/s", h2d_detail);
  if (streams > 1) {
    const std::string name = "h2d_pinned_" + std::to_string(streams) + "streams";
    Row(name.c_str(), PinnedH2D(host, device, bytes, streams), "GB/s", h2d_detail);
  }

  // --- Page cache to pinned memory.
  std::string path = file;
  bool temporary = false;
  if (path.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    path = std::string(tmp != nullptr ? tmp : "/tmp") + "/shardstream-ceiling-XXXXXX";
    int fd = ::mkstemp(path.data());
    if (fd < 0) throw std::runtime_error("mkstemp failed: " + std::string(std::strerror(errno)));
    temporary = true;
    for (uint64_t at = 0; at < bytes;) {  // the pinned buffer's bytes; they stay in page cache
      const ssize_t n = ::write(fd, host + at, std::min<uint64_t>(bytes - at, 64ull << 20));
      if (n <= 0) throw std::runtime_error("write failed: " + std::string(std::strerror(errno)));
      at += static_cast<uint64_t>(n);
    }
    ::close(fd);
  }
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0 || st.st_size == 0) {
    throw std::runtime_error(path + ": " + std::strerror(errno));
  }
  const uint64_t file_bytes = std::min<uint64_t>(static_cast<uint64_t>(st.st_size), bytes);
  // Mapped and populated up front: the copy is timed, not the page-table setup.
  void* src = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
  ::close(fd);
  if (src == MAP_FAILED) throw std::runtime_error("mmap of " + path + " failed");
  for (int t : {1, threads}) {
    const std::string name = "cache_to_pinned_" + std::to_string(t) + "t";
    Row(name.c_str(), CopyRate(static_cast<const char*>(src), host, file_bytes, t), "GB/s",
        std::to_string(file_bytes >> 20) + " MiB from " + (temporary ? "a fresh temp file" : path));
    if (threads == 1) break;
  }
  ::munmap(src, file_bytes);
  {
    const int again = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (again < 0) throw std::runtime_error(path + ": " + std::strerror(errno));
    for (uint64_t window : {64ull << 20, 256ull << 20}) {
      RegisteredPageCache(again, file_bytes, device, window,
                          std::to_string(file_bytes >> 20) + " MiB");
    }
    ::close(again);
  }
  if (temporary) ::unlink(path.c_str());
  SHARDSTREAM_CUDA_TRY(cudaFree(device));
  SHARDSTREAM_CUDA_TRY(cudaFreeHost(host));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda_ceiling: %s\n", e.what());
    return 1;
  }
}
