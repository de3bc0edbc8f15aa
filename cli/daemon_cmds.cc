// kvtier stats / kvtier ls: a running kvtierd's counters and namespaces, through the
// same client an engine uses (Store::Connect).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "common/stats_fields.h"
#include "kvtier/store.h"

namespace kvtier::cli {
namespace {

std::string Env(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

Result<std::unique_ptr<Store>> ConnectFrom(const bench::Args& a) {
  DaemonClientConfig c;
  c.address = a.Get("daemon", Env("KVTIER_DAEMON", "unix:/run/kvtier/kvtierd.sock"));
  c.tenant = a.Get("tenant", Env("KVTIER_TENANT", ""));
  c.token = a.Get("token", Env("KVTIER_TOKEN", ""));
  c.connections = 1;
  c.worker_threads = 1;
  c.timeout = std::chrono::milliseconds(3000);
  return Store::Connect(c);
}

int Fail(const char* what, const Status& s) {
  std::fprintf(stderr, "kvtier %s: %s\n", what, s.ToString().c_str());
  return s.code() == Status::Code::kInvalidArgument ? 2 : 1;
}

}  // namespace

int RunStats(const std::vector<std::string>& argv) {
  Result<bench::Args> a = bench::Args::Parse(argv, {"daemon", "tenant", "token"}, {"json"});
  if (!a.ok()) return Fail("stats", a.status());
  Result<std::unique_ptr<Store>> store = ConnectFrom(*a);
  if (!store.ok()) return Fail("stats", store.status());
  const StoreStats st = (*store)->Stats();
  if (a->Has("json")) {
    bench::Report r(true);
#define KVT_NUM(f) r.Add(#f, static_cast<uint64_t>(st.f));
#define KVT_STR(f) r.Add(#f, st.f);
    KVTIER_STORE_STATS_NUMBERS(KVT_NUM)
    KVTIER_STORE_STATS_STRINGS(KVT_STR)
#undef KVT_NUM
#undef KVT_STR
    r.Print();
  } else {  // one counter per line
#define KVT_NUM(f) std::printf("%-28s %llu\n", #f, static_cast<unsigned long long>(st.f));
#define KVT_STR(f) std::printf("%-28s %s\n", #f, st.f.c_str());
    KVTIER_STORE_STATS_NUMBERS(KVT_NUM)
    KVTIER_STORE_STATS_STRINGS(KVT_STR)
#undef KVT_NUM
#undef KVT_STR
  }
  return 0;
}

int RunLs(const std::vector<std::string>& argv) {
  Result<bench::Args> a = bench::Args::Parse(argv, {"daemon", "tenant", "token"}, {"json"});
  if (!a.ok()) return Fail("ls", a.status());
  Result<std::unique_ptr<Store>> store = ConnectFrom(*a);
  if (!store.ok()) return Fail("ls", store.status());
  Result<std::vector<NamespaceInfo>> list = (*store)->ListNamespaces();
  if (!list.ok()) return Fail("ls", list.status());
  const bool json = a->Has("json");
  if (!json)
    std::printf("%-40s %-12s %6s %6s %10s %10s %10s %10s %5s\n", "model", "revision", "layers", "chunk", "chunks",
                "host", "nvme", "redis", "regs");
  for (const NamespaceInfo& n : *list) {
    if (json) {
      bench::Report(true)
          .Add("model", n.spec.model.name)
          .Add("revision", n.spec.model.revision)
          .Add("adapter", n.spec.adapter_id)
          .Add("layers", uint64_t{n.spec.shape.num_layers})
          .Add("kv_heads", uint64_t{n.spec.shape.num_kv_heads})
          .Add("head_dim", uint64_t{n.spec.shape.head_dim})
          .Add("dtype", DTypeName(n.spec.shape.dtype))
          .Add("chunk_tokens", uint64_t{n.spec.shape.chunk_tokens})
          .Add("chunks", n.chunks)
          .Add("host_chunks", n.host_chunks)
          .Add("nvme_chunks", n.nvme_chunks)
          .Add("redis_chunks", n.redis_chunks)
          .Add("registrations", uint64_t{n.registrations})
          .Print();
    } else {
      std::printf("%-40s %-12s %6u %6u %10llu %10llu %10llu %10llu %5u\n", n.spec.model.name.c_str(),
                  n.spec.model.revision.c_str(), n.spec.shape.num_layers, n.spec.shape.chunk_tokens,
                  static_cast<unsigned long long>(n.chunks), static_cast<unsigned long long>(n.host_chunks),
                  static_cast<unsigned long long>(n.nvme_chunks), static_cast<unsigned long long>(n.redis_chunks),
                  n.registrations);
    }
  }
  return 0;
}

}  // namespace kvtier::cli
