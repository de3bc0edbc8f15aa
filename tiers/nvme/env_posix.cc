// The POSIX Env: data files are plain files (O_DIRECT unless buffered mode is asked for),
// and queues are io_uring rings when the kernel allows them, else a pread/pwrite pool.
//
// Both queue kinds share one transfer rule (Advance below): an op moves in transfers of
// at most kMaxTransfer bytes; -EAGAIN/-EINTR and zero-byte writes are retried up to
// kMaxRetries times in a row; a short transfer continues with the rest; a read that
// comes back with 0 bytes hit the end of the file and fails as a "short read".
#include <fcntl.h>
#include <liburing.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "tiers/nvme/env.h"

namespace kvtier {
namespace {

// Largest single read/write submitted; longer ops continue as if the transfer were short.
// The kernel caps a transfer just under 2 GiB anyway, and a fixed buffer at 1 GiB.
constexpr uint64_t kMaxTransfer = 1ull << 30;
// io_uring refuses to register an iovec larger than 1 GiB; larger ranges are split.
constexpr uint64_t kMaxRegisteredPiece = 1ull << 30;
// io_uring's limit on ring entries; also the queue-depth limit of the pread pool.
constexpr uint32_t kMaxDepth = 32768;
// Threads of a pread pool beyond this add scheduling cost, not device parallelism.
constexpr uint32_t kMaxPreadThreads = 64;
// Consecutive -EAGAIN/-EINTR results or zero-byte writes before an op is failed: a broken
// device must not hang the queue.
constexpr uint32_t kMaxRetries = 1000;

std::string ErrnoText(int err) {
  char buf[128];
  // GNU strerror_r: thread-safe, returns a pointer to the text (maybe not into buf).
  return std::string(strerror_r(err, buf, sizeof(buf)));
}

const char* KindName(const IoOp& op) { return op.kind == IoOp::Kind::kRead ? "read" : "write"; }

bool Aligned(const IoOp& op) {
  return op.offset % kDirectIoAlign == 0 && op.len % kDirectIoAlign == 0 &&
         reinterpret_cast<uintptr_t>(op.buf) % kDirectIoAlign == 0;
}

Status TransferError(const IoOp& op, const DataFile& file, int err, const char* extra = "") {
  std::string msg = std::string("nvme tier: ") + KindName(op) + " of " + std::to_string(op.len) + " bytes at " +
                    std::to_string(op.offset) + " in " + file.path() + ": " + ErrnoText(err) + extra;
  if (err == EINVAL && file.direct() && !Aligned(op)) {
    msg +=
        " (O_DIRECT needs buffer address, offset and length aligned to " + std::to_string(kDirectIoAlign) + " bytes)";
  }
  if (err == ENOSPC || err == EDQUOT) return Status::NoSpace(msg);
  return Status::IOError(msg);
}

Status ShortTransfer(const IoOp& op, const DataFile& file, uint64_t done) {
  const bool read = op.kind == IoOp::Kind::kRead;
  return Status::IOError(std::string("nvme tier: ") + (read ? "short read: got " : "short write: wrote ") +
                         std::to_string(done) + " of " + std::to_string(op.len) + " bytes at offset " +
                         std::to_string(op.offset) + " in " + file.path());
}

// How far one op has come; lives in an io_uring request or on a pread worker's stack.
struct Progress {
  uint64_t done = 0;
  uint32_t retries = 0;  // consecutive transfers that made no progress
};

// The next transfer of an op: [offset, offset + len) of the file from/to buf.
struct Transfer {
  uint64_t offset;
  uint8_t* buf;
  uint32_t len;
};

Transfer NextTransfer(const IoOp& op, const Progress& p) {
  return Transfer{op.offset + p.done, static_cast<uint8_t*>(op.buf) + p.done,
                  static_cast<uint32_t>(std::min(op.len - p.done, kMaxTransfer))};
}

enum class Next { kDone, kResubmit };

// Applies the result of one transfer (bytes moved, or -errno). On kDone op.status holds
// the outcome (it was reset to OK before the op started).
Next Advance(IoOp& op, const DataFile& file, Progress& p, int64_t res) {
  const bool read = op.kind == IoOp::Kind::kRead;
  if (res == -EAGAIN || res == -EINTR) {
    if (++p.retries <= kMaxRetries) return Next::kResubmit;
    op.status = TransferError(op, file, static_cast<int>(-res), " (kept failing; gave up)");
    return Next::kDone;
  }
  if (res < 0) {
    op.status = TransferError(op, file, static_cast<int>(-res));
    return Next::kDone;
  }
  if (res == 0) {
    // A read of 0 bytes is the end of the file; a write of 0 bytes is odd but retried.
    if (read || ++p.retries > kMaxRetries) {
      op.status = ShortTransfer(op, file, p.done);
      return Next::kDone;
    }
    return Next::kResubmit;
  }
  p.done += static_cast<uint64_t>(res);
  p.retries = 0;
  if (p.done >= op.len) return Next::kDone;
  // O_DIRECT transfers come back short at an unaligned point only at the end of the file;
  // resubmitting from there would fail with EINVAL and hide that.
  if (file.direct() && (op.offset + p.done) % kDirectIoAlign != 0) {
    op.status = ShortTransfer(op, file, p.done);
    return Next::kDone;
  }
  return Next::kResubmit;
}

// Checks what the kernel cannot: the file index and the buffer. False (with op.status
// set) when the op must not be started; a zero-length op is done (OK) at once.
bool Startable(IoOp& op, std::span<DataFile* const> files) {
  if (op.file >= files.size()) {
    op.status = Status::InvalidArgument("nvme tier: op names file " + std::to_string(op.file) + " but the queue has " +
                                        std::to_string(files.size()));
    return false;
  }
  if (op.len == 0) return false;
  if (op.buf == nullptr) {
    op.status = Status::InvalidArgument("nvme tier: " + std::string(KindName(op)) + " of " + std::to_string(op.len) +
                                        " bytes with a null buffer");
    return false;
  }
  return true;
}

Status FirstFailure(std::span<IoOp> ops) {
  for (const IoOp& op : ops) {
    if (!op.status.ok()) return op.status;
  }
  return Status::OK();
}

// ---- data files ---------------------------------------------------------------------

class PosixDataFile final : public DataFile {
 public:
  PosixDataFile(std::string path, int fd, uint64_t size, bool direct)
      : path_(std::move(path)), fd_(fd), size_(size), direct_(direct) {}
  ~PosixDataFile() override { close(fd_); }
  PosixDataFile(const PosixDataFile&) = delete;
  PosixDataFile& operator=(const PosixDataFile&) = delete;

