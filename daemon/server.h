// DaemonServer: kvtierd's request server on a Unix socket.
//
// It serves the Stores its caller opened, one per tenant, to client processes
// (DaemonClient, store/daemon_client.h). Each tenant has a token and the model-name
// prefixes it may register; its Store must be opened with shared_host_region, because a
// connection's handshake passes that region's memfd to the client, which maps it and
// copies KV bytes in and out of it itself (daemon/wire.h has the frames and messages).
//
//   client                              DaemonServer                       tenant's Store
//   Hello(tenant, token, session) ───►  check token (constant time)
//                                 ◄───  HelloReply + memfd (SCM_RIGHTS)
//   Request(id, op)               ───►  session owns handle/lease? ──────►  RegisterNamespace(spec),
//                                 ◄───  Response(id, status, result)        ReserveSave, AcquireLoad...
//
// Sessions: a client picks a random session id and opens a few connections with it. Leases
// and namespace registrations belong to the session: only its connections may use them,
// and when its last connection closes the server aborts its save leases, releases its load
// leases and unregisters its namespaces, so a client that dies leaks nothing. Two tenants
// that are given the same Store share its cache: give each tenant its own Store.
//
// Threads: one accept thread, and one thread per connection for the connection's life
// (engines open a few connections each, so threads stay in the tens or hundreds; a
// connection waits on its socket between requests and runs each request's Store call
// itself). max_connections bounds them.
//
// Thread-safety: Start, Stop and the destructor are for the owner's thread; counters() may
// be called from any thread. The Stores are not owned and must outlive the server (Stop
// first).
#ifndef KVTIER_DAEMON_SERVER_H_
#define KVTIER_DAEMON_SERVER_H_

#include <array>
#include <atomic>
#include <chrono>
#include <iterator>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "daemon/wire.h"
#include "kvtier/status.h"
#include "kvtier/store.h"

namespace kvtier {

struct DaemonTenant {
  std::string token;                        // the credential its clients present
  std::vector<std::string> model_prefixes;  // model names it may register; "*" is any, none when empty
  Store* store = nullptr;                   // not owned; opened with shared_host_region = true
};

struct DaemonServerOptions {
  std::chrono::milliseconds handshake_timeout{5000};  // from accept to the region passed
  std::chrono::milliseconds io_timeout{10000};        // the rest of a request once it starts; a response
  uint32_t max_connections = 1024;                    // more are closed at accept (counted as refused)
};

// Request latency of one op (decode to encoded answer, the Store call included), as a
// cumulative histogram over kLatencyBoundsSeconds.
inline constexpr double kLatencyBoundsSeconds[] = {10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3,
                                                   2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 1.0};
inline constexpr size_t kLatencyBuckets = std::size(kLatencyBoundsSeconds) + 1;  // the last is +Inf
struct OpLatency {
  std::string op;                                 // wire::OpName
  std::array<uint64_t, kLatencyBuckets> buckets{};  // requests at or under each bound (not cumulative)
  uint64_t count = 0;
  double sum_seconds = 0;
};

// Counters since Start, for metrics. Monotonic except the *_open gauges.
struct DaemonServerCounters {
  uint64_t connections = 0;       // accepted
  uint64_t connections_open = 0;
  uint64_t sessions_open = 0;
  uint64_t refused = 0;           // connections without a handshake (bad token or version, none sent) or over the limit
  uint64_t requests = 0;
  uint64_t errors = 0;            // requests answered with an error, and malformed messages
  std::vector<OpLatency> latency; // per op that has been requested at least once
};

class DaemonServer {
 public:
  // Tenant name -> tenant; "" is the tenant of clients that name none.
  explicit DaemonServer(std::map<std::string, DaemonTenant> tenants, DaemonServerOptions options = {});
  ~DaemonServer();  // Stop()
  DaemonServer(const DaemonServer&) = delete;
  DaemonServer& operator=(const DaemonServer&) = delete;

  // Binds `socket_path` (mode 0660) and starts accepting. A socket file left by a daemon
  // that is gone is replaced; one that a live daemon answers on is not (Busy).
  // InvalidArgument when a tenant has no Store or its Store's host region is not shared.
  Status Start(const std::string& socket_path);
  // Stops accepting, closes every connection (ending their sessions: leases aborted or
  // released, registrations dropped), joins the threads and removes the socket file.
  // Safe to call twice, and without Start.
  void Stop();

  DaemonServerCounters counters() const;

 private:
  struct Session;
  struct Connection;
  struct Tenant {
    std::string name;
    DaemonTenant config;
    SharedRegion region;  // set by Start
  };

  void AcceptLoop();
  void Serve(Connection* c);
  std::shared_ptr<Session> Handshake(int fd);
  void Leave(const std::shared_ptr<Session>& s);
  wire::Response Dispatch(Session& s, const wire::Request& q);
  wire::Response DispatchOrFail(Session& s, const wire::Request& q);
  void ReapLocked();  // joins finished connection threads; conn_mu_ held

  // Constant after construction.
  const DaemonServerOptions options_;
  std::map<std::string, Tenant> tenants_;  // regions set by Start, then constant

  // Set by Start, cleared by Stop (owner's thread only).
  std::string path_;
  uint64_t path_inode_ = 0;  // the socket file we bound: Stop removes only that one
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: wakes the accept thread at Stop
  std::thread accept_thread_;

  std::mutex conn_mu_;
  std::vector<std::unique_ptr<Connection>> conns_;  // guarded by conn_mu_
  bool stopping_ = false;                           // guarded by conn_mu_

  std::mutex session_mu_;
  // (tenant, session id) -> session; guarded by session_mu_.
  std::map<std::pair<std::string, uint64_t>, std::shared_ptr<Session>> sessions_;

  struct Counters {
    std::atomic<uint64_t> connections{0}, connections_open{0}, sessions_open{0}, refused{0}, requests{0}, errors{0};
  };
  // Per op (index: wire::Op); relaxed atomics, read without a lock by counters().
  struct LatencyCounters {
    std::array<std::atomic<uint64_t>, kLatencyBuckets> buckets{};
    std::atomic<uint64_t> count{0}, sum_ns{0};
  };
  void RecordLatency(wire::Op op, std::chrono::nanoseconds took);
  static constexpr size_t kOps = 16;
  mutable std::array<LatencyCounters, kOps> latency_;
  mutable Counters n_;
};

}  // namespace kvtier

#endif  // KVTIER_DAEMON_SERVER_H_
