#include "io/read_backend.h"

#include "io/uring_backend.h"

#include <sys/mman.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits.h>
#include <mutex>
#include <string>

namespace shardstream::io {
namespace {

constexpr size_t kMaxIovecs = IOV_MAX;

using detail::FileChanged;

// preadv until every buffer is full. Batches of at most IOV_MAX iovecs; a short read resumes
// at the advanced offset inside the partly filled buffer.
Status ReadScatter(int fd, uint64_t offset, std::span<const iovec> buffers) {
  uint64_t total = 0;
  for (const iovec& v : buffers) total += v.iov_len;
  iovec batch[kMaxIovecs];
  size_t next = 0;        // first buffer not yet in a batch
  size_t skip_bytes = 0;  // bytes of buffers[next] already filled
  uint64_t done = 0;
  while (done < total) {
    size_t count = 0;
    for (size_t i = next; i < buffers.size() && count < kMaxIovecs; ++i) {
      batch[count] = buffers[i];
      if (i == next) {
        batch[count].iov_base = static_cast<char*>(batch[count].iov_base) + skip_bytes;
        batch[count].iov_len -= skip_bytes;
      }
      if (batch[count].iov_len > 0) ++count;
    }
    ssize_t n = ::preadv(fd, batch, static_cast<int>(count), static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Status::FromErrno(errno, "preadv").WithOffset(offset + done);
    }
    if (n == 0) return FileChanged(offset, total, done);
    done += static_cast<uint64_t>(n);
    // Advance over the buffers this read filled.
    size_t advanced = static_cast<size_t>(n);
    while (advanced > 0) {
      size_t left = buffers[next].iov_len - skip_bytes;
      if (advanced >= left) {
        advanced -= left;
        ++next;
        skip_bytes = 0;
      } else {
        skip_bytes += advanced;
        advanced = 0;
      }
    }
    while (next < buffers.size() && buffers[next].iov_len == 0) ++next;
  }
  return Status::Ok();
}

// Synchronous backends complete requests inside Submit; Reap hands the results out.
class SyncBackend : public ReadBackend {
 public:
  explicit SyncBackend(const FileSet& files) : files_(files) {}

  Status Submit(std::span<const ReadRequest> requests) override {
    for (const ReadRequest& r : requests) {
      Status status = r.file < files_.size()
                          ? Read(r)
                          : Status::Error(StatusCode::kInternal, "io", "request for unknown file");
      if (!status.ok()) {
        if (r.file < files_.size()) status.WithPath(files_.path(r.file).string());
        status.WithOffset(r.offset);
      }
      done_.push_back(Completion{r.id, std::move(status)});
    }
    return Status::Ok();
  }

  Result<size_t> Reap(std::span<Completion> out, size_t /*min_completions*/) override {
    size_t n = std::min(out.size(), done_.size());
    for (size_t i = 0; i < n; ++i) {
      out[i] = std::move(done_.front());
      done_.pop_front();
    }
    return n;
  }

 protected:
  virtual Status Read(const ReadRequest& request) = 0;
  const FileSet& files_;

 private:
  std::deque<Completion> done_;
};

class PreadBackend final : public SyncBackend {
 public:
  using SyncBackend::SyncBackend;
  BackendKind kind() const override { return BackendKind::kPread; }

 private:
  Status Read(const ReadRequest& r) override {
    return ReadScatter(files_.fd(r.file), r.offset, r.buffers);
  }
};

class MmapBackend final : public SyncBackend {
 public:
  using SyncBackend::SyncBackend;
  BackendKind kind() const override { return BackendKind::kMmap; }

 private:
  Status Read(const ReadRequest& r) override {
    SHARDSTREAM_ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> map, files_.Mapping(r.file));
    // Check the whole range first, overflow-safe, so that the error names the offset where the
    // file ends (as pread reports it) rather than where the failing buffer starts.
    uint64_t total = 0;
    for (const iovec& v : r.buffers) total += v.iov_len;
    const uint64_t size = map->size_bytes();
    if (total > size || r.offset > size - total) {
      return FileChanged(r.offset, total, size > r.offset ? size - r.offset : 0);
    }
    uint64_t offset = r.offset;
    for (const iovec& v : r.buffers) {
      if (v.iov_len > 0) std::memcpy(v.iov_base, map->data() + offset, v.iov_len);
      offset += v.iov_len;
    }
    return Status::Ok();
  }
};

}  // namespace

namespace detail {
Status FileChanged(uint64_t offset, uint64_t wanted_bytes, uint64_t got_bytes) {
  return Status::Error(StatusCode::kIoError, "file-changed",
                       "unexpected end of file: wanted " + std::to_string(wanted_bytes) +
                           " bytes, got " + std::to_string(got_bytes) +
                           " (was the file truncated or replaced while loading?)")
      .WithOffset(offset + got_bytes);
}
}  // namespace detail

