#include "bench/trace_replay.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>

#include "bench/workload.h"
#include "tiers/chunk_format.h"

namespace kvtier::bench {
namespace {

using Clock = std::chrono::steady_clock;

uint64_t Mix64(uint64_t x) {  // splitmix64's finalizer
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

KvShape Shape(uint32_t layers, uint32_t heads, uint32_t dim, bool mla) {
  KvShape s;
  s.num_layers = layers;
  s.num_kv_heads = heads;
  s.head_dim = dim;
  s.dtype = DType::kBFloat16;
  s.mla = mla;
  return s;
}

// The bytes of one engine block's K (part 0) or V (part 1) of one layer for a block id:
// a pattern no other (block id, layer, part) shares.
void FillPattern(uint8_t* p, uint64_t bytes, uint64_t block_id, uint32_t layer, uint32_t part) {
  const uint64_t seed = Mix64(block_id * 0x10001ull + layer * 2 + part);
  uint64_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    const uint64_t w = seed + i * 0x9e3779b97f4a7c15ull;
    std::memcpy(p + i, &w, 8);
  }
  if (i < bytes) {
    const uint64_t w = seed + i * 0x9e3779b97f4a7c15ull;
    std::memcpy(p + i, &w, bytes - i);
  }
}

bool CheckPattern(const uint8_t* p, uint64_t bytes, uint64_t block_id, uint32_t layer, uint32_t part) {
  const uint64_t seed = Mix64(block_id * 0x10001ull + layer * 2 + part);
  uint64_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    const uint64_t w = seed + i * 0x9e3779b97f4a7c15ull;
    if (std::memcmp(p + i, &w, 8) != 0) return false;
  }
  if (i < bytes) {
    const uint64_t w = seed + i * 0x9e3779b97f4a7c15ull;
    if (std::memcmp(p + i, &w, bytes - i) != 0) return false;
  }
  return true;
}

// Engine blocks of the replay: one block per chunk, in MakeEngine's layout
// ([2][num_blocks][block_tokens][heads][dim] per layer; MLA uses part 0 only).
class Blocks {
 public:
  explicit Blocks(EngineKv* e) : e_(e) { block_bytes_ = e->layout.layers[0].block_stride; }
  uint32_t parts() const { return e_->shape.mla ? 1 : 2; }
  uint8_t* At(uint32_t layer, uint32_t part, uint32_t block) const {
    const KvLayerMemory& m = e_->layout.layers[layer];
    return static_cast<uint8_t*>(m.base) + part * m.kv_offset + uint64_t{block} * m.block_stride;
  }
  void Fill(uint32_t block, uint64_t block_id) const {
    for (uint32_t l = 0; l < e_->shape.num_layers; ++l)
      for (uint32_t p = 0; p < parts(); ++p) FillPattern(At(l, p, block), block_bytes_, block_id, l, p);
  }
  void Scribble(uint32_t block) const {
    for (uint32_t l = 0; l < e_->shape.num_layers; ++l)
      for (uint32_t p = 0; p < parts(); ++p) std::memset(At(l, p, block), 0xee, block_bytes_);
  }
  bool Check(uint32_t block, uint64_t block_id) const {
    for (uint32_t l = 0; l < e_->shape.num_layers; ++l)
      for (uint32_t p = 0; p < parts(); ++p)
        if (!CheckPattern(At(l, p, block), block_bytes_, block_id, l, p)) return false;
    return true;
  }

 private:
  EngineKv* e_;
  uint64_t block_bytes_ = 0;
};

// Engine memory: the longest request's blocks, up to 256 MiB (longer requests then reuse
// blocks, and their bytes are not verified).
constexpr uint64_t kMaxEngineBytes = 256ull << 20;

}  // namespace

const std::vector<TraceModel>& TraceModels() {
  // clang-format off
  static const std::vector<TraceModel> models = {
      {"llama3-8b", Shape(32, 8, 128, false), 8.03e9},
      {"llama3-70b", Shape(80, 8, 128, false), 70.6e9},
      {"qwen3-8b", Shape(36, 8, 128, false), 8.19e9},
      {"mistral-7b", Shape(32, 8, 128, false), 7.25e9},
      {"deepseek-v3", Shape(61, 1, 576, true), 37e9},
      {"tiny", Shape(1, 1, 2, false), 0},
  };
  // clang-format on
  return models;
}

const TraceModel* FindTraceModel(const std::string& name) {
  for (const TraceModel& m : TraceModels())
    if (m.name == name) return &m;
  return nullptr;
}

