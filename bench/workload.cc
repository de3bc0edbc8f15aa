#include "bench/workload.h"

#include <algorithm>
#include <chrono>
#include <random>

#if KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier::bench {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// vLLM FlashAttention layout per layer: [2][num_blocks][block_tokens][heads][head_dim].
Result<EngineKv> MakeEngine(const KvShape& shape, uint32_t block_tokens, uint64_t total_bytes, int device) {
  EngineKv e;
  e.shape = shape;
  const uint64_t elem = DTypeSize(shape.dtype);
  const uint64_t token = uint64_t{shape.num_kv_heads} * shape.head_dim * elem;
  const uint64_t block = token * block_tokens;
  const uint64_t per_block_all_layers = block * 2 * shape.num_layers;
  const uint32_t num_blocks = static_cast<uint32_t>(std::max<uint64_t>(total_bytes / per_block_all_layers, 1));
  e.layer_bytes = 2 * block * num_blocks;
  e.layout.block_tokens = block_tokens;
  e.layout.num_blocks = num_blocks;
  e.layout.device = device;
#if !KVTIER_WITH_CUDA
  if (device >= 0) return Status::NotSupported("GPU engine memory: kvtier was built without CUDA");
#endif
  std::mt19937_64 rng(42);
  std::unique_ptr<uint8_t[]> staging;
  for (uint32_t l = 0; l < shape.num_layers; ++l) {
    if (device < 0) {
      e.layers.emplace_back(new uint8_t[e.layer_bytes], std::default_delete<uint8_t[]>());
    } else {
#if KVTIER_WITH_CUDA
      void* p = nullptr;
      cudaError_t err = cudaSetDevice(device);
      if (err == cudaSuccess) err = cudaMalloc(&p, e.layer_bytes);
      if (err != cudaSuccess)
        return Status::NotSupported(std::string("GPU engine memory: ") + cudaGetErrorString(err));
      e.layers.emplace_back(static_cast<uint8_t*>(p), [](uint8_t* q) { (void)cudaFree(q); });
      if (!staging) staging.reset(new uint8_t[e.layer_bytes]);
#endif
    }
    uint8_t* fill = device < 0 ? e.layers.back().get() : staging.get();
    uint64_t* w = reinterpret_cast<uint64_t*>(fill);
    for (uint64_t i = 0; i < e.layer_bytes / 8; ++i) w[i] = rng();
#if KVTIER_WITH_CUDA
    if (device >= 0 && cudaMemcpy(e.layers.back().get(), fill, e.layer_bytes, cudaMemcpyHostToDevice) != cudaSuccess)
      return Status::Internal("GPU engine memory: cudaMemcpy of its contents failed");
#endif
    KvLayerMemory m;
    m.base = e.layers.back().get();
    m.bytes = e.layer_bytes;
    m.block_stride = block;
    m.token_stride = token;
    m.head_stride = uint64_t{shape.head_dim} * elem;
    m.dim_stride = elem;
    m.kv_offset = block * num_blocks;
    e.layout.layers.push_back(m);
  }
  return e;
}

Result<int> ParseEngineMemory(const std::string& what) {
  if (what == "host") return -1;
  if (what != "gpu" && what != "auto")
    return Status::InvalidArgument("--engine " + what + ": expected host, gpu or auto");
#if KVTIER_WITH_CUDA
  int n = 0;
  const bool have = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  (void)cudaGetLastError();
  if (have) return 0;
  if (what == "gpu") return Status::NotSupported("--engine gpu: no CUDA device on this machine");
  return -1;
#else
  if (what == "gpu") return Status::NotSupported("--engine gpu: kvtier was built without CUDA");
  return -1;
#endif
}

