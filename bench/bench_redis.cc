// `kvtier bench redis`: RedisTier Put/Get of Llama-3-8B-shaped chunks (2, 8, 32 MiB) straight
// on the tier (no Store), next to the raw pipelined SET/GET limit of plain hiredis measured
// against the same server with the same connections and pipeline depth in the same run
// (limit_gbps, ratio), and next to the tier's own transport without chunk header, checksum
// or verification (client_limit_gbps, client_ratio: what the tier adds on top of it).
// Repetitions interleave the limits, tier save and tier load; medians are printed. Payloads
// are KV-like bytes (bf16 of N(0,1) values), so the LZ4 figures are what real KV would see.
#include <fcntl.h>
#include <lz4.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <sstream>
#include <thread>

#include "bench/bench.h"
#include "bench/redis_limit.h"
#include "bench/workload.h"
#include "tiers/chunk_format.h"
#include "tiers/redis/redis_tier.h"

extern char** environ;

namespace kvtier::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kMiB = 1ull << 20;

// Exit 2: cannot run here (bad flags, or no redis-server to start); 1: the run failed.
int Fail(const Status& s) {
  std::fprintf(stderr, "kvtier bench redis: %s\n", s.ToString().c_str());
  return s.IsInvalidArgument() || s.IsNotFound() ? 2 : 1;
}

std::vector<uint8_t> KvBytes(size_t n, uint64_t seed) {
  std::vector<uint8_t> out(n);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (size_t i = 0; i + 1 < n; i += 2) {
    float f = dist(rng);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    out[i] = static_cast<uint8_t>(bits >> 16);
    out[i + 1] = static_cast<uint8_t>(bits >> 24);
  }
  return out;
}

KvShape LlamaShape(uint32_t tokens) {
  KvShape s;
  s.num_layers = 32;
  s.num_kv_heads = 8;
  s.head_dim = 128;
  s.dtype = DType::kBFloat16;
  s.chunk_tokens = tokens;
  return s;
}

// Chunks of one size, `depth` per connection, with their headers and load buffers.
struct ChunkSet {
  KvShape shape;
  std::vector<std::vector<uint8_t>> payload, dst;
  std::vector<std::array<uint8_t, kChunkHeaderBytes>> header;
  std::vector<ChunkKey> keys;
  NamespaceId ns;
};

ChunkSet MakeChunks(uint64_t mib, uint32_t count) {
  ChunkSet s;
  s.shape = LlamaShape(static_cast<uint32_t>(mib * kMiB / (128 * 1024)));
  s.ns.lo = 0xbe7c4;
  s.ns.hi = mib;
  std::vector<uint8_t> base = KvBytes(ChunkPayloadBytes(s.shape), mib);
  for (uint32_t i = 0; i < count; ++i) {
    ChunkKey k;
    k.lo = i + 1;
    k.hi = mib;
    s.keys.push_back(k);
    s.payload.push_back(base);
    s.payload.back()[i % base.size()] ^= 0x5A;  // distinct chunks
    s.dst.emplace_back(base.size());
    s.header.emplace_back();
    EncodeChunkHeader(MakeChunkHeader(s.ns, k, s.shape), s.header.back().data());
  }
  return s;
}

