// `shardstream load CKPT --model llama`: the meta-skeleton path. Builds the model described by
// config.json on the meta device (no memory, no init), materialises it, streams the checkpoint
// straight into its parameters, computes its non-persistent buffers, and reports the time of each
// step and the keys that did not fit (shardstream/skeleton.h).

#include "cli/args.h"
#include "cli/load_common.h"
#include "integration/detail/llama_config.h"
#include "integration/dtype.h"
#include "io/format.h"
#include "io/json_writer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <sys/stat.h>

#include <array>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "shardstream/llama.h"
#include "shardstream/skeleton.h"

namespace shardstream::cli {

using io::FormatBytes;
using io::FormatCount;
namespace {

constexpr std::array<FlagSpec, 5> kModelFlags = {{
    {"model", "ARCH", "build ARCH (llama) from config.json on the meta device and load into it"},
    {"config", "FILE", "with --model: the config.json (default: the checkpoint's folder's)"},
    {"no-strict", "", "with --model: report missing/unexpected/mismatched keys, do not fail"},
    {"forward", "IDS", "with --model: run comma-separated token ids through the model"},
    {"device-map", "MAP", "with --model: PREFIX=DEV,... modules by longest prefix; rest: --device"},
}};

constexpr std::string_view kConfigName = "config.json";

// "--device-map model.layers.0=cuda:0,lm_head=cuda:1": whole-module prefixes and their devices
// (DeviceMap: the longest prefix wins; everything else goes to `fallback`). Prints the error and
// returns nullopt when malformed; devices that do not exist fail later, when loading, with rule
// "device".
std::optional<DeviceMap> ParseDeviceMap(std::string_view text, c10::Device fallback) {
  DeviceMap map{fallback, {}};
  std::set<std::string> seen;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(',', begin), text.size());
    const std::string_view rule = text.substr(begin, end - begin);
    const size_t eq = rule.find('=');
    const std::string prefix(rule.substr(0, eq == std::string_view::npos ? rule.size() : eq));
    if (eq == std::string_view::npos || prefix.empty() || eq + 1 == rule.size() ||
        prefix.front() == '.' || prefix.back() == '.') {
      PrintError(
          "--device-map needs PREFIX=DEVICE rules separated by commas (e.g. "
          "model.layers.0=cuda:0,lm_head=cpu), got '" +
          std::string(rule) + "'");
      return std::nullopt;
    }
    if (!seen.insert(prefix).second) {
      PrintError("--device-map names '" + prefix + "' twice");
      return std::nullopt;
    }
    try {
      map.prefixes.emplace_back(prefix, ParseLoadDevice(std::string(rule.substr(eq + 1))));
    } catch (const LoadError& e) {
      PrintError(std::string("--device-map: ") + e.what());
      return std::nullopt;
    }
    begin = end + 1;
  }
  return map;
}

// config.json next to the checkpoint: in it when it is a folder, beside it when it is a file.
std::string DefaultConfigPath(const std::string& checkpoint) {
  struct stat st {};
  const std::filesystem::path path(checkpoint);
  if (::stat(checkpoint.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return (path / kConfigName).string();
  }
  return (path.parent_path() / kConfigName).string();
}

std::optional<std::vector<int64_t>> ParseIds(std::string_view text) {
  std::vector<int64_t> ids;
  while (!text.empty()) {
    const size_t comma = text.find(',');
    const std::string_view item = text.substr(0, comma);
    int64_t id = 0;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (ec != std::errc() || end != item.data() + item.size() || id < 0) return std::nullopt;
    ids.push_back(id);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
  }
  if (ids.empty()) return std::nullopt;
  return ids;
}

double Stage(const LoadReport& report, std::string_view name) {
  for (const auto& [stage, seconds] : report.stages) {
    if (stage == name) return seconds;
  }
  return 0;
}

std::string DTypeLabel(c10::ScalarType dtype) {
  std::optional<io::DType> d = SafetensorsDType(dtype);
  return d ? std::string(io::DTypeName(*d)) : std::string(c10::toString(dtype));
}

std::vector<std::string> MismatchNames(const ModelLoadReport& report) {
  std::vector<std::string> names;
  for (const auto& m : report.mismatched) names.push_back(m.name);
  return names;
}

void WriteNames(io::JsonWriter& out, std::string_view key, const std::vector<std::string>& names) {
  out.Key(key).BeginArray();
  for (const std::string& name : names) out.String(name);
  out.EndArray();
}

void PrintNames(std::ostream& text, std::string_view label, const std::vector<std::string>& names) {
  if (names.empty()) return;
  std::string line(label);
  line.resize(12, ' ');
  for (size_t i = 0; i < names.size(); ++i) line += (i ? ", " : "") + names[i];
  text << line << "\n";
}

}  // namespace

