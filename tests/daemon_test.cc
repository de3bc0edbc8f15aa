// kvtierd: DaemonServer and DaemonClient over real Unix sockets, with real Stores whose host
// regions are shared memfds, and real client and daemon processes.
//
// Child processes: the test binary starts copies of itself (posix_spawn, so nothing runs
// between fork and exec in this multithreaded process) with KVTIER_DAEMON_TEST_ROLE set; a
// global test environment sees the variable before any test runs, plays the role (a daemon
// serving a socket until it is killed, or a client that saves and loads its own prompts and
// checks every byte) and exits with the result. The children start clean, so they may start
// threads under ThreadSanitizer and AddressSanitizer like any process.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/stats_fields.h"
#include "daemon/server.h"
#include "daemon/wire.h"
#include "kvtier/store.h"
#include "store/daemon_client.h"
#include "tests/daemon_harness.h"
#include "tests/temp_dir.h"
#include "tests/test_engine.h"
#include "tiers/chunk_format.h"

#if defined(__SANITIZE_THREAD__)
extern "C" __attribute__((visibility("default"), used)) const char* __tsan_default_options() {
  return "ignore_noninstrumented_modules=1";
}
#endif

namespace kvtier {
namespace {

using test::Blocks;
using test::ClientConfig;
using test::ConnectWithin;
using test::Eventually;
using test::FillPrompt;
using test::HoldsPrompt;
using test::kBlockTokens;
using test::kBpc;
using test::kChunkTokens;
using test::KeysOf;
using test::kEngineBlocks;
using test::LoadPrompt;
using test::Prompt;
using test::SavePrompt;
using test::Shape;
using test::Spec;
using test::TestEngine;
using test::WaitExit;
using Clock = std::chrono::steady_clock;

constexpr std::chrono::seconds kWait{20};
const char* const kTokenA = "token-of-tenant-a";
const char* const kTokenB = "token-of-tenant-b";

StoreConfig Config(uint64_t host_chunks) {
  StoreConfig c = test::SharedHostConfig(host_chunks);
  c.worker_threads = 1;
  return c;
}

// ---- child processes ---------------------------------------------------------------------

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

// A daemon over one Store for tenant "a", serving until it is killed.
int RunDaemonChild(const std::string& socket) {
  Result<std::unique_ptr<Store>> store = Store::Open(Config(64));
  if (!store.ok()) {
    std::fprintf(stderr, "daemon child: %s\n", store.status().ToString().c_str());
    return 3;
  }
  DaemonServer server({{"a", DaemonTenant{kTokenA, {"acme/"}, store->get()}}});
  Status st = server.Start(socket);
  if (!st.ok()) {
    std::fprintf(stderr, "daemon child: %s\n", st.ToString().c_str());
    return 3;
  }
  for (;;) ::pause();
}

// A client process: saves three prompts of its own, loads them back, checks every byte.
int RunClientChild(const std::string& socket, uint32_t id) {
  Result<std::shared_ptr<DaemonClient>> c =
      ConnectWithin<DaemonClient>(ClientConfig(socket, "a", kTokenA), std::chrono::seconds(20));
  if (!c.ok()) {
    std::fprintf(stderr, "client child %u: %s\n", id, c.status().ToString().c_str());
    return 3;
  }
  TestEngine e(Shape(), kBlockTokens, kEngineBlocks);
  Result<NamespaceHandle> ns = (*c)->RegisterNamespace(Spec(), e.layout);
  if (!ns.ok()) {
    std::fprintf(stderr, "client child %u: %s\n", id, ns.status().ToString().c_str());
    return 3;
  }
  constexpr uint32_t kPrompts = 3, kChunks = 3;
  for (uint32_t p = 0; p < kPrompts; ++p) {
    Status st = SavePrompt(**c, *ns, e, 1000 * id + p, kChunks, p * kChunks * kBpc, kWait);
    if (!st.ok()) {
      std::fprintf(stderr, "client child %u: save: %s\n", id, st.ToString().c_str());
      return 1;
    }
  }
  for (uint32_t p = 0; p < kPrompts; ++p) {
    uint32_t done = 0;
    bool intact = false;
    Status st = LoadPrompt(**c, *ns, e, 1000 * id + p, kChunks, 128 + p * kChunks * kBpc, kWait, &done, &intact);
    if (!st.ok() || done != kChunks || !intact) {
      std::fprintf(stderr, "client child %u: load of prompt %u: %s, %u chunks, %s\n", id, p, st.ToString().c_str(),
                   done, intact ? "intact" : "WRONG BYTES");
      return 1;
    }
  }
  return (*c)->Close().ok() ? 0 : 1;
}

// A load-test client process: `threads` threads share one client Store (Store::Connect) and
// mix lookups, saves and loads of prompts from a pool that every process draws from (so
// processes hit each other's chunks, and the small host tier evicts all along) until
// `seconds` pass. Every chunk a load reports is checked byte for byte; a load that finds a
// chunk missing (NotFound) is a miss, not an error. Writes its counts
// to `out`: "ops lookups saves loads bytes errors wrong". Exits 0 when no call failed and
// no byte was wrong.
int RunLoadChild(const std::string& socket, uint32_t id, double seconds, uint32_t threads, const std::string& out) {
  DaemonClientConfig config = ClientConfig(socket, "a", kTokenA);
  config.connections = threads;
  config.worker_threads = 2;
  Result<std::unique_ptr<Store>> c = Store::Connect(config);
  if (!c.ok()) {
    std::fprintf(stderr, "load child %u: %s\n", id, c.status().ToString().c_str());
    return 3;
  }
  Store& store = **c;
  TestEngine e(Shape(), kBlockTokens, kEngineBlocks);
  Result<NamespaceHandle> ns = store.RegisterNamespace(Spec(), e.layout);
  if (!ns.ok()) {
    std::fprintf(stderr, "load child %u: %s\n", id, ns.status().ToString().c_str());
    return 3;
  }
  constexpr uint32_t kPool = 48, kMaxChunks = 4;
  std::atomic<uint64_t> lookups{0}, saves{0}, loads{0}, bytes{0}, errors{0}, wrong{0};
  const uint64_t chunk_bytes = ChunkPayloadBytes(Shape());
  const Clock::time_point end =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  auto report = [&](const char* what, const Status& st) {
    if (errors.fetch_add(1) < 5) std::fprintf(stderr, "load child %u: %s: %s\n", id, what, st.ToString().c_str());
  };
  std::vector<std::thread> pool;
  for (uint32_t t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      std::mt19937 rng(id * 1000 + t);
      const uint32_t save_first = t * 2 * kMaxChunks * kBpc, load_first = save_first + kMaxChunks * kBpc;
      while (Clock::now() < end) {
        const uint32_t prompt = 7000 + rng() % kPool, chunks = 1 + rng() % kMaxChunks, op = rng() % 10;
        const std::vector<int32_t> tokens = Prompt(prompt, chunks * kChunkTokens);
        if (op < 4) {
          Result<LookupResult> r = store.Lookup(*ns, tokens, {}, {});
          if (!r.ok()) report("lookup", r.status());
          ++lookups;
        } else if (op < 7) {
          FillPrompt(e, KeysOf(Spec(), tokens), Blocks(save_first, chunks * kBpc));
          Result<Ticket> tk = store.Save(*ns, tokens, Blocks(save_first, chunks * kBpc));
          Status st = tk.ok() ? tk->Wait(kWait) : tk.status();
          if (!st.ok()) report("save", st);
          if (tk.ok()) bytes += uint64_t{tk->chunks_done()} * chunk_bytes;
          ++saves;
        } else {
          for (uint32_t b = load_first; b < load_first + chunks * kBpc; ++b) e.Zero(b);
          Result<Ticket> tk = store.Load(*ns, tokens, Blocks(load_first, chunks * kBpc));
          Status st = tk.ok() ? tk->Wait(kWait) : tk.status();
          // NotFound is a miss (the prompt was never saved, or was evicted): the engine recomputes.
          if (!st.ok() && st.code() != Status::Code::kNotFound) report("load", st);
          if (tk.ok()) {
            const uint32_t done = tk->chunks_done();
            bytes += uint64_t{done} * chunk_bytes;
            if (!HoldsPrompt(e, KeysOf(Spec(), tokens), Blocks(load_first, chunks * kBpc), done)) {
              ++wrong;
              std::fprintf(stderr, "load child %u: prompt %u: WRONG BYTES in %u loaded chunks\n", id, prompt, done);
            }
          }
          ++loads;
        }
      }
    });
  for (std::thread& t : pool) t.join();
  const Status closed = store.Close();
  if (!closed.ok()) report("close", closed);
  if (FILE* f = std::fopen(out.c_str(), "w")) {
    std::fprintf(f, "%llu %llu %llu %llu %llu %llu %llu\n",
                 static_cast<unsigned long long>(lookups + saves + loads), static_cast<unsigned long long>(lookups.load()),
                 static_cast<unsigned long long>(saves.load()), static_cast<unsigned long long>(loads.load()),
                 static_cast<unsigned long long>(bytes.load()), static_cast<unsigned long long>(errors.load()),
                 static_cast<unsigned long long>(wrong.load()));
    std::fclose(f);
  }
  return errors == 0 && wrong == 0 ? 0 : 1;
}

class ChildRole : public ::testing::Environment {
 public:
  void SetUp() override {
    const std::string role = Env("KVTIER_DAEMON_TEST_ROLE");
    if (role.empty()) return;
    // A child never outlives the test that started it, whatever becomes of that test.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (std::to_string(::getppid()) != Env("KVTIER_DAEMON_TEST_PARENT")) std::_Exit(4);
    const std::string socket = Env("KVTIER_DAEMON_TEST_SOCKET");
    int code = 2;
    if (role == "daemon") code = RunDaemonChild(socket);
    const uint32_t id = static_cast<uint32_t>(std::atoi(Env("KVTIER_DAEMON_TEST_ID").c_str()));
    if (role == "client") code = RunClientChild(socket, id);
    if (role == "load")
      code = RunLoadChild(socket, id, std::atof(Env("KVTIER_DAEMON_TEST_SECONDS").c_str()),
                          static_cast<uint32_t>(std::atoi(Env("KVTIER_DAEMON_TEST_THREADS").c_str())),
                          Env("KVTIER_DAEMON_TEST_OUT"));
    std::fflush(stderr);
    std::exit(code);
  }
};
[[maybe_unused]] ::testing::Environment* const kChildRole = ::testing::AddGlobalTestEnvironment(new ChildRole);

// Starts this binary as a child in `role`; its stdout (gtest's banner) goes to /dev/null.
pid_t SpawnRole(const std::string& role, const std::string& socket, uint32_t id = 0,
                const std::vector<std::string>& extra_env = {}) {
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return -1;
  exe[n] = '\0';
  test::SpawnOptions options;
  options.drop_env_prefix = "KVTIER_DAEMON_TEST_";
  options.env = {"KVTIER_DAEMON_TEST_ROLE=" + role, "KVTIER_DAEMON_TEST_SOCKET=" + socket,
                 "KVTIER_DAEMON_TEST_ID=" + std::to_string(id),
                 "KVTIER_DAEMON_TEST_PARENT=" + std::to_string(::getpid())};
  options.env.insert(options.env.end(), extra_env.begin(), extra_env.end());
  options.out.path = "/dev/null";
  return test::Spawn(exe, {"--gtest_filter=*"}, options);
}

// ---- an in-process daemon with two tenants --------------------------------------------------

struct TwoTenants {
  test::TempDir dir;
  std::string socket;
  std::unique_ptr<Store> store_a, store_b;
  std::unique_ptr<DaemonServer> server;