  const std::string& path() const override { return path_; }
  uint64_t size() const override { return size_; }
  bool direct() const override { return direct_; }
  int fd() const override { return fd_; }

  Status Sync() override {
    int r;
    do {
      r = fdatasync(fd_);
    } while (r != 0 && errno == EINTR);
    if (r == 0) return Status::OK();
    const int err = errno;
    std::string msg = "nvme tier: fdatasync of " + path_ + ": " + ErrnoText(err);
    if (err == ENOSPC || err == EDQUOT) return Status::NoSpace(msg);
    return Status::IOError(msg);
  }

 private:
  const std::string path_;
  const int fd_;
  const uint64_t size_;  // as requested; the file itself may be larger
  const bool direct_;
};

Status NoDirectIo(const std::string& path) {
  return Status::InvalidArgument("nvme tier: " + path +
                                 " is on a filesystem without O_DIRECT (e.g. tmpfs); put nvme.paths on a "
                                 "block-backed filesystem or set nvme.buffered = true");
}

// ---- io_uring -------------------------------------------------------------------------

// Whether io_uring can run this tier's opcodes here; probed once per process.
struct UringSupport {
  bool usable = false;
  std::string reason;  // why not, when !usable
};

UringSupport ProbeUring() {
  UringSupport s;
  io_uring ring;
  const int r = io_uring_queue_init(4, &ring, 0);
  if (r < 0) {
    s.reason = "io_uring_queue_init: " + ErrnoText(-r);
    return s;
  }
  io_uring_probe* probe = io_uring_get_probe_ring(&ring);
  if (probe == nullptr) {
    s.reason = "the kernel has no opcode probe (older than 5.6)";
  } else {
    const struct {
      int op;
      const char* name;
    } needed[] = {{IORING_OP_READ, "READ"},
                  {IORING_OP_WRITE, "WRITE"},
                  {IORING_OP_READ_FIXED, "READ_FIXED"},
                  {IORING_OP_WRITE_FIXED, "WRITE_FIXED"}};
    s.usable = true;
    for (const auto& n : needed) {
      if (!io_uring_opcode_supported(probe, n.op)) {
        s.usable = false;
        s.reason = std::string("opcode ") + n.name + " not supported";
        break;
      }
    }
    io_uring_free_probe(probe);
  }
  io_uring_queue_exit(&ring);
  return s;
}

const UringSupport& Uring() {
  static const UringSupport support = [] {
    UringSupport s = ProbeUring();
    if (!s.usable) {
      std::fprintf(stderr, "kvtier: io_uring unavailable (%s); NVMe tier uses a pread/pwrite thread pool\n",
                   s.reason.c_str());
    }
    return s;
  }();
  return support;
}

// One ring; each op in flight holds a Request whose address is the sqe's user_data.
// Thread-safety: none; one thread at a time calls Run.
class UringIoQueue final : public IoQueue {
 public:
  static Result<std::unique_ptr<IoQueue>> Create(std::span<DataFile* const> files, uint32_t depth,
                                                 std::span<const iovec> registered) {
    std::unique_ptr<UringIoQueue> q(new UringIoQueue(files, depth));
    const int r = io_uring_queue_init(depth, &q->ring_, 0);
    if (r < 0) {
      return Status::IOError("nvme tier: io_uring_queue_init(" + std::to_string(depth) + "): " + ErrnoText(-r) +
                             "; raise RLIMIT_MEMLOCK or set KVTIER_IO_BACKEND=pread");
    }
    q->ring_ready_ = true;
    q->RegisterFiles();
    q->RegisterBuffers(registered);
    return std::unique_ptr<IoQueue>(std::move(q));
  }

