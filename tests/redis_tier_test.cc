// RedisTier against real redis-server processes (tests/redis_harness.h): standalone and
// cluster round trips, corrupt and foreign values, AUTH and ACL users, TTL, slot migration
// (ASK and MOVED), a master killed under load, and a hanging then dead standalone server
// behind the circuit breaker.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "tests/redis_harness.h"
#include "tiers/chunk_format.h"
#include "tiers/redis/redis_tier.h"

namespace kvtier {
namespace {

using std::chrono::milliseconds;
using test::RedisClusterHarness;
using test::RedisServer;
using test::TempDir;

#define SKIP_WITHOUT_REDIS()                                        \
  do {                                                              \
    std::string why = test::RedisServerMissing();                   \
    if (!why.empty()) GTEST_SKIP() << why;                          \
  } while (0)

NamespaceId TestNs(uint64_t salt = 1) {
  NamespaceId ns;
  ns.lo = 0x1234567890abcdefull ^ salt;
  ns.hi = 0xfeedfacecafebeefull;
  return ns;
}

ChunkKey KeyOf(uint64_t i) {
  ChunkKey k;
  k.lo = i * 0x9E3779B97F4A7C15ull + 1;
  k.hi = ~i;
  return k;
}

// bf16 payload of `layers` x 2 x tokens x heads x dim.
KvShape ShapeOf(uint32_t layers, uint32_t tokens = 16, uint32_t heads = 8, uint32_t dim = 128) {
  KvShape s;
  s.num_layers = layers;
  s.num_kv_heads = heads;
  s.head_dim = dim;
  s.dtype = DType::kBFloat16;
  s.chunk_tokens = tokens;
  return s;
}

// KV-like bytes: bf16 of N(0,1) values (what LZ4 sees in practice), seeded by `seed`.
std::vector<uint8_t> KvBytes(size_t n, uint64_t seed) {
  std::vector<uint8_t> out(n);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (size_t i = 0; i + 1 < n; i += 2) {
    float f = dist(rng);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    uint16_t b = static_cast<uint16_t>(bits >> 16);
    out[i] = static_cast<uint8_t>(b);
    out[i + 1] = static_cast<uint8_t>(b >> 8);
  }
  return out;
}

struct Chunk {
  NamespaceId ns;
  ChunkKey key;
  KvShape shape;
  std::vector<uint8_t> payload;
  std::array<uint8_t, kChunkHeaderBytes> header{};
  // `padded`: the second half of the payload is zeros (a chunk padded past its last token),
  // which LZ4 shrinks; bf16 noise alone it does not.
  Chunk(const NamespaceId& n, const ChunkKey& k, const KvShape& s, uint64_t seed, bool padded = false)
      : ns(n), key(k), shape(s) {
    payload = KvBytes(ChunkPayloadBytes(s), seed);
    if (padded) std::fill(payload.begin() + static_cast<ptrdiff_t>(payload.size() / 2), payload.end(), 0);
    EncodeChunkHeader(MakeChunkHeader(ns, key, shape), header.data());
  }
  RedisPutItem Put() const {
    RedisPutItem it;
    it.ns = ns;
    it.key = key;
    it.header = header;
    it.payload = payload;
    return it;
  }
  ChunkIdentity Id() const { return ChunkIdentity{ns, key, shape}; }
};

RedisTierOptions StandaloneOptions(const RedisServer& s) {
  RedisTierOptions o;
  o.seeds = {s.addr()};
  o.op_timeout = milliseconds(5000);
  o.connect_timeout = milliseconds(2000);
  return o;
}

std::unique_ptr<RedisTier> OpenTier(const RedisTierOptions& o) {
  Result<std::unique_ptr<RedisTier>> t = RedisTier::Open(o);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? std::move(*t) : nullptr;
}

// One get per chunk, each into its own buffer in *dst (filled with 0xAB first).
std::vector<RedisGetItem> GetsInto(const std::vector<Chunk>& chunks, std::vector<std::vector<uint8_t>>* dst) {
  dst->assign(chunks.size(), {});
  std::vector<RedisGetItem> gets(chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) {
    (*dst)[i].assign(chunks[i].payload.size(), 0xAB);
    gets[i].id = chunks[i].Id();
    gets[i].dst = (*dst)[i];
  }
  return gets;
}

// Shortens the value under `key` by `bytes` on the server.
void CutShort(const RedisServer& server, const std::string& key, size_t bytes) {
  server.Cli({"EVAL", "local v = redis.call('GET', KEYS[1]); return redis.call('SET', KEYS[1], string.sub(v, 1, #v - " +
                          std::to_string(bytes) + "))",
              "1", key});
}

// Puts the chunks, gets them back, checks every byte.
void RoundTrip(RedisTier* tier, const std::vector<Chunk>& chunks) {
  std::vector<RedisPutItem> puts;
  for (const Chunk& c : chunks) puts.push_back(c.Put());
  Status st = tier->Put(puts);
  ASSERT_TRUE(st.ok()) << st.ToString();
  std::vector<std::vector<uint8_t>> dst;
  std::vector<RedisGetItem> gets = GetsInto(chunks, &dst);
  tier->Get(gets);
  for (size_t i = 0; i < chunks.size(); ++i) {
    ASSERT_EQ(gets[i].result, RedisItemResult::kOk) << i << ": " << gets[i].status.ToString();
    ASSERT_TRUE(dst[i] == chunks[i].payload) << "chunk " << i << " differs";
  }
  std::vector<RedisExistsItem> ex;
  for (const Chunk& c : chunks) ex.push_back({c.ns, c.key, false});
  ex.push_back({chunks[0].ns, KeyOf(999999), true});
  tier->Exists(ex);
  for (size_t i = 0; i < chunks.size(); ++i) EXPECT_TRUE(ex[i].exists) << i;
  EXPECT_FALSE(ex.back().exists);
}

std::vector<Chunk> SizedChunks(uint64_t seed, uint64_t first_key, bool padded = false) {
  // 16 KiB, 256 KiB, 2 MiB, 8 MiB payloads, and a tiny odd shape.
  std::vector<Chunk> out;
  std::vector<KvShape> shapes = {ShapeOf(1, 16, 2, 128), ShapeOf(4), ShapeOf(32), ShapeOf(128), ShapeOf(3, 5, 1, 7)};
  for (size_t i = 0; i < shapes.size(); ++i) out.emplace_back(TestNs(), KeyOf(first_key + i), shapes[i], seed + i, padded);
  return out;
}

TEST(RedisTierStandalone, RoundTripBitExactWithAndWithoutLz4) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisServer server;
  ASSERT_TRUE(server.Start(dir.path()));
  for (RedisCompression comp : {RedisCompression::kNone, RedisCompression::kLz4}) {
    RedisTierOptions o = StandaloneOptions(server);
    o.compression = comp;
    o.max_batch_values = 3;  // several pipelined rounds per call
    auto tier = OpenTier(o);
    ASSERT_TRUE(tier);
    uint64_t base = comp == RedisCompression::kNone ? 100 : 200;
    RoundTrip(tier.get(), SizedChunks(base, base, /*padded=*/true));
    RedisTierStats s = tier->Stats();
    EXPECT_EQ(s.hits, 5u);
    EXPECT_EQ(s.corrupt, 0u);
    const uint64_t full = kChunkHeaderBytes + ChunkPayloadBytes(ShapeOf(32));
    std::string stored = server.Cli({"STRLEN", tier->KeyFor(TestNs(), KeyOf(base + 2))});
    if (comp == RedisCompression::kLz4) {
      EXPECT_GT(s.compression_ratio, 1.5) << "half-zero payloads shrink";
      EXPECT_LT(std::stoull(stored), full * 3 / 4);
      // bf16 noise does not shrink under LZ4: stored raw (codec none), and still round-trips.
      RoundTrip(tier.get(), {Chunk(TestNs(), KeyOf(base + 50), ShapeOf(32), base + 50)});
      EXPECT_EQ(std::stoull(server.Cli({"STRLEN", tier->KeyFor(TestNs(), KeyOf(base + 50))})), full);
    } else {
      EXPECT_DOUBLE_EQ(s.compression_ratio, 1.0);
      EXPECT_EQ(std::stoull(stored), full);
    }
  }
  // The in-flight window at its extremes: one command at a time, and a whole batch at once.
  for (uint64_t window : {uint64_t{1}, uint64_t{0}}) {
    RedisTierOptions o = StandaloneOptions(server);
    o.max_in_flight_bytes = window;
    auto tier = OpenTier(o);
    ASSERT_TRUE(tier);
    RoundTrip(tier.get(), SizedChunks(300 + window, 300 + 10 * window));
  }
  // Another tier object (another process, in effect) finds the chunks by key alone.
  auto other = OpenTier(StandaloneOptions(server));
  Chunk c(TestNs(), KeyOf(202), ShapeOf(32), 202, /*padded=*/true);  // saved with LZ4 above
  std::vector<uint8_t> dst(c.payload.size());
  RedisGetItem g;
  g.id = c.Id();
  g.dst = dst;
  other->Get(std::span<RedisGetItem>(&g, 1));
  ASSERT_EQ(g.result, RedisItemResult::kOk) << g.status.ToString();
  EXPECT_TRUE(dst == c.payload);
}

TEST(RedisTierStandalone, MissExistsRemoveAndInvalidItems) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisServer server;
  ASSERT_TRUE(server.Start(dir.path()));
  auto tier = OpenTier(StandaloneOptions(server));
  ASSERT_TRUE(tier);
  Chunk c(TestNs(), KeyOf(1), ShapeOf(2), 1);
  std::vector<uint8_t> dst(c.payload.size());
  RedisGetItem g;
  g.id = c.Id();
  g.dst = dst;
  tier->Get(std::span<RedisGetItem>(&g, 1));
  EXPECT_EQ(g.result, RedisItemResult::kNotFound);
  RedisPutItem p = c.Put();
  ASSERT_TRUE(tier->Put(std::span<RedisPutItem>(&p, 1)).ok());
  ASSERT_TRUE(tier->Remove(c.ns, c.key).ok());
  RedisExistsItem e{c.ns, c.key, true};
  tier->Exists(std::span<RedisExistsItem>(&e, 1));
  EXPECT_FALSE(e.exists);
  // Malformed items are refused without touching Redis.
  RedisPutItem bad = c.Put();
  bad.key = KeyOf(2);  // header names KeyOf(1)
  EXPECT_FALSE(tier->Put(std::span<RedisPutItem>(&bad, 1)).ok());
  EXPECT_EQ(bad.result, RedisItemResult::kInvalid);
  std::vector<uint8_t> small(10);
  RedisGetItem gs;
  gs.id = c.Id();
  gs.dst = small;
  tier->Get(std::span<RedisGetItem>(&gs, 1));
  EXPECT_EQ(gs.result, RedisItemResult::kInvalid);
}

