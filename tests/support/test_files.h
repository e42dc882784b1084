// Helpers for tests that need files: a scratch directory that cleans itself up, safetensors
// files built from a header string, and the bundled fixtures.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace shardstream::testing {

// The folder of bundled test data (tests/data).
std::filesystem::path TestDataDir();
// tests/data/fixtures/NAME.
std::filesystem::path Fixture(std::string_view name);

// A fresh directory under $TMPDIR, removed with everything in it on destruction.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // Writes `bytes` to path()/name (creating parent folders) and returns the full path.
  std::filesystem::path Write(std::string_view name, std::string_view bytes) const;

 private:
  std::filesystem::path path_;
};

// A test process that dies without unwinding (sanitizer report, crash, SIGKILL on timeout) leaves
// its ScratchDirs behind. They are named shardstream-test-PID-XXXXXX; this removes, under `tmp`,
// those whose process no longer exists and that are over 5 minutes old. Each process's first
// ScratchDir runs it on $TMPDIR (default /tmp).
void SweepDeadProcessesFolders(const std::string& tmp);

// mkdir -p, truncate(2), chmod(2); throw std::runtime_error on failure. (Test binaries that link
// torch must not call std::filesystem's operations: see test_files.cc.)
void MakeDirs(const std::filesystem::path& dir);
void Truncate(const std::filesystem::path& file, uint64_t size_bytes);
void Chmod(const std::filesystem::path& path, unsigned mode);

// How many file descriptors this process has open (entries of /proc/self/fd, read with POSIX
// calls), for tests that check a failed load leaks none.
size_t CountOpenFds();
// The descriptors this process has open, ascending (the one used to list them excluded).
std::vector<int> ListOpenFds();
// Of ListOpenFds(), those without FD_CLOEXEC that are not in `known` (e.g. what was open before a
// load): a descriptor a library opened and a fork+exec would leak into the child.
std::vector<int> FdsWithoutCloexec(const std::vector<int>& known = {});

// Expects `check()` to return true when run without privileges: directly when the test is not
// root, else in a child process that drops to uid/gid 65534 first (root reads any file, so a
// permission test run as root would check nothing).
void ExpectTrueWithoutPrivileges(const std::function<bool()>& check);

// 8-byte little-endian length + `header` + `data`: a safetensors file's bytes.
std::string SafetensorsBytes(std::string_view header, std::string_view data = {});
// Same, with the declared header length replaced by `declared_length`.
std::string SafetensorsBytesWithLength(uint64_t declared_length, std::string_view header,
                                       std::string_view data = {});

}  // namespace shardstream::testing