std::span<const FlagSpec> ModelFlags() { return kModelFlags; }

int RunLoadModel(const Args& args, const LoadOptions& options, std::optional<c10::ScalarType> dtype,
                 ProgressBar& bar) {
  const std::string path = args.positional()[0];
  const std::string model_name = args.Get("model").value_or("");
  if (model_name != "llama") {
    PrintError("--model must be llama, not '" + model_name + "'");
    return kExitUsage;
  }
  if ((args.Has("sink") && args.Get("sink") != "tensors") || options.zero_copy) {
    PrintError(
        "--model loads into the model's own storage: it takes no --sink discard or "
        "--zero-copy");
    return kExitUsage;
  }
  std::optional<std::vector<int64_t>> ids;
  if (auto text = args.Get("forward")) {
    ids = ParseIds(*text);
    if (!ids) {
      PrintError("--forward needs comma-separated non-negative token ids, got '" + *text + "'");
      return kExitUsage;
    }
  }
  std::optional<DeviceMap> device_map;
  if (auto text = args.Get("device-map")) {
    try {
      device_map = ParseDeviceMap(*text, ParseLoadDevice(options.device));
    } catch (const LoadError& e) {
      PrintError(e.what());
      return kExitUsage;
    }
    if (!device_map) return kExitUsage;
    if (ids) {
      PrintError("--forward runs the model on one device: it takes no --device-map");
      return kExitUsage;
    }
  }
  const bool json = args.Has("json");
  const bool digest = args.Has("digest");
  const std::string config_path = args.Get("config").value_or(DefaultConfigPath(path));
  io::Result<LlamaConfig> config = detail::ReadLlamaConfig(config_path);
  if (!config.ok()) {
    PrintError(config.status().ToString());
    return kExitFailure;
  }
  if (ids) {
    for (int64_t id : *ids) {
      if (id >= config->vocab_size) {
        PrintError("--forward token id " + std::to_string(id) + " is not below vocab_size " +
                   std::to_string(config->vocab_size));
        return kExitUsage;
      }
    }
  }
  // The dtype: --dtype, else config.json's, else float32 (as transformers without a dtype).
  const c10::ScalarType model_dtype = dtype.value_or(ConfigDType(*config).value_or(at::kFloat));

  const auto start = std::chrono::steady_clock::now();
  auto model = std::make_shared<LlamaForCausalLM>(*config, SkeletonOptions(model_dtype));
  const double skeleton_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ModelLoadOptions load_options = LlamaLoadOptions();
  load_options.load = options;
  load_options.strict = !args.Has("no-strict");
  if (device_map) load_options.devices = *device_map;
  ModelLoadReport report;
  try {
    report = LoadInto(*model, path, load_options);
  } catch (const LoadError& e) {
    bar.Clear();
    PrintError(e.what());
    return kExitFailure;
  }
  bar.Clear();
  report.seconds += skeleton_seconds;
  report.stages.insert(report.stages.begin(), {"skeleton", skeleton_seconds});
  PrintFallback(report.fallback);

  // Every parameter and persistent buffer, as loaded (the module's dtype and shape).
  std::vector<DigestLine> digests;
  if (digest) {
    const std::set<std::string> recomputed(report.reinitialized.begin(),
                                           report.reinitialized.end());
    std::vector<DigestSource> sources;
    auto add = [&](const std::string& name, const at::Tensor& t) {
      sources.push_back(DigestSource{name, DTypeLabel(t.scalar_type()),
                                     std::vector<uint64_t>(t.sizes().begin(), t.sizes().end()), t});
    };
    for (const auto& item : model->named_parameters()) add(item.key(), item.value());
    for (const auto& item : model->named_buffers()) {
      if (!recomputed.count(item.key())) add(item.key(), item.value());
    }
    digests = DigestTensors(sources);
  }

  at::Tensor logits;
  std::vector<int64_t> next_tokens;
  double forward_seconds = 0;
  if (ids) {
    const auto forward_start = std::chrono::steady_clock::now();
    at::NoGradGuard no_grad;
    const int64_t tokens = static_cast<int64_t>(ids->size());
    const c10::Device where = model->parameters().front().device();
    logits = model->forward(at::tensor(*ids, at::kLong).view({1, tokens}).to(where))[0]
                 .to(at::kFloat)
                 .cpu();
    const at::Tensor argmax = logits.argmax(-1);
    for (int64_t i = 0; i < tokens; ++i) next_tokens.push_back(argmax[i].item<int64_t>());
    forward_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - forward_start).count();
  }

  const std::vector<std::string> mismatched = MismatchNames(report);
  if (json) {
    io::JsonWriter out;
    out.BeginObject();
    WriteLoadFields(out, path, report, options);
    out.Field("model", model_name).Field("config", config_path);
    out.Field("dtype", DTypeLabel(model_dtype)).Field("strict", load_options.strict);
    out.Field("materialized_bytes", report.materialized.bytes);
    out.Key("split").BeginObject();
    out.Field("skeleton", skeleton_seconds).Field("materialize", Stage(report, "materialize"));
    out.Field("stream", Stage(report, "stream") + Stage(report, "cast"));
    out.Field("reinit", Stage(report, "reinit")).EndObject();
    WriteNames(out, "missing", report.missing);
    WriteNames(out, "unexpected", report.unexpected);
    WriteNames(out, "mismatched", mismatched);
    WriteNames(out, "reinitialized", report.reinitialized);
    WriteNames(out, "tied", report.tied);
    WriteNames(out, "ignored", report.ignored);
    WriteNames(out, "cast", report.cast);
    if (digest) WriteDigestJson(out, digests);
    if (ids) {
      out.Field("forward_seconds", forward_seconds);
      out.Key("next_tokens").BeginArray();
      for (int64_t t : next_tokens) out.Int(t);
      out.EndArray();
      // Logits [tokens][vocab] as float32 values.
      out.Key("logits").BeginArray();
      const at::Tensor rows = logits.contiguous();
      const float* values = rows.data_ptr<float>();
      for (int64_t i = 0; i < rows.size(0); ++i) {
        out.BeginArray();
        for (int64_t v = 0; v < rows.size(1); ++v) out.Double(values[i * rows.size(1) + v]);
        out.EndArray();
      }
      out.EndArray();
    }
    out.EndObject();
    std::cout << out.str() << "\n";
    return kExitOk;
  }

  std::ostream& text = digest ? std::cerr : std::cout;
  if (digest) PrintDigestLines(digests);
  PrintLoadReport(text, path, report, options);
  text << "model       " << model_name << " from " << config_path << ", " << DTypeLabel(model_dtype)
       << ", " << FormatBytes(report.materialized.bytes) << " materialised\n";
  char split[160];
  std::snprintf(split, sizeof split,
                "split       skeleton %.3f s  materialize %.3f s  stream %.3f s  reinit %.3f s\n",
                skeleton_seconds, Stage(report, "materialize"),
                Stage(report, "stream") + Stage(report, "cast"), Stage(report, "reinit"));
  text << split;
  PrintNames(text, "missing", report.missing);
  PrintNames(text, "unexpected", report.unexpected);
  PrintNames(text, "mismatched", mismatched);
  PrintNames(text, "reinit", report.reinitialized);
  PrintNames(text, "tied", report.tied);
  PrintNames(text, "ignored", report.ignored);
  if (!report.cast.empty()) {
    text << "cast        " << report.cast.size() << " tensors to " << DTypeLabel(model_dtype)
         << "\n";
  }
  if (ids) {
    text << "forward     " << ids->size() << " tokens in " << forward_seconds
         << " s; next-token argmax:";
    for (int64_t t : next_tokens) text << " " << t;
    text << "\n";
  }
  text << std::flush;
  return kExitOk;
}

}  // namespace shardstream::cli
