#include "tests/support/test_files.h"

#include <cstdlib>
#include <fstream>
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

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::add, ec);
  std::filesystem::remove_all(path_, ec);
}

std::filesystem::path ScratchDir::Write(std::string_view name, std::string_view bytes) const {
  std::filesystem::path file = path_ / std::string(name);
  std::filesystem::create_directories(file.parent_path());
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + file.string());
  return file;
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
