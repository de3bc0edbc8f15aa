// End-to-end tests of the Store with its NVMe tier: real data files opened O_DIRECT in a
// fresh directory (tests/temp_dir.h), real RocksDB metadata, real host tier and Mover.
//
// Every chunk's bytes derive from its key (tests/test_engine.h), and every load checks
// each byte of the prefix it reports and that it left the rest of the destination
// untouched: a chunk that is torn, stale, or read from the wrong extent can only ever
// be a miss, never data. Shapes are small (8 KiB payloads) so that the binary stays
// fast under ASan and TSan.
#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>

#include "tests/temp_dir.h"
#include "common/sync_point.h"
#include "index/chunk_key.h"
#include "kvtier/store.h"
#include "tests/test_engine.h"
#include "tiers/chunk_format.h"
#include "tiers/nvme/env.h"
#include "tiers/nvme/fault_env.h"

// librocksdb (and libstdc++) are not built with -fsanitize=thread. RocksDB's write group
// commit hands a follower's WriteBatch to the leader thread through atomics ThreadSanitizer
// cannot see, and its lazily built statics are locked the same way, so the leader's copy
// of a batch (memcpy from libstdc++'s std::string) and those locks show up as races that
// are not there. Interceptor calls from such modules are not checked in this binary; every
// access in kvtier's own (instrumented) code still is.
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
using test::Mix;
using test::Prompt;
using test::TestEngine;

constexpr uint32_t kChunkTokens = 16;
constexpr uint32_t kBlockTokens = 4;
constexpr uint32_t kBpc = kChunkTokens / kBlockTokens;
constexpr uint64_t kPayloadBytes = 2 * 2 * kChunkTokens * 2 * 32 * 2;  // layers * K,V * tokens * heads * dim * fp16
constexpr uint64_t kChunkBytes = kChunkPayloadOffset + kPayloadBytes;  // a host slot and an NVMe extent: 12 KiB
constexpr uint32_t kEngineBlocks = 64;  // [0, 16) source of saves, [32, 48) destination of loads
constexpr uint32_t kSrc = 0;
constexpr uint32_t kDst = 32;
// A ticket that takes longer than this has hung.
constexpr std::chrono::seconds kTicketTimeout{120};

KvShape Shape() {
  KvShape s;
  s.num_layers = 2;
  s.num_kv_heads = 2;
  s.head_dim = 32;
  s.dtype = DType::kFloat16;
  s.chunk_tokens = kChunkTokens;
  return s;
}

NamespaceSpec Spec() {
  NamespaceSpec n;
  n.model.name = "test/nvme-llama";
  n.model.revision = "r1";
  n.shape = Shape();
  return n;
}

bool IsTmpfs(const std::string& path) {
  struct statfs fs;
  return statfs(path.c_str(), &fs) == 0 && fs.f_type == TMPFS_MAGIC;
}

using test::TempDir;

// An NVMe-backed store in `dir`: `files` data files holding `nvme_chunks` chunks in all,
// metadata in dir/meta. Capacities are in chunks of this file's shape.
StoreConfig NvmeStoreConfig(const std::string& dir, uint64_t host_chunks, uint64_t nvme_chunks, WritePolicy policy,
                            uint32_t files = 1) {
  StoreConfig c;
  c.host_capacity_bytes = host_chunks * kChunkBytes;
  c.huge_pages = HugePages::kOff;
  c.worker_threads = 2;
  c.nvme.enabled = true;
  for (uint32_t f = 0; f < files; ++f) c.nvme.paths.push_back(dir + "/data" + std::to_string(f));
  c.nvme.capacity_bytes = nvme_chunks * kChunkBytes;
  c.nvme.metadata_dir = dir + "/meta";
  c.nvme.queue_depth = 8;
  c.nvme.policy = policy;
  return c;
}

// How a ticket ended.
struct Outcome {
  Status status;
  uint32_t chunks = 0;  // chunks_done
  bool exact = true;    // loads: the prefix is bit-exact and nothing else was written
};

Outcome Finish(Result<Ticket>& t) {
  Outcome o;
  if (!t.ok()) {
    o.status = t.status();
    return o;
  }
  Status w = t->Wait(kTicketTimeout);
  if (!t->done()) {
    ADD_FAILURE() << "ticket not done after " << kTicketTimeout.count() << " s: " << w.ToString();
    o.status = w;
    return o;
  }
  o.status = t->status();
  o.chunks = t->chunks_done();
  return o;
}

// A store client: one engine's KV memory and its registration.
struct Client {
  Store* store = nullptr;
  NamespaceHandle ns;
  TestEngine engine{Shape(), kBlockTokens, kEngineBlocks};

  Status Register(Store* s) {
    store = s;
    Result<NamespaceHandle> h = s->RegisterNamespace(Spec(), engine.layout);
    if (!h.ok()) return h.status();
    ns = *h;
    return Status::OK();
  }

  // Saves prompt `id` (`chunks` chunks) from blocks seeded with its chunks' keys.
  Outcome Save(uint32_t id, uint32_t chunks) {
    const std::vector<int32_t> tokens = Prompt(id, chunks * kChunkTokens);
    const std::vector<int32_t> src = Blocks(kSrc, chunks * kBpc);
    FillPrompt(engine, KeysOf(Spec(), tokens), src);
    Result<Ticket> t = store->Save(ns, tokens, src);
    Outcome o = Finish(t);
    EXPECT_LE(o.chunks, chunks);
    if (o.status.ok()) {
      EXPECT_EQ(o.chunks, chunks) << "prompt " << id;
    }
    return o;
  }

  // Loads prompt `id` into zeroed blocks and checks every byte: the reported prefix holds
  // exactly what was saved, the blocks of the chunks not loaded are still zero.
  Outcome Load(uint32_t id, uint32_t chunks) {
    const std::vector<int32_t> tokens = Prompt(id, chunks * kChunkTokens);
    const std::vector<ChunkKey> keys = KeysOf(Spec(), tokens);
    const std::vector<int32_t> dst = Blocks(kDst, chunks * kBpc);
    for (int32_t b : dst) engine.Zero(static_cast<uint32_t>(b));
    Result<Ticket> t = store->Load(ns, tokens, dst);
    Outcome o = Finish(t);
    EXPECT_LE(o.chunks, chunks);
    if (o.status.ok()) {
      EXPECT_EQ(o.chunks, chunks) << "prompt " << id;
    }
    if (!o.status.ok()) {
      EXPECT_LT(o.chunks, chunks) << "prompt " << id << ": " << o.status.ToString();
    }
    o.exact = HoldsPrompt(engine, keys, dst, std::min(o.chunks, chunks));
    for (size_t b = size_t{o.chunks} * kBpc; b < dst.size(); ++b)
      if (!engine.IsZero(static_cast<uint32_t>(dst[b]))) o.exact = false;
    EXPECT_TRUE(o.exact) << "prompt " << id << ": wrong bytes after a load that reported " << o.chunks << " of "
                         << chunks << " chunks (" << o.status.ToString() << ")";
    return o;
  }

  LookupResult Lookup(uint32_t id, uint32_t chunks) {
    Result<LookupResult> r = store->Lookup(ns, Prompt(id, chunks * kChunkTokens));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : LookupResult{};
  }
};

