#include "index/radix_index.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <utility>

namespace kvtier {
namespace {

bool ValidTier(TierId tier) { return static_cast<unsigned>(tier) < static_cast<unsigned>(kTierCount); }

std::string TierError(TierId tier) {
  return "radix index: tier " + std::to_string(static_cast<unsigned>(tier)) + " is not a tier; use 0.." +
         std::to_string(kTierCount - 1);
}

// Bytes glibc malloc takes for a request of n bytes: an 8-byte header, 16-byte
// granularity, 32 bytes at least.
constexpr size_t MallocBytes(size_t n) { return std::max<size_t>(32, (n + 8 + 15) & ~size_t{15}); }

// One cached chunk. What Match reads and writes comes first: key, parent, last_access,
// pins and residency share the first 40 bytes.
struct Node {
  ChunkKey key;
  // Guarded by mu: written under the exclusive lock, read under either.
  Node* parent = nullptr;  // null: a child of the root
  // Changed under the shared lock too (Match, Pin, Unpin); stable under the exclusive lock.
  std::atomic<uint64_t> last_access{0};
  std::atomic<uint32_t> pins{0};
  // Guarded by mu, as parent.
  TierMask residency = 0;
  TierMask leaf_in = 0;  // tiers whose leaf set holds this node
  uint32_t depth = 0;    // 0 for a child of the root
  uint32_t children_in[kTierCount] = {};  // children resident in each tier
  Node* first_child = nullptr;
  Node* next_sibling = nullptr;  // in the pool: the next free node
  Node* prev_sibling = nullptr;
  uint64_t filed_tick = 0;  // key of this node in every leaf set of leaf_in
};

// Nodes in slabs with a free list: a node never moves while it is in the tree, freed
// nodes are reused, and the slabs stay at the high-water mark until the index goes.
class NodePool {
 public:
  // May throw std::bad_alloc.
  Node* New() {
    if (free_ == nullptr) Grow();
    Node* n = free_;
    free_ = n->next_sibling;
    n->next_sibling = nullptr;
    return n;
  }
  void Delete(Node* n) noexcept {
    std::destroy_at(n);
    std::construct_at(n);
    n->next_sibling = free_;
    free_ = n;
  }
  size_t capacity() const { return capacity_; }
  // Heap bytes of the slabs and of the slab list.
  size_t MemoryUsage() const {
    size_t bytes = MallocBytes(slabs_.capacity() * sizeof(slabs_[0]));
    for (const Slab& s : slabs_) bytes += MallocBytes(s.size * sizeof(Node));
    return bytes;
  }

 private:
  struct Slab {
    std::unique_ptr<Node[]> nodes;
    size_t size;
  };
  void Grow() {
    const size_t n = std::clamp<size_t>(capacity_, 16, 4096);  // doubling, then 384 KiB slabs
    slabs_.reserve(slabs_.size() + 1);
    auto nodes = std::make_unique<Node[]>(n);
    for (size_t i = n; i-- > 0;) {
      nodes[i].next_sibling = free_;
      free_ = &nodes[i];
    }
    slabs_.push_back(Slab{std::move(nodes), n});
    capacity_ += n;
  }

  std::vector<Slab> slabs_;
  Node* free_ = nullptr;
  size_t capacity_ = 0;
};

// ChunkKey -> Node*: open addressing with linear probing and backward-shift deletion,
// load factor at most 3/4. A slot keeps the key's low word as a tag, so a probe touches
// a node only on a likely hit. The home slot mixes in a per-index seed: keys come from
// token streams that callers choose, and a fixed layout could be flooded on purpose.
class NodeTable {
 public:
  explicit NodeTable(uint64_t seed) : seed_(seed) { Rehash(16); }

  size_t size() const { return size_; }
  size_t capacity() const { return mask_ + 1; }
  size_t MemoryUsage() const { return MallocBytes(capacity() * sizeof(Slot)); }

