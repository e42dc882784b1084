#include "bench/harness.h"

#include "io/format.h"

#include <simdjson.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <utility>

namespace shardstream::bench {
namespace {

using io::Result;
using io::Status;
using io::StatusCode;

const std::array<Strategy, 8> kStrategies = {{
    {"auto", {}, "shardstream's defaults (--io auto --direct auto)", true, false, false},
    {"pread", {"--io", "pread", "--direct", "off"}, "buffered preadv", false, false, false},
    {"pread-direct", {"--io", "pread", "--direct", "on"}, "O_DIRECT preadv", false, false, false},
    {"mmap", {"--io", "mmap", "--direct", "off"}, "copy out of a mapping", false, true, false},
    {"uring", {"--io", "uring", "--direct", "off"}, "buffered io_uring", true, false, false},
    {"uring-direct", {"--io", "uring", "--direct", "on"}, "O_DIRECT io_uring", true, false, false},
    {"huge-pages", {"--huge-pages"}, "tensors in transparent huge pages", false, true, true},
    {"zero-copy",
     {"--zero-copy", "--touch"},
     "views of mappings + one read per page",
     false,
     true,
     true},
}};

std::vector<std::string_view> SplitList(std::string_view list) {
  std::vector<std::string_view> items;
  size_t begin = 0;
  while (true) {
    const size_t comma = list.find(',', begin);
    items.push_back(list.substr(begin, comma == std::string_view::npos ? comma : comma - begin));
    if (comma == std::string_view::npos) break;
    begin = comma + 1;
  }
  return items;
}

std::string KnownStrategies() {
  std::string names;
  for (const Strategy& s : kStrategies) names += (names.empty() ? "" : ", ") + std::string(s.name);
  return names;
}

Status ReportError(std::string message) {
  return Status::Error(StatusCode::kInvalidFormat, "child-report", std::move(message));
}

// The last line of `text` that starts with '{'.
std::string_view LastJsonLine(std::string_view text) {
  std::string_view found;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(begin, end - begin);
    if (line.starts_with('{')) found = line;
    begin = end + 1;
  }
  return found;
}

// A JSON number as double (simdjson keeps integers apart).
std::optional<double> Number(simdjson::dom::element value) {
  double d = 0;
  if (value.get_double().get(d) == simdjson::SUCCESS) return d;
  int64_t i = 0;
  if (value.get_int64().get(i) == simdjson::SUCCESS) return static_cast<double>(i);
  uint64_t u = 0;
  if (value.get_uint64().get(u) == simdjson::SUCCESS) return static_cast<double>(u);
  return std::nullopt;
}

std::string Shorten(std::string_view text, size_t max_bytes = 120) {
  std::string out(text.substr(0, max_bytes));
  for (char& c : out) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return out + (text.size() > max_bytes ? "..." : "");
}

std::string Fixed(double value, int digits) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", digits, value);
  return text;
}

// The ceiling in the table's ceiling column.
std::string_view CeilingShortName(CeilingKind kind) {
  switch (kind) {
    case CeilingKind::kStorage:
      return "disk";
    case CeilingKind::kPageCache:
      return "page-cache";
    case CeilingKind::kMemcpy:
      return "memcpy";
    case CeilingKind::kPinnedH2D:
      return "H2D";
    case CeilingKind::kNone:
      break;
  }
  return "-";
}

// 4 MiB, 16 MiB, 512 KiB.
std::string BlockName(uint64_t bytes) {
  if (bytes % (1 << 20) == 0) return std::to_string(bytes >> 20) + " MiB";
  return std::to_string(bytes >> 10) + " KiB";
}

constexpr uint64_t kFioAlignBytes = 4096;  // O_DIRECT offsets and lengths: the logical block
constexpr uint32_t kSweepDepths[] = {8, 32};
constexpr uint64_t kSweepBlocksMb[] = {4, 16};

}  // namespace

std::span<const Strategy> AllStrategies() { return kStrategies; }

std::string_view CeilingKindName(CeilingKind kind) {
  switch (kind) {
    case CeilingKind::kNone:
      return "none";
    case CeilingKind::kStorage:
      return "storage";
    case CeilingKind::kPageCache:
      return "page-cache";
    case CeilingKind::kMemcpy:
      return "memcpy";
    case CeilingKind::kPinnedH2D:
      return "pinned-h2d";
  }
  return "none";
}

std::string FioSettingsName(const FioSettings& settings) {
  return std::string(settings.sync ? "pread " : "") +
         (settings.direct ? "O_DIRECT " : "buffered ") + BlockName(settings.block_bytes) +
         (settings.sync ? "" : " qd=" + std::to_string(settings.depth)) + " " +
         std::to_string(settings.jobs) + (settings.jobs == 1 ? " job" : " jobs");
}

