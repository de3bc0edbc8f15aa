// Mover (CPU path) against an element-by-element reference that takes every address
// straight from KvLayerMemory strides and the chunk format's payload order; the
// reference does not use kv_indexing.h (ClassifyRun is used only to check that the
// cases reach every run kind). Random shapes, dtypes, block ids and layer ranges over
// the layouts engines use, in real memory filled with random bytes; then bad inputs.

#include "kernels/mover.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace kvtier {
namespace {

using Bytes = std::vector<uint8_t>;

uint32_t Uniform(std::mt19937_64& rng, uint32_t lo, uint32_t hi) {
  return std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
}

void FillRandom(uint8_t* p, size_t n, std::mt19937_64& rng) {
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

Bytes RandomBytes(size_t n, std::mt19937_64& rng) {
  Bytes b(n);
  FillRandom(b.data(), n, rng);
  return b;
}

// Equality of two byte strings, reporting the first difference instead of dumping both.
testing::AssertionResult SameBytes(const Bytes& got, const Bytes& want) {
  if (got.size() != want.size())
    return testing::AssertionFailure() << "sizes differ: " << got.size() << " vs " << want.size();
  if (got.empty() || std::memcmp(got.data(), want.data(), got.size()) == 0) return testing::AssertionSuccess();
  const auto diff = std::mismatch(got.begin(), got.end(), want.begin());
  return testing::AssertionFailure() << "first difference at byte " << (diff.first - got.begin()) << " of "
                                     << got.size() << ": got " << int{*diff.first} << ", want " << int{*diff.second};
}

testing::AssertionResult IsInvalidArgumentNaming(const Status& st, const std::string& field) {
  if (!st.IsInvalidArgument()) return testing::AssertionFailure() << "want InvalidArgument, got " << st.ToString();
  if (st.message().find(field) == std::string::npos)
    return testing::AssertionFailure() << "message does not name `" << field << "`: " << st.message();
  return testing::AssertionSuccess();
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

DType RandomDType(uint32_t elem, std::mt19937_64& rng) {
  static constexpr DType kOne[] = {DType::kFp8E4M3, DType::kFp8E5M2, DType::kInt8, DType::kUInt8};
  static constexpr DType kTwo[] = {DType::kFloat16, DType::kBFloat16};
  if (elem == 1) return kOne[Uniform(rng, 0, 3)];
  if (elem == 2) return kTwo[Uniform(rng, 0, 1)];
  return DType::kFloat32;
}

// Random dims, shrunk until a chunk and the engine memory stay small enough for a case
// to take well under a millisecond with sanitizers.
Dims RandomDims(std::mt19937_64& rng, bool mla) {
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
uint8_t* RefEngineAddress(const KvLayerMemory& m, bool mla, uint32_t kv, uint32_t block, uint32_t t, uint32_t h,
                          uint32_t dim) {
  const uint64_t kv_part = mla ? 0 : uint64_t{kv} * m.kv_offset;
  return static_cast<uint8_t*>(m.base) + kv_part + uint64_t{block} * m.block_stride + uint64_t{t} * m.token_stride +
         uint64_t{h} * m.head_stride + uint64_t{dim} * m.dim_stride;
}

// Byte index in the payload of element (layer, kv, token in chunk, head, dim).
uint64_t RefPayloadIndex(const Dims& d, uint32_t layer, uint32_t kv, uint32_t token, uint32_t h, uint32_t dim) {
  return ((((uint64_t{layer} * d.num_kv() + kv) * d.chunk_tokens + token) * d.heads + h) * d.head_dim + dim) * d.elem;
}

// Calls fn(engine address, payload index) for every element of the chunk in the layer range.
template <typename Fn>
void ForEachElement(const Engine& e, const std::vector<int32_t>& ids, uint32_t first_layer, uint32_t num_layers,
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

void RefGather(const Engine& e, const std::vector<int32_t>& ids, uint32_t first_layer, uint32_t num_layers,
               uint8_t* payload) {
  const uint32_t elem = e.d.elem;
  ForEachElement(e, ids, first_layer, num_layers, [=](const uint8_t* a, uint64_t i) {
    for (uint32_t b = 0; b < elem; ++b) payload[i + b] = a[b];
  });
}

void RefScatter(const Engine& e, const std::vector<int32_t>& ids, uint32_t first_layer, uint32_t num_layers,
                const uint8_t* payload) {
  const uint32_t elem = e.d.elem;
  ForEachElement(e, ids, first_layer, num_layers, [=](uint8_t* a, uint64_t i) {
    for (uint32_t b = 0; b < elem; ++b) a[b] = payload[i + b];
  });
}

// ---- layouts ------------------------------------------------------------------------------

enum class Layout { kVllmNhd, kFlashInfer, kHnd, kBlocksFirst, kMla, kPadded, kTransposed, kPermuted };

const char* LayoutName(Layout l) {
  switch (l) {
    case Layout::kVllmNhd: return "vllm-nhd";
    case Layout::kFlashInfer: return "flashinfer";
    case Layout::kHnd: return "hnd";
    case Layout::kBlocksFirst: return "blocks-first";
    case Layout::kMla: return "mla";
    case Layout::kPadded: return "padded";
    case Layout::kTransposed: return "transposed";
    case Layout::kPermuted: return "permuted";
  }
  return "?";
}

Engine BuildEngine(Layout kind, const Dims& d, std::mt19937_64& rng) {
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
  }
  return e;
}

std::vector<int32_t> RandomIds(const Dims& d, std::mt19937_64& rng) {
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

std::string IdsToString(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) {
    if (!s.empty()) s += ',';
    s += std::to_string(id);
  }
  return s;
}

// How the layout's layer classifies; only to check that the cases reach every run kind.
RunKind RunKindOf(const Mover& mover, const KvLayerMemory& m) {
  LayerGeometry l{};
  l.block_stride = m.block_stride;
  l.token_stride = m.token_stride;
  l.head_stride = m.head_stride;
  l.dim_stride = m.dim_stride;
  return ClassifyRun(l, mover.geometry());
}

// ---- one random case ----------------------------------------------------------------------

// Gather into a payload prefilled with noise: the chunk's bytes of the layer range must
// equal the reference's and every other byte (other layers, a tail past the chunk) keep its noise.
void CheckGather(const Mover& mover, const Engine& e, const std::vector<int32_t>& ids, uint32_t first, uint32_t count,
                 std::mt19937_64& rng) {
  SCOPED_TRACE("gather layers [" + std::to_string(first) + ", " + std::to_string(first + count) + ")");
  Bytes want = RandomBytes(e.d.payload_bytes() + Uniform(rng, 0, 8), rng);
  Bytes got = want;
  RefGather(e, ids, first, count, want.data());
  ASSERT_TRUE(mover.Gather(ids, got.data(), got.size(), first, count).ok());
  EXPECT_TRUE(SameBytes(got, want));
}

// Scatter a random payload: engine memory must equal a reference-scattered copy, and no
// byte outside the elements of the chunk's blocks in the layer range may change.
void CheckScatter(const Mover& mover, Engine& e, const std::vector<int32_t>& ids, uint32_t first, uint32_t count,
                  std::mt19937_64& rng) {
  SCOPED_TRACE("scatter layers [" + std::to_string(first) + ", " + std::to_string(first + count) + ")");
  const Bytes payload = RandomBytes(e.d.payload_bytes(), rng);
  const std::vector<Bytes> before = e.Snapshot();
  RefScatter(e, ids, first, count, payload.data());
  const std::vector<Bytes> want = e.Snapshot();
  e.Restore(before);

  ASSERT_TRUE(mover.Scatter(ids, payload.data(), payload.size(), first, count).ok());
  for (size_t i = 0; i < e.buffers.size(); ++i) EXPECT_TRUE(SameBytes(e.buffers[i], want[i])) << "buffer " << i;

  // Put back the bytes of the chunk's elements: what remains must be as before.
  std::vector<Bytes> undone = e.Snapshot();
  ForEachElement(e, ids, first, count, [&](const uint8_t* a, uint64_t) {
    const auto [buf, off] = e.Locate(a);
    std::memcpy(undone[buf].data() + off, before[buf].data() + off, e.d.elem);
  });
  for (size_t i = 0; i < e.buffers.size(); ++i)
    EXPECT_TRUE(SameBytes(undone[i], before[i])) << "buffer " << i << " changed outside the chunk";
}

void RunCase(Layout kind, std::mt19937_64& rng, std::set<RunKind>* runs) {
  const Dims d = RandomDims(rng, kind == Layout::kMla);
  Engine e = BuildEngine(kind, d, rng);
  const std::vector<int32_t> ids = RandomIds(d, rng);
  SCOPED_TRACE(std::string(LayoutName(kind)) + " " + d.ToString() + " ids=" + IdsToString(ids));

  Result<Mover> created = Mover::Create(d.shape(), e.layout);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const Mover& mover = created.value();
  const ChunkGeometry& g = mover.geometry();
  ASSERT_EQ(g.num_layers, d.layers);
  ASSERT_EQ(g.num_heads, d.heads);
  ASSERT_EQ(g.head_dim, d.head_dim);
  ASSERT_EQ(g.elem_bytes, d.elem);
  ASSERT_EQ(g.block_tokens, d.block_tokens);
  ASSERT_EQ(g.chunk_tokens, d.chunk_tokens);
  ASSERT_EQ(g.num_kv, d.num_kv());
  ASSERT_EQ(g.num_blocks, d.num_blocks);
  ASSERT_EQ(mover.blocks_per_chunk(), d.blocks_per_chunk());
  ASSERT_EQ(mover.payload_bytes(), d.payload_bytes());
  ASSERT_EQ(mover.layer_bytes(), d.payload_bytes() / d.layers);
  for (const KvLayerMemory& m : e.layout.layers) runs->insert(RunKindOf(mover, m));

  const uint32_t first = Uniform(rng, 0, d.layers);
  const uint32_t count = Uniform(rng, 0, d.layers - first);
  CheckGather(mover, e, ids, 0, d.layers, rng);
  CheckGather(mover, e, ids, first, count, rng);
  CheckScatter(mover, e, ids, 0, d.layers, rng);
  CheckScatter(mover, e, ids, first, count, rng);

  // Round trip: with distinct ids, what was scattered gathers back unchanged.
  if (std::set<int32_t>(ids.begin(), ids.end()).size() == ids.size()) {
    const Bytes payload = RandomBytes(d.payload_bytes(), rng);
    Bytes back(payload.size());
    ASSERT_TRUE(mover.Scatter(ids, payload.data(), payload.size()).ok());
    ASSERT_TRUE(mover.Gather(ids, back.data(), back.size()).ok());
    EXPECT_TRUE(SameBytes(back, payload));
  }
}

constexpr int kCasesPerLayout = 60;

std::set<RunKind> RunCases(Layout kind, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::set<RunKind> runs;
  for (int i = 0; i < kCasesPerLayout && !testing::Test::HasFatalFailure(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i) + " of seed " + std::to_string(seed));
    RunCase(kind, rng, &runs);
  }
  return runs;
}

TEST(MoverRandom, VllmFlashAttentionNhd) { EXPECT_TRUE(RunCases(Layout::kVllmNhd, 1).count(RunKind::kBlock)); }

TEST(MoverRandom, FlashInfer) { EXPECT_TRUE(RunCases(Layout::kFlashInfer, 2).count(RunKind::kBlock)); }

TEST(MoverRandom, Hnd) { EXPECT_TRUE(RunCases(Layout::kHnd, 3).count(RunKind::kHead)); }

TEST(MoverRandom, BlocksFirstAcrossLayers) { EXPECT_TRUE(RunCases(Layout::kBlocksFirst, 4).count(RunKind::kBlock)); }

TEST(MoverRandom, MlaLatent) { EXPECT_TRUE(RunCases(Layout::kMla, 5).count(RunKind::kBlock)); }

TEST(MoverRandom, PaddedStrides) {
  const std::set<RunKind> runs = RunCases(Layout::kPadded, 6);
  EXPECT_TRUE(runs.count(RunKind::kHead));
  EXPECT_TRUE(runs.count(RunKind::kToken));
  EXPECT_TRUE(runs.count(RunKind::kBlock));
}

TEST(MoverRandom, TransposedDims) { EXPECT_TRUE(RunCases(Layout::kTransposed, 7).count(RunKind::kElement)); }

TEST(MoverRandom, PermutedAxes) {
  EXPECT_EQ(RunCases(Layout::kPermuted, 8).size(), 4u) << "every run kind should occur";
}

// ---- a case checked by hand ---------------------------------------------------------------

// Each float32 element of engine memory holds its own coordinates, so the payload says
// where each of its elements came from.
uint32_t Code(uint32_t layer, uint32_t kv, uint32_t block, uint32_t t, uint32_t h, uint32_t dim) {
  return layer << 24 | kv << 20 | block << 12 | t << 8 | h << 4 | dim;
}

TEST(MoverFixed, NhdPayloadIsLayerKvTokenHeadDim) {
  constexpr uint32_t L = 3, N = 5, T = 2, H = 2, D = 3, kChunk = 6;
  std::vector<std::vector<uint32_t>> tensors(L, std::vector<uint32_t>(2 * N * T * H * D));
  KvMemoryLayout layout;
  layout.block_tokens = T;
  layout.num_blocks = N;
  for (uint32_t l = 0; l < L; ++l) {
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t b = 0; b < N; ++b)
        for (uint32_t t = 0; t < T; ++t)
          for (uint32_t h = 0; h < H; ++h)
            for (uint32_t dim = 0; dim < D; ++dim)
              tensors[l][(((kv * N + b) * T + t) * H + h) * D + dim] = Code(l, kv, b, t, h, dim);
    KvLayerMemory m;
    m.base = tensors[l].data();
    m.bytes = tensors[l].size() * 4;
    m.dim_stride = 4;
    m.head_stride = D * 4;
    m.token_stride = H * D * 4;
    m.block_stride = T * H * D * 4;
    m.kv_offset = N * T * H * D * 4;
    layout.layers.push_back(m);
  }
  KvShape shape;
  shape.num_layers = L;
  shape.num_kv_heads = H;
  shape.head_dim = D;
  shape.dtype = DType::kFloat32;
  shape.chunk_tokens = kChunk;
  Result<Mover> created = Mover::Create(shape, layout);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const Mover& mover = created.value();
  ASSERT_EQ(mover.payload_bytes(), uint64_t{L} * 2 * kChunk * H * D * 4);

  const std::vector<int32_t> ids = {4, 0, 2};
  std::vector<uint32_t> payload(L * 2 * kChunk * H * D);
  ASSERT_TRUE(mover.Gather(ids, payload.data(), payload.size() * 4).ok());
  size_t i = 0;
  for (uint32_t l = 0; l < L; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t token = 0; token < kChunk; ++token)
        for (uint32_t h = 0; h < H; ++h)
          for (uint32_t dim = 0; dim < D; ++dim, ++i)
            ASSERT_EQ(payload[i], Code(l, kv, static_cast<uint32_t>(ids[token / T]), token % T, h, dim))
                << "payload element " << i;

  // Scatter the chunk into blocks 1, 3, 0 of zeroed memory: blocks 2 and 4 stay zero.
  for (auto& t : tensors) std::fill(t.begin(), t.end(), 0u);
  const std::vector<int32_t> to = {1, 3, 0};
  ASSERT_TRUE(mover.Scatter(to, payload.data(), payload.size() * 4).ok());
  for (uint32_t l = 0; l < L; ++l)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t b = 0; b < N; ++b)
        for (uint32_t t = 0; t < T; ++t)
          for (uint32_t h = 0; h < H; ++h)
            for (uint32_t dim = 0; dim < D; ++dim) {
              const auto pos = std::find(to.begin(), to.end(), static_cast<int32_t>(b));
              const uint32_t want =
                  pos == to.end() ? 0u : Code(l, kv, static_cast<uint32_t>(ids[pos - to.begin()]), t, h, dim);
              ASSERT_EQ(tensors[l][(((kv * N + b) * T + t) * H + h) * D + dim], want)
                  << "layer " << l << " kv " << kv << " block " << b;
            }
}

TEST(MoverFixed, RepeatedIdsScatterLastOccurrenceWins) {
  std::mt19937_64 rng(11);
  Dims d;
  d.layers = 2;
  d.heads = 2;
  d.head_dim = 8;
  d.block_tokens = 4;
  d.chunk_tokens = 12;
  d.num_blocks = 4;
  Engine e = BuildEngine(Layout::kVllmNhd, d, rng);
  Result<Mover> created = Mover::Create(d.shape(), e.layout);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const std::vector<int32_t> ids = {2, 1, 2};
  const Bytes payload = RandomBytes(d.payload_bytes(), rng);
  ASSERT_TRUE(created->Scatter(ids, payload.data(), payload.size()).ok());
  Bytes back(payload.size());
  ASSERT_TRUE(created->Gather(ids, back.data(), back.size()).ok());
  // Block 2 holds the third block of the payload, in both places it is gathered to.
  const uint64_t block_bytes = uint64_t{d.block_tokens} * d.heads * d.head_dim * d.elem;
  for (uint32_t plane = 0; plane < d.layers * 2; ++plane) {
    const uint64_t base = plane * 3 * block_bytes;
    for (uint32_t bi : {0u, 2u})
      EXPECT_EQ(
          0, std::memcmp(back.data() + base + bi * block_bytes, payload.data() + base + 2 * block_bytes, block_bytes))
          << "plane " << plane << " block " << bi;
    EXPECT_EQ(0, std::memcmp(back.data() + base + block_bytes, payload.data() + base + block_bytes, block_bytes));
  }
}

// ---- Create: bad layouts ------------------------------------------------------------------

// A valid small NHD setup for the bad-input tests to break one field of.
struct Valid {
  std::mt19937_64 rng{21};
  Dims d;
  Engine e;
  Valid() {
    d.layers = 3;
    d.heads = 2;
    d.head_dim = 4;
    d.block_tokens = 4;
    d.chunk_tokens = 8;
    d.num_blocks = 6;
    e = BuildEngine(Layout::kVllmNhd, d, rng);
  }
  KvShape shape() const { return d.shape(); }
};

TEST(MoverCreate, AcceptsTheValidSetup) {
  Valid v;
  EXPECT_TRUE(Mover::Create(v.shape(), v.e.layout).ok());
}

TEST(MoverCreate, RejectsWrongLayerCount) {
  Valid v;
  v.e.layout.layers.pop_back();
  EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(v.shape(), v.e.layout).status(), "num_layers"));
  v.e.layout.layers.clear();
  EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(v.shape(), v.e.layout).status(), "layers"));
}

