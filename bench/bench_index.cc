// kvtier bench index: how long a lookup of a long, fully cached prompt takes in a big
// index. The index holds --chunks chunks: the measured prompt plus a random forest of
// other prompts (branching from the root or from earlier chunks, as shared prefixes
// do). Two figures: `match` (RadixIndex::Match over the prompt's chunk keys, what the
// Store does once keys are known) and `lookup` (hashing the tokens into keys, then
// Match: the whole of Store::Lookup's work on the index).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "bench/bench.h"
#include "index/chunk_key.h"
#include "index/radix_index.h"

namespace kvtier::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Percentiles {
  double median, p99;
};

Percentiles Summarize(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[std::min(us.size() - 1, us.size() * 99 / 100)]};
}

}  // namespace

int RunBenchIndex(const std::vector<std::string>& argv) {
  Result<Args> a = Args::Parse(argv, {"chunks", "prompt-tokens", "chunk-tokens", "iters"}, {"json"});
  if (!a.ok()) {
    std::fprintf(stderr, "kvtier bench index: %s\n", a.status().message().c_str());
    return 2;
  }
  auto chunks = a->GetUint("chunks", 250000);
  auto prompt_tokens = a->GetUint("prompt-tokens", 131072);
  auto chunk_tokens = a->GetUint("chunk-tokens", 256);
  auto iters = a->GetUint("iters", 300);
  for (const Status* s : {&chunks.status(), &prompt_tokens.status(), &chunk_tokens.status(), &iters.status()}) {
    if (!s->ok()) {
      std::fprintf(stderr, "kvtier bench index: %s\n", s->message().c_str());
      return 2;
    }
  }
  const uint64_t prompt_chunks = *prompt_tokens / std::max<uint64_t>(*chunk_tokens, 1);
  if (*chunk_tokens == 0 || prompt_chunks == 0 || *chunks < prompt_chunks || *iters == 0) {
    std::fprintf(stderr,
                 "kvtier bench index: need --chunk-tokens > 0, --prompt-tokens >= --chunk-tokens, --chunks >= the "
                 "prompt's %llu chunks, --iters > 0\n",
                 static_cast<unsigned long long>(prompt_chunks));
    return 2;
  }
  const bool json = a->Has("json");

  NamespaceSpec spec;
  spec.model.name = "bench/index";
  spec.model.revision = "bench";
  spec.shape.num_layers = 32;
  spec.shape.num_kv_heads = 8;
  spec.shape.head_dim = 128;
  spec.shape.chunk_tokens = static_cast<uint32_t>(*chunk_tokens);
  const NamespaceId ns = ComputeNamespaceId(spec);

  LogicalClock clock;
  RadixIndex index(&clock);
  std::mt19937_64 rng(7);
  std::vector<int32_t> prompt(*prompt_tokens);
  for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % 128256);
  std::vector<ChunkKey> keys;
  if (!ComputeChunkKeys(ns, spec.shape.chunk_tokens, prompt, {}, &keys).ok()) return 1;
  std::optional<ChunkKey> parent;
  for (const ChunkKey& k : keys) {
    if (!index.Insert(parent, k, TierId::kHost).ok()) return 1;
    parent = k;
  }
  // The rest: chains of 1..64 chunks from the root or from a random earlier chunk.
  std::vector<ChunkKey> all(keys);
  all.reserve(*chunks);
  std::vector<int32_t> tok(spec.shape.chunk_tokens);
  uint64_t counter = 0;
  while (all.size() < *chunks) {
    std::optional<ChunkKey> p;
    Hash128 chain = ns;
    if (rng() % 4 != 0) {
      p = all[rng() % all.size()];
      chain = *p;
    }
    const uint64_t len = std::min<uint64_t>(1 + rng() % 64, *chunks - all.size());
    for (uint64_t i = 0; i < len; ++i) {
      for (int32_t& t : tok) t = static_cast<int32_t>(rng() % 128256);
      tok[0] = static_cast<int32_t>(++counter);
      ChunkKey k = NextChunkKey(chain, tok, {});
      if (!index.Insert(p, k, TierId::kHost).ok()) return 1;
      all.push_back(k);
      p = k;
      chain = k;
    }
  }

  std::vector<double> match_us, lookup_us;
  std::vector<ChunkKey> scratch;
  size_t matched = 0;
  for (uint64_t i = 0; i < *iters; ++i) {
    auto t0 = Clock::now();
    matched = index.Match(keys, MatchOptions{});
    auto t1 = Clock::now();
    if (!ComputeChunkKeys(ns, spec.shape.chunk_tokens, prompt, {}, &scratch).ok()) return 1;
    size_t m2 = index.Match(scratch, MatchOptions{});
    auto t2 = Clock::now();
    if (matched != keys.size() || m2 != keys.size()) {
      std::fprintf(stderr, "kvtier bench index: matched %zu of %zu chunks; the index is broken\n", matched,
                   keys.size());
      return 1;
    }
    match_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    lookup_us.push_back(std::chrono::duration<double, std::micro>(t2 - t1).count());
  }
  const double meta = static_cast<double>(index.MemoryUsage()) / static_cast<double>(index.size());
  for (int op = 0; op < 2; ++op) {
    Percentiles p = Summarize(op == 0 ? match_us : lookup_us);
    Report r(json);
    r.Add("bench", "index")
        .Add("op", op == 0 ? "match" : "lookup")
        .Add("prompt_tokens", *prompt_tokens)
        .Add("chunk_tokens", *chunk_tokens)
        .Add("matched_chunks", uint64_t{matched})
        .Add("index_chunks", uint64_t{index.size()})
        .Add("median_us", p.median, 2)
        .Add("p99_us", p.p99, 2)
        .Add("target_median_us", 50.0, 0)
        .Add("metadata_bytes_per_chunk", meta, 1)
        .Add("iters", *iters);
    r.Print();
  }
  return 0;
}

}  // namespace kvtier::bench
