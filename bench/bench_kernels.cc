// kvtier bench kernels: throughput of the Mover's CUDA kernels (kernels/mover_cuda.h)
// next to the copy engine moving the same bytes, measured in the same run.
//
// Engine memory is vLLM's NHD layout (per layer [K|V][block][token][head][dim]) with a
// Llama-3-8B shape: 32 layers, 8 KV heads, head dim 128, bf16, 16-token blocks, 256-token
// chunks (32 MiB of payload per chunk, 32 KiB per copy unit). A batch of --batches chunks
// is one launch over distinct, shuffled blocks.
//
//   gather     engine -> device payloads      limit: cudaMemcpyAsync device to device
//   scatter    device payloads -> engine      limit: cudaMemcpyAsync device to device
//   load_h2d   scatter straight from pinned host payloads (cudaHostRegister)
//                                             limit: cudaMemcpyAsync host to device
//   save_d2h   gather straight into pinned host payloads
//                                             limit: cudaMemcpyAsync device to host
//   store_load_host  Store::Load of chunks in the host tier into engine memory, a ticket
//                    waited for (its scatter reads the registered host slots)
//                                             limit: cudaMemcpyAsync host to device
//   store_load_hbm   the same with the chunks in the HBM tier (device to device)
//                                             limit: cudaMemcpyAsync device to device
//   store_save       Store::Save of new chunks from engine memory into the host tier
//                                             limit: cudaMemcpyAsync device to host
// Each kernel figure is the median of --reps rounds of --iters back-to-back launches,
// timed with CUDA events; rounds interleave the limit and the kernel. Each Store figure
// is the median of --reps rounds of --iters calls, each submitted and waited for in
// turn, timed by the wall clock (everything the call does: lookups in the index, header
// checks, table uploads, launches, waiting for the events). Before timing, a gather is
// checked byte for byte against the CPU twin (GatherUnitsCpu) and a scatter/gather round
// trip against its input.
//
// Without CUDA compiled in, or without a device, it says why and exits 2.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "kvtier/store.h"

#if KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels/mover.h"
#include "kernels/mover_cuda.h"
#include "kernels/mover_units.h"
#include "tiers/chunk_format.h"
#endif

namespace kvtier::bench {
namespace {

constexpr const char* kName = "kvtier bench kernels";

int NotSupported(const std::string& reason) {
  std::fprintf(stderr, "%s: not supported yet on this machine: %s\n", kName, reason.c_str());
  return 2;
}

struct Options {
  std::vector<uint32_t> batches;
  uint64_t iters = 10;
  uint64_t reps = 5;
  bool json = false;
};

#if KVTIER_WITH_CUDA

constexpr uint32_t kLayers = 32, kHeads = 8, kHeadDim = 128, kBlockTokens = 16, kChunkTokens = 256;

double MedianOf(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Owners of what the run allocates; released in reverse order on every path.
struct DeviceMemory {
  void* p = nullptr;
  DeviceMemory() = default;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  ~DeviceMemory() {
    if (p != nullptr) (void)cudaFree(p);
  }
  Status Allocate(size_t bytes, const char* what) { return CudaStatus(cudaMalloc(&p, bytes), what); }
  uint8_t* bytes() const { return static_cast<uint8_t*>(p); }
};

// Host memory registered with the device (pinned, mapped into its address space).
struct PinnedHost {
  void* p = nullptr;
  bool registered = false;
  PinnedHost() = default;
  PinnedHost(const PinnedHost&) = delete;
  PinnedHost& operator=(const PinnedHost&) = delete;
  ~PinnedHost() {
    if (registered) (void)cudaHostUnregister(p);
    std::free(p);
  }
  Status Allocate(size_t bytes) {
    p = std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    if (p == nullptr) return Status::NoMemory("pinned host payloads: aligned_alloc failed");
    std::memset(p, 0x5a, bytes);
    KVTIER_RETURN_IF_ERROR(CudaStatus(cudaHostRegister(p, bytes, cudaHostRegisterMapped | cudaHostRegisterPortable),
                                      "cudaHostRegister of the host payloads"));
    registered = true;
    return Status::OK();
  }
  uint8_t* bytes() const { return static_cast<uint8_t*>(p); }
};

struct Stream {
  cudaStream_t s = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  Stream() = default;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    if (stop != nullptr) (void)cudaEventDestroy(stop);
    if (start != nullptr) (void)cudaEventDestroy(start);
    if (s != nullptr) (void)cudaStreamDestroy(s);
  }
  Status Create() {
    KVTIER_RETURN_IF_ERROR(CudaStatus(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
    KVTIER_RETURN_IF_ERROR(CudaStatus(cudaEventCreate(&start), "cudaEventCreate"));
    return CudaStatus(cudaEventCreate(&stop), "cudaEventCreate");
  }
};

// GB/s of `iters` back-to-back calls of `op` (each moving `bytes`), timed on the stream.
template <typename Op>
Result<double> Time(const Stream& st, uint64_t iters, uint64_t bytes, const char* what, Op op) {
  KVTIER_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(st.start, st.s), "cudaEventRecord"));
  for (uint64_t i = 0; i < iters; ++i) KVTIER_RETURN_IF_ERROR(CudaStatus(op(), what));
  KVTIER_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(st.stop, st.s), "cudaEventRecord"));
  KVTIER_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(st.stop), what));
  float ms = 0;
  KVTIER_RETURN_IF_ERROR(CudaStatus(cudaEventElapsedTime(&ms, st.start, st.stop), "cudaEventElapsedTime"));
  if (ms <= 0) return Status::Internal(std::string(what) + ": the events measured no time");
  return static_cast<double>(bytes) * static_cast<double>(iters) / (ms * 1e-3) / 1e9;
}

double WallSeconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Tokens of chunk run `id`: distinct ids share no chunk.
std::vector<int32_t> RunTokens(uint64_t id, uint32_t chunks) {
  std::vector<int32_t> t(uint64_t{chunks} * kChunkTokens);
  for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int32_t>((id * 7919 + i * 31 + (i >> 8) * 1000003) % 120000);
  return t;
}

// The Store's GPU path on the same engine memory: see the file comment.
Status RunStore(const Options& opt, const KvShape& shape, KvMemoryLayout layout, int device, DeviceMemory& engine,
                PinnedHost& host, Stream& st) {
  layout.device = device;
  const uint32_t max_batch = *std::max_element(opt.batches.begin(), opt.batches.end());
  const uint32_t bpc = kChunkTokens / kBlockTokens;
  const uint64_t chunk_bytes = ChunkPayloadBytes(shape);
  const uint64_t slot_bytes = kChunkPayloadOffset + chunk_bytes;
  NamespaceSpec spec;
  spec.model.name = "bench/kernels";
  spec.model.revision = "llama3-8b-shape";
  spec.shape = shape;
  enum Which { kHost, kHbm, kWhich };
  for (int which = 0; which < kWhich; ++which) {
    StoreConfig sc;
    // The loads' chunks and two rounds of saves; older saves are evicted.
    sc.host_capacity_bytes = (uint64_t{max_batch} * 4 + 2) * slot_bytes;
    sc.worker_threads = 2;
    sc.gpu.device = device;
    sc.gpu.register_host = HostRegistration::kRequire;
    if (which == kHbm) sc.gpu.hbm_capacity_bytes = uint64_t{max_batch + 1} * chunk_bytes;
    Result<std::unique_ptr<Store>> store = Store::Open(sc);
    if (!store.ok()) return store.status();
    Result<NamespaceHandle> ns = (*store)->RegisterNamespace(spec, layout);
    if (!ns.ok()) return ns.status();
    for (uint32_t batch : opt.batches) {
      const uint64_t bytes = chunk_bytes * batch;
      std::vector<int32_t> src(uint64_t{batch} * bpc), dst(uint64_t{batch} * bpc);
      for (size_t i = 0; i < src.size(); ++i) {
        src[i] = static_cast<int32_t>(i);
        dst[i] = static_cast<int32_t>(uint64_t{max_batch} * bpc + i);
      }
      const std::vector<int32_t> tokens = RunTokens(batch, batch);
      Result<Ticket> saved = (*store)->Save(*ns, tokens, src);
      if (!saved.ok()) return saved.status();
      KVTIER_RETURN_IF_ERROR(saved->Wait());
      const auto load = [&]() -> Status {
        Result<Ticket> t = (*store)->Load(*ns, tokens, dst);
        if (!t.ok()) return t.status();
        KVTIER_RETURN_IF_ERROR(t->Wait());
        if (t->chunks_done() != batch) return Status::Internal("store load: not every chunk was loaded");
        return Status::OK();
      };
      KVTIER_RETURN_IF_ERROR(load());  // warm: the HBM tier now holds the chunks too
      uint64_t save_id = 1000 + uint64_t{batch} * 100000;
      const auto save = [&]() -> Status {
        Result<Ticket> t = (*store)->Save(*ns, RunTokens(save_id++, batch), src);
        if (!t.ok()) return t.status();
        KVTIER_RETURN_IF_ERROR(t->Wait());
        if (t->chunks_done() != batch) return Status::Internal("store save: not every chunk was saved");
        return Status::OK();
      };
      struct Case {
        const char* op;
        const char* limit;
        cudaMemcpyKind kind;
        bool is_save;
      };
      std::vector<Case> cases;
      if (which == kHost) {
        cases.push_back({"store_load_host", "cudaMemcpyAsync H2D (pinned)", cudaMemcpyHostToDevice, false});
        cases.push_back({"store_save", "cudaMemcpyAsync D2H (pinned)", cudaMemcpyDeviceToHost, true});
      } else {
        cases.push_back({"store_load_hbm", "cudaMemcpyAsync D2D", cudaMemcpyDeviceToDevice, false});
      }
      for (const Case& c : cases) {
        std::vector<double> k, lim;
        for (uint64_t r = 0; r < opt.reps; ++r) {
          Result<double> l = Time(st, opt.iters, bytes, c.limit, [&] {
            void* to = c.kind == cudaMemcpyDeviceToHost ? host.p : engine.p;
            const void* from = c.kind == cudaMemcpyHostToDevice ? host.p
                                                                : engine.bytes() + (c.kind == cudaMemcpyDeviceToDevice
                                                                                        ? bytes
                                                                                        : 0);
            return cudaMemcpyAsync(to, from, bytes, c.kind, st.s);
          });
          if (!l.ok()) return l.status();
          lim.push_back(*l);
          const auto t0 = std::chrono::steady_clock::now();
          for (uint64_t i = 0; i < opt.iters; ++i) KVTIER_RETURN_IF_ERROR(c.is_save ? save() : load());
          k.push_back(static_cast<double>(bytes) * static_cast<double>(opt.iters) / WallSeconds(t0) / 1e9);
        }
        const double gbps = MedianOf(k), limit_gbps = MedianOf(lim);
        Report rep(opt.json);
        rep.Add("bench", "kernels")
            .Add("op", c.op)
            .Add("chunks", uint64_t{batch})
            .Add("chunk_bytes", chunk_bytes)
            .Add("gbps", gbps, 1)
            .Add("limit_gbps", limit_gbps, 1)
            .Add("ratio", limit_gbps > 0 ? gbps / limit_gbps : 0.0)
            .Add("us_per_batch", static_cast<double>(bytes) / (gbps * 1e3), 1)
            .Add("limit", c.limit);
        rep.Print();
      }
    }
    const StoreStats ss = (*store)->Stats();
    if (which == kHbm && ss.hbm_hits == 0) return Status::Internal("store_load_hbm: the HBM tier served nothing");
    if (!opt.json)
      std::printf("%s: store (%s): gpu_loaded_chunks=%llu gpu_saved_chunks=%llu hbm_hits=%llu; %s\n", kName,
                  which == kHost ? "host tier" : "HBM tier", static_cast<unsigned long long>(ss.gpu_loaded_chunks),
                  static_cast<unsigned long long>(ss.gpu_saved_chunks), static_cast<unsigned long long>(ss.hbm_hits),
                  ss.gpu.c_str());
  }
  return Status::OK();
}