  TwoTenants() {
    socket = dir.File("kvtierd.sock");
    Result<std::unique_ptr<Store>> a = Store::Open(Config(64));
    Result<std::unique_ptr<Store>> b = Store::Open(Config(64));
    EXPECT_TRUE(a.ok() && b.ok());
    if (!a.ok() || !b.ok()) return;
    store_a = std::move(*a);
    store_b = std::move(*b);
    std::map<std::string, DaemonTenant> tenants;
    tenants["a"] = DaemonTenant{kTokenA, {"acme/", "other-acme/"}, store_a.get()};
    tenants["b"] = DaemonTenant{kTokenB, {"*"}, store_b.get()};
    server = std::make_unique<DaemonServer>(std::move(tenants));
    Status st = server->Start(socket);
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  ~TwoTenants() {
    if (server) server->Stop();
  }
  std::shared_ptr<DaemonClient> Client(const std::string& tenant) {
    Result<std::shared_ptr<DaemonClient>> c =
        DaemonClient::Connect(ClientConfig(socket, tenant, tenant == "a" ? kTokenA : kTokenB));
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? *c : nullptr;
  }
};

// A bare connection speaking the wire protocol, for what DaemonClient never does.
struct RawConnection {
  int fd = -1;
  ~RawConnection() {
    if (fd >= 0) ::close(fd);
  }
  Status Open(const std::string& socket, const std::string& tenant, const std::string& token, uint64_t session) {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, socket.c_str(), sizeof(a.sun_path) - 1);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) != 0) return Status::IOError("connect");
    const wire::Deadline d = Clock::now() + kWait;
    wire::Hello h{wire::kProtocolVersion, tenant, token, session, 0};
    Result<std::vector<uint8_t>> out = wire::EncodeHello(h);
    if (!out.ok()) return out.status();
    KVTIER_RETURN_IF_ERROR(wire::WriteFrame(fd, *out, d));
    Result<std::vector<uint8_t>> in = wire::ReadFrame(fd, wire::kMaxHelloBytes, d);
    if (!in.ok()) return in.status();
    Result<wire::HelloReply> r = wire::DecodeHelloReply(*in);
    if (!r.ok()) return r.status();
    if (!r->status.ok()) return r->status;
    Result<int> region = wire::ReceiveFd(fd, d);
    if (!region.ok()) return region.status();
    ::close(*region);
    return Status::OK();
  }
  Result<wire::Response> Call(wire::Request q) {
    const wire::Deadline d = Clock::now() + kWait;
    Result<std::vector<uint8_t>> out = wire::EncodeRequest(q);
    if (!out.ok()) return out.status();
    KVTIER_RETURN_IF_ERROR(wire::WriteFrame(fd, *out, d));
    Result<std::vector<uint8_t>> in = wire::ReadFrame(fd, wire::kMaxFrameBytes, d);
    if (!in.ok()) return in.status();
    return wire::DecodeResponse(*in);
  }
  Result<uint32_t> Register(const NamespaceSpec& spec) {
    wire::Request q;
    q.op = wire::Op::kRegisterNamespace;
    q.spec = spec;
    Result<wire::Response> p = Call(q);
    if (!p.ok()) return p.status();
    if (!p->status.ok()) return p->status;
    return static_cast<uint32_t>(p->number);
  }
};

