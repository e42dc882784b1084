// The harness's runs: child processes, the page cache, fio and the ceiling tools, the machine's
// description (bench/harness_runner.h). The pure parts (parsing, order, statistics, table, JSON)
// are in bench/harness.h. This file keeps to POSIX calls: the shardstream binary that links it
// links libtorch, which interposes std::filesystem.

#include "bench/harness_runner.h"

#include "io/checkpoint.h"
#include "io/file.h"
#include "io/residency.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string>
#include <thread>
#include <utility>
#include <vector>

extern char** environ;

namespace shardstream::bench {
namespace {

constexpr double kProbeTimeoutS = 120;
constexpr double kWarmEnoughFraction = 0.95;  // warm runs re-read files cached less than this
constexpr size_t kWarmReadBytes = 16 << 20;
constexpr const char* kDropCaches = "/proc/sys/vm/drop_caches";

std::string Env(const char* name, std::string fallback) {
  const char* value = std::getenv(name);
  return value && *value ? std::string(value) : std::move(fallback);
}

bool IsExecutable(const std::string& path) { return ::access(path.c_str(), X_OK) == 0; }

// The Python the build was configured with (CMake's SHARDSTREAM_PYTHON: scripts/build passes the
// project's virtualenv, which has matplotlib and the peers), so that --plot and --peers work from
// a plain shell; python3 when none was given or it is gone.
std::string ConfiguredPython() {
  const std::string configured = SHARDSTREAM_CONFIGURED_PYTHON;
  return !configured.empty() && IsExecutable(configured) ? configured : "python3";
}
bool IsDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The program's path on $PATH, or "".
std::string FindOnPath(const std::string& program) {
  const std::string path = Env("PATH", "/usr/bin:/bin");
  size_t begin = 0;
  while (begin <= path.size()) {
    size_t end = path.find(':', begin);
    if (end == std::string::npos) end = path.size();
    std::string candidate = path.substr(begin, end - begin) + "/" + program;
    if (end > begin && IsExecutable(candidate)) return candidate;
    begin = end + 1;
  }
  return "";
}

struct ChildResult {
  int exit_status = -1;  // exit code; -1 when killed or not started
  int signal = 0;
  bool timed_out = false;
  std::string spawn_error;
  std::string out, err;
  uint64_t peak_rss_bytes = 0;
};

// Runs argv (looked up on $PATH) to completion with stdin from /dev/null, collecting stdout and
// stderr; kills it with SIGKILL after `timeout_s`. Peak RSS is the child's own (wait4).
ChildResult RunChild(const std::vector<std::string>& argv, double timeout_s) {
  ChildResult result;
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    result.spawn_error = std::string("pipe: ") + std::strerror(errno);
    return result;
  }
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    result.spawn_error = std::string("pipe: ") + std::strerror(errno);
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    return result;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  // dup2 clears O_CLOEXEC on the new descriptors; the pipe ends themselves close on exec.
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], STDERR_FILENO);
  std::vector<char*> c_argv;
  c_argv.reserve(argv.size() + 1);
  for (const std::string& a : argv) c_argv.push_back(const_cast<char*>(a.c_str()));
  c_argv.push_back(nullptr);
  pid_t pid = 0;
  const int spawned = ::posix_spawnp(&pid, c_argv[0], &actions, nullptr, c_argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (spawned != 0) {
    result.spawn_error = "cannot run " + argv[0] + ": " + std::strerror(spawned);
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    return result;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  std::array<pollfd, 2> fds = {{{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}}};
  std::array<std::string*, 2> sinks = {&result.out, &result.err};
  int open_fds = 2;
  char buffer[65536];
  while (open_fds > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    const int ready =
        ::poll(fds.data(), fds.size(), static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (ready < 0 && errno != EINTR) break;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t n = ::read(fds[i].fd, buffer, sizeof buffer);
      if (n > 0) {
        sinks[i]->append(buffer, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (pollfd& p : fds) {
    if (p.fd >= 0) ::close(p.fd);
  }
  // The pipes may close before the child exits (it closed them, or a grandchild kept them open
  // and we stopped reading): the deadline still holds while it is waited for.
  int status = 0;
  rusage usage{};
  constexpr auto kWaitPoll = std::chrono::milliseconds(10);
  while (true) {
    const pid_t done = ::wait4(pid, &status, result.timed_out ? 0 : WNOHANG, &usage);
    if (done == pid || (done < 0 && errno != EINTR)) break;
    if (done == 0 && std::chrono::steady_clock::now() >= deadline) {
      result.timed_out = true;
      ::kill(pid, SIGKILL);
    } else if (done == 0) {
      std::this_thread::sleep_for(kWaitPoll);
    }
  }
  result.peak_rss_bytes = static_cast<uint64_t>(usage.ru_maxrss) * 1024;  // KiB on Linux
  if (WIFEXITED(status)) result.exit_status = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  return result;
}

// Why a child failed, in one line with its stderr tail; empty when it exited 0.
std::string ChildFailure(const ChildResult& child, double timeout_s) {
  std::string why;
  if (!child.spawn_error.empty()) return child.spawn_error;
  if (child.timed_out) {
    why = "timed out after " + std::to_string(static_cast<int>(timeout_s)) + " s";
  } else if (child.signal) {
    why = std::string("killed by signal ") + strsignal(child.signal);
  } else if (child.exit_status != 0) {
    why = "exit " + std::to_string(child.exit_status);
  } else {
    return "";
  }
  const std::string tail = StderrTail(child.err);
  return tail.empty() ? why : why + ": " + tail;
}

// Everything one bench needs to start children.
struct Context {
  std::string self;
  std::string checkpoint;
  std::vector<std::string> files;
  std::vector<uint64_t> file_bytes;
  uint64_t data_bytes = 0;
  std::string device;
  std::string python;
  std::string tool_dir;
  std::string fio;
  FioSettings fio_matched;  // the pipeline's block size, depth and threads
  double timeout_s = kDefaultTimeoutS;
  bool cold = false;
  bool drop_caches = false;  // /proc/sys/vm/drop_caches is writable
};

// The seconds one ceiling child's output stands for: fresh_copy_ceiling prints them;
// cuda_ceiling's best pinned H2D GB/s is turned into the time to move the checkpoint's bytes at
// that rate. (fio: RunFio; its rate is applied to each whole file, as it reads whole blocks of
// each job's part only, leaving out a short tail.)
io::Result<double> CeilingSeconds(const Context& ctx, CeilingKind kind, std::string_view out) {
  if (kind == CeilingKind::kMemcpy) return ParseSecondsLine(out);
  io::Result<double> gbps = ParseH2DGbps(out);
  if (!gbps.ok()) return gbps;
  return static_cast<double>(ctx.data_bytes) / (*gbps * 1e9);
}

void DropPages(const Context& ctx);

// One fio configuration over every file in turn (a checkpoint of several shards: each file split
// among the jobs, then the next, in one fio process, since fio cannot split files of unequal sizes
// among jobs and each fio start costs about a second): the files' seconds summed, each its bytes
// at its group's rate. Cold: the pages are dropped first, so that each configuration of a sweep
// starts as cold as the first.
RunRecord RunFio(const Context& ctx, const FioSettings& settings) {
  RunRecord run;
  if (ctx.cold) DropPages(ctx);
  std::vector<FioFile> files;
  for (size_t f = 0; f < ctx.files.size(); ++f) {
    // Warm buffered: loop over a small file so that fio's millisecond clock resolves it.
    const uint32_t loops = !ctx.cold && !settings.direct ? FioWarmLoops(ctx.file_bytes[f]) : 1;
    files.push_back({ctx.files[f], ctx.file_bytes[f], loops});
  }
  ChildResult child = RunChild(FioArgs(ctx.fio, files, settings), ctx.timeout_s);
  run.peak_rss_bytes = child.peak_rss_bytes;
  if (std::string why = ChildFailure(child, ctx.timeout_s); !why.empty()) {
    run.error = why;
    return run;
  }
  io::Result<std::vector<double>> rates = ParseFioGroupBandwidths(child.out);
  if (rates.ok() && rates->size() != files.size()) {
    rates = io::Status::Error(io::StatusCode::kInvalidFormat, "child-report",
                              "fio reported " + std::to_string(rates->size()) + " groups for " +
                                  std::to_string(files.size()) + " files");
  }
  if (!rates.ok()) {
    run.error = rates.status().message();
    return run;
  }
  double seconds = 0;
  for (size_t f = 0; f < files.size(); ++f) {
    seconds += static_cast<double>(files[f].bytes) / (*rates)[f];
  }
  run.ok = true;
  run.seconds = seconds;
  run.detail = FioSettingsName(settings);
  return run;
}

// A fio ceiling: the best of its configurations. A configuration that fails (O_DIRECT refused by
// the filesystem) is left out and named in the detail; the run fails when all of them do.
RunRecord RunFioCeiling(const Context& ctx, const BenchRow& row) {
  RunRecord best;
  std::string failed;
  for (const FioSettings& settings : row.fio) {
    RunRecord run = RunFio(ctx, settings);
    best.peak_rss_bytes = std::max(best.peak_rss_bytes, run.peak_rss_bytes);
    if (!run.ok) {
      failed += (failed.empty() ? "" : "; ") + FioSettingsName(settings) + ": " + run.error;
      if (!best.ok) best.error = failed;
      continue;
    }
    if (!best.ok || run.seconds < best.seconds) {
      best.ok = true;
      best.seconds = run.seconds;
      best.detail = run.detail;
      best.error.clear();
    }
  }
  if (best.ok && !failed.empty()) best.detail += " (failed: " + failed.substr(0, 300) + ")";
  return best;
}

// Runs each command in turn (one per file for the ceiling tools) and adds up their seconds.
RunRecord RunCeiling(const Context& ctx, const BenchRow& row) {
  if (row.ceiling == CeilingKind::kStorage || row.ceiling == CeilingKind::kPageCache) {
    return RunFioCeiling(ctx, row);
  }
  RunRecord run;
  double seconds = 0;
  for (size_t f = 0; f < ctx.files.size(); ++f) {
    std::vector<std::string> argv;
    const std::string& file = ctx.files[f];
    switch (row.ceiling) {
      case CeilingKind::kMemcpy:
        // Best of 3 fresh copies: a ceiling is the best the machine does, not one unlucky run.
        argv = {ctx.tool_dir + "/fresh_copy_ceiling", file,
                std::to_string(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN))), "--best-of=3"};
        break;
      case CeilingKind::kPinnedH2D:
        argv = {ctx.tool_dir + "/cuda_ceiling", "--json", "--file", file};
        break;
      default:
        break;
    }
    ChildResult child = RunChild(argv, ctx.timeout_s);
    run.peak_rss_bytes = std::max(run.peak_rss_bytes, child.peak_rss_bytes);
    if (std::string why = ChildFailure(child, ctx.timeout_s); !why.empty()) {
      run.error = why;
      return run;
    }
    io::Result<double> figure = CeilingSeconds(ctx, row.ceiling, child.out);
    if (row.ceiling == CeilingKind::kPinnedH2D) f = ctx.files.size();  // one figure for all
    if (!figure.ok()) {
      run.error = figure.status().message();
      return run;
    }
    seconds += *figure;
  }
  run.ok = true;
  run.seconds = seconds;
  return run;
}

// A shardstream load or a peer driver: one child, its JSON report.
RunRecord RunLoader(const Context& ctx, const BenchRow& row) {
  std::vector<std::string> argv;
  if (row.kind == RowKind::kShardstream) {
    argv = {row.binary.empty() ? ctx.self : row.binary, "load", ctx.checkpoint, "--json",
            "--quiet"};
  } else {
    argv = {ctx.python, row.args.at(0), ctx.checkpoint, "--device", ctx.device};
  }
  if (row.kind == RowKind::kShardstream) argv.insert(argv.end(), row.args.begin(), row.args.end());
  RunRecord run;
  ChildResult child = RunChild(argv, ctx.timeout_s);
  run.peak_rss_bytes = child.peak_rss_bytes;
  if (std::string why = ChildFailure(child, ctx.timeout_s); !why.empty()) {
    run.error = why;
    return run;
  }
  io::Result<ChildReport> report = ParseChildReport(child.out);
  if (!report.ok()) {
    const std::string tail = StderrTail(child.err);
    run.error = report.status().message() + (tail.empty() ? "" : "; stderr: " + tail);
    return run;
  }
  if (report->bytes != ctx.data_bytes) {
    run.error = "loaded " + std::to_string(report->bytes) + " bytes, the checkpoint holds " +
                std::to_string(ctx.data_bytes);
    return run;
  }
  run.ok = true;
  run.seconds =
      report->seconds + (row.add_touch_seconds ? std::max(0.0, report->touch_seconds) : 0.0);
  run.child_resident = report->resident_fraction;
  run.mapped = report->bytes > 0 && report->mapped_bytes == report->bytes;
  return run;
}

// The checkpoint's residency, weighted by file size; -1 when it cannot be sampled.
double Residency(const Context& ctx) {
  double resident = 0, total = 0;
  for (const std::string& path : ctx.files) {
    io::Result<io::OpenFile> file = io::OpenForRead(path);
    if (!file.ok()) return -1;
    io::Result<double> fraction = io::ResidentFraction(file->fd.get(), file->size_bytes);
    if (!fraction.ok()) return -1;
    resident += *fraction * static_cast<double>(file->size_bytes);
    total += static_cast<double>(file->size_bytes);
  }
  return total > 0 ? resident / total : 1;
}

// --cold: every file's pages dropped, then (when permitted) the whole clean page cache.
void DropPages(const Context& ctx) {
  for (const std::string& path : ctx.files) {
    io::Result<io::OpenFile> file = io::OpenForRead(path);
    if (!file.ok()) continue;  // the run itself will fail and say why
    io::Status dropped = io::DropCachedPages(file->fd.get());
    if (!dropped.ok())
      std::fprintf(stderr, "bench: %s\n", dropped.WithPath(path).ToString().c_str());
  }
  if (ctx.drop_caches) {
    ::sync();
    const int fd = ::open(kDropCaches, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      // 1: the page cache only (dentries and inodes stay); a failed write leaves fadvise's drop.
      if (::write(fd, "1", 1) != 1)
        std::fprintf(stderr, "bench: %s: %s\n", kDropCaches, std::strerror(errno));
      ::close(fd);
    }
  }
}

// Warm runs: files read once into the page cache (again only when something evicted them).
void WarmPages(const Context& ctx) {
  std::vector<char> buffer(kWarmReadBytes);
  for (const std::string& path : ctx.files) {
    io::Result<io::OpenFile> file = io::OpenForRead(path);
    if (!file.ok()) continue;
    for (off_t at = 0;;) {
      const ssize_t n = ::pread(file->fd.get(), buffer.data(), buffer.size(), at);
      if (n <= 0) break;
      at += n;
    }
  }
}

std::string ReadSmallFile(const char* path) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

std::vector<std::pair<std::string, std::string>> MachineInfo() {
  std::vector<std::pair<std::string, std::string>> info;
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  info.emplace_back("hostname", host);
  utsname u{};
  if (::uname(&u) == 0) {
    info.emplace_back("kernel", std::string(u.sysname) + " " + u.release + " " + u.version);
    info.emplace_back("arch", u.machine);
  }
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.starts_with("model name")) {
      info.emplace_back("cpu", line.substr(line.find(':') + 2));
      break;
    }
  }
  info.emplace_back("cpus", std::to_string(::sysconf(_SC_NPROCESSORS_ONLN)));
  info.emplace_back("memory_bytes",
                    std::to_string(static_cast<uint64_t>(::sysconf(_SC_PHYS_PAGES)) *
                                   static_cast<uint64_t>(::sysconf(_SC_PAGESIZE))));
  info.emplace_back("transparent_hugepage",
                    ReadSmallFile("/sys/kernel/mm/transparent_hugepage/enabled"));
  info.emplace_back("loadavg_at_start", ReadSmallFile("/proc/loadavg"));
  char date[64] = {};
  const time_t now = ::time(nullptr);
  tm utc{};
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", ::gmtime_r(&now, &utc));
  info.emplace_back("date_utc", date);
  return info;
}

// Versions: shardstream, fio, and the Python packages (bench/peers/_common.py --versions).
std::map<std::string, std::string> Versions(const Context& ctx, const std::string& bench_dir) {
  std::map<std::string, std::string> versions = {{"shardstream", SHARDSTREAM_VERSION}};
  if (!ctx.fio.empty()) {
    ChildResult fio = RunChild({ctx.fio, "--version"}, kProbeTimeoutS);
    versions["fio"] = StderrTail(fio.out);
  }
  ChildResult py =
      RunChild({ctx.python, bench_dir + "/peers/_common.py", "--versions"}, kProbeTimeoutS);
  if (py.exit_status == 0) versions.merge(ParseVersions(py.out));
  return versions;
}

std::vector<std::string> PeerDrivers(const std::string& dir) {
  std::vector<std::string> drivers;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return drivers;
  while (dirent* entry = ::readdir(d)) {
    const std::string name = entry->d_name;
    if (name.size() > 3 && name.ends_with(".py") && !name.starts_with("_")) {
      drivers.push_back(std::string(dir).append("/").append(name));
    }
  }
  ::closedir(d);
  std::sort(drivers.begin(), drivers.end());
  return drivers;
}

BenchRow CeilingRow(std::string name, CeilingKind kind) {
  BenchRow row;
  row.name = std::move(name);
  row.kind = RowKind::kCeiling;
  row.ceiling = kind;
  return row;
}

RowResult NotInstalled(BenchRow row, std::string why) {
  RowResult r;
  r.row = std::move(row);
  r.status = RowStatus::kNotInstalled;
  r.note = std::move(why);
  return r;
}

}  // namespace

