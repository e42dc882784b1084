#include "bench/harness.h"

#include <simdjson.h>

#include <algorithm>
#include <gtest/gtest.h>
#include <map>
#include <string>
#include <vector>

namespace shardstream::bench {
namespace {

std::vector<std::string> Names(const std::vector<const Strategy*>& strategies) {
  std::vector<std::string> names;
  for (const Strategy* s : strategies) names.emplace_back(s->name);
  return names;
}

TEST(BenchStrategiesTest, ParsesTheListInTheOrderGiven) {
  auto parsed = ParseStrategies("uring-direct,pread,mmap");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(Names(*parsed), (std::vector<std::string>{"uring-direct", "pread", "mmap"}));
  EXPECT_EQ(
      std::vector<std::string>((*parsed)[0]->load_args.begin(), (*parsed)[0]->load_args.end()),
      (std::vector<std::string>{"--io", "uring", "--direct", "on"}));
}

TEST(BenchStrategiesTest, DefaultListParses) {
  auto parsed = ParseStrategies(kDefaultStrategies);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(Names(*parsed), (std::vector<std::string>{"auto", "pread", "uring", "uring-direct"}));
}

TEST(BenchStrategiesTest, UnknownNameIsRejectedWithTheKnownOnes) {
  auto parsed = ParseStrategies("pread,uring_direct");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().rule(), "strategy");
  EXPECT_NE(parsed.status().message().find("'uring_direct'"), std::string::npos);
  EXPECT_NE(parsed.status().message().find("uring-direct"), std::string::npos);
}

TEST(BenchStrategiesTest, RepeatedAndEmptyItemsAreRejected) {
  EXPECT_FALSE(ParseStrategies("pread,pread").ok());
  EXPECT_FALSE(ParseStrategies("pread,,uring").ok());
  EXPECT_FALSE(ParseStrategies("").ok());
  EXPECT_FALSE(ParseStrategies("pread,").ok());
}

TEST(BenchStrategiesTest, UintListsAreCheckedItemByItem) {
  auto ok = ParseUintList("8,32,1", "queue-depth", 4096);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, (std::vector<uint32_t>{8, 32, 1}));
  for (const char* bad : {"", "0", "8,", "8,,16", "x", "4097", "-1", "8 "}) {
    auto parsed = ParseUintList(bad, "queue-depth", 4096);
    EXPECT_FALSE(parsed.ok()) << bad;
    if (!parsed.ok()) {
      EXPECT_EQ(parsed.status().rule(), "queue-depth");
    }
  }
}

TEST(BenchRowsTest, QueueDepthsMultiplyOnlyTheRowsThatMayUseIoUring) {
  auto strategies = ParseStrategies("pread,uring");
  ASSERT_TRUE(strategies.ok());
  RowOptions options;
  options.queue_depths = {8, 32};
  options.chunk_mbs = {4, 16};
  auto rows = BuildShardstreamRows(*strategies, options);
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  std::vector<std::string> names;
  for (const BenchRow& r : *rows) names.push_back(r.name);
  EXPECT_EQ(names, (std::vector<std::string>{"pread chunk=4MiB", "pread chunk=16MiB",
                                             "uring qd=8 chunk=4MiB", "uring qd=8 chunk=16MiB",
                                             "uring qd=32 chunk=4MiB", "uring qd=32 chunk=16MiB"}));
  EXPECT_EQ((*rows)[5].args, (std::vector<std::string>{"--io", "uring", "--direct", "off",
                                                       "--queue-depth", "32", "--chunk-mb", "16"}));
}

TEST(BenchRowsTest, SinkDeviceAndStagingAreForwarded) {
  auto strategies = ParseStrategies("uring-direct");
  ASSERT_TRUE(strategies.ok());
  RowOptions options;
  options.device = "cuda:1";
  options.sink = "discard";
  options.staging_mb = 128;
  auto rows = BuildShardstreamRows(*strategies, options);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].name, "uring-direct");
  EXPECT_EQ((*rows)[0].args,
            (std::vector<std::string>{"--io", "uring", "--direct", "on", "--device", "cuda:1",
                                      "--sink", "discard", "--staging-mb", "128"}));
}

// --baseline: every shardstream row again, run by another build, with the same flags.
TEST(BenchRowsTest, BaselineRowsRepeatTheShardstreamRowsWithTheOtherBinary) {
  auto strategies = ParseStrategies("auto,uring-direct");
  ASSERT_TRUE(strategies.ok());
  auto rows = BuildShardstreamRows(*strategies, RowOptions{});
  ASSERT_TRUE(rows.ok());
  std::vector<BenchRow> all = *rows;
  BenchRow ceiling;
  ceiling.name = "ceiling";
  ceiling.kind = RowKind::kCeiling;
  all.push_back(ceiling);
  const std::vector<BenchRow> baseline = BaselineRows(all, "/old/shardstream");
  ASSERT_EQ(baseline.size(), rows->size());
  for (size_t i = 0; i < baseline.size(); ++i) {
    EXPECT_EQ(baseline[i].name, "baseline " + (*rows)[i].name);
    EXPECT_EQ(baseline[i].args, (*rows)[i].args);
    EXPECT_EQ(baseline[i].binary, "/old/shardstream");
    EXPECT_TRUE((*rows)[i].binary.empty());
  }
}