// ---- tests -------------------------------------------------------------------------------

TEST(Daemon, SavesAndLoadsByteForByteThroughTheSharedRegion) {
  TwoTenants d;
  ASSERT_TRUE(d.server);
  std::shared_ptr<DaemonClient> c = d.Client("a");
  ASSERT_TRUE(c);
  TestEngine e(Shape(), kBlockTokens, kEngineBlocks);
  Result<NamespaceHandle> ns = c->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok()) << ns.status().ToString();

  const std::vector<int32_t> tokens = Prompt(1, 4 * kChunkTokens + 3);  // a trailing partial chunk
  const std::vector<ChunkKey> keys = KeysOf(Spec(), tokens);
  Result<LookupResult> before = c->Lookup(*ns, tokens, {}, {});
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  EXPECT_EQ(before->matched_tokens, 0u);
  EXPECT_EQ(before->total_chunks, 4u);

  FillPrompt(e, keys, Blocks(0, 4 * kBpc));
  Result<Ticket> s = c->Save(*ns, tokens, Blocks(0, 4 * kBpc), {}, {});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_TRUE(s->Wait(kWait).ok()) << s->status().ToString();
  EXPECT_EQ(s->chunks_done(), 4u);

  Result<LookupResult> after = c->Lookup(*ns, tokens, {}, {});
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->matched_tokens, 4u * kChunkTokens);
  EXPECT_EQ(after->cached_chunks, 4u);
  ASSERT_EQ(after->chunk_tiers.size(), 4u);
  EXPECT_EQ(after->chunk_tiers[0], TierId::kHost);

  Result<Ticket> l = c->Load(*ns, tokens, Blocks(40, 4 * kBpc), {}, {});
  ASSERT_TRUE(l.ok());
  Result<uint32_t> layer0 = l->WaitLayer(0, kWait);
  ASSERT_TRUE(layer0.ok());
  ASSERT_TRUE(l->Wait(kWait).ok()) << l->status().ToString();
  EXPECT_EQ(l->chunks_done(), 4u);
  EXPECT_TRUE(HoldsPrompt(e, keys, Blocks(40, 4 * kBpc), 4));

  // One chunk more than is cached: the cached ones land, and the rest is to recompute.
  std::vector<int32_t> longer(tokens.begin(), tokens.begin() + 4 * kChunkTokens);
  const std::vector<int32_t> extra = Prompt(2, kChunkTokens);
  longer.insert(longer.end(), extra.begin(), extra.end());
  for (uint32_t b = 80; b < 80 + 5 * kBpc; ++b) e.Zero(b);
  Result<Ticket> part = c->Load(*ns, longer, Blocks(80, 5 * kBpc), {}, {});
  ASSERT_TRUE(part.ok());
  Status pst = part->Wait(kWait);
  EXPECT_EQ(pst.code(), Status::Code::kNotFound);
  EXPECT_NE(pst.message().find("recompute from token 64"), std::string::npos) << pst.ToString();
  EXPECT_EQ(part->chunks_done(), 4u);
  EXPECT_TRUE(HoldsPrompt(e, keys, Blocks(80, 4 * kBpc), 4));
  EXPECT_TRUE(e.IsZero(80 + 4 * kBpc));

  // Saving it again stores nothing new.
  Result<Ticket> again = c->Save(*ns, tokens, Blocks(0, 4 * kBpc), {}, {});
  ASSERT_TRUE(again.ok() && again->Wait(kWait).ok());
  EXPECT_EQ(again->chunks_done(), 4u);

  Result<uint32_t> pinned = c->PinPrefix(*ns, tokens, {});
  ASSERT_TRUE(pinned.ok());
  EXPECT_EQ(*pinned, 4u);
  EXPECT_TRUE(c->UnpinPrefix(*ns, tokens, {}).ok());
  EXPECT_TRUE(c->SetPrefillRate(*ns, 5000).ok());
  EXPECT_TRUE(c->ReportPrefill(*ns, 1000, 0.1).ok());
  EXPECT_EQ(c->ReportPrefill(*ns, 0, 0.1).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(c->CancelPrefetch(12345).code(), Status::Code::kNotFound);

  Result<StoreStats> st = c->Stats();
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ(st->saved_chunks, 4u);
  EXPECT_GE(st->loaded_chunks, 8u);
  EXPECT_EQ(st->host_capacity_bytes, d.store_a->Stats().host_capacity_bytes);
  EXPECT_EQ(st->huge_pages, d.store_a->Stats().huge_pages);
  Result<std::vector<NamespaceInfo>> list = c->ListNamespaces();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].spec.model.name, "acme/llama-test");
  EXPECT_EQ((*list)[0].chunks, 4u);

  EXPECT_TRUE(c->UnregisterNamespace(*ns).ok());
  EXPECT_EQ(c->Lookup(*ns, tokens, {}, {}).status().code(), Status::Code::kNotFound);
  EXPECT_EQ(c->Save(*ns, tokens, Blocks(0, 4 * kBpc), {}, {}).status().code(), Status::Code::kNotFound);
  EXPECT_TRUE(c->Close().ok());
  EXPECT_EQ(c->Stats().status().code(), Status::Code::kClosed);

  const DaemonServerCounters n = d.server->counters();
  EXPECT_GE(n.connections, 1u);
  EXPECT_GE(n.requests, 10u);
  EXPECT_GE(n.errors, 2u);  // the bad prefill report, the unknown prefetch
}

