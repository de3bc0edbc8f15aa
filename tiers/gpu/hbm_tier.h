// HbmTier (T0): hot chunks' payloads in GPU memory, in front of the host tier.
//
// The tier is a copy cache: a chunk is here only as a second copy of one the index holds
// in host, NVMe or Redis, so dropping an entry loses nothing and the RadixIndex knows
// nothing of this tier. A GPU load that finds a chunk here scatters it into the engine's
// blocks device to device instead of crossing PCIe; GPU saves and loads put the chunks
// they move here (the most recently used chunks are the hot ones), evicting least
// recently used entries that no copy is reading.
//
// Only bookkeeping lives here: `base` is device memory the caller (store/gpu.cc) owns,
// carved with the same best-fit ExtentAllocator as the host region, so this class runs
// and is tested without a GPU. Payload bytes are written and read by CUDA launches on the
// caller's streams; an entry is reserved (pinned, invisible), filled, then committed.
//
// Entries carry no checksum of their own: each is copied, on the GPU, from bytes that
// were just checked (a load's host slot) or from the engine's blocks being saved, and
// GPU memory is ECC-protected. Keys are ChunkKeys, which carry the namespace (model
// identity), so an entry can only ever be served to the chunk it was made for.
//
// Thread-safety: all methods are thread-safe (one mutex, held briefly). Bytes of a
// pinned entry are never reused: Acquire and Reserve pin, Unpin/Commit/Abort let go.
#ifndef KVTIER_TIERS_GPU_HBM_TIER_H_
#define KVTIER_TIERS_GPU_HBM_TIER_H_

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "index/chunk_key.h"
#include "tiers/extent_allocator.h"

namespace kvtier {

struct HbmTierStats {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;  // bytes of entries, reserved ones included
  uint64_t chunks = 0;      // committed entries
  uint64_t hits = 0;        // Acquire found the chunk
  uint64_t misses = 0;
  uint64_t inserts = 0;     // committed
  uint64_t evictions = 0;
};

class HbmTier {
 public:
  // Entries are aligned to `align` bytes (a power of two; 256 suits the copy kernels).
  HbmTier(uint8_t* base, uint64_t capacity_bytes, uint64_t align = 256);
  HbmTier(const HbmTier&) = delete;
  HbmTier& operator=(const HbmTier&) = delete;

  // The device address of key's payload, pinned until Unpin(key); nullopt when key has
  // no committed entry. Counts a hit or a miss.
  std::optional<uint8_t*> Acquire(const ChunkKey& key);
  void Unpin(const ChunkKey& key);

  // Room for key's payload of `bytes`, evicting least recently used unpinned entries as
  // needed. The entry is pinned and invisible to Acquire until Commit; Abort drops it.
  // nullopt when key already has an entry (reserved or committed) or no room can be made.
  std::optional<uint8_t*> Reserve(const ChunkKey& key, uint64_t bytes);
  void Commit(const ChunkKey& key);
  void Abort(const ChunkKey& key);

  // Drops key's entry unless it is pinned; false when there was none or it is pinned.
  bool Erase(const ChunkKey& key);

  HbmTierStats Stats() const;
  uint8_t* base() const { return base_; }

 private:
  struct Entry {
    uint64_t offset = 0;
    uint64_t bytes = 0;
    uint32_t pins = 0;
    bool committed = false;
    std::list<ChunkKey>::iterator lru;  // valid when committed
  };
  void EraseLocked(std::unordered_map<ChunkKey, Entry, ChunkKeyHash>::iterator it);

  uint8_t* const base_;
  const uint64_t capacity_;

  mutable std::mutex mu_;
  // Guarded by mu_.
  ExtentAllocator space_;
  std::unordered_map<ChunkKey, Entry, ChunkKeyHash> entries_;
  std::list<ChunkKey> lru_;  // committed entries, least recently used first
  HbmTierStats stats_;
};

}  // namespace kvtier

#endif  // KVTIER_TIERS_GPU_HBM_TIER_H_
