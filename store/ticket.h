// TicketState: the shared state behind a Ticket (kvtier/store.h).
//
// Lifecycle: created Pending by Store::Save/Load and queued; a worker runs the job,
// reporting progress (chunks done so far), and calls Finish exactly once. The Ticket
// and the job each hold a shared_ptr, so the state lives until both let go.
//
// A load also reports layer-wise readiness: once it knows how many leading chunks it will
// deliver, it copies them into engine memory layer by layer and publishes each layer as
// it lands, so an engine can start layer i while layer i + 1 is still being copied.
//
// A GPU load also publishes, once every layer's copy is enqueued, one CUDA event per
// layer (held here until the state goes) for engines that wait on the GPU instead.
//
// Thread-safety: all methods are thread-safe. mu_ guards the final status, the done
// flag and the layer progress; cancel_ and chunks_done_ are atomics read without the lock.
#ifndef KVTIER_STORE_TICKET_H_
#define KVTIER_STORE_TICKET_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "kvtier/status.h"

namespace kvtier {

class TicketState {
 public:
  explicit TicketState(uint32_t chunks_requested) : chunks_requested_(chunks_requested) {}

  // Worker side.
  bool cancel_requested() const { return cancel_.load(std::memory_order_acquire); }
  void set_chunks_done(uint32_t n) { chunks_done_.store(n, std::memory_order_release); }
  // Layers [0, layers) of the first `chunks` chunks are in engine memory.
  void set_layers_ready(uint32_t layers, uint32_t chunks);
  void Finish(Status status, uint32_t chunks_done);
  // GPU loads: every layer of the first `chunks` chunks is enqueued; events[l] completes
  // when layer l is in engine memory.
  void set_gpu_enqueued(std::shared_ptr<const std::vector<void*>> events, uint32_t chunks);

  // Caller side.
  bool done() const;
  Status Wait(std::chrono::nanoseconds timeout) const;
  Status Wait() const;
  Status status() const;
  // Waits until `layer` is in place (or the ticket is done) and returns how many leading
  // chunks have it: the load's final chunk count once it is in place, 0 when the load
  // delivers nothing. TimedOut when the deadline passes first.
  Result<uint32_t> WaitLayer(uint32_t layer, std::chrono::nanoseconds timeout) const;
  // Waits until layer `layer` is enqueued on the GPU (GPU loads) or in place (others), or
  // the ticket is done; returns the chunks that layer covers and its event (null when
  // there is none to wait on).
  Result<std::pair<uint32_t, void*>> WaitLayerEnqueued(uint32_t layer, std::chrono::nanoseconds timeout) const;
  uint32_t chunks_done() const { return chunks_done_.load(std::memory_order_acquire); }
  uint32_t chunks_requested() const { return chunks_requested_; }
  void Cancel() { cancel_.store(true, std::memory_order_release); }

 private:
  const uint32_t chunks_requested_;
  std::atomic<bool> cancel_{false};
  std::atomic<uint32_t> chunks_done_{0};

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;        // Wait: notified when done_ is set
  // WaitLayer / WaitLayerEnqueued: notified on layer progress only while someone waits
  // there (a load notifies per layer; waking a Wait() that many times costs a request
  // several context switches), and when done_ is set.
  mutable std::condition_variable layer_cv_;
  mutable uint32_t layer_waiters_ = 0;        // guarded by mu_
  bool done_ = false;  // guarded by mu_
  uint32_t layers_ready_ = 0;        // guarded by mu_
  uint32_t layer_chunks_ = 0;        // guarded by mu_: chunks that layers_ready_ covers
  Status status_;      // guarded by mu_; final once done_
  std::shared_ptr<const std::vector<void*>> gpu_events_;  // guarded by mu_; set once
  uint32_t gpu_chunks_ = 0;                               // guarded by mu_
};

}  // namespace kvtier

#endif  // KVTIER_STORE_TICKET_H_
