// Env tests on real files under a fresh directory (tests/temp_dir.h), with real O_DIRECT and real
// io_uring. Every queue test runs on both backends; the io_uring run skips (with the
// reason) where the kernel does not allow io_uring.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <liburing.h>
#include <linux/magic.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/temp_dir.h"
#include "tiers/nvme/env.h"
#include "tiers/nvme/fault_env.h"

namespace kvtier {
namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kBlock = kDirectIoAlign;

using test::TempDir;

// Page-aligned heap memory, as O_DIRECT needs.
class AlignedBuf {
 public:
  explicit AlignedBuf(uint64_t bytes)
      : size_((bytes + kBlock - 1) / kBlock * kBlock),
        data_(static_cast<uint8_t*>(std::aligned_alloc(kBlock, size_))) {}
  ~AlignedBuf() { std::free(data_); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  uint64_t size_;
  uint8_t* data_;
};

// splitmix64: cheap enough to fill tens of MiB under TSan.
void FillRandom(uint8_t* p, uint64_t n, uint64_t seed) {
  uint64_t x = seed;
  auto next = [&x] {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t v = next();
    std::memcpy(p + i, &v, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<uint8_t>(next());
}

bool Same(const uint8_t* a, const uint8_t* b, uint64_t n) { return std::memcmp(a, b, n) == 0; }

IoOp Op(IoOp::Kind kind, uint32_t file, uint64_t offset, void* buf, uint64_t len) {
  IoOp op;
  op.kind = kind;
  op.file = file;
  op.offset = offset;
  op.buf = buf;
  op.len = len;
  return op;
}
IoOp Read(uint32_t file, uint64_t offset, void* buf, uint64_t len) {
  return Op(IoOp::Kind::kRead, file, offset, buf, len);
}
IoOp Write(uint32_t file, uint64_t offset, void* buf, uint64_t len) {
  return Op(IoOp::Kind::kWrite, file, offset, buf, len);
}

struct Extent {
  uint64_t offset;
  uint64_t len;
};

// [0, bytes) cut into extents of 1..max_blocks blocks, in random order.
std::vector<Extent> RandomExtents(uint64_t bytes, uint64_t max_blocks, std::mt19937_64& rng) {
  std::vector<Extent> out;
  for (uint64_t off = 0; off < bytes;) {
    const uint64_t len = std::min<uint64_t>(bytes - off, (1 + rng() % max_blocks) * kBlock);
    out.push_back(Extent{off, len});
    off += len;
  }
  std::shuffle(out.begin(), out.end(), rng);
  return out;
}

// The number in "got N of" / "wrote N of" of a short-transfer message.
uint64_t ShortPrefix(const std::string& msg) {
  for (const char* word : {"got ", "wrote "}) {
    const size_t pos = msg.find(word);
    if (pos != std::string::npos) return std::strtoull(msg.c_str() + pos + std::strlen(word), nullptr, 10);
  }
  ADD_FAILURE() << "no transfer count in: " << msg;
  return ~0ull;
}

std::unique_ptr<DataFile> MustOpen(Env* env, const std::string& path, uint64_t size, bool direct = true) {
  Result<std::unique_ptr<DataFile>> f = env->OpenDataFile(path, size, direct);
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  return f.ok() ? std::move(f).value() : nullptr;
}

std::unique_ptr<IoQueue> MustQueue(Env* env, std::vector<DataFile*> files, uint32_t depth,
                                   std::vector<iovec> registered = {}) {
  Result<std::unique_ptr<IoQueue>> q = env->NewIoQueue(files, depth, registered);
  EXPECT_TRUE(q.ok()) << q.status().ToString();
  return q.ok() ? std::move(q).value() : nullptr;
}

// Reads [0, bytes) of `file` into dst in 1 MiB ops.
void ReadWhole(Env* env, DataFile* file, uint8_t* dst, uint64_t bytes) {
  auto q = MustQueue(env, {file}, 8);
  ASSERT_NE(q, nullptr);
  std::vector<IoOp> ops;
  for (uint64_t off = 0; off < bytes; off += kMiB) ops.push_back(Read(0, off, dst + off, std::min(kMiB, bytes - off)));
  Status s = q->Run(ops);
  ASSERT_TRUE(s.ok()) << s.ToString();
}

void WriteWhole(Env* env, DataFile* file, uint8_t* src, uint64_t bytes) {
  auto q = MustQueue(env, {file}, 8);
  ASSERT_NE(q, nullptr);
  std::vector<IoOp> ops;
  for (uint64_t off = 0; off < bytes; off += kMiB) ops.push_back(Write(0, off, src + off, std::min(kMiB, bytes - off)));
  Status s = q->Run(ops);
  ASSERT_TRUE(s.ok()) << s.ToString();
}

// Why io_uring cannot be used here, as the kernel says it.
std::string UringUnavailableReason() {
  io_uring ring;
  const int r = io_uring_queue_init(4, &ring, 0);
  if (r < 0) return std::string("io_uring_queue_init: ") + std::strerror(-r);
  io_uring_queue_exit(&ring);
  return "the opcode probe lacks READ/WRITE/READ_FIXED/WRITE_FIXED (see the kvtier: line on stderr)";
}

enum class Backend { kUring, kPread };

std::string BackendName(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::kUring ? "io_uring" : "pread";
}

// Makes env_ for the backend under test; the io_uring run skips where io_uring is missing.
class BackendTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed: " << std::strerror(errno);
    env_ = Env::NewPosixEnv(GetParam() == Backend::kPread);
    if (GetParam() == Backend::kUring && std::string(env_->io_backend()) != "io_uring") {
      GTEST_SKIP() << "io_uring is unavailable on this machine: " << UringUnavailableReason();
    }
    ASSERT_STREQ(env_->io_backend(), GetParam() == Backend::kUring ? "io_uring" : "pread");
  }

  TempDir dir_;
  std::unique_ptr<Env> env_;
};

// ---- NvmeEnv: the POSIX Env on both backends ----------------------------------------------

class NvmeEnvTest : public BackendTest {};

TEST_P(NvmeEnvTest, RandomAlignedOpsRoundTripAtEveryDepth) {
  constexpr uint64_t kFileBytes = 16 * kMiB;
  auto file = MustOpen(env_.get(), dir_.File("data"), kFileBytes);
  ASSERT_NE(file, nullptr);
  AlignedBuf src(kFileBytes), dst(kFileBytes);
  for (uint32_t depth : {1u, 4u, 16u, 64u}) {
    SCOPED_TRACE("depth " + std::to_string(depth));
    std::mt19937_64 rng(depth);
    FillRandom(src.data(), kFileBytes, depth * 7919);
    std::memset(dst.data(), 0xAA, kFileBytes);
    auto q = MustQueue(env_.get(), {file.get()}, depth);
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q->depth(), depth);
    EXPECT_STREQ(q->backend(), env_->io_backend());

    std::vector<IoOp> ops;
    for (const Extent& e : RandomExtents(kFileBytes, 32, rng))
      ops.push_back(Write(0, e.offset, src.data() + e.offset, e.len));
    Status s = q->Run(ops);
    ASSERT_TRUE(s.ok()) << s.ToString();
    for (const IoOp& op : ops) EXPECT_TRUE(op.status.ok()) << op.status.ToString();

    ops.clear();
    for (const Extent& e : RandomExtents(kFileBytes, 48, rng))
      ops.push_back(Read(0, e.offset, dst.data() + e.offset, e.len));
    s = q->Run(ops);
    ASSERT_TRUE(s.ok()) << s.ToString();
    for (const IoOp& op : ops) EXPECT_TRUE(op.status.ok()) << op.status.ToString();
    EXPECT_TRUE(Same(src.data(), dst.data(), kFileBytes));
  }
}

TEST_P(NvmeEnvTest, LargeOpsWithAndWithoutRegisteredBuffers) {
  constexpr uint64_t kOp = 8 * kMiB;
  constexpr uint64_t kOps = 4;
  constexpr uint64_t kFileBytes = kOps * kOp;
  auto file = MustOpen(env_.get(), dir_.File("large"), kFileBytes);
  ASSERT_NE(file, nullptr);
  AlignedBuf src(kFileBytes), dst(kFileBytes);
  for (bool registered : {false, true}) {
    SCOPED_TRACE(registered ? "registered" : "plain");
    FillRandom(src.data(), kFileBytes, registered ? 11 : 12);
    std::memset(dst.data(), 0, kFileBytes);
    std::vector<iovec> regs;
    if (registered) regs = {iovec{src.data(), kFileBytes}, iovec{dst.data(), kFileBytes}};
    auto q = MustQueue(env_.get(), {file.get()}, 4, regs);
    ASSERT_NE(q, nullptr);
    std::vector<IoOp> ops;
    for (uint64_t i = 0; i < kOps; ++i) ops.push_back(Write(0, i * kOp, src.data() + i * kOp, kOp));
    Status s = q->Run(ops);
    ASSERT_TRUE(s.ok()) << s.ToString();
    ops.clear();
    for (uint64_t i = kOps; i-- > 0;) ops.push_back(Read(0, i * kOp, dst.data() + i * kOp, kOp));
    s = q->Run(ops);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_TRUE(Same(src.data(), dst.data(), kFileBytes));
  }
}

TEST_P(NvmeEnvTest, InterleavedReadsAndWritesOnTwoFiles) {
  constexpr uint64_t kFileBytes = 8 * kMiB;
  constexpr uint64_t kExtent = 64 * kKiB;
  auto f0 = MustOpen(env_.get(), dir_.File("f0"), kFileBytes);
  auto f1 = MustOpen(env_.get(), dir_.File("f1"), kFileBytes);
  ASSERT_TRUE(f0 && f1);
  DataFile* files[2] = {f0.get(), f1.get()};
  AlignedBuf old_bytes[2] = {AlignedBuf(kFileBytes), AlignedBuf(kFileBytes)};
  AlignedBuf new_bytes[2] = {AlignedBuf(kFileBytes), AlignedBuf(kFileBytes)};
  AlignedBuf got[2] = {AlignedBuf(kFileBytes), AlignedBuf(kFileBytes)};
  for (int f = 0; f < 2; ++f) {
    FillRandom(old_bytes[f].data(), kFileBytes, 100 + f);
    FillRandom(new_bytes[f].data(), kFileBytes, 200 + f);
    std::memset(got[f].data(), 0, kFileBytes);
    ASSERT_NO_FATAL_FAILURE(WriteWhole(env_.get(), files[f], old_bytes[f].data(), kFileBytes));
  }

  // Even extents are read (they must still hold the old bytes), odd ones overwritten.
  std::vector<IoOp> ops;
  for (uint32_t f = 0; f < 2; ++f) {
    for (uint64_t e = 0; e < kFileBytes / kExtent; ++e) {
      const uint64_t off = e * kExtent;
      ops.push_back(e % 2 == 0 ? Read(f, off, got[f].data() + off, kExtent)
                               : Write(f, off, new_bytes[f].data() + off, kExtent));
    }
  }
  std::mt19937_64 rng(5);
  std::shuffle(ops.begin(), ops.end(), rng);
  auto q = MustQueue(env_.get(), {files[0], files[1]}, 16);
  ASSERT_NE(q, nullptr);
  Status s = q->Run(ops);
  ASSERT_TRUE(s.ok()) << s.ToString();

  for (int f = 0; f < 2; ++f) {
    AlignedBuf disk(kFileBytes);
    ASSERT_NO_FATAL_FAILURE(ReadWhole(env_.get(), files[f], disk.data(), kFileBytes));
    for (uint64_t e = 0; e < kFileBytes / kExtent; ++e) {
      const uint64_t off = e * kExtent;
      if (e % 2 == 0) {
        EXPECT_TRUE(Same(got[f].data() + off, old_bytes[f].data() + off, kExtent)) << "file " << f << " extent " << e;
        EXPECT_TRUE(Same(disk.data() + off, old_bytes[f].data() + off, kExtent)) << "file " << f << " extent " << e;
      } else {
        EXPECT_TRUE(Same(disk.data() + off, new_bytes[f].data() + off, kExtent)) << "file " << f << " extent " << e;
      }
    }
  }
}

TEST_P(NvmeEnvTest, RegisteredAndPlainBuffersMoveTheSameBytes) {
  constexpr uint64_t kBytes = 12 * kMiB;
  constexpr uint64_t kRegistered = 8 * kMiB;  // buffers [0, 8 MiB) are registered
  auto file = MustOpen(env_.get(), dir_.File("reg"), kBytes);
  ASSERT_NE(file, nullptr);
  AlignedBuf src(kBytes);
  FillRandom(src.data(), kBytes, 77);
  {
    auto q = MustQueue(env_.get(), {file.get()}, 16, {iovec{src.data(), kRegistered}});
    ASSERT_NE(q, nullptr);
    // Inside the registered range, straddling its end, and outside it.
    std::vector<IoOp> ops;
    for (uint64_t off = 0; off < 6 * kMiB; off += 64 * kKiB) ops.push_back(Write(0, off, src.data() + off, 64 * kKiB));
    ops.push_back(Write(0, 6 * kMiB, src.data() + 6 * kMiB, 4 * kMiB));
    for (uint64_t off = 10 * kMiB; off < kBytes; off += 64 * kKiB)
      ops.push_back(Write(0, off, src.data() + off, 64 * kKiB));
    Status s = q->Run(ops);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  for (bool registered : {true, false}) {
    SCOPED_TRACE(registered ? "read into registered memory" : "read into plain memory");
    AlignedBuf dst(kBytes);
    std::memset(dst.data(), 0, kBytes);
    std::vector<iovec> regs;
    if (registered) regs.push_back(iovec{dst.data(), kBytes});
    auto q = MustQueue(env_.get(), {file.get()}, 16, regs);
    ASSERT_NE(q, nullptr);
    std::vector<IoOp> ops;
    for (uint64_t off = 0; off < kBytes; off += 256 * kKiB) ops.push_back(Read(0, off, dst.data() + off, 256 * kKiB));
    Status s = q->Run(ops);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_TRUE(Same(src.data(), dst.data(), kBytes));
  }
}

TEST_P(NvmeEnvTest, ReadPastEndFailsThatOpOnly) {
  constexpr uint64_t kFileBytes = 1 * kMiB;
  auto file = MustOpen(env_.get(), dir_.File("eof"), kFileBytes);
  ASSERT_NE(file, nullptr);
  AlignedBuf src(kFileBytes), dst(4 * 64 * kKiB);
  FillRandom(src.data(), kFileBytes, 3);
  std::memset(dst.data(), 0, dst.size());
  ASSERT_NO_FATAL_FAILURE(WriteWhole(env_.get(), file.get(), src.data(), kFileBytes));

  auto q = MustQueue(env_.get(), {file.get()}, 4);
  ASSERT_NE(q, nullptr);
  uint8_t* b = dst.data();
  std::vector<IoOp> ops = {Read(0, 0, b, 64 * kKiB),
                           Read(0, kFileBytes - kBlock, b + 64 * kKiB, 2 * kBlock),  // straddles the end
                           Read(0, 2 * kFileBytes, b + 128 * kKiB, kBlock),          // wholly past it
                           Read(0, 64 * kKiB, b + 192 * kKiB, 64 * kKiB)};
  Status s = q->Run(ops);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.ToString(), ops[1].status.ToString()) << "Run returns the first failure";
  EXPECT_TRUE(ops[0].status.ok()) << ops[0].status.ToString();
  EXPECT_TRUE(ops[3].status.ok()) << ops[3].status.ToString();
  EXPECT_EQ(ops[1].status.code(), Status::Code::kIOError);
  EXPECT_NE(ops[1].status.message().find("short read: got 4096 of 8192 bytes"), std::string::npos)
      << ops[1].status.ToString();
  EXPECT_NE(ops[1].status.message().find(file->path()), std::string::npos);
  EXPECT_NE(ops[2].status.message().find("short read: got 0 of 4096 bytes"), std::string::npos)
      << ops[2].status.ToString();
  EXPECT_TRUE(Same(b, src.data(), 64 * kKiB));
  EXPECT_TRUE(Same(b + 64 * kKiB, src.data() + kFileBytes - kBlock, kBlock));
  EXPECT_TRUE(Same(b + 192 * kKiB, src.data() + 64 * kKiB, 64 * kKiB));
}

TEST_P(NvmeEnvTest, MisalignedDirectOpsFailCleanly) {
  auto file = MustOpen(env_.get(), dir_.File("align"), 1 * kMiB);
  ASSERT_NE(file, nullptr);
  ASSERT_TRUE(file->direct());
  AlignedBuf src(64 * kKiB), dst(64 * kKiB);
  FillRandom(src.data(), src.size(), 9);
  ASSERT_NO_FATAL_FAILURE(WriteWhole(env_.get(), file.get(), src.data(), 64 * kKiB));
  auto q = MustQueue(env_.get(), {file.get()}, 4);
  ASSERT_NE(q, nullptr);
  std::vector<IoOp> ops = {Read(0, 0, dst.data() + 1, kBlock),  // buffer off by one byte
                           Write(0, 100, src.data(), kBlock),   // offset not aligned
                           Read(0, 8 * kBlock, dst.data() + 8 * kBlock, 8 * kBlock)};
  Status s = q->Run(ops);
  EXPECT_FALSE(s.ok());
  for (int i : {0, 1}) {
    EXPECT_EQ(ops[i].status.code(), Status::Code::kIOError) << ops[i].status.ToString();
    EXPECT_NE(ops[i].status.message().find("Invalid argument"), std::string::npos) << ops[i].status.ToString();
    EXPECT_NE(ops[i].status.message().find("aligned"), std::string::npos) << ops[i].status.ToString();
  }
  EXPECT_TRUE(ops[2].status.ok()) << ops[2].status.ToString();
  EXPECT_TRUE(Same(dst.data() + 8 * kBlock, src.data() + 8 * kBlock, 8 * kBlock));
  AlignedBuf disk(64 * kKiB);
  ASSERT_NO_FATAL_FAILURE(ReadWhole(env_.get(), file.get(), disk.data(), 64 * kKiB));
  EXPECT_TRUE(Same(disk.data(), src.data(), 64 * kKiB)) << "a refused write changed the file";
}

TEST_P(NvmeEnvTest, BadOpsAreRefusedAndTheRestRun) {
  auto file = MustOpen(env_.get(), dir_.File("bad"), 1 * kMiB);
  ASSERT_NE(file, nullptr);
  AlignedBuf buf(16 * kKiB);
  FillRandom(buf.data(), buf.size(), 1);
  auto q = MustQueue(env_.get(), {file.get()}, 2);
  ASSERT_NE(q, nullptr);
  std::vector<IoOp> ops = {Write(0, 0, buf.data(), kBlock), Write(3, 0, buf.data(), kBlock),
                           Write(0, kBlock, nullptr, kBlock), Read(0, 0, buf.data(), 0),
                           Write(0, 2 * kBlock, buf.data() + kBlock, kBlock)};
  Status s = q->Run(ops);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.ToString();
  EXPECT_TRUE(ops[0].status.ok());
  EXPECT_EQ(ops[1].status.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(ops[1].status.message().find("file 3"), std::string::npos) << ops[1].status.ToString();
  EXPECT_EQ(ops[2].status.code(), Status::Code::kInvalidArgument);
  EXPECT_TRUE(ops[3].status.ok()) << "a zero-length op is trivially done";
  EXPECT_TRUE(ops[4].status.ok());
  // The good writes landed (ops of one batch run in any order, so read in a second one).
  std::vector<IoOp> reads = {Read(0, 0, buf.data() + 2 * kBlock, kBlock),
                             Read(0, 2 * kBlock, buf.data() + 3 * kBlock, kBlock)};
  ASSERT_TRUE(q->Run(reads).ok());
  EXPECT_TRUE(Same(buf.data(), buf.data() + 2 * kBlock, 2 * kBlock));

  for (uint32_t depth : {0u, 1u << 20}) {
    std::vector<DataFile*> files = {file.get()};
    Result<std::unique_ptr<IoQueue>> bad = env_->NewIoQueue(files, depth, {});
    EXPECT_EQ(bad.status().code(), Status::Code::kInvalidArgument) << depth;
  }
}

TEST_P(NvmeEnvTest, QueueRunsManyBatchesAndEmptyOnes) {
  auto file = MustOpen(env_.get(), dir_.File("batches"), 1 * kMiB);
  ASSERT_NE(file, nullptr);
  AlignedBuf src(1 * kMiB), dst(1 * kMiB);
  FillRandom(src.data(), src.size(), 21);
  auto q = MustQueue(env_.get(), {file.get()}, 8);
  ASSERT_NE(q, nullptr);
  std::vector<IoOp> none;
  EXPECT_TRUE(q->Run(none).ok());
  // Many small batches through one queue: the pool and the ring are reused each time.
  for (uint64_t i = 0; i < 64; ++i) {
    std::vector<IoOp> ops = {Write(0, i * 16 * kKiB, src.data() + i * 16 * kKiB, 16 * kKiB)};
    if (i % 2 == 1) ops.push_back(Read(0, (i - 1) * 16 * kKiB, dst.data() + (i - 1) * 16 * kKiB, 16 * kKiB));
    Status s = q->Run(ops);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  for (uint64_t i = 0; i < 64; i += 2)
    EXPECT_TRUE(Same(dst.data() + i * 16 * kKiB, src.data() + i * 16 * kKiB, 16 * kKiB));
}

TEST_P(NvmeEnvTest, FallocateSizesTheFileAndDataSurvivesReopen) {
  const std::string path = dir_.File("sized");
  AlignedBuf src(4 * kMiB);
  FillRandom(src.data(), src.size(), 31);
  {
    auto file = MustOpen(env_.get(), path, 4 * kMiB);
    ASSERT_NE(file, nullptr);
    EXPECT_EQ(file->size(), 4 * kMiB);
    EXPECT_EQ(file->path(), path);
    EXPECT_TRUE(file->direct());
    EXPECT_GE(file->fd(), 0);
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), 4 * kMiB);
    EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, 4 * kMiB) << "fallocate should have allocated the blocks";
    ASSERT_NO_FATAL_FAILURE(WriteWhole(env_.get(), file.get(), src.data(), 4 * kMiB));
    Status s = file->Sync();
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  {
    // Asking for less keeps the file (and its bytes) but reports the requested size.
    auto file = MustOpen(env_.get(), path, 1 * kMiB);
    ASSERT_NE(file, nullptr);
    EXPECT_EQ(file->size(), 1 * kMiB);
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), 4 * kMiB);
    AlignedBuf got(4 * kMiB);
    ASSERT_NO_FATAL_FAILURE(ReadWhole(env_.get(), file.get(), got.data(), 4 * kMiB));
    EXPECT_TRUE(Same(got.data(), src.data(), 4 * kMiB));
  }
  {
    // Asking for more grows it; the old bytes stay, the new part reads as zeros.
    auto file = MustOpen(env_.get(), path, 8 * kMiB);
    ASSERT_NE(file, nullptr);
    EXPECT_EQ(file->size(), 8 * kMiB);
    AlignedBuf got(8 * kMiB);
    ASSERT_NO_FATAL_FAILURE(ReadWhole(env_.get(), file.get(), got.data(), 8 * kMiB));
    EXPECT_TRUE(Same(got.data(), src.data(), 4 * kMiB));
    std::vector<uint8_t> zeros(4 * kMiB, 0);
    EXPECT_TRUE(Same(got.data() + 4 * kMiB, zeros.data(), 4 * kMiB));
    EXPECT_TRUE(file->Sync().ok());
  }
}