std::vector<FioSettings> StorageSweep(const FioSettings& matched, bool with_buffered) {
  std::vector<uint32_t> depths = {matched.depth};
  for (uint32_t d : kSweepDepths) depths.push_back(d);
  std::vector<uint64_t> blocks = {matched.block_bytes};
  for (uint64_t mb : kSweepBlocksMb) blocks.push_back(mb << 20);
  const std::vector<uint32_t> jobs = {matched.jobs, 1};
  std::vector<bool> directs = {true};
  if (with_buffered) directs.push_back(false);
  std::vector<FioSettings> sweep;
  for (bool direct : directs) {
    for (uint32_t job_count : jobs) {
      for (uint64_t block : blocks) {
        for (uint32_t depth : depths) {
          const FioSettings s{block, depth, std::max(1u, job_count), direct};
          if (std::find(sweep.begin(), sweep.end(), s) == sweep.end()) sweep.push_back(s);
        }
      }
    }
  }
  return sweep;
}

std::vector<std::string> FioArgs(const std::string& fio, std::span<const FioFile> files,
                                 const FioSettings& settings) {
  std::vector<std::string> args = {
      fio,
      "--readonly",
      "--rw=read",
      settings.sync ? "--ioengine=psync" : "--ioengine=io_uring",
      "--iodepth=" + std::to_string(settings.sync ? 1 : settings.depth),
      "--iomem_align=4096",
      settings.direct ? "--direct=1" : "--direct=0",
      "--group_reporting",
      "--invalidate=0",
      "--output-format=json"};
  for (size_t i = 0; i < files.size(); ++i) {
    const FioFile& file = files[i];
    uint64_t jobs = std::max(1u, settings.jobs);
    uint64_t part = file.bytes / jobs / kFioAlignBytes * kFioAlignBytes;
    while (jobs > 1 && part == 0) {
      --jobs;
      part = file.bytes / jobs / kFioAlignBytes * kFioAlignBytes;
    }
    if (part == 0) part = file.bytes;  // smaller than one aligned block: one job, the whole file
    const uint64_t block = std::max<uint64_t>(1, std::min(settings.block_bytes, part));
    part = std::max(block, part / block * block);
    std::string path;
    for (char c : file.path) {
      if (c == ':') path += '\\';
      path += c;
    }
    args.insert(args.end(),
                {"--name=file" + std::to_string(i), "--filename=" + path,
                 "--bs=" + std::to_string(block), "--numjobs=" + std::to_string(jobs),
                 "--size=" + std::to_string(part), "--offset_increment=" + std::to_string(part),
                 "--loops=" + std::to_string(std::max(1u, file.loops))});
    if (i > 0) args.insert(args.end(), {"--stonewall", "--new_group"});
  }
  return args;
}

uint32_t FioWarmLoops(uint64_t file_bytes) {
  if (file_bytes == 0) return 1;
  const uint64_t loops = (kFioWarmReadBytes + file_bytes - 1) / file_bytes;
  return static_cast<uint32_t>(std::clamp<uint64_t>(loops, 1, kFioMaxLoops));
}

std::vector<BenchRow> FioCeilingRows(const FioSettings& matched, bool cold) {
  auto row = [](std::string name, CeilingKind kind, std::vector<FioSettings> fio) {
    BenchRow r;
    r.name = std::move(name);
    r.kind = RowKind::kCeiling;
    r.ceiling = kind;
    r.fio = std::move(fio);
    return r;
  };
  std::vector<BenchRow> rows;
  if (!cold) {
    // pread (what `load` reads cached files with) and io_uring, each kPageCacheTries times: a
    // ceiling is the best the machine does, not one unlucky run on a busy machine.
    FioSettings uring = matched;
    uring.direct = false;
    uring.sync = false;
    FioSettings pread = uring;
    pread.sync = true;
    std::vector<FioSettings> tries;
    for (size_t i = 0; i < kPageCacheTries; ++i) tries.insert(tries.end(), {pread, uring});
    std::string name = "ceiling: page cache, best of " + std::to_string(tries.size()) +
                       " fio buffered runs";  // before the row takes the tries
    rows.push_back(row(std::move(name), CeilingKind::kPageCache, std::move(tries)));
  }
  std::vector<FioSettings> sweep = StorageSweep(matched, /*with_buffered=*/cold);
  // The name first: the row takes the sweep.
  std::string name = "ceiling: disk, best of " + std::to_string(sweep.size()) +
                     (cold ? " fio runs" : " fio O_DIRECT runs");
  rows.push_back(row(std::move(name), CeilingKind::kStorage, std::move(sweep)));
  return rows;
}

