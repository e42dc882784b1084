#include "cuda/device.h"

#include <gtest/gtest.h>

namespace shardstream::cuda {
namespace {

TEST(DeviceTest, ProbeGivesAReasonWhenThereIsNoDevice) {
  DeviceProbe probe = ProbeDevices();
  if (probe.device_count > 0) {
    EXPECT_TRUE(BuiltWithCuda());
    EXPECT_GT(probe.driver_version, 0);
  } else {
    EXPECT_FALSE(probe.reason.empty());
  }
}

TEST(DeviceTest, ProbeIsRepeatable) {
  DeviceProbe first = ProbeDevices();
  DeviceProbe second = ProbeDevices();
  EXPECT_EQ(first.device_count, second.device_count);
  EXPECT_EQ(first.reason, second.reason);
}

TEST(DeviceTest, RuntimeVersionIsKnownInCudaBuilds) {
  if (!BuiltWithCuda()) GTEST_SKIP() << "built without CUDA";
  DeviceProbe probe = ProbeDevices();
  EXPECT_GE(probe.runtime_version, 12000) << "CUDA runtime older than 12.0";
  if (probe.device_count == 0) GTEST_SKIP() << "no GPU: " << probe.reason;
  EXPECT_GE(probe.driver_version, probe.runtime_version)
      << "the driver is older than the runtime this build links";
}

}  // namespace
}  // namespace shardstream::cuda
