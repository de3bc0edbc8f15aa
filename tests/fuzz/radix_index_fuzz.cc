// libFuzzer target: the input bytes are a program of RadixIndex operations, run on the
// index and on the naive reference model of tests/radix_index_test.cc; any divergence
// traps. Keys are chained (NextChunkKey) over a 4-token alphabet, so short inputs grow
// trees with shared prefixes, re-inserts and removals of whole subtrees.
//
//   clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -I. \
//     common/status.cc common/types.cc index/chunk_key.cc index/radix_index.cc \
//     tests/fuzz/radix_index_fuzz.cc -lxxhash -o radix_index_fuzz
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <span>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "index/radix_index.h"
#include "tests/radix_index_model.h"

#define FUZZ_CHECK(cond)                                                                    \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "radix_index_fuzz: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      __builtin_trap();                                                                     \
    }                                                                                       \
  } while (0)

namespace kvtier {
namespace {

Hash128 FuzzNamespace() { return Hash128{0x66757a7a2d6e7331ull, 0x7261646978000000ull}; }

ChunkKey Child(const Hash128& parent, int32_t token) {
  const int32_t tokens[1] = {token};
  return NextChunkKey(parent, tokens, {});
}


// ---- the harness -------------------------------------------------------------------------

class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

void CheckSameRemoved(std::vector<RemovedChunk> got, std::vector<RemovedChunk> want) {
  FUZZ_CHECK(got.size() == want.size());
  if (got.empty()) return;
  FUZZ_CHECK(got[0].key == want[0].key && got[0].residency == want[0].residency);
  auto less = [](const RemovedChunk& a, const RemovedChunk& b) { return KeyLess(a.key, b.key); };
  std::sort(got.begin() + 1, got.end(), less);
  std::sort(want.begin() + 1, want.end(), less);
  for (size_t i = 1; i < got.size(); ++i) FUZZ_CHECK(got[i].key == want[i].key && got[i].residency == want[i].residency);
}

class Harness {
 public:
  void Run(Input* in) {
    for (size_t op = 0; !in->empty() && op < 4096; ++op) {
      Step(in);
      FUZZ_CHECK(index_.size() == ref_.nodes.size());
      for (int t = 0; t < kTierCount; ++t) FUZZ_CHECK(index_.CountResident(TierId(t)) == ref_.CountResident()[t]);
      FUZZ_CHECK(clock_.Now() == ref_.clock);
      if (op % 16 == 15) CheckAll();
    }
    CheckAll();
    for (const auto& keys : pinned_) {
      index_.Unpin(keys);
      ref_.Unpin(keys);
    }
    CheckAll();
  }

 private:
  // A tier, now and then an invalid one (checked here: the model knows only valid ones).
  std::optional<TierId> Tier(Input* in) {
    const uint8_t b = in->Byte();
    if (b >= 250) return std::nullopt;
    return TierId(b % kTierCount);
  }
  std::optional<ChunkKey> Pick(Input* in) {
    const uint8_t b = in->Byte();
    if (live_dirty_) {
      std::erase_if(live_, [&](const ChunkKey& k) { return ref_.nodes.count(k) == 0; });
      live_dirty_ = false;
    }
    if (live_.empty() || b == 255) return std::nullopt;
    return live_[b % live_.size()];
  }
  static ChunkKey Absent(uint8_t b) { return Child(FuzzNamespace(), 1'000'000 + b); }

  void Step(Input* in) {
    switch (in->Byte() % 9) {
      case 0:
      case 1: {  // insert a child (or a new root chunk)
        const std::optional<ChunkKey> parent = Pick(in);
        const ChunkKey key = Child(parent.has_value() ? Hash128(*parent) : FuzzNamespace(), in->Byte() % 4);
        return Insert(parent, key, Tier(in));
      }
      case 2: {  // insert a cached key under a chosen parent: a re-insert or a collision
        const std::optional<ChunkKey> key = Pick(in);
        std::optional<ChunkKey> parent = Pick(in);
        if (in->Byte() % 8 == 0) parent = Absent(in->Byte());
        if (key.has_value()) Insert(parent, *key, Tier(in));
        return;
      }
      case 3: {
        const std::optional<ChunkKey> picked = Pick(in);
        const ChunkKey key = picked.value_or(Absent(in->Byte()));
        const std::optional<TierId> tier = Tier(in);
        const Status s = index_.SetResident(key, tier.value_or(TierId(kTierCount)));
        FUZZ_CHECK(s.code() == (tier.has_value() ? ref_.SetResident(key, *tier) : Status::Code::kInvalidArgument));
        return;
      }
      case 4:
      case 5: {  // clear a tier, or erase
        const std::optional<ChunkKey> picked = Pick(in);
        const ChunkKey key = picked.value_or(Absent(in->Byte()));
        std::vector<RemovedChunk> got, want;
        if (in->Byte() % 4 == 0) {
          const Status s = index_.Erase(key, &got);
          FUZZ_CHECK(s.code() == ref_.Erase(key, &want));
        } else {
          const std::optional<TierId> tier = Tier(in);
          const Status s = index_.ClearResident(key, tier.value_or(TierId(kTierCount)), &got);
          FUZZ_CHECK(s.code() ==
                     (tier.has_value() ? ref_.ClearResident(key, *tier, &want) : Status::Code::kInvalidArgument));
        }
        CheckSameRemoved(got, want);
        live_dirty_ = true;
        return;
      }
      case 6: {  // pin a path prefix, or unpin what was pinned
        const uint8_t b = in->Byte();
        if (!pinned_.empty() && (b & 1) != 0) {
          const size_t i = (b >> 1) % pinned_.size();
          index_.Unpin(pinned_[i]);
          ref_.Unpin(pinned_[i]);
          pinned_.erase(pinned_.begin() + static_cast<ptrdiff_t>(i));
          return;
        }
        const std::optional<ChunkKey> picked = Pick(in);
        if (!picked.has_value()) return;
        std::vector<ChunkKey> keys = ref_.Path(*picked);
        keys.resize(1 + in->Byte() % keys.size());
        if ((b & 2) != 0) keys.push_back(Absent(b));
        index_.Pin(keys);
        ref_.Pin(keys);
        pinned_.push_back(std::move(keys));
        return;
      }
      case 7:
        return Match(in);
      default: {
        const std::optional<TierId> tier = Tier(in);
        const uint8_t b = in->Byte();
        const size_t max = b % 8 == 7 ? SIZE_MAX : b % 8;
        if (!tier.has_value()) {
          FUZZ_CHECK(index_.LruLeaves(TierId(kTierCount), max).empty());
          return;
        }
        const auto got = index_.LruLeaves(*tier, max);
        const auto want = ref_.LruLeaves(*tier, max);
        FUZZ_CHECK(got.size() == want.size());
        for (size_t i = 0; i < got.size(); ++i)
          FUZZ_CHECK(got[i].key == want[i].key && got[i].last_access == want[i].last_access);
        return;
      }
    }
  }

