// TicketState: the shared state behind a Ticket (kvtier/store.h).
//
// Lifecycle: created Pending by Store::Save/Load and queued; a worker runs the job,
// reporting progress (chunks done so far), and calls Finish exactly once. The Ticket
// and the job each hold a shared_ptr, so the state lives until both let go.
//
// Thread-safety: all methods are thread-safe. mu_ guards the final status and the
// done flag; cancel_ and chunks_done_ are atomics read without the lock.
#ifndef KVTIER_STORE_TICKET_H_
#define KVTIER_STORE_TICKET_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "kvtier/status.h"

namespace kvtier {

class TicketState {
 public:
  explicit TicketState(uint32_t chunks_requested) : chunks_requested_(chunks_requested) {}

  // Worker side.
  bool cancel_requested() const { return cancel_.load(std::memory_order_acquire); }
  void set_chunks_done(uint32_t n) { chunks_done_.store(n, std::memory_order_release); }
  void Finish(Status status, uint32_t chunks_done);

  // Caller side.
  bool done() const;
  Status Wait(std::chrono::nanoseconds timeout) const;
  Status Wait() const;
  Status status() const;
  uint32_t chunks_done() const { return chunks_done_.load(std::memory_order_acquire); }
  uint32_t chunks_requested() const { return chunks_requested_; }
  void Cancel() { cancel_.store(true, std::memory_order_release); }

 private:
  const uint32_t chunks_requested_;
  std::atomic<bool> cancel_{false};
  std::atomic<uint32_t> chunks_done_{0};

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool done_ = false;  // guarded by mu_
  Status status_;      // guarded by mu_; final once done_
};

}  // namespace kvtier

#endif  // KVTIER_STORE_TICKET_H_
