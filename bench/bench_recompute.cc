// kvtier bench recompute: offload versus recompute. For each model profile and context
// length it puts the time to load the context's KV from each tier — measured through the
// real Store on this machine — next to the time to recompute it (prefill FLOPs on a GPU
// profile), and derives the speedup, the break-even context length, the reuse
// probability above which keeping the KV pays for its storage, and end-to-end request
// latencies. docs/recompute.md explains every column and the model's limits.
//
// Measurement, per distinct KV shape (models with equal shapes share it):
//   host ("warm"): one request of the largest measured context is saved into the host
//     tier; each context's load is a Load of that request's leading chunks (chunks in
//     DRAM), timed from submission to completion — the latency one request sees.
//   nvme ("cold"): every load reads a request whose chunks are held only on NVMe (saved
//     write-through, then pushed out of DRAM by other saves; checked with Lookup before
//     each load): O_DIRECT reads into host slots, verified, scattered into the engine.
//   Contexts whose KV is larger than --measure-mib are not loaded: their time is the
//     largest measured load scaled by bytes (its bandwidth), reported as measured=false.
//   Beside them, the `kvtier bench tiers` measurement (Workload::Run: pipelined requests,
//   same chunk size, same Store configuration) gives the tier's throughput in the same run.
#include <stdlib.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "bench/redis_limit.h"
#include "bench/model_profiles.h"
#include "bench/plot_png.h"
#include "bench/workload.h"
#include "kvtier/store.h"

namespace kvtier::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kTmpfsMagic = 0x01021994;

double Secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string Tokens(uint64_t t) {
  char buf[32];
  if (t % (1024 * 1024) == 0) std::snprintf(buf, sizeof buf, "%lluM", static_cast<unsigned long long>(t >> 20));
  else if (t % 1024 == 0) std::snprintf(buf, sizeof buf, "%lluK", static_cast<unsigned long long>(t >> 10));
  else std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(t));
  return buf;
}

std::string Fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// p* for display: "never" when keeping cannot pay.
std::string PStar(double p) {
  if (!std::isfinite(p)) return "never";
  if (p < 1e-4) return "<1e-4";
  return Fmt(p < 10 ? "%.3g" : "%.0f", p);
}

// ---- flags -------------------------------------------------------------------------------

Result<std::vector<uint64_t>> ParseTokenList(const std::string& flag, const std::string& text) {
  std::vector<uint64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) return Status::InvalidArgument("--" + flag + " " + text + ": empty item");
    uint64_t mult = 1;
    const char last = item.back();
    if (last == 'K' || last == 'k') mult = 1024, item.pop_back();
    else if (last == 'M' || last == 'm') mult = 1024 * 1024, item.pop_back();
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    if (item.empty() || *end != '\0' || !(v > 0))
      return Status::InvalidArgument("--" + flag + " " + text + ": expected token counts such as 1K,16K,131072");
    out.push_back(static_cast<uint64_t>(std::llround(v * static_cast<double>(mult))));
  }
  if (out.empty()) return Status::InvalidArgument("--" + flag + " is empty");
  return out;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

Result<DType> ParseDType(const std::string& s) {
  if (s == "bf16" || s == "bfloat16") return DType::kBFloat16;
  if (s == "fp16" || s == "float16" || s == "half") return DType::kFloat16;
  if (s == "fp32" || s == "float32" || s == "float") return DType::kFloat32;
  if (s == "fp8" || s == "fp8_e4m3" || s == "float8_e4m3fn") return DType::kFp8E4M3;
  if (s == "fp8_e5m2" || s == "float8_e5m2") return DType::kFp8E5M2;
  if (s == "int8") return DType::kInt8;
  return Status::InvalidArgument("dtype '" + s + "': use bf16, fp16, fp32, fp8, fp8_e5m2 or int8");
}

// ---- measured prefill file (JSON Lines of flat objects) ---------------------------------

struct FlatJson {
  std::map<std::string, std::string> strings;
  std::map<std::string, double> numbers;
};

// Parses one JSON object's top-level fields: strings, numbers, true/false (1/0); null and
// nested arrays or objects are skipped.
Result<FlatJson> ParseFlatJson(const std::string& line) {
  FlatJson out;
  size_t i = 0;
  auto ws = [&] {
    while (i < line.size() && std::isspace(static_cast<unsigned char>(line[i]))) ++i;
  };
  auto str = [&](std::string* s) -> bool {
    if (i >= line.size() || line[i] != '"') return false;
    for (++i; i < line.size() && line[i] != '"'; ++i) {
      if (line[i] == '\\' && i + 1 < line.size()) ++i;
      s->push_back(line[i]);
    }
    if (i >= line.size()) return false;
    ++i;
    return true;
  };
  ws();
  if (i >= line.size() || line[i++] != '{') return Status::InvalidArgument("expected '{'");
  ws();
  if (i < line.size() && line[i] == '}') return out;
  while (true) {
    ws();
    std::string key;
    if (!str(&key)) return Status::InvalidArgument("expected a quoted key");
    ws();
    if (i >= line.size() || line[i++] != ':') return Status::InvalidArgument("expected ':' after \"" + key + "\"");
    ws();
    if (i < line.size() && line[i] == '"') {
      std::string v;
      if (!str(&v)) return Status::InvalidArgument("unterminated string for \"" + key + "\"");
      out.strings[key] = v;
    } else if (line.compare(i, 4, "true") == 0) {
      out.numbers[key] = 1, i += 4;
    } else if (line.compare(i, 5, "false") == 0) {
      out.numbers[key] = 0, i += 5;
    } else if (line.compare(i, 4, "null") == 0) {
      i += 4;
    } else if (i < line.size() && (line[i] == '[' || line[i] == '{')) {
      // A nested value: skipped (only flat fields are read).
      int depth = 0;
      bool in_string = false;
      for (; i < line.size(); ++i) {
        const char ch = line[i];
        if (in_string) {
          if (ch == '\\') ++i;
          else if (ch == '"') in_string = false;
        } else if (ch == '"') {
          in_string = true;
        } else if (ch == '[' || ch == '{') {
          ++depth;
        } else if ((ch == ']' || ch == '}') && --depth == 0) {
          ++i;
          break;
        }
      }
      if (depth != 0) return Status::InvalidArgument("unterminated value for \"" + key + "\"");
    } else {
      char* end = nullptr;
      const double v = std::strtod(line.c_str() + i, &end);
      if (end == line.c_str() + i) return Status::InvalidArgument("bad value for \"" + key + "\"");
      out.numbers[key] = v;
      i = static_cast<size_t>(end - line.c_str());
    }
    ws();
    if (i < line.size() && line[i] == ',') {
      ++i;
      continue;
    }
    if (i < line.size() && line[i] == '}') return out;
    return Status::InvalidArgument("expected ',' or '}'");
  }
}

struct MeasuredPrefill {
  ModelProfile model;  // the shape (name = "model" field)
  std::string device, engine;
  uint64_t context = 0;
  double prefill_s = 0;
  // Optional: a real cached request the adapter timed (bench e2e --prefill-jsonl).
  uint64_t cached_tokens = 0;
  std::string tier;  // where the adapter loaded from (host or nvme); empty: every tier
  double tail_prefill_s = 0, ttft_full_s = 0, ttft_cached_s = 0, load_s = 0;
};

