// `shardstream load CKPT`: load a checkpoint into CPU tensors and report how long it took, or
// print a digest of every tensor.

#include "shardstream/load.h"

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/digest.h"
#include "cli/load_common.h"
#include "io/format.h"
#include "io/json_writer.h"
#include "io/residency.h"

#include <ATen/core/Tensor.h>

#include <oneapi/tbb/parallel_for.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

namespace shardstream::cli {

using io::FormatBytes;
using io::FormatCount;
namespace {

constexpr std::array<FlagSpec, 18> kFlags = {{
    {"device", "DEV", "cpu (default), or cuda[:N]: pinned staging, async copies, casts on GPU"},
    {"copy-streams", "N", "CUDA: host-to-device copy streams (default 4)"},
    {"no-device-reserve", "", "CUDA: a cudaMalloc per tensor, not one block split for all"},
    {"io", "MODE", "auto, pread, mmap or uring (auto: uring for O_DIRECT, else pread)"},
    {"queue-depth", "N", "io_uring reads in flight per thread (default 8)"},
    {"sqpoll", "", "io_uring: a kernel thread polls for submissions (costs a busy core)"},
    {"direct", "MODE", "O_DIRECT reads: on, off, or auto = on when the files are not cached"},
    {"staging-mb", "N", "bound on staging memory for direct reads in MiB (default 64)"},
    {"sink", "SINK", "tensors (default), or discard: read into staging and drop the bytes"},
    {"zero-copy", "", "tensors view private mappings of the files instead of owning memory"},
    {"threads", "N", "worker threads (default: one per core)"},
    {"huge-pages", "", "back large tensors with transparent huge pages (see BENCHMARKS.md)"},
    {"chunk-mb", "N", "largest single read in MiB (default 16, or 4 through staging)"},
    {"dtype", "DT", "load floating-point tensors as bf16, f16 or f32 (converted as they are read)"},
    {"touch", "", "after loading, read one byte of every 4 KiB page (timed: touch_seconds)"},
    {"digest", "", "print 'name<TAB>DTYPE<TAB>[shape]<TAB>sha256' per tensor, sorted by name"},
    {"json", "", "print the report as one JSON object on stdout"},
    {"quiet", "", "no progress bar"},
}};

// Digest lines for a TensorMap: dtype and shape as the file holds them.
std::vector<DigestLine> Digest(const TensorMap& tensors, const LoadReport& report) {
  std::vector<DigestSource> sources;
  sources.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    const LoadReport::FileTensor& source = report.file_tensors.at(name);
    sources.push_back({name, source.dtype, source.shape, tensor});
  }
  return DigestTensors(sources);
}

// How reading and copying overlapped in a staged load (nothing for direct-to-tensor reads, which
// have no copies: busy times are negative there).
std::string OverlapLine(double io_busy, double copy_busy, double overlap) {
  if (io_busy < 0) return "";
  char line[160];
  std::snprintf(line, sizeof line,
                "overlap     reads busy %.3f s, copies busy %.3f s, both at once %.3f s\n", io_busy,
                copy_busy, overlap);
  return line;
}

// `key`: the value, or null when it is negative (not measured).
void FieldOrNull(io::JsonWriter& out, const char* key, double value) {
  out.Key(key);
  if (value >= 0) {
    out.Double(value);
  } else {
    out.Null();
  }
}

void OverlapFields(io::JsonWriter& out, double io_busy, double copy_busy, double overlap) {
  FieldOrNull(out, "io_busy_seconds", io_busy);
  FieldOrNull(out, "copy_busy_seconds", copy_busy);
  FieldOrNull(out, "overlap_seconds", overlap);
}

// `--sink discard`: the staged pipeline into staging slots with the bytes dropped: what will feed
// a GPU, free of destination page faults. No tensors are allocated.
int RunDiscard(const std::string& path, const LoadOptions& options, bool json, ProgressBar& bar) {
  LoadReport report;
  try {
    report = ReadAndDiscard(path, options);
  } catch (const LoadError& e) {
    bar.Clear();
    PrintError(e.what());
    return kExitFailure;
  }
  bar.Clear();
  const double gbps =
      report.seconds > 0 ? static_cast<double>(report.bytes) / report.seconds / 1e9 : 0;
  PrintFallback(report.fallback);
  if (json) {
    io::JsonWriter out;
    out.BeginObject().Field("path", path).Field("sink", "discard");
    out.Field("bytes", report.bytes).Field("tensors", uint64_t{report.tensors});
    out.Field("files", uint64_t{report.files}).Field("seconds", report.seconds);
    out.Field("gbps", gbps).Field("io", report.io).Field("direct", report.direct);
    out.Field("fallback", report.fallback);
    FieldOrNull(out, "resident_fraction", report.resident_fraction);
    out.Field("read_bytes", report.read_bytes).Field("discarded_bytes", report.payload_bytes);
    out.Field("queue_depth", uint64_t{options.queue_depth});
    out.Field("peak_in_flight", uint64_t{report.peak_in_flight});
    out.Field("readers", uint64_t{report.readers});
    out.Field("copy_threads", uint64_t(report.copy_threads));
    out.Field("sqpoll", report.sqpoll);
    out.Field("registered_buffer_bytes", report.registered_buffer_bytes);
    out.Field("peak_rss_bytes", io::PeakResidentBytes());
    out.Field("slots", uint64_t{report.staging_slots}).Field("slot_bytes", report.slot_bytes);
    out.Field("peak_slots_in_use", uint64_t{report.peak_slots_in_use});
    OverlapFields(out, report.io_busy_seconds, report.copy_busy_seconds, report.overlap_seconds);
    out.Key("notes").BeginArray();
    for (const std::string& note : report.notes) out.String(note);
    out.EndArray().EndObject();
    std::cout << out.str() << "\n";
    return kExitOk;
  }
  char rate[64];
  std::snprintf(rate, sizeof rate, "%.3f s  (%.2f GB/s)", report.seconds, gbps);
  std::cout << "read        " << path << " (sink: discard)\n";
  std::cout << "bytes       " << FormatCount(report.bytes) << " (" << FormatBytes(report.bytes)
            << "), " << FormatCount(report.read_bytes) << " read\n";
  std::cout << "time        " << rate << "\n";
  std::cout << "io          " << report.io << (report.direct ? " O_DIRECT" : "") << ", "
            << report.readers << (report.readers == 1 ? " reader, " : " readers, ")
            << report.staging_slots << " slots of " << FormatBytes(report.slot_bytes) << ", peak "
            << report.peak_in_flight << " reads in flight" << (report.sqpoll ? ", SQPOLL" : "")
            << (report.registered_buffer_bytes > 0 ? ", fixed buffers" : "") << "\n";
  std::cout << OverlapLine(report.io_busy_seconds, report.copy_busy_seconds,
                           report.overlap_seconds);
  for (const std::string& note : report.notes) std::cout << "note        " << note << "\n";
  return kExitOk;
}

}  // namespace