  ~UringIoQueue() override {
    // Run never returns with requests in the kernel, so nothing can still touch buffers;
    // closing the ring discards sqes that a broken queue never got submitted.
    if (ring_ready_) io_uring_queue_exit(&ring_);
  }

  uint32_t depth() const override { return depth_; }
  const char* backend() const override { return "io_uring"; }

  Status Run(std::span<IoOp> ops) override {
    for (IoOp& op : ops) op.status = Status::OK();
    if (!broken_.ok()) {
      for (IoOp& op : ops) op.status = broken_;
      return broken_;
    }
    ops_ = ops;
    size_t next = 0;
    uint32_t unsubmitted = 0;  // sqes prepared that the kernel has not taken yet
    uint32_t busy_tries = 0;
    while (true) {
      retry_.swap(resubmit_);
      for (Request* r : retry_) unsubmitted += Prepare(r);
      retry_.clear();
      while (inflight_ < depth_ && next < ops.size()) {
        const size_t i = next++;
        if (!Startable(ops[i], files_)) continue;
        Request* r = free_.back();
        free_.pop_back();
        *r = Request{i, Progress{}};
        ++inflight_;
        unsubmitted += Prepare(r);
      }
      if (inflight_ == 0) break;

      const int ret = io_uring_submit_and_wait(&ring_, 1);
      if (ret >= 0) {
        unsubmitted -= std::min<uint32_t>(unsubmitted, static_cast<uint32_t>(ret));
        busy_tries = 0;
      } else if (ret == -EINTR) {
        continue;
      } else if ((ret == -EAGAIN || ret == -EBUSY) && ++busy_tries <= kMaxRetries) {
        // The kernel is short of request memory or has a completion backlog: wait for a
        // completion if any request is in the kernel, else pause, then try again.
        if (inflight_ > unsubmitted) {
          io_uring_cqe* cqe;
          (void)io_uring_wait_cqe(&ring_, &cqe);  // errors show up again on the next submit
        } else {
          usleep(1000);
        }
      } else {
        Break(ret, inflight_ - unsubmitted, next);
        break;
      }
      Reap();
    }
    ops_ = {};
    return FirstFailure(ops);
  }