TEST(BenchRowsTest, StrategiesThatCannotRunWithTheSinkOrDeviceAreRejected) {
  RowOptions discard;
  discard.sink = "discard";
  auto mmap = ParseStrategies("mmap");
  ASSERT_TRUE(mmap.ok());
  auto rows = BuildShardstreamRows(*mmap, discard);
  ASSERT_FALSE(rows.ok());
  EXPECT_EQ(rows.status().rule(), "strategy");
  RowOptions cuda;
  cuda.device = "cuda:0";
  auto zero_copy = ParseStrategies("zero-copy");
  ASSERT_TRUE(zero_copy.ok());
  EXPECT_FALSE(BuildShardstreamRows(*zero_copy, cuda).ok());
  auto rows_cpu = BuildShardstreamRows(*zero_copy, RowOptions());
  ASSERT_TRUE(rows_cpu.ok());
  EXPECT_TRUE((*rows_cpu)[0].add_touch_seconds);
  // The page cache pinned in place is an experiment in bench/, not a strategy.
  EXPECT_FALSE(ParseStrategies("page-cache").ok());
}

TEST(BenchScheduleTest, RoundsInterleaveEveryRow) {
  const std::vector<RunSlot> order = InterleavedSchedule(3, 2);
  std::vector<std::pair<uint32_t, uint32_t>> got;
  for (const RunSlot& s : order) got.emplace_back(s.round, s.row);
  EXPECT_EQ(got, (std::vector<std::pair<uint32_t, uint32_t>>{
                     {0, 0}, {0, 1}, {0, 2}, {1, 0}, {1, 1}, {1, 2}}));
  EXPECT_TRUE(InterleavedSchedule(0, 5).empty());
}

TEST(BenchStatisticsTest, MedianMinMax) {
  const std::vector<double> odd = {3.0, 1.0, 2.0};
  Summary s = Summarize(odd);
  EXPECT_EQ(s.count, 3u);
  EXPECT_DOUBLE_EQ(s.median, 2.0);
  EXPECT_DOUBLE_EQ(s.min, 1.0);
  EXPECT_DOUBLE_EQ(s.max, 3.0);
  const std::vector<double> even = {4.0, 1.0, 2.0, 10.0};
  EXPECT_DOUBLE_EQ(Summarize(even).median, 3.0);
  EXPECT_EQ(Summarize({}).count, 0u);
}

RunRecord OkRun(uint32_t round, double seconds) {
  RunRecord run;
  run.round = round;
  run.ok = true;
  run.seconds = seconds;
  run.peak_rss_bytes = 100 << 20;
  return run;
}

RunRecord FailedRun(uint32_t round, std::string error) {
  RunRecord run;
  run.round = round;
  run.error = std::move(error);
  return run;
}

TEST(BenchStatisticsTest, OneFailedRunFailsTheRow) {
  RowResult row;
  row.runs = {OkRun(0, 1.0), FailedRun(1, "exit 1: boom"), OkRun(2, 0.5)};
  EXPECT_FALSE(RowSummary(row).has_value());
  row.runs.erase(row.runs.begin() + 1);
  ASSERT_TRUE(RowSummary(row).has_value());
  EXPECT_DOUBLE_EQ(RowSummary(row)->median, 0.75);
  row.status = RowStatus::kNotInstalled;
  EXPECT_FALSE(RowSummary(row).has_value());
}

TEST(BenchChildReportTest, TheLastJsonLineIsTheReport) {
  auto report = ParseChildReport(
      "loading...\n{\"seconds\": 9}\n{\"seconds\":0.5,\"bytes\":1024,\"touch_seconds\":0.25,"
      "\"resident_fraction\":1}\n");
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_DOUBLE_EQ(report->seconds, 0.5);
  EXPECT_EQ(report->bytes, 1024u);
  EXPECT_DOUBLE_EQ(report->touch_seconds, 0.25);
  EXPECT_DOUBLE_EQ(report->resident_fraction, 1.0);
  auto integer_seconds = ParseChildReport("{\"seconds\":2,\"bytes\":1}");
  ASSERT_TRUE(integer_seconds.ok());
  EXPECT_DOUBLE_EQ(integer_seconds->seconds, 2.0);
}

TEST(BenchChildReportTest, GarbageIsAnErrorNotATime) {
  for (const char* bad :
       {"", "0.5\n", "fast!", "{not json", "{\"bytes\":1}", "{\"seconds\":-1,\"bytes\":1}",
        "{\"seconds\":\"0.5\",\"bytes\":1}", "{\"seconds\":0.5}", "[0.5]"}) {
    auto report = ParseChildReport(bad);
    EXPECT_FALSE(report.ok()) << bad;
    if (!report.ok()) {
      EXPECT_EQ(report.status().rule(), "child-report") << bad;
    }
  }
}