TEST_P(NvmeEnvTest, TmpfsRefusesDirectButBufferedWorks) {
  struct statfs fs;
  if (statfs("/dev/shm", &fs) != 0 || fs.f_type != TMPFS_MAGIC) GTEST_SKIP() << "/dev/shm is not a tmpfs here";
  TempDir shm("/dev/shm");
  ASSERT_FALSE(shm.path().empty());
  const std::string path = shm.File("data");

  Result<std::unique_ptr<DataFile>> direct = env_->OpenDataFile(path, 1 * kMiB, true);
  ASSERT_FALSE(direct.ok());
  EXPECT_EQ(direct.status().code(), Status::Code::kInvalidArgument);
  EXPECT_NE(direct.status().message().find(path), std::string::npos) << direct.status().ToString();
  EXPECT_NE(direct.status().message().find("buffered"), std::string::npos) << direct.status().ToString();

  auto file = MustOpen(env_.get(), path, 1 * kMiB, /*direct=*/false);
  ASSERT_NE(file, nullptr);
  EXPECT_FALSE(file->direct());
  EXPECT_EQ(file->size(), 1 * kMiB);
  // Buffered files take any alignment.
  std::vector<uint8_t> src(10000), dst(10000, 0);
  FillRandom(src.data(), src.size(), 4);
  auto q = MustQueue(env_.get(), {file.get()}, 4);
  ASSERT_NE(q, nullptr);
  std::vector<IoOp> ops = {Write(0, 7, src.data() + 1, 5000), Write(0, 5007, src.data() + 5001, 4999)};
  ASSERT_TRUE(q->Run(ops).ok());
  ops = {Read(0, 7, dst.data() + 1, 9999)};
  Status s = q->Run(ops);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(Same(src.data() + 1, dst.data() + 1, 9999));
  EXPECT_TRUE(file->Sync().ok());
}

