#include "integration/load.h"

#include "engine/host_memory.h"
#include "integration/detail/read_targets.h"
#include "integration/detail/torch_cuda.h"
#include "integration/dtype.h"
#include "io/checkpoint.h"
#include "io/residency.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/Device.h>
#include <c10/util/accumulate.h>

#include <chrono>
#include <memory>

namespace shardstream {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

io::Status LoadStatus(std::string rule, std::string message) {
  return io::Status::Error(io::StatusCode::kInvalidArgument, std::move(rule), std::move(message));
}

}  // namespace

c10::Device ParseLoadDevice(const std::string& name) {
  std::optional<c10::Device> device;
  try {
    device.emplace(name);
  } catch (const std::exception&) {
  }
  if (!device || !(device->is_cpu() || device->is_cuda())) {
    ThrowIfError(LoadStatus("device", "'" + name + "' is not a device (expected cpu or cuda:N)"));
  }
  if (device->is_cuda() && !device->has_index()) device->set_index(0);
  return *device;
}

std::optional<IoMode> ParseIoMode(std::string_view name) {
  if (name == "auto") return IoMode::kAuto;
  if (name == "pread") return IoMode::kPread;
  if (name == "mmap") return IoMode::kMmap;
  if (name == "uring" || name == "io_uring") return IoMode::kUring;
  return std::nullopt;
}

std::optional<DirectIo> ParseDirectIo(std::string_view name) {
  if (name == "off") return DirectIo::kOff;
  if (name == "on") return DirectIo::kOn;
  if (name == "auto") return DirectIo::kAuto;
  return std::nullopt;
}

std::optional<GpuUpload> ParseGpuUpload(std::string_view name) {
  if (name == "auto") return GpuUpload::kAuto;
  if (name == "staged") return GpuUpload::kStaged;
  if (name == "page-cache") return GpuUpload::kPageCache;
  return std::nullopt;
}

LoadError::LoadError(const io::Status& status)
    : std::runtime_error(status.ToString()),
      rule_(status.rule()),
      file_(status.path()),
      tensor_(status.tensor()),
      offset_(status.offset()),
      code_(status.code()) {}

void ThrowIfError(const io::Status& status) {
  if (!status.ok()) throw LoadError(status);
}

engine::PipelineOptions StagedPipelineOptions(const LoadOptions& options) {
  engine::PipelineOptions pipeline;
  // Staged reads are where queue depth pays: `auto` is io_uring here, pread where it is refused.
  pipeline.backend = options.io == IoMode::kPread  ? io::BackendKind::kPread
                     : options.io == IoMode::kMmap ? io::BackendKind::kMmap
                                                   : io::BackendKind::kUring;
  pipeline.fall_back_to_pread = true;
  if (options.chunk_bytes != 0) pipeline.chunk_bytes = options.chunk_bytes;
  pipeline.staging_bytes = options.staging_bytes;
  pipeline.queue_depth = options.queue_depth;
  pipeline.sqpoll = options.sqpoll;
  pipeline.copy_threads = options.threads;
  pipeline.progress = options.progress;
  return pipeline;
}

bool ChooseDirectIo(const io::Checkpoint& checkpoint, const LoadOptions& options,
                    LoadReport& report) {
  const bool mmap = options.io == IoMode::kMmap;
  bool direct = options.direct == DirectIo::kOn;
  if (options.direct == DirectIo::kAuto && !mmap) {
    io::Result<double> resident = io::CheckpointResidentFraction(checkpoint);
    ThrowIfError(resident.status());
    report.resident_fraction = *resident;
    direct = report.resident_fraction < 0.5;
  }
  if (direct && mmap) {
    ThrowIfError(io::Status::Error(io::StatusCode::kInvalidArgument, "direct",
                                   "O_DIRECT reads need --io pread or uring, not mmap"));
  }
  return direct;
}

