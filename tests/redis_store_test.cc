// End-to-end tests of the Store with its Redis tier: real redis-server processes (and a
// real Redis Cluster) on loopback ports, started and stopped by the tests
// (tests/redis_harness.h), a real host tier and Mover.
//
// Every chunk's bytes derive from its key (tests/test_engine.h) and every load checks
// each byte of the prefix it reports and, where chunks are read whole, that it left the
// rest of the destination alone (a chunk read in pieces may be copied in before a failed
// check: ChunksReadInPiecesLandLayerByLayer):
// whatever Redis does — lose a chunk, hang, die, fail over, hold corrupt bytes — the
// engine sees hits or misses, never an error from Redis and never wrong bytes.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "index/chunk_key.h"
#include "kvtier/store.h"
#include "tests/redis_harness.h"
#include "tests/temp_dir.h"
#include "tests/test_engine.h"
#include "tiers/redis/redis_tier.h"

extern char** environ;

namespace kvtier {
namespace {

using test::Blocks;
using test::FillPrompt;
using test::HoldsPrompt;
using test::KeysOf;
using test::Prompt;
using test::RedisClusterHarness;
using test::RedisServer;
using test::TempDir;
using test::TestEngine;

constexpr uint32_t kChunkTokens = 16;
constexpr uint32_t kBlockTokens = 4;
constexpr uint32_t kBpc = kChunkTokens / kBlockTokens;
constexpr uint64_t kPayloadBytes = 2 * 2 * kChunkTokens * 2 * 32 * 2;
constexpr uint64_t kChunkBytes = kChunkPayloadOffset + kPayloadBytes;  // a host slot
constexpr uint32_t kMaxChunks = 8;                                     // per prompt
constexpr uint32_t kEngineBlocks = 4 * kMaxChunks * kBpc;              // two threads x (src, dst)
constexpr std::chrono::seconds kTicketTimeout{60};
constexpr const char* kWriterEnv = "KVTIER_REDIS_SHARE_WRITER";

KvShape Shape() {
  KvShape s;
  s.num_layers = 2;
  s.num_kv_heads = 2;
  s.head_dim = 32;
  s.dtype = DType::kFloat16;
  s.chunk_tokens = kChunkTokens;
  return s;
}

NamespaceSpec Spec(const std::string& revision = "r1") {
  NamespaceSpec n;
  n.model.name = "test/redis-llama";
  n.model.revision = revision;
  n.shape = Shape();
  return n;
}

// A store whose host tier holds `host_chunks` chunks, with Redis at `addresses`.
StoreConfig RedisStoreConfig(std::vector<std::string> addresses, uint64_t host_chunks, bool cluster = false) {
  StoreConfig c;
  c.host_capacity_bytes = host_chunks * kChunkBytes;
  c.huge_pages = HugePages::kOff;
  c.worker_threads = 2;
  c.redis.enabled = true;
  c.redis.cluster = cluster;
  c.redis.addresses = std::move(addresses);
  c.redis.connect_timeout_ms = 200;
  c.redis.op_timeout_ms = 400;
  c.redis.lookup_timeout_ms = 200;
  c.redis.key_prefix = "kvt-test";
  return c;
}

// How long a call may take past its Redis deadline (scheduling, sanitizers).
constexpr std::chrono::milliseconds kSlack{2500};

struct Outcome {
  Status status;
  uint32_t chunks = 0;
  bool exact = true;
  std::chrono::milliseconds took{0};
};

// One engine's KV memory and its registration; `lane` picks its blocks so that two
// threads can share one engine.
struct Client {
  Store* store = nullptr;
  NamespaceHandle ns;
  NamespaceSpec spec = Spec();
  TestEngine engine{Shape(), kBlockTokens, kEngineBlocks};