TEST(Daemon, CallerErrorsAreReportedBeforeAnyRequest) {
  TwoTenants d;
  ASSERT_TRUE(d.server);
  std::shared_ptr<DaemonClient> c = d.Client("a");
  ASSERT_TRUE(c);
  TestEngine e(Shape(), kBlockTokens, 8);
  Result<NamespaceHandle> ns = c->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok());
  const std::vector<int32_t> tokens = Prompt(3, 2 * kChunkTokens);
  EXPECT_EQ(c->Save(*ns, tokens, Blocks(0, 3), {}, {}).status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(c->Load(*ns, tokens, Blocks(6, 2 * kBpc), {}, {}).status().code(), Status::Code::kInvalidArgument);
  KvMemoryLayout gpu = e.layout;
  gpu.device = 0;
  Result<NamespaceHandle> g = c->RegisterNamespace(Spec(), gpu);
  EXPECT_EQ(g.status().code(), Status::Code::kNotSupported);
  EXPECT_NE(g.status().message().find("GPU KV memory through kvtierd"), std::string::npos);
  KvMemoryLayout bad = e.layout;
  bad.layers.pop_back();
  EXPECT_EQ(c->RegisterNamespace(Spec(), bad).status().code(), Status::Code::kInvalidArgument);
  // Nothing on the daemon's side came of them.
  Result<std::vector<NamespaceInfo>> list = c->ListNamespaces();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].registrations, 1u);

  DaemonClientConfig tcp = ClientConfig(d.socket, "a", kTokenA);
  tcp.address = "tcp:127.0.0.1:7000";
  EXPECT_EQ(DaemonClient::Connect(tcp).status().code(), Status::Code::kNotSupported);
  DaemonClientConfig none = ClientConfig(d.dir.File("nobody.sock"), "a", kTokenA);
  Result<std::shared_ptr<DaemonClient>> gone = DaemonClient::Connect(none);
  EXPECT_EQ(gone.status().code(), Status::Code::kUnavailable);
  EXPECT_NE(gone.status().message().find("nobody.sock"), std::string::npos) << gone.status().ToString();
}

TEST(Daemon, RefusesBadTokensAndUnknownTenants) {
  TwoTenants d;
  ASSERT_TRUE(d.server);
  Result<std::shared_ptr<DaemonClient>> bad = DaemonClient::Connect(ClientConfig(d.socket, "a", "not-the-token"));
  EXPECT_EQ(bad.status().code(), Status::Code::kPermissionDenied) << bad.status().ToString();
  Result<std::shared_ptr<DaemonClient>> other = DaemonClient::Connect(ClientConfig(d.socket, "a", kTokenB));
  EXPECT_EQ(other.status().code(), Status::Code::kPermissionDenied);
  Result<std::shared_ptr<DaemonClient>> unknown = DaemonClient::Connect(ClientConfig(d.socket, "zz", kTokenA));
  EXPECT_EQ(unknown.status().code(), Status::Code::kPermissionDenied);
  EXPECT_EQ(d.server->counters().refused, 3u);
  EXPECT_TRUE(Eventually([&] { return d.server->counters().connections_open == 0; }));
  // A refused connection is closed: nothing more is read from it.
  RawConnection raw;
  EXPECT_EQ(raw.Open(d.socket, "b", kTokenA, 1).code(), Status::Code::kPermissionDenied);
  wire::Request q;
  q.op = wire::Op::kStats;
  EXPECT_FALSE(raw.Call(q).ok());
}

TEST(Daemon, RefusesModelsOutsideTheTenantsPrefixes) {
  TwoTenants d;
  ASSERT_TRUE(d.server);
  std::shared_ptr<DaemonClient> a = d.Client("a");
  std::shared_ptr<DaemonClient> b = d.Client("b");
  ASSERT_TRUE(a && b);
  TestEngine e(Shape(), kBlockTokens, 8);
  Result<NamespaceHandle> refused = a->RegisterNamespace(Spec("meta-llama/Llama-3.1-8B"), e.layout);
  EXPECT_EQ(refused.status().code(), Status::Code::kPermissionDenied);
  EXPECT_NE(refused.status().message().find("acme/"), std::string::npos) << refused.status().ToString();
  EXPECT_TRUE(a->RegisterNamespace(Spec("other-acme/x"), e.layout).ok());
  EXPECT_TRUE(b->RegisterNamespace(Spec("meta-llama/Llama-3.1-8B"), e.layout).ok());
}

