#include "bench/model_profiles.h"

#include <algorithm>

namespace kvtier::bench {

// Shapes from each checkpoint's config.json; parameter counts from those shapes (see
// docs/recompute.md for the arithmetic).
const std::vector<ModelProfile>& BuiltinModels() {
  static const std::vector<ModelProfile> models = [] {
    std::vector<ModelProfile> v;
    ModelProfile m;
    m.name = "llama3-8b";
    m.hf_id = "meta-llama/Meta-Llama-3-8B";
    m.layers = 32, m.q_heads = 32, m.kv_heads = 8, m.head_dim = 128, m.qk_dim = 128, m.v_dim = 128;
    m.total_params = 8.03e9, m.active_params = 8.03e9, m.matmul_params = 6.98e9, m.weight_bytes = 2, m.gpus = 1;
    m.note = "dense, GQA 32q/8kv";
    v.push_back(m);

    m = ModelProfile();
    m.name = "llama3-70b";
    m.hf_id = "meta-llama/Meta-Llama-3-70B";
    m.layers = 80, m.q_heads = 64, m.kv_heads = 8, m.head_dim = 128, m.qk_dim = 128, m.v_dim = 128;
    m.total_params = 70.55e9, m.active_params = 70.55e9, m.matmul_params = 68.45e9, m.weight_bytes = 2;
    m.gpus = 4;
    m.note = "dense, GQA 64q/8kv, TP4";
    v.push_back(m);

    m = ModelProfile();
    m.name = "qwen3-30b-a3b";
    m.hf_id = "Qwen/Qwen3-30B-A3B";
    m.layers = 48, m.q_heads = 32, m.kv_heads = 4, m.head_dim = 128, m.qk_dim = 128, m.v_dim = 128;
    m.total_params = 30.5e9, m.active_params = 3.35e9, m.matmul_params = 2.73e9, m.weight_bytes = 2, m.gpus = 1;
    m.note = "MoE 128 experts, 8 active (~3.3B active), GQA 32q/4kv";
    v.push_back(m);

    m = ModelProfile();
    m.name = "mistral-7b";
    m.hf_id = "mistralai/Mistral-7B-v0.1";
    m.layers = 32, m.q_heads = 32, m.kv_heads = 8, m.head_dim = 128, m.qk_dim = 128, m.v_dim = 128;
    m.window = 4096;
    m.total_params = 7.24e9, m.active_params = 7.24e9, m.matmul_params = 6.98e9, m.weight_bytes = 2, m.gpus = 1;
    m.note = "sliding window 4096: KV of at most 4096 tokens per layer";
    v.push_back(m);

    m = ModelProfile();
    m.name = "deepseek-v3";
    m.hf_id = "deepseek-ai/DeepSeek-V3";
    m.layers = 61, m.q_heads = 128, m.kv_heads = 1, m.head_dim = 576, m.qk_dim = 192, m.v_dim = 128;
    m.mla = true;
    m.total_params = 671e9, m.active_params = 37e9, m.matmul_params = 35.1e9, m.weight_bytes = 1, m.gpus = 8;
    m.note = "MLA latent 512+64 per token and layer, MoE ~37B active, fp8 weights, 8 GPUs";
    v.push_back(m);
    return v;
  }();
  return models;
}

// Dense BF16 GEMM throughput as measured and published (docs/recompute.md gives the
// source); H200 has the H100's die and clocks, and more and faster HBM.
const std::vector<GpuProfile>& BuiltinGpus() {
  static const std::vector<GpuProfile> gpus = {
      {"H100-SXM", 720, 989, 3.35, 2.50},
      {"H200-SXM", 720, 989, 4.80, 3.50},
  };
  return gpus;
}

uint64_t KvBytesPerToken(const ModelProfile& m) {
  const uint64_t per_layer = m.mla ? uint64_t{m.head_dim} : 2ull * m.kv_heads * m.head_dim;
  return per_layer * m.layers * DTypeSize(m.dtype);
}

uint64_t KvTokens(const ModelProfile& m, uint64_t context_tokens) {
  return m.window ? std::min<uint64_t>(context_tokens, m.window) : context_tokens;
}

KvShape ShapeOf(const ModelProfile& m, uint32_t chunk_tokens) {
  KvShape s;
  s.num_layers = m.layers;
  s.num_kv_heads = m.mla ? 1 : m.kv_heads;
  s.head_dim = m.head_dim;
  s.dtype = m.dtype;
  s.chunk_tokens = chunk_tokens;
  s.mla = m.mla;
  return s;
}

namespace {

// Query-key pairs a causal prompt of n tokens computes: sum over queries of the keys each
// one sees (itself and the earlier ones, at most `window`).
double AttentionPairs(uint64_t n, uint32_t window) {
  const double x = static_cast<double>(n);
  if (window == 0 || n <= window) return x * (x + 1) / 2;
  const double w = static_cast<double>(window);
  return w * (w + 1) / 2 + (x - w) * w;
}

}  // namespace

double PrefillFlops(const ModelProfile& m, uint64_t from, uint64_t to) {
  if (to <= from) return 0;
  const double tokens = static_cast<double>(to - from);
  const double linear = 2.0 * m.matmul_params * tokens;
  const double pairs = AttentionPairs(to, m.window) - AttentionPairs(from, m.window);
  // Per pair and head: QK^T is qk_dim multiply-adds, PV is v_dim.
  const double attention = 2.0 * (m.qk_dim + m.v_dim) * static_cast<double>(m.q_heads) * m.layers * pairs;
  return linear + attention;
}

double PrefillSeconds(const ModelProfile& m, const GpuModel& g, uint64_t from, uint64_t to) {
  const double flops_per_s = g.gpu.dense_bf16_tflops * 1e12 * g.mfu * g.gpus;
  return flops_per_s > 0 ? PrefillFlops(m, from, to) / flops_per_s : 0;
}

double DecodeSeconds(const ModelProfile& m, const GpuModel& g, uint64_t input, uint64_t output) {
  const double bw = g.gpu.hbm_tbps * 1e12 * g.hbm_efficiency * g.gpus;
  if (bw <= 0 || output == 0) return 0;
  const double weights = m.active_params * m.weight_bytes;
  const double kv_token = static_cast<double>(KvBytesPerToken(m));
  // Step k reads the KV of input + k tokens (at most the window).
  double kv_tokens = 0;
  if (m.window == 0) {
    const double a = static_cast<double>(input), n = static_cast<double>(output);
    kv_tokens = n * a + n * (n - 1) / 2;
  } else {
    for (uint64_t k = 0; k < output; ++k) kv_tokens += static_cast<double>(KvTokens(m, input + k));
  }
  return (static_cast<double>(output) * weights + kv_tokens * kv_token) / bw;
}

}  // namespace kvtier::bench
