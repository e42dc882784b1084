#include "engine/executor.h"

#include "tests/support/test_executors.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <future>
#include <gtest/gtest.h>
#include <mutex>
#include <set>
#include <string>
#include <thread>

namespace shardstream::engine {
namespace {

class ExecutorTest : public ::testing::TestWithParam<ExecutorKind> {};

TEST_P(ExecutorTest, RunsEveryTaskOnceAndWaitWaitsForAll) {
  auto group = MakeTaskGroup(3, GetParam());
  EXPECT_EQ(group->concurrency(), 3);
  std::atomic<int> done{0};
  for (int i = 0; i < 200; ++i) {
    group->Run([&] {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      done.fetch_add(1);
    });
  }
  group->Wait();
  EXPECT_EQ(done.load(), 200);
}

TEST_P(ExecutorTest, NeverRunsMoreTasksAtOnceThanItsConcurrency) {
  for (const int concurrency : {1, 2}) {
    auto group = MakeTaskGroup(concurrency, GetParam());
    std::atomic<int> running{0};
    std::atomic<int> peak{0};
    for (int i = 0; i < 40; ++i) {
      group->Run([&] {
        const int now = running.fetch_add(1) + 1;
        int seen = peak.load();
        while (now > seen && !peak.compare_exchange_weak(seen, now)) {
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        running.fetch_sub(1);
      });
    }
    group->Wait();
    // oneTBB: the thread blocked in Wait may also run a queued task (see executor.h); 1 run in
    // ~200 under load showed it. The std::thread executor keeps the bound exactly.
    const int allowed = GetParam() == ExecutorKind::kTbb ? concurrency + 1 : concurrency;
    EXPECT_LE(peak.load(), allowed);
    EXPECT_GE(peak.load(), 1);
  }
}

// The pipeline's IO thread queues copies and goes on reaping reads: queued tasks must run without
// the caller's help, i.e. while it is blocked on something other than Wait.
TEST_P(ExecutorTest, QueuedTasksRunWhileTheCallerIsBusyElsewhere) {
  auto group = MakeTaskGroup(1, GetParam());
  std::promise<std::thread::id> ran;
  auto future = ran.get_future();
  group->Run([&] { ran.set_value(std::this_thread::get_id()); });
  ASSERT_EQ(future.wait_for(std::chrono::seconds(20)), std::future_status::ready)
      << "a queued task did not run until the caller waited for the group";
  EXPECT_NE(future.get(), std::this_thread::get_id());
  group->Wait();
}

TEST_P(ExecutorTest, TasksMayQueueMoreTasks) {
  auto group = MakeTaskGroup(2, GetParam());
  std::atomic<int> done{0};
  for (int i = 0; i < 10; ++i) {
    group->Run([&] {
      group->Run([&] { done.fetch_add(1); });
      done.fetch_add(1);
    });
  }
  group->Wait();
  EXPECT_EQ(done.load(), 20);
}

TEST_P(ExecutorTest, DestructorWaitsForQueuedTasks) {
  std::atomic<int> done{0};
  {
    auto group = MakeTaskGroup(2, GetParam());
    for (int i = 0; i < 20; ++i) {
      group->Run([&] {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        done.fetch_add(1);
      });
    }
  }
  EXPECT_EQ(done.load(), 20);
}

INSTANTIATE_TEST_SUITE_P(Kinds, ExecutorTest,
                         ::testing::ValuesIn(shardstream::testing::kTestExecutors),
                         [](const ::testing::TestParamInfo<ExecutorKind>& param_info) {
                           return std::string(ExecutorName(param_info.param));
                         });

TEST(ExecutorNamesTest, ParseAndDefault) {
  EXPECT_EQ(ParseExecutor("tbb"), ExecutorKind::kTbb);
  EXPECT_EQ(ParseExecutor("threads"), ExecutorKind::kThreads);
  EXPECT_EQ(ParseExecutor("openmp"), std::nullopt);
#ifdef SHARDSTREAM_EXECUTOR_THREADS
  // ThreadSanitizer builds: oneTBB is not instrumented, so the engine must not run on it.
  if (std::getenv("SHARDSTREAM_EXECUTOR") == nullptr) {
    EXPECT_EQ(DefaultExecutor(), ExecutorKind::kThreads);
  }
#endif
  EXPECT_GE(HardwareConcurrency(ExecutorKind::kThreads), 1);
  EXPECT_GE(HardwareConcurrency(ExecutorKind::kTbb), 1);
}

}  // namespace
}  // namespace shardstream::engine
