// libFuzzer target: chunk values come from disk and from Redis, so decoding arbitrary
// bytes must never crash, and must never accept bytes that are not a valid encoding of
// the expected chunk.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>

#include "tiers/chunk_format.h"

using namespace kvtier;

#define FUZZ_CHECK(cond)                                                                      \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      std::fprintf(stderr, "chunk_format_fuzz: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      __builtin_trap();                                                                       \
    }                                                                                         \
  } while (0)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  KvShape shape;
  shape.num_layers = 1;
  shape.num_kv_heads = 1;
  shape.head_dim = 4;
  shape.dtype = DType::kFloat16;
  shape.chunk_tokens = 2;  // payload 1*2*2*1*4*2 = 32 bytes
  ChunkIdentity id;
  id.ns.lo = 1;
  id.key.lo = 2;
  id.shape = shape;
  std::span<const uint8_t> in(data, size);
  (void)DecodeChunkHeader(in);
  Result<std::span<const uint8_t>> p = DecodeChunk(in, id);
  if (p.ok()) {
    // Accepted: it must be exactly the encoding of this payload.
    std::vector<uint8_t> again = EncodeChunk(MakeChunkHeader(id.ns, id.key, shape), *p);
    FUZZ_CHECK(again.size() == size && std::memcmp(again.data(), data, size) == 0);
  }
  // Also feed the bytes as a payload: encode then decode must round-trip.
  if (size == ChunkPayloadBytes(shape)) {
    std::vector<uint8_t> v = EncodeChunk(MakeChunkHeader(id.ns, id.key, shape), in);
    Result<std::span<const uint8_t>> q = DecodeChunk(v, id);
    FUZZ_CHECK(q.ok() && q->size() == size && std::memcmp(q->data(), data, size) == 0);
  }
  return 0;
}
