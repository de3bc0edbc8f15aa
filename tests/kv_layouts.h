// Engine KV layouts and the element-by-element reference for the Mover's tests
// (mover_test.cc, mover_units_test.cc, mover_cuda_test.cc).
//
// Engine memory is real host memory filled with random bytes, described by a
// KvMemoryLayout of the kinds engines use (vLLM NHD, FlashInfer, HND, one tensor for
// all layers, MLA, K and V as separate tensors as in transformers) and of stranger
// ones (padding, transposed and permuted axes). The reference takes every address
// straight from KvLayerMemory strides and the chunk format's payload order; it does not
// use kv_indexing.h, so it checks that arithmetic rather than repeating it.
#ifndef KVTIER_TESTS_KV_LAYOUTS_H_
#define KVTIER_TESTS_KV_LAYOUTS_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kvtier/types.h"

namespace kvtier::test {

using Bytes = std::vector<uint8_t>;

inline uint32_t Uniform(std::mt19937_64& rng, uint32_t lo, uint32_t hi) {
  return std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
}

inline void FillRandom(uint8_t* p, size_t n, std::mt19937_64& rng) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t v = rng();
    std::memcpy(p + i, &v, 8);
  }
  if (i < n) {
    const uint64_t v = rng();
    std::memcpy(p + i, &v, n - i);
  }
}

inline Bytes RandomBytes(size_t n, std::mt19937_64& rng) {
  Bytes b(n);
  FillRandom(b.data(), n, rng);
  return b;
}

// Equality of two byte strings, reporting the first difference instead of dumping both.
inline testing::AssertionResult SameBytes(const Bytes& got, const Bytes& want) {
  if (got.size() != want.size())
    return testing::AssertionFailure() << "sizes differ: " << got.size() << " vs " << want.size();
  if (got.empty() || std::memcmp(got.data(), want.data(), got.size()) == 0) return testing::AssertionSuccess();
  const auto diff = std::mismatch(got.begin(), got.end(), want.begin());
  return testing::AssertionFailure() << "first difference at byte " << (diff.first - got.begin()) << " of "
                                     << got.size() << ": got " << int{*diff.first} << ", want " << int{*diff.second};
}

// The logical shape of one test case.
struct Dims {
  uint32_t layers = 1;
  uint32_t heads = 1;
  uint32_t head_dim = 1;
  uint32_t elem = 2;
  DType dtype = DType::kBFloat16;
  uint32_t block_tokens = 1;
  uint32_t chunk_tokens = 1;
  uint32_t num_blocks = 1;
  bool mla = false;

  uint32_t num_kv() const { return mla ? 1 : 2; }
  uint32_t blocks_per_chunk() const { return chunk_tokens / block_tokens; }
  uint64_t payload_bytes() const { return uint64_t{layers} * num_kv() * chunk_tokens * heads * head_dim * elem; }
  KvShape shape() const {
    KvShape s;
    s.num_layers = layers;
    s.num_kv_heads = heads;
    s.head_dim = head_dim;
    s.dtype = dtype;
    s.chunk_tokens = chunk_tokens;
    s.mla = mla;
    return s;
  }
  std::string ToString() const {
    return "layers=" + std::to_string(layers) + " heads=" + std::to_string(heads) +
           " head_dim=" + std::to_string(head_dim) + " elem=" + std::to_string(elem) +
           " block_tokens=" + std::to_string(block_tokens) + " chunk_tokens=" + std::to_string(chunk_tokens) +
           " num_blocks=" + std::to_string(num_blocks) + (mla ? " mla" : "");
  }
};

inline DType RandomDType(uint32_t elem, std::mt19937_64& rng) {
  static constexpr DType kOne[] = {DType::kFp8E4M3, DType::kFp8E5M2, DType::kInt8, DType::kUInt8};
  static constexpr DType kTwo[] = {DType::kFloat16, DType::kBFloat16};
  if (elem == 1) return kOne[Uniform(rng, 0, 3)];
  if (elem == 2) return kTwo[Uniform(rng, 0, 1)];
  return DType::kFloat32;
}