TEST(MoverCreate, RejectsNullBase) {
  Valid v;
  v.e.layout.layers[1].base = nullptr;
  EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(v.shape(), v.e.layout).status(), "layers[1].base"));
}

TEST(MoverCreate, RejectsZeroBlockTokens) {
  Valid v;
  v.e.layout.block_tokens = 0;
  EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(v.shape(), v.e.layout).status(), "block_tokens"));
}

TEST(MoverCreate, RejectsChunkTokensNotAMultipleOfBlockTokens) {
  Valid v;
  v.e.layout.block_tokens = 3;
  const Status st = Mover::Create(v.shape(), v.e.layout).status();
  EXPECT_TRUE(IsInvalidArgumentNaming(st, "block_tokens"));
  EXPECT_TRUE(IsInvalidArgumentNaming(st, "chunk_tokens"));
}

TEST(MoverCreate, RejectsZeroNumBlocks) {
  Valid v;
  v.e.layout.num_blocks = 0;
  EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(v.shape(), v.e.layout).status(), "num_blocks"));
}

TEST(MoverCreate, RejectsZeroStrideOverADimensionOfSeveral) {
  uint64_t KvLayerMemory::*const fields[] = {&KvLayerMemory::block_stride, &KvLayerMemory::token_stride,
                                             &KvLayerMemory::head_stride, &KvLayerMemory::dim_stride,
                                             &KvLayerMemory::kv_offset};
  const char* names[] = {"layers[2].block_stride", "layers[2].token_stride", "layers[2].head_stride",
                         "layers[2].dim_stride", "layers[2].kv_offset"};
  for (size_t i = 0; i < 5; ++i) {
    Valid v;
    v.e.layout.layers[2].*fields[i] = 0;
    EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(v.shape(), v.e.layout).status(), names[i]));
  }
}