Result<std::shared_ptr<MappedFile>> MappedFile::Map(int fd, uint64_t size_bytes,
                                                    const std::filesystem::path& path,
                                                    bool writable) {
  if (size_bytes == 0) return std::shared_ptr<MappedFile>(new MappedFile(nullptr, 0));
  const int protection = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  void* data = ::mmap(nullptr, size_bytes, protection, MAP_PRIVATE, fd, 0);
  if (data == MAP_FAILED) return Status::FromErrno(errno, "mmap").WithPath(path.string());
  return std::shared_ptr<MappedFile>(new MappedFile(static_cast<std::byte*>(data), size_bytes));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_bytes_);
}

Result<FileSet> FileSet::Open(std::span<const std::filesystem::path> paths,
                              std::span<const uint64_t> expected_sizes, int extra_flags) {
  FileSet set;
  set.mappings_ = std::make_shared<std::vector<std::shared_ptr<MappedFile>>>(paths.size());
  set.mapping_mutex_ = std::make_shared<std::mutex>();
  for (size_t i = 0; i < paths.size(); ++i) {
    SHARDSTREAM_ASSIGN_OR_RETURN(OpenFile file, OpenForRead(paths[i], extra_flags));
    if (i < expected_sizes.size() && file.size_bytes != expected_sizes[i]) {
      return Status::Error(StatusCode::kIoError, "file-changed",
                           "file is now " + std::to_string(file.size_bytes) + " bytes but was " +
                               std::to_string(expected_sizes[i]) +
                               " when its header was validated (changed while loading?)")
          .WithPath(paths[i].string());
    }
    set.files_.push_back(std::move(file));
    set.paths_.push_back(paths[i]);
  }
  return set;
}

Result<FileSet> FileSet::Open(const Checkpoint& checkpoint, int extra_flags) {
  std::vector<std::filesystem::path> paths;
  std::vector<uint64_t> sizes;
  for (const CheckpointFile& f : checkpoint.files) {
    paths.push_back(f.path);
    sizes.push_back(f.header.file_bytes);
  }
  return Open(paths, sizes, extra_flags);
}

Result<std::shared_ptr<MappedFile>> FileSet::Mapping(size_t i) const {
  std::lock_guard<std::mutex> lock(*mapping_mutex_);
  std::shared_ptr<MappedFile>& slot = (*mappings_)[i];
  if (!slot) {
    SHARDSTREAM_ASSIGN_OR_RETURN(slot, MappedFile::Map(fd(i), size_bytes(i), path(i)));
    // The loader reads each mapping front to back, once.
    if (slot->size_bytes() > 0) ::madvise(slot->data(), slot->size_bytes(), MADV_SEQUENTIAL);
  }
  return slot;
}

std::string_view BackendName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kPread:
      return "pread";
    case BackendKind::kMmap:
      return "mmap";
    case BackendKind::kUring:
      return "uring";
  }
  return "unknown";
}

std::optional<BackendKind> ParseBackend(std::string_view name) {
  if (name == "pread") return BackendKind::kPread;
  if (name == "mmap") return BackendKind::kMmap;
  if (name == "uring" || name == "io_uring") return BackendKind::kUring;
  return std::nullopt;
}

std::unique_ptr<ReadBackend> MakeBackend(BackendKind kind, const FileSet& files) {
  Result<std::unique_ptr<ReadBackend>> backend = MakeBackendOrError(kind, files);
  return backend.ok() ? std::move(backend).value() : nullptr;
}

Result<std::unique_ptr<ReadBackend>> MakeBackendOrError(BackendKind kind, const FileSet& files,
                                                        const UringOptions* uring) {
  switch (kind) {
    case BackendKind::kPread:
      return std::unique_ptr<ReadBackend>(std::make_unique<PreadBackend>(files));
    case BackendKind::kMmap:
      return std::unique_ptr<ReadBackend>(std::make_unique<MmapBackend>(files));
    case BackendKind::kUring:
      // A switch for hosts where io_uring misbehaves, and the way tests force the fallback.
      if (const char* off = std::getenv("SHARDSTREAM_DISABLE_IO_URING");
          off && *off && *off != '0') {
        return Status::Error(StatusCode::kUnsupported, "io-uring-unavailable",
                             "io_uring disabled by SHARDSTREAM_DISABLE_IO_URING");
      }
#ifdef SHARDSTREAM_HAVE_IO_URING
      return MakeUringBackend(files, uring != nullptr ? *uring : UringOptions{});
#else
      return Status::Error(StatusCode::kUnsupported, "io-uring-unavailable",
                           "this build of shardstream has no io_uring support (built without "
                           "liburing)");
#endif
  }
  return Status::Error(StatusCode::kInvalidArgument, "io", "unknown read backend");
}

}  // namespace shardstream::io
