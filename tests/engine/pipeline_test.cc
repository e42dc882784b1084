#include "engine/pipeline.h"

#include "engine/sink.h"
#include "engine/staging.h"
#include "io/checkpoint.h"
#include "io/file.h"
#include "io/uring_backend.h"
#include "tests/engine/fault_backend.h"
#include "tests/engine/pattern_checkpoint.h"
#include "tests/support/test_files.h"
#include "tests/support/uring_faults.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <mutex>
#include <stdlib.h>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace shardstream::engine {
namespace {

namespace fs = std::filesystem;
using shardstream::testing::CountOpenFds;
using shardstream::testing::ScratchDir;

using testing::ExpectPattern;
using testing::InPlace;
using testing::Loaded;
using testing::PatternFile;
using testing::Prepare;

constexpr uint64_t kTestChunkBytes = 8192;

// Backend × O_DIRECT × staging size (2 slots or plenty).
using Params = std::tuple<io::BackendKind, bool, bool>;

class PipelineTest : public ::testing::TestWithParam<Params> {
 protected:
  PipelineOptions Options() const {
    const auto [backend, direct, tiny] = GetParam();
    PipelineOptions options;
    options.backend = backend;
    options.fall_back_to_pread = false;  // a refused io_uring must be a skip, not a quiet pread
    options.direct = direct;
    options.chunk_bytes = kTestChunkBytes;
    // A slot holds one chunk (8 KiB after alignment): 2 slots or 64.
    options.staging_bytes = (tiny ? 2 : 64) * kTestChunkBytes;
    options.queue_depth = 4;
    options.copy_threads = 2;
    return options;
  }
  // Skips when the machine lacks what the parameters ask for.
  bool Unavailable(const io::Result<PipelineStats>& stats, std::string* why) const {
    if (!stats.ok() && stats.status().rule() == "io-uring-unavailable") {
      *why = stats.status().ToString();
      return true;
    }
    if (stats.ok() && std::get<1>(GetParam()) && !stats->direct) {
      *why = "O_DIRECT refused here: " + (stats->notes.empty() ? "" : stats->notes[0]);
      return true;
    }
    return false;
  }
};

TEST_P(PipelineTest, CpuSinkFillsEveryTargetByteExact) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
  Loaded loaded = Prepare(path);
  CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
  const PipelineOptions options = Options();
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
  std::string why;
  if (Unavailable(stats, &why)) GTEST_SKIP() << why;
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  ExpectPattern(loaded);
  EXPECT_EQ(stats->payload_bytes, 40u * 3001);
  EXPECT_GE(stats->read_bytes, stats->payload_bytes);
  EXPECT_GT(stats->chunks, 10u);
  // 64 slots fit, but a pool never has more slots than the load has chunks.
  EXPECT_EQ(stats->slots, std::get<2>(GetParam()) ? 2u : std::min<size_t>(64, stats->chunks));
  EXPECT_LE(stats->peak_slots_in_use, stats->slots);
  EXPECT_GE(stats->peak_slots_in_use, 1u);
  EXPECT_LE(uint64_t{stats->slots} * stats->slot_bytes, options.staging_bytes);
  if (std::get<1>(GetParam())) {
    EXPECT_GE(stats->alignment_bytes, 512u);
  }
  if (std::get<0>(GetParam()) == io::BackendKind::kUring && !std::get<2>(GetParam())) {
    EXPECT_GT(stats->peak_in_flight, 1u);
  }
  EXPECT_GE(stats->io_busy_seconds, stats->overlap_seconds);
  EXPECT_GE(stats->copy_busy_seconds, stats->overlap_seconds);

  // The same bytes as the direct-to-destination loader.
  Loaded reference = Prepare(path);
  auto filled = RunPipeline(reference.checkpoint, reference.targets, nullptr, InPlace());
  ASSERT_TRUE(filled.ok()) << filled.status().ToString();
  EXPECT_EQ(loaded.buffers, reference.buffers);
}

TEST_P(PipelineTest, ShardsWithUnalignedEndsAreReadByteExact) {
  ScratchDir dir;
  dir.Write("a.safetensors", PatternFile(7, 4093, 0));
  dir.Write("b.safetensors", PatternFile(5, 12289, 7));
  auto checkpoint = io::OpenCheckpoint(dir.path());
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status().ToString();
  ASSERT_EQ(checkpoint->files.size(), 2u);
  std::vector<std::vector<std::byte>> buffers;
  std::vector<Target> targets;
  for (uint32_t f = 0; f < 2; ++f) {
    for (uint32_t i = 0; i < checkpoint->files[f].header.tensors.size(); ++i) {
      buffers.emplace_back(checkpoint->files[f].header.tensors[i].size_bytes(), std::byte{0xAA});
    }
  }
  for (uint32_t f = 0, k = 0; f < 2; ++f) {
    for (uint32_t i = 0; i < checkpoint->files[f].header.tensors.size(); ++i, ++k) {
      targets.push_back(Target{{f, i}, buffers[k].data()});
    }
  }
  CpuSink sink(DestinationsOf(*checkpoint, targets));
  auto stats = RunPipeline(*checkpoint, targets, &sink, Options());
  std::string why;
  if (Unavailable(stats, &why)) GTEST_SKIP() << why;
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  for (size_t k = 0; k < targets.size(); ++k) {
    const io::TensorInfo& t = checkpoint->tensor(targets[k].source);
    const int index = std::stoi(t.name.substr(1));
    for (uint64_t b = 0; b < t.size_bytes(); ++b) {
      ASSERT_EQ(buffers[k][b], std::byte((index * 31 + b * 7) & 0xff)) << t.name << " byte " << b;
    }
  }
}

