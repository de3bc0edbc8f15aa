// CircuitBreaker: keeps a down or hanging Redis from slowing the engine.
//
//   closed ──(failure_threshold consecutive failures)──► open
//   open ──(backoff elapsed; one caller gets a probe)──► half-open
//   half-open ──(probe succeeds)──► closed      half-open ──(probe fails)──► open, backoff doubled
//
// Backoff is base_backoff after the first open, doubling on each failed probe, capped at
// max_backoff; a close resets it. While open (and while a probe is in flight) Allow()
// refuses every other call: the tier treats that as a miss (lookups, loads) or a dropped
// save. A failure is a call that saw a timeout or a connection/server error; a Redis
// answer of any kind (hit, miss, even a corrupt value) is a success.
//
// Thread-safety: every method is thread-safe; mu_ guards the state machine, the counters
// are atomics read without it.
#ifndef KVTIER_TIERS_REDIS_CIRCUIT_BREAKER_H_
#define KVTIER_TIERS_REDIS_CIRCUIT_BREAKER_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>

namespace kvtier {

struct CircuitBreakerOptions {
  uint32_t failure_threshold = 3;  // consecutive failed calls that open the breaker
  std::chrono::milliseconds base_backoff{200};
  std::chrono::milliseconds max_backoff{5000};
};

enum class BreakerState : uint8_t { kClosed, kOpen, kHalfOpen };
const char* BreakerStateName(BreakerState s);

struct BreakerCounters {
  BreakerState state = BreakerState::kClosed;
  uint64_t opens = 0;          // closed/half-open -> open transitions
  uint64_t closes = 0;         // half-open -> closed transitions (recoveries)
  uint64_t skipped_ops = 0;    // calls refused while open
  uint64_t dropped_saves = 0;  // saves among them (counted by the caller through CountDroppedSaves)
  uint64_t errors = 0;         // failed calls: connection or server errors
  uint64_t timeouts = 0;       // failed calls: deadline passed
};

class CircuitBreaker {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Decision : uint8_t { kAllow, kProbe, kReject };

  explicit CircuitBreaker(const CircuitBreakerOptions& options) : options_(options) {}

  // Whether a call may go to Redis now. kProbe: this caller is the half-open probe and must
  // report its outcome (Record*). kReject: skip Redis (counted as a skipped op).
  Decision Allow(Clock::time_point now = Clock::now());
  // Outcome of an allowed call (or probe).
  void RecordSuccess();
  void RecordFailure(bool timed_out, Clock::time_point now = Clock::now());
  // A kProbe caller that ended up sending nothing: the next caller probes instead.
  void AbandonProbe();
  void CountDroppedSaves(uint64_t n) { dropped_saves_.fetch_add(n, std::memory_order_relaxed); }

  BreakerCounters Counters() const;
  BreakerState state() const;

 private:
  void OpenLocked(Clock::time_point now);

  const CircuitBreakerOptions options_;

  mutable std::mutex mu_;
  BreakerState state_ = BreakerState::kClosed;  // guarded by mu_
  uint32_t consecutive_failures_ = 0;           // guarded by mu_
  std::chrono::milliseconds backoff_{0};        // guarded by mu_: the current open period
  Clock::time_point reopen_at_{};               // guarded by mu_: when a probe may go
  bool probe_in_flight_ = false;                // guarded by mu_

  std::atomic<uint64_t> opens_{0}, closes_{0}, skipped_{0}, dropped_saves_{0}, errors_{0}, timeouts_{0};
};

}  // namespace kvtier

#endif  // KVTIER_TIERS_REDIS_CIRCUIT_BREAKER_H_
