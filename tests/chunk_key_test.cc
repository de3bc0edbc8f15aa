#include "index/chunk_key.h"

#include <gtest/gtest.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

namespace kvtier {
namespace {

NamespaceSpec BaseSpec() {
  NamespaceSpec s;
  s.model.name = "meta-llama/Llama-3.1-8B";
  s.model.revision = "0e9e39f";
  s.model.tokenizer_id = "llama3";
  s.shape.num_layers = 32;
  s.shape.num_kv_heads = 8;
  s.shape.head_dim = 128;
  s.shape.dtype = DType::kBFloat16;
  s.shape.chunk_tokens = 256;
  return s;
}

std::vector<int32_t> Tokens(size_t n, int32_t seed) {
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((i * 2654435761u) ^ static_cast<uint32_t>(seed));
  return t;
}

TEST(ChunkKey, EveryIdentityFieldChangesTheNamespace) {
  std::vector<std::function<void(NamespaceSpec&)>> changes = {
      [](NamespaceSpec& s) { s.model.name += "x"; },
      [](NamespaceSpec& s) { s.model.revision = "other"; },
      [](NamespaceSpec& s) { s.model.weights_digest = "sha256:abc"; },
      [](NamespaceSpec& s) { s.model.tokenizer_id = "other"; },
      [](NamespaceSpec& s) { s.shape.num_layers = 33; },
      [](NamespaceSpec& s) { s.shape.num_kv_heads = 4; },
      [](NamespaceSpec& s) { s.shape.head_dim = 64; },
      [](NamespaceSpec& s) { s.shape.dtype = DType::kFloat16; },
      [](NamespaceSpec& s) { s.shape.chunk_tokens = 128; },
      [](NamespaceSpec& s) { s.shape.tp_size = 2; },
      [](NamespaceSpec& s) { s.shape.tp_size = 2, s.shape.tp_rank = 1; },
      [](NamespaceSpec& s) { s.adapter_id = "lora-a"; },
      [](NamespaceSpec& s) { s.tenant_salt = "tenant-b"; },
      [](NamespaceSpec& s) { s.shape.mla = true, s.shape.num_kv_heads = 1; },
  };
  std::set<std::string> ids;
  ids.insert(ComputeNamespaceId(BaseSpec()).ToHex());
  const std::vector<int32_t> toks = Tokens(256, 1);
  std::vector<ChunkKey> base_keys;
  ASSERT_TRUE(ComputeChunkKeys(ComputeNamespaceId(BaseSpec()), 256, toks, {}, &base_keys).ok());
  for (size_t i = 0; i < changes.size(); ++i) {
    NamespaceSpec s = BaseSpec();
    changes[i](s);
    ASSERT_TRUE(ValidateNamespaceSpec(s).ok()) << i;
    NamespaceId id = ComputeNamespaceId(s);
    EXPECT_TRUE(ids.insert(id.ToHex()).second) << "change " << i << " did not change the namespace id";
    std::vector<ChunkKey> keys;
    ASSERT_TRUE(ComputeChunkKeys(id, 256, toks, {}, &keys).ok());
    EXPECT_FALSE(keys[0] == base_keys[0]) << i;
  }
}

TEST(ChunkKey, FieldBoundariesAreUnambiguous) {
  NamespaceSpec a = BaseSpec(), b = BaseSpec();
  a.model.name = "ab";
  a.model.revision = "c";
  b.model.name = "a";
  b.model.revision = "bc";
  EXPECT_FALSE(ComputeNamespaceId(a) == ComputeNamespaceId(b));
}

TEST(ChunkKey, MlaIgnoresTensorParallelRank) {
  NamespaceSpec a = BaseSpec();
  a.shape.mla = true;
  a.shape.num_kv_heads = 1;
  a.shape.tp_size = 4;
  NamespaceSpec b = a;
  b.shape.tp_rank = 3;
  EXPECT_TRUE(ComputeNamespaceId(a) == ComputeNamespaceId(b));
  a.shape.mla = b.shape.mla = false;
  EXPECT_FALSE(ComputeNamespaceId(a) == ComputeNamespaceId(b));
}

TEST(ChunkKey, KeysAreChainedAndDeterministic) {
  const NamespaceId ns = ComputeNamespaceId(BaseSpec());
  std::vector<int32_t> t = Tokens(4 * 16 + 5, 3);
  std::vector<ChunkKey> k1, k2;
  ASSERT_TRUE(ComputeChunkKeys(ns, 16, t, {}, &k1).ok());
  ASSERT_EQ(k1.size(), 4u);  // the trailing partial chunk gets no key
  ASSERT_TRUE(ComputeChunkKeys(ns, 16, t, {}, &k2).ok());
  EXPECT_EQ(k1, k2);
  // key[i] = H(key[i-1], tokens of chunk i)
  Hash128 parent = ns;
  for (size_t i = 0; i < k1.size(); ++i) {
    EXPECT_EQ(k1[i], NextChunkKey(parent, std::span<const int32_t>(t).subspan(i * 16, 16), {}));
    parent = k1[i];
  }
  // Changing one token of chunk 2 keeps keys 0..1 and changes 2..3.
  t[2 * 16 + 7] ^= 1;
  ASSERT_TRUE(ComputeChunkKeys(ns, 16, t, {}, &k2).ok());
  EXPECT_EQ(k1[0], k2[0]);
  EXPECT_EQ(k1[1], k2[1]);
  EXPECT_FALSE(k1[2] == k2[2]);
  EXPECT_FALSE(k1[3] == k2[3]);
}

TEST(ChunkKey, ExtraKeysBindToTheirChunk) {
  const NamespaceId ns = ComputeNamespaceId(BaseSpec());
  std::vector<int32_t> t = Tokens(3 * 16, 4);
  std::vector<ChunkKey> plain, with_image, other_image;
  ASSERT_TRUE(ComputeChunkKeys(ns, 16, t, {}, &plain).ok());
  std::vector<ExtraKey> x = {{1, 0x1111, 0x2222}};
  ASSERT_TRUE(ComputeChunkKeys(ns, 16, t, x, &with_image).ok());
  x[0].lo = 0x3333;
  ASSERT_TRUE(ComputeChunkKeys(ns, 16, t, x, &other_image).ok());
  EXPECT_EQ(plain[0], with_image[0]);
  EXPECT_FALSE(plain[1] == with_image[1]);
  EXPECT_FALSE(with_image[1] == other_image[1]);
  EXPECT_FALSE(with_image[2] == other_image[2]);  // the chain carries the difference on
  std::vector<ExtraKey> unsorted = {{2, 1, 1}, {1, 1, 1}};
  EXPECT_TRUE(ComputeChunkKeys(ns, 16, t, unsorted, &plain).IsInvalidArgument());
}

TEST(ChunkKey, ValidateNamesTheField) {
  NamespaceSpec s = BaseSpec();
  s.model.name.clear();
  Status st = ValidateNamespaceSpec(s);
  EXPECT_TRUE(st.IsInvalidArgument());
  EXPECT_NE(st.message().find("model.name"), std::string::npos);
  s = BaseSpec();
  s.shape.tp_rank = 2;
  st = ValidateNamespaceSpec(s);
  EXPECT_NE(st.message().find("tp_rank"), std::string::npos);
  s = BaseSpec();
  s.shape.dtype = static_cast<DType>(99);
  EXPECT_NE(ValidateNamespaceSpec(s).message().find("dtype"), std::string::npos);
  s = BaseSpec();
  s.model.revision.clear();
  EXPECT_TRUE(ValidateNamespaceSpec(s).IsInvalidArgument());
  s.model.weights_digest = "sha256:00";
  EXPECT_TRUE(ValidateNamespaceSpec(s).ok());
}

}  // namespace
}  // namespace kvtier
