// The Store's GPU path (store/gpu.h) and the HBM tier (tiers/gpu/hbm_tier.h).
//
// HbmTier's bookkeeping and the refusals of GPU KV memory without a device run
// everywhere. The rest needs a CUDA device and skips, saying why, without one: saves
// gathered from device memory and loads scattered into it, checked byte for byte
// against the CPU path (the same chunks loaded into host memory), HBM hits, per-layer
// CUDA events, an engine event the copies wait for, and GPU loads of chunks that went
// down to NVMe.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "index/chunk_key.h"
#include "kvtier/store.h"
#include "tests/temp_dir.h"
#include "tests/test_engine.h"
#include "tiers/chunk_format.h"
#include "tiers/gpu/hbm_tier.h"

#if KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

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
using test::KeysOf;
using test::Prompt;
using test::TestEngine;

ChunkKey Key(uint64_t i) {
  ChunkKey k;
  k.lo = i;
  k.hi = ~i;
  return k;
}

// ---- HbmTier: bookkeeping, no GPU needed ---------------------------------------------------

TEST(HbmTier, ReserveCommitAcquire) {
  std::vector<uint8_t> mem(4096);
  HbmTier t(mem.data(), mem.size(), 256);
  EXPECT_FALSE(t.Acquire(Key(1)).has_value());
  std::optional<uint8_t*> p = t.Reserve(Key(1), 1000);
  ASSERT_TRUE(p.has_value());
  EXPECT_GE(*p, mem.data());
  EXPECT_LE(*p + 1000, mem.data() + mem.size());
  EXPECT_FALSE(t.Acquire(Key(1)).has_value()) << "reserved entries are invisible until committed";
  EXPECT_FALSE(t.Reserve(Key(1), 1000).has_value()) << "one entry per key";
  t.Commit(Key(1));
  std::optional<uint8_t*> q = t.Acquire(Key(1));
  ASSERT_TRUE(q.has_value());
  EXPECT_EQ(*q, *p);
  t.Unpin(Key(1));
  HbmTierStats s = t.Stats();
  EXPECT_EQ(s.chunks, 1u);
  EXPECT_EQ(s.used_bytes, 1024u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 2u);
  EXPECT_TRUE(t.Erase(Key(1)));
  EXPECT_EQ(t.Stats().used_bytes, 0u);
}

TEST(HbmTier, EvictsLeastRecentlyUsedUnpinnedEntries) {
  std::vector<uint8_t> mem(4 * 1024);
  HbmTier t(mem.data(), mem.size(), 1024);
  for (uint64_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(t.Reserve(Key(i), 1024).has_value());
    t.Commit(Key(i));
  }
  // 0 is used again (most recent), 1 is pinned: a new entry takes 2's place.
  ASSERT_TRUE(t.Acquire(Key(0)).has_value());
  t.Unpin(Key(0));
  ASSERT_TRUE(t.Acquire(Key(1)).has_value());
  ASSERT_TRUE(t.Reserve(Key(9), 1024).has_value());
  t.Commit(Key(9));
  EXPECT_TRUE(t.Acquire(Key(0)).has_value());
  EXPECT_TRUE(t.Acquire(Key(1)).has_value());
  EXPECT_FALSE(t.Acquire(Key(2)).has_value());
  EXPECT_TRUE(t.Acquire(Key(3)).has_value());
  EXPECT_TRUE(t.Acquire(Key(9)).has_value());
  EXPECT_EQ(t.Stats().evictions, 1u);
  // Everything pinned now: no room, nothing evicted, nothing lost.
  EXPECT_FALSE(t.Reserve(Key(10), 1024).has_value());
  EXPECT_FALSE(t.Erase(Key(3))) << "pinned entries stay";
  EXPECT_EQ(t.Stats().chunks, 4u);
}

TEST(HbmTier, AbortFreesAndOversizedIsRefused) {
  std::vector<uint8_t> mem(2048);
  HbmTier t(mem.data(), mem.size(), 256);
  EXPECT_FALSE(t.Reserve(Key(1), 4096).has_value());
  EXPECT_FALSE(t.Reserve(Key(1), 0).has_value());
  ASSERT_TRUE(t.Reserve(Key(1), 2048).has_value());
  t.Abort(Key(1));
  EXPECT_EQ(t.Stats().used_bytes, 0u);
  EXPECT_EQ(t.Stats().chunks, 0u);
  EXPECT_TRUE(t.Reserve(Key(2), 2048).has_value());
}

// ---- the Store ------------------------------------------------------------------------------

