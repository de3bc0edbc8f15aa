// Leases (kvtier/store.h): saves and loads whose copies another process does through the
// shared host region, as kvtierd's clients do. Here the "other process" is a second
// mapping of the region's memfd in this process, and a Mover of the test's own.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "index/chunk_key.h"
#include "kernels/mover.h"
#include "kvtier/store.h"
#include "tests/daemon_harness.h"
#include "tests/temp_dir.h"
#include "tests/test_engine.h"

#if defined(__SANITIZE_THREAD__)
extern "C" __attribute__((visibility("default"), used)) const char* __tsan_default_options() {
  return "ignore_noninstrumented_modules=1";
}
#endif

namespace kvtier {
namespace {

using test::Blocks;
using test::FillPrompt;
using test::HoldsPrompt;
using test::kBlockTokens;
using test::kBpc;
using test::kChunkTokens;
using test::KeysOf;
using test::Prompt;
using test::Shape;
using test::SharedHostConfig;
using test::SlotBytes;
using test::TestEngine;

constexpr std::chrono::seconds kTimeout{30};

NamespaceSpec Spec() { return test::Spec("test/lease"); }

// The client's view: its own mapping of the region and its own Mover.
struct Client {
  uint8_t* region = nullptr;
  uint64_t bytes = 0;
  TestEngine engine{Shape(), kBlockTokens, 64};
  Mover mover = MakeMover(engine);
  static Mover MakeMover(const TestEngine& e) {
    Result<Mover> m = Mover::Create(Shape(), e.layout);
    return std::move(*m);
  }
  explicit Client(const SharedRegion& r) : bytes(r.bytes) {
    void* p = mmap(nullptr, r.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd, 0);
    EXPECT_NE(p, MAP_FAILED);
    region = static_cast<uint8_t*>(p);
  }
  ~Client() { munmap(region, bytes); }
  // Gathers chunk i's blocks into each reserved payload.
  void Write(const SaveLease& l, const std::vector<int32_t>& blocks, uint32_t count) {
    for (uint32_t j = 0; j < count; ++j) {
      const uint32_t chunk = l.cached_chunks + j;
      ASSERT_TRUE(mover.Gather(std::span<const int32_t>(blocks).subspan(chunk * kBpc, kBpc),
                               region + l.payload_offsets[j], l.payload_bytes)
                      .ok());
    }
  }
  void Read(const LoadLease& l, const std::vector<int32_t>& blocks) {
    for (size_t i = 0; i < l.payload_offsets.size(); ++i)
      ASSERT_TRUE(mover.Scatter(std::span<const int32_t>(blocks).subspan(i * kBpc, kBpc),
                                region + l.payload_offsets[i], l.payload_bytes)
                      .ok());
  }
};

TEST(Lease, SaveThroughTheSharedRegionLoadsLikeAnySave) {
  Result<std::unique_ptr<Store>> s = Store::Open(SharedHostConfig(32));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  Result<SharedRegion> region = (*s)->SharedHostRegion();
  ASSERT_TRUE(region.ok()) << region.status().ToString();
  EXPECT_GE(region->fd, 0);
  Client c(*region);
  Result<NamespaceHandle> lease_ns = (*s)->RegisterNamespace(Spec());
  ASSERT_TRUE(lease_ns.ok()) << lease_ns.status().ToString();

  const std::vector<int32_t> tokens = Prompt(1, 4 * kChunkTokens + 3);
  const std::vector<ChunkKey> keys = KeysOf(Spec(), tokens);
  FillPrompt(c.engine, keys, Blocks(0, 4 * kBpc));
  Result<SaveLease> l = (*s)->ReserveSave(*lease_ns, tokens);
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  EXPECT_EQ(l->total_chunks, 4u);
  EXPECT_EQ(l->cached_chunks, 0u);
  ASSERT_EQ(l->payload_offsets.size(), 4u);
  c.Write(*l, Blocks(0, 4 * kBpc), 4);
  Result<uint32_t> stored = (*s)->CommitSave(l->id, 4);
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  EXPECT_EQ(*stored, 4u);
  EXPECT_EQ((*s)->CommitSave(l->id, 4).status().code(), Status::Code::kNotFound) << "a lease ends once";

  // An engine in this process loads them through the ordinary path.
  TestEngine e(Shape(), kBlockTokens, 64);
  Result<NamespaceHandle> ns = (*s)->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok());
  Result<Ticket> t = (*s)->Load(*ns, tokens, Blocks(20, 4 * kBpc));
  ASSERT_TRUE(t.ok() && t->Wait(kTimeout).ok()) << t->status().ToString();
  EXPECT_TRUE(HoldsPrompt(e, keys, Blocks(20, 4 * kBpc), 4));
  // A second reservation of the same prompt finds it cached: nothing to write.
  Result<SaveLease> again = (*s)->ReserveSave(*lease_ns, tokens);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->cached_chunks, 4u);
  EXPECT_TRUE(again->payload_offsets.empty());
  ASSERT_TRUE((*s)->CommitSave(again->id, 0).ok());
  // Lease-only registrations take no Save or Load.
  EXPECT_EQ((*s)->Save(*lease_ns, tokens, Blocks(0, 4 * kBpc)).status().code(), Status::Code::kInvalidArgument);
}

