// Conformance suite for every ReadBackend (pread, mmap, uring), then io_uring specifics: setup
// fallbacks, fault injection for short reads, EAGAIN and read errors, and thread binding.
#include "io/read_backend.h"

#include "io/status.h"
#include "io/uring_backend.h"
#include "tests/support/test_files.h"
#include "tests/support/uring_faults.h"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <gtest/gtest.h>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace shardstream::io {

// Test names and failure messages show "uring", not "1-byte object <02>". Static: found by
// argument-dependent lookup, private to this file.
static void PrintTo(BackendKind kind, std::ostream* os) { *os << BackendName(kind); }

namespace {

namespace fs = std::filesystem;
using shardstream::testing::CountOpenFds;
using shardstream::testing::ScratchDir;

constexpr uint8_t kGuardByte = 0xCD;  // fills the gaps between destinations: must stay untouched
constexpr size_t kIovMax = 1024;      // IOV_MAX on Linux

// The byte at `pos` of test file `file`: a hash, so that a read from a wrong offset or file, or a
// buffer filled out of order, shows.
uint8_t PatternByte(uint32_t file, uint64_t pos) {
  uint64_t x = pos * 0x9E3779B97F4A7C15ull + (file + 1) * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<uint8_t>(x >> 11);
}

// Pattern files in a scratch folder, opened as a FileSet.
class TestFiles {
 public:
  explicit TestFiles(std::vector<uint64_t> sizes) : sizes_(std::move(sizes)) {
    for (uint32_t f = 0; f < sizes_.size(); ++f) {
      std::string bytes(sizes_[f], '\0');
      for (uint64_t i = 0; i < sizes_[f]; ++i) bytes[i] = static_cast<char>(PatternByte(f, i));
      paths_.push_back(dir_.Write("f" + std::to_string(f) + ".bin", bytes));
    }
    auto set = FileSet::Open(paths_, sizes_);
    EXPECT_TRUE(set.ok()) << set.status().ToString();
    if (set.ok()) set_.emplace(std::move(*set));
  }

  const FileSet& set() const { return *set_; }
  uint64_t size(uint32_t f) const { return sizes_[f]; }
  const fs::path& path(uint32_t f) const { return paths_[f]; }
  // Drops the files' pages from the page cache, so the next reads go to the device and complete
  // asynchronously (the slow path of every backend). Written back first: dirty pages stay cached.
  void DropCache() const {
    for (size_t f = 0; f < set_->size(); ++f) {
      ::fdatasync(set_->fd(f));
      ::posix_fadvise(set_->fd(f), 0, 0, POSIX_FADV_DONTNEED);
    }
  }

