#include "tests/support/test_files.h"

#include "io/file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <ftw.h>
#include <gtest/gtest.h>

namespace shardstream::testing {

std::filesystem::path TestDataDir() { return SHARDSTREAM_TEST_DATA_DIR; }

std::filesystem::path Fixture(std::string_view name) {
  return TestDataDir() / "fixtures" / std::string(name);
}

ScratchDir::ScratchDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/shardstream-test-XXXXXX";
  char* made = ::mkdtemp(pattern.data());
  if (made == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
  path_ = made;
}

// POSIX rather than std::filesystem operations throughout: the PyPI torch wheel's libtorch.so
// exports its own std::filesystem functions, which interpose on libstdc++'s in test binaries that
// link torch and crash (remove_all, for one).
namespace {
int RemoveEntry(const char* path, const struct stat*, int type, struct FTW*) {
  return type == FTW_DP ? ::rmdir(path) : ::unlink(path);
}
}  // namespace

ScratchDir::~ScratchDir() { ::nftw(path_.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS); }

void MakeDirs(const std::filesystem::path& dir) {
  if (io::Status status = io::MakeDirectories(dir); !status.ok()) {
    throw std::runtime_error(status.ToString());
  }
}

void Truncate(const std::filesystem::path& file, uint64_t size_bytes) {
  if (::truncate(file.c_str(), static_cast<off_t>(size_bytes)) != 0) {
    throw std::runtime_error("truncate " + file.string() + ": " + std::strerror(errno));
  }
}

size_t CountOpenFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr)
    throw std::runtime_error(std::string("opendir /proc/self/fd: ") + std::strerror(errno));
  size_t n = 0;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;  // the descriptor opendir itself held
}

void Chmod(const std::filesystem::path& path, unsigned mode) {
  if (::chmod(path.c_str(), mode) != 0) {
    throw std::runtime_error("chmod " + path.string() + ": " + std::strerror(errno));
  }
}

std::filesystem::path ScratchDir::Write(std::string_view name, std::string_view bytes) const {
  std::filesystem::path file = path_ / std::string(name);
  MakeDirs(file.parent_path());
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + file.string());
  return file;
}

void ExpectTrueWithoutPrivileges(const std::function<bool()>& check) {
  if (::geteuid() != 0) {
    EXPECT_TRUE(check());
    return;
  }
  EXPECT_EXIT(
      {
        if (::setgid(65534) != 0 || ::setuid(65534) != 0) std::_Exit(2);
        std::_Exit(check() ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

std::string SafetensorsBytesWithLength(uint64_t declared_length, std::string_view header,
                                       std::string_view data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((declared_length >> (8 * i)) & 0xff);
  out += header;
  out += data;
  return out;
}

std::string SafetensorsBytes(std::string_view header, std::string_view data) {
  return SafetensorsBytesWithLength(header.size(), header, data);
}

}  // namespace shardstream::testing
