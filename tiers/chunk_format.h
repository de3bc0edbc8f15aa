// Chunk format v1: how a chunk looks on NVMe, in Redis, and in a host slot.
//
//   offset 0    header, 128 bytes, little-endian (below)
//   offset P    payload, layer-major [layer][K|V or latent][token][head][dim]
//
// P is kChunkHeaderBytes in a serialized value (Redis) and kChunkPayloadOffset (4 KiB)
// in host slots and NVMe extents, so the payload stays aligned for O_DIRECT.
//
// Header layout (all integers little-endian):
//     0  u32 magic 'KVC1'            4 u16 version (1)     6 u16 header bytes (128)
//     8  u8[16] namespace id        24 u8[16] chunk key
//    40  u32 tokens   44 u32 layers   48 u32 heads   52 u32 head_dim
//    56  u8 dtype  57 u8 codec  58 u8 flags  59 u8 reserved(0)  60 u32 reserved(0)
//    64  u64 payload bytes (as stored, after the codec)
//    72  u64 raw bytes (before the codec)
//    80  u64 payload checksum (XXH3-64 of the stored payload; valid with kFlagChecksum)
//    88  u8[32] reserved (0)
//   120  u64 header checksum (XXH3-64 of bytes [0, 120))
//
// In a 4 KiB header page (host slots, NVMe extents) the chunk's token ids follow the
// header at kChunkTokensOffset (int32, little-endian) when they fit: they travel with the
// chunk so that a tier it is demoted to can record them; no reader trusts them.
//
// Every read decodes the header (magic, version, header checksum, sane sizes), checks
// identity against what the caller expects (namespace, key, shape), and verifies the
// payload checksum when one is present. Any mismatch is Corruption: a miss for the
// caller, never data. Pure functions; thread-safe.
#ifndef KVTIER_TIERS_CHUNK_FORMAT_H_
#define KVTIER_TIERS_CHUNK_FORMAT_H_

#include <cstdint>
#include <span>
#include <vector>

#include "index/chunk_key.h"
#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

inline constexpr uint32_t kChunkMagic = 0x3143564B;  // "KVC1" in memory order
inline constexpr uint16_t kChunkFormatVersion = 1;
inline constexpr size_t kChunkHeaderBytes = 128;
inline constexpr size_t kChunkPayloadOffset = 4096;  // in slots and extents
inline constexpr size_t kChunkTokensOffset = kChunkHeaderBytes;
inline constexpr size_t kMaxPageTokens = (kChunkPayloadOffset - kChunkTokensOffset) / sizeof(int32_t);
inline constexpr uint64_t kMaxChunkPayloadBytes = 1ull << 34;  // 16 GiB: anything larger is garbage

enum class Codec : uint8_t { kNone = 0, kLz4 = 1 };
enum ChunkFlags : uint8_t { kFlagMla = 1, kFlagChecksum = 2 };

struct ChunkHeader {
  NamespaceId ns;
  ChunkKey key;
  uint32_t tokens = 0;
  uint32_t layers = 0;
  uint32_t heads = 0;
  uint32_t head_dim = 0;
  DType dtype = DType::kBFloat16;
  Codec codec = Codec::kNone;
  uint8_t flags = 0;
  uint64_t payload_bytes = 0;
  uint64_t raw_bytes = 0;
  uint64_t payload_checksum = 0;
};

// What a reader expects of a chunk: everything that identifies it.
struct ChunkIdentity {
  NamespaceId ns;
  ChunkKey key;
  KvShape shape;
};

// Header fields for a chunk of `shape` named (ns, key), uncompressed, no checksum yet.
ChunkHeader MakeChunkHeader(const NamespaceId& ns, const ChunkKey& key, const KvShape& shape);

uint64_t ChunkChecksum(const void* payload, size_t bytes);

void EncodeChunkHeader(const ChunkHeader& h, uint8_t out[kChunkHeaderBytes]);
// Corruption on a bad magic, version, header checksum or impossible sizes.
Result<ChunkHeader> DecodeChunkHeader(std::span<const uint8_t> bytes);
// Corruption naming the first field that differs from `id`.
Status CheckChunkIdentity(const ChunkHeader& h, const ChunkIdentity& id);

// A self-contained value: header (with payload checksum) followed by the payload.
std::vector<uint8_t> EncodeChunk(const ChunkHeader& h, std::span<const uint8_t> payload);
// Verifies everything (header, identity, length, checksum — which must be present) and
// returns the payload inside `bytes`.
Result<std::span<const uint8_t>> DecodeChunk(std::span<const uint8_t> bytes, const ChunkIdentity& id);

}  // namespace kvtier

#endif  // KVTIER_TIERS_CHUNK_FORMAT_H_
