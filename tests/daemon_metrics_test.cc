// kvtierd's metrics: the Prometheus rendering of every StoreStats field, and the HTTP
// server spoken to over real loopback TCP, with a real Store (and DaemonServer) behind it.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/stats_fields.h"
#include "daemon/metrics.h"
#include "daemon/server.h"
#include "kvtier/store.h"
#include "tests/temp_dir.h"
#include "tests/test_engine.h"
#include "tiers/chunk_format.h"

namespace kvtier {
namespace {

using Clock = std::chrono::steady_clock;

struct HttpReply {
  int status = 0;
  std::string head;
  std::string body;
};

int ConnectTo(const std::string& address) {
  const size_t colon = address.rfind(':');
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  if (::inet_pton(AF_INET, address.substr(0, colon).c_str(), &a.sin_addr) != 1) return -1;
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Sends `request` as is and reads the whole answer (the server closes after it).
Result<HttpReply> Http(const std::string& address, const std::string& request) {
  const int fd = ConnectTo(address);
  if (fd < 0) return Status::IOError("connect to " + address);
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may answer before reading everything (431)
    sent += static_cast<size_t>(n);
  }
  std::string in;
  char buf[4096];
  const Clock::time_point end = Clock::now() + std::chrono::seconds(10);
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 1000) <= 0 && Clock::now() > end) break;
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  const size_t split = in.find("\r\n\r\n");
  if (in.compare(0, 9, "HTTP/1.1 ") != 0 || split == std::string::npos)
    return Status::Corruption("not an HTTP answer: " + in);
  HttpReply r;
  r.status = std::stoi(in.substr(9, 3));
  r.head = in.substr(0, split);
  r.body = in.substr(split + 4);
  return r;
}

Result<HttpReply> Get(const std::string& address, const std::string& path, const std::string& method = "GET") {
  return Http(address, method + " " + path + " HTTP/1.1\r\nHost: test\r\nUser-Agent: kvtier-test\r\n\r\n");
}

// The value of the sample `name{tenant="tenant"}` in a rendering, or -1.
double Sample(const std::string& text, const std::string& name, const std::string& tenant) {
  const std::string key = "\n" + name + "{tenant=\"" + tenant + "\"} ";
  const size_t at = text.find(key);
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + key.size()));
}

