#include "shardstream/skeleton.h"

#include "engine/host_memory.h"
#include "integration/detail/device_moves.h"
#include "integration/detail/errors.h"
#include "integration/detail/fill_torch.h"
#include "integration/detail/torch_cuda.h"
#include "integration/dtype.h"
#include "io/checkpoint.h"
#include "io/stopwatch.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/TensorImpl.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "shardstream/layers.h"

namespace shardstream {
namespace {

using io::Clock;
using io::SecondsSince;

std::string FormatSizes(c10::IntArrayRef sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) text += (i ? ", " : "") + std::to_string(sizes[i]);
  return text + "]";
}

std::regex CompilePattern(const std::string& pattern, std::string_view what) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    ThrowIfError(io::Status::InvalidArgument(
        "rename",
        std::string(what) + " '" + pattern + "' is not a valid regular expression: " + e.what()));
  }
  return {};
}

// One name under which the module lists a tensor.
struct Entry {
  std::string name;
  at::Tensor tensor;
  torch::nn::Module* owner = nullptr;
  const BufferInit* init = nullptr;  // set: a non-persistent buffer
  size_t group = 0;
};

// The names that share one TensorImpl (tied weights share one; most tensors have one name).
struct Group {
  std::vector<size_t> entries;  // in module order; the first is the canonical name
  bool non_persistent = false;
  std::optional<io::TensorLocation> source;
  size_t source_entry = 0;  // the entry the checkpoint named
  bool mismatched = false;
};

// "a, b, c and 12 more": strict-mode errors name the keys without flooding the terminal.
std::string ListNames(const std::vector<std::string>& names) {
  constexpr size_t kMaxListed = 10;
  std::string text;
  for (size_t i = 0; i < names.size() && i < kMaxListed; ++i) text += (i ? ", " : "") + names[i];
  if (names.size() > kMaxListed)
    text += " and " + std::to_string(names.size() - kMaxListed) + " more";
  return text;
}

// Uninitialised contiguous storage for `like` on `device`: from torch's allocator, or, for host
// tensors on huge pages, from engine::AllocateHostBuffer. Failures throw LoadError rule "memory"
// naming the tensor.
at::Tensor AllocateLike(const std::string& name, const at::Tensor& like, c10::Device device,
                        bool huge_pages) {
  if (device.is_cpu() && huge_pages) {
    const uint64_t bytes = like.nbytes();
    io::Result<std::byte*> buffer = engine::AllocateHostBuffer(bytes, /*huge_pages=*/true);
    if (!buffer.ok()) ThrowIfError(std::move(buffer).status().WithTensor(name));
    return at::from_blob(
        *buffer, like.sizes(),
        [bytes](void* data) { engine::FreeHostBuffer(static_cast<std::byte*>(data), bytes); },
        like.options().device(c10::kCPU));
  }
  try {
    return at::empty(like.sizes(), like.options().device(device));
  } catch (const c10::Error& e) {
    ThrowIfError(io::Status::Error(
                     io::StatusCode::kResourceExhausted, "memory",
                     "cannot allocate it on " + device.str() + ": " + e.what_without_backtrace())
                     .WithTensor(name));
  }
  return {};
}

}  // namespace

c10::Device DeviceMap::For(const std::string& name) const {
  const std::pair<std::string, c10::Device>* best = nullptr;
  for (const auto& entry : prefixes) {
    const std::string& prefix = entry.first;
    const bool covers = name == prefix || (name.size() > prefix.size() &&
                                           name.starts_with(prefix) && name[prefix.size()] == '.');
    if (covers && (best == nullptr || prefix.size() > best->first.size())) best = &entry;
  }
  return best ? best->second : fallback;
}