TEST(Daemon, TenantsDoNotSeeEachOthersChunks) {
  TwoTenants d;
  ASSERT_TRUE(d.server);
  std::shared_ptr<DaemonClient> a = d.Client("a");
  std::shared_ptr<DaemonClient> b = d.Client("b");
  ASSERT_TRUE(a && b);
  TestEngine ea(Shape(), kBlockTokens, kEngineBlocks);
  TestEngine eb(Shape(), kBlockTokens, kEngineBlocks);
  Result<NamespaceHandle> na = a->RegisterNamespace(Spec(), ea.layout);
  Result<NamespaceHandle> nb = b->RegisterNamespace(Spec(), eb.layout);
  ASSERT_TRUE(na.ok() && nb.ok());
  ASSERT_TRUE(SavePrompt(*a, *na, ea, 7, 3, 0, kWait).ok());
  const std::vector<int32_t> tokens = Prompt(7, 3 * kChunkTokens);
  Result<LookupResult> la = a->Lookup(*na, tokens, {}, {});
  Result<LookupResult> lb = b->Lookup(*nb, tokens, {}, {});
  ASSERT_TRUE(la.ok() && lb.ok());
  EXPECT_EQ(la->cached_chunks, 3u);
  EXPECT_EQ(lb->cached_chunks, 0u);
  uint32_t done = 0;
  bool intact = false;
  EXPECT_EQ(LoadPrompt(*b, *nb, eb, 7, 3, 100, kWait, &done, &intact).code(), Status::Code::kNotFound);
  EXPECT_EQ(done, 0u);
  EXPECT_TRUE(eb.IsZero(100));
  Result<std::vector<NamespaceInfo>> list_b = b->ListNamespaces();
  ASSERT_TRUE(list_b.ok());
  ASSERT_EQ(list_b->size(), 1u);
  EXPECT_EQ((*list_b)[0].chunks, 0u);
  // Nor each other's namespace handles.
  RawConnection raw;
  ASSERT_TRUE(raw.Open(d.socket, "b", kTokenB, 77).ok());
  wire::Request q;
  q.op = wire::Op::kLookup;
  q.ns = 1;  // tenant a's first handle in its own store; b's session registered none
  q.tokens = tokens;
  Result<wire::Response> p = raw.Call(q);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->status.code(), Status::Code::kNotFound);
}

TEST(Daemon, SessionEndEndsItsLeasesAndRegistrations) {
  TwoTenants d;
  ASSERT_TRUE(d.server);
  std::shared_ptr<DaemonClient> watcher = d.Client("a");
  ASSERT_TRUE(watcher);
  const std::vector<int32_t> tokens = Prompt(9, 3 * kChunkTokens);
  uint64_t lease = 0;
  {
    auto raw = std::make_unique<RawConnection>();
    ASSERT_TRUE(raw->Open(d.socket, "a", kTokenA, 4242).ok());
    Result<uint32_t> ns = raw->Register(Spec());
    ASSERT_TRUE(ns.ok()) << ns.status().ToString();
    wire::Request q;
    q.op = wire::Op::kReserveSave;
    q.ns = *ns;
    q.tokens = tokens;
    Result<wire::Response> p = raw->Call(q);
    ASSERT_TRUE(p.ok() && p->status.ok());
    EXPECT_EQ(p->save_lease.payload_offsets.size(), 3u);
    lease = p->save_lease.id;
    ASSERT_NE(lease, 0u);
    // Another session of the same tenant cannot touch it.
    RawConnection other;
    ASSERT_TRUE(other.Open(d.socket, "a", kTokenA, 4343).ok());
    wire::Request c;
    c.op = wire::Op::kCommitSave;
    c.target = lease;
    c.count = 3;
    Result<wire::Response> stolen = other.Call(c);
    ASSERT_TRUE(stolen.ok());
    EXPECT_EQ(stolen->status.code(), Status::Code::kNotFound);
    // A second connection of the same session keeps it alive when the first goes.
    auto second = std::make_unique<RawConnection>();
    ASSERT_TRUE(second->Open(d.socket, "a", kTokenA, 4242).ok());
    raw.reset();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    Result<std::vector<NamespaceInfo>> list = watcher->ListNamespaces();
    ASSERT_TRUE(list.ok() && list->size() == 1);
    EXPECT_EQ((*list)[0].registrations, 1u);
    EXPECT_EQ(d.store_a->Stats().save_failed_chunks, 0u);
  }  // the session's last connection closes
  EXPECT_TRUE(Eventually([&] { return d.store_a->Stats().save_failed_chunks == 3; }))
      << "the lease was not aborted";
  EXPECT_TRUE(Eventually([&] {
    Result<std::vector<NamespaceInfo>> list = watcher->ListNamespaces();
    return list.ok() && list->size() == 1 && (*list)[0].registrations == 0;
  })) << "the registration was not dropped";
  EXPECT_EQ(d.store_a->CommitSave(lease, 0).status().code(), Status::Code::kNotFound);
}

TEST(Daemon, ThreadsShareTheClientsConnectionsAndSession) {
  TwoTenants d;
  ASSERT_TRUE(d.server);
  DaemonClientConfig config = ClientConfig(d.socket, "a", kTokenA);
  config.connections = 3;
  config.worker_threads = 3;
  Result<std::shared_ptr<DaemonClient>> c = DaemonClient::Connect(config);
  ASSERT_TRUE(c.ok());
  TestEngine e(Shape(), kBlockTokens, kEngineBlocks);
  Result<NamespaceHandle> ns = (*c)->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok());
  constexpr uint32_t kThreads = 6;
  std::atomic<uint32_t> bad{0};
  std::vector<std::thread> threads;
  for (uint32_t i = 0; i < kThreads; ++i)
    threads.emplace_back([&, i] {
      for (uint32_t round = 0; round < 5; ++round) {
        const uint32_t id = 300 + i * 10 + round;
        const uint32_t first = i * 2 * kBpc;  // each thread its own blocks
        if (!SavePrompt(**c, *ns, e, id, 2, first, kWait).ok()) ++bad;
        uint32_t done = 0;
        bool intact = false;
        if (!LoadPrompt(**c, *ns, e, id, 2, 128 + first, kWait, &done, &intact).ok() || done != 2 || !intact) ++bad;
        if (!(*c)->Lookup(*ns, Prompt(id, 2 * kChunkTokens), {}, {}).ok()) ++bad;
      }
    });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0u);
  const DaemonServerCounters n = d.server->counters();
  EXPECT_GE(n.connections, 2u);
  EXPECT_LE(n.connections, 3u);
  EXPECT_EQ(n.sessions_open, 1u);
  EXPECT_EQ(d.store_a->Stats().saved_chunks, uint64_t{kThreads} * 5 * 2);
  // Each request's latency went into its op's histogram.
  bool saw_lookup = false;
  for (const OpLatency& l : n.latency) {
    uint64_t in_buckets = 0;
    for (uint64_t b : l.buckets) in_buckets += b;
    EXPECT_EQ(in_buckets, l.count) << l.op;
    EXPECT_GT(l.sum_seconds, 0) << l.op;
    if (l.op == "lookup") {
      saw_lookup = true;
      EXPECT_GE(l.count, uint64_t{kThreads} * 5);
    }
  }
  EXPECT_TRUE(saw_lookup);
}