TEST(MoverCreate, AcceptsZeroStrideOverADimensionOfOne) {
  std::mt19937_64 rng(22);
  Dims d;  // one of everything but layers and K/V
  d.layers = 2;
  Engine e = BuildEngine(Layout::kVllmNhd, d, rng);
  for (KvLayerMemory& m : e.layout.layers) m.block_stride = m.token_stride = m.head_stride = m.dim_stride = 0;
  Result<Mover> created = Mover::Create(d.shape(), e.layout);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  Bytes payload(created->payload_bytes());
  ASSERT_TRUE(created->Gather(std::vector<int32_t>{0}, payload.data(), payload.size()).ok());
  Bytes want(payload.size());
  RefGather(e, {0}, 0, d.layers, want.data());
  EXPECT_TRUE(SameBytes(payload, want));
}

TEST(MoverCreate, RejectsShortBuffer) {
  Valid v;
  ASSERT_TRUE(Mover::Create(v.shape(), v.e.layout).ok()) << "bytes exactly the extent is enough";
  v.e.layout.layers[1].bytes -= 1;
  const Status st = Mover::Create(v.shape(), v.e.layout).status();
  EXPECT_TRUE(IsInvalidArgumentNaming(st, "layers[1].bytes"));
  EXPECT_TRUE(IsInvalidArgumentNaming(st, "needs " + std::to_string(v.e.layout.layers[1].bytes + 1) + " bytes"));
}

