#include "daemon/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string_view>

#include "common/stats_fields.h"
#include "daemon/wire.h"

namespace kvtier {

namespace {

using Clock = std::chrono::steady_clock;

// The StoreStats fields that go up and down (the rest only go up). Each name is checked
// against StoreStats at compile time; a new gauge field must be added here, else it is
// rendered as a counter.
#define KVT_GAUGE(f) (static_cast<void>(sizeof(StoreStats::f)), std::string_view(#f))
constexpr std::string_view kGauges[] = {
    KVT_GAUGE(host_capacity_bytes), KVT_GAUGE(host_used_bytes),     KVT_GAUGE(host_chunks),
    KVT_GAUGE(index_chunks),        KVT_GAUGE(index_memory_bytes),  KVT_GAUGE(namespaces),
    KVT_GAUGE(nvme_enabled),        KVT_GAUGE(nvme_capacity_bytes), KVT_GAUGE(nvme_used_bytes),
    KVT_GAUGE(nvme_chunks),         KVT_GAUGE(pinned_chunks),       KVT_GAUGE(redis_enabled),
    KVT_GAUGE(redis_used_bytes),    KVT_GAUGE(gpu_host_registered), KVT_GAUGE(hbm_capacity_bytes),
    KVT_GAUGE(hbm_used_bytes),      KVT_GAUGE(hbm_chunks)};
#undef KVT_GAUGE

bool IsGauge(std::string_view field) {
  for (std::string_view g : kGauges)
    if (g == field) return true;
  return false;
}

// A label value: backslash, double quote and newline escaped.
std::string Label(std::string_view v) {
  std::string o;
  for (char c : v) {
    if (c == '\\') {
      o += "\\\\";
    } else if (c == '"') {
      o += "\\\"";
    } else if (c == '\n') {
      o += "\\n";
    } else {
      o += c;
    }
  }
  return o;
}

void Family(std::string& out, const std::string& name, const char* type, const std::string& help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

std::string Number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

std::string Errno(const std::string& what, int err) { return what + ": " + std::strerror(err); }

// Waits until `fd` is ready for `events` or the wake fd fires; false at the deadline or wake.
bool WaitReady(int fd, short events, int wake_fd, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p[2] = {{fd, events, 0}, {wake_fd, POLLIN, 0}};
    const int r = ::poll(p, 2, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    if (p[1].revents != 0) return false;
    return true;
  }
}

const char* Reason(int code) {
  switch (code) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
  }
  return "Error";
}

}  // namespace

std::string RenderPrometheus(const DaemonMetrics& m) {
  std::string out;
  out.reserve(16384);
  auto sample = [&](const std::string& name, const std::string& tenant, uint64_t v) {
    out += name + "{tenant=\"" + Label(tenant) + "\"} " + std::to_string(v) + "\n";
  };
#define KVT_RENDER(f)                                                                                            \
  {                                                                                                              \
    const bool gauge = IsGauge(#f);                                                                              \
    const std::string name = std::string("kvtier_") + #f + (gauge ? "" : "_total");                              \
    Family(out, name, gauge ? "gauge" : "counter", "StoreStats." #f " of each tenant's store (kvtier/store.h)"); \
    for (const TenantStats& t : m.tenants) sample(name, t.tenant, static_cast<uint64_t>(t.stats.f));             \
  }
  KVTIER_STORE_STATS_NUMBERS(KVT_RENDER)
#undef KVT_RENDER
  Family(out, "kvtier_store_info", "gauge",
         "Each tenant's store: huge pages, NVMe I/O backend, Redis breaker, GPU path");
  for (const TenantStats& t : m.tenants) {
    out += "kvtier_store_info{tenant=\"" + Label(t.tenant) + "\"";
#define KVT_RENDER_TEXT(f) out += std::string(",") + #f + "=\"" + Label(t.stats.f) + "\"";
    KVTIER_STORE_STATS_STRINGS(KVT_RENDER_TEXT)
#undef KVT_RENDER_TEXT
    out += "} 1\n";
  }
  const DaemonServerCounters& n = m.server;
  const struct {
    const char* name;
    const char* type;
    uint64_t value;
    const char* help;
  } daemon[] = {
      {"kvtier_daemon_connections_total", "counter", n.connections, "Client connections accepted"},
      {"kvtier_daemon_connections_open", "gauge", n.connections_open, "Client connections open now"},
      {"kvtier_daemon_sessions_open", "gauge", n.sessions_open, "Client sessions open now"},
      {"kvtier_daemon_refused_total", "counter", n.refused,
       "Connections refused: bad token or version, no handshake, or over max_connections"},
      {"kvtier_daemon_requests_total", "counter", n.requests, "Requests served"},
      {"kvtier_daemon_errors_total", "counter", n.errors, "Requests answered with an error, and malformed messages"},
      {"kvtier_daemon_tenants", "gauge", m.tenants.size(), "Tenants served"},
  };
  for (const auto& d : daemon) {
    Family(out, d.name, d.type, d.help);
    out += std::string(d.name) + " " + std::to_string(d.value) + "\n";
  }
  Family(out, "kvtier_daemon_request_seconds", "histogram",
         "Time kvtierd took to serve a request, from its decoding to its answer (the Store call included), by op");
  for (const OpLatency& l : n.latency) {
    uint64_t cumulative = 0;
    for (size_t b = 0; b < kLatencyBuckets; ++b) {
      cumulative += l.buckets[b];
      char le[32] = "+Inf";
      if (b + 1 < kLatencyBuckets) std::snprintf(le, sizeof(le), "%g", kLatencyBoundsSeconds[b]);
      out += "kvtier_daemon_request_seconds_bucket{op=\"" + Label(l.op) + "\",le=\"" + std::string(le) + "\"} " +
             std::to_string(cumulative) + "\n";
    }
    out += "kvtier_daemon_request_seconds_sum{op=\"" + Label(l.op) + "\"} " + Number(l.sum_seconds) + "\n";
    out += "kvtier_daemon_request_seconds_count{op=\"" + Label(l.op) + "\"} " + std::to_string(l.count) + "\n";
  }
  Family(out, "kvtier_daemon_uptime_seconds", "gauge", "Seconds since kvtierd started serving");
  out += "kvtier_daemon_uptime_seconds " + Number(m.uptime_seconds) + "\n";
  Family(out, "kvtier_daemon_build_info", "gauge", "kvtierd's version");
  out += "kvtier_daemon_build_info{version=\"" + Label(m.version) + "\"} 1\n";
  return out;
}

// ---- MetricsServer --------------------------------------------------------------------------

MetricsServer::MetricsServer(Handlers handlers, MetricsServerOptions options)
    : handlers_(std::move(handlers)), options_(options) {}

MetricsServer::~MetricsServer() { Stop(); }

Status MetricsServer::Start(const std::string& listen) {
  if (listen_fd_ >= 0) return Status::InvalidArgument("metrics: already listening on " + address_);
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return Status::InvalidArgument("metrics: listen address '" + listen + "' is not host:port");
  std::string host = listen.substr(0, colon);
  const std::string port = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const int gai = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found);
  if (gai != 0)
    return Status::InvalidArgument("metrics: cannot resolve listen address '" + listen + "': " + ::gai_strerror(gai) +
                                   "; set metrics.listen to host:port");
  int fd = -1;
  int err = 0;
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    const int one = 1;
    (void)::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, 64) != 0) {
      err = errno;
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(found);
  if (fd < 0)
    return Status::IOError(Errno("metrics: cannot listen on " + listen, err) +
                           "; pick a free port in metrics.listen, or \"\" to turn metrics off");
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  char text[INET6_ADDRSTRLEN] = "";
  uint16_t bound_port = 0;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) == 0) {
    if (bound.ss_family == AF_INET) {
      const auto* a = reinterpret_cast<const sockaddr_in*>(&bound);
      ::inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text));
      bound_port = ntohs(a->sin_port);
    } else if (bound.ss_family == AF_INET6) {
      const auto* a = reinterpret_cast<const sockaddr_in6*>(&bound);
      ::inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof(text));
      bound_port = ntohs(a->sin6_port);
    }
  }
  const int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    err = errno;
    ::close(fd);
    return Status::IOError(Errno("metrics: eventfd", err));
  }
  const bool v6 = bound.ss_family == AF_INET6;
  address_ = (v6 ? "[" : "") + std::string(text) + (v6 ? "]" : "") + ":" + std::to_string(bound_port);
  listen_fd_ = fd;
  wake_fd_ = wake;
  thread_ = std::thread(&MetricsServer::Loop, this);
  return Status::OK();
}