 private:
  struct Request {
    size_t op = 0;  // index into ops_
    Progress progress;
  };
  // A registered buffer: [base, base + len) is kernel buffer `index`.
  struct Piece {
    uintptr_t base;
    uint64_t len;
    uint32_t index;
  };

  UringIoQueue(std::span<DataFile* const> files, uint32_t depth)
      : files_(files.begin(), files.end()), depth_(depth), requests_(depth) {
    free_.reserve(depth);
    for (Request& r : requests_) free_.push_back(&r);
    resubmit_.reserve(depth);
    retry_.reserve(depth);
  }

  void RegisterFiles() {
    if (files_.empty()) return;
    std::vector<int> fds;
    for (DataFile* f : files_) fds.push_back(f->fd());
    fixed_files_ = io_uring_register_files(&ring_, fds.data(), static_cast<unsigned>(fds.size())) == 0;
  }

  // Registration the kernel refuses (memlock limit, unmapped memory, too many pieces) is
  // skipped: every op then takes the plain READ/WRITE path.
  void RegisterBuffers(std::span<const iovec> registered) {
    std::vector<iovec> iovs;
    for (const iovec& v : registered) {
      auto* base = static_cast<uint8_t*>(v.iov_base);
      for (uint64_t off = 0; off < v.iov_len; off += kMaxRegisteredPiece) {
        iovs.push_back(iovec{base + off, std::min<uint64_t>(v.iov_len - off, kMaxRegisteredPiece)});
      }
    }
    if (iovs.empty()) return;
    if (io_uring_register_buffers(&ring_, iovs.data(), static_cast<unsigned>(iovs.size())) != 0) return;
    for (uint32_t i = 0; i < iovs.size(); ++i) {
      pieces_.push_back(Piece{reinterpret_cast<uintptr_t>(iovs[i].iov_base), iovs[i].iov_len, i});
    }
    std::sort(pieces_.begin(), pieces_.end(), [](const Piece& a, const Piece& b) { return a.base < b.base; });
  }

  // The registered buffer holding all of [buf, buf + len), or -1.
  int FixedBuffer(const void* buf, uint64_t len) const {
    const uintptr_t b = reinterpret_cast<uintptr_t>(buf);
    auto it =
        std::upper_bound(pieces_.begin(), pieces_.end(), b, [](uintptr_t v, const Piece& p) { return v < p.base; });
    if (it == pieces_.begin()) return -1;
    --it;
    if (b - it->base <= it->len && len <= it->len - (b - it->base)) return static_cast<int>(it->index);
    return -1;
  }

  // Queues the request's next transfer; returns the number of sqes prepared (0 or 1).
  uint32_t Prepare(Request* r) {
    IoOp& op = ops_[r->op];
    const Transfer t = NextTransfer(op, r->progress);
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    // The ring has at least depth_ entries and each request holds at most one, so this
    // cannot run dry; if it ever did, the request waits for the next round.
    if (sqe == nullptr) {
      resubmit_.push_back(r);
      return 0;
    }
    const int fd = fixed_files_ ? static_cast<int>(op.file) : files_[op.file]->fd();
    // The whole op's buffer, not just this transfer, decides: the rest stays inside it.
    const int fixed = pieces_.empty() ? -1 : FixedBuffer(op.buf, op.len);
    if (op.kind == IoOp::Kind::kRead) {
      if (fixed >= 0) {
        io_uring_prep_read_fixed(sqe, fd, t.buf, t.len, t.offset, fixed);
      } else {
        io_uring_prep_read(sqe, fd, t.buf, t.len, t.offset);
      }
    } else {
      if (fixed >= 0) {
        io_uring_prep_write_fixed(sqe, fd, t.buf, t.len, t.offset, fixed);
      } else {
        io_uring_prep_write(sqe, fd, t.buf, t.len, t.offset);
      }
    }
    if (fixed_files_) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data(sqe, r);
    return 1;
  }

