// DaemonClient (store/daemon_client.h): kvtierd's client.
//
//   DaemonClient::Impl ── session ──► DaemonSession (one per daemon session; replaced on reconnect)
//        │                              region mapping, connections (pool), daemon handles
//        └── workers: saves and loads, each holding the DaemonSession its leases belong to
//
// A DaemonSession is what one handshake set up: a random session id, the daemon's host
// region mapped here, and up to config.connections sockets that all present that id (the
// daemon ties leases and registrations to it). It also keeps a duplicate of its first
// socket's descriptor: the daemon ends a session (aborting its leases) only when every one
// of its sockets is closed, so a save or load that still holds the DaemonSession keeps its
// leases, and the slots they pin, valid until it lets go, even after the session was marked
// dead and replaced. The mapping lives as long, so its copies never touch unmapped memory.
//
// Failure: a request whose socket fails or times out marks the whole session dead (its idle
// sockets are closed at once) and returns Unavailable naming the socket. The next call
// builds a new session, at most once per 100 ms (calls in between fail at once): connect,
// map the new region, register every live namespace again. Namespace handles given to the
// engine are this client's own and map to the current session's daemon handles, so they
// survive reconnects; lease ids and prefetch ids do not (they belong to one session).
//
// A load counts its chunks only once the daemon confirms their lease was still held when
// the copy ended (ReleaseLoad succeeds): bytes copied from slots the daemon may have
// reused are never reported as loaded (layers may have been published as ready before; the
// ticket's final status and chunks_done are what count).
#include "store/daemon_client.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>

#include "daemon/wire.h"
#include "kernels/mover.h"
#include "store/ticket.h"

namespace kvtier {
namespace {

using wire::Clock;
using wire::Deadline;

constexpr std::chrono::milliseconds kReconnectInterval{100};

std::string Errno(const std::string& what, int err) { return what + ": " + std::strerror(err); }

Result<std::string> SocketPathOf(const std::string& address) {
  std::string path = address;
  if (address.starts_with("unix:")) {
    path = address.substr(5);
  } else if (address.starts_with("tcp:") || address.find("://") != std::string::npos) {
    return Status::NotSupported("not supported yet: kvtierd over TCP ('" + address +
                                "'); use unix:/path/to/kvtierd.sock");
  }
  if (path.empty())
    return Status::InvalidArgument("kvtierd address is empty: use unix:/run/kvtier/kvtierd.sock or a socket path");
  if (path.size() >= sizeof(sockaddr_un::sun_path))
    return Status::InvalidArgument("kvtierd socket path '" + path + "' is longer than " +
                                   std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes");
  return path;
}

uint64_t NewSessionId() {
  uint64_t v = 0;
  if (::getrandom(&v, sizeof(v), 0) == static_cast<ssize_t>(sizeof(v)) && v != 0) return v;
  std::random_device rd;
  return (uint64_t{rd()} << 32 | rd()) | 1;
}

// The checked response of a call: its own failure, or the daemon's error status.
Result<wire::Response> Checked(Result<wire::Response> p) {
  if (!p.ok()) return p;
  if (!p->status.ok()) return p->status;
  return p;
}

// A socket that finished the handshake, and the region descriptor the daemon passed.
struct Opened {
  int fd = -1;
  int region_fd = -1;
  uint64_t region_bytes = 0;
  bool session_existed = false;
};

std::string Unreachable(const std::string& path, const std::string& why) {
  return "kvtierd at " + path + " is unreachable: " + why + " (calls fail until it is back; the client reconnects)";
}

// Connects and runs the handshake. Unavailable when the daemon cannot be reached or does
// not answer as one; the daemon's own status when it refuses (PermissionDenied...).
Result<Opened> OpenConnection(const std::string& path, const DaemonClientConfig& config, uint64_t session_id,
                              Deadline deadline) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);  // length checked by SocketPathOf
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::IOError(Errno("kvtierd client: socket", errno));
  int r;
  do {
    r = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  } while (r != 0 && errno == EINTR);
  if (r != 0 && errno != EISCONN) {
    const int err = errno;  // ENOENT, ECONNREFUSED (nobody listens), EAGAIN (backlog full)
    ::close(fd);
    return Status::Unavailable(Unreachable(path, Errno("connect", err)));
  }
  wire::Hello hello;
  hello.tenant = config.tenant;
  hello.token = config.token;
  hello.session_id = session_id;
  hello.client_pid = static_cast<int32_t>(::getpid());
  Result<std::vector<uint8_t>> out = wire::EncodeHello(hello);
  if (!out.ok()) {
    ::close(fd);
    return out.status().WithContext("kvtierd client: ");
  }
  Status st = wire::WriteFrame(fd, *out, deadline);
  Result<std::vector<uint8_t>> in = st.ok() ? wire::ReadFrame(fd, wire::kMaxHelloBytes, deadline)
                                            : Result<std::vector<uint8_t>>(st);
  Result<wire::HelloReply> reply = in.ok() ? wire::DecodeHelloReply(*in) : Result<wire::HelloReply>(in.status());
  if (!reply.ok()) {
    ::close(fd);
    return Status::Unavailable(Unreachable(path, "handshake: " + reply.status().ToString()));
  }
  if (!reply->status.ok()) {
    ::close(fd);
    return reply->status;
  }
  Result<int> region = wire::ReceiveFd(fd, deadline);
  if (!region.ok()) {
    ::close(fd);
    return Status::Unavailable(Unreachable(path, "handshake: " + region.status().ToString()));
  }
  return Opened{fd, *region, reply->region_bytes, reply->session_existed};
}

// One session with the daemon (see the top of this file).
// Thread-safety: Call may be used from any thread (one request per socket at a time).
// mu_ guards the pool; reg_mu guards `handles` and is held across a registration's
// request, so that one local namespace is registered once per session. Lock order:
// reg_mu, then the Impl's mu, then mu_.
class DaemonSession {
 public:
  DaemonSession(const std::string& path, const DaemonClientConfig& config, uint64_t id, uint8_t* region,
                uint64_t region_bytes, int first_fd, int anchor_fd)
      : path_(path), config_(config), id_(id), region_(region), region_bytes_(region_bytes), anchor_fd_(anchor_fd) {
    idle_.push_back(first_fd);
    open_ = 1;
  }
  ~DaemonSession() {
    for (int fd : idle_) ::close(fd);
    ::close(anchor_fd_);
    ::munmap(region_, region_bytes_);
  }
  DaemonSession(const DaemonSession&) = delete;
  DaemonSession& operator=(const DaemonSession&) = delete;

