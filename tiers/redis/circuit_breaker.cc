#include "tiers/redis/circuit_breaker.h"

#include <algorithm>

namespace kvtier {

const char* BreakerStateName(BreakerState s) {
  switch (s) {
    case BreakerState::kClosed: return "closed";
    case BreakerState::kOpen: return "open";
    case BreakerState::kHalfOpen: return "half-open";
  }
  return "?";
}

CircuitBreaker::Decision CircuitBreaker::Allow(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ == BreakerState::kClosed) return Decision::kAllow;
  if (state_ == BreakerState::kOpen && now >= reopen_at_) {
    state_ = BreakerState::kHalfOpen;
    probe_in_flight_ = true;
    return Decision::kProbe;
  }
  skipped_.fetch_add(1, std::memory_order_relaxed);
  return Decision::kReject;
}

void CircuitBreaker::RecordSuccess() {
  std::lock_guard<std::mutex> lock(mu_);
  consecutive_failures_ = 0;
  if (state_ == BreakerState::kHalfOpen) {
    state_ = BreakerState::kClosed;
    probe_in_flight_ = false;
    backoff_ = std::chrono::milliseconds(0);
    closes_.fetch_add(1, std::memory_order_relaxed);
  }
}

void CircuitBreaker::RecordFailure(bool timed_out, Clock::time_point now) {
  (timed_out ? timeouts_ : errors_).fetch_add(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ == BreakerState::kHalfOpen) {
    probe_in_flight_ = false;
    OpenLocked(now);
    return;
  }
  if (state_ == BreakerState::kOpen) return;  // a call allowed before the breaker opened
  if (++consecutive_failures_ >= std::max<uint32_t>(1, options_.failure_threshold)) OpenLocked(now);
}

void CircuitBreaker::AbandonProbe() {
  std::lock_guard<std::mutex> lock(mu_);
  if (state_ != BreakerState::kHalfOpen) return;
  state_ = BreakerState::kOpen;
  probe_in_flight_ = false;
  reopen_at_ = Clock::now();
}

void CircuitBreaker::OpenLocked(Clock::time_point now) {
  backoff_ = backoff_.count() == 0 ? options_.base_backoff : std::min(backoff_ * 2, options_.max_backoff);
  backoff_ = std::min(backoff_, options_.max_backoff);
  reopen_at_ = now + backoff_;
  state_ = BreakerState::kOpen;
  consecutive_failures_ = 0;
  opens_.fetch_add(1, std::memory_order_relaxed);
}

BreakerState CircuitBreaker::state() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_;
}

BreakerCounters CircuitBreaker::Counters() const {
  BreakerCounters c;
  c.state = state();
  c.opens = opens_.load(std::memory_order_relaxed);
  c.closes = closes_.load(std::memory_order_relaxed);
  c.skipped_ops = skipped_.load(std::memory_order_relaxed);
  c.dropped_saves = dropped_saves_.load(std::memory_order_relaxed);
  c.errors = errors_.load(std::memory_order_relaxed);
  c.timeouts = timeouts_.load(std::memory_order_relaxed);
  return c;
}

}  // namespace kvtier