INSTANTIATE_TEST_SUITE_P(, NvmeEnvTest, ::testing::Values(Backend::kUring, Backend::kPread), BackendName);

// ---- NvmeEnv: backend-independent parts ------------------------------------------------------

TEST(NvmeEnv, DefaultEnvIsOneOfTheBackends) {
  Env* env = Env::Default();
  ASSERT_NE(env, nullptr);
  EXPECT_EQ(env, Env::Default());
  const std::string backend = env->io_backend();
  EXPECT_TRUE(backend == "io_uring" || backend == "pread") << backend;
  EXPECT_STREQ(Env::NewPosixEnv(true)->io_backend(), "pread");
}

TEST(NvmeEnv, OpenAndCreateDirErrorsNameThePath) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  auto env = Env::NewPosixEnv(true);
  const std::string missing = dir.File("no/such/dir/data");
  Result<std::unique_ptr<DataFile>> f = env->OpenDataFile(missing, kMiB, true);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), Status::Code::kIOError);
  EXPECT_NE(f.status().message().find(missing), std::string::npos) << f.status().ToString();
  EXPECT_NE(f.status().message().find("No such file"), std::string::npos) << f.status().ToString();

  const std::string nested = dir.File("a/b/c");
  ASSERT_TRUE(env->CreateDirIfMissing(nested).ok());
  EXPECT_TRUE(std::filesystem::is_directory(nested));
  EXPECT_TRUE(env->CreateDirIfMissing(nested).ok()) << "existing directories are fine";
  EXPECT_TRUE(env->CreateDirIfMissing(nested + "/").ok());
  auto file = MustOpen(env.get(), nested + "/data", kMiB);
  ASSERT_NE(file, nullptr);

  Status s = env->CreateDirIfMissing(nested + "/data");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find(nested + "/data"), std::string::npos) << s.ToString();
  s = env->CreateDirIfMissing(nested + "/data/sub");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find(nested + "/data"), std::string::npos) << s.ToString();

  Result<std::unique_ptr<DataFile>> d = env->OpenDataFile(nested, kMiB, true);
  EXPECT_FALSE(d.ok()) << "a directory is not a data file";
}

