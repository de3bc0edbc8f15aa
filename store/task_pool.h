// TaskPool: a fixed set of threads running queued tasks in order of submission.
//
// The Store uses one to write a save's chunks to NVMe while the save's worker gathers
// the next chunks (write-through pipelining). Tasks must not throw.
//
// Thread-safety: Submit may be called from any thread, including from a task. The
// destructor runs the tasks still queued, then joins the threads; nothing may Submit
// after it has started.
#ifndef KVTIER_STORE_TASK_POOL_H_
#define KVTIER_STORE_TASK_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvtier {

class TaskPool {
 public:
  explicit TaskPool(uint32_t threads) {
    for (uint32_t i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~TaskPool() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  void Submit(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> l(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [this] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) return;  // stopping and drained
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> threads_;         // constant after construction
};

}  // namespace kvtier

#endif  // KVTIER_STORE_TASK_POOL_H_
