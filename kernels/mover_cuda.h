// The Mover's CUDA path: gather and scatter of a batch of chunks between the engine's
// paged KV memory (on the GPU) and chunk payloads (device memory, or host memory the
// device can address), all layers of all chunks in one kernel launch.
//
// Work: one thread block per copy unit (chunk, layer, K/V, block of the chunk), one
// thread per piece, 16-byte accesses where the run length, both origins and the engine
// strides allow, narrower ones otherwise; kernels/mover_units.h has the decomposition,
// shared with the CPU twin (GatherUnitsCpu/ScatterUnitsCpu) that the tests compare
// against.
//
// The launchers allocate nothing and never synchronize: they check the plan on the host,
// enqueue one kernel on `stream` and return. Errors are cudaError_t; CudaStatus (built
// in mover_cuda.cc, host only) turns one into a kvtier::Status at the edge.
//
// Ownership and lifetime: everything a launch names (the plan's layer table, the block
// ids, the payload pointer array, the payloads, the engine memory) is the caller's and
// must stay valid, and unchanged by the host, until the launch completes on `stream`.
// Preconditions the launchers cannot check (device memory): block ids were checked on
// the host (an id outside [0, num_blocks) copies nothing), payloads are PayloadBytes(geom)
// long and do not overlap each other or engine memory, and a scatter names each engine
// block at most once in the batch: units run in parallel, so a repeated id leaves that
// block with some mix of its sources (the CPU twin's "last wins" does not hold).
// Thread-safety: the launchers are stateless; any host thread may call them.
#ifndef KVTIER_KERNELS_MOVER_CUDA_H_
#define KVTIER_KERNELS_MOVER_CUDA_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/kv_indexing.h"

#if !defined(__CUDACC__)
#include <string_view>

#include "kvtier/status.h"
#endif

namespace kvtier {

// What a launch needs to know of a namespace's engine memory. Plain data, passed to the
// kernel by value. Build it from a Mover: geom = mover.geometry(), and layers = a device
// copy of mover.layers() (the caller allocates it once per registration).
struct GpuMoverPlan {
  ChunkGeometry geom;
  const LayerGeometry* layers;  // device memory, geom.num_layers entries
};

// Threads per block of the mover kernels.
inline constexpr uint32_t kGpuMoverThreads = 256;

// Copies every layer of `num_chunks` chunks from engine memory into their payloads.
// block_ids: device memory, num_chunks * BlocksPerChunk(geom) ids, chunk after chunk.
// payloads: device memory, num_chunks pointers, payloads[i] chunk i's whole payload.
// Returns cudaErrorInvalidValue, launching nothing, when the plan is unusable (no layer
// table, an empty or inconsistent geometry, a unit over 4 GiB) or a pointer is null;
// otherwise what cudaGetLastError() says after the launch (which includes an earlier
// unreported error of this host thread). num_chunks == 0 launches nothing.
cudaError_t LaunchGather(const GpuMoverPlan& plan, const int32_t* block_ids, uint32_t num_chunks,
                         void* const* payloads, cudaStream_t stream);

// The reverse of LaunchGather, same arguments and errors: payloads into engine memory.
cudaError_t LaunchScatter(const GpuMoverPlan& plan, const int32_t* block_ids, uint32_t num_chunks,
                          const void* const* payloads, cudaStream_t stream);

#if !defined(__CUDACC__)
// The edge: OK for cudaSuccess, otherwise a Status whose message is
// "<what>: <cudaGetErrorName> (<cudaGetErrorString>)" and a fix where one is known.
// InvalidArgument for bad values or pointers, NoMemory, NotSupported (no device, old
// driver, no kernel image for this GPU), Busy for cudaErrorNotReady, Internal otherwise
// (a fault in a kernel: the context is lost).
Status CudaStatus(cudaError_t err, std::string_view what);
#endif

}  // namespace kvtier

#endif  // KVTIER_KERNELS_MOVER_CUDA_H_
