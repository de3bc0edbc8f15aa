// End-to-end tests of the embedded Store: real host tier, real Mover, real index.
#include "kvtier/store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "index/chunk_key.h"
#include "tests/test_engine.h"

namespace kvtier {
namespace {

using test::Blocks;
using test::FillPrompt;
using test::HoldsPrompt;
using test::KeysOf;
using test::Prompt;
using test::TestEngine;

KvShape SmallShape() {
  KvShape s;
  s.num_layers = 3;
  s.num_kv_heads = 2;
  s.head_dim = 16;
  s.dtype = DType::kFloat16;
  s.chunk_tokens = 16;
  return s;
}

NamespaceSpec Spec(const std::string& revision = "r1") {
  NamespaceSpec n;
  n.model.name = "test/tiny-llama";
  n.model.revision = revision;
  n.shape = SmallShape();
  return n;
}

std::unique_ptr<Store> OpenStore(uint64_t capacity = 8 << 20, uint32_t workers = 2) {
  StoreConfig c;
  c.host_capacity_bytes = capacity;
  c.worker_threads = workers;
  c.huge_pages = HugePages::kOff;
  auto s = Store::Open(c);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(*s);
}

constexpr uint32_t kBpc = 4;  // chunk 16 tokens / block 4 tokens

TEST(Store, SaveLookupLoadRoundTrip) {
  auto store = OpenStore();
  TestEngine e(SmallShape(), 4, 64);
  auto ns = store->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok()) << ns.status().ToString();
  const auto tokens = Prompt(1, 4 * 16 + 7);  // 4 whole chunks and a partial one
  const auto keys = KeysOf(Spec(), tokens);
  const auto src = Blocks(0, 17), dst = Blocks(32, 17);
  FillPrompt(e, keys, src);

  auto before = store->Lookup(*ns, tokens);
  ASSERT_TRUE(before.ok());
  EXPECT_EQ(before->matched_tokens, 0u);
  EXPECT_EQ(before->total_chunks, 4u);

  auto t = store->Save(*ns, tokens, src);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  ASSERT_TRUE(t->Wait().ok());
  EXPECT_EQ(t->chunks_done(), 4u);
  EXPECT_EQ(t->chunks_requested(), 4u);

  auto after = store->Lookup(*ns, tokens);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->matched_tokens, 64u);
  EXPECT_EQ(after->matched_chunks, 4u);
  ASSERT_EQ(after->chunk_tiers.size(), 4u);
  for (TierId tier : after->chunk_tiers) EXPECT_EQ(tier, TierId::kHost);

  auto l = store->Load(*ns, std::span<const int32_t>(tokens).first(64), dst);
  ASSERT_TRUE(l.ok());
  Status ls = l->Wait();
  ASSERT_TRUE(ls.ok()) << ls.ToString();
  EXPECT_EQ(l->chunks_done(), 4u);
  EXPECT_TRUE(HoldsPrompt(e, keys, dst, 4));
  EXPECT_FALSE(e.Holds(dst[16], keys[0].lo));  // the partial chunk's block was not written
  StoreStats st = store->Stats();
  EXPECT_EQ(st.saved_chunks, 4u);
  EXPECT_EQ(st.loaded_chunks, 4u);
  EXPECT_EQ(st.host_chunks, 4u);
  EXPECT_EQ(st.corrupt_chunks, 0u);
}

TEST(Store, SharedPrefixMatchesUpToTheDivergingChunk) {
  auto store = OpenStore();
  TestEngine e(SmallShape(), 4, 64);
  auto ns = store->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok());
  auto a = Prompt(2, 64);
  auto t = store->Save(*ns, a, Blocks(0, 16));
  ASSERT_TRUE(t.ok() && t->Wait().ok());
  auto b = a;
  b[2 * 16 + 3] += 1;  // diverges inside chunk 2
  auto r = store->Lookup(*ns, b);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->matched_chunks, 2u);
  EXPECT_EQ(r->matched_tokens, 32u);
  // Saving b stores only its two new chunks.
  auto t2 = store->Save(*ns, b, Blocks(16, 16));
  ASSERT_TRUE(t2.ok() && t2->Wait().ok());
  StoreStats st = store->Stats();
  EXPECT_EQ(st.saved_chunks, 6u);
  EXPECT_EQ(st.save_dedup_chunks, 2u);
  EXPECT_EQ(store->Lookup(*ns, b)->matched_chunks, 4u);
}

