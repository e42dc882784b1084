// Wall-clock stage timing, the one definition every layer uses.
#pragma once

#include <chrono>

namespace shardstream::io {

using Clock = std::chrono::steady_clock;

// Seconds from `start` to now.
inline double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace shardstream::io