 private:
  ScratchDir dir_;
  std::vector<uint64_t> sizes_;
  std::vector<fs::path> paths_;
  std::optional<FileSet> set_;
};

// One read: `length` bytes of `file` at `offset`, scattered into pieces of `memory` separated by
// guard gaps, some pieces empty.
struct Read {
  uint32_t file = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  std::vector<uint8_t> memory;
  std::vector<iovec> iovecs;
  std::vector<size_t> starts;  // where each iovec starts in `memory`
};

std::unique_ptr<Read> MakeRead(uint32_t file, uint64_t offset, uint64_t length,
                               std::vector<uint64_t> piece_lengths) {
  auto read = std::make_unique<Read>();
  read->file = file;
  read->offset = offset;
  read->length = length;
  uint64_t sum = 0;
  for (uint64_t l : piece_lengths) sum += l;
  EXPECT_EQ(sum, length);
  constexpr size_t kGap = 3;
  read->memory.assign(sum + kGap * (piece_lengths.size() + 1), kGuardByte);
  size_t at = kGap;
  for (uint64_t l : piece_lengths) {
    read->starts.push_back(at);
    at += l + kGap;
  }
  for (size_t i = 0; i < piece_lengths.size(); ++i) {
    read->iovecs.push_back(iovec{read->memory.data() + read->starts[i], piece_lengths[i]});
  }
  return read;
}

// `length` split at random points into up to `max_pieces` pieces, with empty pieces mixed in.
std::vector<uint64_t> RandomSplit(uint64_t length, size_t max_pieces, std::mt19937_64& rng) {
  const size_t pieces = 1 + rng() % max_pieces;
  std::vector<uint64_t> cuts = {0, length};
  for (size_t i = 1; i < pieces; ++i) cuts.push_back(length == 0 ? 0 : rng() % (length + 1));
  std::sort(cuts.begin(), cuts.end());
  std::vector<uint64_t> lengths;
  for (size_t i = 1; i < cuts.size(); ++i) {
    lengths.push_back(cuts[i] - cuts[i - 1]);  // equal cuts give empty pieces too
    if (rng() % 8 == 0) lengths.push_back(0);
  }
  return lengths;
}

std::vector<uint64_t> EvenSplit(uint64_t length, uint64_t piece) {
  std::vector<uint64_t> lengths;
  for (uint64_t done = 0; done < length; done += piece)
    lengths.push_back(std::min(piece, length - done));
  return lengths;
}

void ExpectFilled(const Read& read, const std::string& what) {
  uint64_t pos = read.offset;
  size_t checked_until = 0;  // memory before this index was checked
  for (size_t i = 0; i < read.iovecs.size(); ++i) {
    const size_t start = read.starts[i];
    for (size_t g = checked_until; g < start; ++g) {
      ASSERT_EQ(read.memory[g], kGuardByte) << what << ": guard byte " << g << " overwritten";
    }
    for (size_t b = 0; b < read.iovecs[i].iov_len; ++b, ++pos) {
      ASSERT_EQ(read.memory[start + b], PatternByte(read.file, pos))
          << what << ": file " << read.file << " byte " << pos << " (piece " << i << " of "
          << read.iovecs.size() << ")";
    }
    checked_until = start + read.iovecs[i].iov_len;
  }
  for (size_t g = checked_until; g < read.memory.size(); ++g) {
    ASSERT_EQ(read.memory[g], kGuardByte) << what << ": guard byte " << g << " overwritten";
  }
}

std::vector<ReadRequest> Requests(const std::vector<std::unique_ptr<Read>>& reads) {
  std::vector<ReadRequest> requests;
  for (size_t i = 0; i < reads.size(); ++i) {
    requests.push_back(ReadRequest{reads[i]->file, reads[i]->offset, reads[i]->iovecs, i});
  }
  return requests;
}

// Reaps until `count` completions with ids 0..count-1 arrived, each exactly once, `out_size` at a
// time. statuses[id] is each one's status.
void ReapAll(ReadBackend& backend, size_t count, std::vector<Status>* statuses,
             size_t out_size = 16) {
  statuses->assign(count, Status::Error(StatusCode::kInternal, "test", "never completed"));
  std::vector<bool> seen(count, false);
  std::vector<Completion> out(out_size);
  size_t got = 0;
  while (got < count) {
    auto reaped = backend.Reap(out, 1);
    ASSERT_TRUE(reaped.ok()) << reaped.status().ToString();
    ASSERT_GE(*reaped, 1u) << "Reap with min_completions 1 returned nothing, " << count - got
                           << " outstanding";
    ASSERT_LE(*reaped, out.size());
    for (size_t i = 0; i < *reaped; ++i) {
      ASSERT_LT(out[i].id, count) << "unknown id";
      ASSERT_FALSE(seen[out[i].id]) << "id " << out[i].id << " completed twice";
      seen[out[i].id] = true;
      (*statuses)[out[i].id] = std::move(out[i].status);
    }
    got += *reaped;
  }
  auto extra = backend.Reap(out, 0);
  ASSERT_TRUE(extra.ok());
  EXPECT_EQ(*extra, 0u) << "completions beyond the requests submitted";
}

// Submits all `reads` in one call, reaps them all and checks every byte.
void ReadAndCheck(ReadBackend& backend, const std::vector<std::unique_ptr<Read>>& reads,
                  const std::string& what) {
  const std::vector<ReadRequest> requests = Requests(reads);
  ASSERT_TRUE(backend.Submit(requests).ok());
  std::vector<Status> statuses;
  ASSERT_NO_FATAL_FAILURE(ReapAll(backend, reads.size(), &statuses));
  for (size_t i = 0; i < reads.size(); ++i) {
    ASSERT_TRUE(statuses[i].ok()) << what << " read " << i << ": " << statuses[i].ToString();
    ASSERT_NO_FATAL_FAILURE(ExpectFilled(*reads[i], what + " read " + std::to_string(i)));
  }
}

uint64_t TestSeed() {
  if (const char* env = std::getenv("SHARDSTREAM_TEST_SEED")) return std::strtoull(env, nullptr, 0);
  return std::random_device{}();
}

// ---------------------------------------------------------------------------------------------
// Conformance: every backend behaves the same.

class BackendConformanceTest : public ::testing::TestWithParam<BackendKind> {
 protected:
  void SetUp() override {
    // A probe: io_uring may be missing (build without liburing, old kernel, seccomp).
    TestFiles probe_files({1});
    auto probe = MakeBackendOrError(GetParam(), probe_files.set());
    if (!probe.ok()) {
      ASSERT_EQ(probe.status().rule(), "io-uring-unavailable") << probe.status().ToString();
      GTEST_SKIP() << "backend unavailable here: " << probe.status().ToString();
    }
  }

