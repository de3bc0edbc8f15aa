// Placement, prefetch, the planner and layer-wise loads, through the real Store (host
// tier, and an NVMe tier on a real O_DIRECT file where a test needs one).
#include <gtest/gtest.h>
#include <sys/vfs.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "index/chunk_key.h"
#include "kvtier/store.h"
#include "tests/temp_dir.h"
#include "tests/test_engine.h"
#include "tiers/chunk_format.h"
#include "tiers/nvme/fault_env.h"

#if defined(__SANITIZE_THREAD__)
// librocksdb is not instrumented (see nvme_store_test.cc).
extern "C" __attribute__((visibility("default"), used)) const char* __tsan_default_options() {
  return "ignore_noninstrumented_modules=1";
}
#endif

namespace kvtier {
namespace {

using test::Blocks;
using test::FillPrompt;
using test::HoldsPrompt;
using test::KeysOf;
using test::Prompt;
using test::TempDir;
using test::TestEngine;

constexpr uint32_t kChunkTokens = 16;
constexpr uint32_t kBlockTokens = 4;
constexpr uint32_t kBpc = kChunkTokens / kBlockTokens;
constexpr uint32_t kLayers = 4;
constexpr uint64_t kPayloadBytes = uint64_t{kLayers} * 2 * kChunkTokens * 2 * 32 * 2;
constexpr uint64_t kSlotBytes = kChunkPayloadOffset + kPayloadBytes;
constexpr uint32_t kSrc = 0, kDst = 64;
constexpr std::chrono::seconds kTimeout{60};

KvShape Shape() {
  KvShape s;
  s.num_layers = kLayers;
  s.num_kv_heads = 2;
  s.head_dim = 32;
  s.dtype = DType::kFloat16;
  s.chunk_tokens = kChunkTokens;
  return s;
}

NamespaceSpec Spec() {
  NamespaceSpec n;
  n.model.name = "test/placement";
  n.model.revision = "r1";
  n.shape = Shape();
  return n;
}

StoreConfig HostConfig(uint64_t host_chunks) {
  StoreConfig c;
  c.host_capacity_bytes = host_chunks * kSlotBytes;
  c.huge_pages = HugePages::kOff;
  c.worker_threads = 2;
  return c;
}

bool OnTmpfs(const std::string& path) {
  struct statfs fs;
  return statfs(path.c_str(), &fs) == 0 && fs.f_type == 0x01021994;
}

StoreConfig NvmeConfig(const std::string& dir, uint64_t host_chunks, WritePolicy policy) {
  StoreConfig c = HostConfig(host_chunks);
  c.nvme.enabled = true;
  c.nvme.paths = {dir + "/data"};
  c.nvme.capacity_bytes = 256 * kSlotBytes;
  c.nvme.metadata_dir = dir + "/meta";
  c.nvme.queue_depth = 4;
  c.nvme.policy = policy;
  return c;
}

struct Engine {
  Store* store = nullptr;
  NamespaceHandle ns;
  TestEngine kv{Shape(), kBlockTokens, 128};

