// Pieces `shardstream load` shares between its plain path (cli/load.cc, a name → tensor map) and
// its model path (cli/load_model.cc, `--model`): the progress bar, digests, report printing.
#pragma once

#include "cli/args.h"
#include "io/format.h"
#include "io/json_writer.h"

#include <ATen/core/Tensor.h>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardstream/load.h"

namespace shardstream::cli {

using io::FormatBytes;
using io::FormatCount;

// A one-line progress bar on stderr, shown only on a terminal and only once a load has taken more
// than a second (short loads stay quiet).
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled && ::isatty(STDERR_FILENO)) {}
  ~ProgressBar() { Clear(); }

  bool Update(const Progress& p) {
    if (!enabled_) return true;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    if (elapsed < 1.0) return true;
    constexpr int kWidth = 30;
    const double fraction =
        p.total_bytes ? static_cast<double>(p.done_bytes) / static_cast<double>(p.total_bytes) : 1;
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r[%s] %3d%%  %s / %s  %.2f GB/s ", bar.c_str(),
                 static_cast<int>(fraction * 100), FormatBytes(p.done_bytes).c_str(),
                 FormatBytes(p.total_bytes).c_str(),
                 static_cast<double>(p.done_bytes) / elapsed / 1e9);
    std::fflush(stderr);
    drawn_ = true;
    return true;
  }
  void Clear() {
    if (drawn_) std::fprintf(stderr, "\r\033[K");
    drawn_ = false;
  }

 private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// "bf16", "f16", "f32" (and their long names) → the torch dtype; nullopt otherwise.
std::optional<c10::ScalarType> ParseCastDType(std::string_view name);

// One `--digest` line: name<TAB>DTYPE<TAB>[shape]<TAB>sha256 of the tensor's bytes.
struct DigestLine {
  std::string name;
  std::string dtype;
  std::string shape;
  std::string sha256;
};
struct DigestSource {
  std::string name;
  std::string dtype;  // safetensors name, e.g. "BF16"
  std::vector<uint64_t> shape;
  at::Tensor tensor;
};
// Digests computed in parallel, sorted by name in byte order.
std::vector<DigestLine> DigestTensors(std::span<const DigestSource> sources);
void PrintDigestLines(const std::vector<DigestLine>& lines);                      // to stdout
void WriteDigestJson(io::JsonWriter& out, const std::vector<DigestLine>& lines);  // "digest": [...]

// The report fields every load prints: JSON (path ... stages, inside an open object) and text.
// Says on stderr, once, that io_uring was refused and pread used (nothing when `fallback` is
// empty).
void PrintFallback(const std::string& fallback);
void WriteLoadFields(io::JsonWriter& out, const std::string& path, const LoadReport& report,
                     const LoadOptions& options);
void PrintLoadReport(std::ostream& text, const std::string& path, const LoadReport& report,
                     const LoadOptions& options);

// `load --model`: flags it adds to `load`, and the run (cli/load_model.cc). `options` holds the
// IO settings parsed by `load`; --dtype there is the model's dtype.
std::span<const FlagSpec> ModelFlags();
int RunLoadModel(const Args& args, const LoadOptions& options, std::optional<c10::ScalarType> dtype,
                 ProgressBar& bar);

}  // namespace shardstream::cli
