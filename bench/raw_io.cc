#include "bench/raw_io.h"

#include <fcntl.h>
#include <liburing.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

namespace kvtier::bench {
namespace {

constexpr uint64_t kAlign = 4096;
constexpr uint32_t kMaxDepth = 4096;
constexpr uint64_t kMaxFixedBuffer = 1ull << 30;  // io_uring's limit per registered buffer

using Clock = std::chrono::steady_clock;

std::string ErrnoText(int err) {
  char buf[128];
  return std::string(strerror_r(err, buf, sizeof(buf)));
}

// Closes the descriptor and tears the ring down on every return path.
struct RawFile {
  int fd = -1;
  ~RawFile() {
    if (fd >= 0) close(fd);
  }
};
struct RawRing {
  io_uring ring{};
  bool ready = false;
  ~RawRing() {
    if (ready) io_uring_queue_exit(&ring);
  }
};
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// xorshift64*: cheap, and good enough to spread offsets over the file.
struct OffsetSource {
  uint64_t state;
  uint64_t blocks;
  uint64_t block_bytes;
  uint64_t Next() {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return ((state * 0x2545F4914F6CDD1Dull) % blocks) * block_bytes;
  }
};

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// The number after `"key" :` at or after `from`, or -1.
double NumberAfterKey(const std::string& text, const std::string& key, size_t from) {
  const size_t k = text.find("\"" + key + "\"", from);
  if (k == std::string::npos) return -1;
  const size_t colon = text.find(':', k);
  if (colon == std::string::npos) return -1;
  const char* start = text.c_str() + colon + 1;
  char* end = nullptr;
  const double v = std::strtod(start, &end);
  return end == start ? -1 : v;
}

// Position of the object value of `"key" : {`, or npos.
size_t ObjectAfterKey(const std::string& text, const std::string& key) {
  const std::string quoted = "\"" + key + "\"";
  for (size_t k = text.find(quoted); k != std::string::npos; k = text.find(quoted, k + 1)) {
    size_t i = k + quoted.size();
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n')) ++i;
    if (i >= text.size() || text[i] != ':') continue;
    ++i;
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n')) ++i;
    if (i < text.size() && text[i] == '{') return i;
  }
  return std::string::npos;
}

}  // namespace

Result<RawIoResult> RawUringThroughput(const std::string& path, bool write, uint64_t block_bytes, uint32_t depth,
                                       double seconds, uint64_t file_bytes) {
  if (block_bytes == 0 || block_bytes % kAlign != 0 || block_bytes > UINT32_MAX) {
    return Status::InvalidArgument("bench: block size " + std::to_string(block_bytes) +
                                   " must be a positive multiple of 4096 below 4 GiB");
  }
  if (depth == 0 || depth > kMaxDepth) {
    return Status::InvalidArgument("bench: depth " + std::to_string(depth) + " is not in [1, 4096]");
  }
  if (!(seconds > 0)) return Status::InvalidArgument("bench: the run must last more than 0 seconds");

  RawFile file;
  file.fd = open(path.c_str(), O_DIRECT | O_CLOEXEC | (write ? O_RDWR | O_CREAT : O_RDONLY), 0644);
  if (file.fd < 0) {
    const int err = errno;
    if (err == EINVAL) {
      return Status::InvalidArgument("bench: " + path + " refuses O_DIRECT; use a block-backed filesystem");
    }
    return Status::IOError("bench: cannot open " + path + ": " + ErrnoText(err));
  }
  // Recent kernels take O_DIRECT on tmpfs but serve it from memory: not a device limit.
  struct statfs fs;
  if (fstatfs(file.fd, &fs) == 0 && fs.f_type == TMPFS_MAGIC) {
    return Status::InvalidArgument("bench: " + path + " is on tmpfs; use a block-backed filesystem");
  }
  struct stat st;
  if (fstat(file.fd, &st) != 0) return Status::IOError("bench: cannot stat " + path + ": " + ErrnoText(errno));
  const uint64_t have = static_cast<uint64_t>(st.st_size);
  if (file_bytes == 0) file_bytes = have;
  if (write && have < file_bytes && fallocate(file.fd, 0, 0, static_cast<off_t>(file_bytes)) != 0) {
    const int err = errno;
    if (err == ENOSPC) {
      return Status::NoSpace("bench: no space for " + std::to_string(file_bytes) + " bytes in " + path);
    }
    if (err != EOPNOTSUPP || ftruncate(file.fd, static_cast<off_t>(file_bytes)) != 0) {
      return Status::IOError("bench: cannot size " + path + " to " + std::to_string(file_bytes) +
                             " bytes: " + ErrnoText(err));
    }
  }
  if (!write && have < file_bytes) {
    return Status::InvalidArgument("bench: " + path + " holds " + std::to_string(have) + " bytes, fewer than the " +
                                   std::to_string(file_bytes) + " to read; fill it first");
  }
  const uint64_t blocks = file_bytes / block_bytes;
  if (blocks == 0) {
    return Status::InvalidArgument("bench: " + path + " (" + std::to_string(file_bytes) +
                                   " bytes) is smaller than one block of " + std::to_string(block_bytes));
  }

  const uint64_t buffer_bytes = block_bytes * depth;
  std::unique_ptr<uint8_t, FreeDeleter> buffers(static_cast<uint8_t*>(std::aligned_alloc(kAlign, buffer_bytes)));
  if (!buffers) return Status::NoMemory("bench: cannot allocate " + std::to_string(buffer_bytes) + " bytes of buffers");
  // Written bytes are random so that a compressing or deduplicating device cannot shortcut;
  // read buffers are touched so page faults stay out of the measurement.
  OffsetSource fill{0x9E3779B97F4A7C15ull, ~0ull, 1};
  for (uint64_t i = 0; i < buffer_bytes; i += 8) {
    const uint64_t v = write ? fill.Next() : 0;
    std::memcpy(buffers.get() + i, &v, 8);
  }

  RawRing ring;
  const int r = io_uring_queue_init(depth, &ring.ring, 0);
  if (r < 0) return Status::IOError("bench: io_uring_queue_init(" + std::to_string(depth) + "): " + ErrnoText(-r));
  ring.ready = true;
  const bool fixed_file = io_uring_register_files(&ring.ring, &file.fd, 1) == 0;
  bool fixed_buffers = false;
  if (block_bytes <= kMaxFixedBuffer) {
    std::vector<iovec> iovs(depth);
    for (uint32_t i = 0; i < depth; ++i) iovs[i] = iovec{buffers.get() + i * block_bytes, block_bytes};
    fixed_buffers = io_uring_register_buffers(&ring.ring, iovs.data(), depth) == 0;
  }

  OffsetSource offsets{static_cast<uint64_t>(Clock::now().time_since_epoch().count()) | 1, blocks, block_bytes};
  uint32_t unsubmitted = 0;
  auto prepare = [&](uint32_t slot) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);  // never null: one sqe per slot, ring >= depth
    uint8_t* buf = buffers.get() + slot * block_bytes;
    const int fd = fixed_file ? 0 : file.fd;
    const uint64_t off = offsets.Next();
    const auto len = static_cast<unsigned>(block_bytes);
    if (write) {
      if (fixed_buffers) {
        io_uring_prep_write_fixed(sqe, fd, buf, len, off, static_cast<int>(slot));
      } else {
        io_uring_prep_write(sqe, fd, buf, len, off);
      }
    } else {
      if (fixed_buffers) {
        io_uring_prep_read_fixed(sqe, fd, buf, len, off, static_cast<int>(slot));
      } else {
        io_uring_prep_read(sqe, fd, buf, len, off);
      }
    }
    if (fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
    sqe->user_data = slot;
    ++unsubmitted;
  };

