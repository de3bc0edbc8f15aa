#include "index/radix_index.h"

#include <gtest/gtest.h>

#include "tests/radix_index_model.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace kvtier {

static void PrintTo(const ChunkKey& key, std::ostream* os) { *os << key.ToHex(); }

namespace {

constexpr TierId kGpu = TierId::kGpu;
constexpr TierId kHost = TierId::kHost;
constexpr TierId kNvme = TierId::kNvme;
constexpr TierMask kGpuBit = TierBit(TierId::kGpu);
constexpr TierMask kHostBit = TierBit(TierId::kHost);
constexpr TierMask kNvmeBit = TierBit(TierId::kNvme);
constexpr size_t kNoLimit = std::numeric_limits<size_t>::max();

Hash128 TestNamespace() { return Hash128{0x6b76746965722d6eull, 0x7465737420696478ull}; }

// Key of a chunk made of one token, under `parent` (the namespace for a root chunk).
ChunkKey Child(const Hash128& parent, int32_t token) {
  const int32_t tokens[1] = {token};
  return NextChunkKey(parent, tokens, {});
}

// n chained keys: chunk i holds token first_token + i.
std::vector<ChunkKey> Chain(size_t n, int32_t first_token, const Hash128& from = TestNamespace()) {
  std::vector<ChunkKey> keys;
  Hash128 prev = from;
  for (size_t i = 0; i < n; ++i) {
    keys.push_back(Child(prev, first_token + static_cast<int32_t>(i)));
    prev = keys.back();
  }
  return keys;
}


using KeySet = std::set<ChunkKey, bool (*)(const Hash128&, const Hash128&)>;
KeySet ToSet(const std::vector<ChunkKey>& keys) { return KeySet(keys.begin(), keys.end(), KeyLess); }

std::vector<ChunkKey> Keys(const std::vector<LeafCandidate>& leaves) {
  std::vector<ChunkKey> keys;
  for (const LeafCandidate& c : leaves) keys.push_back(c.key);
  return keys;
}

// The first entry must match exactly; the rest (a subtree in any order) as a set.
void ExpectSameRemoved(std::vector<RemovedChunk> got, std::vector<RemovedChunk> want) {
  ASSERT_EQ(got.size(), want.size());
  if (got.empty()) return;
  EXPECT_EQ(got[0].key, want[0].key);
  EXPECT_EQ(got[0].residency, want[0].residency);
  auto less = [](const RemovedChunk& a, const RemovedChunk& b) { return KeyLess(a.key, b.key); };
  std::sort(got.begin() + 1, got.end(), less);
  std::sort(want.begin() + 1, want.end(), less);
  for (size_t i = 1; i < got.size(); ++i) {
    EXPECT_EQ(got[i].key, want[i].key) << "removed entry " << i;
    EXPECT_EQ(got[i].residency, want[i].residency) << "removed entry " << i;
  }
}

struct Visited {
  std::optional<ChunkKey> parent;
  TierMask residency;
  uint64_t last_access;
};

// Everything ForEach reports; fails if a child comes before its parent.
std::unordered_map<ChunkKey, Visited, ChunkKeyHash> Snapshot(const RadixIndex& index) {
  std::unordered_map<ChunkKey, Visited, ChunkKeyHash> seen;
  index.ForEach([&](const ChunkKey& key, const std::optional<ChunkKey>& parent, TierMask residency,
                    uint64_t last_access) {
    EXPECT_TRUE(!parent.has_value() || seen.count(*parent) != 0) << "child " << key.ToHex() << " before its parent";
    EXPECT_TRUE(seen.emplace(key, Visited{parent, residency, last_access}).second) << "visited twice";
  });
  return seen;
}

// ---- unit tests ------------------------------------------------------------------------

class RadixIndexTest : public ::testing::Test {
 protected:
  // Inserts keys as a chain under `parent` (the root when nullopt), resident in `tier`.
  void InsertChain(std::span<const ChunkKey> keys, TierId tier, std::optional<ChunkKey> parent = std::nullopt) {
    for (const ChunkKey& k : keys) {
      ASSERT_TRUE(index_.Insert(parent, k, tier).ok());
      parent = k;
    }
  }

