#include "store/ticket.h"

#include "kvtier/store.h"

namespace kvtier {

void TicketState::Finish(Status status, uint32_t chunks_done) {
  {
    std::lock_guard<std::mutex> l(mu_);
    chunks_done_.store(chunks_done, std::memory_order_release);
    status_ = std::move(status);
    done_ = true;
  }
  cv_.notify_all();
  layer_cv_.notify_all();
}

void TicketState::set_layers_ready(uint32_t layers, uint32_t chunks) {
  bool wake;
  {
    std::lock_guard<std::mutex> l(mu_);
    layers_ready_ = layers;
    layer_chunks_ = chunks;
    wake = layer_waiters_ > 0;
  }
  if (wake) layer_cv_.notify_all();
}

Result<uint32_t> TicketState::WaitLayer(uint32_t layer, std::chrono::nanoseconds timeout) const {
  std::unique_lock<std::mutex> l(mu_);
  ++layer_waiters_;
  const bool ready = layer_cv_.wait_for(l, timeout, [&] { return done_ || layers_ready_ > layer; });
  --layer_waiters_;
  if (!ready)
    return Status::TimedOut("ticket: layer " + std::to_string(layer) + " not in place before the wait's deadline");
  if (layers_ready_ > layer) return layer_chunks_;
  return done_ ? chunks_done_.load(std::memory_order_acquire) : 0u;
}

void TicketState::set_gpu_enqueued(std::shared_ptr<const std::vector<void*>> events, uint32_t chunks) {
  {
    std::lock_guard<std::mutex> l(mu_);
    gpu_events_ = std::move(events);
    gpu_chunks_ = chunks;
  }
  layer_cv_.notify_all();
}

Result<std::pair<uint32_t, void*>> TicketState::WaitLayerEnqueued(uint32_t layer,
                                                                  std::chrono::nanoseconds timeout) const {
  std::unique_lock<std::mutex> l(mu_);
  ++layer_waiters_;
  const bool ready =
      layer_cv_.wait_for(l, timeout, [&] { return done_ || gpu_events_ != nullptr || layers_ready_ > layer; });
  --layer_waiters_;
  if (!ready)
    return Status::TimedOut("ticket: layer " + std::to_string(layer) + " not enqueued before the wait's deadline");
  if (gpu_events_ != nullptr && layer < gpu_events_->size()) return std::make_pair(gpu_chunks_, (*gpu_events_)[layer]);
  if (layers_ready_ > layer) return std::make_pair(layer_chunks_, static_cast<void*>(nullptr));
  return std::make_pair(done_ ? chunks_done_.load(std::memory_order_acquire) : 0u, static_cast<void*>(nullptr));
}

bool TicketState::done() const {
  std::lock_guard<std::mutex> l(mu_);
  return done_;
}

Status TicketState::Wait(std::chrono::nanoseconds timeout) const {
  std::unique_lock<std::mutex> l(mu_);
  if (!cv_.wait_for(l, timeout, [this] { return done_; }))
    return Status::TimedOut("ticket: still running after the wait's deadline");
  return status_;
}

Status TicketState::Wait() const {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [this] { return done_; });
  return status_;
}

Status TicketState::status() const {
  std::lock_guard<std::mutex> l(mu_);
  if (!done_) return Status::Busy("ticket: in progress");
  return status_;
}

// ---- Ticket (public handle) ---------------------------------------------------------

Ticket::Ticket(std::shared_ptr<TicketState> state) : state_(std::move(state)) {}

Ticket& Ticket::operator=(Ticket&& other) noexcept {
  if (this != &other) {
    Release();
    state_ = std::move(other.state_);
  }
  return *this;
}

Ticket::~Ticket() { Release(); }

bool Ticket::done() const { return state_ == nullptr || state_->done(); }

Status Ticket::Wait(std::chrono::nanoseconds timeout) const {
  if (!state_) return Status::InvalidArgument("ticket: released or empty");
  return state_->Wait(timeout);
}

Status Ticket::Wait() const {
  if (!state_) return Status::InvalidArgument("ticket: released or empty");
  return state_->Wait();
}

Status Ticket::status() const {
  if (!state_) return Status::InvalidArgument("ticket: released or empty");
  return state_->status();
}

Result<uint32_t> Ticket::WaitLayer(uint32_t layer, std::chrono::nanoseconds timeout) const {
  if (!state_) return Status::InvalidArgument("ticket: released or empty");
  return state_->WaitLayer(layer, timeout);
}

Result<Ticket::LayerEvent> Ticket::WaitLayerEnqueued(uint32_t layer, std::chrono::nanoseconds timeout) const {
  if (!state_) return Status::InvalidArgument("ticket: released or empty");
  Result<std::pair<uint32_t, void*>> r = state_->WaitLayerEnqueued(layer, timeout);
  if (!r.ok()) return r.status();
  return LayerEvent{r->first, r->second};
}

uint32_t Ticket::chunks_done() const { return state_ ? state_->chunks_done() : 0; }
uint32_t Ticket::chunks_requested() const { return state_ ? state_->chunks_requested() : 0; }

void Ticket::Cancel() {
  if (state_) state_->Cancel();
}

void Ticket::Release() {
  if (!state_) return;
  if (!state_->done()) {
    state_->Cancel();
    (void)state_->Wait();
  }
  state_.reset();
}

}  // namespace kvtier