Result<std::vector<const Strategy*>> ParseStrategies(std::string_view list) {
  std::vector<const Strategy*> out;
  for (std::string_view item : SplitList(list)) {
    if (item.empty()) {
      return Status::Error(StatusCode::kInvalidArgument, "strategy",
                           "--strategies has an empty item in '" + std::string(list) + "'");
    }
    const auto it = std::find_if(kStrategies.begin(), kStrategies.end(),
                                 [&](const Strategy& s) { return s.name == item; });
    if (it == kStrategies.end()) {
      return Status::Error(
          StatusCode::kInvalidArgument, "strategy",
          "unknown strategy '" + std::string(item) + "' (known: " + KnownStrategies() + ")");
    }
    if (std::find(out.begin(), out.end(), &*it) != out.end()) {
      return Status::Error(StatusCode::kInvalidArgument, "strategy",
                           "strategy '" + std::string(item) + "' is listed twice");
    }
    out.push_back(&*it);
  }
  return out;
}

Result<std::vector<uint32_t>> ParseUintList(std::string_view list, std::string_view flag,
                                            uint32_t max) {
  std::vector<uint32_t> out;
  for (std::string_view item : SplitList(list)) {
    uint32_t value = 0;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size() || value == 0 ||
        value > max) {
      return Status::Error(StatusCode::kInvalidArgument, std::string(flag),
                           "--" + std::string(flag) + " takes numbers 1.." + std::to_string(max) +
                               " separated by commas, not '" + std::string(list) + "'");
    }
    out.push_back(value);
  }
  return out;
}

std::string_view RowKindName(RowKind kind) {
  switch (kind) {
    case RowKind::kCeiling:
      return "ceiling";
    case RowKind::kShardstream:
      return "shardstream";
    case RowKind::kPeer:
      return "peer";
  }
  return "?";
}

std::string_view RowStatusName(RowStatus status) {
  switch (status) {
    case RowStatus::kOk:
      return "ok";
    case RowStatus::kFailed:
      return "failed";
    case RowStatus::kNotInstalled:
      return "not installed";
    case RowStatus::kNotApplicable:
      return "not applicable";
  }
  return "?";
}

std::vector<BenchRow> BaselineRows(std::span<const BenchRow> rows, const std::string& binary) {
  std::vector<BenchRow> out;
  for (const BenchRow& row : rows) {
    if (row.kind != RowKind::kShardstream) continue;
    BenchRow baseline = row;
    baseline.name = "baseline " + row.name;
    baseline.binary = binary;
    out.push_back(std::move(baseline));
  }
  return out;
}

Result<std::vector<BenchRow>> BuildShardstreamRows(std::span<const Strategy* const> strategies,
                                                   const RowOptions& options) {
  const bool discard = options.sink == "discard";
  const bool cuda = options.device != "cpu";
  // One value standing for "the default" keeps the loops below flat.
  const std::vector<uint32_t> no_value = {0};
  const std::vector<uint32_t>& chunks = options.chunk_mbs.empty() ? no_value : options.chunk_mbs;
  std::vector<BenchRow> rows;
  for (const Strategy* s : strategies) {
    if (s->needs_tensors && discard) {
      return Status::Error(StatusCode::kInvalidArgument, "strategy",
                           "strategy '" + std::string(s->name) +
                               "' keeps tensors: it cannot run with --sink discard");
    }
    if (s->cpu_only && cuda) {
      return Status::Error(
          StatusCode::kInvalidArgument, "strategy",
          "strategy '" + std::string(s->name) + "' is for CPU tensors, not " + options.device);
    }
    const std::vector<uint32_t>& depths =
        s->uses_queue_depth && !options.queue_depths.empty() ? options.queue_depths : no_value;
    for (uint32_t depth : depths) {
      for (uint32_t chunk : chunks) {
        BenchRow row;
        row.kind = RowKind::kShardstream;
        row.name = std::string(s->name);
        row.add_touch_seconds = s->name == "zero-copy";
        row.lazy = row.add_touch_seconds;
        for (size_t a = 0; a + 1 < s->load_args.size(); ++a) {
          row.direct |= s->load_args[a] == "--direct" && s->load_args[a + 1] == "on";
        }
        for (std::string_view a : s->load_args) row.args.emplace_back(a);
        if (cuda) row.args.insert(row.args.end(), {"--device", options.device});
        if (discard) row.args.insert(row.args.end(), {"--sink", "discard"});
        if (depth) {
          row.name += " qd=" + std::to_string(depth);
          row.args.insert(row.args.end(), {"--queue-depth", std::to_string(depth)});
        }
        if (chunk) {
          row.name += " chunk=" + std::to_string(chunk) + "MiB";
          row.args.insert(row.args.end(), {"--chunk-mb", std::to_string(chunk)});
        }
        if (options.staging_mb) {
          row.args.insert(row.args.end(), {"--staging-mb", std::to_string(*options.staging_mb)});
        }
        rows.push_back(std::move(row));
      }
    }
  }
  return rows;
}