MaterializeStats Materialize(torch::nn::Module& module, const DeviceMap& devices,
                             bool reserve_device_memory, bool huge_pages) {
  // The meta tensors, once each (tied names share a TensorImpl), with their names and devices.
  struct Meta {
    std::string name;
    at::Tensor tensor;
    c10::Device device;
  };
  std::vector<Meta> meta;
  std::unordered_set<const c10::TensorImpl*> seen;
  auto collect = [&](const std::string& name, const at::Tensor& tensor) {
    if (!tensor.defined() || !tensor.is_meta()) return;  // real already
    if (seen.insert(tensor.unsafeGetTensorImpl()).second) {
      meta.push_back(Meta{name, tensor, devices.For(name)});
    }
  };
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    collect(item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    collect(item.key(), item.value());
  }

  // One caching-allocator block per GPU for what goes there (detail::ReserveDeviceMemory).
  std::map<c10::DeviceIndex, uint64_t> reservations;
  for (const Meta& m : meta) {
    if (m.device.is_cuda()) {
      detail::AddDeviceReservation(m.tensor.nbytes(), &reservations[m.device.index()]);
    }
  }
  std::map<c10::DeviceIndex, uint64_t> allocations_before;
  for (const auto& [index, bytes] : reservations) {
    const c10::Device device(c10::kCUDA, index);
    allocations_before[index] = detail::RequireTorchCuda(device).device_allocations(index);
    if (reserve_device_memory) detail::ReserveDeviceMemory(device, bytes);
  }

  MaterializeStats stats;
  for (const Meta& m : meta) {
    at::Tensor real = AllocateLike(m.name, m.tensor, m.device, huge_pages);
    // The deliberate bypass of Tensor::set_data's compatibility check (see skeleton.h): storage,
    // sizes, strides, dtype, device and dispatch keys come from `real`; the TensorImpl, its
    // autograd metadata and version counter stay, so every holder of this tensor sees the change.
    m.tensor.unsafeGetTensorImpl()->shallow_copy_from(real.getIntrusivePtr());
    stats.bytes += real.nbytes();
    ++stats.tensors;
  }
  for (const auto& [index, before] : allocations_before) {
    stats.device_allocations +=
        detail::RequireTorchCuda(c10::Device(c10::kCUDA, index)).device_allocations(index) - before;
  }
  return stats;
}

MaterializeStats Materialize(torch::nn::Module& module, c10::Device device) {
  return Materialize(module, DeviceMap{device, {}});
}

size_t ToMeta(torch::nn::Module& module) {
  std::unordered_set<const c10::TensorImpl*> seen;
  size_t turned = 0;
  auto turn = [&](const at::Tensor& tensor) {
    if (!tensor.defined() || tensor.is_meta()) return;
    if (!seen.insert(tensor.unsafeGetTensorImpl()).second) return;  // a tied alias: done already
    // Sizes and strides as they are, so a non-contiguous parameter stays one; Materialize gives it
    // contiguous storage later, as it does for every skeleton.
    const at::Tensor meta =
        at::empty_strided(tensor.sizes(), tensor.strides(), tensor.options().device(at::kMeta));
    // The same in-place swap as Materialize's, in the other direction (see skeleton.h): the old
    // storage's last reference goes with it.
    tensor.unsafeGetTensorImpl()->shallow_copy_from(meta.getIntrusivePtr());
    ++turned;
  };
  for (const auto& item : module.named_parameters(/*recurse=*/true)) turn(item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true)) turn(item.value());
  return turned;
}

namespace detail {

std::vector<DeviceMove> PlanDeviceMoves(
    const std::vector<std::pair<std::string, c10::Device>>& tensors, const DeviceMap& devices) {
  auto indexed = [](c10::Device device) {
    if (device.is_cuda() && !device.has_index()) device.set_index(0);
    return device;
  };
  std::vector<DeviceMove> moves;
  for (const auto& [name, where] : tensors) {
    if (where.is_meta()) continue;
    const c10::Device from = indexed(where);
    const c10::Device to = indexed(devices.For(name));
    if (from != to) moves.push_back(DeviceMove{name, from, to});
  }
  return moves;
}

std::string DescribeMove(const DeviceMove& move) {
  return move.name + ": " + move.from.str() + " -> " + move.to.str();
}

}  // namespace detail

void BufferRegistry::AddForType(std::type_index module_type, std::string buffer_name,
                                BufferInit init) {
  types_.push_back(TypeEntry{module_type, std::move(buffer_name), std::move(init)});
}

void BufferRegistry::AddForPattern(const std::string& full_name_pattern, BufferInit init) {
  patterns_.push_back(
      PatternEntry{CompilePattern(full_name_pattern, "buffer pattern"), std::move(init)});
}

const BufferInit* BufferRegistry::Find(const torch::nn::Module& owner,
                                       const std::string& buffer_name,
                                       const std::string& full_name) const {
  const std::type_index type(typeid(owner));
  for (const TypeEntry& entry : types_) {
    if (entry.type == type && entry.buffer == buffer_name) return &entry.init;
  }
  for (const PatternEntry& entry : patterns_) {
    if (std::regex_match(full_name, entry.pattern)) return &entry.init;
  }
  return nullptr;
}

