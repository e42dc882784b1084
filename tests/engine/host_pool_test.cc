// The host buffer pool (engine/host_pool.h): a buffer is reused only after its lease is gone,
// never while it is held, and the cache stays within its bound.
#include "engine/host_pool.h"

#include <cstring>
#include <gtest/gtest.h>
#include <utility>
#include <vector>

namespace shardstream::engine {
namespace {

bool AllBytesAre(const HostLease& lease, unsigned char value) {
  for (uint64_t i = 0; i < lease.size_bytes(); ++i) {
    if (lease.data()[i] != std::byte{value}) return false;
  }
  return true;
}

TEST(HostBufferPoolTest, ReleasedBufferIsReusedForTheSameSize) {
  HostBufferPool pool(1 << 20);
  std::byte* first = nullptr;
  {
    auto lease = pool.Acquire(4096 + 3);
    ASSERT_TRUE(lease.ok()) << lease.status().ToString();
    first = lease->data();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % 64, 0u);
  }
  auto other_size = pool.Acquire(4096);
  ASSERT_TRUE(other_size.ok());
  EXPECT_NE(other_size->data(), first);  // exact sizes only
  auto again = pool.Acquire(4096 + 3);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->data(), first);
  HostPoolStats stats = pool.stats();
  EXPECT_EQ(stats.allocated, 2u);
  EXPECT_EQ(stats.reused, 1u);
  EXPECT_EQ(stats.cached_bytes, 0u);
  EXPECT_EQ(stats.leased_bytes, 4096u + 4096u + 3u);
}

TEST(HostBufferPoolTest, HeldLeaseIsNeverHandedOutAgain) {
  HostBufferPool pool(1 << 20);
  std::vector<HostLease> kept;
  for (int i = 0; i < 8; ++i) {
    auto lease = pool.Acquire(1000);
    ASSERT_TRUE(lease.ok());
    std::memset(lease->data(), i, lease->size_bytes());
    if (i % 2 == 0) kept.push_back(std::move(*lease));  // odd ones go back at once
  }
  // Every kept buffer still holds what was written into it, though its neighbours were reused.
  for (size_t k = 0; k < kept.size(); ++k) {
    EXPECT_TRUE(AllBytesAre(kept[k], static_cast<unsigned char>(2 * k))) << k;
  }
  EXPECT_EQ(pool.stats().allocated, 5u);  // 4 kept + 1 reused by every odd acquire
  EXPECT_EQ(pool.stats().reused, 3u);
}

TEST(HostBufferPoolTest, CacheStaysWithinItsBound) {
  HostBufferPool pool(1000);
  {
    auto a = pool.Acquire(600);
    auto b = pool.Acquire(600);
    ASSERT_TRUE(a.ok() && b.ok());
  }  // one is cached, the other freed: 1200 > 1000
  EXPECT_EQ(pool.stats().cached_bytes, 600u);
  EXPECT_EQ(pool.stats().leased_bytes, 0u);
  EXPECT_EQ(pool.stats().peak_leased_bytes, 1200u);
}

TEST(HostBufferPoolTest, LeaseMayOutliveItsPool) {
  HostLease lease;
  {
    HostBufferPool pool(1 << 20);
    auto acquired = pool.Acquire(1 << 21);  // large: its own mapping
    ASSERT_TRUE(acquired.ok());
    lease = std::move(*acquired);
    std::memset(lease.data(), 0x7E, lease.size_bytes());
  }
  EXPECT_TRUE(AllBytesAre(lease, 0x7E));
}  // freed here, without a pool (ASan: no leak, no use after free)

TEST(HostBufferPoolTest, ZeroBytesIsRefused) {
  HostBufferPool pool(1 << 20);
  auto lease = pool.Acquire(0);
  ASSERT_FALSE(lease.ok());
  EXPECT_EQ(lease.status().rule(), "memory");
}

}  // namespace
}  // namespace shardstream::engine
