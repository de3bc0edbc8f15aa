// kvtier bench tiers: save and load throughput of a tier through the real Store,
// next to the machine limit for the same bytes measured in the same run.
//
// host tier: the engine's KV lives in vLLM's NHD layout (per layer [K|V][block][token]
// [head][dim]) with a Llama-3-8B shape (32 layers, 8 KV heads, head dim 128, bf16:
// 128 KiB per token); the chunk size sets chunk_tokens. A save gathers the chunk's
// blocks into a host slot, a load scatters it back: one copy each, by one worker
// thread. The limit is a single-thread memcpy of the same chunk size over buffers of
// the same sizes, so the ratio says how close a save or load comes to one memory copy.
// Repetitions interleave limit, save and load; medians are printed.
//
// --via-daemon: the same saves and loads also go through kvtierd's path — a DaemonServer
// started in this process on a Unix socket in a temporary directory, and a client
// (Store::Connect) that maps the host region's memfd and copies into and out of it itself,
// with every lease a request over the socket. Embedded and daemon runs alternate in each
// repetition over one Store (two namespaces, so neither finds the other's chunks), and
// the daemon path is reported as a ratio to the embedded one. The server being in this
// process changes nothing on the data path: the client's mapping and copies are those
// of another process.
//
// --engine gpu: the engine's KV is in GPU memory, so saves and loads go through the GPU
// path (copy kernels between the device blocks and the registered host slots); the
// limits are then cudaMemcpy of the same chunk size between pinned host memory and the
// device (device to host for saves, host to device for loads).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <stdlib.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/workload.h"
#include "daemon/server.h"
#include "kvtier/store.h"

#if KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace kvtier::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kMiB = 1ull << 20;

// Single-thread memcpy of chunk_bytes at a time from a buffer the size of the engine's
// KV into one the size of the host tier, cycling, for `seconds`.
double MemcpyLimit(const uint8_t* src, uint64_t src_bytes, uint8_t* dst, uint64_t dst_bytes, uint64_t chunk_bytes,
                   double seconds) {
  const uint64_t src_slots = std::max<uint64_t>(src_bytes / chunk_bytes, 1);
  const uint64_t dst_slots = std::max<uint64_t>(dst_bytes / chunk_bytes, 1);
  uint64_t i = 0, bytes = 0;
  const auto t0 = Clock::now();
  double secs = 0;
  do {
    std::memcpy(dst + (i % dst_slots) * chunk_bytes, src + (i * 7 % src_slots) * chunk_bytes, chunk_bytes);
    bytes += chunk_bytes;
    ++i;
    secs = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (secs < seconds);
  return bytes / secs / 1e9;
}

#if KVTIER_WITH_CUDA
// cudaMemcpy of chunk_bytes at a time between pinned host memory (host_bytes, at most
// 1 GiB) and device memory (device_bytes), cycling, for `seconds`. 0 on a CUDA error.
double GpuCopyLimit(bool to_device, uint64_t host_bytes, uint64_t device_bytes, uint64_t chunk_bytes,
                    double seconds) {
  host_bytes = std::max(std::min<uint64_t>(host_bytes, 1ull << 30), chunk_bytes);
  device_bytes = std::max(device_bytes, chunk_bytes);
  void* h = nullptr;
  void* d = nullptr;
  double gbps = 0;
  if (cudaMallocHost(&h, host_bytes) == cudaSuccess && cudaMalloc(&d, device_bytes) == cudaSuccess) {
    std::memset(h, 3, host_bytes);
    const uint64_t hs = host_bytes / chunk_bytes, ds = device_bytes / chunk_bytes;
    uint64_t i = 0, bytes = 0;
    const auto t0 = Clock::now();
    double secs = 0;
    bool ok = true;
    do {
      uint8_t* hp = static_cast<uint8_t*>(h) + (i % hs) * chunk_bytes;
      uint8_t* dp = static_cast<uint8_t*>(d) + (i * 7 % ds) * chunk_bytes;
      ok = (to_device ? cudaMemcpy(dp, hp, chunk_bytes, cudaMemcpyHostToDevice)
                      : cudaMemcpy(hp, dp, chunk_bytes, cudaMemcpyDeviceToHost)) == cudaSuccess;
      bytes += chunk_bytes;
      ++i;
      secs = std::chrono::duration<double>(Clock::now() - t0).count();
    } while (ok && secs < seconds);
    if (ok) gbps = bytes / secs / 1e9;
  }
  if (d != nullptr) (void)cudaFree(d);
  if (h != nullptr) (void)cudaFreeHost(h);
  return gbps;
}
#endif

}  // namespace