TEST(BenchCeilingOutputTest, FioMemcpyAndH2D) {
  auto fio = ParseFioBytesPerSecond(
      "fio: warning\n{\"jobs\":[{\"read\":{\"io_bytes\":1000,\"bw_bytes\":2000000000}}]}");
  ASSERT_TRUE(fio.ok()) << fio.status().ToString();
  EXPECT_DOUBLE_EQ(*fio, 2e9);
  EXPECT_FALSE(ParseFioBytesPerSecond("{\"jobs\":[]}").ok());
  EXPECT_FALSE(ParseFioBytesPerSecond("no json").ok());
  auto seconds = ParseSecondsLine("0.405123\n");
  ASSERT_TRUE(seconds.ok());
  EXPECT_DOUBLE_EQ(*seconds, 0.405123);
  EXPECT_FALSE(ParseSecondsLine("error: mmap").ok());
  auto h2d = ParseH2DGbps(
      "{\"figure\":\"h2d_pinned_1stream\",\"value\":50.5,\"unit\":\"GB/s\",\"detail\":\"\"}\n"
      "{\"figure\":\"cache_to_pinned_16\",\"value\":70,\"unit\":\"GB/s\",\"detail\":\"\"}\n"
      "{\"figure\":\"h2d_pinned_4streams\",\"value\":54.1,\"unit\":\"GB/s\",\"detail\":\"\"}\n");
  ASSERT_TRUE(h2d.ok());
  EXPECT_DOUBLE_EQ(*h2d, 54.1);
  EXPECT_FALSE(ParseH2DGbps("{\"figure\":\"cache_to_pinned\",\"value\":3}").ok());
}

TEST(BenchProbeTest, ExitStatusSaysWhetherThePeerRuns) {
  ProbeResult ok = ParseProbe("x", 0, "{\"peer\": \"safetensors\", \"version\": \"0.8.0\"}", "");
  EXPECT_EQ(ok.status, RowStatus::kOk);
  EXPECT_EQ(ok.name, "peer: safetensors");
  EXPECT_EQ(ok.note, "0.8.0");
  ProbeResult missing =
      ParseProbe("x", kProbeNotInstalled, "{\"peer\": \"fast\", \"reason\": \"no module\"}", "");
  EXPECT_EQ(missing.status, RowStatus::kNotInstalled);
  EXPECT_EQ(missing.note, "no module");
  ProbeResult na = ParseProbe("x", kProbeNotApplicable, "{\"peer\":\"hf\",\"reason\":\"r\"}", "");
  EXPECT_EQ(na.status, RowStatus::kNotApplicable);
}

TEST(BenchProbeTest, CrashesAndGarbageFailTheRow) {
  ProbeResult crashed = ParseProbe("broken", 1, "", "Traceback: boom");
  EXPECT_EQ(crashed.status, RowStatus::kFailed);
  EXPECT_EQ(crashed.name, "peer: broken");
  EXPECT_NE(crashed.note.find("boom"), std::string::npos);
  ProbeResult garbage = ParseProbe("noisy", 0, "hello", "");
  EXPECT_EQ(garbage.status, RowStatus::kFailed);
  EXPECT_NE(garbage.note.find("hello"), std::string::npos);
}

TEST(BenchVersionsTest, StringsAndNullsAreKept) {
  const auto versions =
      ParseVersions("{\"torch\": \"2.11.0\", \"fastsafetensors\": null, \"python\": \"3.11.7\"}\n");
  EXPECT_EQ(versions, (std::map<std::string, std::string>{
                          {"torch", "2.11.0"}, {"fastsafetensors", ""}, {"python", "3.11.7"}}));
  EXPECT_TRUE(ParseVersions("Traceback: no module").empty());
}

TEST(BenchStderrTailTest, KeepsTheEndOnOneLine) {
  EXPECT_EQ(StderrTail("a\nb\n"), "a | b");
  EXPECT_EQ(StderrTail("0123456789", 4), "6789");
  EXPECT_EQ(StderrTail("\n\n"), "");
}

BenchRow MakeRow(std::string name, RowKind kind, CeilingKind ceiling,
                 std::vector<std::string> args) {
  BenchRow row;
  row.name = std::move(name);
  row.kind = kind;
  row.ceiling = ceiling;
  row.args = std::move(args);
  return row;
}

BenchReport SampleReport() {
  BenchReport report;
  report.command = {"shardstream", "bench", "ckpt"};
  report.machine = {{"cpus", "2"}};
  report.versions = {{"torch", "2.11.0"}, {"fastsafetensors", ""}};
  report.checkpoint = "ckpt";
  report.files = {"ckpt/model.safetensors"};
  report.data_bytes = 2'000'000'000;
  report.tensors = 7;
  report.repeat = 2;
  BenchRow memcpy_row =
      MakeRow("ceiling: memcpy into fresh memory", RowKind::kCeiling, CeilingKind::kMemcpy, {});
  BenchRow direct = MakeRow("ceiling: disk", RowKind::kCeiling, CeilingKind::kStorage, {});
  BenchRow pread = MakeRow("pread", RowKind::kShardstream, CeilingKind::kNone, {"--io", "pread"});
  BenchRow peer = MakeRow("peer: broken", RowKind::kPeer, CeilingKind::kNone, {"broken.py"});
  BenchRow missing = MakeRow("peer: fast", RowKind::kPeer, CeilingKind::kNone, {"fast.py"});
  report.rows = {RowResult{memcpy_row, RowStatus::kOk, "", {OkRun(0, 0.4), OkRun(1, 0.4)}},
                 RowResult{direct, RowStatus::kOk, "", {OkRun(0, 2.0), OkRun(1, 1.0)}},
                 RowResult{pread, RowStatus::kOk, "", {OkRun(0, 0.5), OkRun(1, 0.3)}},
                 RowResult{peer, RowStatus::kOk, "", {FailedRun(0, "exit 1: Traceback")}},
                 RowResult{missing, RowStatus::kNotInstalled, "fastsafetensors not installed", {}}};
  report.order = {{0, 0}, {0, 1}, {0, 2}, {0, 3}, {1, 0}, {1, 1}, {1, 2}};
  return report;
}