TEST(MoverCreate, RejectsStridesThatOverflow) {
  {
    Valid v;
    v.e.layout.layers[0].block_stride = uint64_t{1} << 62;
    v.e.layout.layers[0].bytes = SIZE_MAX;
    EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(v.shape(), v.e.layout).status(), "overflow"));
  }
  {
    Valid v;
    v.e.layout.layers[2].kv_offset = UINT64_MAX;
    v.e.layout.layers[2].bytes = SIZE_MAX;
    EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(v.shape(), v.e.layout).status(), "overflow"));
  }
  {
    Valid v;  // every term fits but their sum does not: (block_tokens - 1) * token_stride is UINT64_MAX
    v.e.layout.layers[1].token_stride = UINT64_MAX / (v.d.block_tokens - 1);
    v.e.layout.layers[1].bytes = SIZE_MAX;
    EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(v.shape(), v.e.layout).status(), "overflow"));
  }
  {
    Valid v;  // the extent fits but base + extent wraps the address space
    v.e.layout.layers[0].base = reinterpret_cast<void*>(UINTPTR_MAX - 16);
    v.e.layout.layers[0].bytes = SIZE_MAX;
    EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(v.shape(), v.e.layout).status(), "overflow"));
  }
  {
    Valid v;  // a chunk whose payload size does not fit 64 bits
    KvShape s = v.shape();
    s.num_kv_heads = s.head_dim = 1u << 31;
    s.chunk_tokens = 1u << 31;
    v.e.layout.block_tokens = 1;
    EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(s, v.e.layout).status(), "overflow"));
  }
}