Result<std::unique_ptr<Store>> OpenWithClient(const StoreConfig& c, Client* client) {
  Result<std::unique_ptr<Store>> s = Store::Open(c);
  if (!s.ok()) return s.status();
  Status r = client->Register(s->get());
  if (!r.ok()) return r;
  return s;
}

// Opens a store and registers `client` with it, or fails the test.
#define OPEN_OR_FAIL(var, config, client)                                    \
  std::unique_ptr<Store> var;                                                \
  {                                                                          \
    Result<std::unique_ptr<Store>> opened_ = OpenWithClient(config, client); \
    ASSERT_TRUE(opened_.ok()) << opened_.status().ToString();                \
    var = std::move(*opened_);                                               \
  }

class NvmeStore : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << "mkdtemp: " << std::strerror(errno);
    if (IsTmpfs(dir_.path()))
      GTEST_SKIP() << dir_.path() << " is on tmpfs, which has no O_DIRECT; set KVTIER_TEST_DIR to a block-backed directory";
  }
  const std::string& dir() const { return dir_.path(); }

  TempDir dir_;
};

// ---- write-back: eviction demotes, loads promote ----------------------------------------------

TEST_F(NvmeStore, WriteBackDemotesToNvmeAndLoadsBack) {
  const StoreConfig config = NvmeStoreConfig(dir(), 8, 200, WritePolicy::kWriteBack, /*files=*/2);
  Client c;
  OPEN_OR_FAIL(store, config, &c);
  EXPECT_TRUE(store->Stats().nvme_enabled);
  const auto chunks_of = [](uint32_t p) { return 2 + p % 3; };
  uint64_t total = 0;
  for (uint32_t p = 0; p < 40; ++p) {
    Outcome o = c.Save(1000 + p, chunks_of(p));
    ASSERT_TRUE(o.status.ok()) << p << ": " << o.status.ToString();
    total += chunks_of(p);
  }
  StoreStats st = store->Stats();
  EXPECT_GT(st.demotions, 0u);
  // NVMe has room for everything: every chunk is cached in one tier or both.
  EXPECT_GE(st.demotions + st.host_chunks, total);
  EXPECT_LE(st.host_chunks, 8u);
  EXPECT_EQ(st.nvme_chunks, st.demotions);
  EXPECT_EQ(st.index_chunks, total);
  EXPECT_EQ(st.nvme_used_bytes, st.nvme_chunks * kChunkBytes);
  EXPECT_EQ(st.write_throughs, 0u);
  EXPECT_EQ(st.nvme_write_errors, 0u);

  // The oldest prompt lives on NVMe only.
  LookupResult before = c.Lookup(1000, chunks_of(0));
  ASSERT_EQ(before.matched_chunks, chunks_of(0));
  for (TierId t : before.chunk_tiers) EXPECT_EQ(t, TierId::kNvme);
  Outcome l = c.Load(1000, chunks_of(0));
  ASSERT_TRUE(l.status.ok()) << l.status.ToString();
  EXPECT_TRUE(l.exact);
  EXPECT_GE(store->Stats().promotions, chunks_of(0));
  LookupResult after = c.Lookup(1000, chunks_of(0));
  ASSERT_EQ(after.matched_chunks, chunks_of(0));
  for (TierId t : after.chunk_tiers) EXPECT_EQ(t, TierId::kHost);

  // Every prompt loads bit-exact, promoting and evicting all the way. Promoted chunks are
  // on NVMe already, so only chunks that never left host DRAM can be demoted now.
  const uint64_t demotions = store->Stats().demotions;
  for (uint32_t p = 0; p < 40; ++p) {
    Outcome o = c.Load(1000 + p, chunks_of(p));
    EXPECT_TRUE(o.status.ok()) << p << ": " << o.status.ToString();
  }
  st = store->Stats();
  EXPECT_LE(st.demotions, demotions + 8);
  EXPECT_EQ(st.index_chunks, total);
  EXPECT_EQ(st.corrupt_chunks, 0u);
  EXPECT_EQ(st.nvme_corrupt_chunks, 0u);
  EXPECT_EQ(st.nvme_read_errors, 0u);
  EXPECT_EQ(st.load_failed_chunks, 0u);
}

// ---- write-through: durable at acknowledgement, indexed again at open --------------------------

TEST_F(NvmeStore, WriteThroughSurvivesRestart) {
  const StoreConfig config = NvmeStoreConfig(dir(), 16, 200, WritePolicy::kWriteThrough, /*files=*/2);
  const auto chunks_of = [](uint32_t p) { return 1 + p % 4; };
  uint64_t total = 0;
  {
    Client c;
    OPEN_OR_FAIL(store, config, &c);
    for (uint32_t p = 0; p < 30; ++p) {
      Outcome o = c.Save(2000 + p, chunks_of(p));
      ASSERT_TRUE(o.status.ok()) << p << ": " << o.status.ToString();
      total += chunks_of(p);
    }
    StoreStats st = store->Stats();
    EXPECT_EQ(st.write_throughs, total);
    EXPECT_EQ(st.nvme_chunks, total);
    EXPECT_EQ(st.recovered_chunks, 0u);
  }
  for (int open = 2; open <= 3; ++open) {
    SCOPED_TRACE("open #" + std::to_string(open));
    Client c;
    OPEN_OR_FAIL(store, config, &c);
    StoreStats st = store->Stats();
    EXPECT_EQ(st.recovered_chunks, total);
    EXPECT_EQ(st.nvme_chunks, total);
    EXPECT_EQ(st.index_chunks, total);
    EXPECT_EQ(st.host_chunks, 0u);
    EXPECT_EQ(st.nvme_dropped_records, 0u);
    EXPECT_EQ(st.namespaces, 1u);
    for (uint32_t p = 0; p < 30; ++p) {
      LookupResult r = c.Lookup(2000 + p, chunks_of(p));
      EXPECT_EQ(r.matched_chunks, chunks_of(p)) << p;
      for (TierId t : r.chunk_tiers) EXPECT_EQ(t, TierId::kNvme) << p;
      Outcome o = c.Load(2000 + p, chunks_of(p));
      EXPECT_TRUE(o.status.ok()) << p << ": " << o.status.ToString();
    }
    st = store->Stats();
    EXPECT_GE(st.promotions, total);
    EXPECT_EQ(st.nvme_corrupt_chunks, 0u);
    EXPECT_EQ(st.write_throughs, 0u);  // promotions write nothing down
  }
}

// ---- damaged data files ------------------------------------------------------------------------