TEST(RedisTierStandalone, CorruptValueIsAMissAndIsDeleted) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisServer server;
  ASSERT_TRUE(server.Start(dir.path()));
  for (RedisCompression comp : {RedisCompression::kNone, RedisCompression::kLz4}) {
    RedisTierOptions o = StandaloneOptions(server);
    o.compression = comp;
    auto tier = OpenTier(o);
    ASSERT_TRUE(tier);
    // Payload byte, header byte, truncation.
    std::vector<Chunk> chunks;
    for (uint64_t i = 0; i < 3; ++i) chunks.emplace_back(TestNs(), KeyOf(10 + i), ShapeOf(4), 10 + i, /*padded=*/true);
    std::vector<RedisPutItem> puts;
    for (const Chunk& c : chunks) puts.push_back(c.Put());
    ASSERT_TRUE(tier->Put(puts).ok());
    std::string k0 = tier->KeyFor(chunks[0].ns, chunks[0].key);
    std::string k1 = tier->KeyFor(chunks[1].ns, chunks[1].key);
    std::string k2 = tier->KeyFor(chunks[2].ns, chunks[2].key);
    EXPECT_EQ(server.Cli({"SETRANGE", k0, "1000", "XYZW"}).empty(), false);  // a payload byte
    server.Cli({"SETRANGE", k1, "30", "Q"});     // a header byte (the chunk key)
    server.Cli({"SET", k2, "short value"});      // not a chunk at all
    std::vector<std::vector<uint8_t>> dst(3);
    std::vector<RedisGetItem> gets(3);
    for (size_t i = 0; i < 3; ++i) {
      dst[i].resize(chunks[i].payload.size());
      gets[i].id = chunks[i].Id();
      gets[i].dst = dst[i];
    }
    tier->Get(gets);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(gets[i].result, RedisItemResult::kCorruption) << i << " " << gets[i].status.ToString();
      EXPECT_TRUE(gets[i].status.IsCorruption());
    }
    EXPECT_EQ(tier->Stats().corrupt, 3u);
    for (const std::string& k : {k0, k1, k2}) EXPECT_EQ(server.Cli({"EXISTS", k}), "0") << k << " not deleted";
  }
  // Something that is not a string under a chunk's key: a miss, deleted too.
  auto tier = OpenTier(StandaloneOptions(server));
  Chunk c(TestNs(), KeyOf(20), ShapeOf(4), 20);
  std::string k = tier->KeyFor(c.ns, c.key);
  server.Cli({"LPUSH", k, "x"});
  std::vector<uint8_t> dst(c.payload.size());
  RedisGetItem g;
  g.id = c.Id();
  g.dst = dst;
  tier->Get(std::span<RedisGetItem>(&g, 1));
  EXPECT_EQ(g.result, RedisItemResult::kCorruption) << g.status.ToString();
  EXPECT_EQ(server.Cli({"EXISTS", k}), "0");
}

