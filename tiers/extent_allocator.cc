#include "tiers/extent_allocator.h"

#include <cassert>

namespace kvtier {

ExtentAllocator::ExtentAllocator(uint64_t size, uint64_t align) : size_(size & ~(align - 1)), align_(align) {
  assert(align != 0 && (align & (align - 1)) == 0);
  if (size_ > 0) Insert(0, size_);
  free_bytes_ = size_;
}

void ExtentAllocator::Insert(uint64_t offset, uint64_t len) {
  by_offset_.emplace(offset, len);
  by_size_.emplace(len, offset);
}

void ExtentAllocator::Erase(std::map<uint64_t, uint64_t>::iterator it) {
  by_size_.erase({it->second, it->first});
  by_offset_.erase(it);
}

std::optional<uint64_t> ExtentAllocator::Allocate(uint64_t bytes) {
  const uint64_t need = RoundUp(bytes);
  if (need == 0) return std::nullopt;
  auto it = by_size_.lower_bound({need, 0});
  if (it == by_size_.end()) return std::nullopt;
  const uint64_t off = it->second, len = it->first;
  Erase(by_offset_.find(off));
  if (len > need) Insert(off + need, len - need);
  free_bytes_ -= need;
  return off;
}

void ExtentAllocator::Free(uint64_t offset, uint64_t bytes) {
  uint64_t off = offset, len = RoundUp(bytes);
  free_bytes_ += len;
  auto next = by_offset_.lower_bound(off);
  if (next != by_offset_.end() && next->first == off + len) {  // merge with the extent after
    len += next->second;
    auto after = std::next(next);
    Erase(next);
    next = after;
  }
  if (next != by_offset_.begin()) {  // merge with the extent before
    auto prev = std::prev(next);
    if (prev->first + prev->second == off) {
      off = prev->first;
      len += prev->second;
      Erase(prev);
    }
  }
  Insert(off, len);
}

bool ExtentAllocator::Reserve(uint64_t offset, uint64_t bytes) {
  const uint64_t len = RoundUp(bytes);
  if (offset % align_ != 0 || len == 0 || offset + len > size_ || offset + len < offset) return false;
  auto it = by_offset_.upper_bound(offset);
  if (it == by_offset_.begin()) return false;
  --it;  // the free extent starting at or before offset
  const uint64_t fo = it->first, fl = it->second;
  if (offset + len > fo + fl) return false;
  Erase(it);
  if (offset > fo) Insert(fo, offset - fo);
  if (fo + fl > offset + len) Insert(offset + len, fo + fl - (offset + len));
  free_bytes_ -= len;
  return true;
}

}  // namespace kvtier