TEST_F(NvmeStore, DataFileCorruptionIsAMiss) {
  const StoreConfig config = NvmeStoreConfig(dir(), 16, 100, WritePolicy::kWriteThrough);
  constexpr uint32_t kPrompts = 24;
  const auto chunks_of = [](uint32_t p) { return 1 + p % 3; };
  std::map<std::pair<uint64_t, uint64_t>, std::pair<uint32_t, uint32_t>> where;  // key -> (prompt, chunk)
  uint64_t total = 0;
  {
    Client c;
    OPEN_OR_FAIL(store, config, &c);
    for (uint32_t p = 0; p < kPrompts; ++p) {
      ASSERT_TRUE(c.Save(3000 + p, chunks_of(p)).status.ok()) << p;
      const std::vector<ChunkKey> keys = KeysOf(Spec(), Prompt(3000 + p, chunks_of(p) * kChunkTokens));
      for (uint32_t i = 0; i < keys.size(); ++i) where[{keys[i].lo, keys[i].hi}] = {p, i};
      total += chunks_of(p);
    }
  }

  // Find every extent by its header page and damage some of them.
  enum Damage : int { kNone = 0, kHeader = 1, kPayload = 2, kBoth = 3, kTokensOnly = 4 };
  std::map<std::pair<uint32_t, uint32_t>, int> damage;  // (prompt, chunk) -> Damage
  {
    const std::string path = config.nvme.paths[0];
    const int fd = open(path.c_str(), O_RDWR);
    ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
    struct stat sb;
    ASSERT_EQ(fstat(fd, &sb), 0);
    std::vector<uint8_t> file(static_cast<size_t>(sb.st_size));
    ASSERT_EQ(pread(fd, file.data(), file.size(), 0), static_cast<ssize_t>(file.size()));
    std::mt19937_64 rng(3);
    uint64_t found = 0;
    const auto flip = [&](uint64_t at) { file[at] ^= static_cast<uint8_t>(1 + rng() % 255); };
    for (uint64_t off = 0; off + kChunkBytes <= file.size(); off += kDirectIoAlign) {
      if (std::memcmp(&file[off], "KVC1", 4) != 0) continue;
      Result<ChunkHeader> h = DecodeChunkHeader(std::span<const uint8_t>(&file[off], kChunkHeaderBytes));
      ASSERT_TRUE(h.ok()) << "header at " << off << ": " << h.status().ToString();
      auto w = where.find({h->key.lo, h->key.hi});
      ASSERT_NE(w, where.end()) << "extent at " << off << " holds a chunk no prompt saved";
      ++found;
      if (rng() % 5 >= 2) continue;  // 40% of the extents get damage
      const int kind = 1 + static_cast<int>(rng() % 4);
      if (kind == kHeader || kind == kBoth)
        for (int n = 1 + static_cast<int>(rng() % 3); n > 0; --n) flip(off + rng() % kChunkHeaderBytes);
      if (kind == kPayload || kind == kBoth)
        for (int n = 1 + static_cast<int>(rng() % 4); n > 0; --n)
          flip(off + kChunkPayloadOffset + rng() % kPayloadBytes);
      if (kind == kTokensOnly)  // the rest of the header page: token ids that no reader trusts
        for (int n = 1 + static_cast<int>(rng() % 3); n > 0; --n)
          flip(off + kChunkHeaderBytes + rng() % (kChunkPayloadOffset - kChunkHeaderBytes));
      damage[w->second] = kind;
    }
    EXPECT_EQ(found, total);
    ASSERT_EQ(pwrite(fd, file.data(), file.size(), 0), static_cast<ssize_t>(file.size()));
    ASSERT_EQ(fsync(fd), 0);
    close(fd);
  }

  // first_bad: the first chunk whose header or payload was damaged (it and every chunk
  // after it must miss); first_touched: the first chunk with any damage (every chunk
  // before it must load).
  std::vector<uint32_t> first_bad(kPrompts), first_touched(kPrompts);
  uint32_t bad_prompts = 0;
  for (uint32_t p = 0; p < kPrompts; ++p) {
    first_bad[p] = first_touched[p] = chunks_of(p);
    for (uint32_t i = chunks_of(p); i-- > 0;) {
      auto d = damage.find({p, i});
      if (d == damage.end()) continue;
      first_touched[p] = i;
      if (d->second != kTokensOnly) first_bad[p] = i;
    }
    if (first_bad[p] < chunks_of(p)) ++bad_prompts;
  }
  ASSERT_GT(bad_prompts, 0u) << "the seed damaged no header or payload; pick another";

  Client c;
  OPEN_OR_FAIL(store, config, &c);
  EXPECT_EQ(store->Stats().recovered_chunks, total);  // the metadata is intact
  uint32_t misses = 0;
  uint64_t lost = 0;  // chunks that can no longer load: the bad one and its descendants
  std::vector<uint32_t> loaded(kPrompts);
  for (uint32_t p = 0; p < kPrompts; ++p) {
    EXPECT_EQ(c.Lookup(3000 + p, chunks_of(p)).matched_chunks, chunks_of(p)) << p;
    Outcome o = c.Load(3000 + p, chunks_of(p));
    loaded[p] = o.chunks;
    EXPECT_LE(o.chunks, first_bad[p]) << "prompt " << p << ": a damaged chunk was served";
    EXPECT_GE(o.chunks, first_touched[p]) << "prompt " << p << ": an intact chunk missed: " << o.status.ToString();
    if (o.chunks < chunks_of(p)) {
      ++misses;
      lost += chunks_of(p) - o.chunks;
      EXPECT_TRUE(o.status.IsCorruption()) << p << ": " << o.status.ToString();
    }
  }
  EXPECT_GT(misses, 0u);
  StoreStats st = store->Stats();
  EXPECT_EQ(st.nvme_corrupt_chunks, misses);
  EXPECT_EQ(st.corrupt_chunks, misses);
  EXPECT_EQ(st.nvme_chunks, total - lost);
  EXPECT_EQ(st.index_chunks, total - lost);
  std::printf("data file damage: %zu of %llu chunks damaged, %u prompts missed, %llu chunks lost\n", damage.size(),
              static_cast<unsigned long long>(total), misses, static_cast<unsigned long long>(lost));

  // A chunk that failed a check was dropped with its descendants: the next load misses at
  // the same chunk without reading the disk again.
  for (uint32_t p = 0; p < kPrompts; ++p) {
    if (loaded[p] == chunks_of(p)) continue;
    EXPECT_EQ(c.Lookup(3000 + p, chunks_of(p)).matched_chunks, loaded[p]) << p;
    Outcome o = c.Load(3000 + p, chunks_of(p));
    EXPECT_EQ(o.chunks, loaded[p]) << p;
    EXPECT_TRUE(o.status.IsNotFound()) << p << ": " << o.status.ToString();
  }
  EXPECT_EQ(store->Stats().nvme_corrupt_chunks, misses);
  EXPECT_EQ(store->Stats().corrupt_chunks, misses);

  // The rest of the store works: new chunks (in the freed extents too) save and load.
  for (uint32_t p = 0; p < 16; ++p) {
    ASSERT_TRUE(c.Save(3500 + p, 1 + p % 3).status.ok()) << p;
    EXPECT_TRUE(c.Load(3500 + p, 1 + p % 3).status.ok()) << p;
  }
  store.reset();

  // And after a restart, the dropped chunks stay gone, everything else is there.
  Client c2;
  OPEN_OR_FAIL(store2, config, &c2);
  EXPECT_EQ(store2->Stats().nvme_dropped_records, 0u);
  for (uint32_t p = 0; p < kPrompts; ++p) {
    Outcome o = c2.Load(3000 + p, chunks_of(p));
    EXPECT_EQ(o.chunks, loaded[p]) << p << ": " << o.status.ToString();
  }
  for (uint32_t p = 0; p < 16; ++p) EXPECT_TRUE(c2.Load(3500 + p, 1 + p % 3).status.ok()) << p;
  EXPECT_EQ(store2->Stats().nvme_corrupt_chunks, 0u);
}

// ---- damaged metadata ----------------------------------------------------------------------------