TEST(Daemon, StopClosesConnectionsAndClientsSeeUnavailable) {
  TwoTenants d;
  ASSERT_TRUE(d.server);
  std::shared_ptr<DaemonClient> c = d.Client("a");
  ASSERT_TRUE(c);
  TestEngine e(Shape(), kBlockTokens, 16);
  Result<NamespaceHandle> ns = c->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok());
  // A second server on the same socket is refused while the first listens.
  DaemonServer second({{"a", DaemonTenant{kTokenA, {"*"}, d.store_a.get()}}});
  EXPECT_EQ(second.Start(d.socket).code(), Status::Code::kBusy);
  d.server->Stop();
  EXPECT_EQ(d.server->counters().connections_open, 0u);
  EXPECT_EQ(d.server->counters().sessions_open, 0u);
  const Clock::time_point t0 = Clock::now();
  Result<LookupResult> r = c->Lookup(*ns, Prompt(1, kChunkTokens), {}, {});
  EXPECT_EQ(r.status().code(), Status::Code::kUnavailable);
  EXPECT_NE(r.status().message().find(d.socket), std::string::npos) << r.status().ToString();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1));
  EXPECT_EQ(::access(d.socket.c_str(), F_OK), -1) << "Stop leaves the socket file";
}

TEST(Daemon, ClientProcessesShareOneDaemon) {
  TwoTenants d;
  ASSERT_TRUE(d.server);
  constexpr int kChildren = 3;
  std::vector<pid_t> pids;
  for (int i = 0; i < kChildren; ++i) {
    const pid_t pid = SpawnRole("client", d.socket, static_cast<uint32_t>(i + 1));
    ASSERT_GT(pid, 0);
    pids.push_back(pid);
  }
  for (pid_t pid : pids) EXPECT_EQ(WaitExit(pid, std::chrono::seconds(60)), 0) << "client process " << pid;
  // Each saved three prompts of three chunks, all of them distinct.
  EXPECT_EQ(d.store_a->Stats().saved_chunks, uint64_t{kChildren} * 9);
  EXPECT_TRUE(Eventually([&] { return d.server->counters().sessions_open == 0; }));
  EXPECT_GE(d.server->counters().connections, uint64_t{kChildren});
}

TEST(Daemon, KilledDaemonFailsCallsFastAndTheClientComesBackByItself) {
  test::TempDir dir;
  const std::string socket = dir.File("kvtierd.sock");
  pid_t daemon = SpawnRole("daemon", socket);
  ASSERT_GT(daemon, 0);
  DaemonClientConfig config = ClientConfig(socket, "a", kTokenA);
  Result<std::shared_ptr<DaemonClient>> cr = ConnectWithin<DaemonClient>(config, std::chrono::seconds(30));
  ASSERT_TRUE(cr.ok()) << cr.status().ToString();
  DaemonClient& c = **cr;
  TestEngine e(Shape(), kBlockTokens, kEngineBlocks);
  Result<NamespaceHandle> ns = c.RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok()) << ns.status().ToString();

  // Traffic: save a prompt, load it back, over and over, checking every chunk it reports.
  test::SaveLoadTraffic traffic(c, *ns, e, kWait);
  EXPECT_TRUE(Eventually([&] { return traffic.loaded.load() >= 5; }, std::chrono::seconds(30)));
  ASSERT_EQ(::kill(daemon, SIGKILL), 0);
  EXPECT_EQ(WaitExit(daemon, std::chrono::seconds(10)), 128 + SIGKILL);

  // Every call fails fast and says which socket.
  for (int i = 0; i < 5; ++i) {
    const Clock::time_point t0 = Clock::now();
    Result<LookupResult> r = c.Lookup(*ns, Prompt(1, kChunkTokens), {}, {});
    EXPECT_EQ(r.status().code(), Status::Code::kUnavailable);
    EXPECT_NE(r.status().message().find(socket), std::string::npos) << r.status().ToString();
    EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(500));
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
  }
  const uint32_t failed_before = traffic.failed.load();
  EXPECT_TRUE(Eventually([&] { return traffic.failed.load() > failed_before + 3; })) << "traffic is not failing fast";

  // A new daemon on the same socket: the client reconnects and registers its namespace again.
  daemon = SpawnRole("daemon", socket);
  ASSERT_GT(daemon, 0);
  EXPECT_TRUE(Eventually(
      [&] {
        Result<LookupResult> r = c.Lookup(*ns, Prompt(1, kChunkTokens), {}, {});
        return r.ok();
      },
      std::chrono::seconds(30)));
  const uint32_t loaded_before = traffic.loaded.load();
  EXPECT_TRUE(Eventually([&] { return traffic.loaded.load() >= loaded_before + 5; }, std::chrono::seconds(30)));
  traffic.Stop();
  EXPECT_EQ(traffic.wrong.load(), 0u) << "a load reported chunks whose bytes were wrong";
  EXPECT_EQ(traffic.stuck.load(), 0u) << "a save or load ran past its wait";

  // The old handle works on the new daemon.
  ASSERT_TRUE(SavePrompt(c, *ns, e, 99, 3, 100, kWait).ok());
  uint32_t done = 0;
  bool intact = false;
  ASSERT_TRUE(LoadPrompt(c, *ns, e, 99, 3, 150, kWait, &done, &intact).ok());
  EXPECT_EQ(done, 3u);
  EXPECT_TRUE(intact);
  Result<std::vector<NamespaceInfo>> list = c.ListNamespaces();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].registrations, 1u);
  EXPECT_TRUE(c.Close().ok());
  ::kill(daemon, SIGKILL);
  EXPECT_EQ(WaitExit(daemon, std::chrono::seconds(10)), 128 + SIGKILL);
}

// ---- the wire format ---------------------------------------------------------------------

