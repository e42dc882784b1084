// Hardening: faults at every read path (loader and staged pipeline, pread and io_uring), files
// truncated or replaced while loading, allocation failures, descriptor hygiene (no leaks, every
// descriptor close-on-exec), and concurrent loads over one shared staging pool with one of them
// cancelled. Each load runs under a deadline, so a hang fails instead of stalling CI. These run in
// the ASan/LSan and TSan builds too (scripts/sanitize), which catch leaks and races.
#include "engine/host_memory.h"
#include "engine/pipeline.h"
#include "engine/sink.h"
#include "engine/staging.h"
#include "io/checkpoint.h"
#include "io/read_backend.h"
#include "io/uring_backend.h"
#include "tests/engine/fault_backend.h"
#include "tests/engine/pattern_checkpoint.h"
#include "tests/support/host_allocation_fault.h"
#include "tests/support/test_files.h"
#include "tests/support/uring_faults.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <gtest/gtest.h>
#include <memory>
#include <mutex>
#include <stdio.h>
#include <string>
#include <thread>
#include <vector>

namespace shardstream::engine {
namespace {

namespace fs = std::filesystem;
using shardstream::testing::CountOpenFds;
using shardstream::testing::ScratchDir;
using testing::ExpectPattern;
using testing::FaultBackend;
using testing::FaultPlan;
using testing::InPlace;
using testing::Loaded;
using testing::PatternFile;
using testing::Prepare;

// Sanitizer builds run several times slower; a load of these sizes takes milliseconds otherwise.
constexpr auto kLoadDeadline = std::chrono::seconds(120);
constexpr uint64_t kChunkBytes = 8192;

// Runs `load` on another thread and aborts the test binary if it has not returned within the
// deadline: a hang must fail loudly, not stall CI until its global timeout.
template <typename F>
auto WithinDeadline(F&& load) {
  auto future = std::async(std::launch::async, std::forward<F>(load));
  if (future.wait_for(kLoadDeadline) != std::future_status::ready) {
    std::fprintf(stderr, "FATAL: a load did not return within %lld s (hang)\n",
                 static_cast<long long>(kLoadDeadline.count()));
    std::abort();
  }
  return future.get();
}

// The read paths a load can take.
enum class Route { kLoaderPread, kLoaderUring, kPipelinePread, kPipelineUring };

std::string RouteName(Route route) {
  switch (route) {
    case Route::kLoaderPread:
      return "LoaderPread";
    case Route::kLoaderUring:
      return "LoaderUring";
    case Route::kPipelinePread:
      return "PipelinePread";
    case Route::kPipelineUring:
      return "PipelineUring";
  }
  return "?";
}

bool IsUring(Route route) { return route == Route::kLoaderUring || route == Route::kPipelineUring; }
bool IsPipeline(Route route) {
  return route == Route::kPipelinePread || route == Route::kPipelineUring;
}

// Wraps the route's real backend in `wrap`; `*unavailable` says why when io_uring was refused.
using Wrap = std::function<std::unique_ptr<io::ReadBackend>(std::unique_ptr<io::ReadBackend>)>;

class HardeningTest : public ::testing::TestWithParam<Route> {
 protected:
  // Loads `loaded` through the route, every backend passed through `wrap` (identity if null),
  // with a shared `pool` for the pipeline routes (its own pool if null).
  io::Status Load(Loaded& loaded, const Wrap& wrap = nullptr, StagingPool* pool = nullptr,
                  ProgressFn progress = nullptr) {
    const Route route = GetParam();
    const io::BackendKind kind = IsUring(route) ? io::BackendKind::kUring : io::BackendKind::kPread;
    BackendFactory factory = [this, kind, wrap](const io::FileSet& files) {
      auto real = io::MakeBackendOrError(kind, files, &uring_);
      if (!real.ok()) {
        unavailable_ = real.status().ToString();
        real = io::MakeBackendOrError(io::BackendKind::kPread, files);
      }
      return wrap ? wrap(std::move(*real)) : std::move(*real);
    };
    return WithinDeadline([&]() -> io::Status {
      if (IsPipeline(route)) {
        CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
        PipelineOptions options;
        options.make_backend = factory;
        options.chunk_bytes = kChunkBytes;
        options.staging_bytes = 4 * kChunkBytes;
        options.pool = pool;
        options.queue_depth = 4;
        options.copy_threads = 2;
        options.progress = progress;
        return RunPipeline(loaded.checkpoint, loaded.targets, &sink, options).status();
      }
      PipelineOptions options = InPlace();
      options.make_backend = factory;
      options.chunk_bytes = kChunkBytes;
      options.readers = 2;
      options.progress = progress;
      return RunPipeline(loaded.checkpoint, loaded.targets, nullptr, options).status();
    });
  }
  void SetUp() override {
    path_ = dir_.Write("m.safetensors", PatternFile(20, 3001));
    loaded_ = Prepare(path_);
  }
  // io_uring was refused on this machine: the uring routes have nothing to test.
  bool Unavailable() const { return IsUring(GetParam()) && !unavailable_.empty(); }

