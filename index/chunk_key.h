// Keys: NamespaceId from a NamespaceSpec, and the chained 128-bit ChunkKey.
//
//   ns   = XXH3-128(canonical encoding of every NamespaceSpec field)
//   k[-1] = ns
//   k[i]  = XXH3-128(k[i-1] || tokens of chunk i || extra keys bound to chunk i)
//
// Equal prefixes give equal keys on every machine (nothing local goes in), so a
// remote tier can share chunks without a shared index; a change in any identity
// field changes ns and therefore every key. Token ids are hashed as little-endian
// int32. Pure functions; thread-safe.
#ifndef KVTIER_INDEX_CHUNK_KEY_H_
#define KVTIER_INDEX_CHUNK_KEY_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

struct Hash128 {
  uint64_t lo = 0;
  uint64_t hi = 0;
  friend bool operator==(const Hash128&, const Hash128&) = default;
  std::string ToHex() const;  // 32 hex digits, hi then lo
};

struct NamespaceId : Hash128 {};
struct ChunkKey : Hash128 {};

struct ChunkKeyHash {
  size_t operator()(const Hash128& k) const noexcept { return static_cast<size_t>(k.lo ^ (k.hi * 0x9E3779B97F4A7C15ull)); }
};

// Checks that every field of spec is usable (non-empty model name, non-zero shape,
// chunk_tokens > 0, tp_rank < tp_size, known dtype); the message names the field.
Status ValidateNamespaceSpec(const NamespaceSpec& spec);

// Namespace id for a (valid) spec. For MLA, tp_rank/tp_size are left out: every rank
// holds the same latent.
NamespaceId ComputeNamespaceId(const NamespaceSpec& spec);

// A self-describing encoding of every field of a spec (for tiers that persist chunks
// and must know their namespaces after a restart), and its inverse. Decode returns
// Corruption on malformed input.
std::string EncodeNamespaceSpec(const NamespaceSpec& spec);
Result<NamespaceSpec> DecodeNamespaceSpec(std::string_view bytes);

// Key of one chunk given its parent's key (the namespace id for chunk 0).
ChunkKey NextChunkKey(const Hash128& parent, std::span<const int32_t> chunk_tokens,
                      std::span<const ExtraKey> chunk_extras);

// Keys of the leading whole chunks of `tokens` (a trailing partial chunk gets no key).
// `extras` must be sorted by chunk_index; entries past the last whole chunk are ignored.
Status ComputeChunkKeys(const NamespaceId& ns, uint32_t chunk_tokens, std::span<const int32_t> tokens,
                        std::span<const ExtraKey> extras, std::vector<ChunkKey>* keys);

}  // namespace kvtier

#endif  // KVTIER_INDEX_CHUNK_KEY_H_