int RunLoad(std::span<char* const> argv) {
  std::vector<FlagSpec> flags(kFlags.begin(), kFlags.end());
  flags.insert(flags.end(), ModelFlags().begin(), ModelFlags().end());
  std::optional<Args> args = Args::Parse(argv, flags);
  if (!args) return kExitUsage;
  if (args->help()) {
    PrintHelp("load CKPT [options]",
              "Loads a checkpoint (a .safetensors file, a folder, or a shard index) into tensors\n"
              "and reports bytes, seconds, GB/s and the time of each stage. With --digest, prints\n"
              "a SHA-256 of every tensor's loaded bytes instead (the report goes to stderr).\n"
              "With --model llama, builds the model from config.json on the meta device,\n"
              "materialises it, streams the checkpoint into its parameters and computes its\n"
              "non-persistent buffers (--dtype is then the model's dtype).\n"
              "Exit status: 0 loaded, 1 failed (one 'error:' line on stderr), 2 usage.",
              flags);
    return kExitOk;
  }
  if (args->positional().size() != 1) {
    PrintError("load takes exactly one checkpoint path (see --help)");
    return kExitUsage;
  }
  for (const FlagSpec& flag : ModelFlags()) {
    if (flag.name != "model" && args->Has(flag.name) && !args->Has("model")) {
      PrintError("--" + std::string(flag.name) + " needs --model");
      return kExitUsage;
    }
  }
  LoadOptions options;
  options.device = args->Get("device").value_or("cpu");
  if (auto io_name = args->Get("io")) {
    std::optional<IoMode> mode = ParseIoMode(*io_name);
    if (!mode) {
      PrintError("--io must be auto, pread, mmap or uring, not '" + *io_name + "'");
      return kExitUsage;
    }
    options.io = *mode;
  }
  if (auto direct = args->Get("direct")) {
    std::optional<DirectIo> mode = ParseDirectIo(*direct);
    if (!mode) {
      PrintError("--direct must be on, off or auto, not '" + *direct + "'");
      return kExitUsage;
    }
    options.direct = *mode;
  }
  std::optional<uint64_t> staging_mb = args->GetUint("staging-mb", kDefaultStagingBytes >> 20);
  if (!staging_mb) return kExitUsage;
  if (*staging_mb == 0 || *staging_mb > (1u << 20)) {
    PrintError("--staging-mb must be 1..1048576");
    return kExitUsage;
  }
  options.staging_bytes = *staging_mb << 20;
  options.zero_copy = args->Has("zero-copy");
  options.huge_pages = args->Has("huge-pages");
  if (options.zero_copy && args->Has("io")) {
    PrintError("--zero-copy maps the files itself: it takes no --io");
    return kExitUsage;
  }
  std::optional<uint64_t> queue_depth = args->GetUint("queue-depth", kDefaultQueueDepth);
  if (!queue_depth) return kExitUsage;
  if (*queue_depth == 0 || *queue_depth > 4096) {
    PrintError("--queue-depth must be 1..4096");
    return kExitUsage;
  }
  options.queue_depth = static_cast<uint32_t>(*queue_depth);
  options.sqpoll = args->Has("sqpoll");
  std::optional<uint64_t> copy_streams = args->GetUint("copy-streams", 0);
  if (!copy_streams) return kExitUsage;
  if (*copy_streams > 64) {
    PrintError("--copy-streams must be 1..64");
    return kExitUsage;
  }
  options.copy_streams = static_cast<uint32_t>(*copy_streams);
  options.reserve_device_memory = !args->Has("no-device-reserve");
  std::optional<uint64_t> threads = args->GetUint("threads", 0);
  std::optional<uint64_t> chunk_mb = args->GetUint("chunk-mb", 0);
  if (!threads || !chunk_mb) return kExitUsage;
  if ((args->Has("chunk-mb") && *chunk_mb == 0) || *chunk_mb > (1u << 20) || *threads > 4096) {
    PrintError("--chunk-mb must be 1..1048576 and --threads at most 4096");
    return kExitUsage;
  }
  options.threads = static_cast<int>(*threads);
  options.chunk_bytes = *chunk_mb << 20;
  if (auto dtype = args->Get("dtype")) {
    options.dtype = ParseCastDType(*dtype);
    if (!options.dtype) {
      PrintError("--dtype must be bf16, f16 or f32, not '" + *dtype + "'");
      return kExitUsage;
    }
  }
  const bool json = args->Has("json");
  const bool digest = args->Has("digest");
  ProgressBar bar(!json && !args->Has("quiet"));
  options.progress = [&bar](const Progress& p) { return bar.Update(p); };
  if (args->Has("model")) {
    const std::optional<c10::ScalarType> model_dtype = options.dtype;
    options.dtype.reset();
    return RunLoadModel(*args, options, model_dtype, bar);
  }
  if (auto sink = args->Get("sink"); sink && *sink != "tensors") {
    if (*sink != "discard") {
      PrintError("--sink must be tensors or discard, not '" + *sink + "'");
      return kExitUsage;
    }
    if (digest || options.zero_copy || options.dtype || options.io == IoMode::kMmap) {
      PrintError(
          "--sink discard keeps no tensors: it takes no --digest, --zero-copy, --dtype or "
          "--io mmap");
      return kExitUsage;
    }
    return RunDiscard(args->positional()[0], options, json, bar);
  }

  LoadReport report;
  TensorMap tensors;
  try {
    tensors = LoadFile(args->positional()[0], options, &report);
  } catch (const LoadError& e) {
    bar.Clear();
    PrintError(e.what());
    return kExitFailure;
  }
  bar.Clear();
  PrintFallback(report.fallback);

  // --touch: what a lazy (zero-copy) load costs once its bytes are used, measured the same way a
  // benchmark touches safetensors' mmap-backed tensors: one read per page, one thread.
  double touch_seconds = -1;
  if (args->Has("touch")) {
    const auto touch_start = std::chrono::steady_clock::now();
    touch_seconds = 0;
    unsigned sum = 0;
    for (const auto& [name, tensor] : tensors) {
      const auto* bytes = static_cast<const volatile unsigned char*>(tensor.data_ptr());
      const uint64_t size = tensor.nbytes();
      for (uint64_t at = 0; at < size; at += 4096) sum += bytes[at];
    }
    touch_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - touch_start).count();
    if (sum == 1u) std::fputc(' ', stderr);  // keeps the reads observable
  }
  std::vector<DigestLine> digests;
  if (digest) digests = Digest(tensors, report);
  if (json) {
    io::JsonWriter out;
    out.BeginObject();
    WriteLoadFields(out, args->positional()[0], report, options);
    FieldOrNull(out, "touch_seconds", touch_seconds);
    out.Key("raw_dtypes").BeginObject();
    for (const auto& [name, dtype] : report.raw_dtypes) out.Field(name, dtype);
    out.EndObject();
    if (digest) WriteDigestJson(out, digests);
    out.EndObject();
    std::cout << out.str() << "\n";
    return kExitOk;
  }

  std::ostream& text = digest ? std::cerr : std::cout;
  if (digest) PrintDigestLines(digests);
  PrintLoadReport(text, args->positional()[0], report, options);
  if (touch_seconds >= 0) {
    char touch[64];
    std::snprintf(touch, sizeof touch, "%.3f s (one byte of every page)", touch_seconds);
    text << "touch       " << touch << "\n";
  }
  for (const auto& [name, dtype] : report.raw_dtypes) {
    text << "note        '" << name << "' is " << dtype
         << ", which torch cannot represent: loaded as uint8 bytes\n";
  }
  text << std::flush;
  return kExitOk;
}