  for (uint32_t slot = 0; slot < depth; ++slot) prepare(slot);
  uint32_t inflight = depth;
  uint64_t bytes = 0;
  Status failure;
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  while (inflight > 0) {
    const int ret = io_uring_submit_and_wait(&ring.ring, 1);
    if (ret == -EINTR) continue;
    if (ret < 0) {
      // Wait for what the kernel took before the ring goes away; the rest was never sent.
      failure = Status::IOError("bench: io_uring_enter: " + ErrnoText(-ret));
      for (uint32_t in_kernel = inflight - unsubmitted; in_kernel > 0;) {
        io_uring_cqe* cqe;
        const int w = io_uring_wait_cqe(&ring.ring, &cqe);
        if (w == -EINTR) continue;
        if (w < 0) break;
        io_uring_cqe_seen(&ring.ring, cqe);
        --in_kernel;
      }
      break;
    }
    unsubmitted -= std::min<uint32_t>(unsubmitted, static_cast<uint32_t>(ret));
    const bool more = Clock::now() < deadline;
    io_uring_cqe* cqe;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring.ring, head, cqe) {
      ++seen;
      if (cqe->res < 0 && failure.ok()) {
        failure = Status::IOError(std::string("bench: raw ") + (write ? "write" : "read") + " of " +
                                  std::to_string(block_bytes) + " bytes in " + path + ": " + ErrnoText(-cqe->res));
      }
      if (cqe->res > 0) bytes += static_cast<uint64_t>(cqe->res);
      if (more && failure.ok()) {
        prepare(static_cast<uint32_t>(cqe->user_data));
      } else {
        --inflight;
      }
    }
    io_uring_cq_advance(&ring.ring, seen);
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  if (!failure.ok()) return failure;
  RawIoResult result;
  result.bytes = bytes;
  result.seconds = elapsed;
  result.gbps = elapsed > 0 ? static_cast<double>(bytes) / elapsed / 1e9 : 0;
  return result;
}

