// A fault-injecting ReadBackend for the engine suites (the forwarding-wrapper seam of
// engine/loader.h's BackendFactory): forwards to a real backend and, per the plan,
//   - runs `before_submit(n)` before its n-th Submit (1-based): truncate or replace a file there,
//     after the files were opened and validated, while reads are in flight;
//   - from its `fail_from`-th Submit on, completes every request with `fail_errno` (EIO by
//     default) after the real read, so that buffers and slots are in use when the error comes;
//   - from its `broken_from`-th Submit on, fails Submit and every later Reap itself, as an
//     io_uring_enter failure breaks a ring, with reads of earlier Submits still in flight (the
//     real backend drains them when it is destroyed).
// Not thread-safe (as every backend: one per worker thread).
#pragma once

#include "io/read_backend.h"
#include "io/status.h"

#include <algorithm>
#include <cerrno>
#include <functional>
#include <memory>
#include <span>
#include <utility>
#include <vector>

namespace shardstream::engine::testing {

struct FaultPlan {
  std::function<void(int submit)> before_submit;
  int fail_from = 0;  // 0: never
  int fail_errno = EIO;
  int broken_from = 0;  // 0: never
};

class FaultBackend : public io::ReadBackend {
 public:
  FaultBackend(std::unique_ptr<io::ReadBackend> inner, FaultPlan plan)
      : inner_(std::move(inner)), plan_(std::move(plan)) {}
  io::BackendKind kind() const override { return inner_->kind(); }
  io::Status Submit(std::span<const io::ReadRequest> requests) override {
    ++submits_;
    if (plan_.before_submit) plan_.before_submit(submits_);
    if (plan_.broken_from != 0 && submits_ >= plan_.broken_from) broken_ = true;
    if (broken_) return io::Status::FromErrno(plan_.fail_errno, "injected io_uring_enter");
    if (plan_.fail_from != 0 && submits_ >= plan_.fail_from) {
      for (const io::ReadRequest& r : requests) failing_.push_back(r.id);
    }
    return inner_->Submit(requests);
  }
  io::Result<size_t> Reap(std::span<io::Completion> out, size_t min) override {
    if (broken_) return io::Status::FromErrno(plan_.fail_errno, "injected io_uring_enter");
    auto n = inner_->Reap(out, min);
    if (!n.ok()) return n;
    for (size_t i = 0; i < *n; ++i) {
      auto it = std::find(failing_.begin(), failing_.end(), out[i].id);
      if (it == failing_.end()) continue;
      failing_.erase(it);
      if (out[i].status.ok())
        out[i].status = io::Status::FromErrno(plan_.fail_errno, "injected read");
    }
    return n;
  }

 private:
  std::unique_ptr<io::ReadBackend> inner_;
  FaultPlan plan_;
  int submits_ = 0;
  bool broken_ = false;
  std::vector<uint64_t> failing_;  // ids of requests to fail when they complete
};

}  // namespace shardstream::engine::testing
