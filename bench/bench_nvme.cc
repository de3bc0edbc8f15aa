// kvtier bench tiers --tier nvme: saves (write-through: done when durable on NVMe) and
// cold loads (chunks on NVMe only, read with O_DIRECT into host slots, verified, copied
// out) through the real Store, next to the limits measured in the same run:
//   load: a raw io_uring O_DIRECT random read of the tier's own data file, chunk-sized
//         blocks, the same queue depth (the file is written in full first, so every
//         block read is real data, not an unwritten extent);
//   save: a raw io_uring O_DIRECT random write of a file of the same size beside it
//         (writing into the tier's file would destroy the chunks being measured).
// With --fio (on by default when fio is installed) it also runs
//   fio --ioengine=io_uring --direct=1 --rw=randread --bs=<chunk> --iodepth=<depth>
// on the data file and prints the load figure's ratio to it.
//
// kvtier bench restart: fills an NVMe tier with --chunks chunks, closes the Store, opens
// it again and prints the time until it is ready (index rebuilt from RocksDB), then
// checks that lookups are served from the rebuilt index.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "bench/raw_io.h"
#include "bench/workload.h"
#include "kvtier/store.h"

namespace kvtier::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kMiB = 1ull << 20;

// A directory for the tier: --nvme-dir, or a fresh one under $TMPDIR (removed at exit
// unless --keep).
struct BenchDir {
  std::string path;
  bool remove = false;
  ~BenchDir() {
    std::error_code ec;
    if (remove) std::filesystem::remove_all(path, ec);
  }
};

Result<std::unique_ptr<BenchDir>> MakeDir(const Args& a) {
  auto d = std::make_unique<BenchDir>();
  if (a.Has("nvme-dir")) {
    d->path = a.Get("nvme-dir", "");
    std::error_code ec;
    std::filesystem::create_directories(d->path, ec);
    if (ec) return Status::IOError("cannot create --nvme-dir " + d->path + ": " + ec.message());
    return d;
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/kvtier-bench-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) return Status::IOError("cannot create a directory under " + templ);
  d->path = templ;
  d->remove = !a.Has("keep");
  return d;
}

// Writes `bytes` of data to `path` with O_DIRECT in 8 MiB blocks, so that later random
// reads anywhere in it hit written blocks.
Status Prefill(const std::string& path, uint64_t bytes) {
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0644);
  if (fd < 0) return Status::IOError("cannot open " + path + ": " + std::strerror(errno));
  const uint64_t block = 8 * kMiB;
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, block) != 0) {
    close(fd);
    return Status::NoMemory("prefill buffer");
  }
  std::memset(buf, 0xa5, block);
  Status st;
  for (uint64_t off = 0; off < bytes && st.ok(); off += block) {
    const uint64_t n = std::min(block, bytes - off);
    if (pwrite(fd, buf, n, static_cast<off_t>(off)) != static_cast<ssize_t>(n))
      st = Status::IOError("prefill of " + path + " failed: " + std::strerror(errno));
  }
  if (st.ok() && fdatasync(fd) != 0) st = Status::IOError("fdatasync " + path + ": " + std::strerror(errno));
  free(buf);
  close(fd);
  return st;
}

KvShape Llama3_8b() {
  KvShape s;
  s.num_layers = 32;
  s.num_kv_heads = 8;
  s.head_dim = 128;
  s.dtype = DType::kBFloat16;
  return s;
}

int Fail(const char* what, const Status& s) {
  std::fprintf(stderr, "kvtier bench %s: %s\n", what, s.ToString().c_str());
  return s.IsInvalidArgument() ? 2 : 1;
}

}  // namespace