  ScratchDir dir_;
  fs::path path_;           // 20 tensors of 3001 bytes: chunks and tensors straddle each other
  Loaded loaded_;           // its checkpoint and one 0xAA-filled buffer per tensor
  io::UringOptions uring_;  // for the io_uring routes: queue depth, injected faults
  std::string unavailable_;
};

TEST_P(HardeningTest, ReadErrorIsNamedAndLeavesNothingBehind) {
  auto pool = StagingPool::Create(3 * kChunkBytes, kChunkBytes);
  ASSERT_TRUE(pool.ok());
  const size_t fds = CountOpenFds();
  io::Status status = Load(
      loaded_,
      [&](std::unique_ptr<io::ReadBackend> inner) {
        // The loader's workers may submit all their reads at once: fail from the first there.
        const int fail_from = IsPipeline(GetParam()) ? 2 : 1;
        return std::make_unique<FaultBackend>(std::move(inner), FaultPlan{nullptr, fail_from, EIO});
      },
      pool->get());
  if (Unavailable()) GTEST_SKIP() << unavailable_;
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.rule(), "io") << status.ToString();
  EXPECT_EQ(status.sys_errno(), EIO) << status.ToString();
  EXPECT_EQ(status.path(), path_.string());
  EXPECT_FALSE(status.tensor().empty()) << status.ToString();
  EXPECT_EQ((*pool)->in_use(), 0u);
  EXPECT_EQ(CountOpenFds(), fds);
}

// The backend itself fails (a ring whose io_uring_enter fails) with reads still in flight: the
// load stops with that error, waits for the reads the kernel holds, and gives everything back.
TEST_P(HardeningTest, BrokenBackendStopsTheLoadAndLeavesNothingBehind) {
  auto pool = StagingPool::Create(3 * kChunkBytes, kChunkBytes);
  ASSERT_TRUE(pool.ok());
  const size_t fds = CountOpenFds();
  io::Status status = Load(
      loaded_,
      [&](std::unique_ptr<io::ReadBackend> inner) {
        FaultPlan plan;
        plan.broken_from = IsPipeline(GetParam()) ? 2 : 1;
        return std::make_unique<FaultBackend>(std::move(inner), std::move(plan));
      },
      pool->get());
  if (Unavailable()) GTEST_SKIP() << unavailable_;
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.sys_errno(), EIO) << status.ToString();
  EXPECT_NE(status.message().find("injected io_uring_enter"), std::string::npos)
      << status.ToString();
  EXPECT_EQ((*pool)->in_use(), 0u);
  EXPECT_EQ(CountOpenFds(), fds);
}

TEST_P(HardeningTest, FileTruncatedWhileLoadingIsFileChanged) {
  const size_t fds = CountOpenFds();
  std::atomic<bool> truncated{false};
  io::Status status = Load(loaded_, [&](std::unique_ptr<io::ReadBackend> inner) {
    FaultPlan plan;
    plan.before_submit = [&](int submit) {
      if (submit == 1 && !truncated.exchange(true)) shardstream::testing::Truncate(path_, 300);
    };
    return std::make_unique<FaultBackend>(std::move(inner), std::move(plan));
  });
  if (Unavailable()) GTEST_SKIP() << unavailable_;
  ASSERT_TRUE(truncated.load()) << "the load never read";
  ASSERT_FALSE(status.ok()) << "a load from a truncated file succeeded";
  EXPECT_EQ(status.rule(), "file-changed") << status.ToString();
  EXPECT_EQ(status.path(), path_.string());
  EXPECT_TRUE(status.offset().has_value());
  EXPECT_EQ(CountOpenFds(), fds);
}

// rename(2) over the path while loading: the open descriptors keep the file that was validated,
// so the load gives exactly its bytes, never a mix with the new file's.
TEST_P(HardeningTest, FileReplacedWhileLoadingStillGivesTheValidatedBytes) {
  auto other = dir_.Write("other.safetensors", PatternFile(20, 3001, /*first=*/50));
  std::atomic<bool> replaced{false};
  io::Status status = Load(loaded_, [&](std::unique_ptr<io::ReadBackend> inner) {
    FaultPlan plan;
    plan.before_submit = [&](int submit) {
      if (submit == 1 && !replaced.exchange(true)) {
        ASSERT_EQ(::rename(other.c_str(), path_.c_str()), 0);
      }
    };
    return std::make_unique<FaultBackend>(std::move(inner), std::move(plan));
  });
  if (Unavailable()) GTEST_SKIP() << unavailable_;
  ASSERT_TRUE(replaced.load());
  ASSERT_TRUE(status.ok()) << status.ToString();
  ExpectPattern(loaded_);
}