  uint8_t* region() const { return region_; }
  uint64_t region_bytes() const { return region_bytes_; }
  bool dead() const { return dead_.load(std::memory_order_acquire); }
  // Why it died (Unavailable, naming the socket); OK while it is alive.
  Status dead_status() {
    std::lock_guard<std::mutex> l(mu_);
    return dead() ? Status::Unavailable(dead_reason_) : Status::OK();
  }

  // Sends q (a fresh id is set) and waits for its response. Unavailable when the socket
  // fails, times out or answers nonsense (the session is dead then); the response
  // otherwise, whatever its status.
  Result<wire::Response> Call(wire::Request q) {
    const Deadline deadline = Clock::now() + config_.timeout;
    q.id = next_id_.fetch_add(1, std::memory_order_relaxed);
    Result<std::vector<uint8_t>> bytes = wire::EncodeRequest(q);
    if (!bytes.ok()) return bytes.status();  // over the limits: the request's fault, not the socket's
    Result<int> fd = Take(deadline);
    if (!fd.ok()) return fd.status();
    const std::string what = wire::OpName(q.op);
    Status st = wire::WriteFrame(*fd, *bytes, deadline);
    if (!st.ok()) return Fail(*fd, what + ": " + st.ToString());
    Result<std::vector<uint8_t>> frame = wire::ReadFrame(*fd, wire::kMaxFrameBytes, deadline);
    if (!frame.ok()) return Fail(*fd, what + ": " + frame.status().ToString());
    Result<wire::Response> p = wire::DecodeResponse(*frame);
    if (!p.ok()) return Fail(*fd, what + ": bad response: " + p.status().ToString());
    if (p->id != q.id)
      return Fail(*fd, what + ": response " + std::to_string(p->id) + " to request " + std::to_string(q.id));
    if (p->status.ok() && p->kind != wire::ResultOf(q.op)) return Fail(*fd, what + ": response of another kind");
    Give(*fd);
    return p;
  }

  std::mutex reg_mu;
  std::unordered_map<uint32_t, uint32_t> handles;  // guarded by reg_mu: local handle -> daemon's

 private:
  // An idle socket of the session, or a new one (up to config.connections).
  Result<int> Take(Deadline deadline) {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      if (dead()) return Status::Unavailable(dead_reason_);
      if (!idle_.empty()) {
        const int fd = idle_.back();
        idle_.pop_back();
        return fd;
      }
      if (open_ < std::max<uint32_t>(config_.connections, 1)) {
        ++open_;
        l.unlock();
        Result<Opened> c = OpenConnection(path_, config_, id_, deadline);
        Status bad;
        if (!c.ok()) {
          bad = c.status();
        } else {
          ::close(c->region_fd);  // the same region, mapped already
          if (!c->session_existed) {
            bad = Status::Unavailable(Unreachable(path_, "it restarted (it no longer knows this client's session)"));
          } else if (c->region_bytes != region_bytes_) {
            bad = Status::Unavailable(Unreachable(path_, "it passed a region of another size"));
          }
          if (bad.ok()) return c->fd;
          ::close(c->fd);
        }
        l.lock();
        --open_;
        MarkDeadLocked(bad.message());
        return bad;
      }
      if (cv_.wait_until(l, deadline) == std::cv_status::timeout && idle_.empty() && !dead())
        return Status::TimedOut("all " + std::to_string(open_) + " connections to kvtierd at " + path_ +
                                " stayed busy for " + std::to_string(config_.timeout.count()) +
                                " ms; raise DaemonClientConfig::connections");
    }
  }