TEST_P(PipelineTest, DiscardSinkSeesEveryPayloadByte) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(25, 5003));
  Loaded loaded = Prepare(path);
  std::vector<Target> targets = loaded.targets;
  for (Target& t : targets) t.destination = nullptr;  // DiscardSink needs none
  DiscardSink sink;
  auto stats = RunPipeline(loaded.checkpoint, targets, &sink, Options());
  std::string why;
  if (Unavailable(stats, &why)) GTEST_SKIP() << why;
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(sink.bytes(), 25u * 5003);
  EXPECT_EQ(sink.slots(), stats->chunks);
  EXPECT_EQ(stats->payload_bytes, sink.bytes());
}

TEST_P(PipelineTest, SharedPoolIsBoundedAndEveryLoadGivesItsSlotsBack) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(30, 2999));
  const auto [backend, direct, tiny] = GetParam();
  const uint32_t slots = tiny ? 2 : 5;
  auto pool = StagingPool::Create(slots * kTestChunkBytes, kTestChunkBytes);
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  ASSERT_EQ((*pool)->slot_count(), slots);
  for (int round = 0; round < 2; ++round) {
    Loaded loaded = Prepare(path);
    CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
    PipelineOptions options = Options();
    options.pool = pool->get();
    auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
    std::string why;
    if (Unavailable(stats, &why)) GTEST_SKIP() << why;
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    ExpectPattern(loaded);
    EXPECT_EQ((*pool)->in_use(), 0u);
    EXPECT_LE((*pool)->peak_in_use(), slots);
    EXPECT_LE(stats->peak_slots_in_use, slots);
  }
}

TEST_P(PipelineTest, FailureMidwayReleasesEverySlotAndFileAndNamesTheTensor) {
  for (const bool truncate : {true, false}) {
    SCOPED_TRACE(truncate ? "file truncated while reading" : "read fails with EIO");
    ScratchDir dir;
    auto path = dir.Write("m.safetensors", PatternFile(30, 3001));
    Loaded loaded = Prepare(path);
    auto pool = StagingPool::Create(3 * kTestChunkBytes, kTestChunkBytes);
    ASSERT_TRUE(pool.ok()) << pool.status().ToString();
    const size_t fds_before = CountOpenFds();
    CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
    PipelineOptions options = Options();
    options.pool = pool->get();
    std::string unavailable;
    options.make_backend = [&](const io::FileSet& files) -> std::unique_ptr<io::ReadBackend> {
      auto inner = io::MakeBackendOrError(std::get<0>(GetParam()), files);
      if (!inner.ok()) {
        unavailable = inner.status().ToString();
        inner = io::MakeBackendOrError(io::BackendKind::kPread, files);
      }
      testing::FaultPlan plan;
      if (truncate) {
        plan.before_submit = [&](int submit) {
          if (submit == 3) shardstream::testing::Truncate(path, 200);
        };
      } else {
        plan.fail_from = 3;
      }
      return std::make_unique<testing::FaultBackend>(std::move(*inner), std::move(plan));
    };
    auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
    if (!unavailable.empty()) GTEST_SKIP() << unavailable;
    ASSERT_FALSE(stats.ok());
    const io::Status& status = stats.status();
    EXPECT_EQ(status.rule(), truncate ? "file-changed" : "io") << status.ToString();
    EXPECT_EQ(status.path(), path.string());
    EXPECT_FALSE(status.tensor().empty()) << status.ToString();
    EXPECT_TRUE(status.offset().has_value());
    EXPECT_EQ((*pool)->in_use(), 0u);
    EXPECT_EQ(CountOpenFds(), fds_before);
  }
}

TEST_P(PipelineTest, ProgressCanCancelAndEverySlotComesBack) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
  Loaded loaded = Prepare(path);
  auto pool = StagingPool::Create(4 * kTestChunkBytes, kTestChunkBytes);
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  const size_t fds_before = CountOpenFds();
  CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
  PipelineOptions options = Options();
  options.pool = pool->get();
  std::atomic<int> calls{0};
  options.progress = [&](const Progress& p) {
    EXPECT_LE(p.done_bytes, p.total_bytes);
    return calls.fetch_add(1) < 0;  // cancel at the first report
  };
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
  if (!stats.ok() && stats.status().rule() == "io-uring-unavailable") GTEST_SKIP();
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().rule(), "cancelled") << stats.status().ToString();
  EXPECT_GE(calls.load(), 1);
  EXPECT_EQ((*pool)->in_use(), 0u);
  EXPECT_EQ(CountOpenFds(), fds_before);
}