std::vector<RunSlot> InterleavedSchedule(size_t rows, uint32_t repeat) {
  std::vector<RunSlot> order;
  order.reserve(rows * repeat);
  for (uint32_t round = 0; round < repeat; ++round) {
    for (size_t row = 0; row < rows; ++row) order.push_back({round, static_cast<uint32_t>(row)});
  }
  return order;
}

Summary Summarize(std::span<const double> values) {
  Summary s;
  s.count = values.size();
  if (values.empty()) return s;
  std::vector<double> sorted(values.begin(), values.end());
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  s.median = n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  s.min = sorted.front();
  s.max = sorted.back();
  return s;
}

std::optional<Summary> RowSummary(const RowResult& row) {
  if (row.status != RowStatus::kOk || row.runs.empty()) return std::nullopt;
  std::vector<double> seconds;
  for (const RunRecord& run : row.runs) {
    if (!run.ok) return std::nullopt;
    seconds.push_back(run.seconds);
  }
  return Summarize(seconds);
}

Result<ChildReport> ParseChildReport(std::string_view stdout_text) {
  const std::string_view line = LastJsonLine(stdout_text);
  if (line.empty()) {
    return ReportError("printed no JSON report: '" + Shorten(stdout_text) + "'");
  }
  simdjson::dom::parser parser;
  simdjson::dom::object object;
  if (parser.parse(simdjson::padded_string(line)).get(object) != simdjson::SUCCESS) {
    return ReportError("printed a report that is not a JSON object: '" + Shorten(line) + "'");
  }
  ChildReport report;
  simdjson::dom::element value;
  std::optional<double> seconds;
  if (object["seconds"].get(value) == simdjson::SUCCESS) seconds = Number(value);
  if (!seconds || !std::isfinite(*seconds) || *seconds < 0) {
    return ReportError("report has no valid \"seconds\": '" + Shorten(line) + "'");
  }
  report.seconds = *seconds;
  if (object["bytes"].get(value) != simdjson::SUCCESS ||
      value.get_uint64().get(report.bytes) != simdjson::SUCCESS) {
    return ReportError("report has no \"bytes\" count: '" + Shorten(line) + "'");
  }
  if (object["touch_seconds"].get(value) == simdjson::SUCCESS) {
    report.touch_seconds = Number(value).value_or(-1);
  }
  if (object["resident_fraction"].get(value) == simdjson::SUCCESS) {
    report.resident_fraction = Number(value).value_or(-1);
  }
  if (object["touched_mapped_bytes"].get(value) == simdjson::SUCCESS &&
      value.get_uint64().get(report.mapped_bytes) != simdjson::SUCCESS) {
    return ReportError("report has a \"touched_mapped_bytes\" that is not a count: '" +
                       Shorten(line) + "'");
  }
  return report;
}

Result<std::vector<double>> ParseFioGroupBandwidths(std::string_view stdout_text) {
  // fio may print warnings before its JSON.
  const size_t brace = stdout_text.find('{');
  if (brace == std::string_view::npos) {
    return ReportError("fio printed no JSON: '" + Shorten(stdout_text) + "'");
  }
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (parser.parse(simdjson::padded_string(stdout_text.substr(brace))).get(root) !=
      simdjson::SUCCESS) {
    return ReportError("fio's output is not JSON: '" + Shorten(stdout_text.substr(brace)) + "'");
  }
  simdjson::dom::array jobs;
  if (root["jobs"].get_array().get(jobs) != simdjson::SUCCESS || jobs.size() == 0) {
    return ReportError("fio's JSON has no jobs[0].read.bw_bytes");
  }
  std::vector<double> bandwidths;
  for (simdjson::dom::element job : jobs) {
    uint64_t bw_bytes = 0;
    if (job["read"]["bw_bytes"].get_uint64().get(bw_bytes) != simdjson::SUCCESS || bw_bytes == 0) {
      return ReportError("fio's JSON has no jobs[" + std::to_string(bandwidths.size()) +
                         "].read.bw_bytes");
    }
    bandwidths.push_back(static_cast<double>(bw_bytes));
  }
  return bandwidths;
}

Result<double> ParseFioBytesPerSecond(std::string_view stdout_text) {
  Result<std::vector<double>> groups = ParseFioGroupBandwidths(stdout_text);
  if (!groups.ok()) return groups.status();
  return groups->front();
}

