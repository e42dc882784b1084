// LoadFile against the fixtures' independent checksums, through every backend and zero-copy, and
// its failure modes.
#include "shardstream/load.h"

#include "engine/host_memory.h"
#include "io/file.h"
#include "tests/support/host_allocation_fault.h"
#include "tests/support/test_files.h"

#include <ATen/ops/zeros.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <gtest/gtest.h>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace shardstream {
namespace {

namespace fs = std::filesystem;
using shardstream::testing::Fixture;
using shardstream::testing::SafetensorsBytes;
using shardstream::testing::ScratchDir;

// name → sum64 from NAME.sum64.txt (see tests/data/fixtures/README.md).
std::map<std::string, uint64_t> Sums(const std::string& fixture) {
  std::ifstream in(Fixture(fixture + ".sum64.txt"));
  std::map<std::string, uint64_t> sums;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    sums[line.substr(0, line.find(' '))] =
        std::stoull(line.substr(line.rfind(' ') + 1), nullptr, 16);
  }
  return sums;
}

uint64_t Sum64(const at::Tensor& tensor) {
  at::Tensor t = tensor.contiguous();
  const auto* bytes = static_cast<const uint8_t*>(t.data_ptr());
  const size_t n = t.nbytes();
  uint64_t sum = 0;
  for (size_t i = 0; i < n; i += 8) {
    uint64_t word = 0;
    for (size_t j = 0; j < 8 && i + j < n; ++j) word |= uint64_t{bytes[i + j]} << (8 * j);
    sum += word;
  }
  return sum;
}

struct Mode {
  std::string name;
  LoadOptions options;
};

std::vector<Mode> Modes() {
  std::vector<Mode> modes;
  LoadOptions pread;
  pread.io = IoMode::kPread;
  pread.direct = DirectIo::kOff;  // whatever the page cache holds
  pread.chunk_bytes = 1 << 20;    // mixed.safetensors spans several chunks
  modes.push_back({"pread", pread});
  LoadOptions pread_one_thread = pread;
  pread_one_thread.threads = 1;
  modes.push_back({"pread1thread", pread_one_thread});
  LoadOptions mmap;
  mmap.io = IoMode::kMmap;
  mmap.direct = DirectIo::kOff;
  modes.push_back({"mmap", mmap});
  LoadOptions direct;
  direct.io = IoMode::kPread;
  direct.direct = DirectIo::kOn;
  direct.staging_bytes = 8 << 20;  // a few slots: reused many times for mixed.safetensors
  modes.push_back({"preaddirect", direct});
  LoadOptions uring;
  uring.io = IoMode::kUring;
  uring.direct = DirectIo::kOff;
  modes.push_back({"uring", uring});
  LoadOptions zero_copy;
  zero_copy.zero_copy = true;
  modes.push_back({"zerocopy", zero_copy});
  return modes;
}

class LoadFixtureTest : public ::testing::TestWithParam<std::tuple<std::string, Mode>> {};

TEST_P(LoadFixtureTest, BytesMatchTheReferenceChecksums) {
  const auto& [fixture, mode] = GetParam();
  LoadReport report;
  TensorMap tensors = LoadFile(Fixture(fixture + ".safetensors"), mode.options, &report);
  const auto sums = Sums(fixture);
  ASSERT_EQ(tensors.size(), sums.size());
  EXPECT_EQ(report.tensors, sums.size());
  for (const auto& [name, sum] : sums) {
    ASSERT_TRUE(tensors.count(name)) << name;
    EXPECT_EQ(Sum64(tensors.at(name)), sum) << name;
    EXPECT_TRUE(tensors.at(name).device().is_cpu());
  }
  EXPECT_GT(report.seconds, 0);
  const std::string want_io = mode.options.zero_copy              ? "zero-copy"
                              : mode.options.io == IoMode::kMmap  ? "mmap"
                              : mode.options.io == IoMode::kUring ? "uring"
                                                                  : "pread";
  if (report.fallback.empty()) {
    EXPECT_EQ(report.io, want_io);
  }
  EXPECT_EQ(report.direct, mode.options.direct == DirectIo::kOn);
}

// gtest names the mode rather than dumping its bytes.
void PrintTo(const Mode& mode, std::ostream* os) { *os << mode.name; }

INSTANTIATE_TEST_SUITE_P(Fixtures, LoadFixtureTest,
                         ::testing::Combine(::testing::Values("dtypes", "mixed", "many_10k"),
                                            ::testing::ValuesIn(Modes())),
                         [](const auto& p) {
                           return std::get<0>(p.param) + "_" + std::get<1>(p.param).name;
                         });

