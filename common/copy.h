// CopyBytes: memcpy for the bulk copies of KV bytes (engine <-> host slots, Redis replies
// into slots), without memcpy's slow case on some machines.
//
// glibc's x86-64 memcpy copies mid-sized buffers (from a few KiB up to its non-temporal
// threshold, a large share of the last-level cache) with `rep movsb`. On some CPUs (this
// was measured on an AMD EPYC VM with glibc 2.36) `rep movsb` runs about 4x slower when
// the destination sits a short distance *after* the source modulo the 4 KiB page:
// (dst - src) mod 4096 in [1, 31] gave 1.8-2.8 GB/s where every other distance gave
// 7.5-9 GB/s. Which distance a copy has is an accident of layout: an engine's KV tensor
// from malloc starts 16 bytes into a page, a host slot's payload at a page boundary, so
// every load into such an engine was a slow copy, and an engine with blocks that are not a
// whole number of pages (DeepSeek-V3's 18 KiB) had some slow blocks and some fast ones.
//
// CopyBytes copies those distances with a loop of 16-byte vector loads and stores (as fast
// as memcpy's good case; x86-64 has SSE2 everywhere) and leaves everything else to memcpy.
// Elsewhere it is memcpy. Same contract as memcpy: the ranges must not overlap.
//
// Thread-safety: a pure function.
#ifndef KVTIER_COMMON_COPY_H_
#define KVTIER_COMMON_COPY_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace kvtier {

namespace copy_internal {
// Copies below this go through memcpy's vector paths, which do not have the slow case.
inline constexpr size_t kMinShortDistanceCopy = 2048;
// Distances (dst - src mod 4096) from 1 to this are copied by CopyForward. 31 is where
// the slow case ends on the machine measured; 63 covers a cache line, with margin.
inline constexpr uintptr_t kShortDistance = 63;

// The vector loop (x86-64), or memcpy elsewhere.
void CopyForward(void* dst, const void* src, size_t n);

inline bool ShortForwardDistance(const void* dst, const void* src) {
  const uintptr_t d = (reinterpret_cast<uintptr_t>(dst) - reinterpret_cast<uintptr_t>(src)) & 4095;
  return d - 1 < kShortDistance;  // 1..kShortDistance (0 wraps to a huge value)
}
}  // namespace copy_internal

inline void CopyBytes(void* dst, const void* src, size_t n) {
  if (n >= copy_internal::kMinShortDistanceCopy && copy_internal::ShortForwardDistance(dst, src)) {
    copy_internal::CopyForward(dst, src, n);
  } else {
    std::memcpy(dst, src, n);
  }
}

}  // namespace kvtier

#endif  // KVTIER_COMMON_COPY_H_