  Node* Find(const ChunkKey& key) const {
    for (size_t i = Home(key.lo);; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.node == nullptr) return nullptr;
      if (s.tag == key.lo && s.node->key == key) return s.node;
    }
  }
  void PrefetchSlot(const ChunkKey& key) const { __builtin_prefetch(&slots_[Home(key.lo)]); }
  // Starts loading key's node when its home slot (prefetched before) holds it.
  template <bool kForWrite>
  void PrefetchNode(const ChunkKey& key) const {
    const Slot& s = slots_[Home(key.lo)];
    if (s.tag == key.lo && s.node != nullptr) __builtin_prefetch(s.node, kForWrite ? 1 : 0);
  }

  // Makes room for n entries. May throw std::bad_alloc, leaving the table as it was.
  void Reserve(size_t n) {
    size_t cap = capacity();
    while (n > cap / 4 * 3) cap *= 2;
    if (cap != capacity()) Rehash(cap);
  }
  // `n->key` must be absent and room reserved.
  void Insert(Node* n) noexcept {
    size_t i = Home(n->key.lo);
    while (slots_[i].node != nullptr) i = (i + 1) & mask_;
    slots_[i] = Slot{n->key.lo, n};
    ++size_;
  }
  void Erase(const Node* n) noexcept {
    size_t hole = Home(n->key.lo);
    while (slots_[hole].node != n) hole = (hole + 1) & mask_;
    // Pull back every later entry of the run that may sit in the hole.
    for (size_t j = (hole + 1) & mask_; slots_[j].node != nullptr; j = (j + 1) & mask_) {
      const size_t home = Home(slots_[j].tag);
      const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
      if (stays) continue;
      slots_[hole] = slots_[j];
      hole = j;
    }
    slots_[hole] = Slot{};
    --size_;
  }

 private:
  struct Slot {
    uint64_t tag = 0;
    Node* node = nullptr;  // null: empty
  };

  size_t Home(uint64_t tag) const { return static_cast<size_t>(((tag ^ seed_) * 0x9E3779B97F4A7C15ull) >> shift_); }

  void Rehash(size_t capacity) {
    auto slots = std::make_unique<Slot[]>(capacity);
    std::swap(slots, slots_);
    const size_t old_capacity = slots ? mask_ + 1 : 0;
    mask_ = capacity - 1;
    shift_ = 64 - static_cast<unsigned>(std::countr_zero(capacity));
    for (size_t i = 0; i < old_capacity; ++i) {
      if (slots[i].node == nullptr) continue;
      size_t j = Home(slots[i].tag);
      while (slots_[j].node != nullptr) j = (j + 1) & mask_;
      slots_[j] = slots[i];
    }
  }