TEST(LoadFileTest, AutoReadsColdFilesDirectAndCachedOnesBuffered) {
  ScratchDir dir;
  std::string data(8 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 131 % 251);
  auto path = dir.Write(
      "cold.safetensors",
      SafetensorsBytes("{\"a\":{\"dtype\":\"U8\",\"shape\":[" + std::to_string(data.size()) +
                           "],\"data_offsets\":[0," + std::to_string(data.size()) + "]}}",
                       data));
  LoadReport warm;
  LoadFile(path, {}, &warm);
  EXPECT_FALSE(warm.direct);
  EXPECT_GT(warm.resident_fraction, 0.5);

  // Drop the file's pages (written pages must reach the disk before they can be dropped).
  {
    io::Result<io::OpenFile> file = io::OpenForRead(path);
    ASSERT_TRUE(file.ok());
    ::fdatasync(file->fd.get());
    ::posix_fadvise(file->fd.get(), 0, 0, POSIX_FADV_DONTNEED);
  }
  LoadReport cold;
  TensorMap t = LoadFile(path, {}, &cold);
  if (cold.resident_fraction >= 0.5) GTEST_SKIP() << "the kernel kept the file cached";
  EXPECT_TRUE(cold.direct);
  ASSERT_EQ(t.at("a").nbytes(), data.size());
  EXPECT_EQ(std::memcmp(t.at("a").data_ptr(), data.data(), data.size()), 0);
}

TEST(LoadFileTest, DTypesAndShapesFollowTheMapping) {
  TensorMap t = LoadFile(Fixture("dtypes.safetensors"));
  EXPECT_EQ(t.at("f4").scalar_type(), c10::ScalarType::Float4_e2m1fn_x2);
  EXPECT_EQ(t.at("f4").sizes(), (std::vector<int64_t>{2}));  // [4] F4 values → 2 packed pairs
  EXPECT_EQ(t.at("f8_e4m3").scalar_type(), c10::ScalarType::Float8_e4m3fn);
  EXPECT_EQ(t.at("f8_e8m0").scalar_type(), c10::ScalarType::Float8_e8m0fnu);
  EXPECT_EQ(t.at("u16").scalar_type(), c10::ScalarType::UInt16);
  EXPECT_EQ(t.at("scalar_f32").dim(), 0);
  EXPECT_EQ(t.at("scalar_f32").item<float>(), 3.25f);
  EXPECT_EQ(t.at("empty_2d_bf16").sizes(), (std::vector<int64_t>{3, 0}));
  EXPECT_EQ(t.at("f32").sizes(), (std::vector<int64_t>{3, 4}));
  // f64 holds -2.0 ... 3.5 in steps of 0.5.
  at::Tensor f64 = t.at("f64").flatten();
  for (int64_t i = 0; i < f64.numel(); ++i) EXPECT_EQ(f64[i].item<double>(), -2.0 + 0.5 * i);
}

// What LoadFile returns is the map itself: `auto w = LoadFile(p)` iterates, looks up and counts
// like a TensorMap, and still splits into map and report with structured bindings.
TEST(LoadFileTest, ResultIsAMapAndSplitsIntoMapAndReport) {
  const TensorMap reference = LoadFile(Fixture("mixed.safetensors"));
  auto w = LoadFile(Fixture("mixed.safetensors"), LoadOptions{});
  EXPECT_EQ(w.size(), reference.size());
  size_t visited = 0;
  for (auto& [name, tensor] : w) {
    ++visited;
    ASSERT_TRUE(reference.contains(name)) << name;
    EXPECT_TRUE(w.contains(name)) << name;
    EXPECT_TRUE(tensor.equal(reference.at(name))) << name;
    EXPECT_EQ(w.find(name)->second.data_ptr(), tensor.data_ptr()) << name;
    EXPECT_EQ(w.at(name).data_ptr(), tensor.data_ptr()) << name;
  }
  EXPECT_EQ(visited, reference.size());
  EXPECT_EQ(w.find("no such tensor"), w.end());
  EXPECT_EQ(w.report.tensors, reference.size());

  auto [tensors, report] = LoadFile(Fixture("mixed.safetensors"), LoadOptions{});
  static_assert(std::is_same_v<decltype(tensors), TensorMap>);
  static_assert(std::is_same_v<decltype(report), LoadReport>);
  EXPECT_EQ(tensors.size(), reference.size());
  EXPECT_EQ(report.tensors, reference.size());
  EXPECT_GT(report.bytes, 0u);

  // Moving the map out leaves the report with the result.
  LoadResult result = LoadFile(Fixture("mixed.safetensors"), LoadOptions{});
  const uint64_t bytes = result.report.bytes;
  TensorMap moved = std::move(result);
  EXPECT_EQ(moved.size(), reference.size());
  EXPECT_EQ(result.report.bytes, bytes);  // NOLINT(bugprone-use-after-move): only the map moved
}

