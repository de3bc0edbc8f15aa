#include "tiers/nvme/fault_env.h"

#include <chrono>
#include <thread>
#include <utility>
#include <vector>

namespace kvtier {
namespace {

void Sleep(uint64_t us) {
  if (us != 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
}

std::string Where(const IoOp& op, const DataFile& file) {
  return std::to_string(op.len) + " bytes at " + std::to_string(op.offset) + " in " + file.path();
}

bool Aligned(const IoOp& op) {
  return op.offset % kDirectIoAlign == 0 && op.len % kDirectIoAlign == 0 &&
         reinterpret_cast<uintptr_t>(op.buf) % kDirectIoAlign == 0;
}

}  // namespace

// Delegates to the base file; Sync may fail on purpose.
// Thread-safety: as the base file's.
class FaultInjectionEnv::File final : public DataFile {
 public:
  File(FaultInjectionEnv* env, std::unique_ptr<DataFile> base) : env_(env), base_(std::move(base)) {}

  const std::string& path() const override { return base_->path(); }
  uint64_t size() const override { return base_->size(); }
  bool direct() const override { return base_->direct(); }
  int fd() const override { return base_->fd(); }
  Status Sync() override {
    uint32_t latency_us = 0;
    const bool fail = env_->DecideSync(&latency_us);
    Sleep(latency_us);
    if (fail) return Status::IOError("nvme tier: fdatasync of " + path() + ": Input/output error [injected]");
    return base_->Sync();
  }

  DataFile* base() const { return base_.get(); }

 private:
  FaultInjectionEnv* const env_;
  const std::unique_ptr<DataFile> base_;
};

// Runs each batch through the base queue with the faulted ops shortened or left out,
// then rewrites their statuses.
// Thread-safety: one thread at a time, like the base queue.
class FaultInjectionEnv::Queue final : public IoQueue {
 public:
  Queue(FaultInjectionEnv* env, std::vector<DataFile*> files, std::vector<DataFile*> base_files)
      : env_(env), files_(std::move(files)), base_files_(std::move(base_files)) {}

  // Separate from the constructor: the base queue needs base_files_ at its final address.
  Status Open(Env* base, uint32_t depth, std::span<const iovec> registered) {
    Result<std::unique_ptr<IoQueue>> q = base->NewIoQueue(base_files_, depth, registered);
    if (!q.ok()) return q.status();
    base_queue_ = std::move(q).value();
    return Status::OK();
  }

  uint32_t depth() const override { return base_queue_->depth(); }
  const char* backend() const override { return base_queue_->backend(); }

  Status Run(std::span<IoOp> ops) override {
    decisions_.assign(ops.size(), Decision{});
    uint32_t latency_us = 0;
    env_->Decide(ops, files_.size(), decisions_, &latency_us);
    if (latency_us != 0 && !ops.empty()) {
      const uint64_t waves = (ops.size() + depth() - 1) / depth();
      Sleep(waves * latency_us);
    }

    real_.clear();
    real_index_.assign(ops.size(), kNotRun);
    for (size_t i = 0; i < ops.size(); ++i) {
      IoOp op = ops[i];
      switch (decisions_[i].fault) {
        case Fault::kNone:
          break;
        case Fault::kShortRead:
        case Fault::kShortWrite:
        case Fault::kTornWrite:
          if (decisions_[i].prefix == 0) continue;
          op.len = decisions_[i].prefix;
          break;
        default:
          continue;  // failed without touching the file
      }
      real_index_[i] = real_.size();
      real_.push_back(std::move(op));
    }
    if (!real_.empty()) (void)base_queue_->Run(real_);  // per-op statuses are read below

    for (size_t i = 0; i < ops.size(); ++i) {
      IoOp& op = ops[i];
      const Decision& d = decisions_[i];
      op.status = real_index_[i] == kNotRun ? Status::OK() : real_[real_index_[i]].status;
      if (!op.status.ok() && d.fault != Fault::kNone) continue;  // a real error beats an injected one
      switch (d.fault) {
        case Fault::kNone:
        case Fault::kTornWrite:
          break;
        case Fault::kReadError:
          op.status =
              Status::IOError("nvme tier: read of " + Where(op, *files_[op.file]) + ": Input/output error [injected]");
          break;
        case Fault::kWriteError:
          op.status =
              Status::IOError("nvme tier: write of " + Where(op, *files_[op.file]) + ": Input/output error [injected]");
          break;
        case Fault::kWriteNoSpace:
          op.status = Status::NoSpace("nvme tier: write of " + Where(op, *files_[op.file]) +
                                      ": No space left on device [injected]");
          break;
        case Fault::kShortRead:
        case Fault::kShortWrite: {
          const bool read = d.fault == Fault::kShortRead;
          op.status = Status::IOError(std::string("nvme tier: ") + (read ? "short read: got " : "short write: wrote ") +
                                      std::to_string(d.prefix) + " of " + std::to_string(op.len) + " bytes at offset " +
                                      std::to_string(op.offset) + " in " + files_[op.file]->path() + " [injected]");
          break;
        }
      }
    }
    for (const IoOp& op : ops) {
      if (!op.status.ok()) return op.status;
    }
    return Status::OK();
  }