// Large uncompressed values are read from the socket straight into the destinations; in
// one pipeline they sit between replies the reader parses (a nil, a small value, values of
// the wrong length), and a corrupt one is still a miss.
TEST(RedisTierStandalone, DirectAndBufferedRepliesMixInOnePipeline) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisServer server;
  ASSERT_TRUE(server.Start(dir.path()));
  RedisTierOptions o = StandaloneOptions(server);
  o.get_piece_bytes = 0;  // every value with one GET (RangedReads... below reads in pieces)
  auto tier = OpenTier(o);
  ASSERT_TRUE(tier);
  // 0: 512 KiB, 1: absent, 2: 16 KiB, 3: 512 KiB with a payload byte changed, 4: 512 KiB
  // cut short (still over the direct threshold), 5: 2 MiB, 6: 256 KiB.
  std::vector<Chunk> c;
  const std::vector<KvShape> shapes = {ShapeOf(8), ShapeOf(8), ShapeOf(1, 16, 2, 128), ShapeOf(8),
                                       ShapeOf(8), ShapeOf(32), ShapeOf(4)};
  for (size_t i = 0; i < shapes.size(); ++i) c.emplace_back(TestNs(), KeyOf(300 + i), shapes[i], 300 + i);
  std::vector<RedisPutItem> puts;
  for (size_t i = 0; i < c.size(); ++i)
    if (i != 1) puts.push_back(c[i].Put());
  ASSERT_TRUE(tier->Put(puts).ok());
  server.Cli({"SETRANGE", tier->KeyFor(c[3].ns, c[3].key), std::to_string(kChunkHeaderBytes + 70000), "Z"});
  const std::string k4 = tier->KeyFor(c[4].ns, c[4].key);
  CutShort(server, k4, 4096);
  ASSERT_EQ(std::stoull(server.Cli({"STRLEN", k4})), kChunkHeaderBytes + c[4].payload.size() - 4096);
  const uint64_t direct_before = tier->Stats().client.direct_replies;

  std::vector<std::vector<uint8_t>> dst;
  std::vector<RedisGetItem> gets = GetsInto(c, &dst);
  tier->Get(gets);
  const RedisItemResult want[] = {RedisItemResult::kOk,         RedisItemResult::kNotFound, RedisItemResult::kOk,
                                  RedisItemResult::kCorruption, RedisItemResult::kCorruption, RedisItemResult::kOk,
                                  RedisItemResult::kOk};
  for (size_t i = 0; i < c.size(); ++i) {
    EXPECT_EQ(gets[i].result, want[i]) << i << ": " << gets[i].status.ToString();
    if (want[i] == RedisItemResult::kOk) {
      EXPECT_TRUE(dst[i] == c[i].payload) << "chunk " << i << " differs";
    }
  }
  EXPECT_NE(gets[3].status.message().find("checksum"), std::string::npos) << gets[3].status.ToString();
  // 0, 3, 5 and 6 came straight from the socket; 2 (small) and 4 (wrong length) through the reader.
  EXPECT_EQ(tier->Stats().client.direct_replies - direct_before, 4u);
  // The connection is in step afterwards: the same chunks again, one pipeline.
  std::vector<RedisGetItem> again = {gets[0], gets[5], gets[2]};
  tier->Get(again);
  for (const RedisGetItem& g : again) EXPECT_EQ(g.result, RedisItemResult::kOk) << g.status.ToString();
  EXPECT_TRUE(dst[0] == c[0].payload && dst[5] == c[5].payload && dst[2] == c[2].payload);
}

// A large uncompressed value is read as GETRANGEs of get_piece_bytes. Values whose pieces
// do not add up (LZ4, cut short, longer) or do not check out are read again with one GET,
// which decides; an absent key is a miss without a second read. Pieces and GETs share a
// pipeline. Pieces under 64 KiB are refused.
TEST(RedisTierStandalone, RangedReadsRoundTripAndFallBackToOneGet) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisServer server;
  ASSERT_TRUE(server.Start(dir.path()));
  RedisTierOptions o = StandaloneOptions(server);
  o.get_piece_bytes = 64 << 10;  // 512 KiB values: 8 pieces and a 128-byte one
  auto tier = OpenTier(o);
  ASSERT_TRUE(tier);
  RedisTierOptions lz = StandaloneOptions(server);
  lz.compression = RedisCompression::kLz4;
  auto lz_tier = OpenTier(lz);
  ASSERT_TRUE(lz_tier);
  // 0: 512 KiB, 1: absent, 2: 16 KiB (one GET), 3: 512 KiB with a payload byte changed,
  // 4: 512 KiB cut short, 5: 512 KiB stored with LZ4 by another tier, 6: a list, 7: 2 MiB,
  // 8: 512 KiB with bytes appended after it.
  std::vector<Chunk> c;
  const std::vector<KvShape> shapes = {ShapeOf(8), ShapeOf(8), ShapeOf(1, 16, 2, 128), ShapeOf(8),
                                       ShapeOf(8), ShapeOf(8), ShapeOf(8), ShapeOf(32), ShapeOf(8)};
  for (size_t i = 0; i < shapes.size(); ++i)
    c.emplace_back(TestNs(), KeyOf(400 + i), shapes[i], 400 + i, /*padded=*/i == 5);
  std::vector<RedisPutItem> puts;
  for (size_t i : {0, 2, 3, 4, 7, 8}) puts.push_back(c[i].Put());
  ASSERT_TRUE(tier->Put(puts).ok());
  std::vector<RedisPutItem> lz_put = {c[5].Put()};
  ASSERT_TRUE(lz_tier->Put(lz_put).ok());
  ASSERT_LT(lz_tier->Stats().stored_bytes_saved, c[5].payload.size());  // it is compressed
  std::vector<std::string> k;
  for (const Chunk& x : c) k.push_back(tier->KeyFor(x.ns, x.key));
  server.Cli({"SETRANGE", k[3], std::to_string(kChunkHeaderBytes + 300000), "Z"});
  CutShort(server, k[4], 4096);
  server.Cli({"LPUSH", k[6], "x"});
  server.Cli({"APPEND", k[8], "tail"});

  std::vector<std::vector<uint8_t>> dst;
  std::vector<RedisGetItem> gets = GetsInto(c, &dst);
  std::vector<int> verified(c.size(), 0);
  // What on_arrived said per item; for the chunks stored intact, the bytes it named must be
  // the chunk's by then.
  std::vector<std::vector<uint64_t>> arrived(c.size());
  std::vector<int> early_wrong(c.size(), 0);
  const RedisTierStats before = tier->Stats();
  tier->Get(
      gets, {}, [&](size_t i) { ++verified[i]; },
      [&](size_t i, uint64_t n) {
        arrived[i].push_back(n);
        if ((i == 0 || i == 7) && std::memcmp(dst[i].data(), c[i].payload.data(), n) != 0) ++early_wrong[i];
      });
  const RedisItemResult want[] = {RedisItemResult::kOk,         RedisItemResult::kNotFound, RedisItemResult::kOk,
                                  RedisItemResult::kCorruption, RedisItemResult::kCorruption, RedisItemResult::kOk,
                                  RedisItemResult::kCorruption, RedisItemResult::kOk,  RedisItemResult::kCorruption};
  for (size_t i = 0; i < c.size(); ++i) {
    EXPECT_EQ(gets[i].result, want[i]) << i << ": " << gets[i].status.ToString();
    EXPECT_EQ(verified[i], want[i] == RedisItemResult::kOk ? 1 : 0) << i;
    if (want[i] == RedisItemResult::kOk) {
      EXPECT_TRUE(dst[i] == c[i].payload) << "chunk " << i << " differs";
    }
  }
  EXPECT_NE(gets[3].status.message().find("checksum"), std::string::npos) << gets[3].status.ToString();
  // on_arrived: growing prefixes of the values read in pieces, each piece in place; a 0 before
  // a value is read again whole; nothing for values read with one GET, absent or not strings.
  for (size_t i = 0; i < c.size(); ++i) {
    const std::vector<uint64_t>& a = arrived[i];
    EXPECT_EQ(early_wrong[i], 0) << i;
    for (size_t j = 1; j < a.size(); ++j)
      EXPECT_TRUE(a[j] == 0 || a[j] > a[j - 1]) << i << " reported a prefix that did not grow";
    for (uint64_t n : a) EXPECT_LE(n, c[i].payload.size()) << i;
  }
  for (size_t i : {0, 7}) {
    ASSERT_FALSE(arrived[i].empty()) << i;
    EXPECT_EQ(arrived[i].back(), c[i].payload.size()) << i;
    EXPECT_EQ(std::count(arrived[i].begin(), arrived[i].end(), 0u), 0) << i;
    // A report per piece: the 128-byte header takes the front of the first.
    EXPECT_EQ(arrived[i].size(), (kChunkHeaderBytes + c[i].payload.size() + o.get_piece_bytes - 1) / o.get_piece_bytes)
        << i;
  }
  for (size_t i : {1, 2, 6, 8}) EXPECT_TRUE(arrived[i].empty()) << i << ": " << arrived[i].size() << " reports";
  for (size_t i : {3, 4}) {  // reported, then found wrong and read again
    ASSERT_GE(arrived[i].size(), 2u) << i;
    EXPECT_EQ(arrived[i].back(), 0u) << i;
  }
  EXPECT_EQ(arrived[3].end()[-2], c[3].payload.size());  // every piece came; the checksum failed
  if (!arrived[5].empty()) {
    EXPECT_EQ(arrived[5].back(), 0u);  // LZ4: its first pieces may be full
  }
  const RedisTierStats after = tier->Stats();
  EXPECT_EQ(after.piece_rereads - before.piece_rereads, 4u);  // 3, 4, 5 and 8 (the list fails at once)
  EXPECT_EQ(after.hits - before.hits, 4u);
  EXPECT_EQ(after.misses - before.misses, 1u);
  EXPECT_EQ(after.corrupt - before.corrupt, 4u);
  for (size_t i : {3, 4, 6, 8}) EXPECT_EQ(server.Cli({"EXISTS", k[i]}), "0") << i << " not deleted";
  for (size_t i : {0, 5, 7}) EXPECT_EQ(server.Cli({"EXISTS", k[i]}), "1") << i;
  // The connection is in step afterwards.
  std::vector<RedisGetItem> again = {gets[7], gets[0], gets[2]};
  tier->Get(again);
  for (const RedisGetItem& g : again) EXPECT_EQ(g.result, RedisItemResult::kOk) << g.status.ToString();
  EXPECT_TRUE(dst[0] == c[0].payload && dst[7] == c[7].payload && dst[2] == c[2].payload);
  RedisTierOptions tiny = StandaloneOptions(server);
  tiny.get_piece_bytes = 4096;
  Result<std::unique_ptr<RedisTier>> refused = RedisTier::Open(tiny);
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(refused.status().IsInvalidArgument()) << refused.status().ToString();
}