void MetricsServer::Stop() {
  if (listen_fd_ < 0) return;
  const uint64_t one = 1;
  while (::write(wake_fd_, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
  thread_.join();
  ::close(listen_fd_);
  ::close(wake_fd_);
  listen_fd_ = wake_fd_ = -1;
  address_.clear();
}

void MetricsServer::Loop() {
  for (;;) {
    const int fd = wire::AcceptUntilWoken(listen_fd_, wake_fd_);
    if (fd < 0) return;
    Serve(fd);
    ::close(fd);
  }
}

void MetricsServer::Serve(int fd) {
  const Clock::time_point deadline = Clock::now() + options_.io_timeout;
  // The request head: up to the blank line, bounded.
  std::string req;
  size_t end = std::string::npos;
  int code = 0;
  while (end == std::string::npos) {
    if (req.size() >= options_.max_request_bytes) {
      code = 431;
      break;
    }
    if (!WaitReady(fd, POLLIN, wake_fd_, deadline)) {
      code = 408;
      break;
    }
    char buf[2048];
    const size_t want = std::min(sizeof(buf), options_.max_request_bytes - req.size());
    const ssize_t n = ::recv(fd, buf, want, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n <= 0) return;  // the client went away
    req.append(buf, static_cast<size_t>(n));
    end = req.find("\r\n\r\n");
    if (end == std::string::npos) end = req.find("\n\n");
  }

  bool head = false;
  std::string body, content_type = "text/plain; charset=utf-8", extra;
  if (code == 0) {
    // "METHOD SP TARGET SP HTTP/1.x"
    const size_t eol = req.find_first_of("\r\n");
    const std::string line = req.substr(0, eol);
    const size_t sp1 = line.find(' ');
    const size_t sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
    if (sp1 == std::string::npos || sp2 == std::string::npos || line.compare(sp2 + 1, 5, "HTTP/") != 0 ||
        line.find(' ', sp2 + 1) != std::string::npos) {
      code = 400;
    } else {
      const std::string method = line.substr(0, sp1);
      std::string path = line.substr(sp1 + 1, sp2 - sp1 - 1);
      path = path.substr(0, path.find('?'));
      head = method == "HEAD";
      if (method != "GET" && !head) {
        code = 405;
        extra = "Allow: GET, HEAD\r\n";
      } else if (path == "/metrics") {
        try {
          body = handlers_.metrics ? handlers_.metrics() : std::string();
          content_type = "text/plain; version=0.0.4; charset=utf-8";
          code = 200;
        } catch (const std::exception& e) {
          code = 500;
          body = std::string("metrics: ") + e.what() + "\n";
        }
      } else if (path == "/healthz") {
        Status st = handlers_.health ? handlers_.health() : Status::OK();
        code = st.ok() ? 200 : 503;
        body = st.ok() ? "ok\n" : st.message() + "\n";
      } else {
        code = 404;
        body = "not found: kvtierd serves /metrics and /healthz\n";
      }
    }
  }
  if (code == 400) body = "bad request: expected an HTTP/1.x request line\n";
  if (code == 405) body = "method not allowed: GET or HEAD\n";
  if (code == 408) body = "request timeout\n";
  if (code == 431) body = "request head larger than " + std::to_string(options_.max_request_bytes) + " bytes\n";

  std::string out = "HTTP/1.1 " + std::to_string(code) + " " + Reason(code) + "\r\nContent-Type: " + content_type +
                    "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n" + extra + "\r\n";
  if (!head) out += body;
  size_t sent = 0;
  while (sent < out.size()) {
    const ssize_t n = ::send(fd, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && WaitReady(fd, POLLOUT, wake_fd_, deadline)) continue;
    return;
  }
  // Let the client read everything before the close: a close with unread request bytes
  // would reset the connection.
  ::shutdown(fd, SHUT_WR);
  char drain[512];
  while (WaitReady(fd, POLLIN, wake_fd_, std::min(deadline, Clock::now() + std::chrono::milliseconds(200)))) {
    const ssize_t n = ::recv(fd, drain, sizeof(drain), 0);
    if (n <= 0 && !(n < 0 && (errno == EINTR || errno == EAGAIN))) break;
  }
}

}  // namespace kvtier