void FillRandom(uint8_t* p, size_t n, uint64_t seed) {
  uint64_t x = seed | 1;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(p + i, &x, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<uint8_t>(i * 131 + seed);
}

Status Run(const Options& opt) {
  int device = 0;
  KVTIER_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cudaGetDevice"));
  cudaDeviceProp prop{};
  KVTIER_RETURN_IF_ERROR(CudaStatus(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"));

  const uint32_t max_batch = *std::max_element(opt.batches.begin(), opt.batches.end());
  const uint32_t blocks_per_chunk = kChunkTokens / kBlockTokens;
  const uint32_t num_blocks = 2 * max_batch * blocks_per_chunk;  // ids are a shuffle, half of them used
  const uint64_t elem = 2;
  const uint64_t block_bytes = uint64_t{kBlockTokens} * kHeads * kHeadDim * elem;  // one unit
  const uint64_t layer_bytes = 2 * uint64_t{num_blocks} * block_bytes;
  const uint64_t engine_bytes = layer_bytes * kLayers;

  DeviceMemory engine;
  KVTIER_RETURN_IF_ERROR(engine.Allocate(engine_bytes, "cudaMalloc of engine memory"));
  KvShape shape;
  shape.num_layers = kLayers;
  shape.num_kv_heads = kHeads;
  shape.head_dim = kHeadDim;
  shape.dtype = DType::kBFloat16;
  shape.chunk_tokens = kChunkTokens;
  KvMemoryLayout layout;
  layout.block_tokens = kBlockTokens;
  layout.num_blocks = num_blocks;
  for (uint32_t l = 0; l < kLayers; ++l) {
    KvLayerMemory m;
    m.base = engine.bytes() + l * layer_bytes;
    m.bytes = layer_bytes;
    m.dim_stride = elem;
    m.head_stride = kHeadDim * elem;
    m.token_stride = uint64_t{kHeads} * kHeadDim * elem;
    m.block_stride = block_bytes;
    m.kv_offset = uint64_t{num_blocks} * block_bytes;
    layout.layers.push_back(m);
  }
  Result<Mover> mover = Mover::Create(shape, layout);
  if (!mover.ok()) return mover.status();
  const ChunkGeometry g = mover->geometry();
  const uint64_t chunk_bytes = mover->payload_bytes();
  const uint64_t max_batch_bytes = chunk_bytes * max_batch;

  DeviceMemory layer_table, ids, payloads, payloads_back, payload_ptrs, back_ptrs, host_ptrs;
  PinnedHost host;
  Stream st;
  KVTIER_RETURN_IF_ERROR(st.Create());
  KVTIER_RETURN_IF_ERROR(layer_table.Allocate(sizeof(LayerGeometry) * kLayers, "cudaMalloc of the layer table"));
  KVTIER_RETURN_IF_ERROR(ids.Allocate(sizeof(int32_t) * num_blocks, "cudaMalloc of block ids"));
  KVTIER_RETURN_IF_ERROR(payloads.Allocate(max_batch_bytes, "cudaMalloc of payloads"));
  KVTIER_RETURN_IF_ERROR(payloads_back.Allocate(max_batch_bytes, "cudaMalloc of payloads"));
  KVTIER_RETURN_IF_ERROR(payload_ptrs.Allocate(sizeof(void*) * max_batch, "cudaMalloc of payload pointers"));
  KVTIER_RETURN_IF_ERROR(back_ptrs.Allocate(sizeof(void*) * max_batch, "cudaMalloc of payload pointers"));
  KVTIER_RETURN_IF_ERROR(host_ptrs.Allocate(sizeof(void*) * max_batch, "cudaMalloc of payload pointers"));
  KVTIER_RETURN_IF_ERROR(host.Allocate(max_batch_bytes));
  void* host_device = nullptr;
  KVTIER_RETURN_IF_ERROR(
      CudaStatus(cudaHostGetDevicePointer(&host_device, host.p, 0), "cudaHostGetDevicePointer of host payloads"));

  // Tables: layer geometry, shuffled distinct block ids, the payload pointer arrays.
  std::vector<LayerGeometry> layers(mover->layers().begin(), mover->layers().end());
  std::vector<int32_t> block_ids(num_blocks);
  std::iota(block_ids.begin(), block_ids.end(), 0);
  std::shuffle(block_ids.begin(), block_ids.end(), std::mt19937_64(7));
  std::vector<void*> dev_ptrs(max_batch), dev_back(max_batch), host_dev_ptrs(max_batch);
  for (uint32_t c = 0; c < max_batch; ++c) {
    dev_ptrs[c] = payloads.bytes() + c * chunk_bytes;
    dev_back[c] = payloads_back.bytes() + c * chunk_bytes;
    host_dev_ptrs[c] = static_cast<uint8_t*>(host_device) + c * chunk_bytes;
  }
  const auto upload = [](void* dst, const void* src, size_t n) {
    return CudaStatus(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice), "cudaMemcpy of a table");
  };
  KVTIER_RETURN_IF_ERROR(upload(layer_table.p, layers.data(), sizeof(LayerGeometry) * kLayers));
  KVTIER_RETURN_IF_ERROR(upload(ids.p, block_ids.data(), sizeof(int32_t) * num_blocks));
  KVTIER_RETURN_IF_ERROR(upload(payload_ptrs.p, dev_ptrs.data(), sizeof(void*) * max_batch));
  KVTIER_RETURN_IF_ERROR(upload(back_ptrs.p, dev_back.data(), sizeof(void*) * max_batch));
  KVTIER_RETURN_IF_ERROR(upload(host_ptrs.p, host_dev_ptrs.data(), sizeof(void*) * max_batch));
  const GpuMoverPlan plan{g, static_cast<const LayerGeometry*>(layer_table.p)};
  const auto* id_ptr = static_cast<const int32_t*>(ids.p);
  auto* const* dev_payloads = static_cast<void* const*>(payload_ptrs.p);
  auto* const* back_payloads = static_cast<void* const*>(back_ptrs.p);
  auto* const* host_payloads = static_cast<void* const*>(host_ptrs.p);

  // Engine memory holds random bytes; a host copy feeds the CPU twin.
  std::vector<uint8_t> engine_host(engine_bytes);
  FillRandom(engine_host.data(), engine_host.size(), 11);
  KVTIER_RETURN_IF_ERROR(upload(engine.p, engine_host.data(), engine_bytes));

  // Check: a gather of the largest batch equals the CPU twin's, and a scatter of it
  // gathers back unchanged (the ids are distinct).
  {
    KVTIER_RETURN_IF_ERROR(CudaStatus(LaunchGather(plan, id_ptr, max_batch, dev_payloads, st.s), "gather"));
    std::vector<uint8_t> got(max_batch_bytes), want(max_batch_bytes);
    KVTIER_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(got.data(), payloads.p, max_batch_bytes, cudaMemcpyDeviceToHost,
                                                      st.s), "gather check"));
    KVTIER_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(st.s), "gather check"));
    std::vector<LayerGeometry> host_layers = layers;
    for (LayerGeometry& l : host_layers)
      l.base = reinterpret_cast<uintptr_t>(engine_host.data()) + (l.base - reinterpret_cast<uintptr_t>(engine.p));
    std::vector<void*> want_ptrs(max_batch);
    for (uint32_t c = 0; c < max_batch; ++c) want_ptrs[c] = want.data() + c * chunk_bytes;
    KVTIER_RETURN_IF_ERROR(GatherUnitsCpu(g, host_layers, block_ids.data(), max_batch, want_ptrs.data()));
    if (got != want) return Status::Internal("gather check: the GPU's payloads differ from the CPU twin's");

    FillRandom(want.data(), want.size(), 12);
    KVTIER_RETURN_IF_ERROR(upload(payloads.p, want.data(), max_batch_bytes));
    KVTIER_RETURN_IF_ERROR(CudaStatus(
        LaunchScatter(plan, id_ptr, max_batch, reinterpret_cast<const void* const*>(dev_payloads), st.s), "scatter"));
    KVTIER_RETURN_IF_ERROR(CudaStatus(LaunchGather(plan, id_ptr, max_batch, back_payloads, st.s), "gather"));
    KVTIER_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(got.data(), payloads_back.p, max_batch_bytes,
                                                      cudaMemcpyDeviceToHost, st.s), "round-trip check"));
    KVTIER_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(st.s), "round-trip check"));
    if (got != want) return Status::Internal("round-trip check: scatter then gather changed the payloads");
  }

  if (!opt.json)
    std::printf("%s: device=\"%s\" (sm_%d%d) shape=llama3-8b (32 layers, 8 KV heads, 128 dims, bf16, 16-token "
                "blocks, 256-token chunks: %llu MiB/chunk) iters=%llu reps=%llu\n",
                kName, prop.name, prop.major, prop.minor, static_cast<unsigned long long>(chunk_bytes >> 20),
                static_cast<unsigned long long>(opt.iters), static_cast<unsigned long long>(opt.reps));

  enum Op { kGather, kScatter, kLoadH2d, kSaveD2h, kOps };
  static constexpr const char* kOpNames[kOps] = {"gather", "scatter", "load_h2d", "save_d2h"};
  static constexpr const char* kLimitNames[kOps] = {"cudaMemcpyAsync D2D", "cudaMemcpyAsync D2D",
                                                    "cudaMemcpyAsync H2D (pinned)", "cudaMemcpyAsync D2H (pinned)"};
  for (uint32_t batch : opt.batches) {
    const uint64_t bytes = chunk_bytes * batch;
    // The limit copies the same bytes between the same kinds of memory: engine memory
    // (first `bytes` of it) and the payload buffers.
    const auto kernel = [&](int op) -> cudaError_t {
      switch (op) {
        case kGather: return LaunchGather(plan, id_ptr, batch, dev_payloads, st.s);
        case kScatter:
          return LaunchScatter(plan, id_ptr, batch, reinterpret_cast<const void* const*>(dev_payloads), st.s);
        case kLoadH2d:
          return LaunchScatter(plan, id_ptr, batch, reinterpret_cast<const void* const*>(host_payloads), st.s);
        default: return LaunchGather(plan, id_ptr, batch, host_payloads, st.s);
      }
    };
    const auto limit = [&](int op) -> cudaError_t {
      switch (op) {
        case kGather: return cudaMemcpyAsync(payloads.p, engine.p, bytes, cudaMemcpyDeviceToDevice, st.s);
        case kScatter: return cudaMemcpyAsync(engine.p, payloads.p, bytes, cudaMemcpyDeviceToDevice, st.s);
        case kLoadH2d: return cudaMemcpyAsync(engine.p, host.p, bytes, cudaMemcpyHostToDevice, st.s);
        default: return cudaMemcpyAsync(host.p, engine.p, bytes, cudaMemcpyDeviceToHost, st.s);
      }
    };
    for (int op = 0; op < kOps; ++op) {
      // Warm up both, then interleave.
      KVTIER_RETURN_IF_ERROR(CudaStatus(kernel(op), kOpNames[op]));
      KVTIER_RETURN_IF_ERROR(CudaStatus(limit(op), kLimitNames[op]));
      std::vector<double> k, lim;
      for (uint64_t r = 0; r < opt.reps; ++r) {
        Result<double> l = Time(st, opt.iters, bytes, kLimitNames[op], [&] { return limit(op); });
        if (!l.ok()) return l.status();
        Result<double> v = Time(st, opt.iters, bytes, kOpNames[op], [&] { return kernel(op); });
        if (!v.ok()) return v.status();
        lim.push_back(*l);
        k.push_back(*v);
      }
      const double gbps = MedianOf(k), limit_gbps = MedianOf(lim);
      Report rep(opt.json);
      rep.Add("bench", "kernels")
          .Add("op", kOpNames[op])
          .Add("chunks", uint64_t{batch})
          .Add("chunk_bytes", chunk_bytes)
          .Add("gbps", gbps, 1)
          .Add("limit_gbps", limit_gbps, 1)
          .Add("ratio", limit_gbps > 0 ? gbps / limit_gbps : 0.0)
          .Add("us_per_batch", static_cast<double>(bytes) / (gbps * 1e3), 1)
          .Add("limit", kLimitNames[op]);
      rep.Print();
    }
  }
  return RunStore(opt, shape, layout, device, engine, host, st);
}

