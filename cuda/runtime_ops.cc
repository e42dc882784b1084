// DeviceOps over the CUDA runtime (cuda/device_ops.h).
#include "cuda/device_ops.h"

#ifdef SHARDSTREAM_HAVE_CUDA
#include "cuda/error.h"

#include <cuda_runtime_api.h>

#include <type_traits>
#endif

#include <string>

namespace shardstream::cuda {

#ifdef SHARDSTREAM_HAVE_CUDA

static_assert(std::is_same_v<StreamHandle, cudaStream_t>, "StreamHandle must be cudaStream_t");
static_assert(std::is_same_v<EventHandle, cudaEvent_t>, "EventHandle must be cudaEvent_t");

namespace {

class RuntimeOps final : public DeviceOps {
 public:
  explicit RuntimeOps(int device) : device_(device) {}

  io::Result<int> EnterDevice() override {
    int previous = 0;
    SHARDSTREAM_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&previous), "cudaGetDevice"));
    if (previous != device_) {
      SHARDSTREAM_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device_), "cudaSetDevice"));
    }
    return previous;
  }
  void LeaveDevice(int previous) noexcept override {
    if (previous != device_) SHARDSTREAM_CUDA_TRY_NOTHROW(cudaSetDevice(previous));
  }

  io::Result<StreamHandle> CreateStream() override {
    cudaStream_t stream = nullptr;
    // Non-blocking: no implicit synchronisation with the legacy default stream, which other code
    // in the process (a torch user's, say) may be using.
    SHARDSTREAM_RETURN_IF_ERROR(CudaStatus(
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags"));
    return stream;
  }
  void DestroyStream(StreamHandle stream) noexcept override {
    SHARDSTREAM_CUDA_TRY_NOTHROW(cudaStreamDestroy(stream));
  }
  io::Result<EventHandle> CreateEvent(bool timing) override {
    cudaEvent_t event = nullptr;
    SHARDSTREAM_RETURN_IF_ERROR(CudaStatus(
        cudaEventCreateWithFlags(&event, timing ? cudaEventDefault : cudaEventDisableTiming),
        "cudaEventCreateWithFlags"));
    return event;
  }
  void DestroyEvent(EventHandle event) noexcept override {
    SHARDSTREAM_CUDA_TRY_NOTHROW(cudaEventDestroy(event));
  }
  io::Result<std::byte*> Allocate(size_t size_bytes) override {
    void* data = nullptr;
    io::Status status = CudaStatus(cudaMalloc(&data, size_bytes), "cudaMalloc");
    if (!status.ok()) {
      return io::Status::Error(io::StatusCode::kResourceExhausted, "cuda",
                               status.message() + " (" + std::to_string(size_bytes) + " bytes)");
    }
    return static_cast<std::byte*>(data);
  }
  void Free(std::byte* data) noexcept override { SHARDSTREAM_CUDA_TRY_NOTHROW(cudaFree(data)); }

  io::Status CopyAsync(std::byte* dst, const std::byte* src, size_t size_bytes,
                       StreamHandle stream) override {
    return CudaStatus(cudaMemcpyAsync(dst, src, size_bytes, cudaMemcpyHostToDevice, stream),
                      "cudaMemcpyAsync");
  }
  io::Status RecordEvent(EventHandle event, StreamHandle stream) override {
    return CudaStatus(cudaEventRecord(event, stream), "cudaEventRecord");
  }
  io::Result<bool> QueryEvent(EventHandle event) override {
    const cudaError_t error = cudaEventQuery(event);
    if (error == cudaErrorNotReady) return false;
    SHARDSTREAM_RETURN_IF_ERROR(CudaStatus(error, "cudaEventQuery"));
    return true;
  }
  io::Status SynchronizeEvent(EventHandle event) override {
    return CudaStatus(cudaEventSynchronize(event), "cudaEventSynchronize");
  }
  io::Status SynchronizeStream(StreamHandle stream) override {
    return CudaStatus(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }
  io::Result<float> ElapsedMs(EventHandle start, EventHandle end) override {
    float ms = 0;
    SHARDSTREAM_RETURN_IF_ERROR(
        CudaStatus(cudaEventElapsedTime(&ms, start, end), "cudaEventElapsedTime"));
    return ms;
  }

 private:
  const int device_;
};

}  // namespace

io::Result<std::shared_ptr<DeviceOps>> MakeCudaRuntimeOps(int device) {
  int count = 0;
  cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    cudaGetLastError();  // clear it: later calls in the process start clean
    return CudaStatus(error, "cudaGetDeviceCount");
  }
  if (device < 0 || device >= count) {
    return io::Status::Error(
        io::StatusCode::kInvalidArgument, "cuda",
        "no CUDA device " + std::to_string(device) + " (" + std::to_string(count) + " visible)");
  }
  return std::shared_ptr<DeviceOps>(std::make_shared<RuntimeOps>(device));
}

#else

io::Result<std::shared_ptr<DeviceOps>> MakeCudaRuntimeOps(int device) {
  return io::Status::Error(
      io::StatusCode::kUnsupported, "cuda",
      "cuda:" + std::to_string(device) + " requested, but shardstream was built without CUDA");
}

#endif

}  // namespace shardstream::cuda