TEST(DaemonMetrics, RendersEveryStatsFieldPerTenant) {
  DaemonMetrics m;
  m.tenants.push_back({"a", StoreStats{}});
  m.tenants.push_back({"we\"ird\\", StoreStats{}});
  m.tenants[0].stats.saved_chunks = 7;
  m.tenants[0].stats.host_used_bytes = 4096;
  m.tenants[0].stats.nvme_enabled = true;
  m.tenants[0].stats.huge_pages = "none";
  m.tenants[0].stats.gpu = "off: built\nwithout CUDA";
  m.server.requests = 12;
  OpLatency lookup;
  lookup.op = "lookup";
  lookup.buckets[0] = 2;                     // <= 10 us
  lookup.buckets[3] = 1;                     // <= 100 us
  lookup.buckets[kLatencyBuckets - 1] = 1;   // > 1 s
  lookup.count = 4;
  lookup.sum_seconds = 2.5;
  m.server.latency.push_back(lookup);
  m.server.connections_open = 3;
  m.version = "0.1.0";
  m.uptime_seconds = 1.5;
  const std::string text = RenderPrometheus(m);

  std::set<std::string> typed;
  for (size_t pos = 0; (pos = text.find("# TYPE ", pos)) != std::string::npos; ++pos) {
    const size_t sp = text.find(' ', pos + 7);
    EXPECT_TRUE(typed.insert(text.substr(pos + 7, sp - pos - 7)).second) << "two TYPE lines for one family";
  }
  // Every numeric field, as a counter or a gauge, for both tenants.
#define KVT_CHECK(f)                                                                                            \
  {                                                                                                             \
    const std::string counter = std::string("kvtier_") + #f + "_total", gauge = std::string("kvtier_") + #f;    \
    const bool is_counter = typed.count(counter) > 0;                                                           \
    EXPECT_NE(is_counter, typed.count(gauge) > 0) << #f;                                                        \
    const std::string name = is_counter ? counter : gauge;                                                      \
    EXPECT_NE(text.find("# TYPE " + name + (is_counter ? " counter\n" : " gauge\n")), std::string::npos) << #f; \
    EXPECT_GE(Sample(text, name, "a"), 0) << #f;                                                                \
    EXPECT_GE(Sample(text, name, "we\\\"ird\\\\"), 0) << #f;                                                    \
  }
  KVTIER_STORE_STATS_NUMBERS(KVT_CHECK)
#undef KVT_CHECK
  EXPECT_EQ(Sample(text, "kvtier_saved_chunks_total", "a"), 7);
  EXPECT_EQ(Sample(text, "kvtier_host_used_bytes", "a"), 4096);
  EXPECT_EQ(Sample(text, "kvtier_nvme_enabled", "a"), 1);
  EXPECT_NE(text.find("# TYPE kvtier_bytes_saved_total counter"), std::string::npos);
  EXPECT_NE(text.find("# TYPE kvtier_host_capacity_bytes gauge"), std::string::npos);
  EXPECT_NE(text.find("# TYPE kvtier_pinned_chunks gauge"), std::string::npos);
  // The strings, escaped.
  EXPECT_NE(text.find("kvtier_store_info{tenant=\"a\",huge_pages=\"none\",nvme_io_backend=\"\",redis_breaker=\"\","
                      "gpu=\"off: built\\nwithout CUDA\"} 1\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("\nkvtier_daemon_requests_total 12\n"), std::string::npos);
  // The latency histogram: cumulative buckets, +Inf equal to the count.
  EXPECT_NE(text.find("# TYPE kvtier_daemon_request_seconds histogram\n"), std::string::npos);
  EXPECT_NE(text.find("\nkvtier_daemon_request_seconds_bucket{op=\"lookup\",le=\"1e-05\"} 2\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("\nkvtier_daemon_request_seconds_bucket{op=\"lookup\",le=\"5e-05\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("\nkvtier_daemon_request_seconds_bucket{op=\"lookup\",le=\"0.0001\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("\nkvtier_daemon_request_seconds_bucket{op=\"lookup\",le=\"1\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("\nkvtier_daemon_request_seconds_bucket{op=\"lookup\",le=\"+Inf\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("\nkvtier_daemon_request_seconds_sum{op=\"lookup\"} 2.5\n"), std::string::npos);
  EXPECT_NE(text.find("\nkvtier_daemon_request_seconds_count{op=\"lookup\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE kvtier_daemon_connections_open gauge\nkvtier_daemon_connections_open 3\n"),
            std::string::npos);
  EXPECT_NE(text.find("\nkvtier_daemon_tenants 2\n"), std::string::npos);
  EXPECT_NE(text.find("\nkvtier_daemon_uptime_seconds 1.5\n"), std::string::npos);
  EXPECT_NE(text.find("\nkvtier_daemon_build_info{version=\"0.1.0\"} 1\n"), std::string::npos);
  // Every line is a comment or "name[{labels}] value".
  size_t start = 0;
  while (start < text.size()) {
    const size_t nl = text.find('\n', start);
    ASSERT_NE(nl, std::string::npos) << "the rendering ends with a newline";
    const std::string line = text.substr(start, nl - start);
    start = nl + 1;
    if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) continue;
    const size_t sp = line.rfind(' ');
    ASSERT_NE(sp, std::string::npos) << line;
    EXPECT_TRUE(line.starts_with("kvtier_")) << line;
    size_t used = 0;
    (void)std::stod(line.substr(sp + 1), &used);
    EXPECT_EQ(used, line.size() - sp - 1) << line;
  }
}

// A real Store for tenant "a" behind a DaemonServer and a MetricsServer, wired like kvtierd.
struct Served {
  static constexpr uint32_t kChunkTokens = 16, kBlockTokens = 4;
  test::TempDir dir;
  std::unique_ptr<Store> store;
  std::unique_ptr<DaemonServer> server;
  std::unique_ptr<MetricsServer> metrics;
  std::atomic<bool> healthy{true};

  static KvShape Shape() {
    KvShape s;
    s.num_layers = 2;
    s.num_kv_heads = 2;
    s.head_dim = 32;
    s.dtype = DType::kFloat16;
    s.chunk_tokens = kChunkTokens;
    return s;
  }
  static NamespaceSpec Spec() {
    NamespaceSpec n;
    n.model.name = "acme/metrics-test";
    n.model.revision = "r1";
    n.shape = Shape();
    return n;
  }

  explicit Served(MetricsServerOptions options = {}) {
    StoreConfig c;
    c.host_capacity_bytes = 8 << 20;
    c.huge_pages = HugePages::kOff;
    c.shared_host_region = true;
    c.worker_threads = 1;
    Result<std::unique_ptr<Store>> s = Store::Open(c);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    if (!s.ok()) return;
    store = std::move(*s);
    server = std::make_unique<DaemonServer>(
        std::map<std::string, DaemonTenant>{{"a", DaemonTenant{"token-of-tenant-a-0123", {"*"}, store.get()}}});
    Status st = server->Start(dir.File("kvtierd.sock"));
    EXPECT_TRUE(st.ok()) << st.ToString();
    MetricsServer::Handlers h;
    h.metrics = [this] {
      DaemonMetrics m;
      m.tenants.push_back({"a", store->Stats()});
      m.server = server->counters();
      m.version = "test";
      return RenderPrometheus(m);
    };
    h.health = [this]() -> Status {
      if (!healthy.load()) return Status::Unavailable("kvtierd is shutting down");
      Result<SharedRegion> r = store->SharedHostRegion();
      return r.ok() ? Status::OK() : r.status();
    };
    metrics = std::make_unique<MetricsServer>(h, options);
    st = metrics->Start("127.0.0.1:0");
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  ~Served() {
    if (metrics) metrics->Stop();
    if (server) server->Stop();
  }
};

TEST(DaemonMetrics, ServesStatsThatFollowTheStore) {
  Served s;
  ASSERT_TRUE(s.metrics && !s.metrics->address().empty());
  EXPECT_TRUE(s.metrics->address().starts_with("127.0.0.1:")) << s.metrics->address();
  Result<HttpReply> before = Get(s.metrics->address(), "/metrics");
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  EXPECT_EQ(before->status, 200);
  EXPECT_NE(before->head.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << before->head;
  EXPECT_NE(before->head.find("Content-Length: " + std::to_string(before->body.size())), std::string::npos);
  EXPECT_EQ(Sample(before->body, "kvtier_saved_chunks_total", "a"), 0);
  EXPECT_EQ(Sample(before->body, "kvtier_host_chunks", "a"), 0);
  EXPECT_EQ(Sample(before->body, "kvtier_host_capacity_bytes", "a"),
            static_cast<double>(s.store->Stats().host_capacity_bytes));

  // Save three chunks through the Store: the counters and gauges follow.
  test::TestEngine e(Served::Shape(), Served::kBlockTokens, 32);
  Result<NamespaceHandle> ns = s.store->RegisterNamespace(Served::Spec(), e.layout);
  ASSERT_TRUE(ns.ok()) << ns.status().ToString();
  const std::vector<int32_t> tokens = test::Prompt(1, 3 * Served::kChunkTokens);
  const uint32_t bpc = Served::kChunkTokens / Served::kBlockTokens;
  test::FillPrompt(e, test::KeysOf(Served::Spec(), tokens), test::Blocks(0, 3 * bpc));
  Result<Ticket> t = s.store->Save(*ns, tokens, test::Blocks(0, 3 * bpc));
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  ASSERT_TRUE(t->Wait(std::chrono::seconds(10)).ok()) << t->status().ToString();
  ASSERT_TRUE(s.store->Lookup(*ns, tokens).ok());

  Result<HttpReply> after = Get(s.metrics->address(), "/metrics?from=test");
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_EQ(after->status, 200);
  EXPECT_EQ(Sample(after->body, "kvtier_saved_chunks_total", "a"), 3);
  EXPECT_EQ(Sample(after->body, "kvtier_saves_total", "a"), 1);
  EXPECT_EQ(Sample(after->body, "kvtier_lookups_total", "a"), 1);
  EXPECT_EQ(Sample(after->body, "kvtier_host_chunks", "a"), 3);
  EXPECT_GT(Sample(after->body, "kvtier_host_used_bytes", "a"), 0);
  EXPECT_EQ(Sample(after->body, "kvtier_namespaces", "a"), 1);
  EXPECT_NE(after->body.find("kvtier_store_info{tenant=\"a\",huge_pages=\"none\""), std::string::npos);
  EXPECT_NE(after->body.find("\nkvtier_daemon_connections_total 0\n"), std::string::npos);

  // HEAD: the same head, no body.
  Result<HttpReply> head = Get(s.metrics->address(), "/metrics", "HEAD");
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(head->status, 200);
  EXPECT_TRUE(head->body.empty());
  EXPECT_NE(head->head.find("Content-Length: "), std::string::npos);
}

TEST(DaemonMetrics, HealthzFollowsTheHealthCheck) {
  Served s;
  ASSERT_TRUE(s.metrics);
  Result<HttpReply> ok = Get(s.metrics->address(), "/healthz");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->status, 200);
  EXPECT_EQ(ok->body, "ok\n");
  s.healthy = false;
  Result<HttpReply> down = Get(s.metrics->address(), "/healthz");
  ASSERT_TRUE(down.ok());
  EXPECT_EQ(down->status, 503);
  EXPECT_EQ(down->body, "kvtierd is shutting down\n");
  s.healthy = true;
  ASSERT_TRUE(s.store->Close().ok());
  Result<HttpReply> closed = Get(s.metrics->address(), "/healthz");
  ASSERT_TRUE(closed.ok());
  EXPECT_EQ(closed->status, 503);
  EXPECT_NE(closed->body.find("closed"), std::string::npos) << closed->body;
}

TEST(DaemonMetrics, RefusesWhatItDoesNotServe) {
  Served s;
  ASSERT_TRUE(s.metrics);
  const std::string& at = s.metrics->address();
  Result<HttpReply> missing = Get(at, "/nothing-here");
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->status, 404);
  EXPECT_NE(missing->body.find("/metrics and /healthz"), std::string::npos);
  Result<HttpReply> post = Http(at, "POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
  ASSERT_TRUE(post.ok());
  EXPECT_EQ(post->status, 405);
  EXPECT_NE(post->head.find("Allow: GET, HEAD"), std::string::npos);
  Result<HttpReply> garbage = Http(at, "hello there\r\n\r\n");
  ASSERT_TRUE(garbage.ok());
  EXPECT_EQ(garbage->status, 400);
  // A request head over the limit is refused without reading it all.
  Result<HttpReply> big = Http(at, "GET /metrics HTTP/1.1\r\nX-Filler: " + std::string(64 * 1024, 'x') + "\r\n\r\n");
  ASSERT_TRUE(big.ok()) << big.status().ToString();
  EXPECT_EQ(big->status, 431);
  // And the server still answers.
  Result<HttpReply> fine = Get(at, "/healthz");
  ASSERT_TRUE(fine.ok());
  EXPECT_EQ(fine->status, 200);
}

TEST(DaemonMetrics, AStalledClientHoldsOthersBackOnlyUntilItsTimeout) {
  MetricsServerOptions o;
  o.io_timeout = std::chrono::milliseconds(300);
  Served s(o);
  ASSERT_TRUE(s.metrics);
  const int stalled = ConnectTo(s.metrics->address());
  ASSERT_GE(stalled, 0);
  ASSERT_EQ(::send(stalled, "GET /met", 8, MSG_NOSIGNAL), 8);
  const Clock::time_point t0 = Clock::now();
  Result<HttpReply> other = Get(s.metrics->address(), "/healthz");
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  EXPECT_EQ(other->status, 200);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
  char buf[256];
  const ssize_t n = ::recv(stalled, buf, sizeof(buf), 0);
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)).substr(0, 12), "HTTP/1.1 408");
  ::close(stalled);
}

TEST(DaemonMetrics, StartRefusesBadAddressesAndStopCloses) {
  MetricsServer m(MetricsServer::Handlers{});
  EXPECT_EQ(m.Start("no-port-here").code(), Status::Code::kInvalidArgument);
  ASSERT_TRUE(m.Start("127.0.0.1:0").ok());
  const std::string at = m.address();
  MetricsServer second(MetricsServer::Handlers{});
  Status busy = second.Start(at);
  EXPECT_EQ(busy.code(), Status::Code::kIOError);
  EXPECT_NE(busy.message().find(at), std::string::npos) << busy.ToString();
  EXPECT_NE(busy.message().find("metrics.listen"), std::string::npos);
  Result<HttpReply> r = Get(at, "/healthz");  // no health handler: healthy
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  m.Stop();
  m.Stop();
  EXPECT_LT(ConnectTo(at), 0);
}

}  // namespace
}  // namespace kvtier
