// Mapped CPU destinations: tensors that need no cast, slice or layout change are handed out as
// views of a private, copy-on-write mapping of their file, and the engine makes the pages they
// cover resident ahead of the consumer, in parallel (populate, not copy).
//
//   auto mapped = engine::MappedCheckpoint::Map(checkpoint);      // every file, MAP_PRIVATE
//   std::vector<engine::PopulateRange> ranges = ...;               // the tensors' byte ranges
//   engine::PopulateReport report;
//   io::Status status = engine::Populate(*mapped, ranges, {}, &report);
//   std::span<std::byte> data = mapped->Data(0);                   // views point in here
//
// Writes through a view change the process's private copy of that page, never the file. Each
// file's mapping is an io::MappedFile held by shared_ptr: whoever holds one (a view's owner, the
// Python buffer object) keeps that file mapped; MappedCheckpoint itself may go first.
//
// Truncating a file while it is mapped makes the next access to a page past its new end raise
// SIGBUS, as with every mmap-based loader. Populate sees such pages first and fails with rule
// "file-changed" instead (MADV_POPULATE_READ reports EFAULT); the touch fallback cannot.
#pragma once

#include "engine/executor.h"
#include "io/checkpoint.h"
#include "io/read_backend.h"
#include "io/status.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace shardstream::engine {

// The data sections of a checkpoint's files, each mapped whole with MAP_PRIVATE, readable and
// writable (copy on write: torch expects tensor memory to be writable, and the file never
// changes). Immutable after Map; thread-safe to read. Move-only.
class MappedCheckpoint {
 public:
  // Maps every file of `checkpoint` (validated headers), after checking each file still has the
  // size its header was validated against (rule "file-changed" otherwise). The descriptors are
  // closed before it returns: a mapping needs none. Errors name the file and carry errno.
  static io::Result<MappedCheckpoint> Map(const io::Checkpoint& checkpoint);

  size_t size() const { return files_.size(); }
  // File `i`'s data section (the bytes after its header), where tensor offsets (TensorInfo::begin)
  // count from. Valid while this object or file(i) is held.
  std::span<std::byte> Data(size_t i) const;
  // The mapping of file `i` (whole file, header included); shared with every holder.
  const std::shared_ptr<io::MappedFile>& file(size_t i) const { return files_[i].mapping; }
  uint64_t data_offset(size_t i) const { return files_[i].data_offset; }
  const std::string& path(size_t i) const { return files_[i].path; }

 private:
  struct File {
    std::shared_ptr<io::MappedFile> mapping;
    uint64_t data_offset = 0;
    std::string path;
  };
  std::vector<File> files_;
};

// Bytes of one file's data section to make resident: [offset, offset + size_bytes).
struct PopulateRange {
  uint32_t file = 0;
  uint64_t offset = 0;  // from the start of the data section, as TensorInfo::begin
  uint64_t size_bytes = 0;
};

// How populate asks the kernel for pages.
enum class PopulateMethod : uint8_t {
  kAuto,     // MADV_POPULATE_READ, or kTouch where the kernel lacks it (before 5.14: EINVAL)
  kMadvise,  // MADV_POPULATE_READ only; EINVAL is an error
  kTouch,    // read one byte of every page (a fault per page, on the populating threads)
};

inline constexpr uint64_t kDefaultPopulateChunkBytes = 8ull << 20;

struct PopulateOptions {
  int threads = 0;  // workers; 0: one per core
  // Ranges are coalesced, then cut into chunks of about this many bytes (page-aligned), each
  // populated by one worker. Workers take chunks in offset order, so the front of the checkpoint
  // (the first layers, what a consumer reading in offset order touches first) lands first.
  uint64_t chunk_bytes = kDefaultPopulateChunkBytes;
  PopulateMethod method = PopulateMethod::kAuto;
  ExecutorKind executor = DefaultExecutor();
  // Checked between chunks: when it becomes true, Populate stops with rule "cancelled".
  const std::atomic<bool>* cancel = nullptr;
  // When set, advanced (relaxed) by each chunk's bytes as it is populated: a progress count.
  std::atomic<uint64_t>* done_bytes = nullptr;
  // Leave alone the chunks in the page cache already (mincore on pages spread over each chunk),
  // counting them in resident_bytes: a warm chunk needs no read, and mapping its pages here costs a
  // core that a consumer working meanwhile needs more (its first touch maps them with a minor
  // fault, sixteen pages at a time through the kernel's fault-around). For streams whose consumer
  // runs while populate does (iter_tensors); a load that returns only once populate has ended maps
  // them all.
  bool skip_resident = false;
};

struct PopulateReport {
  uint64_t populated_bytes = 0;  // bytes of the ranges (coalesced: a byte asked twice counts once)
  // Of populated_bytes, those in chunks found resident and left alone (skip_resident).
  uint64_t resident_bytes = 0;
  double seconds = 0.0;  // wall time of the whole populate
  uint64_t chunks = 0;
  int threads = 0;     // distinct threads that populated at least one chunk
  std::string method;  // "madvise" or "touch" (what ran; "touch" after a fallback)
};

// Makes the pages under `ranges` of `mapped` resident with up to options.threads workers and
// fills `report`. Errors: rule "populate-range" for a range outside its file's data section
// (kInvalidArgument, before any page is touched); rule "file-changed" when a page is past the
// file's end (it was truncated after mapping); errno failures of madvise with path and offset;
// rule "cancelled". After an error some pages may be resident; nothing else changes. Thread-safe
// (any number of populates may run over one mapping).
[[nodiscard]] io::Status Populate(const MappedCheckpoint& mapped,
                                  std::span<const PopulateRange> ranges,
                                  const PopulateOptions& options, PopulateReport* report);

}  // namespace shardstream::engine