// A sink whose `fail_at`-th Consume fails.
class FailingSink : public Sink {
 public:
  explicit FailingSink(int fail_at) : fail_at_(fail_at) {}
  io::Status Consume(StagedSlot, std::span<const Piece>) override {
    if (++calls_ == fail_at_) {
      return io::Status::Error(io::StatusCode::kIoError, "device", "copy failed");
    }
    return io::Status::Ok();
  }
  io::Status Finish() override {
    finished_ = true;
    return io::Status::Ok();
  }
  bool finished() const { return finished_; }

 private:
  const int fail_at_;
  std::atomic<int> calls_{0};
  std::atomic<bool> finished_{false};
};

TEST_P(PipelineTest, SinkErrorStopsTheLoadAndIsReturned) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
  Loaded loaded = Prepare(path);
  auto pool = StagingPool::Create(2 * kTestChunkBytes, kTestChunkBytes);
  ASSERT_TRUE(pool.ok());
  FailingSink sink(3);
  PipelineOptions options = Options();
  options.pool = pool->get();
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
  if (!stats.ok() && stats.status().rule() == "io-uring-unavailable") GTEST_SKIP();
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().rule(), "device");
  EXPECT_EQ(stats.status().path(), path.string());
  EXPECT_TRUE(sink.finished());
  EXPECT_EQ((*pool)->in_use(), 0u);
}

// A fence that a test's "device" completes (or fails) by hand.
class FlagFence : public SlotFence {
 public:
  struct State {
    std::mutex mutex;
    std::condition_variable changed;
    bool done = false;
    io::Status error;
    std::atomic<int> waits{0};
    void Set(io::Status status = io::Status::Ok()) {
      {
        std::lock_guard<std::mutex> lock(mutex);
        done = true;
        error = std::move(status);
      }
      changed.notify_all();
    }
  };
  explicit FlagFence(std::shared_ptr<State> state) : state_(std::move(state)) {}
  io::Result<bool> Ready() override {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (!state_->error.ok()) return state_->error;
    return state_->done;
  }
  io::Status Wait() override {
    ++state_->waits;
    std::unique_lock<std::mutex> lock(state_->mutex);
    state_->changed.wait(lock, [&] { return state_->done; });
    return state_->error;
  }

 private:
  std::shared_ptr<State> state_;
};

// A sink that copies asynchronously, like a device sink: Consume only queues the copy and parks
// the slot's lease behind a fence; a "device" thread performs the copy later and then completes
// the fence. If the pool handed out a slot before its fence completed, the late copy would read
// the next chunk's bytes and the pattern check would fail.
class AsyncSink : public Sink {
 public:
  explicit AsyncSink(std::vector<Destination> targets) : cpu_(std::move(targets)) {
    device_ = std::thread([this] { Run(); });
  }
  ~AsyncSink() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    device_.join();
  }
  io::Status Consume(StagedSlot slot, std::span<const Piece> pieces) override {
    auto fence = std::make_shared<FlagFence::State>();
    Work work{slot.data, slot.size_bytes, slot.file_offset,
              std::vector<Piece>(pieces.begin(), pieces.end()), fence};
    slot.lease.ReleaseAfter(std::make_unique<FlagFence>(fence));
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(work));
    peak_held_ = std::max(peak_held_, queue_.size());
    changed_.notify_all();
    return io::Status::Ok();
  }
  io::Status Finish() override {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return queue_.empty() && !busy_; });
    finished_ = true;
    return status_;
  }
  size_t peak_held() const { return peak_held_; }

 private:
  struct Work {
    const std::byte* data;
    uint64_t size_bytes;
    uint64_t file_offset;
    std::vector<Piece> pieces;
    std::shared_ptr<FlagFence::State> fence;
  };
  void Run() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      Work work = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::microseconds(300));  // the "transfer"
      StagedSlot staged{work.data, work.size_bytes, work.file_offset, 0, 0, {}};
      io::Status status = cpu_.Consume(std::move(staged), work.pieces);
      work.fence->Set();
      lock.lock();
      if (!status.ok() && status_.ok()) status_ = std::move(status);
      busy_ = false;
      changed_.notify_all();
    }
  }

  CpuSink cpu_;
  std::thread device_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Work> queue_;
  size_t peak_held_ = 0;
  bool busy_ = false;
  bool stopping_ = false;
  bool finished_ = false;
  io::Status status_;
};

TEST_P(PipelineTest, SinkKeepingSlotsGetsEveryByteAndReleasesEverySlot) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
  Loaded loaded = Prepare(path);
  auto pool = StagingPool::Create(Options().staging_bytes, kTestChunkBytes);
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  AsyncSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
  PipelineOptions options = Options();
  options.pool = pool->get();
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
  std::string why;
  if (Unavailable(stats, &why)) GTEST_SKIP() << why;
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  ExpectPattern(loaded);
  EXPECT_EQ((*pool)->in_use(), 0u);
  if (!std::get<2>(GetParam())) {
    EXPECT_GE(sink.peak_held(), 2u) << "the sink never held two slots at once";
  }
}

