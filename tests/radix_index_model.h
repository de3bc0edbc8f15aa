// The naive reference model of RadixIndex, shared by radix_index_test.cc and the fuzzer.
#ifndef KVTIER_TESTS_RADIX_INDEX_MODEL_H_
#define KVTIER_TESTS_RADIX_INDEX_MODEL_H_

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "index/radix_index.h"

namespace kvtier {

inline bool KeyLess(const Hash128& a, const Hash128& b) { return std::tie(a.hi, a.lo) < std::tie(b.hi, b.lo); }

// ---- the reference model ---------------------------------------------------------------
//
// A flat map from key to state; every question is answered by scanning it. Ticks follow
// RadixIndex's clock discipline: one tick per new chunk, one per Match(touch) that
// matches at least one chunk (all of its chunks get it). LRU order is (last_access,
// deeper first): the chunks of one Match share a tick and form a chain, so their depths
// differ.

struct RefNode {
  std::optional<ChunkKey> parent;
  TierMask residency = 0;
  uint64_t last_access = 0;
  uint32_t pins = 0;
};

class ReferenceIndex {
 public:
  uint64_t clock = 0;
  std::unordered_map<ChunkKey, RefNode, ChunkKeyHash> nodes;

  size_t Match(std::span<const ChunkKey> keys, const MatchOptions& opts, std::vector<TierMask>* residency) {
    residency->assign(keys.size(), 0);
    std::optional<ChunkKey> prev;
    uint64_t tick = 0;
    size_t i = 0;
    for (; i < keys.size(); ++i) {
      auto it = nodes.find(keys[i]);
      if (it == nodes.end() || it->second.parent != prev || (it->second.residency & opts.tiers) == 0) break;
      (*residency)[i] = it->second.residency;
      if (opts.touch) {
        if (tick == 0) tick = ++clock;
        it->second.last_access = tick;
      }
      if (opts.pin) ++it->second.pins;
      prev = keys[i];
    }
    return i;
  }

  Status::Code Insert(const std::optional<ChunkKey>& parent, const ChunkKey& key, TierId tier) {
    if (parent.has_value() && nodes.count(*parent) == 0) return Status::Code::kNotFound;
    if (auto it = nodes.find(key); it != nodes.end()) {
      if (it->second.parent != parent) return Status::Code::kCorruption;
      it->second.residency |= TierBit(tier);
      return Status::Code::kOk;
    }
    nodes[key] = RefNode{parent, TierBit(tier), ++clock, 0};
    return Status::Code::kOk;
  }

  Status::Code SetResident(const ChunkKey& key, TierId tier) {
    auto it = nodes.find(key);
    if (it == nodes.end()) return Status::Code::kNotFound;
    it->second.residency |= TierBit(tier);
    return Status::Code::kOk;
  }

  Status::Code ClearResident(const ChunkKey& key, TierId tier, std::vector<RemovedChunk>* removed) {
    auto it = nodes.find(key);
    if (it == nodes.end()) return Status::Code::kNotFound;
    if ((it->second.residency & TierBit(tier)) == 0) return Status::Code::kOk;
    if (it->second.residency == TierBit(tier)) return Remove(key, removed);
    it->second.residency &= static_cast<TierMask>(~TierBit(tier));
    return Status::Code::kOk;
  }

  Status::Code Erase(const ChunkKey& key, std::vector<RemovedChunk>* removed) {
    if (nodes.count(key) == 0) return Status::Code::kNotFound;
    return Remove(key, removed);
  }

  void Pin(std::span<const ChunkKey> keys) {
    for (const ChunkKey& k : keys) {
      if (auto it = nodes.find(k); it != nodes.end()) ++it->second.pins;
    }
  }
  void Unpin(std::span<const ChunkKey> keys) {
    for (const ChunkKey& k : keys) {
      if (auto it = nodes.find(k); it != nodes.end() && it->second.pins > 0) --it->second.pins;
    }
  }

  std::vector<LeafCandidate> LruLeaves(TierId tier, size_t max) const {
    const TierMask bit = TierBit(tier);
    std::unordered_map<ChunkKey, TierMask, ChunkKeyHash> child_tiers;
    for (const auto& [key, node] : nodes) {
      if (node.parent.has_value()) child_tiers[*node.parent] |= node.residency;
    }
    std::vector<std::tuple<uint64_t, int64_t, ChunkKey>> leaves;
    for (const auto& [key, node] : nodes) {
      if ((node.residency & bit) == 0 || node.pins != 0) continue;
      if (auto it = child_tiers.find(key); it != child_tiers.end() && (it->second & bit) != 0) continue;
      leaves.emplace_back(node.last_access, -static_cast<int64_t>(Depth(key)), key);
    }
    std::sort(leaves.begin(), leaves.end(), [](const auto& a, const auto& b) {
      if (std::get<0>(a) != std::get<0>(b)) return std::get<0>(a) < std::get<0>(b);
      if (std::get<1>(a) != std::get<1>(b)) return std::get<1>(a) < std::get<1>(b);
      return KeyLess(std::get<2>(a), std::get<2>(b));
    });
    std::vector<LeafCandidate> out;
    for (size_t i = 0; i < leaves.size() && i < max; ++i) out.push_back({std::get<2>(leaves[i]), std::get<0>(leaves[i])});
    return out;
  }

  std::array<size_t, kTierCount> CountResident() const {
    std::array<size_t, kTierCount> n{};
    for (const auto& [key, node] : nodes) {
      for (int t = 0; t < kTierCount; ++t) n[t] += (node.residency >> t) & 1u;
    }
    return n;
  }

  size_t Depth(const ChunkKey& key) const {
    size_t depth = 0;
    for (auto p = nodes.at(key).parent; p.has_value(); p = nodes.at(*p).parent) ++depth;
    return depth;
  }

  // Keys from the root down to `key`.
  std::vector<ChunkKey> Path(const ChunkKey& key) const {
    std::vector<ChunkKey> path{key};
    for (auto p = nodes.at(key).parent; p.has_value(); p = nodes.at(*p).parent) path.push_back(*p);
    std::reverse(path.begin(), path.end());
    return path;
  }

  // `key` first, then its descendants.
  std::vector<ChunkKey> Subtree(const ChunkKey& key) const {
    std::vector<ChunkKey> out{key};
    std::unordered_set<ChunkKey, ChunkKeyHash> in{key};
    for (bool grew = true; grew;) {
      grew = false;
      for (const auto& [k, node] : nodes) {
        if (node.parent.has_value() && in.count(*node.parent) != 0 && in.insert(k).second) {
          out.push_back(k);
          grew = true;
        }
      }
    }
    return out;
  }

 private:
  Status::Code Remove(const ChunkKey& key, std::vector<RemovedChunk>* removed) {
    const std::vector<ChunkKey> subtree = Subtree(key);
    for (const ChunkKey& k : subtree) {
      if (nodes.at(k).pins != 0) return Status::Code::kBusy;
    }
    for (const ChunkKey& k : subtree) {
      removed->push_back({k, nodes.at(k).residency});
      nodes.erase(k);
    }
    return Status::Code::kOk;
  }
};

}  // namespace kvtier

#endif  // KVTIER_TESTS_RADIX_INDEX_MODEL_H_
