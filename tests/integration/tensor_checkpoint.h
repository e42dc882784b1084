// Test helpers: write named at::Tensors as a safetensors file (through io::WriteSafetensors, an
// independent writer: no shardstream loader involved), and a CPU allocator that counts bytes.
#pragma once

#include "integration/dtype.h"
#include "io/safetensors_writer.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace shardstream::testing {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes `tensors` (CPU, any layout) to `path` in the order given. Throws on failure.
inline void WriteTensors(const std::filesystem::path& path, const NamedTensors& tensors) {
  std::vector<io::TensorToWrite> specs;
  std::vector<at::Tensor> contiguous;
  for (const auto& [name, tensor] : tensors) {
    std::optional<io::DType> dtype = SafetensorsDType(tensor.scalar_type());
    if (!dtype) throw std::runtime_error("no safetensors dtype for " + name);
    std::vector<uint64_t> shape(tensor.sizes().begin(), tensor.sizes().end());
    specs.push_back({name, *dtype, std::move(shape)});
    contiguous.push_back(tensor.contiguous());
  }
  io::Status status = io::WriteSafetensors(
      path, specs, {}, [&](size_t index, uint64_t offset, std::span<std::byte> out) {
        std::memcpy(out.data(),
                    static_cast<const std::byte*>(contiguous[index].data_ptr()) + offset,
                    out.size());
      });
  if (!status.ok()) throw std::runtime_error(status.ToString());
}

// True when two tensors hold the same bytes with the same dtype and shape.
inline bool SameBytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || !a.sizes().equals(b.sizes())) return false;
  const at::Tensor ca = a.contiguous();
  const at::Tensor cb = b.contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

// Counts what the CPU allocator hands out while it is installed (c10::SetCPUAllocator at a
// priority above the default's), then puts the previous allocator back. One at a time.
class CountingCpuAllocator final : public c10::Allocator {
 public:
  CountingCpuAllocator() : inner_(c10::GetCPUAllocator()) { c10::SetCPUAllocator(this, kPriority); }
  ~CountingCpuAllocator() override { c10::SetCPUAllocator(inner_, kPriority); }
  CountingCpuAllocator(const CountingCpuAllocator&) = delete;
  CountingCpuAllocator& operator=(const CountingCpuAllocator&) = delete;

  c10::DataPtr allocate(size_t n) override {
    bytes_ += n;
    ++allocations_;
    return inner_->allocate(n);
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    inner_->copy_data(dest, src, count);
  }
  c10::DeleterFnPtr raw_deleter() const override { return inner_->raw_deleter(); }

  uint64_t bytes() const { return bytes_.load(); }
  uint64_t allocations() const { return allocations_.load(); }
  void Reset() {
    bytes_ = 0;
    allocations_ = 0;
  }

 private:
  static constexpr uint8_t kPriority = 200;
  c10::Allocator* inner_;
  std::atomic<uint64_t> bytes_{0};
  std::atomic<uint64_t> allocations_{0};
};

}  // namespace shardstream::testing
