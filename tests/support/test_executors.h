// The executors a test may run the engine's parallel work on in this build.
//
// ThreadSanitizer builds (SHARDSTREAM_EXECUTOR_THREADS) test only the std::thread executor:
// Debian's oneTBB is not instrumented, so TSan reports races inside it that are not there (the
// reason the executor seam exists). Every test that loops over executors takes this list.
#pragma once

#include "engine/executor.h"

#include <array>

namespace shardstream::testing {

#ifdef SHARDSTREAM_EXECUTOR_THREADS
inline constexpr std::array kTestExecutors{engine::ExecutorKind::kThreads};
#else
inline constexpr std::array kTestExecutors{engine::ExecutorKind::kTbb,
                                           engine::ExecutorKind::kThreads};
#endif

}  // namespace shardstream::testing
