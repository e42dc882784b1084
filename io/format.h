// Human-readable numbers for reports (the CLI, the bench harness).
#pragma once

#include <cstdint>
#include <string>

namespace shardstream::io {

// 1536 → "1.5 KiB"; exact below 1 KiB ("12 B").
std::string FormatBytes(uint64_t bytes);
// 11277311 → "11,277,311".
std::string FormatCount(uint64_t value);

}  // namespace shardstream::io
