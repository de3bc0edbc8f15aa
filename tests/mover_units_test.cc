// The copy-unit decomposition the CUDA kernels run (kernels/mover_units.h), through its
// CPU twin GatherUnitsCpu/ScatterUnitsCpu: batches of 1..8 chunks over random shapes,
// dtypes, layouts and block ids, with payload buffers at every misalignment (so every
// piece width occurs), against the Mover (Gather/Scatter per chunk) and the
// element-by-element reference of tests/kv_layouts.h: identical bytes, inside and
// around each payload and in all of engine memory. Then the unit order, piece widths,
// ids out of range, and bad arguments.

#include "kernels/mover_units.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "kernels/mover.h"
#include "tests/kv_layouts.h"

namespace kvtier {
namespace {

using namespace test;  // NOLINT: the layouts and the reference (kv_layouts.h)

// One payload buffer per chunk, each `lead` bytes (0..15) into its own allocation and
// followed by a tail; all of it noise until something writes the payload.
struct Payloads {
  uint64_t chunk_bytes = 0;
  std::vector<Bytes> buffers;
  std::vector<size_t> leads;
  std::vector<void*> ptrs;

  Payloads(uint32_t chunks, uint64_t bytes, std::mt19937_64& rng) : chunk_bytes(bytes) {
    for (uint32_t c = 0; c < chunks; ++c) {
      leads.push_back(Uniform(rng, 0, 15));
      buffers.push_back(RandomBytes(leads.back() + bytes + Uniform(rng, 0, 8), rng));
    }
    Repoint();
  }
  Payloads(const Payloads& o) : chunk_bytes(o.chunk_bytes), buffers(o.buffers), leads(o.leads) { Repoint(); }
  Payloads& operator=(const Payloads&) = delete;