  LogicalClock clock_;
  RadixIndex index_{&clock_};
};

TEST_F(RadixIndexTest, MatchOnEmpty) {
  const auto keys = Chain(3, 0);
  std::vector<TierMask> residency{7};
  EXPECT_EQ(index_.Match(keys, {}, &residency), 0u);
  EXPECT_EQ(residency, std::vector<TierMask>(3, 0));
  EXPECT_EQ(index_.Match({}, {}, &residency), 0u);
  EXPECT_TRUE(residency.empty());
  EXPECT_EQ(clock_.Now(), 0u) << "a Match that matched nothing draws no tick";
  EXPECT_EQ(index_.size(), 0u);
  EXPECT_TRUE(index_.LruLeaves(kGpu, 10).empty());
}

TEST_F(RadixIndexTest, MatchFullAndPartialChain) {
  const auto keys = Chain(8, 0);
  InsertChain(keys, kGpu);
  EXPECT_EQ(index_.size(), 8u);
  EXPECT_EQ(index_.Match(keys, {}), 8u);
  EXPECT_EQ(index_.Match(std::span(keys).first(5), {}), 5u);

  auto diverged = keys;
  diverged[3] = Child(keys[2], 99);
  EXPECT_EQ(index_.Match(diverged, {}), 3u);

  auto longer = Chain(10, 0);
  EXPECT_EQ(index_.Match(longer, {}), 8u);

  // A chain must start at the root and follow parent links.
  EXPECT_EQ(index_.Match(std::span(keys).subspan(1), {}), 0u);
  std::vector<ChunkKey> skipped{keys[0], keys[2]};
  EXPECT_EQ(index_.Match(skipped, {}), 1u);
}

TEST_F(RadixIndexTest, BranchSharesPrefix) {
  const auto a = Chain(4, 0);
  std::vector<ChunkKey> b{a[0], a[1], Child(a[1], 50)};
  b.push_back(Child(b[2], 51));
  InsertChain(a, kGpu);
  InsertChain(std::span(b).subspan(2), kGpu, b[1]);
  EXPECT_EQ(index_.size(), 6u);
  EXPECT_EQ(index_.Match(a, {}), 4u);
  EXPECT_EQ(index_.Match(b, {}), 4u);
  const auto all = Snapshot(index_);
  ASSERT_EQ(all.size(), 6u);
  EXPECT_EQ(all.at(b[2]).parent, a[1]);
  EXPECT_EQ(all.at(a[2]).parent, a[1]);
  EXPECT_FALSE(all.at(a[0]).parent.has_value());
  // Both branches end in a leaf.
  EXPECT_EQ(ToSet(Keys(index_.LruLeaves(kGpu, kNoLimit))), ToSet({a[3], b[3]}));
}

TEST_F(RadixIndexTest, MatchStopsAtChunkNotInRequestedTiers) {
  const auto keys = Chain(4, 0);
  InsertChain(std::span(keys).first(2), kGpu);
  ASSERT_TRUE(index_.SetResident(keys[0], kHost).ok());
  ASSERT_TRUE(index_.SetResident(keys[1], kHost).ok());
  ASSERT_TRUE(index_.Insert(keys[1], keys[2], kHost).ok());
  ASSERT_TRUE(index_.Insert(keys[2], keys[3], kGpu).ok());

  std::vector<TierMask> residency;
  EXPECT_EQ(index_.Match(keys, {.tiers = kGpuBit}, &residency), 2u);
  EXPECT_EQ(residency, (std::vector<TierMask>{kGpuBit | kHostBit, kGpuBit | kHostBit, 0, 0}));
  EXPECT_EQ(index_.Match(keys, {.tiers = kHostBit}, &residency), 3u);
  EXPECT_EQ(residency, (std::vector<TierMask>{kGpuBit | kHostBit, kGpuBit | kHostBit, kHostBit, 0}));
  EXPECT_EQ(index_.Match(keys, {.tiers = kNvmeBit}, &residency), 0u);
  EXPECT_EQ(index_.Match(keys, {}, &residency), 4u);
  EXPECT_EQ(residency, (std::vector<TierMask>{kGpuBit | kHostBit, kGpuBit | kHostBit, kHostBit, kGpuBit}));
  EXPECT_EQ(index_.Match(keys, {.tiers = 0}), 0u);
}

TEST_F(RadixIndexTest, MatchTouchesOnlyWhenAsked) {
  const auto keys = Chain(3, 0);
  InsertChain(keys, kGpu);
  const uint64_t before = clock_.Now();
  EXPECT_EQ(index_.Match(keys, {.touch = false}), 3u);
  EXPECT_EQ(clock_.Now(), before);
  for (const auto& [key, v] : Snapshot(index_)) EXPECT_LE(v.last_access, before);
  EXPECT_EQ(index_.Match(std::span(keys).first(2), {}), 2u);
  const auto all = Snapshot(index_);
  EXPECT_EQ(clock_.Now(), before + 1) << "one tick per Match";
  EXPECT_EQ(all.at(keys[0]).last_access, before + 1);
  EXPECT_EQ(all.at(keys[1]).last_access, before + 1);
  EXPECT_LT(all.at(keys[2]).last_access, before + 1);
}

TEST_F(RadixIndexTest, InsertUnderMissingParentIsNotFound) {
  const auto keys = Chain(2, 0);
  const Status s = index_.Insert(keys[0], keys[1], kGpu);
  EXPECT_TRUE(s.IsNotFound()) << s.ToString();
  EXPECT_NE(s.message().find(keys[0].ToHex()), std::string::npos) << s.message();
  EXPECT_EQ(index_.size(), 0u);
  EXPECT_TRUE(index_.SetResident(keys[0], kGpu).IsNotFound());
  std::vector<RemovedChunk> removed;
  EXPECT_TRUE(index_.ClearResident(keys[0], kGpu, &removed).IsNotFound());
  EXPECT_TRUE(index_.Erase(keys[0], &removed).IsNotFound());
  EXPECT_TRUE(removed.empty());
}

TEST_F(RadixIndexTest, SameKeyUnderAnotherParentIsCorruption) {
  const auto a = Chain(2, 0);
  const auto b = Chain(1, 7);
  InsertChain(a, kGpu);
  InsertChain(b, kGpu);
  Status s = index_.Insert(b[0], a[1], kHost);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_NE(s.message().find(a[1].ToHex()), std::string::npos) << s.message();
  EXPECT_TRUE(index_.Insert(std::nullopt, a[1], kHost).IsCorruption());
  EXPECT_TRUE(index_.Insert(a[0], a[0], kHost).IsCorruption());
  EXPECT_EQ(index_.Residency(a[1]), kGpuBit) << "a refused insert changes nothing";
  EXPECT_EQ(index_.size(), 3u);
}

TEST_F(RadixIndexTest, InsertOfCachedKeyAddsTier) {
  const auto keys = Chain(2, 0);
  InsertChain(keys, kGpu);
  const uint64_t before = clock_.Now();
  ASSERT_TRUE(index_.Insert(keys[0], keys[1], kHost).ok());
  ASSERT_TRUE(index_.Insert(keys[0], keys[1], kHost).ok());
  EXPECT_EQ(index_.Residency(keys[1]), kGpuBit | kHostBit);
  EXPECT_EQ(clock_.Now(), before) << "only a new chunk is touched";
  EXPECT_EQ(index_.size(), 2u);
  EXPECT_FALSE(index_.Residency(Child(keys[1], 5)).has_value());
}

TEST_F(RadixIndexTest, InvalidTierIsInvalidArgument) {
  const auto keys = Chain(1, 0);
  const auto bad = static_cast<TierId>(kTierCount);
  EXPECT_TRUE(index_.Insert(std::nullopt, keys[0], bad).IsInvalidArgument());
  InsertChain(keys, kGpu);
  EXPECT_TRUE(index_.SetResident(keys[0], bad).IsInvalidArgument());
  EXPECT_TRUE(index_.ClearResident(keys[0], bad, nullptr).IsInvalidArgument());
  EXPECT_TRUE(index_.LruLeaves(bad, 10).empty());
  EXPECT_EQ(index_.CountResident(bad), 0u);
}

TEST_F(RadixIndexTest, ClearResidentRemovesSubtreeOnlyWhenNoTierIsLeft) {
  const auto keys = Chain(4, 0);
  InsertChain(keys, kGpu);
  const ChunkKey branch = Child(keys[1], 40);
  ASSERT_TRUE(index_.Insert(keys[1], branch, kNvme).ok());
  ASSERT_TRUE(index_.SetResident(keys[1], kHost).ok());
  ASSERT_TRUE(index_.SetResident(keys[3], kHost).ok());

  std::vector<RemovedChunk> removed;
  ASSERT_TRUE(index_.ClearResident(keys[1], kNvme, &removed).ok()) << "not resident there: nothing to do";
  ASSERT_TRUE(index_.ClearResident(keys[1], kGpu, &removed).ok());
  EXPECT_TRUE(removed.empty());
  EXPECT_EQ(index_.Residency(keys[1]), kHostBit);
  EXPECT_EQ(index_.size(), 5u);
  EXPECT_EQ(index_.Match(keys, {}), 4u) << "a chunk in any tier keeps the chain";

  removed.push_back({Chain(1, 77)[0], kGpuBit});  // appended to, never cleared
  ASSERT_TRUE(index_.ClearResident(keys[1], kHost, &removed).ok());
  ASSERT_EQ(removed.size(), 5u);
  EXPECT_EQ(removed[1].key, keys[1]);
  EXPECT_EQ(removed[1].residency, kHostBit);
  std::vector<RemovedChunk> rest(removed.begin() + 2, removed.end());
  std::sort(rest.begin(), rest.end(), [](const auto& x, const auto& y) { return KeyLess(x.key, y.key); });
  std::vector<RemovedChunk> want{{keys[2], kGpuBit}, {keys[3], kGpuBit | kHostBit}, {branch, kNvmeBit}};
  std::sort(want.begin(), want.end(), [](const auto& x, const auto& y) { return KeyLess(x.key, y.key); });
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(rest[i].key, want[i].key);
    EXPECT_EQ(rest[i].residency, want[i].residency);
  }
  EXPECT_EQ(index_.size(), 1u);
  EXPECT_EQ(index_.Match(keys, {}), 1u);
  EXPECT_EQ(index_.CountResident(kGpu), 1u);
  EXPECT_EQ(index_.CountResident(kHost), 0u);
  EXPECT_EQ(index_.CountResident(kNvme), 0u);
  EXPECT_EQ(Keys(index_.LruLeaves(kGpu, kNoLimit)), std::vector<ChunkKey>{keys[0]});
  EXPECT_TRUE(index_.LruLeaves(kHost, kNoLimit).empty());
  EXPECT_TRUE(index_.LruLeaves(kNvme, kNoLimit).empty());
}