  Status Register(Store* s, const NamespaceSpec& sp = Spec()) {
    store = s;
    spec = sp;
    Result<NamespaceHandle> h = s->RegisterNamespace(spec, engine.layout);
    if (!h.ok()) return h.status();
    ns = *h;
    return Status::OK();
  }
  static uint32_t Src(uint32_t lane) { return lane * 2 * kMaxChunks * kBpc; }
  static uint32_t Dst(uint32_t lane) { return Src(lane) + kMaxChunks * kBpc; }

  Outcome Wait(Result<Ticket>& t, std::chrono::steady_clock::time_point start) {
    Outcome o;
    if (!t.ok()) {
      o.status = t.status();
      return o;
    }
    Status w = t->Wait(kTicketTimeout);
    EXPECT_TRUE(t->done()) << "ticket hung: " << w.ToString();
    o.status = t->status();
    o.chunks = t->chunks_done();
    o.took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    return o;
  }

  Outcome Save(uint32_t id, uint32_t chunks, uint32_t lane = 0) {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int32_t> tokens = Prompt(id, chunks * kChunkTokens);
    const std::vector<int32_t> src = Blocks(Src(lane), chunks * kBpc);
    FillPrompt(engine, KeysOf(spec, tokens), src);
    Result<Ticket> t = store->Save(ns, tokens, src);
    return Wait(t, start);
  }

  // Loads into zeroed blocks; checks the reported prefix byte for byte and that the rest
  // is still zero.
  Outcome Load(uint32_t id, uint32_t chunks, uint32_t lane = 0) {
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int32_t> tokens = Prompt(id, chunks * kChunkTokens);
    const std::vector<ChunkKey> keys = KeysOf(spec, tokens);
    const std::vector<int32_t> dst = Blocks(Dst(lane), chunks * kBpc);
    for (int32_t b : dst) engine.Zero(static_cast<uint32_t>(b));
    Result<Ticket> t = store->Load(ns, tokens, dst);
    Outcome o = Wait(t, start);
    EXPECT_LE(o.chunks, chunks);
    o.exact = HoldsPrompt(engine, keys, dst, std::min(o.chunks, chunks));
    for (size_t b = size_t{o.chunks} * kBpc; b < dst.size(); ++b)
      if (!engine.IsZero(static_cast<uint32_t>(dst[b]))) o.exact = false;
    EXPECT_TRUE(o.exact) << "prompt " << id << ": wrong bytes after a load that reported " << o.chunks << " of "
                         << chunks << " chunks (" << o.status.ToString() << ")";
    return o;
  }

  LookupResult Lookup(uint32_t id, uint32_t chunks, std::chrono::milliseconds* took = nullptr) {
    const auto start = std::chrono::steady_clock::now();
    Result<LookupResult> r = store->Lookup(ns, Prompt(id, chunks * kChunkTokens));
    if (took)
      *took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : LookupResult{};
  }
};

#define OPEN_OR_FAIL(var, config, client)                                       \
  std::unique_ptr<Store> var;                                                   \
  {                                                                             \
    Result<std::unique_ptr<Store>> opened_ = Store::Open(config);               \
    ASSERT_TRUE(opened_.ok()) << opened_.status().ToString();                   \
    var = std::move(*opened_);                                                  \
    ASSERT_TRUE((client)->Register(var.get()).ok());                            \
  }

class RedisStore : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string m = test::RedisServerMissing(); !m.empty()) GTEST_SKIP() << m;
    ASSERT_TRUE(dir_.ok());
  }
  const std::string& dir() const { return dir_.path(); }
  TempDir dir_;
};