TEST(MoverCreate, RejectsUnknownDType) {
  for (int bad : {0, 8, 255}) {
    Valid v;
    KvShape s = v.shape();
    s.dtype = static_cast<DType>(bad);
    EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(s, v.e.layout).status(), "dtype"));
  }
}

TEST(MoverCreate, RejectsEmptyShape) {
  uint32_t KvShape::*const fields[] = {&KvShape::num_layers, &KvShape::num_kv_heads, &KvShape::head_dim,
                                       &KvShape::chunk_tokens};
  const char* names[] = {"num_layers", "num_kv_heads", "head_dim", "chunk_tokens"};
  for (size_t i = 0; i < 4; ++i) {
    Valid v;
    KvShape s = v.shape();
    s.*fields[i] = 0;
    EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(s, v.e.layout).status(), names[i]));
  }
}

TEST(MoverCreate, MlaIgnoresKvOffset) {
  Valid v;
  KvShape s = v.shape();
  s.mla = true;
  s.num_kv_heads = 1;
  for (uint64_t kv_offset : {uint64_t{0}, UINT64_MAX}) {
    for (KvLayerMemory& m : v.e.layout.layers) m.kv_offset = kv_offset;
    Result<Mover> created = Mover::Create(s, v.e.layout);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    EXPECT_EQ(created->geometry().num_kv, 1u);
    EXPECT_EQ(created->payload_bytes(), ChunkPayloadBytes(s));
  }
}