// A value overwritten while it is read in pieces may come back as pieces of two versions;
// that must never be served: the checksum fails and one GET reads a whole version.
TEST(RedisTierStandalone, RangedReadOfAValueOverwrittenMeanwhileIsNeverMixed) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisServer server;
  ASSERT_TRUE(server.Start(dir.path()));
  RedisTierOptions o = StandaloneOptions(server);
  o.get_piece_bytes = 64 << 10;
  o.max_in_flight_bytes = 1;  // one piece per round trip: the writer's SETs fall between them
  auto reader = OpenTier(o);
  auto writer = OpenTier(StandaloneOptions(server));
  ASSERT_TRUE(reader && writer);
  // Two versions of one chunk (same key and shape, different bytes), 4 MiB each.
  const Chunk a(TestNs(), KeyOf(500), ShapeOf(64), 1), b(TestNs(), KeyOf(500), ShapeOf(64), 2);
  ASSERT_FALSE(a.payload == b.payload);
  std::vector<RedisPutItem> first = {a.Put()};
  ASSERT_TRUE(writer->Put(first).ok());
  std::atomic<bool> stop{false};
  std::thread w([&] {
    for (uint64_t n = 0; !stop.load(); ++n) {
      std::vector<RedisPutItem> p = {(n % 2 == 0 ? b : a).Put()};
      (void)writer->Put(p);
    }
  });
  std::vector<uint8_t> dst(a.payload.size());
  int mixed = 0, not_ok = 0, taken_back = 0, out_of_step = 0;
  constexpr int kReads = 50;
  for (int n = 0; n < kReads; ++n) {
    RedisGetItem g;
    g.id = a.Id();
    g.dst = dst;
    // A read that met a write reported the torn bytes as they came, then took them back (0)
    // before reading the value whole; one that did not ends with the whole payload.
    std::vector<uint64_t> arrived;
    reader->Get(std::span<RedisGetItem>(&g, 1), {}, nullptr, [&](size_t, uint64_t k) { arrived.push_back(k); });
    if (g.result != RedisItemResult::kOk) ++not_ok;
    else if (dst != a.payload && dst != b.payload) ++mixed;
    if (!arrived.empty() && arrived.back() == 0) ++taken_back;
    else if (arrived.empty() || arrived.back() != dst.size()) ++out_of_step;
  }
  stop = true;
  w.join();
  EXPECT_EQ(mixed, 0);
  EXPECT_EQ(not_ok, 0);
  // With one piece per round trip and a writer that never pauses, most reads meet a write
  // between their pieces (90-93 of 100 here): the path above was taken.
  const uint64_t rereads = reader->Stats().piece_rereads;
  std::printf("reads read again whole: %llu of %d\n", static_cast<unsigned long long>(rereads), kReads);
  EXPECT_GT(rereads, 0u);
  EXPECT_EQ(static_cast<uint64_t>(taken_back), rereads);
  EXPECT_EQ(out_of_step, 0);
}