TensorMap LoadFile(const std::filesystem::path& path, const LoadOptions& options,
                   LoadReport* report) {
  LoadReport local_report;
  LoadReport& out = report ? *report : local_report;
  out = LoadReport{};
  const c10::Device device = ParseLoadDevice(options.device);
  const detail::TorchCudaPlugin* torch_cuda = nullptr;
  if (device.is_cuda()) {
    if (options.zero_copy) {
      ThrowIfError(LoadStatus("device",
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

  // Shapes and dtypes first, so that a bad tensor or cast fails before any allocation or read.
  stage_start = Clock::now();
  struct Planned {
    io::TensorLocation location;
    std::vector<int64_t> shape;
    c10::ScalarType dtype;
  };
  std::vector<Planned> planned;
  planned.reserve(out.tensors);
  for (uint32_t f = 0; f < checkpoint.files.size(); ++f) {
    const auto& tensors = checkpoint.files[f].header.tensors;
    for (uint32_t i = 0; i < tensors.size(); ++i) {
      const io::TensorInfo& t = tensors[i];
      auto shape = TorchShape(t);
      if (!shape.ok())
        ThrowIfError(std::move(shape).status().WithPath(checkpoint.files[f].path.string()));
      out.file_tensors.emplace(t.name, LoadReport::FileTensor{t.dtype, t.shape});
      if (!TorchDType(t.dtype)) out.raw_dtypes.emplace(t.name, t.dtype);
      // Packed sub-byte types have no conversion kernel in torch: refuse before reading anything.
      if (options.dtype && io::DTypeBits(t.dtype) < 8) {
        ThrowIfError(LoadStatus("cast", std::string(io::DTypeName(t.dtype)) +
                                            " values are packed sub-byte data that torch cannot "
                                            "convert to " +
                                            c10::toString(*options.dtype) +
                                            "; load without a dtype to get them as stored")
                         .WithTensor(t.name)
                         .WithPath(checkpoint.files[f].path.string()));
      }
      planned.push_back(Planned{{f, i}, std::move(*shape), StorageDType(t.dtype)});
    }
  }

  // Every failure below throws, which frees whatever `tensors` holds: a failed load never hands
  // out half-filled tensors.
  TensorMap tensors;
  if (options.zero_copy) {
    out.io = "zero-copy";
    io::Result<io::FileSet> files = io::FileSet::Open(checkpoint);
    ThrowIfError(files.status());
    std::vector<std::shared_ptr<io::MappedFile>> maps;
    for (size_t f = 0; f < files->size(); ++f) {
      auto map = io::MappedFile::Map(files->fd(f), files->size_bytes(f), files->path(f),
                                     /*writable=*/true);
      ThrowIfError(map.status());
      maps.push_back(std::move(*map));
    }
    out.stages.emplace_back("map", SecondsSince(stage_start));
    stage_start = Clock::now();
    for (const Planned& p : planned) {
      const io::CheckpointFile& file = checkpoint.files[p.location.file];
      const io::TensorInfo& t = checkpoint.tensor(p.location);
      at::TensorOptions tensor_options = at::TensorOptions().dtype(p.dtype);
      at::Tensor tensor;
      if (t.size_bytes() == 0) {
        tensor = at::empty(p.shape, tensor_options);
      } else {
        std::shared_ptr<io::MappedFile> keep = maps[p.location.file];
        std::byte* data = keep->data() + file.header.data_offset() + t.begin;
        tensor = at::from_blob(
            data, p.shape, [keep](void*) mutable { keep.reset(); }, tensor_options);
      }
      tensors.emplace(t.name, std::move(tensor));
    }
    out.stages.emplace_back("views", SecondsSince(stage_start));
  } else if (device.is_cuda()) {
    // Device tensors, allocated once and uninitialised; bytes go up raw and a `dtype` cast runs on
    // the device, never on the CPU.
    std::vector<engine::LoadTarget> targets;
    std::vector<cuda::DeviceTarget> device_targets;
    targets.reserve(planned.size());
    device_targets.reserve(planned.size());
    // The dtype on the device: `dtype` for floating-point tensors, else as stored.
    auto device_dtype = [&](const Planned& p) {
      return options.dtype && at::isFloatingType(p.dtype) ? *options.dtype : p.dtype;
    };
    const uint64_t allocations_before = torch_cuda->device_allocations(device.index());
    if (options.reserve_device_memory) {
      uint64_t reservation = 0;
      for (const Planned& p : planned) {
        const auto elements = static_cast<uint64_t>(c10::multiply_integers(p.shape));
        detail::AddDeviceReservation(elements * c10::elementSize(device_dtype(p)), &reservation);
      }
      detail::ReserveDeviceMemory(device, reservation);
    }
    for (const Planned& p : planned) {
      const io::TensorInfo& t = checkpoint.tensor(p.location);
      const c10::ScalarType dtype = device_dtype(p);
      const bool cast = dtype != p.dtype;
      at::Tensor tensor = at::empty(p.shape, at::TensorOptions().dtype(dtype).device(device));
      auto* data = static_cast<std::byte*>(tensor.data_ptr());
      targets.push_back(engine::LoadTarget{p.location, data});
      device_targets.push_back(cuda::DeviceTarget{data, t.size_bytes(), t.dtype,
                                                  cast ? *SafetensorsDType(dtype) : t.dtype});
      tensors.emplace(t.name, std::move(tensor));
    }
    out.device_allocations = torch_cuda->device_allocations(device.index()) - allocations_before;
    out.stages.emplace_back("allocate", SecondsSince(stage_start));
    const bool direct = ChooseDirectIo(checkpoint, options, out);
    for (auto& stage :
         detail::ReadDeviceTargets(checkpoint, static_cast<int>(device.index()), targets,
                                   std::move(device_targets), options, direct, out)) {
      out.stages.push_back(std::move(stage));
    }
  } else {
    std::vector<engine::LoadTarget> targets;
    targets.reserve(planned.size());
    for (const Planned& p : planned) {
      const io::TensorInfo& t = checkpoint.tensor(p.location);
      const uint64_t bytes = t.size_bytes();
      auto buffer = engine::AllocateHostBuffer(bytes, options.huge_pages);
      if (!buffer.ok()) {
        ThrowIfError(std::move(buffer).status().WithTensor(t.name).WithPath(
            checkpoint.files[p.location.file].path.string()));
      }
      std::byte* data = *buffer;
      at::Tensor tensor = at::from_blob(
          data, p.shape,
          [bytes](void* ptr) { engine::FreeHostBuffer(static_cast<std::byte*>(ptr), bytes); },
          at::TensorOptions().dtype(p.dtype));
      targets.push_back(engine::LoadTarget{p.location, static_cast<std::byte*>(tensor.data_ptr())});
      tensors.emplace(checkpoint.tensor(p.location).name, std::move(tensor));
    }
    out.stages.emplace_back("allocate", SecondsSince(stage_start));

    // Direct or buffered: decided once, before reading, from what the page cache holds.
    const bool direct = ChooseDirectIo(checkpoint, options, out);
    for (auto& stage : detail::ReadTargets(checkpoint, targets, options, direct, out)) {
      out.stages.push_back(std::move(stage));
    }
  }

  if (options.dtype && !device.is_cuda()) {  // CUDA loads cast on the device, above
    stage_start = Clock::now();
    for (auto& [name, tensor] : tensors) {
      if (!at::isFloatingType(tensor.scalar_type()) || tensor.scalar_type() == *options.dtype) {
        continue;
      }
      try {
        tensor = tensor.to(*options.dtype);
      } catch (const c10::Error& e) {
        ThrowIfError(LoadStatus("cast", std::string("torch cannot cast it to ") +
                                            c10::toString(*options.dtype) + ": " +
                                            e.what_without_backtrace())
                         .WithTensor(name));
      }
    }
    out.stages.emplace_back("cast", SecondsSince(stage_start));
  }
  out.seconds = SecondsSince(start);
  return tensors;
}

}  // namespace shardstream
