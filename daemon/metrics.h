// kvtierd's metrics: a Prometheus text renderer and the small HTTP server that serves it.
//
//   GET /metrics  ->  200, text format 0.0.4: every StoreStats field per tenant, labelled
//                     {tenant="NAME"} (common/stats_fields.h lists them; monotonic fields are
//                     counters named kvtier_<field>_total, the rest gauges kvtier_<field>),
//                     the string fields as kvtier_store_info{tenant=...,huge_pages=...} 1,
//                     and the request server's counters as kvtier_daemon_*.
//   GET /healthz  ->  200 "ok" when the health check passes, else 503 and its message.
//   HEAD of either: the same status and headers, no body. Other paths 404, other methods
//   405, a malformed request 400, a request head over max_request_bytes 431.
//
// The server is one thread: it accepts a connection, reads one request (bounded in size
// and time), answers with Connection: close, and takes the next. A client that stalls
// holds the others back for at most io_timeout. Per-request latency of the daemon's ops is
// not rendered: DaemonServer does not measure it.
//
// Thread-safety: RenderPrometheus is a pure function. MetricsServer's Start, Stop and
// destructor are for the owner's thread; address() may be called from any thread after
// Start. The handlers run on the server's thread and must be safe to call concurrently
// with whatever the owner does meanwhile; Stop returns only once no handler is running.
#ifndef KVTIER_DAEMON_METRICS_H_
#define KVTIER_DAEMON_METRICS_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "daemon/server.h"
#include "kvtier/status.h"
#include "kvtier/store.h"

namespace kvtier {

struct TenantStats {
  std::string tenant;
  StoreStats stats;
};

struct DaemonMetrics {
  std::vector<TenantStats> tenants;
  DaemonServerCounters server;
  std::string version;
  double uptime_seconds = 0;
};

// The Prometheus text exposition format (version 0.0.4) of `m`.
std::string RenderPrometheus(const DaemonMetrics& m);

struct MetricsServerOptions {
  size_t max_request_bytes = 8192;             // request line and headers
  std::chrono::milliseconds io_timeout{2000};  // reading the request, writing the answer
};

class MetricsServer {
 public:
  struct Handlers {
    std::function<std::string()> metrics;  // the body of /metrics
    std::function<Status()> health;        // /healthz: OK, or why not
  };

  explicit MetricsServer(Handlers handlers, MetricsServerOptions options = {});
  ~MetricsServer();  // Stop()
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Listens on "host:port" (a name, an IPv4 address or [IPv6]; port 0 picks a free one) and
  // starts the server's thread. InvalidArgument for a malformed address, IOError when it
  // cannot be bound (the message names it).
  Status Start(const std::string& listen);
  // Stops accepting, ends the request in progress, joins the thread. Safe to call twice.
  void Stop();
  // The bound address ("127.0.0.1:41234"), "" before Start.
  const std::string& address() const { return address_; }

 private:
  void Loop();
  void Serve(int fd);

  // Constant after construction.
  const Handlers handlers_;
  const MetricsServerOptions options_;
  // Set by Start, cleared by Stop (owner's thread); read by the server thread in between.
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  std::string address_;
  std::thread thread_;
};

}  // namespace kvtier

#endif  // KVTIER_DAEMON_METRICS_H_