Result<std::vector<MeasuredPrefill>> ReadMeasuredPrefill(const std::string& path) {
  std::ifstream f(path);
  if (!f) return Status::NotFound("--measured-prefill-json " + path + ": cannot open it");
  std::vector<MeasuredPrefill> out;
  std::string line;
  for (int n = 1; std::getline(f, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Result<FlatJson> j = ParseFlatJson(line);
    const std::string where = path + ":" + std::to_string(n) + ": ";
    if (!j.ok()) return Status::InvalidArgument(where + j.status().message());
    MeasuredPrefill m;
    auto num = [&](const char* k) { return j->numbers.count(k) ? j->numbers.at(k) : 0.0; };
    m.model.name = j->strings.count("model") ? j->strings.at("model") : "measured";
    m.device = j->strings.count("device") ? j->strings.at("device") : "?";
    m.engine = j->strings.count("engine") ? j->strings.at("engine") : "?";
    m.model.layers = static_cast<uint32_t>(num("layers"));
    m.model.kv_heads = static_cast<uint32_t>(num("kv_heads"));
    m.model.head_dim = static_cast<uint32_t>(num("head_dim"));
    m.model.mla = num("mla") != 0;
    m.model.window = static_cast<uint32_t>(num("window"));
    if (m.model.mla) m.model.kv_heads = 1;
    Result<DType> dt = ParseDType(j->strings.count("dtype") ? j->strings.at("dtype") : "bf16");
    if (!dt.ok()) return Status::InvalidArgument(where + dt.status().message());
    m.model.dtype = *dt;
    m.context = static_cast<uint64_t>(num("context_tokens"));
    m.prefill_s = num("prefill_s");
    m.cached_tokens = static_cast<uint64_t>(num("cached_tokens"));
    m.tier = j->strings.count("tier") ? j->strings.at("tier") : "";
    m.tail_prefill_s = num("tail_prefill_s");
    m.ttft_full_s = num("ttft_full_s");
    m.ttft_cached_s = num("ttft_cached_s");
    m.load_s = num("load_s");
    if (m.model.layers == 0 || m.model.kv_heads == 0 || m.model.head_dim == 0 || m.context == 0 || !(m.prefill_s > 0))
      return Status::InvalidArgument(where + "needs layers, kv_heads, head_dim, context_tokens and prefill_s > 0 "
                                     "(see docs/recompute.md)");
    out.push_back(std::move(m));
  }
  return out;
}

// ---- what was measured for one KV shape in one tier ----------------------------------------

struct TierCurve {
  std::vector<uint64_t> tokens;  // loaded tokens (whole chunks), ascending
  std::vector<uint64_t> bytes;
  std::vector<double> seconds;   // median single-request load time
  double tiers_gbps = 0;         // `bench tiers` load throughput (its default requests in flight)
  uint32_t tiers_depth = 0;      // those requests in flight
  double tiers_depth1_gbps = 0;  // `bench tiers --depth 1`: one request at a time, as a TTFT sees
  // This bench's own timed loads of requests of the bench-tiers loop's size (agree_chunks
  // chunks) as GB/s (per repetition: their bytes over their time; median over repetitions),
  // and its ratio to the bench-tiers figures: the median of the per-repetition ratios, each
  // pair measured back to back on the same Store. contexts_gbps: the same over the loads of
  // the measured contexts (larger requests, which run faster; shown for reference).
  double single_gbps = 0, ratio_depth1 = 0, ratio_pipelined = 0, contexts_gbps = 0;
  uint64_t agree_chunks = 0;
  uint64_t skipped = 0;          // cold loads not made (a chunk was not NVMe-only)
  double phase_s = 0;            // wall time of this tier's measurements for the shape

  // Seconds to load `t` tokens: the measured point, or linear between measured points, or
  // the nearest measured point's bandwidth outside them.
  double Estimate(uint64_t t, bool* measured) const {
    *measured = false;
    if (t == 0 || tokens.empty()) return 0;
    for (size_t i = 0; i < tokens.size(); ++i)
      if (tokens[i] == t) {
        *measured = true;
        return seconds[i];
      }
    if (t < tokens.front()) return seconds.front() * static_cast<double>(t) / static_cast<double>(tokens.front());
    if (t > tokens.back()) return seconds.back() * static_cast<double>(t) / static_cast<double>(tokens.back());
    size_t i = 1;
    while (tokens[i] < t) ++i;
    const double f = static_cast<double>(t - tokens[i - 1]) / static_cast<double>(tokens[i] - tokens[i - 1]);
    return seconds[i - 1] + f * (seconds[i] - seconds[i - 1]);
  }
};

struct ShapeRun {
  KvShape shape;
  std::string label;                 // models sharing it
  std::vector<uint64_t> want;        // loaded-token counts wanted (whole chunks), ascending
  std::map<std::string, TierCurve> tiers;
};

std::string ShapeKey(const KvShape& s) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "%u/%u/%u/%d/%d", s.num_layers, s.num_kv_heads, s.head_dim,
                static_cast<int>(s.dtype), s.mla ? 1 : 0);
  return buf;
}

// ---- progress on stderr ---------------------------------------------------------------------

