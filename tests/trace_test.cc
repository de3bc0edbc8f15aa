// The trace parser (inline strings), and replays through the real Store: small inline
// traces checked against the hit rule computed here, and the shared development traces
// (../shared/data, or $KVTIER_SHARED_DATA) checked against the reference figures of
// their README. Those skip, saying why, when the traces are not there.
#include "bench/trace.h"

#include <gtest/gtest.h>
#include <sys/statfs.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "bench/trace_replay.h"
#include "tests/temp_dir.h"

namespace kvtier::bench {
namespace {

// ---- parser ---------------------------------------------------------------------------

TEST(TraceParse, ReadsTheSchemaAndSkipsUnknownFields) {
  const std::string text =
      "{\"timestamp\": 12.5, \"input_length\": 40, \"output_length\": 3, \"hash_ids\": [7, 8, 9]}\n"
      "\n"
      "{\"hash_ids\":[7,8,10],\"input_length\":48,\"extra\":{\"a\":[1,{\"b\":null}],\"s\":\"x\\\"}\"},"
      "\"flag\":true,\"neg\":-1.5e3,\"round\":2}\r\n";
  Result<Trace> t = ParseTrace(text, "inline");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  ASSERT_EQ(t->requests.size(), 2u);
  const TraceRequest& a = t->requests[0];
  EXPECT_EQ(a.line, 1u);
  EXPECT_DOUBLE_EQ(a.timestamp_ms, 12.5);
  EXPECT_EQ(a.input_length, 40u);
  EXPECT_EQ(a.output_length, 3u);
  EXPECT_EQ(a.round, -1);
  EXPECT_EQ(a.hash_ids, (std::vector<uint64_t>{7, 8, 9}));
  const TraceRequest& b = t->requests[1];
  EXPECT_EQ(b.line, 3u);
  EXPECT_EQ(b.round, 2);
  EXPECT_EQ(b.hash_ids, (std::vector<uint64_t>{7, 8, 10}));
  EXPECT_EQ(t->total_blocks, 6u);
  EXPECT_EQ(t->unique_blocks, 4u);
  EXPECT_EQ(t->total_tokens, 88u);
  EXPECT_EQ(t->max_blocks, 3u);
  EXPECT_FALSE(t->has_rounds);  // the first request has none
}

TEST(TraceParse, LargeIdsAreExact) {
  Result<Trace> t = ParseTrace("{\"input_length\": 1, \"hash_ids\": [18446744073709551615]}", "inline");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->requests[0].hash_ids[0], UINT64_MAX);
}

void ExpectError(const std::string& text, const std::string& want) {
  Result<Trace> t = ParseTrace(text, "f.jsonl");
  ASSERT_FALSE(t.ok()) << text;
  EXPECT_TRUE(t.status().IsInvalidArgument());
  EXPECT_NE(t.status().ToString().find(want), std::string::npos) << t.status().ToString() << " lacks " << want;
}

TEST(TraceParse, ErrorsNameTheLine) {
  const std::string good = "{\"input_length\": 4, \"hash_ids\": [1]}\n";
  ExpectError(good + "{\"input_length\": 4}\n", "f.jsonl:2: \"hash_ids\" is missing");
  ExpectError(good + good + "{\"hash_ids\": [1]}", "f.jsonl:3: \"input_length\" is missing");
  ExpectError("{\"input_length\": 4, \"hash_ids\": [1, -2]}", "f.jsonl:1:");
  ExpectError("{\"input_length\": 4, \"hash_ids\": [1, -2]}", "\"hash_ids\" must be a non-negative integer");
  ExpectError("{\"input_length\": 4.5, \"hash_ids\": [1]}", "\"input_length\" must be a non-negative integer");
  ExpectError("{\"input_length\": 4, \"hash_ids\": [1,]}", "expected a number");
  ExpectError("{\"input_length\": 4, \"hash_ids\": [1]} x", "text after the object");
  ExpectError("{\"input_length\": 4, \"hash_ids\": [1]", "expected '}'");
  ExpectError("{\"input_length\": 4, \"hash_ids\": [1], \"s\": \"abc}", "unterminated string");
  ExpectError("[1, 2]", "expected '{'");
  ExpectError("{\"input_length\": 0, \"hash_ids\": [1]}", "\"input_length\" is 0");
  ExpectError("{\"input_length\": 4, \"hash_ids\": []}", "\"hash_ids\" is empty");
  ExpectError("{\"input_length\": 4, \"hash_ids\": [1], \"x\": nul}", "expected a JSON value");
  ExpectError("\n\n", "no requests");
}

TEST(TraceParse, ColumnPointsAtTheProblem) {
  Result<Trace> t = ParseTrace("{\"input_length\": 4, \"hash_ids\": [1, x]}", "f");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().ToString().find("f:1:37:"), std::string::npos) << t.status().ToString();
}

