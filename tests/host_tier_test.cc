#include "tiers/host/host_tier.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <vector>

#include "tiers/chunk_format.h"

namespace kvtier {
namespace {

std::unique_ptr<HostTier> Make(uint64_t capacity, HugePages hp = HugePages::kAuto) {
  HostTierOptions o;
  o.capacity_bytes = capacity;
  o.huge_pages = hp;
  auto t = HostTier::Create(o);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return std::move(*t);
}

ChunkKey Key(uint64_t i) {
  ChunkKey k;
  k.lo = i;
  k.hi = ~i;
  return k;
}

TEST(HostTier, AllocatesAlignedSlotsUntilFull) {
  auto t = Make(16 << 20, HugePages::kOff);
  EXPECT_EQ(t->huge_pages(), "none");
  const uint64_t payload = 1 << 20;
  const uint64_t slot = HostTier::SlotBytes(payload);
  EXPECT_EQ(slot, kChunkPayloadOffset + payload);
  std::vector<SlotId> slots;
  for (;;) {
    Result<SlotId> s = t->Allocate(payload);
    if (!s.ok()) {
      EXPECT_EQ(s.status().code(), Status::Code::kNoSpace);
      EXPECT_TRUE(s.status().retryable());
      break;
    }
    EXPECT_EQ(s->offset % 4096, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t->SlotAddress(*s) + kChunkPayloadOffset) % 4096, 0u);
    slots.push_back(*s);
  }
  EXPECT_EQ(slots.size(), (16u << 20) / slot);
  // Slots do not overlap: write a distinct byte pattern into each and read it back.
  for (size_t i = 0; i < slots.size(); ++i) std::memset(t->SlotAddress(slots[i]), static_cast<int>(i + 1), slot);
  for (size_t i = 0; i < slots.size(); ++i) {
    const uint8_t* p = t->SlotAddress(slots[i]);
    EXPECT_EQ(p[0], i + 1);
    EXPECT_EQ(p[slot - 1], i + 1);
  }
  t->Free(slots[3]);
  EXPECT_TRUE(t->Allocate(payload).ok());
  EXPECT_FALSE(t->Allocate(payload).ok());
}

TEST(HostTier, FreedNeighboursMergeForLargerChunks) {
  auto t = Make(8 << 20, HugePages::kOff);
  std::vector<SlotId> small;
  for (;;) {
    Result<SlotId> s = t->Allocate(60 << 10);
    if (!s.ok()) break;
    small.push_back(*s);
  }
  ASSERT_GT(small.size(), 40u);
  EXPECT_FALSE(t->Allocate(1 << 20).ok());
  // Free a run of adjacent small slots: together they fit one large chunk.
  const uint64_t need = HostTier::SlotBytes(1 << 20);
  uint64_t freed = 0;
  size_t i = 0;
  while (freed < need) {
    t->Free(small[i]);
    freed += small[i].bytes;
    ++i;
  }
  Result<SlotId> big = t->Allocate(1 << 20);
  ASSERT_TRUE(big.ok()) << big.status().ToString();
  EXPECT_EQ(big->offset, small[0].offset);
}

TEST(HostTier, PublishFindRemove) {
  auto t = Make(4 << 20);
  Result<SlotId> a = t->Allocate(100000);
  Result<SlotId> b = t->Allocate(100000);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(t->Publish(Key(1), *a).ok());
  EXPECT_EQ(t->Publish(Key(1), *b).code(), Status::Code::kBusy);
  EXPECT_EQ(t->chunk_count(), 1u);
  EXPECT_EQ(t->used_bytes(), a->bytes);
  ASSERT_TRUE(t->Find(Key(1)).has_value());
  EXPECT_EQ(t->Find(Key(1))->offset, a->offset);
  EXPECT_FALSE(t->Find(Key(2)).has_value());
  EXPECT_TRUE(t->Remove(Key(1)));
  EXPECT_FALSE(t->Remove(Key(1)));
  EXPECT_EQ(t->used_bytes(), 0u);
  t->Free(*b);
  EXPECT_EQ(t->free_bytes(), t->capacity_bytes());
}

TEST(HostTier, RefusesChunksLargerThanTheRegion) {
  auto t = Make(4 << 20);
  EXPECT_TRUE(t->CheckFits(8 << 20).IsInvalidArgument());
  EXPECT_TRUE(t->Allocate(8 << 20).status().IsInvalidArgument());
  EXPECT_TRUE(t->CheckFits(0).IsInvalidArgument());
  HostTierOptions o;
  o.capacity_bytes = 100;
  EXPECT_TRUE(HostTier::Create(o).status().IsInvalidArgument());
}

TEST(HostTier, RandomAllocFreeKeepsAccounting) {
  auto t = Make(32 << 20, HugePages::kOff);
  std::mt19937 rng(9);
  std::vector<SlotId> live;
  for (int i = 0; i < 5000; ++i) {
    if (live.empty() || rng() % 3 != 0) {
      Result<SlotId> s = t->Allocate(4096 * (1 + rng() % 200));
      if (s.ok()) live.push_back(*s);
    } else {
      size_t j = rng() % live.size();
      t->Free(live[j]);
      live[j] = live.back();
      live.pop_back();
    }
    uint64_t used = 0;
    for (const SlotId& s : live) used += s.bytes;
    ASSERT_EQ(t->free_bytes() + used, t->capacity_bytes());
  }
  // No two live slots overlap.
  std::sort(live.begin(), live.end(), [](const SlotId& a, const SlotId& b) { return a.offset < b.offset; });
  for (size_t i = 1; i < live.size(); ++i) ASSERT_LE(live[i - 1].offset + live[i - 1].bytes, live[i].offset);
  for (const SlotId& s : live) t->Free(s);
  EXPECT_TRUE(t->Allocate((32u << 20) - 8192).ok());  // everything merged back
}

}  // namespace
}  // namespace kvtier