  std::unique_ptr<ReadBackend> Make(const FileSet& files) {
    auto backend = MakeBackendOrError(GetParam(), files);
    EXPECT_TRUE(backend.ok()) << backend.status().ToString();
    if (!backend.ok()) return nullptr;
    EXPECT_EQ((*backend)->kind(), GetParam());
    return std::move(backend).value();
  }
};

TEST_P(BackendConformanceTest, RandomRangesWithRandomSplitsReadEveryByte) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed) +
               " (rerun with SHARDSTREAM_TEST_SEED=" + std::to_string(seed) + ")");
  std::mt19937_64 rng(seed);
  TestFiles files({(3u << 20) + 17, (256u << 10) + 3, 1});
  auto backend = Make(files.set());
  ASSERT_NE(backend, nullptr);
  for (int batch = 0; batch < 40; ++batch) {
    if (batch % 10 == 5) files.DropCache();  // some batches from the device, not the cache
    std::vector<std::unique_ptr<Read>> reads;
    const size_t count = 1 + rng() % 48;
    for (size_t r = 0; r < count; ++r) {
      const auto file = static_cast<uint32_t>(rng() % 3);
      const uint64_t offset = rng() % files.size(file);
      const uint64_t max_length = std::min<uint64_t>(files.size(file) - offset, 200u << 10);
      const uint64_t length = rng() % (max_length + 1);
      reads.push_back(MakeRead(file, offset, length, RandomSplit(length, 40, rng)));
    }
    ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, reads, "batch " + std::to_string(batch)));
  }
}

TEST_P(BackendConformanceTest, RequestWithMoreBuffersThanIovMax) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  TestFiles files({1u << 20});
  auto backend = Make(files.set());
  ASSERT_NE(backend, nullptr);
  std::vector<uint64_t> pieces;
  uint64_t length = 0;
  for (size_t i = 0; i < 3 * kIovMax + 7; ++i) {
    pieces.push_back(rng() % 4 == 0 ? 0 : 1 + rng() % 97);
    length += pieces.back();
  }
  std::vector<std::unique_ptr<Read>> reads;
  reads.push_back(MakeRead(0, 12345, length, pieces));
  reads.push_back(MakeRead(0, 0, kIovMax * 2, EvenSplit(kIovMax * 2, 1)));  // one byte each
  ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, reads, "many buffers"));
}

TEST_P(BackendConformanceTest, MoreRequestsInOneSubmitThanTheQueueDepth) {
  TestFiles files({1u << 20, 4096});
  auto backend = Make(files.set());
  ASSERT_NE(backend, nullptr);
  std::vector<std::unique_ptr<Read>> reads;
  for (uint64_t i = 0; i < 1000; ++i) {  // the default io_uring queue depth is 64
    const auto file = static_cast<uint32_t>(i % 7 == 0 ? 1 : 0);
    const uint64_t offset = (i * 7919) % (files.size(file) - 300);
    reads.push_back(MakeRead(file, offset, 300, {100, 0, 200}));
  }
  ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, reads, "many requests"));
}

TEST_P(BackendConformanceTest, ReapHonoursMinCompletionsAndOutSize) {
  TestFiles files({1u << 20});
  auto backend = Make(files.set());
  ASSERT_NE(backend, nullptr);
  std::vector<Completion> out(40);

  // Nothing outstanding: returns at once, whatever min_completions says.
  auto none = backend->Reap(out, 5);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, 0u);

  std::vector<std::unique_ptr<Read>> reads;
  for (uint64_t i = 0; i < 20; ++i) reads.push_back(MakeRead(0, i * 4096, 4096, {1000, 3096}));
  const std::vector<ReadRequest> requests = Requests(reads);
  ASSERT_TRUE(backend->Submit(requests).ok());

  std::vector<bool> seen(reads.size(), false);
  size_t got = 0;
  auto take = [&](size_t n) {
    for (size_t i = 0; i < n; ++i) {
      ASSERT_LT(out[i].id, seen.size());
      ASSERT_FALSE(seen[out[i].id]) << "id " << out[i].id << " completed twice";
      seen[out[i].id] = true;
      EXPECT_TRUE(out[i].status.ok()) << out[i].status.ToString();
    }
    got += n;
  };
  auto polled = backend->Reap(out, 0);  // does not block; may return some
  ASSERT_TRUE(polled.ok());
  ASSERT_LE(*polled, 20u);
  ASSERT_NO_FATAL_FAILURE(take(*polled));

  if (got <= 15) {
    auto five = backend->Reap(out, 5);
    ASSERT_TRUE(five.ok());
    EXPECT_GE(*five, 5u);
    ASSERT_NO_FATAL_FAILURE(take(*five));
  }
  // An out span smaller than min_completions bounds both.
  if (got < 20) {
    auto bounded = backend->Reap(std::span(out).first(2), 10);
    ASSERT_TRUE(bounded.ok());
    EXPECT_EQ(*bounded, std::min<size_t>(2, 20 - got));
    ASSERT_NO_FATAL_FAILURE(take(*bounded));
  }
  // min_completions beyond what is outstanding waits for what is outstanding, then returns.
  auto rest = backend->Reap(out, 1000);
  ASSERT_TRUE(rest.ok());
  EXPECT_EQ(*rest, 20 - got);
  ASSERT_NO_FATAL_FAILURE(take(*rest));
  EXPECT_EQ(got, 20u);
  auto after = backend->Reap(out, 1);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*after, 0u);
  for (const auto& read : reads) ASSERT_NO_FATAL_FAILURE(ExpectFilled(*read, "min completions"));
}

