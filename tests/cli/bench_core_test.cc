#include "cli/bench_core.h"

#include <simdjson.h>

#include <gtest/gtest.h>
#include <map>
#include <string>
#include <vector>

namespace shardstream::cli::bench {
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
  // The page cache pinned in place exists only on a GPU.
  auto page_cache = ParseStrategies("page-cache");
  ASSERT_TRUE(page_cache.ok());
  auto on_cpu = BuildShardstreamRows(*page_cache, RowOptions());
  ASSERT_FALSE(on_cpu.ok());
  EXPECT_EQ(on_cpu.status().rule(), "strategy");
  auto on_gpu = BuildShardstreamRows(*page_cache, cuda);
  ASSERT_TRUE(on_gpu.ok()) << on_gpu.status().ToString();
  EXPECT_EQ((*on_gpu)[0].args, (std::vector<std::string>{"--gpu-upload", "page-cache", "--direct",
                                                         "off", "--device", "cuda:0"}));
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
  BenchRow memcpy_row{
      "ceiling: memcpy into fresh memory", RowKind::kCeiling, CeilingKind::kMemcpy, {}, false};
  BenchRow direct{
      "ceiling: fio io_uring O_DIRECT", RowKind::kCeiling, CeilingKind::kStorageDirect, {}, false};
  BenchRow pread{"pread", RowKind::kShardstream, CeilingKind::kNone, {"--io", "pread"}, false};
  BenchRow peer{"peer: broken", RowKind::kPeer, CeilingKind::kNone, {"broken.py"}, false};
  BenchRow missing{"peer: fast", RowKind::kPeer, CeilingKind::kNone, {"fast.py"}, false};
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
  EXPECT_NE(table.find("| pread | 0.400 | 0.300 | 0.500 | 5.00 | 100% | 100 |"), std::string::npos)
      << table;
  EXPECT_NE(table.find("| peer: broken | failed: exit 1: Traceback | | | | | |"), std::string::npos)
      << table;
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
  EXPECT_EQ(std::string_view(root["schema"].get_string()), "shardstream-bench/1");
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
  EXPECT_EQ(pread["runs"].get_array().size(), 2u);
  simdjson::dom::element broken = rows.at(3);
  EXPECT_EQ(std::string_view(broken["status"].get_string()), "failed");
  EXPECT_TRUE(broken["median_s"].is_null());
  EXPECT_TRUE(broken["gbps"].is_null());
  EXPECT_EQ(std::string_view(broken["runs"].at(0)["error"].get_string()), "exit 1: Traceback");
  EXPECT_TRUE(broken["runs"].at(0)["seconds"].is_null());
  EXPECT_EQ(std::string_view(rows.at(4)["status"].get_string()), "not installed");
}

}  // namespace
}  // namespace shardstream::cli::bench