int RunBenchTiersNvme(const std::vector<std::string>& argv) {
  Result<Args> a = Args::Parse(argv,
                               {"tier", "sizes", "seconds", "reps", "host-capacity-mib", "nvme-capacity-mib",
                                "engine-mib", "workers", "depth", "queue-depth", "nvme-dir", "fio-seconds"},
                               {"json", "keep", "no-fio", "buffered"});
  if (!a.ok()) return Fail("tiers", a.status());
  auto sizes = a->GetDoubleList("sizes", {2, 8, 32});
  auto seconds = a->GetDouble("seconds", 0.5);
  auto reps = a->GetUint("reps", 3);
  auto host_mib = a->GetUint("host-capacity-mib", 512);
  auto nvme_mib = a->GetUint("nvme-capacity-mib", 4096);
  auto engine_mib = a->GetUint("engine-mib", 256);
  // Requests in flight and workers default to what keeps queue_depth chunks in flight,
  // as the limit does (at least four requests, so that copies overlap I/O).
  auto workers = a->GetUint("workers", 0);
  auto depth = a->GetUint("depth", 0);
  auto qd = a->GetUint("queue-depth", 16);
  auto fio_seconds = a->GetDouble("fio-seconds", 1);
  for (const Status* s : {&sizes.status(), &seconds.status(), &reps.status(), &host_mib.status(),
                          &nvme_mib.status(), &engine_mib.status(), &workers.status(), &depth.status(),
                          &qd.status(), &fio_seconds.status()})
    if (!s->ok()) return Fail("tiers", *s);
  if (*reps == 0 || *qd == 0)
    return Fail("tiers", Status::InvalidArgument("--reps and --queue-depth must be at least 1"));
  const uint64_t max_depth = *depth ? *depth : std::max<uint64_t>(2, *qd);
  if (!a->Has("host-capacity-mib")) *host_mib = std::max<uint64_t>(*host_mib, 2 * max_depth * 32 + 256);
  const bool json = a->Has("json");
  Result<std::unique_ptr<BenchDir>> dir = MakeDir(*a);
  if (!dir.ok()) return Fail("tiers", dir.status());

  const std::string data = (*dir)->path + "/nvme-0.dat";
  const std::string limit_file = (*dir)->path + "/limit-write.dat";
  const uint64_t file_bytes = *nvme_mib * kMiB;
  if (Status p = Prefill(data, file_bytes); !p.ok()) return Fail("tiers", p);

  StoreConfig cfg;
  cfg.host_capacity_bytes = *host_mib * kMiB;
  cfg.worker_threads = static_cast<uint32_t>(*workers ? *workers : std::min<uint64_t>(max_depth, 16));
  cfg.nvme.enabled = true;
  cfg.nvme.paths = {data};
  cfg.nvme.capacity_bytes = file_bytes;
  cfg.nvme.metadata_dir = (*dir)->path + "/meta";
  cfg.nvme.queue_depth = static_cast<uint32_t>(*qd);
  cfg.nvme.buffered = a->Has("buffered");
  cfg.nvme.policy = WritePolicy::kWriteThrough;
  Result<std::unique_ptr<Store>> store = Store::Open(cfg);
  if (!store.ok()) return Fail("tiers", store.status());
  const StoreStats st0 = (*store)->Stats();
  const bool use_fio = !a->Has("no-fio");
  if (!json)
    std::printf("kvtier bench tiers: tier=nvme dir=%s io=%s%s shape=llama3-8b host=%llu MiB nvme=%llu MiB "
                "workers=%llu max_requests_in_flight=%llu queue_depth=%llu reps=%llu\n",
                (*dir)->path.c_str(), st0.nvme_io_backend.c_str(), cfg.nvme.buffered ? " (buffered)" : " (O_DIRECT)",
                static_cast<unsigned long long>(*host_mib), static_cast<unsigned long long>(*nvme_mib),
                static_cast<unsigned long long>(cfg.worker_threads), static_cast<unsigned long long>(max_depth),
                static_cast<unsigned long long>(*qd), static_cast<unsigned long long>(*reps));

  const uint64_t token_bytes = 128 * 1024;
  for (double mib : *sizes) {
    const uint32_t chunk_tokens = static_cast<uint32_t>(mib * kMiB / token_bytes);
    if (chunk_tokens == 0) return Fail("tiers", Status::InvalidArgument("--sizes: a chunk smaller than one token"));
    NamespaceSpec spec;
    spec.model.name = "bench/llama3-8b-shape";
    spec.model.revision = "bench";
    spec.shape = Llama3_8b();
    spec.shape.chunk_tokens = chunk_tokens;
    const uint32_t block_tokens = chunk_tokens % 16 == 0 ? 16 : chunk_tokens;
    EngineKv engine = MakeHostEngine(spec.shape, block_tokens, *engine_mib * kMiB);
    Result<NamespaceHandle> ns = (*store)->RegisterNamespace(spec, engine.layout);
    if (!ns.ok()) return Fail("tiers", ns.status());
    Workload w = Workload::ForEngine(store->get(), *ns, spec.shape, engine);
    w.depth = static_cast<uint32_t>(
        *depth ? *depth : std::max<uint64_t>(4, (*qd + w.chunks_per_request - 1) / w.chunks_per_request));
    w.max_saved = 1u << 20;
    // Enough on NVMe and not in host before the first load phase.
    while (true) {
      Result<double> s = w.Run(true, *seconds);
      if (!s.ok()) return Fail("tiers", s.status());
      if ((*store)->Stats().nvme_used_bytes > 2 * cfg.host_capacity_bytes) break;
    }
    std::vector<double> rlim, wlim, sv, ld, fios;
    std::string fio_error;
    for (uint64_t r = 0; r < *reps; ++r) {
      Result<RawIoResult> rl = RawUringThroughput(data, false, w.chunk_bytes, static_cast<uint32_t>(*qd), *seconds,
                                                  file_bytes);
      Result<RawIoResult> wl = RawUringThroughput(limit_file, true, w.chunk_bytes, static_cast<uint32_t>(*qd),
                                                  *seconds, file_bytes);
      if (!rl.ok()) return Fail("tiers", rl.status());
      if (!wl.ok()) return Fail("tiers", wl.status());
      Result<double> s = w.Run(true, *seconds);
      if (!s.ok()) return Fail("tiers", s.status());
      Result<double> l = w.Run(false, *seconds, TierId::kNvme);
      if (!l.ok()) return Fail("tiers", l.status());
      rlim.push_back(rl->gbps);
      wlim.push_back(wl->gbps);
      sv.push_back(*s);
      ld.push_back(*l);
      // fio in every repetition, next to the load it is compared with: the disk drifts.
      if (use_fio && fio_error.empty()) {
        Result<double> f = FioRandReadGbps(data, w.chunk_bytes, static_cast<uint32_t>(*qd), *fio_seconds);
        if (f.ok()) fios.push_back(*f);
        else fio_error = f.status().ToString();
      }
    }
    const double fio = fios.empty() ? 0 : Median(fios);
    if (!fio_error.empty() && !json) std::printf("fio: %s\n", fio_error.c_str());
    for (int op = 0; op < 2; ++op) {
      const double g = Median(op == 0 ? sv : ld), lim = Median(op == 0 ? wlim : rlim);
      Report rep(json);
      rep.Add("bench", "tiers")
          .Add("tier", "nvme")
          .Add("op", op == 0 ? "save" : "load")
          .Add("chunk_bytes", w.chunk_bytes)
          .Add("chunk_tokens", uint64_t{chunk_tokens})
          .Add("chunks_per_request", uint64_t{w.chunks_per_request})
          .Add("gbps", g)
          .Add("limit_gbps", lim)
          .Add("ratio", lim > 0 ? g / lim : 0.0)
          .Add("limit", op == 0 ? "raw io_uring O_DIRECT random write, same block and queue depth"
                                : "raw io_uring O_DIRECT random read of the data file, same block and queue depth")
          .Add("queue_depth", *qd)
          .Add("requests_in_flight", uint64_t{w.depth})
          .Add("io", st0.nvme_io_backend);
      if (op == 1 && fio > 0) rep.Add("fio_gbps", fio).Add("fio_ratio", g / fio);
      rep.Print();
    }
    if (Status u = (*store)->UnregisterNamespace(*ns); !u.ok()) return Fail("tiers", u);
  }
  const StoreStats st = (*store)->Stats();
  if (!json)
    std::printf("store: write_throughs=%llu promotions=%llu evictions=%llu nvme_chunks=%llu nvme_corrupt=%llu "
                "nvme_write_errors=%llu load_failed=%llu\n",
                static_cast<unsigned long long>(st.write_throughs), static_cast<unsigned long long>(st.promotions),
                static_cast<unsigned long long>(st.evictions), static_cast<unsigned long long>(st.nvme_chunks),
                static_cast<unsigned long long>(st.nvme_corrupt_chunks),
                static_cast<unsigned long long>(st.nvme_write_errors),
                static_cast<unsigned long long>(st.load_failed_chunks));
  return 0;
}

