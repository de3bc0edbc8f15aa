#include "daemon/server.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <new>
#include <set>
#include <system_error>

#ifndef KVTIER_VERSION_STRING
#define KVTIER_VERSION_STRING "unknown"
#endif

namespace kvtier {

using wire::Clock;

namespace {

std::string Errno(const std::string& what, int err) { return what + ": " + std::strerror(err); }

// Takes as long for every token of a given length, wherever the first difference is.
bool TokenEquals(const std::string& expected, const std::string& given) {
  const size_t n = std::max(expected.size(), given.size());
  unsigned diff = expected.size() != given.size() ? 1u : 0u;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char a = i < expected.size() ? static_cast<unsigned char>(expected[i]) : 0;
    const unsigned char b = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= static_cast<unsigned>(a ^ b);
    asm volatile("" : "+r"(diff));  // keeps the compiler from leaving the loop early
  }
  return diff == 0;
}

bool ModelAllowed(const std::vector<std::string>& prefixes, const std::string& model) {
  for (const std::string& p : prefixes)
    if (p == "*" || model.starts_with(p)) return true;
  return false;
}

std::string Joined(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
  return s.empty() ? "none" : s;
}

Result<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(a.sun_path))
    return Status::InvalidArgument("socket path '" + path + "' is empty or longer than " +
                                   std::to_string(sizeof(a.sun_path) - 1) + " bytes");
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

// Something at `path` that is not a listening socket is removed (a daemon that is gone
// left it); a socket that answers is another daemon's.
Status ClearStaleSocket(const std::string& path, const sockaddr_un& addr) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::OK();
    return Status::IOError(Errno("kvtierd: stat " + path, errno));
  }
  if (!S_ISSOCK(st.st_mode))
    return Status::InvalidArgument("kvtierd: " + path + " exists and is not a socket; remove it or pick another path");
  const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) return Status::IOError(Errno("kvtierd: socket", errno));
  int r;
  do {
    r = ::connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  } while (r != 0 && errno == EINTR);
  const int err = errno;
  ::close(probe);
  if (r == 0) return Status::Busy("kvtierd: another daemon is listening on " + path + "; stop it first");
  if (err != ECONNREFUSED) return Status::IOError(Errno("kvtierd: probing " + path, err));
  if (::unlink(path.c_str()) != 0 && errno != ENOENT)
    return Status::IOError(Errno("kvtierd: removing the stale socket " + path, errno));
  return Status::OK();
}

// The count Store::CommitSave's failure message starts with ("save lease: N of M chunks
// stored: ..."): it reports the stored chunks only on success, yet a partial commit
// (host tier full, a chunk that could not be indexed) still stores the leading ones.
uint32_t StoredFromCommitError(const Status& s) {
  unsigned stored = 0;
  if (std::sscanf(s.message().c_str(), "save lease: %u of", &stored) == 1) return stored;
  return 0;
}

}  // namespace

// What one client session holds. Guarded by mu (connections: by the server's session_mu_).
struct DaemonServer::Session {
  const Tenant* tenant = nullptr;  // constant
  uint64_t id = 0;                 // constant
  uint32_t connections = 0;        // guarded by DaemonServer::session_mu_

  std::mutex mu;
  std::set<uint32_t> handles;      // guarded by mu: namespaces it registered
  std::set<uint64_t> save_leases;  // guarded by mu
  std::set<uint64_t> load_leases;  // guarded by mu
  std::deque<uint64_t> prefetches; // guarded by mu: the latest it started (kMaxPrefetchIds)
  static constexpr size_t kMaxPrefetchIds = 1024;