// Random dims, shrunk until a chunk and the engine memory stay small enough for a case
// to take well under a millisecond with sanitizers.
inline Dims RandomDims(std::mt19937_64& rng, bool mla) {
  constexpr uint64_t kMaxChunkElements = 16384;
  constexpr uint64_t kMaxEngineBytes = 256 << 10;
  static constexpr uint32_t kElems[] = {1, 2, 4};
  Dims d;
  d.mla = mla;
  d.elem = kElems[Uniform(rng, 0, 2)];
  d.dtype = RandomDType(d.elem, rng);
  d.layers = Uniform(rng, 1, 6);
  d.heads = mla ? 1 : Uniform(rng, 1, 8);
  d.head_dim = Uniform(rng, 1, 128);
  d.block_tokens = Uniform(rng, 1, 32);
  uint32_t blocks = Uniform(rng, 1, 8);
  auto chunk_elements = [&] {
    return uint64_t{d.layers} * d.num_kv() * blocks * d.block_tokens * d.heads * d.head_dim;
  };
  while (chunk_elements() > kMaxChunkElements) {
    uint32_t* factors[] = {&d.head_dim, &d.block_tokens, &blocks, &d.heads, &d.layers};
    uint32_t* f = factors[Uniform(rng, 0, 4)];
    *f = (*f + 1) / 2;
  }
  d.chunk_tokens = blocks * d.block_tokens;
  const uint64_t block_bytes = uint64_t{d.layers} * d.num_kv() * d.block_tokens * d.heads * d.head_dim * d.elem;
  const uint32_t max_blocks =
      static_cast<uint32_t>(std::max<uint64_t>(blocks, std::min<uint64_t>(64, kMaxEngineBytes / block_bytes)));
  d.num_blocks = Uniform(rng, blocks, max_blocks);
  return d;
}

// Engine memory: buffers filled with random bytes and the layout that describes them.
struct Engine {
  Dims d;
  std::vector<Bytes> buffers;
  KvMemoryLayout layout;

  uint8_t* AddBuffer(size_t n, std::mt19937_64& rng) {
    buffers.push_back(RandomBytes(n, rng));
    return buffers.back().data();
  }
  // One tensor of `bytes` for one layer, starting `lead` bytes into its own buffer.
  void AddLayer(KvLayerMemory m, uint64_t bytes, size_t lead, std::mt19937_64& rng) {
    m.base = AddBuffer(lead + bytes, rng) + lead;
    m.bytes = bytes;
    layout.layers.push_back(m);
  }
  std::vector<Bytes> Snapshot() const { return buffers; }
  void Restore(const std::vector<Bytes>& snapshot) {
    for (size_t i = 0; i < buffers.size(); ++i) std::copy(snapshot[i].begin(), snapshot[i].end(), buffers[i].begin());
  }
  // (buffer index, offset) of a byte inside engine memory.
  std::pair<size_t, size_t> Locate(const uint8_t* p) const {
    const auto a = reinterpret_cast<uintptr_t>(p);
    for (size_t i = 0; i < buffers.size(); ++i) {
      const auto start = reinterpret_cast<uintptr_t>(buffers[i].data());
      if (a >= start && a < start + buffers[i].size()) return {i, a - start};
    }
    ADD_FAILURE() << "address outside engine memory";
    return {0, 0};
  }
};

// ---- the reference ------------------------------------------------------------------------

// Address of element (kv, block, token in block, head, dim) of one layer of engine memory.
inline uint8_t* RefEngineAddress(const KvLayerMemory& m, bool mla, uint32_t kv, uint32_t block, uint32_t t, uint32_t h,
                          uint32_t dim) {
  const bool own_v = !mla && kv == 1 && m.v_base != nullptr;
  const uint64_t kv_part = mla || own_v ? 0 : uint64_t{kv} * m.kv_offset;
  uint8_t* const origin = static_cast<uint8_t*>(own_v ? m.v_base : m.base);
  return origin + kv_part + uint64_t{block} * m.block_stride + uint64_t{t} * m.token_stride +
         uint64_t{h} * m.head_stride + uint64_t{dim} * m.dim_stride;
}

// Byte index in the payload of element (layer, kv, token in chunk, head, dim).
inline uint64_t RefPayloadIndex(const Dims& d, uint32_t layer, uint32_t kv, uint32_t token, uint32_t h, uint32_t dim) {
  return ((((uint64_t{layer} * d.num_kv() + kv) * d.chunk_tokens + token) * d.heads + h) * d.head_dim + dim) * d.elem;
}

// Calls fn(engine address, payload index) for every element of the chunk in the layer range.
template <typename Fn>
inline void ForEachElement(const Engine& e, const std::vector<int32_t>& ids, uint32_t first_layer, uint32_t num_layers,
                    Fn fn) {
  const Dims d = e.d;
  for (uint32_t layer = first_layer; layer < first_layer + num_layers; ++layer) {
    const KvLayerMemory m = e.layout.layers[layer];
    for (uint32_t kv = 0; kv < d.num_kv(); ++kv)
      for (uint32_t bi = 0; bi < ids.size(); ++bi)
        for (uint32_t t = 0; t < d.block_tokens; ++t)
          for (uint32_t h = 0; h < d.heads; ++h)
            for (uint32_t dim = 0; dim < d.head_dim; ++dim)
              fn(RefEngineAddress(m, d.mla, kv, static_cast<uint32_t>(ids[bi]), t, h, dim),
                 RefPayloadIndex(d, layer, kv, bi * d.block_tokens + t, h, dim));
  }
}

