// Value types shared by the C++ API (store.h) and kvtier's parts: model identity,
// KV shape, the engine's KV memory layout, tiers. Plain structs; no behaviour
// beyond a few pure helpers.
#ifndef KVTIER_TYPES_H_
#define KVTIER_TYPES_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvtier {

// Element type of the KV cache. Numbers are stable: they appear in chunk headers.
enum class DType : uint8_t {
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat32 = 3,
  kFp8E4M3 = 4,
  kFp8E5M2 = 5,
  kInt8 = 6,
  kUInt8 = 7,
};
// Bytes per element; 0 for a value outside the enum.
size_t DTypeSize(DType dtype) noexcept;
const char* DTypeName(DType dtype) noexcept;

// Storage tiers, fastest first. Numbers are bit positions in a TierMask.
enum class TierId : uint8_t { kGpu = 0, kHost = 1, kNvme = 2, kRedis = 3 };
inline constexpr int kTierCount = 4;
using TierMask = uint8_t;
inline constexpr TierMask TierBit(TierId t) { return static_cast<TierMask>(1u << static_cast<int>(t)); }
inline constexpr TierMask kAllTiers = 0x0f;
const char* TierName(TierId tier) noexcept;

// Who computed the KV: two identities that differ in any field never share a chunk.
struct ModelIdentity {
  std::string name;            // e.g. "meta-llama/Llama-3.1-8B-Instruct"
  std::string revision;        // git revision of the weights, or empty when weights_digest is set
  std::string weights_digest;  // digest of the weights files, optional
  std::string tokenizer_id;    // tokenizer name/revision; token ids mean nothing without it
};

// The logical shape of the KV this process holds (per TP rank).
struct KvShape {
  uint32_t num_layers = 0;
  uint32_t num_kv_heads = 0;  // heads on this TP rank; 1 for MLA
  uint32_t head_dim = 0;      // per head; for MLA the latent width (e.g. 576)
  DType dtype = DType::kBFloat16;
  uint32_t chunk_tokens = 256;  // tokens per stored chunk; a multiple of the engine's block size
  uint32_t tp_rank = 0;
  uint32_t tp_size = 1;
  bool mla = false;  // one latent tensor per layer instead of K and V; TP is not part of the identity
};

// Everything that must match for KV to be reusable (ARCHITECTURE.md "namespace").
struct NamespaceSpec {
  ModelIdentity model;
  KvShape shape;
  std::string adapter_id;   // LoRA adapter, empty for the base model
  std::string tenant_salt;  // isolates tenants; empty for a single-tenant deployment
};

// One layer of the engine's paged KV memory. Element (block b, token t, head h, dim d)
// of K lives at base + b*block_stride + t*token_stride + h*head_stride + d*dim_stride;
// the V element is kv_offset bytes after its K element, or, when v_base is set, at the
// same offset from v_base (K and V in separate tensors with equal strides, e.g.
// transformers' DynamicCache). All strides are in bytes.
// For MLA, only the K part is used and kv_offset and v_base are ignored.
struct KvLayerMemory {
  void* base = nullptr;
  size_t bytes = 0;  // bytes addressable from base (and from v_base); every block must fit inside
  uint64_t block_stride = 0;
  uint64_t token_stride = 0;
  uint64_t head_stride = 0;
  uint64_t dim_stride = 0;
  uint64_t kv_offset = 0;  // ignored when v_base is set
  void* v_base = nullptr;  // V's own region, disjoint from K's; null: V is kv_offset after K
};

// The engine's KV memory, described once per namespace registration. Saves and loads
// then name block ids in [0, num_blocks).
struct KvMemoryLayout {
  uint32_t block_tokens = 0;  // tokens per engine block (vLLM block_size)
  uint32_t num_blocks = 0;    // blocks per layer
  std::vector<KvLayerMemory> layers;
  // Where the layers live: -1 host memory; a CUDA device ordinal when they are GPU
  // memory (copies then run the CUDA kernels; needs a CUDA build and GpuConfig's host
  // registration).
  int32_t device = -1;
};

// A hash the engine binds to one chunk in addition to its tokens (e.g. an image's hash
// for the placeholder tokens it covers). Entries must be sorted by chunk_index.
struct ExtraKey {
  uint32_t chunk_index = 0;
  uint64_t lo = 0;
  uint64_t hi = 0;
};

// Bytes of one chunk's payload for this shape: layers x (K,V or latent) x tokens x heads x dim.
inline uint64_t ChunkPayloadBytes(const KvShape& s) {
  return static_cast<uint64_t>(s.num_layers) * (s.mla ? 1u : 2u) * s.chunk_tokens * s.num_kv_heads *
         s.head_dim * DTypeSize(s.dtype);
}

}  // namespace kvtier

#endif  // KVTIER_TYPES_H_