// Faults below the backend interface, injected into a real io_uring backend: every read comes
// back short (by whole blocks under O_DIRECT, as the kernel does) and every second one fails with
// EAGAIN without reading anything. The backend must requeue both until the bytes are all there.
TEST_P(PipelineTest, ShortReadsAndEagainStormsStillGiveExactBytes) {
  if (std::get<0>(GetParam()) != io::BackendKind::kUring) GTEST_SKIP() << "io_uring faults only";
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
  Loaded loaded = Prepare(path);
  CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
  PipelineOptions options = Options();
  std::string unavailable;
  options.make_backend = [&](const io::FileSet& files) -> std::unique_ptr<io::ReadBackend> {
    io::UringOptions uring;
    uring.queue_depth = options.queue_depth;
    shardstream::testing::FaultsOf(uring).short_read_bytes = std::get<1>(GetParam()) ? 4096 : 1000;
    shardstream::testing::FaultsOf(uring).eagain_every = 2;
    auto backend = io::UringBackend::Create(files, uring);
    if (!backend.ok()) {
      unavailable = backend.status().ToString();
      return io::MakeBackend(io::BackendKind::kPread, files);
    }
    return std::move(*backend);
  };
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
  if (!unavailable.empty()) GTEST_SKIP() << unavailable;
  std::string why;
  if (Unavailable(stats, &why)) GTEST_SKIP() << why;
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  ExpectPattern(loaded);
  EXPECT_EQ(stats->payload_bytes, 40u * 3001);
}

// The pipeline registers its staging memory with io_uring (reads into slots go out as
// READ_FIXED) and reads the same bytes with registration switched off.
TEST_P(PipelineTest, StagingSlotsAreRegisteredAsFixedBuffersForIoUring) {
  if (std::get<0>(GetParam()) != io::BackendKind::kUring) GTEST_SKIP() << "io_uring only";
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
  Loaded loaded = Prepare(path);
  CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
  PipelineOptions options = Options();
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
  std::string why;
  if (Unavailable(stats, &why)) GTEST_SKIP() << why;
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  ExpectPattern(loaded);
  EXPECT_EQ(stats->backend, "uring");
  bool refused = false;
  for (const std::string& note : stats->notes)
    refused |= note.find("register-buffers") != std::string::npos;
  if (!refused) {
    EXPECT_EQ(stats->registered_buffer_bytes, uint64_t{stats->slots} * stats->slot_bytes);
  }

  options.register_buffers = false;
  Loaded again = Prepare(path);
  CpuSink sink_again(DestinationsOf(again.checkpoint, again.targets));
  auto plain = RunPipeline(again.checkpoint, again.targets, &sink_again, options);
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  ExpectPattern(again);
  EXPECT_EQ(plain->registered_buffer_bytes, 0u);
}

INSTANTIATE_TEST_SUITE_P(BackendsDirectStaging, PipelineTest,
                         ::testing::Combine(::testing::Values(io::BackendKind::kPread,
                                                              io::BackendKind::kUring),
                                            ::testing::Bool(), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<Params>& param_info) {
                           return std::string(io::BackendName(std::get<0>(param_info.param))) +
                                  (std::get<1>(param_info.param) ? "Direct" : "Buffered") +
                                  (std::get<2>(param_info.param) ? "TwoSlots" : "ManySlots");
                         });

// A CpuSink whose copies take at least `delay`: a slow destination (or a busy machine).
class SlowSink : public Sink {
 public:
  SlowSink(std::vector<Destination> targets, std::chrono::microseconds delay)
      : cpu_(std::move(targets)), delay_(delay) {}
  io::Status Consume(StagedSlot slot, std::span<const Piece> pieces) override {
    std::this_thread::sleep_for(delay_);
    return cpu_.Consume(std::move(slot), pieces);
  }
  io::Status Finish() override { return cpu_.Finish(); }

 private:
  CpuSink cpu_;
  std::chrono::microseconds delay_;
};

// At the defaults of a cold load (io_uring, depth 8, 4 MiB chunks, 64 MiB staging, a copy task per
// spare core, O_DIRECT), more than one read is in flight and reading overlaps copying: the IO
// thread keeps reading into free slots while copies run. The file's pages are dropped so that
// reads take device time, and each copy takes at least 3 ms, so that on a starved 2-core machine
// the copies cannot all slip in between reads.
TEST(StagedPipelineTest, DefaultsKeepReadsInFlightWhileCopying) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(24, (4u << 20) - 5));
  Loaded loaded = Prepare(path);
  {
    io::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    ::fdatasync(fd.get());
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED);
  }
  SlowSink sink(DestinationsOf(loaded.checkpoint, loaded.targets), std::chrono::milliseconds(3));
  PipelineOptions options;
  options.direct = true;
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  ExpectPattern(loaded);
  if (stats->backend != "uring") GTEST_SKIP() << "io_uring unavailable: " << stats->notes.at(0);
  EXPECT_GT(stats->chunks, 20u);
  EXPECT_GT(stats->peak_in_flight, 1u);
  EXPECT_LE(stats->peak_in_flight, kDefaultQueueDepth);
  EXPECT_GT(stats->overlap_seconds, 0.0) << "reads busy " << stats->io_busy_seconds
                                         << " s, copies busy " << stats->copy_busy_seconds << " s";
  EXPECT_GE(stats->copy_threads, 1);
}