TEST_P(BackendConformanceTest, ZeroLengthBuffersAndEmptyRequests) {
  TestFiles files({100});
  auto backend = Make(files.set());
  ASSERT_NE(backend, nullptr);
  std::vector<std::unique_ptr<Read>> reads;
  reads.push_back(MakeRead(0, 10, 12, {0, 5, 0, 0, 7, 0}));
  reads.push_back(MakeRead(0, 50, 0, {0, 0, 0}));  // nothing to read: succeeds
  reads.push_back(MakeRead(0, 99, 0, {}));         // no buffers at all
  reads.push_back(MakeRead(0, 100, 0, {0}));       // at end of file, nothing wanted: fine
  reads.push_back(MakeRead(0, 95, 5, {0, 5}));     // exactly up to the end
  ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, reads, "zero-length"));
}

// mmap checks ranges against the size the file had when it was mapped, so it reports reads past
// that size like the others. A file that shrinks while mapped is a different matter: touching the
// lost pages raises SIGBUS and kills the process (read_backend.h). That cannot be tested here.
TEST_P(BackendConformanceTest, ReadingPastEndOfFileIsFileChangedWithPathAndOffset) {
  const uint64_t size = 10000;
  TestFiles files({size, 0});
  auto backend = Make(files.set());
  ASSERT_NE(backend, nullptr);
  struct Case {
    uint32_t file;
    uint64_t offset;
    std::vector<uint64_t> pieces;
    uint64_t end_at;  // where the error must say the file ended
  };
  std::vector<Case> cases = {
      {0, size - 10, {10, 10, 10}, size},              // straddles the end
      {0, size - 10, {30}, size},                      // straddles, one buffer
      {0, size + 100, {5}, size + 100},                // wholly past it
      {0, uint64_t{1} << 62, {5}, uint64_t{1} << 62},  // far past it
      {0, 1000, EvenSplit(size, 4), size},             // >IOV_MAX buffers across the end
      {0, 5000, EvenSplit(24000, 8), size},  // one part straddles the end, two lie past it
      {1, 0, {1}, 0},                        // empty file
  };
  std::vector<std::unique_ptr<Read>> reads;
  for (const Case& c : cases) {
    uint64_t length = 0;
    for (uint64_t l : c.pieces) length += l;
    reads.push_back(MakeRead(c.file, c.offset, length, c.pieces));
  }
  reads.push_back(MakeRead(0, 0, 100, {100}));  // a good read in the same batch still succeeds
  const std::vector<ReadRequest> requests = Requests(reads);
  ASSERT_TRUE(backend->Submit(requests).ok());
  std::vector<Status> statuses;
  ASSERT_NO_FATAL_FAILURE(ReapAll(*backend, reads.size(), &statuses));
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    const Status& s = statuses[i];
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.rule(), "file-changed") << s.ToString();
    EXPECT_EQ(s.code(), StatusCode::kIoError);
    EXPECT_EQ(s.path(), files.path(cases[i].file).string());
    ASSERT_TRUE(s.offset().has_value()) << s.ToString();
    EXPECT_EQ(*s.offset(), cases[i].end_at) << s.ToString();
    EXPECT_NE(s.message().find("unexpected end of file"), std::string::npos) << s.ToString();
  }
  EXPECT_TRUE(statuses.back().ok()) << statuses.back().ToString();
  ASSERT_NO_FATAL_FAILURE(ExpectFilled(*reads.back(), "good read"));
}

TEST_P(BackendConformanceTest, RequestForUnknownFileIsAnErrorNotACrash) {
  TestFiles files({100});
  auto backend = Make(files.set());
  ASSERT_NE(backend, nullptr);
  auto read = MakeRead(0, 0, 10, {10});
  ReadRequest request{7, 0, read->iovecs, 42};
  ASSERT_TRUE(backend->Submit(std::span(&request, 1)).ok());
  std::vector<Completion> out(1);
  auto reaped = backend->Reap(out, 1);
  ASSERT_TRUE(reaped.ok());
  ASSERT_EQ(*reaped, 1u);
  EXPECT_EQ(out[0].id, 42u);
  EXPECT_FALSE(out[0].status.ok());
}

TEST_P(BackendConformanceTest, DestroyingWithReadsOutstandingWaitsForThem) {
  TestFiles files({4u << 20});
  files.DropCache();  // slow reads, so that some are still in flight at destruction
  std::vector<std::unique_ptr<Read>> reads;
  for (uint64_t i = 0; i < 256; ++i) {
    reads.push_back(MakeRead(0, i * 16384, 16384, {4096, 4096, 8192}));
  }
  {
    auto backend = Make(files.set());
    ASSERT_NE(backend, nullptr);
    const std::vector<ReadRequest> requests = Requests(reads);
    ASSERT_TRUE(backend->Submit(requests).ok());
  }  // never reaped
  for (const auto& read : reads) ASSERT_NO_FATAL_FAILURE(ExpectFilled(*read, "after destroy"));
}