class Progress {
 public:
  explicit Progress(bool on) : on_(on) {}
  void SetTotal(uint64_t total) { total_ = std::max<uint64_t>(total, 1); }
  void Step(const std::string& what, uint64_t units = 1) {
    done_ = std::min(total_, done_ + units);
    Show(what);
  }
  void Show(const std::string& what) {
    if (!on_) return;
    const int width = 30;
    const int fill = static_cast<int>(width * done_ / total_);
    std::string bar(static_cast<size_t>(fill), '#');
    bar.resize(width, '.');
    std::fprintf(stderr, "\r\033[K[%s] %3d%%  %s", bar.c_str(), static_cast<int>(100 * done_ / total_), what.c_str());
    std::fflush(stderr);
  }
  void Done() {
    if (on_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  bool on_;
  uint64_t total_ = 1, done_ = 0;
};

// ---- measurement ---------------------------------------------------------------------------

struct Options {
  uint32_t chunk_tokens = 256;
  uint64_t measure_bytes = 1024 * kMiB;
  uint64_t reps = 3;
  double seconds = 0.3;
  uint64_t engine_bytes = 256 * kMiB;
  int engine_device = -1;  // >= 0: the engine's KV in that GPU's memory (loads through the GPU path)
  uint32_t queue_depth = 16;
  std::string nvme_dir;  // where the NVMe tier's files live
  bool buffered = false;
};

// A request's tokens: `id` makes its chain of keys distinct from every other request's
// (and from the Workload's, whose first tokens are small ids).
std::vector<int32_t> RequestTokens(uint64_t id, uint64_t n) {
  std::vector<int32_t> t(n);
  for (uint64_t j = 0; j < n; ++j) t[j] = static_cast<int32_t>(j % 100000);
  t[0] = static_cast<int32_t>(1000000000 + id);
  return t;
}

// Times one load of the first `chunks` chunks of `tokens`.
Result<double> TimeLoad(Store* store, NamespaceHandle ns, const std::vector<int32_t>& tokens,
                        const std::vector<int32_t>& blocks, uint64_t chunks, uint32_t ct, uint32_t bpc) {
  const std::span<const int32_t> tk(tokens.data(), chunks * ct);
  const std::span<const int32_t> bl(blocks.data(), chunks * bpc);
  const auto t0 = Clock::now();
  Result<Ticket> t = store->Load(ns, tk, bl);
  if (!t.ok()) return t.status();
  Status s = t->Wait();
  const double secs = Secs(t0, Clock::now());
  if (!s.ok()) return s.WithContext("load: ");
  if (t->chunks_done() != chunks)
    return Status::Internal("load: " + std::to_string(t->chunks_done()) + " of " + std::to_string(chunks) +
                            " chunks loaded");
  return secs;
}

// Saves requests with up to four in flight (write-through saves share their syncs), and
// at most `max_chunks_in_flight` chunks (a save pins its chunks in DRAM until it is done).
Status SaveRequests(Store* store, NamespaceHandle ns, const std::vector<std::vector<int32_t>>& tokens,
                    const std::vector<int32_t>& all_blocks, uint32_t ct, uint32_t bpc,
                    uint64_t max_chunks_in_flight = UINT64_MAX) {
  std::deque<std::pair<Ticket, uint64_t>> q;
  uint64_t in_flight = 0;
  Status err;
  auto wait_one = [&] {
    Status s = q.front().first.Wait();
    if (!s.ok() && err.ok()) err = s.WithContext("save: ");
    in_flight -= q.front().second;
    q.pop_front();
  };
  for (const std::vector<int32_t>& t : tokens) {
    const uint64_t chunks = t.size() / ct;
    while (!q.empty() && (q.size() >= 4 || in_flight + chunks > max_chunks_in_flight)) wait_one();
    const std::span<const int32_t> bl(all_blocks.data(), t.size() / ct * bpc);
    Result<Ticket> tk = store->Save(ns, t, bl);
    if (!tk.ok()) return tk.status();
    q.emplace_back(std::move(*tk), chunks);
    in_flight += chunks;
  }
  while (!q.empty()) wait_one();
  return err;
}

// One repetition of the `bench tiers` loop (Workload::Run) on this Store and chunk size:
// save, then load, with one request in flight and with `depth` in flight.
// min_loads: the depth-1 loads run at least that many requests (as many as this bench times
// on its side for the agreement, so that neither side rests on fewer loads).
Status TiersBenchRep(Workload& w, uint32_t depth, TierId from, const Options& o, std::vector<double>* one,
                     std::vector<double>* many, uint64_t min_loads = 0) {
  for (uint32_t d : {1u, depth}) {
    w.depth = d;
    Result<double> s = w.Run(true, o.seconds);
    if (!s.ok()) return s.status();
    Result<double> l = w.Run(false, o.seconds, from, d == 1 ? min_loads : 0);
    if (!l.ok()) return l.status();
    (d == 1 ? one : many)->push_back(*l);
  }
  return Status::OK();
}

// Requests in flight for the pipelined NVMe figure: about queue_depth chunks, as `bench
// tiers --tier nvme` keeps (16 x 32 MiB), but no more than 512 MiB of chunks in flight so
// that large chunks (e.g. 80 MiB) fit in the host tier.
uint32_t PipelinedDepth(const Options& o, uint64_t chunks_per_request, uint64_t chunk_bytes) {
  const uint64_t by_queue = (o.queue_depth + chunks_per_request - 1) / chunks_per_request;
  const uint64_t by_bytes = (512 * kMiB) / std::max<uint64_t>(chunks_per_request * chunk_bytes, 1);
  return static_cast<uint32_t>(std::max<uint64_t>(4, std::min(by_queue, by_bytes)));
}

// Chunks per request of the Workload (as Workload::ForEngine computes it).
uint64_t WorkloadChunks(const Options& o, uint64_t chunk_bytes) {
  return std::clamp<uint64_t>((32ull << 20) / chunk_bytes, 1,
                              std::max<uint64_t>(o.engine_bytes / std::max<uint64_t>(chunk_bytes, 1), 1));
}

uint64_t RoundMiB(uint64_t b) { return (b + kMiB - 1) / kMiB * kMiB; }

// Blocks for a request of `chunks` chunks, the k-th such request: consecutive runs of the
// engine's blocks, moving on by one request each time (as the bench-tiers Workload spreads
// its requests over the engine), so that the destination is not one cache-resident spot.
std::vector<int32_t> RotatedBlocks(const EngineKv& e, uint32_t bpc, uint64_t chunks, uint64_t k) {
  std::vector<int32_t> b(chunks * bpc);
  const uint64_t nb = e.layout.num_blocks;
  for (size_t j = 0; j < b.size(); ++j) b[j] = static_cast<int32_t>((k * b.size() + j) % nb);
  return b;
}

// The engine's blocks from the first on, for a request of `chunks` chunks.
std::vector<int32_t> RequestBlocks(const EngineKv& e, uint32_t bpc, uint64_t chunks) {
  return RotatedBlocks(e, bpc, chunks, 0);
}

// rep_single: per repetition, GB/s of this bench's loads of agree_chunks-chunk requests;
// rep_contexts: the same over its loads of the measured contexts.
void Finish(TierCurve& c, const ShapeRun& run, uint64_t chunk_bytes, uint32_t ct,
            const std::vector<std::vector<double>>& times, const std::vector<double>& rep_single,
            const std::vector<double>& rep_contexts, uint64_t agree_chunks,
            const std::vector<double>& one, const std::vector<double>& many, uint32_t depth) {
  std::vector<double> r1, rp;
  for (size_t r = 0; r < rep_single.size() && r < one.size() && r < many.size(); ++r) {
    if (one[r] > 0) r1.push_back(rep_single[r] / one[r]);
    if (many[r] > 0) rp.push_back(rep_single[r] / many[r]);
  }
  c.single_gbps = rep_single.empty() ? 0 : Median(rep_single);
  c.contexts_gbps = rep_contexts.empty() ? 0 : Median(rep_contexts);
  c.agree_chunks = agree_chunks;
  c.ratio_depth1 = r1.empty() ? 0 : Median(r1);
  c.ratio_pipelined = rp.empty() ? 0 : Median(rp);
  for (size_t i = 0; i < run.want.size(); ++i) {
    if (times[i].empty()) continue;
    c.tokens.push_back(run.want[i]);
    c.bytes.push_back(run.want[i] / ct * chunk_bytes);
    c.seconds.push_back(Median(times[i]));
  }
  c.tiers_depth1_gbps = one.empty() ? 0 : Median(one);
  c.tiers_gbps = many.empty() ? 0 : Median(many);
  c.tiers_depth = depth;
}

// Warm loads: everything in host DRAM. Each repetition times every context's load, then
// runs the bench-tiers loop, so that both see the same machine conditions.
Status MeasureHost(ShapeRun& run, const Options& o, Progress& prog) {
  TierCurve& c = run.tiers["host"];
  const uint32_t ct = o.chunk_tokens;
  const uint64_t chunk_bytes = ChunkPayloadBytes(run.shape);
  const uint64_t slot = chunk_bytes + 8192;
  const uint64_t max_chunks = run.want.back() / ct;
  // The measured request, plus 512 MiB for the bench-tiers requests (which cycle over what
  // fits there; `bench tiers --tier host` gives them 1 GiB, which does not change a copy's speed).
  const uint64_t workload_bytes = 512 * kMiB;
  // Copies of the measured request, loaded in turn, so that together they exceed the last-level
  // cache: a warm load reads DRAM, as the bench-tiers loop (which cycles over 512 MiB) does.
  const uint64_t copies = std::clamp<uint64_t>((1024 * kMiB) / (max_chunks * chunk_bytes) + 1, 1, 64);
  StoreConfig cfg;
  cfg.host_capacity_bytes = RoundMiB(copies * max_chunks * slot + workload_bytes + 64 * kMiB);
  cfg.worker_threads = 1;  // as `bench tiers --tier host`
  Result<std::unique_ptr<Store>> store = Store::Open(cfg);
  if (!store.ok()) return store.status();
  NamespaceSpec spec;
  spec.model.name = "bench/recompute/" + run.label;
  spec.model.revision = "bench";
  spec.shape = run.shape;
  const uint32_t block_tokens = ct % 16 == 0 ? 16 : ct;
  const uint32_t bpc = ct / block_tokens;
  Result<EngineKv> made = MakeEngine(spec.shape, block_tokens, o.engine_bytes, o.engine_device);
  if (!made.ok()) return made.status();
  EngineKv engine = std::move(*made);
  Result<NamespaceHandle> ns = (*store)->RegisterNamespace(spec, engine.layout);
  if (!ns.ok()) return ns.status();
  const std::string what = "host " + run.label;
  std::vector<std::vector<int32_t>> copy_tokens;
  for (uint64_t k = 0; k < copies; ++k) copy_tokens.push_back(RequestTokens(1 + k, max_chunks * ct));
  const std::vector<int32_t> blocks = RequestBlocks(engine, bpc, max_chunks);
  Workload w = Workload::ForEngine(store->get(), *ns, spec.shape, engine);
  // The agreement compares the bench-tiers loop with this bench's loads of its request size.
  const uint64_t agree_chunks = std::min<uint64_t>(w.chunks_per_request, max_chunks);
  w.chunks_per_request = static_cast<uint32_t>(agree_chunks);
  const uint64_t workload_chunks = workload_bytes / slot;
  if (workload_chunks / w.chunks_per_request <= 4)
    return Status::Internal("host: chunks of " + std::to_string(chunk_bytes) + " bytes are too large for the bench "
                            "tiers measurement");
  w.max_saved = workload_chunks / w.chunks_per_request - 3;
  std::vector<std::vector<double>> times(run.want.size());
  std::vector<double> one, many, rep_single, rep_contexts;
  uint64_t next_copy = 0, next_blocks = 0;
  for (uint64_t r = 0; r < o.reps; ++r) {
    // (Re)store the copies if the bench-tiers loop pushed any of them out, and touch each once.
    for (const std::vector<int32_t>& tokens : copy_tokens) {
      Result<LookupResult> lr = (*store)->Lookup(*ns, tokens);
      if (!lr.ok()) return lr.status();
      if (lr->matched_chunks != max_chunks)
        if (Status s = SaveRequests(store->get(), *ns, {tokens}, blocks, ct, bpc); !s.ok()) return s;
      if (Result<double> t = TimeLoad(store->get(), *ns, tokens, blocks, max_chunks, ct, bpc); !t.ok())
        return t.status();
    }
    // Every context once, and again until --seconds of loading, as long as a bench-tiers run.
    double bytes = 0, secs = 0;
    for (int pass = 0; pass == 0 || secs < o.seconds; ++pass) {
      for (size_t i = 0; i < run.want.size(); ++i) {
        const std::vector<int32_t>& tokens = copy_tokens[next_copy++ % copies];
        Result<double> t = TimeLoad(store->get(), *ns, tokens, blocks, run.want[i] / ct, ct, bpc);
        if (!t.ok()) return t.status();
        times[i].push_back(*t);
        bytes += static_cast<double>(run.want[i] / ct * chunk_bytes), secs += *t;
        if (pass == 0) prog.Step(what + ": load " + Tokens(run.want[i]) + " tokens");
      }
    }
    rep_contexts.push_back(bytes / secs / 1e9);
    // Requests of the bench-tiers loop's size, timed as above, for --seconds: what the
    // agreement compares (request size moves a load's speed; see docs/recompute.md).
    bytes = 0, secs = 0;
    while (secs < o.seconds) {
      const std::vector<int32_t>& tokens = copy_tokens[next_copy++ % copies];
      const std::vector<int32_t> b = RotatedBlocks(engine, bpc, agree_chunks, next_blocks++);
      Result<double> t = TimeLoad(store->get(), *ns, tokens, b, agree_chunks, ct, bpc);
      if (!t.ok()) return t.status();
      bytes += static_cast<double>(agree_chunks * chunk_bytes), secs += *t;
    }
    rep_single.push_back(bytes / secs / 1e9);
    // `bench tiers --tier host` for this chunk size: 1 worker, 2 requests in flight.
    if (Status s = TiersBenchRep(w, 2, TierId::kHost, o, &one, &many); !s.ok()) return s;
    prog.Step(what + ": bench tiers");
  }
  Finish(c, run, chunk_bytes, ct, times, rep_single, rep_contexts, agree_chunks, one, many, 2);
  return (*store)->UnregisterNamespace(*ns);
}

// Cold loads: every load reads a request held only in `tier` (NVMe: files in `where`, a
// directory; Redis: the server at `where`, host:port, written through with keys of this run
// that expire after an hour).
Status MeasureCold(ShapeRun& run, const Options& o, TierId tier, const std::string& where, Progress& prog,
                   std::string* io_backend) {
  const bool on_nvme = tier == TierId::kNvme;
  const std::string dir = on_nvme ? where : "";
  TierCurve& c = run.tiers[TierName(tier)];
  const uint32_t ct = o.chunk_tokens;
  const uint64_t chunk_bytes = ChunkPayloadBytes(run.shape);
  const uint64_t extent = 4096 + (chunk_bytes + 4095) / 4096 * 4096;
  const uint64_t max_chunks = run.want.back() / ct;
  // Per repetition, kAgreeLoads requests of the bench-tiers loop's size too (the agreement's).
  constexpr uint64_t kAgreeLoads = 16;
  const uint64_t agree_chunks = std::min<uint64_t>(WorkloadChunks(o, chunk_bytes), max_chunks);
  uint64_t cold_chunks = kAgreeLoads * agree_chunks;
  for (uint64_t t : run.want) cold_chunks += t / ct;
  cold_chunks *= o.reps;

  std::error_code ec;
  if (on_nvme) std::filesystem::create_directories(dir, ec);
  if (ec) return Status::IOError("cannot create " + dir + ": " + ec.message());
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      std::error_code e;
      if (!path.empty()) std::filesystem::remove_all(path, e);
    }
  } cleanup{dir};

