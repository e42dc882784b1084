// `shardstream generate OUT_DIR`: write a synthetic Llama-shaped checkpoint (shards, index,
// config.json) with deterministic pseudo-random contents, for benchmarks and end-to-end tests.
//
// Tensor bytes come from splitmix64 in counter form: 64-bit word i of a tensor is
// mix(state0 + (i + 1) · γ) with state0 = seed ^ fnv1a64(name), i.e. the i-th output of a
// splitmix64 generator seeded with state0, stored little-endian. Any byte can be computed without
// the ones before it, so pieces are generated independently and in parallel, and the contents do
// not depend on the piece size or the shard split.

#include "cli/args.h"
#include "cli/commands.h"
#include "io/file.h"
#include "io/format.h"
#include "io/json_writer.h"
#include "io/safetensors_writer.h"
#include "io/stopwatch.h"

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <system_error>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardstream::cli {

using io::FormatBytes;
using io::FormatCount;
namespace {

namespace fs = std::filesystem;

constexpr std::array<FlagSpec, 6> kFlags = {{
    {"preset", "NAME", "tiny, small (default), llama-1b, llama-3b or llama-8b"},
    {"size-gb", "X", "choose the layer count so the tensors total about X GB (1e9 bytes)"},
    {"shards", "N", "split into N files with an index (default 1: one model.safetensors)"},
    {"dtype", "DT", "bf16 (default), f16 or f32"},
    {"seed", "S", "seed of the tensor contents (default 0)"},
    {"force", "", "write into a non-empty OUT_DIR, replacing an earlier generated checkpoint"},
}};

constexpr double kBytesPerGb = 1e9;
constexpr double kDefaultSmallGb = 1.0;
constexpr double kMaxSizeGb = 1e5;       // keeps every count well inside 64 bits
constexpr uint64_t kMaxShards = 99'999;  // five-digit shard numbers
constexpr int64_t kMaxPositionEmbeddings = 4096;
constexpr std::string_view kSingleFileName = "model.safetensors";
constexpr std::string_view kIndexName = "model.safetensors.index.json";
constexpr std::string_view kConfigName = "config.json";
// Each tbb task fills this many bytes of a write piece: big enough to amortise the task, small
// enough that a 4 MiB piece spreads over the cores.
constexpr size_t kFillGrainBytes = 256 << 10;

struct ModelShape {
  std::string preset;
  uint64_t hidden = 0;
  uint64_t intermediate = 0;
  uint64_t layers = 0;
  uint64_t vocab = 0;
  uint64_t heads = 0;
  uint64_t kv_heads = 0;
  bool layers_follow_size = false;  // --size-gb (or small's default) chooses `layers`

  uint64_t head_dim() const { return hidden / heads; }
};

std::optional<ModelShape> Preset(std::string_view name) {
  if (name == "tiny") return ModelShape{"tiny", 64, 176, 2, 256, 4, 2, false};
  if (name == "small") return ModelShape{"small", 1024, 2816, 0, 32000, 16, 8, true};
  if (name == "llama-1b") return ModelShape{"llama-1b", 2048, 8192, 16, 128256, 32, 8, false};
  if (name == "llama-3b") return ModelShape{"llama-3b", 3072, 8192, 28, 128256, 24, 8, false};
  if (name == "llama-8b") return ModelShape{"llama-8b", 4096, 14336, 32, 128256, 32, 8, false};
  return std::nullopt;
}

struct DTypeChoice {
  io::DType dtype;
  std::string_view torch_name;  // config.json's torch_dtype
  // Clears the top exponent bit of every element of a little-endian 64-bit word, so each value is
  // finite with magnitude below 2 (bf16 and f16: bit 14 of each 16-bit lane; f32: bit 30).
  uint64_t word_mask;
};

std::optional<DTypeChoice> ParseDTypeChoice(std::string_view name) {
  if (name == "bf16" || name == "bfloat16") {
    return DTypeChoice{io::DType::kBF16, "bfloat16", ~uint64_t{0x4000'4000'4000'4000}};
  }
  if (name == "f16" || name == "fp16" || name == "float16") {
    return DTypeChoice{io::DType::kF16, "float16", ~uint64_t{0x4000'4000'4000'4000}};
  }
  if (name == "f32" || name == "fp32" || name == "float32") {
    return DTypeChoice{io::DType::kF32, "float32", ~uint64_t{0x4000'0000'4000'0000}};
  }
  return std::nullopt;
}

uint64_t ElementBytes(io::DType dtype) { return io::DTypeBits(dtype) / 8; }

// The tensors of `shape` in the order transformers' state_dict lists them.
std::vector<io::TensorToWrite> LlamaTensors(const ModelShape& shape, io::DType dtype) {
  const uint64_t h = shape.hidden;
  const uint64_t kv = shape.kv_heads * shape.head_dim();
  std::vector<io::TensorToWrite> tensors;
  tensors.reserve(3 + 9 * shape.layers);
  tensors.push_back({"model.embed_tokens.weight", dtype, {shape.vocab, h}});
  for (uint64_t i = 0; i < shape.layers; ++i) {
    const std::string layer = "model.layers." + std::to_string(i) + ".";
    tensors.push_back({layer + "input_layernorm.weight", dtype, {h}});
    tensors.push_back({layer + "self_attn.q_proj.weight", dtype, {h, h}});
    tensors.push_back({layer + "self_attn.k_proj.weight", dtype, {kv, h}});
    tensors.push_back({layer + "self_attn.v_proj.weight", dtype, {kv, h}});
    tensors.push_back({layer + "self_attn.o_proj.weight", dtype, {h, h}});
    tensors.push_back({layer + "mlp.gate_proj.weight", dtype, {shape.intermediate, h}});
    tensors.push_back({layer + "mlp.up_proj.weight", dtype, {shape.intermediate, h}});
    tensors.push_back({layer + "mlp.down_proj.weight", dtype, {h, shape.intermediate}});
    tensors.push_back({layer + "post_attention_layernorm.weight", dtype, {h}});
  }
  tensors.push_back({"model.norm.weight", dtype, {h}});
  tensors.push_back({"lm_head.weight", dtype, {shape.vocab, h}});
  return tensors;
}

// Bytes outside the layers (embeddings, final norm, lm_head) and per layer, in elements.
uint64_t FixedElements(const ModelShape& s) { return 2 * s.vocab * s.hidden + s.hidden; }
uint64_t LayerElements(const ModelShape& s) {
  const uint64_t kv = s.kv_heads * s.head_dim();
  return 2 * s.hidden + 2 * s.hidden * s.hidden + 2 * kv * s.hidden + 3 * s.intermediate * s.hidden;
}

// The layer count (at least 1) whose total is nearest to `target_bytes`.
uint64_t LayersForSize(const ModelShape& s, uint64_t element_bytes, double target_bytes) {
  const double fixed = static_cast<double>(FixedElements(s) * element_bytes);
  const double per_layer = static_cast<double>(LayerElements(s) * element_bytes);
  const double below = std::floor((target_bytes - fixed) / per_layer);
  if (below < 1) return 1;
  // Nearer of floor and floor + 1; ties go to fewer layers.
  const double under = target_bytes - (fixed + below * per_layer);
  const double over = fixed + (below + 1) * per_layer - target_bytes;
  return static_cast<uint64_t>(over < under ? below + 1 : below);
}

// Shard boundaries: shard k holds tensors [bounds[k], bounds[k + 1]). Each boundary is the tensor
// boundary nearest to k/N of the bytes, keeping at least one tensor per shard.
std::vector<size_t> SplitIntoShards(const std::vector<uint64_t>& sizes, size_t shards) {
  std::vector<uint64_t> prefix(sizes.size() + 1, 0);  // prefix[i] = bytes of tensors [0, i)
  for (size_t i = 0; i < sizes.size(); ++i) prefix[i + 1] = prefix[i] + sizes[i];
  const long double total = static_cast<long double>(prefix.back());
  std::vector<size_t> bounds = {0};
  for (size_t k = 1; k < shards; ++k) {
    const long double target = total * k / shards;
    const size_t lowest = bounds.back() + 1;
    const size_t highest = sizes.size() - (shards - k);
    size_t best = lowest;
    for (size_t i = lowest; i <= highest; ++i) {
      if (std::fabs(static_cast<long double>(prefix[i]) - target) <
          std::fabs(static_cast<long double>(prefix[best]) - target)) {
        best = i;
      }
      if (static_cast<long double>(prefix[i]) > target) break;  // only farther from here on
    }
    bounds.push_back(best);
  }
  bounds.push_back(sizes.size());
  return bounds;
}

std::string ShardName(size_t index, size_t count) {
  if (count == 1) return std::string(kSingleFileName);
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

// True for the files a generate run writes (so --force may replace them).
bool IsGeneratedName(const std::string& name) {
  std::string_view base = name;
  if (base.ends_with(".tmp")) base.remove_suffix(4);
  if (base == kSingleFileName || base == kIndexName || base == kConfigName) return true;
  // model-NNNNN-of-NNNNN.safetensors
  constexpr std::string_view kPrefix = "model-";
  constexpr std::string_view kSuffix = ".safetensors";
  if (!base.starts_with(kPrefix) || !base.ends_with(kSuffix)) return false;
  base = base.substr(kPrefix.size(), base.size() - kPrefix.size() - kSuffix.size());
  return base.size() == 14 && base.substr(5, 4) == "-of-" &&
         std::all_of(base.begin(), base.begin() + 5, [](char c) { return c >= '0' && c <= '9'; }) &&
         std::all_of(base.begin() + 9, base.end(), [](char c) { return c >= '0' && c <= '9'; });
}

uint64_t Fnv1a64(std::string_view text) {
  uint64_t hash = 0xcbf29ce484222325;
  for (char c : text) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001b3;
  }
  return hash;
}

constexpr uint64_t kSplitMixGamma = 0x9e3779b97f4a7c15;

// The splitmix64 output function (Steele, Lea, Flood 2014).
inline uint64_t SplitMix64Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
  z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
  return z ^ (z >> 31);
}

inline uint64_t ToLittleEndian(uint64_t v) {
  return std::endian::native == std::endian::little ? v : __builtin_bswap64(v);
}

// Writes bytes [offset, offset + out.size()) of the stream of words
// mix(state0 + (i + 1) · γ) & mask, i = 0, 1, ..., each stored little-endian.
void FillRandom(uint64_t state0, uint64_t mask, uint64_t offset, std::span<std::byte> out) {
  uint64_t word_index = offset / 8;
  size_t head = offset % 8;
  size_t at = 0;
  auto word_bytes = [&](uint64_t index) {
    return ToLittleEndian(SplitMix64Mix(state0 + (index + 1) * kSplitMixGamma) & mask);
  };
  if (head != 0) {  // the piece starts inside a word
    const uint64_t word = word_bytes(word_index++);
    const size_t n = std::min(out.size(), 8 - head);
    std::memcpy(out.data(), reinterpret_cast<const std::byte*>(&word) + head, n);
    at = n;
  }
  for (; at + 8 <= out.size(); at += 8) {
    const uint64_t word = word_bytes(word_index++);
    std::memcpy(out.data() + at, &word, 8);
  }
  if (at < out.size()) {  // ... and/or ends inside one
    const uint64_t word = word_bytes(word_index);
    std::memcpy(out.data() + at, &word, out.size() - at);
  }
}

// config.json, as transformers' LlamaConfig names its fields. Written by hand rather than with
// io::JsonWriter so that rope_theta stays a float literal (500000.0) as in Meta's configs.
std::string LlamaConfigJson(const ModelShape& s, const DTypeChoice& dtype) {
  auto line = [](std::string_view key, const std::string& value, bool last = false) {
    return "  \"" + std::string(key) + "\": " + value + (last ? "\n" : ",\n");
  };
  auto quoted = [](std::string_view v) { return "\"" + std::string(v) + "\""; };
  std::string json = "{\n";
  json += line("architectures", "[\"LlamaForCausalLM\"]");
  json += line("attention_bias", "false");
  json += line("attention_dropout", "0.0");
  json += line("bos_token_id", "1");
  json += line("eos_token_id", "2");
  json += line("head_dim", std::to_string(s.head_dim()));
  json += line("hidden_act", quoted("silu"));
  json += line("hidden_size", std::to_string(s.hidden));
  json += line("initializer_range", "0.02");
  json += line("intermediate_size", std::to_string(s.intermediate));
  json += line("max_position_embeddings", std::to_string(kMaxPositionEmbeddings));
  json += line("mlp_bias", "false");
  json += line("model_type", quoted("llama"));
  json += line("num_attention_heads", std::to_string(s.heads));
  json += line("num_hidden_layers", std::to_string(s.layers));
  json += line("num_key_value_heads", std::to_string(s.kv_heads));
  json += line("pretraining_tp", "1");
  json += line("rms_norm_eps", "1e-05");
  json += line("rope_scaling", "null");
  json += line("rope_theta", "500000.0");
  json += line("tie_word_embeddings", "false");
  json += line("torch_dtype", quoted(dtype.torch_name));
  json += line("use_cache", "true");
  json += line("vocab_size", std::to_string(s.vocab), /*last=*/true);
  return json + "}\n";
}

// Writes `text` to `path` through a temporary file and a rename, like the shards.
io::Status WriteTextFile(const fs::path& path, std::string_view text) {
  const fs::path temp = path.string() + ".tmp";
  io::UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return io::Status::FromErrno(errno, "open").WithPath(temp.string());
  io::Status status;
  for (size_t done = 0; done < text.size() && status.ok();) {
    ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      status = io::Status::FromErrno(n < 0 ? errno : ENOSPC, "write").WithPath(temp.string());
    } else {
      done += static_cast<size_t>(n);
    }
  }
  if (status.ok() && ::close(fd.Release()) != 0) {
    status = io::Status::FromErrno(errno, "close").WithPath(temp.string());
  }
  if (status.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    status = io::Status::FromErrno(errno, "rename").WithPath(path.string());
  }
  if (!status.ok()) ::unlink(temp.c_str());
  return status;
}

// transformers' model.safetensors.index.json: total_size is the tensor bytes (not the file
// sizes) and weight_map names each tensor's shard.
std::string IndexJson(const std::vector<io::TensorToWrite>& tensors,
                      const std::vector<size_t>& bounds, uint64_t total_bytes) {
  io::JsonWriter json;
  json.BeginObject().Key("metadata").BeginObject().Field("total_size", total_bytes).EndObject();
  json.Key("weight_map").BeginObject();
  const size_t shards = bounds.size() - 1;
  for (size_t k = 0; k < shards; ++k) {
    const std::string name = ShardName(k, shards);
    for (size_t i = bounds[k]; i < bounds[k + 1]; ++i) json.Field(tensors[i].name, name);
  }
  json.EndObject().EndObject();
  return json.str() + "\n";
}

// Creates OUT_DIR, or checks that it may be written into. With `force`, removes the files an
// earlier run may have left (a different shard count leaves names this run would not replace).
// POSIX calls, not std::filesystem operations: this binary links the PyPI torch wheel, whose
// libtorch.so exports its own std::filesystem functions that interpose on libstdc++'s.
io::Status PrepareOutputDir(const fs::path& dir, bool force) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT) return io::Status::FromErrno(errno, "stat").WithPath(dir.string());
    return io::MakeDirectories(dir);
  }
  if (!S_ISDIR(st.st_mode)) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "not-a-directory",
                             "exists and is not a directory")
        .WithPath(dir.string());
  }
  std::unique_ptr<DIR, int (*)(DIR*)> listing(::opendir(dir.c_str()), ::closedir);
  if (!listing) return io::Status::FromErrno(errno, "opendir").WithPath(dir.string());
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(listing.get())) {
    const std::string_view name = entry->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
  }
  if (names.empty()) return io::Status::Ok();
  if (!force) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "not-empty",
                             "is not empty; pass --force to replace a generated checkpoint there")
        .WithPath(dir.string());
  }
  for (const std::string& name : names) {
    const fs::path path = dir / name;
    if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || !IsGeneratedName(name)) {
      continue;
    }
    if (::unlink(path.c_str()) != 0) {
      return io::Status::FromErrno(errno, "unlink").WithPath(path.string());
    }
  }
  return io::Status::Ok();
}