  void Give(int fd) {
    std::lock_guard<std::mutex> l(mu_);
    if (dead()) {
      ::close(fd);
      --open_;
    } else {
      idle_.push_back(fd);
    }
    cv_.notify_one();
  }

  Status Fail(int fd, const std::string& why) {
    const std::string msg = Unreachable(path_, why);
    std::lock_guard<std::mutex> l(mu_);
    ::close(fd);
    --open_;
    MarkDeadLocked(msg);
    return Status::Unavailable(msg);
  }

  void MarkDeadLocked(const std::string& reason) {
    if (!dead()) dead_reason_ = reason;
    dead_.store(true, std::memory_order_release);
    for (int fd : idle_) ::close(fd);
    open_ -= static_cast<uint32_t>(idle_.size());
    idle_.clear();
    cv_.notify_all();
  }

  // Constant after construction.
  const std::string path_;
  const DaemonClientConfig config_;
  const uint64_t id_;
  uint8_t* const region_;
  const uint64_t region_bytes_;
  const int anchor_fd_;

  std::atomic<uint64_t> next_id_{1};
  std::atomic<bool> dead_{false};  // set under mu_; read anywhere
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int> idle_;    // guarded by mu_
  uint32_t open_ = 0;        // guarded by mu_: idle and busy sockets
  std::string dead_reason_;  // guarded by mu_; set once
};

// A namespace the engine registered here: its spec (to register it again after a
// reconnect) and the Mover over its memory. Immutable; shared with running jobs.
struct LocalNamespace {
  NamespaceSpec spec;
  Mover mover;
};

// A save or load's request, copied out of the caller's spans.
struct CopyJob {
  std::shared_ptr<const LocalNamespace> ns;
  uint32_t local = 0;
  std::vector<int32_t> tokens;  // the whole chunks' tokens
  std::vector<int32_t> blocks;  // the whole chunks' block ids
  std::vector<ExtraKey> extra_keys;
};

// A queued save or load: called once, with abort=true when the client closes first.
using Job = std::function<void(bool abort)>;

// The first failure among the checks of a lease's offsets against the mapping.
Status CheckOffsets(const std::vector<uint64_t>& offsets, uint64_t payload_bytes, uint64_t expected_payload,
                    const DaemonSession& s) {
  if (!offsets.empty() && payload_bytes != expected_payload)
    return Status::Internal("kvtierd leased chunks of " + std::to_string(payload_bytes) +
                            " bytes; this namespace's are " + std::to_string(expected_payload));
  for (uint64_t off : offsets)
    if (off > s.region_bytes() || s.region_bytes() - off < payload_bytes)
      return Status::Internal("kvtierd leased a slot at offset " + std::to_string(off) + ", outside its region of " +
                              std::to_string(s.region_bytes()) + " bytes");
  return Status::OK();
}

}  // namespace

// Thread-safety: every method may be called from any thread. mu guards the session and
// the namespaces; work_mu the job queue. Constant after construction: config, path.
struct DaemonClient::Impl {
  Impl(const DaemonClientConfig& c, std::string p) : config(c), path(std::move(p)) {}
  ~Impl() { (void)Close(); }

  Result<std::shared_ptr<DaemonSession>> Establish();
  Result<std::shared_ptr<DaemonSession>> Current();
  Result<uint32_t> DaemonHandle(DaemonSession& s, uint32_t local);
  // The request on the current session, with local namespace `local` (0: none) mapped
  // to the daemon's handle; the daemon's error status as the failure.
  Result<wire::Response> Do(uint32_t local, wire::Request q);
  std::shared_ptr<const LocalNamespace> Find(uint32_t local);
  Result<Ticket> Submit(bool save, NamespaceHandle h, std::span<const int32_t> tokens,
                        std::span<const int32_t> block_ids, std::span<const ExtraKey> extra_keys);
  void RunSave(const CopyJob& j, TicketState& t);
  void RunLoad(const CopyJob& j, TicketState& t);
  void StartWorkers();
  void WorkerLoop();
  Status Close();

  const DaemonClientConfig config;
  const std::string path;