Result<double> ParseSecondsLine(std::string_view stdout_text) {
  std::string_view text = stdout_text;
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  double seconds = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), seconds);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() ||
      !std::isfinite(seconds) || seconds < 0) {
    return ReportError("expected one number of seconds, got '" + Shorten(stdout_text) + "'");
  }
  return seconds;
}

Result<double> ParseH2DGbps(std::string_view stdout_text) {
  double best = -1;
  simdjson::dom::parser parser;
  size_t begin = 0;
  while (begin < stdout_text.size()) {
    size_t end = stdout_text.find('\n', begin);
    if (end == std::string_view::npos) end = stdout_text.size();
    const std::string_view line = stdout_text.substr(begin, end - begin);
    begin = end + 1;
    simdjson::dom::element row;
    std::string_view figure;
    if (!line.starts_with('{') ||
        parser.parse(simdjson::padded_string(line)).get(row) != simdjson::SUCCESS ||
        row["figure"].get_string().get(figure) != simdjson::SUCCESS ||
        !figure.starts_with("h2d_pinned")) {
      continue;
    }
    simdjson::dom::element value;
    if (row["value"].get(value) == simdjson::SUCCESS)
      best = std::max(best, Number(value).value_or(-1));
  }
  if (best <= 0) return ReportError("cuda_ceiling printed no h2d_pinned figure");
  return best;
}

ProbeResult ParseProbe(std::string_view file_stem, int exit_status, std::string_view stdout_text,
                       std::string_view stderr_tail) {
  ProbeResult probe;
  probe.name = "peer: " + std::string(file_stem);
  const std::string_view line = LastJsonLine(stdout_text);
  simdjson::dom::parser parser;
  simdjson::dom::object object;
  const bool parsed =
      !line.empty() && parser.parse(simdjson::padded_string(line)).get(object) == simdjson::SUCCESS;
  std::string_view text;
  if (parsed && object["peer"].get_string().get(text) == simdjson::SUCCESS && !text.empty()) {
    probe.name = "peer: " + std::string(text);
  }
  const bool known_exit =
      exit_status == 0 || exit_status == kProbeNotInstalled || exit_status == kProbeNotApplicable;
  if (!parsed || !known_exit) {
    probe.status = RowStatus::kFailed;
    probe.note = "probe exited " + std::to_string(exit_status) +
                 (parsed ? "" : " without a JSON line: '" + Shorten(stdout_text) + "'") +
                 (stderr_tail.empty() ? "" : "; stderr: " + std::string(stderr_tail));
    return probe;
  }
  const char* key = exit_status == 0 ? "version" : "reason";
  if (object[key].get_string().get(text) == simdjson::SUCCESS) probe.note = std::string(text);
  probe.status = exit_status == 0                    ? RowStatus::kOk
                 : exit_status == kProbeNotInstalled ? RowStatus::kNotInstalled
                                                     : RowStatus::kNotApplicable;
  return probe;
}

std::map<std::string, std::string> ParseVersions(std::string_view stdout_text) {
  std::map<std::string, std::string> versions;
  const std::string_view line = LastJsonLine(stdout_text);
  simdjson::dom::parser parser;
  simdjson::dom::object object;
  if (line.empty() ||
      parser.parse(simdjson::padded_string(line)).get(object) != simdjson::SUCCESS) {
    return versions;
  }
  for (auto [key, value] : object) {
    std::string_view text;
    if (value.get_string().get(text) == simdjson::SUCCESS) {
      versions[std::string(key)] = std::string(text);
    } else if (value.is_null()) {
      versions[std::string(key)] = "";
    }
  }
  return versions;
}

std::string StderrTail(std::string_view stderr_text, size_t max_bytes) {
  while (!stderr_text.empty() && (stderr_text.back() == '\n' || stderr_text.back() == ' ')) {
    stderr_text.remove_suffix(1);
  }
  if (stderr_text.size() > max_bytes)
    stderr_text = stderr_text.substr(stderr_text.size() - max_bytes);
  std::string out;
  for (char c : stderr_text) {
    if (c == '\n') {
      out += " | ";
    } else if (c != '\r') {
      out += c;
    }
  }
  return out;
}

namespace {

CeilingKind ReferenceKind(const BenchReport& report) {
  if (report.cold) return CeilingKind::kStorage;
  if (report.device != "cpu") return CeilingKind::kPinnedH2D;
  if (report.sink == "tensors") return CeilingKind::kMemcpy;
  return CeilingKind::kPageCache;
}

std::optional<size_t> FindCeiling(const BenchReport& report, CeilingKind want) {
  for (size_t i = 0; i < report.rows.size(); ++i) {
    const RowResult& r = report.rows[i];
    if (r.row.kind == RowKind::kCeiling && r.row.ceiling == want && RowSummary(r)) return i;
  }
  return std::nullopt;
}

}  // namespace

