#include "integration/skeleton.h"

#include "engine/host_memory.h"
#include "integration/detail/read_targets.h"
#include "integration/detail/torch_cuda.h"
#include "integration/dtype.h"
#include "integration/layers.h"
#include "io/checkpoint.h"

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

namespace shardstream {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

io::Status Error(std::string rule, std::string message) {
  return io::Status::Error(io::StatusCode::kInvalidArgument, std::move(rule), std::move(message));
}

std::string FormatSizes(c10::IntArrayRef sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) text += (i ? ", " : "") + std::to_string(sizes[i]);
  return text + "]";
}

std::regex CompilePattern(const std::string& pattern, std::string_view what) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    ThrowIfError(Error("rename", std::string(what) + " '" + pattern +
                                     "' is not a valid regular expression: " + e.what()));
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

// Frees a scratch buffer from engine::AllocateHostBuffer.
struct HostBufferDeleter {
  uint64_t size_bytes;
  void operator()(std::byte* data) const { engine::FreeHostBuffer(data, size_bytes); }
};

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
                             bool reserve_device_memory) {
  // The meta tensors, once each (tied names share a TensorImpl), with their devices.
  std::vector<std::pair<at::Tensor, c10::Device>> meta;
  std::unordered_set<const c10::TensorImpl*> seen;
  auto collect = [&](const std::string& name, const at::Tensor& tensor) {
    if (!tensor.defined() || !tensor.is_meta()) return;  // real already
    if (seen.insert(tensor.unsafeGetTensorImpl()).second) {
      meta.emplace_back(tensor, devices.For(name));
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
  for (const auto& [tensor, device] : meta) {
    if (device.is_cuda()) {
      detail::AddDeviceReservation(tensor.nbytes(), &reservations[device.index()]);
    }
  }
  std::map<c10::DeviceIndex, uint64_t> allocations_before;
  for (const auto& [index, bytes] : reservations) {
    const c10::Device device(c10::kCUDA, index);
    allocations_before[index] = detail::RequireTorchCuda(device).device_allocations(index);
    if (reserve_device_memory) detail::ReserveDeviceMemory(device, bytes);
  }

  MaterializeStats stats;
  for (const auto& [tensor, device] : meta) {
    at::Tensor real = at::empty(tensor.sizes(), tensor.options().device(device));
    // The deliberate bypass of Tensor::set_data's compatibility check (see skeleton.h): storage,
    // sizes, strides, dtype, device and dispatch keys come from `real`; the TensorImpl, its
    // autograd metadata and version counter stay, so every holder of this tensor sees the change.
    tensor.unsafeGetTensorImpl()->shallow_copy_from(real.getIntrusivePtr());
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

ModelLoadReport LoadInto(torch::nn::Module& module, const std::filesystem::path& path,
                         const ModelLoadOptions& options) {
  auto start = Clock::now();
  ModelLoadReport out;
  if (options.load.zero_copy) {
    ThrowIfError(Error("zero-copy",
                       "LoadInto fills the module's own storage; zero_copy does "
                       "not apply"));
  }
  if (options.load.dtype) {
    ThrowIfError(Error("dtype",
                       "LoadInto keeps the module's dtypes (checkpoint tensors are cast "
                       "to them); build the skeleton in the dtype wanted instead"));
  }
  DeviceMap devices = options.devices;
  if (devices.prefixes.empty() && devices.fallback.is_cpu()) {
    devices.fallback = ParseLoadDevice(options.load.device);
  }
  // CUDA targets need LibTorch's CUDA side loaded before anything is allocated there.
  auto require_cuda = [](c10::Device& device) {
    if (!device.is_cuda()) return;
    if (!device.has_index()) device.set_index(0);
    (void)detail::RequireTorchCuda(device);
  };
  require_cuda(devices.fallback);
  for (auto& [prefix, device] : devices.prefixes) require_cuda(device);
  start = Clock::now();  // after the process's one-time CUDA start-up, as LoadFile

  auto stage_start = Clock::now();
  io::Result<io::Checkpoint> opened = io::OpenCheckpoint(path);
  ThrowIfError(opened.status());
  const io::Checkpoint& checkpoint = *opened;
  const std::string source = checkpoint.source.string();
  out.files = checkpoint.files.size();
  out.stages.emplace_back("headers", SecondsSince(stage_start));

  // The module's names, grouped by TensorImpl so that tied weights are one target.
  stage_start = Clock::now();
  const BufferRegistry& registry = options.buffers ? *options.buffers : DefaultBufferRegistry();
  std::vector<Entry> entries;
  std::vector<Group> groups;
  std::unordered_map<const c10::TensorImpl*, size_t> group_of;
  std::unordered_map<std::string, size_t> entry_of;
  auto add = [&](std::string name, const at::Tensor& tensor, torch::nn::Module& owner,
                 const BufferInit* init) {
    auto [it, inserted] = group_of.emplace(tensor.unsafeGetTensorImpl(), groups.size());
    if (inserted) groups.emplace_back();
    Group& group = groups[it->second];
    group.entries.push_back(entries.size());
    group.non_persistent = group.non_persistent || init != nullptr;
    entry_of.emplace(name, entries.size());
    entries.push_back(Entry{std::move(name), tensor, &owner, init, it->second});
  };
  module.apply([&](const std::string& prefix, torch::nn::Module& owner) {
    auto full = [&](const std::string& key) { return prefix.empty() ? key : prefix + "." + key; };
    for (const auto& item : owner.named_parameters(/*recurse=*/false)) {
      add(full(item.key()), item.value(), owner, nullptr);
    }
    for (const auto& item : owner.named_buffers(/*recurse=*/false)) {
      std::string name = full(item.key());
      const BufferInit* init = registry.Find(owner, item.key(), name);
      add(std::move(name), item.value(), owner, init);
    }
  });

  // Checkpoint names after renames, then the base_model_prefix fix-up.
  struct Named {
    io::TensorLocation location;
    std::string name;
  };
  std::vector<Named> named;
  named.reserve(checkpoint.tensor_count());
  for (uint32_t f = 0; f < checkpoint.files.size(); ++f) {
    const auto& tensors = checkpoint.files[f].header.tensors;
    for (uint32_t i = 0; i < tensors.size(); ++i) {
      std::string name = tensors[i].name;
      for (const Rename& rename : options.renames) name = rename.Apply(name);
      out.file_tensors.emplace(tensors[i].name,
                               LoadReport::FileTensor{tensors[i].dtype, tensors[i].shape});
      named.push_back(Named{{f, i}, std::move(name)});
    }
  }
  if (!options.base_model_prefix.empty()) {
    const std::string prefix = options.base_model_prefix + ".";
    auto has_prefix = [&](const std::string& name) { return name.starts_with(prefix); };
    const bool module_has = std::any_of(entries.begin(), entries.end(),
                                        [&](const Entry& e) { return has_prefix(e.name); });
    const bool checkpoint_has =
        std::any_of(named.begin(), named.end(), [&](const Named& n) { return has_prefix(n.name); });
    for (Named& n : named) {
      if (module_has && !checkpoint_has && !entry_of.count(n.name) &&
          entry_of.count(prefix + n.name)) {
        n.name = prefix + n.name;
      } else if (!module_has && checkpoint_has && has_prefix(n.name)) {
        n.name = n.name.substr(prefix.size());
      }
    }
  }
  std::vector<std::regex> ignore;
  for (const std::string& pattern : options.ignore_checkpoint) {
    ignore.push_back(CompilePattern(pattern, "ignore pattern"));
  }

  std::unordered_set<std::string> claimed;
  for (const Named& n : named) {
    const io::TensorInfo& t = checkpoint.tensor(n.location);
    const std::string& file = checkpoint.files[n.location.file].path.string();
    if (std::any_of(ignore.begin(), ignore.end(),
                    [&](const std::regex& r) { return std::regex_match(n.name, r); })) {
      out.ignored.push_back(n.name);
      continue;
    }
    auto found = entry_of.find(n.name);
    if (found == entry_of.end()) {
      out.unexpected.push_back(n.name);
      continue;
    }
    if (!claimed.insert(n.name).second) {
      ThrowIfError(Error("rename-collision",
                         "two checkpoint tensors map to module name '" + n.name + "' after renames")
                       .WithTensor(t.name)
                       .WithPath(file));
    }
    Entry& entry = entries[found->second];
    Group& group = groups[entry.group];
    if (group.non_persistent) {  // a stale copy of a buffer that is always recomputed
      out.ignored.push_back(n.name);
      continue;
    }
    if (group.source || group.mismatched) {  // the checkpoint also holds a tied alias
      out.ignored.push_back(n.name);
      continue;
    }
    io::Result<std::vector<int64_t>> shape = TorchShape(t);
    if (!shape.ok()) ThrowIfError(std::move(shape).status().WithPath(file));
    if (!c10::IntArrayRef(*shape).equals(entry.tensor.sizes())) {
      out.mismatched.push_back(
          ModelLoadReport::Mismatch{entry.name, *shape, entry.tensor.sizes().vec()});
      group.mismatched = true;
      continue;
    }
    const c10::ScalarType from = StorageDType(t.dtype);
    if (from != entry.tensor.scalar_type() && io::DTypeBits(t.dtype) < 8) {
      ThrowIfError(Error("cast", std::string(io::DTypeName(t.dtype)) +
                                     " values are packed sub-byte data that torch cannot convert "
                                     "to the module's " +
                                     c10::toString(entry.tensor.scalar_type()))
                       .WithTensor(t.name)
                       .WithPath(file));
    }
    group.source = n.location;
    group.source_entry = found->second;
  }
  for (const Group& group : groups) {
    if (group.non_persistent || group.mismatched) continue;
    if (!group.source) {
      out.missing.push_back(entries[group.entries.front()].name);
      for (size_t i = 1; i < group.entries.size(); ++i) {
        out.tied.push_back(entries[group.entries[i]].name);
      }
      continue;
    }
    for (size_t e : group.entries) {
      if (e != group.source_entry) out.tied.push_back(entries[e].name);
    }
  }
  out.stages.emplace_back("match", SecondsSince(stage_start));
  if (options.strict &&
      (!out.missing.empty() || !out.unexpected.empty() || !out.mismatched.empty())) {
    std::string message = "strict load:";
    std::string sep = " ";
    if (!out.missing.empty()) {
      message +=
          sep + std::to_string(out.missing.size()) + " missing (" + ListNames(out.missing) + ")";
      sep = "; ";
    }
    if (!out.unexpected.empty()) {
      message += sep + std::to_string(out.unexpected.size()) + " unexpected (" +
                 ListNames(out.unexpected) + ")";
      sep = "; ";
    }
    if (!out.mismatched.empty()) {
      std::vector<std::string> described;
      for (const auto& m : out.mismatched) {
        described.push_back(m.name + ": checkpoint " + FormatSizes(m.checkpoint_shape) +
                            ", model " + FormatSizes(m.model_shape));
      }
      message += sep + std::to_string(out.mismatched.size()) + " mismatched (" +
                 ListNames(described) + ")";
    }
    ThrowIfError(Error("keys", message + "; load non-strict to accept").WithPath(source));
  }

  stage_start = Clock::now();
  out.materialized = Materialize(module, devices, options.load.reserve_device_memory);
  out.device_allocations = out.materialized.device_allocations;
  out.stages.emplace_back("materialize", SecondsSince(stage_start));

  // Targets: straight into the module's storage where dtype and layout allow, else via scratch.
  struct CastTarget {
    io::TensorLocation location;
    at::Tensor destination;
    std::vector<int64_t> shape;
    c10::ScalarType from;
    uint64_t size_bytes;
  };
  std::vector<engine::LoadTarget> direct_targets;
  std::vector<CastTarget> cast_targets;
  // Per CUDA device: the targets it holds, loaded by one pipeline per device.
  struct DeviceLoad {
    std::vector<engine::LoadTarget> targets;
    std::vector<cuda::DeviceTarget> device_targets;
  };
  std::map<int, DeviceLoad> device_loads;
  uint64_t largest_cast = 0;
  uint64_t cast_total = 0;
  for (const Group& group : groups) {
    if (!group.source) continue;
    const Entry& entry = entries[group.source_entry];
    const io::TensorInfo& t = checkpoint.tensor(*group.source);
    const c10::Device where = entry.tensor.device();
    if (!where.is_cpu() && !where.is_cuda()) {
      ThrowIfError(Error("device", "the module holds it on " + where.str() +
                                       "; shardstream loads into CPU and CUDA tensors")
                       .WithTensor(entry.name)
                       .WithPath(source));
    }
    out.bytes += t.size_bytes();
    ++out.tensors;
    const c10::ScalarType from = StorageDType(t.dtype);
    if (where.is_cuda()) {
      // Raw bytes go up through the device's pipeline; a dtype change is a cast on the device.
      const std::optional<io::DType> to = from == entry.tensor.scalar_type()
                                              ? std::optional<io::DType>(t.dtype)
                                              : SafetensorsDType(entry.tensor.scalar_type());
      if (!entry.tensor.is_contiguous() || !to) {
        ThrowIfError(Error("cast", "cannot load " + std::string(io::DTypeName(t.dtype)) +
                                       " into a " + c10::toString(entry.tensor.scalar_type()) +
                                       (entry.tensor.is_contiguous() ? "" : " non-contiguous") +
                                       " CUDA tensor")
                         .WithTensor(entry.name)
                         .WithPath(source));
      }
      auto* data = static_cast<std::byte*>(entry.tensor.data_ptr());
      DeviceLoad& load = device_loads[static_cast<int>(where.index())];
      load.targets.push_back(engine::LoadTarget{*group.source, data});
      load.device_targets.push_back(cuda::DeviceTarget{data, t.size_bytes(), t.dtype, *to});
      if (*to != t.dtype) out.cast.push_back(entry.name);
      continue;
    }
    if (from == entry.tensor.scalar_type() && entry.tensor.is_contiguous()) {
      direct_targets.push_back(
          engine::LoadTarget{*group.source, static_cast<std::byte*>(entry.tensor.data_ptr())});
      continue;
    }
    cast_targets.push_back(
        CastTarget{*group.source, entry.tensor, *TorchShape(t), from, t.size_bytes()});
    out.cast.push_back(entry.name);
    largest_cast = std::max(largest_cast, t.size_bytes());
    cast_total += t.size_bytes();
  }

  stage_start = Clock::now();
  const bool direct = ChooseDirectIo(checkpoint, options.load, out);
  if (!direct_targets.empty()) {
    (void)detail::ReadTargets(checkpoint, direct_targets, options.load, direct, out);
  }
  for (auto& [device, load] : device_loads) {
    for (auto& [stage, seconds] :
         detail::ReadDeviceTargets(checkpoint, device, load.targets, std::move(load.device_targets),
                                   options.load, direct, out)) {
      if (stage == "pin") out.stages.emplace_back("pin cuda:" + std::to_string(device), seconds);
    }
  }
  out.stages.emplace_back("stream", SecondsSince(stage_start));

  at::NoGradGuard no_grad;  // in-place writes into parameters that require grad
  if (!cast_targets.empty()) {
    // Scratch holds a batch of raw checkpoint tensors: at most the staging bound, or the largest
    // such tensor when that is bigger, never the whole checkpoint.
    stage_start = Clock::now();
    constexpr uint64_t kAlignBytes = 64;
    const uint64_t scratch_bytes =
        std::min(cast_total + kAlignBytes * cast_targets.size(),
                 std::max(options.load.staging_bytes, largest_cast + kAlignBytes));
    io::Result<std::byte*> allocated = engine::AllocateHostBuffer(scratch_bytes);
    ThrowIfError(allocated.status());
    std::unique_ptr<std::byte, HostBufferDeleter> scratch(*allocated,
                                                          HostBufferDeleter{scratch_bytes});
    for (size_t first = 0; first < cast_targets.size();) {
      std::vector<engine::LoadTarget> batch;
      std::vector<uint64_t> offsets;
      uint64_t used = 0;
      size_t end = first;
      for (; end < cast_targets.size(); ++end) {
        const uint64_t offset = (used + kAlignBytes - 1) / kAlignBytes * kAlignBytes;
        if (end > first && offset + cast_targets[end].size_bytes > scratch_bytes) break;
        batch.push_back(engine::LoadTarget{cast_targets[end].location, scratch.get() + offset});
        offsets.push_back(offset);
        used = offset + cast_targets[end].size_bytes;
      }
      (void)detail::ReadTargets(checkpoint, batch, options.load, direct, out);
      for (size_t i = first; i < end; ++i) {
        CastTarget& target = cast_targets[i];
        const at::Tensor raw = at::from_blob(scratch.get() + offsets[i - first], target.shape,
                                             at::TensorOptions().dtype(target.from));
        try {
          target.destination.copy_(raw);
        } catch (const c10::Error& e) {
          ThrowIfError(Error("cast", std::string("torch cannot cast ") +
                                         c10::toString(target.from) + " to " +
                                         c10::toString(target.destination.scalar_type()) + ": " +
                                         e.what_without_backtrace())
                           .WithTensor(checkpoint.tensor(target.location).name)
                           .WithPath(checkpoint.files[target.location.file].path.string()));
        }
      }
      first = end;
    }
    out.stages.emplace_back("cast", SecondsSince(stage_start));
  }

  // Every read has finished: fill what the checkpoint could not (non-strict), then recompute the
  // non-persistent buffers.
  for (const Group& group : groups) {
    if (!group.source && !group.non_persistent) entries[group.entries.front()].tensor.zero_();
  }
  stage_start = Clock::now();
  for (const Group& group : groups) {
    if (!group.non_persistent) continue;
    for (size_t e : group.entries) {
      Entry& entry = entries[e];
      if (entry.init == nullptr) continue;
      (*entry.init)(*entry.owner, entry.tensor);
      out.reinitialized.push_back(entry.name);
      break;  // one storage: computed once
    }
  }
  out.stages.emplace_back("reinit", SecondsSince(stage_start));
  out.seconds = SecondsSince(start);
  return out;
}

}  // namespace shardstream