// The RocksDB key of a chunk's record: 'c' then the key's lo and hi words, little-endian.
std::string ChunkRecordKey(const ChunkKey& k) {
  std::string s(1, 'c');
  for (uint64_t w : {k.lo, k.hi})
    for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>(w >> (8 * i)));
  return s;
}

TEST_F(NvmeStore, MetadataCorruptionIsAMiss) {
  const StoreConfig config = NvmeStoreConfig(dir(), 16, 100, WritePolicy::kWriteThrough);
  constexpr uint32_t kPrompts = 24;
  const auto chunks_of = [](uint32_t p) { return 1 + p % 3; };
  uint64_t total = 0;
  {
    Client c;
    OPEN_OR_FAIL(store, config, &c);
    for (uint32_t p = 0; p < kPrompts; ++p) {
      ASSERT_TRUE(c.Save(4000 + p, chunks_of(p)).status.ok()) << p;
      total += chunks_of(p);
    }
  }

  // Damage one record in each of six prompts: five with a flipped byte, one truncated.
  std::vector<uint32_t> first_bad(kPrompts);
  for (uint32_t p = 0; p < kPrompts; ++p) first_bad[p] = chunks_of(p);
  uint64_t expect_dropped = 0;
  {
    rocksdb::Options o;
    o.create_if_missing = false;
    rocksdb::DB* raw = nullptr;
    rocksdb::Status s = rocksdb::DB::Open(o, config.nvme.metadata_dir, &raw);
    ASSERT_TRUE(s.ok()) << s.ToString();
    std::unique_ptr<rocksdb::DB> db(raw);
    uint64_t records = 0;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek("c"); it->Valid() && it->key()[0] == 'c'; it->Next()) ++records;
    it.reset();
    EXPECT_EQ(records, total);
    std::mt19937_64 rng(4);
    std::set<uint32_t> victims;
    while (victims.size() < 6) victims.insert(static_cast<uint32_t>(rng() % kPrompts));
    bool truncate = true;
    for (uint32_t p : victims) {
      const std::vector<ChunkKey> keys = KeysOf(Spec(), Prompt(4000 + p, chunks_of(p) * kChunkTokens));
      const uint32_t i = static_cast<uint32_t>(rng() % keys.size());
      const std::string key = ChunkRecordKey(keys[i]);
      std::string value;
      s = db->Get(rocksdb::ReadOptions(), key, &value);
      ASSERT_TRUE(s.ok()) << "record of prompt " << p << " chunk " << i << ": " << s.ToString();
      ASSERT_GT(value.size(), 8u);
      if (truncate) {
        value.resize(value.size() - 1 - rng() % (value.size() - 1));
        truncate = false;
      } else {
        value[rng() % value.size()] ^= static_cast<char>(1 + rng() % 255);
      }
      rocksdb::WriteOptions wo;
      wo.sync = true;
      s = db->Put(wo, key, value);
      ASSERT_TRUE(s.ok()) << s.ToString();
      first_bad[p] = i;
      expect_dropped += chunks_of(p) - i;  // the record and its descendants
    }
    s = db->Close();
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  Client c;
  OPEN_OR_FAIL(store, config, &c);
  StoreStats st = store->Stats();
  EXPECT_GT(st.nvme_dropped_records, 0u);
  EXPECT_EQ(st.nvme_dropped_records, expect_dropped);
  EXPECT_EQ(st.recovered_chunks, total - expect_dropped);
  EXPECT_EQ(st.nvme_chunks, total - expect_dropped);
  for (uint32_t p = 0; p < kPrompts; ++p) {
    EXPECT_EQ(c.Lookup(4000 + p, chunks_of(p)).matched_chunks, first_bad[p]) << p;
    Outcome o = c.Load(4000 + p, chunks_of(p));
    EXPECT_EQ(o.chunks, first_bad[p]) << p << ": " << o.status.ToString();
    if (first_bad[p] < chunks_of(p)) {
      EXPECT_TRUE(o.status.IsNotFound()) << p << ": " << o.status.ToString();
    }
  }
  EXPECT_EQ(store->Stats().nvme_corrupt_chunks, 0u);
  store.reset();

  // The bad records were deleted, not just skipped.
  Client c2;
  OPEN_OR_FAIL(store2, config, &c2);
  EXPECT_EQ(store2->Stats().nvme_dropped_records, 0u);
  EXPECT_EQ(store2->Stats().recovered_chunks, total - expect_dropped);
}

// ---- injected faults -----------------------------------------------------------------------------

struct FaultRound {
  const char* name;
  FaultSpec spec;
  bool lies = false;  // torn writes report success: acknowledged chunks may be lost
};

std::vector<FaultRound> FaultRounds() {
  std::vector<FaultRound> r;
  FaultSpec f;
  f.write_error = 0.3;
  r.push_back({"write_error", f});
  f = {};
  f.write_no_space = 0.3;
  r.push_back({"write_no_space", f});
  f = {};
  f.short_write = 0.3;
  r.push_back({"short_write", f});
  f = {};
  f.torn_write = 0.3;
  r.push_back({"torn_write", f, true});
  f = {};
  f.read_error = 0.3;
  r.push_back({"read_error", f});
  f = {};
  f.short_read = 0.3;
  r.push_back({"short_read", f});
  f = {};
  f.sync_error = 0.3;
  r.push_back({"sync_error", f});
  f = {};
  f.latency_us = 300;
  r.push_back({"latency", f});
  f = {};
  f.read_error = f.write_error = f.write_no_space = f.short_read = f.short_write = f.torn_write = f.sync_error = 0.05;
  f.latency_us = 50;
  r.push_back({"mixed", f, true});
  return r;
}