constexpr uint32_t kChunkTokens = 32;
constexpr uint32_t kBlockTokens = 8;
constexpr uint32_t kBpc = kChunkTokens / kBlockTokens;
constexpr uint32_t kLayers = 6;
constexpr uint32_t kBlocks = 96;
constexpr std::chrono::seconds kTimeout{60};

KvShape Shape() {
  KvShape s;
  s.num_layers = kLayers;
  s.num_kv_heads = 4;
  s.head_dim = 64;
  s.dtype = DType::kBFloat16;
  s.chunk_tokens = kChunkTokens;
  return s;
}

NamespaceSpec Spec() {
  NamespaceSpec n;
  n.model.name = "test/gpu";
  n.model.revision = "r1";
  n.shape = Shape();
  return n;
}

uint64_t SlotBytes() { return kChunkPayloadOffset + ChunkPayloadBytes(Shape()); }

StoreConfig Config(uint64_t host_chunks) {
  StoreConfig c;
  c.host_capacity_bytes = host_chunks * SlotBytes();
  c.huge_pages = HugePages::kOff;
  return c;
}

bool HaveDevice(std::string* why) {
#if KVTIER_WITH_CUDA
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    *why = std::string("no CUDA device: ") + cudaGetErrorString(err);
    return false;
  }
  if (n == 0) {
    *why = "no CUDA device";
    return false;
  }
  return true;
#else
  *why = "built without CUDA";
  return false;
#endif
}

TEST(StoreGpu, GpuMemoryIsRefusedWithoutADeviceOrWithABadOrdinal) {
  std::string why;
  const bool device = HaveDevice(&why);
  Result<std::unique_ptr<Store>> s = Store::Open(Config(8));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  TestEngine e(Shape(), kBlockTokens, kBlocks);  // host memory
  KvMemoryLayout lay = e.layout;
  lay.device = 0;
  Result<NamespaceHandle> h = (*s)->RegisterNamespace(Spec(), lay);
  ASSERT_FALSE(h.ok()) << "host memory registered as device memory";
  if (!device) {
    EXPECT_EQ(h.status().code(), Status::Code::kNotSupported) << h.status().ToString();
    EXPECT_FALSE((*s)->Stats().gpu_host_registered);
    EXPECT_FALSE((*s)->Stats().gpu.empty()) << "stats say why the GPU path is off";
  } else {
    EXPECT_EQ(h.status().code(), Status::Code::kInvalidArgument) << h.status().ToString();
  }
  lay.device = -2;
  h = (*s)->RegisterNamespace(Spec(), lay);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), Status::Code::kInvalidArgument);
  if (!device) {
    StoreConfig c = Config(8);
    c.gpu.hbm_capacity_bytes = 1 << 20;
    Result<std::unique_ptr<Store>> t = Store::Open(c);
    ASSERT_FALSE(t.ok()) << "an HBM tier without a device";
    EXPECT_EQ(t.status().code(), Status::Code::kNotSupported) << t.status().ToString();
    c = Config(8);
    c.gpu.register_host = HostRegistration::kRequire;
    EXPECT_EQ(Store::Open(c).status().code(), Status::Code::kNotSupported);
  }
}

#if KVTIER_WITH_CUDA

// TestEngine's layout and bytes, mirrored in device memory.
struct DeviceEngine {
  TestEngine host;
  std::vector<void*> layers;
  KvMemoryLayout layout;
  explicit DeviceEngine(uint32_t blocks) : host(Shape(), kBlockTokens, blocks) {
    layout = host.layout;
    layout.device = 0;
    for (uint32_t l = 0; l < kLayers; ++l) {
      void* p = nullptr;
      EXPECT_EQ(cudaMalloc(&p, host.layers[l].size()), cudaSuccess);
      layers.push_back(p);
      layout.layers[l].base = p;
    }
  }
  ~DeviceEngine() {
    for (void* p : layers) (void)cudaFree(p);
  }
  void Upload() {
    for (uint32_t l = 0; l < kLayers; ++l)
      ASSERT_EQ(cudaMemcpy(layers[l], host.layers[l].data(), host.layers[l].size(), cudaMemcpyHostToDevice),
                cudaSuccess);
  }
  void Download() {
    for (uint32_t l = 0; l < kLayers; ++l)
      ASSERT_EQ(cudaMemcpy(host.layers[l].data(), layers[l], host.layers[l].size(), cudaMemcpyDeviceToHost),
                cudaSuccess);
  }
};

class StoreGpuDevice : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!HaveDevice(&why)) GTEST_SKIP() << why;
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  }
};

