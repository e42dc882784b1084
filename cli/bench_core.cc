#include "cli/bench_core.h"

#include <simdjson.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <utility>

namespace shardstream::cli::bench {
namespace {

using io::Result;
using io::Status;
using io::StatusCode;

const std::array<Strategy, 9> kStrategies = {{
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
    {"page-cache",
     {"--gpu-upload", "page-cache", "--direct", "off"},
     "CUDA: the page cache pinned in place, no CPU copy",
     false,
     true,
     false,
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

std::string_view CeilingKindName(CeilingKind kind) {
  switch (kind) {
    case CeilingKind::kNone:
      return "none";
    case CeilingKind::kStorageDirect:
      return "storage-direct";
    case CeilingKind::kStorageBuffered:
      return "storage-buffered";
    case CeilingKind::kMemcpy:
      return "memcpy";
    case CeilingKind::kPinnedH2D:
      return "pinned-h2d";
  }
  return "none";
}

// The ceiling in a column header.
std::string_view CeilingShortName(CeilingKind kind) {
  switch (kind) {
    case CeilingKind::kStorageDirect:
      return "fio-direct";
    case CeilingKind::kStorageBuffered:
      return "fio-buffer";
    case CeilingKind::kMemcpy:
      return "memcpy";
    case CeilingKind::kPinnedH2D:
      return "H2D";
    case CeilingKind::kNone:
      break;
  }
  return "ceiling";
}

}  // namespace

std::span<const Strategy> AllStrategies() { return kStrategies; }

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
    if (s->gpu_only && !cuda) {
      return Status::Error(StatusCode::kInvalidArgument, "strategy",
                           "strategy '" + std::string(s->name) + "' needs --device cuda:N");
    }
    const std::vector<uint32_t>& depths =
        s->uses_queue_depth && !options.queue_depths.empty() ? options.queue_depths : no_value;
    for (uint32_t depth : depths) {
      for (uint32_t chunk : chunks) {
        BenchRow row;
        row.kind = RowKind::kShardstream;
        row.name = std::string(s->name);
        row.add_touch_seconds = s->name == "zero-copy";
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
  return report;
}

Result<double> ParseFioBytesPerSecond(std::string_view stdout_text) {
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
  simdjson::dom::element read;
  uint64_t bw_bytes = 0;
  if (root["jobs"].at(0)["read"].get(read) != simdjson::SUCCESS ||
      read["bw_bytes"].get_uint64().get(bw_bytes) != simdjson::SUCCESS || bw_bytes == 0) {
    return ReportError("fio's JSON has no jobs[0].read.bw_bytes");
  }
  return static_cast<double>(bw_bytes);
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

std::optional<size_t> ReferenceCeiling(const BenchReport& report) {
  CeilingKind want = CeilingKind::kNone;
  if (report.cold) {
    want = CeilingKind::kStorageDirect;
  } else if (report.device != "cpu") {
    want = CeilingKind::kPinnedH2D;
  } else if (report.sink == "tensors") {
    want = CeilingKind::kMemcpy;
  } else {
    want = CeilingKind::kStorageBuffered;
  }
  for (size_t i = 0; i < report.rows.size(); ++i) {
    const RowResult& r = report.rows[i];
    if (r.row.kind == RowKind::kCeiling && r.row.ceiling == want && RowSummary(r)) return i;
  }
  return std::nullopt;
}

namespace {

struct TableCells {
  std::string name, median, min, max, gbps, percent, rss;
  std::string status;  // empty when ok
};

std::vector<TableCells> Cells(const BenchReport& report) {
  const std::optional<size_t> ceiling = ReferenceCeiling(report);
  const double ceiling_s = ceiling ? RowSummary(report.rows[*ceiling])->median : 0;
  std::vector<TableCells> cells;
  for (const RowResult& r : report.rows) {
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
    c.median = Fixed(s->median, 3);
    c.min = Fixed(s->min, 3);
    c.max = Fixed(s->max, 3);
    c.gbps = s->median > 0 ? Fixed(report.data_bytes / s->median / 1e9, 2) : "-";
    c.percent = ceiling && s->median > 0 ? Fixed(100 * ceiling_s / s->median, 0) + "%" : "-";
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

}  // namespace

std::string FormatTable(const BenchReport& report, bool markdown) {
  const std::optional<size_t> ceiling = ReferenceCeiling(report);
  const std::string percent_header =
      ceiling
          ? "% of " +
                report.rows[*ceiling].row.name.substr(report.rows[*ceiling].row.name.find(' ') + 1)
          : "% of ceiling";
  const std::vector<TableCells> cells = Cells(report);
  std::string out;
  if (markdown) {
    out += "| row | median s | min s | max s | GB/s | " + percent_header +
           " | peak RSS MiB |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for (const TableCells& c : cells) {
      if (!c.status.empty()) {
        out += "| " + c.name + " | " + c.status + " | | | | | |\n";
      } else {
        out += "| " + c.name + " | " + c.median + " | " + c.min + " | " + c.max + " | " + c.gbps +
               " | " + c.percent + " | " + c.rss + " |\n";
      }
    }
    return out;
  }
  size_t width = 4;
  for (const TableCells& c : cells) width = std::max(width, c.name.size());
  char line[512];
  const std::string percent =
      ceiling ? "% " + std::string(CeilingShortName(report.rows[*ceiling].row.ceiling)) : "%";
  std::snprintf(line, sizeof line, "%-*s %9s %9s %9s %8s %10s %9s\n", static_cast<int>(width),
                "row", "median s", "min s", "max s", "GB/s", percent.c_str(), "RSS MiB");
  out += line;
  for (const TableCells& c : cells) {
    if (!c.status.empty()) {
      out +=
          c.name + std::string(width - std::min(width, c.name.size()) + 1, ' ') + c.status + "\n";
      continue;
    }
    std::snprintf(line, sizeof line, "%-*s %9s %9s %9s %8s %10s %9s\n", static_cast<int>(width),
                  c.name.c_str(), c.median.c_str(), c.min.c_str(), c.max.c_str(), c.gbps.c_str(),
                  c.percent.c_str(), c.rss.c_str());
    out += line;
  }
  if (ceiling) out += percent + ": % of the median of '" + report.rows[*ceiling].row.name + "'\n";
  return out;
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
  io::JsonWriter out;
  out.BeginObject().Field("schema", "shardstream-bench/1");
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
  out.Key("order").BeginArray();
  for (const RunSlot& slot : report.order) {
    out.BeginObject().Field("round", uint64_t{slot.round});
    out.Field("row", report.rows[slot.row].row.name).EndObject();
  }
  out.EndArray();
  out.Key("rows").BeginArray();
  for (const RowResult& r : report.rows) {
    out.BeginObject().Field("name", r.row.name).Field("kind", RowKindName(r.row.kind));
    if (r.row.kind == RowKind::kCeiling) out.Field("ceiling", CeilingKindName(r.row.ceiling));
    out.Key("args").BeginArray();
    for (const std::string& a : r.row.args) out.String(a);
    out.EndArray();
    const std::optional<Summary> s = RowSummary(r);
    out.Field("status",
              RowStatusName(s ? RowStatus::kOk
                              : (r.status == RowStatus::kOk ? RowStatus::kFailed : r.status)));
    out.Field("note", r.note);
    uint64_t rss = 0;
    for (const RunRecord& run : r.runs) rss = std::max(rss, run.peak_rss_bytes);
    if (s) {
      out.Field("median_s", s->median).Field("min_s", s->min).Field("max_s", s->max);
      out.Field("gbps", s->median > 0 ? report.data_bytes / s->median / 1e9 : 0.0);
      NumberOrNull(out, "percent_of_ceiling", ceiling && s->median > 0,
                   100 * ceiling_s / s->median);
      out.Field("peak_rss_bytes", rss);
    } else {
      for (const char* key :
           {"median_s", "min_s", "max_s", "gbps", "percent_of_ceiling", "peak_rss_bytes"}) {
        out.Key(key).Null();
      }
    }
    out.Key("runs").BeginArray();
    for (const RunRecord& run : r.runs) {
      out.BeginObject().Field("round", uint64_t{run.round}).Field("ok", run.ok);
      NumberOrNull(out, "seconds", run.ok, run.seconds);
      out.Field("peak_rss_bytes", run.peak_rss_bytes);
      NumberOrNull(out, "resident_before", run.resident_before >= 0, run.resident_before);
      out.Field("cold_dropped", run.cold_dropped);
      NumberOrNull(out, "child_resident_fraction", run.child_resident >= 0, run.child_resident);
      out.Field("error", run.error).EndObject();
    }
    out.EndArray().EndObject();
  }
  out.EndArray().EndObject();
  return out.str() + "\n";
}

}  // namespace shardstream::cli::bench
