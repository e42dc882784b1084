#include "engine/mapped.h"

#include "io/stopwatch.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

namespace shardstream::engine {
namespace {

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14 uapi; older libc headers lack the name
#endif

// One page-aligned piece of one mapping, populated by one worker.
struct Chunk {
  uint32_t file = 0;
  uint64_t begin = 0;          // offsets in the whole-file mapping, page-aligned
  uint64_t end = 0;            // page-aligned (may pass the file's end within its last page)
  uint64_t payload_bytes = 0;  // bytes of the ranges inside it
  bool resident = false;       // probed in the page cache when populate began (LooksResident)
};

uint64_t PageBytes() {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

uint64_t RoundDown(uint64_t value, uint64_t unit) { return value / unit * unit; }
uint64_t RoundUp(uint64_t value, uint64_t unit) { return (value + unit - 1) / unit * unit; }

// Reads one byte of every page in [data, data + size_bytes): each read faults the page in.
void TouchPages(const std::byte* data, uint64_t size_bytes) {
  const uint64_t page = PageBytes();
  // volatile: the reads are the point; nothing uses their value.
  volatile unsigned char sink = 0;
  for (uint64_t at = 0; at < size_bytes; at += page) {
    sink = static_cast<unsigned char>(data[at]);
  }
  (void)sink;
}

// MADV_POPULATE_READ over [data, data + size_bytes) (page-aligned). Returns 0 or errno. The
// kernel may stop early with EINTR or EAGAIN (a signal, a page under writeback): retry.
int MadvisePopulate(std::byte* data, uint64_t size_bytes) {
  for (;;) {
    if (::madvise(data, size_bytes, MADV_POPULATE_READ) == 0) return 0;
    if (errno != EINTR && errno != EAGAIN) return errno;
  }
}

// Whether the chunk at [data, data + size_bytes) (page-aligned) is in the page cache, judged by
// mincore on kResidencyProbes pages spread over it. Asking for every page costs as much as a
// WILLNEED of it (both walk the page cache page by page: ~50 ms per 2 GB on the 2-core VM), six
// times a populate of warm pages (which maps whole folios); the probes cost a few system calls.
// A chunk partly cold that probes warm stays correct: its missing pages are faulted in later, by
// populate or the consumer, in the fault path's readahead instead of one large request.
constexpr uint64_t kResidencyProbes = 8;
bool LooksResident(std::byte* data, uint64_t size_bytes) {
  const uint64_t page = PageBytes();
  const uint64_t pages = size_bytes / page;
  for (uint64_t k = 0; k < kResidencyProbes && k < pages; ++k) {
    const uint64_t at = pages <= kResidencyProbes ? k : (pages - 1) * k / (kResidencyProbes - 1);
    unsigned char resident = 0;
    if (::mincore(data + at * page, page, &resident) != 0 || (resident & 1) == 0) return false;
  }
  return true;
}

// Starts the kernel's readahead of a chunk's pages (asynchronous; see the worker in Populate).
void WillNeed(const MappedCheckpoint& mapped, const Chunk& c) {
  (void)::madvise(mapped.file(c.file)->data() + c.begin, c.end - c.begin, MADV_WILLNEED);
}

}  // namespace

io::Result<MappedCheckpoint> MappedCheckpoint::Map(const io::Checkpoint& checkpoint) {
  // FileSet::Open checks each file's size against its validated header.
  SHARDSTREAM_ASSIGN_OR_RETURN(io::FileSet files, io::FileSet::Open(checkpoint));
  MappedCheckpoint out;
  out.files_.reserve(files.size());
  for (size_t i = 0; i < files.size(); ++i) {
    SHARDSTREAM_ASSIGN_OR_RETURN(
        std::shared_ptr<io::MappedFile> mapping,
        io::MappedFile::Map(files.fd(i), files.size_bytes(i), files.path(i), /*writable=*/true));
    out.files_.push_back(
        File{std::move(mapping), checkpoint.files[i].header.data_offset(), files.path(i).string()});
  }
  return out;  // `files` closes the descriptors: the mappings keep the files' pages reachable
}

std::span<std::byte> MappedCheckpoint::Data(size_t i) const {
  const File& f = files_[i];
  if (f.mapping->data() == nullptr) return {};
  return {f.mapping->data() + f.data_offset, f.mapping->size_bytes() - f.data_offset};
}

io::Status Populate(const MappedCheckpoint& mapped, std::span<const PopulateRange> ranges,
                    const PopulateOptions& options, PopulateReport* report) {
  const io::Clock::time_point start = io::Clock::now();
  *report = PopulateReport{};
  const uint64_t page = PageBytes();

  // 1. Check every range, then express it in whole-file offsets, sorted and coalesced.
  std::vector<PopulateRange> sorted;
  sorted.reserve(ranges.size());
  for (const PopulateRange& r : ranges) {
    if (r.file >= mapped.size()) {
      return io::Status::InvalidArgument("populate-range", "file index " + std::to_string(r.file) +
                                                               " is outside the checkpoint's " +
                                                               std::to_string(mapped.size()) +
                                                               " files");
    }
    const uint64_t data_bytes = mapped.Data(r.file).size();
    if (r.offset > data_bytes || r.size_bytes > data_bytes - r.offset) {
      return io::Status::InvalidArgument("populate-range",
                                         "range of " + std::to_string(r.size_bytes) +
                                             " bytes at data offset " + std::to_string(r.offset) +
                                             " passes the data section's end (" +
                                             std::to_string(data_bytes) + " bytes)")
          .WithPath(mapped.path(r.file))
          .WithOffset(r.offset);
    }
    if (r.size_bytes == 0) continue;
    sorted.push_back({r.file, r.offset + mapped.data_offset(r.file), r.size_bytes});
  }
  std::sort(sorted.begin(), sorted.end(), [](const PopulateRange& a, const PopulateRange& b) {
    return a.file != b.file ? a.file < b.file : a.offset < b.offset;
  });
  std::vector<PopulateRange> merged;
  for (const PopulateRange& r : sorted) {
    if (!merged.empty() && merged.back().file == r.file &&
        r.offset <= merged.back().offset + merged.back().size_bytes) {
      PopulateRange& last = merged.back();
      last.size_bytes =
          std::max(last.offset + last.size_bytes, r.offset + r.size_bytes) - last.offset;
    } else {
      merged.push_back(r);
    }
  }

  // 2. Chunks: each range cut at multiples of chunk_bytes (file offsets), widened to pages. Two
  //    ranges sharing a page may both populate it: harmless, a resident page is skipped.
  const uint64_t chunk_bytes =
      std::max(RoundUp(std::max<uint64_t>(options.chunk_bytes, 1), page), page);
  std::vector<Chunk> chunks;
  for (const PopulateRange& r : merged) {
    report->populated_bytes += r.size_bytes;
    uint64_t at = r.offset;
    const uint64_t end = r.offset + r.size_bytes;
    while (at < end) {
      const uint64_t cut = std::min(end, RoundDown(at, chunk_bytes) + chunk_bytes);
      chunks.push_back(Chunk{r.file, RoundDown(at, page), RoundUp(cut, page), cut - at});
      at = cut;
    }
  }
  report->chunks = chunks.size();
  // Which chunks are warm, before any worker starts: a worker's WILLNEED puts the pages of the
  // chunks ahead in the page cache (reads in flight), which must not read as resident. Warm
  // chunks get no WILLNEED (it would only walk the page cache); with skip_resident, no populate.
  size_t resident_chunks = 0;
  for (Chunk& c : chunks) {
    c.resident = LooksResident(mapped.file(c.file)->data() + c.begin, c.end - c.begin);
    if (c.resident && options.skip_resident) {
      report->resident_bytes += c.payload_bytes;
      ++resident_chunks;
    }
  }

  // 3. Workers take chunks in order from a shared counter: the front lands first, and a worker
  //    whose chunks were already resident moves on to the next at once.
  const int threads = std::max(
      1,
      std::min<int>(options.threads > 0 ? options.threads : HardwareConcurrency(options.executor),
                    static_cast<int>(std::max<size_t>(chunks.size() - resident_chunks, 1))));
  const bool may_touch = options.method != PopulateMethod::kMadvise;
  std::atomic<bool> touch{options.method == PopulateMethod::kTouch};
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mutex;
  io::Status first_error;                // guarded by mutex
  std::set<std::thread::id> thread_ids;  // guarded by mutex
  auto fail = [&](io::Status status) {
    std::lock_guard<std::mutex> lock(mutex);
    if (first_error.ok()) first_error = std::move(status);
    failed.store(true, std::memory_order_relaxed);
  };
  auto worker = [&] {
    bool worked = false;
    for (;;) {
      if (failed.load(std::memory_order_relaxed)) break;
      if (options.cancel != nullptr && options.cancel->load(std::memory_order_relaxed)) {
        fail(io::Status::Error(io::StatusCode::kCancelled, "cancelled", "populate cancelled"));
        break;
      }
      const size_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= chunks.size()) break;
      const Chunk& c = chunks[i];
      std::byte* base = mapped.file(c.file)->data();
      if (c.resident && options.skip_resident) {
        if (options.done_bytes != nullptr) {
          options.done_bytes->fetch_add(c.payload_bytes, std::memory_order_relaxed);
        }
        continue;
      }
      worked = true;
      // Cold pages: MADV_POPULATE_READ alone faults them in through the fault path's readahead
      // (128 KiB requests, one at a time per worker), slower than one thread touching the file in
      // order. MADV_WILLNEED starts the kernel's readahead of a whole chunk at once (large,
      // asynchronous requests); asking for this chunk and the one this worker takes next keeps
      // the device's queue full while the populate waits. Chunks probed resident get none (on
      // warm pages it only walks the page cache). Advice: its failure changes nothing.
      if (!c.resident) WillNeed(mapped, c);
      const size_t ahead = i + static_cast<size_t>(threads);
      if (ahead < chunks.size() && !chunks[ahead].resident) WillNeed(mapped, chunks[ahead]);
      if (!touch.load(std::memory_order_relaxed)) {
        const int err = MadvisePopulate(base + c.begin, c.end - c.begin);
        if (err == EINVAL && may_touch) {
          // The kernel predates MADV_POPULATE_READ (5.14): fault the pages in by reading them.
          touch.store(true, std::memory_order_relaxed);
        } else if (err == EFAULT) {
          // A page past the file's end: the file shrank after it was mapped.
          fail(io::Status::Error(io::StatusCode::kIoError, "file-changed",
                                 "a mapped page lies past the file's end (was the file "
                                 "truncated while mapped?)")
                   .WithPath(mapped.path(c.file))
                   .WithOffset(c.begin)
                   .WithErrno(err));
          break;
        } else if (err != 0) {
          fail(io::Status::FromErrno(err, "madvise(MADV_POPULATE_READ)")
                   .WithPath(mapped.path(c.file))
                   .WithOffset(c.begin));
          break;
        }
      }
      if (touch.load(std::memory_order_relaxed)) TouchPages(base + c.begin, c.end - c.begin);
      if (options.done_bytes != nullptr) {
        options.done_bytes->fetch_add(c.payload_bytes, std::memory_order_relaxed);
      }
    }
    if (worked) {
      std::lock_guard<std::mutex> lock(mutex);
      thread_ids.insert(std::this_thread::get_id());
    }
  };
  if (threads == 1) {
    // One chunk to populate (a small load, or every other one resident) or one thread asked
    // for: on the calling thread, without the task group's start-up (oneTBB's arena costs
    // milliseconds the first time).
    worker();
  } else {
    std::unique_ptr<TaskGroup> group = MakeTaskGroup(threads, options.executor);
    for (int t = 0; t < threads; ++t) group->Run(worker);
    group->Wait();
  }
  report->threads = static_cast<int>(thread_ids.size());
  report->method = touch.load() ? "touch" : "madvise";
  report->seconds = io::SecondsSince(start);
  return first_error;
}

}  // namespace shardstream::engine