std::optional<c10::ScalarType> ParseCastDType(std::string_view name) {
  if (name == "bf16" || name == "bfloat16") return c10::ScalarType::BFloat16;
  if (name == "f16" || name == "fp16" || name == "float16") return c10::ScalarType::Half;
  if (name == "f32" || name == "fp32" || name == "float32") return c10::ScalarType::Float;
  return std::nullopt;
}

std::vector<DigestLine> DigestTensors(std::span<const DigestSource> sources) {
  std::vector<DigestLine> lines(sources.size());
  tbb::parallel_for(size_t{0}, sources.size(), [&](size_t i) {
    const DigestSource& source = sources[i];
    at::Tensor t = source.tensor.contiguous();
    DigestLine& line = lines[i];
    line.name = source.name;
    line.dtype = source.dtype;
    line.shape = "[";
    for (size_t d = 0; d < source.shape.size(); ++d) {
      line.shape += (d ? "," : "") + std::to_string(source.shape[d]);
    }
    line.shape += "]";
    line.sha256 = Sha256Hex(std::span(static_cast<const std::byte*>(t.data_ptr()), t.nbytes()));
  });
  // Byte order of names, as the plain load's std::map gives them.
  std::sort(lines.begin(), lines.end(),
            [](const DigestLine& a, const DigestLine& b) { return a.name < b.name; });
  return lines;
}