io::Status RunHarness(const HarnessOptions& options) {
  Context ctx;
  ctx.self = options.shardstream;
  ctx.checkpoint = options.checkpoint;
  io::Result<io::Checkpoint> checkpoint = io::OpenCheckpoint(ctx.checkpoint);
  if (!checkpoint.ok()) return checkpoint.status();
  for (const io::CheckpointFile& f : checkpoint->files) {
    ctx.files.push_back(f.path.string());
    ctx.file_bytes.push_back(f.header.file_bytes);
  }
  ctx.data_bytes = checkpoint->data_bytes();
  const RowOptions& row_options = options.row_options;
  ctx.device = row_options.device;
  ctx.python = options.python.value_or(Env("SHARDSTREAM_PYTHON", ConfiguredPython()));
  ctx.tool_dir = Env("SHARDSTREAM_BENCH_TOOL_DIR", SHARDSTREAM_BENCH_TOOL_DIR);
  const std::string bench_dir = Env("SHARDSTREAM_BENCH_DIR", SHARDSTREAM_BENCH_SOURCE_DIR);
  const std::string peer_dir =
      options.peer_dir.value_or(Env("SHARDSTREAM_PEER_DIR", bench_dir + "/peers"));
  ctx.fio = FindOnPath("fio");
  // The pipeline's settings: the first --queue-depth and --chunk-mb (else its defaults through
  // staging), one fio job per pipeline thread (`load` runs one per core).
  if (!row_options.queue_depths.empty()) ctx.fio_matched.depth = row_options.queue_depths.front();
  if (!row_options.chunk_mbs.empty()) {
    ctx.fio_matched.block_bytes = uint64_t{row_options.chunk_mbs.front()} << 20;
  }
  ctx.fio_matched.jobs = static_cast<uint32_t>(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN)));
  ctx.timeout_s = options.timeout_s;
  ctx.cold = options.cold;
  ctx.drop_caches = ctx.cold && options.drop_caches && ::access(kDropCaches, W_OK) == 0;
  if (options.peers && !IsDirectory(peer_dir)) {
    return io::Status::Error(io::StatusCode::kNotFound, "peers",
                             "no peer drivers there; set --peer-dir or SHARDSTREAM_PEER_DIR to "
                             "shardstream's bench/peers")
        .WithPath(peer_dir);
  }

  BenchReport report;
  report.command = options.command;
  report.machine = MachineInfo();
  report.versions = Versions(ctx, bench_dir);
  report.checkpoint = ctx.checkpoint;
  report.files = ctx.files;
  report.data_bytes = ctx.data_bytes;
  report.tensors = checkpoint->tensor_count();
  report.device = ctx.device;
  report.sink = row_options.sink;
  report.repeat = options.repeat;
  report.cold = ctx.cold;
  report.peers = options.peers;
  if (ctx.cold) {
    std::string how = "cold: posix_fadvise(DONTNEED) on every file";
    if (ctx.drop_caches) {
      how += " and /proc/sys/vm/drop_caches before each run";
    } else if (!options.drop_caches) {
      how += " before each run (--no-drop-caches)";
    } else {
      how += " before each run (/proc/sys/vm/drop_caches is not writable)";
    }
    report.notes.push_back(how);
  } else {
    report.notes.push_back(
        "warm: every file read into the page cache before the runs, again "
        "before a run when less than 95% of it was resident");
  }

  // Rows: ceilings, the strategies, the peers.
  if (options.ceilings) {
    for (BenchRow& row : FioCeilingRows(ctx.fio_matched, ctx.cold)) {
      if (ctx.fio.empty()) {
        report.rows.push_back(NotInstalled(std::move(row), "fio not installed"));
      } else {
        report.rows.push_back(RowResult{std::move(row), RowStatus::kOk, "", {}});
      }
    }
    if (!ctx.fio.empty()) {
      report.notes.push_back(
          "fio: page-aligned buffers (--iomem_align=4096, as the staging slots), each file in "
          "turn split among the jobs (--size/--offset_increment, --group_reporting, --stonewall, "
          "--invalidate=0), the files' seconds summed; " +
          std::string(ctx.cold ? ""
                               : "the page cache row is the best of pread and io_uring, one job "
                                 "per thread; ") +
          "the disk row is the best of its io_uring sweep (depth 8/32, 1 job or one per thread, "
          "4/16 MiB" +
          std::string(ctx.cold ? ", O_DIRECT and buffered" : ", O_DIRECT") +
          "); a sweep's winner after its name");
    }
    BenchRow memcpy_row =
        CeilingRow("ceiling: memcpy into fresh memory, best of 3", CeilingKind::kMemcpy);
    if (IsExecutable(ctx.tool_dir + "/fresh_copy_ceiling")) {
      report.rows.push_back(RowResult{std::move(memcpy_row), RowStatus::kOk, "", {}});
    } else {
      report.rows.push_back(
          NotInstalled(std::move(memcpy_row), ctx.tool_dir + "/fresh_copy_ceiling not built"));
    }
    if (ctx.device != "cpu") {
      BenchRow h2d = CeilingRow("ceiling: pinned H2D", CeilingKind::kPinnedH2D);
      if (IsExecutable(ctx.tool_dir + "/cuda_ceiling")) {
        report.rows.push_back(RowResult{std::move(h2d), RowStatus::kOk, "", {}});
      } else {
        report.rows.push_back(NotInstalled(std::move(h2d), ctx.tool_dir +
                                                               "/cuda_ceiling not built (a CUDA "
                                                               "build has it)"));
      }
    }
    if (ctx.fio.empty()) report.notes.push_back("fio not installed: no storage ceiling");
  }
  for (const BenchRow& row : options.shardstream_rows) {
    report.rows.push_back(RowResult{row, RowStatus::kOk, "", {}});
  }
  if (report.peers) {
    for (const std::string& driver : PeerDrivers(peer_dir)) {
      const size_t slash = driver.rfind('/');
      const std::string stem = driver.substr(slash + 1, driver.size() - slash - 4);
      ChildResult probe = RunChild(
          {ctx.python, driver, ctx.checkpoint, "--device", ctx.device, "--probe"}, kProbeTimeoutS);
      const int exit_status = probe.spawn_error.empty() ? probe.exit_status : -1;
      ProbeResult parsed =
          ParseProbe(stem, exit_status, probe.out,
                     probe.spawn_error.empty() ? StderrTail(probe.err) : probe.spawn_error);
      BenchRow row;
      row.name = parsed.name;
      row.kind = RowKind::kPeer;
      row.args = {driver};
      report.rows.push_back(RowResult{std::move(row), parsed.status, parsed.note, {}});
    }
  }

  // The runnable rows, interleaved over the rounds.
  std::vector<uint32_t> runnable;
  for (uint32_t i = 0; i < report.rows.size(); ++i) {
    if (report.rows[i].status == RowStatus::kOk) runnable.push_back(i);
  }
  const std::vector<RunSlot> schedule = InterleavedSchedule(runnable.size(), report.repeat);
  if (!ctx.cold) WarmPages(ctx);
  for (const RunSlot& slot : schedule) {
    RowResult& r = report.rows[runnable[slot.row]];
    report.order.push_back({slot.round, runnable[slot.row]});
    double resident = -1;
    bool dropped = true;
    if (ctx.cold) {
      DropPages(ctx);
      resident = Residency(ctx);
      dropped = resident >= 0 && resident <= kMaxColdResidentFraction;
    } else {
      resident = Residency(ctx);
      if (resident >= 0 && resident < kWarmEnoughFraction) {
        WarmPages(ctx);
        resident = Residency(ctx);
      }
    }
    RunRecord run =
        r.row.kind == RowKind::kCeiling ? RunCeiling(ctx, r.row) : RunLoader(ctx, r.row);
    run.round = slot.round;
    run.resident_before = resident;
    run.cold_dropped = !ctx.cold || dropped;
    if (!options.quiet) {
      std::fprintf(stderr, "round %u/%u  %-40s %s%s\n", slot.round + 1, report.repeat,
                   r.row.name.c_str(),
                   run.ok ? (std::to_string(run.seconds).substr(0, 6) + " s").c_str()
                          : ("FAILED: " + run.error.substr(0, 160)).c_str(),
                   run.cold_dropped ? "" : "  (pages not dropped)");
    }
    r.runs.push_back(std::move(run));
  }

  std::cout << FormatCheckpointLine(report);
  std::cout << FormatTable(report, options.markdown);
  for (const std::string& note : report.notes) std::cout << "note        " << note << "\n";
  std::cout << std::flush;

  const std::string json = BenchReportJson(report);
  std::string json_path = options.json_path.value_or("");
  std::string temp_json;
  if (json_path.empty() && options.plot_path) {
    char name[] = "/tmp/shardstream-bench-XXXXXX";
    const int fd = ::mkstemp(name);
    if (fd >= 0) ::close(fd);
    json_path = temp_json = name;
  }
  if (!json_path.empty()) {
    std::ofstream out(json_path, std::ios::binary | std::ios::trunc);
    out << json;
    if (!out.flush()) {
      return io::Status::Error(io::StatusCode::kIoError, "io", "cannot write the JSON report")
          .WithPath(json_path);
    }
  }
  io::Status status;
  if (options.plot_path) {
    const std::string& plot = *options.plot_path;
    ChildResult child =
        RunChild({ctx.python, bench_dir + "/plot.py", json_path, plot}, kProbeTimeoutS);
    if (std::string why = ChildFailure(child, kProbeTimeoutS); !why.empty()) {
      status = io::Status::Error(io::StatusCode::kIoError, "plot", "the plot failed: " + why)
                   .WithPath(plot);
    } else {
      std::cout << "plot        " << plot << "\n";
    }
  }
  if (!temp_json.empty()) ::unlink(temp_json.c_str());
  if (options.json_path) std::cout << "json        " << json_path << "\n";
  return status;
}