TEST(RedisTierStandalone, ValueUnderAnotherKeyIsAMiss) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisServer server;
  ASSERT_TRUE(server.Start(dir.path()));
  auto tier = OpenTier(StandaloneOptions(server));
  ASSERT_TRUE(tier);
  Chunk a(TestNs(), KeyOf(1), ShapeOf(2), 1);
  Chunk b(TestNs(), KeyOf(2), ShapeOf(2), 2);
  Chunk other_ns(TestNs(7), KeyOf(1), ShapeOf(2), 3);
  RedisPutItem p = a.Put();
  ASSERT_TRUE(tier->Put(std::span<RedisPutItem>(&p, 1)).ok());
  // A stale/colliding value: chunk a's bytes under chunk b's key and under another namespace.
  std::string ka = tier->KeyFor(a.ns, a.key);
  EXPECT_EQ(server.Cli({"COPY", ka, tier->KeyFor(b.ns, b.key)}), "1");
  EXPECT_EQ(server.Cli({"COPY", ka, tier->KeyFor(other_ns.ns, other_ns.key)}), "1");
  for (const Chunk* c : {&b, &other_ns}) {
    std::vector<uint8_t> dst(c->payload.size());
    RedisGetItem g;
    g.id = c->Id();
    g.dst = dst;
    tier->Get(std::span<RedisGetItem>(&g, 1));
    EXPECT_EQ(g.result, RedisItemResult::kCorruption) << g.status.ToString();
    EXPECT_NE(g.status.message().find("identity"), std::string::npos) << g.status.ToString();
  }
  // A reader with another shape for the same key: also a miss.
  Chunk a_shape(TestNs(), KeyOf(1), ShapeOf(2, 16, 4, 256), 1);  // same bytes, other shape
  std::vector<uint8_t> dst(a_shape.payload.size());
  RedisGetItem g;
  g.id = a_shape.Id();
  g.dst = dst;
  tier->Get(std::span<RedisGetItem>(&g, 1));
  EXPECT_EQ(g.result, RedisItemResult::kCorruption) << g.status.ToString();
}

TEST(RedisTierStandalone, AuthWithPasswordAndAclUser) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisServer server;
  server.set_password("s3cret");
  ASSERT_TRUE(server.Start(dir.path(), {"--requirepass", "s3cret"}));
  ASSERT_EQ(server.Cli({"ACL", "SETUSER", "kvuser", "on", ">kvpass", "~kvt:*", "+@all"}), "OK");
  Chunk c(TestNs(), KeyOf(5), ShapeOf(2), 5);

  RedisTierOptions o = StandaloneOptions(server);
  o.password = "s3cret";
  auto tier = OpenTier(o);
  ASSERT_TRUE(tier);
  RoundTrip(tier.get(), {c});

  o.username = "kvuser";
  o.password = "kvpass";
  auto acl = OpenTier(o);
  ASSERT_TRUE(acl);
  RoundTrip(acl.get(), {c});

  for (auto [user, pass] : {std::pair<std::string, std::string>{"", "wrong"}, {"kvuser", "wrong"}, {"nobody", "kvpass"}}) {
    o.username = user;
    o.password = pass;
    Result<std::unique_ptr<RedisTier>> t = RedisTier::Open(o);
    ASSERT_FALSE(t.ok()) << user << "/" << pass;
    EXPECT_TRUE(t.status().IsInvalidArgument()) << t.status().ToString();
    EXPECT_NE(t.status().message().find("AUTH failed"), std::string::npos) << t.status().ToString();
    EXPECT_NE(t.status().message().find("WRONGPASS"), std::string::npos) << t.status().ToString();
  }
  // No password at all against a server that needs one: every call is refused, not hung.
  o.username.clear();
  o.password.clear();
  auto noauth = OpenTier(o);
  ASSERT_TRUE(noauth);
  std::vector<uint8_t> dst(c.payload.size());
  RedisGetItem g;
  g.id = c.Id();
  g.dst = dst;
  noauth->Get(std::span<RedisGetItem>(&g, 1));
  EXPECT_EQ(g.result, RedisItemResult::kUnavailable);
  EXPECT_NE(g.status.message().find("NOAUTH"), std::string::npos) << g.status.ToString();
}

TEST(RedisTierStandalone, TtlIsSet) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisServer server;
  ASSERT_TRUE(server.Start(dir.path()));
  RedisTierOptions o = StandaloneOptions(server);
  o.ttl_seconds = 120;
  auto tier = OpenTier(o);
  ASSERT_TRUE(tier);
  Chunk c(TestNs(), KeyOf(3), ShapeOf(1), 3);
  RedisPutItem p = c.Put();
  ASSERT_TRUE(tier->Put(std::span<RedisPutItem>(&p, 1)).ok());
  int ttl = std::stoi(server.Cli({"TTL", tier->KeyFor(c.ns, c.key)}));
  EXPECT_GT(ttl, 100);
  EXPECT_LE(ttl, 120);
  o.ttl_seconds = 0;
  auto no_ttl = OpenTier(o);
  ASSERT_TRUE(no_ttl->Put(std::span<RedisPutItem>(&p, 1)).ok());
  EXPECT_EQ(server.Cli({"TTL", tier->KeyFor(c.ns, c.key)}), "-1");
}

TEST(RedisTierStandalone, HangingThenDeadServerTripsTheBreakerWithinDeadlines) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisServer server;
  ASSERT_TRUE(server.Start(dir.path()));
  RedisTierOptions o = StandaloneOptions(server);
  o.op_timeout = milliseconds(300);
  o.connect_timeout = milliseconds(200);
  o.breaker.failure_threshold = 2;
  o.breaker.base_backoff = milliseconds(100);
  o.breaker.max_backoff = milliseconds(400);
  auto tier = OpenTier(o);
  ASSERT_TRUE(tier);
  // Generous slack for sanitizer builds on two cores; what matters is that no call waits
  // for Redis beyond its deadline.
  const auto slack = milliseconds(700);
  std::vector<Chunk> chunks;
  for (uint64_t i = 0; i < 8; ++i) chunks.emplace_back(TestNs(), KeyOf(40 + i), ShapeOf(8), 40 + i);
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, late{0}, hits{0}, calls{0};
  std::atomic<int64_t> worst_ms{0};
  auto worker = [&](int t) {
    std::vector<uint8_t> dst(chunks[0].payload.size());
    for (uint64_t n = 0; !stop.load(); ++n) {
      const Chunk& c = chunks[(n + t) % chunks.size()];
      auto t0 = RedisClock::now();
      if ((n + t) % 3 == 0) {
        RedisPutItem p = c.Put();
        if (!tier->Put(std::span<RedisPutItem>(&p, 1)).ok()) std::this_thread::sleep_for(milliseconds(2));
      } else {
        RedisGetItem g;
        g.id = c.Id();
        g.dst = dst;
        tier->Get(std::span<RedisGetItem>(&g, 1));
        if (g.result == RedisItemResult::kOk) {
          hits.fetch_add(1);
          if (dst != c.payload) wrong.fetch_add(1);
        } else if (g.result == RedisItemResult::kUnavailable) {
          std::this_thread::sleep_for(milliseconds(2));  // a real caller recomputes meanwhile
        }
      }
      auto ms = std::chrono::duration_cast<milliseconds>(RedisClock::now() - t0).count();
      int64_t prev = worst_ms.load();
      while (ms > prev && !worst_ms.compare_exchange_weak(prev, ms)) {
      }
      if (RedisClock::now() - t0 > o.op_timeout + slack) late.fetch_add(1);
      calls.fetch_add(1);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) threads.emplace_back(worker, t);
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_GT(hits.load(), 0);

  server.Signal(SIGSTOP);  // hangs: connections accept, nothing answers
  auto until = RedisClock::now() + std::chrono::seconds(10);
  while (tier->breaker_state() == BreakerState::kClosed && RedisClock::now() < until)
    std::this_thread::sleep_for(milliseconds(20));
  EXPECT_NE(tier->breaker_state(), BreakerState::kClosed);
  std::this_thread::sleep_for(milliseconds(800));  // half-open probes time out too
  RedisTierStats hung = tier->Stats();
  EXPECT_GE(hung.breaker.opens, 1u);
  EXPECT_GE(hung.breaker.timeouts, 1u);
  EXPECT_GT(hung.breaker.skipped_ops, 0u);

  server.Kill();  // SIGKILL while stopped: now connections are refused
  std::this_thread::sleep_for(milliseconds(600));
  RedisTierStats dead = tier->Stats();
  EXPECT_GE(dead.breaker.errors, 1u) << "refused connections count as errors";
  EXPECT_NE(tier->breaker_state(), BreakerState::kClosed);

  ASSERT_TRUE(server.Restart());
  until = RedisClock::now() + std::chrono::seconds(10);
  while (tier->breaker_state() != BreakerState::kClosed && RedisClock::now() < until)
    std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ(tier->breaker_state(), BreakerState::kClosed);
  int hits_before = hits.load();
  until = RedisClock::now() + std::chrono::seconds(10);
  while (hits.load() < hits_before + 5 && RedisClock::now() < until) std::this_thread::sleep_for(milliseconds(20));
  stop.store(true);
  for (auto& th : threads) th.join();
  EXPECT_GE(hits.load(), hits_before + 5) << "traffic succeeds again after the restart";
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(late.load(), 0) << "worst call took " << worst_ms.load() << " ms";
  RedisTierStats s = tier->Stats();
  EXPECT_GE(s.breaker.closes, 1u);
  EXPECT_GT(s.breaker.dropped_saves, 0u);
  EXPECT_GT(s.unavailable, 0u);
  std::printf("breaker: opens=%llu closes=%llu skipped=%llu dropped_saves=%llu errors=%llu timeouts=%llu calls=%d worst=%lld ms\n",
              (unsigned long long)s.breaker.opens, (unsigned long long)s.breaker.closes,
              (unsigned long long)s.breaker.skipped_ops, (unsigned long long)s.breaker.dropped_saves,
              (unsigned long long)s.breaker.errors, (unsigned long long)s.breaker.timeouts, calls.load(),
              (long long)worst_ms.load());
  // A down server gives Exists all-false quickly once the breaker is open.
}