  std::mutex mu;
  std::shared_ptr<DaemonSession> session;  // guarded by mu; null before connect, after Close, or once dead
  Clock::time_point last_attempt{};        // guarded by mu
  Status last_error;                       // guarded by mu: why the last attempt failed
  bool connecting = false;                 // guarded by mu
  bool closed = false;                     // guarded by mu
  std::unordered_map<uint32_t, std::shared_ptr<const LocalNamespace>> namespaces;  // guarded by mu
  uint32_t next_handle = 1;                                                         // guarded by mu

  std::mutex work_mu;
  std::condition_variable work_cv;
  std::deque<Job> jobs;              // guarded by work_mu
  bool stopping = false;             // guarded by work_mu
  std::vector<std::thread> workers;  // started once, joined by Close
};

Result<std::shared_ptr<DaemonSession>> DaemonClient::Impl::Establish() {
  const uint64_t id = NewSessionId();
  Result<Opened> c = OpenConnection(path, config, id, Clock::now() + config.timeout);
  if (!c.ok()) return c.status();
  // Pages past the end of the memfd would fault (SIGBUS) on first touch: map only what it has.
  struct stat st;
  const bool fits = ::fstat(c->region_fd, &st) == 0 && c->region_bytes > 0 &&
                    static_cast<uint64_t>(st.st_size) >= c->region_bytes;
  // MAP_POPULATE: the daemon's pages exist already; mapping them all now spares every
  // first copy into a page its fault (a save or load would otherwise run at fault speed
  // until the whole region had been touched once from this process).
  void* m = !fits ? MAP_FAILED
                  : ::mmap(nullptr, c->region_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                           c->region_fd, 0);
  const int map_err = !fits ? EINVAL : errno;
  ::close(c->region_fd);
  const int anchor = m == MAP_FAILED ? -1 : ::fcntl(c->fd, F_DUPFD_CLOEXEC, 0);
  if (anchor < 0) {
    const int err = m == MAP_FAILED ? map_err : errno;
    if (m != MAP_FAILED) ::munmap(m, c->region_bytes);
    ::close(c->fd);
    return Status::IOError(Errno("kvtierd client: mapping the host region of " + path + " (" +
                                     std::to_string(c->region_bytes) + " bytes)",
                                 err));
  }
  auto s = std::make_shared<DaemonSession>(path, config, id, static_cast<uint8_t*>(m), c->region_bytes, c->fd, anchor);
  // Register the live namespaces again (a new session knows none); one the daemon now
  // refuses fails its own calls later, an unreachable daemon fails the reconnect.
  std::vector<uint32_t> live;
  {
    std::lock_guard<std::mutex> l(mu);
    for (const auto& [h, ns] : namespaces) live.push_back(h);
  }
  for (uint32_t h : live) {
    Result<uint32_t> r = DaemonHandle(*s, h);
    if (!r.ok() && s->dead()) return r.status();
  }
  return s;
}

Result<std::shared_ptr<DaemonSession>> DaemonClient::Impl::Current() {
  std::unique_lock<std::mutex> l(mu);
  if (closed) return Status::Closed("kvtierd client: closed");
  if (session && !session->dead()) return session;
  if (session) {
    last_error = session->dead_status();
    session.reset();  // running jobs keep theirs; the daemon ends it once they let go
  }
  const Clock::time_point now = Clock::now();
  if (connecting || now - last_attempt < kReconnectInterval) {
    if (last_error.ok()) return Status::Unavailable(Unreachable(path, "reconnecting"));
    return last_error;
  }
  connecting = true;
  last_attempt = now;
  l.unlock();
  Result<std::shared_ptr<DaemonSession>> s = Establish();
  l.lock();
  connecting = false;
  if (!s.ok()) {
    last_error = s.status();
    return s.status();
  }
  if (closed) return Status::Closed("kvtierd client: closed");
  last_error = Status::OK();
  session = *s;
  return session;
}

std::shared_ptr<const LocalNamespace> DaemonClient::Impl::Find(uint32_t local) {
  std::lock_guard<std::mutex> l(mu);
  auto it = namespaces.find(local);
  return it == namespaces.end() ? nullptr : it->second;
}

Result<uint32_t> DaemonClient::Impl::DaemonHandle(DaemonSession& s, uint32_t local) {
  std::lock_guard<std::mutex> rl(s.reg_mu);
  auto it = s.handles.find(local);
  if (it != s.handles.end()) return it->second;
  std::shared_ptr<const LocalNamespace> ns = Find(local);
  if (!ns) return Status::NotFound("namespace handle " + std::to_string(local) + " is not registered");
  wire::Request q;
  q.op = wire::Op::kRegisterNamespace;
  q.spec = ns->spec;
  Result<wire::Response> p = Checked(s.Call(std::move(q)));
  if (!p.ok()) return p.status();
  const uint32_t h = static_cast<uint32_t>(p->number);
  s.handles[local] = h;
  return h;
}