// ---- FaultInjectionEnv -----------------------------------------------------------------------

// A fault env over the backend under test, one direct file with known bytes, a faulty
// queue and a clean one over the same file.
class FaultInjectionEnvTest : public BackendTest {
 protected:
  static constexpr uint64_t kFileBytes = 4 * kMiB;

  void SetUp() override {
    BackendTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    faulty_ = std::make_unique<FaultInjectionEnv>(env_.get());
    file_ = MustOpen(faulty_.get(), dir_.File("data"), kFileBytes);
    ASSERT_NE(file_, nullptr);
    disk_ = std::make_unique<AlignedBuf>(kFileBytes);
    FillRandom(disk_->data(), kFileBytes, 1234);
    ASSERT_NO_FATAL_FAILURE(WriteWhole(env_.get(), file_.get(), disk_->data(), kFileBytes));
    queue_ = MustQueue(faulty_.get(), {file_.get()}, 4);
    ASSERT_NE(queue_, nullptr);
  }

  // The file as the clean Env reads it.
  std::unique_ptr<AlignedBuf> OnDisk() {
    auto got = std::make_unique<AlignedBuf>(kFileBytes);
    ReadWhole(env_.get(), file_.get(), got->data(), kFileBytes);
    return got;
  }

  // `n` writes of 64 KiB (at 0, 128 KiB, 256 KiB, ...) of fresh bytes from `src`.
  std::vector<IoOp> Writes(AlignedBuf& src, int n) {
    std::vector<IoOp> ops;
    for (int i = 0; i < n; ++i) {
      const uint64_t off = static_cast<uint64_t>(i) * 128 * kKiB;
      ops.push_back(Write(0, off, src.data() + off, 64 * kKiB));
    }
    return ops;
  }