// `connections` threads; each saves or loads its `depth` chunks per call, `calls` times.
// Returns payload GB/s, or an error when an item failed.
Result<double> TierPhase(RedisTier* tier, ChunkSet* cs, bool save, uint32_t connections, uint32_t depth, uint32_t calls) {
  std::vector<Status> st(connections);
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (uint32_t c = 0; c < connections; ++c) {
    threads.emplace_back([&, c] {
      for (uint32_t n = 0; n < calls && st[c].ok(); ++n) {
        if (save) {
          std::vector<RedisPutItem> items(depth);
          for (uint32_t d = 0; d < depth; ++d) {
            size_t i = c * depth + d;
            items[d].ns = cs->ns;
            items[d].key = cs->keys[i];
            items[d].header = cs->header[i];
            items[d].payload = cs->payload[i];
          }
          st[c] = tier->Put(items);
        } else {
          std::vector<RedisGetItem> items(depth);
          for (uint32_t d = 0; d < depth; ++d) {
            size_t i = c * depth + d;
            items[d].id = ChunkIdentity{cs->ns, cs->keys[i], cs->shape};
            items[d].dst = cs->dst[i];
          }
          tier->Get(items);
          for (const RedisGetItem& it : items)
            if (it.result != RedisItemResult::kOk && st[c].ok()) st[c] = it.status.ok() ? Status::Internal("miss") : it.status;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  for (const Status& s : st)
    if (!s.ok()) return s;
  double bytes = static_cast<double>(connections) * depth * calls * static_cast<double>(cs->payload[0].size());
  return bytes / secs / 1e9;
}

}  // namespace

int RunBenchRedisTierDirect(const std::vector<std::string>& argv) {
  Result<Args> a = Args::Parse(argv, {"redis", "user", "password", "sizes", "connections", "depth", "calls", "reps", "lz4-mib"},
                               {"json", "no-redis-benchmark"});
  if (!a.ok()) return Fail(a.status());
  auto sizes = a->GetDoubleList("sizes", {2, 8, 32});
  auto conns = a->GetUint("connections", 4);
  auto depth = a->GetUint("depth", 4);
  auto calls = a->GetUint("calls", 4);
  auto reps = a->GetUint("reps", 3);
  auto lz4_mib = a->GetUint("lz4-mib", 8);
  for (const Status* s : {&sizes.status(), &conns.status(), &depth.status(), &calls.status(), &reps.status(),
                          &lz4_mib.status()})
    if (!s->ok()) return Fail(*s);
  if (*conns == 0 || *depth == 0 || *calls == 0 || *reps == 0)
    return Fail(Status::InvalidArgument("--connections, --depth, --calls and --reps must be at least 1"));
  const bool json = a->Has("json");
  RedisEndpoint ep;
  ep.username = a->Get("user", "");
  ep.password = a->Get("password", "");
  std::unique_ptr<LocalRedisServer> local;
  if (a->Has("redis")) {
    Result<RedisEndpoint> e = ParseRedisEndpoint(a->Get("redis", ""));
    if (!e.ok()) return Fail(e.status());
    e->username = ep.username;
    e->password = ep.password;
    ep = *e;
  } else {
    Result<std::unique_ptr<LocalRedisServer>> l = LocalRedisServer::Start();
    if (!l.ok()) return Fail(l.status());
    local = std::move(*l);
    ep = local->endpoint();
  }
  const std::string addr = ep.host + ":" + std::to_string(ep.port);
  const uint32_t C = static_cast<uint32_t>(*conns), D = static_cast<uint32_t>(*depth), N = static_cast<uint32_t>(*calls);

  auto open_tier = [&](RedisCompression comp) {
    RedisTierOptions o;
    o.seeds = {addr};
    o.username = ep.username;
    o.password = ep.password;
    o.pool_size = C;
    o.op_timeout = std::chrono::milliseconds(60000);
    o.max_batch_values = D;
    o.compression = comp;
    o.key_prefix = "kvtbench";
    return RedisTier::Open(o);
  };
  Result<std::unique_ptr<RedisTier>> tier = open_tier(RedisCompression::kNone);
  if (!tier.ok()) return Fail(tier.status());

  for (double mib_d : *sizes) {
    const uint64_t mib = static_cast<uint64_t>(mib_d);
    if (mib == 0 || (mib % 2 != 0 && mib != 1)) return Fail(Status::InvalidArgument("--sizes: whole MiB (1 or even)"));
    ChunkSet cs = MakeChunks(mib, C * D);
    const uint64_t value_bytes = cs.payload[0].size();
    std::vector<double> lset, lget, cset, cget, sv, ld;
    for (uint64_t r = 0; r < *reps; ++r) {
      Result<RedisRawLimit> lim = MeasureRedisRawLimit(ep, value_bytes + kChunkHeaderBytes, C, D, D * N, "kvtbench",
                                                       {}, (*tier)->options().get_piece_bytes);
      if (!lim.ok()) return Fail(lim.status());
      lset.push_back(lim->set_gbps);
      lget.push_back(lim->read_gbps());
      Result<RedisRawLimit> cl = MeasureRedisClientLimit(ep, value_bytes + kChunkHeaderBytes, C, D, D * N);
      if (!cl.ok()) return Fail(cl.status());
      cset.push_back(cl->set_gbps);
      cget.push_back(cl->get_gbps);
      Result<double> s = TierPhase(tier->get(), &cs, true, C, D, N);
      if (!s.ok()) return Fail(s.status());
      Result<double> l = TierPhase(tier->get(), &cs, false, C, D, N);
      if (!l.ok()) return Fail(l.status());
      sv.push_back(*s);
      ld.push_back(*l);
    }
    for (size_t i = 0; i < cs.dst.size(); ++i)
      if (cs.dst[i] != cs.payload[i]) return Fail(Status::Internal("bench redis: a loaded chunk differs from the saved one"));
    for (int op = 0; op < 2; ++op) {
      const double g = Median(op == 0 ? sv : ld), lim = Median(op == 0 ? lset : lget);
      const double client = Median(op == 0 ? cset : cget);
      Report rep(json);
      rep.Add("bench", "redis").Add("op", op == 0 ? "save" : "load").Add("chunk_mib", mib)
          .Add("connections", uint64_t{C}).Add("depth", uint64_t{D}).Add("gbps", g)
          .Add("limit_gbps", lim).Add("ratio", lim > 0 ? g / lim : 0.0).Add("target_ratio", 0.9, 2)
          .Add("limit", op == 0 ? "raw pipelined hiredis SET, same server, connections and depth"
                                : "raw pipelined hiredis GET or 1 MiB GETRANGEs, the faster, same server, connections and depth")
          .Add("client_limit_gbps", client).Add("client_ratio", client > 0 ? g / client : 0.0);
      if (!a->Has("no-redis-benchmark")) {
        Result<double> rb = RedisBenchmarkGbps(ep, value_bytes, op == 0 ? "set" : "get", std::max<uint32_t>(16, 4 * 4 * 2));
        if (rb.ok()) rep.Add("redis_benchmark_gbps", *rb);
        else rep.Add("redis_benchmark", rb.status().message());
      }
      rep.Print();
    }
  }

  // LZ4 on KV-like bytes: ratio and cost, then the tier with it on.
  if (*lz4_mib > 0) {
    const uint64_t mib = *lz4_mib;
    ChunkSet cs = MakeChunks(mib, C * D);
    const std::vector<uint8_t>& raw = cs.payload[0];
    std::vector<char> comp(static_cast<size_t>(LZ4_compressBound(static_cast<int>(raw.size()))));
    std::vector<char> back(raw.size());
    int n = 0;
    auto t0 = Clock::now();
    for (int i = 0; i < 5; ++i)
      n = LZ4_compress_default(reinterpret_cast<const char*>(raw.data()), comp.data(), static_cast<int>(raw.size()),
                               static_cast<int>(comp.size()));
    double ct = std::chrono::duration<double>(Clock::now() - t0).count() / 5;
    t0 = Clock::now();
    int m = 0;
    for (int i = 0; i < 5; ++i) m = LZ4_decompress_safe(comp.data(), back.data(), n, static_cast<int>(back.size()));
    double dt = std::chrono::duration<double>(Clock::now() - t0).count() / 5;
    if (n <= 0 || m != static_cast<int>(raw.size()) || std::memcmp(back.data(), raw.data(), raw.size()) != 0)
      return Fail(Status::Internal("bench redis: LZ4 round trip failed"));
    Result<std::unique_ptr<RedisTier>> lz = open_tier(RedisCompression::kLz4);
    if (!lz.ok()) return Fail(lz.status());
    std::vector<double> sv, ld;
    for (uint64_t r = 0; r < *reps; ++r) {
      Result<double> s = TierPhase(lz->get(), &cs, true, C, D, N);
      if (!s.ok()) return Fail(s.status());
      Result<double> l = TierPhase(lz->get(), &cs, false, C, D, N);
      if (!l.ok()) return Fail(l.status());
      sv.push_back(*s);
      ld.push_back(*l);
    }
    for (size_t i = 0; i < cs.dst.size(); ++i)
      if (cs.dst[i] != cs.payload[i]) return Fail(Status::Internal("bench redis: an LZ4 chunk differs after loading"));
    Report rep(json);
    rep.Add("bench", "redis").Add("op", "lz4").Add("chunk_mib", mib).Add("data", "bf16 of N(0,1)")
        .Add("ratio_raw_to_stored", static_cast<double>(raw.size()) / n)
        .Add("compress_gbps_1core", raw.size() / ct / 1e9).Add("decompress_gbps_1core", raw.size() / dt / 1e9)
        .Add("tier_save_gbps", Median(sv)).Add("tier_load_gbps", Median(ld))
        .Add("tier_compression_ratio", (*lz)->Stats().compression_ratio);
    rep.Print();
  }
  return 0;
}

}  // namespace kvtier::bench