Result<wire::Response> DaemonClient::Impl::Do(uint32_t local, wire::Request q) {
  Result<std::shared_ptr<DaemonSession>> s = Current();
  if (!s.ok()) return s.status();
  if (local != 0) {
    Result<uint32_t> h = DaemonHandle(**s, local);
    if (!h.ok()) return h.status();
    q.ns = *h;
  }
  return Checked((*s)->Call(std::move(q)));
}

// ---- saves and loads ---------------------------------------------------------------------

Result<Ticket> DaemonClient::Impl::Submit(bool save, NamespaceHandle h, std::span<const int32_t> tokens,
                                          std::span<const int32_t> block_ids, std::span<const ExtraKey> extra_keys) {
  std::shared_ptr<const LocalNamespace> ns = Find(h.id);
  if (!ns) return Status::NotFound("namespace handle " + std::to_string(h.id) + " is not registered");
  if (tokens.size() > wire::kMaxRequestTokens)
    return Status::InvalidArgument("request names " + std::to_string(tokens.size()) + " tokens, more than kvtierd's " +
                                   std::to_string(wire::kMaxRequestTokens) + "; split it");
  const uint32_t chunk_tokens = ns->spec.shape.chunk_tokens;
  const uint64_t chunks = tokens.size() / chunk_tokens;
  const uint32_t bpc = ns->mover.blocks_per_chunk();
  const uint64_t need = chunks * bpc;
  if (block_ids.size() < need)
    return Status::InvalidArgument("token count mismatch: " + std::to_string(tokens.size()) + " tokens make " +
                                   std::to_string(chunks) + " whole chunks of " + std::to_string(chunk_tokens) +
                                   " tokens, which need " + std::to_string(need) + " block ids of " +
                                   std::to_string(ns->mover.geometry().block_tokens) + " tokens; got " +
                                   std::to_string(block_ids.size()));
  const int64_t num_blocks = ns->mover.geometry().num_blocks;
  for (uint64_t i = 0; i < need; ++i)
    if (block_ids[i] < 0 || block_ids[i] >= num_blocks)
      return Status::InvalidArgument("block id " + std::to_string(block_ids[i]) + " at position " + std::to_string(i) +
                                     " is outside the layout's [0, " + std::to_string(num_blocks) + ")");
  auto job = std::make_shared<CopyJob>();
  job->ns = std::move(ns);
  job->local = h.id;
  job->tokens.assign(tokens.begin(), tokens.begin() + static_cast<ptrdiff_t>(chunks * chunk_tokens));
  job->blocks.assign(block_ids.begin(), block_ids.begin() + static_cast<ptrdiff_t>(need));
  job->extra_keys.assign(extra_keys.begin(), extra_keys.end());
  auto t = std::make_shared<TicketState>(static_cast<uint32_t>(chunks));
  {
    std::lock_guard<std::mutex> l(work_mu);
    if (stopping) return Status::Closed("kvtierd client: closed");
    jobs.push_back([this, save, job, t](bool abort) {
      if (abort) {
        t->Finish(Status::Cancelled(save ? "save: client closed before the save ran"
                                         : "load: client closed before the load ran"),
                  0);
      } else if (save) {
        RunSave(*job, *t);
      } else {
        RunLoad(*job, *t);
      }
    });
  }
  work_cv.notify_one();
  return Ticket(std::move(t));
}