  std::unique_ptr<FaultInjectionEnv> faulty_;
  std::unique_ptr<DataFile> file_;
  std::unique_ptr<AlignedBuf> disk_;  // what the file holds
  std::unique_ptr<IoQueue> queue_;
};

TEST_P(FaultInjectionEnvTest, NoFaultsMeansCleanIo) {
  FaultSpec spec;
  faulty_->SetFaults(spec);
  EXPECT_STREQ(faulty_->io_backend(), env_->io_backend());
  EXPECT_STREQ(queue_->backend(), env_->io_backend());
  EXPECT_EQ(queue_->depth(), 4u);
  AlignedBuf src(kFileBytes), dst(kFileBytes);
  FillRandom(src.data(), kFileBytes, 8);
  std::mt19937_64 rng(8);
  std::vector<IoOp> ops;
  for (const Extent& e : RandomExtents(kFileBytes, 16, rng))
    ops.push_back(Write(0, e.offset, src.data() + e.offset, e.len));
  ASSERT_TRUE(queue_->Run(ops).ok());
  ops.clear();
  for (const Extent& e : RandomExtents(kFileBytes, 16, rng))
    ops.push_back(Read(0, e.offset, dst.data() + e.offset, e.len));
  ASSERT_TRUE(queue_->Run(ops).ok());
  EXPECT_TRUE(Same(src.data(), dst.data(), kFileBytes));
  EXPECT_TRUE(file_->Sync().ok());
  EXPECT_EQ(faulty_->injected(), 0u);
}