TEST(Store, LoadBeyondTheCachedPrefixIsPartial) {
  auto store = OpenStore();
  TestEngine e(SmallShape(), 4, 64);
  auto ns = store->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok());
  auto tokens = Prompt(3, 6 * 16);
  auto keys = KeysOf(Spec(), tokens);
  FillPrompt(e, keys, Blocks(0, 24));
  auto t = store->Save(*ns, std::span<const int32_t>(tokens).first(3 * 16), Blocks(0, 12));
  ASSERT_TRUE(t.ok() && t->Wait().ok());
  for (uint32_t b = 32; b < 56; ++b) e.Zero(b);
  auto l = store->Load(*ns, tokens, Blocks(32, 24));
  ASSERT_TRUE(l.ok());
  Status s = l->Wait();
  EXPECT_TRUE(s.IsNotFound()) << s.ToString();
  EXPECT_NE(s.message().find("recompute from token 48"), std::string::npos) << s.message();
  EXPECT_EQ(l->chunks_done(), 3u);
  EXPECT_EQ(l->chunks_requested(), 6u);
  EXPECT_TRUE(HoldsPrompt(e, keys, Blocks(32, 24), 3));
  for (uint32_t b = 44; b < 56; ++b) EXPECT_FALSE(e.Holds(b, keys[3 + (b - 44) / 4].lo + (b - 44) % 4));
}

TEST(Store, RegistrationsOfOneSpecShareAndOtherRevisionsMiss) {
  auto store = OpenStore();
  TestEngine e1(SmallShape(), 4, 32), e2(SmallShape(), 4, 32);
  auto ns1 = store->RegisterNamespace(Spec(), e1.layout);
  auto ns2 = store->RegisterNamespace(Spec(), e2.layout);
  auto other = store->RegisterNamespace(Spec("r2"), e2.layout);
  ASSERT_TRUE(ns1.ok() && ns2.ok() && other.ok());
  auto tokens = Prompt(4, 32);
  auto keys = KeysOf(Spec(), tokens);
  FillPrompt(e1, keys, Blocks(0, 8));
  auto t = store->Save(*ns1, tokens, Blocks(0, 8));
  ASSERT_TRUE(t.ok() && t->Wait().ok());
  EXPECT_EQ(store->Lookup(*ns2, tokens)->matched_chunks, 2u);
  EXPECT_EQ(store->Lookup(*other, tokens)->matched_chunks, 0u);
  auto l = store->Load(*ns2, tokens, Blocks(8, 8));
  ASSERT_TRUE(l.ok() && l->Wait().ok());
  EXPECT_TRUE(HoldsPrompt(e2, keys, Blocks(8, 8), 2));
  auto lo = store->Load(*other, tokens, Blocks(8, 8));
  ASSERT_TRUE(lo.ok());
  EXPECT_TRUE(lo->Wait().IsNotFound());
  EXPECT_EQ(lo->chunks_done(), 0u);
}

TEST(Store, EvictsLeastRecentlyUsedLeavesWhenFull) {
  const uint64_t slot = 4096 + 4096 * 2;  // header page + 6 KiB payload rounded up to 8 KiB
  // SmallShape payload: 3 layers * 2 * 16 tokens * 2 heads * 16 dims * 2 bytes = 6144 bytes.
  auto store = OpenStore(10 * slot);
  TestEngine e(SmallShape(), 4, 64);
  auto ns = store->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok());
  // Five prompts of two chunks fill the ten slots.
  for (uint32_t p = 0; p < 5; ++p) {
    auto tokens = Prompt(100 + p, 32);
    FillPrompt(e, KeysOf(Spec(), tokens), Blocks(0, 8));
    auto t = store->Save(*ns, tokens, Blocks(0, 8));
    ASSERT_TRUE(t.ok());
    ASSERT_TRUE(t->Wait().ok()) << p;
  }
  EXPECT_EQ(store->Stats().evictions, 0u);
  // Touch prompt 100 (the oldest), then save a sixth: prompt 101 must go, leaf first.
  EXPECT_EQ(store->Lookup(*ns, Prompt(100, 32))->matched_chunks, 2u);
  auto t = store->Save(*ns, Prompt(105, 32), Blocks(0, 8));
  ASSERT_TRUE(t.ok() && t->Wait().ok());
  StoreStats st = store->Stats();
  EXPECT_EQ(st.evictions, 2u);
  EXPECT_EQ(st.host_chunks, 10u);
  EXPECT_EQ(store->Lookup(*ns, Prompt(100, 32))->matched_chunks, 2u);
  EXPECT_EQ(store->Lookup(*ns, Prompt(101, 32))->matched_chunks, 0u);
  EXPECT_EQ(store->Lookup(*ns, Prompt(105, 32))->matched_chunks, 2u);
  // Everything still cached loads bit-exact.
  for (uint32_t p : {100u, 102u, 103u, 104u}) {
    auto tokens = Prompt(p, 32);
    auto l = store->Load(*ns, tokens, Blocks(16, 8));
    ASSERT_TRUE(l.ok() && l->Wait().ok()) << p;
    EXPECT_TRUE(HoldsPrompt(e, KeysOf(Spec(), tokens), Blocks(16, 8), 2)) << p;
  }
}