// Evicted from a small host tier, chunks come back from Redis bit-exact.
TEST_F(RedisStore, HostEvictionLeavesChunksLoadableFromRedis) {
  RedisServer server;
  ASSERT_TRUE(server.Start(dir()));
  Client c;
  OPEN_OR_FAIL(store, RedisStoreConfig({server.addr()}, 8), &c);
  constexpr uint32_t kPrompts = 12;
  for (uint32_t p = 0; p < kPrompts; ++p) {
    Outcome o = c.Save(100 + p, 1 + p % 4);
    ASSERT_TRUE(o.status.ok()) << o.status.ToString();
  }
  StoreStats st = store->Stats();
  EXPECT_GT(st.evictions, 0u);
  EXPECT_EQ(st.redis_saved_chunks, st.saved_chunks);
  // The first prompts were evicted from host: a lookup names Redis, a load brings them back.
  LookupResult lr = c.Lookup(100, 1);
  ASSERT_EQ(lr.matched_chunks, 1u);
  EXPECT_EQ(lr.chunk_tiers[0], TierId::kRedis);
  for (uint32_t p = 0; p < kPrompts; ++p) {
    Outcome o = c.Load(100 + p, 1 + p % 4);
    EXPECT_TRUE(o.status.ok()) << p << ": " << o.status.ToString();
  }
  st = store->Stats();
  EXPECT_GT(st.redis_loaded_chunks, 0u);
  EXPECT_GT(st.promotions, 0u);
  EXPECT_EQ(st.redis_breaker, "closed");
}

// redis.capacity_bytes bounds what this Store keeps in Redis: its least recently used
// Redis leaves are deleted.
TEST_F(RedisStore, CapacityEvictsLeastRecentlyUsed) {
  RedisServer server;
  ASSERT_TRUE(server.Start(dir()));
  Client c;
  StoreConfig config = RedisStoreConfig({server.addr()}, 64);
  config.redis.capacity_bytes = 6 * (kChunkHeaderBytes + kPayloadBytes);
  OPEN_OR_FAIL(store, config, &c);
  for (uint32_t p = 0; p < 10; ++p) ASSERT_TRUE(c.Save(500 + p, 1).status.ok());
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.redis_saved_chunks, 10u);
  EXPECT_EQ(st.redis_evictions, 4u);
  EXPECT_LE(st.redis_used_bytes, config.redis.capacity_bytes);
  EXPECT_EQ(server.Cli({"DBSIZE"}), "6");
  // A chunk bigger than the whole capacity is not written.
  StoreConfig tiny = config;
  tiny.redis.capacity_bytes = kPayloadBytes / 2;
  tiny.redis.key_prefix = "kvt-tiny";
  Client t;
  OPEN_OR_FAIL(store2, tiny, &t);
  ASSERT_TRUE(t.Save(600, 1).status.ok());
  EXPECT_EQ(store2->Stats().redis_dropped_saves, 1u);
}

// Bytes changed in Redis: the chunk is a miss (the rest of the prompt with it), the key is
// deleted, nothing wrong reaches the engine.
TEST_F(RedisStore, CorruptValueIsAMiss) {
  RedisServer server;
  ASSERT_TRUE(server.Start(dir()));
  Client c;
  OPEN_OR_FAIL(store, RedisStoreConfig({server.addr()}, 4), &c);
  ASSERT_TRUE(c.Save(7, 3).status.ok());
  for (uint32_t p = 0; p < 6; ++p) ASSERT_TRUE(c.Save(200 + p, 1).status.ok());  // pushes prompt 7 out of host
  const std::vector<ChunkKey> keys = KeysOf(Spec(), Prompt(7, 3 * kChunkTokens));
  RedisTierOptions ro;
  ro.seeds = {server.addr()};
  ro.key_prefix = "kvt-test";
  Result<std::unique_ptr<RedisTier>> tier = RedisTier::Open(ro);
  ASSERT_TRUE(tier.ok()) << tier.status().ToString();
  const std::string key1 = (*tier)->KeyFor(ComputeNamespaceId(Spec()), keys[1]);
  ASSERT_EQ(server.Cli({"EXISTS", key1}), "1");
  ASSERT_EQ(server.Cli({"SETRANGE", key1, "5000", "garbage"}), std::to_string(kChunkHeaderBytes + kPayloadBytes));
  Outcome o = c.Load(7, 3);
  EXPECT_FALSE(o.status.ok());
  EXPECT_EQ(o.chunks, 1u) << o.status.ToString();
  EXPECT_EQ(server.Cli({"EXISTS", key1}), "0");
  const StoreStats st = store->Stats();
  EXPECT_EQ(st.redis_corrupt_chunks, 1u);
  EXPECT_GE(st.redis_misses, 1u);
  // The index forgot it: the next lookup stops before it.
  EXPECT_EQ(c.Lookup(7, 3).matched_chunks, 1u);
}