TEST_F(RadixIndexTest, EraseRemovesSubtree) {
  const auto a = Chain(5, 0);
  const auto b = Chain(2, 9);
  InsertChain(a, kHost);
  InsertChain(b, kGpu);
  std::vector<RemovedChunk> removed;
  ASSERT_TRUE(index_.Erase(a[2], &removed).ok());
  ASSERT_EQ(removed.size(), 3u);
  EXPECT_EQ(removed[0].key, a[2]);
  EXPECT_EQ(index_.size(), 4u);
  EXPECT_EQ(index_.Match(a, {}), 2u);
  EXPECT_EQ(Keys(index_.LruLeaves(kHost, kNoLimit)), std::vector<ChunkKey>{a[1]});
  ASSERT_TRUE(index_.Erase(a[0], nullptr).ok());
  EXPECT_EQ(index_.size(), 2u);
  EXPECT_EQ(index_.Match(b, {}), 2u);
  EXPECT_EQ(index_.CountResident(kHost), 0u);
  // A removed chunk can be cached again.
  InsertChain(a, kHost);
  EXPECT_EQ(index_.Match(a, {}), 5u);
}

TEST_F(RadixIndexTest, PinnedSubtreeIsBusyAndUnchanged) {
  const auto keys = Chain(4, 0);
  InsertChain(keys, kGpu);
  ASSERT_TRUE(index_.SetResident(keys[1], kHost).ok());
  index_.Pin(std::span(keys).subspan(3, 1));

  std::vector<RemovedChunk> removed{{keys[0], kNvmeBit}};
  Status s = index_.Erase(keys[1], &removed);
  EXPECT_EQ(s.code(), Status::Code::kBusy) << s.ToString();
  EXPECT_TRUE(s.retryable());
  EXPECT_NE(s.message().find(keys[3].ToHex()), std::string::npos) << s.message();
  EXPECT_EQ(removed.size(), 1u);
  EXPECT_EQ(index_.ClearResident(keys[3], kGpu, &removed).code(), Status::Code::kBusy);
  EXPECT_EQ(index_.ClearResident(keys[0], kGpu, &removed).code(), Status::Code::kBusy);
  EXPECT_EQ(removed.size(), 1u);
  EXPECT_EQ(index_.size(), 4u);
  EXPECT_EQ(index_.Match(keys, {}), 4u);
  EXPECT_EQ(index_.CountResident(kGpu), 4u);
  // Dropping one of two tiers removes nothing, so a pin does not stop it.
  ASSERT_TRUE(index_.ClearResident(keys[1], kGpu, &removed).ok());
  EXPECT_EQ(index_.Residency(keys[1]), kHostBit);

  index_.Unpin(std::span(keys).subspan(3, 1));
  ASSERT_TRUE(index_.Erase(keys[1], &removed).ok());
  EXPECT_EQ(removed.size(), 4u);
  EXPECT_EQ(index_.size(), 1u);
}

