// Fuzz target: the safetensors header parser and validator (io/safetensors_header.h).
//
// The input is a whole file: 8-byte length, header, data. It goes through ParseHeaderLength and
// ParseHeader, and through ReadHeader over a memfd holding the same bytes; both must give the same
// verdict, and an accepted header must satisfy every invariant the loader relies on (tensors
// sorted, contiguous, inside the file, sizes equal to shape × dtype). A broken invariant aborts,
// which libFuzzer reports as a crash, like a sanitizer report.
//
// Built two ways (tests/fuzz/CMakeLists.txt): with libFuzzer (scripts/fuzz) and with a plain main
// (replay_main.cc) that runs saved inputs and prints each verdict for the differential tests.
#include "io/safetensors_header.h"
#include "tests/fuzz/fuzz_verdict.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>

namespace shardstream::fuzz {
namespace {

[[noreturn]] void Broken(const char* what) {
  std::fprintf(stderr, "header invariant broken: %s\n", what);
  std::abort();
}

void CheckAccepted(const io::Header& header, uint64_t file_bytes) {
  if (header.file_bytes != file_bytes) Broken("file_bytes");
  uint64_t expected_begin = 0;
  for (const io::TensorInfo& t : header.tensors) {
    if (t.begin != expected_begin || t.end < t.begin) Broken("tensors not contiguous in order");
    expected_begin = t.end;
    // Element count first, then bits, each overflow-checked, as the reference folds them.
    uint64_t count = 1;
    for (uint64_t dim : t.shape) {
      if (__builtin_mul_overflow(count, dim, &count)) Broken("accepted a count that overflows");
    }
    uint64_t bits = 0;
    if (__builtin_mul_overflow(count, uint64_t{io::DTypeBits(t.dtype)}, &bits)) {
      Broken("accepted a size that overflows");
    }
    if (bits % 8 != 0 || bits / 8 != t.size_bytes()) Broken("size differs from shape x dtype");
    const io::TensorInfo* found = header.Find(t.name);
    if (found == nullptr || found->name != t.name) Broken("name index");
  }
  if (header.data_offset() + expected_begin != file_bytes) Broken("data does not end the file");
  const io::Header copy = header;  // the copy rebuilds the name index
  for (const io::TensorInfo& t : header.tensors) {
    if (copy.Find(t.name) == nullptr) Broken("copied name index");
  }
}

// ReadHeader over a memfd holding `bytes`: the path production takes (speculative first read,
// second read for large headers). One memfd, reused.
io::Result<io::Header> ReadThroughFd(std::span<const uint8_t> bytes) {
  static const int fd = ::memfd_create("shardstream-fuzz", MFD_CLOEXEC);
  if (fd < 0 || ::ftruncate(fd, 0) != 0) Broken("memfd");
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n <= 0) Broken("memfd write");
    done += static_cast<size_t>(n);
  }
  return io::ReadHeader(fd, bytes.size(), "fuzz.safetensors");
}

}  // namespace

std::string Verdict(const uint8_t* data, size_t size) {
  const auto bytes = std::as_bytes(std::span(data, size));
  io::Status status;
  auto length = io::ParseHeaderLength(bytes, size);
  if (!length.ok()) {
    status = length.status();
  } else {
    std::string_view json(reinterpret_cast<const char*>(data) + io::kHeaderLengthBytes, *length);
    auto header = io::ParseHeader(json, size);
    if (header.ok()) {
      CheckAccepted(*header, size);
    } else {
      status = header.status();
    }
  }
  if (!status.ok() && (status.rule().empty() || status.message().empty())) Broken("error");

  auto through_fd = ReadThroughFd(std::span(data, size));
  if (through_fd.ok() != status.ok() ||
      (!status.ok() && through_fd.status().rule() != status.rule())) {
    Broken("ReadHeader and ParseHeader disagree");
  }
  return status.ok() ? "valid" : status.rule();
}

}  // namespace shardstream::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)shardstream::fuzz::Verdict(data, size);
  return 0;
}