// A chunk large enough to be read from Redis in pieces is copied into the engine layer by
// layer as its bytes arrive, before it is verified. Loads are bit-exact; a load that finds
// one such chunk corrupt stops before it: the chunks before it are exact, it is not
// counted (its blocks hold what arrived, which the engine recomputes), and it is a miss
// from then on.
TEST_F(RedisStore, ChunksReadInPiecesLandLayerByLayer) {
  RedisServer server;
  ASSERT_TRUE(server.Start(dir()));
  NamespaceSpec spec;
  spec.model.name = "test/redis-pieces";
  spec.model.revision = "r1";
  spec.shape.num_layers = 6;
  spec.shape.num_kv_heads = 4;
  spec.shape.head_dim = 64;
  spec.shape.dtype = DType::kFloat16;
  spec.shape.chunk_tokens = 64;  // 64 KiB a layer, 384 KiB a chunk
  constexpr uint32_t kChunks = 4, kBlockTok = 16, kChunkBlocks = 64 / kBlockTok;
  const uint64_t payload = ChunkPayloadBytes(spec.shape);
  TestEngine engine(spec.shape, kBlockTok, 2 * kChunks * kChunkBlocks);
  StoreConfig config = RedisStoreConfig({server.addr()}, 0);
  config.host_capacity_bytes = kChunks * (kChunkPayloadOffset + payload);  // one prompt
  config.redis.get_piece_bytes = 64 << 10;  // 7 pieces a chunk; every layer but the last ends mid-piece
  Result<std::unique_ptr<Store>> store = Store::Open(config);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  Result<NamespaceHandle> ns = (*store)->RegisterNamespace(spec, engine.layout);
  ASSERT_TRUE(ns.ok()) << ns.status().ToString();
  const std::vector<int32_t> src = Blocks(0, kChunks * kChunkBlocks), dst = Blocks(kChunks * kChunkBlocks, kChunks * kChunkBlocks);
  auto save = [&](uint32_t id) {
    const std::vector<int32_t> tokens = Prompt(id, kChunks * spec.shape.chunk_tokens);
    FillPrompt(engine, KeysOf(spec, tokens), src);
    Result<Ticket> t = (*store)->Save(*ns, tokens, src);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    ASSERT_TRUE(t->Wait(kTicketTimeout).ok()) << t->status().ToString();
  };
  auto load = [&](uint32_t id) {
    for (int32_t b : dst) engine.Zero(static_cast<uint32_t>(b));
    Result<Ticket> t = (*store)->Load(*ns, Prompt(id, kChunks * spec.shape.chunk_tokens), dst);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    if (!t.ok()) return std::pair<Status, uint32_t>(t.status(), 0);
    (void)t->Wait(kTicketTimeout);  // the load's own status is returned
    EXPECT_TRUE(t->done());
    return std::pair<Status, uint32_t>(t->status(), t->chunks_done());
  };
  const std::vector<int32_t> tokens = Prompt(1, kChunks * spec.shape.chunk_tokens);
  const std::vector<ChunkKey> keys = KeysOf(spec, tokens);
  save(1);
  save(2);  // pushes prompt 1 out of host: it is in Redis only
  Result<LookupResult> lr = (*store)->Lookup(*ns, tokens);
  ASSERT_TRUE(lr.ok() && lr->matched_chunks == kChunks);
  ASSERT_EQ(lr->chunk_tiers[0], TierId::kRedis);
  auto [st, done] = load(1);
  EXPECT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(done, kChunks);
  EXPECT_TRUE(HoldsPrompt(engine, keys, dst, kChunks));

  save(3);  // prompt 1 out of host again; then one byte of chunk 2's last layer changes in Redis
  RedisTierOptions ro;
  ro.seeds = {server.addr()};
  ro.key_prefix = config.redis.key_prefix;
  Result<std::unique_ptr<RedisTier>> tier = RedisTier::Open(ro);
  ASSERT_TRUE(tier.ok()) << tier.status().ToString();
  const std::string key2 = (*tier)->KeyFor(ComputeNamespaceId(spec), keys[2]);
  ASSERT_EQ((*store)->Lookup(*ns, tokens)->chunk_tiers[2], TierId::kRedis);
  ASSERT_EQ(server.Cli({"SETRANGE", key2, std::to_string(kChunkHeaderBytes + payload - 100), "Z"}),
            std::to_string(kChunkHeaderBytes + payload));
  const uint64_t corrupt_before = (*store)->Stats().redis_corrupt_chunks;
  std::tie(st, done) = load(1);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(done, 2u) << st.ToString();
  EXPECT_TRUE(HoldsPrompt(engine, keys, dst, 2));
  // Chunk 2's first layers were copied as they arrived, before the checksum failed: the
  // early path ran (its first block's layer 0 holds its bytes; the ticket does not count it).
  const uint8_t* first = engine.Part(0, 0, static_cast<uint32_t>(dst[2 * kChunkBlocks]));
  uint64_t differ = 0;
  for (uint64_t i = 0; i < engine.block_bytes; ++i) differ += first[i] != TestEngine::Expected(keys[2].lo, 0, 0, i);
  EXPECT_EQ(differ, 0u);
  EXPECT_EQ((*store)->Stats().redis_corrupt_chunks, corrupt_before + 1);
  EXPECT_EQ(server.Cli({"EXISTS", key2}), "0");
  EXPECT_EQ((*store)->Lookup(*ns, tokens)->matched_chunks, 2u);
}

