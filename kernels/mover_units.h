// Copy units: how a batch of chunks is cut into independent pieces of work. The CUDA
// kernels (mover_cuda.cu: one thread block per unit, one thread per piece) and their
// CPU twin (GatherUnitsCpu/ScatterUnitsCpu: a loop over the same units and pieces) take
// every offset from the functions below, which are built only from kv_indexing.h; so
// the CPU tests check the arithmetic the GPU runs.
//
//   unit   (chunk in the batch, layer, kv, block of the chunk): one engine block of one
//          layer's K, V or latent. Its bytes are UnitBytes() long and dense in the
//          payload; on the engine side they are runs.
//   run    the largest contiguous byte range both sides share (ClassifyRun, RunBytes):
//          a whole block, a token, a head or an element.
//   piece  `width` bytes of a run, width a power of two <= 16 that divides the run
//          length, both unit origins and every engine stride between runs (PieceWidth):
//          one thread's one load and store; 16 is a 128-bit access.
//
// Unit index order: block of the chunk fastest, then kv, layer, chunk; consecutive units
// fill a chunk's payload front to back, in the order Mover::Gather walks it.
//
// A unit's bytes must fit 32 bits (UnitFits32), so that pieces, runs and their
// coordinates are 32-bit on the GPU; an engine block of 4 GiB per layer is not a thing.
// A block id outside [0, num_blocks) makes its units copy nothing: the kernels have no
// way to report it without a device allocation, so callers check ids on the host first
// (as Mover::Gather does), and the skip keeps a bad id from touching memory.
#ifndef KVTIER_KERNELS_MOVER_UNITS_H_
#define KVTIER_KERNELS_MOVER_UNITS_H_

#include <cstdint>

#include "kernels/kv_indexing.h"

#if !defined(__CUDACC__)
#include <span>

#include "kvtier/status.h"
#endif