TEST(LoadFileTest, CastsFloatingTensorsOnly) {
  LoadOptions options;
  options.dtype = c10::ScalarType::Float;
  TensorMap owned = LoadFile(Fixture("mixed.safetensors"));
  TensorMap cast = LoadFile(Fixture("mixed.safetensors"), options);
  for (const auto& [name, tensor] : owned) {
    const at::Tensor& c = cast.at(name);
    if (at::isFloatingType(tensor.scalar_type())) {
      EXPECT_EQ(c.scalar_type(), c10::ScalarType::Float) << name;
      EXPECT_TRUE(c.equal(tensor.to(c10::ScalarType::Float))) << name;
    } else {
      EXPECT_EQ(c.scalar_type(), tensor.scalar_type()) << name;
      EXPECT_TRUE(c.equal(tensor)) << name;
    }
  }
}

TEST(LoadFileTest, PackedF4RefusesCasts) {
  LoadOptions options;
  options.dtype = c10::ScalarType::BFloat16;
  try {
    LoadFile(Fixture("dtypes.safetensors"), options);
    FAIL() << "cast of F4 accepted";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.rule(), "cast");
    EXPECT_EQ(e.tensor(), "f4");
  }
}

TEST(LoadFileTest, F6LoadsAsBytesAndRefusesCasts) {
  ScratchDir dir;
  auto path =
      dir.Write("f6.safetensors", SafetensorsBytes("{\"a\":{\"dtype\":\"F6_E2M3\",\"shape\":[2,4],"
                                                   "\"data_offsets\":[0,6]}}",
                                                   "abcdef"));
  LoadReport report;
  TensorMap t = LoadFile(path, {}, &report);
  EXPECT_EQ(t.at("a").scalar_type(), c10::ScalarType::Byte);
  EXPECT_EQ(t.at("a").sizes(), (std::vector<int64_t>{6}));
  EXPECT_EQ(t.at("a")[5].item<uint8_t>(), 'f');
  EXPECT_EQ(report.raw_dtypes.at("a"), "F6_E2M3");

  LoadOptions cast;
  cast.dtype = c10::ScalarType::BFloat16;
  try {
    LoadFile(path, cast);
    FAIL() << "cast of F6 accepted";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.rule(), "cast");
    EXPECT_EQ(e.tensor(), "a");
    EXPECT_EQ(e.file(), path.string());
  }
}

TEST(LoadFileTest, OddF4LastDimensionIsRefused) {
  ScratchDir dir;
  auto path = dir.Write(
      "f4.safetensors",
      SafetensorsBytes("{\"a\":{\"dtype\":\"F4\",\"shape\":[2,3],\"data_offsets\":[0,3]}}", "abc"));
  try {
    LoadFile(path);
    FAIL() << "odd F4 accepted";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.rule(), "f4-shape");
    EXPECT_EQ(e.tensor(), "a");
  }
}

TEST(LoadFileTest, InvalidFileThrowsWithFileTensorAndRule) {
  ScratchDir dir;
  auto path = dir.Write(
      "bad.safetensors",
      SafetensorsBytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", "abcd"));
  try {
    LoadFile(path);
    FAIL() << "invalid file loaded";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.rule(), "size-mismatch");
    EXPECT_EQ(e.file(), path.string());
    EXPECT_EQ(e.tensor(), "w");
    EXPECT_EQ(e.code(), ErrorCode::kInvalidFormat);
  }
}

TEST(LoadFileTest, MissingShardThrows) {
  ScratchDir dir;
  dir.Write("model.safetensors.index.json",
            "{\"weight_map\":{\"a\":\"model-00001-of-00001.safetensors\"}}");
  try {
    LoadFile(dir.path());
    FAIL() << "loaded without its shard";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.rule(), "index-shard-missing");
    EXPECT_NE(std::string(e.what()).find("model-00001-of-00001.safetensors"), std::string::npos);
  }
}

TEST(LoadFileTest, UnreadableFileThrowsPermissionDenied) {
  ScratchDir dir;
  auto path = dir.Write("locked.safetensors", SafetensorsBytes("{}"));
  shardstream::testing::Chmod(path, 0);
  shardstream::testing::ExpectTrueWithoutPrivileges([&] {
    try {
      LoadFile(path);
    } catch (const LoadError& e) {
      return e.rule() == "permission-denied" && e.file() == path.string();
    }
    return false;
  });
}