TEST(BenchCeilingTest, TheReferenceFollowsColdnessDeviceAndSink) {
  BenchReport report = SampleReport();
  EXPECT_EQ(ReferenceCeiling(report), std::optional<size_t>(0));  // warm CPU tensors: memcpy
  report.cold = true;
  EXPECT_EQ(ReferenceCeiling(report), std::optional<size_t>(1));  // cold: the disk
  report.cold = false;
  report.sink = "discard";
  EXPECT_EQ(ReferenceCeiling(report), std::nullopt);  // no buffered fio row here
  report.sink = "tensors";
  report.device = "cuda:0";
  EXPECT_EQ(ReferenceCeiling(report), std::nullopt);  // no H2D row
  report.device = "cpu";
  report.rows[0].runs.push_back(FailedRun(2, "killed"));
  EXPECT_EQ(ReferenceCeiling(report), std::nullopt);  // a failed ceiling is no reference
}

TEST(BenchTableTest, FailedAndMissingRowsShowTheirStatusNotANumber) {
  const std::string table = FormatTable(SampleReport(), /*markdown=*/true);
  EXPECT_NE(table.find("| pread | 0.400 | 0.300 | 0.500 | 5.00 | 100% | memcpy | 100 |"),
            std::string::npos)
      << table;
  EXPECT_NE(table.find("| peer: broken | failed: exit 1: Traceback | | | | | | |"),
            std::string::npos)
      << table;
  EXPECT_NE(table.find("ceiling memcpy: % of the median of 'ceiling: memcpy into fresh memory'"),
            std::string::npos)
      << table;
  EXPECT_EQ(table.find("(!)"), std::string::npos) << table;  // nothing above its ceiling
  EXPECT_NE(table.find("| peer: fast | not installed: fastsafetensors not installed |"),
            std::string::npos)
      << table;
  const std::string text = FormatTable(SampleReport(), /*markdown=*/false);
  EXPECT_NE(text.find("peer: broken"), std::string::npos);
  EXPECT_NE(text.find("failed: exit 1: Traceback"), std::string::npos);
}

