// Indexing shared by the Mover's CPU path and its CUDA kernels: where an element of
// the engine's paged KV lives, and where it lives in a chunk payload. Everything here
// is a pure function of plain-old-data geometry, callable from host and device code,
// so the CPU tests cover the arithmetic the GPU kernels run.
//
// Chunk payload (chunk format v1), layer-major:
//   [layer][kv: K then V, or one latent for MLA][token in chunk][head][dim]
// A chunk of chunk_tokens tokens is made of chunk_tokens / block_tokens engine blocks,
// named by block id in order.
#ifndef KVTIER_KERNELS_KV_INDEXING_H_
#define KVTIER_KERNELS_KV_INDEXING_H_

#include <cstdint>

#if defined(__CUDACC__)
#define KVTIER_HD __host__ __device__ __forceinline__
#else
#define KVTIER_HD inline
#endif

namespace kvtier {

// One layer of engine memory, as byte offsets (see KvLayerMemory in kvtier/types.h).
struct LayerGeometry {
  uint64_t base;  // address of K[block 0][token 0][head 0][dim 0]
  uint64_t bytes;
  uint64_t block_stride;
  uint64_t token_stride;
  uint64_t head_stride;
  uint64_t dim_stride;
  // From a K element to its V element, modulo 2^64. When V has its own region
  // (KvLayerMemory::v_base) this is v_base - base, which wraps when V lies below K:
  // base + EngineOffset(l, 1, ...) is still V's address in 64-bit unsigned arithmetic.
  uint64_t kv_offset;
};

// What is common to every layer of a namespace's chunks.
struct ChunkGeometry {
  uint32_t num_layers;
  uint32_t num_heads;
  uint32_t head_dim;
  uint32_t elem_bytes;
  uint32_t block_tokens;  // tokens per engine block
  uint32_t chunk_tokens;  // tokens per chunk, a multiple of block_tokens
  uint32_t num_kv;        // 2 (K and V), or 1 for MLA
  uint32_t num_blocks;    // blocks per layer in engine memory
};

KVTIER_HD uint32_t BlocksPerChunk(const ChunkGeometry& g) { return g.chunk_tokens / g.block_tokens; }

// Bytes of one [token][head][dim] plane (one layer, one of K/V) in the payload.
KVTIER_HD uint64_t PayloadPlaneBytes(const ChunkGeometry& g) {
  return static_cast<uint64_t>(g.chunk_tokens) * g.num_heads * g.head_dim * g.elem_bytes;
}
KVTIER_HD uint64_t PayloadLayerBytes(const ChunkGeometry& g) { return PayloadPlaneBytes(g) * g.num_kv; }
KVTIER_HD uint64_t PayloadBytes(const ChunkGeometry& g) { return PayloadLayerBytes(g) * g.num_layers; }

// Byte offset in the payload of element (layer, kv, token in chunk, head, dim).
KVTIER_HD uint64_t PayloadOffset(const ChunkGeometry& g, uint32_t layer, uint32_t kv, uint32_t token,
                                 uint32_t head, uint32_t dim) {
  return static_cast<uint64_t>(layer) * PayloadLayerBytes(g) + static_cast<uint64_t>(kv) * PayloadPlaneBytes(g) +
         ((static_cast<uint64_t>(token) * g.num_heads + head) * g.head_dim + dim) * g.elem_bytes;
}

// Byte offset from the layer's base of element (kv, block id, token in block, head, dim).
KVTIER_HD uint64_t EngineOffset(const LayerGeometry& l, uint32_t kv, uint64_t block, uint32_t token,
                                uint32_t head, uint32_t dim) {
  return kv * l.kv_offset + block * l.block_stride + token * l.token_stride + head * l.head_stride +
         dim * l.dim_stride;
}

// Last byte (exclusive) any block of one of K/V (or the latent) touches, from its origin.
KVTIER_HD uint64_t EnginePlaneExtent(const LayerGeometry& l, const ChunkGeometry& g) {
  return EngineOffset(l, 0, g.num_blocks - 1, g.block_tokens - 1, g.num_heads - 1, g.head_dim - 1) + g.elem_bytes;
}

// Last byte (exclusive) any block of this layer touches when K and V share one region
// (V kv_offset after K); must be <= l.bytes. A layer whose V has its own region is
// bounded by EnginePlaneExtent on each side instead.
KVTIER_HD uint64_t EngineExtent(const LayerGeometry& l, const ChunkGeometry& g) {
  return EngineOffset(l, g.num_kv - 1, g.num_blocks - 1, g.block_tokens - 1, g.num_heads - 1, g.head_dim - 1) +
         g.elem_bytes;
}

// How much of a (layer, kv, block) is one contiguous byte run on both sides. The payload
// is always dense; the engine side is dense over dims when dim_stride == elem_bytes, over
// heads too when head_stride == head_dim * elem_bytes, over the block's tokens too when
// token_stride == num_heads * head_dim * elem_bytes.
enum class RunKind : uint32_t {
  kElement = 0,  // elem_bytes
  kHead = 1,     // head_dim * elem_bytes
  kToken = 2,    // num_heads * head_dim * elem_bytes
  kBlock = 3,    // block_tokens * num_heads * head_dim * elem_bytes
};

KVTIER_HD RunKind ClassifyRun(const LayerGeometry& l, const ChunkGeometry& g) {
  const uint64_t e = g.elem_bytes;
  if (l.dim_stride != e && g.head_dim > 1) return RunKind::kElement;
  if (l.head_stride != e * g.head_dim && g.num_heads > 1) return RunKind::kHead;
  if (l.token_stride != e * g.head_dim * g.num_heads && g.block_tokens > 1) return RunKind::kToken;
  return RunKind::kBlock;
}

KVTIER_HD uint64_t RunBytes(RunKind kind, const ChunkGeometry& g) {
  switch (kind) {
    case RunKind::kElement: return g.elem_bytes;
    case RunKind::kHead: return static_cast<uint64_t>(g.head_dim) * g.elem_bytes;
    case RunKind::kToken: return static_cast<uint64_t>(g.num_heads) * g.head_dim * g.elem_bytes;
    case RunKind::kBlock: default:
      return static_cast<uint64_t>(g.block_tokens) * g.num_heads * g.head_dim * g.elem_bytes;
  }
}

}  // namespace kvtier

#endif  // KVTIER_KERNELS_KV_INDEXING_H_