using io::SecondsSince;

std::string FormatSeconds(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f s", seconds);
  return text;
}

int Fail(const io::Status& status) {
  PrintError(status.ToString());
  return kExitFailure;
}

}  // namespace

int RunGenerate(std::span<char* const> argv) {
  std::optional<Args> args = Args::Parse(argv, kFlags);
  if (!args) return kExitUsage;
  if (args->help()) {
    PrintHelp(
        "generate OUT_DIR [--preset NAME] [--size-gb X] [--shards N] [--dtype DT] [--seed S] "
        "[--force]",
        "Writes a synthetic Llama-shaped checkpoint into OUT_DIR: model.safetensors, or N shards\n"
        "model-0000K-of-0000N.safetensors with model.safetensors.index.json, and a config.json\n"
        "that transformers loads as LlamaForCausalLM. Contents are pseudo-random, finite, and\n"
        "the same for the same seed, preset and dtype, whatever the shard count.\n"
        "Presets: tiny (~250 KB), small (layers chosen by --size-gb, default 1 GB), llama-1b,\n"
        "llama-3b, llama-8b (Llama 3.x shapes, untied lm_head); --size-gb overrides the layer\n"
        "count of any preset but tiny.\n"
        "Exit status: 0 written, 1 failure (one 'error:' line on stderr), 2 usage.",
        kFlags);
    return kExitOk;
  }
  if (args->positional().size() != 1) {
    PrintError("generate takes exactly one output folder (see --help)");
    return kExitUsage;
  }
  const fs::path out_dir = args->positional()[0];

  const std::string preset_name = args->Get("preset").value_or("small");
  std::optional<ModelShape> shape = Preset(preset_name);
  if (!shape) {
    PrintError("unknown preset '" + preset_name + "' (tiny, small, llama-1b, llama-3b, llama-8b)");
    return kExitUsage;
  }
  const std::string dtype_name = args->Get("dtype").value_or("bf16");
  std::optional<DTypeChoice> dtype = ParseDTypeChoice(dtype_name);
  if (!dtype) {
    PrintError("unknown dtype '" + dtype_name + "' (bf16, f16, f32)");
    return kExitUsage;
  }
  std::optional<uint64_t> shards = args->GetUint("shards", 1);
  std::optional<uint64_t> seed = args->GetUint("seed", 0);
  if (!shards || !seed) return kExitUsage;
  if (*shards < 1 || *shards > kMaxShards) {
    PrintError("--shards must be between 1 and " + std::to_string(kMaxShards));
    return kExitUsage;
  }

  const uint64_t element_bytes = ElementBytes(dtype->dtype);
  std::optional<double> size_gb;
  if (std::optional<std::string> text = args->Get("size-gb")) {
    double value = 0;
    auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
    if (ec != std::errc() || end != text->data() + text->size() || !(value > 0) ||
        value > kMaxSizeGb) {
      PrintError("--size-gb needs a number of GB above 0 and at most " +
                 std::to_string(static_cast<uint64_t>(kMaxSizeGb)) + ", got '" + *text + "'");
      return kExitUsage;
    }
    if (shape->preset == "tiny") {
      PrintError("--size-gb does not apply to the tiny preset (its shape is fixed)");
      return kExitUsage;
    }
    size_gb = value;
  } else if (shape->layers_follow_size) {
    size_gb = kDefaultSmallGb;
  }
  if (size_gb) shape->layers = LayersForSize(*shape, element_bytes, *size_gb * kBytesPerGb);

  // Checked before any tensor list is built: a typo such as --size-gb 10000 must not first
  // allocate millions of entries, then fill the disk.
  const uint64_t total_bytes =
      (FixedElements(*shape) + shape->layers * LayerElements(*shape)) * element_bytes;
  const size_t tensor_count = 3 + 9 * shape->layers;
  if (*shards > tensor_count) {
    PrintError("--shards " + std::to_string(*shards) + " is more than the " +
               std::to_string(tensor_count) + " tensors of this model");
    return kExitUsage;
  }
  if (io::Status status = PrepareOutputDir(out_dir, args->Has("force")); !status.ok()) {
    return Fail(status);
  }
  struct statvfs fs_stats {};
  const uint64_t available = ::statvfs(out_dir.c_str(), &fs_stats) == 0
                                 ? uint64_t{fs_stats.f_bavail} * fs_stats.f_frsize
                                 : UINT64_MAX;
  if (available < total_bytes) {
    return Fail(io::Status::Error(io::StatusCode::kResourceExhausted, "no-space",
                                  "needs " + FormatBytes(total_bytes) + " but only " +
                                      FormatBytes(available) + " are free")
                    .WithPath(out_dir.string()));
  }

  std::cout << "preset " << shape->preset << ": hidden " << shape->hidden << ", intermediate "
            << shape->intermediate << ", layers " << shape->layers << ", vocab " << shape->vocab
            << ", heads " << shape->heads << ", kv heads " << shape->kv_heads << ", head dim "
            << shape->head_dim() << ", dtype " << io::DTypeName(dtype->dtype) << ", seed " << *seed
            << "\n"
            << "writing " << FormatCount(tensor_count) << " tensors, " << FormatCount(total_bytes)
            << " bytes (" << FormatBytes(total_bytes) << ") in " << *shards
            << (*shards == 1 ? " file" : " shards") << " to " << out_dir.string() << std::endl;

  const std::vector<io::TensorToWrite> tensors = LlamaTensors(*shape, dtype->dtype);
  std::vector<uint64_t> sizes;
  sizes.reserve(tensors.size());
  for (const io::TensorToWrite& t : tensors) {
    uint64_t numel = 1;
    for (uint64_t d : t.shape) numel *= d;
    sizes.push_back(numel * element_bytes);
  }
  std::vector<uint64_t> states;  // splitmix64 starting state per tensor
  states.reserve(tensors.size());
  for (const io::TensorToWrite& t : tensors) states.push_back(*seed ^ Fnv1a64(t.name));

  const std::vector<std::pair<std::string, std::string>> metadata = {
      {"format", "pt"}, {"generator", "shardstream generate"}, {"seed", std::to_string(*seed)}};
  const std::vector<size_t> bounds = SplitIntoShards(sizes, *shards);
  const auto start = std::chrono::steady_clock::now();
  for (size_t k = 0; k < *shards; ++k) {
    const auto shard_start = std::chrono::steady_clock::now();
    const std::string name = ShardName(k, *shards);
    const std::span<const io::TensorToWrite> shard_tensors =
        std::span(tensors).subspan(bounds[k], bounds[k + 1] - bounds[k]);
    uint64_t shard_bytes = 0;
    for (size_t i = bounds[k]; i < bounds[k + 1]; ++i) shard_bytes += sizes[i];
    // The writer asks for one piece (up to 4 MiB) at a time; its grains are filled in parallel.
    const size_t first = bounds[k];
    const uint64_t mask = dtype->word_mask;
    auto fill = [&](size_t index, uint64_t offset, std::span<std::byte> out) {
      const uint64_t state0 = states[first + index];
      tbb::parallel_for(tbb::blocked_range<size_t>(0, out.size(), kFillGrainBytes),
                        [&](const tbb::blocked_range<size_t>& range) {
                          FillRandom(state0, mask, offset + range.begin(),
                                     out.subspan(range.begin(), range.size()));
                        });
    };
    if (io::Status status = io::WriteSafetensors(out_dir / name, shard_tensors, metadata, fill);
        !status.ok()) {
      return Fail(status);
    }
    std::cerr << "[" << (k + 1) << "/" << *shards << "] " << name << ": " << shard_tensors.size()
              << " tensors, " << FormatBytes(shard_bytes) << ", "
              << FormatSeconds(SecondsSince(shard_start)) << std::endl;
  }

  if (*shards > 1) {
    if (io::Status status =
            WriteTextFile(out_dir / kIndexName, IndexJson(tensors, bounds, total_bytes));
        !status.ok()) {
      return Fail(status);
    }
  }
  if (io::Status status = WriteTextFile(out_dir / kConfigName, LlamaConfigJson(*shape, *dtype));
      !status.ok()) {
    return Fail(status);
  }

  const double seconds = SecondsSince(start);
  std::cout << "wrote " << *shards << (*shards == 1 ? " file" : " shards")
            << (*shards > 1 ? " + index" : "") << " + config.json: " << FormatCount(tensor_count)
            << " tensors, " << FormatCount(total_bytes) << " bytes (" << FormatBytes(total_bytes)
            << ") in " << FormatSeconds(seconds) << " ("
            << FormatBytes(static_cast<uint64_t>(static_cast<double>(total_bytes) / seconds))
            << "/s)" << std::endl;
  return kExitOk;
}

}  // namespace shardstream::cli