TEST_F(StoreGpuDevice, SaveFromGpuLoadIntoGpuAndIntoHostMatch) {
  Result<std::unique_ptr<Store>> s = Store::Open(Config(32));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_TRUE((*s)->Stats().gpu_host_registered) << (*s)->Stats().gpu;
  DeviceEngine g(kBlocks);
  Result<NamespaceHandle> gh = (*s)->RegisterNamespace(Spec(), g.layout);
  ASSERT_TRUE(gh.ok()) << gh.status().ToString();
  TestEngine cpu(Shape(), kBlockTokens, kBlocks);  // the same model, host memory
  Result<NamespaceHandle> ch = (*s)->RegisterNamespace(Spec(), cpu.layout);
  ASSERT_TRUE(ch.ok());

  const std::vector<int32_t> tokens = Prompt(1, 5 * kChunkTokens + 7);
  const std::vector<ChunkKey> keys = KeysOf(Spec(), tokens);
  ASSERT_EQ(keys.size(), 5u);
  const std::vector<int32_t> src = Blocks(3, 5 * kBpc), dst = Blocks(40, 5 * kBpc);
  FillPrompt(g.host, keys, src);
  g.Upload();
  Result<Ticket> t = (*s)->Save(*gh, tokens, src);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(t->Wait(kTimeout).ok()) << t->status().ToString();
  EXPECT_EQ(t->chunks_done(), 5u);
  EXPECT_EQ((*s)->Stats().gpu_saved_chunks, 5u);

  // Into the GPU, other blocks.
  Result<Ticket> l = (*s)->Load(*gh, tokens, dst);
  ASSERT_TRUE(l.ok());
  ASSERT_TRUE(l->Wait(kTimeout).ok()) << l->status().ToString();
  EXPECT_EQ(l->chunks_done(), 5u);
  g.Download();
  EXPECT_TRUE(HoldsPrompt(g.host, keys, dst, 5)) << "GPU load differs from what was saved";
  // Into host memory through the CPU path: the same chunk format.
  Result<Ticket> c = (*s)->Load(*ch, tokens, dst);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c->Wait(kTimeout).ok());
  EXPECT_TRUE(HoldsPrompt(cpu, keys, dst, 5)) << "a chunk saved from the GPU reads differently on the CPU path";
  // And the other way: saved from host memory, loaded into the GPU.
  const std::vector<int32_t> t2 = Prompt(2, 3 * kChunkTokens);
  const std::vector<ChunkKey> k2 = KeysOf(Spec(), t2);
  FillPrompt(cpu, k2, Blocks(0, 3 * kBpc));
  Result<Ticket> cs = (*s)->Save(*ch, t2, Blocks(0, 3 * kBpc));
  ASSERT_TRUE(cs.ok() && cs->Wait(kTimeout).ok());
  Result<Ticket> gl = (*s)->Load(*gh, t2, Blocks(60, 3 * kBpc));
  ASSERT_TRUE(gl.ok() && gl->Wait(kTimeout).ok()) << gl->status().ToString();
  g.Download();
  EXPECT_TRUE(HoldsPrompt(g.host, k2, Blocks(60, 3 * kBpc), 3));
  EXPECT_EQ((*s)->Stats().gpu_loaded_chunks, 8u);
}

TEST_F(StoreGpuDevice, LayerEventsLetAStreamWaitWithoutTheHost) {
  Result<std::unique_ptr<Store>> s = Store::Open(Config(32));
  ASSERT_TRUE(s.ok());
  DeviceEngine g(kBlocks);
  Result<NamespaceHandle> h = (*s)->RegisterNamespace(Spec(), g.layout);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  const std::vector<int32_t> tokens = Prompt(3, 4 * kChunkTokens);
  const std::vector<ChunkKey> keys = KeysOf(Spec(), tokens);
  FillPrompt(g.host, keys, Blocks(0, 4 * kBpc));
  g.Upload();
  Result<Ticket> t = (*s)->Save(*h, tokens, Blocks(0, 4 * kBpc));
  ASSERT_TRUE(t.ok() && t->Wait(kTimeout).ok());

  cudaStream_t engine = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&engine, cudaStreamNonBlocking), cudaSuccess);
  const std::vector<int32_t> dst = Blocks(50, 4 * kBpc);
  Result<Ticket> l = (*s)->Load(*h, tokens, dst);
  ASSERT_TRUE(l.ok());
  // The engine's stream waits for each layer, then copies that layer out: what it copies
  // must be the loaded bytes, though the host never waited for the load.
  std::vector<std::vector<uint8_t>> seen(kLayers);
  for (uint32_t layer = 0; layer < kLayers; ++layer) {
    Result<Ticket::LayerEvent> ev = l->WaitLayerEnqueued(layer, kTimeout);
    ASSERT_TRUE(ev.ok()) << ev.status().ToString();
    EXPECT_EQ(ev->chunks, 4u);
    ASSERT_NE(ev->cuda_event, nullptr);
    ASSERT_EQ(cudaStreamWaitEvent(engine, static_cast<cudaEvent_t>(ev->cuda_event), 0), cudaSuccess);
    seen[layer].resize(g.host.layers[layer].size());
    ASSERT_EQ(cudaMemcpyAsync(seen[layer].data(), g.layers[layer], seen[layer].size(), cudaMemcpyDeviceToHost, engine),
              cudaSuccess);
  }
  ASSERT_EQ(cudaStreamSynchronize(engine), cudaSuccess);
  for (uint32_t layer = 0; layer < kLayers; ++layer) g.host.layers[layer] = seen[layer];
  EXPECT_TRUE(HoldsPrompt(g.host, keys, dst, 4));
  ASSERT_TRUE(l->Wait(kTimeout).ok());
  Result<uint32_t> w = l->WaitLayer(kLayers - 1, kTimeout);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(*w, 4u);
  (void)cudaStreamDestroy(engine);
}