  void Open(Store* s) {
    store = s;
    Result<NamespaceHandle> h = s->RegisterNamespace(Spec(), kv.layout);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    ns = *h;
  }
  Status Save(uint32_t id, uint32_t chunks, uint32_t* done = nullptr) {
    const std::vector<int32_t> tokens = Prompt(id, chunks * kChunkTokens);
    const std::vector<int32_t> src = Blocks(kSrc, chunks * kBpc);
    FillPrompt(kv, KeysOf(Spec(), tokens), src);
    Result<Ticket> t = store->Save(ns, tokens, src);
    if (!t.ok()) return t.status();
    Status w = t->Wait(kTimeout);
    if (done) *done = t->chunks_done();
    return t->done() ? t->status() : w;
  }
  // Loads into zeroed blocks; the chunks it reports hold exactly what was saved.
  uint32_t Load(uint32_t id, uint32_t chunks) {
    const std::vector<int32_t> tokens = Prompt(id, chunks * kChunkTokens);
    const std::vector<int32_t> dst = Blocks(kDst, chunks * kBpc);
    for (int32_t b : dst) kv.Zero(static_cast<uint32_t>(b));
    Result<Ticket> t = store->Load(ns, tokens, dst);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    if (!t.ok()) return 0;
    (void)t->Wait(kTimeout);
    EXPECT_TRUE(t->done());
    EXPECT_TRUE(HoldsPrompt(kv, KeysOf(Spec(), tokens), dst, t->chunks_done())) << "prompt " << id;
    return t->chunks_done();
  }
  LookupResult Lookup(uint32_t id, uint32_t chunks, const LookupOptions& o = {}) {
    Result<LookupResult> r = store->Lookup(ns, Prompt(id, chunks * kChunkTokens), {}, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : LookupResult{};
  }
};

std::unique_ptr<Store> OpenStore(const StoreConfig& c) {
  Result<std::unique_ptr<Store>> s = Store::Open(c);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(*s) : nullptr;
}

// Layer l of the chunks' blocks holds what was saved (K and V), whatever the other layers hold.
bool LayerHolds(TestEngine& e, const std::vector<ChunkKey>& keys, const std::vector<int32_t>& blocks, size_t chunks,
                uint32_t layer) {
  for (size_t c = 0; c < chunks; ++c)
    for (uint32_t b = 0; b < kBpc; ++b)
      for (uint32_t kv = 0; kv < 2; ++kv) {
        const uint8_t* p = e.Part(layer, kv, static_cast<uint32_t>(blocks[c * kBpc + b]));
        for (uint64_t i = 0; i < e.block_bytes; ++i)
          if (p[i] != TestEngine::Expected(keys[c].lo + b, layer, kv, i)) return false;
      }
  return true;
}

// ---- layer-wise loads ----------------------------------------------------------------------

TEST(Placement, LayerWiseLoadPublishesLayersInOrder) {
  std::unique_ptr<Store> store = OpenStore(HostConfig(64));
  ASSERT_TRUE(store);
  Engine e;
  e.Open(store.get());
  constexpr uint32_t kChunks = 6;
  ASSERT_TRUE(e.Save(1, kChunks).ok());
  const std::vector<int32_t> tokens = Prompt(1, kChunks * kChunkTokens);
  const std::vector<ChunkKey> keys = KeysOf(Spec(), tokens);
  const std::vector<int32_t> dst = Blocks(kDst, kChunks * kBpc);
  for (int round = 0; round < 20; ++round) {
    for (int32_t b : dst) e.kv.Zero(static_cast<uint32_t>(b));
    Result<Ticket> t = store->Load(e.ns, tokens, dst);
    ASSERT_TRUE(t.ok());
    for (uint32_t l = 0; l < kLayers; ++l) {
      Result<uint32_t> c = t->WaitLayer(l, kTimeout);
      ASSERT_TRUE(c.ok()) << c.status().ToString();
      ASSERT_EQ(*c, kChunks) << "layer " << l;
      // In place the moment it is announced, even while later layers are still copying.
      ASSERT_TRUE(LayerHolds(e.kv, keys, dst, kChunks, l)) << "layer " << l << " round " << round;
    }
    ASSERT_TRUE(t->Wait(kTimeout).ok());
    EXPECT_EQ(t->chunks_done(), kChunks);
  }
  // A load of nothing cached: every layer wait says 0 chunks.
  Result<Ticket> miss = store->Load(e.ns, Prompt(99, kChunkTokens), Blocks(kDst, kBpc));
  ASSERT_TRUE(miss.ok());
  Result<uint32_t> c = miss->WaitLayer(kLayers - 1, kTimeout);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, 0u);
}

// ---- pinned prefixes and admission ---------------------------------------------------------------

TEST(Placement, PinnedPrefixSurvivesEvictionUntilUnpinned) {
  std::unique_ptr<Store> store = OpenStore(HostConfig(8));
  ASSERT_TRUE(store);
  Engine e;
  e.Open(store.get());
  ASSERT_TRUE(e.Save(7, 2).ok());  // the "system prompt"
  Result<uint32_t> pinned = store->PinPrefix(e.ns, Prompt(7, 2 * kChunkTokens));
  ASSERT_TRUE(pinned.ok());
  EXPECT_EQ(*pinned, 2u);
  EXPECT_EQ(store->Stats().pinned_chunks, 2u);
  for (uint32_t p = 0; p < 20; ++p) ASSERT_TRUE(e.Save(100 + p, 2).ok());
  EXPECT_GT(store->Stats().evictions, 0u);
  EXPECT_EQ(e.Lookup(7, 2).matched_chunks, 2u);
  EXPECT_EQ(e.Load(7, 2), 2u);
  ASSERT_TRUE(store->UnpinPrefix(e.ns, Prompt(7, 2 * kChunkTokens)).ok());
  EXPECT_EQ(store->Stats().pinned_chunks, 0u);
  for (uint32_t p = 0; p < 20; ++p) ASSERT_TRUE(e.Save(200 + p, 2).ok());
  EXPECT_EQ(e.Lookup(7, 2).matched_chunks, 0u);
}

TEST(Placement, MinTokensAdmission) {
  StoreConfig c = HostConfig(16);
  c.admission.min_tokens = 2 * kChunkTokens;
  std::unique_ptr<Store> store = OpenStore(c);
  ASSERT_TRUE(store);
  Engine e;
  e.Open(store.get());
  uint32_t done = 99;
  Status s = e.Save(1, 1, &done);
  EXPECT_EQ(s.code(), Status::Code::kCancelled) << s.ToString();
  EXPECT_NE(s.ToString().find("min_tokens"), std::string::npos) << s.ToString();
  EXPECT_EQ(done, 0u);
  EXPECT_EQ(e.Lookup(1, 1).matched_chunks, 0u);
  EXPECT_TRUE(e.Save(2, 2).ok());
  EXPECT_EQ(e.Lookup(2, 2).matched_chunks, 2u);
  EXPECT_EQ(store->Stats().admission_rejected_chunks, 1u);
}

class NvmePlacement : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    if (OnTmpfs(dir_.path())) GTEST_SKIP() << dir_.path() << " is tmpfs (no O_DIRECT); set KVTIER_TEST_DIR";
  }
  TempDir dir_;
};