inline void RefGather(const Engine& e, const std::vector<int32_t>& ids, uint32_t first_layer, uint32_t num_layers,
               uint8_t* payload) {
  const uint32_t elem = e.d.elem;
  ForEachElement(e, ids, first_layer, num_layers, [=](const uint8_t* a, uint64_t i) {
    for (uint32_t b = 0; b < elem; ++b) payload[i + b] = a[b];
  });
}

inline void RefScatter(const Engine& e, const std::vector<int32_t>& ids, uint32_t first_layer, uint32_t num_layers,
                const uint8_t* payload) {
  const uint32_t elem = e.d.elem;
  ForEachElement(e, ids, first_layer, num_layers, [=](uint8_t* a, uint64_t i) {
    for (uint32_t b = 0; b < elem; ++b) a[b] = payload[i + b];
  });
}

// ---- layouts ------------------------------------------------------------------------------

enum class Layout { kVllmNhd, kFlashInfer, kHnd, kBlocksFirst, kMla, kPadded, kTransposed, kPermuted, kSplitKv };

inline const char* LayoutName(Layout l) {
  switch (l) {
    case Layout::kVllmNhd: return "vllm-nhd";
    case Layout::kFlashInfer: return "flashinfer";
    case Layout::kHnd: return "hnd";
    case Layout::kBlocksFirst: return "blocks-first";
    case Layout::kMla: return "mla";
    case Layout::kPadded: return "padded";
    case Layout::kTransposed: return "transposed";
    case Layout::kPermuted: return "permuted";
    case Layout::kSplitKv: return "split-kv";
  }
  return "?";
}