const BufferRegistry& DefaultBufferRegistry() {
  static const BufferRegistry registry = [] {
    BufferRegistry r;
    r.Add<RotaryEmbedding>("inv_freq", [](torch::nn::Module& owner, at::Tensor& buffer) {
      // Computed on the CPU and copied: on a GPU the first kernel of a process costs ~0.1 s of
      // lazy module loading (measured on an H100), for a few hundred bytes; and the bits are
      // then the CPU load's, wherever the model lives.
      buffer.copy_(static_cast<const RotaryEmbedding&>(owner).ComputeInvFreq(c10::kCPU));
    });
    return r;
  }();
  return registry;
}

Rename Rename::StripPrefix(std::string prefix) {
  Rename r;
  r.kind_ = Kind::kStrip;
  r.text_ = std::move(prefix) + ".";
  return r;
}

Rename Rename::AddPrefix(std::string prefix) {
  Rename r;
  r.kind_ = Kind::kAdd;
  r.text_ = std::move(prefix) + ".";
  return r;
}

Rename Rename::Regex(const std::string& pattern, std::string replacement) {
  Rename r;
  r.kind_ = Kind::kRegex;
  r.pattern_ = CompilePattern(pattern, "rename pattern");
  r.text_ = std::move(replacement);
  return r;
}

std::string Rename::Apply(const std::string& name) const {
  switch (kind_) {
    case Kind::kStrip:
      return name.starts_with(text_) ? name.substr(text_.size()) : name;
    case Kind::kAdd:
      return text_ + name;
    case Kind::kRegex:
      return std::regex_replace(name, pattern_, text_);
  }
  return name;
}

namespace {

// One LoadInto, phase by phase: the module's names (Collect), the checkpoint's after renames
// (Name), matching them (Match, Strict), materialising (Materialize), the fill targets (Targets,
// then the fill core), and the re-init stage (Finalize).
class ModelLoad {
 public:
  ModelLoad(torch::nn::Module& module, const io::Checkpoint& checkpoint,
            const ModelLoadOptions& options, ModelLoadReport& out)
      : module_(module), checkpoint_(checkpoint), options_(options), out_(out) {}

  void Collect();
  void Name();
  void Match();
  void Strict() const;
  std::vector<engine::Target> Targets();
  void Finalize();

 private:
  void Add(std::string name, const at::Tensor& tensor, torch::nn::Module& owner,
           const BufferInit* init);
  // Whether checkpoint tensor `n` claims its module name; records why not in the report.
  void Claim(const io::TensorLocation& location, const std::string& name,
             std::unordered_set<std::string>& claimed, const std::vector<std::regex>& ignore);