std::optional<size_t> ReferenceCeiling(const BenchReport& report) {
  return FindCeiling(report, ReferenceKind(report));
}

namespace {

// Whether every run of the row handed out views of the file mapping only (mapped CPU loads):
// such a load copies nothing into fresh memory, so warm its bound is the page cache's, not memcpy.
bool MappedRow(const RowResult& r) {
  return !r.runs.empty() &&
         std::all_of(r.runs.begin(), r.runs.end(), [](const RunRecord& run) { return run.mapped; });
}

}  // namespace

std::optional<size_t> RowCeiling(const BenchReport& report, size_t row) {
  const RowResult& result = report.rows.at(row);
  const BenchRow& r = result.row;
  if (r.kind == RowKind::kCeiling) return std::nullopt;
  if (r.direct) return FindCeiling(report, CeilingKind::kStorage);
  const CeilingKind kind = ReferenceKind(report);
  if (kind == CeilingKind::kMemcpy && MappedRow(result)) {
    return FindCeiling(report, CeilingKind::kPageCache);
  }
  return FindCeiling(report, kind);
}

bool CeilingExceeded(const BenchReport& report, size_t row) {
  const RowResult& r = report.rows.at(row);
  if (r.row.kind == RowKind::kCeiling || r.row.lazy) return false;
  const std::optional<Summary> s = RowSummary(r);
  const std::optional<size_t> ceiling = RowCeiling(report, row);
  if (!s || !ceiling || s->median <= 0) return false;
  // Faster by more than the tolerance: rate / ceiling rate = ceiling time / time. The ceiling's
  // best run: a ceiling is the best the machine does, and a typical run (the median) beating even
  // that is no noise on a busy machine.
  return RowSummary(report.rows[*ceiling])->min / s->median > 1 + kCeilingTolerance;
}

std::string MedianRunDetail(const RowResult& row) {
  std::vector<const RunRecord*> ok;
  for (const RunRecord& run : row.runs) {
    if (run.ok) ok.push_back(&run);
  }
  if (ok.empty()) return "";
  std::sort(ok.begin(), ok.end(),
            [](const RunRecord* a, const RunRecord* b) { return a->seconds < b->seconds; });
  return ok[(ok.size() - 1) / 2]->detail;
}

namespace {

struct TableCells {
  std::string name, median, min, max, gbps, percent, ceiling, rss;
  std::string status;  // empty when ok
};

// The percent of row `i`'s own ceiling, and that ceiling's index; nullopt without one.
std::optional<std::pair<double, size_t>> PercentOfCeiling(const BenchReport& report, size_t i) {
  const std::optional<Summary> s = RowSummary(report.rows[i]);
  const std::optional<size_t> ceiling = RowCeiling(report, i);
  if (!s || !ceiling || s->median <= 0) return std::nullopt;
  return std::make_pair(100 * RowSummary(report.rows[*ceiling])->median / s->median, *ceiling);
}

std::vector<TableCells> Cells(const BenchReport& report) {
  std::vector<TableCells> cells;
  for (size_t i = 0; i < report.rows.size(); ++i) {
    const RowResult& r = report.rows[i];
    TableCells c;
    c.name = r.row.name;
    const std::optional<Summary> s = RowSummary(r);
    if (!s) {
      c.status =
          std::string(RowStatusName(r.status == RowStatus::kOk ? RowStatus::kFailed : r.status));
      std::string why = r.note;
      for (const RunRecord& run : r.runs) {
        if (!run.ok) {
          why = run.error;
          break;
        }
      }
      if (!why.empty()) c.status += ": " + Shorten(why, 100);
      cells.push_back(std::move(c));
      continue;
    }
    // A sweep (not the same settings tried again): its winner after the name.
    const bool sweep = std::any_of(r.row.fio.begin(), r.row.fio.end(),
                                   [&](const FioSettings& f) { return !(f == r.row.fio.front()); });
    if (sweep) {
      if (const std::string winner = MedianRunDetail(r); !winner.empty()) c.name += ": " + winner;
    }
    c.median = Fixed(s->median, 3);
    c.min = Fixed(s->min, 3);
    c.max = Fixed(s->max, 3);
    c.gbps =
        s->median > 0 ? Fixed(static_cast<double>(report.data_bytes) / s->median / 1e9, 2) : "-";
    c.percent = "-";
    c.ceiling = "-";
    if (const auto percent = PercentOfCeiling(report, i)) {
      c.percent = Fixed(percent->first, 0) + "%" + (CeilingExceeded(report, i) ? " (!)" : "");
      c.ceiling = std::string(CeilingShortName(report.rows[percent->second].row.ceiling));
    }
    uint64_t rss = 0;
    bool flagged = false;
    for (const RunRecord& run : r.runs) {
      rss = std::max(rss, run.peak_rss_bytes);
      flagged |= !run.cold_dropped;
    }
    c.rss = rss ? Fixed(static_cast<double>(rss) / (1 << 20), 0) : "-";
    if (flagged) c.name += " (!) not dropped";
    cells.push_back(std::move(c));
  }
  return cells;
}

// Lines under the table: which row each ceiling name stands for, and what "(!)" means.
std::string Legend(const BenchReport& report) {
  std::string out;
  std::vector<size_t> used;
  bool exceeded = false;
  for (size_t i = 0; i < report.rows.size(); ++i) {
    if (const std::optional<size_t> c = RowCeiling(report, i)) {
      if (std::find(used.begin(), used.end(), *c) == used.end()) used.push_back(*c);
    }
    exceeded |= CeilingExceeded(report, i);
  }
  std::sort(used.begin(), used.end());
  for (size_t c : used) {
    out += "ceiling " + std::string(CeilingShortName(report.rows[c].row.ceiling)) +
           ": % of the median of '" + report.rows[c].row.name + "'\n";
  }
  if (exceeded) {
    out += "(!) median more than " + Fixed(100 * kCeilingTolerance, 0) +
           "% faster than its own ceiling's best run: that ceiling is not one (ceiling_exceeded in"
           " the JSON; lazy rows and ceilings are exempt)\n";
  }
  return out;
}

}  // namespace

