// Meta-device skeletons: materialise a module's tensors without initialising them, stream a
// checkpoint straight into them, then compute the buffers a checkpoint never holds.
//
//   auto model = std::make_shared<LlamaForCausalLM>(config, SkeletonOptions(at::kBFloat16));
//   shardstream::ModelLoadReport report = shardstream::LoadInto(*model, "model_dir/");
//
// A skeleton is a torch::nn::Module whose parameters and buffers live on the meta device (shapes
// and dtypes, no memory), e.g. one built from shardstream/layers.h. Materialize gives each of them
// uninitialised storage on a real device *in place*: the TensorImpl a module member (`weight`),
// named_parameters() and every tied alias point at stays the same object; only its storage,
// device and dispatch keys change. This is TensorImpl::shallow_copy_from, the operation under
// Tensor::set_data, called directly: set_data refuses a meta → CPU change, which is exactly the
// change wanted here. Autograd metadata (requires_grad) and the version counter are kept.
//
// LoadInto matches checkpoint names to named_parameters() and named_buffers() (after renames),
// plans reads for the matched tensors through the engine (engine/fill.h, engine/pipeline.h) with
// the tensors' own storage as destinations: same-dtype tensors are read straight into place, with
// no intermediate map and no second copy. A tensor whose checkpoint dtype differs from the
// module's (the module's dtype wins) is read into a bounded scratch buffer and cast into place by
// ATen (Tensor::copy_). After every read has finished, the re-init stage computes the
// non-persistent buffers (BufferRegistry). The report lists what was missing, unexpected,
// mismatched (shape) and re-initialised, as transformers does.
//
// Stock torch::nn modules (Linear, Embedding, LayerNorm, Conv2d, BatchNorm2d, ...) cannot be
// built on the meta device (their constructors initialise weights, and `module->to(at::kMeta)`
// throws), so build them normally and turn them into a skeleton with ToMeta, which swaps every
// parameter's and buffer's storage for meta storage in place (the reverse of Materialize):
//
//   auto net = torch::nn::Sequential(torch::nn::Linear(1024, 1024), torch::nn::LayerNorm(...));
//   shardstream::ToMeta(*net);                  // frees the initialised weights
//   shardstream::ModelLoadOptions options;
//   options.load.device = "cuda:0";
//   shardstream::LoadInto(*net, "model.safetensors", options);  // straight into cuda:0
//
// The constructor's initialisation still runs once (on the CPU), then its memory is released.
// Persistent buffers (BatchNorm's running_mean, running_var, int64 num_batches_tracked) load
// from the checkpoint like parameters.
//
// Devices: every tensor ends up on the device DeviceMap::For gives its name. A meta tensor is
// materialised there; a real tensor that sits elsewhere (a module built on the CPU, loaded with
// `device = "cuda:0"`) is moved there in place (ModelLoadOptions::move_real_tensors, listed in
// ModelLoadReport::moved), or, with move_real_tensors false, the load fails with rule "device"
// naming it. No tensor is ever filled on a device other than the one asked for.
//
// Failure: LoadError (shardstream/load.h) naming file, tensor and rule. In strict mode (the
// default) missing, unexpected or mismatched keys fail the load before any byte is read, naming
// them. After a failed read the module's tensors hold unspecified bytes: discard the module.
// Not thread-safe for one module; different modules may load concurrently.
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <regex>
#include <string>
#include <typeindex>
#include <typeinfo>
#include <utility>
#include <vector>

#include "shardstream/load.h"

namespace shardstream {

// Where each tensor goes: the device of the longest prefix of its name (as named_parameters()
// and named_buffers() list it) that is a whole module path ("model.layers.0" matches
// "model.layers.0.mlp.up_proj.weight", not "model.layers.01..."), else `fallback`.
struct DeviceMap {
  c10::Device fallback = c10::kCPU;
  std::vector<std::pair<std::string, c10::Device>> prefixes;

  c10::Device For(const std::string& name) const;
};

struct MaterializeStats {
  uint64_t bytes = 0;  // allocated
  size_t tensors = 0;  // distinct tensors given storage (tied names count once)
  // cudaMalloc calls torch's caching allocator made for them, over every GPU.
  uint64_t device_allocations = 0;
};

// Gives every meta parameter and buffer of `module` (recursively) uninitialised, contiguous
// storage on its device, in place (see the header comment). Tensors already on a real device are
// left alone; tied tensors (one TensorImpl under several names) are allocated once. On a GPU they
// are split from one caching-allocator block per device unless `reserve_device_memory` is false
// (LoadOptions::reserve_device_memory); host tensors come from engine::AllocateHostBuffer, on
// transparent huge pages with `huge_pages` (ReadOptions::huge_pages). Throws LoadError rule
// "memory" naming the tensor when its device cannot allocate it, and rule "device" when a GPU in
// `devices` cannot be used.
MaterializeStats Materialize(torch::nn::Module& module, const DeviceMap& devices,
                             bool reserve_device_memory = true, bool huge_pages = false);
MaterializeStats Materialize(torch::nn::Module& module, c10::Device device = c10::kCPU);

// Turns `module` (recursively) into a skeleton in place: every parameter and buffer keeps its
// TensorImpl (module members, named_parameters(), named_buffers() and tied aliases stay the same
// objects, requires_grad is kept) and gets meta storage of its sizes, strides and dtype; its old
// storage is released when nothing else holds it. Tensors already on the meta device are left
// alone. Distinct tensors that shared storage (views of one another) become independent meta
// tensors. Returns the number of tensors turned. Not thread-safe for one module.
size_t ToMeta(torch::nn::Module& module);

// Computes a non-persistent buffer in place. `owner` is the module that registered it (e.g. the
// RotaryEmbedding whose parameters it depends on); `buffer` is materialised on its device.
using BufferInit = std::function<void(torch::nn::Module& owner, at::Tensor& buffer)>;

// Which buffers are non-persistent (never taken from a checkpoint) and how to compute them. C++
// modules have no persistence flag, so this registry stands in for it: an entry names a module
// type and a buffer name, or a regular expression matched against the buffer's full name.
// Lookups are thread-safe once the registry is built.
class BufferRegistry {
 public:
  template <typename ModuleType>
  void Add(std::string buffer_name, BufferInit init) {
    AddForType(std::type_index(typeid(ModuleType)), std::move(buffer_name), std::move(init));
  }
  void AddForType(std::type_index module_type, std::string buffer_name, BufferInit init);
  // `full_name_pattern` must match the whole name (std::regex_match, ECMAScript).
  void AddForPattern(const std::string& full_name_pattern, BufferInit init);

