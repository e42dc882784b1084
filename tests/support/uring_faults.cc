#include "tests/support/uring_faults.h"

#include <linux/io_uring.h>

#include <cerrno>
#include <memory>
#include <utility>

namespace shardstream::testing {

int UringFaults::Setup(unsigned flags) {
  if (setup_errno != 0) return -setup_errno;
  if ((flags & IORING_SETUP_SQPOLL) != 0 && sqpoll_errno != 0) return -sqpoll_errno;
  return 0;
}

bool UringFaults::ReplaceRead(uint64_t offset, uint64_t length) {
  if (eagain_every == 0 || reads_prepared_.fetch_add(1) % eagain_every != eagain_every - 1) {
    return false;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  replaced_.emplace(offset, length);
  return true;
}

int UringFaults::Completion(uint64_t offset, uint64_t length, int res) {
  {
    // A no-op that stood in for this read: nothing was read, as after a real -EAGAIN.
    std::lock_guard<std::mutex> lock(mutex_);
    auto replaced = replaced_.find({offset, length});
    if (replaced != replaced_.end()) {
      replaced_.erase(replaced);
      return -EAGAIN;
    }
  }
  if (fail_reads_errno != 0 && offset + length > fail_reads_past_offset) return -fail_reads_errno;
  if (short_read_bytes != 0 && res > 0 && static_cast<uint32_t>(res) > short_read_bytes) {
    return static_cast<int>(short_read_bytes);
  }
  return res;
}

UringFaults& FaultsOf(io::UringOptions& options) {
  auto* faults = dynamic_cast<UringFaults*>(options.interposer.get());
  if (faults == nullptr) {
    auto made = std::make_shared<UringFaults>();
    faults = made.get();
    options.interposer = std::move(made);
  }
  return *faults;
}

}  // namespace shardstream::testing
