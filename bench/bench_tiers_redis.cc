// `kvtier bench tiers --tier redis`: saves and loads through the Store with a Redis tier,
// next to the raw limit measured in the same run: plain hiredis pipelined SET and GET of
// values of the same size over as many connections as the Store's workers, each with as
// many commands in flight as a request has chunks (bench/redis_limit.h). Also next to
// redis-benchmark (-P 4 -c 4) of the same value size when it is installed.
//
// gbps and limit_gbps are medians over the reps; ratio is the median of each rep's own
// ratio (its Store phase over the limit measured right after it), which follows the
// machine's drift between reps instead of mixing phases measured far apart.
//
// Save = a write-through save: gather into host, then one pipelined batch of SETs (the
// ticket completes once Redis answered). Load = a load of chunks held only in Redis (the
// host tier is small, so they were evicted): one pipelined batch of GETs into host slots,
// header/identity/checksum checked, scattered into the engine's blocks.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "bench/redis_limit.h"
#include "bench/workload.h"
#include "kvtier/store.h"
#include "tiers/chunk_format.h"

namespace kvtier::bench {
namespace {

constexpr uint64_t kMiB = 1ull << 20;

int Fail(const Status& s) {
  std::fprintf(stderr, "kvtier bench tiers --tier redis: %s\n", s.ToString().c_str());
  return s.IsInvalidArgument() ? 2 : 1;
}

KvShape LlamaShape() {  // Llama-3-8B: 32 layers, 8 KV heads, head dim 128, bf16 (128 KiB per token)
  KvShape s;
  s.num_layers = 32;
  s.num_kv_heads = 8;
  s.head_dim = 128;
  s.dtype = DType::kBFloat16;
  return s;
}

}  // namespace

// Keys of the raw limit's own values (MeasureRedisRawLimit's key_prefix).
constexpr const char* kLimitPrefix = "kvtbench";

int RunBenchTiersRedis(const std::vector<std::string>& argv) {
  Result<Args> a = Args::Parse(argv,
                               {"tier", "sizes", "seconds", "reps", "host-capacity-mib", "engine-mib", "workers",
                                "depth", "redis", "redis-benchmark-requests", "get-piece-kib"},
                               {"json", "lz4", "no-redis-benchmark"});
  if (!a.ok()) return Fail(a.status());
  auto sizes = a->GetDoubleList("sizes", {2, 8, 32});
  auto seconds = a->GetDouble("seconds", 0.5);
  auto reps = a->GetUint("reps", 3);
  auto host_mib = a->GetUint("host-capacity-mib", 256);
  auto engine_mib = a->GetUint("engine-mib", 256);
  auto workers = a->GetUint("workers", 4);
  auto depth = a->GetUint("depth", 0);
  auto rb_requests = a->GetUint("redis-benchmark-requests", 0);
  auto piece_kib = a->GetUint("get-piece-kib", RedisConfig{}.get_piece_bytes >> 10);
  for (const Status* s : {&sizes.status(), &seconds.status(), &reps.status(), &host_mib.status(),
                          &engine_mib.status(), &workers.status(), &depth.status(), &rb_requests.status(),
                          &piece_kib.status()})
    if (!s->ok()) return Fail(*s);
  if (*reps == 0 || *workers == 0) return Fail(Status::InvalidArgument("--reps and --workers must be at least 1"));
  const bool json = a->Has("json");

  RedisEndpoint ep;
  std::unique_ptr<LocalRedisServer> local;
  if (a->Has("redis")) {
    Result<RedisEndpoint> e = ParseRedisEndpoint(a->Get("redis", ""));
    if (!e.ok()) return Fail(e.status());
    ep = *e;
  } else {
    Result<std::unique_ptr<LocalRedisServer>> s = LocalRedisServer::Start();
    if (!s.ok()) return Fail(s.status());
    local = std::move(*s);
    ep = local->endpoint();
  }

  StoreConfig cfg;
  cfg.host_capacity_bytes = *host_mib * kMiB;
  cfg.worker_threads = static_cast<uint32_t>(*workers);
  cfg.redis.enabled = true;
  cfg.redis.addresses = {ep.host + ":" + std::to_string(ep.port)};
  cfg.redis.username = ep.username;
  cfg.redis.password = ep.password;
  cfg.redis.pool_size = static_cast<uint32_t>(*workers);
  cfg.redis.op_timeout_ms = 30000;  // a busy machine slows Redis; that is not an outage here
  cfg.redis.lz4 = a->Has("lz4");
  cfg.redis.get_piece_bytes = *piece_kib << 10;
  cfg.redis.key_prefix = "kvtbench-store";
  cfg.redis.policy = WritePolicy::kWriteThrough;
  Result<std::unique_ptr<Store>> store = Store::Open(cfg);
  if (!store.ok()) return Fail(store.status());
  if (!json)
    std::printf("kvtier bench tiers: tier=redis server=%s:%d%s host=%llu MiB workers=%llu reps=%llu%s\n",
                ep.host.c_str(), ep.port, local ? " (started for this run)" : "",
                static_cast<unsigned long long>(*host_mib), static_cast<unsigned long long>(*workers),
                static_cast<unsigned long long>(*reps), cfg.redis.lz4 ? " lz4" : "");

  const uint64_t token_bytes = ChunkPayloadBytes([] {
    KvShape s = LlamaShape();
    s.chunk_tokens = 1;
    return s;
  }());
  for (double mib : *sizes) {
    const uint32_t chunk_tokens = static_cast<uint32_t>(mib * kMiB / token_bytes);
    if (chunk_tokens == 0) return Fail(Status::InvalidArgument("--sizes: a chunk smaller than one token"));
    NamespaceSpec spec;
    spec.model.name = "bench/llama3-8b-shape";
    spec.model.revision = "bench-redis-" + std::to_string(chunk_tokens);
    spec.shape = LlamaShape();
    spec.shape.chunk_tokens = chunk_tokens;
    const uint32_t block_tokens = chunk_tokens % 16 == 0 ? 16 : chunk_tokens;
    EngineKv engine = MakeHostEngine(spec.shape, block_tokens, *engine_mib * kMiB);
    Result<NamespaceHandle> ns = (*store)->RegisterNamespace(spec, engine.layout);
    if (!ns.ok()) return Fail(ns.status());
    Workload w = Workload::ForEngine(store->get(), *ns, spec.shape, engine);
    w.depth = static_cast<uint32_t>(*depth ? *depth : *workers);
    w.max_saved = 1u << 20;
    // Enough in Redis, and evicted from host, before the first load phase.
    while ((*store)->Stats().redis_bytes_out < 2 * cfg.host_capacity_bytes + 4 * w.chunk_bytes) {
      Result<double> s = w.Run(true, *seconds);
      if (!s.ok()) return Fail(s.status());
      if ((*store)->Stats().redis_saved_chunks == 0)
        return Fail(Status::IOError("no chunk reached Redis (breaker " + (*store)->Stats().redis_breaker + ")"));
    }
    const uint64_t value_bytes = kChunkHeaderBytes + w.chunk_bytes;
    // The limit moves about as many bytes per phase as the Store does in `seconds`.
    std::vector<double> set_lim, get_lim, raw_set_overwrite, raw_get, raw_getrange, sv, ld, sv_ratio, ld_ratio;
    for (uint64_t r = 0; r < *reps; ++r) {
      Result<double> s = w.Run(true, *seconds);
      if (!s.ok()) return Fail(s.status());
      Result<double> l = w.Run(false, *seconds, TierId::kRedis);
      if (!l.ok()) return Fail(l.status());
      const uint64_t per_conn = std::max<uint64_t>(
          2 * w.chunks_per_request,
          static_cast<uint64_t>(std::max(*s, *l) * 1e9 * *seconds / static_cast<double>(value_bytes)) / *workers);
      // GETs of the chunks the Store wrote (this size's only: the server is flushed between
      // sizes), not of values the limit has just written itself.
      Result<std::vector<std::string>> stored = RedisScanKeys(ep, cfg.redis.key_prefix + ":", 4096);
      if (!stored.ok()) return Fail(stored.status());
      Result<RedisRawLimit> lim = MeasureRedisRawLimit(ep, value_bytes, static_cast<uint32_t>(*workers),
                                                       w.chunks_per_request, static_cast<uint32_t>(per_conn),
                                                       kLimitPrefix, *stored, cfg.redis.lz4 ? 0 : cfg.redis.get_piece_bytes,
                                                       std::to_string(r));
      if (!lim.ok()) return Fail(lim.status());
      sv.push_back(*s);
      ld.push_back(*l);
      // The Store's saves create keys (every chunk is new): the limit is SETs that do too.
      set_lim.push_back(lim->set_new_gbps);
      raw_set_overwrite.push_back(lim->set_gbps);
      get_lim.push_back(lim->read_gbps());
      raw_get.push_back(lim->get_gbps);
      raw_getrange.push_back(lim->getrange_gbps);
      sv_ratio.push_back(lim->set_new_gbps > 0 ? *s / lim->set_new_gbps : 0.0);
      ld_ratio.push_back(lim->read_gbps() > 0 ? *l / lim->read_gbps() : 0.0);
    }
    double rb[2] = {0, 0};
    std::string rb_error;
    if (!a->Has("no-redis-benchmark")) {
      const uint32_t n = static_cast<uint32_t>(
          *rb_requests ? *rb_requests : std::clamp<uint64_t>((2ull << 30) / value_bytes, 64, 4096));
      for (int op = 0; op < 2 && rb_error.empty(); ++op) {
        Result<double> g = RedisBenchmarkGbps(ep, value_bytes, op == 0 ? "set" : "get", n);
        if (g.ok()) rb[op] = *g;
        else rb_error = g.status().ToString();
      }
    }
    if (!rb_error.empty() && !json) std::printf("redis-benchmark: %s\n", rb_error.c_str());
    for (int op = 0; op < 2; ++op) {
      const double g = Median(op == 0 ? sv : ld), lim = Median(op == 0 ? set_lim : get_lim);
      Report rep(json);
      rep.Add("bench", "tiers")
          .Add("tier", "redis")
          .Add("op", op == 0 ? "save" : "load")
          .Add("chunk_bytes", w.chunk_bytes)
          .Add("chunks_per_request", uint64_t{w.chunks_per_request})
          .Add("gbps", g)
          .Add("limit_gbps", lim)
          .Add("ratio", Median(op == 0 ? sv_ratio : ld_ratio))
          .Add("limit", op == 0 ? "raw hiredis pipelined SETs that create keys, as the Store's saves do, same value "
                                  "size, connections and depth"
                                : "raw hiredis pipelined reads of the keys the Store wrote, same connections and depth: "
                                  "the faster of GET and GETRANGEs of the tier's piece size")
          .Add("connections", *workers)
          .Add("requests_in_flight", uint64_t{w.depth});
      if (op == 0) rep.Add("limit_overwrite_gbps", Median(raw_set_overwrite));
      if (op == 1) {
        rep.Add("limit_get_gbps", Median(raw_get));
        if (Median(raw_getrange) > 0) rep.Add("limit_getrange_gbps", Median(raw_getrange));
      }
      if (rb[op] > 0) rep.Add("redis_benchmark_gbps", rb[op]).Add("vs_redis_benchmark", g / rb[op]);
      rep.Print();
    }
    if (Status u = (*store)->UnregisterNamespace(*ns); !u.ok()) return Fail(u);
    // Bound the server's memory between sizes, and leave the next size's limit only its
    // own chunks to read.
    if (local) {
      (void)RedisFlushAll(ep);
    } else {
      (void)RedisDeletePrefix(ep, cfg.redis.key_prefix + ":");
      (void)RedisDeletePrefix(ep, std::string(kLimitPrefix) + ":rawnew:");
    }
  }
  const StoreStats st = (*store)->Stats();
  if (!json)
    std::printf("store: redis_saved=%llu redis_loaded=%llu redis_dropped=%llu redis_corrupt=%llu redis_errors=%llu "
                "breaker=%s evictions=%llu load_failed=%llu\n",
                static_cast<unsigned long long>(st.redis_saved_chunks),
                static_cast<unsigned long long>(st.redis_loaded_chunks),
                static_cast<unsigned long long>(st.redis_dropped_saves),
                static_cast<unsigned long long>(st.redis_corrupt_chunks),
                static_cast<unsigned long long>(st.redis_errors), st.redis_breaker.c_str(),
                static_cast<unsigned long long>(st.evictions), static_cast<unsigned long long>(st.load_failed_chunks));
  return 0;
}

}  // namespace kvtier::bench
