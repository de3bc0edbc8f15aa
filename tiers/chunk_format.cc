#include "tiers/chunk_format.h"

#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>  // picks the AVX2/AVX-512 XXH3 kernels at run time
#endif

#include <cstring>
#include <string>

namespace kvtier {
namespace {

void Put16(uint8_t* p, uint16_t v) {
  for (int i = 0; i < 2; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void Put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void Put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t Get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
void PutHash(uint8_t* p, const Hash128& h) {
  Put64(p, h.lo);
  Put64(p + 8, h.hi);
}
void GetHash(const uint8_t* p, Hash128* h) {
  h->lo = Get64(p);
  h->hi = Get64(p + 8);
}

constexpr size_t kHeaderChecksumOffset = 120;

}  // namespace

ChunkHeader MakeChunkHeader(const NamespaceId& ns, const ChunkKey& key, const KvShape& shape) {
  ChunkHeader h;
  h.ns = ns;
  h.key = key;
  h.tokens = shape.chunk_tokens;
  h.layers = shape.num_layers;
  h.heads = shape.num_kv_heads;
  h.head_dim = shape.head_dim;
  h.dtype = shape.dtype;
  h.codec = Codec::kNone;
  h.flags = shape.mla ? kFlagMla : 0;
  h.raw_bytes = ChunkPayloadBytes(shape);
  h.payload_bytes = h.raw_bytes;
  return h;
}

uint64_t ChunkChecksum(const void* payload, size_t bytes) { return XXH3_64bits(payload, bytes); }

void EncodeChunkHeader(const ChunkHeader& h, uint8_t out[kChunkHeaderBytes]) {
  std::memset(out, 0, kChunkHeaderBytes);
  Put32(out + 0, kChunkMagic);
  Put16(out + 4, kChunkFormatVersion);
  Put16(out + 6, static_cast<uint16_t>(kChunkHeaderBytes));
  PutHash(out + 8, h.ns);
  PutHash(out + 24, h.key);
  Put32(out + 40, h.tokens);
  Put32(out + 44, h.layers);
  Put32(out + 48, h.heads);
  Put32(out + 52, h.head_dim);
  out[56] = static_cast<uint8_t>(h.dtype);
  out[57] = static_cast<uint8_t>(h.codec);
  out[58] = h.flags;
  Put64(out + 64, h.payload_bytes);
  Put64(out + 72, h.raw_bytes);
  Put64(out + 80, h.payload_checksum);
  Put64(out + kHeaderChecksumOffset, XXH3_64bits(out, kHeaderChecksumOffset));
}

Result<ChunkHeader> DecodeChunkHeader(std::span<const uint8_t> bytes) {
  if (bytes.size() < kChunkHeaderBytes)
    return Status::Corruption("chunk header: " + std::to_string(bytes.size()) + " bytes, need " +
                              std::to_string(kChunkHeaderBytes));
  const uint8_t* p = bytes.data();
  if (Get32(p) != kChunkMagic) return Status::Corruption("chunk header: bad magic");
  if (Get16(p + 4) != kChunkFormatVersion)
    return Status::Corruption("chunk header: version " + std::to_string(Get16(p + 4)) + ", this build reads " +
                              std::to_string(kChunkFormatVersion));
  if (Get16(p + 6) != kChunkHeaderBytes) return Status::Corruption("chunk header: bad header size");
  if (Get64(p + kHeaderChecksumOffset) != XXH3_64bits(p, kHeaderChecksumOffset))
    return Status::Corruption("chunk header: header checksum mismatch");
  for (size_t i : {size_t{59}, size_t{60}, size_t{61}, size_t{62}, size_t{63}})
    if (p[i] != 0) return Status::Corruption("chunk header: reserved bytes are not zero");
  for (size_t i = 88; i < kHeaderChecksumOffset; ++i)
    if (p[i] != 0) return Status::Corruption("chunk header: reserved bytes are not zero");
  ChunkHeader h;
  GetHash(p + 8, &h.ns);
  GetHash(p + 24, &h.key);
  h.tokens = Get32(p + 40);
  h.layers = Get32(p + 44);
  h.heads = Get32(p + 48);
  h.head_dim = Get32(p + 52);
  h.dtype = static_cast<DType>(p[56]);
  h.codec = static_cast<Codec>(p[57]);
  h.flags = p[58];
  h.payload_bytes = Get64(p + 64);
  h.raw_bytes = Get64(p + 72);
  h.payload_checksum = Get64(p + 80);
  if (DTypeSize(h.dtype) == 0) return Status::Corruption("chunk header: unknown dtype");
  if (h.codec != Codec::kNone && h.codec != Codec::kLz4) return Status::Corruption("chunk header: unknown codec");
  if ((h.flags & ~(kFlagMla | kFlagChecksum)) != 0) return Status::Corruption("chunk header: unknown flags");
  if (h.payload_bytes > kMaxChunkPayloadBytes || h.raw_bytes > kMaxChunkPayloadBytes)
    return Status::Corruption("chunk header: impossible payload size");
  if (h.codec == Codec::kNone && h.payload_bytes != h.raw_bytes)
    return Status::Corruption("chunk header: uncompressed payload whose stored and raw sizes differ");
  return h;
}

Status CheckChunkIdentity(const ChunkHeader& h, const ChunkIdentity& id) {
  const KvShape& s = id.shape;
  if (!(h.ns == id.ns)) return Status::Corruption("chunk identity: namespace differs (stale or foreign chunk)");
  if (!(h.key == id.key)) return Status::Corruption("chunk identity: chunk key differs (stale or colliding chunk)");
  if (h.tokens != s.chunk_tokens || h.layers != s.num_layers || h.heads != s.num_kv_heads ||
      h.head_dim != s.head_dim || h.dtype != s.dtype || ((h.flags & kFlagMla) != 0) != s.mla)
    return Status::Corruption("chunk identity: shape differs from the namespace's KV shape");
  if (h.raw_bytes != ChunkPayloadBytes(s))
    return Status::Corruption("chunk identity: raw payload size " + std::to_string(h.raw_bytes) +
                              " differs from the shape's " + std::to_string(ChunkPayloadBytes(s)));
  return Status::OK();
}

std::vector<uint8_t> EncodeChunk(const ChunkHeader& h, std::span<const uint8_t> payload) {
  ChunkHeader hh = h;
  hh.payload_bytes = payload.size();
  hh.payload_checksum = ChunkChecksum(payload.data(), payload.size());
  hh.flags |= kFlagChecksum;
  std::vector<uint8_t> out(kChunkHeaderBytes + payload.size());
  EncodeChunkHeader(hh, out.data());
  if (!payload.empty()) std::memcpy(out.data() + kChunkHeaderBytes, payload.data(), payload.size());
  return out;
}

Result<std::span<const uint8_t>> DecodeChunk(std::span<const uint8_t> bytes, const ChunkIdentity& id) {
  Result<ChunkHeader> h = DecodeChunkHeader(bytes);
  if (!h.ok()) return h.status();
  KVTIER_RETURN_IF_ERROR(CheckChunkIdentity(*h, id));
  if (bytes.size() - kChunkHeaderBytes != h->payload_bytes)
    return Status::Corruption("chunk: value holds " + std::to_string(bytes.size() - kChunkHeaderBytes) +
                              " payload bytes, header says " + std::to_string(h->payload_bytes));
  if ((h->flags & kFlagChecksum) == 0) return Status::Corruption("chunk: no payload checksum");
  if (h->codec != Codec::kNone)
    return Status::NotSupported("chunk: codec " + std::to_string(static_cast<int>(h->codec)) +
                                " is not supported yet by DecodeChunk");
  std::span<const uint8_t> payload = bytes.subspan(kChunkHeaderBytes);
  if (ChunkChecksum(payload.data(), payload.size()) != h->payload_checksum)
    return Status::Corruption("chunk: payload checksum mismatch");
  return payload;
}

}  // namespace kvtier
