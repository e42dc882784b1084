// A main for the fuzz targets without libFuzzer: runs the target over saved inputs (files, or
// every file in a folder, recursively, sorted) and prints one line per input,
// "VERDICT<TAB>PATH", where VERDICT is "valid" or the error's rule. Exit 0 when every input ran,
// 2 on a usage or read error; a broken invariant aborts. The regression corpus runs through it as
// a ctest (label fuzz), and the differential tests compare its verdicts with the reference.
#include "tests/fuzz/fuzz_verdict.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " FILE_OR_FOLDER...\n";
    return 2;
  }
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    std::error_code ec;
    if (fs::is_directory(argv[i], ec)) {
      std::vector<fs::path> found;
      for (const auto& entry : fs::recursive_directory_iterator(argv[i], ec)) {
        if (entry.is_regular_file()) found.push_back(entry.path());
      }
      if (ec) {
        std::cerr << "error: " << argv[i] << ": " << ec.message() << "\n";
        return 2;
      }
      std::sort(found.begin(), found.end());
      inputs.insert(inputs.end(), found.begin(), found.end());
    } else {
      inputs.emplace_back(argv[i]);
    }
  }
  for (const fs::path& path : inputs) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      std::cerr << "error: cannot read " << path << "\n";
      return 2;
    }
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string verdict =
        shardstream::fuzz::Verdict(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    std::cout << verdict << '\t' << path.string() << '\n';
  }
  return 0;
}