// ---- Gather/Scatter: bad arguments write nothing -----------------------------------------

struct BadCall {
  std::string what;
  std::vector<int32_t> ids;
  bool null_payload = false;
  int64_t bytes_delta = 0;  // payload_bytes passed = the real size + this
  uint32_t first_layer = 0;
  uint32_t num_layers = 0;
  std::string field;  // what the message must name
};

TEST(MoverArgs, RejectsBadCallsAndWritesNothing) {
  Valid v;
  Result<Mover> created = Mover::Create(v.shape(), v.e.layout);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const Mover& mover = created.value();
  const uint32_t L = v.d.layers;
  const std::vector<int32_t> good = {3, 1};
  const int32_t N = static_cast<int32_t>(v.d.num_blocks);
  const std::vector<BadCall> calls = {
      {"too few ids", {3}, false, 0, 0, L, "block ids"},
      {"too many ids", {3, 1, 2}, false, 0, 0, L, "block ids"},
      {"no ids", {}, false, 0, 0, L, "block ids"},
      {"negative id", {3, -1}, false, 0, 0, L, "block_ids[1]"},
      {"id == num_blocks", {N, 1}, false, 0, 0, L, "block_ids[0]"},
      {"huge id", {3, INT32_MAX}, false, 0, 0, L, "block_ids[1]"},
      {"null payload", good, true, 0, 0, L, "payload"},
      {"short payload", good, false, -1, 0, L, "payload_bytes"},
      {"first_layer past the end", good, false, 0, L, 1, "first_layer"},
      {"too many layers", good, false, 0, 0, L + 1, "first_layer"},
      {"empty range past the end", good, false, 0, L + 1, 0, "first_layer"},
      {"range that wraps 32 bits", good, false, 0, UINT32_MAX, 2, "first_layer"},
  };
  const Bytes noise = RandomBytes(mover.payload_bytes(), v.rng);
  const std::vector<Bytes> engine = v.e.Snapshot();
  for (const BadCall& c : calls) {
    SCOPED_TRACE(c.what);
    Bytes payload = noise;
    const uint64_t bytes = payload.size() + c.bytes_delta;
    void* p = c.null_payload ? nullptr : payload.data();
    EXPECT_TRUE(IsInvalidArgumentNaming(mover.Gather(c.ids, p, bytes, c.first_layer, c.num_layers), c.field));
    EXPECT_TRUE(SameBytes(payload, noise));
    EXPECT_TRUE(IsInvalidArgumentNaming(mover.Scatter(c.ids, p, bytes, c.first_layer, c.num_layers), c.field));
    for (size_t i = 0; i < engine.size(); ++i) EXPECT_TRUE(SameBytes(v.e.buffers[i], engine[i]));
  }
}