  Status Owns(uint32_t ns) {
    std::lock_guard<std::mutex> l(mu);
    if (handles.count(ns) == 0)
      return Status::NotFound("namespace handle " + std::to_string(ns) + " is not registered by this client session");
    return Status::OK();
  }
  // Removes `id` from `set`: NotFound when the session does not hold it.
  Status Take(std::set<uint64_t>& set, uint64_t id, const char* what) {
    std::lock_guard<std::mutex> l(mu);
    if (set.erase(id) == 0)
      return Status::NotFound(std::string(what) + " " + std::to_string(id) +
                              " is unknown, already ended, or not this client session's");
    return Status::OK();
  }
};

struct DaemonServer::Connection {
  int fd = -1;        // guarded by conn_mu_ once the thread runs (the thread reads its copy)
  bool done = false;  // guarded by conn_mu_: the thread has closed fd and is returning
  std::thread thread;
};

DaemonServer::DaemonServer(std::map<std::string, DaemonTenant> tenants, DaemonServerOptions options)
    : options_(options) {
  for (auto& [name, config] : tenants) tenants_.emplace(name, Tenant{name, std::move(config), SharedRegion{}});
}

DaemonServer::~DaemonServer() { Stop(); }

Status DaemonServer::Start(const std::string& socket_path) {
  if (listen_fd_ >= 0) return Status::InvalidArgument("kvtierd: already started on " + path_);
  if (tenants_.empty()) return Status::InvalidArgument("kvtierd: no tenants configured");
  for (auto& [name, t] : tenants_) {
    if (t.config.store == nullptr) return Status::InvalidArgument("kvtierd: tenant '" + name + "' has no store");
    Result<SharedRegion> r = t.config.store->SharedHostRegion();
    if (!r.ok()) return r.status().WithContext("kvtierd: tenant '" + name + "': ");
    t.region = *r;
    // Clients map the region read-write; a sealed size keeps one that truncates the memfd
    // from making the daemon's own accesses fault. Best effort: the memfd must allow seals.
    (void)::fcntl(t.region.fd, F_ADD_SEALS, F_SEAL_SHRINK);
  }
  Result<sockaddr_un> addr = UnixAddress(socket_path);
  if (!addr.ok()) return addr.status();
  KVTIER_RETURN_IF_ERROR(ClearStaleSocket(socket_path, *addr));
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::IOError(Errno("kvtierd: socket", errno));
  auto fail = [&](const std::string& what) {
    const int err = errno;
    ::close(fd);
    return Status::IOError(Errno("kvtierd: " + what + " " + socket_path, err));
  };
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) return fail("bind");
  // Before listen, so that no one connects while the mode is the umask's.
  if (::chmod(socket_path.c_str(), 0660) != 0) return fail("chmod");
  struct stat st;
  if (::stat(socket_path.c_str(), &st) != 0) return fail("stat");
  if (::listen(fd, 128) != 0) return fail("listen");
  const int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) return fail("eventfd for");
  listen_fd_ = fd;
  wake_fd_ = wake;
  path_ = socket_path;
  path_inode_ = st.st_ino;
  {
    std::lock_guard<std::mutex> l(conn_mu_);
    stopping_ = false;
  }
  accept_thread_ = std::thread(&DaemonServer::AcceptLoop, this);
  return Status::OK();
}