TEST(Lease, LoadLeasePinsAndReadsBack) {
  Result<std::unique_ptr<Store>> s = Store::Open(SharedHostConfig(8));
  ASSERT_TRUE(s.ok());
  Result<SharedRegion> region = (*s)->SharedHostRegion();
  ASSERT_TRUE(region.ok());
  Client c(*region);
  TestEngine e(Shape(), kBlockTokens, 64);
  Result<NamespaceHandle> ns = (*s)->RegisterNamespace(Spec(), e.layout);
  Result<NamespaceHandle> lease_ns = (*s)->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok() && lease_ns.ok());
  const std::vector<int32_t> tokens = Prompt(2, 3 * kChunkTokens);
  const std::vector<ChunkKey> keys = KeysOf(Spec(), tokens);
  FillPrompt(e, keys, Blocks(0, 3 * kBpc));
  Result<Ticket> t = (*s)->Save(*ns, tokens, Blocks(0, 3 * kBpc));
  ASSERT_TRUE(t.ok() && t->Wait(kTimeout).ok());

  // Load lease of the prompt plus one more chunk that is not cached.
  std::vector<int32_t> longer = tokens;
  const std::vector<int32_t> extra = Prompt(3, kChunkTokens);
  longer.insert(longer.end(), extra.begin(), extra.end());
  Result<LoadLease> l = (*s)->AcquireLoad(*lease_ns, longer);
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  EXPECT_EQ(l->total_chunks, 4u);
  ASSERT_EQ(l->payload_offsets.size(), 3u);
  EXPECT_EQ(l->status.code(), Status::Code::kNotFound);
  EXPECT_NE(l->status.message().find("recompute from token 48"), std::string::npos) << l->status.ToString();
  // While leased, a flood of saves cannot evict the chunks (host holds 8).
  for (uint32_t p = 10; p < 16; ++p) {
    const std::vector<int32_t> other = Prompt(p, 2 * kChunkTokens);
    FillPrompt(e, KeysOf(Spec(), other), Blocks(30, 2 * kBpc));
    Result<Ticket> st = (*s)->Save(*ns, other, Blocks(30, 2 * kBpc));
    ASSERT_TRUE(st.ok());
    (void)st->Wait(kTimeout);
  }
  c.Read(*l, Blocks(40, 3 * kBpc));
  EXPECT_TRUE(HoldsPrompt(c.engine, keys, Blocks(40, 3 * kBpc), 3));
  ASSERT_TRUE((*s)->ReleaseLoad(l->id).ok());
  EXPECT_EQ((*s)->ReleaseLoad(l->id).code(), Status::Code::kNotFound);
  EXPECT_EQ((*s)->ReleaseLoad(12345).code(), Status::Code::kNotFound);
  // Nothing cached: no lease, and the status says so.
  Result<LoadLease> none = (*s)->AcquireLoad(*lease_ns, Prompt(99, 2 * kChunkTokens));
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->id, 0u);
  EXPECT_TRUE(none->payload_offsets.empty());
  EXPECT_EQ(none->status.code(), Status::Code::kNotFound);
}