TEST_P(HardeningTest, ShortReadsAndEagainStormsGiveExactBytes) {
  if (!IsUring(GetParam())) GTEST_SKIP() << "injected by the io_uring backend's test faults";
  const size_t fds = CountOpenFds();
  uring_.queue_depth = 4;
  shardstream::testing::FaultsOf(uring_).short_read_bytes =
      1000;  // every read comes back 1000 bytes at most
  shardstream::testing::FaultsOf(uring_).eagain_every = 2;  // and every second one -EAGAIN
  io::Status status = Load(loaded_);
  if (Unavailable()) GTEST_SKIP() << unavailable_;
  ASSERT_TRUE(status.ok()) << status.ToString();
  ExpectPattern(loaded_);
  EXPECT_EQ(CountOpenFds(), fds);
}

TEST_P(HardeningTest, RingErrorsCompleteWithErrnoAndLeaveNothingBehind) {
  if (!IsUring(GetParam())) GTEST_SKIP() << "injected by the io_uring backend's test faults";
  auto pool = StagingPool::Create(3 * kChunkBytes, kChunkBytes);
  ASSERT_TRUE(pool.ok());
  const size_t fds = CountOpenFds();
  shardstream::testing::FaultsOf(uring_).fail_reads_past_offset = 20000;
  shardstream::testing::FaultsOf(uring_).fail_reads_errno = EIO;
  io::Status status = Load(loaded_, nullptr, pool->get());
  if (Unavailable()) GTEST_SKIP() << unavailable_;
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.sys_errno(), EIO) << status.ToString();
  EXPECT_EQ(status.path(), path_.string());
  EXPECT_EQ((*pool)->in_use(), 0u);
  EXPECT_EQ(CountOpenFds(), fds);
}

// Every descriptor opened for a load (files, O_DIRECT and buffered, io_uring rings) is
// close-on-exec: a process that forks and execs while loading must not leak them into the child.
TEST_P(HardeningTest, EveryDescriptorOpenedWhileLoadingIsCloseOnExec) {
  const std::vector<int> before = shardstream::testing::ListOpenFds();
  std::atomic<int> checks{0};
  std::vector<int> leaking;
  std::mutex mutex;
  io::Status status = Load(loaded_, [&](std::unique_ptr<io::ReadBackend> inner) {
    FaultPlan plan;
    plan.before_submit = [&](int) {
      // Inside the load: every file and ring of every worker is open now.
      std::vector<int> bad = shardstream::testing::FdsWithoutCloexec(before);
      std::lock_guard lock(mutex);
      leaking.insert(leaking.end(), bad.begin(), bad.end());
      checks.fetch_add(1);
    };
    return std::make_unique<FaultBackend>(std::move(inner), std::move(plan));
  });
  if (Unavailable()) GTEST_SKIP() << unavailable_;
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_GT(checks.load(), 0);
  EXPECT_TRUE(leaking.empty()) << "descriptor " << leaking.front() << " lacks FD_CLOEXEC";
}

INSTANTIATE_TEST_SUITE_P(Routes, HardeningTest,
                         ::testing::Values(Route::kLoaderPread, Route::kLoaderUring,
                                           Route::kPipelinePread, Route::kPipelineUring),
                         [](const auto& param_info) { return RouteName(param_info.param); });

}  // namespace
}  // namespace shardstream::engine