#endif  // KVTIER_WITH_CUDA

}  // namespace

int RunBenchKernels(const std::vector<std::string>& argv) {
  Result<Args> a = Args::Parse(argv, {"batches", "iters", "reps"}, {"json"});
  if (!a.ok()) {
    std::fprintf(stderr, "%s: %s\n", kName, a.status().message().c_str());
    return 2;
  }
  Options opt;
  auto batches = a->GetDoubleList("batches", {1, 4, 16});
  auto iters = a->GetUint("iters", 10);
  auto reps = a->GetUint("reps", 5);
  for (const Status* s : {&batches.status(), &iters.status(), &reps.status()}) {
    if (!s->ok()) {
      std::fprintf(stderr, "%s: %s\n", kName, s->message().c_str());
      return 2;
    }
  }
  for (double b : *batches) {
    if (b < 1 || b > 64 || b != static_cast<double>(static_cast<uint32_t>(b))) {
      std::fprintf(stderr, "%s: --batches takes whole numbers of chunks from 1 to 64 (32 MiB each)\n", kName);
      return 2;
    }
    opt.batches.push_back(static_cast<uint32_t>(b));
  }
  if (*iters == 0 || *reps == 0) {
    std::fprintf(stderr, "%s: --iters and --reps must be at least 1\n", kName);
    return 2;
  }
  opt.iters = *iters;
  opt.reps = *reps;
  opt.json = a->Has("json");

#if KVTIER_WITH_CUDA
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return NotSupported(std::string("no CUDA device: ") + cudaGetErrorString(err));
  if (count == 0) return NotSupported("no CUDA device: cudaGetDeviceCount found none");
  const Status st = Run(opt);
  if (!st.ok()) {
    std::fprintf(stderr, "%s: %s\n", kName, st.ToString().c_str());
    return 1;
  }
  return 0;
#else
  (void)opt;
  return NotSupported(
      "kvtier was built without CUDA (no nvcc at configure time, or -DKVTIER_WITH_CUDA=OFF); rebuild with the "
      "CUDA toolkit installed");
#endif
}

}  // namespace kvtier::bench