TEST(Wire, StatsCarryEveryField) {
  StoreStats in;
  uint64_t v = 0;
#define KVT_SET_NUMBER(f)                        \
  {                                              \
    const uint64_t x = ++v * 1000003;            \
    in.f = static_cast<decltype(in.f)>(x);       \
  }
#define KVT_SET_TEXT(f) in.f = std::string(#f) + " value";
  KVTIER_STORE_STATS_NUMBERS(KVT_SET_NUMBER)
  KVTIER_STORE_STATS_STRINGS(KVT_SET_TEXT)
#undef KVT_SET_NUMBER
#undef KVT_SET_TEXT
  wire::Response p;
  p.id = 5;
  p.kind = wire::ResultKind::kStats;
  p.stats = in;
  Result<std::vector<uint8_t>> bytes = wire::EncodeResponse(p);
  ASSERT_TRUE(bytes.ok());
  Result<wire::Response> back = wire::DecodeResponse(*bytes);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_EQ(back->kind, wire::ResultKind::kStats);
  const StoreStats& out = back->stats;
#define KVT_CHECK_NUMBER(f) EXPECT_EQ(static_cast<uint64_t>(out.f), static_cast<uint64_t>(in.f)) << #f;
#define KVT_CHECK_TEXT(f) EXPECT_EQ(out.f, in.f) << #f;
  KVTIER_STORE_STATS_NUMBERS(KVT_CHECK_NUMBER)
  KVTIER_STORE_STATS_STRINGS(KVT_CHECK_TEXT)
#undef KVT_CHECK_NUMBER
#undef KVT_CHECK_TEXT
}

TEST(Wire, EveryRequestRoundTrips) {
  for (int op = 0; op <= static_cast<int>(wire::Op::kListNamespaces); ++op) {
    wire::Request q;
    q.id = 1000 + static_cast<uint64_t>(op);
    q.op = static_cast<wire::Op>(op);
    q.spec = Spec("acme/round-trip");
    q.spec.adapter_id = "lora-1";
    q.spec.tenant_salt = "salt";
    q.spec.model.weights_digest = "sha256:00";
    q.spec.model.tokenizer_id = "tok";
    q.spec.shape.mla = true;
    q.spec.shape.tp_rank = 1;
    q.spec.shape.tp_size = 2;
    q.ns = 17;
    q.tokens = Prompt(5, 40);
    q.extra_keys = {ExtraKey{1, 2, 3}, ExtraKey{2, 4, 5}};
    q.lookup.prefetch = true;
    q.lookup.prefetch_deadline = std::chrono::milliseconds(1234);
    q.target = 99;
    q.count = 3;
    q.value = 2.5;
    Result<std::vector<uint8_t>> bytes = wire::EncodeRequest(q);
    ASSERT_TRUE(bytes.ok()) << wire::OpName(q.op);
    Result<wire::Request> back = wire::DecodeRequest(*bytes);
    ASSERT_TRUE(back.ok()) << wire::OpName(q.op) << ": " << back.status().ToString();
    EXPECT_EQ(back->id, q.id);
    EXPECT_EQ(back->op, q.op);
    switch (q.op) {
      case wire::Op::kRegisterNamespace:
        EXPECT_EQ(back->spec.model.name, q.spec.model.name);
        EXPECT_EQ(back->spec.model.weights_digest, q.spec.model.weights_digest);
        EXPECT_EQ(back->spec.adapter_id, q.spec.adapter_id);
        EXPECT_EQ(back->spec.tenant_salt, q.spec.tenant_salt);
        EXPECT_EQ(back->spec.shape.dtype, q.spec.shape.dtype);
        EXPECT_TRUE(back->spec.shape.mla);
        EXPECT_EQ(back->spec.shape.tp_size, 2u);
        break;
      case wire::Op::kLookup:
        EXPECT_TRUE(back->lookup.prefetch);
        EXPECT_EQ(back->lookup.prefetch_deadline.count(), 1234);
        [[fallthrough]];
      case wire::Op::kPinPrefix:
      case wire::Op::kUnpinPrefix:
      case wire::Op::kReserveSave:
      case wire::Op::kAcquireLoad:
        EXPECT_EQ(back->ns, 17u);
        EXPECT_EQ(back->tokens, q.tokens);
        ASSERT_EQ(back->extra_keys.size(), 2u);
        EXPECT_EQ(back->extra_keys[1].hi, 5u);
        break;
      case wire::Op::kReportPrefill:
        EXPECT_EQ(back->count, 3u);
        [[fallthrough]];
      case wire::Op::kSetPrefillRate:
        EXPECT_EQ(back->ns, 17u);
        EXPECT_EQ(back->value, 2.5);
        break;
      case wire::Op::kCommitSave:
        EXPECT_EQ(back->count, 3u);
        [[fallthrough]];
      case wire::Op::kCancelPrefetch:
      case wire::Op::kAbortSave:
      case wire::Op::kReleaseLoad:
        EXPECT_EQ(back->target, 99u);
        break;
      case wire::Op::kUnregisterNamespace: EXPECT_EQ(back->ns, 17u); break;
      case wire::Op::kStats:
      case wire::Op::kListNamespaces: break;
    }
  }
}