 private:
  static constexpr size_t kNotRun = ~size_t{0};

  // Constant after Open.
  FaultInjectionEnv* const env_;
  const std::vector<DataFile*> files_;       // as the caller gave them (for paths)
  const std::vector<DataFile*> base_files_;  // what the base queue runs on
  std::unique_ptr<IoQueue> base_queue_;

  // Scratch for Run, kept to avoid allocating per batch.
  std::vector<Decision> decisions_;
  std::vector<IoOp> real_;          // the ops handed to the base queue
  std::vector<size_t> real_index_;  // op -> index in real_, or kNotRun
};

FaultInjectionEnv::FaultInjectionEnv(Env* base) : base_(base), rng_(spec_.seed) {}
FaultInjectionEnv::~FaultInjectionEnv() = default;

void FaultInjectionEnv::SetFaults(const FaultSpec& spec) {
  std::lock_guard<std::mutex> l(mu_);
  spec_ = spec;
  rng_.seed(spec.seed);
}

FaultSpec FaultInjectionEnv::faults() const {
  std::lock_guard<std::mutex> l(mu_);
  return spec_;
}

void FaultInjectionEnv::FailAllWrites(bool on) {
  std::lock_guard<std::mutex> l(mu_);
  fail_all_writes_ = on;
}

void FaultInjectionEnv::FailAllReads(bool on) {
  std::lock_guard<std::mutex> l(mu_);
  fail_all_reads_ = on;
}

FaultCounts FaultInjectionEnv::counts() const {
  FaultCounts c;
  c.read_error = read_error_.load(std::memory_order_relaxed);
  c.write_error = write_error_.load(std::memory_order_relaxed);
  c.write_no_space = write_no_space_.load(std::memory_order_relaxed);
  c.short_read = short_read_.load(std::memory_order_relaxed);
  c.short_write = short_write_.load(std::memory_order_relaxed);
  c.torn_write = torn_write_.load(std::memory_order_relaxed);
  c.sync_error = sync_error_.load(std::memory_order_relaxed);
  return c;
}

uint64_t FaultInjectionEnv::injected() const { return counts().total(); }

void FaultInjectionEnv::ResetCounts() {
  for (auto* c :
       {&read_error_, &write_error_, &write_no_space_, &short_read_, &short_write_, &torn_write_, &sync_error_}) {
    c->store(0, std::memory_order_relaxed);
  }
}

double FaultInjectionEnv::Uniform() {
  // 53 random bits: the same sequence on every platform, unlike std::uniform_real_distribution.
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

void FaultInjectionEnv::Decide(std::span<const IoOp> ops, size_t num_files, std::span<Decision> out,
                               uint32_t* latency_us) {
  std::lock_guard<std::mutex> l(mu_);
  *latency_us = spec_.latency_us;
  for (size_t i = 0; i < ops.size(); ++i) {
    const IoOp& op = ops[i];
    Decision& d = out[i];
    if (op.len == 0 || op.buf == nullptr || op.file >= num_files) continue;  // the base queue refuses those
    if (op.kind == IoOp::Kind::kRead) {
      if (fail_all_reads_) {
        d.fault = Fault::kReadError;
      } else {
        const double u = Uniform();
        if (u < spec_.read_error) {
          d.fault = Fault::kReadError;
        } else if (u < spec_.read_error + spec_.short_read) {
          d.fault = Fault::kShortRead;
        }
      }
    } else {
      if (fail_all_writes_) {
        d.fault = Fault::kWriteError;
      } else {
        const double u = Uniform();
        double edge = spec_.write_error;
        if (u < edge) {
          d.fault = Fault::kWriteError;
        } else if (u < (edge += spec_.write_no_space)) {
          d.fault = Fault::kWriteNoSpace;
        } else if (u < (edge += spec_.short_write)) {
          d.fault = Fault::kShortWrite;
        } else if (u < (edge += spec_.torn_write)) {
          d.fault = Fault::kTornWrite;
        }
      }
    }
    switch (d.fault) {
      case Fault::kNone:
        break;
      case Fault::kReadError:
        read_error_.fetch_add(1, std::memory_order_relaxed);
        break;
      case Fault::kWriteError:
        write_error_.fetch_add(1, std::memory_order_relaxed);
        break;
      case Fault::kWriteNoSpace:
        write_no_space_.fetch_add(1, std::memory_order_relaxed);
        break;
      case Fault::kShortRead:
      case Fault::kShortWrite:
      case Fault::kTornWrite: {
        (d.fault == Fault::kShortRead    ? short_read_
         : d.fault == Fault::kShortWrite ? short_write_
                                         : torn_write_)
            .fetch_add(1, std::memory_order_relaxed);
        // Strictly shorter than the op; whole blocks when the op is O_DIRECT-shaped.
        d.prefix = Aligned(op) ? (rng_() % (op.len / kDirectIoAlign)) * kDirectIoAlign : rng_() % op.len;
        break;
      }
    }
  }
}

bool FaultInjectionEnv::DecideSync(uint32_t* latency_us) {
  std::lock_guard<std::mutex> l(mu_);
  *latency_us = spec_.latency_us;
  if (spec_.sync_error <= 0 || Uniform() >= spec_.sync_error) return false;
  sync_error_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

Result<std::unique_ptr<DataFile>> FaultInjectionEnv::OpenDataFile(const std::string& path, uint64_t size, bool direct) {
  Result<std::unique_ptr<DataFile>> f = base_->OpenDataFile(path, size, direct);
  if (!f.ok()) return f.status();
  return std::unique_ptr<DataFile>(std::make_unique<File>(this, std::move(f).value()));
}

Result<std::unique_ptr<IoQueue>> FaultInjectionEnv::NewIoQueue(std::span<DataFile* const> files, uint32_t depth,
                                                               std::span<const iovec> registered) {
  std::vector<DataFile*> base_files;
  for (DataFile* f : files) {
    // Files opened elsewhere (straight from the base Env) pass through unwrapped.
    auto* ours = dynamic_cast<File*>(f);
    base_files.push_back(ours != nullptr ? ours->base() : f);
  }
  auto q = std::make_unique<Queue>(this, std::vector<DataFile*>(files.begin(), files.end()), std::move(base_files));
  KVTIER_RETURN_IF_ERROR(q->Open(base_, depth, registered));
  return std::unique_ptr<IoQueue>(std::move(q));
}

Status FaultInjectionEnv::CreateDirIfMissing(const std::string& path) { return base_->CreateDirIfMissing(path); }

const char* FaultInjectionEnv::io_backend() const { return base_->io_backend(); }

}  // namespace kvtier
