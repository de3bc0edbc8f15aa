// The Mover's CPU path: layout validation, then gather/scatter loops that take every
// offset from kv_indexing.h (the arithmetic the CUDA kernels run) and copy the largest
// contiguous run the layer's layout allows.
//
// Loop order is layer, K/V, block of the chunk, then the run loops inside a block, so the
// payload side is walked front to back. When block ids repeat, Scatter writes them in
// that order: the last occurrence in `block_ids` wins.

#include "kernels/mover.h"

#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "common/copy.h"

namespace kvtier {
namespace {

static_assert(sizeof(uintptr_t) == sizeof(uint64_t) && sizeof(size_t) == sizeof(uint64_t),
              "the Mover keeps addresses and run lengths in 64 bits");

std::string LayerField(size_t layer, const char* field) { return "layers[" + std::to_string(layer) + "]." + field; }

// acc += a * b; false when the product or the sum overflows 64 bits.
bool CheckedMulAdd(uint64_t& acc, uint64_t a, uint64_t b) {
  uint64_t product;
  if (__builtin_mul_overflow(a, b, &product)) return false;
  return !__builtin_add_overflow(acc, product, &acc);
}

// Rejects a zero stride along a dimension of more than one element: distinct elements
// would alias and Scatter would lose all but one of them.
Status CheckStride(size_t layer, const char* field, uint64_t stride, uint64_t extent, const char* what) {
  if (stride != 0 || extent <= 1) return Status::OK();
  return Status::InvalidArgument("kv layout: " + LayerField(layer, field) + " is 0 but there are " +
                                 std::to_string(extent) + " " + what + "; set it to the byte distance between " +
                                 "consecutive " + what);
}

// Validates one layer and returns its geometry. `g` is complete (kv count included).
Result<LayerGeometry> BuildLayer(const KvLayerMemory& m, size_t i, const ChunkGeometry& g) {
  if (m.base == nullptr)
    return Status::InvalidArgument("kv layout: " + LayerField(i, "base") +
                                   " is null; pass the address of the layer's KV tensor");
  LayerGeometry l{};
  l.base = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(m.base));
  l.bytes = m.bytes;
  l.block_stride = m.block_stride;
  l.token_stride = m.token_stride;
  l.head_stride = m.head_stride;
  l.dim_stride = m.dim_stride;
  // MLA: one latent, kv_offset and v_base are ignored. A separate V region becomes the
  // distance from K modulo 2^64 (kv_indexing.h), so the copy loops are the same.
  const bool split = g.num_kv == 2 && m.v_base != nullptr;
  const uint64_t v_base = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(m.v_base));
  l.kv_offset = g.num_kv == 2 ? (split ? v_base - l.base : m.kv_offset) : 0;

  if (g.num_kv == 2 && !split && l.kv_offset == 0)
    return Status::InvalidArgument("kv layout: " + LayerField(i, "kv_offset") +
                                   " is 0 but the shape has K and V; set it to the byte distance from a K "
                                   "element to its V element, or v_base to V's own tensor (or set shape.mla "
                                   "for a latent cache)");
  KVTIER_RETURN_IF_ERROR(CheckStride(i, "block_stride", l.block_stride, g.num_blocks, "blocks"));
  KVTIER_RETURN_IF_ERROR(CheckStride(i, "token_stride", l.token_stride, g.block_tokens, "tokens in a block"));
  KVTIER_RETURN_IF_ERROR(CheckStride(i, "head_stride", l.head_stride, g.num_heads, "heads"));
  KVTIER_RETURN_IF_ERROR(CheckStride(i, "dim_stride", l.dim_stride, g.head_dim, "elements in a head"));