TEST_F(NvmeStore, FaultsNeverServeWrongBytes) {
  FaultInjectionEnv env(Env::Default());
  constexpr uint32_t kPrompts = 20;
  const auto chunks_of = [](uint32_t p) { return 1 + p % 3; };
  uint32_t round = 0;
  for (const FaultRound& fr : FaultRounds()) {
    for (WritePolicy policy : {WritePolicy::kWriteThrough, WritePolicy::kWriteBack}) {
      ++round;
      const bool through = policy == WritePolicy::kWriteThrough;
      SCOPED_TRACE(std::string(fr.name) + (through ? " write-through" : " write-back"));
      const std::string sub = dir() + "/round" + std::to_string(round);
      StoreConfig config = NvmeStoreConfig(sub, 8, 100, policy);
      config.env = &env;
      env.SetFaults(FaultSpec{});
      env.ResetCounts();
      const uint32_t base = 5000 + 100 * round;
      std::vector<uint32_t> acked(kPrompts, 0);
      uint32_t failed_saves = 0, partial_loads = 0;
      {
        Client c;
        OPEN_OR_FAIL(store, config, &c);
        FaultSpec spec = fr.spec;
        spec.seed = round;
        env.SetFaults(spec);
        // Saves may fail; they return, and what they report is a prefix.
        for (uint32_t p = 0; p < kPrompts; ++p) {
          Outcome o = c.Save(base + p, chunks_of(p));
          acked[p] = o.chunks;
          if (!o.status.ok()) ++failed_saves;
        }
        // A write-through save that met a reported write or sync failure is not acknowledged.
        const FaultCounts after_saves = env.counts();
        if (through &&
            after_saves.write_error + after_saves.write_no_space + after_saves.short_write + after_saves.sync_error >
                0) {
          EXPECT_GT(failed_saves, 0u);
        }
        // Loads under faults: whatever they report is bit-exact.
        for (uint32_t p = 0; p < kPrompts; ++p)
          if (c.Load(base + p, chunks_of(p)).chunks < chunks_of(p)) ++partial_loads;
        const uint64_t injected = env.injected();
        const FaultCounts fc = env.counts();
        env.SetFaults(FaultSpec{});
        // Faults gone: still never wrong; acknowledged write-through chunks are all there
        // unless a write lied about succeeding.
        for (uint32_t p = 0; p < kPrompts; ++p) {
          Outcome o = c.Load(base + p, chunks_of(p));
          if (through && !fr.lies) {
            EXPECT_GE(o.chunks, acked[p]) << p << ": " << o.status.ToString();
          }
        }
        // ... and the store keeps working.
        for (uint32_t p = kPrompts; p < kPrompts + 6; ++p) {
          ASSERT_TRUE(c.Save(base + p, chunks_of(p)).status.ok()) << p;
          EXPECT_TRUE(c.Load(base + p, chunks_of(p)).status.ok()) << p;
        }
        const StoreStats st = store->Stats();
        std::printf(
            "faults %-14s %-13s: %3llu injected, %2u of %u saves failed, %2u partial loads, "
            "%llu write errors, %llu read errors, %llu corrupt\n",
            fr.name, through ? "write-through" : "write-back", static_cast<unsigned long long>(injected), failed_saves,
            kPrompts, partial_loads, static_cast<unsigned long long>(st.nvme_write_errors),
            static_cast<unsigned long long>(st.nvme_read_errors),
            static_cast<unsigned long long>(st.nvme_corrupt_chunks));
        if (fr.spec.latency_us == 0) {
          EXPECT_GT(injected, 0u);
        }
        // Every failure the device reported is counted.
        if (fc.write_error + fc.write_no_space + fc.short_write + fc.sync_error > 0) {
          EXPECT_GT(st.nvme_write_errors, 0u);
        }
        if (fc.read_error + fc.short_read > 0) {
          EXPECT_GT(st.nvme_read_errors, 0u);
        }
        if (fr.spec.latency_us != 0 && fr.spec.write_error == 0) {
          EXPECT_EQ(failed_saves, 0u);
        }
      }
      // After a restart (no faults): acknowledged write-through chunks were durable.
      Client c;
      OPEN_OR_FAIL(store, config, &c);
      for (uint32_t p = 0; p < kPrompts; ++p) {
        Outcome o = c.Load(base + p, chunks_of(p));
        if (through && !fr.lies) {
          EXPECT_GE(o.chunks, acked[p]) << p << ": " << o.status.ToString();
        }
      }
      for (uint32_t p = kPrompts; p < kPrompts + 6; ++p)
        if (through) {
          EXPECT_TRUE(c.Load(base + p, chunks_of(p)).status.ok()) << p;
        }
    }
  }
}

// Every write is torn yet reported as done: the saves are acknowledged, and the data on
// disk is wrong. The checksums must turn every such chunk into a miss.
TEST_F(NvmeStore, TornWritesAreCaughtOnRead) {
  FaultInjectionEnv env(Env::Default());
  StoreConfig config = NvmeStoreConfig(dir(), 8, 100, WritePolicy::kWriteThrough);
  config.env = &env;
  constexpr uint32_t kPrompts = 16;
  const auto chunks_of = [](uint32_t p) { return 1 + p % 3; };
  {
    Client c;
    OPEN_OR_FAIL(store, config, &c);
    FaultSpec torn;
    torn.torn_write = 1.0;
    env.SetFaults(torn);
    for (uint32_t p = 0; p < kPrompts; ++p) (void)c.Save(6000 + p, chunks_of(p));
    EXPECT_GT(env.counts().torn_write, 0u);
    env.SetFaults(FaultSpec{});
  }
  Client c;
  OPEN_OR_FAIL(store, config, &c);
  uint64_t served = 0;
  for (uint32_t p = 0; p < kPrompts; ++p) served += c.Load(6000 + p, chunks_of(p)).chunks;
  StoreStats st = store->Stats();
  EXPECT_GT(st.nvme_corrupt_chunks, 0u);
  EXPECT_EQ(st.corrupt_chunks, st.nvme_corrupt_chunks);
  std::printf("torn writes: %llu chunks served (bit-exact), %llu caught as corrupt\n",
              static_cast<unsigned long long>(served), static_cast<unsigned long long>(st.nvme_corrupt_chunks));
  // Without faults the same prompts save and load again.
  for (uint32_t p = 0; p < kPrompts; ++p) {
    ASSERT_TRUE(c.Save(6000 + p, chunks_of(p)).status.ok()) << p;
    EXPECT_TRUE(c.Load(6000 + p, chunks_of(p)).status.ok()) << p;
  }
  store.reset();
  Client c2;
  OPEN_OR_FAIL(store2, config, &c2);
  for (uint32_t p = 0; p < kPrompts; ++p) EXPECT_TRUE(c2.Load(6000 + p, chunks_of(p)).status.ok()) << p;
  EXPECT_EQ(store2->Stats().nvme_corrupt_chunks, 0u);
}

// ---- concurrency ----------------------------------------------------------------------------------