  // The initialiser for buffer `buffer_name` of `owner`, listed as `full_name`; null when the
  // buffer is persistent.
  const BufferInit* Find(const torch::nn::Module& owner, const std::string& buffer_name,
                         const std::string& full_name) const;

 private:
  struct TypeEntry {
    std::type_index type;
    std::string buffer;
    BufferInit init;
  };
  struct PatternEntry {
    std::regex pattern;
    BufferInit init;
  };
  std::vector<TypeEntry> types_;
  std::vector<PatternEntry> patterns_;
};

// The buffers shardstream's own layers declare non-persistent: RotaryEmbedding's inv_freq.
const BufferRegistry& DefaultBufferRegistry();

// A rewrite of checkpoint tensor names, applied in order before matching.
class Rename {
 public:
  static Rename StripPrefix(std::string prefix);  // "prefix.x" → "x"; other names unchanged
  static Rename AddPrefix(std::string prefix);    // "x" → "prefix.x"
  // std::regex_replace(name, pattern, replacement) (ECMAScript, "$1" for groups). Throws
  // LoadError rule "rename" for a bad pattern.
  static Rename Regex(const std::string& pattern, std::string replacement);

  std::string Apply(const std::string& name) const;

 private:
  enum class Kind : uint8_t { kStrip, kAdd, kRegex };
  Kind kind_ = Kind::kStrip;
  std::string text_;
  std::regex pattern_;
};

struct ModelLoadOptions {
  // How to read (io, direct, threads, chunk, staging, progress). `device` is where meta tensors
  // still on the meta device are materialised (LoadInto calls Materialize for them); `dtype` and
  // `zero_copy` must stay unset: the module's dtypes win, and its storage is its own.
  LoadOptions load;
  DeviceMap devices;  // used when set (prefixes or a non-CPU fallback) instead of load.device
  bool strict = true;
  std::vector<Rename> renames;
  // transformers' base_model_prefix: when the module's names start with "PREFIX." and the
  // checkpoint's do not (a checkpoint of the base model loaded into a model with a head), names
  // that only match with the prefix get it; when the checkpoint's names start with it and the
  // module's do not, it is stripped.
  std::string base_model_prefix;
  // Checkpoint names (after renames) to skip silently, whole-name regular expressions, e.g. a
  // stale `rotary_emb.inv_freq` that old transformers versions saved.
  std::vector<std::string> ignore_checkpoint;
  // Non-persistent buffers; null means DefaultBufferRegistry().
  const BufferRegistry* buffers = nullptr;
  // A real (non-meta) tensor on another device than the map gives it: moved there in place with
  // its values (listed in ModelLoadReport::moved) when true; the load fails with rule "device"
  // naming it, before any byte is read, when false.
  bool move_real_tensors = true;
};

struct ModelLoadReport : LoadReport {
  struct Mismatch {
    std::string name;  // the module's name
    std::vector<int64_t> checkpoint_shape;
    std::vector<int64_t> model_shape;
  };
  // Module names with no checkpoint tensor (non-strict: zero-filled, never left uninitialised).
  std::vector<std::string> missing;
  // Checkpoint names (after renames) that match nothing in the module.
  std::vector<std::string> unexpected;
  // Names whose shapes differ (non-strict: the module tensor is zero-filled).
  std::vector<Mismatch> mismatched;
  // Non-persistent buffers computed by the re-init stage.
  std::vector<std::string> reinitialized;
  // Module names that share storage with a loaded tensor (tied weights): filled by that load.
  std::vector<std::string> tied;
  // Checkpoint names skipped: stale non-persistent buffers, ignore patterns, tied duplicates.
  std::vector<std::string> ignored;
  // Module names filled through an ATen cast (checkpoint dtype != module dtype).
  std::vector<std::string> cast;
  // Real tensors moved in place to the device asked for: "name: cpu -> cuda:0" (tied names once).
  std::vector<std::string> moved;
  MaterializeStats materialized;  // what LoadInto itself materialised
};

// Streams `checkpoint` into `module` (see the header comment). Stages in the report: headers,
// match, materialize, stream (the reads straight into place), cast, reinit.
ModelLoadReport LoadInto(torch::nn::Module& module, const std::filesystem::path& checkpoint,
                         const ModelLoadOptions& options = {});

}  // namespace shardstream