// After the destructor returns, the kernel must not write into destinations any more (the caller
// may free them). Cold reads, destroyed unreaped; the destinations are then reset and watched.
TEST_P(BackendConformanceTest, NoWritesIntoDestinationsAfterDestruction) {
  constexpr uint64_t kReadBytes = 64 << 10;
  constexpr uint64_t kReads = 256;
  TestFiles files({kReads * kReadBytes});
  files.DropCache();
  std::vector<std::unique_ptr<Read>> reads;
  for (uint64_t i = 0; i < kReads; ++i) {
    reads.push_back(MakeRead(0, i * kReadBytes, kReadBytes, {kReadBytes / 2, kReadBytes / 2}));
  }
  {
    auto backend = Make(files.set());
    ASSERT_NE(backend, nullptr);
    const std::vector<ReadRequest> requests = Requests(reads);
    ASSERT_TRUE(backend->Submit(requests).ok());
  }
  for (auto& read : reads) std::fill(read->memory.begin(), read->memory.end(), kGuardByte);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  for (size_t r = 0; r < reads.size(); ++r) {
    const auto& memory = reads[r]->memory;
    const auto changed =
        std::find_if(memory.begin(), memory.end(), [](uint8_t b) { return b != kGuardByte; });
    ASSERT_EQ(changed, memory.end()) << "read " << r << " was written after the backend was gone";
  }
}

TEST_P(BackendConformanceTest, LeavesNoFileDescriptorsBehind) {
  const size_t before = CountOpenFds();
  for (int round = 0; round < 3; ++round) {
    TestFiles files({1u << 20, 4096});
    for (int b = 0; b < 4; ++b) {
      auto backend = Make(files.set());
      ASSERT_NE(backend, nullptr);
      std::vector<std::unique_ptr<Read>> reads;
      for (uint64_t i = 0; i < 10; ++i) reads.push_back(MakeRead(0, i * 1000, 1000, {1000}));
      const std::vector<ReadRequest> requests = Requests(reads);
      ASSERT_TRUE(backend->Submit(requests).ok());
      if (b % 2 == 0) {  // half reaped, half destroyed with reads outstanding
        std::vector<Status> statuses;
        ASSERT_NO_FATAL_FAILURE(ReapAll(*backend, reads.size(), &statuses));
      }
    }
  }
  EXPECT_EQ(CountOpenFds(), before);
}

// Files (also with O_DIRECT), mappings and io_uring rings: nothing a backend opens may leak into a
// child that a fork+exec makes while it lives.
TEST_P(BackendConformanceTest, EveryDescriptorItOpensIsCloseOnExec) {
  const std::vector<int> before = shardstream::testing::ListOpenFds();
  TestFiles files({1u << 20, 4096});
  auto backend = Make(files.set());
  ASSERT_NE(backend, nullptr);
  auto mapping = files.set().Mapping(0);
  ASSERT_TRUE(mapping.ok()) << mapping.status().ToString();
  std::vector<std::unique_ptr<Read>> reads;
  reads.push_back(MakeRead(0, 0, 4096, {4096}));
  ASSERT_TRUE(backend->Submit(Requests(reads)).ok());
  EXPECT_GT(CountOpenFds(), before.size());  // the files are open now
  EXPECT_EQ(shardstream::testing::FdsWithoutCloexec(before), std::vector<int>{});
  std::vector<Status> statuses;
  ASSERT_NO_FATAL_FAILURE(ReapAll(*backend, reads.size(), &statuses));
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendConformanceTest,
                         ::testing::Values(BackendKind::kPread, BackendKind::kMmap,
                                           BackendKind::kUring),
                         [](const auto& p) { return std::string(BackendName(p.param)); });