io::Status RunDistributedBench(const DistributedBenchOptions& options) {
  // A checkpoint that does not open says so here, not as N ranks' tracebacks.
  if (io::Result<io::Checkpoint> checkpoint = io::OpenCheckpoint(options.checkpoint);
      !checkpoint.ok()) {
    return checkpoint.status();
  }
  const std::string python = options.python.value_or(Env("SHARDSTREAM_PYTHON", ConfiguredPython()));
  const std::string script =
      Env("SHARDSTREAM_BENCH_DIR", SHARDSTREAM_BENCH_SOURCE_DIR) + "/distributed_load.py";
  std::vector<std::string> argv = {python,
                                   script,
                                   options.checkpoint,
                                   "--ranks",
                                   std::to_string(options.ranks),
                                   "--repeat",
                                   std::to_string(options.repeat)};
  if (options.json_path) {
    argv.push_back("--json");
    argv.push_back(*options.json_path);
  }
  const ChildResult child = RunChild(argv, options.timeout_s);
  std::fwrite(child.out.data(), 1, child.out.size(), stdout);
  std::fflush(stdout);
  const std::string why = ChildFailure(child, options.timeout_s);
  if (!why.empty()) {
    return io::Status::Error(io::StatusCode::kIoError, "distributed-bench",
                             python + " " + script + ": " + why)
        .WithPath(options.checkpoint);
  }
  return io::Status::Ok();
}

}  // namespace shardstream::bench