  void Insert(const std::optional<ChunkKey>& parent, const ChunkKey& key, std::optional<TierId> tier) {
    const size_t before = ref_.nodes.size();
    const Status s = index_.Insert(parent, key, tier.value_or(TierId(kTierCount)));
    FUZZ_CHECK(s.code() == (tier.has_value() ? ref_.Insert(parent, key, *tier) : Status::Code::kInvalidArgument));
    if (ref_.nodes.size() > before) live_.push_back(key);
  }

  void Match(Input* in) {
    std::vector<ChunkKey> keys;
    const uint8_t shape = in->Byte();
    if (const std::optional<ChunkKey> picked = Pick(in); picked.has_value()) keys = ref_.Path(*picked);
    if ((shape & 1) != 0) keys.resize(in->Byte() % (keys.size() + 1));
    for (int extend = (shape >> 1) & 3; extend > 0; --extend)
      keys.push_back(Child(keys.empty() ? FuzzNamespace() : keys.back(), in->Byte() % 4));
    if ((shape & 8) != 0 && !keys.empty()) {
      const size_t at = in->Byte() % keys.size();
      const std::optional<ChunkKey> other = Pick(in);
      keys[at] = other.value_or(Absent(in->Byte()));
    }
    const uint8_t flags = in->Byte();
    MatchOptions opts;
    opts.tiers = (flags & 0x80) != 0 ? kAllTiers : static_cast<TierMask>(flags & 0x0f);
    opts.touch = (flags & 0x10) == 0;
    opts.pin = (flags & 0x20) != 0;
    std::vector<TierMask> got_res, want_res;
    const bool with_residency = (flags & 0x40) == 0;
    const size_t got = index_.Match(keys, opts, with_residency ? &got_res : nullptr);
    const size_t want = ref_.Match(keys, opts, &want_res);
    FUZZ_CHECK(got == want);
    if (with_residency) FUZZ_CHECK(got_res == want_res);
    if (opts.pin && got > 0) pinned_.emplace_back(keys.begin(), keys.begin() + static_cast<ptrdiff_t>(got));
  }

  void CheckAll() {
    std::unordered_set<ChunkKey, ChunkKeyHash> seen;
    index_.ForEach([&](const ChunkKey& key, const std::optional<ChunkKey>& parent, TierMask residency,
                       uint64_t last_access) {
      FUZZ_CHECK(!parent.has_value() || seen.count(*parent) != 0);  // parents first
      FUZZ_CHECK(seen.insert(key).second);
      auto it = ref_.nodes.find(key);
      FUZZ_CHECK(it != ref_.nodes.end());
      FUZZ_CHECK(it->second.parent == parent);
      FUZZ_CHECK(it->second.residency == residency);
      FUZZ_CHECK(it->second.last_access == last_access);
    });
    FUZZ_CHECK(seen.size() == ref_.nodes.size());
    for (const auto& [key, node] : ref_.nodes) {
      FUZZ_CHECK(index_.PinCount(key) == node.pins);
      FUZZ_CHECK(index_.Residency(key) == node.residency);
    }
  }

  LogicalClock clock_;
  RadixIndex index_{&clock_};
  ReferenceIndex ref_;
  std::vector<ChunkKey> live_;  // insertion order; removed keys dropped lazily
  bool live_dirty_ = false;
  std::vector<std::vector<ChunkKey>> pinned_;
};

}  // namespace
}  // namespace kvtier

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::Input in(data, size);
  kvtier::Harness harness;
  harness.Run(&in);
  return 0;
}