void PrintDigestLines(const std::vector<DigestLine>& lines) {
  std::string buffer;
  for (const DigestLine& line : lines) {
    buffer += line.name + "\t" + line.dtype + "\t" + line.shape + "\t" + line.sha256 + "\n";
  }
  std::cout << buffer << std::flush;
}

void WriteDigestJson(io::JsonWriter& out, const std::vector<DigestLine>& lines) {
  out.Key("digest").BeginArray();
  for (const DigestLine& line : lines) {
    out.BeginObject().Field("name", line.name).Field("dtype", line.dtype);
    out.Field("shape", line.shape).Field("sha256", line.sha256).EndObject();
  }
  out.EndArray();
}

// io_uring was asked for (or chosen by --io auto) and refused: said once, on stderr.
void PrintFallback(const std::string& fallback) {
  if (fallback.empty()) return;
  std::fprintf(stderr, "shardstream: io_uring unavailable, reading with pread instead: %s\n",
               fallback.c_str());
}

void WriteLoadFields(io::JsonWriter& out, const std::string& path, const LoadReport& report,
                     const LoadOptions& options) {
  const double gbps =
      report.seconds > 0 ? static_cast<double>(report.bytes) / report.seconds / 1e9 : 0;
  out.Field("path", path);
  out.Field("bytes", report.bytes).Field("tensors", uint64_t{report.tensors});
  out.Field("files", uint64_t{report.files}).Field("seconds", report.seconds);
  out.Field("gbps", gbps).Field("io", report.io).Field("zero_copy", options.zero_copy);
  out.Field("threads", uint64_t(report.threads)).Field("chunk_bytes", report.chunk_bytes);
  out.Field("queue_depth", uint64_t{options.queue_depth});
  out.Field("peak_in_flight", uint64_t{report.peak_in_flight});
  out.Field("fallback", report.fallback);
  out.Field("direct", report.direct).Field("sqpoll", report.sqpoll);
  out.Field("device", options.device).Field("copy_streams", uint64_t{report.copy_streams});
  out.Field("pin_seconds", report.pin_seconds).Field("staging_reused", report.staging_reused);
  out.Field("device_peak_bytes", report.device_peak_bytes);
  out.Field("device_scratch_bytes", report.device_scratch_bytes);
  out.Field("device_allocations", report.device_allocations);
  out.Field("gpu_upload", report.gpu_upload);
  OverlapFields(out, report.io_busy_seconds, report.copy_busy_seconds, report.overlap_seconds);
  out.Field("peak_rss_bytes", io::PeakResidentBytes());
  FieldOrNull(out, "resident_fraction", report.resident_fraction);
  out.Key("notes").BeginArray();
  for (const std::string& note : report.notes) out.String(note);
  out.EndArray();
  out.Key("stages").BeginObject();
  for (const auto& [stage, seconds] : report.stages) out.Field(stage, seconds);
  out.EndObject();
}