TEST_F(RadixIndexTest, PinsNestAndMatchPinsExactlyTheMatch) {
  const auto keys = Chain(5, 0);
  InsertChain(std::span(keys).first(3), kGpu);
  const std::span<const ChunkKey> first(keys.data(), 1);
  index_.Pin(first);
  index_.Pin(first);
  EXPECT_EQ(index_.PinCount(keys[0]), 2u);
  index_.Unpin(first);
  EXPECT_EQ(index_.PinCount(keys[0]), 1u);
  index_.Unpin(first);
  index_.Unpin(first);  // not pinned: ignored
  EXPECT_EQ(index_.PinCount(keys[0]), 0u);
  index_.Pin(std::span(keys).subspan(3));  // absent keys: ignored
  EXPECT_EQ(index_.PinCount(keys[3]), 0u);

  ASSERT_EQ(index_.Match(keys, {.pin = true}), 3u);
  ASSERT_EQ(index_.Match(std::span(keys).first(2), {.pin = true}), 2u);
  EXPECT_EQ(index_.PinCount(keys[0]), 2u);
  EXPECT_EQ(index_.PinCount(keys[1]), 2u);
  EXPECT_EQ(index_.PinCount(keys[2]), 1u);
  EXPECT_EQ(index_.Match(keys, {.tiers = kHostBit, .pin = true}), 0u);
  EXPECT_EQ(index_.PinCount(keys[0]), 2u);
  index_.Unpin(std::span(keys).first(3));
  index_.Unpin(std::span(keys).first(2));
  for (const ChunkKey& k : keys) EXPECT_EQ(index_.PinCount(k), 0u);
}

TEST_F(RadixIndexTest, LruLeavesFollowTouches) {
  const auto a = Chain(2, 0);
  const auto b = Chain(2, 10);
  const auto c = Chain(2, 20);
  InsertChain(a, kGpu);
  InsertChain(b, kGpu);
  InsertChain(c, kGpu);
  EXPECT_EQ(Keys(index_.LruLeaves(kGpu, 10)), (std::vector<ChunkKey>{a[1], b[1], c[1]}));
  ASSERT_EQ(index_.Match(a, {}), 2u);
  const uint64_t a_tick = clock_.Now();
  EXPECT_EQ(Keys(index_.LruLeaves(kGpu, 10)), (std::vector<ChunkKey>{b[1], c[1], a[1]}));
  ASSERT_EQ(index_.Match(b, {.touch = false}), 2u);
  EXPECT_EQ(Keys(index_.LruLeaves(kGpu, 10)), (std::vector<ChunkKey>{b[1], c[1], a[1]}));
  ASSERT_EQ(index_.Match(b, {}), 2u);
  ASSERT_EQ(index_.Match(c, {}), 2u);
  const auto leaves = index_.LruLeaves(kGpu, 2);
  EXPECT_EQ(Keys(leaves), (std::vector<ChunkKey>{a[1], b[1]}));
  EXPECT_EQ(leaves[0].last_access, a_tick);
  // Touching a prefix does not refresh the leaf below it.
  ASSERT_EQ(index_.Match(std::span(a).first(1), {}), 1u);
  EXPECT_EQ(Keys(index_.LruLeaves(kGpu, 1)), std::vector<ChunkKey>{a[1]});
}

TEST_F(RadixIndexTest, LruLeavesSkipPinned) {
  const auto a = Chain(1, 0);
  const auto b = Chain(1, 10);
  InsertChain(a, kGpu);
  InsertChain(b, kGpu);
  ASSERT_EQ(index_.Match(a, {.touch = false, .pin = true}), 1u);
  EXPECT_EQ(Keys(index_.LruLeaves(kGpu, 10)), std::vector<ChunkKey>{b[0]});
  index_.Pin(b);
  EXPECT_TRUE(index_.LruLeaves(kGpu, 10).empty());
  index_.Unpin(a);
  index_.Unpin(b);
  EXPECT_EQ(Keys(index_.LruLeaves(kGpu, 10)), (std::vector<ChunkKey>{a[0], b[0]}));
}

