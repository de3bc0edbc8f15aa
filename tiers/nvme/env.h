// Env: every file operation of the NVMe tier goes through this interface, so tests can
// put faults (ENOSPC, EIO, short and torn transfers, latency) on top of the real files.
//
//   Env::Default()        POSIX files; io_uring queues when the kernel allows them (probed
//                         once), else a pread/pwrite thread pool — the log and
//                         Env::io_backend() say which.
//   FaultInjectionEnv     (fault_env.h) wraps another Env and perturbs what it returns.
//
// A DataFile is a preallocated (fallocate) file opened with O_DIRECT unless buffered mode
// is asked for. An IoQueue belongs to one thread at a time: it runs a batch of reads and
// writes with up to `depth` in flight, resubmitting on -EAGAIN and for the rest of short
// transfers, and reports a Status per operation.
//
// O_DIRECT rules: offsets, lengths and buffer addresses are multiples of kDirectIoAlign.
#ifndef KVTIER_TIERS_NVME_ENV_H_
#define KVTIER_TIERS_NVME_ENV_H_

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "kvtier/status.h"

namespace kvtier {

inline constexpr uint64_t kDirectIoAlign = 4096;

struct IoOp {
  enum class Kind : uint8_t { kRead = 0, kWrite = 1 };
  Kind kind = Kind::kRead;
  uint32_t file = 0;    // index into the queue's files
  uint64_t offset = 0;  // in the file
  void* buf = nullptr;
  uint64_t len = 0;
  // Out: OK when all len bytes moved; otherwise why not (IOError with errno text, NoSpace
  // for ENOSPC, IOError "short read ..." when the file ended or a transfer kept coming
  // back short).
  Status status;
};

class DataFile {
 public:
  virtual ~DataFile() = default;
  virtual const std::string& path() const = 0;
  virtual uint64_t size() const = 0;
  virtual bool direct() const = 0;
  virtual int fd() const = 0;
  // fdatasync: written data (and the extent metadata fallocate left unwritten) is durable.
  virtual Status Sync() = 0;
};

class IoQueue {
 public:
  virtual ~IoQueue() = default;
  // Runs every op to completion with up to depth() in flight. Returns OK when every op
  // succeeded, else the first failure; each op's own status is set either way. Never
  // throws, never hangs on a failed op.
  virtual Status Run(std::span<IoOp> ops) = 0;
  virtual uint32_t depth() const = 0;
  virtual const char* backend() const = 0;  // "io_uring" or "pread"
};

class Env {
 public:
  virtual ~Env() = default;

  // Creates (if missing) and opens a data file of exactly `size` bytes, preallocated with
  // fallocate. direct=true opens it O_DIRECT; a filesystem that refuses O_DIRECT (tmpfs)
  // gets InvalidArgument naming the path and the fix. NoSpace when fallocate says ENOSPC.
  virtual Result<std::unique_ptr<DataFile>> OpenDataFile(const std::string& path, uint64_t size, bool direct) = 0;

  // A queue over `files` (which must outlive it) with up to `depth` operations in flight.
  // `registered` ranges may be registered with the kernel (io_uring fixed buffers); ops
  // whose buffer lies inside one use it, others use plain reads and writes. Registration
  // that the kernel refuses (memlock limits) is not an error: it is skipped.
  virtual Result<std::unique_ptr<IoQueue>> NewIoQueue(std::span<DataFile* const> files, uint32_t depth,
                                                      std::span<const iovec> registered) = 0;

  virtual Status CreateDirIfMissing(const std::string& path) = 0;
  // "io_uring" or "pread" (what NewIoQueue builds). "pread" when the io_uring probe failed
  // (one line on stderr says why) or, for Default(), when KVTIER_IO_BACKEND=pread.
  virtual const char* io_backend() const = 0;

  // The process-wide POSIX Env. KVTIER_IO_BACKEND=pread in the environment forces the
  // fallback (for tests and for kernels where io_uring is present but unwanted).
  static Env* Default();
  // A POSIX Env of its own, so tests can build both backends side by side.
  // force_pread=true always builds pread queues; false probes io_uring as Default() does
  // but ignores KVTIER_IO_BACKEND.
  static std::unique_ptr<Env> NewPosixEnv(bool force_pread);
};

}  // namespace kvtier

#endif  // KVTIER_TIERS_NVME_ENV_H_