  torch::nn::Module& module_;
  const io::Checkpoint& checkpoint_;
  const ModelLoadOptions& options_;
  ModelLoadReport& out_;
  std::vector<Entry> entries_;
  std::vector<Group> groups_;
  std::unordered_map<const c10::TensorImpl*, size_t> group_of_;
  std::unordered_map<std::string, size_t> entry_of_;
  struct Named {
    io::TensorLocation location;
    std::string name;
  };
  std::vector<Named> named_;
};

void ModelLoad::Add(std::string name, const at::Tensor& tensor, torch::nn::Module& owner,
                    const BufferInit* init) {
  auto [it, inserted] = group_of_.emplace(tensor.unsafeGetTensorImpl(), groups_.size());
  if (inserted) groups_.emplace_back();
  Group& group = groups_[it->second];
  group.entries.push_back(entries_.size());
  group.non_persistent = group.non_persistent || init != nullptr;
  entry_of_.emplace(name, entries_.size());
  entries_.push_back(Entry{std::move(name), tensor, &owner, init, it->second});
}

// The module's names, grouped by TensorImpl so that tied weights are one target.
void ModelLoad::Collect() {
  const BufferRegistry& registry = options_.buffers ? *options_.buffers : DefaultBufferRegistry();
  module_.apply([&](const std::string& prefix, torch::nn::Module& owner) {
    auto full = [&](const std::string& key) { return prefix.empty() ? key : prefix + "." + key; };
    for (const auto& item : owner.named_parameters(/*recurse=*/false)) {
      Add(full(item.key()), item.value(), owner, nullptr);
    }
    for (const auto& item : owner.named_buffers(/*recurse=*/false)) {
      std::string name = full(item.key());
      const BufferInit* init = registry.Find(owner, item.key(), name);
      Add(std::move(name), item.value(), owner, init);
    }
  });
}

// Checkpoint names after renames, then the base_model_prefix fix-up.
void ModelLoad::Name() {
  named_.reserve(checkpoint_.tensor_count());
  for (uint32_t f = 0; f < checkpoint_.files.size(); ++f) {
    const auto& tensors = checkpoint_.files[f].header.tensors;
    for (uint32_t i = 0; i < tensors.size(); ++i) {
      std::string name = tensors[i].name;
      for (const Rename& rename : options_.renames) name = rename.Apply(name);
      out_.file_tensors.emplace(
          tensors[i].name,
          LoadReport::FileTensor{std::string(io::DTypeName(tensors[i].dtype)), tensors[i].shape});
      named_.push_back(Named{{f, i}, std::move(name)});
    }
  }
  if (options_.base_model_prefix.empty()) return;
  const std::string prefix = options_.base_model_prefix + ".";
  auto has_prefix = [&](const std::string& name) { return name.starts_with(prefix); };
  const bool module_has = std::any_of(entries_.begin(), entries_.end(),
                                      [&](const Entry& e) { return has_prefix(e.name); });
  const bool checkpoint_has =
      std::any_of(named_.begin(), named_.end(), [&](const Named& n) { return has_prefix(n.name); });
  for (Named& n : named_) {
    if (module_has && !checkpoint_has && !entry_of_.count(n.name) &&
        entry_of_.count(prefix + n.name)) {
      n.name = prefix + n.name;
    } else if (!module_has && checkpoint_has && has_prefix(n.name)) {
      n.name = n.name.substr(prefix.size());
    }
  }
}

void ModelLoad::Claim(const io::TensorLocation& location, const std::string& name,
                      std::unordered_set<std::string>& claimed,
                      const std::vector<std::regex>& ignore) {
  const io::TensorInfo& t = checkpoint_.tensor(location);
  const std::string& file = checkpoint_.files[location.file].path.string();
  if (std::any_of(ignore.begin(), ignore.end(),
                  [&](const std::regex& r) { return std::regex_match(name, r); })) {
    out_.ignored.push_back(name);
    return;
  }
  auto found = entry_of_.find(name);
  if (found == entry_of_.end()) {
    out_.unexpected.push_back(name);
    return;
  }
  if (!claimed.insert(name).second) {
    ThrowIfError(io::Status::InvalidArgument(
                     "rename-collision",
                     "two checkpoint tensors map to module name '" + name + "' after renames")
                     .WithTensor(t.name)
                     .WithPath(file));
  }
  Entry& entry = entries_[found->second];
  Group& group = groups_[entry.group];
  // A stale copy of a buffer that is always recomputed, or a tied alias also in the checkpoint.
  if (group.non_persistent || group.source || group.mismatched) {
    out_.ignored.push_back(name);
    return;
  }
  io::Result<std::vector<int64_t>> shape = TorchShape(t);
  if (!shape.ok()) ThrowIfError(std::move(shape).status().WithPath(file));
  if (!c10::IntArrayRef(*shape).equals(entry.tensor.sizes())) {
    out_.mismatched.push_back(
        ModelLoadReport::Mismatch{entry.name, *shape, entry.tensor.sizes().vec()});
    group.mismatched = true;
    return;
  }
  const c10::ScalarType from = StorageDType(t.dtype);
  if (from != entry.tensor.scalar_type() && io::DTypeBits(t.dtype) < 8) {
    ThrowIfError(io::Status::InvalidArgument(
                     "cast", std::string(io::DTypeName(t.dtype)) +
                                 " values are packed sub-byte data that torch cannot convert "
                                 "to the module's " +
                                 c10::toString(entry.tensor.scalar_type()))
                     .WithTensor(t.name)
                     .WithPath(file));
  }
  group.source = location;
  group.source_entry = found->second;
}

void ModelLoad::Match() {
  std::vector<std::regex> ignore;
  for (const std::string& pattern : options_.ignore_checkpoint) {
    ignore.push_back(CompilePattern(pattern, "ignore pattern"));
  }
  std::unordered_set<std::string> claimed;
  for (const Named& n : named_) Claim(n.location, n.name, claimed, ignore);
  for (const Group& group : groups_) {
    if (group.non_persistent || group.mismatched) continue;
    if (!group.source) {
      out_.missing.push_back(entries_[group.entries.front()].name);
      for (size_t i = 1; i < group.entries.size(); ++i) {
        out_.tied.push_back(entries_[group.entries[i]].name);
      }
      continue;
    }
    for (size_t e : group.entries) {
      if (e != group.source_entry) out_.tied.push_back(entries_[e].name);
    }
  }
}

void ModelLoad::Strict() const {
  if (!options_.strict ||
      (out_.missing.empty() && out_.unexpected.empty() && out_.mismatched.empty())) {
    return;
  }
  std::string message = "strict load:";
  std::string sep = " ";
  if (!out_.missing.empty()) {
    message +=
        sep + std::to_string(out_.missing.size()) + " missing (" + ListNames(out_.missing) + ")";
    sep = "; ";
  }
  if (!out_.unexpected.empty()) {
    message += sep + std::to_string(out_.unexpected.size()) + " unexpected (" +
               ListNames(out_.unexpected) + ")";
    sep = "; ";
  }
  if (!out_.mismatched.empty()) {
    std::vector<std::string> described;
    for (const auto& m : out_.mismatched) {
      described.push_back(m.name + ": checkpoint " + FormatSizes(m.checkpoint_shape) + ", model " +
                          FormatSizes(m.model_shape));
    }
    message +=
        sep + std::to_string(out_.mismatched.size()) + " mismatched (" + ListNames(described) + ")";
  }
  ThrowIfError(io::Status::InvalidArgument("keys", message + "; load non-strict to accept")
                   .WithPath(checkpoint_.source.string()));
}

// Every matched tensor, straight into the module's storage (through its strides when it is a
// view); a dtype change is a cast, through bounded scratch on the CPU, on the device on a GPU.
std::vector<engine::Target> ModelLoad::Targets() {
  std::vector<engine::Target> targets;
  for (const Group& group : groups_) {
    if (!group.source) continue;
    const Entry& entry = entries_[group.source_entry];
    const io::TensorInfo& t = checkpoint_.tensor(*group.source);
    const c10::Device where = entry.tensor.device();
    if (!where.is_cpu() && !where.is_cuda()) {
      ThrowIfError(
          io::Status::InvalidArgument("device", "the module holds it on " + where.str() +
                                                    "; shardstream loads into CPU and CUDA tensors")
              .WithTensor(entry.name)
              .WithPath(checkpoint_.source.string()));
    }
    out_.bytes += t.size_bytes();
    ++out_.tensors;
    targets.push_back(detail::TargetFor(*group.source, t.dtype, entry.tensor));
    if (targets.back().dtype != t.dtype) out_.cast.push_back(entry.name);
  }
  return targets;
}

// Every read has finished: fill what the checkpoint could not (non-strict), then recompute the
// non-persistent buffers.
void ModelLoad::Finalize() {
  at::NoGradGuard no_grad;  // in-place writes into parameters that require grad
  for (const Group& group : groups_) {
    if (!group.source && !group.non_persistent) entries_[group.entries.front()].tensor.zero_();
  }
  for (const Group& group : groups_) {
    if (!group.non_persistent) continue;
    for (size_t e : group.entries) {
      Entry& entry = entries_[e];
      if (entry.init == nullptr) continue;
      (*entry.init)(*entry.owner, entry.tensor);
      out_.reinitialized.push_back(entry.name);
      break;  // one storage: computed once
    }
  }
}

// The devices of a load, with LibTorch's CUDA side loaded for those that are GPUs.
DeviceMap LoadDevices(const ModelLoadOptions& options) {
  DeviceMap devices = options.devices;
  if (devices.prefixes.empty() && devices.fallback.is_cpu()) {
    devices.fallback = ParseLoadDevice(options.load.device);
  }
  auto require_cuda = [](c10::Device& device) {
    if (!device.is_cuda()) return;
    if (!device.has_index()) device.set_index(0);
    (void)detail::RequireTorchCuda(device);
  };
  require_cuda(devices.fallback);
  for (auto& [prefix, device] : devices.prefixes) require_cuda(device);
  return devices;
}

// Real tensors on another device than `devices` asks for: moved there in place, values and all
// (a tensor the checkpoint does not fill keeps its values), or rule "device" before any read.
void MoveRealTensors(torch::nn::Module& module, const DeviceMap& devices,
                     const ModelLoadOptions& options, const io::Checkpoint& checkpoint,
                     ModelLoadReport& out) {
  std::vector<std::pair<std::string, c10::Device>> real;
  std::vector<at::Tensor> tensors;
  std::unordered_set<const c10::TensorImpl*> seen;
  auto collect = [&](const std::string& name, const at::Tensor& tensor) {
    if (!tensor.defined() || tensor.is_meta()) return;
    if (!seen.insert(tensor.unsafeGetTensorImpl()).second) return;  // tied: moved once
    real.emplace_back(name, tensor.device());
    tensors.push_back(tensor);
  };
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    collect(item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) collect(item.key(), item.value());
  const std::vector<detail::DeviceMove> moves = detail::PlanDeviceMoves(real, devices);
  if (moves.empty()) return;
  if (!options.move_real_tensors) {
    const detail::DeviceMove& first = moves.front();
    ThrowIfError(io::Status::InvalidArgument(
                     "device", "the module holds it on " + first.from.str() +
                                   " and the load asks for " + first.to.str() +
                                   " (move_real_tensors is off; " + std::to_string(moves.size()) +
                                   " tensor(s) differ)")
                     .WithTensor(first.name)
                     .WithPath(checkpoint.source.string()));
  }
  const at::NoGradGuard no_grad;  // a move is no step of the graph: the TensorImpl keeps its own
  std::unordered_map<std::string, const at::Tensor*> by_name;
  for (size_t i = 0; i < real.size(); ++i) by_name.emplace(real[i].first, &tensors[i]);
  for (const detail::DeviceMove& move : moves) {
    const at::Tensor& tensor = *by_name.at(move.name);
    at::Tensor moved;
    try {
      moved = tensor.to(tensor.options().device(move.to), /*non_blocking=*/false, /*copy=*/true);
    } catch (const c10::Error& e) {
      ThrowIfError(io::Status::Error(io::StatusCode::kResourceExhausted, "memory",
                                     "cannot move it from " + move.from.str() + " to " +
                                         move.to.str() + ": " + e.what_without_backtrace())
                       .WithTensor(move.name));
    }
    // In place, as Materialize does: every holder of the tensor sees it on its new device.
    tensor.unsafeGetTensorImpl()->shallow_copy_from(moved.getIntrusivePtr());
    out.moved.push_back(detail::DescribeMove(move));
  }
}

}  // namespace