Workload Workload::ForEngine(Store* store, NamespaceHandle ns, const KvShape& shape, const EngineKv& engine) {
  Workload w;
  w.store = store;
  w.ns = ns;
  w.chunk_tokens = shape.chunk_tokens;
  w.blocks_per_chunk = shape.chunk_tokens / engine.layout.block_tokens;
  w.num_blocks = engine.layout.num_blocks;
  w.chunk_bytes = ChunkPayloadBytes(shape);
  w.chunks_per_request = static_cast<uint32_t>(std::clamp<uint64_t>(
      (32ull << 20) / w.chunk_bytes, 1, std::max<uint64_t>(w.num_blocks / w.blocks_per_chunk, 1)));
  return w;
}

void Workload::Request(uint64_t id, std::vector<int32_t>* tokens, std::vector<int32_t>* blocks) const {
  const uint32_t n = chunks_per_request * chunk_tokens;
  tokens->resize(n);
  for (uint32_t j = 0; j < n; ++j) (*tokens)[j] = static_cast<int32_t>(j);
  (*tokens)[0] = static_cast<int32_t>(id);  // distinct first token: distinct chain of keys
  (*tokens)[1 % n] ^= static_cast<int32_t>(id >> 31);
  const uint32_t nb = chunks_per_request * blocks_per_chunk;
  blocks->resize(nb);
  for (uint32_t j = 0; j < nb; ++j) (*blocks)[j] = static_cast<int32_t>((id * nb + j) % num_blocks);
}

Result<double> Workload::Run(bool save, double seconds, TierId load_from, uint64_t min_requests) {
  struct InFlight {
    Ticket t;
    std::vector<int32_t> tokens, blocks;
  };
  std::vector<int32_t> tokens, blocks;
  // Whether request id is fully cached with every chunk in load_from right now.
  auto loadable = [&](uint64_t id) -> Result<bool> {
    Request(id, &tokens, &blocks);
    Result<LookupResult> r = store->Lookup(ns, tokens);
    if (!r.ok()) return r.status();
    if (r->matched_chunks != chunks_per_request) return false;
    for (TierId t : r->chunk_tiers)
      if (t != load_from) return false;
    return true;
  };
  std::deque<uint64_t> candidates;
  if (!save) {
    for (uint64_t id : saved) {
      Result<bool> ok = loadable(id);
      if (!ok.ok()) return ok.status();
      if (*ok) candidates.push_back(id);
    }
    if (candidates.empty())
      return Status::Internal(std::string("load: no saved request is held entirely in the ") + TierName(load_from) +
                              " tier; lower the capacity above it or save more");
  }
  std::deque<InFlight> q;
  uint64_t bytes = 0;
  Status err;
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  bool exhausted = false;
  uint64_t submitted = 0;
  auto more = [&] { return !exhausted && (Clock::now() < deadline || submitted < min_requests); };
  while (more() || !q.empty()) {
    if (more() && q.size() < depth) {
      uint64_t id = 0;
      if (save) {
        id = next_id++;
      } else {
        // Next candidate still held where we want to load it from.
        bool found = false;
        for (size_t tries = candidates.size(); tries > 0 && !found; --tries) {
          id = candidates.front();
          candidates.pop_front();
          Result<bool> ok = load_from == TierId::kHost ? Result<bool>(true) : loadable(id);
          if (!ok.ok()) return ok.status();
          if (*ok) {
            found = true;
            candidates.push_back(id);
          }
        }
        if (!found) {
          exhausted = true;
          continue;
        }
      }
      InFlight f;
      Request(id, &f.tokens, &f.blocks);
      Result<Ticket> t = save ? store->Save(ns, f.tokens, f.blocks) : store->Load(ns, f.tokens, f.blocks);
      if (!t.ok()) return t.status();
      f.t = std::move(*t);
      q.push_back(std::move(f));
      ++submitted;
      if (save) {
        saved.push_back(id);
        if (saved.size() > max_saved) saved.pop_front();
      }
      continue;
    }
    Status s = q.front().t.Wait();
    if (!s.ok() && err.ok()) err = s.WithContext(save ? "save: " : "load: ");
    bytes += uint64_t{q.front().t.chunks_done()} * chunk_bytes;
    q.pop_front();
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!err.ok()) return err;
  return bytes / secs / 1e9;
}

}  // namespace kvtier::bench