// ReserveSave -> gather each new chunk into its slot -> CommitSave (AbortSave when nothing
// was written). chunks_done: the leading chunks the daemon stored.
void DaemonClient::Impl::RunSave(const CopyJob& j, TicketState& t) {
  const uint32_t total = t.chunks_requested();
  if (total == 0) return t.Finish(Status::OK(), 0);
  if (t.cancel_requested()) return t.Finish(Status::Cancelled("save cancelled before it ran"), 0);
  Result<std::shared_ptr<DaemonSession>> s = Current();
  if (!s.ok()) return t.Finish(s.status().WithContext("save: "), 0);
  DaemonSession& d = **s;
  Result<uint32_t> h = DaemonHandle(d, j.local);
  if (!h.ok()) return t.Finish(h.status().WithContext("save: "), 0);
  wire::Request q;
  q.op = wire::Op::kReserveSave;
  q.ns = *h;
  q.tokens = j.tokens;
  q.extra_keys = j.extra_keys;
  Result<wire::Response> p = Checked(d.Call(std::move(q)));
  if (!p.ok()) return t.Finish(p.status().WithContext("save: "), 0);
  const SaveLease& l = p->save_lease;
  const uint64_t payload = j.ns->mover.payload_bytes();
  auto end_lease = [&](wire::Op op) {
    wire::Request e;
    e.op = op;
    e.target = l.id;
    (void)d.Call(std::move(e));  // a failure ends the lease with the session
  };
  Status bad = l.total_chunks != total
                   ? Status::Internal("kvtierd reserved a save of " + std::to_string(l.total_chunks) +
                                      " chunks for a request of " + std::to_string(total))
                   : CheckOffsets(l.payload_offsets, l.payload_bytes, payload, d);
  if (!bad.ok()) {
    if (l.id != 0) end_lease(wire::Op::kAbortSave);
    return t.Finish(bad.WithContext("save: "), 0);
  }
  if (l.id == 0)  // nothing to write: the daemon's store did not admit the save
    return t.Finish(l.cached_chunks == total ? Status::OK()
                                             : Status::Cancelled("save not admitted by kvtierd's store (fewer tokens "
                                                                 "than its admission.min_tokens)"),
                    l.cached_chunks);
  const uint32_t bpc = j.ns->mover.blocks_per_chunk();
  const std::span<const int32_t> blocks(j.blocks);
  Status st;
  uint32_t written = 0;
  for (; written < l.payload_offsets.size(); ++written) {
    const uint32_t chunk = l.cached_chunks + written;
    if (t.cancel_requested()) {
      st = Status::Cancelled("save cancelled after " + std::to_string(chunk) + " of " + std::to_string(total) +
                             " chunks");
      break;
    }
    Status g = j.ns->mover.Gather(blocks.subspan(uint64_t{chunk} * bpc, bpc),
                                  d.region() + l.payload_offsets[written], l.payload_bytes);
    if (!g.ok()) {
      st = g.WithContext("save: ");
      break;
    }
  }
  if (written == 0 && !l.payload_offsets.empty()) {
    end_lease(wire::Op::kAbortSave);
    return t.Finish(st, l.cached_chunks);
  }
  wire::Request c;
  c.op = wire::Op::kCommitSave;
  c.target = l.id;
  c.count = written;
  Result<wire::Response> r = d.Call(std::move(c));
  if (!r.ok()) return t.Finish(r.status().WithContext("save: "), 0);  // stored or not: unknown
  if (r->status.ok()) return t.Finish(st, static_cast<uint32_t>(r->number));
  const uint32_t missing = total - l.cached_chunks;
  if (st.ok() && l.payload_offsets.size() < missing)
    st = Status::NoSpace("save: kvtierd's host tier had room for " + std::to_string(l.payload_offsets.size()) +
                         " of the " + std::to_string(missing) + " chunks not cached yet");
  if (st.ok()) st = r->status.WithContext("save: ");
  t.Finish(std::move(st), r->stored_on_error);
}

// AcquireLoad -> scatter the leased chunks layer by layer, publishing each layer ->
// ReleaseLoad, which must succeed for the chunks to count (see the top of this file).
void DaemonClient::Impl::RunLoad(const CopyJob& j, TicketState& t) {
  const uint32_t total = t.chunks_requested();
  if (total == 0) return t.Finish(Status::OK(), 0);
  if (t.cancel_requested()) return t.Finish(Status::Cancelled("load cancelled before it ran"), 0);
  Result<std::shared_ptr<DaemonSession>> s = Current();
  if (!s.ok()) return t.Finish(s.status().WithContext("load: "), 0);
  DaemonSession& d = **s;
  Result<uint32_t> h = DaemonHandle(d, j.local);
  if (!h.ok()) return t.Finish(h.status().WithContext("load: "), 0);
  wire::Request q;
  q.op = wire::Op::kAcquireLoad;
  q.ns = *h;
  q.tokens = j.tokens;
  q.extra_keys = j.extra_keys;
  Result<wire::Response> p = Checked(d.Call(std::move(q)));
  if (!p.ok()) return t.Finish(p.status().WithContext("load: "), 0);
  const LoadLease& l = p->load_lease;
  auto release = [&]() -> Status {
    wire::Request e;
    e.op = wire::Op::kReleaseLoad;
    e.target = l.id;
    Result<wire::Response> r = Checked(d.Call(std::move(e)));
    return r.ok() ? Status::OK() : r.status();
  };
  const uint32_t got = static_cast<uint32_t>(l.payload_offsets.size());
  Status bad = l.total_chunks != total
                   ? Status::Internal("kvtierd leased a load of " + std::to_string(l.total_chunks) +
                                      " chunks for a request of " + std::to_string(total))
                   : CheckOffsets(l.payload_offsets, l.payload_bytes, j.ns->mover.payload_bytes(), d);
  if (!bad.ok() || got == 0 || t.cancel_requested()) {
    if (l.id != 0) (void)release();
    if (!bad.ok()) return t.Finish(bad.WithContext("load: "), 0);
    if (got > 0) return t.Finish(Status::Cancelled("load cancelled before copying into the engine"), 0);
    return t.Finish(!l.status.ok() ? l.status
                                   : Status::NotFound("load: chunk 0 of " + std::to_string(total) +
                                                      " is not cached; recompute from token 0"),
                    0);
  }
  const uint32_t bpc = j.ns->mover.blocks_per_chunk();
  const std::span<const int32_t> blocks(j.blocks);
  Status st;
  uint32_t done = got;
  for (uint32_t layer = 0; layer < j.ns->spec.shape.num_layers && done > 0; ++layer) {
    for (uint32_t i = 0; i < done; ++i) {
      Status c = j.ns->mover.Scatter(blocks.subspan(uint64_t{i} * bpc, bpc), d.region() + l.payload_offsets[i],
                                     l.payload_bytes, layer, 1);
      if (!c.ok()) {  // the request was validated: a bug, and nothing counts as loaded
        st = c.WithContext("load: ");
        done = 0;
        break;
      }
    }
    t.set_layers_ready(layer + 1, done);
  }
  Status released = release();
  if (!released.ok())
    return t.Finish(released.WithContext("load: kvtierd did not confirm the chunks stayed leased while they were "
                                         "copied, so none counts; recompute them: "),
                    0);
  if (st.ok() && done < total)
    st = !l.status.ok() ? l.status
                        : Status::NotFound("load: chunk " + std::to_string(done) + " of " + std::to_string(total) +
                                           " is not cached; recompute from token " +
                                           std::to_string(uint64_t{done} * j.ns->spec.shape.chunk_tokens));
  t.Finish(std::move(st), done);
}