TEST(RedisTierStandalone, DownServerAnswersExistsQuickly) {
  SKIP_WITHOUT_REDIS();
  RedisTierOptions o;
  int port = test::FreePort();
  o.seeds = {"127.0.0.1:" + std::to_string(port)};  // nothing listens there
  o.op_timeout = milliseconds(300);
  auto tier = OpenTier(o);
  ASSERT_TRUE(tier);
  std::vector<RedisExistsItem> ex(16);
  for (size_t i = 0; i < ex.size(); ++i) ex[i] = {TestNs(), KeyOf(i), true};
  for (int round = 0; round < 5; ++round) {
    auto t0 = RedisClock::now();
    tier->Exists(ex);
    EXPECT_LT(RedisClock::now() - t0, milliseconds(300) + milliseconds(500));
    for (const RedisExistsItem& e : ex) EXPECT_FALSE(e.exists);
  }
  EXPECT_NE(tier->breaker_state(), BreakerState::kClosed);
}

// ---- circuit breaker (no Redis needed) -------------------------------------------------------

TEST(CircuitBreaker, OpensAfterConsecutiveFailuresAndBacksOffExponentially) {
  CircuitBreakerOptions o;
  o.failure_threshold = 3;
  o.base_backoff = milliseconds(100);
  o.max_backoff = milliseconds(350);
  CircuitBreaker b(o);
  auto t = CircuitBreaker::Clock::now();
  using D = CircuitBreaker::Decision;
  // Successes reset the run of failures.
  b.RecordFailure(false, t);
  b.RecordFailure(true, t);
  b.RecordSuccess();
  b.RecordFailure(false, t);
  b.RecordFailure(false, t);
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  EXPECT_EQ(b.Allow(t), D::kAllow);
  b.RecordFailure(true, t);
  EXPECT_EQ(b.state(), BreakerState::kOpen);
  EXPECT_EQ(b.Allow(t + milliseconds(99)), D::kReject);
  // One probe after the backoff; everyone else is refused while it runs.
  EXPECT_EQ(b.Allow(t + milliseconds(100)), D::kProbe);
  EXPECT_EQ(b.Allow(t + milliseconds(100)), D::kReject);
  // A failed probe doubles the backoff: 200, then 350 (the cap).
  t += milliseconds(100);
  b.RecordFailure(true, t);
  EXPECT_EQ(b.Allow(t + milliseconds(199)), D::kReject);
  EXPECT_EQ(b.Allow(t + milliseconds(200)), D::kProbe);
  t += milliseconds(200);
  b.RecordFailure(false, t);
  EXPECT_EQ(b.Allow(t + milliseconds(349)), D::kReject);
  EXPECT_EQ(b.Allow(t + milliseconds(350)), D::kProbe);
  b.RecordSuccess();
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  EXPECT_EQ(b.Allow(t + milliseconds(351)), D::kAllow);
  b.CountDroppedSaves(2);
  BreakerCounters c = b.Counters();
  EXPECT_EQ(c.opens, 3u);
  EXPECT_EQ(c.closes, 1u);
  EXPECT_EQ(c.skipped_ops, 4u);
  EXPECT_EQ(c.dropped_saves, 2u);
  EXPECT_EQ(c.errors, 4u);
  EXPECT_EQ(c.timeouts, 3u);
  // After a close the backoff starts again from the base.
  for (int i = 0; i < 3; ++i) b.RecordFailure(false, t);
  EXPECT_EQ(b.Allow(t + milliseconds(100)), D::kProbe);
  // An abandoned probe lets the next caller probe.
  b.AbandonProbe();
  EXPECT_EQ(b.Allow(t + milliseconds(100)), D::kProbe);
}