std::string FormatCheckpointLine(const BenchReport& report) {
  const size_t files = report.files.size();
  return "checkpoint  " + report.checkpoint + ": " + io::FormatCount(report.data_bytes) +
         " bytes (" + io::FormatBytes(report.data_bytes) + ") in " + std::to_string(files) +
         " file" + (files == 1 ? "" : "s") + ", " + (report.cold ? "cold" : "warm") + ", " +
         report.device + ", sink " + report.sink + ", " + std::to_string(report.repeat) +
         " interleaved round" + (report.repeat == 1 ? "" : "s") + "\n";
}

std::string FormatTable(const BenchReport& report, bool markdown) {
  const std::vector<TableCells> cells = Cells(report);
  std::string out;
  if (markdown) {
    out +=
        "| row | median s | min s | max s | GB/s | % of ceiling | ceiling | peak RSS MiB |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n";
    for (const TableCells& c : cells) {
      if (!c.status.empty()) {
        out += "| " + c.name + " | " + c.status + " | | | | | | |\n";
      } else {
        out += "| " + c.name + " | " + c.median + " | " + c.min + " | " + c.max + " | " + c.gbps +
               " | " + c.percent + " | " + c.ceiling + " | " + c.rss + " |\n";
      }
    }
    return out + "\n" + Legend(report);
  }
  size_t width = 4;
  for (const TableCells& c : cells) width = std::max(width, c.name.size());
  char line[1024];
  constexpr const char* kFormat = "%-*s %9s %9s %9s %8s %10s %-10s %9s\n";
  std::snprintf(line, sizeof line, kFormat, static_cast<int>(width), "row", "median s", "min s",
                "max s", "GB/s", "% ceiling", "ceiling", "RSS MiB");
  out += line;
  for (const TableCells& c : cells) {
    if (!c.status.empty()) {
      out +=
          c.name + std::string(width - std::min(width, c.name.size()) + 1, ' ') + c.status + "\n";
      continue;
    }
    std::snprintf(line, sizeof line, kFormat, static_cast<int>(width), c.name.c_str(),
                  c.median.c_str(), c.min.c_str(), c.max.c_str(), c.gbps.c_str(), c.percent.c_str(),
                  c.ceiling.c_str(), c.rss.c_str());
    out += line;
  }
  return out + Legend(report);
}

namespace {

// `key`: the value when `present`, else null (not measured, or the run failed).
void NumberOrNull(io::JsonWriter& out, std::string_view key, bool present, double value) {
  out.Key(key);
  if (present) {
    out.Double(value);
  } else {
    out.Null();
  }
}

}  // namespace