void DaemonClient::Impl::StartWorkers() {
  const uint32_t n = std::max<uint32_t>(config.worker_threads, 1);
  for (uint32_t i = 0; i < n; ++i) workers.emplace_back([this] { WorkerLoop(); });
}

void DaemonClient::Impl::WorkerLoop() {
  for (;;) {
    Job job;
    bool abort;
    {
      std::unique_lock<std::mutex> l(work_mu);
      work_cv.wait(l, [this] { return stopping || !jobs.empty(); });
      if (jobs.empty()) return;  // stopping and drained
      job = std::move(jobs.front());
      jobs.pop_front();
      abort = stopping;
    }
    job(abort);
  }
}

Status DaemonClient::Impl::Close() {
  {
    std::lock_guard<std::mutex> l(mu);
    if (closed) return Status::OK();
    closed = true;
  }
  {
    std::lock_guard<std::mutex> l(work_mu);
    stopping = true;
  }
  work_cv.notify_all();
  for (std::thread& w : workers) w.join();
  workers.clear();
  std::shared_ptr<DaemonSession> s;
  {
    std::lock_guard<std::mutex> l(mu);
    s = std::move(session);
  }
  return Status::OK();  // s goes here: sockets closed, region unmapped
}

// ---- DaemonClient --------------------------------------------------------------------------

DaemonClient::DaemonClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

DaemonClient::~DaemonClient() { (void)Close(); }

Result<std::shared_ptr<DaemonClient>> DaemonClient::Connect(const DaemonClientConfig& config) {
  Result<std::string> path = SocketPathOf(config.address);
  if (!path.ok()) return path.status();
  if (config.timeout.count() <= 0)
    return Status::InvalidArgument("kvtierd client: timeout must be positive; got " +
                                   std::to_string(config.timeout.count()) + " ms");
  auto impl = std::make_unique<Impl>(config, std::move(*path));
  Result<std::shared_ptr<DaemonSession>> s = impl->Establish();
  if (!s.ok()) return s.status();
  impl->session = std::move(*s);
  impl->last_attempt = Clock::now();
  impl->StartWorkers();
  return std::shared_ptr<DaemonClient>(new DaemonClient(std::move(impl)));
}

Status DaemonClient::Close() { return impl_->Close(); }

Result<NamespaceHandle> DaemonClient::RegisterNamespace(const NamespaceSpec& spec, const KvMemoryLayout& layout) {
  if (layout.device >= 0) return Status::NotSupported("not supported yet: GPU KV memory through kvtierd");
  if (spec.shape.chunk_tokens == 0) return Status::InvalidArgument("namespace: chunk_tokens is 0");
  Result<Mover> mover = Mover::Create(spec.shape, layout);
  if (!mover.ok()) return mover.status();
  Impl& c = *impl_;
  uint32_t local;
  {
    std::lock_guard<std::mutex> l(c.mu);
    if (c.closed) return Status::Closed("kvtierd client: closed");
    local = c.next_handle++;
    c.namespaces.emplace(local, std::make_shared<const LocalNamespace>(LocalNamespace{spec, std::move(*mover)}));
  }
  Result<std::shared_ptr<DaemonSession>> s = c.Current();
  Result<uint32_t> h = s.ok() ? c.DaemonHandle(**s, local) : Result<uint32_t>(s.status());
  if (!h.ok()) {
    std::lock_guard<std::mutex> l(c.mu);
    c.namespaces.erase(local);
    return h.status();
  }
  return NamespaceHandle{local};
}