void DaemonServer::Stop() {
  if (listen_fd_ < 0) return;
  {
    std::lock_guard<std::mutex> l(conn_mu_);
    stopping_ = true;
  }
  const uint64_t one = 1;
  while (::write(wake_fd_, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
  accept_thread_.join();
  ::close(listen_fd_);
  ::close(wake_fd_);
  listen_fd_ = wake_fd_ = -1;
  struct stat st;
  if (::lstat(path_.c_str(), &st) == 0 && st.st_ino == path_inode_) ::unlink(path_.c_str());
  // Wake every connection (its reads see the end) and wait for it to end its session.
  std::vector<std::unique_ptr<Connection>> all;
  {
    std::lock_guard<std::mutex> l(conn_mu_);
    for (const std::unique_ptr<Connection>& c : conns_)
      if (!c->done) ::shutdown(c->fd, SHUT_RDWR);
    all.swap(conns_);
  }
  for (const std::unique_ptr<Connection>& c : all) c->thread.join();
}

DaemonServerCounters DaemonServer::counters() const {
  DaemonServerCounters c;
  c.connections = n_.connections.load(std::memory_order_relaxed);
  c.connections_open = n_.connections_open.load(std::memory_order_relaxed);
  c.sessions_open = n_.sessions_open.load(std::memory_order_relaxed);
  c.refused = n_.refused.load(std::memory_order_relaxed);
  c.requests = n_.requests.load(std::memory_order_relaxed);
  c.errors = n_.errors.load(std::memory_order_relaxed);
  for (size_t i = 0; i < kOps; ++i) {
    const LatencyCounters& l = latency_[i];
    const uint64_t count = l.count.load(std::memory_order_relaxed);
    if (count == 0) continue;
    OpLatency o;
    o.op = wire::OpName(static_cast<wire::Op>(i));
    for (size_t b = 0; b < kLatencyBuckets; ++b) o.buckets[b] = l.buckets[b].load(std::memory_order_relaxed);
    o.count = count;
    o.sum_seconds = static_cast<double>(l.sum_ns.load(std::memory_order_relaxed)) * 1e-9;
    c.latency.push_back(std::move(o));
  }
  return c;
}

static_assert(static_cast<size_t>(wire::Op::kListNamespaces) < 16, "DaemonServer::kOps is too small for wire::Op");

void DaemonServer::RecordLatency(wire::Op op, std::chrono::nanoseconds took) {
  const size_t i = static_cast<size_t>(op);
  if (i >= kOps) return;
  const double secs = std::chrono::duration<double>(took).count();
  size_t b = 0;
  while (b < std::size(kLatencyBoundsSeconds) && secs > kLatencyBoundsSeconds[b]) ++b;
  LatencyCounters& l = latency_[i];
  l.buckets[b].fetch_add(1, std::memory_order_relaxed);
  l.sum_ns.fetch_add(static_cast<uint64_t>(took.count()), std::memory_order_relaxed);
  l.count.fetch_add(1, std::memory_order_relaxed);
}

void DaemonServer::ReapLocked() {
  for (auto it = conns_.begin(); it != conns_.end();) {
    if ((*it)->done) {
      (*it)->thread.join();  // it only returns now
      it = conns_.erase(it);
    } else {
      ++it;
    }
  }
}

void DaemonServer::AcceptLoop() {
  for (;;) {
    const int fd = wire::AcceptUntilWoken(listen_fd_, wake_fd_);
    if (fd < 0) return;
    std::lock_guard<std::mutex> l(conn_mu_);
    ReapLocked();
    if (stopping_) {
      ::close(fd);
      return;
    }
    if (conns_.size() >= options_.max_connections) {
      ::close(fd);
      n_.refused.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    auto c = std::make_unique<Connection>();
    c->fd = fd;
    n_.connections.fetch_add(1, std::memory_order_relaxed);
    n_.connections_open.fetch_add(1, std::memory_order_relaxed);
    try {
      c->thread = std::thread(&DaemonServer::Serve, this, c.get());
    } catch (const std::system_error&) {
      ::close(fd);
      n_.connections_open.fetch_sub(1, std::memory_order_relaxed);
      n_.refused.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    conns_.push_back(std::move(c));
  }
}

std::shared_ptr<DaemonServer::Session> DaemonServer::Handshake(int fd) {
  const wire::Deadline deadline = Clock::now() + options_.handshake_timeout;
  Result<std::vector<uint8_t>> frame = wire::ReadFrame(fd, wire::kMaxHelloBytes, deadline);
  if (!frame.ok()) {
    n_.refused.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  Result<wire::Hello> hello = wire::DecodeHello(*frame);
  wire::HelloReply reply;
  reply.daemon_version = KVTIER_VERSION_STRING;
  const Tenant* tenant = nullptr;
  if (!hello.ok()) {
    reply.status = hello.status().WithContext("kvtierd: ");
  } else if (hello->protocol_version != wire::kProtocolVersion) {
    reply.status = Status::NotSupported("kvtierd speaks protocol version " + std::to_string(wire::kProtocolVersion) +
                                        " and the client " + std::to_string(hello->protocol_version) +
                                        ": use a kvtier client of the daemon's release");
  } else {
    auto it = tenants_.find(hello->tenant);
    // An unknown tenant costs the same comparison as a wrong token.
    const bool known = it != tenants_.end();
    const bool match = TokenEquals(known ? it->second.config.token : hello->token + "?", hello->token);
    if (known && match) {
      tenant = &it->second;
    } else {
      reply.status = Status::PermissionDenied("kvtierd: tenant '" + hello->tenant +
                                              "' is unknown or its token is wrong; check the client's tenant "
                                              "and token");
    }
  }
  if (tenant == nullptr) {
    n_.refused.fetch_add(1, std::memory_order_relaxed);
    Result<std::vector<uint8_t>> out = wire::EncodeHelloReply(reply);
    if (out.ok()) (void)wire::WriteFrame(fd, *out, deadline);
    return nullptr;
  }
  std::shared_ptr<Session> s;
  {
    std::lock_guard<std::mutex> l(session_mu_);
    std::shared_ptr<Session>& slot = sessions_[{tenant->name, hello->session_id}];
    reply.session_existed = slot != nullptr;
    if (!slot) {
      slot = std::make_shared<Session>();
      slot->tenant = tenant;
      slot->id = hello->session_id;
      n_.sessions_open.fetch_add(1, std::memory_order_relaxed);
    }
    ++slot->connections;
    s = slot;
  }
  reply.region_bytes = tenant->region.bytes;
  reply.tenant = tenant->name;
  Result<std::vector<uint8_t>> out = wire::EncodeHelloReply(reply);
  if (!out.ok() || !wire::WriteFrame(fd, *out, deadline).ok() || !wire::SendFd(fd, tenant->region.fd, deadline).ok()) {
    Leave(s);
    return nullptr;
  }
  return s;
}

void DaemonServer::Leave(const std::shared_ptr<Session>& s) {
  {
    std::lock_guard<std::mutex> l(session_mu_);
    if (--s->connections > 0) return;
    sessions_.erase({s->tenant->name, s->id});
    n_.sessions_open.fetch_sub(1, std::memory_order_relaxed);
  }
  // The session is gone from the map: no connection can reach what it held any more.
  std::set<uint32_t> handles;
  std::set<uint64_t> saves, loads;
  std::deque<uint64_t> prefetches;
  {
    std::lock_guard<std::mutex> l(s->mu);
    handles.swap(s->handles);
    saves.swap(s->save_leases);
    loads.swap(s->load_leases);
    prefetches.swap(s->prefetches);
  }
  Store& store = *s->tenant->config.store;
  for (uint64_t id : saves) (void)store.AbortSave(id);
  for (uint64_t id : loads) (void)store.ReleaseLoad(id);
  for (uint64_t id : prefetches) (void)store.CancelPrefetch(id);  // NotFound when finished
  for (uint32_t h : handles) (void)store.UnregisterNamespace(NamespaceHandle{h});
}

void DaemonServer::Serve(Connection* c) {
  const int fd = c->fd;
  if (std::shared_ptr<Session> s = Handshake(fd)) {
    for (;;) {
      // Idle connections wait here for as long as they like; Stop's shutdown wakes them.
      if (!wire::WaitReadable(fd, wire::kNoDeadline).ok()) break;
      Result<std::vector<uint8_t>> frame =
          wire::ReadFrame(fd, wire::kMaxFrameBytes, Clock::now() + options_.io_timeout);
      if (!frame.ok()) {  // the peer left, or the stream cannot be trusted any more
        if (frame.status().code() != Status::Code::kClosed) n_.errors.fetch_add(1, std::memory_order_relaxed);
        break;
      }
      n_.requests.fetch_add(1, std::memory_order_relaxed);
      const Clock::time_point t0 = Clock::now();
      Result<wire::Request> q = wire::DecodeRequest(*frame);
      wire::Response p;
      if (q.ok()) {
        p = DispatchOrFail(*s, *q);
        RecordLatency(q->op, Clock::now() - t0);
      } else {
        p.status = q.status().WithContext("kvtierd: ");
      }
      if (!p.status.ok()) n_.errors.fetch_add(1, std::memory_order_relaxed);
      Result<std::vector<uint8_t>> out = wire::EncodeResponse(p);
      if (!out.ok()) {
        wire::Response e;
        e.id = p.id;
        e.status = out.status().WithContext("kvtierd: ");
        out = wire::EncodeResponse(e);
      }
      if (!out.ok() || !wire::WriteFrame(fd, *out, Clock::now() + options_.io_timeout).ok()) break;
      if (!q.ok()) break;  // a client that sends what we cannot read is not worth more
    }
    Leave(s);
  }
  n_.connections_open.fetch_sub(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> l(conn_mu_);
  ::close(c->fd);
  c->fd = -1;
  c->done = true;
}

// No exception crosses the socket: what a Store call throws (std::bad_alloc) is a status.
wire::Response DaemonServer::DispatchOrFail(Session& s, const wire::Request& q) {
  try {
    return Dispatch(s, q);
  } catch (const std::bad_alloc&) {
    wire::Response p;
    p.id = q.id;
    p.status = Status::NoMemory(std::string("kvtierd: out of memory serving ") + wire::OpName(q.op));
    return p;
  } catch (const std::exception& e) {
    wire::Response p;
    p.id = q.id;
    p.status = Status::Internal(std::string("kvtierd: ") + wire::OpName(q.op) + ": " + e.what());
    return p;
  }
}

wire::Response DaemonServer::Dispatch(Session& s, const wire::Request& q) {
  using wire::Op;
  Store& store = *s.tenant->config.store;
  wire::Response p;
  p.id = q.id;
  p.kind = wire::ResultOf(q.op);
  const NamespaceHandle ns{q.ns};
  auto fail = [&p](Status st) {
    p.status = std::move(st);
    return p;
  };
  switch (q.op) {
    case Op::kRegisterNamespace: {
      const std::vector<std::string>& allowed = s.tenant->config.model_prefixes;
      if (!ModelAllowed(allowed, q.spec.model.name))
        return fail(Status::PermissionDenied("kvtierd: tenant '" + s.tenant->name + "' may not register model '" +
                                             q.spec.model.name + "' (its model prefixes: " + Joined(allowed) + ")"));
      Result<NamespaceHandle> h = store.RegisterNamespace(q.spec);
      if (!h.ok()) return fail(h.status());
      std::lock_guard<std::mutex> l(s.mu);
      s.handles.insert(h->id);
      p.number = h->id;
      return p;
    }
    case Op::kUnregisterNamespace: {
      {
        std::lock_guard<std::mutex> l(s.mu);
        if (s.handles.erase(q.ns) == 0)
          return fail(Status::NotFound("namespace handle " + std::to_string(q.ns) +
                                       " is not registered by this client session"));
      }
      p.status = store.UnregisterNamespace(ns);
      return p;
    }
    case Op::kLookup: {
      if (Status st = s.Owns(q.ns); !st.ok()) return fail(st);
      Result<LookupResult> r = store.Lookup(ns, q.tokens, q.extra_keys, q.lookup);
      if (!r.ok()) return fail(r.status());
      if (r->prefetch_id != 0) {
        std::lock_guard<std::mutex> l(s.mu);
        s.prefetches.push_back(r->prefetch_id);
        if (s.prefetches.size() > Session::kMaxPrefetchIds) s.prefetches.pop_front();
      }
      p.lookup = std::move(*r);
      return p;
    }
    case Op::kCancelPrefetch: {
      {
        std::lock_guard<std::mutex> l(s.mu);
        auto it = std::find(s.prefetches.begin(), s.prefetches.end(), q.target);
        if (it == s.prefetches.end())
          return fail(Status::NotFound("prefetch " + std::to_string(q.target) +
                                       " is finished, unknown, or not this client session's"));
        s.prefetches.erase(it);
      }
      p.status = store.CancelPrefetch(q.target);
      return p;
    }
    case Op::kSetPrefillRate:
      if (Status st = s.Owns(q.ns); !st.ok()) return fail(st);
      p.status = store.SetPrefillRate(ns, q.value);
      return p;
    case Op::kReportPrefill:
      if (Status st = s.Owns(q.ns); !st.ok()) return fail(st);
      p.status = store.ReportPrefill(ns, q.count, q.value);
      return p;
    case Op::kPinPrefix: {
      if (Status st = s.Owns(q.ns); !st.ok()) return fail(st);
      Result<uint32_t> r = store.PinPrefix(ns, q.tokens, q.extra_keys);
      if (!r.ok()) return fail(r.status());
      p.number = *r;
      return p;
    }
    case Op::kUnpinPrefix:
      if (Status st = s.Owns(q.ns); !st.ok()) return fail(st);
      p.status = store.UnpinPrefix(ns, q.tokens, q.extra_keys);
      return p;
    case Op::kReserveSave: {
      if (Status st = s.Owns(q.ns); !st.ok()) return fail(st);
      Result<SaveLease> r = store.ReserveSave(ns, q.tokens, q.extra_keys);
      if (!r.ok()) return fail(r.status());
      if (r->id != 0) {
        std::lock_guard<std::mutex> l(s.mu);
        s.save_leases.insert(r->id);
      }
      p.save_lease = std::move(*r);
      return p;
    }
    case Op::kCommitSave: {
      if (Status st = s.Take(s.save_leases, q.target, "save lease"); !st.ok()) return fail(st);
      Result<uint32_t> r = store.CommitSave(q.target, static_cast<uint32_t>(q.count));
      if (!r.ok()) {
        p.stored_on_error = StoredFromCommitError(r.status());
        return fail(r.status());
      }
      p.number = *r;
      return p;
    }
    case Op::kAbortSave:
      if (Status st = s.Take(s.save_leases, q.target, "save lease"); !st.ok()) return fail(st);
      p.status = store.AbortSave(q.target);
      return p;
    case Op::kAcquireLoad: {
      if (Status st = s.Owns(q.ns); !st.ok()) return fail(st);
      Result<LoadLease> r = store.AcquireLoad(ns, q.tokens, q.extra_keys);
      if (!r.ok()) return fail(r.status());
      if (r->id != 0) {
        std::lock_guard<std::mutex> l(s.mu);
        s.load_leases.insert(r->id);
      }
      p.load_lease = std::move(*r);
      return p;
    }
    case Op::kReleaseLoad:
      if (Status st = s.Take(s.load_leases, q.target, "load lease"); !st.ok()) return fail(st);
      p.status = store.ReleaseLoad(q.target);
      return p;
    case Op::kStats:
      p.stats = store.Stats();
      return p;
    case Op::kListNamespaces: {
      Result<std::vector<NamespaceInfo>> r = store.ListNamespaces();
      if (!r.ok()) return fail(r.status());
      p.namespaces = std::move(*r);
      return p;
    }
  }
  return fail(Status::InvalidArgument("kvtierd: request kind " + std::to_string(static_cast<int>(q.op)) +
                                      " is unknown"));
}

}  // namespace kvtier
