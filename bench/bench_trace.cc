// kvtier bench trace FILE: replays a workload trace (bench/trace.h) through the real
// Store (bench/trace_replay.h) and prints the hit ratio per tier and overall, the bytes
// each tier moved, and the prefill time the hits save (modeled), per round when the
// trace has rounds. --compare-host-only replays it again without the NVMe tier and
// prints the two side by side.
//
// Bytes: the replay moves real bytes of the --model's KV shape when the host tier fits
// in --max-host-gib; otherwise (or with --shape tiny) it uses a shape of 8 bytes per
// token, which runs the same index, placement and copy code, and the bytes it reports
// are modeled: chunk counts times the model's bytes per chunk.
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "bench/redis_limit.h"
#include "bench/trace.h"
#include "bench/trace_replay.h"

namespace kvtier::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr double kGiB = 1024.0 * 1024 * 1024;
constexpr long kTmpfsMagic = 0x01021994;

int Fail(const Status& s) {
  // "not supported yet: ..." reads better without the code's own prefix.
  std::fprintf(stderr, "kvtier bench trace: %s\n",
               s.code() == Status::Code::kNotSupported ? std::string(s.message()).c_str() : s.ToString().c_str());
  return s.IsInvalidArgument() || s.code() == Status::Code::kNotSupported ? 2 : 1;
}

// "inf" or 0: unbounded (0). Otherwise a token count, with an optional decimal suffix
// K, M or G (542K = 542000), fractions allowed (1.5M).
Result<uint64_t> ParseTokens(const std::string& flag, const std::string& v) {
  if (v == "inf" || v == "0") return uint64_t{0};
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  double mult = 1;
  if (end != v.c_str() && *end != '\0' && end[1] == '\0') {
    switch (*end) {
      case 'k':
      case 'K':
        mult = 1e3;
        ++end;
        break;
      case 'm':
      case 'M':
        mult = 1e6;
        ++end;
        break;
      case 'g':
      case 'G':
        mult = 1e9;
        ++end;
        break;
      default:
        break;
    }
  }
  if (end == v.c_str() || *end != '\0' || !(x > 0) || !std::isfinite(x * mult) || x * mult >= 1e18)
    return Status::InvalidArgument("--" + flag + " " + v + ": expected a token count (e.g. 1000000, 542K, 3M) or inf");
  return static_cast<uint64_t>(std::llround(x * mult));
}

std::string Bytes(double b) {
  char buf[64];
  if (b >= kGiB * 1024)
    std::snprintf(buf, sizeof buf, "%.2f TiB", b / kGiB / 1024);
  else if (b >= kGiB)
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / kGiB);
  else
    std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1024.0 * 1024));
  return buf;
}

std::string Gib(double g) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", g);
  return buf;
}

double Ratio(uint64_t a, uint64_t b) { return b ? static_cast<double>(a) / b : 0.0; }

// A one-line JSON object built field by field.
class Json {
 public:
  Json& Str(const std::string& k, const std::string& v) {
    Key(k);
    s_ += '"';
    for (char c : v) {
      if (c == '"' || c == '\\') s_ += '\\';
      if (static_cast<unsigned char>(c) < 0x20) {
        char e[8];
        std::snprintf(e, sizeof e, "\\u%04x", c);
        s_ += e;
        continue;
      }
      s_ += c;
    }
    s_ += '"';
    return *this;
  }
  Json& Num(const std::string& k, double v, int precision = 4) {
    Key(k);
    char b[64];
    std::snprintf(b, sizeof b, "%.*f", precision, std::isfinite(v) ? v : 0.0);
    s_ += b;
    return *this;
  }
  Json& Int(const std::string& k, uint64_t v) {
    Key(k);
    s_ += std::to_string(v);
    return *this;
  }
  Json& Bool(const std::string& k, bool v) {
    Key(k);
    s_ += v ? "true" : "false";
    return *this;
  }
  Json& Raw(const std::string& k, const std::string& json) {
    Key(k);
    s_ += json;
    return *this;
  }
  std::string Done() const { return "{" + s_ + "}"; }

