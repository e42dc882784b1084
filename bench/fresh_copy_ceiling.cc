// The memory ceiling for a warm CPU load: copy a file's bytes, already in the page cache and
// mapped, into fresh anonymous memory with N threads, and report the seconds taken. A loader that
// produces owned tensors in fresh memory cannot beat this on the same machine: it has to fault in
// and fill the same destination pages.
//
//   build/bench/fresh_copy_ceiling FILE [THREADS] [--huge-pages] [--best-of=N]
//
// Prints one number: seconds from the first destination byte written to the last; with
// --best-of=N the fastest of N copies, each into a fresh mapping (unmapped after), so that a
// ceiling taken on a busy machine is not one unlucky run (`shardstream bench` passes 3).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE [THREADS] [--huge-pages]\n", argv[0]);
    return 2;
  }
  const int threads = argc > 2 && argv[2][0] != '-'
                          ? std::atoi(argv[2])
                          : static_cast<int>(std::thread::hardware_concurrency());
  bool huge = false;
  int best_of = 1;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--huge-pages") huge = true;
    if (arg.starts_with("--best-of=")) best_of = std::max(1, std::atoi(arg.c_str() + 10));
  }
  int fd = ::open(argv[1], O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0 || st.st_size == 0) {
    std::fprintf(stderr, "error: %s: %s\n", argv[1], std::strerror(errno));
    return 1;
  }
  const size_t size = static_cast<size_t>(st.st_size);
  // The source: mapped and populated up front, so only destination faults are timed.
  void* src = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
  if (src == MAP_FAILED) {
    std::fprintf(stderr, "error: mmap %s: %s\n", argv[1], std::strerror(errno));
    return 1;
  }
  double seconds = -1;
  for (int round = 0; round < best_of; ++round) {
    void* dst = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (dst == MAP_FAILED) {
      std::fprintf(stderr, "error: mmap: %s\n", std::strerror(errno));
      return 1;
    }
    if (huge) ::madvise(dst, size, MADV_HUGEPAGE);
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    workers.reserve(threads);
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([=] {
        const size_t begin = size * t / threads, end = size * (t + 1) / threads;
        constexpr size_t kStep = 16 << 20;  // same chunk size as the loader
        for (size_t at = begin; at < end; at += kStep) {
          std::memcpy(static_cast<char*>(dst) + at, static_cast<const char*>(src) + at,
                      std::min(kStep, end - at));
        }
      });
    }
    for (std::thread& w : workers) w.join();
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (seconds < 0 || took < seconds) seconds = took;
    ::munmap(dst, size);  // the next copy faults in fresh pages again
  }
  std::printf("%.6f\n", seconds);
  return 0;
}