TEST(ReadBackendTest, NamesRoundTrip) {
  for (BackendKind kind : {BackendKind::kPread, BackendKind::kMmap, BackendKind::kUring}) {
    EXPECT_EQ(ParseBackend(BackendName(kind)), kind);
  }
  EXPECT_EQ(BackendName(BackendKind::kUring), "uring");
  EXPECT_EQ(ParseBackend("io_uring"), BackendKind::kUring);
  EXPECT_EQ(ParseBackend("aio"), std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// io_uring specifics.

#ifdef SHARDSTREAM_HAVE_IO_URING

class UringBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    files_ = std::make_unique<TestFiles>(std::vector<uint64_t>{(2u << 20) + 5, 4096});
    auto probe = UringBackend::Create(files_->set());
    if (!probe.ok()) GTEST_SKIP() << "io_uring unavailable here: " << probe.status().ToString();
  }

  std::unique_ptr<UringBackend> Make(const UringOptions& options) {
    auto backend = UringBackend::Create(files_->set(), options);
    EXPECT_TRUE(backend.ok()) << backend.status().ToString();
    return backend.ok() ? std::move(backend).value() : nullptr;
  }

  // A mix: small and large reads, one with more than IOV_MAX buffers, across both files.
  std::vector<std::unique_ptr<Read>> MixedReads(size_t count, std::mt19937_64& rng) const {
    std::vector<std::unique_ptr<Read>> reads;
    for (size_t i = 0; i < count; ++i) {
      const auto file = static_cast<uint32_t>(i % 5 == 4 ? 1 : 0);
      const uint64_t offset = rng() % files_->size(file);
      const uint64_t length =
          rng() % (std::min<uint64_t>(files_->size(file) - offset, 96u << 10) + 1);
      reads.push_back(MakeRead(file, offset, length, RandomSplit(length, 30, rng)));
    }
    reads.push_back(MakeRead(0, 777, 2 * kIovMax + 5, EvenSplit(2 * kIovMax + 5, 1)));
    return reads;
  }

  std::unique_ptr<TestFiles> files_;
};

TEST_F(UringBackendTest, ForcedSetupFailureIsIoUringUnavailableWithErrno) {
  for (int err : {ENOSYS, EPERM, ENOMEM}) {
    UringOptions options;
    shardstream::testing::FaultsOf(options).setup_errno = err;
    auto backend = MakeUringBackend(files_->set(), options);
    ASSERT_FALSE(backend.ok());
    EXPECT_EQ(backend.status().rule(), "io-uring-unavailable");
    EXPECT_EQ(backend.status().sys_errno(), err);
    EXPECT_NE(backend.status().message().find("pread"), std::string::npos)
        << backend.status().ToString();
  }
  // With SQPOLL asked for too: both attempts fail, and the error is still the setup's.
  UringOptions options;
  options.sqpoll = true;
  shardstream::testing::FaultsOf(options).setup_errno = EPERM;
  auto backend = MakeUringBackend(files_->set(), options);
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().rule(), "io-uring-unavailable");
  EXPECT_EQ(backend.status().sys_errno(), EPERM);
}

TEST_F(UringBackendTest, QueueDepthOutOfRangeIsAnInvalidOption) {
  for (uint32_t depth : {0u, kMaxUringQueueDepth + 1}) {
    UringOptions options;
    options.queue_depth = depth;
    auto backend = MakeUringBackend(files_->set(), options);
    ASSERT_FALSE(backend.ok());
    EXPECT_EQ(backend.status().rule(), "invalid-option");
    EXPECT_EQ(backend.status().code(), StatusCode::kInvalidArgument);
  }
}

TEST_F(UringBackendTest, DefaultSetupRegistersFilesAndReports) {
  auto backend = Make({});
  ASSERT_NE(backend, nullptr);
  const UringSetup& setup = backend->setup();
  EXPECT_GE(setup.sq_entries, kDefaultUringQueueDepth);
  EXPECT_GE(setup.cq_entries, setup.sq_entries);
  EXPECT_FALSE(setup.sqpoll);
  EXPECT_TRUE(setup.registered_files);
  for (const std::string& line : setup.fallbacks) std::printf("fallback: %s\n", line.c_str());
  EXPECT_EQ(MakeBackend(BackendKind::kUring, files_->set())->kind(), BackendKind::kUring);
}

TEST_F(UringBackendTest, SqpollReadsEverything) {
  UringOptions options;
  options.sqpoll = true;
  auto backend = Make(options);
  ASSERT_NE(backend, nullptr);
  if (!backend->setup().sqpoll) {
    std::string why;
    for (const std::string& line : backend->setup().fallbacks) why += line + "; ";
    GTEST_SKIP() << "the kernel refused SQPOLL: " << why;
  }
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int batch = 0; batch < 5; ++batch) {
    ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, MixedReads(200, rng), "sqpoll"));
  }
}

TEST_F(UringBackendTest, SqpollRefusedFallsBackToNormalSubmission) {
  UringOptions options;
  options.sqpoll = true;
  shardstream::testing::FaultsOf(options).sqpoll_errno = EPERM;
  auto backend = Make(options);
  ASSERT_NE(backend, nullptr);
  EXPECT_FALSE(backend->setup().sqpoll);
  ASSERT_FALSE(backend->setup().fallbacks.empty());
  EXPECT_EQ(backend->setup().fallbacks[0].rfind("sqpoll:", 0), 0u) << backend->setup().fallbacks[0];
  std::mt19937_64 rng(1);
  ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, MixedReads(50, rng), "no sqpoll"));
}