std::string BenchReportJson(const BenchReport& report) {
  const std::optional<size_t> ceiling = ReferenceCeiling(report);
  const double ceiling_s = ceiling ? RowSummary(report.rows[*ceiling])->median : 0;
  size_t exceeded = 0;
  for (size_t i = 0; i < report.rows.size(); ++i) exceeded += CeilingExceeded(report, i);
  io::JsonWriter out;
  out.BeginObject().Field("schema", "shardstream-bench/2");
  out.Key("command").BeginArray();
  for (const std::string& word : report.command) out.String(word);
  out.EndArray();
  out.Key("machine").BeginObject();
  for (const auto& [key, value] : report.machine) out.Field(key, value);
  out.EndObject();
  out.Key("versions").BeginObject();
  for (const auto& [name, version] : report.versions) {
    out.Key(name);
    if (version.empty()) {
      out.Null();
    } else {
      out.String(version);
    }
  }
  out.EndObject();
  out.Key("checkpoint").BeginObject().Field("path", report.checkpoint);
  out.Key("files").BeginArray();
  for (const std::string& f : report.files) out.String(f);
  out.EndArray().Field("bytes", report.data_bytes).Field("tensors", report.tensors).EndObject();
  out.Key("settings").BeginObject().Field("device", report.device).Field("sink", report.sink);
  out.Field("repeat", uint64_t{report.repeat}).Field("cold", report.cold);
  out.Field("peers", report.peers).EndObject();
  out.Key("notes").BeginArray();
  for (const std::string& note : report.notes) out.String(note);
  out.EndArray();
  out.Key("ceiling");
  if (ceiling) {
    out.BeginObject().Field("row", report.rows[*ceiling].row.name);
    out.Field("kind", CeilingKindName(report.rows[*ceiling].row.ceiling));
    out.Field("median_s", ceiling_s).EndObject();
  } else {
    out.Null();
  }
  out.Field("rows_above_ceiling", uint64_t{exceeded});
  out.Field("ceiling_tolerance", kCeilingTolerance);
  out.Key("order").BeginArray();
  for (const RunSlot& slot : report.order) {
    out.BeginObject().Field("round", uint64_t{slot.round});
    out.Field("row", report.rows[slot.row].row.name).EndObject();
  }
  out.EndArray();
  out.Key("rows").BeginArray();
  for (size_t i = 0; i < report.rows.size(); ++i) {
    const RowResult& r = report.rows[i];
    out.BeginObject().Field("name", r.row.name).Field("kind", RowKindName(r.row.kind));
    if (r.row.kind == RowKind::kCeiling) out.Field("ceiling", CeilingKindName(r.row.ceiling));
    out.Key("args").BeginArray();
    for (const std::string& a : r.row.args) out.String(a);
    out.EndArray();
    if (!r.row.fio.empty()) {
      out.Key("fio").BeginArray();
      for (const FioSettings& f : r.row.fio) out.String(FioSettingsName(f));
      out.EndArray();
      out.Field("winner", MedianRunDetail(r));
    }
    out.Field("lazy", r.row.lazy).Field("direct", r.row.direct);
    const std::optional<Summary> s = RowSummary(r);
    out.Field("status",
              RowStatusName(s ? RowStatus::kOk
                              : (r.status == RowStatus::kOk ? RowStatus::kFailed : r.status)));
    out.Field("note", r.note);
    uint64_t rss = 0;
    for (const RunRecord& run : r.runs) rss = std::max(rss, run.peak_rss_bytes);
    if (s) {
      out.Field("median_s", s->median).Field("min_s", s->min).Field("max_s", s->max);
      out.Field("gbps",
                s->median > 0 ? static_cast<double>(report.data_bytes) / s->median / 1e9 : 0.0);
      const auto percent = PercentOfCeiling(report, i);
      out.Key("ceiling_row");
      if (percent) {
        out.String(report.rows[percent->second].row.name);
      } else {
        out.Null();
      }
      NumberOrNull(out, "percent_of_ceiling", percent.has_value(), percent ? percent->first : 0);
      out.Field("peak_rss_bytes", rss);
    } else {
      for (const char* key : {"median_s", "min_s", "max_s", "gbps", "ceiling_row",
                              "percent_of_ceiling", "peak_rss_bytes"}) {
        out.Key(key).Null();
      }
    }
    out.Field("ceiling_exceeded", CeilingExceeded(report, i));
    out.Key("runs").BeginArray();
    for (const RunRecord& run : r.runs) {
      out.BeginObject().Field("round", uint64_t{run.round}).Field("ok", run.ok);
      NumberOrNull(out, "seconds", run.ok, run.seconds);
      out.Field("peak_rss_bytes", run.peak_rss_bytes);
      NumberOrNull(out, "resident_before", run.resident_before >= 0, run.resident_before);
      out.Field("cold_dropped", run.cold_dropped);
      NumberOrNull(out, "child_resident_fraction", run.child_resident >= 0, run.child_resident);
      out.Field("error", run.error).Field("detail", run.detail).EndObject();
    }
    out.EndArray().EndObject();
  }
  out.EndArray().EndObject();
  return out.str() + "\n";
}

}  // namespace shardstream::bench