  // EngineExtent() in checked arithmetic first: an extent that wraps would pass the bytes check.
  // With a separate V region the K/V term is left out: each region is bounded on its own.
  const uint64_t terms[][2] = {{split ? 0u : g.num_kv - 1u, l.kv_offset},
                               {g.num_blocks - 1u, l.block_stride},
                               {g.block_tokens - 1u, l.token_stride},
                               {g.num_heads - 1u, l.head_stride},
                               {g.head_dim - 1u, l.dim_stride}};
  uint64_t extent = g.elem_bytes;
  bool fits = true;
  for (const auto& [count, stride] : terms) fits = fits && CheckedMulAdd(extent, count, stride);
  uint64_t end = 0, v_end = 0;
  if (!fits || __builtin_add_overflow(l.base, extent, &end) ||
      (split && __builtin_add_overflow(v_base, extent, &v_end)))
    return Status::InvalidArgument(
        "kv layout: layer " + std::to_string(i) + " overflows 64 bits over " + std::to_string(g.num_blocks) +
        " blocks (block_stride " + std::to_string(l.block_stride) + ", token_stride " + std::to_string(l.token_stride) +
        ", head_stride " + std::to_string(l.head_stride) + ", dim_stride " + std::to_string(l.dim_stride) +
        ", kv_offset " + std::to_string(split ? 0 : l.kv_offset) +
        "); strides are byte distances within the layer's tensor");
  extent = split ? EnginePlaneExtent(l, g) : EngineExtent(l, g);
  if (extent > l.bytes)
    return Status::InvalidArgument("kv layout: layer " + std::to_string(i) + " needs " + std::to_string(extent) +
                                   " bytes for " + std::to_string(g.num_blocks) + " blocks of its strides but " +
                                   LayerField(i, "bytes") + " is " + std::to_string(l.bytes) +
                                   (split ? " (each of the K and V regions needs them)" : "") +
                                   "; pass the tensor's real size, or fix num_blocks or the strides");
  if (split && l.base < v_end && v_base < end)
    return Status::InvalidArgument("kv layout: " + LayerField(i, "v_base") + " is " +
                                   (v_base >= l.base ? std::to_string(v_base - l.base) + " bytes after"
                                                     : std::to_string(l.base - v_base) + " bytes before") +
                                   " base, so the V and K regions (" + std::to_string(extent) +
                                   " bytes each) overlap; pass V's own tensor, or, for K and V interleaved in "
                                   "one tensor, leave v_base null and set kv_offset");
  return l;
}

// Gather copies engine -> payload, Scatter payload -> engine; the payload side is const
// for Scatter.
template <bool kGather>
using PayloadPtr = std::conditional_t<kGather, uint8_t*, const uint8_t*>;

template <bool kGather>
inline void CopyRun(uint8_t* engine, PayloadPtr<kGather> payload, size_t n) {
  if constexpr (kGather) {
    CopyBytes(payload, engine, n);
  } else {
    CopyBytes(engine, payload, n);
  }
}

inline uint8_t* EngineAddress(uint64_t address) { return reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(address)); }

// Moves one layer of the chunk. `l` and `g` are taken by value so that the compiler
// knows the copies cannot alias them and keeps them in registers. kElem is the element
// size for kElement runs (0: take g.elem_bytes at run time).
template <bool kGather, RunKind kKind, uint32_t kElem>
void MoveLayer(const LayerGeometry l, const ChunkGeometry g, uint32_t layer, const int32_t* ids,
               PayloadPtr<kGather> payload) {
  const size_t run = RunBytes(kKind, g);
  const uint32_t blocks = BlocksPerChunk(g);
  for (uint32_t kv = 0; kv < g.num_kv; ++kv) {
    for (uint32_t bi = 0; bi < blocks; ++bi) {
      // The origins of this (kv, block); offsets inside the block are relative to them
      // (both offset functions are linear in each index).
      uint8_t* const eng = EngineAddress(l.base + EngineOffset(l, kv, static_cast<uint32_t>(ids[bi]), 0, 0, 0));
      const PayloadPtr<kGather> pay = payload + PayloadOffset(g, layer, kv, bi * g.block_tokens, 0, 0);
      if constexpr (kKind == RunKind::kBlock) {
        CopyRun<kGather>(eng, pay, run);
      } else if constexpr (kKind == RunKind::kToken) {
        for (uint32_t t = 0; t < g.block_tokens; ++t)
          CopyRun<kGather>(eng + EngineOffset(l, 0, 0, t, 0, 0), pay + PayloadOffset(g, 0, 0, t, 0, 0), run);
      } else if constexpr (kKind == RunKind::kHead) {
        for (uint32_t t = 0; t < g.block_tokens; ++t)
          for (uint32_t h = 0; h < g.num_heads; ++h)
            CopyRun<kGather>(eng + EngineOffset(l, 0, 0, t, h, 0), pay + PayloadOffset(g, 0, 0, t, h, 0), run);
      } else {
        const size_t elem = kElem != 0 ? kElem : run;
        for (uint32_t t = 0; t < g.block_tokens; ++t)
          for (uint32_t h = 0; h < g.num_heads; ++h)
            for (uint32_t d = 0; d < g.head_dim; ++d)
              CopyRun<kGather>(eng + EngineOffset(l, 0, 0, t, h, d), pay + PayloadOffset(g, 0, 0, t, h, d), elem);
      }
    }
  }
}