int RunBenchTiers(const std::vector<std::string>& argv) {
  // Each tier has its own options: dispatch on --tier before parsing the rest.
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string t = argv[i] == "--tier" && i + 1 < argv.size() ? argv[i + 1]
                          : argv[i].rfind("--tier=", 0) == 0       ? argv[i].substr(7)
                                                                   : "";
    if (t == "nvme") return RunBenchTiersNvme(argv);
    if (t == "redis") return RunBenchTiersRedis(argv);
  }
  Result<Args> a = Args::Parse(argv,
                               {"tier", "sizes", "seconds", "reps", "host-capacity-mib", "engine-mib", "workers",
                                "depth", "engine"},
                               {"json", "via-daemon"});
  if (!a.ok()) {
    std::fprintf(stderr, "kvtier bench tiers: %s\n", a.status().message().c_str());
    return 2;
  }
  const std::string tier = a->Get("tier", "host");
  if (tier != "host") {
    std::fprintf(stderr,
                 "kvtier bench tiers: not supported yet: tier '%s' is not built in this version (available: host, "
                 "nvme, redis)\n",
                 tier.c_str());
    return 2;
  }
  auto sizes = a->GetDoubleList("sizes", {2, 8, 32});
  auto seconds = a->GetDouble("seconds", 0.4);
  auto reps = a->GetUint("reps", 5);
  auto host_mib = a->GetUint("host-capacity-mib", 1024);
  auto engine_mib = a->GetUint("engine-mib", 256);
  auto workers = a->GetUint("workers", 1);
  auto depth = a->GetUint("depth", 2);
  for (const Status* s : {&sizes.status(), &seconds.status(), &reps.status(), &host_mib.status(),
                          &engine_mib.status(), &workers.status(), &depth.status()}) {
    if (!s->ok()) {
      std::fprintf(stderr, "kvtier bench tiers: %s\n", s->message().c_str());
      return 2;
    }
  }
  if (*reps == 0 || *depth == 0 || *workers == 0) {
    std::fprintf(stderr, "kvtier bench tiers: --reps, --depth and --workers must be at least 1\n");
    return 2;
  }
  const bool json = a->Has("json");
  const bool via_daemon = a->Has("via-daemon");

  KvShape shape;  // Llama-3-8B: 32 layers x 8 KV heads x 128 dims, bf16 = 128 KiB per token
  shape.num_layers = 32;
  shape.num_kv_heads = 8;
  shape.head_dim = 128;
  shape.dtype = DType::kBFloat16;
  const uint64_t token_bytes = ChunkPayloadBytes([&] {
    KvShape s = shape;
    s.chunk_tokens = 1;
    return s;
  }());

  // --engine gpu: the engine's KV in GPU memory, loads and saves through the GPU path.
  Result<int> engine_device = ParseEngineMemory(a->Get("engine", "host"));
  if (!engine_device.ok()) {
    std::fprintf(stderr, "kvtier bench tiers: %s\n", engine_device.status().message().c_str());
    return 2;
  }
  if (via_daemon && *engine_device >= 0) {
    std::fprintf(stderr, "kvtier bench tiers: not supported yet: --via-daemon with --engine gpu (the daemon client "
                 "copies host memory only)\n");
    return 2;
  }
  StoreConfig cfg;
  cfg.host_capacity_bytes = *host_mib * kMiB;
  cfg.worker_threads = static_cast<uint32_t>(*workers);
  cfg.shared_host_region = via_daemon;  // the embedded runs then use the very region the daemon's clients map
  Result<std::unique_ptr<Store>> store = Store::Open(cfg);
  if (!store.ok()) {
    std::fprintf(stderr, "kvtier bench tiers: %s\n", store.status().ToString().c_str());
    return 1;
  }
  // --via-daemon: a server on a socket in a fresh directory, and a client Store.
  std::unique_ptr<DaemonServer> server;
  std::unique_ptr<Store> remote;
  std::string socket_dir;
  if (via_daemon) {
    char dir_template[] = "/tmp/kvtier-bench-XXXXXX";
    if (::mkdtemp(dir_template) == nullptr) {
      std::fprintf(stderr, "kvtier bench tiers: mkdtemp: %s\n", std::strerror(errno));
      return 1;
    }
    socket_dir = dir_template;
    std::map<std::string, DaemonTenant> tenants;
    tenants["bench"] = DaemonTenant{"bench-token", {"*"}, store->get()};
    server = std::make_unique<DaemonServer>(std::move(tenants));
    Status st = server->Start(socket_dir + "/kvtierd.sock");
    Result<std::unique_ptr<Store>> c = st.ok() ? Store::Connect(DaemonClientConfig{
                                                     .address = "unix:" + socket_dir + "/kvtierd.sock",
                                                     .tenant = "bench",
                                                     .token = "bench-token",
                                                     .connections = static_cast<uint32_t>(*depth) * 2 + 1,
                                                     .worker_threads = static_cast<uint32_t>(*workers)})
                                               : Result<std::unique_ptr<Store>>(st);
    if (!c.ok()) {
      std::fprintf(stderr, "kvtier bench tiers: daemon path: %s\n", c.status().ToString().c_str());
      server.reset();
      ::rmdir(socket_dir.c_str());
      return 1;
    }
    remote = std::move(*c);
  }
  struct Cleanup {
    std::unique_ptr<Store>* remote;
    std::unique_ptr<DaemonServer>* server;
    std::string dir;
    ~Cleanup() {
      if (*remote) (void)(*remote)->Close();
      remote->reset();
      if (*server) (*server)->Stop();
      if (!dir.empty()) ::rmdir(dir.c_str());
    }
  } cleanup{&remote, &server, socket_dir};
  const std::string huge = (*store)->Stats().huge_pages;
  // The limit's buffers have the sizes of the engine's KV and of the host tier, so that
  // both sides of the limit's copies come from DRAM, as the Store's do.
  std::vector<uint8_t> dst(cfg.host_capacity_bytes), src(*engine_mib * kMiB);
  std::memset(dst.data(), 1, dst.size());
  std::memset(src.data(), 2, src.size());
  if (!json)
    std::printf("kvtier bench tiers: tier=host shape=llama3-8b (128 KiB/token, NHD layout) host=%llu MiB "
                "engine=%llu MiB%s workers=%llu depth=%llu huge_pages=%s reps=%llu%s\n",
                static_cast<unsigned long long>(*host_mib), static_cast<unsigned long long>(*engine_mib),
                *engine_device >= 0 ? " (GPU memory)" : "",
                static_cast<unsigned long long>(*workers), static_cast<unsigned long long>(*depth), huge.c_str(),
                static_cast<unsigned long long>(*reps), via_daemon ? " via-daemon (unix socket, shared memfd)" : "");

  int rc = 0;
  for (double mib : *sizes) {
    const uint32_t chunk_tokens =
        static_cast<uint32_t>(std::llround(mib * static_cast<double>(kMiB) / static_cast<double>(token_bytes)));
    if (chunk_tokens == 0) {
      std::fprintf(stderr, "kvtier bench tiers: --sizes %.3f MiB is smaller than one token (%llu bytes)\n", mib,
                   static_cast<unsigned long long>(token_bytes));
      return 2;
    }
    NamespaceSpec spec;
    spec.model.name = "bench/llama3-8b-shape";
    spec.model.revision = "bench";
    spec.shape = shape;
    spec.shape.chunk_tokens = chunk_tokens;
    const uint32_t block_tokens = chunk_tokens % 16 == 0 ? 16 : chunk_tokens;
    Result<EngineKv> made = MakeEngine(spec.shape, block_tokens, *engine_mib * kMiB, *engine_device);
    if (!made.ok()) {
      std::fprintf(stderr, "kvtier bench tiers: %s\n", made.status().ToString().c_str());
      return 2;
    }
    EngineKv engine = std::move(*made);
    Result<NamespaceHandle> ns = (*store)->RegisterNamespace(spec, engine.layout);
    if (!ns.ok()) {
      std::fprintf(stderr, "kvtier bench tiers: %s\n", ns.status().ToString().c_str());
      return 1;
    }
    Workload w = Workload::ForEngine(store->get(), *ns, spec.shape, engine);
    w.depth = static_cast<uint32_t>(*depth);
    // The daemon path's workload: the same requests over its own copy of the engine's KV,
    // in a namespace of its own (another model name), registered through the client.
    std::optional<EngineKv> remote_engine;
    std::optional<Workload> rw;
    NamespaceHandle remote_ns;
    if (remote) {
      remote_engine = MakeHostEngine(spec.shape, block_tokens, *engine_mib * kMiB);
      NamespaceSpec rspec = spec;
      rspec.model.name += "/via-daemon";
      Result<NamespaceHandle> rn = remote->RegisterNamespace(rspec, remote_engine->layout);
      if (!rn.ok()) {
        std::fprintf(stderr, "kvtier bench tiers: daemon path: %s\n", rn.status().ToString().c_str());
        return 1;
      }
      remote_ns = *rn;
      rw = Workload::ForEngine(remote.get(), remote_ns, rspec.shape, *remote_engine);
      rw->depth = w.depth;
    }
    const uint64_t slot_bytes = w.chunk_bytes + 8192;
    const uint64_t request_slots = w.chunks_per_request;
    const uint64_t capacity_chunks = cfg.host_capacity_bytes / slot_bytes;
    if (capacity_chunks < 2 * request_slots * (w.depth + 1)) {
      std::fprintf(stderr, "kvtier bench tiers: host capacity %llu MiB is too small for %.1f MiB chunks; raise "
                   "--host-capacity-mib\n", static_cast<unsigned long long>(*host_mib), mib);
      return 2;
    }
    // Loads cycle over requests that are certainly still cached (each workload gets its
    // share of the capacity when two run).
    const uint64_t sharing = rw ? 2 : 1;
    if (capacity_chunks / sharing < 2 * request_slots * (w.depth + 1)) {
      std::fprintf(stderr, "kvtier bench tiers: host capacity %llu MiB is too small for two workloads of %.1f MiB "
                   "chunks; raise --host-capacity-mib\n", static_cast<unsigned long long>(*host_mib), mib);
      return 2;
    }
    w.max_saved = capacity_chunks / sharing / request_slots - w.depth - 1;
    if (rw) rw->max_saved = w.max_saved;

    std::vector<double> lim, lim_load, sv, ld;  // lim: saves' (and, on the host, loads') limit
    std::vector<double> dsv, dld;               // the daemon path's saves and loads
    const bool gpu = *engine_device >= 0;
    for (uint64_t r = 0; r < *reps; ++r) {
      if (!gpu) {
        lim.push_back(MemcpyLimit(src.data(), src.size(), dst.data(), dst.size(), w.chunk_bytes, *seconds));
        lim_load.push_back(lim.back());
      } else {
#if KVTIER_WITH_CUDA
        lim.push_back(GpuCopyLimit(false, cfg.host_capacity_bytes, *engine_mib * kMiB, w.chunk_bytes, *seconds));
        lim_load.push_back(GpuCopyLimit(true, cfg.host_capacity_bytes, *engine_mib * kMiB, w.chunk_bytes, *seconds));
#endif
      }
      Result<double> s = w.Run(true, *seconds);
      Result<double> l = s.ok() ? w.Run(false, *seconds) : Result<double>(s.status());
      if (!l.ok()) {
        std::fprintf(stderr, "kvtier bench tiers: %s\n", l.status().ToString().c_str());
        return 1;
      }
      sv.push_back(*s);
      ld.push_back(*l);
      if (rw) {
        Result<double> ds = rw->Run(true, *seconds);
        Result<double> dl = ds.ok() ? rw->Run(false, *seconds) : Result<double>(ds.status());
        if (!dl.ok()) {
          std::fprintf(stderr, "kvtier bench tiers: daemon path: %s\n", dl.status().ToString().c_str());
          return 1;
        }
        dsv.push_back(*ds);
        dld.push_back(*dl);
      }
    }
    for (int op = 0; op < 2; ++op) {
      const double embedded = Median(op == 0 ? sv : ld);
      const double g = rw ? Median(op == 0 ? dsv : dld) : embedded;
      const double limit = Median(op == 0 ? lim : lim_load);
      const char* limit_name = !gpu ? "single-thread memcpy"
                               : op == 0 ? "cudaMemcpy D2H (pinned)"
                                         : "cudaMemcpy H2D (pinned)";
      Report rep(json);
      rep.Add("bench", "tiers")
          .Add("tier", "host")
          .Add("path", rw ? "daemon" : "embedded")
          .Add("op", op == 0 ? "save" : "load")
          .Add("chunk_bytes", w.chunk_bytes)
          .Add("chunk_tokens", uint64_t{chunk_tokens})
          .Add("chunks_per_request", uint64_t{w.chunks_per_request})
          .Add("gbps", g)
          .Add("limit_gbps", limit)
          .Add("ratio", limit > 0 ? g / limit : 0.0)
          .Add("limit", limit_name);
      if (rw) rep.Add("embedded_gbps", embedded).Add("ratio_to_embedded", embedded > 0 ? g / embedded : 0.0);
      rep.Add("workers", *workers)
          .Add("reps", *reps);
      rep.Print();
    }
    if (!(*store)->UnregisterNamespace(*ns).ok()) rc = 1;
    if (rw && !remote->UnregisterNamespace(remote_ns).ok()) rc = 1;
  }
  const StoreStats st = (*store)->Stats();
  if (!json)
    std::printf("store: saved_chunks=%llu loaded_chunks=%llu evictions=%llu corrupt=%llu load_failed=%llu\n",
                static_cast<unsigned long long>(st.saved_chunks), static_cast<unsigned long long>(st.loaded_chunks),
                static_cast<unsigned long long>(st.evictions), static_cast<unsigned long long>(st.corrupt_chunks),
                static_cast<unsigned long long>(st.load_failed_chunks));
  return rc;
}

}  // namespace kvtier::bench