 private:
  void Key(const std::string& k) {
    if (!s_.empty()) s_ += ',';
    s_ += '"' + k + "\":";
  }
  std::string s_;
};

// Progress on stderr, redrawn at most every 100 ms, only when stderr is a terminal.
class ProgressBar {
 public:
  ProgressBar(bool enabled, std::string label) : enabled_(enabled && isatty(2)), label_(std::move(label)) {}
  void Update(size_t done, size_t total) {
    if (!enabled_) return;
    const auto now = Clock::now();
    if (done != total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    constexpr int kWidth = 30;
    const int fill = total ? static_cast<int>(kWidth * done / total) : kWidth;
    std::fprintf(stderr, "\r%s [%s%s] %zu/%zu requests %3d%%", label_.c_str(), std::string(fill, '#').c_str(),
                 std::string(kWidth - fill, '.').c_str(), done, total,
                 total ? static_cast<int>(100 * done / total) : 100);
    if (done == total) std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  std::string label_;
  Clock::time_point last_{};
};

// A directory for the NVMe tier: a fresh one under --nvme-dir or $TMPDIR (removed at the
// end unless --keep). Refuses tmpfs, which has no O_DIRECT, unless --buffered.
struct NvmeDir {
  std::string path;
  bool remove = false;
  ~NvmeDir() {
    std::error_code ec;
    if (remove) std::filesystem::remove_all(path, ec);
  }
};

Result<std::unique_ptr<NvmeDir>> MakeNvmeDir(const Args& a, uint64_t need_bytes) {
  // Always a fresh directory (inside --nvme-dir when given): a directory holding an
  // earlier replay's tier would be recovered into the index and count as hits.
  auto d = std::make_unique<NvmeDir>();
  std::string parent;
  if (a.Has("nvme-dir")) {
    parent = a.Get("nvme-dir", "");
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) return Status::IOError("cannot create --nvme-dir " + parent + ": " + ec.message());
  } else {
    const char* tmp = std::getenv("TMPDIR");
    parent = tmp && *tmp ? tmp : "/tmp";
  }
  std::string templ = parent + "/kvtier-trace-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) return Status::IOError("cannot create a directory under " + parent);
  d->path = templ;
  d->remove = !a.Has("keep");
  struct statfs fs;
  if (statfs(d->path.c_str(), &fs) == 0 && static_cast<long>(fs.f_type) == kTmpfsMagic && !a.Has("buffered"))
    return Status::InvalidArgument("NVMe tier: " + d->path +
                                   " is on tmpfs, which has no O_DIRECT; point --nvme-dir at a disk-backed "
                                   "filesystem (or pass --buffered to measure through the page cache)");
  struct statvfs vfs;
  if (statvfs(d->path.c_str(), &vfs) == 0) {
    const double free_bytes = static_cast<double>(vfs.f_bavail) * vfs.f_frsize;
    if (need_bytes > free_bytes)
      return Status::NoSpace("NVMe tier: " + Bytes(need_bytes) + " needed in " + d->path + ", " + Bytes(free_bytes) +
                             " free; lower --nvme-capacity-tokens or pick another --nvme-dir");
  }
  return d;
}

struct Summary {
  std::string label;
  ReplayResult r;
};

std::string TierJson(const ReplayResult& r, TierId t, uint64_t read_chunks, uint64_t write_chunks,
                     double modeled_chunk_bytes) {
  const int i = static_cast<int>(t);
  return Json()
      .Num("block_hit_ratio", Ratio(r.tier_hit_blocks[i], r.blocks))
      .Num("token_hit_ratio", Ratio(r.tier_hit_tokens[i], r.tokens))
      .Int("hit_blocks", r.tier_hit_blocks[i])
      .Int("hit_tokens", r.tier_hit_tokens[i])
      .Int("read_chunks", read_chunks)
      .Int("write_chunks", write_chunks)
      .Int("read_bytes", read_chunks * r.chunk_payload_bytes)
      .Int("write_bytes", write_chunks * r.chunk_payload_bytes)
      .Num("modeled_read_bytes", read_chunks * modeled_chunk_bytes, 0)
      .Num("modeled_write_bytes", write_chunks * modeled_chunk_bytes, 0)
      .Done();
}

struct Context {
  const Trace* trace;
  uint32_t block_tokens;
  const TraceModel* model;
  const TraceModel* shape;  // the shape replayed (the model's, or tiny)
  double gpu_tflops;
  bool json;
};

// Chunks each tier read and wrote: host reads serve host hits, host writes are new saves
// and promotions from NVMe; NVMe writes are demotions, NVMe reads promotions.
// Redis: reads are its promotions, writes its demotions (write-back).
struct Moved {
  uint64_t host_read, host_write, nvme_read, nvme_write, redis_read, redis_write;
};
Moved MovedChunks(const ReplayResult& r) {
  return {r.tier_hit_blocks[static_cast<int>(TierId::kHost)], r.store.saved_chunks + r.store.promotions,
          r.store.promotions - r.store.redis_loaded_chunks, r.store.demotions,
          r.store.redis_loaded_chunks, r.store.redis_saved_chunks};
}

std::string SummaryJson(const Context& c, const ReplayResult& r) {
  const double modeled_chunk = static_cast<double>(TokenBytes(c.model->shape)) * c.block_tokens;
  const double per_token_s = c.model->active_params > 0 ? 2 * c.model->active_params / (c.gpu_tflops * 1e12) : 0;
  const Moved m = MovedChunks(r);
  std::string rounds = "[";
  for (const RoundStats& rs : r.rounds) {
    if (rounds.size() > 1) rounds += ',';
    rounds += Json()
                  .Int("round", static_cast<uint64_t>(rs.round))
                  .Int("requests", rs.requests)
                  .Num("block_hit_ratio", Ratio(rs.hit_blocks, rs.blocks))
                  .Num("token_hit_ratio", Ratio(rs.hit_tokens, rs.tokens))
                  .Done();
  }
  rounds += "]";
  const double wall = r.open_seconds + r.replay_seconds;
  return Json()
      .Num("block_hit_ratio", Ratio(r.hit_blocks, r.blocks))
      .Num("token_hit_ratio", Ratio(r.hit_tokens, r.tokens))
      .Int("hit_blocks", r.hit_blocks)
      .Int("hit_tokens", r.hit_tokens)
      .Int("host_capacity_chunks", r.host_capacity_chunks)
      .Int("nvme_capacity_chunks", r.nvme_capacity_chunks)
      .Int("redis_capacity_chunks", r.redis_capacity_chunks)
      .Raw("host", TierJson(r, TierId::kHost, m.host_read, m.host_write, modeled_chunk))
      .Raw("nvme", TierJson(r, TierId::kNvme, m.nvme_read, m.nvme_write, modeled_chunk))
      .Raw("redis", TierJson(r, TierId::kRedis, m.redis_read, m.redis_write, modeled_chunk))
      .Num("prefill_saved_seconds_modeled", per_token_s * r.hit_tokens, 3)
      .Num("prefill_total_seconds_modeled", per_token_s * r.tokens, 3)
      .Raw("rounds", rounds)
      .Int("saved_chunks", r.store.saved_chunks)
      .Int("evictions", r.store.evictions)
      .Int("demotions", r.store.demotions)
      .Int("promotions", r.store.promotions)
      .Int("save_failed_chunks", r.save_failed_chunks)
      .Int("load_short_chunks", r.load_short_chunks)
      .Int("verify_errors", r.verify_errors)
      .Num("open_seconds", r.open_seconds, 3)
      .Num("replay_seconds", r.replay_seconds, 3)
      .Num("wall_seconds", wall, 3)
      .Num("requests_per_second", r.replay_seconds > 0 ? r.requests / r.replay_seconds : 0, 1)
      .Done();
}

void PrintSummary(const Context& c, const std::string& label, const ReplayResult& r) {
  const bool modeled = c.shape != c.model;
  const double modeled_chunk = static_cast<double>(TokenBytes(c.model->shape)) * c.block_tokens;
  const Moved m = MovedChunks(r);
  std::printf("\n%s: replay %.2f s (%.0f requests/s), store open %.2f s\n", label.c_str(), r.replay_seconds,
              r.replay_seconds > 0 ? r.requests / r.replay_seconds : 0.0, r.open_seconds);
  std::printf("  hit ratio      blocks   tokens\n");
  for (TierId t : {TierId::kHost, TierId::kNvme, TierId::kRedis}) {
    if (t == TierId::kNvme && r.nvme_capacity_chunks == 0) continue;
    if (t == TierId::kRedis && r.redis_capacity_chunks == 0) continue;
    const int i = static_cast<int>(t);
    std::printf("    %-10s  %7.4f  %7.4f\n", TierName(t), Ratio(r.tier_hit_blocks[i], r.blocks),
                Ratio(r.tier_hit_tokens[i], r.tokens));
  }
  std::printf("    %-10s  %7.4f  %7.4f   (%llu of %llu blocks, %llu of %llu tokens)\n", "overall",
              Ratio(r.hit_blocks, r.blocks), Ratio(r.hit_tokens, r.tokens),
              static_cast<unsigned long long>(r.hit_blocks), static_cast<unsigned long long>(r.blocks),
              static_cast<unsigned long long>(r.hit_tokens), static_cast<unsigned long long>(r.tokens));
  std::printf("  bytes moved (%s):\n",
              modeled ? ("modeled at " + c.model->name + "'s KV size from the chunk counts").c_str() : "real bytes");
  auto line = [&](const char* tier, const char* what_r, uint64_t rc, const char* what_w, uint64_t wc) {
    const double cb = modeled ? modeled_chunk : static_cast<double>(r.chunk_payload_bytes);
    std::printf("    %-5s %s %s (%llu chunks), %s %s (%llu chunks)\n", tier, what_r, Bytes(rc * cb).c_str(),
                static_cast<unsigned long long>(rc), what_w, Bytes(wc * cb).c_str(),
                static_cast<unsigned long long>(wc));
  };
  line("host", "read", m.host_read, "written", m.host_write);
  if (r.nvme_capacity_chunks > 0) line("nvme", "read", m.nvme_read, "written", m.nvme_write);
  if (r.redis_capacity_chunks > 0) line("redis", "read", m.redis_read, "written", m.redis_write);
  if (c.model->active_params > 0) {
    const double per_token_s = 2 * c.model->active_params / (c.gpu_tflops * 1e12);
    std::printf("  prefill time saved (modeled: 2 x %.3g FLOPs/token at %.0f TFLOPS): %.4g s of %.4g s\n",
                c.model->active_params, c.gpu_tflops, per_token_s * r.hit_tokens, per_token_s * r.tokens);
  }
  std::printf(
      "  store: saved=%llu evictions=%llu demotions=%llu promotions=%llu save_failed=%llu "
      "load_short=%llu verify_errors=%llu\n",
      static_cast<unsigned long long>(r.store.saved_chunks), static_cast<unsigned long long>(r.store.evictions),
      static_cast<unsigned long long>(r.store.demotions), static_cast<unsigned long long>(r.store.promotions),
      static_cast<unsigned long long>(r.save_failed_chunks), static_cast<unsigned long long>(r.load_short_chunks),
      static_cast<unsigned long long>(r.verify_errors));
}

void PrintRounds(const std::vector<Summary>& runs) {
  if (runs.empty() || runs[0].r.rounds.empty()) return;
  std::printf("\nper-round token hit ratio:\n  round requests");
  for (const Summary& s : runs) std::printf("  %12s", s.label.c_str());
  std::printf("\n");
  for (size_t i = 0; i < runs[0].r.rounds.size(); ++i) {
    const RoundStats& rs = runs[0].r.rounds[i];
    std::printf("  %5lld %8llu", static_cast<long long>(rs.round), static_cast<unsigned long long>(rs.requests));
    for (const Summary& s : runs) {
      const RoundStats& x = s.r.rounds[i];
      std::printf("  %12.3f", Ratio(x.hit_tokens, x.tokens));
    }
    std::printf("\n");
  }
}

// The first word not starting with "--" that is not the value of a flag.
std::vector<std::string> SplitPositional(const std::vector<std::string>& argv, const std::vector<std::string>& bools,
                                         std::vector<std::string>* positional) {
  std::vector<std::string> rest;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& w = argv[i];
    if (w.rfind("--", 0) == 0) {
      rest.push_back(w);
      const std::string name = w.substr(2);
      bool is_bool = false;
      for (const std::string& b : bools) is_bool |= b == name;
      if (!is_bool && name.find('=') == std::string::npos && i + 1 < argv.size()) rest.push_back(argv[++i]);
      continue;
    }
    positional->push_back(w);
  }
  return rest;
}

}  // namespace

