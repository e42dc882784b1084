// `shardstream bench CKPT`: which IO strategy is fastest on this machine, next to the machine's
// ceilings and the peer loaders, every figure measured in this run. This file parses the command
// line; the harness that runs it is bench/harness_runner.h.

#include "bench/harness.h"
#include "bench/harness_runner.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "io/status.h"

#include <unistd.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace shardstream::cli {
namespace {

constexpr std::array<FlagSpec, 20> kFlags = {{
    {"device", "DEV", "cpu (default) or cuda:N"},
    {"strategies", "LIST",
     "comma-separated, from: auto, pread, pread-direct, mmap, uring, "
     "uring-direct, huge-pages, zero-copy (default auto,pread,uring,"
     "uring-direct)"},
    {"sink", "SINK", "tensors (default) or discard (the staged pipeline, bytes dropped)"},
    {"queue-depth", "LIST",
     "io_uring reads in flight, e.g. 8,32: one row per value for the "
     "strategies that may use io_uring"},
    {"chunk-mb", "LIST", "largest read in MiB, e.g. 4,16: one row per value"},
    {"staging-mb", "N", "staging bound passed to every shardstream row"},
    {"repeat", "N", "rounds; every row runs once per round, interleaved (default 3)"},
    {"cold", "",
     "drop the files' pages before every run (posix_fadvise DONTNEED, and "
     "/proc/sys/vm/drop_caches when writable), then check their residency"},
    {"no-drop-caches", "",
     "--cold without /proc/sys/vm/drop_caches: only the checkpoint's pages "
     "are dropped, other processes' cache stays (tests use it)"},
    {"peers", "",
     "add the peer loaders installed in the Python (bench/peers/; scripts/install-deps --peers "
     "installs them)"},
    {"peer-dir", "DIR",
     "the peer drivers (default: the source tree's bench/peers, or "
     "$SHARDSTREAM_PEER_DIR)"},
    {"json", "OUT", "write the full report (every run, machine, versions, command) to OUT"},
    {"plot", "OUT.png", "draw the table as a bar chart (bench/plot.py, needs matplotlib)"},
    {"markdown", "", "print the table as Markdown"},
    {"timeout-s", "N", "a child running longer is killed and its row failed (default 600)"},
    {"no-ceilings", "", "leave out fio, memcpy and H2D ceilings"},
    {"baseline", "BINARY",
     "also run every strategy row with another shardstream build, in the same rounds"},
    {"quiet", "", "no line per run on stderr"},
    {"ranks", "N",
     "many ranks, one read: N processes on a gloo group (127.0.0.1) load CKPT with "
     "process_group= against N each reading it all, both O_DIRECT (bench/distributed_load.py in "
     "the Python; takes --repeat, --json, --timeout-s, --python only)"},
    {"python", "PY",
     "the Python for peers and the plot (default $SHARDSTREAM_PYTHON, else the one the build was "
     "configured with, else python3)"},
}};

// Processes on one machine, each a rank of the --ranks group.
constexpr uint64_t kMaxRanks = 64;

// This binary, which the harness runs as `shardstream load` for the strategy rows.
std::string SelfExe() {
  char path[4096];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  return n > 0 ? std::string(path, static_cast<size_t>(n)) : "/proc/self/exe";
}

// `bench CKPT --ranks N`: bench/distributed_load.py, which has its own rows (every rank's wall
// time and storage bytes); the strategy harness's flags mean nothing there and are refused.
int RunDistributed(const Args& args) {
  for (const FlagSpec& flag : kFlags) {
    const std::string_view name = flag.name;
    if (name == "ranks" || name == "repeat" || name == "json" || name == "timeout-s" ||
        name == "python" || name == "quiet" || !args.Has(name)) {
      continue;
    }
    PrintError("--" + std::string(name) +
               " does not apply with --ranks (it takes --repeat, --json, --timeout-s, --python)");
    return kExitUsage;
  }
  std::optional<uint64_t> ranks = args.GetUint("ranks", 2);
  std::optional<uint64_t> repeat = args.GetUint("repeat", bench::kDefaultRepeat);
  std::optional<uint64_t> timeout = args.GetUint("timeout-s", bench::kDefaultTimeoutS);
  if (!ranks || !repeat || !timeout) return kExitUsage;
  if (*ranks < 2 || *ranks > kMaxRanks) {
    PrintError("--ranks must be 2.." + std::to_string(kMaxRanks));
    return kExitUsage;
  }
  if (*repeat == 0 || *repeat > bench::kMaxRepeat || *timeout == 0) {
    PrintError("--repeat must be 1..1000 and --timeout-s at least 1");
    return kExitUsage;
  }
  bench::DistributedBenchOptions options;
  options.checkpoint = args.positional()[0];
  options.ranks = static_cast<uint32_t>(*ranks);
  options.repeat = static_cast<uint32_t>(*repeat);
  options.timeout_s = static_cast<double>(*timeout);
  options.python = args.Get("python");
  options.json_path = args.Get("json");
  if (io::Status status = bench::RunDistributedBench(options); !status.ok()) {
    PrintError(status.ToString());
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace

int RunBench(std::span<char* const> argv) {
  std::optional<Args> args = Args::Parse(argv, kFlags);
  if (!args) return kExitUsage;
  if (args->help()) {
    PrintHelp("bench CKPT [options]",
              "Times each IO strategy (and parameter combination) on CKPT, each run in a fresh\n"
              "process, rows interleaved over --repeat rounds, next to the ceilings measured in\n"
              "the same run (fio when installed: the page cache with the pipeline's block size,\n"
              "depth and threads, and the disk as the best of a sweep; memcpy into fresh memory;\n"
              "pinned host-to-device on a GPU) and, with --peers, the peer loaders installed in\n"
              "the Python. Prints median, min and max seconds, GB/s, % of the row's own ceiling\n"
              "(marked (!) when more than 10% above it) and peak RSS per row; a run that fails,\n"
              "times out or prints garbage fails its row (shown with the reason, never a time).\n"
              "With --ranks N it instead runs bench/distributed_load.py: N ranks loading CKPT\n"
              "with process_group= against N processes each reading it all (wall time, storage\n"
              "bytes per rank).\n"
              "Exit status: 0 measured (rows may have failed), 1 could not run, 2 usage.",
              kFlags);
    return kExitOk;
  }
  if (args->positional().size() != 1) {
    PrintError("bench takes exactly one checkpoint path (see --help)");
    return kExitUsage;
  }
  if (args->Has("ranks")) return RunDistributed(*args);
  bench::HarnessOptions options;
  bench::RowOptions& row_options = options.row_options;
  row_options.device = args->Get("device").value_or("cpu");
  if (row_options.device != "cpu" && !row_options.device.starts_with("cuda")) {
    PrintError("--device must be cpu or cuda:N, not '" + row_options.device + "'");
    return kExitUsage;
  }
  row_options.sink = args->Get("sink").value_or("tensors");
  if (row_options.sink != "tensors" && row_options.sink != "discard") {
    PrintError("--sink must be tensors or discard, not '" + row_options.sink + "'");
    return kExitUsage;
  }
  io::Result<std::vector<const bench::Strategy*>> strategies = bench::ParseStrategies(
      args->Get("strategies").value_or(std::string(bench::kDefaultStrategies)));
  if (!strategies.ok()) {
    PrintError(strategies.status().ToString());
    return kExitUsage;
  }
  for (const char* flag : {"queue-depth", "chunk-mb"}) {
    if (auto list = args->Get(flag)) {
      io::Result<std::vector<uint32_t>> values =
          bench::ParseUintList(*list, flag, flag == std::string("queue-depth") ? 4096 : 1 << 20);
      if (!values.ok()) {
        PrintError(values.status().ToString());
        return kExitUsage;
      }
      (flag == std::string("queue-depth") ? row_options.queue_depths : row_options.chunk_mbs) =
          *values;
    }
  }
  if (args->Has("staging-mb")) {
    std::optional<uint64_t> staging = args->GetUint("staging-mb", 0);
    if (!staging) return kExitUsage;
    row_options.staging_mb = *staging;
  }
  std::optional<uint64_t> repeat = args->GetUint("repeat", bench::kDefaultRepeat);
  std::optional<uint64_t> timeout = args->GetUint("timeout-s", bench::kDefaultTimeoutS);
  if (!repeat || !timeout) return kExitUsage;
  if (*repeat == 0 || *repeat > bench::kMaxRepeat || *timeout == 0) {
    PrintError("--repeat must be 1..1000 and --timeout-s at least 1");
    return kExitUsage;
  }
  io::Result<std::vector<bench::BenchRow>> shardstream_rows =
      bench::BuildShardstreamRows(*strategies, row_options);
  if (!shardstream_rows.ok()) {
    PrintError(shardstream_rows.status().ToString());
    return kExitUsage;
  }
  options.shardstream_rows = std::move(*shardstream_rows);
  if (auto baseline = args->Get("baseline")) {
    if (::access(baseline->c_str(), X_OK) != 0) {
      PrintError("--baseline " + *baseline + " is not an executable shardstream command");
      return kExitUsage;
    }
    std::vector<bench::BenchRow> rows = bench::BaselineRows(options.shardstream_rows, *baseline);
    options.shardstream_rows.insert(options.shardstream_rows.end(), rows.begin(), rows.end());
  }
  options.shardstream = SelfExe();
  options.command.assign(argv.begin(), argv.end());
  options.command.insert(options.command.begin(), {options.shardstream, "bench"});
  options.checkpoint = args->positional()[0];
  options.repeat = static_cast<uint32_t>(*repeat);
  options.timeout_s = static_cast<double>(*timeout);
  options.cold = args->Has("cold");
  options.drop_caches = !args->Has("no-drop-caches");
  options.ceilings = !args->Has("no-ceilings");
  options.peers = args->Has("peers");
  options.peer_dir = args->Get("peer-dir");
  options.python = args->Get("python");
  options.json_path = args->Get("json");
  options.plot_path = args->Get("plot");
  options.markdown = args->Has("markdown");
  options.quiet = args->Has("quiet");
  if (io::Status status = bench::RunHarness(options); !status.ok()) {
    PrintError(status.ToString());
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace shardstream::cli
