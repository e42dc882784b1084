// The pinned pools' process-wide cache, with a counting factory instead of pinning (the pinning
// itself is in the gpu suite, tests/cuda/gpu_sink_test.cc).
#include "cuda/pinned_pool.h"

#include "cuda/device.h"

#include <atomic>
#include <gtest/gtest.h>
#include <thread>
#include <vector>

namespace shardstream::cuda {
namespace {

TEST(StagingPoolCacheTest, SameKeyIsMadeOnceDifferentKeysApart) {
  StagingPoolCache cache;
  int made = 0;
  auto factory = [&]() -> io::Result<std::shared_ptr<engine::StagingPool>> {
    ++made;
    auto pool = engine::StagingPool::Create(4 * 4096, 4096);
    if (!pool.ok()) return pool.status();
    return std::shared_ptr<engine::StagingPool>(std::move(*pool));
  };
  bool created = false;
  auto first = cache.GetOrCreate({0, 4 * 4096, 4096}, factory, &created);
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(created);
  auto again = cache.GetOrCreate({0, 4 * 4096, 4096}, factory, &created);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(created);
  EXPECT_EQ(first->get(), again->get());
  EXPECT_EQ(made, 1);
  ASSERT_TRUE(cache.GetOrCreate({1, 4 * 4096, 4096}, factory).ok());
  ASSERT_TRUE(cache.GetOrCreate({0, 8 * 4096, 4096}, factory).ok());
  ASSERT_TRUE(cache.GetOrCreate({0, 4 * 4096, 8192}, factory).ok());
  EXPECT_EQ(made, 4);
  EXPECT_EQ(cache.size(), 4u);

  // Dropping forgets the pools; one a load still holds stays usable until it lets go.
  std::weak_ptr<engine::StagingPool> weak = *first;
  again = io::Status::Ok();
  cache.Drop();
  EXPECT_EQ(cache.size(), 0u);
  ASSERT_FALSE(weak.expired());
  {
    auto slot = (*first)->TryAcquire();
    ASSERT_TRUE(slot.ok() && slot->has_value());
  }
  first = io::Status::Ok();
  EXPECT_TRUE(weak.expired());
  ASSERT_TRUE(cache.GetOrCreate({0, 4 * 4096, 4096}, factory).ok());
  EXPECT_EQ(made, 5);
}

TEST(StagingPoolCacheTest, ConcurrentLoadsOfOneKeyShareOnePool) {
  StagingPoolCache cache;
  std::atomic<int> made{0};
  auto factory = [&]() -> io::Result<std::shared_ptr<engine::StagingPool>> {
    made.fetch_add(1);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // pinning takes a while
    auto pool = engine::StagingPool::Create(2 * 4096, 4096);
    if (!pool.ok()) return pool.status();
    return std::shared_ptr<engine::StagingPool>(std::move(*pool));
  };
  std::vector<const engine::StagingPool*> got(8);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      auto pool = cache.GetOrCreate({0, 2 * 4096, 4096}, factory);
      got[t] = pool.ok() ? pool->get() : nullptr;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(made.load(), 1);
  for (const auto* p : got) EXPECT_EQ(p, got[0]);
  EXPECT_NE(got[0], nullptr);
}

TEST(StagingPoolCacheTest, AFailedFactoryIsNotCached) {
  StagingPoolCache cache;
  int calls = 0;
  auto failing = [&]() -> io::Result<std::shared_ptr<engine::StagingPool>> {
    ++calls;
    return io::Status::Error(io::StatusCode::kResourceExhausted, "cuda", "cannot pin");
  };
  EXPECT_EQ(cache.GetOrCreate({0, 1, 1}, failing).status().rule(), "cuda");
  EXPECT_FALSE(cache.GetOrCreate({0, 1, 1}, failing).ok());
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(cache.size(), 0u);
}

TEST(PinnedPoolTest, WithoutAGpuPinningFailsClearly) {
  if (ProbeDevices().device_count > 0) GTEST_SKIP() << "a GPU is present: see the gpu suite";
  PinnedPoolStats stats;
  auto pool = PinnedPool::Shared(0, 4 * 4096, 4096, &stats);
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().rule(), "cuda") << pool.status().ToString();
  EXPECT_EQ(PinnedPool::CachedPools(), 0u);
}

}  // namespace
}  // namespace shardstream::cuda