// A CpuSink that records the threads its Consume ran on.
class ThreadRecordingSink : public Sink {
 public:
  explicit ThreadRecordingSink(std::vector<Destination> targets) : cpu_(std::move(targets)) {}
  io::Status Consume(StagedSlot slot, std::span<const Piece> pieces) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      threads_.push_back(std::this_thread::get_id());
    }
    return cpu_.Consume(std::move(slot), pieces);
  }
  io::Status Finish() override { return cpu_.Finish(); }
  std::vector<std::thread::id> threads() {
    std::lock_guard<std::mutex> lock(mutex_);
    return threads_;
  }

 private:
  CpuSink cpu_;
  std::mutex mutex_;
  std::vector<std::thread::id> threads_;
};

// The readers of a pipeline, as its backend factory sees them (each reader makes its backend on
// its own thread): their threads, and a start line that holds every reader until all `count` are
// there (or 5 s passed), so that each of them gets chunks to read however the machine schedules.
class ReaderRoll {
 public:
  explicit ReaderRoll(size_t count) : count_(count) {}
  void Arrive() {
    std::unique_lock<std::mutex> lock(mutex_);
    threads_.push_back(std::this_thread::get_id());
    all_.notify_all();
    all_.wait_for(lock, std::chrono::seconds(5), [&] { return threads_.size() >= count_; });
  }
  bool Has(std::thread::id id) {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::find(threads_.begin(), threads_.end(), id) != threads_.end();
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return threads_.size();
  }

 private:
  const size_t count_;
  std::mutex mutex_;
  std::condition_variable all_;
  std::vector<std::thread::id> threads_;
};

// Several readers share the chunks and the slots: every byte lands once, every slot comes back.
// pread readers and buffered io_uring readers copy their own slots (every Consume runs on a
// reader, no copy task is used); O_DIRECT io_uring readers hand them to copy tasks (std::threads
// here, which never run on the caller) and never copy themselves.
TEST(StagedPipelineTest, ManyReadersFillEveryByteAndGiveEverySlotBack) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(40, 20011));
  for (const io::BackendKind backend : {io::BackendKind::kPread, io::BackendKind::kUring}) {
    for (const bool direct : {false, true}) {
      SCOPED_TRACE(std::string(io::BackendName(backend)) + (direct ? " O_DIRECT" : " buffered"));
      Loaded loaded = Prepare(path);
      auto pool = StagingPool::Create(16 * kTestChunkBytes, kTestChunkBytes);
      ASSERT_TRUE(pool.ok()) << pool.status().ToString();
      ThreadRecordingSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
      ReaderRoll roll(4);
      std::string unavailable;
      PipelineOptions options;
      options.direct = direct;
      options.chunk_bytes = kTestChunkBytes;
      options.pool = pool->get();
      options.queue_depth = 2;
      options.readers = 4;
      options.copy_threads = 2;
      options.executor = ExecutorKind::kThreads;
      options.make_backend = [&](const io::FileSet& files) -> std::unique_ptr<io::ReadBackend> {
        auto made = io::MakeBackendOrError(backend, files);
        if (!made.ok()) {
          unavailable = made.status().ToString();
          made = io::MakeBackendOrError(io::BackendKind::kPread, files);
        }
        roll.Arrive();
        return made.ok() ? std::move(*made) : nullptr;
      };
      auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
      if (!unavailable.empty()) GTEST_SKIP() << unavailable;
      ASSERT_TRUE(stats.ok()) << stats.status().ToString();
      ExpectPattern(loaded);
      EXPECT_EQ(stats->readers, 4u);
      EXPECT_EQ(roll.size(), 4u);
      EXPECT_TRUE(roll.Has(std::this_thread::get_id()));  // the caller is reader 0
      EXPECT_GT(stats->chunks, 40u);
      EXPECT_LE(stats->peak_slots_in_use, 16u);
      EXPECT_EQ((*pool)->in_use(), 0u);
      const std::vector<std::thread::id> consumers = sink.threads();
      EXPECT_EQ(consumers.size(), stats->chunks);
      const auto on_readers = static_cast<size_t>(std::count_if(
          consumers.begin(), consumers.end(), [&](std::thread::id id) { return roll.Has(id); }));
      if (backend == io::BackendKind::kPread || !stats->direct) {
        EXPECT_EQ(stats->copy_threads, 0);
        EXPECT_EQ(on_readers, consumers.size());
      } else {
        EXPECT_GE(stats->copy_threads, 1);
        EXPECT_EQ(on_readers, 0u);
      }
    }
  }
}

