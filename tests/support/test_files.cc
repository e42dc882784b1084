#include "tests/support/test_files.h"

#include "io/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <fstream>
#include <ftw.h>
#include <gtest/gtest.h>
#include <mutex>
#include <signal.h>

namespace shardstream::testing {

std::filesystem::path TestDataDir() { return SHARDSTREAM_TEST_DATA_DIR; }

std::filesystem::path Fixture(std::string_view name) {
  return TestDataDir() / "fixtures" / std::string(name);
}

// POSIX rather than std::filesystem operations throughout: the PyPI torch wheel's libtorch.so
// exports its own std::filesystem functions, which interpose on libstdc++'s in test binaries that
// link torch and crash (remove_all, for one).
namespace {

constexpr std::string_view kScratchPrefix = "shardstream-test-";
// A folder of a dead process is swept only once it is this old, in case the pid belongs to a live
// process in another pid namespace sharing /tmp.
constexpr time_t kStaleScratchSeconds = 300;

int RemoveEntry(const char* path, const struct stat*, int type, struct FTW*) {
  return type == FTW_DP ? ::rmdir(path) : ::unlink(path);
}

void RemoveTree(const std::string& path) {
  ::nftw(path.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
}

// A test process that dies without unwinding (a sanitizer report, a crash, a timeout's SIGKILL)
// leaves its scratch folders behind; /tmp filled up with them. Folders are named after the process
// that made them (shardstream-test-PID-XXXXXX), and a process's first ScratchDir removes those of
// processes that no longer exist.
}  // namespace

void SweepDeadProcessesFolders(const std::string& tmp) {
  DIR* dir = ::opendir(tmp.c_str());
  if (dir == nullptr) return;
  const time_t now = ::time(nullptr);
  while (const dirent* entry = ::readdir(dir)) {
    std::string_view name = entry->d_name;
    if (!name.starts_with(kScratchPrefix)) continue;
    name.remove_prefix(kScratchPrefix.size());
    const size_t dash = name.find('-');
    if (dash == 0 || dash == std::string_view::npos) continue;  // not ours, or an old name
    pid_t pid = 0;
    bool digits = true;
    for (char c : name.substr(0, dash)) {
      digits = digits && c >= '0' && c <= '9';
      pid = pid * 10 + (c - '0');
    }
    if (!digits || pid <= 0 || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
    const std::string path = tmp + "/" + entry->d_name;
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode) &&
        now - st.st_mtime > kStaleScratchSeconds) {
      RemoveTree(path);
    }
  }
  ::closedir(dir);
}

ScratchDir::ScratchDir() {
  const char* env = std::getenv("TMPDIR");
  const std::string tmp = env && *env ? env : "/tmp";
  static std::once_flag swept;
  std::call_once(swept, [&] { SweepDeadProcessesFolders(tmp); });
  std::string pattern =
      tmp + "/" + std::string(kScratchPrefix) + std::to_string(::getpid()) + "-XXXXXX";
  char* made = ::mkdtemp(pattern.data());
  if (made == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
  path_ = made;
}

ScratchDir::~ScratchDir() { RemoveTree(path_.string()); }

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

std::vector<int> ListOpenFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr)
    throw std::runtime_error(std::string("opendir /proc/self/fd: ") + std::strerror(errno));
  std::vector<int> fds;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') fds.push_back(std::atoi(entry->d_name));
  }
  const int own = ::dirfd(dir);
  ::closedir(dir);
  std::erase(fds, own);
  std::sort(fds.begin(), fds.end());
  return fds;
}

size_t CountOpenFds() { return ListOpenFds().size(); }

std::vector<int> FdsWithoutCloexec(const std::vector<int>& known) {
  std::vector<int> out;
  for (int fd : ListOpenFds()) {
    if (std::find(known.begin(), known.end(), fd) != known.end()) continue;
    const int flags = ::fcntl(fd, F_GETFD);
    if (flags >= 0 && (flags & FD_CLOEXEC) == 0) out.push_back(fd);
  }
  return out;
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