TEST_F(NvmePlacement, SecondHitAdmissionKeepsOneOffChunksOffNvme) {
  StoreConfig c = NvmeConfig(dir_.path(), 32, WritePolicy::kWriteThrough);
  c.admission.nvme_second_hit = true;
  std::unique_ptr<Store> store = OpenStore(c);
  ASSERT_TRUE(store);
  Engine e;
  e.Open(store.get());
  // Never asked for: saved in host, kept off NVMe, and the save still succeeds.
  uint32_t done = 0;
  EXPECT_TRUE(e.Save(1, 2, &done).ok());
  EXPECT_EQ(done, 2u);
  EXPECT_EQ(store->Stats().nvme_chunks, 0u);
  EXPECT_EQ(store->Stats().admission_rejected_chunks, 2u);
  // Asked for twice (a prompt that recurs): admitted.
  (void)e.Lookup(2, 2);
  (void)e.Lookup(2, 2);
  EXPECT_TRUE(e.Save(2, 2, &done).ok());
  EXPECT_EQ(store->Stats().nvme_chunks, 2u);
}

// ---- prefetch ----------------------------------------------------------------------------------

// A prompt held only on NVMe: a lookup with prefetch brings it into host in the
// background, and the load that follows copies from host without reading NVMe.
TEST_F(NvmePlacement, PrefetchBringsChunksUpBeforeTheLoad) {
  std::unique_ptr<Store> store = OpenStore(NvmeConfig(dir_.path(), 8, WritePolicy::kWriteBack));
  ASSERT_TRUE(store);
  Engine e;
  e.Open(store.get());
  ASSERT_TRUE(e.Save(1, 4).ok());
  for (uint32_t p = 0; p < 6; ++p) ASSERT_TRUE(e.Save(100 + p, 2).ok());  // pushes prompt 1 down to NVMe
  const StoreStats s0 = store->Stats();
  LookupResult before = e.Lookup(1, 4);
  ASSERT_EQ(before.matched_chunks, 4u);
  for (TierId t : before.chunk_tiers) EXPECT_EQ(t, TierId::kNvme);
  // Lookup hits are counted by the tier that holds them.
  EXPECT_EQ(store->Stats().nvme_hit_chunks - s0.nvme_hit_chunks, 4u);
  EXPECT_EQ(store->Stats().host_hit_chunks, s0.host_hit_chunks);
  LookupOptions o;
  o.prefetch = true;
  LookupResult r = e.Lookup(1, 4, o);
  ASSERT_NE(r.prefetch_id, 0u);
  const auto until = std::chrono::steady_clock::now() + kTimeout;
  while (store->Stats().prefetched_chunks < 4 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_EQ(store->Stats().prefetched_chunks, 4u);
  LookupResult after = e.Lookup(1, 4);
  for (TierId t : after.chunk_tiers) EXPECT_EQ(t, TierId::kHost);
  EXPECT_EQ(store->Stats().host_hit_chunks - s0.host_hit_chunks, 4u);
  const uint64_t promotions = store->Stats().promotions;
  EXPECT_EQ(e.Load(1, 4), 4u);
  EXPECT_EQ(store->Stats().promotions, promotions) << "the load read NVMe again";
  // Finished: nothing to cancel. A lookup whose chunks are all in host starts none.
  while (store->CancelPrefetch(r.prefetch_id).ok()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(e.Lookup(1, 4, o).prefetch_id, 0u);
}

// A load that arrives while its prefetch is still reading waits for what has not arrived
// instead of reading it again; a cancelled or expired prefetch stops early.
TEST_F(NvmePlacement, LoadDuringPrefetchAndCancellation) {
  FaultInjectionEnv env(Env::Default());
  StoreConfig c = NvmeConfig(dir_.path(), 16, WritePolicy::kWriteBack);
  c.env = &env;
  std::unique_ptr<Store> store = OpenStore(c);
  ASSERT_TRUE(store);
  Engine e;
  e.Open(store.get());
  ASSERT_TRUE(e.Save(1, 6).ok());
  ASSERT_TRUE(e.Save(2, 6).ok());
  ASSERT_TRUE(e.Save(3, 2).ok());
  ASSERT_TRUE(e.Save(4, 2).ok());
  for (uint32_t p = 0; p < 8; ++p) ASSERT_TRUE(e.Save(100 + p, 2).ok());
  for (uint32_t p : {1u, 2u}) ASSERT_EQ(e.Lookup(p, 6).chunk_tiers[0], TierId::kNvme) << p;
  for (uint32_t p : {3u, 4u}) ASSERT_EQ(e.Lookup(p, 2).chunk_tiers[0], TierId::kNvme) << p;
  FaultSpec slow;
  slow.latency_us = 20000;  // 20 ms per I/O
  env.SetFaults(slow);
  LookupOptions o;
  o.prefetch = true;
  LookupResult r = e.Lookup(1, 6, o);
  ASSERT_NE(r.prefetch_id, 0u);
  EXPECT_EQ(e.Load(1, 6), 6u);  // joins the prefetch; bit-exact either way
  while (store->CancelPrefetch(r.prefetch_id).ok()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const StoreStats s1 = store->Stats();
  EXPECT_EQ(s1.promotions, 6u) << "a chunk was read from NVMe twice";
  // Both workers busy with slow loads: the prefetch queues behind them, is cancelled before
  // it runs, and reads nothing.
  Result<Ticket> l3 = store->Load(e.ns, Prompt(3, 2 * kChunkTokens), Blocks(kDst, 2 * kBpc));
  Result<Ticket> l4 = store->Load(e.ns, Prompt(4, 2 * kChunkTokens), Blocks(kDst + 32, 2 * kBpc));
  ASSERT_TRUE(l3.ok() && l4.ok());
  LookupResult r2 = e.Lookup(2, 6, o);
  ASSERT_NE(r2.prefetch_id, 0u);
  EXPECT_TRUE(store->CancelPrefetch(r2.prefetch_id).ok());
  EXPECT_TRUE(l3->Wait(kTimeout).ok());
  EXPECT_TRUE(l4->Wait(kTimeout).ok());
  while (store->CancelPrefetch(r2.prefetch_id).ok()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  env.SetFaults(FaultSpec{});
  EXPECT_EQ(store->Stats().prefetched_chunks, s1.prefetched_chunks);
  EXPECT_EQ(e.Lookup(2, 6).chunk_tiers[0], TierId::kNvme);
  EXPECT_EQ(e.Load(2, 6), 6u);
}

// ---- planner -----------------------------------------------------------------------------------

// NVMe throttled far below the prefill rate: lookups stop reporting NVMe chunks, keep the
// host ones, and the modeled load never takes longer than recomputing.
TEST_F(NvmePlacement, PlannerSkipsChunksSlowerThanRecompute) {
  FaultInjectionEnv env(Env::Default());
  StoreConfig c = NvmeConfig(dir_.path(), 6, WritePolicy::kWriteBack);
  c.env = &env;
  std::unique_ptr<Store> store = OpenStore(c);
  ASSERT_TRUE(store);
  Engine e;
  e.Open(store.get());
  ASSERT_TRUE(e.Save(1, 4).ok());
  ASSERT_TRUE(e.Save(2, 2).ok());  // evicts prompt 1's last two chunks (its LRU leaves) to NVMe
  ASSERT_TRUE(e.Save(3, 2).ok());  // (and prompt 2: a third prompt to teach the planner NVMe's speed)
  for (uint32_t p = 0; p < 4; ++p) ASSERT_TRUE(e.Save(100 + p, 1).ok());
  (void)e.Load(1, 2);  // prompt 1's head back in host
  LookupResult plain = e.Lookup(1, 4);
  ASSERT_EQ(plain.matched_chunks, 4u);
  ASSERT_EQ(plain.chunk_tiers[0], TierId::kHost);
  ASSERT_EQ(plain.chunk_tiers[1], TierId::kHost);
  ASSERT_EQ(plain.chunk_tiers[2], TierId::kNvme);
  EXPECT_EQ(plain.expected_saving_seconds, 0.0);  // no prefill rate yet: no planning

  FaultSpec slow;
  slow.latency_us = 30000;  // 30 ms per NVMe I/O
  env.SetFaults(slow);
  ASSERT_EQ(e.Lookup(2, 2).chunk_tiers[0], TierId::kNvme);
  EXPECT_EQ(e.Load(2, 2), 2u);  // measured: NVMe is slow now
  // 16 tokens in 2 ms: a host copy of a chunk (tens of KiB) is far quicker, a 30 ms read is not.
  ASSERT_TRUE(store->SetPrefillRate(e.ns, kChunkTokens / 0.002).ok());
  LookupResult planned = e.Lookup(1, 4);
  EXPECT_EQ(planned.cached_chunks, 4u);
  EXPECT_EQ(planned.matched_chunks, 2u);
  EXPECT_EQ(planned.matched_tokens, 2u * kChunkTokens);
  EXPECT_GT(planned.expected_saving_seconds, 0.0);
  EXPECT_LE(planned.expected_load_seconds, planned.expected_recompute_seconds);
  EXPECT_GE(store->Stats().planner_skipped_chunks, 2u);
  // Never worse than recomputing, whatever is cached.
  for (uint32_t p : {1u, 2u, 3u, 100u, 555u}) {
    LookupResult r = e.Lookup(p, 4);
    EXPECT_LE(r.expected_load_seconds, r.expected_recompute_seconds + 1e-12) << p;
    EXPECT_GE(r.expected_saving_seconds, 0.0) << p;
  }
  // Off: every cached chunk is reported again.
  ASSERT_TRUE(store->SetPrefillRate(e.ns, 0).ok());
  EXPECT_EQ(e.Lookup(1, 4).matched_chunks, 4u);
  env.SetFaults(FaultSpec{});
  // Reported prefills are averaged into the rate.
  ASSERT_TRUE(store->ReportPrefill(e.ns, 1600, 0.2).ok());
  EXPECT_FALSE(store->ReportPrefill(e.ns, 0, 1).ok());
}

}  // namespace
}  // namespace kvtier