TEST_F(RadixIndexTest, LruLeavesAreTierLeaves) {
  // k0 {gpu, host} -> k1 {gpu}: k1 is the gpu leaf, k0 the host leaf.
  const auto keys = Chain(2, 0);
  InsertChain(keys, kGpu);
  ASSERT_TRUE(index_.SetResident(keys[0], kHost).ok());
  EXPECT_EQ(Keys(index_.LruLeaves(kGpu, 10)), std::vector<ChunkKey>{keys[1]});
  EXPECT_EQ(Keys(index_.LruLeaves(kHost, 10)), std::vector<ChunkKey>{keys[0]});
  // Once k1 is in host too, k0 is no host leaf.
  ASSERT_TRUE(index_.SetResident(keys[1], kHost).ok());
  EXPECT_EQ(Keys(index_.LruLeaves(kHost, 10)), std::vector<ChunkKey>{keys[1]});
  // ... and becomes one again when k1 leaves host.
  ASSERT_TRUE(index_.ClearResident(keys[1], kHost, nullptr).ok());
  EXPECT_EQ(Keys(index_.LruLeaves(kHost, 10)), std::vector<ChunkKey>{keys[0]});
  // k1 leaving gpu (its last tier) makes k0 the gpu leaf.
  ASSERT_TRUE(index_.ClearResident(keys[1], kGpu, nullptr).ok());
  EXPECT_EQ(Keys(index_.LruLeaves(kGpu, 10)), std::vector<ChunkKey>{keys[0]});
  EXPECT_EQ(Keys(index_.LruLeaves(kHost, 10)), std::vector<ChunkKey>{keys[0]});
  // A new child in gpu takes the gpu leaf role from its parent.
  ASSERT_TRUE(index_.Insert(keys[0], keys[1], kGpu).ok());
  EXPECT_EQ(Keys(index_.LruLeaves(kGpu, 10)), std::vector<ChunkKey>{keys[1]});
  EXPECT_EQ(Keys(index_.LruLeaves(kHost, 10)), std::vector<ChunkKey>{keys[0]});
}

TEST_F(RadixIndexTest, LruTieGoesToDeeperChunk) {
  // k0 {host} -> k1 {gpu} -> k2 {host}: two host leaves on one chain, touched by one Match.
  const auto keys = Chain(3, 0);
  ASSERT_TRUE(index_.Insert(std::nullopt, keys[0], kHost).ok());
  ASSERT_TRUE(index_.Insert(keys[0], keys[1], kGpu).ok());
  ASSERT_TRUE(index_.Insert(keys[1], keys[2], kHost).ok());
  EXPECT_EQ(Keys(index_.LruLeaves(kHost, 10)), (std::vector<ChunkKey>{keys[0], keys[2]}));
  ASSERT_EQ(index_.Match(keys, {}), 3u);
  const auto leaves = index_.LruLeaves(kHost, 10);
  EXPECT_EQ(Keys(leaves), (std::vector<ChunkKey>{keys[2], keys[0]}));
  EXPECT_EQ(leaves[0].last_access, leaves[1].last_access);
}

TEST_F(RadixIndexTest, CountResidentAndSize) {
  const auto a = Chain(6, 0);
  InsertChain(a, kGpu);
  for (size_t i = 0; i < 3; ++i) ASSERT_TRUE(index_.SetResident(a[i], kHost).ok());
  ASSERT_TRUE(index_.SetResident(a[0], kNvme).ok());
  EXPECT_EQ(index_.size(), 6u);
  EXPECT_EQ(index_.CountResident(kGpu), 6u);
  EXPECT_EQ(index_.CountResident(kHost), 3u);
  EXPECT_EQ(index_.CountResident(kNvme), 1u);
  EXPECT_EQ(index_.CountResident(TierId::kRedis), 0u);
  ASSERT_TRUE(index_.ClearResident(a[4], kGpu, nullptr).ok());
  EXPECT_EQ(index_.size(), 4u);
  EXPECT_EQ(index_.CountResident(kGpu), 4u);
  EXPECT_EQ(index_.CountResident(kHost), 3u);
}

TEST_F(RadixIndexTest, MemoryUsageGrowsWithSize) {
  const size_t empty = index_.MemoryUsage();
  EXPECT_GT(empty, 0u);
  InsertChain(Chain(1000, 0), kGpu);
  const size_t thousand = index_.MemoryUsage();
  EXPECT_GE(thousand, empty + 1000 * (sizeof(ChunkKey) + 5 * sizeof(void*)));
  InsertChain(Chain(1000, 5000), kGpu);
  const size_t two_thousand = index_.MemoryUsage();
  EXPECT_GT(two_thousand, thousand);
  // Memory stays at the high-water mark, and freed chunks are reused.
  ASSERT_TRUE(index_.Erase(Chain(1, 5000)[0], nullptr).ok());
  EXPECT_LE(index_.MemoryUsage(), two_thousand);
  InsertChain(Chain(1000, 9000), kGpu);
  EXPECT_LE(index_.MemoryUsage(), two_thousand);
}

TEST_F(RadixIndexTest, ManyChunksSurviveGrowthAndRemoval) {
  // 4000 chains of 5: the lookup table grows many times, then loses every other chain.
  std::vector<std::vector<ChunkKey>> chains;
  for (int32_t c = 0; c < 4000; ++c) {
    chains.push_back(Chain(5, c * 10));
    InsertChain(chains.back(), kHost);
  }
  ASSERT_EQ(index_.size(), 20000u);
  for (size_t c = 0; c < chains.size(); c += 2) ASSERT_TRUE(index_.Erase(chains[c][0], nullptr).ok());
  ASSERT_EQ(index_.size(), 10000u);
  for (size_t c = 0; c < chains.size(); ++c) {
    ASSERT_EQ(index_.Match(chains[c], {.touch = false}), c % 2 == 0 ? 0u : 5u) << "chain " << c;
    ASSERT_EQ(index_.Residency(chains[c][4]).has_value(), c % 2 == 1) << "chain " << c;
  }
  for (size_t c = 0; c < chains.size(); c += 2) InsertChain(chains[c], kGpu);
  EXPECT_EQ(index_.size(), 20000u);
  EXPECT_EQ(index_.CountResident(kGpu), 10000u);
  EXPECT_EQ(index_.LruLeaves(kHost, kNoLimit).size(), 2000u);
}

