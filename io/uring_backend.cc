#include "io/uring_backend.h"

#include <liburing.h>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace shardstream::io {
namespace {

// The kernel's limit on buffers in one READV (UIO_MAXIOV, the same as preadv's): requests with more
// are split into several reads.
constexpr size_t kMaxIovecsPerRead = IOV_MAX;
// How long an idle SQPOLL thread keeps spinning before it sleeps. Long enough to span the gap
// between one chunk's completion and the next submission while a load streams; short enough that
// a finished load does not keep a core busy for long. A sleeping thread is woken by
// io_uring_submit (liburing checks IORING_SQ_NEED_WAKEUP), so a short idle time costs one system
// call after a pause, not correctness.
constexpr unsigned kSqThreadIdleMs = 20;
// The kernel refuses to register a buffer larger than this (io_uring's per-buffer limit).
constexpr uint64_t kMaxFixedBufferBytes = 1ull << 30;
// Completions taken off the ring per io_uring_peek_batch_cqe.
constexpr unsigned kCqeBatch = 64;
// Offsets are loff_t in the kernel. READV at offset -1 means "at the file position" (and moves
// it), and larger values are EINVAL: requests reaching past this are refused up front, as preadv
// refuses them.
constexpr uint64_t kMaxFileOffset = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

std::string ErrnoText(int err) {
  return std::string(std::strerror(err)) + ", errno " + std::to_string(err);
}

// Ring flags that only make things faster. Each is dropped (all together) if the kernel refuses
// them with EINVAL, i.e. is older than the flag.
unsigned OptionalSetupFlags(bool sqpoll) {
  unsigned flags = 0;
#ifdef IORING_SETUP_SUBMIT_ALL
  // 5.18: without it, an SQE that fails while being submitted (a bad fd, say) stops the batch and
  // leaves the rest in the SQ until the next io_uring_enter. With it, every SQE of the batch goes
  // in and the failing one gets its own error CQE, which is how we report errors anyway.
  flags |= IORING_SETUP_SUBMIT_ALL;
#endif
#ifdef IORING_SETUP_SINGLE_ISSUER
  // 6.0: only the creating thread submits (the backend is bound to it anyway, see
  // CheckUsable), so the kernel can skip locking on the submission path.
  flags |= IORING_SETUP_SINGLE_ISSUER;
#endif
  // IORING_SETUP_DEFER_TASKRUN (6.1) would be faster still but is deliberately not used: with it
  // only the submitting thread may wait for completions, and the destructor must be able to drain
  // the ring from whichever thread destroys the backend.
  if (!sqpoll) {
#ifdef IORING_SETUP_COOP_TASKRUN
    // 5.19: a completion that needs the submitting thread's help (task work: e.g. a buffered read
    // finished by the page cache's wake-up) no longer interrupts that thread with an IPI; the work
    // runs the next time the thread enters the kernel, which it does in Reap anyway. A thread
    // asleep elsewhere is still woken (only the IPI is skipped), so a drain from another thread
    // cannot stall. The kernel rejects it together with SQPOLL (no IPIs there to save).
    flags |= IORING_SETUP_COOP_TASKRUN;
#ifdef IORING_SETUP_TASKRUN_FLAG
    // With COOP_TASKRUN, completions can sit as task work while the CQ looks empty. This flag has
    // the kernel set IORING_SQ_TASKRUN then, and liburing's io_uring_peek_batch_cqe enters the
    // kernel to run it: a non-blocking Reap (min_completions 0) still sees finished reads.
    flags |= IORING_SETUP_TASKRUN_FLAG;
#endif
#endif
  }
  return flags;
}

std::string FlagNames(unsigned flags) {
  std::string names;
  auto add = [&](unsigned flag, const char* name) {
    if ((flags & flag) == 0) return;
    if (!names.empty()) names += "|";
    names += name;
  };
  add(IORING_SETUP_SQPOLL, "SQPOLL");
#ifdef IORING_SETUP_SUBMIT_ALL
  add(IORING_SETUP_SUBMIT_ALL, "SUBMIT_ALL");
#endif
#ifdef IORING_SETUP_SINGLE_ISSUER
  add(IORING_SETUP_SINGLE_ISSUER, "SINGLE_ISSUER");
#endif
#ifdef IORING_SETUP_COOP_TASKRUN
  add(IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN");
#endif
#ifdef IORING_SETUP_TASKRUN_FLAG
  add(IORING_SETUP_TASKRUN_FLAG, "TASKRUN_FLAG");
#endif
  return names;
}

Status Unavailable(int err) {
  std::string message = "cannot set up an io_uring: io_uring_setup failed: " + ErrnoText(err);
  switch (err) {
    case ENOSYS:
      message += " (this kernel has no io_uring)";
      break;
    case EPERM:
    case EACCES:
      message +=
          " (io_uring is forbidden here: a seccomp filter, or sysctl "
          "kernel.io_uring_disabled)";
      break;
    case ENOMEM:
      message += " (no memory for the ring; before Linux 5.12 it counts against RLIMIT_MEMLOCK)";
      break;
    default:
      break;
  }
  message += "; use the pread backend instead";
  return Status::Error(StatusCode::kUnsupported, "io-uring-unavailable", std::move(message))
      .WithErrno(err);
}

void ReleaseRingHistory();

// Owns one io_uring: set up, descriptors registered, torn down on destruction. Not movable
// (liburing's struct io_uring is used in place).
// The interposer of `options`, or one that lets the kernel answer everything.
UringInterposer& HooksOf(const UringOptions& options) {
  static UringInterposer none;
  return options.interposer != nullptr ? *options.interposer : none;
}

class Ring {
 public:
  Ring() = default;
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  ~Ring() { Close(); }

  // Probes the kernel: SQPOLL if asked for, then without; optional flags, then without. Records
  // each fallback in `setup`.
  static Result<std::unique_ptr<Ring>> Open(const FileSet& files, const UringOptions& options,
                                            UringSetup* setup);

  io_uring* get() { return &ring_; }
  bool sqpoll() const { return (ring_.flags & IORING_SETUP_SQPOLL) != 0; }

  // A registered buffer: [begin, end) is the ring's buffer `index`.
  struct FixedBuffer {
    uintptr_t begin = 0;
    uintptr_t end = 0;
    uint16_t index = 0;
  };
  // The registered buffer holding all of [data, data + size), if any.
  const FixedBuffer* FindFixed(const void* data, size_t size) const;
  // Registers options.fixed_buffers (split at kMaxFixedBufferBytes), or records why not.
  void RegisterBuffers(const UringOptions& options, UringSetup* setup);

 private:
  // io_uring_queue_init with `flags`, then without the optional ones if the kernel does not know
  // them. Returns 0 or -errno; `note` says which flags were dropped.
  int Setup(uint32_t entries, bool sqpoll, UringInterposer& hooks, std::string* note);
  int Init(uint32_t entries, unsigned flags, UringInterposer& hooks);
  void Close() {
    // Also drops the registered files: the kernel releases them with the ring. (No explicit
    // io_uring_unregister_files: under SINGLE_ISSUER it would fail with EEXIST on any thread but
    // the creator, and the destructor may run elsewhere.)
    if (open_) {
      ReleaseRingHistory();
      io_uring_queue_exit(&ring_);
    }
    open_ = false;
  }

  // ThreadSanitizer only: liburing maps and unmaps the rings with raw system calls, which TSan
  // does not see, so a new ring mapped where another thread's old ring was looks like memory
  // shared without synchronisation (see ReleaseRingHistory).
  void ForgetRingHistory();

  io_uring ring_{};
  bool open_ = false;
  std::vector<FixedBuffer> fixed_;  // sorted by begin, not overlapping
};

#if defined(__SANITIZE_THREAD__)
// Every ring teardown happens before any later ring setup that may reuse its addresses: tell
// TSan through one synchronisation object (a release at teardown, an acquire at setup).
char ring_lifetimes;
void Ring::ForgetRingHistory() { __tsan_acquire(&ring_lifetimes); }
void ReleaseRingHistory() { __tsan_release(&ring_lifetimes); }
#else
void Ring::ForgetRingHistory() {}
void ReleaseRingHistory() {}
#endif

void Ring::RegisterBuffers(const UringOptions& options, UringSetup* setup) {
  std::vector<iovec> pieces;
  for (const iovec& region : options.fixed_buffers) {
    for (uint64_t done = 0; done < region.iov_len; done += kMaxFixedBufferBytes) {
      pieces.push_back(iovec{static_cast<char*>(region.iov_base) + done,
                             std::min<uint64_t>(kMaxFixedBufferBytes, region.iov_len - done)});
    }
  }
  if (pieces.empty()) return;
  std::sort(pieces.begin(), pieces.end(),
            [](const iovec& a, const iovec& b) { return a.iov_base < b.iov_base; });
  for (size_t i = 1; i < pieces.size(); ++i) {
    if (static_cast<char*>(pieces[i - 1].iov_base) + pieces[i - 1].iov_len >
        static_cast<char*>(pieces[i].iov_base)) {
      setup->fallbacks.push_back(
          "register-buffers: the fixed buffers overlap; reads use plain buffers");
      return;
    }
  }
  // The kernel caps the table at IORING_MAX_REG_BUFFERS (16384) and buffer indexes are 16 bits.
  int rc = pieces.size() > 16384 ? -EINVAL : 0;
  if (rc == 0) {
    rc = HooksOf(options).RegisterBuffers();
    if (rc == 0) {
      rc = io_uring_register_buffers(&ring_, pieces.data(), static_cast<unsigned>(pieces.size()));
    }
  }
  if (rc < 0) {
    std::string why = ErrnoText(-rc);
    if (rc == -ENOMEM || rc == -EPERM) why += "; pinning counts against RLIMIT_MEMLOCK (ulimit -l)";
    setup->fallbacks.push_back("register-buffers: io_uring_register_buffers failed (" + why +
                               "); reads use plain buffers");
    return;
  }
  for (size_t i = 0; i < pieces.size(); ++i) {
    const auto begin = reinterpret_cast<uintptr_t>(pieces[i].iov_base);
    fixed_.push_back(FixedBuffer{begin, begin + pieces[i].iov_len, static_cast<uint16_t>(i)});
    setup->registered_buffer_bytes += pieces[i].iov_len;
  }
}

const Ring::FixedBuffer* Ring::FindFixed(const void* data, size_t size) const {
  const auto begin = reinterpret_cast<uintptr_t>(data);
  // The last buffer starting at or before `data`.
  auto it = std::upper_bound(fixed_.begin(), fixed_.end(), begin,
                             [](uintptr_t value, const FixedBuffer& b) { return value < b.begin; });
  if (it == fixed_.begin()) return nullptr;
  --it;
  return begin + size <= it->end ? &*it : nullptr;
}

int Ring::Init(uint32_t entries, unsigned flags, UringInterposer& hooks) {
  if (const int rc = hooks.Setup(flags); rc != 0) return rc;
  io_uring_params params{};
  params.flags = flags;
  if ((flags & IORING_SETUP_SQPOLL) != 0) params.sq_thread_idle = kSqThreadIdleMs;
  // The CQ gets the default 2 × entries: with at most `entries` reads in flight (see
  // max_in_flight_) it can never overflow, so no completion is ever parked in the kernel's
  // overflow list and io_uring_enter never fails with EBUSY for that reason.
  const int rc = io_uring_queue_init_params(entries, &ring_, &params);
  open_ = rc == 0;
  if (open_) ForgetRingHistory();
  return rc;
}

int Ring::Setup(uint32_t entries, bool sqpoll, UringInterposer& hooks, std::string* note) {
  const unsigned required = sqpoll ? IORING_SETUP_SQPOLL : 0;
  const unsigned optional = OptionalSetupFlags(sqpoll);
  int rc = Init(entries, required | optional, hooks);
  if (rc != -EINVAL || optional == 0) return rc;
  rc = Init(entries, required, hooks);
  *note = "setup-flags: kernel refused " + FlagNames(optional) + " (" + ErrnoText(EINVAL) +
          "); running without them";
  return rc;
}

Result<std::unique_ptr<Ring>> Ring::Open(const FileSet& files, const UringOptions& options,
                                         UringSetup* setup) {
  UringInterposer& hooks = HooksOf(options);
  std::vector<int> fds(files.size());
  for (size_t i = 0; i < files.size(); ++i) fds[i] = files.fd(i);

  auto ring = std::make_unique<Ring>();
  int last_error = 0;
  std::vector<bool> attempts = options.sqpoll ? std::vector<bool>{true, false}  // SQPOLL first
                                              : std::vector<bool>{false};
  for (const bool sqpoll : attempts) {
    std::string flags_note;
    const int rc = ring->Setup(options.queue_depth, sqpoll, hooks, &flags_note);
    if (rc < 0) {
      last_error = -rc;
      // SQPOLL needs privileges before 5.11 (EPERM) and a kernel thread (ENOMEM, EINVAL in some
      // containers): without it every submission is one io_uring_enter per batch, still fine.
      if (sqpoll) {
        setup->fallbacks.push_back("sqpoll: io_uring_setup with SQPOLL failed (" + ErrnoText(-rc) +
                                   "); submitting with io_uring_enter instead");
      }
      continue;
    }

    // Registered files: each read names an index into the ring's table instead of an fd, so the
    // kernel skips the fd-table lookup and the file reference count on every read. Optional:
    // registration can fail (EMFILE past RLIMIT_NOFILE, ENOMEM), and plain fds read the same.
    int registered = 0;
    if (!fds.empty()) {
      registered = hooks.RegisterFiles();
      if (registered == 0) {
        registered =
            io_uring_register_files(ring->get(), fds.data(), static_cast<unsigned>(fds.size()));
      }
    }
    if (registered < 0 && sqpoll && (ring->get()->features & IORING_FEAT_SQPOLL_NONFIXED) == 0) {
      // Before 5.11 an SQPOLL thread can only read registered files: try again without SQPOLL.
      last_error = -registered;
      ring->Close();
      setup->fallbacks.push_back(
          "sqpoll: this kernel's SQPOLL needs registered files and "
          "io_uring_register_files failed (" +
          ErrnoText(-registered) + "); submitting with io_uring_enter");
      continue;
    }
    if (!flags_note.empty()) setup->fallbacks.push_back(std::move(flags_note));
    if (registered < 0) {
      setup->fallbacks.push_back("register-files: io_uring_register_files failed (" +
                                 ErrnoText(-registered) + "); reads use plain file descriptors");
    }
    ring->RegisterBuffers(options, setup);
    io_uring* r = ring->get();
    setup->sq_entries = r->sq.ring_entries;
    setup->cq_entries = r->cq.ring_entries;
    setup->flags = r->flags;
    setup->sqpoll = ring->sqpoll();
    setup->registered_files = !fds.empty() && registered == 0;
    return ring;
  }
  return Unavailable(last_error);
}

class UringBackendImpl final : public UringBackend {
 public:
  UringBackendImpl(const FileSet& files, const UringOptions& options, std::unique_ptr<Ring> ring,
                   UringSetup setup)
      : UringBackend(std::move(setup)),
        files_(files),
        interposer_(options.interposer),
        hooks_(HooksOf(options)),
        ring_(std::move(ring)),
        owner_(std::this_thread::get_id()),
        max_in_flight_(std::min(options.queue_depth, this->setup().sq_entries)),
        fixed_files_(this->setup().registered_files),
        async_reads_(options.async_reads) {}

  UringBackendImpl(const UringBackendImpl&) = delete;
  UringBackendImpl& operator=(const UringBackendImpl&) = delete;
  ~UringBackendImpl() override;

  Status Submit(std::span<const ReadRequest> requests) override;
  Result<size_t> Reap(std::span<Completion> out, size_t min_completions) override;
  uint64_t fixed_reads() const override { return fixed_reads_; }

 private:
  enum class Failure : uint8_t { kNone, kEndOfFile, kError };

  // One ReadRequest until its completion is queued in done_.
  struct Request {
    uint64_t id = 0;
    uint32_t file = 0;
    uint64_t offset = 0;
    uint64_t total_bytes = 0;
    uint32_t parts_left = 0;  // parts pending or in flight
    Failure failure = Failure::kNone;
    Status status;
  };

  // One READV: up to kMaxIovecsPerRead buffers of a request at one file offset. user_data of its
  // SQE is the part's index in parts_. Pending (in pending_) or in flight (an SQE), never both.
  struct Part {
    uint32_t request = 0;
    uint64_t offset = 0;  // where the unread rest starts
    uint64_t remaining_bytes = 0;
    size_t first = 0;  // first buffer not completely filled
    // Our own copy of the request's (non-empty) buffers, advanced past what short reads filled.
    // The kernel reads it when the SQE is submitted (or, under SQPOLL, consumed); it lives until
    // the part is finished. Moving a Part (parts_ growing) keeps this heap array where it is.
    std::vector<iovec> iovecs;
  };

  Status CheckUsable() const;
  void AddRequest(const ReadRequest& request);
  uint32_t NewRequest();
  uint32_t NewPart();
  void FinishPart(uint32_t part_index);
  void CompleteNow(uint64_t id, Status status) {
    done_.push_back(Completion{id, std::move(status)});
  }

  // Moves pending parts into SQEs, waiting for completions when queue_depth reads are in flight.
  Status PreparePending();
  void PrepareRead(io_uring_sqe* sqe, uint32_t part_index);
  // Submits every prepared SQE and waits until `wait_nr` CQEs are ready. Marks the backend broken
  // on failure.
  Status Enter(unsigned wait_nr);
  // Handles every CQE that is ready, without blocking.
  void HarvestCompletions();
  void HandleCompletion(uint32_t part_index, int res);
  void RecordEndOfFile(Request& request, uint64_t at);

  const FileSet& files_;
  const std::shared_ptr<UringInterposer> interposer_;  // keeps hooks_ alive (tests only)
  UringInterposer& hooks_;
  std::unique_ptr<Ring> ring_;
  const std::thread::id owner_;
  const uint32_t max_in_flight_;
  const bool fixed_files_;
  const bool async_reads_;

  std::vector<Request> requests_;
  std::vector<uint32_t> free_requests_;
  std::vector<Part> parts_;
  std::vector<uint32_t> free_parts_;
  std::deque<uint32_t> pending_;  // parts waiting for an SQE, oldest first
  std::deque<Completion> done_;   // completed requests, not yet reaped
  uint32_t in_flight_ = 0;        // SQEs prepared and not yet completed
  size_t active_requests_ = 0;    // requests with parts pending or in flight
  uint64_t fixed_reads_ = 0;      // READ_FIXED SQEs prepared
  Status broken_;                 // the first ring failure; sticky
};

Status UringBackendImpl::CheckUsable() const {
  if (std::this_thread::get_id() != owner_) {
    return Status::Error(StatusCode::kInternal, "backend-thread",
                         "an io_uring backend was used from a thread other than the one that "
                         "created it (its ring takes submissions from that thread only)");
  }
  return broken_;
}

uint32_t UringBackendImpl::NewRequest() {
  ++active_requests_;
  if (!free_requests_.empty()) {
    const uint32_t index = free_requests_.back();
    free_requests_.pop_back();
    return index;
  }
  requests_.emplace_back();
  return static_cast<uint32_t>(requests_.size() - 1);
}

uint32_t UringBackendImpl::NewPart() {
  if (!free_parts_.empty()) {
    const uint32_t index = free_parts_.back();
    free_parts_.pop_back();
    parts_[index].iovecs.clear();  // keeps its capacity for the next request
    return index;
  }
  parts_.emplace_back();
  return static_cast<uint32_t>(parts_.size() - 1);
}

void UringBackendImpl::AddRequest(const ReadRequest& r) {
  if (r.file >= files_.size()) {
    CompleteNow(r.id, Status::Error(StatusCode::kInternal, "io", "request for unknown file")
                          .WithOffset(r.offset));
    return;
  }
  uint64_t total = 0;
  bool too_large = false;
  for (const iovec& v : r.buffers) {
    too_large = too_large || v.iov_len > kMaxFileOffset - total;
    if (!too_large) total += v.iov_len;
  }
  if (too_large || (total > 0 && r.offset > kMaxFileOffset - total)) {
    CompleteNow(r.id, Status::FromErrno(EINVAL, "io_uring read")
                          .WithPath(files_.path(r.file).string())
                          .WithOffset(r.offset));
    return;
  }
  if (total == 0) {
    CompleteNow(r.id, Status::Ok());
    return;
  }

  const uint32_t request_index = NewRequest();
  {
    Request& request = requests_[request_index];
    request.id = r.id;
    request.file = r.file;
    request.offset = r.offset;
    request.total_bytes = total;
    request.parts_left = 0;
    request.failure = Failure::kNone;
    request.status = Status::Ok();
  }
  // Split into parts of at most kMaxIovecsPerRead non-empty buffers, each at the file offset where
  // its first buffer's bytes are. Empty buffers are dropped: they hold nothing to read.
  uint64_t offset = r.offset;
  size_t next = 0;
  while (next < r.buffers.size()) {
    const uint32_t part_index = NewPart();
    Part& part = parts_[part_index];
    uint64_t bytes = 0;
    for (; next < r.buffers.size() && part.iovecs.size() < kMaxIovecsPerRead; ++next) {
      if (r.buffers[next].iov_len == 0) continue;
      part.iovecs.push_back(r.buffers[next]);
      bytes += r.buffers[next].iov_len;
    }
    if (part.iovecs.empty()) {  // only empty buffers were left
      free_parts_.push_back(part_index);
      break;
    }
    part.request = request_index;
    part.offset = offset;
    part.remaining_bytes = bytes;
    part.first = 0;
    offset += bytes;
    ++requests_[request_index].parts_left;
    pending_.push_back(part_index);
  }
}

void UringBackendImpl::PrepareRead(io_uring_sqe* sqe, uint32_t part_index) {
  Part& part = parts_[part_index];
  const uint32_t file = requests_[part.request].file;
  const int fd = fixed_files_ ? static_cast<int>(file) : files_.fd(file);
  if (hooks_.ReplaceRead(part.offset, part.remaining_bytes)) {
    // A test's interposer stands in for the read: a no-op goes out, and its completion is what the
    // interposer makes of it (-EAGAIN: nothing was read, so only a resubmission fills the buffers).
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, part_index);
    return;
  }
  const iovec& first = part.iovecs[part.first];
  const Ring::FixedBuffer* fixed = part.iovecs.size() - part.first == 1
                                       ? ring_->FindFixed(first.iov_base, first.iov_len)
                                       : nullptr;
  if (fixed != nullptr) {
    // One destination inside a registered buffer: READ_FIXED skips pinning its pages again.
    io_uring_prep_read_fixed(sqe, fd, first.iov_base, static_cast<unsigned>(first.iov_len),
                             part.offset, fixed->index);
    ++fixed_reads_;
  } else {
    io_uring_prep_readv(sqe, fd, part.iovecs.data() + part.first,
                        static_cast<unsigned>(part.iovecs.size() - part.first), part.offset);
  }
  // IOSQE_FIXED_FILE: `fd` is an index into the registered table (see Ring::Open).
  if (fixed_files_) sqe->flags |= IOSQE_FIXED_FILE;
  if (async_reads_) sqe->flags |= IOSQE_ASYNC;
  io_uring_sqe_set_data64(sqe, part_index);
}

Status UringBackendImpl::PreparePending() {
  io_uring* ring = ring_->get();
  while (!pending_.empty()) {
    io_uring_sqe* sqe = in_flight_ < max_in_flight_ ? io_uring_get_sqe(ring) : nullptr;
    if (sqe != nullptr) {
      PrepareRead(sqe, pending_.front());
      pending_.pop_front();
      ++in_flight_;
      continue;
    }
    if (in_flight_ >= max_in_flight_) {
      // queue_depth reads are out: submit what is prepared and wait for one to come back. Its
      // completion goes into done_ (or back into pending_), for a later Reap.
      SHARDSTREAM_RETURN_IF_ERROR(Enter(1));
    } else {
      // The SQ is full of entries the kernel has not taken yet, which only happens under SQPOLL
      // (otherwise io_uring_enter takes them all): wake the thread and wait until it frees a slot.
      SHARDSTREAM_RETURN_IF_ERROR(Enter(0));
      if (ring_->sqpoll()) io_uring_sqring_wait(ring);
    }
    HarvestCompletions();
  }
  return Status::Ok();
}

Status UringBackendImpl::Enter(unsigned wait_nr) {
  io_uring* ring = ring_->get();
  for (;;) {
    const int rc = io_uring_submit_and_wait(ring, wait_nr);
    if (rc >= 0) return Status::Ok();
    if (rc == -EINTR) continue;  // a signal arrived while waiting: nothing was lost, wait again
    if ((rc == -EAGAIN || rc == -EBUSY) && in_flight_ > io_uring_sq_ready(ring)) {
      // The kernel cannot take more requests right now (no memory for them): wait for one it
      // already has, without submitting. The caller harvests it and submits again later.
      io_uring_cqe* cqe = nullptr;
      const int wait_rc = io_uring_wait_cqe(ring, &cqe);
      if (wait_rc == 0 || wait_rc == -EINTR) return Status::Ok();
    }
    broken_ = Status::FromErrno(-rc, "io_uring_enter");
    return broken_;
  }
}

void UringBackendImpl::HarvestCompletions() {
  io_uring* ring = ring_->get();
  io_uring_cqe* cqes[kCqeBatch];
  for (;;) {
    const unsigned n = io_uring_peek_batch_cqe(ring, cqes, kCqeBatch);
    for (unsigned i = 0; i < n; ++i) {
      HandleCompletion(static_cast<uint32_t>(io_uring_cqe_get_data64(cqes[i])), cqes[i]->res);
    }
    // One store-release of the CQ head for the whole batch, after every entry has been read: only
    // then may the kernel overwrite those entries.
    io_uring_cq_advance(ring, n);
    if (n < kCqeBatch) return;
  }
}

void UringBackendImpl::RecordEndOfFile(Request& request, uint64_t at) {
  // Parts of a request end at different places when the file is short; the lowest is where the
  // file really ends (a part straddling the end reads up to it, then reads 0 there).
  if (request.failure == Failure::kError) return;
  if (request.failure == Failure::kEndOfFile && request.status.offset().value_or(0) <= at) return;
  request.status = detail::FileChanged(request.offset, request.total_bytes, at - request.offset)
                       .WithPath(files_.path(request.file).string());
  request.failure = Failure::kEndOfFile;
}

void UringBackendImpl::HandleCompletion(uint32_t part_index, int res) {
  --in_flight_;
  Part& part = parts_[part_index];
  Request& request = requests_[part.request];
  // The interposer's view of the result (tests; production's passes it through).
  res = hooks_.Completion(part.offset, part.remaining_bytes, res);

  if (res == -EAGAIN || res == -EINTR) {
    // EAGAIN: the kernel could not do it now and did not queue it for later; EINTR: a signal
    // interrupted the io-wq worker's blocking read. Either way, the same read again is right.
    if (request.failure == Failure::kError) {
      FinishPart(part_index);
    } else {
      pending_.push_back(part_index);
    }
    return;
  }
  if (res < 0) {
    // First error wins; the request's other parts still run to completion (the kernel is writing
    // into their buffers) and the request is reported when the last one is back.
    if (request.failure == Failure::kNone) {
      request.status = Status::FromErrno(-res, "io_uring read")
                           .WithPath(files_.path(request.file).string())
                           .WithOffset(part.offset);
      request.failure = Failure::kError;
    }
    FinishPart(part_index);
    return;
  }
  if (res == 0) {  // end of file with bytes still wanted: the file shrank
    RecordEndOfFile(request, part.offset);
    FinishPart(part_index);
    return;
  }
  uint64_t got = static_cast<uint64_t>(res);
  if (got > part.remaining_bytes) {
    if (request.failure == Failure::kNone) {
      request.status = Status::Error(StatusCode::kInternal, "io",
                                     "io_uring read returned more bytes than asked for")
                           .WithPath(files_.path(request.file).string())
                           .WithOffset(part.offset);
      request.failure = Failure::kError;
    }
    FinishPart(part_index);
    return;
  }
  part.offset += got;
  part.remaining_bytes -= got;
  while (got > 0) {
    iovec& v = part.iovecs[part.first];
    if (got >= v.iov_len) {
      got -= v.iov_len;
      ++part.first;
    } else {
      v.iov_base = static_cast<char*>(v.iov_base) + got;
      v.iov_len -= got;
      got = 0;
    }
  }
  if (part.remaining_bytes == 0 || request.failure == Failure::kError) {
    FinishPart(part_index);
  } else {
    // Short read: the rest again at the advanced offset. If it was the end of the file, that read
    // returns 0 and names the exact offset; so this continues after an end-of-file in another part.
    pending_.push_back(part_index);
  }
}

void UringBackendImpl::FinishPart(uint32_t part_index) {
  const uint32_t request_index = parts_[part_index].request;
  free_parts_.push_back(part_index);
  Request& request = requests_[request_index];
  if (--request.parts_left > 0) return;
  CompleteNow(request.id, std::move(request.status));
  request.status = Status::Ok();
  free_requests_.push_back(request_index);
  --active_requests_;
}

Status UringBackendImpl::Submit(std::span<const ReadRequest> requests) {
  SHARDSTREAM_RETURN_IF_ERROR(CheckUsable());
  for (const ReadRequest& request : requests) AddRequest(request);
  SHARDSTREAM_RETURN_IF_ERROR(PreparePending());
  // One io_uring_enter hands the whole batch to the kernel (none at all under SQPOLL while its
  // thread is awake).
  if (io_uring_sq_ready(ring_->get()) > 0) return Enter(0);
  return Status::Ok();
}

Result<size_t> UringBackendImpl::Reap(std::span<Completion> out, size_t min_completions) {
  SHARDSTREAM_RETURN_IF_ERROR(CheckUsable());
  const size_t target = std::min({min_completions, out.size(), done_.size() + active_requests_});
  size_t written = 0;
  Status status;
  for (;;) {
    HarvestCompletions();
    status = PreparePending();  // reads requeued by the harvest
    while (written < out.size() && !done_.empty()) {
      out[written++] = std::move(done_.front());
      done_.pop_front();
    }
    if (!status.ok() || written >= target) break;
    if (in_flight_ == 0) {  // cannot happen: an active request always has a read in flight
      status = broken_ =
          Status::Error(StatusCode::kInternal, "io", "io_uring backend lost track of its reads");
      break;
    }
    // Submit the requeued reads and wait in the same system call. Every request still wanted
    // needs at least one more CQE, so waiting for that many never waits for one that is not
    // coming.
    status = Enter(static_cast<unsigned>(std::min<size_t>(target - written, in_flight_)));
    if (!status.ok()) break;
  }
  // Reads requeued in the last round go to the kernel now, to run while the caller works.
  if (status.ok() && io_uring_sq_ready(ring_->get()) > 0) status = Enter(0);
  // Completions already moved into `out` must not be lost to a ring failure: the failure is
  // sticky (broken_) and the next call reports it.
  if (!status.ok() && written == 0) return status;
  return written;
}

UringBackendImpl::~UringBackendImpl() {
  // The kernel writes into the destinations of every read it holds: the ring is torn down (in
  // ~Ring) only once all of them have completed, so it never writes into memory the caller frees
  // after we return. Their completions are discarded. SQEs prepared but never submitted are not
  // the kernel's (except under SQPOLL, whose thread takes them by itself): they die with the ring.
  io_uring* ring = ring_->get();
  if (ring_->sqpoll()) (void)io_uring_submit(ring);  // wake the SQ thread if it sleeps
  unsigned held = ring_->sqpoll() ? in_flight_ : in_flight_ - io_uring_sq_ready(ring);
  while (held > 0) {
    // Waits without submitting, so it works from any thread (SINGLE_ISSUER refuses submissions
    // from others, not waits).
    io_uring_cqe* cqe = nullptr;
    const int rc = io_uring_wait_cqe(ring, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) break;  // the ring itself failed: nothing left to wait with
    io_uring_cqe* cqes[kCqeBatch];
    const unsigned n = io_uring_peek_batch_cqe(ring, cqes, kCqeBatch);
    io_uring_cq_advance(ring, n);
    held -= std::min(held, n);
  }
}

}  // namespace

Result<std::unique_ptr<UringBackend>> UringBackend::Create(const FileSet& files,
                                                           const UringOptions& options) {
  if (options.queue_depth == 0 || options.queue_depth > kMaxUringQueueDepth) {
    return Status::Error(StatusCode::kInvalidArgument, "invalid-option",
                         "io_uring queue depth must be 1.." + std::to_string(kMaxUringQueueDepth) +
                             ", not " + std::to_string(options.queue_depth));
  }
  UringSetup setup;
  SHARDSTREAM_ASSIGN_OR_RETURN(std::unique_ptr<Ring> ring, Ring::Open(files, options, &setup));
  return std::unique_ptr<UringBackend>(
      new UringBackendImpl(files, options, std::move(ring), std::move(setup)));
}

Result<std::unique_ptr<ReadBackend>> MakeUringBackend(const FileSet& files,
                                                      const UringOptions& options) {
  SHARDSTREAM_ASSIGN_OR_RETURN(std::unique_ptr<UringBackend> backend,
                               UringBackend::Create(files, options));
  return std::unique_ptr<ReadBackend>(std::move(backend));
}

}  // namespace shardstream::io