TEST_F(StoreGpuDevice, SaveWaitsForTheEnginesEvent) {
  Result<std::unique_ptr<Store>> s = Store::Open(Config(32));
  ASSERT_TRUE(s.ok());
  DeviceEngine g(kBlocks);
  Result<NamespaceHandle> h = (*s)->RegisterNamespace(Spec(), g.layout);
  ASSERT_TRUE(h.ok());
  const std::vector<int32_t> tokens = Prompt(4, 2 * kChunkTokens);
  const std::vector<ChunkKey> keys = KeysOf(Spec(), tokens);
  const std::vector<int32_t> src = Blocks(0, 2 * kBpc);
  FillPrompt(g.host, keys, src);
  // The engine writes the KV on its stream behind a long copy; the save is submitted
  // before that has run and must see the final bytes.
  cudaStream_t engine = nullptr;
  cudaEvent_t written = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&engine, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&written, cudaEventDisableTiming), cudaSuccess);
  void* big_a = nullptr;
  void* big_b = nullptr;
  const size_t big = size_t{1} << 30;
  ASSERT_EQ(cudaMalloc(&big_a, big), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&big_b, big), cudaSuccess);
  std::vector<std::vector<uint8_t>> pinned(kLayers);
  for (uint32_t l = 0; l < kLayers; ++l) ASSERT_EQ(cudaMemsetAsync(g.layers[l], 0, g.host.layers[l].size(), engine),
                                                   cudaSuccess);
  for (int i = 0; i < 8; ++i) ASSERT_EQ(cudaMemcpyAsync(big_b, big_a, big, cudaMemcpyDeviceToDevice, engine), cudaSuccess);
  for (uint32_t l = 0; l < kLayers; ++l)
    ASSERT_EQ(cudaMemcpyAsync(g.layers[l], g.host.layers[l].data(), g.host.layers[l].size(), cudaMemcpyHostToDevice,
                              engine),
              cudaSuccess);
  ASSERT_EQ(cudaEventRecord(written, engine), cudaSuccess);
  CopyOptions o;
  o.cuda_wait_event = written;
  Result<Ticket> t = (*s)->Save(*h, tokens, src, {}, o);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(t->Wait(kTimeout).ok()) << t->status().ToString();
  // Load into host memory and compare with what the engine wrote last.
  TestEngine cpu(Shape(), kBlockTokens, kBlocks);
  Result<NamespaceHandle> ch = (*s)->RegisterNamespace(Spec(), cpu.layout);
  ASSERT_TRUE(ch.ok());
  Result<Ticket> l = (*s)->Load(*ch, tokens, Blocks(10, 2 * kBpc));
  ASSERT_TRUE(l.ok() && l->Wait(kTimeout).ok());
  EXPECT_TRUE(HoldsPrompt(cpu, keys, Blocks(10, 2 * kBpc), 2)) << "the save read the blocks before the engine's event";
  ASSERT_EQ(cudaStreamSynchronize(engine), cudaSuccess);
  (void)cudaFree(big_a);
  (void)cudaFree(big_b);
  (void)cudaEventDestroy(written);
  (void)cudaStreamDestroy(engine);
}