TEST(Store, BadInputIsRefusedWithAClearError) {
  auto store = OpenStore();
  TestEngine e(SmallShape(), 4, 16);
  auto ns = store->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok());
  auto tokens = Prompt(5, 32);

  // Wrong layouts.
  KvMemoryLayout bad = e.layout;
  bad.layers.pop_back();
  EXPECT_TRUE(store->RegisterNamespace(Spec(), bad).status().IsInvalidArgument());
  bad = e.layout;
  bad.layers[1].bytes /= 2;  // short buffer
  auto r = store->RegisterNamespace(Spec(), bad);
  EXPECT_TRUE(r.status().IsInvalidArgument());
  EXPECT_NE(r.status().message().find("bytes"), std::string::npos) << r.status().message();
  bad = e.layout;
  bad.layers[0].base = nullptr;
  EXPECT_TRUE(store->RegisterNamespace(Spec(), bad).status().IsInvalidArgument());
  bad = e.layout;
  bad.block_tokens = 5;  // does not divide chunk_tokens 16
  EXPECT_TRUE(store->RegisterNamespace(Spec(), bad).status().IsInvalidArgument());
  NamespaceSpec huge = Spec();
  huge.shape.chunk_tokens = 1 << 20;  // a chunk larger than the host region
  TestEngine big(SmallShape(), 4, 16);
  EXPECT_TRUE(store->RegisterNamespace(huge, big.layout).status().IsInvalidArgument());
  NamespaceSpec nameless = Spec();
  nameless.model.name.clear();
  EXPECT_TRUE(store->RegisterNamespace(nameless, e.layout).status().IsInvalidArgument());

  // Unknown namespace.
  EXPECT_TRUE(store->Lookup(NamespaceHandle{999}, tokens).status().IsNotFound());
  EXPECT_TRUE(store->Save(NamespaceHandle{0}, tokens, Blocks(0, 8)).status().IsNotFound());

  // Token count vs block ids.
  auto s = store->Save(*ns, tokens, Blocks(0, 7));
  EXPECT_TRUE(s.status().IsInvalidArgument());
  EXPECT_NE(s.status().message().find("need 8 block ids"), std::string::npos) << s.status().message();
  EXPECT_TRUE(store->Load(*ns, tokens, {}).status().IsInvalidArgument());
  std::vector<int32_t> out_of_range = Blocks(0, 8);
  out_of_range[5] = 16;
  EXPECT_TRUE(store->Save(*ns, tokens, out_of_range).status().IsInvalidArgument());
  out_of_range[5] = -1;
  EXPECT_TRUE(store->Load(*ns, tokens, out_of_range).status().IsInvalidArgument());

  // Oversized request.
  std::vector<int32_t> many(StoreConfig{}.max_request_tokens + 16, 1);
  EXPECT_TRUE(store->Lookup(*ns, many).status().IsInvalidArgument());

  // Unsorted extra keys.
  std::vector<ExtraKey> unsorted = {{1, 1, 1}, {0, 1, 1}};
  EXPECT_TRUE(store->Lookup(*ns, tokens, unsorted).status().IsInvalidArgument());

  // None of it stored anything or changed the engine's memory.
  EXPECT_EQ(store->Stats().host_chunks, 0u);
  for (auto& layer : e.layers)
    for (uint8_t b : layer) ASSERT_EQ(b, 0);

  // Fewer tokens than a chunk: nothing to do, done at once.
  auto small = store->Save(*ns, std::span<const int32_t>(tokens).first(5), {});
  ASSERT_TRUE(small.ok());
  EXPECT_TRUE(small->Wait().ok());
  EXPECT_EQ(small->chunks_requested(), 0u);
}

TEST(Store, UseAfterCloseIsRefused) {
  auto store = OpenStore();
  TestEngine e(SmallShape(), 4, 16);
  auto ns = store->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok());
  auto tokens = Prompt(6, 32);
  auto t = store->Save(*ns, tokens, Blocks(0, 8));
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(store->Close().ok());
  EXPECT_TRUE(t->done());  // Close waited for it or cancelled it
  EXPECT_TRUE(t->status().ok() || t->status().code() == Status::Code::kCancelled);
  EXPECT_EQ(store->Lookup(*ns, tokens).status().code(), Status::Code::kClosed);
  EXPECT_EQ(store->Save(*ns, tokens, Blocks(0, 8)).status().code(), Status::Code::kClosed);
  EXPECT_EQ(store->Load(*ns, tokens, Blocks(0, 8)).status().code(), Status::Code::kClosed);
  EXPECT_EQ(store->RegisterNamespace(Spec(), e.layout).status().code(), Status::Code::kClosed);
  EXPECT_TRUE(store->Close().ok());
}

