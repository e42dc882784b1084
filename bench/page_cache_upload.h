// An experiment, not part of the library: uploading straight from the page cache, for
// checkpoints whose files are already cached. bench/page_cache_upload_main.cc runs it beside the
// staged path (BENCHMARKS.md, "The page-cache upload experiment").
//
// The staged path copies every byte twice: the CPU from the page cache into a pinned slot, then
// the device from the slot. Warm, the CPU copy is the bottleneck (on an H100 host the staged
// path reached 20–27 GB/s against 55 GB/s of pinned host-to-device bandwidth). Here the page
// cache itself is the DMA source: windows of a read-only mapping of each file are pinned in place
// (HostPinning::RegisterHostReadOnly), the device copies each tensor piece straight out of them,
// and a window is unpinned once its copies finished. No staging memory, no CPU copy.
//
// Measured on that host (BENCHMARKS.md): pinning alone runs at ~47 GB/s in 256 MiB windows, yet
// a whole 4 GB load took 0.142 s, as long as the staged path (0.143 s), and the mapped, pinned
// file pages count in the process's RSS. So it left the library (and the CLI) for bench/, kept as
// the base for finding out why it does not win, and for hosts where it might.
//
//   pinning threads (pin_threads): window i waits until window i - K was unpinned, is pinned, and
//                                  its pieces' copies are queued on stream i % K
//   the unpinning thread:          window i, in order: wait for stream i % K, unpin, report
//   progress
//
// At most K = windows_in_flight windows are pinned at once: K × window_bytes of page cache held
// resident, nothing allocated. Pinning faults in pages that are not cached (slowly, a page at a
// time): use it for cached files only.
// Bytes are copied as stored: callers with casts use the staged path.
//
// Files changing underneath: a window whose pages are gone (the file was truncated) fails to pin,
// pinned pages keep the bytes they had, and every file's size is checked again after the last
// copy (rule "file-changed"), so a load never reports success over a file that changed size. The
// process never touches the mapping itself, so a truncation cannot raise SIGBUS here.
//
// Failure: the first error wins; no more windows are pinned, every window pinned so far is
// unpinned after its stream finished, and the error comes back: rule "pin-page-cache" when
// pinning failed (the caller may fall back to the staged path: nothing is left pinned or queued),
// "cuda" from the device, "cancelled" from the progress callback, "file-changed".
//
// Thread-safety: one call is one load; concurrent calls on different checkpoints are fine.
#pragma once

#include "cuda/device_ops.h"
#include "engine/pipeline.h"
#include "io/checkpoint.h"
#include "io/status.h"

#include <cstdint>
#include <span>

namespace shardstream::bench {

// Pinning memory in place, which the library's device seam (cuda/device_ops.h) does not need.
class HostPinning {
 public:
  virtual ~HostPinning() = default;
  // cudaHostRegister(ReadOnly | Portable) of a window of a read-only mapping; faults pages in.
  [[nodiscard]] virtual io::Status RegisterHostReadOnly(const std::byte* data,
                                                        size_t size_bytes) = 0;
  virtual io::Status UnregisterHost(const std::byte* data) = 0;
};

// 256 MiB: pinning costs a fixed ~1 ms per call plus the pages (measured on an H100 host:
// 33 GB/s in 64 MiB windows, 52 GB/s in 256 MiB ones).
inline constexpr uint64_t kDefaultPinWindowBytes = 256ull << 20;
inline constexpr uint32_t kDefaultPinnedWindows = 4;
inline constexpr uint32_t kDefaultPinThreads = 2;

struct PageCacheUploadOptions {
  uint64_t window_bytes = kDefaultPinWindowBytes;  // bytes pinned by one call (page multiple)
  uint32_t windows_in_flight = kDefaultPinnedWindows;
  uint32_t pin_threads = kDefaultPinThreads;
  ProgressFn progress;  // bytes whose copies finished; may cancel
};

struct PageCacheUploadStats {
  uint64_t payload_bytes = 0;  // tensor bytes copied
  uint64_t pinned_bytes = 0;   // bytes pinned (payload, gaps between tensors, page rounding)
  uint64_t windows = 0;
  uint64_t copies = 0;
  uint32_t peak_pinned_windows = 0;
  double pin_seconds = 0;    // summed over the pinning threads
  double unpin_seconds = 0;  // waiting for streams excluded
  double seconds = 0;
};

// Copies every target's bytes (as stored) into its destination, device memory of `ops`' device.
// Targets with no bytes are skipped.
io::Result<PageCacheUploadStats> UploadFromPageCache(const io::Checkpoint& checkpoint,
                                                     std::span<const engine::Target> targets,
                                                     const PageCacheUploadOptions& options,
                                                     cuda::DeviceOps& ops, HostPinning& pin);

}  // namespace shardstream::bench