TEST_F(StoreGpuDevice, HbmTierServesHotChunksDeviceToDevice) {
  StoreConfig c = Config(32);
  c.gpu.hbm_capacity_bytes = 3 * ChunkPayloadBytes(Shape());  // room for three chunks
  Result<std::unique_ptr<Store>> s = Store::Open(c);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ((*s)->Stats().hbm_capacity_bytes, c.gpu.hbm_capacity_bytes);
  DeviceEngine g(kBlocks);
  Result<NamespaceHandle> h = (*s)->RegisterNamespace(Spec(), g.layout);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  const std::vector<int32_t> tokens = Prompt(5, 2 * kChunkTokens);
  const std::vector<ChunkKey> keys = KeysOf(Spec(), tokens);
  FillPrompt(g.host, keys, Blocks(0, 2 * kBpc));
  g.Upload();
  Result<Ticket> t = (*s)->Save(*h, tokens, Blocks(0, 2 * kBpc));
  ASSERT_TRUE(t.ok() && t->Wait(kTimeout).ok());
  EXPECT_EQ((*s)->Stats().hbm_chunks, 2u) << "a GPU save keeps copies in HBM";
  for (int round = 0; round < 2; ++round) {
    const std::vector<int32_t> dst = Blocks(20 + round * 2 * kBpc, 2 * kBpc);
    Result<Ticket> l = (*s)->Load(*h, tokens, dst);
    ASSERT_TRUE(l.ok() && l->Wait(kTimeout).ok()) << l->status().ToString();
    g.Download();
    EXPECT_TRUE(HoldsPrompt(g.host, keys, dst, 2)) << "round " << round;
  }
  EXPECT_EQ((*s)->Stats().hbm_hits, 4u);
  // A third chunk and a fourth: LRU eviction keeps the tier within capacity, and a load
  // of a chunk that left HBM comes from host and goes back in.
  const std::vector<int32_t> more = Prompt(6, 2 * kChunkTokens);
  const std::vector<ChunkKey> mk = KeysOf(Spec(), more);
  FillPrompt(g.host, mk, Blocks(60, 2 * kBpc));
  g.Upload();
  Result<Ticket> t2 = (*s)->Save(*h, more, Blocks(60, 2 * kBpc));
  ASSERT_TRUE(t2.ok() && t2->Wait(kTimeout).ok());
  StoreStats st = (*s)->Stats();
  EXPECT_EQ(st.hbm_chunks, 3u);
  EXPECT_GE(st.hbm_evictions, 1u);
  Result<Ticket> l = (*s)->Load(*h, tokens, Blocks(80, 2 * kBpc));
  ASSERT_TRUE(l.ok() && l->Wait(kTimeout).ok());
  g.Download();
  EXPECT_TRUE(HoldsPrompt(g.host, keys, Blocks(80, 2 * kBpc), 2));
  EXPECT_LE((*s)->Stats().hbm_used_bytes, c.gpu.hbm_capacity_bytes);
}

TEST_F(StoreGpuDevice, LoadsChunksThatWentDownToNvme) {
  test::TempDir dir;
  StoreConfig c = Config(3);  // host holds 3 chunks; the rest are demoted
  c.nvme.enabled = true;
  c.nvme.paths = {dir.path() + "/data"};
  c.nvme.capacity_bytes = 64 * SlotBytes();
  c.nvme.buffered = true;  // whatever the device machine's /tmp is
  Result<std::unique_ptr<Store>> s = Store::Open(c);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  DeviceEngine g(kBlocks);
  Result<NamespaceHandle> h = (*s)->RegisterNamespace(Spec(), g.layout);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  const std::vector<int32_t> a = Prompt(7, 3 * kChunkTokens), b = Prompt(8, 3 * kChunkTokens);
  const std::vector<ChunkKey> ka = KeysOf(Spec(), a), kb = KeysOf(Spec(), b);
  FillPrompt(g.host, ka, Blocks(0, 3 * kBpc));
  FillPrompt(g.host, kb, Blocks(12, 3 * kBpc));
  g.Upload();
  for (auto [tok, first] : {std::pair{&a, 0u}, std::pair{&b, 12u}}) {
    Result<Ticket> t = (*s)->Save(*h, *tok, Blocks(first, 3 * kBpc));
    ASSERT_TRUE(t.ok() && t->Wait(kTimeout).ok()) << t->status().ToString();
  }
  EXPECT_GE((*s)->Stats().demotions, 3u);
  Result<Ticket> l = (*s)->Load(*h, a, Blocks(40, 3 * kBpc));
  ASSERT_TRUE(l.ok() && l->Wait(kTimeout).ok()) << l->status().ToString();
  g.Download();
  EXPECT_TRUE(HoldsPrompt(g.host, ka, Blocks(40, 3 * kBpc), 3));
  EXPECT_GE((*s)->Stats().promotions, 3u);
}

#endif  // KVTIER_WITH_CUDA

}  // namespace
}  // namespace kvtier
