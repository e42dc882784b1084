#include "integration/detail/fill_torch.h"

#include "cuda/device_upload.h"
#include "engine/runs.h"
#include "integration/detail/errors.h"
#include "integration/detail/torch_cuda.h"
#include "integration/dtype.h"

#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <set>

namespace shardstream::detail {

io::Status AtenHostCast(const std::byte* src, io::DType src_dtype, std::byte* dst,
                        io::DType dst_dtype, uint64_t elements) {
  const c10::ScalarType from = StorageDType(src_dtype);
  const c10::ScalarType to = StorageDType(dst_dtype);
  const auto count = static_cast<int64_t>(elements);
  try {
    at::Tensor source =
        at::from_blob(const_cast<std::byte*>(src), {count}, at::TensorOptions().dtype(from));
    at::from_blob(dst, {count}, at::TensorOptions().dtype(to)).copy_(source);
  } catch (const c10::Error& e) {
    return io::Status::Error(io::StatusCode::kInvalidArgument, "cast",
                             std::string("torch cannot cast ") + c10::toString(from) + " to " +
                                 c10::toString(to) + ": " + e.what_without_backtrace());
  }
  return io::Status::Ok();
}

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

engine::FillTarget TargetFor(io::TensorLocation source, io::DType source_dtype,
                             const at::Tensor& destination) {
  engine::FillTarget target;
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

void FillOrThrow(const io::Checkpoint& checkpoint, std::span<const engine::FillTarget> targets,
                 const LoadOptions& options, LoadReport& report) {
  engine::FillSetup setup;
  setup.read = options;
  setup.cast = AtenHostCast;
  std::set<int> devices;
  for (const engine::FillTarget& target : targets) {
    if (target.device != engine::kHostDevice) devices.insert(target.device);
  }
  std::unique_ptr<cuda::CudaUploader> uploader;
  if (!devices.empty()) {
    cuda::CudaUploadOptions upload;
    upload.copy_streams = options.copy_streams;
    upload.cast = [](int device) {
      return TorchCudaCast(
          RequireTorchCuda(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device))), device);
    };
    uploader = std::make_unique<cuda::CudaUploader>(std::move(upload));
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