TEST_F(RadixIndexTest, ForEachVisitsParentsFirst) {
  const auto a = Chain(6, 0);
  InsertChain(a, kGpu);
  // Children inserted after deeper chunks of other branches still come after their parent.
  for (size_t i = 0; i < a.size(); ++i) ASSERT_TRUE(index_.Insert(a[i], Child(a[i], 1000), kHost).ok());
  const auto all = Snapshot(index_);
  EXPECT_EQ(all.size(), 12u);
}

// ---- differential test against the reference model -------------------------------------

class Differential {
 public:
  explicit Differential(uint64_t seed) : rng_(seed) {}

  void Run(size_t ops) {
    for (size_t i = 0; i < ops; ++i) {
      op_ = i;
      ASSERT_NO_FATAL_FAILURE(Step());
      ASSERT_EQ(index_.size(), ref_.nodes.size()) << "op " << op_;
      const auto resident = ref_.CountResident();
      for (int t = 0; t < kTierCount; ++t)
        ASSERT_EQ(index_.CountResident(TierId(t)), resident[t]) << "tier " << t << " op " << op_;
      ASSERT_EQ(clock_.Now(), ref_.clock) << "op " << op_;
      if (i % 256 == 255) {
        ASSERT_NO_FATAL_FAILURE(CheckAll());
      }
      max_size_ = std::max(max_size_, ref_.nodes.size());
    }
    ASSERT_NO_FATAL_FAILURE(CheckAll());
    UnpinAll();
    ASSERT_NO_FATAL_FAILURE(CheckAll());
  }

  size_t max_size() const { return max_size_; }
  size_t lru_returned() const { return lru_returned_; }

 private:
  uint64_t Rand(uint64_t n) { return rng_() % n; }
  TierId RandTier() { return TierId(Rand(kTierCount)); }

  // A key in the tree. live_ keeps insertion order (hash-map order would make the run
  // depend on the standard library) and drops removed keys lazily.
  std::optional<ChunkKey> RandomLive() {
    if (live_dirty_) {
      std::erase_if(live_, [&](const ChunkKey& k) { return ref_.nodes.count(k) == 0; });
      live_dirty_ = false;
    }
    if (live_.empty()) return std::nullopt;
    return live_[Rand(live_.size())];
  }
  ChunkKey AbsentKey() { return Child(TestNamespace(), 1'000'000 + static_cast<int32_t>(Rand(1000))); }

  void Step() {
    // Grow the tree to a few hundred chunks, then hover there: removals take whole
    // subtrees, so they are rarer than inserts.
    const uint64_t r = Rand(100);
    const size_t n = ref_.nodes.size();
    const uint64_t removals = n < 100 ? 2 : n < 300 ? 6 : 20;
    if (r < 30) return Insert();
    if (r < 36) return SetResident();
    if (r < 36 + removals) return Rand(4) == 0 ? Erase() : ClearResident();
    if (r < 45) return PinOrUnpin();
    if (r < 85) return Match();
    return Lru();
  }

  void Insert() {
    const TierId tier = RandTier();
    const uint64_t kind = Rand(100);
    std::optional<ChunkKey> parent;
    ChunkKey key;
    std::optional<ChunkKey> live = RandomLive();
    if (kind < 4) {
      parent = AbsentKey();
      key = Child(*parent, 0);
    } else if (kind < 8 && live.has_value()) {
      key = *live;  // under another parent: a collision
      const auto& real = ref_.nodes.at(key).parent;
      parent = Rand(3) == 0 ? std::nullopt : RandomLive();
      if (parent == real) parent = real.has_value() ? std::nullopt : RandomLive();
    } else {
      if (live.has_value() && Rand(6) != 0) parent = live;
      key = Child(parent.has_value() ? Hash128(*parent) : TestNamespace(), static_cast<int32_t>(Rand(4)));
    }
    const size_t before = ref_.nodes.size();
    const Status got = index_.Insert(parent, key, tier);
    const Status::Code want = ref_.Insert(parent, key, tier);
    ASSERT_EQ(got.code(), want) << got.ToString() << " op " << op_;
    if (ref_.nodes.size() > before) live_.push_back(key);
  }

  void SetResident() {
    const std::optional<ChunkKey> live = RandomLive();
    const ChunkKey key = live.has_value() && Rand(10) != 0 ? *live : AbsentKey();
    const TierId tier = RandTier();
    ASSERT_EQ(index_.SetResident(key, tier).code(), ref_.SetResident(key, tier)) << "op " << op_;
  }

  void ClearResident() {
    const std::optional<ChunkKey> live = RandomLive();
    const ChunkKey key = live.has_value() && Rand(20) != 0 ? *live : AbsentKey();
    TierId tier = RandTier();
    if (auto it = ref_.nodes.find(key); it != ref_.nodes.end() && Rand(10) < 7) {
      // Mostly a tier it is in.
      std::vector<TierId> in;
      for (int t = 0; t < kTierCount; ++t)
        if (it->second.residency & TierBit(TierId(t))) in.push_back(TierId(t));
      tier = in[Rand(in.size())];
    }
    std::vector<RemovedChunk> got, want;
    const Status s = index_.ClearResident(key, tier, &got);
    ASSERT_EQ(s.code(), ref_.ClearResident(key, tier, &want)) << s.ToString() << " op " << op_;
    ASSERT_NO_FATAL_FAILURE(ExpectSameRemoved(got, want)) << "op " << op_;
    live_dirty_ = true;
  }