template <bool kGather>
void MoveElementLayer(const LayerGeometry& l, const ChunkGeometry& g, uint32_t layer, const int32_t* ids,
                      PayloadPtr<kGather> payload) {
  switch (g.elem_bytes) {
    case 1: return MoveLayer<kGather, RunKind::kElement, 1>(l, g, layer, ids, payload);
    case 2: return MoveLayer<kGather, RunKind::kElement, 2>(l, g, layer, ids, payload);
    case 4: return MoveLayer<kGather, RunKind::kElement, 4>(l, g, layer, ids, payload);
    default: return MoveLayer<kGather, RunKind::kElement, 0>(l, g, layer, ids, payload);
  }
}

template <bool kGather>
void MoveLayers(const ChunkGeometry& g, const LayerGeometry* layers, const RunKind* runs, const int32_t* ids,
                PayloadPtr<kGather> payload, uint32_t first_layer, uint32_t num_layers) {
  for (uint32_t layer = first_layer; layer < first_layer + num_layers; ++layer) {
    const LayerGeometry& l = layers[layer];
    switch (runs[layer]) {
      case RunKind::kBlock: MoveLayer<kGather, RunKind::kBlock, 0>(l, g, layer, ids, payload); break;
      case RunKind::kToken: MoveLayer<kGather, RunKind::kToken, 0>(l, g, layer, ids, payload); break;
      case RunKind::kHead: MoveLayer<kGather, RunKind::kHead, 0>(l, g, layer, ids, payload); break;
      case RunKind::kElement: MoveElementLayer<kGather>(l, g, layer, ids, payload); break;
    }
  }
}

}  // namespace

Result<Mover> Mover::Create(const KvShape& shape, const KvMemoryLayout& layout) {
  const size_t elem = DTypeSize(shape.dtype);
  if (elem == 0)
    return Status::InvalidArgument("kv shape: shape.dtype " + std::to_string(static_cast<int>(shape.dtype)) +
                                   " is not a known dtype; use one of float16, bfloat16, float32, fp8_e4m3, "
                                   "fp8_e5m2, int8, uint8");
  if (shape.num_layers == 0)
    return Status::InvalidArgument("kv shape: shape.num_layers is 0; set it to the model's layer count");
  if (shape.num_kv_heads == 0)
    return Status::InvalidArgument("kv shape: shape.num_kv_heads is 0; set it to the KV heads on this rank");
  if (shape.head_dim == 0) return Status::InvalidArgument("kv shape: shape.head_dim is 0; set it to the head size");
  if (shape.chunk_tokens == 0)
    return Status::InvalidArgument("kv shape: shape.chunk_tokens is 0; set it to a multiple of the block size");
  if (layout.layers.size() != shape.num_layers)
    return Status::InvalidArgument("kv layout: layers has " + std::to_string(layout.layers.size()) +
                                   " entries but shape.num_layers is " + std::to_string(shape.num_layers) +
                                   "; describe every layer once, in order");
  if (layout.block_tokens == 0)
    return Status::InvalidArgument("kv layout: block_tokens is 0; set it to the engine's block size");
  if (shape.chunk_tokens % layout.block_tokens != 0)
    return Status::InvalidArgument("kv layout: block_tokens " + std::to_string(layout.block_tokens) +
                                   " does not divide shape.chunk_tokens " + std::to_string(shape.chunk_tokens) +
                                   "; make chunk_tokens a multiple of the engine's block size");
  if (layout.num_blocks == 0)
    return Status::InvalidArgument("kv layout: num_blocks is 0; set it to the blocks per layer in engine memory");

  Mover m;
  ChunkGeometry& g = m.geom_;
  g.num_layers = shape.num_layers;
  g.num_heads = shape.num_kv_heads;
  g.head_dim = shape.head_dim;
  g.elem_bytes = static_cast<uint32_t>(elem);
  g.block_tokens = layout.block_tokens;
  g.chunk_tokens = shape.chunk_tokens;
  g.num_kv = shape.mla ? 1 : 2;
  g.num_blocks = layout.num_blocks;

  // PayloadBytes() must not wrap: multiply its factors one at a time, checked.
  uint64_t payload = g.chunk_tokens;
  bool payload_fits = true;
  for (uint64_t factor : {g.num_heads, g.head_dim, g.elem_bytes, g.num_kv, g.num_layers})
    payload_fits = payload_fits && !__builtin_mul_overflow(payload, factor, &payload);
  if (!payload_fits)
    return Status::InvalidArgument("kv shape: a chunk of " + std::to_string(g.chunk_tokens) + " tokens x " +
                                   std::to_string(g.num_heads) + " heads x " + std::to_string(g.head_dim) + " dims x " +
                                   std::to_string(g.num_layers) +
                                   " layers overflows 64 bits; check shape.chunk_tokens and the shape");

  m.layers_.reserve(layout.layers.size());
  m.runs_.reserve(layout.layers.size());
  for (size_t i = 0; i < layout.layers.size(); ++i) {
    Result<LayerGeometry> l = BuildLayer(layout.layers[i], i, g);
    if (!l.ok()) return std::move(l).status();
    m.layers_.push_back(l.value());
    m.runs_.push_back(ClassifyRun(l.value(), g));
  }
  return m;
}