ModelLoadReport LoadInto(torch::nn::Module& module, const std::filesystem::path& path,
                         const ModelLoadOptions& options) {
  ModelLoadReport out;
  if (options.load.zero_copy) {
    ThrowIfError(
        io::Status::InvalidArgument("zero-copy",
                                    "LoadInto fills the module's own storage; zero_copy does "
                                    "not apply"));
  }
  if (options.load.dtype) {
    ThrowIfError(io::Status::InvalidArgument(
        "dtype",
        "LoadInto keeps the module's dtypes (checkpoint tensors are cast "
        "to them); build the skeleton in the dtype wanted instead"));
  }
  const DeviceMap devices = LoadDevices(options);
  const auto start = Clock::now();  // after the process's one-time CUDA start-up, as LoadFile

  auto stage_start = Clock::now();
  io::Result<io::Checkpoint> opened = io::OpenCheckpoint(path);
  ThrowIfError(opened.status());
  const io::Checkpoint& checkpoint = *opened;
  out.files = checkpoint.files.size();
  out.stages.emplace_back("headers", SecondsSince(stage_start));

  stage_start = Clock::now();
  ModelLoad load(module, checkpoint, options, out);
  load.Collect();
  load.Name();
  load.Match();
  out.stages.emplace_back("match", SecondsSince(stage_start));
  load.Strict();

  stage_start = Clock::now();
  MoveRealTensors(module, devices, options, checkpoint, out);
  out.materialized =
      Materialize(module, devices, options.load.reserve_device_memory, options.load.huge_pages);
  out.device_allocations = out.materialized.device_allocations;
  out.stages.emplace_back("materialize", SecondsSince(stage_start));

  // The fill core's own stages become "stream" (reads into place, uploads) and "cast".
  stage_start = Clock::now();
  const std::vector<engine::Target> targets = load.Targets();
  const size_t before = out.stages.size();
  detail::FillOrThrow(checkpoint, targets, options.load, out);
  double cast_seconds = 0;
  for (size_t i = before; i < out.stages.size(); ++i) {
    if (out.stages[i].first == "cast") cast_seconds += out.stages[i].second;
  }
  out.stages.resize(before);
  out.stages.emplace_back("stream", SecondsSince(stage_start) - cast_seconds);
  if (cast_seconds > 0) out.stages.emplace_back("cast", cast_seconds);

  stage_start = Clock::now();
  load.Finalize();
  out.stages.emplace_back("reinit", SecondsSince(stage_start));
  out.seconds = SecondsSince(start);
  return out;
}

}  // namespace shardstream
