#include "tiers/gpu/hbm_tier.h"

namespace kvtier {

HbmTier::HbmTier(uint8_t* base, uint64_t capacity_bytes, uint64_t align)
    : base_(base), capacity_(capacity_bytes), space_(capacity_bytes, align) {
  stats_.capacity_bytes = capacity_bytes;
}

std::optional<uint8_t*> HbmTier::Acquire(const ChunkKey& key) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end() || !it->second.committed) {
    ++stats_.misses;
    return std::nullopt;
  }
  Entry& e = it->second;
  ++e.pins;
  lru_.splice(lru_.end(), lru_, e.lru);
  ++stats_.hits;
  return base_ + e.offset;
}

void HbmTier::Unpin(const ChunkKey& key) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = entries_.find(key);
  if (it != entries_.end() && it->second.pins > 0) --it->second.pins;
}

std::optional<uint8_t*> HbmTier::Reserve(const ChunkKey& key, uint64_t bytes) {
  std::lock_guard<std::mutex> l(mu_);
  if (bytes == 0 || space_.RoundUp(bytes) > capacity_ || entries_.count(key) != 0) return std::nullopt;
  std::optional<uint64_t> off = space_.Allocate(bytes);
  for (auto victim = lru_.begin(); !off && victim != lru_.end();) {
    auto it = entries_.find(*victim);
    ++victim;  // EraseLocked invalidates the erased entry's list node
    if (it->second.pins != 0) continue;
    EraseLocked(it);
    ++stats_.evictions;
    off = space_.Allocate(bytes);
  }
  if (!off) return std::nullopt;
  Entry e;
  e.offset = *off;
  e.bytes = bytes;
  e.pins = 1;
  entries_.emplace(key, e);
  stats_.used_bytes += space_.RoundUp(bytes);
  return base_ + *off;
}

void HbmTier::Commit(const ChunkKey& key) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end() || it->second.committed) return;
  Entry& e = it->second;
  e.committed = true;
  if (e.pins > 0) --e.pins;
  e.lru = lru_.insert(lru_.end(), key);
  ++stats_.chunks;
  ++stats_.inserts;
}

void HbmTier::Abort(const ChunkKey& key) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end() || it->second.committed) return;
  EraseLocked(it);
}

bool HbmTier::Erase(const ChunkKey& key) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end() || it->second.pins != 0) return false;
  EraseLocked(it);
  return true;
}

void HbmTier::EraseLocked(std::unordered_map<ChunkKey, Entry, ChunkKeyHash>::iterator it) {
  Entry& e = it->second;
  space_.Free(e.offset, e.bytes);
  stats_.used_bytes -= space_.RoundUp(e.bytes);
  if (e.committed) {
    lru_.erase(e.lru);
    --stats_.chunks;
  }
  entries_.erase(it);
}

HbmTierStats HbmTier::Stats() const {
  std::lock_guard<std::mutex> l(mu_);
  return stats_;
}

}  // namespace kvtier
