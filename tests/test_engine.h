// TestEngine: engine KV memory for Store tests, with data derived from chunk keys so
// that a chunk served from the wrong place, torn, or stale shows in every byte.
//
// Layout is vLLM's NHD: per layer [K|V][block][token][head][dim]. Fill(block, seed)
// writes a pattern that Holds(block, seed) checks byte for byte; FillPrompt seeds the
// blocks of each chunk from that chunk's key. Not thread-safe: tests give each thread
// its own blocks.
#ifndef KVTIER_TESTS_TEST_ENGINE_H_
#define KVTIER_TESTS_TEST_ENGINE_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "index/chunk_key.h"
#include "kvtier/types.h"

namespace kvtier::test {

inline uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

struct TestEngine {
  KvShape shape;
  uint32_t block_tokens;
  uint32_t num_blocks;
  uint64_t block_bytes;  // one of K/V of one block in one layer
  std::vector<std::vector<uint8_t>> layers;
  KvMemoryLayout layout;

  TestEngine(const KvShape& s, uint32_t bt, uint32_t nb) : shape(s), block_tokens(bt), num_blocks(nb) {
    const uint64_t elem = DTypeSize(s.dtype);
    block_bytes = uint64_t{bt} * s.num_kv_heads * s.head_dim * elem;
    layout.block_tokens = bt;
    layout.num_blocks = nb;
    for (uint32_t l = 0; l < s.num_layers; ++l) {
      layers.emplace_back(2 * block_bytes * nb, 0);
      KvLayerMemory m;
      m.base = layers.back().data();
      m.bytes = layers.back().size();
      m.block_stride = block_bytes;
      m.token_stride = uint64_t{s.num_kv_heads} * s.head_dim * elem;
      m.head_stride = uint64_t{s.head_dim} * elem;
      m.dim_stride = elem;
      m.kv_offset = block_bytes * nb;
      layout.layers.push_back(m);
    }
  }
  uint32_t blocks_per_chunk() const { return shape.chunk_tokens / block_tokens; }
  uint8_t* Part(uint32_t layer, uint32_t kv, uint32_t block) {
    return layers[layer].data() + kv * block_bytes * num_blocks + block * block_bytes;
  }
  static uint8_t Expected(uint64_t seed, uint32_t layer, uint32_t kv, uint64_t i) {
    return static_cast<uint8_t>(Mix(seed ^ (uint64_t{layer} << 20) ^ (uint64_t{kv} << 19) ^ i));
  }
  void Fill(uint32_t block, uint64_t seed) {
    for (uint32_t l = 0; l < shape.num_layers; ++l)
      for (uint32_t kv = 0; kv < 2; ++kv) {
        uint8_t* p = Part(l, kv, block);
        for (uint64_t i = 0; i < block_bytes; ++i) p[i] = Expected(seed, l, kv, i);
      }
  }
  // Every byte of the block (K and V, every layer) matches Fill(block, seed).
  bool Holds(uint32_t block, uint64_t seed) {
    for (uint32_t l = 0; l < shape.num_layers; ++l)
      for (uint32_t kv = 0; kv < 2; ++kv) {
        const uint8_t* p = Part(l, kv, block);
        for (uint64_t i = 0; i < block_bytes; ++i)
          if (p[i] != Expected(seed, l, kv, i)) return false;
      }
    return true;
  }
  void Zero(uint32_t block) {
    for (uint32_t l = 0; l < shape.num_layers; ++l)
      for (uint32_t kv = 0; kv < 2; ++kv) std::memset(Part(l, kv, block), 0, block_bytes);
  }
  bool IsZero(uint32_t block) {
    for (uint32_t l = 0; l < shape.num_layers; ++l)
      for (uint32_t kv = 0; kv < 2; ++kv) {
        const uint8_t* p = Part(l, kv, block);
        for (uint64_t i = 0; i < block_bytes; ++i)
          if (p[i] != 0) return false;
      }
    return true;
  }
};

// Token ids of prompt `id`: distinct prompts share no chunk.
inline std::vector<int32_t> Prompt(uint32_t id, uint32_t tokens) {
  std::vector<int32_t> t(tokens);
  for (uint32_t i = 0; i < tokens; ++i) t[i] = static_cast<int32_t>(Mix(uint64_t{id} << 32 | i) % 50000);
  return t;
}

inline std::vector<int32_t> Blocks(uint32_t first, uint32_t count) {
  std::vector<int32_t> b(count);
  for (uint32_t i = 0; i < count; ++i) b[i] = static_cast<int32_t>(first + i);
  return b;
}

inline std::vector<ChunkKey> KeysOf(const NamespaceSpec& spec, const std::vector<int32_t>& tokens) {
  std::vector<ChunkKey> k;
  EXPECT_TRUE(ComputeChunkKeys(ComputeNamespaceId(spec), spec.shape.chunk_tokens, tokens, {}, &k).ok());
  return k;
}

// Seeds the blocks of each chunk with data derived from that chunk's key.
inline void FillPrompt(TestEngine& e, const std::vector<ChunkKey>& keys, const std::vector<int32_t>& blocks) {
  const uint32_t bpc = e.blocks_per_chunk();
  for (size_t c = 0; c < keys.size(); ++c)
    for (uint32_t b = 0; b < bpc; ++b) e.Fill(blocks[c * bpc + b], keys[c].lo + b);
}

// The first `chunks` chunks' blocks hold exactly what FillPrompt wrote for them.
inline bool HoldsPrompt(TestEngine& e, const std::vector<ChunkKey>& keys, const std::vector<int32_t>& blocks,
                        size_t chunks) {
  const uint32_t bpc = e.blocks_per_chunk();
  for (size_t c = 0; c < chunks; ++c)
    for (uint32_t b = 0; b < bpc; ++b)
      if (!e.Holds(blocks[c * bpc + b], keys[c].lo + b)) return false;
  return true;
}

}  // namespace kvtier::test

#endif  // KVTIER_TESTS_TEST_ENGINE_H_