uint64_t TokenBytes(const KvShape& shape) {
  KvShape s = shape;
  s.chunk_tokens = 1;
  return ChunkPayloadBytes(s);
}

void BlockTokens(uint64_t block_id, uint32_t n, int32_t* out) {
  const uint64_t seed = Mix64(block_id);
  for (uint32_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(Mix64(seed + i) >> 33);
}

uint64_t ReplaySlotBytes(const KvShape& shape, uint32_t chunk_tokens) {
  KvShape s = shape;
  s.chunk_tokens = chunk_tokens;
  constexpr uint64_t kPage = 4096;
  return kPage + (ChunkPayloadBytes(s) + kPage - 1) / kPage * kPage;
}

uint64_t CapacityChunks(uint64_t tokens, uint32_t chunk_tokens, uint64_t unique_blocks) {
  return tokens == 0 ? unique_blocks : tokens / chunk_tokens;
}

Result<ReplayResult> ReplayTrace(const Trace& trace, const ReplayOptions& o) {
  const uint32_t B = o.chunk_tokens;
  KVTIER_RETURN_IF_ERROR(CheckBlockTokens(trace, B));
  ReplayResult res;
  KvShape shape = o.shape;
  shape.chunk_tokens = B;
  res.chunk_payload_bytes = ChunkPayloadBytes(shape);
  if (res.chunk_payload_bytes == 0) return Status::InvalidArgument("trace replay: the KV shape has no bytes");
  res.slot_bytes = ReplaySlotBytes(shape, B);
  res.host_capacity_chunks = CapacityChunks(o.host_capacity_tokens, B, trace.unique_blocks);
  if (res.host_capacity_chunks == 0)
    return Status::InvalidArgument("trace replay: host capacity " + std::to_string(o.host_capacity_tokens) +
                                   " tokens is less than one block of " + std::to_string(B) + " tokens");

  StoreConfig cfg;
  cfg.host_capacity_bytes = res.host_capacity_chunks * res.slot_bytes;
  cfg.worker_threads = std::max<uint32_t>(o.worker_threads, 1);
  cfg.max_request_tokens = std::max<uint64_t>(cfg.max_request_tokens, trace.max_blocks * B);
  // The replay measures what the cache holds: every cached chunk is reported and loaded.
  cfg.planner.enabled = false;
  if (o.nvme) {
    res.nvme_capacity_chunks = CapacityChunks(o.nvme_capacity_tokens, B, trace.unique_blocks);
    if (res.nvme_capacity_chunks < 2)
      return Status::InvalidArgument("trace replay: NVMe capacity " + std::to_string(o.nvme_capacity_tokens) +
                                     " tokens is less than two blocks of " + std::to_string(B) + " tokens");
    for (const char* f : {"/trace-nvme-0.dat", "/trace-nvme-meta"})
      if (std::filesystem::exists(o.nvme_dir + f))
        return Status::InvalidArgument("trace replay: " + o.nvme_dir + f +
                                       " exists: an earlier replay's NVMe tier would be recovered into the "
                                       "index; use an empty directory");
    cfg.nvme.enabled = true;
    cfg.nvme.paths = {o.nvme_dir + "/trace-nvme-0.dat"};
    cfg.nvme.capacity_bytes = res.nvme_capacity_chunks * res.slot_bytes;
    cfg.nvme.metadata_dir = o.nvme_dir + "/trace-nvme-meta";
    cfg.nvme.buffered = o.nvme_buffered;
    cfg.nvme.policy = WritePolicy::kWriteBack;
  }
  if (o.redis) {
    res.redis_capacity_chunks = CapacityChunks(o.redis_capacity_tokens, B, trace.unique_blocks);
    cfg.redis.enabled = true;
    cfg.redis.addresses = {o.redis_address};
    cfg.redis.policy = WritePolicy::kWriteBack;
    cfg.redis.capacity_bytes = res.redis_capacity_chunks * (kChunkHeaderBytes + res.chunk_payload_bytes);
    cfg.redis.key_prefix = o.redis_key_prefix;
  }
  const auto t_open = Clock::now();
  Result<std::unique_ptr<Store>> store = Store::Open(cfg);
  if (!store.ok()) return store.status().WithContext("trace replay: ");
  res.open_seconds = std::chrono::duration<double>(Clock::now() - t_open).count();

  // The engine: one block per chunk.
  const uint64_t per_block =
      2 * uint64_t{shape.num_layers} * B * shape.num_kv_heads * shape.head_dim * DTypeSize(shape.dtype);
  const uint64_t engine_blocks =
      std::max<uint64_t>(1, std::min<uint64_t>(trace.max_blocks, kMaxEngineBytes / per_block));
  EngineKv engine = MakeHostEngine(shape, B, engine_blocks * per_block);
  const uint32_t nb = engine.layout.num_blocks;
  const Blocks blocks(&engine);

  NamespaceSpec spec;
  spec.model.name = "kvtier/bench-trace";
  spec.model.revision = trace.name;
  spec.shape = shape;
  Result<NamespaceHandle> ns = (*store)->RegisterNamespace(spec, engine.layout);
  if (!ns.ok()) return ns.status().WithContext("trace replay: ");

  std::map<int64_t, RoundStats> rounds;
  std::vector<int32_t> tokens, block_ids;
  const size_t total = trace.requests.size();
  const auto t0 = Clock::now();
  for (size_t k = 0; k < total; ++k) {
    const TraceRequest& r = trace.requests[k];
    const uint32_t n = static_cast<uint32_t>(r.hash_ids.size());
    tokens.resize(uint64_t{n} * B);
    block_ids.resize(n);
    for (uint32_t i = 0; i < n; ++i) {
      BlockTokens(r.hash_ids[i], B, tokens.data() + uint64_t{i} * B);
      block_ids[i] = static_cast<int32_t>(i % nb);
    }
    const bool own_blocks = n <= nb;  // no block holds two chunks of this request
    auto block_tokens = [&](uint32_t i) { return i + 1 == n ? r.input_length - uint64_t{i} * B : uint64_t{B}; };

    Result<LookupResult> look = (*store)->Lookup(*ns, tokens);
    if (!look.ok()) return look.status().WithContext("trace replay: line " + std::to_string(r.line) + ": lookup: ");
    const uint32_t matched = look->matched_chunks;
    res.lookup_matched_chunks += matched;
    uint32_t loaded = 0;
    if (matched > 0) {
      if (o.verify && own_blocks)
        for (uint32_t i = 0; i < matched; ++i) blocks.Scribble(block_ids[i]);
      Result<Ticket> t = (*store)->Load(*ns, std::span<const int32_t>(tokens.data(), uint64_t{matched} * B),
                                        std::span<const int32_t>(block_ids.data(), matched));
      if (!t.ok()) return t.status().WithContext("trace replay: line " + std::to_string(r.line) + ": load: ");
      (void)t->Wait();  // a partial load is a shorter hit, counted below
      loaded = std::min(t->chunks_done(), matched);
      res.load_short_chunks += matched - loaded;
      if (o.verify && own_blocks)
        for (uint32_t i = 0; i < loaded; ++i)
          if (!blocks.Check(block_ids[i], r.hash_ids[i])) ++res.verify_errors;
    }
    RoundStats& rs = rounds[r.round];
    rs.round = r.round;
    ++rs.requests;
    rs.blocks += n;
    rs.tokens += r.input_length;
    for (uint32_t i = 0; i < loaded; ++i) {
      const uint64_t bt = block_tokens(i);
      const int tier = static_cast<int>(look->chunk_tiers[i]);
      res.tier_hit_blocks[tier] += 1;
      res.tier_hit_tokens[tier] += bt;
      rs.hit_blocks += 1;
      rs.hit_tokens += bt;
    }
    // The engine computes the rest, then saves every chunk (the Store skips the cached ones).
    if (own_blocks)
      for (uint32_t i = loaded; i < n; ++i) blocks.Fill(block_ids[i], r.hash_ids[i]);
    Result<Ticket> s = (*store)->Save(*ns, tokens, block_ids);
    if (!s.ok()) return s.status().WithContext("trace replay: line " + std::to_string(r.line) + ": save: ");
    Status st = s->Wait();
    if (!st.ok() && st.code() != Status::Code::kNoSpace)
      return st.WithContext("trace replay: line " + std::to_string(r.line) + ": save: ");
    res.save_failed_chunks += n - std::min(s->chunks_done(), n);
    if (o.progress) o.progress(k + 1, total);
  }
  res.replay_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  for (auto& [round, rs] : rounds) {
    res.requests += rs.requests;
    res.blocks += rs.blocks;
    res.hit_blocks += rs.hit_blocks;
    res.tokens += rs.tokens;
    res.hit_tokens += rs.hit_tokens;
  }
  if (trace.has_rounds)
    for (auto& [round, rs] : rounds) res.rounds.push_back(rs);
  res.store = (*store)->Stats();
  if (Status c = (*store)->Close(); !c.ok()) return c.WithContext("trace replay: close: ");
  return res;
}

}  // namespace kvtier::bench