int RunBenchTrace(const std::vector<std::string>& argv) {
  const std::vector<std::string> bools = {"json", "no-progress", "no-verify",    "compare-host-only",
                                          "keep", "buffered",    "metadata-only"};
  std::vector<std::string> positional;
  const std::vector<std::string> flags = SplitPositional(argv, bools, &positional);
  Result<Args> a = Args::Parse(flags,
                               {"model", "shape", "block-tokens", "host-capacity-tokens", "nvme-capacity-tokens",
                                "redis-capacity-tokens", "redis", "nvme-dir", "gpu-tflops", "max-host-gib", "workers"},
                               bools);
  if (!a.ok()) return Fail(a.status());
  if (positional.size() != 1)
    return Fail(Status::InvalidArgument("expected one trace file: kvtier bench trace FILE [options]"));
  const std::string model_name = a->Get("model", "llama3-8b");
  const TraceModel* model = FindTraceModel(model_name);
  if (model == nullptr) {
    std::string names;
    for (const TraceModel& m : TraceModels()) names += (names.empty() ? "" : ", ") + m.name;
    return Fail(Status::InvalidArgument("--model " + model_name + ": unknown; one of " + names));
  }
  // --metadata-only: the same index, placement and tier code with 8-byte tokens (the tiny
  // shape), so capacities far beyond this machine's memory replay; bytes are then modeled at
  // --model's KV size from the chunk counts.
  if (a->Has("metadata-only") && a->Has("shape") && a->Get("shape", "") != "tiny")
    return Fail(Status::InvalidArgument("--metadata-only replays the tiny shape; drop --shape " + a->Get("shape", "")));
  const std::string shape_mode = a->Has("metadata-only") ? "tiny" : a->Get("shape", "auto");
  if (shape_mode != "auto" && shape_mode != "model" && shape_mode != "tiny")
    return Fail(Status::InvalidArgument("--shape " + shape_mode + ": expected auto, model or tiny"));
  auto block_flag = a->GetUint("block-tokens", 0);
  auto tflops = a->GetDouble("gpu-tflops", 400);
  auto max_gib = a->GetDouble("max-host-gib", 4);
  auto workers = a->GetUint("workers", 2);
  for (const Status* s : {&block_flag.status(), &tflops.status(), &max_gib.status(), &workers.status()})
    if (!s->ok()) return Fail(*s);
  if (*tflops <= 0) return Fail(Status::InvalidArgument("--gpu-tflops must be positive"));
  Result<uint64_t> host_tokens = ParseTokens("host-capacity-tokens", a->Get("host-capacity-tokens", "inf"));
  if (!host_tokens.ok()) return Fail(host_tokens.status());
  const bool nvme = a->Has("nvme-capacity-tokens");
  Result<uint64_t> nvme_tokens = ParseTokens("nvme-capacity-tokens", a->Get("nvme-capacity-tokens", "inf"));
  if (!nvme_tokens.ok()) return Fail(nvme_tokens.status());
  const bool redis = a->Has("redis-capacity-tokens");
  Result<uint64_t> redis_tokens = ParseTokens("redis-capacity-tokens", a->Get("redis-capacity-tokens", "inf"));
  if (!redis_tokens.ok()) return Fail(redis_tokens.status());
  if (a->Has("compare-host-only") && !nvme && !redis)
    return Fail(Status::InvalidArgument(
        "--compare-host-only compares with a tiered run: add --nvme-capacity-tokens or --redis-capacity-tokens"));
  // Redis: the server at --redis, or one of the replay's own (emptied: nothing from before counts).
  std::unique_ptr<LocalRedisServer> local_redis;
  std::string redis_address = a->Get("redis", "");
  if (redis && redis_address.empty()) {
    Result<std::unique_ptr<LocalRedisServer>> l = LocalRedisServer::Start();
    if (!l.ok()) return Fail(l.status());
    local_redis = std::move(*l);
    redis_address = local_redis->endpoint().host + ":" + std::to_string(local_redis->endpoint().port);
  }
  const bool json = a->Has("json");

  Result<Trace> trace = LoadTrace(positional[0]);
  if (!trace.ok()) return Fail(trace.status());
  uint32_t block_tokens = static_cast<uint32_t>(*block_flag);
  const bool inferred = block_tokens == 0;
  if (inferred) {
    Result<uint32_t> b = InferBlockTokens(*trace);
    if (!b.ok()) return Fail(b.status());
    block_tokens = *b;
  }
  if (Status s = CheckBlockTokens(*trace, block_tokens); !s.ok()) return Fail(s);

  // Real bytes of the model's shape when the host tier (and the engine's blocks) fit.
  const uint64_t host_chunks = CapacityChunks(*host_tokens, block_tokens, trace->unique_blocks);
  const double model_host_bytes = static_cast<double>(host_chunks) * ReplaySlotBytes(model->shape, block_tokens);
  const double limit = *max_gib * kGiB;
  const TraceModel* tiny = FindTraceModel("tiny");
  const TraceModel* shape = model;
  if (shape_mode == "tiny") shape = tiny;
  if (shape_mode != "tiny" && model_host_bytes > limit) {
    if (shape_mode == "model")
      return Fail(Status::InvalidArgument("--model " + model->name + " with " + std::to_string(host_chunks) +
                                          " host chunks needs " + Bytes(model_host_bytes) +
                                          " of host memory for real bytes, over --max-host-gib " + Gib(*max_gib) +
                                          "; use --shape tiny (same index and placement, bytes modeled at " +
                                          model->name + "), lower --host-capacity-tokens, or raise --max-host-gib"));
    shape = tiny;
  }
  const uint64_t nvme_chunks = nvme ? CapacityChunks(*nvme_tokens, block_tokens, trace->unique_blocks) : 0;
  std::unique_ptr<NvmeDir> dir;
  if (nvme) {
    Result<std::unique_ptr<NvmeDir>> d = MakeNvmeDir(*a, nvme_chunks * ReplaySlotBytes(shape->shape, block_tokens));
    if (!d.ok()) return Fail(d.status());
    dir = std::move(*d);
  }

  const Context ctx{&*trace, block_tokens, model, shape, *tflops, json};
  const std::string file = std::filesystem::path(positional[0]).filename().string();
  if (!json) {
    std::printf("kvtier bench trace: %s: %zu requests, %llu blocks (%llu unique) of %u tokens (%s)%s\n", file.c_str(),
                trace->requests.size(), static_cast<unsigned long long>(trace->total_blocks),
                static_cast<unsigned long long>(trace->unique_blocks), block_tokens,
                inferred ? "inferred from input_length and hash_ids" : "--block-tokens",
                trace->has_rounds ? ", with rounds" : "");
    std::printf("  model %s: %llu bytes/token; replayed shape: %s (%llu bytes/token, %s)\n", model->name.c_str(),
                static_cast<unsigned long long>(TokenBytes(model->shape)), shape->name.c_str(),
                static_cast<unsigned long long>(TokenBytes(shape->shape)),
                shape == model ? "real bytes"
                               : ("real bytes of the small shape; " + model->name + " would need " +
                                  Bytes(model_host_bytes) + " of host tier (limit --max-host-gib)")
                                     .c_str());
    std::printf("  host tier: %s tokens = %llu chunks (%s)",
                *host_tokens ? std::to_string(*host_tokens).c_str() : "inf",
                static_cast<unsigned long long>(host_chunks),
                Bytes(static_cast<double>(host_chunks) * ReplaySlotBytes(shape->shape, block_tokens)).c_str());
    if (nvme)
      std::printf("; nvme tier: %s tokens = %llu chunks in %s, write-back",
                  *nvme_tokens ? std::to_string(*nvme_tokens).c_str() : "inf",
                  static_cast<unsigned long long>(nvme_chunks), dir->path.c_str());
    if (redis)
      std::printf("; redis tier: %s tokens at %s%s, write-back", *redis_tokens ? std::to_string(*redis_tokens).c_str() : "inf",
                  redis_address.c_str(), local_redis ? " (started for this run)" : "");
    std::printf("\n");
  }

  std::vector<Summary> runs;
  for (int pass = 0; pass < (a->Has("compare-host-only") ? 2 : 1); ++pass) {
    ReplayOptions o;
    o.chunk_tokens = block_tokens;
    o.shape = shape->shape;
    o.host_capacity_tokens = *host_tokens;
    o.nvme = nvme && pass == 0;
    o.redis = redis && pass == 0;
    o.redis_capacity_tokens = *redis_tokens;
    o.redis_address = redis_address;
    // Keys of this run only (a shared server may hold another run's chunks).
    o.redis_key_prefix = "kvt-trace-" + std::to_string(::getpid()) + "-" +
                         std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
    o.nvme_capacity_tokens = *nvme_tokens;
    if (o.nvme) o.nvme_dir = dir->path;
    o.nvme_buffered = a->Has("buffered");
    o.verify = !a->Has("no-verify");
    o.worker_threads = static_cast<uint32_t>(std::max<uint64_t>(*workers, 1));
    const std::string label = o.nvme && o.redis ? "host+nvme+redis"
                              : o.nvme          ? "host+nvme"
                              : o.redis         ? "host+redis"
                                                : "host only";
    ProgressBar bar(!a->Has("no-progress"), label);
    o.progress = [&bar](size_t done, size_t total) { bar.Update(done, total); };
    Result<ReplayResult> r = ReplayTrace(*trace, o);
    if (!r.ok()) return Fail(r.status());
    if (!json) PrintSummary(ctx, label, *r);
    runs.push_back({label, std::move(*r)});
  }
  if (json) {
    Json j;
    j.Str("bench", "trace")
        .Str("trace", file)
        .Int("requests", trace->requests.size())
        .Int("blocks", trace->total_blocks)
        .Int("unique_blocks", trace->unique_blocks)
        .Int("block_tokens", block_tokens)
        .Str("model", model->name)
        .Str("shape", shape->name)
        .Bool("bytes_modeled", shape != model)
        .Int("model_bytes_per_token", TokenBytes(model->shape))
        .Int("shape_bytes_per_token", TokenBytes(shape->shape))
        .Num("gpu_tflops", *tflops, 1)
        .Str("host_capacity_tokens", *host_tokens ? std::to_string(*host_tokens) : "inf")
        .Str("nvme_capacity_tokens", !nvme          ? "off"
                                     : *nvme_tokens ? std::to_string(*nvme_tokens)
                                                    : "inf")
        .Str("redis_capacity_tokens", !redis          ? "off"
                                      : *redis_tokens ? std::to_string(*redis_tokens)
                                                      : "inf");
    std::string first = SummaryJson(ctx, runs[0].r);
    std::string out = j.Done();
    out.pop_back();  // merge the summary's fields into this object
    out += "," + first.substr(1);
    if (runs.size() > 1) {
      out.pop_back();
      out += ",\"host_only\":" + SummaryJson(ctx, runs[1].r) + "}";
    }
    std::printf("%s\n", out.c_str());
  } else {
    PrintRounds(runs);
  }
  for (const Summary& s : runs)
    if (s.r.verify_errors > 0) {
      std::fprintf(stderr, "kvtier bench trace: %s: %llu loaded chunks had the wrong bytes\n", s.label.c_str(),
                   static_cast<unsigned long long>(s.r.verify_errors));
      return 1;
    }
  return 0;
}

}  // namespace kvtier::bench