// Two Stores in two processes, no shared index: one saves, the other finds and loads the
// chunks through Redis. Another model revision finds nothing.
TEST_F(RedisStore, TwoProcessesShareChunks) {
  if (const char* addr = std::getenv(kWriterEnv)) {
    // The writer: save prompts 1..10 and exit.
    Client c;
    Result<std::unique_ptr<Store>> s = Store::Open(RedisStoreConfig({addr}, 64));
    if (!s.ok() || !c.Register(s->get()).ok()) _exit(2);
    for (uint32_t p = 1; p <= 10; ++p)
      if (!c.Save(p, 1 + p % kMaxChunks).status.ok()) _exit(3);
    if ((*s)->Stats().redis_saved_chunks == 0) _exit(4);
    (void)(*s)->Close();
    _exit(0);
  }
  RedisServer server;
  ASSERT_TRUE(server.Start(dir()));
  Client c;
  OPEN_OR_FAIL(store, RedisStoreConfig({server.addr()}, 64), &c);
  EXPECT_EQ(c.Lookup(1, 2).matched_chunks, 0u);  // nothing yet

  std::string exe(4096, '\0');
  const ssize_t n = readlink("/proc/self/exe", exe.data(), exe.size());
  ASSERT_GT(n, 0);
  exe.resize(static_cast<size_t>(n));
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e)
    if (std::strncmp(*e, "GTEST_", 6) != 0) env_strings.push_back(*e);
  env_strings.push_back(std::string(kWriterEnv) + "=" + server.addr());
  std::vector<char*> envp;
  for (std::string& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string a0 = exe, a1 = "--gtest_filter=RedisStore.TwoProcessesShareChunks";
  std::vector<char*> argv = {a0.data(), a1.data(), nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), envp.data()), 0);
  int wst = 0;
  ASSERT_EQ(waitpid(pid, &wst, 0), pid);
  ASSERT_TRUE(WIFEXITED(wst) && WEXITSTATUS(wst) == 0) << "writer process failed: status " << wst;

  for (uint32_t p = 1; p <= 10; ++p) {
    const uint32_t chunks = 1 + p % kMaxChunks;
    LookupResult lr = c.Lookup(p, chunks);
    EXPECT_EQ(lr.matched_chunks, chunks) << p;
    for (TierId t : lr.chunk_tiers) EXPECT_EQ(t, TierId::kRedis);
    Outcome o = c.Load(p, chunks);
    EXPECT_TRUE(o.status.ok()) << p << ": " << o.status.ToString();
    EXPECT_EQ(o.chunks, chunks);
  }
  EXPECT_GT(store->Stats().redis_probe_hits, 0u);
  // A second load is served from host now.
  EXPECT_EQ(c.Lookup(3, 4).chunk_tiers[0], TierId::kHost);

  // Another revision of the model: other keys, a miss.
  Client other;
  ASSERT_TRUE(other.Register(store.get(), Spec("r2")).ok());
  EXPECT_EQ(other.Lookup(1, 2).matched_chunks, 0u);
}