// An empty layer range (num_layers == 0, first_layer <= the layer count) is valid and
// copies nothing; the block ids and payload are still checked.
Status Mover::CheckArgs(std::span<const int32_t> block_ids, const void* payload, uint64_t payload_bytes,
                        uint32_t first_layer, uint32_t num_layers) const {
  const uint32_t blocks = blocks_per_chunk();
  if (block_ids.size() != blocks)
    return Status::InvalidArgument("mover: a chunk of " + std::to_string(geom_.chunk_tokens) + " tokens is " +
                                   std::to_string(blocks) + " blocks of " + std::to_string(geom_.block_tokens) +
                                   " but " + std::to_string(block_ids.size()) +
                                   " block ids were given; pass one id per block of the chunk");
  for (size_t i = 0; i < block_ids.size(); ++i) {
    if (block_ids[i] < 0 || static_cast<uint32_t>(block_ids[i]) >= geom_.num_blocks)
      return Status::InvalidArgument("mover: block_ids[" + std::to_string(i) + "] is " + std::to_string(block_ids[i]) +
                                     ", outside [0, " + std::to_string(geom_.num_blocks) +
                                     "); pass ids of the registered layout");
  }
  if (payload == nullptr) return Status::InvalidArgument("mover: payload is null; pass the chunk's payload buffer");
  if (payload_bytes < this->payload_bytes())
    return Status::InvalidArgument("mover: payload_bytes is " + std::to_string(payload_bytes) + " but a chunk needs " +
                                   std::to_string(this->payload_bytes()) +
                                   "; pass a buffer for the whole chunk (all layers)");
  if (static_cast<uint64_t>(first_layer) + num_layers > geom_.num_layers)
    return Status::InvalidArgument("mover: layers [" + std::to_string(first_layer) + ", " +
                                   std::to_string(static_cast<uint64_t>(first_layer) + num_layers) +
                                   ") are outside the chunk's " + std::to_string(geom_.num_layers) +
                                   " layers; pass first_layer + num_layers <= " + std::to_string(geom_.num_layers));
  return Status::OK();
}

Status Mover::Gather(std::span<const int32_t> block_ids, void* payload, uint64_t payload_bytes, uint32_t first_layer,
                     uint32_t num_layers) const {
  KVTIER_RETURN_IF_ERROR(CheckArgs(block_ids, payload, payload_bytes, first_layer, num_layers));
  MoveLayers<true>(geom_, layers_.data(), runs_.data(), block_ids.data(), static_cast<uint8_t*>(payload), first_layer,
                   num_layers);
  return Status::OK();
}

Status Mover::Scatter(std::span<const int32_t> block_ids, const void* payload, uint64_t payload_bytes,
                      uint32_t first_layer, uint32_t num_layers) const {
  KVTIER_RETURN_IF_ERROR(CheckArgs(block_ids, payload, payload_bytes, first_layer, num_layers));
  MoveLayers<false>(geom_, layers_.data(), runs_.data(), block_ids.data(), static_cast<const uint8_t*>(payload),
                    first_layer, num_layers);
  return Status::OK();
}

}  // namespace kvtier