  void Repoint() {
    ptrs.clear();
    for (size_t c = 0; c < buffers.size(); ++c) ptrs.push_back(buffers[c].data() + leads[c]);
  }
  uint8_t* chunk(size_t c) { return static_cast<uint8_t*>(ptrs[c]); }
  const void* const* const_ptrs() const { return ptrs.data(); }
};

testing::AssertionResult SamePayloads(const Payloads& got, const Payloads& want) {
  for (size_t c = 0; c < got.buffers.size(); ++c) {
    testing::AssertionResult r = SameBytes(got.buffers[c], want.buffers[c]);
    if (!r) return r << " (payload buffer of chunk " << c << ", lead " << got.leads[c] << ")";
  }
  return testing::AssertionSuccess();
}

testing::AssertionResult SameEngine(const std::vector<Bytes>& got, const std::vector<Bytes>& want) {
  for (size_t i = 0; i < got.size(); ++i) {
    testing::AssertionResult r = SameBytes(got[i], want[i]);
    if (!r) return r << " (engine buffer " << i << ")";
  }
  return testing::AssertionSuccess();
}

std::vector<int32_t> Flatten(const std::vector<std::vector<int32_t>>& ids) {
  std::vector<int32_t> flat;
  for (const auto& chunk : ids) flat.insert(flat.end(), chunk.begin(), chunk.end());
  return flat;
}

// The piece widths the twin uses for this batch (recomputed as it does), for coverage;
// and what the GPU needs of them: every piece of every unit aligned to its width on both
// sides (the CPU twin's memcpy would not notice a misaligned one).
void CheckWidths(const Mover& mover, const std::vector<int32_t>& flat, Payloads& p, std::set<uint32_t>* widths) {
  const ChunkGeometry& g = mover.geometry();
  const uint64_t units = NumUnits(g, static_cast<uint32_t>(p.buffers.size()));
  for (uint64_t unit = 0; unit < units; ++unit) {
    const UnitCoords u = UnitAt(g, unit);
    const int32_t id = flat[u.chunk * BlocksPerChunk(g) + u.block];
    const LayerGeometry& l = mover.layers()[u.layer];
    const UnitOrigin o = UnitOrigins(l, g, u, id);
    const RunKind kind = ClassifyRun(l, g);
    const uint32_t width =
        PieceWidth(l, g, kind, l.base + o.engine, reinterpret_cast<uintptr_t>(p.chunk(u.chunk)) + o.payload);
    if (kind == RunKind::kElement) {
      EXPECT_LE(width, g.elem_bytes) << "a piece wider than an element run";
    }
    widths->insert(width);
    if (!BlockIdValid(g, id)) continue;
    const uint32_t run_bytes = static_cast<uint32_t>(RunBytes(kind, g));
    const uint64_t engine = l.base + o.engine;
    const uint64_t payload = reinterpret_cast<uintptr_t>(p.chunk(u.chunk)) + o.payload;
    for (uint32_t piece = 0; piece < UnitBytes(g) / width; ++piece) {
      const PieceOffsets at = PieceAt(l, g, kind, run_bytes, width, piece);
      if ((engine + at.engine) % width != 0 || (payload + at.payload) % width != 0) {
        ADD_FAILURE() << "unit " << unit << " piece " << piece << " of width " << width << " is misaligned";
        return;
      }
    }
  }
}

void RunBatchCase(Layout kind, std::mt19937_64& rng, std::set<uint32_t>* widths) {
  const Dims d = RandomDims(rng, kind == Layout::kMla);
  Engine e = BuildEngine(kind, d, rng);
  const uint32_t chunks = Uniform(rng, 1, 8);
  std::vector<std::vector<int32_t>> ids;
  std::string trace;
  for (uint32_t c = 0; c < chunks; ++c) {
    ids.push_back(RandomIds(d, rng));
    trace += " [" + IdsToString(ids.back()) + "]";
  }
  const std::vector<int32_t> flat = Flatten(ids);
  SCOPED_TRACE(std::string(LayoutName(kind)) + " " + d.ToString() + " chunks=" + std::to_string(chunks) + " ids" +
               trace);

  Result<Mover> created = Mover::Create(d.shape(), e.layout);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const Mover& mover = created.value();
  const ChunkGeometry& g = mover.geometry();

  // Gather: the twin, the Mover chunk by chunk, and the reference fill equal noise alike.
  Payloads twin(chunks, d.payload_bytes(), rng);
  Payloads by_mover = twin, by_ref = twin;
  ASSERT_TRUE(GatherUnitsCpu(g, mover.layers(), flat.data(), chunks, twin.ptrs.data()).ok());
  for (uint32_t c = 0; c < chunks; ++c) {
    ASSERT_TRUE(mover.Gather(ids[c], by_mover.chunk(c), d.payload_bytes()).ok());
    RefGather(e, ids[c], 0, d.layers, by_ref.chunk(c));
  }
  EXPECT_TRUE(SamePayloads(twin, by_mover)) << "gather: twin vs Mover";
  EXPECT_TRUE(SamePayloads(twin, by_ref)) << "gather: twin vs reference";
  CheckWidths(mover, flat, twin, widths);

  // Scatter: chunk after chunk, so that a repeated id ends with the last chunk's bytes
  // in all three.
  const Payloads src(chunks, d.payload_bytes(), rng);
  const std::vector<Bytes> before = e.Snapshot();
  ASSERT_TRUE(ScatterUnitsCpu(g, mover.layers(), flat.data(), chunks, src.const_ptrs()).ok());
  const std::vector<Bytes> scattered = e.Snapshot();
  e.Restore(before);
  for (uint32_t c = 0; c < chunks; ++c)
    ASSERT_TRUE(mover.Scatter(ids[c], src.ptrs[c], d.payload_bytes()).ok());
  EXPECT_TRUE(SameEngine(scattered, e.Snapshot())) << "scatter: twin vs Mover";
  e.Restore(before);
  for (uint32_t c = 0; c < chunks; ++c)
    RefScatter(e, ids[c], 0, d.layers, static_cast<const uint8_t*>(src.ptrs[c]));
  EXPECT_TRUE(SameEngine(scattered, e.Snapshot())) << "scatter: twin vs reference";
}

constexpr int kCasesPerLayout = 40;

std::set<uint32_t> RunCases(Layout kind, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::set<uint32_t> widths;
  for (int i = 0; i < kCasesPerLayout && !testing::Test::HasFatalFailure(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i) + " of seed " + std::to_string(seed));
    RunBatchCase(kind, rng, &widths);
  }
  return widths;
}

const std::set<uint32_t> kAllWidths = {1, 2, 4, 8, 16};

TEST(MoverUnitsRandom, VllmFlashAttentionNhd) { EXPECT_EQ(RunCases(Layout::kVllmNhd, 101), kAllWidths); }

TEST(MoverUnitsRandom, FlashInfer) { EXPECT_EQ(RunCases(Layout::kFlashInfer, 102), kAllWidths); }

TEST(MoverUnitsRandom, Hnd) { EXPECT_TRUE(RunCases(Layout::kHnd, 103).count(16)); }

TEST(MoverUnitsRandom, BlocksFirstAcrossLayers) { EXPECT_TRUE(RunCases(Layout::kBlocksFirst, 104).count(16)); }

TEST(MoverUnitsRandom, MlaLatent) { EXPECT_TRUE(RunCases(Layout::kMla, 105).count(16)); }

TEST(MoverUnitsRandom, PaddedStrides) { EXPECT_TRUE(RunCases(Layout::kPadded, 106).count(1)); }

TEST(MoverUnitsRandom, TransposedDims) {
  const std::set<uint32_t> widths = RunCases(Layout::kTransposed, 107);
  EXPECT_TRUE(widths.count(1) && widths.count(2) && widths.count(4));
}

TEST(MoverUnitsRandom, PermutedAxes) { EXPECT_GE(RunCases(Layout::kPermuted, 108).size(), 3u); }

TEST(MoverUnitsRandom, SplitKvTensors) { EXPECT_TRUE(RunCases(Layout::kSplitKv, 109).count(16)); }

// ---- the decomposition ----------------------------------------------------------------------

ChunkGeometry Geometry(uint32_t layers, uint32_t heads, uint32_t head_dim, uint32_t elem, uint32_t block_tokens,
                       uint32_t chunk_tokens, uint32_t num_kv, uint32_t num_blocks) {
  ChunkGeometry g{};
  g.num_layers = layers;
  g.num_heads = heads;
  g.head_dim = head_dim;
  g.elem_bytes = elem;
  g.block_tokens = block_tokens;
  g.chunk_tokens = chunk_tokens;
  g.num_kv = num_kv;
  g.num_blocks = num_blocks;
  return g;
}

// NHD strides ([kv][block][token][head][dim], dense) for geometry g.
LayerGeometry Nhd(const ChunkGeometry& g, uint64_t base) {
  LayerGeometry l{};
  l.base = base;
  l.dim_stride = g.elem_bytes;
  l.head_stride = uint64_t{g.head_dim} * g.elem_bytes;
  l.token_stride = l.head_stride * g.num_heads;
  l.block_stride = l.token_stride * g.block_tokens;
  l.kv_offset = l.block_stride * g.num_blocks;
  l.bytes = l.kv_offset * g.num_kv;
  return l;
}

TEST(MoverUnits, UnitsWalkEachPayloadFrontToBack) {
  const ChunkGeometry g = Geometry(3, 2, 8, 2, 4, 12, 2, 10);
  const uint32_t chunks = 4;
  const uint64_t per_chunk = NumUnits(g, 1);
  ASSERT_EQ(per_chunk, 3u * 2 * 3);
  ASSERT_EQ(NumUnits(g, chunks), chunks * per_chunk);
  ASSERT_EQ(UnitBytes(g) * per_chunk, PayloadBytes(g));
  const LayerGeometry l = Nhd(g, 0);
  for (uint64_t unit = 0; unit < NumUnits(g, chunks); ++unit) {
    const UnitCoords u = UnitAt(g, unit);
    EXPECT_EQ(u.chunk, unit / per_chunk);
    EXPECT_EQ(UnitOrigins(l, g, u, 0).payload, (unit % per_chunk) * UnitBytes(g)) << "unit " << unit;
    EXPECT_EQ(UnitOrigins(l, g, u, 7).engine, u.kv * l.kv_offset + 7 * l.block_stride) << "unit " << unit;
  }
}

TEST(MoverUnits, PieceWidthIsTheWidestCommonAlignment) {
  const ChunkGeometry llama = Geometry(32, 8, 128, 2, 16, 256, 2, 64);
  const LayerGeometry nhd = Nhd(llama, 1 << 20);
  ASSERT_EQ(ClassifyRun(nhd, llama), RunKind::kBlock);
  EXPECT_EQ(PieceWidth(nhd, llama, RunKind::kBlock, nhd.base, 4096), 16u);
  EXPECT_EQ(PieceWidth(nhd, llama, RunKind::kBlock, nhd.base + 8, 4096), 8u);
  EXPECT_EQ(PieceWidth(nhd, llama, RunKind::kBlock, nhd.base, 4096 + 2), 2u);
  EXPECT_EQ(PieceWidth(nhd, llama, RunKind::kBlock, nhd.base + 1, 4096), 1u);

  // HND: head runs of 3 bf16 elements are 6 bytes long.
  const ChunkGeometry odd = Geometry(1, 4, 3, 2, 8, 16, 2, 4);
  LayerGeometry hnd{};
  hnd.dim_stride = 2;
  hnd.token_stride = 3 * 2;
  hnd.head_stride = 8 * 3 * 2;
  hnd.kv_offset = 4 * hnd.head_stride;
  hnd.block_stride = 2 * hnd.kv_offset;
  ASSERT_EQ(ClassifyRun(hnd, odd), RunKind::kHead);
  EXPECT_EQ(PieceWidth(hnd, odd, RunKind::kHead, 0, 0), 2u);

  // A token stride with 4 bytes of padding caps token runs of 2 KiB at 4.
  LayerGeometry padded = nhd;
  padded.token_stride += 4;
  padded.block_stride = padded.token_stride * llama.block_tokens;
  ASSERT_EQ(ClassifyRun(padded, llama), RunKind::kToken);
  EXPECT_EQ(PieceWidth(padded, llama, RunKind::kToken, 0, 0), 4u);

  // Element runs: float32 transposed to [token][dim][head].
  const ChunkGeometry f32 = Geometry(1, 4, 16, 4, 4, 8, 2, 4);
  LayerGeometry transposed{};
  transposed.head_stride = 4;
  transposed.dim_stride = 4 * 4;
  transposed.token_stride = 16 * 4 * 4;
  transposed.block_stride = 4 * transposed.token_stride;
  transposed.kv_offset = 4 * transposed.block_stride;
  ASSERT_EQ(ClassifyRun(transposed, f32), RunKind::kElement);
  EXPECT_EQ(PieceWidth(transposed, f32, RunKind::kElement, 0, 0), 4u);

  // A stride over a dimension of one element is never taken: it does not count.
  const ChunkGeometry one_head = Geometry(1, 1, 16, 4, 4, 8, 1, 4);
  LayerGeometry latent = transposed;
  latent.head_stride = 3;
  ASSERT_EQ(ClassifyRun(latent, one_head), RunKind::kElement);
  EXPECT_EQ(PieceWidth(latent, one_head, RunKind::kElement, 0, 0), 4u);
}

TEST(MoverUnits, PiecesOfARunAreContiguousOnBothSides) {
  const ChunkGeometry g = Geometry(1, 4, 16, 2, 4, 8, 2, 4);
  LayerGeometry hnd{};  // [block][kv][head][token][dim]: head runs of 32 bytes
  hnd.dim_stride = 2;
  hnd.token_stride = 16 * 2;
  hnd.head_stride = 4 * 16 * 2;
  hnd.kv_offset = 4 * hnd.head_stride;
  hnd.block_stride = 2 * hnd.kv_offset;
  ASSERT_EQ(ClassifyRun(hnd, g), RunKind::kHead);
  const uint32_t run = static_cast<uint32_t>(RunBytes(RunKind::kHead, g));
  ASSERT_EQ(run, 32u);
  // Piece 5 of width 8: run 1 (token 0, head 1), 8 bytes in.
  const PieceOffsets p = PieceAt(hnd, g, RunKind::kHead, run, 8, 5);
  EXPECT_EQ(p.payload, 40u);
  EXPECT_EQ(p.engine, hnd.head_stride + 8);
  // Piece 9 of width 8: run 2 (token 0, head 2), 8 bytes in.
  EXPECT_EQ(PieceAt(hnd, g, RunKind::kHead, run, 8, 9).engine, 2 * hnd.head_stride + 8);
  // Piece 16 of width 8: run 4 = token 1, head 0.
  EXPECT_EQ(PieceAt(hnd, g, RunKind::kHead, run, 8, 16).engine, hnd.token_stride);
}

// ---- ids out of range and bad arguments ----------------------------------------------------

struct SmallNhd {
  std::mt19937_64 rng{41};
  Dims d;
  Engine e;
  std::optional<Mover> mover;
  SmallNhd() {
    d.layers = 3;
    d.heads = 2;
    d.head_dim = 8;
    d.block_tokens = 4;
    d.chunk_tokens = 12;
    d.num_blocks = 8;
    e = BuildEngine(Layout::kVllmNhd, d, rng);
    Result<Mover> m = Mover::Create(d.shape(), e.layout);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    if (m.ok()) mover.emplace(std::move(m).value());
  }
};

TEST(MoverUnits, IdsOutOfRangeCopyNothing) {
  SmallNhd s;
  ASSERT_TRUE(s.mover.has_value());
  const ChunkGeometry& g = s.mover->geometry();
  const int32_t n = static_cast<int32_t>(s.d.num_blocks);
  const std::vector<std::vector<int32_t>> ids = {{1, 2, 3}, {-1, 5, n}};
  const std::vector<int32_t> flat = Flatten(ids);
  const uint64_t block_bytes = uint64_t{s.d.block_tokens} * s.d.heads * s.d.head_dim * s.d.elem;

  // Gather: the bad blocks' parts of the payload keep their noise.
  Payloads got(2, s.d.payload_bytes(), s.rng);
  Payloads want = got;
  ASSERT_TRUE(GatherUnitsCpu(g, s.mover->layers(), flat.data(), 2, got.ptrs.data()).ok());
  RefGather(s.e, ids[0], 0, s.d.layers, want.chunk(0));
  const Bytes noise(want.chunk(1), want.chunk(1) + s.d.payload_bytes());
  RefGather(s.e, {0, 5, 0}, 0, s.d.layers, want.chunk(1));
  for (uint32_t layer = 0; layer < s.d.layers; ++layer)
    for (uint32_t kv = 0; kv < 2; ++kv)
      for (uint32_t bi : {0u, 2u}) {
        const uint64_t at = RefPayloadIndex(s.d, layer, kv, bi * s.d.block_tokens, 0, 0);
        std::memcpy(want.chunk(1) + at, noise.data() + at, block_bytes);
      }
  EXPECT_TRUE(SamePayloads(got, want));

  // Scatter: only blocks 1, 2, 3 and 5 change, and they gather back to their sources.
  const Payloads src(2, s.d.payload_bytes(), s.rng);
  const std::vector<Bytes> before = s.e.Snapshot();
  ASSERT_TRUE(ScatterUnitsCpu(g, s.mover->layers(), flat.data(), 2, src.const_ptrs()).ok());
  std::vector<Bytes> undone = s.e.Snapshot();
  ForEachElement(s.e, {1, 2, 3, 5}, 0, s.d.layers, [&](const uint8_t* a, uint64_t) {
    const auto [buf, off] = s.e.Locate(a);
    std::memcpy(undone[buf].data() + off, before[buf].data() + off, s.d.elem);
  });
  EXPECT_TRUE(SameEngine(undone, before)) << "bytes outside blocks 1, 2, 3, 5 changed";
  Bytes back(s.d.payload_bytes());
  ASSERT_TRUE(s.mover->Gather(std::vector<int32_t>{0, 5, 0}, back.data(), back.size()).ok());
  for (uint32_t layer = 0; layer < s.d.layers; ++layer)
    for (uint32_t kv = 0; kv < 2; ++kv) {
      const uint64_t at = RefPayloadIndex(s.d, layer, kv, s.d.block_tokens, 0, 0);
      EXPECT_EQ(0, std::memcmp(back.data() + at, static_cast<const uint8_t*>(src.ptrs[1]) + at, block_bytes))
          << "layer " << layer << " kv " << kv;
    }
}

TEST(MoverUnits, RejectsBadArgumentsAndCopiesNothing) {
  SmallNhd s;
  ASSERT_TRUE(s.mover.has_value());
  const ChunkGeometry& g = s.mover->geometry();
  const std::span<const LayerGeometry> layers = s.mover->layers();
  const std::vector<int32_t> ids = {0, 1, 2, 3, 4, 5};
  Payloads p(2, s.d.payload_bytes(), s.rng);
  const Payloads noise = p;
  const std::vector<Bytes> engine = s.e.Snapshot();
  auto expect_rejected = [&](const Status& st, const char* what) {
    EXPECT_TRUE(st.IsInvalidArgument()) << what << ": " << st.ToString();
    EXPECT_TRUE(SamePayloads(p, noise)) << what;
    EXPECT_TRUE(SameEngine(s.e.Snapshot(), engine)) << what;
  };
  for (int gather = 0; gather < 2; ++gather) {
    auto call = [&](std::span<const LayerGeometry> l, const int32_t* i, uint32_t n, void* const* ptrs) {
      return gather ? GatherUnitsCpu(g, l, i, n, ptrs) : ScatterUnitsCpu(g, l, i, n, ptrs);
    };
    expect_rejected(call(layers.first(2), ids.data(), 2, p.ptrs.data()), "too few layers");
    expect_rejected(call(layers, nullptr, 2, p.ptrs.data()), "null ids");
    expect_rejected(call(layers, ids.data(), 2, nullptr), "null payloads");
    std::vector<void*> one_null = p.ptrs;
    one_null[1] = nullptr;
    expect_rejected(call(layers, ids.data(), 2, one_null.data()), "payloads[1] null");
    EXPECT_TRUE(call(layers, nullptr, 0, nullptr).ok()) << "an empty batch is fine";
  }

  // A unit over 4 GiB: refused before anything is touched (no memory behind it).
  const ChunkGeometry huge = Geometry(1, 256, 256, 2, 1 << 16, 1 << 16, 2, 1);
  ASSERT_FALSE(UnitFits32(huge));
  const LayerGeometry l = Nhd(huge, 4096);
  const int32_t id = 0;
  void* nowhere = reinterpret_cast<void*>(uintptr_t{8192});
  const Status st = GatherUnitsCpu(huge, std::span<const LayerGeometry>(&l, 1), &id, 1, &nowhere);
  EXPECT_TRUE(st.IsInvalidArgument()) << st.ToString();
  EXPECT_NE(st.message().find("4 GiB"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace kvtier
