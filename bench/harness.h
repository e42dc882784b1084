// The IO-strategy harness behind `shardstream bench`, its pure pieces (bench/harness_runner.h
// runs the processes): which rows a command line asks for, the interleaved order they run in, what
// a child printed, the summary statistics, the table and the JSON report. No IO, no processes, no
// torch: unit-tested in tests/bench/harness_test.cc.
//
// A row is one thing timed once per round in a fresh process: a shardstream strategy with its
// parameters (`load CKPT --json --quiet ARGS`), a ceiling (fio, memcpy into fresh memory, pinned
// host-to-device copies) or a peer (a driver in bench/peers/). Rounds interleave the rows
// (A B C A B C ...) so that drift on a shared machine hits every row alike.
#pragma once

#include "io/json_writer.h"
#include "io/status.h"

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shardstream::bench {

// A cold run whose files were still more than this fraction in the page cache after the drop is
// flagged: its time is not a cold time.
inline constexpr double kMaxColdResidentFraction = 0.05;
inline constexpr uint32_t kDefaultFioQueueDepth = 8;  // the staged pipeline's default depth
inline constexpr uint64_t kDefaultFioBlockMb = 4;     // and its chunk size through staging
// A row more than this fraction faster than its own ceiling is marked: that ceiling is wrong.
inline constexpr double kCeilingTolerance = 0.10;
// Warm page-cache fio runs loop over a file until about this much was read, so that fio's
// millisecond runtime resolves a fast copy.
inline constexpr uint64_t kFioWarmReadBytes = uint64_t{1} << 30;
inline constexpr uint32_t kFioMaxLoops = 64;
// The warm page-cache ceiling: each of its configurations (pread and io_uring) this many times.
inline constexpr size_t kPageCacheTries = 3;

// A way for shardstream to read, as `load` flags. Parsed from --strategies.
struct Strategy {
  std::string_view name;
  std::vector<std::string_view> load_args;
  std::string_view what;  // one line for --help
  bool uses_queue_depth;  // io_uring may be chosen: --queue-depth values multiply this row
  bool needs_tensors;     // needs --sink tensors (mmap, huge pages and zero-copy keep tensors)
  bool cpu_only;          // no --device cuda (huge pages, zero-copy: host memory features)
};

// Every strategy, in the order --help lists them.
std::span<const Strategy> AllStrategies();
inline constexpr std::string_view kDefaultStrategies = "auto,pread,uring,uring-direct";

// "pread,uring-direct" → the strategies, in the order given. Errors (rule "strategy"): an unknown
// or repeated name (the message lists the known ones), an empty list or item.
io::Result<std::vector<const Strategy*>> ParseStrategies(std::string_view list);
// "8,32" → {8, 32}. Errors (rule `flag`): empty items, non-numbers, values outside [1, max].
io::Result<std::vector<uint32_t>> ParseUintList(std::string_view list, std::string_view flag,
                                                uint32_t max);

enum class RowKind : uint8_t { kCeiling, kShardstream, kPeer };
std::string_view RowKindName(RowKind kind);

// What a row's figure is compared with (see RowCeiling).
enum class CeilingKind : uint8_t {
  kNone,
  kStorage,    // the disk: the best of a fio sweep (cold: O_DIRECT and buffered; warm: O_DIRECT)
  kPageCache,  // fio buffered on cached files (--invalidate=0): pread and io_uring, the pipeline's
               // block size and threads
  kMemcpy,     // memcpy into fresh memory: owned CPU tensors, warm
  kPinnedH2D,  // pinned host-to-device copies: a GPU load, warm
};
std::string_view CeilingKindName(CeilingKind kind);

// One fio configuration. Each of `jobs` jobs reads its own 1/jobs of the file (--size and
// --offset_increment), `depth` reads of `block_bytes` in flight with io_uring, or one at a time
// with pread (`sync`: fio's psync engine, what `load` uses for buffered reads); bandwidth of the
// group.
struct FioSettings {
  uint64_t block_bytes = kDefaultFioBlockMb << 20;
  uint32_t depth = kDefaultFioQueueDepth;
  uint32_t jobs = 1;
  bool direct = false;
  bool sync = false;
  bool operator==(const FioSettings&) const = default;
};
// "O_DIRECT 16 MiB qd=32 2 jobs", "pread buffered 4 MiB 2 jobs".
std::string FioSettingsName(const FioSettings& settings);

// The storage sweep: depth {8, 32, `matched.depth`} x jobs {1, `matched.jobs`} x block
// {4, 16 MiB, `matched.block_bytes`} x (O_DIRECT, and buffered when `with_buffered`), without
// duplicates, the matched configuration first.
std::vector<FioSettings> StorageSweep(const FioSettings& matched, bool with_buffered);

// One file for fio: its size and how many passes over it.
struct FioFile {
  std::string path;
  uint64_t bytes = 0;
  uint32_t loops = 1;
};
// One fio command over every file in turn: a job section per file, each of its jobs reading whole
// blocks of its own part (the part rounded down to a multiple of the block, the block shrunk to
// the part for a small file, fewer jobs when the file is smaller than one 4 KiB-aligned part
// each); from the second file on `stonewall` (it starts when the previous ended) and `new_group`,
// so that with --group_reporting the JSON's jobs[i] is file i. --invalidate=0 always: the harness
// drops or warms the pages itself, and fio's default invalidation would turn a warm run cold.
// --iomem_align=4096 always: fio's own buffers are page-aligned like the pipeline's staging slots
// (by default they are only malloc-aligned, and copying the page cache into such a buffer ran at
// 8.4 GB/s against 19.5 GB/s page-aligned on our AMD EPYC VM: a "ceiling" at less than half).
// ':' in a path is escaped (fio splits filenames there).
std::vector<std::string> FioArgs(const std::string& fio, std::span<const FioFile> files,
                                 const FioSettings& settings);
uint32_t FioWarmLoops(uint64_t file_bytes);

struct BenchRow {
  std::string name;  // shown in the table, e.g. "uring-direct qd=32 chunk=16MiB"
  RowKind kind = RowKind::kShardstream;
  CeilingKind ceiling = CeilingKind::kNone;  // kCeiling rows: which ceiling this is
  // kShardstream: the `load` flags after CKPT. kPeer: the driver's path. kCeiling: unused.
  std::vector<std::string> args;
  // kShardstream: the shardstream command that runs the row; empty: this one. Another build's
  // (`shardstream bench --baseline BINARY`) measures a change against it in the same rounds.
  std::string binary;
  bool add_touch_seconds = false;  // zero-copy: the time includes touching every page
  bool lazy = false;               // zero-copy: views, not bytes in place: held to no ceiling
  bool direct = false;             // O_DIRECT reads: warm or cold, bounded by the disk
  // kStorage / kPageCache rows: the fio configurations; a run's figure is the best of them.
  std::vector<FioSettings> fio;
};

// The fio ceiling rows: warm, the page cache with `matched` block size and jobs (buffered, with
// pread and with io_uring at `matched.depth`, each kPageCacheTries times: the best of them) and
// the disk (O_DIRECT sweep); cold, the disk (sweep over O_DIRECT and buffered).
std::vector<BenchRow> FioCeilingRows(const FioSettings& matched, bool cold);

struct RowOptions {
  std::string device = "cpu";
  std::string sink = "tensors";
  std::vector<uint32_t> queue_depths;  // empty: the default; else one row per value (uring rows)
  std::vector<uint32_t> chunk_mbs;     // empty: the default; else one row per value
  std::optional<uint64_t> staging_mb;  // passed to every row when set
};

// The shardstream rows: strategies × chunk sizes × (queue depths, for rows that use io_uring).
// Names carry the parameters that were given. Errors (rule "strategy"): a strategy that cannot
// run with the sink or device (e.g. mmap with --sink discard).
// The same shardstream rows run by `binary` (another build of shardstream), named "baseline NAME".
std::vector<BenchRow> BaselineRows(std::span<const BenchRow> rows, const std::string& binary);

io::Result<std::vector<BenchRow>> BuildShardstreamRows(std::span<const Strategy* const> strategies,
                                                       const RowOptions& options);

// One timed run of one row.
struct RunSlot {
  uint32_t round = 0;
  uint32_t row = 0;
};
// round 0: rows 0..n-1, round 1: rows 0..n-1, ...
std::vector<RunSlot> InterleavedSchedule(size_t rows, uint32_t repeat);

// What one run gave.
struct RunRecord {
  uint32_t round = 0;
  bool ok = false;
  double seconds = -1;
  uint64_t peak_rss_bytes = 0;  // the child's own (wait4's ru_maxrss); 0 when not measured
  double resident_before = -1;  // page-cache residency of the files just before the run
  bool cold_dropped = true;     // --cold: false when the drop left the files resident
  double child_resident = -1;   // what a shardstream child sampled itself (--direct auto)
  bool mapped = false;          // every byte was a view of the file mapping (ChildReport)
  std::string error;            // !ok: why, with the tail of the child's stderr
  std::string detail;           // a fio sweep: the winning settings (and any that failed)
};

enum class RowStatus : uint8_t { kOk, kFailed, kNotInstalled, kNotApplicable };
std::string_view RowStatusName(RowStatus status);

struct RowResult {
  BenchRow row;
  RowStatus status = RowStatus::kOk;  // kOk until a run fails; set up front for the others
  std::string note;                   // a peer's version, or why it is not installed / applicable
  std::vector<RunRecord> runs;
};

struct Summary {
  double median = 0, min = 0, max = 0;
  size_t count = 0;
};
// Median (mean of the middle two for an even count), min and max. Count 0 for an empty input.
Summary Summarize(std::span<const double> values);

// A row's times when every run succeeded, else nullopt: a failed run fails the row, so that a
// flaky peer is never shown by its lucky runs.
std::optional<Summary> RowSummary(const RowResult& row);

// A finished child's stdout → the figures. A shardstream child prints its `load --json` object;
// a peer driver prints one JSON object with "seconds" and "bytes". The last line that starts with
// '{' is parsed. Errors (rule "child-report"): no such line, invalid JSON, "seconds" missing,
// negative or not finite, "bytes" missing. Ceiling tools have parsers of their own below.
struct ChildReport {
  double seconds = 0;
  uint64_t bytes = 0;
  double touch_seconds = -1;      // `load --touch`
  double resident_fraction = -1;  // `load` with --direct auto
  uint64_t mapped_bytes = 0;  // a peer's touched_mapped_bytes: bytes that are file-mapping views
};
io::Result<ChildReport> ParseChildReport(std::string_view stdout_text);
// fio --output-format=json → the first job's read bandwidth (bw_bytes), bytes per second.
io::Result<double> ParseFioBytesPerSecond(std::string_view stdout_text);
// fio --output-format=json → every jobs[i]'s read bandwidth (one per reporting group), in order.
// Errors (rule "child-report"): no JSON, no jobs, a job without a positive read.bw_bytes.
io::Result<std::vector<double>> ParseFioGroupBandwidths(std::string_view stdout_text);
// bench/fresh_copy_ceiling → the one number it prints.
io::Result<double> ParseSecondsLine(std::string_view stdout_text);
// bench/cuda_ceiling --json → the best "h2d_pinned*" figure, in GB/s.
io::Result<double> ParseH2DGbps(std::string_view stdout_text);

// A peer driver's `--probe`: exit 0 and {"peer": NAME, "version": V}; exit 3 (not installed) or
// 4 (not applicable) and {"peer": NAME, "reason": R}. Anything else is a failed probe.
inline constexpr int kProbeNotInstalled = 3;
inline constexpr int kProbeNotApplicable = 4;
struct ProbeResult {
  RowStatus status = RowStatus::kOk;
  std::string name;  // "peer: NAME", or "peer: <file stem>" when the driver did not say
  std::string note;  // version, or the reason
};
ProbeResult ParseProbe(std::string_view file_stem, int exit_status, std::string_view stdout_text,
                       std::string_view stderr_tail);

// bench/peers/_common.py --versions → package → version ("" for a package that is not installed).
// Output that is not one JSON object of strings and nulls gives an empty map.
std::map<std::string, std::string> ParseVersions(std::string_view stdout_text);

// The last `max_bytes` of a child's stderr, on one line (newlines become " | ").
std::string StderrTail(std::string_view stderr_text, size_t max_bytes = 400);

// Everything `shardstream bench` measured and where.
struct BenchReport {
  std::vector<std::string> command;                          // argv, exactly as given
  std::vector<std::pair<std::string, std::string>> machine;  // hostname, kernel, cpus, ...
  std::map<std::string, std::string> versions;               // library → version ("" unknown)
  std::string checkpoint;
  std::vector<std::string> files;
  uint64_t data_bytes = 0;
  uint64_t tensors = 0;
  std::string device = "cpu";
  std::string sink = "tensors";
  uint32_t repeat = 0;
  bool cold = false;
  bool peers = false;
  std::vector<std::string> notes;  // e.g. "fio not installed", how pages were dropped
  std::vector<RowResult> rows;
  std::vector<RunSlot> order;  // the order the runs happened in
};

// The ceiling that bounds the case: cold → the disk (the fio sweep); warm on a GPU → pinned H2D;
// warm CPU tensors → memcpy into fresh memory; warm discard → fio buffered on the page cache
// (the pipeline's block size, depth and threads). The index of that ceiling's row when it has a
// summary, else nullopt.
std::optional<size_t> ReferenceCeiling(const BenchReport& report);

// The ceiling row `row` is held to: ceiling rows none; O_DIRECT rows the disk (warm too: they
// bypass the cache); warm CPU rows whose every run handed out only views of the file mapping
// (RunRecord::mapped) the page cache, as they copy nothing into fresh memory; every other row
// the reference. nullopt when that ceiling has no summary.
std::optional<size_t> RowCeiling(const BenchReport& report, size_t row);

// Whether row `row` ran more than kCeilingTolerance faster than its own ceiling: its median run
// against the ceiling's best run (a ceiling is the best the machine does; median against median
// marks noise on a busy machine). Then the ceiling is not one. Exempt (always false): ceiling
// rows, lazy rows, rows without a summary or a ceiling.
bool CeilingExceeded(const BenchReport& report, size_t row);

// The fio sweep's winner in the run with the row's median time (the lower middle for an even
// count); "" for other rows.
std::string MedianRunDetail(const RowResult& row);

// "checkpoint  PATH: 4,194,304 bytes (4.0 MiB) in 1 file, warm, cpu, sink tensors, 3 interleaved
// rounds" and a newline: what the table below it measured.
std::string FormatCheckpointLine(const BenchReport& report);

// The table: one line per row (median, min, max seconds; GB/s; % of the row's own ceiling, named,
// with "(!)" when CeilingExceeded; peak RSS; or the row's status and reason), a sweep's winning
// fio settings after its name. Markdown when `markdown`.
std::string FormatTable(const BenchReport& report, bool markdown);

// The JSON report (schema "shardstream-bench/2"; /1 named the fio ceilings "storage-direct" and
// "storage-buffered" and held every row to one ceiling): machine, versions, command, checkpoint,
// settings, notes, the run order, and per row its kind, args, status, note, summary (null unless
// ok), GB/s, its own ceiling (name), % of it, ceiling_exceeded, peak RSS, a sweep's fio settings
// and winner, and every run.
std::string BenchReportJson(const BenchReport& report);

}  // namespace shardstream::bench