// Threads save, look up and load prompts with shared prefixes through a small host tier
// over a small NVMe tier, so demotions, promotions and evictions on both tiers overlap
// all the time. Every chunk a load reports is bit-exact.
TEST_F(NvmeStore, ConcurrentTrafficNeverServesWrongBytes) {
  for (WritePolicy policy : {WritePolicy::kWriteBack, WritePolicy::kWriteThrough}) {
    const bool through = policy == WritePolicy::kWriteThrough;
    SCOPED_TRACE(through ? "write-through" : "write-back");
    StoreConfig config = NvmeStoreConfig(dir() + (through ? "/through" : "/back"), 12, 40, policy);
    config.worker_threads = 3;
    Result<std::unique_ptr<Store>> opened = Store::Open(config);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    std::unique_ptr<Store> store = std::move(*opened);
    constexpr int kThreads = 4;
    constexpr uint32_t kChunks = 4;
    TestEngine e(Shape(), kBlockTokens, kThreads * 2 * kChunks * kBpc);
    Result<NamespaceHandle> ns = store->RegisterNamespace(Spec(), e.layout);
    ASSERT_TRUE(ns.ok()) << ns.status().ToString();
    std::atomic<uint64_t> chunks_loaded{0}, wrong{0}, bad_status{0};
    std::vector<std::thread> threads;
    for (int th = 0; th < kThreads; ++th) {
      threads.emplace_back([&, th] {
        std::mt19937 rng(th + (through ? 100 : 0));
        const std::vector<int32_t> src = Blocks(th * 2 * kChunks * kBpc, kChunks * kBpc);
        const std::vector<int32_t> dst = Blocks(th * 2 * kChunks * kBpc + kChunks * kBpc, kChunks * kBpc);
        for (int it = 0; it < 150; ++it) {
          // Prompt p's chunk c depends on p / 2^(kChunks-1-c): prompts share prefixes.
          const uint32_t p = rng() % 64;
          std::vector<int32_t> tokens(kChunks * kChunkTokens);
          for (uint32_t c = 0; c < kChunks; ++c) {
            const std::vector<int32_t> part = Prompt(8000 + (p >> (kChunks - 1 - c)), kChunkTokens);
            std::copy(part.begin(), part.end(), tokens.begin() + c * kChunkTokens);
          }
          const std::vector<ChunkKey> keys = KeysOf(Spec(), tokens);
          Result<LookupResult> lk = store->Lookup(*ns, tokens);
          if (!lk.ok()) {
            bad_status++;
            continue;
          }
          if (lk->matched_chunks == 0 || rng() % 3 == 0) {
            FillPrompt(e, keys, src);
            Result<Ticket> t = store->Save(*ns, tokens, src);
            Outcome o = Finish(t);
            if (!o.status.ok() && o.status.code() != Status::Code::kNoSpace) bad_status++;
          } else {
            for (int32_t b : dst) e.Zero(static_cast<uint32_t>(b));
            Result<Ticket> t = store->Load(*ns, tokens, dst);
            Outcome o = Finish(t);
            if (!o.status.ok() && !o.status.IsNotFound() && o.status.code() != Status::Code::kNoSpace)
              bad_status++;
            chunks_loaded += o.chunks;
            if (!HoldsPrompt(e, keys, dst, o.chunks)) wrong++;
            for (size_t b = size_t{o.chunks} * kBpc; b < dst.size(); ++b)
              if (!e.IsZero(static_cast<uint32_t>(dst[b]))) wrong++;
          }
        }
      });
    }
    for (std::thread& t : threads) t.join();
    EXPECT_EQ(wrong.load(), 0u);
    EXPECT_EQ(bad_status.load(), 0u);
    EXPECT_GT(chunks_loaded.load(), 0u);
    const StoreStats st = store->Stats();
    EXPECT_GT(st.promotions, 0u);
    if (!through) {
      EXPECT_GT(st.demotions, 0u);
    }
    EXPECT_EQ(st.corrupt_chunks, 0u);
    EXPECT_EQ(st.nvme_corrupt_chunks, 0u);
    EXPECT_LE(st.host_used_bytes, st.host_capacity_bytes);
    EXPECT_LE(st.nvme_used_bytes, st.nvme_capacity_bytes);
    EXPECT_EQ(st.nvme_used_bytes, st.nvme_chunks * kChunkBytes);
    std::printf("concurrent %-13s: %llu chunks loaded, %llu demotions, %llu write-throughs, %llu promotions, "
                "%llu host evictions\n",
                through ? "write-through" : "write-back", static_cast<unsigned long long>(chunks_loaded.load()),
                static_cast<unsigned long long>(st.demotions), static_cast<unsigned long long>(st.write_throughs),
                static_cast<unsigned long long>(st.promotions), static_cast<unsigned long long>(st.evictions));
    ASSERT_TRUE(store->Close().ok());
  }
}

// An eviction clears a chunk's host bit in the index and then frees its slot, two steps
// under placement_mu. A load that pins the chunk between them must not copy from that
// slot: the save that evicted it gets the slot next and writes its own chunk there. Sync
// points hold the eviction between its steps and the load just before it copies, so the
// interleaving that the concurrency test above meets about once in a few hundred runs
// happens every time: a load that took the slot would hand the engine the save's bytes.
TEST_F(NvmeStore, LoadNeverCopiesFromASlotBeingEvicted) {
  StoreConfig config = NvmeStoreConfig(dir(), /*host_chunks=*/2, /*nvme_chunks=*/16, WritePolicy::kWriteThrough);
  config.worker_threads = 2;  // one for the save that evicts, one for the load
  Client c;
  OPEN_OR_FAIL(store, config, &c);
  ASSERT_TRUE(c.Save(9100, 1).status.ok());  // A: in host (least recently used) and on NVMe
  ASSERT_TRUE(c.Save(9101, 1).status.ok());  // B: host is full
  const std::vector<int32_t> a_tokens = Prompt(9100, kChunkTokens);
  const std::vector<ChunkKey> a_keys = KeysOf(Spec(), a_tokens);
  const std::vector<int32_t> dst = Blocks(kDst, kBpc);
  for (int32_t b : dst) c.engine.Zero(static_cast<uint32_t>(b));

  std::mutex mu;
  std::condition_variable cv;
  bool evicting_a = false, load_at_copy = false, release_load = false;  // guarded by mu
  std::optional<Result<Ticket>> load;                                    // guarded by mu
  const SyncPointCallback cb = [&](std::string_view point, const void* arg) {
    if (point == "Store::EvictHost:IndexCleared" && *static_cast<const ChunkKey*>(arg) == a_keys[0]) {
      std::unique_lock<std::mutex> l(mu);
      if (evicting_a) return;
      evicting_a = true;
      load.emplace(store->Load(c.ns, a_tokens, dst));  // pins A now; the other worker runs it
      // A load that took A's slot reaches its copy while the eviction waits here; one that
      // reads A from NVMe needs a slot, so it waits for the eviction instead.
      cv.wait_for(l, std::chrono::milliseconds(500), [&] { return load_at_copy; });
    } else if (point == "Store::RunLoad:BeforeCopy") {
      std::unique_lock<std::mutex> l(mu);
      load_at_copy = true;
      cv.notify_all();
      cv.wait_for(l, std::chrono::seconds(20), [&] { return release_load; });
    }
  };
  SetSyncPointCallback(&cb);
  const Outcome saved = c.Save(9102, 1);  // C: evicts A; its slot is where C goes
  {
    std::lock_guard<std::mutex> l(mu);
    release_load = true;
  }
  cv.notify_all();
  Outcome loaded;
  {
    std::unique_lock<std::mutex> l(mu);
    ASSERT_TRUE(evicting_a) << "the save did not evict A: the test's premise is off";
    ASSERT_TRUE(load.has_value());
    l.unlock();
    loaded = Finish(*load);
  }
  SetSyncPointCallback(nullptr);
  ASSERT_TRUE(saved.status.ok()) << saved.status.ToString();
  ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
  ASSERT_EQ(loaded.chunks, 1u);
  EXPECT_TRUE(HoldsPrompt(c.engine, a_keys, dst, 1)) << "the load copied another chunk's bytes as A's";
  // ... and A came from NVMe, not from the slot on its way out.
  EXPECT_GE(store->Stats().promotions, 1u);
}

// ---- filesystems without O_DIRECT -----------------------------------------------------------------

TEST(NvmeStoreTmpfs, TmpfsWithoutBufferedIsAClearError) {
  if (!IsTmpfs("/dev/shm")) GTEST_SKIP() << "/dev/shm is not tmpfs here: nothing to refuse";
  TempDir shm("/dev/shm");
  ASSERT_TRUE(shm.ok()) << "mkdtemp under /dev/shm: " << std::strerror(errno);
  StoreConfig config = NvmeStoreConfig(shm.path(), 8, 16, WritePolicy::kWriteThrough);
  Result<std::unique_ptr<Store>> refused = Store::Open(config);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(refused.status().IsInvalidArgument()) << refused.status().ToString();
  const std::string& msg = refused.status().message();
  EXPECT_NE(msg.find(config.nvme.paths[0]), std::string::npos) << msg;
  EXPECT_NE(msg.find("buffered"), std::string::npos) << msg;

  config.nvme.buffered = true;
  {
    Client c;
    OPEN_OR_FAIL(store, config, &c);
    for (uint32_t p = 0; p < 4; ++p) ASSERT_TRUE(c.Save(7000 + p, 1 + p % 3).status.ok()) << p;
  }
  Client c;
  OPEN_OR_FAIL(store, config, &c);
  EXPECT_EQ(store->Stats().recovered_chunks, 1u + 2u + 3u + 1u);
  for (uint32_t p = 0; p < 4; ++p) EXPECT_TRUE(c.Load(7000 + p, 1 + p % 3).status.ok()) << p;
}