// Redis hangs (SIGSTOP), then dies, then comes back: every call returns within its
// deadline, saves keep succeeding in host, loads give hits or misses, the breaker opens
// and closes, and the counters say so.
TEST_F(RedisStore, OutageUnderLoadNeverFailsTheEngine) {
  RedisServer server;
  ASSERT_TRUE(server.Start(dir()));
  Client c;
  StoreConfig config = RedisStoreConfig({server.addr()}, 16);
  OPEN_OR_FAIL(store, config, &c);
  const auto deadline_ms = std::chrono::milliseconds(config.redis.op_timeout_ms);
  std::atomic<bool> stop{false};
  std::atomic<uint32_t> calls{0}, slow{0}, save_errors{0}, wrong{0};
  std::atomic<std::chrono::milliseconds::rep> slowest{0};
  auto note = [&](std::chrono::milliseconds took) {
    calls++;
    if (took > deadline_ms + kSlack) slow++;
    auto cur = slowest.load();
    while (took.count() > cur && !slowest.compare_exchange_weak(cur, took.count())) {
    }
  };
  std::vector<std::thread> threads;
  for (uint32_t lane = 0; lane < 2; ++lane) {
    threads.emplace_back([&, lane] {
      for (uint32_t i = 0; !stop.load(); ++i) {
        const uint32_t id = 1000000 * (lane + 1) + i, chunks = 1 + i % 3;  // a new prompt each time
        Outcome s = c.Save(id, chunks, lane);
        note(s.took);
        if (!s.status.ok()) save_errors++;
        std::chrono::milliseconds lt{0};
        (void)c.Lookup(id - 5, chunks, &lt);
        note(lt);
        Outcome l = c.Load(id - 7, chunks, lane);
        note(l.took);
        if (!l.exact) wrong++;
      }
    });
  }
  auto phase = [](int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); };
  phase(500);
  server.Signal(SIGSTOP);  // hangs: every Redis call runs into its deadline
  phase(2000);
  const StoreStats during = store->Stats();
  server.Signal(SIGCONT);
  server.Kill();  // dies: connections refused
  phase(1000);
  ASSERT_TRUE(server.Restart());  // back, empty
  // Half-open probes close the breaker again within its backoff (5 s at most).
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  const uint64_t saved_before = store->Stats().redis_saved_chunks;
  while (std::chrono::steady_clock::now() < until &&
         (store->Stats().redis_breaker != "closed" || store->Stats().redis_saved_chunks == saved_before))
    phase(100);
  phase(300);
  stop = true;
  for (std::thread& t : threads) t.join();
  const StoreStats st = store->Stats();
  std::printf("outage: %u calls, slowest %lld ms, breaker opened %llu closed %llu, skipped %llu, dropped saves %llu, "
              "redis errors %llu timeouts %llu\n",
              calls.load(), static_cast<long long>(slowest.load()),
              static_cast<unsigned long long>(st.redis_breaker_opens),
              static_cast<unsigned long long>(st.redis_breaker_closes), static_cast<unsigned long long>(st.redis_skipped),
              static_cast<unsigned long long>(st.redis_dropped_saves), static_cast<unsigned long long>(st.redis_errors),
              static_cast<unsigned long long>(st.redis_timeouts));
  EXPECT_EQ(save_errors.load(), 0u) << "a save failed because of Redis";
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_EQ(slow.load(), 0u) << "slowest call " << slowest.load() << " ms";
  EXPECT_GT(during.redis_timeouts + during.redis_errors, 0u);
  EXPECT_GE(st.redis_breaker_opens, 1u);
  EXPECT_GE(st.redis_breaker_closes, 1u);
  EXPECT_GT(st.redis_dropped_saves, 0u);
  EXPECT_EQ(st.redis_breaker, "closed");
  EXPECT_GT(st.redis_saved_chunks, saved_before) << "saves did not reach Redis again after it came back";
}

