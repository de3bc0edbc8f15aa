// The CPU twin of the CUDA gather/scatter kernels: the units and pieces of
// mover_units.h, walked in index order, each piece one memcpy of its width. It exists
// so that machines without a GPU test the decomposition the kernels run; Mover is the
// CPU path for real use (it copies whole runs).

#include <cstring>
#include <string>
#include <type_traits>

#include "kernels/mover_units.h"

namespace kvtier {
namespace {

template <bool kGather>
using PayloadPtr = std::conditional_t<kGather, uint8_t*, const uint8_t*>;

inline uint8_t* Address(uint64_t address) { return reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(address)); }

// The pieces of one unit, kWidth bytes each; a constant size makes each memcpy one load
// and one store, as on the GPU.
template <bool kGather, uint32_t kWidth>
void MovePieces(const LayerGeometry& l, const ChunkGeometry& g, RunKind kind, uint8_t* engine,
                PayloadPtr<kGather> payload) {
  const uint32_t run_bytes = static_cast<uint32_t>(RunBytes(kind, g));
  const uint32_t pieces = static_cast<uint32_t>(UnitBytes(g) / kWidth);
  for (uint32_t p = 0; p < pieces; ++p) {
    const PieceOffsets o = PieceAt(l, g, kind, run_bytes, kWidth, p);
    if constexpr (kGather) {
      std::memcpy(payload + o.payload, engine + o.engine, kWidth);
    } else {
      std::memcpy(engine + o.engine, payload + o.payload, kWidth);
    }
  }
}

// VoidPtr is void* (gather) or const void* (scatter).
template <bool kGather, typename VoidPtr>
Status MoveUnits(const ChunkGeometry& g, std::span<const LayerGeometry> layers, const int32_t* block_ids,
                 uint32_t num_chunks, const VoidPtr* payloads) {
  const char* const op = kGather ? "gather units" : "scatter units";
  if (layers.size() != g.num_layers)
    return Status::InvalidArgument(std::string(op) + ": layers has " + std::to_string(layers.size()) +
                                   " entries but the geometry has " + std::to_string(g.num_layers) +
                                   " layers; pass Mover::layers()");
  if (num_chunks == 0) return Status::OK();
  if (block_ids == nullptr || payloads == nullptr)
    return Status::InvalidArgument(std::string(op) + ": block_ids or payloads is null; pass " +
                                   std::to_string(num_chunks) + " chunks' ids and payload pointers");
  for (uint32_t c = 0; c < num_chunks; ++c) {
    if (payloads[c] == nullptr)
      return Status::InvalidArgument(std::string(op) + ": payloads[" + std::to_string(c) +
                                     "] is null; pass every chunk's payload buffer");
  }
  if (!UnitFits32(g))
    return Status::InvalidArgument(std::string(op) + ": one engine block of one layer is " +
                                   std::to_string(UnitBytes(g)) + " bytes, over the 4 GiB a copy unit may hold; " +
                                   "use smaller engine blocks");

  const uint32_t blocks = BlocksPerChunk(g);
  const uint64_t units = NumUnits(g, num_chunks);
  for (uint64_t unit = 0; unit < units; ++unit) {
    const UnitCoords u = UnitAt(g, unit);
    const int32_t id = block_ids[static_cast<uint64_t>(u.chunk) * blocks + u.block];
    if (!BlockIdValid(g, id)) continue;
    const LayerGeometry& l = layers[u.layer];
    const RunKind kind = ClassifyRun(l, g);
    const UnitOrigin o = UnitOrigins(l, g, u, id);
    uint8_t* const engine = Address(l.base + o.engine);
    const PayloadPtr<kGather> payload = static_cast<PayloadPtr<kGather>>(payloads[u.chunk]) + o.payload;
    const uint32_t width = PieceWidth(l, g, kind, reinterpret_cast<uintptr_t>(engine),
                                      reinterpret_cast<uintptr_t>(payload));
    switch (width) {
      case 16: MovePieces<kGather, 16>(l, g, kind, engine, payload); break;
      case 8: MovePieces<kGather, 8>(l, g, kind, engine, payload); break;
      case 4: MovePieces<kGather, 4>(l, g, kind, engine, payload); break;
      case 2: MovePieces<kGather, 2>(l, g, kind, engine, payload); break;
      default: MovePieces<kGather, 1>(l, g, kind, engine, payload); break;
    }
  }
  return Status::OK();
}

}  // namespace

Status GatherUnitsCpu(const ChunkGeometry& g, std::span<const LayerGeometry> layers, const int32_t* block_ids,
                      uint32_t num_chunks, void* const* payloads) {
  return MoveUnits<true>(g, layers, block_ids, num_chunks, payloads);
}

Status ScatterUnitsCpu(const ChunkGeometry& g, std::span<const LayerGeometry> layers, const int32_t* block_ids,
                       uint32_t num_chunks, const void* const* payloads) {
  return MoveUnits<false>(g, layers, block_ids, num_chunks, payloads);
}

}  // namespace kvtier