// ---- crash recovery ----------------------------------------------------------------------------------
//
// Each round starts a writer process that streams write-through saves and reports each
// acknowledged one on a pipe, kills it with SIGKILL at a random moment, then opens the
// store here and checks that every acknowledged prompt of every round is still indexed,
// that they load bit-exact, and that whatever was in flight is either missing or
// bit-exact: no record may point at data that is not all there.
//
// The writer is this binary, re-executed right after fork(): once RocksDB has been opened,
// its background thread pools live for the rest of the process, so a plain forked child
// would start from a multi-threaded process (which ThreadSanitizer refuses, and after which
// only async-signal-safe calls are allowed). The environment variable below tells the test
// body that it runs as the writer.
//
// The writer's device has 1 ms of latency per I/O batch and per sync (a FaultInjectionEnv
// with no faults): /tmp here syncs in microseconds, and without it a round's saves would
// all be done before the kill, leaving nothing in flight to crash.

constexpr const char* kCrashChildEnv = "KVTIER_NVME_CRASH_WRITER";
constexpr uint32_t kCrashRounds = 24;
constexpr uint32_t kCrashMaxPrompts = 250;  // per round: bounds the tier's size, so nothing is evicted
constexpr uint32_t kCrashWindow = 4;        // saves in flight in the writer
constexpr uint32_t kCrashMaxChunks = 3;
constexpr uint32_t kCrashLatencyUs = 1000;
constexpr uint32_t kCrashSample = 32;  // earlier rounds' prompts loaded again each round (all in the last)

uint32_t CrashChunks(uint32_t id) { return 1 + static_cast<uint32_t>(Mix(id) % kCrashMaxChunks); }

StoreConfig CrashConfig(const std::string& dir) {
  return NvmeStoreConfig(dir, 32, uint64_t{kCrashRounds} * kCrashMaxPrompts * kCrashMaxChunks + 64,
                         WritePolicy::kWriteThrough);
}

// One record on the pipe; a write(2) of it is atomic (smaller than PIPE_BUF).
struct CrashRecord {
  enum Kind : uint32_t { kReady = 1, kAck = 2, kFailed = 3, kDone = 4, kError = 5 };
  uint32_t kind = 0;
  uint32_t id = 0;
  uint32_t chunks_done = 0;
  uint32_t code = 0;  // Status::Code of a failed save
};

[[noreturn]] void RunCrashWriter(const char* arg) {
  // arg: "<dir>|<round>|<fd>"
  const std::string a(arg);
  const size_t p1 = a.find('|'), p2 = a.rfind('|');
  const std::string dir = a.substr(0, p1);
  const uint32_t round = static_cast<uint32_t>(std::stoul(a.substr(p1 + 1, p2 - p1 - 1)));
  const int fd = std::stoi(a.substr(p2 + 1));
  const auto send = [fd](CrashRecord r) {
    if (write(fd, &r, sizeof r) != static_cast<ssize_t>(sizeof r)) _exit(3);
  };
  FaultInjectionEnv env(Env::Default());
  FaultSpec slow;
  slow.latency_us = kCrashLatencyUs;
  env.SetFaults(slow);
  StoreConfig config = CrashConfig(dir);
  config.env = &env;
  Result<std::unique_ptr<Store>> store = Store::Open(config);
  if (!store.ok()) {
    std::fprintf(stderr, "crash writer: %s\n", store.status().ToString().c_str());
    send({CrashRecord::kError, 0, 0, static_cast<uint32_t>(store.status().code())});
    _exit(2);
  }
  TestEngine engine(Shape(), kBlockTokens, kCrashWindow * kCrashMaxChunks * kBpc);
  Result<NamespaceHandle> ns = (*store)->RegisterNamespace(Spec(), engine.layout);
  if (!ns.ok()) {
    std::fprintf(stderr, "crash writer: %s\n", ns.status().ToString().c_str());
    send({CrashRecord::kError, 0, 0, static_cast<uint32_t>(ns.status().code())});
    _exit(2);
  }
  send({CrashRecord::kReady, 0, 0, 0});
  struct InFlight {
    uint32_t id;
    Ticket ticket;
  };
  std::deque<InFlight> window;
  const auto retire = [&] {
    InFlight& f = window.front();
    Status s = f.ticket.Wait();
    if (s.ok()) {
      send({CrashRecord::kAck, f.id, f.ticket.chunks_done(), 0});
    } else {
      send({CrashRecord::kFailed, f.id, f.ticket.chunks_done(), static_cast<uint32_t>(s.code())});
    }
    window.pop_front();
  };
  for (uint32_t i = 0; i < kCrashMaxPrompts; ++i) {
    if (window.size() == kCrashWindow) retire();  // frees the blocks of prompt i - kCrashWindow
    const uint32_t id = round * 100000 + i;
    const std::vector<int32_t> tokens = Prompt(id, CrashChunks(id) * kChunkTokens);
    const std::vector<int32_t> src = Blocks((i % kCrashWindow) * kCrashMaxChunks * kBpc, CrashChunks(id) * kBpc);
    FillPrompt(engine, KeysOf(Spec(), tokens), src);
    Result<Ticket> t = (*store)->Save(*ns, tokens, src);
    if (!t.ok()) {
      send({CrashRecord::kFailed, id, 0, static_cast<uint32_t>(t.status().code())});
      continue;
    }
    window.push_back({id, std::move(*t)});
  }
  while (!window.empty()) retire();
  send({CrashRecord::kDone, 0, 0, 0});
  _exit(0);  // no Close, no atexit handlers: as abrupt as the kill would have been
}

// Appends the whole records that arrive on fd until `deadline` (until EOF without one),
// or until `out` holds `enough` records. Returns false at EOF.
bool ReadRecords(int fd, std::vector<CrashRecord>* out, std::string* partial,
                 std::optional<std::chrono::steady_clock::time_point> deadline, size_t enough = SIZE_MAX) {
  while (out->size() < enough) {
    int timeout_ms = -1;
    if (deadline) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return true;
      timeout_ms = static_cast<int>(left.count());
    }
    pollfd pfd{fd, POLLIN, 0};
    const int r = poll(&pfd, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) return true;  // deadline
    char buf[4096];
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    partial->append(buf, static_cast<size_t>(n));
    size_t used = 0;
    for (; used + sizeof(CrashRecord) <= partial->size(); used += sizeof(CrashRecord)) {
      CrashRecord rec;
      std::memcpy(&rec, partial->data() + used, sizeof rec);
      out->push_back(rec);
    }
    partial->erase(0, used);
  }
  return true;
}