TEST(TraceParse, BlockSizeIsInferredAndChecked) {
  // 512-token blocks: 1000 tokens need 2, 512 exactly 1, 1025 need 3.
  Result<Trace> t = ParseTrace(
      "{\"input_length\": 1000, \"hash_ids\": [1, 2]}\n"
      "{\"input_length\": 512, \"hash_ids\": [1]}\n"
      "{\"input_length\": 1025, \"hash_ids\": [1, 2, 3]}\n",
      "m");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  Result<uint32_t> b = InferBlockTokens(*t);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(*b, 512u);  // 512..999 fit; 512 is the power of two
  EXPECT_TRUE(CheckBlockTokens(*t, 512).ok());
  Status bad = CheckBlockTokens(*t, 256);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.ToString().find("m:1: 2 hash_ids for input_length 1000"), std::string::npos) << bad.ToString();

  Result<Trace> odd = ParseTrace("{\"input_length\": 100, \"hash_ids\": [1, 2]}\n", "o");
  ASSERT_TRUE(odd.ok());
  EXPECT_EQ(InferBlockTokens(*odd).value(), 64u);  // 50..99 fit

  Result<Trace> none =
      ParseTrace("{\"input_length\": 100, \"hash_ids\": [1, 2]}\n{\"input_length\": 300, \"hash_ids\": [1, 2]}\n", "n");
  ASSERT_TRUE(none.ok());
  Result<uint32_t> nb = InferBlockTokens(*none);
  ASSERT_FALSE(nb.ok());
  EXPECT_NE(nb.status().ToString().find("n:2:"), std::string::npos) << nb.status().ToString();
}

TEST(TraceTokens, DeterministicAndDistinct) {
  std::vector<int32_t> a(64), b(64), c(64);
  BlockTokens(42, 64, a.data());
  BlockTokens(42, 64, b.data());
  BlockTokens(43, 64, c.data());
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (int32_t t : a) EXPECT_GE(t, 0);
}

// ---- replay of small inline traces -------------------------------------------------------

// The reference rule with an unbounded cache: a block hits when it was seen before and
// every earlier block of the request hit; tokens weight the last block by its real size.
struct Expected {
  uint64_t hit_blocks = 0, hit_tokens = 0;
};
Expected InfiniteCacheHits(const Trace& t, uint32_t b) {
  Expected e;
  std::set<uint64_t> seen;
  for (const TraceRequest& r : t.requests) {
    const size_t n = r.hash_ids.size();
    for (size_t i = 0; i < n && seen.count(r.hash_ids[i]); ++i) {
      ++e.hit_blocks;
      e.hit_tokens += i + 1 == n ? r.input_length - i * b : b;
    }
    seen.insert(r.hash_ids.begin(), r.hash_ids.end());
  }
  return e;
}

ReplayOptions TinyOptions(uint32_t chunk_tokens) {
  ReplayOptions o;
  o.chunk_tokens = chunk_tokens;
  o.shape = FindTraceModel("tiny")->shape;
  return o;
}

// Sessions that grow turn by turn over a shared prefix, blocks of 16 tokens, the last one
// partial: 4 sessions x 5 rounds.
Trace GrowingSessions() {
  std::string text;
  uint64_t next = 1000;
  std::vector<std::vector<uint64_t>> hist(4, std::vector<uint64_t>{1, 2, 3});
  for (int round = 1; round <= 5; ++round) {
    for (int s = 0; s < 4; ++s) {
      for (int k = 0; k < 3; ++k) hist[s].push_back(next++);
      std::string ids;
      for (uint64_t id : hist[s]) ids += (ids.empty() ? "" : ",") + std::to_string(id);
      const uint64_t len = hist[s].size() * 16 - 1 - s;
      text += "{\"timestamp\": " + std::to_string(round * 100 + s) + ", \"input_length\": " + std::to_string(len) +
              ", \"output_length\": 4, \"hash_ids\": [" + ids + "], \"round\": " + std::to_string(round) + "}\n";
    }
  }
  Result<Trace> t = ParseTrace(text, "sessions");
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return std::move(*t);
}