TEST_F(UringBackendTest, FileRegistrationFailureFallsBackToPlainDescriptors) {
  UringOptions options;
  shardstream::testing::FaultsOf(options).register_files_errno = EMFILE;
  auto backend = Make(options);
  ASSERT_NE(backend, nullptr);
  EXPECT_FALSE(backend->setup().registered_files);
  ASSERT_EQ(backend->setup().fallbacks.size(), 1u);
  EXPECT_EQ(backend->setup().fallbacks[0].rfind("register-files:", 0), 0u);
  std::mt19937_64 rng(2);
  ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, MixedReads(50, rng), "plain fds"));
}

// Registered buffers: every read's memory is registered, so single-buffer reads go out as
// READ_FIXED (also when short reads make the backend read the rest again) and multi-buffer ones as
// READV; both must land byte-exact.
TEST_F(UringBackendTest, FixedBuffersReadEveryByte) {
  for (const uint32_t short_read : {0u, 4093u}) {
    SCOPED_TRACE(short_read ? "short reads" : "full reads");
    std::mt19937_64 rng(11);
    std::vector<std::unique_ptr<Read>> reads;
    for (int i = 0; i < 40; ++i) {
      const uint64_t offset = rng() % files_->size(0);
      const uint64_t length = rng() % (std::min<uint64_t>(files_->size(0) - offset, 200u << 10));
      reads.push_back(
          MakeRead(0, offset, length,
                   i % 4 == 3 ? RandomSplit(length, 5, rng) : std::vector<uint64_t>{length}));
    }
    UringOptions options;
    shardstream::testing::FaultsOf(options).short_read_bytes = short_read;
    for (const auto& read : reads) {
      options.fixed_buffers.push_back(iovec{read->memory.data(), read->memory.size()});
    }
    uint64_t registered = 0;
    for (const iovec& v : options.fixed_buffers) registered += v.iov_len;
    auto backend = Make(options);
    ASSERT_NE(backend, nullptr);
    if (backend->setup().registered_buffer_bytes == 0) {
      GTEST_SKIP() << "buffer registration refused: " << backend->setup().fallbacks.at(0);
    }
    EXPECT_EQ(backend->setup().registered_buffer_bytes, registered);
    ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, reads, "fixed buffers"));
    EXPECT_GE(backend->fixed_reads(), 30u);  // the 30 single-buffer reads, at least once each
  }
}

TEST_F(UringBackendTest, BufferRegistrationFailureFallsBackToPlainReads) {
  std::mt19937_64 rng(12);
  std::vector<std::unique_ptr<Read>> reads = MixedReads(30, rng);
  UringOptions options;
  shardstream::testing::FaultsOf(options).register_buffers_errno = ENOMEM;
  for (const auto& read : reads) {
    options.fixed_buffers.push_back(iovec{read->memory.data(), read->memory.size()});
  }
  auto backend = Make(options);
  ASSERT_NE(backend, nullptr);
  EXPECT_EQ(backend->setup().registered_buffer_bytes, 0u);
  ASSERT_EQ(backend->setup().fallbacks.size(), 1u);
  const std::string& line = backend->setup().fallbacks[0];
  EXPECT_EQ(line.rfind("register-buffers:", 0), 0u) << line;
  EXPECT_NE(line.find("RLIMIT_MEMLOCK"), std::string::npos) << line;
  ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, reads, "unregistered"));
  EXPECT_EQ(backend->fixed_reads(), 0u);
}

TEST_F(UringBackendTest, AsyncReadsReadEverything) {
  UringOptions options;
  options.async_reads = true;
  options.queue_depth = 16;
  auto backend = Make(options);
  ASSERT_NE(backend, nullptr);
  std::mt19937_64 rng(13);
  ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, MixedReads(100, rng), "async"));
}

TEST_F(UringBackendTest, QueueDepthOneCompletesAHundredRequests) {
  UringOptions options;
  options.queue_depth = 1;
  auto backend = Make(options);
  ASSERT_NE(backend, nullptr);
  std::mt19937_64 rng(3);
  ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, MixedReads(100, rng), "depth 1"));
}

TEST_F(UringBackendTest, ShortReadIsResubmitted) {
  UringOptions options;
  shardstream::testing::FaultsOf(options).short_read_bytes =
      7;  // every read comes back at most 7 bytes long
  auto backend = Make(options);
  ASSERT_NE(backend, nullptr);
  std::vector<std::unique_ptr<Read>> reads;
  reads.push_back(MakeRead(0, 3, 100, {1, 2, 3, 4, 0, 5, 85}));
  reads.push_back(MakeRead(0, 5000, 3000, EvenSplit(3000, 2)));  // 1500 buffers: 2 parts
  reads.push_back(MakeRead(1, 0, 4096, {4096}));
  ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, reads, "short reads"));
  // A short read that was really the end of the file still ends in file-changed, at the end.
  auto past = MakeRead(1, 4000, 200, {50, 150});
  ReadRequest request{1, 4000, past->iovecs, 9};
  ASSERT_TRUE(backend->Submit(std::span(&request, 1)).ok());
  std::vector<Completion> out(1);
  auto reaped = backend->Reap(out, 1);
  ASSERT_TRUE(reaped.ok());
  ASSERT_EQ(*reaped, 1u);
  EXPECT_EQ(out[0].status.rule(), "file-changed") << out[0].status.ToString();
  EXPECT_EQ(out[0].status.offset(), std::optional<uint64_t>(4096));
}

