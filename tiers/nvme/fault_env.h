// FaultInjectionEnv: an Env that runs real I/O through another Env and perturbs what it
// returns, so the NVMe tier's error paths are tested against real files.
//
// Each op of a batch draws at most one fault from a seeded generator (the same seed and
// the same sequence of ops give the same faults):
//   read_error      the read is not done; IOError (EIO)
//   write_error     the write is not done; IOError (EIO)
//   write_no_space  the write is not done; NoSpace (ENOSPC)
//   short_read      only a prefix is read; IOError "short read: got P of L bytes ..."
//   short_write     only a prefix is written; IOError "short write: wrote P of L bytes ..."
//   torn_write      only a prefix is written, yet the op reports OK (what a crash in the
//                   middle of a write leaves behind; checksums must catch it later)
//   sync_error      DataFile::Sync fails with EIO
// A prefix is shorter than the op: a multiple of kDirectIoAlign when the op is aligned,
// else any length (possibly 0). Probabilities are checked in the order above, so when
// they add up to more than 1 the earlier kinds win. Messages end in "[injected]".
//
// latency_us is added to every op: a batch of n ops on a queue of depth d sleeps
// ceil(n / d) * latency_us before it runs (the ops overlap as on a device), and a Sync
// sleeps latency_us.
//
// Ownership: the base Env is not owned and must outlive this one; files and queues made
// here wrap the base's and own them.
// Thread-safety: SetFaults, faults, the Fail* switches and the counters may be called from
// any thread at any time, also while queues run; a queue still belongs to one thread at a
// time. Faults change between batches, not inside one.
#ifndef KVTIER_TIERS_NVME_FAULT_ENV_H_
#define KVTIER_TIERS_NVME_FAULT_ENV_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <string>

#include "kvtier/status.h"
#include "tiers/nvme/env.h"

namespace kvtier {

struct FaultSpec {
  double read_error = 0;      // EIO on a read op
  double write_error = 0;     // EIO on a write op
  double write_no_space = 0;  // ENOSPC on a write op
  double short_read = 0;      // a prefix is read; the op fails with "short read"
  double short_write = 0;     // a prefix is written; the op fails with "short write"
  double torn_write = 0;      // a prefix is written; the op reports success
  double sync_error = 0;      // DataFile::Sync fails with EIO
  uint32_t latency_us = 0;    // added to every op
  uint64_t seed = 1;
};

// How many faults of each kind were injected since construction (or ResetCounts).
struct FaultCounts {
  uint64_t read_error = 0;
  uint64_t write_error = 0;
  uint64_t write_no_space = 0;
  uint64_t short_read = 0;
  uint64_t short_write = 0;
  uint64_t torn_write = 0;
  uint64_t sync_error = 0;
  uint64_t total() const {
    return read_error + write_error + write_no_space + short_read + short_write + torn_write + sync_error;
  }
};

class FaultInjectionEnv final : public Env {
 public:
  explicit FaultInjectionEnv(Env* base);
  ~FaultInjectionEnv() override;
  FaultInjectionEnv(const FaultInjectionEnv&) = delete;
  FaultInjectionEnv& operator=(const FaultInjectionEnv&) = delete;

  // Replaces the faults and restarts the generator from spec.seed.
  void SetFaults(const FaultSpec& spec);
  FaultSpec faults() const;
  // Every write (read) fails with EIO while on, whatever the probabilities say; counted
  // as write_error (read_error).
  void FailAllWrites(bool on);
  void FailAllReads(bool on);

  uint64_t injected() const;
  FaultCounts counts() const;
  void ResetCounts();

  Result<std::unique_ptr<DataFile>> OpenDataFile(const std::string& path, uint64_t size, bool direct) override;
  Result<std::unique_ptr<IoQueue>> NewIoQueue(std::span<DataFile* const> files, uint32_t depth,
                                              std::span<const iovec> registered) override;
  Status CreateDirIfMissing(const std::string& path) override;
  const char* io_backend() const override;

 private:
  class File;
  class Queue;

  enum class Fault : uint8_t { kNone, kReadError, kWriteError, kWriteNoSpace, kShortRead, kShortWrite, kTornWrite };
  struct Decision {
    Fault fault = Fault::kNone;
    uint64_t prefix = 0;  // bytes moved for short and torn transfers
  };
  // Draws the faults for a batch (one lock for all of it) and counts them. Ops the base
  // queue will refuse (no bytes, no buffer, file index >= num_files) get none.
  void Decide(std::span<const IoOp> ops, size_t num_files, std::span<Decision> out, uint32_t* latency_us);
  // Whether a Sync fails, and the latency to add to it.
  bool DecideSync(uint32_t* latency_us);
  double Uniform();  // [0, 1); requires mu_

  Env* const base_;

  mutable std::mutex mu_;
  // Guarded by mu_.
  FaultSpec spec_;
  std::mt19937_64 rng_;
  bool fail_all_writes_ = false;
  bool fail_all_reads_ = false;

  // Counters: atomics so readers need no lock.
  std::atomic<uint64_t> read_error_{0};
  std::atomic<uint64_t> write_error_{0};
  std::atomic<uint64_t> write_no_space_{0};
  std::atomic<uint64_t> short_read_{0};
  std::atomic<uint64_t> short_write_{0};
  std::atomic<uint64_t> torn_write_{0};
  std::atomic<uint64_t> sync_error_{0};
};

}  // namespace kvtier

#endif  // KVTIER_TIERS_NVME_FAULT_ENV_H_