TEST_P(FaultInjectionEnvTest, ReadErrorFailsEveryReadAndLeavesTheBuffer) {
  FaultSpec spec;
  spec.read_error = 1;
  faulty_->SetFaults(spec);
  EXPECT_EQ(faulty_->faults().read_error, 1);
  AlignedBuf dst(kFileBytes);
  std::memset(dst.data(), 0x5A, kFileBytes);
  std::vector<IoOp> ops;
  for (uint64_t i = 0; i < 8; ++i) ops.push_back(Read(0, i * 64 * kKiB, dst.data() + i * 64 * kKiB, 64 * kKiB));
  EXPECT_FALSE(queue_->Run(ops).ok());
  for (const IoOp& op : ops) {
    EXPECT_EQ(op.status.code(), Status::Code::kIOError);
    EXPECT_NE(op.status.message().find("Input/output error"), std::string::npos) << op.status.ToString();
    EXPECT_NE(op.status.message().find(file_->path()), std::string::npos) << op.status.ToString();
  }
  std::vector<uint8_t> untouched(8 * 64 * kKiB, 0x5A);
  EXPECT_TRUE(Same(dst.data(), untouched.data(), untouched.size()));
  EXPECT_EQ(faulty_->counts().read_error, 8u);
  EXPECT_EQ(faulty_->injected(), 8u);
  // Writes are not affected by read faults.
  AlignedBuf src(kFileBytes);
  FillRandom(src.data(), kFileBytes, 2);
  std::vector<IoOp> writes = Writes(src, 4);
  EXPECT_TRUE(queue_->Run(writes).ok());
}

TEST_P(FaultInjectionEnvTest, WriteErrorAndNoSpaceLeaveTheFileAlone) {
  AlignedBuf src(kFileBytes);
  FillRandom(src.data(), kFileBytes, 3);
  for (bool no_space : {false, true}) {
    SCOPED_TRACE(no_space ? "write_no_space" : "write_error");
    FaultSpec spec;
    (no_space ? spec.write_no_space : spec.write_error) = 1;
    faulty_->SetFaults(spec);
    faulty_->ResetCounts();
    std::vector<IoOp> ops = Writes(src, 6);
    EXPECT_FALSE(queue_->Run(ops).ok());
    for (const IoOp& op : ops) {
      if (no_space) {
        EXPECT_EQ(op.status.code(), Status::Code::kNoSpace) << op.status.ToString();
        EXPECT_TRUE(op.status.retryable());
      } else {
        EXPECT_EQ(op.status.code(), Status::Code::kIOError) << op.status.ToString();
        EXPECT_NE(op.status.message().find("Input/output error"), std::string::npos);
      }
    }
    EXPECT_EQ(no_space ? faulty_->counts().write_no_space : faulty_->counts().write_error, 6u);
    EXPECT_EQ(faulty_->injected(), 6u);
    auto disk = OnDisk();
    EXPECT_TRUE(Same(disk->data(), disk_->data(), kFileBytes));
  }
}

TEST_P(FaultInjectionEnvTest, ShortReadMovesAnAlignedPrefixAndFails) {
  FaultSpec spec;
  spec.short_read = 1;
  spec.seed = 99;
  faulty_->SetFaults(spec);
  AlignedBuf dst(kFileBytes);
  std::memset(dst.data(), 0x5A, kFileBytes);
  std::vector<IoOp> ops;
  for (uint64_t i = 0; i < 16; ++i) ops.push_back(Read(0, i * 128 * kKiB, dst.data() + i * 128 * kKiB, 128 * kKiB));
  EXPECT_FALSE(queue_->Run(ops).ok());
  for (const IoOp& op : ops) {
    ASSERT_EQ(op.status.code(), Status::Code::kIOError) << op.status.ToString();
    ASSERT_NE(op.status.message().find("short read"), std::string::npos) << op.status.ToString();
    const uint64_t got = ShortPrefix(op.status.message());
    ASSERT_LT(got, op.len);
    EXPECT_EQ(got % kBlock, 0u);
    auto* b = static_cast<uint8_t*>(op.buf);
    EXPECT_TRUE(Same(b, disk_->data() + op.offset, got));
    std::vector<uint8_t> untouched(op.len - got, 0x5A);
    EXPECT_TRUE(Same(b + got, untouched.data(), untouched.size()));
  }
  EXPECT_EQ(faulty_->counts().short_read, 16u);
}

TEST_P(FaultInjectionEnvTest, ShortWriteWritesAPrefixAndFails) {
  FaultSpec spec;
  spec.short_write = 1;
  faulty_->SetFaults(spec);
  AlignedBuf src(kFileBytes);
  FillRandom(src.data(), kFileBytes, 5);
  std::vector<IoOp> ops = Writes(src, 16);
  EXPECT_FALSE(queue_->Run(ops).ok());
  auto disk = OnDisk();
  for (const IoOp& op : ops) {
    ASSERT_EQ(op.status.code(), Status::Code::kIOError) << op.status.ToString();
    ASSERT_NE(op.status.message().find("short write"), std::string::npos) << op.status.ToString();
    const uint64_t wrote = ShortPrefix(op.status.message());
    ASSERT_LT(wrote, op.len);
    EXPECT_EQ(wrote % kBlock, 0u);
    EXPECT_TRUE(Same(disk->data() + op.offset, src.data() + op.offset, wrote));
    EXPECT_TRUE(Same(disk->data() + op.offset + wrote, disk_->data() + op.offset + wrote, op.len - wrote));
  }
  EXPECT_EQ(faulty_->counts().short_write, 16u);
}