// A Redis Cluster (3 masters + 3 replicas): round trips through the Store; a master killed
// mid-traffic gives misses at worst, and traffic resumes after the failover.
TEST_F(RedisStore, ClusterFailoverUnderLoad) {
  RedisClusterHarness cluster;
  ASSERT_TRUE(cluster.Start(dir())) << cluster.create_log();
  Client c;
  StoreConfig config = RedisStoreConfig(cluster.Seeds(), 8, /*cluster=*/true);
  OPEN_OR_FAIL(store, config, &c);
  for (uint32_t p = 0; p < 20; ++p) ASSERT_TRUE(c.Save(300 + p, 1 + p % 4).status.ok());
  for (uint32_t p = 0; p < 20; ++p) {
    Outcome o = c.Load(300 + p, 1 + p % 4);
    EXPECT_TRUE(o.status.ok()) << p << ": " << o.status.ToString();
  }
  EXPECT_GT(store->Stats().redis_loaded_chunks, 0u);

  std::atomic<bool> stop{false};
  std::atomic<uint32_t> save_errors{0}, wrong{0};
  std::thread traffic([&] {
    for (uint32_t i = 0; !stop.load(); ++i) {
      if (!c.Save(10000 + i, 1 + i % 3).status.ok()) save_errors++;  // a new prompt each time
      if (i >= 5 && !c.Load(10000 + i - 5, 1 + (i - 5) % 3).exact) wrong++;
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  RedisServer* victim = cluster.servers()[0].get();  // a master after --cluster create
  const int dead = victim->port();
  victim->Kill();
  EXPECT_TRUE(cluster.WaitFailover(dead, std::chrono::seconds(40))) << cluster.Nodes();
  const uint64_t loaded_before = store->Stats().redis_loaded_chunks;
  // After the failover: traffic reaches Redis again (the breaker, if it opened, closes).
  const uint64_t saved_before = store->Stats().redis_saved_chunks;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < until &&
         (store->Stats().redis_breaker != "closed" || store->Stats().redis_saved_chunks == saved_before))
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  stop = true;
  traffic.join();
  EXPECT_EQ(save_errors.load(), 0u);
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_GT(store->Stats().redis_saved_chunks, saved_before) << "no save reached Redis after the failover";
  for (uint32_t p = 0; p < 10; ++p) ASSERT_TRUE(c.Save(600 + p, 4).status.ok());
  for (uint32_t p = 0; p < 10; ++p) ASSERT_TRUE(c.Save(700 + p, 4).status.ok());  // evicts 600.. from host
  uint32_t loaded = 0;
  for (uint32_t p = 0; p < 10; ++p) loaded += c.Load(600 + p, 4).chunks;
  EXPECT_GT(store->Stats().redis_loaded_chunks, loaded_before);
  EXPECT_EQ(loaded, 40u) << "chunks saved after the failover did not all come back";
}

}  // namespace
}  // namespace kvtier