TEST(TraceReplay, InfiniteHostCacheFollowsTheHitRule) {
  const Trace t = GrowingSessions();
  ASSERT_TRUE(t.has_rounds);
  const Expected e = InfiniteCacheHits(t, 16);
  ASSERT_GT(e.hit_blocks, 0u);
  Result<ReplayResult> r = ReplayTrace(t, TinyOptions(16));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->hit_blocks, e.hit_blocks);
  EXPECT_EQ(r->hit_tokens, e.hit_tokens);
  EXPECT_EQ(r->blocks, t.total_blocks);
  EXPECT_EQ(r->tokens, t.total_tokens);
  EXPECT_EQ(r->tier_hit_blocks[static_cast<int>(TierId::kHost)], e.hit_blocks);
  EXPECT_EQ(r->verify_errors, 0u);
  EXPECT_EQ(r->load_short_chunks, 0u);
  EXPECT_EQ(r->save_failed_chunks, 0u);
  EXPECT_EQ(r->store.saved_chunks, t.unique_blocks);
  ASSERT_EQ(r->rounds.size(), 5u);
  EXPECT_EQ(r->rounds[0].hit_blocks, 3u * 3);  // round 1: only the shared prefix, after session 0
  for (const RoundStats& rs : r->rounds) EXPECT_EQ(rs.requests, 4u);
}

TEST(TraceReplay, SmallHostTierLosesHitsThatNvmeKeeps) {
  const Trace t = GrowingSessions();
  const Expected e = InfiniteCacheHits(t, 16);
  // 20 chunks of host: more than the longest request (18 blocks), less than the 63 unique.
  ReplayOptions host_only = TinyOptions(16);
  host_only.host_capacity_tokens = 20 * 16;
  Result<ReplayResult> h = ReplayTrace(t, host_only);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_LT(h->hit_blocks, e.hit_blocks);
  EXPECT_GT(h->store.evictions, 0u);

  test::TempDir dir;
  ASSERT_TRUE(dir.ok());
  ReplayOptions tiered = host_only;
  tiered.nvme = true;
  tiered.nvme_dir = dir.path();
  Result<ReplayResult> n = ReplayTrace(t, tiered);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(n->hit_blocks, e.hit_blocks);  // NVMe holds every unique block
  EXPECT_EQ(n->hit_tokens, e.hit_tokens);
  EXPECT_GT(n->tier_hit_blocks[static_cast<int>(TierId::kNvme)], 0u);
  EXPECT_EQ(n->tier_hit_blocks[static_cast<int>(TierId::kNvme)], n->store.promotions);
  EXPECT_GT(n->store.demotions, 0u);
  EXPECT_EQ(n->verify_errors, 0u);
  EXPECT_EQ(n->load_short_chunks, 0u);
  // A second replay into the same directory would recover the first one's chunks.
  Result<ReplayResult> again = ReplayTrace(t, tiered);
  ASSERT_FALSE(again.ok());
  EXPECT_TRUE(again.status().IsInvalidArgument()) << again.status().ToString();
}

TEST(TraceReplay, RefusesBlocksThatDoNotMatch) {
  const Trace t = GrowingSessions();
  Result<ReplayResult> r = ReplayTrace(t, TinyOptions(32));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().IsInvalidArgument()) << r.status().ToString();
}

// ---- the shared development traces ---------------------------------------------------------

std::string SharedData() {
  const char* env = std::getenv("KVTIER_SHARED_DATA");
  if (env != nullptr && *env != '\0') return env;
#ifdef KVTIER_SHARED_DATA_DIR
  return KVTIER_SHARED_DATA_DIR;
#else
  return "";
#endif
}

// Loads a shared trace, or says why it cannot.
bool LoadShared(const std::string& file, Trace* out, std::string* why) {
  const std::string dir = SharedData();
  const std::string path = dir + "/" + file;
  if (dir.empty() || !std::filesystem::exists(path)) {
    *why = "shared trace " + path + " not found (set KVTIER_SHARED_DATA to the directory holding it)";
    return false;
  }
  Result<Trace> t = LoadTrace(path);
  if (!t.ok()) {
    *why = t.status().ToString();
    return false;
  }
  *out = std::move(*t);
  return true;
}

double TokenHit(const ReplayResult& r) { return static_cast<double>(r.hit_tokens) / r.tokens; }
double BlockHit(const ReplayResult& r) { return static_cast<double>(r.hit_blocks) / r.blocks; }
double RoundHit(const ReplayResult& r, int round) {
  const RoundStats& rs = r.rounds.at(static_cast<size_t>(round - 1));
  EXPECT_EQ(rs.round, round);
  return static_cast<double>(rs.hit_tokens) / rs.tokens;
}

class Mooncake : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!LoadShared("mooncake_synthetic.jsonl", &trace_, &why)) GTEST_SKIP() << why;
    ASSERT_EQ(trace_.requests.size(), 3993u);
    ASSERT_EQ(InferBlockTokens(trace_).value(), 512u);
  }
  ReplayResult Run(uint64_t host_tokens) {
    ReplayOptions o = TinyOptions(512);
    o.host_capacity_tokens = host_tokens;
    Result<ReplayResult> r = ReplayTrace(trace_, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return {};
    EXPECT_EQ(r->verify_errors, 0u);
    EXPECT_EQ(r->load_short_chunks, 0u);
    return std::move(*r);
  }
  Trace trace_;
};

