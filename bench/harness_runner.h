// Runs the IO-strategy harness (bench/harness.h) on this machine: `shardstream bench`'s whole run
// once its command line is parsed (cli/bench.cc only parses it).
//
// Every run is a fresh child process (so no run inherits warm destination memory from another):
// `SHARDSTREAM load CKPT --json --quiet ...` for the strategies, fio / fresh_copy_ceiling /
// cuda_ceiling for the ceilings, `PYTHON bench/peers/DRIVER.py` for the peers. The children's own
// reports give the times (measured inside each process: start-up left out of every row); wait4's
// rusage gives each child's peak RSS.
#pragma once

#include "bench/harness.h"
#include "io/status.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace shardstream::bench {

inline constexpr uint32_t kDefaultRepeat = 3;
inline constexpr uint32_t kMaxRepeat = 1000;
inline constexpr uint64_t kDefaultTimeoutS = 600;

// One harness run: what to measure and where the report goes.
struct HarnessOptions {
  // The `shardstream` binary whose `load` the strategy rows run (the CLI passes its own path).
  std::string shardstream;
  // The command line as given, recorded in the report.
  std::vector<std::string> command;
  std::string checkpoint;  // a .safetensors file, an index or a folder, as `load` takes it
  // Device, sink and the --queue-depth / --chunk-mb lists: the first of each (else the pipeline's
  // defaults) are also the fio ceilings' settings.
  RowOptions row_options;
  std::vector<BenchRow> shardstream_rows;  // BuildShardstreamRows(strategies, row_options)
  uint32_t repeat = kDefaultRepeat;        // rounds, 1..kMaxRepeat
  double timeout_s = kDefaultTimeoutS;     // a child running longer is killed, its run failed
  bool cold = false;                       // drop the files' pages before every run
  bool drop_caches = true;                 // cold: /proc/sys/vm/drop_caches too, when writable
  bool ceilings = true;                    // the fio, memcpy and H2D rows
  bool peers = false;                      // the peer drivers' rows
  // Unset: $SHARDSTREAM_PEER_DIR, else the source tree's bench/peers ($SHARDSTREAM_BENCH_DIR
  // overrides the source tree's bench/, $SHARDSTREAM_BENCH_TOOL_DIR the build tree's).
  std::optional<std::string> peer_dir;
  // Runs the peers and the plot. Unset: $SHARDSTREAM_PYTHON, else the Python the build was
  // configured with, else python3.
  std::optional<std::string> python;
  std::optional<std::string> json_path;  // write the JSON report there
  std::optional<std::string> plot_path;  // draw the table there (bench/plot.py, matplotlib)
  bool markdown = false;                 // the table in Markdown
  bool quiet = false;                    // no line per run on stderr
};

// Runs every row `repeat` times, interleaved, each run in a child process, and prints the
// checkpoint line, the table (FormatTable) and the notes on stdout and a line per run on stderr
// (unless quiet); writes the JSON report and the plot when asked. Not thread-safe: it drops and
// warms the page cache of the checkpoint's files and spawns children.
//
// A run that fails, times out or prints garbage fails its row (shown with the reason); that is
// still an OK return. An error means the harness could not run or could not write what was asked:
// the checkpoint does not open (its own error), no peer drivers in the peer folder (rule "peers"),
// the JSON report cannot be written (rule "io"; nothing written after it), or the plot failed
// (rule "plot"; the table and the JSON are out by then).
io::Status RunHarness(const HarnessOptions& options);

// `shardstream bench CKPT --ranks N`: many ranks, one read (issue 27), measured by
// bench/distributed_load.py in the Python (N processes on a gloo group over 127.0.0.1, the
// distributed load against every rank reading everything, both with O_DIRECT).
struct DistributedBenchOptions {
  std::string checkpoint;
  uint32_t ranks = 2;
  uint32_t repeat = kDefaultRepeat;
  double timeout_s = kDefaultTimeoutS;  // the whole run; past it the script is killed
  // Unset: $SHARDSTREAM_PYTHON, else the Python the build was configured with, else python3. Its
  // shardstream package must have process_group= (this build's Python package).
  std::optional<std::string> python;
  std::optional<std::string> json_path;  // the script's per-rank rows
};

// Runs the script and prints its table on stdout. An error: the checkpoint's own when it does not
// open; rule "distributed-bench" when the script could not start, failed or timed out, with its
// stderr tail.
io::Status RunDistributedBench(const DistributedBenchOptions& options);

}  // namespace shardstream::bench
