// Mover: copies KV between the engine's paged memory and chunk payloads.
//
// The engine describes its memory once (KvMemoryLayout: per layer a base and byte
// strides); Create() validates it against the namespace's KvShape. Gather copies the
// blocks of one chunk, for a range of layers, from engine memory into a payload;
// Scatter copies back. Each copy moves the largest contiguous runs the layout allows
// (kv_indexing.h ClassifyRun), so a vLLM NHD layout copies a whole block per memcpy.
//
// This is the CPU path; the CUDA kernels (kernels/*.cu) share kv_indexing.h.
// Thread-safety: a Mover is immutable after Create; Gather/Scatter may run
// concurrently on disjoint destinations.
#ifndef KVTIER_KERNELS_MOVER_H_
#define KVTIER_KERNELS_MOVER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/kv_indexing.h"
#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

class Mover {
 public:
  // InvalidArgument, naming the field, when: layers.size() != shape.num_layers; a base is
  // null; block_tokens is 0 or does not divide shape.chunk_tokens; num_blocks is 0; a
  // stride is 0 where its dimension has more than one element; a layer's extent
  // (EngineExtent; EnginePlaneExtent from each of base and v_base when V has its own
  // region) exceeds its `bytes`; a V region overlaps its K region; the dtype is unknown.
  static Result<Mover> Create(const KvShape& shape, const KvMemoryLayout& layout);

  const ChunkGeometry& geometry() const { return geom_; }
  uint32_t blocks_per_chunk() const { return BlocksPerChunk(geom_); }
  uint64_t payload_bytes() const { return PayloadBytes(geom_); }
  uint64_t layer_bytes() const { return PayloadLayerBytes(geom_); }
  // Per layer, validated; what a GpuMoverPlan copies to device memory (kernels/mover_cuda.h).
  std::span<const LayerGeometry> layers() const { return layers_; }

  // Copies layers [first_layer, first_layer + num_layers) of the chunk made of `block_ids`
  // (exactly blocks_per_chunk() ids, each < num_blocks) into `payload`, which points at
  // the start of the whole chunk's payload (payload_bytes() long; `payload_bytes` is its
  // real size). InvalidArgument on a wrong count, an id out of range, a layer range out
  // of range, a null or short payload; nothing is copied then.
  Status Gather(std::span<const int32_t> block_ids, void* payload, uint64_t payload_bytes,
                uint32_t first_layer, uint32_t num_layers) const;
  Status Gather(std::span<const int32_t> block_ids, void* payload, uint64_t payload_bytes) const {
    return Gather(block_ids, payload, payload_bytes, 0, geom_.num_layers);
  }

  // The reverse of Gather, same checks.
  Status Scatter(std::span<const int32_t> block_ids, const void* payload, uint64_t payload_bytes,
                 uint32_t first_layer, uint32_t num_layers) const;
  Status Scatter(std::span<const int32_t> block_ids, const void* payload, uint64_t payload_bytes) const {
    return Scatter(block_ids, payload, payload_bytes, 0, geom_.num_layers);
  }

 private:
  Mover() = default;
  Status CheckArgs(std::span<const int32_t> block_ids, const void* payload, uint64_t payload_bytes,
                   uint32_t first_layer, uint32_t num_layers) const;

  ChunkGeometry geom_{};
  std::vector<LayerGeometry> layers_;
  std::vector<RunKind> runs_;  // per layer
};

}  // namespace kvtier

#endif  // KVTIER_KERNELS_MOVER_H_