// A tensor allocation that fails midway (ENOMEM, injected) fails the load with rule "memory",
// naming file and tensor; the tensors allocated before it are freed with the map (the engine
// suites run the same path under LeakSanitizer) and no descriptor stays open.
TEST(LoadFileTest, TensorAllocationFailureThrowsMemoryAndLeavesNothingOpen) {
  const size_t fds = shardstream::testing::CountOpenFds();
  std::optional<shardstream::testing::HostAllocationFault> fault(std::in_place, 3);
  try {
    LoadFile(Fixture("mixed.safetensors"));
    fault.reset();
    FAIL() << "loaded without memory for a tensor";
  } catch (const LoadError& e) {
    fault.reset();
    EXPECT_EQ(e.rule(), "memory") << e.what();
    EXPECT_EQ(e.code(), ErrorCode::kResourceExhausted);
    EXPECT_EQ(e.file(), Fixture("mixed.safetensors").string());
    EXPECT_FALSE(e.tensor().empty()) << e.what();
  }
  EXPECT_EQ(shardstream::testing::CountOpenFds(), fds);
  EXPECT_EQ(LoadFile(Fixture("mixed.safetensors")).tensors.size(), 10u);  // the fault fired once
}

TEST(LoadFileTest, CancelledLoadThrowsAndReturnsNothing) {
  LoadOptions options;
  options.progress = [](const Progress&) { return false; };
  try {
    LoadFile(Fixture("mixed.safetensors"), options);
    FAIL() << "cancel ignored";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.rule(), "cancelled");
    EXPECT_EQ(e.code(), ErrorCode::kCancelled);
  }
}

TEST(LoadFileTest, CudaDeviceIsAClearErrorForNow) {
  LoadOptions options;
  options.device = "cuda:0";
  try {
    LoadFile(Fixture("dtypes.safetensors"), options);
    FAIL() << "cuda accepted";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.rule(), "device");
  }
}

TEST(LoadFileTest, ZeroCopyTensorsOutliveTheMapAndNeverWriteTheFile) {
  ScratchDir dir;
  auto path = dir.Write(
      "w.safetensors",
      SafetensorsBytes("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", "wxyz"));
  LoadOptions options;
  options.zero_copy = true;
  at::Tensor a;
  {
    TensorMap t = LoadFile(path, options);
    a = t.at("a");
  }
  EXPECT_EQ(a[3].item<uint8_t>(), 'z');
  a.zero_();  // copy-on-write: the tensor changes, the file does not
  EXPECT_EQ(a[3].item<uint8_t>(), 0);
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(bytes.substr(bytes.size() - 4), "wxyz");
}

TEST(LoadFileTest, ZeroCopyLoadIsMadeResidentByPopulate) {
  LoadOptions options;
  options.zero_copy = true;
  options.threads = 2;
  LoadResult result = LoadFile(Fixture("mixed.safetensors"), options);
  bool populated = false;
  for (const auto& [stage, seconds] : result.report.stages) populated |= stage == "populate";
  EXPECT_TRUE(populated);
  uint64_t bytes = 0;
  for (const auto& [name, tensor] : result.tensors) bytes += tensor.nbytes();
  const std::string want = "populated " + std::to_string(bytes) + " bytes";
  bool noted = false;
  for (const std::string& note : result.report.notes) noted |= note.starts_with(want);
  EXPECT_TRUE(noted) << "no note starting '" << want << "'";
}

TEST(LoadFileTest, OwnedTensorsAreIndependentAndWritable) {
  TensorMap t = LoadFile(Fixture("mixed.safetensors"));
  for (auto& [name, tensor] : t) {
    EXPECT_TRUE(tensor.is_contiguous()) << name;
    if (tensor.numel() > 0) {
      EXPECT_EQ(tensor.storage().nbytes(), tensor.nbytes()) << name;
    }
  }
}

}  // namespace
}  // namespace shardstream

namespace shardstream {
namespace {

TEST(LoadFileTest, LoadErrorKeepsTheErrnoOfTheFailingCall) {
  testing::ScratchDir dir;
  const auto a = dir.path() / "a.safetensors", b = dir.path() / "b.safetensors";
  ASSERT_EQ(::symlink(b.c_str(), a.c_str()), 0);
  ASSERT_EQ(::symlink(a.c_str(), b.c_str()), 0);
  try {
    LoadFile(a);
    FAIL() << "a symlink loop loaded";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.rule(), "symlink-loop") << e.what();
    EXPECT_EQ(e.sys_errno(), ELOOP) << e.what();
  }
}

TEST(LoadFileTest, ResultCarriesTheReportByValue) {
  auto [tensors, report] = LoadFile(testing::Fixture("mixed.safetensors"));
  EXPECT_EQ(tensors.size(), report.tensors);
  EXPECT_EQ(report.files, 1u);
  EXPECT_FALSE(report.io.empty());
}

}  // namespace
}  // namespace shardstream
