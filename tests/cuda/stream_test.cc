// RAII streams, events and the device guard, on a real GPU (skipped without one).
#include "cuda/stream.h"

#include "cuda/device.h"

#include <cuda_runtime_api.h>

#include <gtest/gtest.h>
#include <vector>

namespace shardstream::cuda {
namespace {

#define SHARDSTREAM_REQUIRE_GPU()                                            \
  do {                                                                       \
    DeviceProbe probe = ProbeDevices();                                      \
    if (probe.device_count == 0) GTEST_SKIP() << "no GPU: " << probe.reason; \
  } while (0)

TEST(StreamTest, NonBlockingStreamRunsACopyAndEventsOrderAndTime) {
  SHARDSTREAM_REQUIRE_GPU();
  Stream stream;
  unsigned flags = 0;
  ASSERT_EQ(cudaStreamGetFlags(stream.get(), &flags), cudaSuccess);
  EXPECT_EQ(flags & cudaStreamNonBlocking, cudaStreamNonBlocking);
  constexpr size_t kBytes = 64 << 20;
  std::vector<unsigned char> host(kBytes, 7), back(kBytes, 0);
  void* device = nullptr;
  ASSERT_EQ(cudaMalloc(&device, kBytes), cudaSuccess);
  Event start(Event::Timing::kEnabled), end(Event::Timing::kEnabled);
  start.Record(stream);
  SHARDSTREAM_CUDA_TRY(
      cudaMemcpyAsync(device, host.data(), kBytes, cudaMemcpyHostToDevice, stream.get()));
  end.Record(stream);
  Stream other;
  end.Wait(other);  // `other` runs the copy back only after the upload
  SHARDSTREAM_CUDA_TRY(
      cudaMemcpyAsync(back.data(), device, kBytes, cudaMemcpyDeviceToHost, other.get()));
  other.view().Synchronize();
  EXPECT_TRUE(other.view().Ready());
  EXPECT_EQ(back, host);
  EXPECT_GT(end.MillisecondsSince(start), 0.0f);
  ASSERT_EQ(cudaFree(device), cudaSuccess);
}

TEST(StreamTest, MovedFromObjectsOwnNothing) {
  SHARDSTREAM_REQUIRE_GPU();
  Stream a;
  cudaStream_t handle = a.get();
  Stream b(std::move(a));
  EXPECT_EQ(b.get(), handle);
  EXPECT_EQ(a.get(), nullptr);  // NOLINT(bugprone-use-after-move)
  Event e;
  cudaEvent_t event = e.get();
  Event f;
  f = std::move(e);
  EXPECT_EQ(f.get(), event);
}

TEST(StreamTest, UntimedEventRefusesElapsedTimeWithTheCallAndErrorName) {
  SHARDSTREAM_REQUIRE_GPU();
  Stream stream;
  Event a, b;
  a.Record(stream);
  b.Record(stream);
  stream.view().Synchronize();
  try {
    (void)b.MillisecondsSince(a);
    FAIL() << "cudaEventElapsedTime accepted events without timing";
  } catch (const CudaError& e) {
    EXPECT_NE(std::string(e.what()).find("cudaEventElapsedTime"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cuda/stream.cc"), std::string::npos) << e.what();
  }
}

TEST(DeviceGuardTest, RestoresThePreviousDevice) {
  SHARDSTREAM_REQUIRE_GPU();
  const int count = ProbeDevices().device_count;
  int before = -1;
  ASSERT_EQ(cudaGetDevice(&before), cudaSuccess);
  {
    DeviceGuard guard(count - 1);
    int inside = -1;
    ASSERT_EQ(cudaGetDevice(&inside), cudaSuccess);
    EXPECT_EQ(inside, count - 1);
  }
  int after = -1;
  ASSERT_EQ(cudaGetDevice(&after), cudaSuccess);
  EXPECT_EQ(after, before);
  EXPECT_THROW(DeviceGuard(count + 5), CudaError);
  cudaGetLastError();
}

}  // namespace
}  // namespace shardstream::cuda