TEST(CircuitBreaker, ConcurrentCallersGetExactlyOneProbe) {
  CircuitBreakerOptions o;
  o.failure_threshold = 1;
  o.base_backoff = milliseconds(1);
  CircuitBreaker b(o);
  auto t = CircuitBreaker::Clock::now();
  b.RecordFailure(false, t);
  std::atomic<int> probes{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&] {
      for (int k = 0; k < 1000; ++k)
        if (b.Allow(t + milliseconds(5)) == CircuitBreaker::Decision::kProbe) probes.fetch_add(1);
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(probes.load(), 1);
  EXPECT_EQ(b.Counters().skipped_ops, 3999u);
}

// ---- cluster -------------------------------------------------------------------------------

RedisTierOptions ClusterOptions(const RedisClusterHarness& c) {
  RedisTierOptions o;
  o.mode = RedisMode::kCluster;
  o.seeds = c.Seeds();
  o.op_timeout = milliseconds(5000);
  o.connect_timeout = milliseconds(2000);
  return o;
}

TEST(RedisTierCluster, RoundTripAcrossSlotsWithAndWithoutLz4) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisClusterHarness cluster;
  ASSERT_TRUE(cluster.Start(dir.path())) << cluster.create_log();
  for (RedisCompression comp : {RedisCompression::kNone, RedisCompression::kLz4}) {
    RedisTierOptions o = ClusterOptions(cluster);
    o.compression = comp;
    // With LZ4, one command in flight per connection at a time (the window's far end).
    if (comp == RedisCompression::kLz4) o.max_in_flight_bytes = 1;
    auto tier = OpenTier(o);
    ASSERT_TRUE(tier);
    uint64_t base = comp == RedisCompression::kNone ? 1000 : 2000;
    RoundTrip(tier.get(), SizedChunks(base, base, comp == RedisCompression::kLz4));
    // Many small chunks: spread over every master.
    std::vector<Chunk> many;
    for (uint64_t i = 0; i < 48; ++i) many.emplace_back(TestNs(), KeyOf(base + 100 + i), ShapeOf(1, 16, 2, 64), base + i);
    RoundTrip(tier.get(), many);
    EXPECT_EQ(tier->Stats().corrupt, 0u);
    EXPECT_EQ(tier->Stats().client.moved, 0u);
  }
  // The key slot follows the cluster's rules (CLUSTER KEYSLOT), hash tags included.
  RedisServer* any = cluster.servers()[0].get();
  for (std::string k : {"kvt:abc:def", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}", "x"})
    EXPECT_EQ(std::to_string(RedisKeySlot(k)), any->Cli({"CLUSTER", "KEYSLOT", k})) << k;
}

// Node id and port of every master serving slots, from CLUSTER NODES.
std::vector<std::pair<std::string, int>> Masters(RedisClusterHarness& cluster) {
  std::vector<std::pair<std::string, int>> out;
  std::stringstream ss(cluster.Nodes());
  std::string line;
  while (std::getline(ss, line)) {
    std::stringstream ls(line);
    std::string id, addr, flags, master, ping, pong, epoch, link, slots;
    ls >> id >> addr >> flags >> master >> ping >> pong >> epoch >> link >> slots;
    if (flags.find("master") == std::string::npos || flags.find("fail") != std::string::npos || slots.empty()) continue;
    size_t colon = addr.find(':'), at = addr.find('@');
    out.push_back({id, std::stoi(addr.substr(colon + 1, at - colon - 1))});
  }
  return out;
}

TEST(RedisTierCluster, SlotMigrationFollowsAskAndMoved) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisClusterHarness cluster;
  ASSERT_TRUE(cluster.Start(dir.path())) << cluster.create_log();
  auto tier = OpenTier(ClusterOptions(cluster));
  ASSERT_TRUE(tier);
  // Five chunk keys in one slot.
  const NamespaceId ns = TestNs();
  const uint16_t slot = RedisKeySlot(tier->KeyFor(ns, KeyOf(0)));
  std::vector<Chunk> chunks;
  for (uint64_t i = 0; chunks.size() < 5 && i < 10'000'000; ++i)
    if (RedisKeySlot(tier->KeyFor(ns, KeyOf(i))) == slot) chunks.emplace_back(ns, KeyOf(i), ShapeOf(2), i);
  ASSERT_EQ(chunks.size(), 5u);
  std::vector<RedisPutItem> puts;
  for (size_t i = 0; i < 4; ++i) puts.push_back(chunks[i].Put());  // the fifth is put mid-migration
  ASSERT_TRUE(tier->Put(puts).ok());

  auto masters = Masters(cluster);
  ASSERT_EQ(masters.size(), 3u) << cluster.Nodes();
  std::string owner_port = cluster.servers()[0]->Cli({"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)});
  // Find source (owns the slot) and a destination.
  int src = -1;
  for (size_t i = 0; i < masters.size(); ++i) {
    RedisServer* s = cluster.ByPort(masters[i].second);
    if (s->Cli({"CLUSTER", "COUNTKEYSINSLOT", std::to_string(slot)}) == "4" &&
        s->Cli({"GET", tier->KeyFor(ns, chunks[0].key)}).find("MOVED") == std::string::npos)
      src = static_cast<int>(i);
  }
  ASSERT_GE(src, 0);
  int dst = (src + 1) % 3;
  RedisServer* S = cluster.ByPort(masters[src].second);
  RedisServer* D = cluster.ByPort(masters[dst].second);
  const std::string sl = std::to_string(slot);
  ASSERT_EQ(D->Cli({"CLUSTER", "SETSLOT", sl, "IMPORTING", masters[src].first}), "OK");
  ASSERT_EQ(S->Cli({"CLUSTER", "SETSLOT", sl, "MIGRATING", masters[dst].first}), "OK");
  // Half the keys move now.
  ASSERT_EQ(S->Cli({"MIGRATE", "127.0.0.1", std::to_string(D->port()), "", "0", "5000", "KEYS",
                    tier->KeyFor(ns, chunks[0].key), tier->KeyFor(ns, chunks[1].key)}),
            "OK");

  auto get_all = [&](size_t n) {
    std::vector<std::vector<uint8_t>> bufs(n);
    std::vector<RedisGetItem> gets(n);
    for (size_t i = 0; i < n; ++i) {
      bufs[i].resize(chunks[i].payload.size());
      gets[i].id = chunks[i].Id();
      gets[i].dst = bufs[i];
    }
    tier->Get(gets);
    for (size_t i = 0; i < n; ++i) {
      EXPECT_EQ(gets[i].result, RedisItemResult::kOk) << i << ": " << gets[i].status.ToString();
      EXPECT_TRUE(bufs[i] == chunks[i].payload) << i;
    }
  };
  // Mid-migration: moved keys answer ASK from the source, the rest are served there; a new
  // key goes to the importing node through ASK too.
  get_all(4);
  EXPECT_GE(tier->Stats().client.asks, 2u);
  RedisPutItem p5 = chunks[4].Put();
  ASSERT_TRUE(tier->Put(std::span<RedisPutItem>(&p5, 1)).ok()) << p5.status.ToString();
  EXPECT_EQ(D->Cli({"CLUSTER", "COUNTKEYSINSLOT", sl}), "3");
  get_all(5);

  // Finish: the rest moves, the slot is assigned to the destination everywhere.
  ASSERT_EQ(S->Cli({"MIGRATE", "127.0.0.1", std::to_string(D->port()), "", "0", "5000", "KEYS",
                    tier->KeyFor(ns, chunks[2].key), tier->KeyFor(ns, chunks[3].key)}),
            "OK");
  for (auto& m : masters) ASSERT_EQ(cluster.ByPort(m.second)->Cli({"CLUSTER", "SETSLOT", sl, "NODE", masters[dst].first}), "OK");
  const uint64_t moved_before = tier->Stats().client.moved;
  get_all(5);
  EXPECT_GE(tier->Stats().client.moved, moved_before + 1);
  // After the MOVED the slot map points at the destination: no more redirections.
  const uint64_t moved_after = tier->Stats().client.moved;
  get_all(5);
  RedisPutItem again = chunks[0].Put();
  ASSERT_TRUE(tier->Put(std::span<RedisPutItem>(&again, 1)).ok());
  EXPECT_EQ(tier->Stats().client.moved, moved_after);
  (void)owner_port;
}

TEST(RedisTierCluster, HangingMasterCostsOnlyItsOwnKeysAndTheDeadline) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisClusterHarness cluster;
  ASSERT_TRUE(cluster.Start(dir.path(), 5000)) << cluster.create_log();  // no failover during the test
  RedisTierOptions o = ClusterOptions(cluster);
  o.op_timeout = milliseconds(400);
  o.breaker.failure_threshold = 100;  // this test looks at single calls, not at the breaker
  auto tier = OpenTier(o);
  ASSERT_TRUE(tier);
  std::vector<Chunk> chunks;
  for (uint64_t i = 0; i < 30; ++i) chunks.emplace_back(TestNs(), KeyOf(7000 + i), ShapeOf(1, 16, 2, 64), 7000 + i);
  std::vector<RedisPutItem> puts;
  for (const Chunk& c : chunks) puts.push_back(c.Put());
  ASSERT_TRUE(tier->Put(puts).ok());
  auto masters = Masters(cluster);
  ASSERT_EQ(masters.size(), 3u);
  RedisServer* hung = cluster.ByPort(masters[1].second);
  hung->Signal(SIGSTOP);
  std::vector<std::vector<uint8_t>> bufs(chunks.size());
  std::vector<RedisGetItem> gets(chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) {
    bufs[i].resize(chunks[i].payload.size());
    gets[i].id = chunks[i].Id();
    gets[i].dst = bufs[i];
  }
  auto t0 = RedisClock::now();
  tier->Get(gets);
  auto took = RedisClock::now() - t0;
  hung->Signal(SIGCONT);
  EXPECT_LT(took, o.op_timeout + milliseconds(700));
  size_t ok = 0, unavailable = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (gets[i].result == RedisItemResult::kOk) {
      ++ok;
      EXPECT_TRUE(bufs[i] == chunks[i].payload);
    } else {
      EXPECT_EQ(gets[i].result, RedisItemResult::kUnavailable) << gets[i].status.ToString();
      ++unavailable;
    }
  }
  EXPECT_GT(ok, 0u) << "keys on the other masters are served";
  EXPECT_GT(unavailable, 0u) << "keys on the hung master time out";
  // Once it answers again, everything is served.
  tier->Get(gets);
  for (size_t i = 0; i < chunks.size(); ++i) EXPECT_EQ(gets[i].result, RedisItemResult::kOk) << gets[i].status.ToString();
}