// Readers are capped by half the slots (a device sink parks a slot until its copy is done, so each
// reader needs a second one; a pool the pipeline makes has no more slots than chunks); by default
// buffered reads get one reader per core and O_DIRECT one.
TEST(StagedPipelineTest, ReadersAreCappedByChunksAndSlots) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(6, 3 * kTestChunkBytes));
  Loaded loaded = Prepare(path);
  for (const auto& [slots, readers, want] : std::vector<std::tuple<uint64_t, uint32_t, uint32_t>>{
           {2, 8, 1}, {6, 8, 3}, {64, 8, 8}, {64, 1000, 9}}) {
    SCOPED_TRACE(std::to_string(slots) + " slots, " + std::to_string(readers) + " readers");
    CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
    PipelineOptions options;
    options.backend = io::BackendKind::kPread;
    options.chunk_bytes = kTestChunkBytes;
    options.staging_bytes = slots * kTestChunkBytes;
    options.readers = readers;
    auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    ExpectPattern(loaded);
    ASSERT_EQ(stats->chunks, 18u);  // 6 tensors of 3 chunks each
    EXPECT_EQ(stats->slots, std::min<uint64_t>(slots, 18));
    EXPECT_EQ(stats->readers, want);
  }
  EXPECT_EQ(DefaultReaders(/*direct=*/true), 1u);
  EXPECT_EQ(DefaultReaders(/*direct=*/false),
            std::clamp(std::thread::hardware_concurrency(), 1u, kMaxReaders));
}

// One reader's backend fails (a read error, or io_uring_enter itself broken): the others stop,
// every slot and file comes back, and the error names the file and tensor.
TEST(StagedPipelineTest, AFailingReaderStopsTheOthersAndEverySlotComesBack) {
  for (const bool broken : {false, true}) {
    SCOPED_TRACE(broken ? "the backend breaks" : "a read fails with EIO");
    ScratchDir dir;
    auto path = dir.Write("m.safetensors", PatternFile(30, 30011));
    Loaded loaded = Prepare(path);
    auto pool = StagingPool::Create(12 * kTestChunkBytes, kTestChunkBytes);
    ASSERT_TRUE(pool.ok()) << pool.status().ToString();
    const size_t fds_before = CountOpenFds();
    CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
    PipelineOptions options;
    options.chunk_bytes = kTestChunkBytes;
    options.pool = pool->get();
    options.readers = 3;
    options.queue_depth = 2;
    // The second reader made fails its first submit; the others wait in their first submit until
    // it has been made (or 5 s passed), so that however the machine schedules the readers, the
    // failing one reads before the others have read everything.
    std::mutex mutex;
    std::condition_variable cv;
    bool failing_submitted = false;
    std::atomic<int> made{0};
    options.make_backend = [&](const io::FileSet& files) -> std::unique_ptr<io::ReadBackend> {
      auto inner = io::MakeBackendOrError(io::BackendKind::kPread, files);
      if (!inner.ok()) return nullptr;
      testing::FaultPlan plan;
      if (made.fetch_add(1) == 1) {
        (broken ? plan.broken_from : plan.fail_from) = 1;
        plan.before_submit = [&](int) {
          std::lock_guard<std::mutex> lock(mutex);
          failing_submitted = true;
          cv.notify_all();
        };
      } else {
        plan.before_submit = [&](int submit) {
          if (submit != 1) return;
          std::unique_lock<std::mutex> lock(mutex);
          cv.wait_for(lock, std::chrono::seconds(5), [&] { return failing_submitted; });
        };
      }
      return std::make_unique<testing::FaultBackend>(std::move(*inner), std::move(plan));
    };
    auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
    ASSERT_FALSE(stats.ok());
    EXPECT_EQ(made.load(), 3);
    EXPECT_EQ(stats.status().rule(), "io") << stats.status().ToString();
    if (!broken) {
      EXPECT_EQ(stats.status().path(), path.string());
      EXPECT_FALSE(stats.status().tensor().empty()) << stats.status().ToString();
    }
    EXPECT_EQ((*pool)->in_use(), 0u);
    EXPECT_EQ(CountOpenFds(), fds_before);
  }
}

TEST(PipelineOptionsTest, StagingSmallerThanOneChunkIsRejected) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(4, 100000));
  Loaded loaded = Prepare(path);
  DiscardSink sink;
  PipelineOptions options;
  options.chunk_bytes = 1 << 20;
  options.staging_bytes = 64 << 10;
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().rule(), "staging") << stats.status().ToString();
}

TEST(PipelineOptionsTest, PoolWithSlotsSmallerThanAChunkIsRejected) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(4, 100000));
  Loaded loaded = Prepare(path);
  auto pool = StagingPool::Create(1 << 20, 64 << 10);
  ASSERT_TRUE(pool.ok());
  DiscardSink sink;
  PipelineOptions options;
  options.chunk_bytes = 1 << 20;
  options.pool = pool->get();
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().rule(), "staging");
}

// Buffered reads handed to io_uring's worker threads (what many-core hosts do by default) land
// byte-exact, through a tiny pool and a roomy one.
TEST(StagedPipelineTest, AsyncBufferedReadsGiveExactBytes) {
  for (const uint64_t staging : {2 * 8192ull, 64 * 8192ull}) {
    ScratchDir dir;
    auto path = dir.Write("m.safetensors", PatternFile(40, 3001));
    Loaded loaded = Prepare(path);
    CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
    PipelineOptions options;
    options.direct = false;
    options.async_buffered_reads = true;
    options.chunk_bytes = 8192;
    options.staging_bytes = staging;
    auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
    if (stats->backend != "uring") GTEST_SKIP() << "io_uring unavailable: " << stats->fallback;
    ExpectPattern(loaded);
  }
}

