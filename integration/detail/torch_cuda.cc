#include "integration/detail/torch_cuda.h"

#include "cuda/device.h"
#include "integration/detail/errors.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <dlfcn.h>
#include <limits.h>
#include <mutex>
#include <string>
#include <vector>

#include "shardstream/load.h"

namespace shardstream::detail {
namespace {

constexpr const char* kPluginName = "libshardstream_torch_cuda.so";
constexpr const char* kEntryPoint = "shardstream_torch_cuda_plugin";
using EntryPoint = const TorchCudaPlugin* (*)();

io::Status DeviceError(std::string message) {
  return io::Status::Error(io::StatusCode::kUnsupported, "device", std::move(message));
}

// The directory of the shared object (or executable) this code was linked into: libshardstream.so
// in an installed prefix (the plugin is installed next to it), the shardstream command in a build
// tree. dladdr on one of our own functions, so it follows the library wherever it was installed
// or copied, with no build path baked in.
std::string OwnDir() {
  Dl_info info{};
  if (::dladdr(reinterpret_cast<const void*>(&OwnDir), &info) == 0 || info.dli_fname == nullptr)
    return "";
  char resolved[PATH_MAX];
  const std::string path = ::realpath(info.dli_fname, resolved) ? resolved : info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

std::string ExecutableDir() {
  char path[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) return "";
  std::string exe(path, static_cast<size_t>(n));
  const size_t slash = exe.rfind('/');
  return slash == std::string::npos ? "" : exe.substr(0, slash);
}

// The plugin's entry point: already in the process (linked in), or dlopened from the first place
// that has it: $SHARDSTREAM_TORCH_CUDA_PLUGIN (a path), next to the library holding this code,
// next to the executable, then by name (LD_LIBRARY_PATH, the caller's RUNPATH, the system's
// paths). On failure, *why lists every place tried and what dlopen said.
const TorchCudaPlugin* FindPlugin(std::string* why) {
  if (void* entry = ::dlsym(RTLD_DEFAULT, kEntryPoint)) {
    return reinterpret_cast<EntryPoint>(entry)();
  }
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("SHARDSTREAM_TORCH_CUDA_PLUGIN"); env && *env)
    candidates.emplace_back(env);
  for (const std::string& dir : {OwnDir(), ExecutableDir()}) {
    const std::string candidate = dir + "/" + kPluginName;
    if (!dir.empty() &&
        std::find(candidates.begin(), candidates.end(), candidate) == candidates.end())
      candidates.push_back(candidate);
  }
  candidates.push_back(kPluginName);
  for (const std::string& candidate : candidates) {
    void* handle = ::dlopen(candidate.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (handle == nullptr) {
      const char* error = ::dlerror();
      *why += "\n  " + candidate + ": " + (error ? error : "not loadable");
      continue;
    }
    if (void* entry = ::dlsym(handle, kEntryPoint)) return reinterpret_cast<EntryPoint>(entry)();
    *why += "\n  " + candidate + ": no " + kEntryPoint;
  }
  return nullptr;
}

}  // namespace

const TorchCudaPlugin& RequireTorchCuda(c10::Device device) {
  static std::once_flag once;
  static const TorchCudaPlugin* plugin = nullptr;
  static io::Status failure;
  std::call_once(once, [] {
    if (!cuda::BuiltWithCuda()) {
      failure = DeviceError(
          "this build of shardstream has no CUDA support (configure with the CUDA toolkit "
          "installed, or -DSHARDSTREAM_WITH_CUDA=ON to require it)");
      return;
    }
    const cuda::DeviceProbe probe = cuda::ProbeDevices();
    if (probe.device_count == 0) {
      failure = DeviceError("no usable CUDA device: " + probe.reason);
      return;
    }
    std::string why;
    const TorchCudaPlugin* found = FindPlugin(&why);
    if (found == nullptr) {
      failure = DeviceError(std::string("cannot load shardstream's LibTorch CUDA support (") +
                            kPluginName + "; it needs LibTorch with CUDA):" + why);
      return;
    }
    if (found->abi != kTorchCudaPluginAbi || found->device_count == nullptr ||
        found->peak_allocated_bytes == nullptr || found->torch_has_cuda == nullptr) {
      failure = DeviceError(std::string(kPluginName) + " is from another shardstream version");
      return;
    }
    if (!found->torch_has_cuda()) {
      failure = DeviceError(std::string(kPluginName) +
                            " loaded, but LibTorch's CUDA library (libtorch_cuda) did not register "
                            "its kernels: is this LibTorch built with CUDA?");
      return;
    }
    plugin = found;
  });
  ThrowIfError(failure);
  const int count = plugin->device_count();
  if (device.index() >= count) {
    ThrowIfError(DeviceError(device.str() + " does not exist: torch sees " + std::to_string(count) +
                             " CUDA device" + (count == 1 ? "" : "s")));
  }
  ThrowIfError(plugin->init_device(device.index()));
  return *plugin;
}

void AddDeviceReservation(uint64_t tensor_bytes, uint64_t* total) {
  // The allocator's thresholds (c10/cuda/CUDACachingAllocator.cpp): blocks of at most 1 MiB come
  // from a separate small pool; sizes are rounded up to 512 bytes.
  constexpr uint64_t kSmallSize = 1ull << 20;
  constexpr uint64_t kMinBlockSize = 512;
  if (tensor_bytes <= kSmallSize) return;
  *total += (tensor_bytes + kMinBlockSize - 1) / kMinBlockSize * kMinBlockSize;
}

void ReserveDeviceMemory(c10::Device device, uint64_t bytes) {
  if (!device.is_cuda() || bytes == 0) return;
  try {
    (void)at::empty({static_cast<int64_t>(bytes)},
                    at::TensorOptions().dtype(at::kByte).device(device));
  } catch (const c10::Error&) {
    // Out of memory as one block (or fragmented): the per-tensor allocations decide.
  }
}

}  // namespace shardstream::detail
