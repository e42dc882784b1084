// Uploading from the page cache pinned in place, on the fake device: streams run later than
// queued, so a window unpinned before its copies ran shows up (FakeDevice counts copies whose
// source was no longer registered), as do windows left pinned, streams left busy and hangs after
// failures. Needs no GPU.
#include "cuda/page_cache_upload.h"

#include "cuda/fake_device.h"
#include "tests/engine/pattern_checkpoint.h"
#include "tests/support/test_files.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <gtest/gtest.h>
#include <string>

namespace shardstream::cuda {
namespace {

using engine::testing::ExpectPattern;
using engine::testing::Loaded;
using engine::testing::PatternFile;
using engine::testing::Prepare;
using shardstream::testing::ScratchDir;

PageCacheUploadOptions Small(uint32_t in_flight, uint32_t threads) {
  PageCacheUploadOptions options;
  options.window_bytes = 16 << 10;  // four pages: a 120 KB file makes ~8 windows
  options.windows_in_flight = in_flight;
  options.pin_threads = threads;
  return options;
}

void ExpectNothingLeft(const FakeDevice& device) {
  EXPECT_EQ(device.live_registrations(), 0u);
  EXPECT_EQ(device.pending(), 0u);
  EXPECT_EQ(device.live_streams(), 0u);
  EXPECT_EQ(device.unpinned_while_copying(), 0u);
}

void AppendFourBytes(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(::write(fd, "xxxx", 4), 4);
  ::close(fd);
}

struct Shape {
  uint32_t in_flight;
  uint32_t threads;
};

class PageCacheUploadShapesTest : public ::testing::TestWithParam<Shape> {};

TEST_P(PageCacheUploadShapesTest, EveryByteArrivesAndNoWindowIsUnpinnedUnderACopy) {
  ScratchDir dir;
  // 40 tensors of 3001 bytes: tensors straddle windows, windows hold several tensors.
  auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
  Loaded loaded = Prepare(path);
  FakeDevice device(FakeDeviceOptions{std::chrono::microseconds(300)});
  auto stats = UploadFromPageCache(loaded.checkpoint, loaded.targets,
                                   Small(GetParam().in_flight, GetParam().threads), device);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->payload_bytes, 40u * 3001);
  EXPECT_GE(stats->windows, 7u);
  EXPECT_GE(stats->pinned_bytes, stats->payload_bytes);
  EXPECT_LE(device.peak_registrations(), GetParam().in_flight);
  EXPECT_LE(stats->peak_pinned_windows, GetParam().in_flight);
  ExpectPattern(loaded);
  ExpectNothingLeft(device);
}

INSTANTIATE_TEST_SUITE_P(Shapes, PageCacheUploadShapesTest,
                         ::testing::Values(Shape{1, 1}, Shape{2, 1}, Shape{3, 2}, Shape{4, 4}),
                         [](const ::testing::TestParamInfo<Shape>& param_info) {
                           return std::to_string(param_info.param.in_flight) + "Windows" +
                                  std::to_string(param_info.param.threads) + "Threads";
                         });

TEST(PageCacheUploadTest, ATensorLargerThanAWindowIsSplitAcrossWindows) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(2, 100003));
  Loaded loaded = Prepare(path);
  FakeDevice device;
  auto stats = UploadFromPageCache(loaded.checkpoint, loaded.targets, Small(2, 2), device);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_GE(stats->copies, 13u);  // 200 KB in 16 KiB windows
  ExpectPattern(loaded);
  ExpectNothingLeft(device);
}

TEST(PageCacheUploadTest, RefusedPinningIsRulePinPageCacheAndLeavesNothingPinned) {
  for (uint64_t fail_at : {1u, 4u}) {
    SCOPED_TRACE("registration " + std::to_string(fail_at) + " fails");
    ScratchDir dir;
    auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
    Loaded loaded = Prepare(path);
    FakeDevice device(FakeDeviceOptions{std::chrono::microseconds(200)});
    device.FailRegister(fail_at);
    auto stats = UploadFromPageCache(loaded.checkpoint, loaded.targets, Small(3, 2), device);
    ASSERT_FALSE(stats.ok());
    EXPECT_EQ(stats.status().rule(), "pin-page-cache") << stats.status().ToString();
    EXPECT_NE(stats.status().ToString().find("m.safetensors"), std::string::npos)
        << stats.status().ToString();
    ExpectNothingLeft(device);
  }
}

TEST(PageCacheUploadTest, AFailedCopyIsRuleCudaAndEveryWindowIsUnpinned) {
  for (bool at_enqueue : {true, false}) {
    SCOPED_TRACE(at_enqueue ? "refused at enqueue" : "failed on the stream");
    ScratchDir dir;
    auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
    Loaded loaded = Prepare(path);
    FakeDevice device(FakeDeviceOptions{std::chrono::microseconds(200)});
    device.FailCopy(5, at_enqueue);
    auto stats = UploadFromPageCache(loaded.checkpoint, loaded.targets, Small(3, 2), device);
    ASSERT_FALSE(stats.ok());
    EXPECT_EQ(stats.status().rule(), "cuda") << stats.status().ToString();
    EXPECT_EQ(device.live_registrations(), 0u);
    EXPECT_EQ(device.pending(), 0u);
    EXPECT_EQ(device.live_streams(), 0u);
  }
}

TEST(PageCacheUploadTest, CancellingFromProgressStopsAndUnpinsEverything) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
  Loaded loaded = Prepare(path);
  FakeDevice device(FakeDeviceOptions{std::chrono::milliseconds(20)});  // > the 50 ms throttle
  PageCacheUploadOptions options = Small(2, 1);
  int calls = 0;
  options.progress = [&](const Progress& p) {
    ++calls;
    EXPECT_LE(p.done_bytes, p.total_bytes);
    return false;
  };
  auto stats = UploadFromPageCache(loaded.checkpoint, loaded.targets, options, device);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().rule(), "cancelled");
  EXPECT_EQ(calls, 1);
  ExpectNothingLeft(device);
}

TEST(PageCacheUploadTest, AFileThatChangedSizeFailsTheLoad) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(4, 3001));
  Loaded loaded = Prepare(path);
  // Grown after the header was validated: the pinned bytes may be right, the load must not say so.
  AppendFourBytes(path);
  FakeDevice device;
  auto stats = UploadFromPageCache(loaded.checkpoint, loaded.targets, Small(2, 1), device);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().rule(), "file-changed") << stats.status().ToString();
  ExpectNothingLeft(device);
}

TEST(PageCacheUploadTest, AFileThatGrowsWhileLoadingFailsTheLoad) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
  Loaded loaded = Prepare(path);
  FakeDevice device(FakeDeviceOptions{std::chrono::milliseconds(10)});
  PageCacheUploadOptions options = Small(2, 1);
  bool grown = false;
  options.progress = [&](const Progress&) {
    if (!grown) {
      AppendFourBytes(path);
      grown = true;
    }
    return true;
  };
  auto stats = UploadFromPageCache(loaded.checkpoint, loaded.targets, options, device);
  ASSERT_TRUE(grown);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().rule(), "file-changed") << stats.status().ToString();
  ExpectNothingLeft(device);
}

TEST(PageCacheUploadTest, BadOptionsAreRefused) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(2, 10));
  Loaded loaded = Prepare(path);
  FakeDevice device;
  PageCacheUploadOptions options;
  options.windows_in_flight = 0;
  auto stats = UploadFromPageCache(loaded.checkpoint, loaded.targets, options, device);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().rule(), "pin-page-cache");
}

}  // namespace
}  // namespace shardstream::cuda
