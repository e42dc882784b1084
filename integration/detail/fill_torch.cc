#include "integration/detail/fill_torch.h"

#include "cuda/device_upload.h"
#include "engine/runs.h"
#include "integration/detail/errors.h"
#include "integration/detail/torch_cuda.h"
#include "integration/dtype.h"

#include <set>

namespace shardstream::detail {

std::vector<engine::Run> DestinationRuns(const at::Tensor& destination, io::DType source_dtype) {
  if (destination.is_contiguous()) return {};
  const auto bits = [](c10::ScalarType type) {
    return static_cast<uint32_t>(c10::elementSize(type) * 8);
  };
  io::Result<std::vector<engine::Run>> runs =
      engine::ViewRuns(destination.sizes().vec(), destination.strides().vec(),
                       io::DTypeBits(source_dtype), bits(destination.scalar_type()));
  ThrowIfError(runs.status());
  return std::move(*runs);
}

engine::Target TargetFor(io::TensorLocation source, io::DType source_dtype,
                         const at::Tensor& destination) {
  engine::Target target;
  target.source = source;
  target.destination = static_cast<std::byte*>(destination.data_ptr());
  target.device = destination.is_cuda() ? destination.device().index() : engine::kHostDevice;
  // The file's dtype when the tensor holds it as stored (F6 as bytes, F4 packed), else the
  // tensor's: a cast.
  const bool same = StorageDType(source_dtype) == destination.scalar_type();
  target.dtype =
      same ? source_dtype : SafetensorsDType(destination.scalar_type()).value_or(source_dtype);
  if (!same && !SafetensorsDType(destination.scalar_type())) {
    ThrowIfError(io::Status::Error(
        io::StatusCode::kInvalidArgument, "cast",
        std::string("no safetensors dtype for ") + c10::toString(destination.scalar_type())));
  }
  target.runs = DestinationRuns(destination, source_dtype);
  return target;
}

void FillOrThrow(const io::Checkpoint& checkpoint, std::span<const engine::Target> targets,
                 const LoadOptions& options, LoadReport& report) {
  engine::FillSetup setup;
  setup.read = options;
  std::set<int> devices;
  for (const engine::Target& target : targets) {
    if (target.device != engine::kHostDevice) devices.insert(target.device);
  }
  std::unique_ptr<cuda::CudaUploader> uploader;
  if (!devices.empty()) {
    cuda::CudaUploadOptions upload;
    upload.copy_streams = options.copy_streams;
    uploader = std::make_unique<cuda::CudaUploader>(upload);
    setup.devices = uploader.get();
  }
  io::Status status = engine::Fill(checkpoint, targets, setup, &report);
  if (!status.ok())
    ThrowIfError(status.path().empty() ? std::move(status).WithPath(checkpoint.source.string())
                                       : status);
  for (int device : devices) {
    const TorchCudaPlugin& plugin =
        RequireTorchCuda(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device)));
    report.device_peak_bytes =
        std::max(report.device_peak_bytes, plugin.peak_allocated_bytes(device));
  }
}

}  // namespace shardstream::detail