// The README's plain-LRU reference curve, host tier alone, within 0.01.
TEST_F(Mooncake, LruAt1MTokens) { EXPECT_NEAR(TokenHit(Run(1'000'000)), 0.142, 0.01); }
TEST_F(Mooncake, LruAt3MTokens) { EXPECT_NEAR(TokenHit(Run(3'000'000)), 0.315, 0.01); }
TEST_F(Mooncake, LruAt10MTokens) { EXPECT_NEAR(TokenHit(Run(10'000'000)), 0.577, 0.01); }

TEST_F(Mooncake, InfiniteCapacity) {
  const ReplayResult r = Run(0);
  EXPECT_NEAR(TokenHit(r), 0.6512, 0.00005);
  EXPECT_NEAR(BlockHit(r), 0.6396, 0.00005);
  EXPECT_EQ(r.store.evictions, 0u);
  EXPECT_EQ(r.store.saved_chunks, 43924u);  // every unique block, once
}

// A directory for the NVMe tier of the multi-turn test. The test is about placement
// (which chunks survive where), not the disk: it prefers tmpfs with buffered I/O because
// each write-back demotion syncs its data and metadata, ~4 ms on a virtual disk, and this
// replay demotes ~12,000 chunks. Elsewhere it uses the usual test directory with O_DIRECT.
struct MultiturnNvmeDir {
  std::unique_ptr<test::TempDir> dir;
  bool buffered = false;
  MultiturnNvmeDir() {
    struct statfs fs;
    if (statfs("/dev/shm", &fs) == 0 && static_cast<long>(fs.f_type) == 0x01021994) {
      dir = std::make_unique<test::TempDir>("/dev/shm");
      buffered = dir->ok();
    }
    if (!buffered) dir = std::make_unique<test::TempDir>();
  }
};

TEST(Multiturn, NvmeTierRemovesTheCapacityCliff) {
  Trace trace;
  std::string why;
  if (!LoadShared("multiturn_long_b64.jsonl", &trace, &why)) GTEST_SKIP() << why;
  ASSERT_TRUE(trace.has_rounds);
  ASSERT_EQ(InferBlockTokens(trace).value(), 64u);
  // 542K tokens: 80 GB of host DRAM at 144 KiB/token (the README's figure).
  ReplayOptions host_only = TinyOptions(64);
  host_only.host_capacity_tokens = 542'000;
  Result<ReplayResult> h = ReplayTrace(trace, host_only);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->rounds.size(), 10u);

  MultiturnNvmeDir dir;
  ASSERT_TRUE(dir.dir->ok());
  ReplayOptions tiered = host_only;
  tiered.nvme = true;  // capacity 0: every unique block fits
  tiered.nvme_dir = dir.dir->path();
  tiered.nvme_buffered = dir.buffered;
  Result<ReplayResult> n = ReplayTrace(trace, tiered);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  ASSERT_EQ(n->rounds.size(), 10u);

  // Rounds 1-6 fit in host DRAM: both runs follow the reference (0, .50, .67, .75, .80, .83).
  const double ref[6] = {0, 0.50, 0.67, 0.75, 0.80, 0.83};
  for (int round = 1; round <= 6; ++round) {
    EXPECT_NEAR(RoundHit(*h, round), ref[round - 1], 0.01) << "host only, round " << round;
    EXPECT_NEAR(RoundHit(*n, round), ref[round - 1], 0.01) << "host+nvme, round " << round;
  }
  // Host alone collapses after round 6 (the reference: 0.225 at round 10).
  EXPECT_LT(RoundHit(*h, 10), 0.4);
  EXPECT_LT(RoundHit(*h, 10), RoundHit(*h, 6) - 0.3);
  // With NVMe every later round keeps at least round 6's level.
  for (int round = 7; round <= 10; ++round)
    EXPECT_GE(RoundHit(*n, round), RoundHit(*n, 6) - 0.02) << "host+nvme, round " << round;
  EXPECT_NEAR(TokenHit(*n), 0.8180, 0.005);  // the infinite-cache figure
  EXPECT_GT(n->tier_hit_blocks[static_cast<int>(TierId::kNvme)], 0u);
  EXPECT_EQ(n->verify_errors, 0u);
  EXPECT_EQ(h->verify_errors, 0u);
  EXPECT_EQ(n->load_short_chunks, 0u);
}

}  // namespace
}  // namespace kvtier::bench