int RunBenchRestart(const std::vector<std::string>& argv) {
  Result<Args> a = Args::Parse(argv, {"chunks", "nvme-dir", "chunk-tokens", "chunks-per-request"},
                               {"json", "keep", "buffered"});
  if (!a.ok()) return Fail("restart", a.status());
  auto chunks = a->GetUint("chunks", 100000);
  auto chunk_tokens = a->GetUint("chunk-tokens", 16);
  auto per_request = a->GetUint("chunks-per-request", 64);
  for (const Status* s : {&chunks.status(), &chunk_tokens.status(), &per_request.status()})
    if (!s->ok()) return Fail("restart", *s);
  if (*chunks == 0 || *chunk_tokens == 0 || *per_request == 0)
    return Fail("restart", Status::InvalidArgument("--chunks, --chunk-tokens and --chunks-per-request must be > 0"));
  const bool json = a->Has("json");
  Result<std::unique_ptr<BenchDir>> dir = MakeDir(*a);
  if (!dir.ok()) return Fail("restart", dir.status());

  // A small model shape so that 100K chunks fit on disk quickly: 2 layers x 2 heads x 64.
  NamespaceSpec spec;
  spec.model.name = "bench/restart";
  spec.model.revision = "bench";
  spec.shape.num_layers = 2;
  spec.shape.num_kv_heads = 2;
  spec.shape.head_dim = 64;
  spec.shape.dtype = DType::kBFloat16;
  spec.shape.chunk_tokens = static_cast<uint32_t>(*chunk_tokens);
  const uint64_t payload = ChunkPayloadBytes(spec.shape);
  const uint64_t extent = 4096 + (payload + 4095) / 4096 * 4096;

  StoreConfig cfg;
  cfg.host_capacity_bytes = 64 * kMiB;
  cfg.worker_threads = 2;
  cfg.nvme.enabled = true;
  cfg.nvme.paths = {(*dir)->path + "/nvme-0.dat"};
  cfg.nvme.capacity_bytes = (*chunks + 1024) * extent;
  cfg.nvme.metadata_dir = (*dir)->path + "/meta";
  cfg.nvme.buffered = a->Has("buffered");
  cfg.nvme.policy = WritePolicy::kWriteThrough;

  EngineKv engine = MakeHostEngine(spec.shape, static_cast<uint32_t>(*chunk_tokens),
                               (*per_request + 1) * payload);
  Workload w;
  w.chunk_tokens = spec.shape.chunk_tokens;
  w.blocks_per_chunk = 1;
  w.num_blocks = engine.layout.num_blocks;
  w.chunks_per_request = static_cast<uint32_t>(*per_request);
  w.chunk_bytes = payload;
  w.depth = 4;
  const uint64_t requests = (*chunks + *per_request - 1) / *per_request;
  w.max_saved = requests;
  {
    Result<std::unique_ptr<Store>> store = Store::Open(cfg);
    if (!store.ok()) return Fail("restart", store.status());
    Result<NamespaceHandle> ns = (*store)->RegisterNamespace(spec, engine.layout);
    if (!ns.ok()) return Fail("restart", ns.status());
    w.store = store->get();
    w.ns = *ns;
    const auto t0 = Clock::now();
    std::vector<int32_t> tokens, blocks;
    for (uint64_t r = 0; r < requests; ++r) {
      w.Request(w.next_id, &tokens, &blocks);
      Result<Ticket> t = (*store)->Save(*ns, tokens, blocks);
      if (!t.ok()) return Fail("restart", t.status());
      if (Status s = t->Wait(); !s.ok()) return Fail("restart", s);
      w.saved.push_back(w.next_id++);
      if (!json && r % 64 == 0) {
        std::fprintf(stderr, "\rfilling: %llu / %llu chunks", static_cast<unsigned long long>(r * *per_request),
                     static_cast<unsigned long long>(*chunks));
      }
    }
    if (!json) std::fprintf(stderr, "\rfilled %llu chunks in %.1f s\n",
                            static_cast<unsigned long long>(requests * *per_request),
                            std::chrono::duration<double>(Clock::now() - t0).count());
  }  // closed
  const auto t0 = Clock::now();
  Result<std::unique_ptr<Store>> store = Store::Open(cfg);
  if (!store.ok()) return Fail("restart", store.status());
  const double ready = std::chrono::duration<double>(Clock::now() - t0).count();
  Result<NamespaceHandle> ns = (*store)->RegisterNamespace(spec, engine.layout);
  if (!ns.ok()) return Fail("restart", ns.status());
  uint64_t matched = 0, total = 0;
  std::vector<int32_t> tokens, blocks;
  const auto l0 = Clock::now();
  for (uint64_t id : w.saved) {
    w.Request(id, &tokens, &blocks);
    Result<LookupResult> r = (*store)->Lookup(*ns, tokens);
    if (!r.ok()) return Fail("restart", r.status());
    matched += r->matched_chunks;
    total += r->total_chunks;
  }
  const double lookup_us = std::chrono::duration<double, std::micro>(Clock::now() - l0).count() / w.saved.size();
  const StoreStats st = (*store)->Stats();
  Report rep(json);
  rep.Add("bench", "restart")
      .Add("chunks", st.recovered_chunks)
      .Add("time_to_ready_s", ready, 3)
      .Add("lookups", uint64_t{w.saved.size()})
      .Add("matched_chunks", matched)
      .Add("requested_chunks", total)
      .Add("lookup_us", lookup_us, 2)
      .Add("dropped_records", st.nvme_dropped_records)
      .Add("io", st.nvme_io_backend);
  rep.Print();
  return matched == total && st.recovered_chunks >= *chunks ? 0 : 1;
}

}  // namespace kvtier::bench