TEST(Wire, RefusesMalformedRequests) {
  wire::Request q;
  q.op = wire::Op::kSetPrefillRate;
  q.value = std::numeric_limits<double>::quiet_NaN();
  Result<std::vector<uint8_t>> nan = wire::EncodeRequest(q);
  ASSERT_TRUE(nan.ok());
  EXPECT_EQ(wire::DecodeRequest(*nan).status().code(), Status::Code::kInvalidArgument);

  wire::Request r;
  r.op = wire::Op::kRegisterNamespace;
  r.spec = Spec();
  r.spec.shape.dtype = static_cast<DType>(200);
  Result<std::vector<uint8_t>> dtype = wire::EncodeRequest(r);
  ASSERT_TRUE(dtype.ok());
  EXPECT_EQ(wire::DecodeRequest(*dtype).status().code(), Status::Code::kInvalidArgument);
  r.spec = Spec(std::string(wire::kMaxTextBytes + 1, 'x'));
  EXPECT_EQ(wire::EncodeRequest(r).status().code(), Status::Code::kInvalidArgument);

  wire::Request big;
  big.op = wire::Op::kLookup;
  big.tokens.resize(wire::kMaxRequestTokens + 1);
  EXPECT_EQ(wire::EncodeRequest(big).status().code(), Status::Code::kInvalidArgument);

  wire::Request ok;
  ok.op = wire::Op::kLookup;
  ok.tokens = Prompt(1, 64);
  Result<std::vector<uint8_t>> bytes = wire::EncodeRequest(ok);
  ASSERT_TRUE(bytes.ok());
  // Cut short, an unknown union tag, random bytes, one byte flipped anywhere: refused or
  // read, never a crash.
  EXPECT_FALSE(wire::DecodeRequest(std::span<const uint8_t>(*bytes).first(bytes->size() - 8)).ok());
  EXPECT_FALSE(wire::DecodeRequest(std::span<const uint8_t>(*bytes).first(3)).ok());
  EXPECT_FALSE(wire::DecodeRequest({}).ok());
  std::mt19937_64 rng(7);
  for (int i = 0; i < 2000; ++i) {
    std::vector<uint8_t> junk(8 * (1 + rng() % 64));
    for (uint8_t& b : junk) b = static_cast<uint8_t>(rng());
    (void)wire::DecodeRequest(junk);
    std::vector<uint8_t> flipped = *bytes;
    flipped[rng() % flipped.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
    Result<wire::Request> f = wire::DecodeRequest(flipped);
    if (f.ok()) {
      EXPECT_LE(f->tokens.size(), wire::kMaxRequestTokens);
    }
  }
  // An unknown request kind (a newer client): the union's tag sits in the root's data.
  std::vector<uint8_t> unknown = *bytes;
  bool refused = false;
  for (size_t at = 8; at + 2 <= unknown.size() && !refused; at += 2) {
    std::vector<uint8_t> v = unknown;
    v[at] = 0x40;
    v[at + 1] = 0x00;
    Result<wire::Request> u = wire::DecodeRequest(v);
    refused = !u.ok() && u.status().message().find("unknown") != std::string::npos;
  }
  EXPECT_TRUE(refused);
}

TEST(Wire, FramesAreReadExactlyAndBounded) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  const wire::Deadline d = Clock::now() + kWait;
  wire::Request q;
  q.op = wire::Op::kStats;
  Result<std::vector<uint8_t>> bytes = wire::EncodeRequest(q);
  ASSERT_TRUE(bytes.ok());
  // A frame, then a descriptor on its own byte: the frame read leaves the byte for ReceiveFd.
  ASSERT_TRUE(wire::WriteFrame(sv[0], *bytes, d).ok());
  ASSERT_TRUE(wire::SendFd(sv[0], STDERR_FILENO, d).ok());
  Result<std::vector<uint8_t>> in = wire::ReadFrame(sv[1], wire::kMaxFrameBytes, d);
  ASSERT_TRUE(in.ok());
  EXPECT_EQ(*in, *bytes);
  Result<int> fd = wire::ReceiveFd(sv[1], d);
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  EXPECT_NE(*fd, STDERR_FILENO);
  ::close(*fd);
  // Nothing to read: the deadline holds.
  const Clock::time_point t0 = Clock::now();
  EXPECT_EQ(wire::ReadFrame(sv[1], 1024, Clock::now() + std::chrono::milliseconds(50)).status().code(),
            Status::Code::kTimedOut);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
  // Over the limit: refused before the body is read.
  ASSERT_TRUE(wire::WriteFrame(sv[0], *bytes, d).ok());
  EXPECT_EQ(wire::ReadFrame(sv[1], 8, d).status().code(), Status::Code::kInvalidArgument);
  ::close(sv[0]);
  ::close(sv[1]);
  // A closed peer: Closed between frames, never SIGPIPE on write.
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  ::close(sv[0]);
  EXPECT_EQ(wire::ReadFrame(sv[1], 1024, d).status().code(), Status::Code::kClosed);
  EXPECT_EQ(wire::WriteFrame(sv[1], *bytes, d).code(), Status::Code::kIOError);
  ::close(sv[1]);
}

}  // namespace
}  // namespace kvtier

namespace kvtier {
namespace {

// The load test: N client processes x M threads through one daemon for a bounded time
// (KVTIER_DAEMON_LOAD_SECONDS, default 5; CI's sanitizer stages run it for 60). No call may
// fail, no loaded byte may be wrong, and under AddressSanitizer a child that leaks exits
// non-zero. Prints the throughput.
TEST(DaemonLoad, ProcessesAndThreadsMixLookupsSavesAndLoads) {
  const char* env_seconds = std::getenv("KVTIER_DAEMON_LOAD_SECONDS");
  const double seconds = env_seconds != nullptr && std::atof(env_seconds) > 0 ? std::atof(env_seconds) : 5.0;
  constexpr uint32_t kProcesses = 3, kThreads = 4;
  TwoTenants d;
  ASSERT_TRUE(d.server);
  std::vector<pid_t> pids;
  for (uint32_t i = 0; i < kProcesses; ++i) {
    const pid_t pid = SpawnRole("load", d.socket, i + 1,
                                {"KVTIER_DAEMON_TEST_SECONDS=" + std::to_string(seconds),
                                 "KVTIER_DAEMON_TEST_THREADS=" + std::to_string(kThreads),
                                 "KVTIER_DAEMON_TEST_OUT=" + d.dir.File("load-" + std::to_string(i + 1))});
    ASSERT_GT(pid, 0);
    pids.push_back(pid);
  }
  const auto limit = std::chrono::seconds(static_cast<int64_t>(seconds) + 120);
  for (pid_t pid : pids) EXPECT_EQ(WaitExit(pid, limit), 0) << "load process " << pid << " (its stderr says why)";
  uint64_t total[7] = {};
  for (uint32_t i = 0; i < kProcesses; ++i) {
    FILE* f = std::fopen(d.dir.File("load-" + std::to_string(i + 1)).c_str(), "r");
    ASSERT_NE(f, nullptr) << "load process " << i + 1 << " wrote no counts";
    unsigned long long v[7] = {};
    EXPECT_EQ(std::fscanf(f, "%llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6]),
              7);
    std::fclose(f);
    for (int k = 0; k < 7; ++k) total[k] += v[k];
  }
  std::printf("daemon load: %u processes x %u threads for %.0f s: %.0f ops/s (%.0f lookups/s, %.0f saves/s, "
              "%.0f loads/s), %.3f GB/s of KV saved and loaded; errors=%llu wrong=%llu\n",
              kProcesses, kThreads, seconds, total[0] / seconds, total[1] / seconds, total[2] / seconds,
              total[3] / seconds, total[4] / seconds / 1e9, static_cast<unsigned long long>(total[5]),
              static_cast<unsigned long long>(total[6]));
  EXPECT_GT(total[2], 0u);
  EXPECT_GT(total[3], 0u);
  EXPECT_EQ(total[5], 0u) << "calls failed";
  EXPECT_EQ(total[6], 0u) << "loads served wrong bytes";
  EXPECT_TRUE(Eventually([&] { return d.server->counters().sessions_open == 0; }));
  const StoreStats st = d.store_a->Stats();
  EXPECT_EQ(st.corrupt_chunks, 0u);
  EXPECT_GT(st.evictions, 0u) << "the pool is meant to overflow the host tier";
}

}  // namespace
}  // namespace kvtier