  void Complete(Request* r, int res) {
    IoOp& op = ops_[r->op];
    if (Advance(op, *files_[op.file], r->progress, res) == Next::kResubmit) {
      resubmit_.push_back(r);
      return;
    }
    free_.push_back(r);
    --inflight_;
  }

  void Reap() {
    io_uring_cqe* cqe;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      Complete(static_cast<Request*>(io_uring_cqe_get_data(cqe)), cqe->res);
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
  }

  // io_uring_enter failed for good. Waits for the `in_kernel` requests the kernel took,
  // then fails every op that had not finished (ops from `next` on never started); later
  // Runs fail at once. Sqes the kernel never took are never submitted (the ring is not
  // entered again), so no buffer is touched after Run returns.
  void Break(int err, uint32_t in_kernel, size_t next) {
    broken_ =
        Status::IOError("nvme tier: io_uring_enter: " + ErrnoText(-err) + "; this queue is unusable, open a new one");
    resubmit_.clear();
    while (in_kernel > 0) {
      io_uring_cqe* cqe;
      const int r = io_uring_wait_cqe(&ring_, &cqe);
      if (r == -EINTR) continue;
      if (r < 0) break;  // cannot wait any longer; nothing else can be done safely
      auto* req = static_cast<Request*>(io_uring_cqe_get_data(cqe));
      const int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      --in_kernel;
      IoOp& op = ops_[req->op];
      if (Advance(op, *files_[op.file], req->progress, res) == Next::kResubmit) op.status = broken_;
      free_.push_back(req);
    }
    // Requests still out of free_ were prepared but never taken by the kernel.
    for (Request& r : requests_) {
      if (std::find(free_.begin(), free_.end(), &r) == free_.end()) ops_[r.op].status = broken_;
    }
    for (size_t i = next; i < ops_.size(); ++i) {
      if (ops_[i].len != 0) ops_[i].status = broken_;
    }
    free_.clear();
    for (Request& r : requests_) free_.push_back(&r);
    inflight_ = 0;
  }

  // Constant after construction.
  const std::vector<DataFile*> files_;
  const uint32_t depth_;
  io_uring ring_{};
  bool ring_ready_ = false;
  bool fixed_files_ = false;
  std::vector<Piece> pieces_;  // sorted by base; empty when registration was refused

  // Per Run.
  std::span<IoOp> ops_;
  std::vector<Request> requests_;  // depth_ of them; never reallocated (sqes point here)
  std::vector<Request*> free_;
  std::vector<Request*> resubmit_;  // completed short or with -EAGAIN; need a new sqe
  std::vector<Request*> retry_;     // resubmit_ being drained (Prepare may refill resubmit_)
  uint32_t inflight_ = 0;           // requests not in free_
  Status broken_;                   // set once io_uring_enter fails for good
};

// ---- pread/pwrite pool ------------------------------------------------------------------

// Runs one op to completion with pread/pwrite under the same transfer rule as io_uring.
void ExecuteBlocking(IoOp& op, const DataFile& file) {
  Progress p;
  while (true) {
    const Transfer t = NextTransfer(op, p);
    const ssize_t r = op.kind == IoOp::Kind::kRead ? pread(file.fd(), t.buf, t.len, static_cast<off_t>(t.offset))
                                                   : pwrite(file.fd(), t.buf, t.len, static_cast<off_t>(t.offset));
    const int64_t res = r < 0 ? -static_cast<int64_t>(errno) : static_cast<int64_t>(r);
    if (Advance(op, file, p, res) == Next::kDone) return;
  }
}

// The fallback queue: min(depth, 64) threads, the caller's own included, take ops from
// the batch in order, so up to that many are in flight. Worker threads start on the first
// Run that needs them and are joined by the destructor. If a thread cannot be created the
// pool runs with those it has (at least the caller).
// Thread-safety: one thread at a time calls Run; the workers are internal.
class PreadIoQueue final : public IoQueue {
 public:
  PreadIoQueue(std::span<DataFile* const> files, uint32_t depth)
      : files_(files.begin(), files.end()), depth_(depth), threads_(std::min(depth, kMaxPreadThreads)) {}