  void Erase() {
    const std::optional<ChunkKey> live = RandomLive();
    const ChunkKey key = live.has_value() && Rand(20) != 0 ? *live : AbsentKey();
    std::vector<RemovedChunk> got, want;
    const Status s = index_.Erase(key, &got);
    ASSERT_EQ(s.code(), ref_.Erase(key, &want)) << s.ToString() << " op " << op_;
    ASSERT_NO_FATAL_FAILURE(ExpectSameRemoved(got, want)) << "op " << op_;
    live_dirty_ = true;
  }

  void PinOrUnpin() {
    if (pinned_.size() > 6 || (!pinned_.empty() && Rand(2) == 0)) {
      const size_t i = Rand(pinned_.size());
      index_.Unpin(pinned_[i]);
      ref_.Unpin(pinned_[i]);
      pinned_.erase(pinned_.begin() + static_cast<ptrdiff_t>(i));
      return;
    }
    const std::optional<ChunkKey> live = RandomLive();
    if (!live.has_value()) return;
    if (Rand(5) == 0) {  // unpin something nobody pinned: no underflow
      const ChunkKey keys[2] = {*live, AbsentKey()};
      index_.Unpin(keys);
      ref_.Unpin(keys);
      return;
    }
    std::vector<ChunkKey> keys = ref_.Path(*live);
    keys.resize(1 + Rand(keys.size()));
    index_.Pin(keys);
    ref_.Pin(keys);
    pinned_.push_back(std::move(keys));
  }

  void Match() {
    std::vector<ChunkKey> keys;
    const std::optional<ChunkKey> live = RandomLive();
    if (live.has_value() && Rand(10) < 7) {
      keys = ref_.Path(*live);
      if (Rand(3) == 0) keys.resize(Rand(keys.size() + 1));
      for (uint64_t extend = Rand(3); extend > 0; --extend)
        keys.push_back(Child(keys.empty() ? TestNamespace() : keys.back(), static_cast<int32_t>(Rand(4))));
      if (!keys.empty() && Rand(4) == 0) keys[Rand(keys.size())] = Rand(2) == 0 ? *RandomLive() : AbsentKey();
    } else {
      Hash128 prev = TestNamespace();
      for (uint64_t n = Rand(7); n > 0; --n) {
        keys.push_back(Child(prev, static_cast<int32_t>(Rand(4))));
        prev = keys.back();
      }
    }
    MatchOptions opts;
    const uint64_t tiers = Rand(10);
    opts.tiers = tiers < 5 ? kAllTiers : static_cast<TierMask>(Rand(16));
    opts.touch = Rand(5) != 0;
    opts.pin = pinned_.size() < 6 && Rand(6) == 0;
    std::vector<TierMask> got_res, want_res;
    const bool want_residency = Rand(4) != 0;
    const size_t got = index_.Match(keys, opts, want_residency ? &got_res : nullptr);
    const size_t want = ref_.Match(keys, opts, &want_res);
    ASSERT_EQ(got, want) << "op " << op_;
    if (want_residency) {
      ASSERT_EQ(got_res, want_res) << "op " << op_;
    }
    if (opts.pin && got > 0) pinned_.emplace_back(keys.begin(), keys.begin() + static_cast<ptrdiff_t>(got));
  }

  void Lru() {
    static constexpr size_t kMax[] = {0, 1, 2, 5, 16, kNoLimit};
    const TierId tier = RandTier();
    const size_t max = kMax[Rand(std::size(kMax))];
    const auto got = index_.LruLeaves(tier, max);
    const auto want = ref_.LruLeaves(tier, max);
    ASSERT_EQ(got.size(), want.size()) << "op " << op_;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].key, want[i].key) << "candidate " << i << " op " << op_;
      ASSERT_EQ(got[i].last_access, want[i].last_access) << "candidate " << i << " op " << op_;
    }
    lru_returned_ += got.size();
    // Evict the oldest one or two, as a tier would.
    for (size_t i = 0; i < got.size() && i < 2 && Rand(ref_.nodes.size() < 300 ? 8 : 2) == 0; ++i) {
      std::vector<RemovedChunk> got_removed, want_removed;
      const Status s = index_.ClearResident(got[i].key, tier, &got_removed);
      ASSERT_EQ(s.code(), ref_.ClearResident(got[i].key, tier, &want_removed)) << s.ToString() << " op " << op_;
      ASSERT_NO_FATAL_FAILURE(ExpectSameRemoved(got_removed, want_removed));
      live_dirty_ = true;
    }
  }

  void UnpinAll() {
    for (const auto& keys : pinned_) {
      index_.Unpin(keys);
      ref_.Unpin(keys);
    }
    pinned_.clear();
  }

  void CheckAll() {
    const auto all = Snapshot(index_);
    ASSERT_EQ(all.size(), ref_.nodes.size()) << "op " << op_;
    for (const auto& [key, node] : ref_.nodes) {
      auto it = all.find(key);
      ASSERT_NE(it, all.end()) << key.ToHex() << " op " << op_;
      EXPECT_EQ(it->second.parent, node.parent) << "op " << op_;
      EXPECT_EQ(it->second.residency, node.residency) << "op " << op_;
      EXPECT_EQ(it->second.last_access, node.last_access) << "op " << op_;
      EXPECT_EQ(index_.PinCount(key), node.pins) << "op " << op_;
      EXPECT_EQ(index_.Residency(key), node.residency) << "op " << op_;
    }
  }

  std::mt19937_64 rng_;
  LogicalClock clock_;
  RadixIndex index_{&clock_};
  ReferenceIndex ref_;
  std::vector<ChunkKey> live_;
  bool live_dirty_ = false;
  std::vector<std::vector<ChunkKey>> pinned_;  // each entry pinned once, in both
  size_t op_ = 0;
  size_t max_size_ = 0;
  size_t lru_returned_ = 0;
};

