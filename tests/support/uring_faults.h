// UringFaults: fault knobs for the io_uring backend's tests, plugged in through its interposer
// seam (io/uring_backend.h, UringOptions::interposer). A test double: it lives in the tests'
// support library, never in a production target.
//
//   testing::FaultsOf(options).short_read_bytes = 1000;  // reads come back 1000 bytes at most
//
// Everything defaults to "no fault". short_read_bytes and fail_reads_* change a completion after
// the kernel really read the bytes (a shortened read makes the backend read the rest again);
// eagain_every replaces the read itself by a no-op, so nothing is read until the backend
// resubmits. Set the knobs before the backend is made; thread-safe afterwards (several backends
// may share one).
#pragma once

#include "io/uring_backend.h"

#include <atomic>
#include <cstdint>
#include <limits>
#include <mutex>
#include <set>
#include <utility>

namespace shardstream::testing {

struct UringFaults final : io::UringInterposer {
  int setup_errno = 0;             // every io_uring_setup fails with this errno
  int sqpoll_errno = 0;            // io_uring_setup with SQPOLL fails with this errno
  int register_files_errno = 0;    // io_uring_register_files fails with this errno
  int register_buffers_errno = 0;  // io_uring_register_buffers fails with this errno
  uint32_t short_read_bytes = 0;   // completions of more bytes count as this many
  uint32_t eagain_every = 0;       // every n-th read submitted completes with -EAGAIN, unread
  // Reads whose range reaches past this offset complete with -fail_reads_errno.
  uint64_t fail_reads_past_offset = std::numeric_limits<uint64_t>::max();
  int fail_reads_errno = 0;

  int Setup(unsigned flags) override;
  int RegisterFiles() override { return -register_files_errno; }
  int RegisterBuffers() override { return -register_buffers_errno; }
  bool ReplaceRead(uint64_t offset, uint64_t length) override;
  int Completion(uint64_t offset, uint64_t length, int res) override;

 private:
  std::atomic<uint64_t> reads_prepared_{0};
  std::mutex mutex_;
  std::multiset<std::pair<uint64_t, uint64_t>> replaced_;  // (offset, length); guarded by mutex_
};

// The UringFaults of `options`, made (and plugged in) on first use.
UringFaults& FaultsOf(io::UringOptions& options);

}  // namespace shardstream::testing
