#include "cuda/stream.h"

namespace shardstream::cuda {

bool StreamView::Ready() const {
  const cudaError_t error = cudaStreamQuery(stream_);
  if (error == cudaErrorNotReady) return false;
  SHARDSTREAM_CUDA_TRY(error);
  return true;
}

Stream::Stream(unsigned flags) { SHARDSTREAM_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, flags)); }

Stream::~Stream() {
  // cudaStreamDestroy returns at once; work still queued completes before the stream goes.
  if (stream_ != nullptr) SHARDSTREAM_CUDA_TRY_NOTHROW(cudaStreamDestroy(stream_));
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) SHARDSTREAM_CUDA_TRY_NOTHROW(cudaStreamDestroy(stream_));
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

Event::Event(Timing timing) {
  const unsigned flags = timing == Timing::kEnabled ? cudaEventDefault : cudaEventDisableTiming;
  SHARDSTREAM_CUDA_TRY(cudaEventCreateWithFlags(&event_, flags));
}

Event::~Event() {
  if (event_ != nullptr) SHARDSTREAM_CUDA_TRY_NOTHROW(cudaEventDestroy(event_));
}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (event_ != nullptr) SHARDSTREAM_CUDA_TRY_NOTHROW(cudaEventDestroy(event_));
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

float Event::MillisecondsSince(const Event& start) const {
  float ms = 0;
  SHARDSTREAM_CUDA_TRY(cudaEventElapsedTime(&ms, start.event_, event_));
  return ms;
}

DeviceGuard::DeviceGuard(int device) {
  SHARDSTREAM_CUDA_TRY(cudaGetDevice(&previous_));
  if (previous_ != device) {
    SHARDSTREAM_CUDA_TRY(cudaSetDevice(device));
    changed_ = true;
  }
}

DeviceGuard::~DeviceGuard() {
  if (changed_) SHARDSTREAM_CUDA_TRY_NOTHROW(cudaSetDevice(previous_));
}

}  // namespace shardstream::cuda