TEST(BenchJsonTest, ReportFollowsTheSchema) {
  const std::string json = BenchReportJson(SampleReport());
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  ASSERT_EQ(parser.parse(simdjson::padded_string(json)).get(root), simdjson::SUCCESS) << json;
  EXPECT_EQ(std::string_view(root["schema"].get_string()), "shardstream-bench/2");
  EXPECT_EQ(root["command"].get_array().size(), 3u);
  EXPECT_EQ(std::string_view(root["versions"]["torch"].get_string()), "2.11.0");
  EXPECT_TRUE(root["versions"]["fastsafetensors"].is_null());
  EXPECT_EQ(uint64_t(root["checkpoint"]["bytes"]), 2'000'000'000u);
  EXPECT_EQ(std::string_view(root["ceiling"]["kind"].get_string()), "memcpy");
  simdjson::dom::array order = root["order"];
  ASSERT_EQ(order.size(), 7u);
  EXPECT_EQ(std::string_view(order.at(3)["row"].get_string()), "peer: broken");
  EXPECT_EQ(uint64_t(order.at(4)["round"]), 1u);
  simdjson::dom::array rows = root["rows"];
  ASSERT_EQ(rows.size(), 5u);
  simdjson::dom::element pread = rows.at(2);
  EXPECT_EQ(std::string_view(pread["status"].get_string()), "ok");
  EXPECT_DOUBLE_EQ(double(pread["median_s"]), 0.4);
  EXPECT_DOUBLE_EQ(double(pread["gbps"]), 5.0);
  EXPECT_DOUBLE_EQ(double(pread["percent_of_ceiling"]), 100.0);
  EXPECT_EQ(std::string_view(pread["ceiling_row"].get_string()),
            "ceiling: memcpy into fresh memory");
  EXPECT_FALSE(bool(pread["ceiling_exceeded"]));
  EXPECT_EQ(uint64_t(root["rows_above_ceiling"]), 0u);
  EXPECT_EQ(pread["runs"].get_array().size(), 2u);
  simdjson::dom::element broken = rows.at(3);
  EXPECT_EQ(std::string_view(broken["status"].get_string()), "failed");
  EXPECT_TRUE(broken["median_s"].is_null());
  EXPECT_TRUE(broken["gbps"].is_null());
  EXPECT_EQ(std::string_view(broken["runs"].at(0)["error"].get_string()), "exit 1: Traceback");
  EXPECT_TRUE(broken["runs"].at(0)["seconds"].is_null());
  EXPECT_EQ(std::string_view(rows.at(4)["status"].get_string()), "not installed");
}

TEST(BenchCeilingTest, ARowFasterThanItsOwnCeilingByMoreThanTenPercentIsMarked) {
  BenchReport report = SampleReport();  // memcpy 0.4 s: 5 GB/s
  // 0.36 s is 11% faster than 0.4 s (the ceiling's best run): marked; 0.38 s (5%) is within.
  report.rows[2].runs = {OkRun(0, 0.36), OkRun(1, 0.36)};
  EXPECT_TRUE(CeilingExceeded(report, 2));
  report.rows[2].runs = {OkRun(0, 0.38), OkRun(1, 0.38)};
  EXPECT_FALSE(CeilingExceeded(report, 2));
  // Exactly at the edge (ceiling / time == 1.1) is not above it.
  report.rows[2].runs = {OkRun(0, 0.4 / 1.1), OkRun(1, 0.4 / 1.1 + 1e-9)};
  EXPECT_FALSE(CeilingExceeded(report, 2));
  report.rows[2].runs = {OkRun(0, 0.2), OkRun(1, 0.2)};
  EXPECT_TRUE(CeilingExceeded(report, 2));
  // A lazy row (zero-copy) is exempt, and so is every ceiling row however fast.
  report.rows[2].row.lazy = true;
  EXPECT_FALSE(CeilingExceeded(report, 2));
  report.rows[2].row.lazy = false;
  report.rows[1].runs = {OkRun(0, 0.01), OkRun(1, 0.01)};  // the disk "faster" than memcpy
  EXPECT_FALSE(CeilingExceeded(report, 1));
  EXPECT_EQ(RowCeiling(report, 1), std::nullopt);
  // Failed and missing rows have no figure to compare.
  EXPECT_FALSE(CeilingExceeded(report, 3));
  EXPECT_FALSE(CeilingExceeded(report, 4));
  // Without its ceiling measured, nothing is marked.
  report.rows[0].runs.push_back(FailedRun(2, "killed"));
  EXPECT_FALSE(CeilingExceeded(report, 2));
}

TEST(BenchCeilingTest, ODirectRowsAreHeldToTheDiskWarmToo) {
  BenchReport report = SampleReport();  // warm CPU tensors: memcpy 0.4 s, disk median 1.5 s
  BenchRow direct = MakeRow("uring-direct", RowKind::kShardstream, CeilingKind::kNone, {});
  direct.direct = true;
  report.rows.push_back(RowResult{direct, RowStatus::kOk, "", {OkRun(0, 0.8), OkRun(1, 0.8)}});
  const size_t i = report.rows.size() - 1;
  EXPECT_EQ(RowCeiling(report, i), std::optional<size_t>(1));
  EXPECT_EQ(RowCeiling(report, 2), std::optional<size_t>(0));  // buffered pread: memcpy
  EXPECT_TRUE(CeilingExceeded(report, i));                     // 1.0 s against the disk's 1.5 s
  const std::string table = FormatTable(report, /*markdown=*/true);
  EXPECT_NE(table.find("| uring-direct | 0.800 | 0.800 | 0.800 | 2.50 | 188% (!) | disk |"),
            std::string::npos)
      << table;
  EXPECT_NE(table.find("(!) median more than 10% faster than its own ceiling"), std::string::npos)
      << table;
  EXPECT_NE(table.find("ceiling disk: % of the median of 'ceiling: disk'"), std::string::npos)
      << table;
  const std::string text = FormatTable(report, /*markdown=*/false);
  EXPECT_NE(text.find("188% (!)"), std::string::npos) << text;

  simdjson::dom::parser parser;
  simdjson::dom::element root;
  const std::string json = BenchReportJson(report);
  ASSERT_EQ(parser.parse(simdjson::padded_string(json)).get(root), simdjson::SUCCESS) << json;
  simdjson::dom::element row = root["rows"].at(i);
  EXPECT_TRUE(bool(row["ceiling_exceeded"]));
  EXPECT_TRUE(bool(row["direct"]));
  EXPECT_EQ(std::string_view(row["ceiling_row"].get_string()), "ceiling: disk");
  EXPECT_DOUBLE_EQ(double(row["percent_of_ceiling"]), 187.5);  // of the disk's median
  EXPECT_EQ(uint64_t(root["rows_above_ceiling"]), 1u);
  EXPECT_FALSE(bool(root["rows"].at(1)["ceiling_exceeded"]));  // a ceiling row
  EXPECT_TRUE(root["rows"].at(1)["ceiling_row"].is_null());

  report.cold = true;  // cold: every row is held to the disk
  EXPECT_EQ(RowCeiling(report, 2), std::optional<size_t>(1));
  EXPECT_TRUE(CeilingExceeded(report, 2));  // pread 0.4 s against 1.0 s
}

TEST(BenchCeilingTest, TheCheckIsAgainstTheCeilingsBestRun) {
  BenchReport report = SampleReport();
  report.rows[0].runs = {OkRun(0, 0.5), OkRun(1, 0.42), OkRun(2, 0.6)};  // median 0.5, best 0.42
  report.rows[2].runs = {OkRun(0, 0.4), OkRun(1, 0.4)};
  // 25% past the ceiling's median, within 10% of its best run (0.42 / 0.4 = 1.05): not marked,
  // though the percent column (median against median) says 125%.
  EXPECT_FALSE(CeilingExceeded(report, 2));
  EXPECT_NE(FormatTable(report, true).find("| pread | 0.400 | 0.400 | 0.400 | 5.00 | 125% |"),
            std::string::npos)
      << FormatTable(report, true);
  report.rows[2].runs = {OkRun(0, 0.38), OkRun(1, 0.37)};  // 0.42 / 0.375 = 1.12
  EXPECT_TRUE(CeilingExceeded(report, 2));
}

TEST(BenchCeilingTest, TheDiscardReferenceIsThePageCacheRow) {
  BenchReport report = SampleReport();
  report.sink = "discard";
  BenchRow page = MakeRow("ceiling: page cache", RowKind::kCeiling, CeilingKind::kPageCache, {});
  report.rows.push_back(RowResult{page, RowStatus::kOk, "", {OkRun(0, 0.2), OkRun(1, 0.2)}});
  EXPECT_EQ(ReferenceCeiling(report), std::optional<size_t>(5));
  EXPECT_EQ(RowCeiling(report, 2), std::optional<size_t>(5));
  EXPECT_FALSE(CeilingExceeded(report, 2));  // pread 0.4 s: half the page-cache rate
}

TEST(BenchCeilingTest, MappedRowsAreHeldToThePageCacheWarm) {
  BenchReport report = SampleReport();  // warm CPU tensors: memcpy 0.4 s is the reference
  BenchRow page = MakeRow("ceiling: page cache", RowKind::kCeiling, CeilingKind::kPageCache, {});
  report.rows.push_back(RowResult{page, RowStatus::kOk, "", {OkRun(0, 0.1), OkRun(1, 0.1)}});
  const size_t page_row = report.rows.size() - 1;
  BenchRow views = MakeRow("peer: mapped views", RowKind::kPeer, CeilingKind::kNone, {});
  RunRecord a = OkRun(0, 0.12);
  RunRecord b = OkRun(1, 0.12);
  a.mapped = b.mapped = true;
  report.rows.push_back(RowResult{views, RowStatus::kOk, "", {a, b}});
  const size_t i = report.rows.size() - 1;
  // Views copy nothing into fresh memory: against the page cache, 0.12 s is no ceiling broken.
  EXPECT_EQ(RowCeiling(report, i), std::optional<size_t>(page_row));
  EXPECT_FALSE(CeilingExceeded(report, i));
  // One run that copied (an owned tensor among the views) puts the row back under memcpy.
  report.rows[i].runs[1].mapped = false;
  EXPECT_EQ(RowCeiling(report, i), std::optional<size_t>(0));
  EXPECT_TRUE(CeilingExceeded(report, i));  // 0.12 s against memcpy's 0.4 s
  // Cold, every row is held to the disk, views too.
  report.rows[i].runs[1].mapped = true;
  report.cold = true;
  EXPECT_EQ(RowCeiling(report, i), std::optional<size_t>(1));
}

TEST(BenchChildReportTest, MappedBytesAreRead) {
  const io::Result<ChildReport> r =
      ParseChildReport("{\"seconds\": 0.5, \"bytes\": 4096, \"touched_mapped_bytes\": 4096}\n");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->mapped_bytes, 4096u);
  const io::Result<ChildReport> owned = ParseChildReport("{\"seconds\": 0.5, \"bytes\": 4096}");
  ASSERT_TRUE(owned.ok());
  EXPECT_EQ(owned->mapped_bytes, 0u);
}

