// FakeDevice follows the runtime semantics the CUDA sink relies on; if it did not, the sink's CPU
// tests would prove nothing.
#include "tests/support/fake_device.h"

#include <atomic>
#include <chrono>
#include <gtest/gtest.h>
#include <thread>
#include <vector>

namespace shardstream::cuda {
namespace {

using namespace std::chrono_literals;

TEST(FakeDeviceTest, StreamsRunLaterAndInOrder) {
  FakeDevice device(FakeDeviceOptions{5ms});
  auto stream = device.CreateStream();
  ASSERT_TRUE(stream.ok());
  std::vector<std::byte> a(16, std::byte{1}), b(16, std::byte{2}), dst(16, std::byte{0});
  ASSERT_TRUE(device.CopyAsync(dst.data(), a.data(), 16, *stream).ok());
  ASSERT_TRUE(device.CopyAsync(dst.data(), b.data(), 16, *stream).ok());
  // (Reading dst here would race with the stream, as it would on a GPU: ask the device instead.)
  EXPECT_LT(device.copies_done(), 2u) << "the copies ran before the calls returned";
  ASSERT_TRUE(device.SynchronizeStream(*stream).ok());
  EXPECT_EQ(dst[0], std::byte{2});
  EXPECT_EQ(device.copies_done(), 2u);
  device.DestroyStream(*stream);
  EXPECT_EQ(device.live_streams(), 0u);
}

TEST(FakeDeviceTest, EventsCompleteWhenTheirStreamGetsThereAndAskAboutTheLastCapture) {
  FakeDevice device(FakeDeviceOptions{20ms});
  auto stream = device.CreateStream();
  auto event = device.CreateEvent(false);
  ASSERT_TRUE(stream.ok() && event.ok());
  auto never = device.QueryEvent(*event);  // nothing captured yet: complete, as the runtime says
  ASSERT_TRUE(never.ok());
  EXPECT_TRUE(*never);
  std::vector<std::byte> src(8, std::byte{9}), dst(8, std::byte{0});
  ASSERT_TRUE(device.CopyAsync(dst.data(), src.data(), 8, *stream).ok());
  ASSERT_TRUE(device.RecordEvent(*event, *stream).ok());
  auto pending = device.QueryEvent(*event);
  ASSERT_TRUE(pending.ok());
  EXPECT_FALSE(*pending) << "the event completed before the copy ahead of it";
  ASSERT_TRUE(device.SynchronizeEvent(*event).ok());
  EXPECT_EQ(dst[0], std::byte{9});
  auto done = device.QueryEvent(*event);
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(*done);
  // Recorded again behind slow work: the query is about the new capture.
  ASSERT_TRUE(device.Enqueue(*stream, [] { std::this_thread::sleep_for(50ms); }).ok());
  ASSERT_TRUE(device.RecordEvent(*event, *stream).ok());
  auto again = device.QueryEvent(*event);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again);
  ASSERT_TRUE(device.SynchronizeStream(*stream).ok());
  device.DestroyEvent(*event);
  device.DestroyStream(*stream);
}

TEST(FakeDeviceTest, AfterAnAsynchronousErrorNothingRunsAndEventsReportIt) {
  FakeDevice device;
  auto stream = device.CreateStream();
  auto event = device.CreateEvent(false);
  ASSERT_TRUE(stream.ok() && event.ok());
  std::vector<std::byte> src(8, std::byte{1}), dst(8, std::byte{0});
  device.FailCopy(1, /*at_enqueue=*/false);
  // Slow work first, so that the copy fails after the event and the callback below are queued
  // (without it the device thread may fail the copy before RecordEvent, which then reports the
  // sticky error at once: seen under TSan).
  ASSERT_TRUE(device.Enqueue(*stream, [] { std::this_thread::sleep_for(200ms); }).ok());
  ASSERT_TRUE(device.CopyAsync(dst.data(), src.data(), 8, *stream).ok());  // fails later
  std::atomic<int> calls{0};
  ASSERT_TRUE(device.RecordEvent(*event, *stream).ok());
  io::Status queued = device.Enqueue(*stream, [&] { calls.fetch_add(1); });
  io::Status waited = device.SynchronizeEvent(*event);
  ASSERT_FALSE(waited.ok());
  EXPECT_NE(waited.message().find("cudaEventSynchronize"), std::string::npos);
  EXPECT_FALSE(device.QueryEvent(*event).ok());
  io::Status synced = device.SynchronizeStream(*stream);
  ASSERT_FALSE(synced.ok());
  EXPECT_EQ(synced.rule(), "cuda");
  EXPECT_NE(synced.message().find("cudaStreamSynchronize"), std::string::npos);
  EXPECT_EQ(calls.load(), 0);
  EXPECT_EQ(dst[0], std::byte{0});
  // The error is sticky: later calls fail at once.
  io::Status later = device.CopyAsync(dst.data(), src.data(), 8, *stream);
  EXPECT_FALSE(later.ok());
  EXPECT_NE(later.message().find("cudaMemcpyAsync"), std::string::npos) << later.ToString();
  (void)queued;
  device.DestroyEvent(*event);
  device.DestroyStream(*stream);
  EXPECT_EQ(device.pending(), 0u);
}

TEST(FakeDeviceTest, CopyRefusedAtEnqueueQueuesNothing) {
  FakeDevice device;
  auto stream = device.CreateStream();
  ASSERT_TRUE(stream.ok());
  std::vector<std::byte> src(8, std::byte{1}), dst(8, std::byte{0});
  device.FailCopy(2, /*at_enqueue=*/true);
  ASSERT_TRUE(device.CopyAsync(dst.data(), src.data(), 8, *stream).ok());
  io::Status refused = device.CopyAsync(dst.data(), src.data(), 8, *stream);
  EXPECT_FALSE(refused.ok());
  EXPECT_EQ(refused.rule(), "cuda");
  EXPECT_TRUE(device.SynchronizeStream(*stream).ok()) << "a refused call is not sticky";
  EXPECT_EQ(device.copies_done(), 1u);
  device.DestroyStream(*stream);
}

TEST(FakeDeviceTest, TimingEventsMeasureTheStreamsClock) {
  FakeDevice device(FakeDeviceOptions{30ms});
  auto stream = device.CreateStream();
  auto start = device.CreateEvent(true);
  auto end = device.CreateEvent(true);
  auto untimed = device.CreateEvent(false);
  ASSERT_TRUE(stream.ok() && start.ok() && end.ok() && untimed.ok());
  std::vector<std::byte> src(8), dst(8);
  ASSERT_TRUE(device.RecordEvent(*start, *stream).ok());
  ASSERT_TRUE(device.CopyAsync(dst.data(), src.data(), 8, *stream).ok());
  ASSERT_TRUE(device.RecordEvent(*end, *stream).ok());
  ASSERT_TRUE(device.RecordEvent(*untimed, *stream).ok());
  ASSERT_TRUE(device.SynchronizeStream(*stream).ok());
  auto ms = device.ElapsedMs(*start, *end);
  ASSERT_TRUE(ms.ok()) << ms.status().ToString();
  EXPECT_GE(*ms, 25.0f);
  EXPECT_FALSE(device.ElapsedMs(*start, *untimed).ok());
  for (EventHandle e : {*start, *end, *untimed}) device.DestroyEvent(e);
  device.DestroyStream(*stream);
  EXPECT_EQ(device.live_events(), 0u);
}

}  // namespace
}  // namespace shardstream::cuda