Status DaemonClient::UnregisterNamespace(NamespaceHandle ns) {
  Impl& c = *impl_;
  std::shared_ptr<DaemonSession> s;
  {
    std::lock_guard<std::mutex> l(c.mu);
    if (c.namespaces.erase(ns.id) == 0)
      return Status::NotFound("namespace handle " + std::to_string(ns.id) + " is not registered");
    s = c.session;
  }
  if (!s || s->dead()) return Status::OK();  // the daemon dropped it with the session
  std::lock_guard<std::mutex> rl(s->reg_mu);
  auto it = s->handles.find(ns.id);
  if (it == s->handles.end()) return Status::OK();
  wire::Request q;
  q.op = wire::Op::kUnregisterNamespace;
  q.ns = it->second;
  s->handles.erase(it);
  Result<wire::Response> p = s->Call(std::move(q));
  if (p.ok() && !p->status.ok()) return p->status;
  return Status::OK();  // unreachable: the registration ends with the session
}

Result<LookupResult> DaemonClient::Lookup(NamespaceHandle ns, std::span<const int32_t> tokens,
                                          std::span<const ExtraKey> extra_keys, const LookupOptions& options) {
  wire::Request q;
  q.op = wire::Op::kLookup;
  q.tokens.assign(tokens.begin(), tokens.end());
  q.extra_keys.assign(extra_keys.begin(), extra_keys.end());
  q.lookup = options;
  Result<wire::Response> p = impl_->Do(ns.id, std::move(q));
  if (!p.ok()) return p.status();
  return std::move(p->lookup);
}

Status DaemonClient::CancelPrefetch(uint64_t prefetch_id) {
  wire::Request q;
  q.op = wire::Op::kCancelPrefetch;
  q.target = prefetch_id;
  return impl_->Do(0, std::move(q)).status();
}

Status DaemonClient::SetPrefillRate(NamespaceHandle ns, double tokens_per_second) {
  wire::Request q;
  q.op = wire::Op::kSetPrefillRate;
  q.value = tokens_per_second;
  return impl_->Do(ns.id, std::move(q)).status();
}

Status DaemonClient::ReportPrefill(NamespaceHandle ns, uint64_t tokens, double seconds) {
  wire::Request q;
  q.op = wire::Op::kReportPrefill;
  q.count = tokens;
  q.value = seconds;
  return impl_->Do(ns.id, std::move(q)).status();
}

Result<uint32_t> DaemonClient::PinPrefix(NamespaceHandle ns, std::span<const int32_t> tokens,
                                         std::span<const ExtraKey> extra_keys) {
  wire::Request q;
  q.op = wire::Op::kPinPrefix;
  q.tokens.assign(tokens.begin(), tokens.end());
  q.extra_keys.assign(extra_keys.begin(), extra_keys.end());
  Result<wire::Response> p = impl_->Do(ns.id, std::move(q));
  if (!p.ok()) return p.status();
  return static_cast<uint32_t>(p->number);
}

Status DaemonClient::UnpinPrefix(NamespaceHandle ns, std::span<const int32_t> tokens,
                                 std::span<const ExtraKey> extra_keys) {
  wire::Request q;
  q.op = wire::Op::kUnpinPrefix;
  q.tokens.assign(tokens.begin(), tokens.end());
  q.extra_keys.assign(extra_keys.begin(), extra_keys.end());
  return impl_->Do(ns.id, std::move(q)).status();
}

Result<Ticket> DaemonClient::Save(NamespaceHandle ns, std::span<const int32_t> tokens,
                                  std::span<const int32_t> block_ids, std::span<const ExtraKey> extra_keys,
                                  const CopyOptions&) {
  return impl_->Submit(true, ns, tokens, block_ids, extra_keys);
}

Result<Ticket> DaemonClient::Load(NamespaceHandle ns, std::span<const int32_t> tokens,
                                  std::span<const int32_t> block_ids, std::span<const ExtraKey> extra_keys,
                                  const CopyOptions&) {
  return impl_->Submit(false, ns, tokens, block_ids, extra_keys);
}

Result<StoreStats> DaemonClient::Stats() const {
  wire::Request q;
  q.op = wire::Op::kStats;
  Result<wire::Response> p = impl_->Do(0, std::move(q));
  if (!p.ok()) return p.status();
  return std::move(p->stats);
}

Result<std::vector<NamespaceInfo>> DaemonClient::ListNamespaces() const {
  wire::Request q;
  q.op = wire::Op::kListNamespaces;
  Result<wire::Response> p = impl_->Do(0, std::move(q));
  if (!p.ok()) return p.status();
  return std::move(p->namespaces);
}

}  // namespace kvtier