TEST(StagedPipelineTest, UnavailableUringFallsBackToPreadAndSaysWhy) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(8, 10000));
  Loaded loaded = Prepare(path);
  CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
  PipelineOptions options;  // io_uring by default
  options.chunk_bytes = 8192;
  options.readers = 1;  // pread's one read at a time, counted over one reader
  ::setenv("SHARDSTREAM_DISABLE_IO_URING", "1", 1);
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
  options.fall_back_to_pread = false;
  auto refused = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
  ::unsetenv("SHARDSTREAM_DISABLE_IO_URING");
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->backend, "pread");
  EXPECT_NE(stats->fallback.find("io-uring-unavailable"), std::string::npos) << stats->fallback;
  EXPECT_EQ(stats->peak_in_flight, 1u);
  ExpectPattern(loaded);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().rule(), "io-uring-unavailable");
}

TEST(StagedPipelineTest, SameTensorTwiceFillsBothDestinations) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(3, 5000));
  Loaded loaded = Prepare(path);
  std::vector<std::byte> copy(5000, std::byte{0});
  std::vector<Target> targets = loaded.targets;
  targets.push_back(Target{{0, 1}, copy.data()});
  CpuSink sink(DestinationsOf(loaded.checkpoint, targets));
  PipelineOptions options;
  options.chunk_bytes = 4096;
  options.staging_bytes = 3 * 4096;
  auto stats = RunPipeline(loaded.checkpoint, targets, &sink, options);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  ExpectPattern(loaded);
  EXPECT_EQ(copy, loaded.buffers[1]);
}

TEST(StagedPipelineTest, DirectIoRefusedFallsBackToBufferedAndSaysSo) {
  if (!fs::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm (tmpfs) to refuse O_DIRECT";
  char pattern[] = "/dev/shm/shardstream-pipeline-XXXXXX";
  if (::mkdtemp(pattern) == nullptr) GTEST_SKIP() << "cannot create a folder in /dev/shm";
  const fs::path path = fs::path(pattern) / "m.safetensors";
  {
    const std::string bytes = PatternFile(10, 3001);
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<long>(bytes.size()));
  }
  Loaded loaded = Prepare(path);
  CpuSink sink(DestinationsOf(loaded.checkpoint, loaded.targets));
  PipelineOptions options;
  options.direct = true;
  options.chunk_bytes = 4096;
  auto stats = RunPipeline(loaded.checkpoint, loaded.targets, &sink, options);
  std::error_code ignored;
  fs::remove_all(pattern, ignored);
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  ExpectPattern(loaded);
  if (stats->direct) GTEST_SKIP() << "this kernel's tmpfs accepts O_DIRECT (Linux 6.6+)";
  ASSERT_EQ(stats->notes.size(), 1u);
  EXPECT_NE(stats->notes[0].find("O_DIRECT"), std::string::npos) << stats->notes[0];
  EXPECT_EQ(stats->alignment_bytes, 1u);
}

TEST(StagedPipelineTest, NoTargetsIsAnEmptySuccess) {
  ScratchDir dir;
  auto path = dir.Write("m.safetensors", PatternFile(3, 100));
  Loaded loaded = Prepare(path);
  DiscardSink sink;
  auto stats = RunPipeline(loaded.checkpoint, {}, &sink, PipelineOptions{});
  ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  EXPECT_EQ(stats->chunks, 0u);
  EXPECT_EQ(sink.bytes(), 0u);
}

TEST(StagingPoolTest, SlotsAreAlignedDisjointAndBounded) {
  auto pool = StagingPool::Create(10 * 4096 + 100, 3 * 4096 - 5);
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  EXPECT_EQ((*pool)->slot_bytes(), 3u * 4096);
  EXPECT_EQ((*pool)->slot_count(), 3u);
  EXPECT_LE((*pool)->allocated_bytes(), 10u * 4096 + 100);
  std::vector<SlotLease> leases;
  for (;;) {
    auto lease = (*pool)->TryAcquire();
    ASSERT_TRUE(lease.ok());
    if (!*lease) break;
    leases.push_back(std::move(**lease));
  }
  ASSERT_EQ(leases.size(), 3u);
  for (size_t i = 0; i < leases.size(); ++i) {
    const StagingSlot& slot = leases[i].slot();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(slot.data) % kStagingAlignment, 0u);
    std::memset(slot.data, static_cast<int>(i), slot.size_bytes);  // must be writable
    for (size_t j = 0; j < i; ++j) {
      const StagingSlot& other = leases[j].slot();
      EXPECT_TRUE(slot.data + slot.size_bytes <= other.data ||
                  other.data + other.size_bytes <= slot.data);
    }
  }
  EXPECT_EQ((*pool)->in_use(), 3u);
  EXPECT_EQ((*pool)->peak_in_use(), 3u);
  leases.clear();
  EXPECT_EQ((*pool)->in_use(), 0u);
}

TEST(StagingPoolTest, TooLittleMemoryForOneSlotIsRuleStaging) {
  auto pool = StagingPool::Create(4096, 8192);
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().rule(), "staging");
}