TEST(RadixIndexDifferentialTest, MatchesReferenceModel) {
  for (uint64_t seed : {1, 2, 3, 4}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Differential d(seed);
    ASSERT_NO_FATAL_FAILURE(d.Run(25'000));
    EXPECT_GT(d.max_size(), 100u) << "the random walk should grow a real tree";
    EXPECT_GT(d.lru_returned(), 1000u);
  }
}

// ---- concurrency -----------------------------------------------------------------------

TEST(RadixIndexConcurrencyTest, ReadersPinWhileWriterMutates) {
  LogicalClock clock;
  RadixIndex index(&clock);
  // Prompts over a small alphabet, so that many share prefixes.
  std::mt19937_64 rng(7);
  std::vector<std::vector<ChunkKey>> prompts(48);
  for (auto& prompt : prompts) {
    Hash128 prev = TestNamespace();
    const size_t len = 2 + rng() % 24;
    for (size_t j = 0; j < len; ++j) {
      prompt.push_back(Child(prev, static_cast<int32_t>(rng() % (j < 4 ? 2 : 3))));
      prev = prompt.back();
    }
  }

  constexpr int kReaders = 3;
  std::atomic<int> started{0};
  std::atomic<bool> done{false};
  std::atomic<size_t> reads{0};
  std::atomic<size_t> errors{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < kReaders; ++r) {
    readers.emplace_back([&, r] {
      std::mt19937_64 local(100 + r);
      started.fetch_add(1);
      std::vector<TierMask> residency;
      while (!done.load(std::memory_order_relaxed)) {
        const auto& prompt = prompts[local() % prompts.size()];
        MatchOptions opts;
        opts.pin = true;
        opts.tiers = local() % 3 == 0 ? static_cast<TierMask>(1 + local() % 15) : kAllTiers;
        const size_t m = index.Match(prompt, opts, &residency);
        std::this_thread::yield();  // hold the pins a while: the writer should meet them
        for (size_t i = 0; i < m; ++i) {
          if ((residency[i] & opts.tiers) == 0) errors.fetch_add(1);
          // A pinned chunk cannot be removed.
          if (!index.Residency(prompt[i]).has_value() || index.PinCount(prompt[i]) == 0) errors.fetch_add(1);
        }
        index.Unpin(std::span(prompt).first(m));
        reads.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  while (started.load() < kReaders) std::this_thread::yield();

  // At least 3000 writes and, time permitting, 3000 reads alongside them.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  size_t busy = 0;
  for (int iter = 0; iter < 3000 || (reads.load() < 3000 && std::chrono::steady_clock::now() < deadline); ++iter) {
    const auto& prompt = prompts[rng() % prompts.size()];
    const auto tier = TierId(rng() % kTierCount);
    const ChunkKey& key = prompt[rng() % prompt.size()];
    std::vector<RemovedChunk> removed;
    const uint64_t op = rng() % 10;
    if (op < 4) {
      std::optional<ChunkKey> parent;
      for (const ChunkKey& k : prompt) {
        const Status s = index.Insert(parent, k, tier);
        EXPECT_TRUE(s.ok()) << s.ToString();
        parent = k;
      }
    } else if (op < 7) {
      const Status s = op == 4 ? index.Erase(key, &removed) : index.ClearResident(key, tier, &removed);
      EXPECT_TRUE(s.ok() || s.IsNotFound() || s.code() == Status::Code::kBusy) << s.ToString();
      busy += s.code() == Status::Code::kBusy;
    } else {
      for (const LeafCandidate& c : index.LruLeaves(tier, 4)) {
        // NotFound: removed with an earlier candidate's subtree.
        const Status s = index.ClearResident(c.key, tier, &removed);
        EXPECT_TRUE(s.ok() || s.IsNotFound() || s.code() == Status::Code::kBusy) << s.ToString();
        busy += s.code() == Status::Code::kBusy;
      }
    }
    if (iter % 500 == 0) Snapshot(index);
  }
  done.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(errors.load(), 0u);
  EXPECT_GT(reads.load(), 0u);

  // Quiescent: nothing pinned, counters agree with a full walk, leaf sets are exact.
  const auto all = Snapshot(index);
  EXPECT_EQ(all.size(), index.size());
  std::unordered_map<ChunkKey, TierMask, ChunkKeyHash> child_tiers;
  size_t resident[kTierCount] = {};
  for (const auto& [key, v] : all) {
    EXPECT_EQ(index.PinCount(key), 0u);
    EXPECT_NE(v.residency, 0);
    if (v.parent.has_value()) child_tiers[*v.parent] |= v.residency;
    for (int t = 0; t < kTierCount; ++t) resident[t] += (v.residency >> t) & 1u;
  }
  for (int t = 0; t < kTierCount; ++t) {
    EXPECT_EQ(index.CountResident(TierId(t)), resident[t]);
    std::vector<ChunkKey> want;
    for (const auto& [key, v] : all) {
      if (((v.residency >> t) & 1) != 0 && ((child_tiers[key] >> t) & 1) == 0) want.push_back(key);
    }
    const auto got = index.LruLeaves(TierId(t), kNoLimit);
    EXPECT_EQ(ToSet(Keys(got)), ToSet(want)) << "tier " << t;
    for (size_t i = 1; i < got.size(); ++i) EXPECT_LE(got[i - 1].last_access, got[i].last_access);
  }
  RecordProperty("busy", static_cast<int>(busy));
}

}  // namespace
}  // namespace kvtier
