// Mover (CPU path) against the element-by-element reference of tests/kv_layouts.h,
// which takes every address straight from KvLayerMemory strides and the chunk format's
// payload order; the reference does not use kv_indexing.h (ClassifyRun is used only to
// check that the cases reach every run kind). Random shapes, dtypes, block ids and layer
// ranges over the layouts engines use, in real memory filled with random bytes; then bad
// inputs.

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

#include "tests/kv_layouts.h"

namespace kvtier {
namespace {

using namespace test;  // NOLINT: the layouts and the reference (kv_layouts.h)

testing::AssertionResult IsInvalidArgumentNaming(const Status& st, const std::string& field) {
  if (!st.IsInvalidArgument()) return testing::AssertionFailure() << "want InvalidArgument, got " << st.ToString();
  if (st.message().find(field) == std::string::npos)
    return testing::AssertionFailure() << "message does not name `" << field << "`: " << st.message();
  return testing::AssertionSuccess();
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

// K and V in separate tensors (v_base), V below or above K in the address space.
TEST(MoverRandom, SplitKvTensors) { EXPECT_TRUE(RunCases(Layout::kSplitKv, 9).count(RunKind::kHead)); }

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

// ---- V in its own region (KvLayerMemory::v_base) --------------------------------------------

struct ValidSplit {
  std::mt19937_64 rng{23};
  Dims d;
  Engine e;
  ValidSplit() {
    d.layers = 3;
    d.heads = 2;
    d.head_dim = 4;
    d.block_tokens = 4;
    d.chunk_tokens = 8;
    d.num_blocks = 6;
    e = BuildEngine(Layout::kSplitKv, d, rng);
  }
  KvShape shape() const { return d.shape(); }
};

// One K and one V buffer per layer, [heads, tokens, dim], at chosen places of one arena.
TEST(MoverSplitKv, VBelowOrAboveKCopiesTheSameBytes) {
  std::mt19937_64 rng(24);
  Dims d;
  d.layers = 2;
  d.heads = 3;
  d.head_dim = 8;
  d.block_tokens = 4;
  d.chunk_tokens = 8;
  d.num_blocks = 4;
  const uint64_t E = d.elem, plane = uint64_t{d.heads} * d.num_blocks * d.block_tokens * d.head_dim * E;
  for (bool v_below : {false, true}) {
    SCOPED_TRACE(v_below ? "V below K" : "V above K");
    Engine e;
    e.d = d;
    e.layout.block_tokens = d.block_tokens;
    e.layout.num_blocks = d.num_blocks;
    uint8_t* arena = e.AddBuffer(4 * plane * d.layers, rng);
    for (uint32_t l = 0; l < d.layers; ++l) {
      KvLayerMemory m;
      uint8_t* k = arena + (2 * l + (v_below ? 1 : 0)) * 2 * plane;
      uint8_t* v = arena + (2 * l + (v_below ? 0 : 1)) * 2 * plane;
      m.base = k;
      m.v_base = v;
      m.bytes = plane;
      m.dim_stride = E;
      m.token_stride = d.head_dim * E;
      m.block_stride = d.block_tokens * m.token_stride;
      m.head_stride = d.num_blocks * m.block_stride;
      e.layout.layers.push_back(m);
    }
    Result<Mover> created = Mover::Create(d.shape(), e.layout);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    const std::vector<int32_t> ids = {3, 1};
    Bytes got(created->payload_bytes()), want(created->payload_bytes());
    ASSERT_TRUE(created->Gather(ids, got.data(), got.size()).ok());
    RefGather(e, ids, 0, d.layers, want.data());
    EXPECT_TRUE(SameBytes(got, want));
    const Bytes payload = RandomBytes(got.size(), rng);
    ASSERT_TRUE(created->Scatter(std::vector<int32_t>{0, 2}, payload.data(), payload.size()).ok());
    ASSERT_TRUE(created->Gather(std::vector<int32_t>{0, 2}, got.data(), got.size()).ok());
    EXPECT_TRUE(SameBytes(got, payload));
  }
}

TEST(MoverSplitKv, BoundsEachRegion) {
  {
    ValidSplit v;
    ASSERT_TRUE(Mover::Create(v.shape(), v.e.layout).ok());
  }
  {
    ValidSplit v;  // bytes must cover each region; the shared-region extent is not asked for
    KvLayerMemory& m = v.e.layout.layers[1];
    const Dims& d = v.d;
    m.bytes = (d.heads - 1) * m.head_stride + (d.num_blocks - 1) * m.block_stride +
              (d.block_tokens - 1) * m.token_stride + (d.head_dim - 1) * m.dim_stride + d.elem;
    ASSERT_TRUE(Mover::Create(v.shape(), v.e.layout).ok()) << "bytes exactly the extent of one region is enough";
    m.bytes -= 1;
    const Status st = Mover::Create(v.shape(), v.e.layout).status();
    EXPECT_TRUE(IsInvalidArgumentNaming(st, "layers[1].bytes"));
    EXPECT_TRUE(IsInvalidArgumentNaming(st, "K and V regions"));
  }
  {
    ValidSplit v;  // V inside K's region
    KvLayerMemory& m = v.e.layout.layers[2];
    m.v_base = static_cast<uint8_t*>(m.base) + m.dim_stride;
    EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(v.shape(), v.e.layout).status(), "layers[2].v_base"));
  }
  {
    ValidSplit v;  // K inside V's region
    KvLayerMemory& m = v.e.layout.layers[0];
    m.base = static_cast<uint8_t*>(m.v_base) + 2 * m.dim_stride;
    EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(v.shape(), v.e.layout).status(), "layers[0].v_base"));
  }
  {
    ValidSplit v;  // the V region wraps the address space
    v.e.layout.layers[0].v_base = reinterpret_cast<void*>(UINTPTR_MAX - 16);
    EXPECT_TRUE(IsInvalidArgumentNaming(Mover::Create(v.shape(), v.e.layout).status(), "overflow"));
  }
  {
    ValidSplit v;  // kv_offset 0 is fine beside v_base
    for (KvLayerMemory& m : v.e.layout.layers) m.kv_offset = 0;
    EXPECT_TRUE(Mover::Create(v.shape(), v.e.layout).ok());
  }
}

TEST(MoverSplitKv, MlaIgnoresVBase) {
  Valid v;
  KvShape s = v.shape();
  s.mla = true;
  s.num_kv_heads = 1;
  for (KvLayerMemory& m : v.e.layout.layers) m.v_base = m.base;  // would overlap if it were read
  Result<Mover> created = Mover::Create(s, v.e.layout);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ(created->geometry().num_kv, 1u);
  for (const LayerGeometry& l : created->layers()) EXPECT_EQ(l.kv_offset, 0u);
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
