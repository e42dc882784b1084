#include "engine/executor.h"

#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace shardstream::engine {
namespace {

class TbbTaskGroup final : public TaskGroup {
 public:
  // oneTBB has max_allowed_parallelism - 1 worker threads, and an arena asking for more makes it
  // print a warning. A group wanting more than the workers gets a slot reserved for the thread
  // that calls Wait, which then runs tasks too (the loader's read workers rely on it).
  static int Workers() { return HardwareConcurrency(ExecutorKind::kTbb) - 1; }
  static int ArenaConcurrency(int concurrency) {
    return std::min(concurrency, HardwareConcurrency(ExecutorKind::kTbb));
  }
  // On a one-core machine no slot is reserved: the enqueued work must get oneTBB's one
  // guaranteed worker, or the pipeline (whose IO thread waits only at the end) would never copy.
  static int ReservedSlots(int concurrency) {
    return ArenaConcurrency(concurrency) > Workers() && Workers() >= 1 ? 1 : 0;
  }
  // Run only enqueues, so no caller is pulled into running a task while it has its own work (the
  // pipeline's IO thread must keep reaping reads); enqueued work always gets a worker.
  explicit TbbTaskGroup(int concurrency)
      : concurrency_(concurrency),
        arena_(ArenaConcurrency(concurrency), ReservedSlots(concurrency)),
        group_(std::make_unique<tbb::task_group>()) {}
  // A task_group destroyed with tasks pending throws; waiting first means it never does.
  ~TbbTaskGroup() override { TbbTaskGroup::Wait(); }

  void Run(std::function<void()> task) override { arena_.enqueue(group_->defer(std::move(task))); }
  // The waiting thread may join the arena and run queued tasks itself: it has nothing else to do.
  void Wait() override {
    arena_.execute([&] { group_->wait(); });
  }
  int concurrency() const override { return concurrency_; }

 private:
  const int concurrency_;
  tbb::task_arena arena_;
  // Held by pointer: task_group's destructor may throw, which a member's would make ours do too.
  std::unique_ptr<tbb::task_group> group_;
};

class ThreadTaskGroup final : public TaskGroup {
 public:
  explicit ThreadTaskGroup(int concurrency) : concurrency_(concurrency) {}
  ~ThreadTaskGroup() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    work_.notify_all();
    for (std::thread& worker : workers_) worker.join();  // each drains the queue before it ends
  }

  void Run(std::function<void()> task) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(task));
      ++unfinished_;
      // One more worker while some would sit idle otherwise; never more than `concurrency`.
      if (idle_ == 0 && workers_.size() < static_cast<size_t>(concurrency_)) {
        workers_.emplace_back([this] { WorkerLoop(); });
        return;
      }
    }
    work_.notify_one();
  }

  void Wait() override {
    std::unique_lock<std::mutex> lock(mutex_);
    all_done_.wait(lock, [&] { return unfinished_ == 0; });
  }
  int concurrency() const override { return concurrency_; }

 private:
  void WorkerLoop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      ++idle_;
      work_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      --idle_;
      if (queue_.empty()) return;  // stopping, and nothing left
      std::function<void()> task = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      task();
      task = nullptr;  // whatever the task captured dies before it counts as finished
      lock.lock();
      if (--unfinished_ == 0) all_done_.notify_all();
    }
  }

  const int concurrency_;
  std::mutex mutex_;
  std::condition_variable work_;
  std::condition_variable all_done_;
  std::deque<std::function<void()>> queue_;  // guarded by mutex_
  std::vector<std::thread> workers_;         // guarded by mutex_
  size_t unfinished_ = 0;                    // queued or running; guarded by mutex_
  size_t idle_ = 0;                          // workers waiting for work; guarded by mutex_
  bool stopping_ = false;                    // guarded by mutex_
};

}  // namespace

std::string_view ExecutorName(ExecutorKind kind) {
  return kind == ExecutorKind::kTbb ? "tbb" : "threads";
}

std::optional<ExecutorKind> ParseExecutor(std::string_view name) {
  if (name == "tbb") return ExecutorKind::kTbb;
  if (name == "threads") return ExecutorKind::kThreads;
  return std::nullopt;
}

ExecutorKind DefaultExecutor() {
  if (const char* env = std::getenv("SHARDSTREAM_EXECUTOR"); env != nullptr) {
    if (auto kind = ParseExecutor(env)) return *kind;
  }
#ifdef SHARDSTREAM_EXECUTOR_THREADS
  return ExecutorKind::kThreads;
#else
  return ExecutorKind::kTbb;
#endif
}

int HardwareConcurrency(ExecutorKind kind) {
  if (kind == ExecutorKind::kTbb) {
    return std::max<int>(1, static_cast<int>(tbb::global_control::active_value(
                                tbb::global_control::max_allowed_parallelism)));
  }
  return std::max<int>(1, static_cast<int>(std::thread::hardware_concurrency()));
}

std::unique_ptr<TaskGroup> MakeTaskGroup(int concurrency, ExecutorKind kind) {
  concurrency = std::max(concurrency, 1);
  if (kind == ExecutorKind::kTbb) return std::make_unique<TbbTaskGroup>(concurrency);
  return std::make_unique<ThreadTaskGroup>(concurrency);
}

}  // namespace shardstream::engine