inline Engine BuildEngine(Layout kind, const Dims& d, std::mt19937_64& rng) {
  Engine e;
  e.d = d;
  e.layout.block_tokens = d.block_tokens;
  e.layout.num_blocks = d.num_blocks;
  const uint64_t E = d.elem, H = d.heads, D = d.head_dim, T = d.block_tokens, N = d.num_blocks, L = d.layers;
  KvLayerMemory m;
  switch (kind) {
    case Layout::kVllmNhd:  // per layer [2, num_blocks, block_size, heads, dim]
      m.dim_stride = E;
      m.head_stride = D * E;
      m.token_stride = H * D * E;
      m.block_stride = T * H * D * E;
      m.kv_offset = N * T * H * D * E;
      for (uint32_t l = 0; l < L; ++l) e.AddLayer(m, 2 * m.kv_offset, 0, rng);
      break;
    case Layout::kFlashInfer:  // per layer [num_blocks, 2, block_size, heads, dim]
      m.dim_stride = E;
      m.head_stride = D * E;
      m.token_stride = H * D * E;
      m.kv_offset = T * H * D * E;
      m.block_stride = 2 * m.kv_offset;
      for (uint32_t l = 0; l < L; ++l) e.AddLayer(m, N * m.block_stride, 0, rng);
      break;
    case Layout::kHnd:  // per layer [num_blocks, 2, heads, block_size, dim]
      m.dim_stride = E;
      m.token_stride = D * E;
      m.head_stride = T * D * E;
      m.kv_offset = H * T * D * E;
      m.block_stride = 2 * m.kv_offset;
      for (uint32_t l = 0; l < L; ++l) e.AddLayer(m, N * m.block_stride, 0, rng);
      break;
    case Layout::kBlocksFirst: {  // one tensor [num_blocks, layers, 2, block_size, heads, dim]
      const uint64_t plane = T * H * D * E;
      const uint64_t layer_stride = 2 * plane;
      m.dim_stride = E;
      m.head_stride = D * E;
      m.token_stride = H * D * E;
      m.kv_offset = plane;
      m.block_stride = L * layer_stride;
      const uint64_t total = N * m.block_stride;
      uint8_t* tensor = e.AddBuffer(total, rng);
      for (uint32_t l = 0; l < L; ++l) {
        m.base = tensor + l * layer_stride;
        m.bytes = total - l * layer_stride;
        e.layout.layers.push_back(m);
      }
      break;
    }
    case Layout::kMla: {  // per layer [num_blocks, block_size, latent]; kv_offset and head_stride unused
      static constexpr uint64_t kIgnored[] = {0, 12345, UINT64_MAX};
      m.dim_stride = E;
      m.token_stride = D * E;
      m.block_stride = T * D * E;
      m.head_stride = Uniform(rng, 0, 1) ? D * E : 0;
      m.kv_offset = kIgnored[Uniform(rng, 0, 2)];
      for (uint32_t l = 0; l < L; ++l) e.AddLayer(m, N * m.block_stride, 0, rng);
      break;
    }
    case Layout::kPadded:  // NHD order with gaps: after each head, token, block, and before V
      for (uint32_t l = 0; l < L; ++l) {
        const uint32_t style = Uniform(rng, 0, 2);  // 0: head gaps, 1: token gaps, 2: block gaps only
        const uint64_t head_pad = style == 0 ? Uniform(rng, 1, 2 * d.elem + 1) : 0;
        const uint64_t token_pad = style == 1 ? Uniform(rng, 1, 2 * d.elem + 1) : (style == 0 ? Uniform(rng, 0, 3) : 0);
        m.dim_stride = E;
        m.head_stride = D * E + head_pad;
        m.token_stride = H * m.head_stride + token_pad;
        m.block_stride = T * m.token_stride + Uniform(rng, style == 2 ? 1 : 0, 9);
        m.kv_offset = N * m.block_stride + Uniform(rng, 0, 9);
        e.AddLayer(m, 2 * m.kv_offset + Uniform(rng, 0, 16), Uniform(rng, 0, 7), rng);
      }
      break;
    case Layout::kTransposed:  // per layer [2, num_blocks, block_size, dim, heads]
      m.head_stride = E;
      m.dim_stride = H * E;
      m.token_stride = D * H * E;
      m.block_stride = T * D * H * E;
      m.kv_offset = N * m.block_stride;
      for (uint32_t l = 0; l < L; ++l) e.AddLayer(m, 2 * m.kv_offset, 0, rng);
      break;
    case Layout::kPermuted:  // per layer: the five axes in a random order, random gaps
      for (uint32_t l = 0; l < L; ++l) {
        uint64_t* strides[] = {&m.kv_offset, &m.block_stride, &m.token_stride, &m.head_stride, &m.dim_stride};
        const uint64_t sizes[] = {d.num_kv(), N, T, H, D};
        uint32_t order[] = {0, 1, 2, 3, 4};  // innermost first
        std::shuffle(std::begin(order), std::end(order), rng);
        uint64_t next = E;
        for (uint32_t axis : order) {
          *strides[axis] = next;
          next = next * sizes[axis] + (Uniform(rng, 0, 1) ? Uniform(rng, 1, 5) : 0);
        }
        e.AddLayer(m, next, Uniform(rng, 0, 3), rng);
      }
      break;
    case Layout::kSplitKv:  // per layer K and V tensors [heads, num_blocks * block_size (+pad), dim], V first or after
      for (uint32_t l = 0; l < L; ++l) {
        const uint64_t seq = N * T + Uniform(rng, 0, 3);  // a cache longer than its blocks
        m.dim_stride = E;
        m.token_stride = D * E;
        m.block_stride = T * D * E;
        m.head_stride = seq * D * E;
        m.kv_offset = Uniform(rng, 0, 1) ? 0 : UINT64_MAX;  // ignored beside v_base
        const uint64_t bytes = H * seq * D * E;
        const bool v_first = Uniform(rng, 0, 1) == 1;
        uint8_t* v = v_first ? e.AddBuffer(bytes + 8, rng) + Uniform(rng, 0, 8) : nullptr;
        e.AddLayer(m, bytes, Uniform(rng, 0, 8), rng);
        e.layout.layers.back().v_base = v_first ? v : e.AddBuffer(bytes + 8, rng) + Uniform(rng, 0, 8);
      }
      break;
  }
  return e;
}

inline std::vector<int32_t> RandomIds(const Dims& d, std::mt19937_64& rng) {
  const uint32_t n = d.blocks_per_chunk();
  std::vector<int32_t> ids(n);
  switch (Uniform(rng, 0, 2)) {
    case 0: {  // distinct
      std::vector<int32_t> all(d.num_blocks);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      std::copy_n(all.begin(), n, ids.begin());
      break;
    }
    case 1: {  // drawn from a few, so that repeats are likely
      const uint32_t pool = Uniform(rng, 1, std::min(d.num_blocks, 3u));
      for (int32_t& id : ids) id = static_cast<int32_t>(Uniform(rng, 0, pool - 1) * (d.num_blocks / pool));
      break;
    }
    default: {  // consecutive
      const uint32_t start = Uniform(rng, 0, d.num_blocks - n);
      std::iota(ids.begin(), ids.end(), static_cast<int32_t>(start));
      break;
    }
  }
  return ids;
}

inline std::string IdsToString(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    if (!s.empty()) s += ',';
    s += std::to_string(id);
  }
  return s;
}

}  // namespace kvtier::test

#endif  // KVTIER_TESTS_KV_LAYOUTS_H_
