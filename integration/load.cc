#include "shardstream/load.h"

#include "engine/fill.h"
#include "engine/host_memory.h"
#include "engine/mapped.h"
#include "integration/detail/errors.h"
#include "integration/detail/fill_torch.h"
#include "integration/detail/torch_cuda.h"
#include "integration/dtype.h"
#include "io/checkpoint.h"
#include "io/residency.h"
#include "io/stopwatch.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/Device.h>
#include <c10/util/accumulate.h>

#include <chrono>
#include <memory>

namespace shardstream {
namespace {

using io::Clock;
using io::SecondsSince;

}  // namespace

c10::Device ParseLoadDevice(const std::string& name) {
  std::optional<c10::Device> device;
  try {
    device.emplace(name);
  } catch (const std::exception&) {
  }
  if (!device || !(device->is_cpu() || device->is_cuda())) {
    ThrowIfError(io::Status::InvalidArgument(
        "device", "'" + name + "' is not a device (expected cpu or cuda:N)"));
  }
  if (device->is_cuda() && !device->has_index()) device->set_index(0);
  return *device;
}

// ErrorCode mirrors io::StatusCode value for value (less kOk), so the two convert by cast.
#define SHARDSTREAM_SAME_CODE(name) \
  static_assert(static_cast<int>(ErrorCode::name) == static_cast<int>(io::StatusCode::name))
SHARDSTREAM_SAME_CODE(kInvalidArgument);
SHARDSTREAM_SAME_CODE(kNotFound);
SHARDSTREAM_SAME_CODE(kInvalidFormat);
SHARDSTREAM_SAME_CODE(kIoError);
SHARDSTREAM_SAME_CODE(kPermissionDenied);
SHARDSTREAM_SAME_CODE(kResourceExhausted);
SHARDSTREAM_SAME_CODE(kUnsupported);
SHARDSTREAM_SAME_CODE(kCancelled);
SHARDSTREAM_SAME_CODE(kInternal);
#undef SHARDSTREAM_SAME_CODE

ErrorCode ToErrorCode(io::StatusCode code) {
  // An error Status is never kOk; should one arrive, it is a bug, reported as such.
  return code == io::StatusCode::kOk ? ErrorCode::kInternal : static_cast<ErrorCode>(code);
}

std::string_view ErrorCodeName(ErrorCode code) {
  return io::StatusCodeName(static_cast<io::StatusCode>(code));
}

LoadError ToLoadError(const io::Status& status) {
  return LoadError(status.ToString(), LoadError::Fields{.rule = status.rule(),
                                                        .file = status.path(),
                                                        .tensor = status.tensor(),
                                                        .offset = status.offset(),
                                                        .code = ToErrorCode(status.code()),
                                                        .sys_errno = status.sys_errno()});
}

void ThrowIfError(const io::Status& status) {
  if (!status.ok()) throw ToLoadError(status);
}

std::string_view Version() { return SHARDSTREAM_VERSION; }

namespace {

// One checkpoint tensor as LoadFile will hold it.
struct Planned {
  io::TensorLocation location;
  std::vector<int64_t> shape;
  c10::ScalarType dtype;  // the tensor's: as stored, or LoadOptions::dtype for a cast
};

// Shapes and dtypes first, so that a bad tensor or cast fails before any allocation or read.
std::vector<Planned> PlanTensors(const io::Checkpoint& checkpoint, const LoadOptions& options,
                                 LoadReport& out) {
  std::vector<Planned> planned;
  planned.reserve(checkpoint.tensor_count());
  for (uint32_t f = 0; f < checkpoint.files.size(); ++f) {
    const std::string& file = checkpoint.files[f].path.string();
    const auto& tensors = checkpoint.files[f].header.tensors;
    for (uint32_t i = 0; i < tensors.size(); ++i) {
      const io::TensorInfo& t = tensors[i];
      auto shape = TorchShape(t);
      if (!shape.ok()) ThrowIfError(std::move(shape).status().WithPath(file));
      const std::string dtype_name(io::DTypeName(t.dtype));
      out.file_tensors.emplace(t.name, LoadReport::FileTensor{dtype_name, t.shape});
      if (!TorchDType(t.dtype)) out.raw_dtypes.emplace(t.name, dtype_name);
      // Packed sub-byte types have no conversion kernel in torch: refuse before reading anything.
      if (options.dtype && io::DTypeBits(t.dtype) < 8) {
        ThrowIfError(io::Status::InvalidArgument(
                         "cast", std::string(io::DTypeName(t.dtype)) +
                                     " values are packed sub-byte data that torch cannot "
                                     "convert to " +
                                     c10::toString(*options.dtype) +
                                     "; load without a dtype to get them as stored")
                         .WithTensor(t.name)
                         .WithPath(file));
      }
      const c10::ScalarType stored = StorageDType(t.dtype);
      const c10::ScalarType dtype =
          options.dtype && at::isFloatingType(stored) ? *options.dtype : stored;
      planned.push_back(Planned{{f, i}, std::move(*shape), dtype});
    }
  }
  return planned;
}

// zero_copy: views into private (copy-on-write) mappings of the files (engine/mapped.h), each
// holding its file's mapping, made resident by the engine's populate workers before the load
// returns (stage "populate", its bytes in a note).
TensorMap MapTensors(const io::Checkpoint& checkpoint, const std::vector<Planned>& planned,
                     const LoadOptions& options, LoadReport& out) {
  auto stage_start = Clock::now();
  out.io = "zero-copy";
  io::Result<engine::MappedCheckpoint> mapped = engine::MappedCheckpoint::Map(checkpoint);
  ThrowIfError(mapped.status());
  out.stages.emplace_back("map", SecondsSince(stage_start));
  stage_start = Clock::now();
  TensorMap tensors;
  std::vector<engine::PopulateRange> ranges;
  for (const Planned& p : planned) {
    const io::TensorInfo& t = checkpoint.tensor(p.location);
    at::TensorOptions tensor_options = at::TensorOptions().dtype(p.dtype);
    at::Tensor tensor;
    if (t.size_bytes() == 0) {
      tensor = at::empty(p.shape, tensor_options);
    } else {
      std::shared_ptr<io::MappedFile> keep = mapped->file(p.location.file);
      std::byte* data = mapped->Data(p.location.file).data() + t.begin;
      tensor = at::from_blob(
          data, p.shape, [keep](void*) mutable { keep.reset(); }, tensor_options);
      ranges.push_back({p.location.file, t.begin, t.size_bytes()});
    }
    tensors.emplace(t.name, std::move(tensor));
  }
  out.stages.emplace_back("views", SecondsSince(stage_start));
  engine::PopulateOptions populate;
  populate.threads = options.threads;
  engine::PopulateReport populated;
  ThrowIfError(engine::Populate(*mapped, ranges, populate, &populated));
  out.stages.emplace_back("populate", populated.seconds);
  out.notes.push_back("populated " + std::to_string(populated.populated_bytes) + " bytes in " +
                      std::to_string(populated.chunks) + " chunks on " +
                      std::to_string(populated.threads) + " threads (" + populated.method + ")");
  return tensors;
}

// Owned tensors, allocated once and uninitialised: host memory from engine::AllocateHostBuffer
// (huge pages when asked), device memory split from one caching-allocator block.
at::Tensor Allocate(const io::Checkpoint& checkpoint, const Planned& p, c10::Device device,
                    bool huge_pages) {
  const io::TensorInfo& t = checkpoint.tensor(p.location);
  if (device.is_cuda()) {
    return at::empty(p.shape, at::TensorOptions().dtype(p.dtype).device(device));
  }
  const uint64_t bytes =
      static_cast<uint64_t>(c10::multiply_integers(p.shape)) * c10::elementSize(p.dtype);
  // F4 holds two values per byte and F6 loads as bytes: the file's size is the tensor's.
  const uint64_t size = io::DTypeBits(t.dtype) < 8 ? t.size_bytes() : bytes;
  auto buffer = engine::AllocateHostBuffer(size, huge_pages);
  if (!buffer.ok()) {
    ThrowIfError(std::move(buffer).status().WithTensor(t.name).WithPath(
        checkpoint.files[p.location.file].path.string()));
  }
  return at::from_blob(
      *buffer, p.shape,
      [size](void* ptr) { engine::FreeHostBuffer(static_cast<std::byte*>(ptr), size); },
      at::TensorOptions().dtype(p.dtype));
}

}  // namespace

LoadResult LoadFile(const std::filesystem::path& path, const LoadOptions& options) {
  LoadResult result;
  LoadReport& out = result.report;
  const c10::Device device = ParseLoadDevice(options.device);
  const detail::TorchCudaPlugin* torch_cuda = nullptr;
  if (device.is_cuda()) {
    if (options.zero_copy) {
      ThrowIfError(
          io::Status::InvalidArgument("device",
                                      "zero-copy tensors view file mappings in host memory; "
                                      "they cannot live on " +
                                          device.str()));
    }
    // The process's one-time CUDA start-up, before the clock starts (see RequireTorchCuda).
    torch_cuda = &detail::RequireTorchCuda(device);
  }
  const auto start = Clock::now();

  auto stage_start = Clock::now();
  io::Result<io::Checkpoint> opened = io::OpenCheckpoint(path);
  ThrowIfError(opened.status());
  const io::Checkpoint& checkpoint = *opened;
  out.stages.emplace_back("headers", SecondsSince(stage_start));
  out.files = checkpoint.files.size();
  out.tensors = checkpoint.tensor_count();
  out.bytes = checkpoint.data_bytes();

  stage_start = Clock::now();
  const std::vector<Planned> planned = PlanTensors(checkpoint, options, out);
  // Every failure below throws, which frees whatever the map holds: a failed load never hands
  // out half-filled tensors.
  if (options.zero_copy) {
    result.tensors = MapTensors(checkpoint, planned, options, out);
    out.seconds = SecondsSince(start);
    return result;
  }
  const uint64_t allocations_before =
      torch_cuda ? torch_cuda->device_allocations(device.index()) : 0;
  if (device.is_cuda() && options.reserve_device_memory) {
    uint64_t reservation = 0;
    for (const Planned& p : planned) {
      const auto elements = static_cast<uint64_t>(c10::multiply_integers(p.shape));
      detail::AddDeviceReservation(elements * c10::elementSize(p.dtype), &reservation);
    }
    detail::ReserveDeviceMemory(device, reservation);
  }
  std::vector<engine::Target> targets;
  targets.reserve(planned.size());
  for (const Planned& p : planned) {
    const io::TensorInfo& t = checkpoint.tensor(p.location);
    at::Tensor tensor = Allocate(checkpoint, p, device, options.huge_pages);
    targets.push_back(detail::TargetFor(p.location, t.dtype, tensor));
    result.tensors.emplace(t.name, std::move(tensor));
  }
  if (torch_cuda) {
    out.device_allocations = torch_cuda->device_allocations(device.index()) - allocations_before;
  }
  out.stages.emplace_back("allocate", SecondsSince(stage_start));
  detail::FillOrThrow(checkpoint, targets, options, out);
  out.seconds = SecondsSince(start);
  return result;
}

LoadReport ReadAndDiscard(const std::filesystem::path& path, const ReadOptions& options) {
  LoadReport out;
  const auto start = Clock::now();
  io::Result<io::Checkpoint> opened = io::OpenCheckpoint(path);
  ThrowIfError(opened.status());
  const io::Checkpoint& checkpoint = *opened;
  out.stages.emplace_back("headers", SecondsSince(start));
  out.files = checkpoint.files.size();
  out.tensors = checkpoint.tensor_count();
  out.bytes = checkpoint.data_bytes();
  std::vector<engine::Target> targets;
  targets.reserve(checkpoint.tensor_count());
  for (uint32_t f = 0; f < checkpoint.files.size(); ++f) {
    for (uint32_t i = 0; i < checkpoint.files[f].header.tensors.size(); ++i) {
      targets.emplace_back(io::TensorLocation{f, i}, nullptr);
    }
  }
  engine::FillSetup setup;
  setup.read = options;
  setup.discard = true;
  io::Status status = engine::Fill(checkpoint, targets, setup, &out);
  if (!status.ok()) {
    ThrowIfError(status.path().empty() ? std::move(status).WithPath(checkpoint.source.string())
                                       : status);
  }
  out.seconds = SecondsSince(start);
  return out;
}

TensorMap LoadFile(const std::filesystem::path& path, const LoadOptions& options,
                   LoadReport* report) {
  LoadResult result = LoadFile(path, options);
  if (report != nullptr) *report = std::move(result.report);
  return std::move(result.tensors);
}

}  // namespace shardstream
