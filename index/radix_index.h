// RadixIndex: which chunks of one namespace are cached, and in which tiers.
//
// A radix tree whose alphabet is whole chunks. Chunk keys are chained (chunk_key.h),
// so a key names its whole prefix: the tree is a trie over key sequences, and an
// edge is exactly one chunk — "split at chunk boundaries" holds by construction.
// Every chunk keeps its own residency, LRU tick and pin count, so a run of
// single-child chunks is not merged into one node: the per-chunk state would have
// to be kept anyway.
//
//        root (namespace)
//        ├── k0 ── k1 ── k2 ── k3      a prompt of 4 chunks
//        │          └── k2' ── k3'     a second prompt sharing k0 k1
//        └── j0                        an unrelated prompt
//
// Invariants
//   - Every node is resident in at least one tier; its parent is in the tree.
//     A node whose residency drops to zero is removed with its whole subtree.
//   - For each tier t, a "t-leaf" is a node resident in t none of whose children is
//     resident in t. LruLeaves(t) returns t-leaves, least recently used first, never
//     a pinned one. Evicting leaves first keeps every cached chunk reachable.
//   - LRU order is a logical clock (LogicalClock, shared by all indexes of a Store
//     so that their ticks compare), advanced by Match(touch) and Insert.
//   - Match cost is linear in the matched chunks, never in the number of cached ones.
//
// Thread-safety: every method may be called from any thread. Match, Pin, Unpin,
// Residency and PinCount take a shared lock (touch and pin are atomics); Insert,
// SetResident, ClearResident, Erase and LruLeaves take an exclusive lock, and are brief
// (LruLeaves re-sorts the leaves touched since its last call).
#ifndef KVTIER_INDEX_RADIX_INDEX_H_
#define KVTIER_INDEX_RADIX_INDEX_H_

#include <atomic>
#include <functional>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "index/chunk_key.h"
#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

class LogicalClock {
 public:
  // Returns a fresh tick, larger than every tick returned before.
  uint64_t Tick() noexcept { return now_.fetch_add(1, std::memory_order_relaxed) + 1; }
  uint64_t Now() const noexcept { return now_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> now_{0};
};

struct MatchOptions {
  TierMask tiers = kAllTiers;  // a chunk counts as present when resident in one of these
  bool touch = true;           // mark matched chunks as used now (LRU)
  bool pin = false;            // pin matched chunks; the caller must Unpin exactly those keys
};

struct RemovedChunk {
  ChunkKey key;
  TierMask residency;  // tiers that held it when it was removed: free those copies
};

struct LeafCandidate {
  ChunkKey key;
  uint64_t last_access;
};

class RadixIndex {
 public:
  // `clock` must outlive the index.
  explicit RadixIndex(LogicalClock* clock);
  ~RadixIndex();
  RadixIndex(const RadixIndex&) = delete;
  RadixIndex& operator=(const RadixIndex&) = delete;

  // Length of the longest run keys[0..n) present in the tree as a chain from the root,
  // each resident in one of opts.tiers. When `residency` is not null it is resized to n
  // and residency[i] is chunk i's full residency mask.
  size_t Match(std::span<const ChunkKey> keys, const MatchOptions& opts,
               std::vector<TierMask>* residency = nullptr);

  // Marks `key` resident in `tier`, creating the node under `parent` (nullopt: the root)
  // if it is absent. NotFound if parent is not in the tree; Corruption if key is in the
  // tree under another parent (a hash collision). A new node is touched.
  Status Insert(const std::optional<ChunkKey>& parent, const ChunkKey& key, TierId tier);

  // Adds `tier` to the residency of a key already in the tree (NotFound otherwise).
  Status SetResident(const ChunkKey& key, TierId tier);

  // Removes `tier` from key's residency. If no tier is left, the node and its subtree
  // are removed and appended to `removed` (the key itself first). NotFound if absent;
  // Busy (and nothing changes) if a node that would be removed is pinned, or, with
  // if_unpinned, if key itself is pinned (a reader may be using its copy in `tier`).
  Status ClearResident(const ChunkKey& key, TierId tier, std::vector<RemovedChunk>* removed,
                       bool if_unpinned = false);

  // Removes key and its whole subtree, appending them to `removed`.
  // NotFound if absent; Busy (and nothing changes) if any of them is pinned.
  Status Erase(const ChunkKey& key, std::vector<RemovedChunk>* removed);

  // Pins or unpins each key present (absent keys are ignored). Pins nest.
  void Pin(std::span<const ChunkKey> keys);
  void Unpin(std::span<const ChunkKey> keys);

  // Up to `max` unpinned t-leaves of `tier`, least recently used first.
  std::vector<LeafCandidate> LruLeaves(TierId tier, size_t max);

  // Residency mask of key, or nullopt when absent.
  std::optional<TierMask> Residency(const ChunkKey& key) const;
  uint32_t PinCount(const ChunkKey& key) const;  // 0 when absent
  // False when key is absent; else *parent is its parent (nullopt for a root chunk).
  bool Parent(const ChunkKey& key, std::optional<ChunkKey>* parent) const;

  size_t size() const;               // chunks in the tree
  size_t CountResident(TierId tier) const;
  // Heap bytes held by the index (nodes, maps, leaf sets), for "metadata per chunk".
  size_t MemoryUsage() const;

  // Walks every chunk, parents before children. For tests and rebuilds; takes the
  // shared lock for the whole walk.
  void ForEach(const std::function<void(const ChunkKey& key, const std::optional<ChunkKey>& parent,
                                        TierMask residency, uint64_t last_access)>& fn) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier

#endif  // KVTIER_INDEX_RADIX_INDEX_H_