void PrintLoadReport(std::ostream& text, const std::string& path, const LoadReport& report,
                     const LoadOptions& options) {
  const double gbps =
      report.seconds > 0 ? static_cast<double>(report.bytes) / report.seconds / 1e9 : 0;
  char rate[64];
  std::snprintf(rate, sizeof rate, "%.3f s  (%.2f GB/s)", report.seconds, gbps);
  text << "loaded      " << path << "\n";
  text << "tensors     " << FormatCount(report.tensors) << " in " << report.files << " file"
       << (report.files == 1 ? "" : "s") << "\n";
  text << "bytes       " << FormatCount(report.bytes) << " (" << FormatBytes(report.bytes) << ")\n";
  text << "time        " << rate << "\n";
  text << "io          " << report.io << (report.direct ? " O_DIRECT" : "");
  if (!options.zero_copy) {
    text << ", " << report.threads << (report.threads == 1 ? " thread, " : " threads, ")
         << FormatBytes(report.chunk_bytes) << " chunks";
  }
  if (report.copy_streams > 0) {
    char line[128];
    std::snprintf(line, sizeof line, ", %s via %u copy streams, staging %s", options.device.c_str(),
                  report.copy_streams,
                  report.staging_reused ? "pinned earlier (reused)" : "pinned now");
    text << line;
  }
  text << "\n"
       << OverlapLine(report.io_busy_seconds, report.copy_busy_seconds, report.overlap_seconds);
  text << "stages     ";
  for (const auto& [stage, seconds] : report.stages) {
    char item[64];
    std::snprintf(item, sizeof item, " %s %.3f s", stage.c_str(), seconds);
    text << item;
  }
  text << "\n";
  for (const std::string& note : report.notes) text << "note        " << note << "\n";
}

}  // namespace shardstream::cli