  const uint64_t cpr = agree_chunks;
  // Pipelined: NVMe as `bench tiers --tier nvme` keeps its queue busy; Redis as `bench tiers
  // --tier redis` runs, 4 workers and 4 requests in flight.
  const uint32_t depth = on_nvme ? PipelinedDepth(o, cpr, chunk_bytes) : 4;
  StoreConfig cfg;
  // Room for the largest cold request, and for the bench-tiers requests in flight (each
  // pins its chunks in DRAM until done), as `bench tiers --tier nvme` sizes it.
  cfg.host_capacity_bytes = RoundMiB(std::max(max_chunks * (chunk_bytes + 8192) + 96 * kMiB,
                                              2 * depth * cpr * chunk_bytes + 256 * kMiB));
  cfg.worker_threads = on_nvme ? 16 : 4;  // as `bench tiers --tier nvme` (queue depth 16), `--tier redis`
  const uint64_t host_chunks = cfg.host_capacity_bytes / chunk_bytes + 1;
  // Cold requests, the filler, the bench-tiers fill and its saves (at most ~4 GB/s).
  const double tiers_saves = static_cast<double>(o.reps) * 2 * o.seconds * 4e9;
  if (on_nvme) {
    cfg.nvme.enabled = true;
    cfg.nvme.paths = {dir + "/nvme-0.dat"};
    cfg.nvme.capacity_bytes = RoundMiB((cold_chunks + 2 * host_chunks + 64) * extent +
                                       static_cast<uint64_t>(tiers_saves) + 512 * kMiB);
    cfg.nvme.metadata_dir = dir + "/meta";
    cfg.nvme.queue_depth = o.queue_depth;
    cfg.nvme.buffered = o.buffered;
    cfg.nvme.policy = WritePolicy::kWriteThrough;
  } else {
    cfg.redis.enabled = true;
    cfg.redis.addresses = {where};
    cfg.redis.policy = WritePolicy::kWriteThrough;
    cfg.redis.ttl_seconds = 600;  // a safety net: the bench deletes its keys when it is done
    cfg.redis.op_timeout_ms = 30000;  // a busy machine slows Redis; that is not an outage here
    cfg.redis.key_prefix = "kvt-recompute-" + std::to_string(getpid()) + "-" +
                           std::to_string(Clock::now().time_since_epoch().count());
  }
  Result<std::unique_ptr<Store>> store = Store::Open(cfg);
  if (!store.ok()) return store.status();
  if (on_nvme) *io_backend = (*store)->Stats().nvme_io_backend;
  NamespaceSpec spec;
  spec.model.name = "bench/recompute/" + run.label;
  spec.model.revision = "bench";
  spec.shape = run.shape;
  const uint32_t block_tokens = ct % 16 == 0 ? 16 : ct;
  const uint32_t bpc = ct / block_tokens;
  Result<EngineKv> made = MakeEngine(spec.shape, block_tokens, o.engine_bytes, o.engine_device);
  if (!made.ok()) return made.status();
  EngineKv engine = std::move(*made);
  Result<NamespaceHandle> ns = (*store)->RegisterNamespace(spec, engine.layout);
  if (!ns.ok()) return ns.status();
  const std::string what = std::string(TierName(tier)) + " " + run.label;
  const std::vector<int32_t> all_blocks = RequestBlocks(engine, bpc, max_chunks);

  // One request per (rep, context), saved durably; then saves of other requests push
  // them all out of DRAM.
  struct Cold {
    uint64_t id, chunks;
    size_t point;
  };
  std::vector<std::vector<Cold>> cold(o.reps);
  std::vector<std::vector<int32_t>> to_save;
  uint64_t id = 1;
  constexpr size_t kAgreePoint = SIZE_MAX;  // Cold::point of the agreement's requests
  for (uint64_t r = 0; r < o.reps; ++r) {
    for (size_t i = 0; i < run.want.size(); ++i) {
      cold[r].push_back({id, run.want[i] / ct, i});
      to_save.push_back(RequestTokens(id++, run.want[i]));
    }
    for (uint64_t k = 0; k < kAgreeLoads; ++k) {
      cold[r].push_back({id, agree_chunks, kAgreePoint});
      to_save.push_back(RequestTokens(id++, agree_chunks * ct));
    }
  }
  for (uint64_t filled = 0; filled < host_chunks + 1;) {
    const uint64_t n = std::min<uint64_t>(max_chunks, host_chunks + 1 - filled);
    to_save.push_back(RequestTokens(id++, n * ct));
    filled += n;
  }
  if (Status s = SaveRequests(store->get(), *ns, to_save, all_blocks, ct, bpc, host_chunks / 2); !s.ok()) return s;
  to_save.clear();
  prog.Step(what + ": saved, and pushed out of DRAM", 2);

  Workload w = Workload::ForEngine(store->get(), *ns, spec.shape, engine);
  w.chunks_per_request = static_cast<uint32_t>(agree_chunks);  // the agreement's request size
  w.max_saved = 1u << 20;
  w.depth = depth;
  // The bench-tiers loop loads requests held only on NVMe: save more than DRAM holds first.
  while ((w.next_id - 1) * w.chunks_per_request < host_chunks + 16) {
    Result<double> s = w.Run(true, o.seconds);
    if (!s.ok()) return s.status();
  }
  std::vector<std::vector<double>> times(run.want.size());
  std::vector<double> one, many, rep_single, rep_contexts;
  uint64_t next_blocks = 0;
  for (uint64_t r = 0; r < o.reps; ++r) {
    double bytes = 0, secs = 0, agree_bytes = 0, agree_secs = 0;
    bool saved_before_agree = false;
    for (const Cold& q : cold[r]) {
      if (q.point == kAgreePoint && !saved_before_agree) {
        // The loop's loads below follow a save phase of its own; so do these, so that both
        // sides meet the tier in the same state (a server that has just taken a run of large
        // SETs serves the next GETs slowly: docs/benchmarks.md, "Offload vs recompute").
        w.depth = 1;
        if (Result<double> sv = w.Run(true, o.seconds); !sv.ok()) return sv.status();
        saved_before_agree = true;
      }
      const std::vector<int32_t> tokens = RequestTokens(q.id, q.chunks * ct);
      Result<LookupResult> lr = (*store)->Lookup(*ns, tokens);
      if (!lr.ok()) return lr.status();
      const bool cold_only = lr->matched_chunks == q.chunks &&
                             std::all_of(lr->chunk_tiers.begin(), lr->chunk_tiers.end(),
                                         [tier](TierId t) { return t == tier; });
      if (!cold_only) {
        ++c.skipped;
      } else if (q.point == kAgreePoint) {
        const std::vector<int32_t> b = RotatedBlocks(engine, bpc, q.chunks, next_blocks++);
        Result<double> t = TimeLoad(store->get(), *ns, tokens, b, q.chunks, ct, bpc);
        if (!t.ok()) return t.status();
        agree_bytes += static_cast<double>(q.chunks * chunk_bytes), agree_secs += *t;
      } else {
        Result<double> t = TimeLoad(store->get(), *ns, tokens, all_blocks, q.chunks, ct, bpc);
        if (!t.ok()) return t.status();
        times[q.point].push_back(*t);
        bytes += static_cast<double>(q.chunks * chunk_bytes), secs += *t;
      }
      if (q.point != kAgreePoint) prog.Step(what + ": cold load " + Tokens(q.chunks * ct) + " tokens");
    }
    rep_contexts.push_back(secs > 0 ? bytes / secs / 1e9 : 0);
    rep_single.push_back(agree_secs > 0 ? agree_bytes / agree_secs / 1e9 : 0);
    // `bench tiers --tier nvme` for this chunk size: one request in flight, then about
    // queue_depth chunks in flight.
    if (Status s = TiersBenchRep(w, depth, tier, o, &one, &many, kAgreeLoads); !s.ok()) return s;
    prog.Step(what + ": bench tiers");
  }
  Finish(c, run, chunk_bytes, ct, times, rep_single, rep_contexts, agree_chunks, one, many, depth);
  if (!on_nvme) {  // this shape's keys, so that the server does not fill up over the shapes
    Result<RedisEndpoint> ep = ParseRedisEndpoint(where);
    if (ep.ok()) (void)RedisDeletePrefix(*ep, cfg.redis.key_prefix + ":");
  }
  if (c.tokens.empty())
    return Status::Internal(std::string(TierName(tier)) + ": no request was held there only; nothing was measured");
  Status u = (*store)->UnregisterNamespace(*ns);
  store->reset();
  return u;
}

uint64_t UnitsFor(const ShapeRun& run, const std::string& tier, const Options& o) {
  const uint64_t n = run.want.size() * o.reps;
  return n + o.reps + (tier == "host" ? 0 : 2);
}

// ---- derived figures ------------------------------------------------------------------------

struct Costs {
  std::map<std::string, double> storage_gb_hour;  // per tier
  double residency_hours = 1;
};

struct Hit {
  double seconds = 0;     // load + recompute of the tokens the cache does not cover
  double load_s = 0;
  bool measured = false;
  uint64_t kv_bytes = 0;
};

// A hit on a context of L tokens served from `curve`: the whole chunks' KV (at most the
// window) is loaded; the tokens after the last whole chunk (at least the last one, whose
// logits start decoding) are recomputed.
Hit HitTime(const ModelProfile& m, const GpuModel& g, const TierCurve& curve, uint32_t ct, uint64_t L) {
  Hit h;
  const uint64_t covered = L / ct * ct;
  const uint64_t kv_tokens = m.window ? std::min<uint64_t>(covered, m.window / ct * ct) : covered;
  h.kv_bytes = kv_tokens * KvBytesPerToken(m);
  h.load_s = curve.Estimate(kv_tokens, &h.measured);
  const uint64_t from = std::min<uint64_t>(covered, L - 1);
  h.seconds = h.load_s + PrefillSeconds(m, g, from, L);
  return h;
}

}  // namespace