  ~PreadIoQueue() override {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  uint32_t depth() const override { return depth_; }
  const char* backend() const override { return "pread"; }

  Status Run(std::span<IoOp> ops) override {
    for (IoOp& op : ops) op.status = Status::OK();
    if (ops.size() > 1 && workers_.size() + 1 < threads_ && !spawn_failed_) StartWorkers();
    if (ops.size() <= 1 || workers_.empty()) {
      next_.store(0, std::memory_order_relaxed);
      Share(ops);
      return FirstFailure(ops);
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      batch_ = ops;
      next_.store(0, std::memory_order_relaxed);
      ++generation_;
      working_ = workers_.size();
    }
    work_cv_.notify_all();
    Share(ops);
    {
      std::unique_lock<std::mutex> l(mu_);
      done_cv_.wait(l, [&] { return working_ == 0; });
      batch_ = {};
    }
    return FirstFailure(ops);
  }

 private:
  void StartWorkers() {
    try {
      while (workers_.size() + 1 < threads_) workers_.emplace_back([this] { WorkerLoop(); });
    } catch (const std::system_error&) {
      spawn_failed_ = true;  // run with the threads we have
    }
  }

  void WorkerLoop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> l(mu_);
    while (true) {
      work_cv_.wait(l, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      std::span<IoOp> ops = batch_;
      l.unlock();
      Share(ops);
      l.lock();
      if (--working_ == 0) done_cv_.notify_one();
    }
  }

  // Takes ops from the batch until none is left.
  void Share(std::span<IoOp> ops) {
    for (size_t i = next_.fetch_add(1, std::memory_order_relaxed); i < ops.size();
         i = next_.fetch_add(1, std::memory_order_relaxed)) {
      if (Startable(ops[i], files_)) ExecuteBlocking(ops[i], *files_[ops[i].file]);
    }
  }

  // Constant after construction.
  const std::vector<DataFile*> files_;
  const uint32_t depth_;
  const uint32_t threads_;  // including the caller

  // Touched only by the thread calling Run (and the destructor).
  std::vector<std::thread> workers_;
  bool spawn_failed_ = false;

  std::atomic<size_t> next_{0};  // next op of the batch to take
  std::mutex mu_;
  std::condition_variable work_cv_;  // a batch was posted, or stop_
  std::condition_variable done_cv_;  // working_ reached 0
  // Guarded by mu_.
  std::span<IoOp> batch_;
  uint64_t generation_ = 0;
  size_t working_ = 0;  // workers still on the current batch
  bool stop_ = false;
};

// ---- the Env ----------------------------------------------------------------------------

// Thread-safety: all methods are thread-safe (no mutable state).
class PosixEnv final : public Env {
 public:
  explicit PosixEnv(bool uring) : uring_(uring) {}