TEST(Lease, PartialCommitAbortAndCloseWithLeasesOut) {
  Result<std::unique_ptr<Store>> s = Store::Open(SharedHostConfig(16));
  ASSERT_TRUE(s.ok());
  Result<SharedRegion> region = (*s)->SharedHostRegion();
  ASSERT_TRUE(region.ok());
  Client c(*region);
  Result<NamespaceHandle> ns = (*s)->RegisterNamespace(Spec());
  ASSERT_TRUE(ns.ok());
  const std::vector<int32_t> tokens = Prompt(4, 4 * kChunkTokens);
  const std::vector<ChunkKey> keys = KeysOf(Spec(), tokens);
  FillPrompt(c.engine, keys, Blocks(0, 4 * kBpc));
  const uint64_t used0 = (*s)->Stats().host_used_bytes;
  // Abort: the reserved slots go back.
  Result<SaveLease> a = (*s)->ReserveSave(*ns, tokens);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*s)->AbortSave(a->id).ok());
  EXPECT_EQ((*s)->Stats().host_used_bytes, used0);
  Result<LookupResult> lr = (*s)->Lookup(*ns, tokens);
  ASSERT_TRUE(lr.ok());
  EXPECT_EQ(lr->matched_chunks, 0u);
  // Two of four written: those two are stored, the commit says the rest were not.
  Result<SaveLease> l = (*s)->ReserveSave(*ns, tokens);
  ASSERT_TRUE(l.ok());
  c.Write(*l, Blocks(0, 4 * kBpc), 2);
  EXPECT_EQ((*s)->CommitSave(l->id, 5).status().code(), Status::Code::kInvalidArgument) << "more than reserved";
  Result<SaveLease> l2 = (*s)->ReserveSave(*ns, tokens);
  ASSERT_TRUE(l2.ok());
  c.Write(*l2, Blocks(0, 4 * kBpc), 2);
  Result<uint32_t> part = (*s)->CommitSave(l2->id, 2);
  EXPECT_FALSE(part.ok());
  EXPECT_NE(part.status().message().find("2 of 4 chunks stored"), std::string::npos) << part.status().ToString();
  lr = (*s)->Lookup(*ns, tokens);
  ASSERT_TRUE(lr.ok());
  EXPECT_EQ(lr->matched_chunks, 2u);
  // Leases left open when the store closes are ended by Close (ASan/LSan watch this).
  Result<SaveLease> open_save = (*s)->ReserveSave(*ns, Prompt(5, 2 * kChunkTokens));
  Result<LoadLease> open_load = (*s)->AcquireLoad(*ns, tokens);
  ASSERT_TRUE(open_save.ok() && open_load.ok());
  EXPECT_NE(open_load->id, 0u);
  ASSERT_TRUE((*s)->Close().ok());
  EXPECT_EQ((*s)->ReleaseLoad(open_load->id).code(), Status::Code::kClosed);
}

TEST(Lease, FlushWritesHostOnlyChunksToNvmeAndListCounts) {
  test::TempDir dir;
  StoreConfig c = SharedHostConfig(64);
  c.shared_host_region = false;
  c.nvme.enabled = true;
  c.nvme.paths = {dir.path() + "/data"};
  c.nvme.capacity_bytes = 128 * SlotBytes();
  c.nvme.buffered = true;
  c.nvme.policy = WritePolicy::kWriteBack;
  const std::vector<int32_t> tokens = Prompt(6, 5 * kChunkTokens);
  const std::vector<ChunkKey> keys = KeysOf(Spec(), tokens);
  {
    Result<std::unique_ptr<Store>> s = Store::Open(c);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    EXPECT_EQ((*s)->SharedHostRegion().status().code(), Status::Code::kNotSupported);
    TestEngine e(Shape(), kBlockTokens, 64);
    Result<NamespaceHandle> ns = (*s)->RegisterNamespace(Spec(), e.layout);
    ASSERT_TRUE(ns.ok());
    FillPrompt(e, keys, Blocks(0, 5 * kBpc));
    Result<Ticket> t = (*s)->Save(*ns, tokens, Blocks(0, 5 * kBpc));
    ASSERT_TRUE(t.ok() && t->Wait(kTimeout).ok());
    Result<std::vector<NamespaceInfo>> before = (*s)->ListNamespaces();
    ASSERT_TRUE(before.ok());
    ASSERT_EQ(before->size(), 1u);
    EXPECT_EQ((*before)[0].chunks, 5u);
    EXPECT_EQ((*before)[0].host_chunks, 5u);
    EXPECT_EQ((*before)[0].nvme_chunks, 0u);
    EXPECT_EQ((*before)[0].registrations, 1u);
    EXPECT_EQ((*before)[0].spec.model.name, "test/lease");
    Result<uint64_t> flushed = (*s)->Flush();
    ASSERT_TRUE(flushed.ok()) << flushed.status().ToString();
    EXPECT_EQ(*flushed, 5u);
    Result<std::vector<NamespaceInfo>> after = (*s)->ListNamespaces();
    ASSERT_TRUE(after.ok());
    EXPECT_EQ((*after)[0].nvme_chunks, 5u);
    Result<uint64_t> again = (*s)->Flush();
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, 0u) << "nothing left that only host holds";
  }
  // Reopened: the write-back chunks were durable and load bit-exact.
  Result<std::unique_ptr<Store>> s = Store::Open(c);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->Stats().recovered_chunks, 5u);
  TestEngine e(Shape(), kBlockTokens, 64);
  Result<NamespaceHandle> ns = (*s)->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok());
  Result<Ticket> t = (*s)->Load(*ns, tokens, Blocks(30, 5 * kBpc));
  ASSERT_TRUE(t.ok() && t->Wait(kTimeout).ok()) << t->status().ToString();
  EXPECT_TRUE(HoldsPrompt(e, keys, Blocks(30, 5 * kBpc), 5));
}

TEST(Lease, FlushWithoutNvmeIsNotSupported) {
  Result<std::unique_ptr<Store>> s = Store::Open(SharedHostConfig(8));
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->Flush().status().code(), Status::Code::kNotSupported);
}

}  // namespace
}  // namespace kvtier