Result<double> FioRandReadGbps(const std::string& path, uint64_t block_bytes, uint32_t depth, double seconds) {
  if (std::system("command -v fio >/dev/null 2>&1") != 0) {
    return Status::NotFound("fio is not installed (Debian: apt-get install fio); the fio cross-check is skipped");
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return Status::IOError("bench: cannot stat " + path + ": " + ErrnoText(errno));
  if (block_bytes == 0 || static_cast<uint64_t>(st.st_size) < block_bytes || depth == 0 || !(seconds > 0)) {
    return Status::InvalidArgument("bench: fio needs a file of at least one block, depth >= 1 and a positive time");
  }
  // fio splits --filename at ':' unless escaped.
  std::string fio_path;
  for (char c : path) {
    if (c == ':') fio_path += '\\';
    fio_path += c;
  }
  const long long ms = std::max(1LL, std::llround(seconds * 1000));
  const std::string cmd = "fio --name=kvtier --filename=" + ShellQuote(fio_path) +
                          " --ioengine=io_uring --direct=1 --rw=randread --bs=" + std::to_string(block_bytes) +
                          " --iodepth=" + std::to_string(depth) + " --runtime=" + std::to_string(ms) +
                          "ms --time_based --size=" + std::to_string(st.st_size) + " --output-format=json 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return Status::IOError("bench: cannot run fio: " + ErrnoText(errno));
  std::string out;
  char chunk[4096];
  for (size_t n; (n = std::fread(chunk, 1, sizeof(chunk), pipe)) > 0;) out.append(chunk, n);
  const int status = pclose(pipe);
  const std::string tail = out.size() > 600 ? out.substr(out.size() - 600) : out;
  if (status != 0) return Status::IOError("bench: fio failed (" + cmd + "): " + tail);

  const size_t read = ObjectAfterKey(out, "read");
  if (read == std::string::npos) return Status::IOError("bench: no \"read\" section in fio's output: " + tail);
  double bytes_per_second = NumberAfterKey(out, "bw_bytes", read);
  if (bytes_per_second < 0) {
    const double kib = NumberAfterKey(out, "bw", read);  // older fio: KiB/s only
    if (kib < 0) return Status::IOError("bench: no read bandwidth in fio's output: " + tail);
    bytes_per_second = kib * 1024;
  }
  return bytes_per_second / 1e9;
}

}  // namespace kvtier::bench
