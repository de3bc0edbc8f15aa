// HostTier (T1): chunks in host DRAM.
//
// One large region (mmap; hugetlbfs pages when reserved, else transparent huge pages,
// else normal pages) carved into fixed-size slots. A slot holds one chunk laid out as
// in chunk_format.h: the header at offset 0, the payload at kChunkPayloadOffset. Each
// payload size has a slot class; slots are carved from the region on first use and
// return to their class's free list when freed (a carved slot never changes class:
// one model per process is the common case, and this keeps allocation O(1)).
//
// A save writes the payload straight into a slot (the Mover gathers into it) and a
// load copies straight out of it, so each costs exactly one copy. The payload checksum
// is computed only when a chunk leaves this tier (demotion, write-through).
//
// When Allocate finds no slot, the caller (the Store's placement) evicts LRU leaves
// from the RadixIndex and frees their slots; the tier itself knows nothing of the index.
//
// Ownership: the tier owns the region. A slot returned by Allocate belongs to the caller
// until it is Published (then the tier's key map owns it) or Freed.
// Thread-safety: all methods are thread-safe (one mutex, held briefly). Slot bytes are
// not guarded: callers coordinate through index pins (a pinned chunk's slot is never
// freed).
#ifndef KVTIER_TIERS_HOST_HOST_TIER_H_
#define KVTIER_TIERS_HOST_HOST_TIER_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "index/chunk_key.h"
#include "kvtier/status.h"
#include "kvtier/store.h"

namespace kvtier {

struct HostTierOptions {
  uint64_t capacity_bytes = 1ull << 30;
  HugePages huge_pages = HugePages::kAuto;
  bool prefault = true;
};

// Names a slot: its class and its index within the class.
struct SlotId {
  uint32_t slot_class = 0;
  uint32_t index = 0;
};

class HostTier {
 public:
  static Result<std::unique_ptr<HostTier>> Create(const HostTierOptions& options);
  ~HostTier();
  HostTier(const HostTier&) = delete;
  HostTier& operator=(const HostTier&) = delete;

  // Slot class for chunks with `payload_bytes` of payload (same size, same class).
  // InvalidArgument when one slot would not fit in the region.
  Result<uint32_t> SlotClassFor(uint64_t payload_bytes);
  uint64_t SlotBytes(uint32_t slot_class) const;

  // A free slot of the class, carving a new one when the region has room.
  // NoSpace (retryable) when neither: evict, then retry.
  Result<SlotId> Allocate(uint32_t slot_class);
  void Free(SlotId slot);

  // Start of the slot (its header); the payload is at +kChunkPayloadOffset.
  uint8_t* SlotAddress(SlotId slot) const;

  // Makes `slot` the home of `key`. Busy when key already has a slot: the caller keeps
  // (and should free) its own.
  Status Publish(const ChunkKey& key, SlotId slot);
  std::optional<SlotId> Find(const ChunkKey& key) const;
  // Forgets key and frees its slot. False when key had none.
  bool Remove(const ChunkKey& key);

  uint64_t capacity_bytes() const { return region_bytes_; }
  uint64_t used_bytes() const;   // bytes of published slots
  uint64_t chunk_count() const;  // published slots
  // Free slots already carved for the class (evicting more is not needed while > 0).
  uint64_t free_slots(uint32_t slot_class) const;
  // "hugetlb", "transparent" or "none".
  const std::string& huge_pages() const { return huge_pages_; }
  uint8_t* region() const { return region_; }

 private:
  HostTier() = default;

  struct SlotClass {
    uint64_t slot_bytes = 0;
    std::vector<uint64_t> offsets;     // region offset of each carved slot, by index
    std::vector<uint32_t> free_list;   // indices of free slots
  };

  // Constant after Create.
  uint8_t* region_ = nullptr;
  uint64_t region_bytes_ = 0;
  uint64_t map_bytes_ = 0;
  std::string huge_pages_;

  mutable std::mutex mu_;
  // Guarded by mu_. Classes are never removed, so SlotAddress reads offsets of a
  // carved slot under the lock.
  std::vector<SlotClass> classes_;
  uint64_t carved_bytes_ = 0;
  uint64_t used_bytes_ = 0;
  std::unordered_map<ChunkKey, SlotId, ChunkKeyHash> by_key_;
};

}  // namespace kvtier

#endif  // KVTIER_TIERS_HOST_HOST_TIER_H_
