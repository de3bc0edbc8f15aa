// Google Benchmark micro-benchmarks of the pieces on every request's path: chunk keys,
// the radix index, the chunk codec (header and checksum), the copy of KV bytes.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "common/copy.h"

#include "index/chunk_key.h"
#include "index/radix_index.h"
#include "tiers/chunk_format.h"

namespace kvtier {
namespace {

NamespaceId Ns() {
  NamespaceSpec s;
  s.model.name = "bench";
  s.model.revision = "1";
  s.shape.num_layers = 32;
  s.shape.num_kv_heads = 8;
  s.shape.head_dim = 128;
  return ComputeNamespaceId(s);
}

std::vector<int32_t> Tokens(size_t n) {
  std::mt19937 rng(1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % 128256);
  return t;
}

void BM_ChunkKeys(benchmark::State& state) {
  const auto tokens = Tokens(state.range(0));
  const NamespaceId ns = Ns();
  std::vector<ChunkKey> keys;
  for (auto _ : state) {
    benchmark::DoNotOptimize(ComputeChunkKeys(ns, 256, tokens, {}, &keys).ok());
  }
  state.SetBytesProcessed(state.iterations() * tokens.size() * sizeof(int32_t));
}
BENCHMARK(BM_ChunkKeys)->Arg(4096)->Arg(131072);

void BM_RadixMatch(benchmark::State& state) {
  LogicalClock clock;
  RadixIndex index(&clock);
  std::vector<ChunkKey> keys;
  (void)ComputeChunkKeys(Ns(), 256, Tokens(state.range(0) * 256), {}, &keys);
  std::optional<ChunkKey> parent;
  for (const ChunkKey& k : keys) {
    (void)index.Insert(parent, k, TierId::kHost);
    parent = k;
  }
  for (auto _ : state) benchmark::DoNotOptimize(index.Match(keys, MatchOptions{}));
  state.SetItemsProcessed(state.iterations() * keys.size());
}
BENCHMARK(BM_RadixMatch)->Arg(16)->Arg(512);

void BM_RadixInsertErase(benchmark::State& state) {
  LogicalClock clock;
  RadixIndex index(&clock);
  std::vector<ChunkKey> keys;
  (void)ComputeChunkKeys(Ns(), 256, Tokens(64 * 256), {}, &keys);
  std::vector<RemovedChunk> removed;
  for (auto _ : state) {
    std::optional<ChunkKey> parent;
    for (const ChunkKey& k : keys) {
      (void)index.Insert(parent, k, TierId::kHost);
      parent = k;
    }
    removed.clear();
    (void)index.Erase(keys[0], &removed);
  }
  state.SetItemsProcessed(state.iterations() * keys.size());
}
BENCHMARK(BM_RadixInsertErase);

void BM_ChunkHeaderEncodeDecode(benchmark::State& state) {
  KvShape shape;
  shape.num_layers = 32;
  shape.num_kv_heads = 8;
  shape.head_dim = 128;
  ChunkKey key;
  key.lo = 1;
  uint8_t buf[kChunkHeaderBytes];
  for (auto _ : state) {
    EncodeChunkHeader(MakeChunkHeader(Ns(), key, shape), buf);
    benchmark::DoNotOptimize(DecodeChunkHeader(std::span<const uint8_t>(buf, sizeof buf)).ok());
  }
}
BENCHMARK(BM_ChunkHeaderEncodeDecode);

void BM_ChunkChecksum(benchmark::State& state) {
  std::vector<uint8_t> payload(state.range(0), 0x5a);
  for (auto _ : state) benchmark::DoNotOptimize(ChunkChecksum(payload.data(), payload.size()));
  state.SetBytesProcessed(state.iterations() * payload.size());
}
BENCHMARK(BM_ChunkChecksum)->Arg(2 << 20)->Arg(32 << 20);

// Copies of 18 KiB pieces (one DeepSeek-V3 engine block of one layer) over 256 MiB, with the
// destination `distance` bytes after the source modulo 4 KiB: memcpy (arg 0) against
// CopyBytes (arg 1). Distances 1-31 are memcpy's slow case on some machines (common/copy.h).
void BM_CopyAtDistance(benchmark::State& state) {
  const size_t distance = static_cast<size_t>(state.range(0));
  const bool ours = state.range(1) != 0;
  constexpr size_t kPiece = 18432, kTotal = 256u << 20;
  auto* src = static_cast<uint8_t*>(std::aligned_alloc(4096, kTotal + 4096));
  auto* dst = static_cast<uint8_t*>(std::aligned_alloc(4096, kTotal + 4096));
  std::memset(src, 1, kTotal + 4096);
  std::memset(dst, 2, kTotal + 4096);
  for (auto _ : state) {
    for (size_t off = 0; off + kPiece <= kTotal; off += kPiece) {
      if (ours) {
        CopyBytes(dst + distance + off, src + off, kPiece);
      } else {
        std::memcpy(dst + distance + off, src + off, kPiece);
      }
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * (kTotal / kPiece) * kPiece);
  std::free(src);
  std::free(dst);
}
BENCHMARK(BM_CopyAtDistance)->ArgNames({"distance", "copybytes"})->ArgsProduct({{0, 16, 64}, {0, 1}})
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvtier

BENCHMARK_MAIN();
