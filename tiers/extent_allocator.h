// ExtentAllocator: best-fit allocation of aligned byte ranges in a fixed space, with
// neighbours merged on free. The host tier carves its region with it and the NVMe tier
// its data files, so chunks of different sizes share one space, and with one chunk size
// a freed extent is exactly the next one needed.
//
// Thread-safety: none; the owner serializes calls (both tiers hold a mutex).
#ifndef KVTIER_TIERS_EXTENT_ALLOCATOR_H_
#define KVTIER_TIERS_EXTENT_ALLOCATOR_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <utility>

namespace kvtier {

class ExtentAllocator {
 public:
  // Manages [0, size); every extent is a multiple of `align` (a power of two).
  ExtentAllocator(uint64_t size, uint64_t align);

  // Offset of a free extent of RoundUp(bytes) bytes, or nullopt when no free extent is
  // large enough (freeing neighbours may merge one).
  std::optional<uint64_t> Allocate(uint64_t bytes);
  // Returns [offset, offset + RoundUp(bytes)) to the free space. It must be allocated.
  void Free(uint64_t offset, uint64_t bytes);
  // Marks a range as allocated (rebuilding from persisted metadata). False if any of it
  // is not free (overlapping records: the caller drops one of them).
  bool Reserve(uint64_t offset, uint64_t bytes);

  uint64_t RoundUp(uint64_t bytes) const { return (bytes + align_ - 1) & ~(align_ - 1); }
  uint64_t size() const { return size_; }
  uint64_t free_bytes() const { return free_bytes_; }
  size_t free_extents() const { return by_offset_.size(); }

 private:
  void Insert(uint64_t offset, uint64_t len);
  void Erase(std::map<uint64_t, uint64_t>::iterator it);

  const uint64_t size_;
  const uint64_t align_;
  std::map<uint64_t, uint64_t> by_offset_;           // free extents: offset -> length
  std::set<std::pair<uint64_t, uint64_t>> by_size_;  // free extents: (length, offset)
  uint64_t free_bytes_ = 0;
};

}  // namespace kvtier

#endif  // KVTIER_TIERS_EXTENT_ALLOCATOR_H_