TEST(RedisTierCluster, MasterKilledUnderLoadFailsOverWithoutWrongBytes) {
  SKIP_WITHOUT_REDIS();
  TempDir dir;
  RedisClusterHarness cluster;
  ASSERT_TRUE(cluster.Start(dir.path(), 1000)) << cluster.create_log();
  RedisTierOptions o = ClusterOptions(cluster);
  o.op_timeout = milliseconds(500);
  o.connect_timeout = milliseconds(200);
  o.breaker.failure_threshold = 5;
  o.breaker.base_backoff = milliseconds(50);
  o.breaker.max_backoff = milliseconds(300);
  auto tier = OpenTier(o);
  ASSERT_TRUE(tier);
  std::vector<Chunk> chunks;
  for (uint64_t i = 0; i < 24; ++i) chunks.emplace_back(TestNs(), KeyOf(5000 + i), ShapeOf(2), 5000 + i);
  {
    std::vector<RedisPutItem> puts;
    for (const Chunk& c : chunks) puts.push_back(c.Put());
    ASSERT_TRUE(tier->Put(puts).ok());
  }
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, ok{0}, miss{0}, unavailable{0}, other{0};
  auto worker = [&](int t) {
    std::vector<uint8_t> dst(chunks[0].payload.size());
    for (uint64_t n = 0; !stop.load(); ++n) {
      const Chunk& c = chunks[(n * 7 + t) % chunks.size()];
      if (n % 4 == 0) {
        RedisPutItem p = c.Put();
        if (!tier->Put(std::span<RedisPutItem>(&p, 1)).ok()) std::this_thread::sleep_for(milliseconds(2));
        continue;
      }
      RedisGetItem g;
      g.id = c.Id();
      g.dst = dst;
      tier->Get(std::span<RedisGetItem>(&g, 1));
      switch (g.result) {
        case RedisItemResult::kOk:
          ok.fetch_add(1);
          if (dst != c.payload) wrong.fetch_add(1);
          break;
        case RedisItemResult::kNotFound: miss.fetch_add(1); break;
        case RedisItemResult::kUnavailable:
          unavailable.fetch_add(1);
          std::this_thread::sleep_for(milliseconds(2));  // a real caller recomputes meanwhile
          break;
        default: other.fetch_add(1); break;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) threads.emplace_back(worker, t);
  std::this_thread::sleep_for(milliseconds(300));
  auto masters = Masters(cluster);
  ASSERT_EQ(masters.size(), 3u);
  RedisServer* victim = cluster.ByPort(masters[0].second);
  const int victim_port = victim->port();
  victim->Kill();
  // The replica takes over after cluster-node-timeout; survivors report ok again.
  bool healed = cluster.WaitFailover(victim_port, std::chrono::seconds(30));
  EXPECT_TRUE(healed) << cluster.Nodes();
  // Traffic succeeds again: a full round of puts then gets, retried while the client catches up.
  bool recovered = false;
  auto until = RedisClock::now() + std::chrono::seconds(15);
  while (!recovered && RedisClock::now() < until) {
    std::vector<RedisPutItem> puts;
    for (const Chunk& c : chunks) puts.push_back(c.Put());
    Status put_status = tier->Put(puts);
    if (!put_status.ok() && std::getenv("KVTIER_TEST_VERBOSE") != nullptr)
      std::printf("recovery put: %s\n", put_status.ToString().c_str());
    if (put_status.ok()) {
      std::vector<std::vector<uint8_t>> bufs(chunks.size());
      std::vector<RedisGetItem> gets(chunks.size());
      for (size_t i = 0; i < chunks.size(); ++i) {
        bufs[i].resize(chunks[i].payload.size());
        gets[i].id = chunks[i].Id();
        gets[i].dst = bufs[i];
      }
      tier->Get(gets);
      recovered = true;
      for (size_t i = 0; i < chunks.size(); ++i) {
        recovered &= gets[i].result == RedisItemResult::kOk;
        if (gets[i].result == RedisItemResult::kOk && bufs[i] != chunks[i].payload) wrong.fetch_add(1);
      }
    }
    if (!recovered) std::this_thread::sleep_for(milliseconds(100));
  }
  stop.store(true);
  for (auto& th : threads) th.join();
  EXPECT_TRUE(recovered) << "after failover every chunk can be saved and loaded again";
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(other.load(), 0);
  EXPECT_GT(ok.load(), 0);
  RedisTierStats s = tier->Stats();
  std::printf("failover: ok=%d miss=%d unavailable=%d refreshes=%llu moved=%llu opens=%llu closes=%llu\n", ok.load(),
              miss.load(), unavailable.load(), (unsigned long long)s.client.topology_refreshes,
              (unsigned long long)s.client.moved, (unsigned long long)s.breaker.opens,
              (unsigned long long)s.breaker.closes);
}

}  // namespace
}  // namespace kvtier