  Result<std::unique_ptr<DataFile>> OpenDataFile(const std::string& path, uint64_t size, bool direct) override {
    if (path.empty()) return Status::InvalidArgument("nvme tier: empty data file path");
    const int flags = O_RDWR | O_CREAT | O_CLOEXEC | (direct ? O_DIRECT : 0);
    int fd;
    do {
      fd = open(path.c_str(), flags, 0644);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
      const int err = errno;
      if (direct && err == EINVAL) return NoDirectIo(path);
      std::string msg = "nvme tier: cannot open " + path + ": " + ErrnoText(err);
      if (err == ENOSPC || err == EDQUOT) return Status::NoSpace(msg);
      return Status::IOError(msg);
    }
    auto file = std::make_unique<PosixDataFile>(path, fd, size, direct);  // closes fd on every return

    // Recent kernels accept O_DIRECT on tmpfs but copy through the page cache anyway,
    // which breaks the tier's memory accounting: refuse it the same way.
    struct statfs fs;
    if (direct && fstatfs(fd, &fs) == 0 && fs.f_type == TMPFS_MAGIC) return NoDirectIo(path);

    struct stat st;
    if (fstat(fd, &st) != 0) return Status::IOError("nvme tier: cannot stat " + path + ": " + ErrnoText(errno));
    if (!S_ISREG(st.st_mode)) return Status::InvalidArgument("nvme tier: " + path + " is not a regular file");
    if (size == 0) return std::unique_ptr<DataFile>(std::move(file));

    int r;
    do {
      r = fallocate(fd, 0, 0, static_cast<off_t>(size));
    } while (r != 0 && errno == EINTR);
    if (r != 0) {
      const int err = errno;
      if (err == EOPNOTSUPP) {
        // No preallocation here (some network filesystems): a sparse file still works.
        if (static_cast<uint64_t>(st.st_size) < size && ftruncate(fd, static_cast<off_t>(size)) != 0) {
          return Status::IOError("nvme tier: cannot extend " + path + " to " + std::to_string(size) +
                                 " bytes: " + ErrnoText(errno));
        }
      } else {
        // Give back what the failed call may have allocated.
        if (static_cast<uint64_t>(st.st_size) < size && ftruncate(fd, st.st_size) != 0) {
          // Nothing more to do: the error below is what the caller must see.
        }
        if (err == ENOSPC || err == EDQUOT) {
          return Status::NoSpace("nvme tier: no space for " + std::to_string(size) + " bytes in " + path +
                                 " (fallocate: " + ErrnoText(err) + "); free space or lower the tier's capacity");
        }
        return Status::IOError("nvme tier: fallocate of " + std::to_string(size) + " bytes in " + path + ": " +
                               ErrnoText(err));
      }
    }
    return std::unique_ptr<DataFile>(std::move(file));
  }

  Result<std::unique_ptr<IoQueue>> NewIoQueue(std::span<DataFile* const> files, uint32_t depth,
                                              std::span<const iovec> registered) override {
    if (depth == 0 || depth > kMaxDepth) {
      return Status::InvalidArgument("nvme tier: queue depth " + std::to_string(depth) + " is not in [1, " +
                                     std::to_string(kMaxDepth) + "]");
    }
    for (DataFile* f : files) {
      if (f == nullptr) return Status::InvalidArgument("nvme tier: null data file given to NewIoQueue");
    }
    if (uring_) return UringIoQueue::Create(files, depth, registered);
    return std::unique_ptr<IoQueue>(std::make_unique<PreadIoQueue>(files, depth));
  }

  Status CreateDirIfMissing(const std::string& path) override {
    if (path.empty()) return Status::InvalidArgument("nvme tier: empty directory path");
    // mkdir -p: each prefix ending before a '/', then the whole path.
    for (size_t pos = path.find('/', 1);; pos = path.find('/', pos + 1)) {
      const std::string prefix = pos == std::string::npos ? path : path.substr(0, pos);
      if (!prefix.empty() && prefix.back() != '/' && mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
        return Status::IOError("nvme tier: cannot create directory " + prefix + " (for " + path +
                               "): " + ErrnoText(errno));
      }
      if (pos == std::string::npos) break;
    }
    struct stat st;
    if (stat(path.c_str(), &st) != 0) {
      return Status::IOError("nvme tier: cannot create directory " + path + ": " + ErrnoText(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
      return Status::IOError("nvme tier: cannot create directory " + path + ": it exists and is not a directory");
    }
    return Status::OK();
  }

  const char* io_backend() const override { return uring_ ? "io_uring" : "pread"; }

 private:
  const bool uring_;
};

}  // namespace

std::unique_ptr<Env> Env::NewPosixEnv(bool force_pread) {
  return std::make_unique<PosixEnv>(!force_pread && Uring().usable);
}

Env* Env::Default() {
  // Never destroyed: queues and files may outlive static destructors.
  static Env* const env = [] {
    const char* v = std::getenv("KVTIER_IO_BACKEND");
    const bool force_pread = v != nullptr && std::strcmp(v, "pread") == 0;
    if (v != nullptr && *v != '\0' && !force_pread && std::strcmp(v, "io_uring") != 0) {
      std::fprintf(stderr, "kvtier: KVTIER_IO_BACKEND=%s not understood (use pread or io_uring); probing io_uring\n",
                   v);
    }
    return NewPosixEnv(force_pread).release();
  }();
  return env;
}

}  // namespace kvtier