  const uint64_t seed_;
  std::unique_ptr<Slot[]> slots_;
  size_t mask_ = 0;
  unsigned shift_ = 64;
  size_t size_ = 0;
};

// splitmix64 over the index's address and the time: differs per index and per run.
uint64_t TableSeed(const void* self) {
  uint64_t x = reinterpret_cast<uintptr_t>(self) ^
               static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

// Layout: one Node per cached chunk, allocated from `pool` and found through `table`.
// The tree is threaded through the nodes as intrusive parent / first-child / sibling
// pointers; the root is implicit (parent == nullptr) and its children are the list at
// `root_first`.
//
// Leaf sets: for each tier t, `leaves[t]` holds exactly the t-leaves, ordered by
// (filed tick, deeper first, address). Match touches last_access under the shared lock
// without re-filing, so a node's filed tick can only lag behind its last_access; every
// tick stored by Match is drawn after the shared lock was taken, hence after every
// filing. LruLeaves re-files stale entries as it meets them, which gives exact LRU order
// at the cost of one re-file per touched leaf. Ties (the chunks of one Match share its
// tick) go to the deeper chunk first: it serves fewer prompts than its prefix.
//
// Every mutation that can fail for memory does its allocating step (table growth, a new
// node, a leaf-set entry) before anything else, so on std::bad_alloc the index is as it
// was.
struct RadixIndex::Impl {
  struct LeafKey {
    uint64_t tick;
    uint32_t depth;
    Node* node;
  };
  struct LeafOrder {
    bool operator()(const LeafKey& a, const LeafKey& b) const noexcept {
      if (a.tick != b.tick) return a.tick < b.tick;
      if (a.depth != b.depth) return a.depth > b.depth;
      return std::less<Node*>()(a.node, b.node);
    }
  };
  using LeafSet = std::set<LeafKey, LeafOrder>;

  explicit Impl(LogicalClock* c) : clock(c), table(TableSeed(this)) {}

  // Constant after construction.
  LogicalClock* const clock;

  mutable std::shared_mutex mu;
  // Guarded by mu: changed only under the exclusive lock (see Node for its fields).
  NodeTable table;
  NodePool pool;
  Node* root_first = nullptr;  // list of the root's children
  LeafSet leaves[kTierCount];
  size_t resident[kTierCount] = {};

  Node* Find(const ChunkKey& key) const { return table.Find(key); }

  // Preorder successor of n within the subtree of top (top == nullptr: the whole tree).
  static Node* NextPreorder(Node* n, const Node* top) {
    if (n->first_child != nullptr) return n->first_child;
    while (n != top) {
      if (n->next_sibling != nullptr) return n->next_sibling;
      n = n->parent;
    }
    return nullptr;
  }
  static Node* FirstPostorder(Node* n) {
    while (n->first_child != nullptr) n = n->first_child;
    return n;
  }
  // Postorder successor within the subtree of top; never reads a node it returned before.
  static Node* NextPostorder(Node* n, const Node* top) {
    if (n == top) return nullptr;
    if (n->next_sibling != nullptr) return FirstPostorder(n->next_sibling);
    return n->parent;
  }

  // Adds n to leaves[t]. May throw std::bad_alloc, leaving n as it was.
  void File(Node* n, int t) {
    if (n->leaf_in == 0) n->filed_tick = n->last_access.load(std::memory_order_relaxed);
    leaves[t].insert(LeafKey{n->filed_tick, n->depth, n});
    n->leaf_in |= static_cast<TierMask>(1u << t);
  }
  void Unfile(Node* n, int t) noexcept {
    leaves[t].erase(LeafKey{n->filed_tick, n->depth, n});
    n->leaf_in &= static_cast<TierMask>(~(1u << t));
  }
  // Moves n to `tick` in every leaf set holding it; reuses the set nodes (no allocation).
  void Refile(Node* n, uint64_t tick) noexcept {
    const LeafKey old{n->filed_tick, n->depth, n};
    for (int t = 0; t < kTierCount; ++t) {
      if ((n->leaf_in & (1u << t)) == 0) continue;
      auto handle = leaves[t].extract(old);
      handle.value().tick = tick;
      leaves[t].insert(std::move(handle));
    }
    n->filed_tick = tick;
  }

  void LinkChild(Node* parent, Node* n) noexcept {
    Node*& first = parent != nullptr ? parent->first_child : root_first;
    n->next_sibling = first;
    n->prev_sibling = nullptr;
    if (first != nullptr) first->prev_sibling = n;
    first = n;
  }
  void Unlink(Node* n) noexcept {
    if (n->prev_sibling != nullptr) {
      n->prev_sibling->next_sibling = n->next_sibling;
    } else if (n->parent != nullptr) {
      n->parent->first_child = n->next_sibling;
    } else {
      root_first = n->next_sibling;
    }
    if (n->next_sibling != nullptr) n->next_sibling->prev_sibling = n->prev_sibling;
    n->next_sibling = n->prev_sibling = nullptr;
  }

  // Makes n resident in t. Strong guarantee on std::bad_alloc.
  void AddTier(Node* n, int t) {
    const auto bit = static_cast<TierMask>(1u << t);
    if ((n->residency & bit) != 0) return;
    if (n->children_in[t] == 0) File(n, t);
    n->residency |= bit;
    ++resident[t];
    if (Node* p = n->parent; p != nullptr && p->children_in[t]++ == 0 && (p->leaf_in & bit) != 0) Unfile(p, t);
  }

  // Removes t from n, which keeps another tier. Strong guarantee on std::bad_alloc.
  void DropTier(Node* n, int t) {
    const auto bit = static_cast<TierMask>(1u << t);
    Node* p = n->parent;
    if (p != nullptr && (p->residency & bit) != 0 && p->children_in[t] == 1) File(p, t);
    if ((n->leaf_in & bit) != 0) Unfile(n, t);
    n->residency &= static_cast<TierMask>(~bit);
    --resident[t];
    if (p != nullptr) --p->children_in[t];
  }

  void Destroy(Node* n) noexcept {
    for (int t = 0; t < kTierCount; ++t) {
      if ((n->leaf_in & (1u << t)) != 0) Unfile(n, t);
      if ((n->residency & (1u << t)) != 0) --resident[t];
    }
    table.Erase(n);
    pool.Delete(n);
  }

  // Removes top and its subtree, or returns Busy and changes nothing.
  // Strong guarantee on std::bad_alloc.
  Status RemoveSubtree(Node* top, std::vector<RemovedChunk>* removed) {
    size_t count = 0;
    for (Node* n = top; n != nullptr; n = NextPreorder(n, top)) {
      const uint32_t pins = n->pins.load(std::memory_order_relaxed);
      if (pins != 0) {
        std::string msg = "radix index: chunk " + n->key.ToHex() + " is pinned by " + std::to_string(pins) +
                          " reader(s)";
        if (n != top) msg += " below chunk " + top->key.ToHex();
        return Status::Busy(msg + "; retry once they unpin");
      }
      ++count;
    }
    if (removed != nullptr) removed->reserve(removed->size() + count);

    // The parent becomes a t-leaf for each tier t where top was its last t-resident child.
    Node* p = top->parent;
    TierMask filed = 0;
    if (p != nullptr) {
      try {
        for (int t = 0; t < kTierCount; ++t) {
          const auto bit = static_cast<TierMask>(1u << t);
          if ((top->residency & bit) != 0 && (p->residency & bit) != 0 && p->children_in[t] == 1) {
            File(p, t);
            filed |= bit;
          }
        }
      } catch (...) {
        for (int t = 0; t < kTierCount; ++t) {
          if ((filed & (1u << t)) != 0) Unfile(p, t);
        }
        throw;
      }
      for (int t = 0; t < kTierCount; ++t) {
        if ((top->residency & (1u << t)) != 0) --p->children_in[t];
      }
    }

    if (removed != nullptr) {
      for (Node* n = top; n != nullptr; n = NextPreorder(n, top)) removed->push_back({n->key, n->residency});
    }
    Unlink(top);
    for (Node* n = FirstPostorder(top); n != nullptr;) {
      Node* next = NextPostorder(n, top);
      Destroy(n);
      n = next;
    }
    return Status::OK();
  }
};

RadixIndex::RadixIndex(LogicalClock* clock) : impl_(std::make_unique<Impl>(clock)) {}

RadixIndex::~RadixIndex() = default;

// Entries of `residency` past the match are 0. One tick is drawn per call, and only when
// a chunk matched; all matched chunks get it.
//
// The keys are known up front, so the lookups are pipelined: the home slot of key i+8
// and the node of key i+4 are prefetched while key i is looked up. On a long chain this
// overlaps the cache misses that would otherwise be paid one after another.
size_t RadixIndex::Match(std::span<const ChunkKey> keys, const MatchOptions& opts,
                         std::vector<TierMask>* residency) {
  constexpr size_t kSlotAhead = 8;
  constexpr size_t kNodeAhead = 4;
  if (residency != nullptr) residency->assign(keys.size(), 0);
  std::shared_lock lock(impl_->mu);
  const NodeTable& table = impl_->table;
  const size_t n = keys.size();
  const bool write = opts.touch || opts.pin;
  for (size_t j = 0; j < n && j < kSlotAhead; ++j) table.PrefetchSlot(keys[j]);
  uint64_t tick = 0;
  const Node* prev = nullptr;
  size_t i = 0;
  for (; i < n; ++i) {
    if (i + kSlotAhead < n) table.PrefetchSlot(keys[i + kSlotAhead]);
    if (i + kNodeAhead < n) {
      if (write) {
        table.PrefetchNode<true>(keys[i + kNodeAhead]);
      } else {
        table.PrefetchNode<false>(keys[i + kNodeAhead]);
      }
    }
    Node* node = table.Find(keys[i]);
    if (node == nullptr || node->parent != prev || (node->residency & opts.tiers) == 0) break;
    if (residency != nullptr) (*residency)[i] = node->residency;
    if (opts.touch) {
      if (tick == 0) tick = impl_->clock->Tick();  // drawn under the lock: see Impl
      node->last_access.store(tick, std::memory_order_relaxed);
    }
    if (opts.pin) node->pins.fetch_add(1, std::memory_order_relaxed);
    prev = node;
  }
  return i;
}

Status RadixIndex::Insert(const std::optional<ChunkKey>& parent, const ChunkKey& key, TierId tier) {
  if (!ValidTier(tier)) return Status::InvalidArgument(TierError(tier));
  const int t = static_cast<int>(tier);
  std::unique_lock lock(impl_->mu);
  Node* p = nullptr;
  if (parent.has_value()) {
    p = impl_->Find(*parent);
    if (p == nullptr) {
      return Status::NotFound("radix index: parent chunk " + parent->ToHex() + " of chunk " + key.ToHex() +
                              " is not cached; insert the parent first");
    }
  }
  if (Node* n = impl_->Find(key); n != nullptr) {
    if (n->parent != p) {
      auto name = [](const Node* x) { return x != nullptr ? "chunk " + x->key.ToHex() : std::string("the root"); };
      return Status::Corruption("radix index: chunk " + key.ToHex() + " is cached under " + name(n->parent) +
                                ", not under " + name(p) +
                                " (hash collision, or the caller passed the wrong parent)");
    }
    impl_->AddTier(n, t);
    return Status::OK();
  }

  impl_->table.Reserve(impl_->table.size() + 1);
  Node* n = impl_->pool.New();
  const uint64_t tick = impl_->clock->Tick();
  n->key = key;
  n->parent = p;
  n->depth = p != nullptr ? p->depth + 1 : 0;
  n->last_access.store(tick, std::memory_order_relaxed);
  try {
    impl_->File(n, t);
  } catch (...) {
    impl_->pool.Delete(n);
    throw;
  }
  impl_->table.Insert(n);
  n->residency = TierBit(tier);
  ++impl_->resident[t];
  impl_->LinkChild(p, n);
  if (p != nullptr && p->children_in[t]++ == 0 && (p->leaf_in & TierBit(tier)) != 0) impl_->Unfile(p, t);
  return Status::OK();
}

Status RadixIndex::SetResident(const ChunkKey& key, TierId tier) {
  if (!ValidTier(tier)) return Status::InvalidArgument(TierError(tier));
  std::unique_lock lock(impl_->mu);
  Node* n = impl_->Find(key);
  if (n == nullptr) return Status::NotFound("radix index: chunk " + key.ToHex() + " is not cached; Insert it");
  impl_->AddTier(n, static_cast<int>(tier));
  return Status::OK();
}

Status RadixIndex::ClearResident(const ChunkKey& key, TierId tier, std::vector<RemovedChunk>* removed,
                                 bool if_unpinned) {
  if (!ValidTier(tier)) return Status::InvalidArgument(TierError(tier));
  std::unique_lock lock(impl_->mu);
  Node* n = impl_->Find(key);
  if (n == nullptr) return Status::NotFound("radix index: chunk " + key.ToHex() + " is not cached");
  const TierMask bit = TierBit(tier);
  if ((n->residency & bit) == 0) return Status::OK();
  // Pins change only under the shared lock, so this check and the change below are atomic.
  if (if_unpinned && n->pins.load(std::memory_order_relaxed) != 0)
    return Status::Busy("radix index: chunk " + key.ToHex() + " is pinned");
  if (n->residency == bit) return impl_->RemoveSubtree(n, removed);
  impl_->DropTier(n, static_cast<int>(tier));
  return Status::OK();
}

Status RadixIndex::Erase(const ChunkKey& key, std::vector<RemovedChunk>* removed) {
  std::unique_lock lock(impl_->mu);
  Node* n = impl_->Find(key);
  if (n == nullptr) return Status::NotFound("radix index: chunk " + key.ToHex() + " is not cached");
  return impl_->RemoveSubtree(n, removed);
}

void RadixIndex::Pin(std::span<const ChunkKey> keys) {
  std::shared_lock lock(impl_->mu);
  for (const ChunkKey& key : keys) {
    if (Node* n = impl_->Find(key); n != nullptr) n->pins.fetch_add(1, std::memory_order_relaxed);
  }
}

void RadixIndex::Unpin(std::span<const ChunkKey> keys) {
  std::shared_lock lock(impl_->mu);
  for (const ChunkKey& key : keys) {
    Node* n = impl_->Find(key);
    if (n == nullptr) continue;
    uint32_t pins = n->pins.load(std::memory_order_relaxed);
    while (pins != 0 && !n->pins.compare_exchange_weak(pins, pins - 1, std::memory_order_relaxed)) {
    }
  }
}

std::vector<LeafCandidate> RadixIndex::LruLeaves(TierId tier, size_t max) {
  std::vector<LeafCandidate> out;
  if (!ValidTier(tier) || max == 0) return out;
  std::unique_lock lock(impl_->mu);
  Impl::LeafSet& set = impl_->leaves[static_cast<int>(tier)];
  out.reserve(std::min(max, set.size()));
  auto it = set.begin();
  while (it != set.end() && out.size() < max) {
    Node* n = it->node;
    const uint64_t last = n->last_access.load(std::memory_order_relaxed);
    if (last != it->tick) {
      // Touched since filed: move it to its place and carry on from where it was.
      const Impl::LeafKey old = *it;
      impl_->Refile(n, last);
      it = set.lower_bound(last < old.tick ? Impl::LeafKey{last, old.depth, n} : old);
      continue;
    }
    if (n->pins.load(std::memory_order_relaxed) == 0) out.push_back({n->key, last});
    ++it;
  }
  return out;
}

std::optional<TierMask> RadixIndex::Residency(const ChunkKey& key) const {
  std::shared_lock lock(impl_->mu);
  const Node* n = impl_->Find(key);
  if (n == nullptr) return std::nullopt;
  return n->residency;
}

bool RadixIndex::Parent(const ChunkKey& key, std::optional<ChunkKey>* parent) const {
  std::shared_lock lock(impl_->mu);
  const Node* n = impl_->Find(key);
  if (n == nullptr) return false;
  *parent = n->parent == nullptr ? std::nullopt : std::optional<ChunkKey>(n->parent->key);
  return true;
}

uint32_t RadixIndex::PinCount(const ChunkKey& key) const {
  std::shared_lock lock(impl_->mu);
  const Node* n = impl_->Find(key);
  return n == nullptr ? 0 : n->pins.load(std::memory_order_relaxed);
}

size_t RadixIndex::size() const {
  std::shared_lock lock(impl_->mu);
  return impl_->table.size();
}

size_t RadixIndex::CountResident(TierId tier) const {
  if (!ValidTier(tier)) return 0;
  std::shared_lock lock(impl_->mu);
  return impl_->resident[static_cast<int>(tier)];
}

// Exact for the slot array and the node slabs (free nodes included: they stay allocated);
// a leaf-set entry is estimated as a libstdc++ red-black node (color and three pointers,
// then the LeafKey). Each allocation is rounded as glibc malloc rounds it.
size_t RadixIndex::MemoryUsage() const {
  std::shared_lock lock(impl_->mu);
  constexpr size_t kSetNode = MallocBytes(4 * sizeof(void*) + sizeof(Impl::LeafKey));
  size_t bytes = MallocBytes(sizeof(Impl)) + impl_->table.MemoryUsage() + impl_->pool.MemoryUsage();
  for (const Impl::LeafSet& set : impl_->leaves) bytes += set.size() * kSetNode;
  return bytes;
}

void RadixIndex::ForEach(const std::function<void(const ChunkKey& key, const std::optional<ChunkKey>& parent,
                                                  TierMask residency, uint64_t last_access)>& fn) const {
  std::shared_lock lock(impl_->mu);
  for (Node* n = impl_->root_first; n != nullptr; n = Impl::NextPreorder(n, nullptr)) {
    const std::optional<ChunkKey> parent =
        n->parent != nullptr ? std::optional<ChunkKey>(n->parent->key) : std::nullopt;
    fn(n->key, parent, n->residency, n->last_access.load(std::memory_order_relaxed));
  }
}

}  // namespace kvtier