namespace kvtier {

// Widest access a piece makes.
inline constexpr uint32_t kMaxPieceWidth = 16;

struct UnitCoords {
  uint32_t chunk;  // in the batch
  uint32_t layer;
  uint32_t kv;
  uint32_t block;  // index in the chunk (its id is block_ids[chunk * BlocksPerChunk + block])
};

// Byte offsets of a unit's first element: engine from the layer's base, payload from the
// start of the chunk's payload.
struct UnitOrigin {
  uint64_t engine;
  uint64_t payload;
};

// Byte offsets of a piece from its unit's origins. The payload side is inside the unit
// (32 bits); the engine side may reach across the layer (a token-major layout).
struct PieceOffsets {
  uint64_t engine;
  uint32_t payload;
};

KVTIER_HD uint64_t NumUnits(const ChunkGeometry& g, uint32_t num_chunks) {
  return static_cast<uint64_t>(num_chunks) * g.num_layers * g.num_kv * BlocksPerChunk(g);
}

KVTIER_HD uint64_t UnitBytes(const ChunkGeometry& g) { return RunBytes(RunKind::kBlock, g); }

KVTIER_HD bool UnitFits32(const ChunkGeometry& g) { return UnitBytes(g) <= 0xffffffffull; }

KVTIER_HD UnitCoords UnitAt(const ChunkGeometry& g, uint64_t unit) {
  UnitCoords u;
  const uint32_t blocks = BlocksPerChunk(g);
  u.block = static_cast<uint32_t>(unit % blocks);
  unit /= blocks;
  u.kv = static_cast<uint32_t>(unit % g.num_kv);
  unit /= g.num_kv;
  u.layer = static_cast<uint32_t>(unit % g.num_layers);
  u.chunk = static_cast<uint32_t>(unit / g.num_layers);
  return u;
}

KVTIER_HD bool BlockIdValid(const ChunkGeometry& g, int32_t id) {
  return id >= 0 && static_cast<uint32_t>(id) < g.num_blocks;
}

// `block_id` is the engine block of unit `u` (checked with BlockIdValid).
KVTIER_HD UnitOrigin UnitOrigins(const LayerGeometry& l, const ChunkGeometry& g, const UnitCoords& u,
                                 int32_t block_id) {
  UnitOrigin o;
  o.engine = EngineOffset(l, u.kv, static_cast<uint64_t>(block_id), 0, 0, 0);
  o.payload = PayloadOffset(g, u.layer, u.kv, u.block * g.block_tokens, 0, 0);
  return o;
}

// Engine offset of run `run` of a unit from the unit's origin; on the payload side the
// run starts at run * RunBytes(kind, g). Runs go token, head, dim, in payload order.
KVTIER_HD uint64_t RunEngineOffset(const LayerGeometry& l, const ChunkGeometry& g, RunKind kind, uint32_t run) {
  switch (kind) {
    case RunKind::kBlock: return 0;
    case RunKind::kToken: return EngineOffset(l, 0, 0, run, 0, 0);
    case RunKind::kHead: return EngineOffset(l, 0, 0, run / g.num_heads, run % g.num_heads, 0);
    case RunKind::kElement:
    default: {
      const uint32_t dim = run % g.head_dim;
      const uint32_t head_run = run / g.head_dim;
      return EngineOffset(l, 0, 0, head_run / g.num_heads, head_run % g.num_heads, dim);
    }
  }
}

// The widest piece (power of two <= kMaxPieceWidth) that divides the run length, the
// unit's engine and payload addresses, and every stride between the unit's runs on the
// engine side (payload runs are back to back, a multiple of the run length apart).
// Strides over a dimension of one element are never taken, so they do not count.
KVTIER_HD uint32_t PieceWidth(const LayerGeometry& l, const ChunkGeometry& g, RunKind kind, uint64_t engine_address,
                              uint64_t payload_address) {
  uint64_t bits = RunBytes(kind, g) | engine_address | payload_address | kMaxPieceWidth;
  if (kind != RunKind::kBlock && g.block_tokens > 1) bits |= l.token_stride;
  if ((kind == RunKind::kHead || kind == RunKind::kElement) && g.num_heads > 1) bits |= l.head_stride;
  if (kind == RunKind::kElement && g.head_dim > 1) bits |= l.dim_stride;
  return static_cast<uint32_t>(bits & (~bits + 1));  // lowest set bit
}

// Where piece `piece` of a unit lies, for pieces of `width` bytes (PieceWidth) of runs of
// `run_bytes` (RunBytes). A unit has UnitBytes(g) / width pieces.
KVTIER_HD PieceOffsets PieceAt(const LayerGeometry& l, const ChunkGeometry& g, RunKind kind, uint32_t run_bytes,
                               uint32_t width, uint32_t piece) {
  const uint32_t byte = piece * width;
  if (kind == RunKind::kBlock) return PieceOffsets{byte, byte};
  const uint32_t run = byte / run_bytes;
  const uint32_t within = byte - run * run_bytes;
  return PieceOffsets{RunEngineOffset(l, g, kind, run) + within, byte};
}

#if !defined(__CUDACC__)
// The CPU twin of LaunchGather/LaunchScatter (kernels/mover_cuda.h): the same units and
// pieces, one after another, with memcpy. `layers` is Mover::layers() (g.num_layers
// entries); `block_ids` holds num_chunks * BlocksPerChunk(g) ids, chunk after chunk;
// payloads[i] is chunk i's whole payload (PayloadBytes(g)). InvalidArgument, copying
// nothing, on a wrong layer count, a null pointer, or a unit over 4 GiB. Ids outside
// [0, num_blocks) are skipped (see above). Scatter goes in unit order, so when a block
// id repeats in the batch its last unit wins; the GPU gives no such order.
// Thread-safety: as Mover::Gather/Scatter.
Status GatherUnitsCpu(const ChunkGeometry& g, std::span<const LayerGeometry> layers, const int32_t* block_ids,
                      uint32_t num_chunks, void* const* payloads);
Status ScatterUnitsCpu(const ChunkGeometry& g, std::span<const LayerGeometry> layers, const int32_t* block_ids,
                       uint32_t num_chunks, const void* const* payloads);
#endif

}  // namespace kvtier

#endif  // KVTIER_KERNELS_MOVER_UNITS_H_