TEST_P(FaultInjectionEnvTest, TornWriteReportsSuccessButWritesOnlyAPrefix) {
  FaultSpec spec;
  spec.torn_write = 1;
  spec.seed = 7;
  faulty_->SetFaults(spec);
  AlignedBuf src(kFileBytes);
  FillRandom(src.data(), kFileBytes, 6);
  std::vector<IoOp> ops = Writes(src, 16);
  Status s = queue_->Run(ops);
  EXPECT_TRUE(s.ok()) << "a torn write looks like success: " << s.ToString();
  auto disk = OnDisk();
  for (const IoOp& op : ops) {
    EXPECT_TRUE(op.status.ok());
    const uint8_t* d = disk->data() + op.offset;
    uint64_t prefix = 0;
    while (prefix < op.len && Same(d + prefix, src.data() + op.offset + prefix, kBlock)) prefix += kBlock;
    EXPECT_LT(prefix, op.len) << "the whole write reached the file";
    EXPECT_TRUE(Same(d + prefix, disk_->data() + op.offset + prefix, op.len - prefix))
        << "beyond the prefix: old bytes";
  }
  EXPECT_EQ(faulty_->counts().torn_write, 16u);
  EXPECT_EQ(faulty_->injected(), 16u);
}

TEST_P(FaultInjectionEnvTest, SyncErrorFailsSync) {
  FaultSpec spec;
  spec.sync_error = 1;
  faulty_->SetFaults(spec);
  Status s = file_->Sync();
  EXPECT_EQ(s.code(), Status::Code::kIOError);
  EXPECT_NE(s.message().find(file_->path()), std::string::npos) << s.ToString();
  EXPECT_EQ(faulty_->counts().sync_error, 1u);
  faulty_->SetFaults(FaultSpec{});
  EXPECT_TRUE(file_->Sync().ok());
  EXPECT_EQ(faulty_->injected(), 1u);
}

TEST_P(FaultInjectionEnvTest, LatencyIsAddedToEveryOp) {
  using Clock = std::chrono::steady_clock;
  FaultSpec spec;
  spec.latency_us = 20000;
  faulty_->SetFaults(spec);
  AlignedBuf dst(kFileBytes);
  std::vector<IoOp> one = {Read(0, 0, dst.data(), 64 * kKiB)};
  auto t0 = Clock::now();
  ASSERT_TRUE(queue_->Run(one).ok());
  EXPECT_GE(Clock::now() - t0, std::chrono::microseconds(20000));
  // Eight ops on a depth-4 queue: two rounds of the latency.
  std::vector<IoOp> eight;
  for (uint64_t i = 0; i < 8; ++i) eight.push_back(Read(0, i * 64 * kKiB, dst.data() + i * 64 * kKiB, 64 * kKiB));
  t0 = Clock::now();
  ASSERT_TRUE(queue_->Run(eight).ok());
  EXPECT_GE(Clock::now() - t0, std::chrono::microseconds(40000));
  t0 = Clock::now();
  ASSERT_TRUE(file_->Sync().ok());
  EXPECT_GE(Clock::now() - t0, std::chrono::microseconds(20000));
  EXPECT_TRUE(Same(dst.data(), disk_->data(), 8 * 64 * kKiB));
  EXPECT_EQ(faulty_->injected(), 0u) << "latency is not counted as a fault";
}

TEST_P(FaultInjectionEnvTest, FailAllSwitchesAndCounters) {
  AlignedBuf src(kFileBytes), dst(kFileBytes);
  FillRandom(src.data(), kFileBytes, 10);
  faulty_->FailAllWrites(true);
  std::vector<IoOp> writes = Writes(src, 5);
  EXPECT_FALSE(queue_->Run(writes).ok());
  for (const IoOp& op : writes) EXPECT_EQ(op.status.code(), Status::Code::kIOError);
  std::vector<IoOp> reads = {Read(0, 0, dst.data(), 64 * kKiB)};
  EXPECT_TRUE(queue_->Run(reads).ok()) << "only writes fail";
  EXPECT_EQ(faulty_->counts().write_error, 5u);
  faulty_->FailAllWrites(false);
  faulty_->FailAllReads(true);
  EXPECT_TRUE(queue_->Run(writes).ok());
  EXPECT_FALSE(queue_->Run(reads).ok());
  EXPECT_EQ(faulty_->counts().read_error, 1u);
  EXPECT_EQ(faulty_->injected(), 6u);
  faulty_->FailAllReads(false);
  EXPECT_TRUE(queue_->Run(reads).ok());
  EXPECT_TRUE(Same(dst.data(), src.data(), 64 * kKiB));
  faulty_->ResetCounts();
  EXPECT_EQ(faulty_->injected(), 0u);
}

TEST_P(FaultInjectionEnvTest, SameSeedGivesTheSameFaults) {
  FaultSpec spec;
  spec.read_error = 0.3;
  spec.short_read = 0.3;
  spec.seed = 42;
  AlignedBuf dst(kFileBytes);
  auto run = [&](FaultInjectionEnv* env, IoQueue* q) {
    env->SetFaults(spec);
    std::vector<std::string> outcome;
    for (int batch = 0; batch < 4; ++batch) {
      std::vector<IoOp> ops;
      for (uint64_t i = 0; i < 16; ++i) ops.push_back(Read(0, i * 64 * kKiB, dst.data() + i * 64 * kKiB, 64 * kKiB));
      (void)q->Run(ops);
      for (const IoOp& op : ops) outcome.push_back(op.status.ToString());
    }
    return outcome;
  };
  FaultInjectionEnv other(env_.get());
  auto q2 = MustQueue(&other, {file_.get()}, 16);
  ASSERT_NE(q2, nullptr);
  const std::vector<std::string> a = run(faulty_.get(), queue_.get());
  const std::vector<std::string> b = run(&other, q2.get());
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, run(faulty_.get(), queue_.get())) << "SetFaults restarts the generator";
  const size_t failed =
      static_cast<size_t>(std::count_if(a.begin(), a.end(), [](const std::string& s) { return s != "OK"; }));
  EXPECT_GT(failed, 10u);
  EXPECT_LT(failed, 60u);
}

