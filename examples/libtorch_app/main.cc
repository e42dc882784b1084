// libtorch_app: loads a checkpoint through an installed shardstream.
//
//   libtorch_app CHECKPOINT
//     LoadFile onto the CPU; prints one line per tensor, by name: `name DTYPE [shape] sum64`
//     (the file's dtype and shape, and the wrapping sum of the tensor's bytes read as
//     little-endian u64 words, the last partial word zero-padded: the fixtures' .sum64.txt).
//   libtorch_app --linear IN OUT CHECKPOINT
//     builds a stock torch::nn::Linear(IN, OUT), turns it into a skeleton with ToMeta, fills it
//     with LoadInto and prints its weight and bias the same way.
#include <torch/nn/modules/linear.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <shardstream/load.h>
#include <shardstream/skeleton.h>
#include <string>
#include <vector>

namespace {

uint64_t Sum64(const at::Tensor& tensor) {
  const at::Tensor dense = tensor.contiguous();
  const auto* bytes = static_cast<const unsigned char*>(dense.data_ptr());
  const size_t size = dense.nbytes();
  uint64_t sum = 0;
  for (size_t i = 0; i < size; i += 8) {
    uint64_t word = 0;
    for (size_t b = 0; b < 8 && i + b < size; ++b) word |= uint64_t{bytes[i + b]} << (8 * b);
    sum += word;
  }
  return sum;
}

std::string Shape(const std::vector<uint64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

void Print(const std::string& name, const std::string& dtype, const std::vector<uint64_t>& shape,
           const at::Tensor& tensor) {
  std::printf("%s %s %s %016llx\n", name.c_str(), dtype.c_str(), Shape(shape).c_str(),
              static_cast<unsigned long long>(Sum64(tensor)));
}

int LoadFile(const char* checkpoint) {
  auto [tensors, report] = shardstream::LoadFile(checkpoint);
  for (const auto& [name, tensor] : tensors) {
    const shardstream::LoadReport::FileTensor& file = report.file_tensors.at(name);
    Print(name, file.dtype, file.shape, tensor);
  }
  std::fprintf(stderr, "shardstream %s: %zu tensors, %llu bytes, io %s\n",
               std::string(shardstream::Version()).c_str(), report.tensors,
               static_cast<unsigned long long>(report.bytes), report.io.c_str());
  return 0;
}

int LoadLinear(int64_t in, int64_t out, const char* checkpoint) {
  torch::nn::Linear linear(in, out);  // initialised on the CPU...
  shardstream::ToMeta(*linear);       // ...then a skeleton: no storage until LoadInto
  const shardstream::ModelLoadReport report = shardstream::LoadInto(*linear, checkpoint);
  for (const auto& item : linear->named_parameters()) {
    const shardstream::LoadReport::FileTensor& file = report.file_tensors.at(item.key());
    Print(item.key(), file.dtype, file.shape, item.value());
  }
  std::fprintf(stderr, "LoadInto: %zu tensors, %zu missing, %zu moved\n", report.tensors,
               report.missing.size(), report.moved.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 2) return LoadFile(argv[1]);
    if (argc == 5 && std::strcmp(argv[1], "--linear") == 0) {
      return LoadLinear(std::stoll(argv[2]), std::stoll(argv[3]), argv[4]);
    }
    std::fprintf(stderr, "usage: %s CHECKPOINT | --linear IN OUT CHECKPOINT\n", argv[0]);
    return 2;
  } catch (const shardstream::LoadError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());  // names file, tensor and rule
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