TEST(MoverArgs, EmptyLayerRangeCopiesNothing) {
  Valid v;
  Result<Mover> created = Mover::Create(v.shape(), v.e.layout);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const Bytes noise = RandomBytes(created->payload_bytes(), v.rng);
  const std::vector<Bytes> engine = v.e.Snapshot();
  const std::vector<int32_t> ids = {0, 5};
  for (uint32_t first : {0u, 1u, v.d.layers}) {
    Bytes payload = noise;
    EXPECT_TRUE(created->Gather(ids, payload.data(), payload.size(), first, 0).ok());
    EXPECT_TRUE(SameBytes(payload, noise));
    EXPECT_TRUE(created->Scatter(ids, payload.data(), payload.size(), first, 0).ok());
    for (size_t i = 0; i < engine.size(); ++i) EXPECT_TRUE(SameBytes(v.e.buffers[i], engine[i]));
  }
  // The ids are checked even when there is nothing to copy.
  Bytes payload = noise;
  EXPECT_TRUE(IsInvalidArgumentNaming(created->Gather(std::vector<int32_t>{0, 6}, payload.data(), payload.size(), 0, 0),
                                      "block_ids[1]"));
}

// ---- concurrency --------------------------------------------------------------------------

// One Mover, several threads: gathers read blocks while scatters write other blocks.
TEST(MoverConcurrency, DisjointGathersAndScatters) {
  std::mt19937_64 rng(31);
  Dims d;
  d.layers = 4;
  d.heads = 2;
  d.head_dim = 16;
  d.block_tokens = 4;
  d.chunk_tokens = 16;
  d.num_blocks = 64;
  Engine e = BuildEngine(Layout::kPadded, d, rng);
  Result<Mover> created = Mover::Create(d.shape(), e.layout);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const Mover& mover = created.value();

  constexpr int kThreads = 4;
  std::vector<std::vector<int32_t>> read_ids(kThreads), write_ids(kThreads);
  std::vector<Bytes> gathered(kThreads, Bytes(d.payload_bytes())), scattered(kThreads);
  for (int i = 0; i < kThreads; ++i) {
    for (int32_t b = 0; b < 4; ++b) {
      read_ids[i].push_back(4 * i + b);
      write_ids[i].push_back(32 + 4 * i + b);
    }
    scattered[i] = RandomBytes(d.payload_bytes(), rng);
  }
  std::vector<Bytes> want(kThreads, Bytes(d.payload_bytes()));
  for (int i = 0; i < kThreads; ++i) RefGather(e, read_ids[i], 0, d.layers, want[i].data());

  std::vector<Status> results(2 * kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 8; ++rep) {
        results[2 * i] = mover.Gather(read_ids[i], gathered[i].data(), gathered[i].size());
        results[2 * i + 1] = mover.Scatter(write_ids[i], scattered[i].data(), scattered[i].size());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const Status& st : results) EXPECT_TRUE(st.ok()) << st.ToString();
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_TRUE(SameBytes(gathered[i], want[i])) << "thread " << i;
    Bytes back(d.payload_bytes());
    RefGather(e, write_ids[i], 0, d.layers, back.data());
    EXPECT_TRUE(SameBytes(back, scattered[i])) << "thread " << i;
  }
}

}  // namespace
}  // namespace kvtier