int RunBenchRecompute(const std::vector<std::string>& argv) {
  auto fail = [](const Status& s) {
    std::fprintf(stderr, "kvtier bench recompute: %s\n", s.message().c_str());
    return s.IsInvalidArgument() || s.code() == Status::Code::kNotSupported ? 2 : 1;
  };
  Result<Args> a = Args::Parse(
      argv,
      {"models", "contexts", "tiers", "plot", "nvme-dir", "mfu", "hbm-efficiency", "gpus", "gpu-tflops",
       "gpu-hbm-tbps", "gpu-cost-per-hour", "storage-cost-per-gb-hour-host", "storage-cost-per-gb-hour-nvme",
       "storage-cost-per-gb-hour-redis", "residency-hours", "chunk-tokens", "measure-mib", "reps", "seconds",
       "engine-mib", "queue-depth", "io", "measured-prefill-json", "redis", "name", "layers", "kv-heads", "q-heads",
       "head-dim", "dtype", "params-b", "active-params-b", "window", "weight-bytes", "engine"},
      {"json", "no-progress", "no-plot", "buffered", "mla"});
  if (!a.ok()) return fail(a.status());
  const bool json = a->Has("json");

  // Tiers: a list, so that a tier joins by adding its measurement.
  // Redis: the server at --redis, else a local one on the default port when it answers.
  std::string redis_addr = a->Get("redis", "");
  bool redis_reachable = false;
  {
    Result<RedisEndpoint> ep = ParseRedisEndpoint(redis_addr.empty() ? "127.0.0.1:6379" : redis_addr);
    if (!ep.ok()) return fail(ep.status());
    redis_reachable = MeasureRedisRawLimit(*ep, 1, 1, 1, 1).ok();
    if (redis_addr.empty() && redis_reachable) redis_addr = "127.0.0.1:6379";
  }
  const std::string default_tiers = redis_reachable ? "host,nvme,redis" : "host,nvme";
  const std::vector<std::string> tiers = Split(a->Get("tiers", default_tiers));
  for (const std::string& t : tiers) {
    if (t == "host" || t == "nvme") continue;
    if (t == "redis") {
      if (!redis_reachable)
        return fail(Status::InvalidArgument("--tiers redis: no Redis answers at " +
                                            (redis_addr.empty() ? std::string("127.0.0.1:6379") : redis_addr) +
                                            "; start one or pass --redis host:port"));
      continue;
    }
    if (t == "gpu")
      return fail(Status::NotSupported("not supported yet: the gpu tier is not part of the Store in this version "
                                       "(available: host, nvme, redis)"));
    return fail(Status::InvalidArgument("--tiers: unknown tier '" + t + "' (host, nvme, redis)"));
  }
  if (tiers.empty()) return fail(Status::InvalidArgument("--tiers is empty"));

  auto mfu = a->GetDouble("mfu", 0.5);
  auto hbm_eff = a->GetDouble("hbm-efficiency", 0.8);
  auto gpus_flag = a->GetUint("gpus", 0);
  auto gpu_tflops = a->GetDouble("gpu-tflops", 0);
  auto gpu_hbm = a->GetDouble("gpu-hbm-tbps", 3.35);
  auto gpu_cost = a->GetDouble("gpu-cost-per-hour", 0);
  auto st_host = a->GetDouble("storage-cost-per-gb-hour-host", 0.004);
  auto st_nvme = a->GetDouble("storage-cost-per-gb-hour-nvme", 0.0001);
  auto st_redis = a->GetDouble("storage-cost-per-gb-hour-redis", 0.008);
  auto residency = a->GetDouble("residency-hours", 1);
  auto chunk_tokens = a->GetUint("chunk-tokens", 256);
  auto measure_mib = a->GetUint("measure-mib", 512);
  auto reps = a->GetUint("reps", 3);
  auto seconds = a->GetDouble("seconds", 0.25);
  auto engine_mib = a->GetUint("engine-mib", 256);
  auto qd = a->GetUint("queue-depth", 16);
  for (const Status* s : {&mfu.status(), &hbm_eff.status(), &gpus_flag.status(), &gpu_tflops.status(),
                          &gpu_hbm.status(), &gpu_cost.status(), &st_host.status(), &st_nvme.status(),
                          &st_redis.status(), &residency.status(), &chunk_tokens.status(), &measure_mib.status(),
                          &reps.status(), &seconds.status(), &engine_mib.status(), &qd.status()})
    if (!s->ok()) return fail(*s);
  if (!(*mfu > 0 && *mfu <= 1) || !(*hbm_eff > 0 && *hbm_eff <= 1))
    return fail(Status::InvalidArgument("--mfu and --hbm-efficiency are fractions in (0, 1]"));
  if (*chunk_tokens == 0 || *chunk_tokens > 65536 || *reps == 0 || *qd == 0 || *measure_mib == 0)
    return fail(Status::InvalidArgument("--chunk-tokens (1..65536), --reps, --queue-depth and --measure-mib must be "
                                        "positive"));
  Result<std::vector<uint64_t>> contexts =
      ParseTokenList("contexts", a->Get("contexts", "1K,2K,4K,8K,16K,32K,64K,128K"));
  if (!contexts.ok()) return fail(contexts.status());
  std::sort(contexts->begin(), contexts->end());
  contexts->erase(std::unique(contexts->begin(), contexts->end()), contexts->end());
  const uint32_t ct = static_cast<uint32_t>(*chunk_tokens);
  if (contexts->front() < ct)
    return fail(Status::InvalidArgument("--contexts: " + std::to_string(contexts->front()) +
                                        " tokens is less than one chunk (--chunk-tokens " + std::to_string(ct) + ")"));
  // Input/output pairs for the end-to-end rows.
  std::vector<std::pair<uint64_t, uint64_t>> io;
  for (const std::string& p : Split(a->Get("io", "1K/512,16K/512,32K/1K"))) {
    const size_t slash = p.find('/');
    Result<std::vector<uint64_t>> in = ParseTokenList("io", p.substr(0, slash));
    Result<std::vector<uint64_t>> out =
        slash == std::string::npos ? Result<std::vector<uint64_t>>(Status::InvalidArgument("--io " + p +
                                                                                           ": expected IN/OUT"))
                                   : ParseTokenList("io", p.substr(slash + 1));
    if (!in.ok()) return fail(in.status());
    if (!out.ok()) return fail(out.status());
    if (in->front() < ct) return fail(Status::InvalidArgument("--io " + p + ": input shorter than one chunk"));
    io.emplace_back(in->front(), out->front());
  }

  // Models: the built-in ones, and a custom shape from flags.
  std::vector<ModelProfile> catalog = BuiltinModels();
  if (a->Has("layers")) {
    ModelProfile m;
    m.name = a->Get("name", "custom");
    auto layers = a->GetUint("layers", 0), kvh = a->GetUint("kv-heads", 1), hd = a->GetUint("head-dim", 0);
    auto qh = a->GetUint("q-heads", 0), window = a->GetUint("window", 0);
    auto params = a->GetDouble("params-b", 0), active = a->GetDouble("active-params-b", 0);
    auto wbytes = a->GetDouble("weight-bytes", 2);
    for (const Status* s : {&layers.status(), &kvh.status(), &hd.status(), &qh.status(), &window.status(),
                            &params.status(), &active.status(), &wbytes.status()})
      if (!s->ok()) return fail(*s);
    Result<DType> dt = ParseDType(a->Get("dtype", "bf16"));
    if (!dt.ok()) return fail(dt.status());
    if (*layers == 0 || *hd == 0 || *kvh == 0 || !(*params > 0))
      return fail(Status::InvalidArgument("a custom shape needs --layers, --kv-heads, --head-dim and --params-b "
                                          "(billions of active weights in matrix products per token)"));
    m.mla = a->Has("mla");
    m.layers = static_cast<uint32_t>(*layers);
    m.kv_heads = m.mla ? 1 : static_cast<uint32_t>(*kvh);
    m.head_dim = static_cast<uint32_t>(*hd);
    m.q_heads = static_cast<uint32_t>(*qh ? *qh : *kvh);
    m.qk_dim = m.v_dim = m.mla ? 128 : m.head_dim;
    m.dtype = *dt;
    m.window = static_cast<uint32_t>(*window);
    m.matmul_params = *params * 1e9;
    m.active_params = (*active > 0 ? *active : *params) * 1e9;
    m.total_params = m.active_params;
    m.weight_bytes = *wbytes;
    m.gpus = 1;
    m.hf_id = "custom";
    m.note = "custom shape from flags";
    catalog.push_back(m);
  }
  std::vector<ModelProfile> models;
  if (a->Has("models")) {
    for (const std::string& n : Split(a->Get("models", ""))) {
      auto it = std::find_if(catalog.begin(), catalog.end(), [&](const ModelProfile& m) { return m.name == n; });
      if (it == catalog.end()) {
        std::string names;
        for (const ModelProfile& m : catalog) names += (names.empty() ? "" : ", ") + m.name;
        return fail(Status::InvalidArgument("--models: unknown model '" + n + "' (" + names +
                                            "; a custom shape needs --layers ...)"));
      }
      models.push_back(*it);
    }
  } else {
    models = catalog;
  }
  if (models.empty()) return fail(Status::InvalidArgument("--models is empty"));
  if (*gpus_flag)
    for (ModelProfile& m : models) m.gpus = static_cast<uint32_t>(*gpus_flag);

  std::vector<GpuModel> gpus;
  for (const GpuProfile& p : BuiltinGpus()) gpus.push_back({p, 1, *mfu, *hbm_eff});
  if (*gpu_tflops > 0) gpus.push_back({{"custom-GPU", *gpu_tflops, 0, *gpu_hbm, 2.5}, 1, *mfu, *hbm_eff});
  if (*gpu_cost > 0)
    for (GpuModel& g : gpus) g.gpu.cost_per_hour = *gpu_cost;
  Costs costs;
  costs.storage_gb_hour = {{"host", *st_host}, {"nvme", *st_nvme}, {"redis", *st_redis}};
  costs.residency_hours = *residency;

  std::vector<MeasuredPrefill> measured_prefill;
  if (a->Has("measured-prefill-json")) {
    Result<std::vector<MeasuredPrefill>> mp = ReadMeasuredPrefill(a->Get("measured-prefill-json", ""));
    if (!mp.ok()) return fail(mp.status());
    measured_prefill = std::move(*mp);
    for (const MeasuredPrefill& m : measured_prefill)
      if (m.context < ct)
        return fail(Status::InvalidArgument("--measured-prefill-json: a context of " + std::to_string(m.context) +
                                            " tokens is shorter than one chunk (--chunk-tokens " +
                                            std::to_string(ct) + ")"));
  }

  Options o;
  o.chunk_tokens = ct;
  o.measure_bytes = *measure_mib * kMiB;
  o.reps = *reps;
  o.seconds = *seconds;
  o.engine_bytes = *engine_mib * kMiB;
  // Where the engine's KV lives: a GPU when there is one (loads then go host tier -> GPU
  // through the copy kernels, as an engine sees them), else host memory.
  Result<int> engine_device = ParseEngineMemory(a->Get("engine", "auto"));
  if (!engine_device.ok()) return fail(engine_device.status());
  o.engine_device = *engine_device;
  o.queue_depth = static_cast<uint32_t>(*qd);
  o.buffered = a->Has("buffered");

  // The shapes to measure and, for each, the loaded-token counts (whole chunks) wanted.
  std::vector<ShapeRun> runs;
  std::map<std::string, size_t> run_of;
  auto want = [&](const ModelProfile& m, uint64_t context) {
    const KvShape s = ShapeOf(m, ct);
    const std::string key = ShapeKey(s);
    if (!run_of.count(key)) {
      run_of[key] = runs.size();
      runs.push_back(ShapeRun{s, m.name, {}, {}});
    }
    ShapeRun& r = runs[run_of[key]];
    if (r.label.find(m.name) == std::string::npos) r.label += "+" + m.name;
    const uint64_t covered = context / ct * ct;
    const uint64_t kv_tokens = m.window ? std::min<uint64_t>(covered, m.window / ct * ct) : covered;
    if (kv_tokens == 0) return;
    if (std::find(r.want.begin(), r.want.end(), kv_tokens) == r.want.end()) r.want.push_back(kv_tokens);
  };
  for (const ModelProfile& m : models)
    for (uint64_t c : *contexts) want(m, c);
  for (const MeasuredPrefill& mp : measured_prefill) want(mp.model, mp.context);
  for (ShapeRun& r : runs) {
    std::sort(r.want.begin(), r.want.end());
    // Measure what fits under --measure-mib (always the smallest); the rest is extrapolated.
    const uint64_t token_bytes = ChunkPayloadBytes(r.shape) / ct;
    std::vector<uint64_t> keep;
    for (uint64_t t : r.want)
      if (keep.empty() || t * token_bytes <= o.measure_bytes) keep.push_back(t);
    r.want = keep;
  }

  // The NVMe tier's directory: refused on tmpfs (no O_DIRECT: a cold load would measure DRAM).
  const bool want_nvme = std::find(tiers.begin(), tiers.end(), "nvme") != tiers.end();
  std::string made_dir;
  if (want_nvme) {
    std::string base = a->Get("nvme-dir", "");
    if (base.empty()) {
      const char* tmp = std::getenv("TMPDIR");
      std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/kvtier-recompute-XXXXXX";
      if (mkdtemp(templ.data()) == nullptr)
        return fail(Status::IOError("cannot create a directory " + templ + ": " + std::strerror(errno) +
                                    "; pass --nvme-dir DIR"));
      base = made_dir = templ;
    } else {
      std::error_code ec;
      std::filesystem::create_directories(base, ec);
      if (ec) return fail(Status::IOError("cannot create --nvme-dir " + base + ": " + ec.message()));
    }
    struct statfs sf;
    if (statfs(base.c_str(), &sf) == 0 && static_cast<uint64_t>(sf.f_type) == kTmpfsMagic && !o.buffered) {
      if (!made_dir.empty()) rmdir(made_dir.c_str());
      return fail(Status::InvalidArgument(
          "the nvme tier's directory " + base +
          " is on tmpfs, which has no O_DIRECT: a cold load there would measure DRAM, not a disk. Pass --nvme-dir "
          "on a block-backed filesystem (e.g. --nvme-dir ./build-test-files), or --tiers host"));
    }
    o.nvme_dir = base;
  }
  struct RemoveDir {
    std::string path;
    ~RemoveDir() {
      if (!path.empty()) rmdir(path.c_str());
    }
  } remove_dir{made_dir};

  const bool progress_on = !a->Has("no-progress") && isatty(STDERR_FILENO) && !(json && !isatty(STDOUT_FILENO));
  Progress prog(progress_on);
  uint64_t units = 0;
  for (const ShapeRun& r : runs)
    for (const std::string& t : tiers) units += UnitsFor(r, t, o);
  prog.SetTotal(units);

  if (!json) {
    std::printf("kvtier bench recompute: chunk_tokens=%u reps=%llu measure<=%llu MiB per request, tiers=%s%s%s, "
                "engine KV in %s\n",
                ct, static_cast<unsigned long long>(o.reps), static_cast<unsigned long long>(*measure_mib),
                a->Get("tiers", default_tiers).c_str(), want_nvme ? " nvme_dir=" : "", o.nvme_dir.c_str(),
                o.engine_device >= 0 ? "GPU memory (loads through the GPU path)" : "host memory");
    if (std::find(tiers.begin(), tiers.end(), "redis") != tiers.end())
      std::printf("redis tier: %s (the run deletes its keys; they expire in 10 minutes anyway)\n", redis_addr.c_str());
    else if (!redis_reachable)
      std::printf("redis tier: not measured (no Redis at 127.0.0.1:6379; --redis host:port names one)\n");
    std::printf("GPU profiles (modeled): ");
    for (const GpuModel& g : gpus)
      std::printf("%s %.0f TFLOP/s dense bf16 measured x mfu %.2f, HBM %.2f TB/s x %.2f, $%.2f/h;  ", g.gpu.name.c_str(),
                  g.gpu.dense_bf16_tflops, g.mfu, g.gpu.hbm_tbps, g.hbm_efficiency, g.gpu.cost_per_hour);
    std::printf("\n");
    std::fflush(stdout);
  }

  const auto t_start = Clock::now();
  std::string io_backend = "-";
  for (size_t ri = 0; ri < runs.size(); ++ri) {
    ShapeRun& r = runs[ri];
    for (const std::string& t : tiers) {
      prog.Show(t + " " + r.label);
      const std::string dir = o.nvme_dir + "/kvtier-recompute-" + std::to_string(getpid()) + "-" + std::to_string(ri);
      const auto p0 = Clock::now();
      Status s = t == "host"   ? MeasureHost(r, o, prog)
                 : t == "nvme" ? MeasureCold(r, o, TierId::kNvme, dir, prog, &io_backend)
                               : MeasureCold(r, o, TierId::kRedis, redis_addr, prog, &io_backend);
      if (s.ok()) r.tiers[t].phase_s = Secs(p0, Clock::now());
      if (!s.ok()) {
        prog.Done();
        return fail(s.WithContext(t + " tier, shape of " + r.label + ": "));
      }
    }
  }
  prog.Done();
  const double measure_s = Secs(t_start, Clock::now());
  auto curve = [&](const ModelProfile& m, const std::string& tier) -> const TierCurve& {
    return runs[run_of.at(ShapeKey(ShapeOf(m, ct)))].tiers.at(tier);
  };

  // ---- KV sizes
  if (!json) {
    std::printf("\nKV per model (modeled from the shape; chunk = %u tokens)\n", ct);
    std::printf("%-14s %-28s %12s %12s %9s %8s  %s\n", "model", "checkpoint", "KV B/token", "chunk MiB", "active B",
                "GPUs", "note");
  }
  for (const ModelProfile& m : models) {
    const double chunk_mib = static_cast<double>(KvBytesPerToken(m) * ct) / kMiB;
    if (json) {
      Report(true)
          .Add("bench", "recompute").Add("section", "model").Add("model", m.name).Add("checkpoint", m.hf_id)
          .Add("kv_bytes_per_token", KvBytesPerToken(m)).Add("chunk_tokens", uint64_t{ct})
          .Add("chunk_bytes", KvBytesPerToken(m) * ct).Add("window", uint64_t{m.window})
          .Add("active_params_b", m.active_params / 1e9, 2).Add("matmul_params_b", m.matmul_params / 1e9, 2)
          .Add("gpus", uint64_t{m.gpus}).Print();
    } else {
      std::printf("%-14s %-28s %12llu %12.2f %9.2f %8u  %s\n", m.name.c_str(), m.hf_id.c_str(),
                  static_cast<unsigned long long>(KvBytesPerToken(m)), chunk_mib, m.active_params / 1e9, m.gpus,
                  m.note.c_str());
    }
  }

  // ---- load vs recompute per context
  if (!json) {
    std::printf("\nLoad (measured through the Store; measured=no: scaled from the largest measured load's bandwidth) "
                "vs recompute (modeled)\n");
    std::printf("%-14s %7s %9s %-5s %10s %-4s %7s", "model", "context", "KV MiB", "tier", "load ms", "meas", "GB/s");
    for (const GpuModel& g : gpus) std::printf(" | %-8.8s %10s %8s %7s", g.gpu.name.c_str(), "recomp ms", "speedup", "p*");
    std::printf("\n");
  }
  for (const ModelProfile& m : models) {
    for (uint64_t L : *contexts) {
      for (const std::string& tier : tiers) {
        const TierCurve& c = curve(m, tier);
        std::vector<double> rec, hit_s;
        Hit h;
        for (const GpuModel& g0 : gpus) {
          GpuModel g = g0;
          g.gpus = m.gpus;
          h = HitTime(m, g, c, ct, L);
          rec.push_back(PrefillSeconds(m, g, 0, L));
          hit_s.push_back(h.seconds);
        }
        const double gbps = h.load_s > 0 ? static_cast<double>(h.kv_bytes) / h.load_s / 1e9 : 0;
        auto pstar = [&](size_t gi) {
          const double saved = std::max(0.0, rec[gi] - hit_s[gi]) * m.gpus * gpus[gi].gpu.cost_per_hour / 3600;
          const double keep = static_cast<double>(h.kv_bytes) / 1e9 * costs.residency_hours * costs.storage_gb_hour[tier];
          return saved > 0 ? keep / saved : INFINITY;
        };
        if (json) {
          Report rep(true);
          rep.Add("bench", "recompute").Add("section", "load").Add("model", m.name).Add("context_tokens", L)
              .Add("tier", tier).Add("kv_bytes", h.kv_bytes).Add("load_s", h.load_s, 6)
              .Add("measured", h.measured ? "true" : "false").Add("load_gbps", gbps, 3);
          for (size_t gi = 0; gi < gpus.size(); ++gi) {
            const std::string p = gpus[gi].gpu.name + "_";
            const double ps = pstar(gi);
            rep.Add(p + "recompute_s", rec[gi], 6).Add(p + "hit_s", hit_s[gi], 6)
                .Add(p + "speedup", hit_s[gi] > 0 ? rec[gi] / hit_s[gi] : 0.0, 3)
                .Add(p + "p_star", std::isfinite(ps) ? ps : -1.0, 6);
          }
          rep.Print();
        } else {
          std::printf("%-14s %7s %9.1f %-5s %10.2f %-4s %7.2f", m.name.c_str(), Tokens(L).c_str(),
                      static_cast<double>(h.kv_bytes) / kMiB, tier.c_str(), h.load_s * 1e3, h.measured ? "yes" : "no",
                      gbps);
          for (size_t gi = 0; gi < gpus.size(); ++gi)
            std::printf(" | %-8s %10.2f %8.2f %7s", "", rec[gi] * 1e3, hit_s[gi] > 0 ? rec[gi] / hit_s[gi] : 0.0,
                        PStar(pstar(gi)).c_str());
          std::printf("\n");
        }
      }
    }
    if (!json) std::printf("\n");
  }

  // ---- break-even context length: the shortest whole-chunk context from which a load
  // (plus the last token's recompute) beats recomputing it.
  if (!json) std::printf("Break-even context length (tokens; load faster than recompute from here on)\n");
  if (!json) {
    std::printf("%-14s %-5s", "model", "tier");
    for (const GpuModel& g : gpus) std::printf(" %12s", g.gpu.name.c_str());
    std::printf("\n");
  }
  constexpr uint64_t kMaxSearch = 4ull << 20;
  for (const ModelProfile& m : models) {
    for (const std::string& tier : tiers) {
      const TierCurve& c = curve(m, tier);
      Report rep(true);
      rep.Add("bench", "recompute").Add("section", "break_even").Add("model", m.name).Add("tier", tier);
      if (!json) std::printf("%-14s %-5s", m.name.c_str(), tier.c_str());
      for (const GpuModel& g0 : gpus) {
        GpuModel g = g0;
        g.gpus = m.gpus;
        uint64_t found = 0;
        bool extrapolated = false;
        for (uint64_t L = ct; L <= kMaxSearch; L += ct) {
          const Hit h = HitTime(m, g, c, ct, L);
          if (h.seconds < PrefillSeconds(m, g, 0, L)) {
            found = L;
            extrapolated = h.kv_bytes > c.bytes.back();
            break;
          }
        }
        std::string text = found ? Tokens(found) + (extrapolated ? "*" : "") : ">" + Tokens(kMaxSearch);
        rep.Add(g.gpu.name + "_break_even_tokens", found).Add(g.gpu.name + "_break_even_extrapolated",
                                                               extrapolated ? "true" : "false");
        if (!json) std::printf(" %12s", text.c_str());
      }
      if (json) rep.Print();
      else std::printf("\n");
    }
  }
  if (!json) std::printf("(* beyond the largest measured load: from its bandwidth; 0/>%s: never within %s tokens)\n",
                         Tokens(kMaxSearch).c_str(), Tokens(kMaxSearch).c_str());

  // ---- end-to-end latency of one request: TTFT (prefill, or load + the last token) + decode.
  if (!json) {
    std::printf("\nEnd-to-end request latency, batch 1 (modeled GPU, measured loads): prefill share and what a hit "
                "saves\n");
    std::printf("%-14s %-8s %11s %10s %10s %10s %7s", "model", "gpu", "in/out", "prefill ms", "decode ms", "e2e ms",
                "prefill");
    for (const std::string& t : tiers) std::printf(" | %-5s %9s %6s", t.c_str(), "e2e ms", "saves");
    std::printf("\n");
  }
  for (const ModelProfile& m : models) {
    for (const GpuModel& g0 : gpus) {
      GpuModel g = g0;
      g.gpus = m.gpus;
      for (const auto& [in, out] : io) {
        const double prefill = PrefillSeconds(m, g, 0, in), decode = DecodeSeconds(m, g, in, out);
        const double e2e = prefill + decode;
        const std::string label = Tokens(in) + "/" + Tokens(out);
        Report rep(true);
        rep.Add("bench", "recompute").Add("section", "e2e").Add("model", m.name).Add("gpu", g.gpu.name)
            .Add("input_tokens", in).Add("output_tokens", out).Add("prefill_s", prefill, 6)
            .Add("decode_s", decode, 6).Add("e2e_s", e2e, 6).Add("prefill_share", prefill / e2e, 4);
        if (!json)
          std::printf("%-14s %-8s %11s %10.1f %10.1f %10.1f %6.1f%%", m.name.c_str(), g.gpu.name.c_str(), label.c_str(),
                      prefill * 1e3, decode * 1e3, e2e * 1e3, 100 * prefill / e2e);
        for (const std::string& t : tiers) {
          const Hit h = HitTime(m, g, curve(m, t), ct, in);
          const double hit_e2e = h.seconds + decode;
          rep.Add(t + "_ttft_s", h.seconds, 6).Add(t + "_e2e_s", hit_e2e, 6)
              .Add(t + "_saved_share", (e2e - hit_e2e) / e2e, 4).Add(t + "_measured", h.measured ? "true" : "false");
          if (!json)
            std::printf(" | %-5s %9.1f %5.1f%%", h.measured ? "" : "*", hit_e2e * 1e3, 100 * (e2e - hit_e2e) / e2e);
        }
        if (json) rep.Print();
        else std::printf("\n");
      }
    }
  }
  if (!json) std::printf("(* load extrapolated from the measured bandwidth; saves < 0: the hit is slower)\n");

  // ---- measured prefill (from an engine adapter's file) next to measured loads
  if (!measured_prefill.empty()) {
    if (!json)
      std::printf("\nMeasured prefill (from --measured-prefill-json) vs measured load of the same KV shape\n"
                  "%-24s %-6s %-12s %8s %12s %-5s %10s %8s\n",
                  "model", "device", "engine", "context", "prefill ms", "tier", "load ms", "speedup");
    for (const MeasuredPrefill& mp : measured_prefill) {
      for (const std::string& t : tiers) {
        const TierCurve& c = runs[run_of.at(ShapeKey(ShapeOf(mp.model, ct)))].tiers.at(t);
        const uint64_t covered = mp.context / ct * ct;
        const uint64_t kv_tokens = mp.model.window ? std::min<uint64_t>(covered, mp.model.window / ct * ct) : covered;
        bool measured = false;
        const double load = c.Estimate(kv_tokens, &measured);
        if (json) {
          Report(true).Add("bench", "recompute").Add("section", "measured_prefill").Add("model", mp.model.name)
              .Add("device", mp.device).Add("engine", mp.engine).Add("context_tokens", mp.context)
              .Add("prefill_s", mp.prefill_s, 6).Add("tier", t).Add("load_s", load, 6)
              .Add("measured", measured ? "true" : "false").Add("speedup", load > 0 ? mp.prefill_s / load : 0.0, 3)
              .Print();
        } else {
          std::printf("%-24.24s %-6.6s %-12.12s %8s %12.1f %-5s %10.2f %8.1f%s\n", mp.model.name.c_str(),
                      mp.device.c_str(), mp.engine.c_str(), Tokens(mp.context).c_str(), mp.prefill_s * 1e3, t.c_str(),
                      load * 1e3, load > 0 ? mp.prefill_s / load : 0.0, measured ? "" : " *");
        }
      }
    }
  }

  // ---- a real cached request (timed by the adapter) next to this bench's prediction for it:
  // TTFT with the cache = the tail's prefill + loading the cached prefix from the tier,
  // where the load is what this run measured through the Store for the same KV shape.
  bool any_real = false;
  for (const MeasuredPrefill& mp : measured_prefill)
    any_real = any_real || (mp.cached_tokens > 0 && mp.ttft_full_s > 0 && mp.ttft_cached_s > 0);
  if (any_real) {
    if (!json)
      std::printf("\nA real cached request (adapter-timed TTFT) vs this bench's prediction for it\n"
                  "%-24s %-5s %7s %7s %10s %10s %10s %10s %11s %11s %11s %7s\n",
                  "model", "tier", "context", "cached", "ttft full", "ttft hit", "tail pref", "load(adp)",
                  "load(bench)", "saved ms", "pred saved", "pred/real");
    for (const MeasuredPrefill& mp : measured_prefill) {
      if (mp.cached_tokens == 0 || mp.ttft_full_s <= 0 || mp.ttft_cached_s <= 0) continue;
      for (const std::string& t : tiers) {
        if (!mp.tier.empty() && mp.tier != t) continue;
        const TierCurve& c = runs[run_of.at(ShapeKey(ShapeOf(mp.model, ct)))].tiers.at(t);
        bool measured = false;
        const double load = c.Estimate(mp.cached_tokens / ct * ct, &measured);
        const double tail = mp.tail_prefill_s > 0 ? mp.tail_prefill_s
                                                  : mp.prefill_s * static_cast<double>(mp.context - mp.cached_tokens) /
                                                        static_cast<double>(mp.context);
        const double predicted_hit = tail + load;
        const double real_saving = mp.ttft_full_s - mp.ttft_cached_s;
        const double predicted_saving = mp.ttft_full_s - predicted_hit;
        const double ratio = real_saving != 0 ? predicted_saving / real_saving : 0.0;
        if (json) {
          Report(true).Add("bench", "recompute").Add("section", "real_request").Add("model", mp.model.name)
              .Add("tier", t).Add("context_tokens", mp.context).Add("cached_tokens", mp.cached_tokens)
              .Add("ttft_full_s", mp.ttft_full_s, 6).Add("ttft_cached_s", mp.ttft_cached_s, 6)
              .Add("tail_prefill_s", tail, 6).Add("adapter_load_s", mp.load_s, 6).Add("bench_load_s", load, 6)
              .Add("load_measured", measured ? "true" : "false").Add("real_saving_s", real_saving, 6)
              .Add("predicted_saving_s", predicted_saving, 6).Add("predicted_over_real", ratio, 3)
              .Print();
        } else {
          std::printf("%-24.24s %-5s %7s %7s %10.1f %10.1f %10.1f %10.2f %10.2f%s %11.1f %11.1f %7.3f\n",
                      mp.model.name.c_str(), t.c_str(), Tokens(mp.context).c_str(), Tokens(mp.cached_tokens).c_str(),
                      mp.ttft_full_s * 1e3, mp.ttft_cached_s * 1e3, tail * 1e3, mp.load_s * 1e3, load * 1e3,
                      measured ? " " : "*", real_saving * 1e3, predicted_saving * 1e3, ratio);
        }
      }
    }
  }

  // ---- agreement with `bench tiers` in the same run
  if (!json)
    std::printf("\nAgreement with `kvtier bench tiers` (same chunk size, same request size, same Store, same run). "
                "req: chunks per request (bench tiers' ~32 MiB);\nsingle: this bench's own timed loads of such requests "
                "(median of reps); depth 1: bench tiers with one request in flight (what one request's TTFT sees);\n"
                "ratio: median of the per-repetition ratios (each pair measured back to back); pipelined: bench tiers' "
                "default requests in flight (throughput);\ncontexts: this bench's loads of the measured contexts "
                "(larger requests)\n"
                "%-30s %-5s %9s %3s %8s %8s %7s %-6s %10s %7s %8s %7s\n",
                "shape (models)", "tier", "chunk MiB", "req", "single", "depth 1", "ratio", "agree", "pipelined",
                "ratio", "contexts", "secs");
  for (const ShapeRun& r : runs) {
    for (const std::string& t : tiers) {
      const TierCurve& c = r.tiers.at(t);
      const double single = c.single_gbps, ratio1 = c.ratio_depth1, ratio = c.ratio_pipelined;
      const bool agree = std::fabs(ratio1 - 1) <= 0.10;
      if (json) {
        Report(true).Add("bench", "recompute").Add("section", "agreement").Add("models", r.label).Add("tier", t)
            .Add("chunk_bytes", ChunkPayloadBytes(r.shape)).Add("tokens", c.tokens.back())
            .Add("request_chunks", c.agree_chunks).Add("single_request_gbps", single, 3)
            .Add("contexts_gbps", c.contexts_gbps, 3).Add("bench_tiers_depth1_gbps", c.tiers_depth1_gbps, 3)
            .Add("ratio_depth1", ratio1, 3).Add("agree_within_10pct", agree ? "true" : "false")
            .Add("bench_tiers_gbps", c.tiers_gbps, 3).Add("bench_tiers_depth", uint64_t{c.tiers_depth})
            .Add("ratio_pipelined", ratio, 3).Add("skipped_cold_loads", c.skipped).Add("phase_s", c.phase_s, 1)
            .Add("io", t == "nvme" ? io_backend : "-").Print();
      } else {
        std::printf("%-30.30s %-5s %9.2f %3llu %8.2f %8.2f %7.3f %-6s %7.2f/%-2u %7.3f %8.2f %7.1f\n",
                    r.label.c_str(), t.c_str(), static_cast<double>(ChunkPayloadBytes(r.shape)) / kMiB,
                    static_cast<unsigned long long>(c.agree_chunks), single, c.tiers_depth1_gbps, ratio1,
                    agree ? "yes" : "NO", c.tiers_gbps, c.tiers_depth, ratio, c.contexts_gbps, c.phase_s);
      }
    }
  }
  if (!json)
    std::printf("(GB/s; pipelined shown as GB/s / requests in flight. A request's chunks load one after another on "
                "one worker,\nso a single request cannot reach the pipelined figure; see docs/recompute.md, "
                "\"Which figure to use\".)\n");

  // ---- the plot
  std::string plot_path = a->Has("no-plot") ? "" : a->Get("plot", "kvtier-recompute.png");
  if (!plot_path.empty()) {
    PlotSpec spec;
    spec.title = "KVTIER BENCH RECOMPUTE: LOAD (MEASURED) VS RECOMPUTE (MODELED)";
    spec.x_label = "CONTEXT LENGTH (TOKENS)";
    spec.y_label = "TIME TO KV (S)";
    const uint32_t tier_colors[] = {0x1f77b4, 0xd62728, 0x2ca02c, 0x9467bd};
    const uint32_t gpu_colors[] = {0x555555, 0xff7f0e, 0x8c564b, 0xe377c2};
    for (const ModelProfile& m : models) {
      PlotPanel p;
      p.title = m.name;
      for (size_t ti = 0; ti < tiers.size(); ++ti) {
        PlotSeries s;
        s.label = tiers[ti] + " load" + (tiers[ti] == "host" ? " (warm)" : tiers[ti] == "nvme" ? " (cold)" : " (remote)");
        s.rgb = tier_colors[ti % 4];
        for (uint64_t L : *contexts) {
          GpuModel g = gpus[0];
          g.gpus = m.gpus;
          const Hit h = HitTime(m, g, curve(m, tiers[ti]), ct, L);
          s.x.push_back(static_cast<double>(L));
          s.y.push_back(h.load_s);
          s.measured.push_back(h.measured);
        }
        p.series.push_back(std::move(s));
      }
      for (size_t gi = 0; gi < gpus.size(); ++gi) {
        PlotSeries s;
        s.label = "recompute " + gpus[gi].gpu.name;
        s.rgb = gpu_colors[gi % 4];
        s.stroke = gi % 2 ? PlotSeries::Stroke::kDotted : PlotSeries::Stroke::kDashed;
        s.markers = false;
        GpuModel g = gpus[gi];
        g.gpus = m.gpus;
        for (uint64_t L : *contexts) {
          s.x.push_back(static_cast<double>(L));
          s.y.push_back(PrefillSeconds(m, g, 0, L));
        }
        p.series.push_back(std::move(s));
      }
      spec.panels.push_back(std::move(p));
    }
    spec.notes.push_back("LOADS: THIS MACHINE, REAL STORE");
    spec.notes.push_back("RECOMPUTE: FLOPS / (GPU X MFU " + Fmt("%.2f", *mfu) + ")");
    spec.notes.push_back("GPUS PER MODEL AS IN THE TABLE");
    if (gpus.size() > 1 && gpus[0].gpu.dense_bf16_tflops == gpus[1].gpu.dense_bf16_tflops) {
      spec.notes.push_back("(" + gpus[0].gpu.name + " AND " + gpus[1].gpu.name + ": SAME DENSE");
      spec.notes.push_back(" BF16 RATE, THEIR LINES COINCIDE)");
    }
    spec.notes.push_back("CHUNK " + std::to_string(ct) + " TOKENS");
    Status ps = WriteLogLogPng(plot_path, spec);
    if (!ps.ok()) {
      std::fprintf(stderr, "kvtier bench recompute: the plot could not be written: %s\n", ps.message().c_str());
      return 1;
    }
    if (json) Report(true).Add("bench", "recompute").Add("section", "plot").Add("path", plot_path).Print();
    else std::printf("\nplot: %s\n", plot_path.c_str());
  }
  if (!json)
    std::printf("measured in %.1f s (io=%s); figures marked measured come from this run, recompute and decode are "
                "modeled (docs/recompute.md)\n", measure_s, io_backend.c_str());
  return 0;
}

}  // namespace kvtier::bench
