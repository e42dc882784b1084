// How much of a file is in the page cache (the input to `--direct auto`), dropping it from there
// (`shardstream bench --cold`), and how much memory the process has held.
#pragma once

#include "io/checkpoint.h"
#include "io/status.h"

#include <cstdint>

namespace shardstream::io {

// The fraction (0..1) of the file's pages that are resident, sampled with mincore(2) over up to
// 64 windows of 1 MiB spread evenly across the file (the whole file when it is small). A 0-byte
// file counts as resident. Errors carry errno (mmap or mincore refused). Thread-safe.
Result<double> ResidentFraction(int fd, uint64_t size_bytes);

// The residency of a whole checkpoint, weighted by file size. Files that cannot be sampled count
// as resident (the safe answer for `--direct auto`: buffered reads). Errors: a file that cannot
// be opened.
Result<double> CheckpointResidentFraction(const Checkpoint& checkpoint);

// Asks the kernel to drop the file's pages from the page cache: fdatasync (dirty pages cannot be
// dropped), then posix_fadvise(POSIX_FADV_DONTNEED) over the whole file. Needs no privileges, but
// is advice: pages another process has mapped or locked stay, so check with ResidentFraction.
// Errors carry errno (rule "io"). Thread-safe.
Status DropCachedPages(int fd);

// The process's peak resident memory so far (VmHWM in /proc/self/status), 0 if unknown.
uint64_t PeakResidentBytes();

}  // namespace shardstream::io
