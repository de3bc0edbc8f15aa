// The Mover's CUDA kernels (see mover_cuda.h). One kernel per direction; a thread block
// takes copy units from a grid-stride loop, reads the unit's layer geometry and block id,
// picks the widest piece the unit's alignment allows and moves the unit's pieces, kUnroll
// per thread at a time with all loads issued before the stores. Every offset comes from
// mover_units.h, which the CPU twin runs too.

#include <cuda_runtime.h>

#include <type_traits>

#include "kernels/mover_cuda.h"
#include "kernels/mover_units.h"

namespace kvtier {
namespace {

// Loads in flight per thread.
constexpr uint32_t kUnroll = 4;
// Grid cap; the grid-stride loop covers the rest.
constexpr uint64_t kMaxGrid = uint64_t{1} << 20;

template <uint32_t kWidth>
struct Piece;  // the register type of a kWidth-byte access
template <>
struct Piece<16> {
  using Type = uint4;
};
template <>
struct Piece<8> {
  using Type = uint2;
};
template <>
struct Piece<4> {
  using Type = uint32_t;
};
template <>
struct Piece<2> {
  using Type = uint16_t;
};
template <>
struct Piece<1> {
  using Type = uint8_t;
};

template <bool kGather>
using PayloadPtr = std::conditional_t<kGather, uint8_t*, const uint8_t*>;

// The pieces of one unit. kWholeBlock: the unit is one run (RunKind::kBlock, the vLLM
// NHD case), so a piece's offsets are the same on both sides and need no division.
template <bool kGather, uint32_t kWidth, bool kWholeBlock>
__device__ __forceinline__ void MovePieces(const LayerGeometry& l, const ChunkGeometry& g, RunKind run_kind,
                                           uint8_t* engine, PayloadPtr<kGather> payload) {
  using V = typename Piece<kWidth>::Type;
  const RunKind kind = kWholeBlock ? RunKind::kBlock : run_kind;
  const uint32_t run_bytes = static_cast<uint32_t>(RunBytes(kind, g));
  const uint64_t pieces = UnitBytes(g) / kWidth;
  const uint64_t step = blockDim.x;
  for (uint64_t first = threadIdx.x; first < pieces; first += kUnroll * step) {
    V v[kUnroll];
    PieceOffsets o[kUnroll];
#pragma unroll
    for (uint32_t k = 0; k < kUnroll; ++k) {
      const uint64_t p = first + k * step;
      if (p < pieces) {
        o[k] = PieceAt(l, g, kind, run_bytes, kWidth, static_cast<uint32_t>(p));
        v[k] = kGather ? *reinterpret_cast<const V*>(engine + o[k].engine)
                       : *reinterpret_cast<const V*>(payload + o[k].payload);
      }
    }
#pragma unroll
    for (uint32_t k = 0; k < kUnroll; ++k) {
      if (first + k * step < pieces) {
        if constexpr (kGather) {
          *reinterpret_cast<V*>(payload + o[k].payload) = v[k];
        } else {
          *reinterpret_cast<V*>(engine + o[k].engine) = v[k];
        }
      }
    }
  }
}

template <bool kGather, bool kWholeBlock>
__device__ __forceinline__ void MoveUnit(const LayerGeometry& l, const ChunkGeometry& g, RunKind kind, uint32_t width,
                                         uint8_t* engine, PayloadPtr<kGather> payload) {
  switch (width) {
    case 16: return MovePieces<kGather, 16, kWholeBlock>(l, g, kind, engine, payload);
    case 8: return MovePieces<kGather, 8, kWholeBlock>(l, g, kind, engine, payload);
    case 4: return MovePieces<kGather, 4, kWholeBlock>(l, g, kind, engine, payload);
    case 2: return MovePieces<kGather, 2, kWholeBlock>(l, g, kind, engine, payload);
    default: return MovePieces<kGather, 1, kWholeBlock>(l, g, kind, engine, payload);
  }
}

// VoidPtr: void* for gather, const void* for scatter. Every branch below depends only on
// the unit, so a thread block never diverges across them.
template <bool kGather, typename VoidPtr>
__global__ void __launch_bounds__(kGpuMoverThreads)
    MoveUnitsKernel(const ChunkGeometry g, const LayerGeometry* __restrict__ layers,
                    const int32_t* __restrict__ block_ids, const VoidPtr* __restrict__ payloads, uint64_t num_units) {
  const uint32_t blocks = BlocksPerChunk(g);
  for (uint64_t unit = blockIdx.x; unit < num_units; unit += gridDim.x) {
    const UnitCoords u = UnitAt(g, unit);
    const int32_t id = block_ids[static_cast<uint64_t>(u.chunk) * blocks + u.block];
    if (!BlockIdValid(g, id)) continue;
    const LayerGeometry l = layers[u.layer];
    const RunKind kind = ClassifyRun(l, g);
    const UnitOrigin o = UnitOrigins(l, g, u, id);
    uint8_t* const engine = reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(l.base + o.engine));
    const PayloadPtr<kGather> payload = static_cast<PayloadPtr<kGather>>(payloads[u.chunk]) + o.payload;
    const uint32_t width =
        PieceWidth(l, g, kind, reinterpret_cast<uintptr_t>(engine), reinterpret_cast<uintptr_t>(payload));
    if (kind == RunKind::kBlock) {
      MoveUnit<kGather, true>(l, g, kind, width, engine, payload);
    } else {
      MoveUnit<kGather, false>(l, g, kind, width, engine, payload);
    }
  }
}

// The host-side checks: a geometry the unit arithmetic can divide by, and pointers.
bool PlanUsable(const GpuMoverPlan& plan) {
  const ChunkGeometry& g = plan.geom;
  return plan.layers != nullptr && g.num_layers != 0 && g.num_heads != 0 && g.head_dim != 0 && g.elem_bytes != 0 &&
         g.block_tokens != 0 && g.chunk_tokens != 0 && g.chunk_tokens % g.block_tokens == 0 &&
         (g.num_kv == 1 || g.num_kv == 2) && g.num_blocks != 0 && UnitFits32(g);
}

template <bool kGather, typename VoidPtr>
cudaError_t Launch(const GpuMoverPlan& plan, const int32_t* block_ids, uint32_t num_chunks, const VoidPtr* payloads,
                   cudaStream_t stream) {
  if (!PlanUsable(plan)) return cudaErrorInvalidValue;
  if (num_chunks == 0) return cudaSuccess;
  if (block_ids == nullptr || payloads == nullptr) return cudaErrorInvalidValue;
  const uint64_t units = NumUnits(plan.geom, num_chunks);
  const unsigned grid = static_cast<unsigned>(units < kMaxGrid ? units : kMaxGrid);
  MoveUnitsKernel<kGather, VoidPtr>
      <<<grid, kGpuMoverThreads, 0, stream>>>(plan.geom, plan.layers, block_ids, payloads, units);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchGather(const GpuMoverPlan& plan, const int32_t* block_ids, uint32_t num_chunks,
                         void* const* payloads, cudaStream_t stream) {
  return Launch<true>(plan, block_ids, num_chunks, payloads, stream);
}

cudaError_t LaunchScatter(const GpuMoverPlan& plan, const int32_t* block_ids, uint32_t num_chunks,
                          const void* const* payloads, cudaStream_t stream) {
  return Launch<false>(plan, block_ids, num_chunks, payloads, stream);
}

}  // namespace kvtier
