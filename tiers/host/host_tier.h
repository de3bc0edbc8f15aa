// HostTier (T1): chunks in host DRAM.
//
// One large region (mmap; hugetlbfs pages when reserved, else transparent huge pages,
// else normal pages) from which each chunk gets one slot: a 4 KiB-aligned extent laid
// out as in chunk_format.h (header at offset 0, payload at kChunkPayloadOffset). Slots
// come from a best-fit extent allocator that merges neighbours on free, so namespaces
// with different chunk sizes share the region; with one chunk size (the common case)
// a freed slot is exactly the next one needed.
//
// A save writes the payload straight into a slot (the Mover gathers into it) and a
// load copies straight out of it, so each costs exactly one copy. The payload checksum
// is computed only when a chunk leaves this tier (demotion, write-through).
//
// When Allocate finds no slot, the caller (the Store's placement) evicts LRU leaves
// from the RadixIndex and frees their slots; the tier itself knows nothing of the index.
//
// A shared region (HostTierOptions::shared) is a memfd mapped MAP_SHARED: kvtierd passes it
// to its clients, which copy into and out of slots it leases to them.
//
// Ownership: the tier owns the region (and its memfd). A slot returned by Allocate belongs to the caller
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

#include "index/chunk_key.h"
#include "kvtier/status.h"
#include "kvtier/store.h"
#include "tiers/extent_allocator.h"

namespace kvtier {

struct HostTierOptions {
  uint64_t capacity_bytes = 1ull << 30;
  HugePages huge_pages = HugePages::kAuto;
  bool prefault = true;
  // The region is a memfd other processes can map (shared_fd()); hugetlbfs pages only
  // (MFD_HUGETLB) when huge pages are asked for and reserved.
  bool shared = false;
};

// Names a slot: where it starts in the region and how long it is.
struct SlotId {
  uint64_t offset = 0;
  uint64_t bytes = 0;
};

class HostTier {
 public:
  static Result<std::unique_ptr<HostTier>> Create(const HostTierOptions& options);
  ~HostTier();
  HostTier(const HostTier&) = delete;
  HostTier& operator=(const HostTier&) = delete;

  // Bytes of the slot that holds a chunk with `payload_bytes` of payload.
  static uint64_t SlotBytes(uint64_t payload_bytes);
  // InvalidArgument when such a slot could never fit in the region.
  Status CheckFits(uint64_t payload_bytes) const;

  // A free slot for a chunk of `payload_bytes`. NoSpace (retryable) when no free extent
  // is large enough: evict, then retry.
  Result<SlotId> Allocate(uint64_t payload_bytes);
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
  uint64_t free_bytes() const;  // in free extents (maybe fragmented)
  // "hugetlb", "transparent" or "none".
  const std::string& huge_pages() const { return huge_pages_; }
  uint8_t* region() const { return region_; }
  // The region's memfd (shared regions), -1 otherwise. Owned by the tier.
  int shared_fd() const { return fd_; }

 private:
  HostTier() = default;

  // Constant after Create.
  uint8_t* region_ = nullptr;
  uint64_t region_bytes_ = 0;
  uint64_t map_bytes_ = 0;
  int fd_ = -1;
  std::string huge_pages_;

  mutable std::mutex mu_;
  // Guarded by mu_: free space and the published slots.
  std::unique_ptr<ExtentAllocator> space_;
  uint64_t used_bytes_ = 0;
  std::unordered_map<ChunkKey, SlotId, ChunkKeyHash> by_key_;
};

}  // namespace kvtier

#endif  // KVTIER_TIERS_HOST_HOST_TIER_H_
