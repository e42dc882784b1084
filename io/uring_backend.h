// The io_uring read backend: many reads in flight from one thread, one system call per batch.
//
// Each backend owns one ring (io_uring_setup), registers the FileSet's descriptors with it, and
// turns every ReadRequest into IORING_OP_READV submissions: one per request, or several when a
// request has more than IOV_MAX buffers (each at its own file offset). Submit prepares them all
// and hands them to the kernel with one io_uring_enter (more only when a batch exceeds the queue
// depth and has to wait for room); Reap waits for completions and resubmits
// what came back short (-EAGAIN, -EINTR, short reads) by itself. At most `queue_depth` reads are
// in flight; more requests than that queue inside the backend.
//
// Setup is probed, then degraded, never fatal: optional ring flags the kernel refuses, SQPOLL the
// kernel refuses, and file registration that fails (RLIMIT_NOFILE, memory) each fall back to
// something that works and are listed in setup().fallbacks. Only a kernel without io_uring, or one
// that forbids it (seccomp, kernel.io_uring_disabled), or no memory for the ring, makes creation
// fail, with rule "io-uring-unavailable" and the errno: the caller then uses the pread backend.
//
// Thread safety: none, as for every backend. Stricter than the others: a backend is bound to the
// thread that created it (its ring is IORING_SETUP_SINGLE_ISSUER where the kernel supports it), so
// Submit and Reap must be called on that thread; from any other they fail with rule
// "backend-thread". It may be destroyed on any thread.
//
// Failure: a failed read is reported in its request's completion (errno, path and the offset of
// the failing part; rule "file-changed" where the file ended early, at the offset where it ended),
// once per request however many reads it was split into. Submit or Reap themselves fail only when
// the ring does (io_uring_enter fails); the backend is then broken, every later call returns that
// error, and it should be destroyed. Completions already handed out are never lost to it.
//
// Lifetime: the FileSet must outlive the backend. Destination buffers must stay valid until their
// request is reaped or, if it never is, until the backend's destructor returns: the destructor
// waits for every read the kernel still holds before it tears the ring down.
#pragma once

#include "io/read_backend.h"
#include "io/status.h"

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace shardstream::io {

inline constexpr uint32_t kDefaultUringQueueDepth = 64;
// The kernel's limit on ring entries (IORING_MAX_ENTRIES).
inline constexpr uint32_t kMaxUringQueueDepth = 32768;

// The seam a test uses to stand in for the kernel's answers (tests/support/uring_faults.h holds
// the fault knobs that implement it; production passes none). Every hook defaults to "let the
// kernel answer". Called on the backend's thread; one interposer may serve several backends at
// once (a fill's worker threads), so implementations must be thread-safe.
class UringInterposer {
 public:
  virtual ~UringInterposer() = default;
  // Before io_uring_setup with `flags` (IORING_SETUP_*): -errno makes it fail so, 0 lets it run.
  virtual int Setup(unsigned flags) {
    (void)flags;
    return 0;
  }
  // Before io_uring_register_files / io_uring_register_buffers: -errno instead of the call, or 0.
  virtual int RegisterFiles() { return 0; }
  virtual int RegisterBuffers() { return 0; }
  // Before a read of `length` bytes at `offset` goes out: true submits a no-op instead (nothing is
  // read), whose completion then comes to Completion() with res 0 for the same offset and length.
  virtual bool ReplaceRead(uint64_t offset, uint64_t length) {
    (void)offset;
    (void)length;
    return false;
  }
  // A read (or its stand-in) of `length` bytes at `offset` completed with `res`: the result the
  // backend acts on (a shorter count makes it read the rest again, -EAGAIN the same read again;
  // -errno fails the read).
  virtual int Completion(uint64_t offset, uint64_t length, int res) {
    (void)offset;
    (void)length;
    return res;
  }
};

struct UringOptions {
  // Reads in flight at most, 1..kMaxUringQueueDepth. The submission ring has this many entries
  // (rounded up to a power of two by the kernel) and the completion ring twice that.
  uint32_t queue_depth = kDefaultUringQueueDepth;
  // A kernel thread polls the submission ring, so submitting needs no system call while reads
  // flow. Costs a CPU spinning while busy; falls back to normal submission if refused.
  bool sqpoll = false;
  // Memory that reads will land in, registered with the ring (io_uring_register_buffers): a read
  // into a single buffer lying inside one of these regions goes out as IORING_OP_READ_FIXED, so
  // the kernel does not look up and pin the destination pages on every read (it did so once, at
  // registration). Worth it for staging slots that take thousands of reads; pointless for
  // destinations read once. Registration pins the pages (RLIMIT_MEMLOCK for unprivileged users,
  // and it faults them in); when it fails, reads use plain buffers and setup().fallbacks says
  // why. Regions over 1 GiB (the kernel's limit per buffer) are registered in 1 GiB pieces. The
  // memory must stay mapped while the backend lives.
  std::vector<iovec> fixed_buffers;
  // Every read goes to the kernel's io-wq worker threads (IOSQE_ASYNC) instead of being tried
  // inline first. A buffered read that hits the page cache otherwise completes inside
  // io_uring_enter, copied by the submitting thread alone (~8 GB/s); with this, up to
  // `queue_depth` copies run on as many cores at once. Useful for warm buffered reads on a
  // many-core host; costs a thread hand-off per read where cores are few.
  bool async_reads = false;
  // Tests only: stands in for the kernel's answers (UringInterposer). Null: none.
  std::shared_ptr<UringInterposer> interposer;
};

// What the ring ended up with after probing.
struct UringSetup {
  uint32_t sq_entries = 0;
  uint32_t cq_entries = 0;
  uint32_t flags = 0;  // IORING_SETUP_* flags in use
  bool sqpoll = false;
  bool registered_files = false;
  uint64_t registered_buffer_bytes = 0;  // of UringOptions::fixed_buffers; 0 if not registered
  // One line per fallback taken ("sqpoll: ...", "setup-flags: ...", "register-files: ...",
  // "register-buffers: ..."): what was refused, with strerror, and what is used instead. Empty
  // when everything was granted.
  std::vector<std::string> fallbacks;
};

class UringBackend : public ReadBackend {
 public:
  // A backend reading `files` (which must outlive it), bound to the calling thread. Errors: rule
  // "invalid-option" for a queue depth out of range; rule "io-uring-unavailable" with errno when
  // no ring can be set up (ENOSYS, EPERM, ENOMEM, ...).
  static Result<std::unique_ptr<UringBackend>> Create(const FileSet& files,
                                                      const UringOptions& options = {});

  BackendKind kind() const final { return BackendKind::kUring; }
  const UringSetup& setup() const { return setup_; }
  // Reads submitted as IORING_OP_READ_FIXED (into UringOptions::fixed_buffers) so far.
  virtual uint64_t fixed_reads() const = 0;

 protected:
  explicit UringBackend(UringSetup setup) : setup_(std::move(setup)) {}

 private:
  UringSetup setup_;
};

// UringBackend::Create as a plain ReadBackend.
Result<std::unique_ptr<ReadBackend>> MakeUringBackend(const FileSet& files,
                                                      const UringOptions& options = {});

}  // namespace shardstream::io