TEST(StagingPoolTest, AcquireWaitsForReleaseAndCancelWakesIt) {
  auto pool = StagingPool::Create(4096, 4096);
  ASSERT_TRUE(pool.ok());
  auto first = (*pool)->Acquire();
  ASSERT_TRUE(first.ok());
  std::atomic<bool> got{false};
  std::thread waiter([&] { got = (*pool)->Acquire().ok(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(got.load());
  first->Reset();
  waiter.join();
  EXPECT_TRUE(got.load());

  auto held = (*pool)->Acquire();
  ASSERT_TRUE(held.ok());
  std::thread cancelled([&] {
    auto lease = (*pool)->Acquire();
    ASSERT_FALSE(lease.ok());
    EXPECT_EQ(lease.status().rule(), "cancelled");
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  (*pool)->Cancel();
  cancelled.join();
  held->Reset();
  (*pool)->Reset();
  auto again = (*pool)->TryAcquire();
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->has_value());
}

TEST(StagingPoolTest, AParkedSlotIsReusedOnlyAfterItsFenceAndAcquireWaitsOnTheOldest) {
  auto pool = StagingPool::Create(2 * 4096, 4096);
  ASSERT_TRUE(pool.ok());
  auto a = (*pool)->Acquire();
  auto b = (*pool)->Acquire();
  ASSERT_TRUE(a.ok() && b.ok());
  const std::byte* a_data = a->data();
  auto fence_a = std::make_shared<FlagFence::State>();
  auto fence_b = std::make_shared<FlagFence::State>();
  a->ReleaseAfter(std::make_unique<FlagFence>(fence_a));
  b->ReleaseAfter(std::make_unique<FlagFence>(fence_b));
  EXPECT_EQ((*pool)->in_use(), 2u);
  auto none = (*pool)->TryAcquire();  // asks both fences, waits for neither
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  EXPECT_EQ(fence_a->waits.load() + fence_b->waits.load(), 0);

  std::atomic<bool> got{false};
  std::thread waiter([&] {
    auto lease = (*pool)->Acquire();
    ASSERT_TRUE(lease.ok());
    EXPECT_EQ(lease->data(), a_data);  // the oldest parked slot
    got = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(got.load()) << "a slot was handed out before its fence completed";
  fence_a->Set();
  waiter.join();
  EXPECT_EQ(fence_a->waits.load(), 1);  // nothing was free: Acquire waited on the oldest fence
  fence_b->Set();
  EXPECT_EQ((*pool)->in_use(), 0u);  // completed fences count as free
}

TEST(StagingPoolTest, AFenceErrorComesBackFromAcquireAndFreesTheSlot) {
  auto pool = StagingPool::Create(4096, 4096);
  ASSERT_TRUE(pool.ok());
  auto lease = (*pool)->Acquire();
  ASSERT_TRUE(lease.ok());
  auto fence = std::make_shared<FlagFence::State>();
  lease->ReleaseAfter(std::make_unique<FlagFence>(fence));
  std::thread device([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    fence->Set(io::Status::Error(io::StatusCode::kIoError, "cuda", "copy faulted"));
  });
  auto failed = (*pool)->Acquire();  // waits on the fence, in this thread
  device.join();
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().rule(), "cuda");
  auto next = (*pool)->Acquire();
  EXPECT_TRUE(next.ok()) << "the failed fence's slot was not freed";
}

TEST(StagingPoolTest, AllocateHookSeesTheWholeAllocationAndCanFail) {
  std::byte* seen = nullptr;
  size_t seen_bytes = 0;
  bool freed = false;
  {
    auto pool = StagingPool::Create(
        4 << 20, 1 << 20,
        [&](std::byte* data, size_t bytes) {
          seen = data;
          seen_bytes = bytes;
          return io::Status::Ok();
        },
        [&](std::byte*, size_t) { freed = true; });
    ASSERT_TRUE(pool.ok());
    EXPECT_EQ(seen_bytes, (*pool)->allocated_bytes());
    auto lease = (*pool)->TryAcquire();
    ASSERT_TRUE(lease.ok() && lease->has_value());
    EXPECT_EQ((**lease).data(), seen);
  }
  EXPECT_TRUE(freed);
  auto refused = StagingPool::Create(4 << 20, 1 << 20, [](std::byte*, size_t) {
    return io::Status::Error(io::StatusCode::kResourceExhausted, "pin", "cannot pin");
  });
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().rule(), "pin");
}

TEST(LogicalBlockSizeTest, IsAPowerOfTwoOfAtLeast512) {
  ScratchDir dir;
  auto path = dir.Write("f", "hello");
  auto file = io::OpenForRead(path);
  ASSERT_TRUE(file.ok());
  auto block = io::LogicalBlockSize(file->fd.get());
  if (!block.ok() && block.status().rule() == "direct-io-unsupported") {
    GTEST_SKIP() << block.status().ToString();
  }
  ASSERT_TRUE(block.ok()) << block.status().ToString();
  EXPECT_GE(*block, 512u);
  EXPECT_EQ(*block & (*block - 1), 0u);
}

}  // namespace
}  // namespace shardstream::engine
