// The scheduling seam: where the engine's parallel work runs.
//
// The loader's read workers and the pipeline's copy tasks go through a TaskGroup instead of calling
// oneTBB directly, so that one switch can move them onto plain std::threads:
//
//   kTbb      oneTBB (the default): tasks run in a task_arena of the asked-for concurrency,
//             sharing oneTBB's worker threads with the rest of the process.
//   kThreads  a pool of std::threads owned by the group, started on first use and joined by
//             Wait(). Used by ThreadSanitizer builds: Debian's oneTBB is not instrumented, so
//             TSan cannot see its synchronisation and reports races inside it that are not there.
//
// The default is kThreads in builds with SHARDSTREAM_EXECUTOR_THREADS defined (CMake defines it
// for SHARDSTREAM_SANITIZE=thread) and kTbb otherwise; the environment variable
// SHARDSTREAM_EXECUTOR=tbb|threads overrides it at run time.
//
// Thread-safety: Run may be called from any thread, including from inside a task. Wait must be
// called by one thread (the owner), after which no more Run calls may come; the destructor waits.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>

namespace shardstream::engine {

enum class ExecutorKind : uint8_t { kTbb, kThreads };

std::string_view ExecutorName(ExecutorKind kind);                  // "tbb", "threads"
std::optional<ExecutorKind> ParseExecutor(std::string_view name);  // "tbb", "threads"
// The build's default, overridden by SHARDSTREAM_EXECUTOR when that names a kind.
ExecutorKind DefaultExecutor();

// How many tasks can run at once with `kind` when nothing else limits it: oneTBB's allowed
// parallelism (cores, unless a tbb::global_control says less), or the core count.
int HardwareConcurrency(ExecutorKind kind);

// Tasks of one load. Tasks must not throw (the engine's tasks turn exceptions into a Status).
class TaskGroup {
 public:
  virtual ~TaskGroup() = default;
  // Queues `task`; it runs on one of the group's `concurrency` workers, never on the calling
  // thread, so a caller that must keep doing its own work (the pipeline's IO loop) is never
  // pulled into running tasks.
  virtual void Run(std::function<void()> task) = 0;
  // Blocks until every task queued so far has finished.
  virtual void Wait() = 0;
  virtual int concurrency() const = 0;
};

// A group running at most `concurrency` (at least 1) tasks at once on its workers. With oneTBB
// the thread blocked in Wait may run one more itself (it joins the arena while it waits), which
// the pipeline never sees (its IO thread waits only once every read is done) and the loader
// counts on (its read workers include the waiting thread on small machines).
std::unique_ptr<TaskGroup> MakeTaskGroup(int concurrency, ExecutorKind kind = DefaultExecutor());

}  // namespace shardstream::engine