TEST(Store, CancelStopsAtAChunkBoundary) {
  auto store = OpenStore(64 << 20, 1);
  KvShape shape = SmallShape();
  shape.head_dim = 512;  // 192 KiB chunks: slow enough to cancel mid-way
  NamespaceSpec spec = Spec();
  spec.shape = shape;
  TestEngine e(shape, 4, 512);
  auto ns = store->RegisterNamespace(spec, e.layout);
  ASSERT_TRUE(ns.ok());
  auto tokens = Prompt(7, 128 * 16);
  auto keys = KeysOf(spec, tokens);
  FillPrompt(e, keys, Blocks(0, 512));
  auto t = store->Save(*ns, tokens, Blocks(0, 512));
  ASSERT_TRUE(t.ok());
  t->Cancel();
  Status s = t->Wait();
  ASSERT_TRUE(s.ok() || s.code() == Status::Code::kCancelled) << s.ToString();
  const uint32_t saved = t->chunks_done();
  if (s.code() == Status::Code::kCancelled) {
    EXPECT_LT(saved, 128u);
  }
  // Exactly the reported prefix is cached, and it loads bit-exact.
  EXPECT_EQ(store->Lookup(*ns, tokens)->matched_chunks, saved);
  for (uint32_t b = 0; b < 512; ++b) e.Zero(b);
  auto l = store->Load(*ns, std::span<const int32_t>(tokens).first(saved * 16), Blocks(0, saved * 4));
  ASSERT_TRUE(l.ok());
  ASSERT_TRUE(l->Wait().ok());
  EXPECT_TRUE(HoldsPrompt(e, keys, Blocks(0, 512), saved));
}

// Many threads save, look up and load overlapping prompts in a store too small for
// them, so evictions run all the time. Every chunk a load reports as done must hold
// exactly the bytes saved for it.
TEST(Store, ConcurrentTrafficNeverServesWrongBytes) {
  auto store = OpenStore(48 * 8192, 3);
  constexpr int kThreads = 4;
  constexpr uint32_t kChunks = 4;
  TestEngine e(SmallShape(), 4, kThreads * 2 * kChunks * kBpc);
  auto ns = store->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok());
  std::atomic<uint64_t> loads_ok{0}, chunks_loaded{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < kThreads; ++th) {
    threads.emplace_back([&, th] {
      std::mt19937 rng(th);
      const auto src = Blocks(th * 2 * kChunks * kBpc, kChunks * kBpc);
      const auto dst = Blocks(th * 2 * kChunks * kBpc + kChunks * kBpc, kChunks * kBpc);
      for (int it = 0; it < 300; ++it) {
        // Prompts share prefixes: prompt p's chunk i depends on p / 2^(kChunks-1-i).
        const uint32_t p = rng() % 32;
        std::vector<int32_t> tokens(kChunks * 16);
        for (uint32_t c = 0; c < kChunks; ++c) {
          std::vector<int32_t> part = Prompt(p >> (kChunks - 1 - c), 16);
          std::copy(part.begin(), part.end(), tokens.begin() + c * 16);
        }
        auto keys = KeysOf(Spec(), tokens);
        auto lk = store->Lookup(*ns, tokens);
        ASSERT_TRUE(lk.ok());
        if (lk->matched_chunks < kChunks || rng() % 4 == 0) {
          FillPrompt(e, keys, src);
          auto t = store->Save(*ns, tokens, src);
          ASSERT_TRUE(t.ok());
          Status s = t->Wait();
          ASSERT_TRUE(s.ok() || s.code() == Status::Code::kNoSpace) << s.ToString();
        } else {
          for (int32_t b : dst) e.Zero(static_cast<uint32_t>(b));
          auto t = store->Load(*ns, tokens, dst);
          ASSERT_TRUE(t.ok());
          Status s = t->Wait();
          ASSERT_TRUE(s.ok() || s.IsNotFound()) << s.ToString();
          if (s.ok()) loads_ok++;
          chunks_loaded += t->chunks_done();
          if (!HoldsPrompt(e, keys, dst, t->chunks_done())) wrong++;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_GT(chunks_loaded.load(), 0u);
  StoreStats st = store->Stats();
  EXPECT_GT(st.evictions, 0u);
  EXPECT_EQ(st.corrupt_chunks, 0u);
  EXPECT_LE(st.host_used_bytes, st.host_capacity_bytes);
  EXPECT_EQ(st.host_chunks, st.index_chunks);
}

TEST(Store, OpenRefusesBadConfig) {
  StoreConfig c;
  c.worker_threads = 0;
  EXPECT_TRUE(Store::Open(c).status().IsInvalidArgument());
  c = StoreConfig{};
  c.host_capacity_bytes = 10;
  EXPECT_TRUE(Store::Open(c).status().IsInvalidArgument());
}

}  // namespace
}  // namespace kvtier