TEST(NvmeStoreCrash, CrashRecovery) {
  if (const char* arg = std::getenv(kCrashChildEnv)) RunCrashWriter(arg);

  TempDir dir;
  ASSERT_TRUE(dir.ok()) << "mkdtemp: " << std::strerror(errno);
  if (IsTmpfs(dir.path())) {
    GTEST_SKIP() << dir.path() << " is on tmpfs, which has no O_DIRECT; set KVTIER_TEST_DIR to a block-backed directory";
  }
  std::string exe(4096, '\0');
  const ssize_t exe_len = readlink("/proc/self/exe", exe.data(), exe.size());
  ASSERT_GT(exe_len, 0) << std::strerror(errno);
  exe.resize(static_cast<size_t>(exe_len));
  // The writer's environment: ours without gtest's (no sharding or filters), plus its task.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e)
    if (std::strncmp(*e, "GTEST_", 6) != 0 && std::strncmp(*e, kCrashChildEnv, std::strlen(kCrashChildEnv)) != 0)
      env_strings.push_back(*e);
  const std::string filter = "--gtest_filter=NvmeStoreCrash.CrashRecovery";

  std::mt19937_64 rng(20240611);
  std::map<uint32_t, uint32_t> acked;  // prompt id -> chunks acknowledged as durable
  uint64_t acked_chunks = 0;
  uint32_t rounds_with_in_flight_loads = 0, rounds_cut_short = 0;
  for (uint32_t round = 1; round <= kCrashRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    // Fork first, before this process opens anything this round.
    int fds[2];
    ASSERT_EQ(pipe(fds), 0) << std::strerror(errno);
    std::vector<std::string> envs = env_strings;
    envs.push_back(std::string(kCrashChildEnv) + "=" + dir.path() + "|" + std::to_string(round) + "|" +
                   std::to_string(fds[1]));
    std::vector<char*> envp;
    for (std::string& s : envs) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string arg0 = exe, arg1 = filter;
    std::vector<char*> argv = {arg0.data(), arg1.data(), nullptr};
    const pid_t pid = fork();
    ASSERT_GE(pid, 0) << std::strerror(errno);
    if (pid == 0) {  // only async-signal-safe calls until execve
      close(fds[0]);
      const int devnull = open("/dev/null", O_WRONLY);
      if (devnull >= 0) dup2(devnull, STDOUT_FILENO);  // gtest's banner; stderr stays
      execve(exe.c_str(), argv.data(), envp.data());
      _exit(127);
    }
    close(fds[1]);

    std::vector<CrashRecord> records;
    std::string partial;
    // A sanitized writer takes a while to start and open the store.
    const auto ready_by = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    bool open = true;
    open = ReadRecords(fds[0], &records, &partial, ready_by, /*enough=*/1);
    const bool ready = !records.empty() && records[0].kind == CrashRecord::kReady;
    const uint32_t kill_ms = 10 + static_cast<uint32_t>(rng() % 141);
    if (ready && open)
      open = ReadRecords(fds[0], &records, &partial,
                         std::chrono::steady_clock::now() + std::chrono::milliseconds(kill_ms));
    kill(pid, SIGKILL);
    int wstatus = 0;
    ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
    while (open) open = ReadRecords(fds[0], &records, &partial, std::nullopt);  // acks sent before it died count
    close(fds[0]);
    ASSERT_TRUE(ready) << "the writer did not start (see its stderr above); wait status " << wstatus;
    EXPECT_TRUE(WIFSIGNALED(wstatus) || (WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0)) << wstatus;

    uint32_t round_acked = 0, failed = 0, next_index = 0;
    uint64_t round_chunks = 0;
    bool done = false;
    for (const CrashRecord& r : records) {
      if (r.kind == CrashRecord::kDone) done = true;
      if (r.kind == CrashRecord::kFailed) ++failed;
      if (r.kind != CrashRecord::kAck) continue;
      EXPECT_EQ(r.chunks_done, CrashChunks(r.id)) << r.id;
      acked[r.id] = r.chunks_done;
      ++round_acked;
      round_chunks += r.chunks_done;
      next_index = std::max(next_index, r.id - round * 100000 + 1);
    }
    EXPECT_EQ(failed, 0u) << "saves failed without any fault";
    acked_chunks += round_chunks;
    if (!done) ++rounds_cut_short;

    // Recover and check.
    Client c;
    OPEN_OR_FAIL(store, CrashConfig(dir.path()), &c);
    const StoreStats st = store->Stats();
    EXPECT_GE(st.recovered_chunks, acked_chunks);
    EXPECT_EQ(st.nvme_dropped_records, 0u) << "a crash left a record that fails its own checks";
    EXPECT_EQ(st.nvme_chunks, st.recovered_chunks);
    // Every acknowledged prompt of every round is indexed; this round's, a sample of the
    // earlier ones, and in the last round all of them load bit-exact.
    uint32_t lost = 0, loaded = 0;
    std::vector<uint32_t> earlier;
    for (const auto& [id, chunks] : acked) {
      const LookupResult r = c.Lookup(id, CrashChunks(id));
      if (r.matched_chunks != chunks) ++lost;
      EXPECT_EQ(r.matched_chunks, chunks) << "acknowledged prompt " << id << " lost";
      for (TierId t : r.chunk_tiers) EXPECT_EQ(t, TierId::kNvme);
      if (id / 100000 == round || round == kCrashRounds) {
        EXPECT_EQ(c.Load(id, CrashChunks(id)).chunks, chunks) << "acknowledged prompt " << id;
        ++loaded;
      } else {
        earlier.push_back(id);
      }
    }
    std::shuffle(earlier.begin(), earlier.end(), rng);
    earlier.resize(std::min<size_t>(earlier.size(), kCrashSample));
    for (uint32_t id : earlier) {
      EXPECT_EQ(c.Load(id, CrashChunks(id)).chunks, acked[id]) << "acknowledged prompt " << id;
      ++loaded;
    }
    // What was in flight (or finished but not yet reported): a miss or exact bytes.
    uint32_t unacked = 0, unacked_chunks = 0;
    for (uint32_t i = next_index; i < std::min(kCrashMaxPrompts, next_index + 2 * kCrashWindow); ++i) {
      const uint32_t id = round * 100000 + i;
      ++unacked;
      unacked_chunks += c.Load(id, CrashChunks(id)).chunks;
    }
    if (unacked_chunks > 0) ++rounds_with_in_flight_loads;
    const StoreStats after = store->Stats();
    EXPECT_EQ(after.nvme_corrupt_chunks, 0u) << "a recovered record pointed at incomplete data";
    std::printf(
        "crash round %2u: killed after %3u ms%s, acked %3u prompts (%3llu chunks) this round, "
        "%4zu (%5llu chunks) in all; recovered %5llu chunks; loaded %4u acked prompts; "
        "%u unacked prompts: %u chunks loaded\n",
        round, kill_ms, done ? " (writer had finished)" : "", round_acked,
        static_cast<unsigned long long>(round_chunks), acked.size(), static_cast<unsigned long long>(acked_chunks),
        static_cast<unsigned long long>(st.recovered_chunks), loaded, unacked, unacked_chunks);
    ASSERT_EQ(lost, 0u);
    store.reset();  // closed before the next writer starts
  }
  std::printf("crash: %u of %u rounds killed the writer mid-stream; %u rounds recovered chunks of unacked saves\n",
              rounds_cut_short, kCrashRounds, rounds_with_in_flight_loads);
  EXPECT_GE(acked.size(), kCrashRounds);          // the writers made progress
  EXPECT_GT(rounds_cut_short, kCrashRounds / 2);  // and were killed in the middle of it
}

}  // namespace
}  // namespace kvtier
