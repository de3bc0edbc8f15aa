// The offload-vs-recompute model (bench/model_profiles.h) against figures worked out by
// hand, and the PNG writer of its plot (bench/plot_png.h) against the PNG format.
#include "bench/model_profiles.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "bench/plot_png.h"

namespace kvtier::bench {
namespace {

const ModelProfile& Model(const std::string& name) {
  for (const ModelProfile& m : BuiltinModels())
    if (m.name == name) return m;
  ADD_FAILURE() << "no profile " << name;
  return BuiltinModels().front();
}

TEST(ModelProfiles, KvBytesPerTokenMatchTheShapes) {
  EXPECT_EQ(KvBytesPerToken(Model("llama3-8b")), 128u * 1024);    // 32 x 2 x 8 x 128 x 2 B
  EXPECT_EQ(KvBytesPerToken(Model("llama3-70b")), 320u * 1024);   // 80 x 2 x 8 x 128 x 2 B
  EXPECT_EQ(KvBytesPerToken(Model("qwen3-30b-a3b")), 96u * 1024); // 48 x 2 x 4 x 128 x 2 B
  EXPECT_EQ(KvBytesPerToken(Model("mistral-7b")), 128u * 1024);
  EXPECT_EQ(KvBytesPerToken(Model("deepseek-v3")), 70272u);       // 61 x (512 + 64) x 2 B, one latent
}

TEST(ModelProfiles, ShapeAgreesWithTheStoresChunkSize) {
  for (const ModelProfile& m : BuiltinModels()) {
    const KvShape s = ShapeOf(m, 256);
    EXPECT_EQ(ChunkPayloadBytes(s), KvBytesPerToken(m) * 256) << m.name;
  }
}

TEST(ModelProfiles, SlidingWindowCapsTheKv) {
  const ModelProfile& m = Model("mistral-7b");
  EXPECT_EQ(KvTokens(m, 1024), 1024u);
  EXPECT_EQ(KvTokens(m, 4096), 4096u);
  EXPECT_EQ(KvTokens(m, 131072), 4096u);
  EXPECT_EQ(KvTokens(Model("llama3-8b"), 131072), 131072u);
}

TEST(ModelProfiles, PrefillFlopsByHand) {
  const ModelProfile& m = Model("llama3-8b");
  // 1024 tokens: 2 x 6.98e9 x 1024 + 2 x (128 + 128) x 32 heads x 32 layers x 1024 x 1025 / 2.
  const double want = 2 * 6.98e9 * 1024 + 2.0 * 256 * 32 * 32 * (1024.0 * 1025 / 2);
  EXPECT_NEAR(PrefillFlops(m, 0, 1024), want, want * 1e-12);
  // Splitting a prompt changes nothing: [0, a) + [a, b) = [0, b).
  EXPECT_NEAR(PrefillFlops(m, 0, 700) + PrefillFlops(m, 700, 5000), PrefillFlops(m, 0, 5000), 1e3);
  EXPECT_EQ(PrefillFlops(m, 10, 10), 0);
}

TEST(ModelProfiles, WindowLimitsAttentionFlops) {
  const ModelProfile& w = Model("mistral-7b");
  ModelProfile full = w;
  full.window = 0;
  EXPECT_DOUBLE_EQ(PrefillFlops(w, 0, 4096), PrefillFlops(full, 0, 4096));
  EXPECT_LT(PrefillFlops(w, 0, 32768), PrefillFlops(full, 0, 32768));
  // Past the window every new token attends to exactly `window` keys.
  const double per_token_past_window = 2 * w.matmul_params + 2.0 * 256 * 32 * 32 * 4096;
  EXPECT_NEAR(PrefillFlops(w, 10000, 10001), per_token_past_window, 1e3);
}

TEST(ModelProfiles, RecomputeAndDecodeSeconds) {
  const ModelProfile& m = Model("llama3-8b");
  GpuModel g{BuiltinGpus()[0], 1, 0.5, 0.8};
  EXPECT_NEAR(PrefillSeconds(m, g, 0, 1024), PrefillFlops(m, 0, 1024) / (720e12 * 0.5), 1e-12);
  g.gpus = 4;
  EXPECT_NEAR(PrefillSeconds(m, g, 0, 1024) * 4, PrefillFlops(m, 0, 1024) / (720e12 * 0.5), 1e-12);
  g.gpus = 1;
  // One decode step after 1000 tokens reads the weights and 1000 tokens of KV.
  const double step = (8.03e9 * 2 + 1000.0 * 131072) / (3.35e12 * 0.8);
  EXPECT_NEAR(DecodeSeconds(m, g, 1000, 1), step, step * 1e-12);
  EXPECT_GT(DecodeSeconds(m, g, 1000, 2), 2 * step);
  // The window's decode sum agrees with the closed form while inside the window.
  const ModelProfile& w = Model("mistral-7b");
  ModelProfile full = w;
  full.window = 0;
  EXPECT_NEAR(DecodeSeconds(w, g, 1000, 500), DecodeSeconds(full, g, 1000, 500), 1e-9);
  EXPECT_LT(DecodeSeconds(w, g, 100000, 100), DecodeSeconds(full, g, 100000, 100));
}

TEST(PlotPng, WritesAValidPng) {
  PlotSpec spec;
  spec.title = "TEST";
  spec.x_label = "TOKENS";
  spec.y_label = "S";
  PlotPanel p;
  p.title = "panel";
  PlotSeries s;
  s.label = "load";
  s.rgb = 0x1f77b4;
  s.x = {1024, 2048, 4096};
  s.y = {0.01, 0.02, 0.05};
  s.measured = {true, true, false};
  p.series.push_back(s);
  s.label = "recompute";
  s.stroke = PlotSeries::Stroke::kDashed;
  s.y = {0.02, 0.05, 0.2};
  p.series.push_back(s);
  spec.panels.push_back(p);
  const std::string path = (std::filesystem::temp_directory_path() / "kvtier-plot-test.png").string();
  ASSERT_TRUE(WriteLogLogPng(path, spec).ok());
  std::ifstream f(path, std::ios::binary);
  std::vector<unsigned char> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::remove(path.c_str());
  ASSERT_GT(b.size(), 8u + 25 + 12);
  const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  EXPECT_TRUE(std::equal(sig, sig + 8, b.begin()));
  // IHDR: length 13, then the type, width, height, 8-bit truecolour; its CRC covers type + data.
  EXPECT_EQ(b[11], 13);
  EXPECT_EQ(std::string(b.begin() + 12, b.begin() + 16), "IHDR");
  EXPECT_EQ(b[24], 8);
  EXPECT_EQ(b[25], 2);
  const uLong crc = crc32(0L, b.data() + 12, 17);
  const uLong stored = (uLong{b[29]} << 24) | (uLong{b[30]} << 16) | (uLong{b[31]} << 8) | b[32];
  EXPECT_EQ(crc, stored);
  EXPECT_EQ(std::string(b.end() - 8, b.end() - 4), "IEND");
  // Nothing to draw is an error, not an empty image.
  EXPECT_FALSE(WriteLogLogPng(path, PlotSpec()).ok());
}

}  // namespace
}  // namespace kvtier::bench