// Random faults over many batches; after each one the file, read through the clean Env,
// must agree with every op's status, and reads that report OK must hold the right bytes.
TEST_P(FaultInjectionEnvTest, MixedRandomFaultsKeepStatusesTrue) {
  FaultSpec spec;
  spec.read_error = 0.05;
  spec.write_error = 0.05;
  spec.write_no_space = 0.05;
  spec.short_read = 0.08;
  spec.short_write = 0.08;
  spec.torn_write = 0.08;
  spec.sync_error = 0.3;
  spec.seed = 2024;
  faulty_->SetFaults(spec);
  std::mt19937_64 rng(17);
  AlignedBuf src(kFileBytes), dst(kFileBytes);
  uint64_t short_reads = 0, short_writes = 0, torn = 0, write_failures = 0, read_failures = 0, sync_failures = 0;
  for (int round = 0; round < 16; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    FillRandom(src.data(), kFileBytes, 1000 + round);
    std::memset(dst.data(), 0x5A, kFileBytes);
    const uint32_t depth = std::vector<uint32_t>{1, 4, 16}[round % 3];
    auto q = MustQueue(faulty_.get(), {file_.get()}, depth);
    ASSERT_NE(q, nullptr);
    std::vector<IoOp> ops;
    for (const Extent& e : RandomExtents(kFileBytes, 16, rng)) {
      if (rng() % 3 == 0) continue;  // leave some of the file alone
      ops.push_back(rng() % 2 ? Write(0, e.offset, src.data() + e.offset, e.len)
                              : Read(0, e.offset, dst.data() + e.offset, e.len));
    }
    (void)q->Run(ops);
    if (round % 4 == 3) {
      Status s = file_->Sync();
      if (!s.ok()) ++sync_failures;
    }
    auto disk = OnDisk();
    for (const IoOp& op : ops) {
      const uint8_t* now = disk->data() + op.offset;
      const uint8_t* before = disk_->data() + op.offset;
      const auto* mine = static_cast<const uint8_t*>(op.buf);
      const std::string& msg = op.status.message();
      if (op.kind == IoOp::Kind::kRead) {
        EXPECT_TRUE(Same(now, before, op.len)) << "a read changed the file";
        if (op.status.ok()) {
          EXPECT_TRUE(Same(mine, before, op.len)) << "a read reported OK with wrong bytes";
        } else if (msg.find("short read") != std::string::npos) {
          ++short_reads;
          const uint64_t got = ShortPrefix(msg);
          ASSERT_LT(got, op.len);
          EXPECT_TRUE(Same(mine, before, got));
        } else {
          ++read_failures;
          EXPECT_EQ(op.status.code(), Status::Code::kIOError) << op.status.ToString();
        }
        continue;
      }
      // A write left the new bytes on a prefix of its range and the old bytes after it.
      uint64_t prefix = 0;
      while (prefix < op.len && Same(now + prefix, mine + prefix, kBlock)) prefix += kBlock;
      EXPECT_TRUE(Same(now + prefix, before + prefix, op.len - prefix)) << "neither old nor new bytes on disk";
      if (op.status.ok()) {
        if (prefix < op.len) ++torn;  // the only way OK and a partial write go together
      } else if (msg.find("short write") != std::string::npos) {
        ++short_writes;
        EXPECT_EQ(ShortPrefix(msg), prefix) << op.status.ToString();
      } else {
        ++write_failures;
        EXPECT_EQ(prefix, 0u) << op.status.ToString();
        EXPECT_TRUE(op.status.code() == Status::Code::kIOError || op.status.code() == Status::Code::kNoSpace)
            << op.status.ToString();
      }
    }
    std::memcpy(disk_->data(), disk->data(), kFileBytes);
  }
  const FaultCounts c = faulty_->counts();
  EXPECT_EQ(short_reads, c.short_read);
  EXPECT_EQ(short_writes, c.short_write);
  EXPECT_EQ(torn, c.torn_write);
  EXPECT_EQ(write_failures, c.write_error + c.write_no_space);
  EXPECT_EQ(read_failures, c.read_error);
  EXPECT_EQ(sync_failures, c.sync_error);
  EXPECT_GT(c.total(), 20u) << "the mix should have injected plenty of faults";
}

// The fault switches are flipped from another thread while a queue runs: no race, no hang,
// and every status is one the faults allow.
TEST_P(FaultInjectionEnvTest, FaultsChangeWhileAQueueRuns) {
  std::atomic<bool> done{false};
  std::thread flipper([&] {
    for (uint64_t i = 0; !done.load(); ++i) {
      FaultSpec spec;
      spec.read_error = (i % 3) * 0.25;
      spec.short_read = (i % 2) * 0.25;
      spec.seed = i;
      faulty_->SetFaults(spec);
      faulty_->FailAllReads(i % 5 == 0);
      (void)faulty_->counts();
      (void)faulty_->faults();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  AlignedBuf dst(kFileBytes);
  for (int batch = 0; batch < 100; ++batch) {
    std::vector<IoOp> ops;
    for (uint64_t i = 0; i < 8; ++i) ops.push_back(Read(0, i * 64 * kKiB, dst.data() + i * 64 * kKiB, 64 * kKiB));
    (void)queue_->Run(ops);
    for (const IoOp& op : ops) {
      EXPECT_TRUE(op.status.ok() || op.status.code() == Status::Code::kIOError) << op.status.ToString();
      if (op.status.ok()) {
        EXPECT_TRUE(Same(static_cast<uint8_t*>(op.buf), disk_->data() + op.offset, op.len));
      }
    }
  }
  done = true;
  flipper.join();
}

INSTANTIATE_TEST_SUITE_P(, FaultInjectionEnvTest, ::testing::Values(Backend::kUring, Backend::kPread), BackendName);

}  // namespace
}  // namespace kvtier