// The arguments of job section `name` (from --name=NAME to the next --name).
std::vector<std::string> Section(const std::vector<std::string>& args, const std::string& name) {
  auto begin = std::find(args.begin(), args.end(), "--name=" + name);
  if (begin == args.end()) return {};
  auto end = std::find_if(begin + 1, args.end(),
                          [](const std::string& a) { return a.starts_with("--name="); });
  return std::vector<std::string>(begin, end);
}

bool Has(const std::vector<std::string>& args, const std::string& arg) {
  return std::find(args.begin(), args.end(), arg) != args.end();
}

TEST(BenchFioTest, EveryJobReadsItsOwnPartWithoutInvalidating) {
  const FioSettings settings{4 << 20, 32, 2, true};
  const std::vector<FioFile> files = {{"/d/model.safetensors", 1'000'000'000, 1}};
  const std::vector<std::string> args = FioArgs("fio", files, settings);
  EXPECT_EQ(args.front(), "fio");
  for (const char* global :
       {"--readonly", "--rw=read", "--ioengine=io_uring", "--iodepth=32", "--direct=1",
        "--group_reporting", "--invalidate=0", "--iomem_align=4096", "--output-format=json"}) {
    EXPECT_TRUE(Has(args, global)) << global << ": " << ::testing::PrintToString(args);
  }
  const std::vector<std::string> job = Section(args, "file0");
  // 1e9 / 2 = 500,000,000 → whole 4 MiB blocks: 119 of them, 499,122,176 bytes each job; the two
  // parts never overlap and stay inside the file.
  EXPECT_TRUE(Has(job, "--size=499122176")) << ::testing::PrintToString(job);
  EXPECT_TRUE(Has(job, "--offset_increment=499122176"));
  EXPECT_TRUE(Has(job, "--numjobs=2"));
  EXPECT_TRUE(Has(job, "--bs=4194304"));
  EXPECT_TRUE(Has(job, "--filename=/d/model.safetensors"));
  EXPECT_TRUE(Has(job, "--loops=1"));
  EXPECT_FALSE(Has(args, "--stonewall"));  // one file, one group
  // pread: fio's psync engine, one read at a time, the buffers still page-aligned.
  FioSettings pread = settings;
  pread.sync = true;
  const std::vector<std::string> sync_args = FioArgs("fio", files, pread);
  EXPECT_TRUE(Has(sync_args, "--ioengine=psync")) << ::testing::PrintToString(sync_args);
  EXPECT_TRUE(Has(sync_args, "--iodepth=1"));
  EXPECT_TRUE(Has(sync_args, "--iomem_align=4096"));
  EXPECT_FALSE(Has(sync_args, "--ioengine=io_uring"));
}

TEST(BenchFioTest, ShardsAreReadInTurnEachItsOwnGroup) {
  const std::vector<FioFile> files = {{"/d/a.safetensors", 64 << 20, 1},
                                      {"/d/b:c.safetensors", 32 << 20, 2}};
  const std::vector<std::string> args = FioArgs("fio", files, {16 << 20, 8, 2, false});
  const std::vector<std::string> a = Section(args, "file0"), b = Section(args, "file1");
  EXPECT_TRUE(Has(a, "--size=33554432")) << ::testing::PrintToString(a);
  EXPECT_FALSE(Has(a, "--stonewall"));
  EXPECT_TRUE(Has(b, "--filename=/d/b\\:c.safetensors")) << ::testing::PrintToString(b);
  EXPECT_TRUE(Has(b, "--size=16777216"));
  EXPECT_TRUE(Has(b, "--offset_increment=16777216"));
  EXPECT_TRUE(Has(b, "--loops=2"));
  EXPECT_TRUE(Has(b, "--stonewall"));  // after file0, never beside it
  EXPECT_TRUE(Has(b, "--new_group"));  // its own bandwidth in jobs[1]
  EXPECT_TRUE(Has(args, "--direct=0"));
  auto groups = ParseFioGroupBandwidths(
      "{\"jobs\":[{\"read\":{\"bw_bytes\":2000000000}},{\"read\":{\"bw_bytes\":1000000000}}]}");
  ASSERT_TRUE(groups.ok()) << groups.status().ToString();
  EXPECT_EQ(*groups, (std::vector<double>{2e9, 1e9}));
  auto broken = ParseFioGroupBandwidths(
      "{\"jobs\":[{\"read\":{\"bw_bytes\":2000000000}},{\"read\":{\"bw_bytes\":0}}]}");
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.status().message().find("jobs[1]"), std::string::npos);
}

TEST(BenchFioTest, SmallFilesShrinkTheBlockAndTheJobs) {
  // 4 MiB + a header over 2 jobs: 2 MiB parts (4 KiB-aligned), the 16 MiB block shrunk to them.
  const std::vector<FioFile> small = {{"f", (4 << 20) + 200, 3}};
  const std::vector<std::string> a =
      Section(FioArgs("fio", small, {16 << 20, 8, 2, false}), "file0");
  EXPECT_TRUE(Has(a, "--bs=2097152")) << ::testing::PrintToString(a);
  EXPECT_TRUE(Has(a, "--size=2097152"));
  EXPECT_TRUE(Has(a, "--numjobs=2"));
  EXPECT_TRUE(Has(a, "--loops=3"));
  // 6 KiB over 4 jobs: one aligned 4 KiB part is all there is.
  const std::vector<FioFile> tiny = {{"f", 6 << 10, 1}};
  const std::vector<std::string> b = Section(FioArgs("fio", tiny, {4 << 20, 8, 4, true}), "file0");
  EXPECT_TRUE(Has(b, "--numjobs=1")) << ::testing::PrintToString(b);
  EXPECT_TRUE(Has(b, "--size=4096"));
  EXPECT_TRUE(Has(b, "--bs=4096"));
}

TEST(BenchFioTest, WarmLoopsReadAboutAGibibyte) {
  EXPECT_EQ(FioWarmLoops(uint64_t{2} << 30), 1u);
  EXPECT_EQ(FioWarmLoops(uint64_t{1} << 30), 1u);
  EXPECT_EQ(FioWarmLoops(300 << 20), 4u);
  EXPECT_EQ(FioWarmLoops(4 << 20), kFioMaxLoops);
  EXPECT_EQ(FioWarmLoops(0), 1u);
}

TEST(BenchFioTest, TheSweepCoversDepthJobsBlockAndDirectMatchedFirst) {
  const FioSettings matched{4 << 20, 8, 2, true};
  const std::vector<FioSettings> cold = StorageSweep(matched, /*with_buffered=*/true);
  EXPECT_EQ(cold.size(), 16u);  // {8, 32} x {1, 2 jobs} x {4, 16 MiB} x {O_DIRECT, buffered}
  EXPECT_EQ(cold.front(), matched);
  for (uint32_t depth : {8u, 32u}) {
    for (uint32_t jobs : {1u, 2u}) {
      for (uint64_t block : {uint64_t{4} << 20, uint64_t{16} << 20}) {
        for (bool direct : {true, false}) {
          const FioSettings want{block, depth, jobs, direct};
          EXPECT_NE(std::find(cold.begin(), cold.end(), want), cold.end()) << FioSettingsName(want);
        }
      }
    }
  }
  const std::vector<FioSettings> warm = StorageSweep(matched, /*with_buffered=*/false);
  EXPECT_EQ(warm.size(), 8u);
  EXPECT_TRUE(std::all_of(warm.begin(), warm.end(), [](const FioSettings& s) { return s.direct; }));
  // One core: one job per thread is one job, no duplicates. A matched depth and block outside
  // the sweep's are added.
  EXPECT_EQ(StorageSweep({4 << 20, 8, 1, true}, true).size(), 8u);
  const std::vector<FioSettings> odd = StorageSweep({1 << 20, 64, 4, true}, false);
  EXPECT_EQ(odd.size(), 3u * 2u * 3u);
  EXPECT_EQ(odd.front(), (FioSettings{1 << 20, 64, 4, true}));
  EXPECT_EQ(FioSettingsName(odd.front()), "O_DIRECT 1 MiB qd=64 4 jobs");
  EXPECT_EQ(FioSettingsName({512 << 10, 8, 1, false}), "buffered 512 KiB qd=8 1 job");
  EXPECT_EQ(FioSettingsName({4 << 20, 8, 2, false, /*sync=*/true}), "pread buffered 4 MiB 2 jobs");
}

TEST(BenchFioTest, WarmHasThePageCacheAndTheDiskColdTheSweepOnly) {
  const FioSettings matched{4 << 20, 8, 2, false};
  const std::vector<BenchRow> warm = FioCeilingRows(matched, /*cold=*/false);
  ASSERT_EQ(warm.size(), 2u);
  EXPECT_EQ(warm[0].ceiling, CeilingKind::kPageCache);
  EXPECT_EQ(warm[0].name, "ceiling: page cache, best of 6 fio buffered runs");
  // pread and io_uring with the matched block, depth and jobs, each kPageCacheTries times.
  const FioSettings pread{4 << 20, 8, 2, false, /*sync=*/true};
  ASSERT_EQ(warm[0].fio.size(), 2 * kPageCacheTries);
  EXPECT_EQ(std::count(warm[0].fio.begin(), warm[0].fio.end(), matched), kPageCacheTries);
  EXPECT_EQ(std::count(warm[0].fio.begin(), warm[0].fio.end(), pread), kPageCacheTries);
  EXPECT_EQ(warm[1].ceiling, CeilingKind::kStorage);
  EXPECT_EQ(warm[1].name, "ceiling: disk, best of 8 fio O_DIRECT runs");
  const std::vector<BenchRow> cold = FioCeilingRows(matched, /*cold=*/true);
  ASSERT_EQ(cold.size(), 1u);
  EXPECT_EQ(cold[0].ceiling, CeilingKind::kStorage);
  EXPECT_EQ(cold[0].fio.size(), 16u);
  EXPECT_EQ(cold[0].kind, RowKind::kCeiling);
}

TEST(BenchFioTest, TheTableNamesTheWinnerOfTheMedianRun) {
  BenchReport report = SampleReport();
  report.rows[1].row.fio = StorageSweep({4 << 20, 8, 2, true}, true);
  RunRecord a = OkRun(0, 2.0), b = OkRun(1, 1.0), c = OkRun(2, 1.5);
  a.detail = "O_DIRECT 4 MiB qd=8 1 job";
  b.detail = "buffered 16 MiB qd=32 2 jobs";
  c.detail = "O_DIRECT 16 MiB qd=32 2 jobs";
  report.rows[1].runs = {a, b, c};
  EXPECT_EQ(MedianRunDetail(report.rows[1]), "O_DIRECT 16 MiB qd=32 2 jobs");
  const std::string table = FormatTable(report, /*markdown=*/true);
  EXPECT_NE(table.find("| ceiling: disk: O_DIRECT 16 MiB qd=32 2 jobs | 1.500 |"),
            std::string::npos)
      << table;
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  const std::string json = BenchReportJson(report);
  ASSERT_EQ(parser.parse(simdjson::padded_string(json)).get(root), simdjson::SUCCESS) << json;
  EXPECT_EQ(std::string_view(root["rows"].at(1)["winner"].get_string()),
            "O_DIRECT 16 MiB qd=32 2 jobs");
  EXPECT_EQ(root["rows"].at(1)["fio"].get_array().size(), 16u);
  EXPECT_EQ(std::string_view(root["rows"].at(1)["runs"].at(1)["detail"].get_string()),
            "buffered 16 MiB qd=32 2 jobs");
  EXPECT_EQ(MedianRunDetail(report.rows[0]), "");  // memcpy: no sweep
  // The same settings tried again are no sweep: no winner after the name.
  report.rows[1].row.fio = std::vector<FioSettings>(kPageCacheTries, {4 << 20, 8, 2, false});
  EXPECT_NE(FormatTable(report, true).find("| ceiling: disk | 1.500 |"), std::string::npos)
      << FormatTable(report, true);
}

TEST(BenchRowsTest, DirectAndLazyRowsAreKnown) {
  auto strategies = ParseStrategies("pread,uring-direct,pread-direct,zero-copy,auto");
  ASSERT_TRUE(strategies.ok());
  auto rows = BuildShardstreamRows(*strategies, RowOptions());
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  std::vector<std::pair<bool, bool>> got;
  for (const BenchRow& r : *rows) got.emplace_back(r.direct, r.lazy);
  EXPECT_EQ(got, (std::vector<std::pair<bool, bool>>{
                     {false, false}, {true, false}, {true, false}, {false, true}, {false, false}}));
}

}  // namespace
}  // namespace shardstream::bench