namespace shardstream::engine {
namespace {

using AllocationFault = shardstream::testing::HostAllocationFault;

TEST(AllocationFaultTest, HostBufferOutOfMemoryIsRuleMemoryWithErrno) {
  for (uint64_t size : {uint64_t{100}, kHugePageBytes * 2}) {
    AllocationFault fault(0);
    auto buffer = AllocateHostBuffer(size);
    ASSERT_FALSE(buffer.ok());
    EXPECT_EQ(buffer.status().rule(), "memory");
    EXPECT_EQ(buffer.status().code(), io::StatusCode::kResourceExhausted);
    EXPECT_EQ(buffer.status().sys_errno(), ENOMEM);
    auto next = AllocateHostBuffer(size);  // the fault fires once
    ASSERT_TRUE(next.ok());
    FreeHostBuffer(*next, size);
  }
}

TEST(AllocationFaultTest, StagingPoolOutOfMemoryIsRuleMemoryAndCallsNoHook) {
  for (uint64_t staging : {4 * kChunkBytes, uint64_t{8} << 20}) {  // posix_memalign and mmap
    AllocationFault fault(0);
    bool hooked = false;
    auto pool = StagingPool::Create(staging, kChunkBytes, [&](std::byte*, size_t) {
      hooked = true;  // e.g. cudaHostRegister: must not see memory that was never allocated
      return io::Status::Ok();
    });
    ASSERT_FALSE(pool.ok());
    EXPECT_EQ(pool.status().rule(), "memory") << pool.status().ToString();
    EXPECT_EQ(pool.status().code(), io::StatusCode::kResourceExhausted);
    EXPECT_FALSE(hooked);
  }
}

// The pinned pool's registration (cudaHostRegister) failing, as with a low memlock limit: the
// pool's memory is freed (LeakSanitizer checks) and the hook's error is returned.
TEST(AllocationFaultTest, PinningFailureFreesThePoolMemory) {
  bool freed = false;
  auto pool = StagingPool::Create(
      4 * kChunkBytes, kChunkBytes,
      [](std::byte*, size_t) {
        return io::Status::Error(io::StatusCode::kResourceExhausted, "pinned-memory",
                                 "cudaHostRegister: out of memory");
      },
      [&](std::byte*, size_t) { freed = true; });
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().rule(), "pinned-memory");
  EXPECT_FALSE(freed) << "the free hook is for memory the allocate hook accepted";
}

TEST(AllocationFaultTest, PipelineWithoutStagingMemoryFailsCleanly) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(20, 3001));
  Loaded loaded = Prepare(path);
  const size_t fds = CountOpenFds();
  CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
  PipelineOptions options;
  options.backend = io::BackendKind::kPread;
  options.chunk_bytes = kChunkBytes;
  options.staging_bytes = 4 * kChunkBytes;
  AllocationFault fault(0);
  auto stats = WithinDeadline(
      [&] { return RunPipeline(loaded.checkpoint, loaded.targets, &sink, options); });
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().rule(), "memory") << stats.status().ToString();
  EXPECT_EQ(CountOpenFds(), fds);
}

// Several loads at once in one process: 8 threads, each its own checkpoint, all through one
// staging pool with fewer slots than loads (they take turns), alternating pread and io_uring; one
// of them cancels itself midway. Every other load is byte-exact, the cancelled one says so, and
// every slot and descriptor comes back. TSan runs this with the std::thread executor.
TEST(ConcurrentLoadsTest, EightLoadsShareOnePoolWhileOneIsCancelled) {
  constexpr int kLoads = 8;
  constexpr int kCancelled = 3;
  ScratchDir dir;
  std::vector<Loaded> loads;
  for (int i = 0; i < kLoads; ++i) {
    // Different tensors, sizes and counts per checkpoint; tensor names stay unique across them.
    auto path = dir.Write("m" + std::to_string(i) + ".safetensors",
                          PatternFile(12 + i, 2001 + 517 * i, /*first=*/100 * i));
    loads.push_back(Prepare(path));
  }
  auto pool = StagingPool::Create(6 * kChunkBytes, kChunkBytes);
  ASSERT_TRUE(pool.ok());
  const size_t fds = CountOpenFds();
  std::vector<io::Status> results(kLoads);
  std::vector<PipelineStats> stats(kLoads);
  WithinDeadline([&] {
    std::vector<std::thread> threads;
    for (int i = 0; i < kLoads; ++i) {
      threads.emplace_back([&, i] {
        CpuSink sink(DestinationsOf(loads[i].checkpoint, loads[i].targets));
        PipelineOptions options;
        options.backend = i % 2 ? io::BackendKind::kUring : io::BackendKind::kPread;
        options.chunk_bytes = kChunkBytes;
        options.pool = pool->get();
        options.queue_depth = 2;
        options.copy_threads = 2;
        if (i == kCancelled) {
          options.progress = [](const Progress& p) { return p.done_bytes == 0; };
        }
        auto result = RunPipeline(loads[i].checkpoint, loads[i].targets, &sink, options);
        results[i] = result.status();
        if (result.ok()) stats[i] = *result;
      });
    }
    for (std::thread& t : threads) t.join();
    return 0;
  });
  for (int i = 0; i < kLoads; ++i) {
    SCOPED_TRACE("load " + std::to_string(i));
    if (i == kCancelled) {
      ASSERT_FALSE(results[i].ok()) << "the cancelled load succeeded";
      EXPECT_EQ(results[i].rule(), "cancelled") << results[i].ToString();
      continue;
    }
    ASSERT_TRUE(results[i].ok()) << results[i].ToString();
    ExpectPattern(loads[i]);
    EXPECT_LE(stats[i].peak_slots_in_use, (*pool)->slot_count());
  }
  EXPECT_EQ((*pool)->in_use(), 0u);
  EXPECT_LE((*pool)->peak_in_use(), (*pool)->slot_count());
  EXPECT_EQ(CountOpenFds(), fds);
}

}  // namespace
}  // namespace shardstream::engine