TEST_F(UringBackendTest, EagainIsResubmitted) {
  UringOptions options;
  shardstream::testing::FaultsOf(options).eagain_every = 2;
  options.queue_depth = 8;
  auto backend = Make(options);
  ASSERT_NE(backend, nullptr);
  std::mt19937_64 rng(4);
  ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, MixedReads(100, rng), "eagain"));
}

TEST_F(UringBackendTest, ReadErrorCompletesTheRequestOnceWithPathAndOffset) {
  UringOptions options;
  shardstream::testing::FaultsOf(options).fail_reads_past_offset = 100000;
  shardstream::testing::FaultsOf(options).fail_reads_errno = EIO;
  auto backend = Make(options);
  ASSERT_NE(backend, nullptr);
  std::vector<std::unique_ptr<Read>> reads;
  reads.push_back(MakeRead(0, 0, 50000, {20000, 0, 30000}));  // below: fine
  reads.push_back(MakeRead(0, 90000, 3 * kIovMax * 8, EvenSplit(3 * kIovMax * 8, 8)));  // 3 parts
  reads.push_back(MakeRead(0, 200000, 10, {10}));  // past: fails
  const std::vector<ReadRequest> requests = Requests(reads);
  ASSERT_TRUE(backend->Submit(requests).ok());
  std::vector<Status> statuses;
  ASSERT_NO_FATAL_FAILURE(ReapAll(*backend, reads.size(), &statuses));  // each id exactly once
  EXPECT_TRUE(statuses[0].ok()) << statuses[0].ToString();
  ASSERT_NO_FATAL_FAILURE(ExpectFilled(*reads[0], "below the fault"));
  for (size_t i : {1, 2}) {
    const Status& s = statuses[i];
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.rule(), "io") << s.ToString();
    EXPECT_EQ(s.sys_errno(), EIO);
    EXPECT_EQ(s.path(), files_->path(0).string());
    ASSERT_TRUE(s.offset().has_value());
    EXPECT_GE(*s.offset(), reads[i]->offset);
    EXPECT_LT(*s.offset(), reads[i]->offset + reads[i]->length);
    EXPECT_NE(s.message().find("io_uring read"), std::string::npos) << s.ToString();
  }
  // The backend is still usable afterwards.
  std::vector<std::unique_ptr<Read>> again;
  again.push_back(MakeRead(0, 10, 1000, {500, 500}));
  ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, again, "after errors"));
}

TEST_F(UringBackendTest, UseFromAnotherThreadIsRefused) {
  auto backend = Make({});
  ASSERT_NE(backend, nullptr);
  auto read = MakeRead(0, 0, 10, {10});
  ReadRequest request{0, 0, read->iovecs, 1};
  Status submitted;
  Status reaped;
  std::thread([&] {
    submitted = backend->Submit(std::span(&request, 1));
    std::vector<Completion> out(1);
    reaped = backend->Reap(out, 0).status();
  }).join();
  EXPECT_EQ(submitted.rule(), "backend-thread") << submitted.ToString();
  EXPECT_EQ(reaped.rule(), "backend-thread") << reaped.ToString();
  // Its own thread still can.
  std::vector<std::unique_ptr<Read>> reads;
  reads.push_back(MakeRead(0, 0, 10, {10}));
  ASSERT_NO_FATAL_FAILURE(ReadAndCheck(*backend, reads, "own thread"));
}

// The owner thread submits from a cold cache and then sleeps; another thread destroys the backend
// and must wait for every read (their completions need the sleeping owner's task work).
TEST_F(UringBackendTest, DestroyedOnAnotherThreadWhileOwnerSleepsDrainsReads) {
  std::vector<std::unique_ptr<Read>> reads;
  for (uint64_t i = 0; i < 128; ++i) reads.push_back(MakeRead(0, i * 16384, 16384, {16384}));
  const std::vector<ReadRequest> requests = Requests(reads);
  files_->DropCache();
  std::promise<std::unique_ptr<UringBackend>> handed_over;
  std::promise<void> destroyed;
  std::thread owner([&] {
    auto backend = Make({});
    if (backend != nullptr) {
      EXPECT_TRUE(backend->Submit(requests).ok());
    }
    handed_over.set_value(std::move(backend));
    destroyed.get_future().wait();  // asleep until the other thread is done
  });
  std::unique_ptr<UringBackend> backend = handed_over.get_future().get();
  backend.reset();
  destroyed.set_value();
  owner.join();
  for (const auto& read : reads) ASSERT_NO_FATAL_FAILURE(ExpectFilled(*read, "drained"));
}

#endif  // SHARDSTREAM_HAVE_IO_URING

}  // namespace
}  // namespace shardstream::io
