// What `kvtier bench tiers` drives through the Store: an engine's KV memory in vLLM's
// NHD layout with real bytes, and a stream of save and load requests over it.
#ifndef KVTIER_BENCH_WORKLOAD_H_
#define KVTIER_BENCH_WORKLOAD_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "kvtier/store.h"

namespace kvtier::bench {

double Median(std::vector<double> v);

struct EngineKv {
  KvShape shape;
  KvMemoryLayout layout;
  std::vector<std::shared_ptr<uint8_t>> layers;  // host memory, or device memory (freed with cudaFree)
  uint64_t layer_bytes = 0;
};

// vLLM FlashAttention layout per layer: [2][num_blocks][block_tokens][heads][head_dim],
// about total_bytes over all layers, filled with random bytes. device >= 0: in that CUDA
// device's memory (layout.device set), as an engine on a GPU holds it; NotSupported
// without CUDA or the device.
Result<EngineKv> MakeEngine(const KvShape& shape, uint32_t block_tokens, uint64_t total_bytes, int device = -1);

// MakeEngine in host memory (which only fails by throwing bad_alloc).
inline EngineKv MakeHostEngine(const KvShape& shape, uint32_t block_tokens, uint64_t total_bytes) {
  Result<EngineKv> e = MakeEngine(shape, block_tokens, total_bytes, -1);
  return std::move(*e);
}

// "host" -> -1, "gpu" -> 0, "auto" -> 0 when a CUDA device is present, else -1.
Result<int> ParseEngineMemory(const std::string& what);

// Requests of chunks_per_request chunks; request `id` has its own tokens (so its own
// chain of keys) and blocks.
struct Workload {
  Store* store = nullptr;
  NamespaceHandle ns;
  uint32_t chunk_tokens = 0;
  uint32_t blocks_per_chunk = 0;
  uint32_t num_blocks = 0;
  uint32_t chunks_per_request = 0;
  uint64_t chunk_bytes = 0;
  uint32_t depth = 1;
  uint64_t next_id = 1;
  std::deque<uint64_t> saved;  // ids of saved requests, oldest first
  uint64_t max_saved = 0;

  // A workload over `engine` registered as `ns`: requests of about 32 MiB, as many
  // chunks as the engine's blocks allow.
  static Workload ForEngine(Store* store, NamespaceHandle ns, const KvShape& shape, const EngineKv& engine);

  void Request(uint64_t id, std::vector<int32_t>* tokens, std::vector<int32_t>* blocks) const;
  // Keeps `depth` requests in flight for `seconds` (and until at least `min_requests` were
  // submitted) and returns GB/s of chunks moved. Saves store new requests. Loads read
  // requests that are fully cached with every chunk in `load_from` when they are submitted
  // (a request promoted to a faster tier by an earlier load is skipped, so NVMe loads stay
  // cold).
  Result<double> Run(bool save, double seconds, TierId load_from = TierId::kHost, uint64_t min_requests = 0);
};

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_WORKLOAD_H_
