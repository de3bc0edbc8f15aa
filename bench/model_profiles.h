// Model and GPU profiles for `kvtier bench recompute`: what a context of L tokens costs
// to keep (KV bytes, from the model's shape) and to recompute (prefill FLOPs on a GPU
// profile), and what a request costs end to end (prefill or load, then decode).
//
// Everything here is a model, not a measurement: the bench measures load times through
// the real Store and puts them next to these figures. The formulas, the sources of the
// GPU figures and the limits are written up in docs/recompute.md.
//
// Pure functions over plain structs; no state, any thread.
#ifndef KVTIER_BENCH_MODEL_PROFILES_H_
#define KVTIER_BENCH_MODEL_PROFILES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kvtier/types.h"

namespace kvtier::bench {

struct ModelProfile {
  std::string name;      // short name used on the command line, e.g. "llama3-8b"
  std::string hf_id;     // the checkpoint the shape is taken from
  uint32_t layers = 0;
  uint32_t q_heads = 0;   // attention (query) heads, for attention FLOPs
  uint32_t kv_heads = 0;  // KV heads (1 for MLA)
  uint32_t head_dim = 0;  // KV head dim; for MLA the latent width per token and layer (kv_lora + rope)
  uint32_t qk_dim = 0;    // query/key dim per head in the attention product (MLA: nope + rope)
  uint32_t v_dim = 0;     // value dim per head
  DType dtype = DType::kBFloat16;  // KV dtype
  bool mla = false;
  uint32_t window = 0;    // sliding-window attention span in tokens, 0 = full attention
  double total_params = 0;    // all weights (for docs and the storage of the model)
  double active_params = 0;   // weights touched per token (MoE: routed experts only), with embeddings
  double matmul_params = 0;   // active weights in matrix products per prompt token (no embedding
                              // lookup, no LM head: prefill computes logits for the last token only)
  double weight_bytes = 2;    // bytes per weight as served (bf16 2, fp8 1)
  uint32_t gpus = 1;          // GPUs the model is served on (tensor parallel), default
  std::string note;           // one line shown in the table header
};

struct GpuProfile {
  std::string name;           // "H100-SXM"
  double dense_bf16_tflops;   // measured dense BF16 GEMM throughput (not the spec sheet's peak)
  double spec_bf16_tflops;    // spec-sheet dense peak, for reference only
  double hbm_tbps;            // HBM bandwidth, spec sheet (TB/s = 1e12 B/s)
  double cost_per_hour;       // default $ per GPU-hour for the cost model
};

// The built-in profiles: llama3-8b, llama3-70b, qwen3-30b-a3b, mistral-7b, deepseek-v3.
const std::vector<ModelProfile>& BuiltinModels();
// H100-SXM and H200-SXM.
const std::vector<GpuProfile>& BuiltinGpus();

// KV bytes of one token over all layers (K and V, or the MLA latent).
uint64_t KvBytesPerToken(const ModelProfile& m);
// Tokens whose KV a context of L tokens keeps: L, or the window for sliding-window models.
uint64_t KvTokens(const ModelProfile& m, uint64_t context_tokens);
// The Store's shape for this model (per TP rank 0 of 1: the whole KV of the context).
KvShape ShapeOf(const ModelProfile& m, uint32_t chunk_tokens);

// FLOPs to prefill tokens [from, to) of a prompt when tokens [0, from) are cached:
// 2 x matmul_params per token, plus causal attention (QK^T and PV over the keys each
// query sees, limited to the window for sliding-window models).
double PrefillFlops(const ModelProfile& m, uint64_t from, uint64_t to);

struct GpuModel {
  GpuProfile gpu;
  uint32_t gpus = 1;          // GPUs serving the model
  double mfu = 0.5;           // fraction of the measured GEMM throughput prefill sustains
  double hbm_efficiency = 0.8;  // fraction of the HBM spec a decode step reaches
};

// Seconds to prefill tokens [from, to) on `g`.
double PrefillSeconds(const ModelProfile& m, const GpuModel& g, uint64_t from, uint64_t to);
// Seconds to decode `output` tokens after a prompt of `input` tokens, batch 1: each step
// reads the active weights and the KV of the context so far from HBM.
double DecodeSeconds(const ModelProfile& m, const GpuModel& g, uint64_t input, uint64_t output);

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_MODEL_PROFILES_H_
