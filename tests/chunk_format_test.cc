#include "tiers/chunk_format.h"

#include <gtest/gtest.h>

#include <random>

namespace kvtier {
namespace {

KvShape SmallShape() {
  KvShape s;
  s.num_layers = 2;
  s.num_kv_heads = 2;
  s.head_dim = 8;
  s.dtype = DType::kFloat16;
  s.chunk_tokens = 4;
  return s;
}

struct Fixture {
  NamespaceId ns;
  ChunkKey key;
  KvShape shape = SmallShape();
  std::vector<uint8_t> payload;
  Fixture() {
    ns.lo = 1, ns.hi = 2;
    key.lo = 3, key.hi = 4;
    payload.resize(ChunkPayloadBytes(shape));
    std::mt19937 rng(5);
    for (auto& b : payload) b = static_cast<uint8_t>(rng());
  }
  ChunkIdentity id() const { return {ns, key, shape}; }
};

TEST(ChunkFormat, RoundTrip) {
  Fixture f;
  std::vector<uint8_t> v = EncodeChunk(MakeChunkHeader(f.ns, f.key, f.shape), f.payload);
  ASSERT_EQ(v.size(), kChunkHeaderBytes + f.payload.size());
  Result<std::span<const uint8_t>> p = DecodeChunk(v, f.id());
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_TRUE(std::equal(p->begin(), p->end(), f.payload.begin(), f.payload.end()));
  Result<ChunkHeader> h = DecodeChunkHeader(v);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->tokens, 4u);
  EXPECT_EQ(h->layers, 2u);
  EXPECT_TRUE(h->flags & kFlagChecksum);
}

TEST(ChunkFormat, EveryFlippedByteIsCaught) {
  Fixture f;
  const std::vector<uint8_t> good = EncodeChunk(MakeChunkHeader(f.ns, f.key, f.shape), f.payload);
  for (size_t i = 0; i < good.size(); ++i) {
    std::vector<uint8_t> bad = good;
    bad[i] ^= 0x5a;
    Result<std::span<const uint8_t>> p = DecodeChunk(bad, f.id());
    ASSERT_FALSE(p.ok()) << "flip at byte " << i << " was served";
    EXPECT_TRUE(p.status().IsCorruption()) << i << ": " << p.status().ToString();
  }
}

TEST(ChunkFormat, IdentityMismatchIsCorruption) {
  Fixture f;
  const std::vector<uint8_t> v = EncodeChunk(MakeChunkHeader(f.ns, f.key, f.shape), f.payload);
  ChunkIdentity other = f.id();
  other.ns.lo ^= 1;
  EXPECT_NE(DecodeChunk(v, other).status().message().find("namespace"), std::string::npos);
  other = f.id();
  other.key.hi ^= 1;
  EXPECT_NE(DecodeChunk(v, other).status().message().find("chunk key"), std::string::npos);
  other = f.id();
  other.shape.head_dim = 16;
  EXPECT_TRUE(DecodeChunk(v, other).status().IsCorruption());
  other = f.id();
  other.shape.dtype = DType::kBFloat16;
  EXPECT_TRUE(DecodeChunk(v, other).status().IsCorruption());
}

TEST(ChunkFormat, TruncatedAndExtendedValuesAreCorruption) {
  Fixture f;
  const std::vector<uint8_t> v = EncodeChunk(MakeChunkHeader(f.ns, f.key, f.shape), f.payload);
  for (size_t n : {size_t{0}, size_t{10}, kChunkHeaderBytes - 1, kChunkHeaderBytes, v.size() - 1}) {
    std::vector<uint8_t> t(v.begin(), v.begin() + static_cast<ptrdiff_t>(n));
    EXPECT_TRUE(DecodeChunk(t, f.id()).status().IsCorruption()) << n;
  }
  std::vector<uint8_t> longer = v;
  longer.push_back(0);
  EXPECT_TRUE(DecodeChunk(longer, f.id()).status().IsCorruption());
}

TEST(ChunkFormat, HeaderWithoutChecksumIsNotAValue) {
  Fixture f;
  std::vector<uint8_t> v(kChunkHeaderBytes + f.payload.size());
  EncodeChunkHeader(MakeChunkHeader(f.ns, f.key, f.shape), v.data());
  std::copy(f.payload.begin(), f.payload.end(), v.begin() + kChunkHeaderBytes);
  // The header alone decodes (host slots hold such headers) ...
  EXPECT_TRUE(DecodeChunkHeader(v).ok());
  // ... but a stored value must carry a payload checksum.
  EXPECT_TRUE(DecodeChunk(v, f.id()).status().IsCorruption());
}

}  // namespace
}  // namespace kvtier
