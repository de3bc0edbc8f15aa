#include "tiers/redis/redis_client.h"

#include <errno.h>
#include <fcntl.h>
#if __has_include(<hiredis/sds.h>)
extern "C" {
#include <hiredis/sds.h>  // hiredis 0.14's sds.h declares its functions without C linkage
}
#endif
#include <hiredis/hiredis.h>  // HIREDIS_MAJOR, read.h
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <thread>
#include <unordered_map>
#include <utility>

#include "common/copy.h"

namespace kvtier {
namespace {

constexpr uint16_t kNoNode = 0xFFFF;
constexpr int kSlots = 16384;

constexpr std::array<uint16_t, 256> MakeCrc16Table() {
  std::array<uint16_t, 256> t{};
  for (int i = 0; i < 256; ++i) {
    uint16_t crc = static_cast<uint16_t>(i << 8);
    for (int b = 0; b < 8; ++b) crc = (crc & 0x8000) ? static_cast<uint16_t>((crc << 1) ^ 0x1021) : static_cast<uint16_t>(crc << 1);
    t[i] = crc;
  }
  return t;
}
constexpr std::array<uint16_t, 256> kCrc16Table = MakeCrc16Table();

uint16_t Crc16(std::string_view s) {
  uint16_t crc = 0;
  for (unsigned char c : s) crc = static_cast<uint16_t>((crc << 8) ^ kCrc16Table[((crc >> 8) ^ c) & 0xFF]);
  return crc;
}

std::string ErrnoText(int err) { return std::string(std::strerror(err)); }

int MillisLeft(RedisDeadline deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - RedisClock::now()).count();
  if (left <= 0) return 0;
  return static_cast<int>(std::min<long long>(left, 1 << 30));
}

// ---- reply objects for hiredis's reader -------------------------------------------------
// The reader calls these on the thread that called redisReaderGetReply; t_sink is the sink
// of the command whose reply is being parsed.
thread_local BulkSink* t_sink = nullptr;

void* AttachReply(const redisReadTask* task, RedisReply* r) {
  if (task->parent != nullptr) {
    auto* parent = static_cast<RedisReply*>(task->parent->obj);
    if (task->idx >= 0 && static_cast<size_t>(task->idx) < parent->elements.size())
      parent->elements[static_cast<size_t>(task->idx)].reset(r);
  }
  return r;
}

void* CreateString(const redisReadTask* task, char* str, size_t len) {
  auto* r = new RedisReply;
  switch (task->type) {
    case REDIS_REPLY_ERROR: r->type = RedisReply::Type::kError; break;
    case REDIS_REPLY_STATUS: r->type = RedisReply::Type::kStatus; break;
    default: r->type = RedisReply::Type::kString; break;
  }
  if (r->type == RedisReply::Type::kString && task->parent == nullptr && t_sink != nullptr) {
    t_sink->OnBulk(reinterpret_cast<const uint8_t*>(str), len);
    r->sunk = true;
  } else {
    r->str.assign(str, len);
  }
  return AttachReply(task, r);
}

void* CreateArray(const redisReadTask* task, int elements) {
  auto* r = new RedisReply;
  r->type = RedisReply::Type::kArray;
  r->elements.resize(static_cast<size_t>(std::max(elements, 0)));
  return AttachReply(task, r);
}

void* CreateInteger(const redisReadTask* task, long long value) {
  auto* r = new RedisReply;
  r->type = RedisReply::Type::kInteger;
  r->integer = value;
  return AttachReply(task, r);
}

void* CreateNil(const redisReadTask* task) {
  auto* r = new RedisReply;
  r->type = RedisReply::Type::kNil;
  return AttachReply(task, r);
}

// Only called on the root (children are owned by their parent's elements).
void FreeReply(void* obj) { delete static_cast<RedisReply*>(obj); }

// Designated: hiredis 1.x adds RESP3 members between these (left null: we speak RESP2).
redisReplyObjectFunctions kReplyFunctions = {.createString = CreateString,
                                             .createArray = CreateArray,
                                             .createInteger = CreateInteger,
                                             .createNil = CreateNil,
                                             .freeObject = FreeReply};

bool ParseHostPort(const std::string& addr, std::string* host, int* port) {
  size_t colon = addr.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= addr.size()) return false;
  *host = addr.substr(0, colon);
  if (host->size() > 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  char* end = nullptr;
  long p = std::strtol(addr.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || p <= 0 || p > 65535) return false;
  *port = static_cast<int>(p);
  return true;
}

void AppendBulkHeader(std::string* out, size_t len) {
  out->push_back('$');
  out->append(std::to_string(len));
  out->append("\r\n");
}

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

}  // namespace

uint16_t RedisKeySlot(std::string_view key) {
  size_t open = key.find('{');
  if (open != std::string_view::npos) {
    size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) key = key.substr(open + 1, close - open - 1);
  }
  return static_cast<uint16_t>(Crc16(key) & (kSlots - 1));
}

// ---- one connection --------------------------------------------------------------------

class RedisClient::Connection {
 public:
  Connection(int fd, std::string addr, size_t read_chunk)
      : fd_(fd), addr_(std::move(addr)), reader_(redisReaderCreateWithFunctions(&kReplyFunctions)), chunk_(read_chunk) {
#if HIREDIS_MAJOR != 0
    buf_.resize(chunk_);
#endif
    // Keep the reader's buffer between replies: regrowing it to a multi-MiB value costs
    // page faults on every read. A pooled connection holds about its largest reply.
    if (reader_ != nullptr) reader_->maxbuf = 0;
  }
  ~Connection() {
    if (reader_ != nullptr) redisReaderFree(reader_);
    if (fd_ >= 0) ::close(fd_);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  bool ok() const { return !broken_ && reader_ != nullptr; }
  const std::string& addr() const { return addr_; }

  // Writes every byte of `iov` by the deadline.
  Status Write(std::vector<iovec>& iov, uint64_t* sent) {
    size_t first = 0;
    while (first < iov.size()) {
      msghdr msg{};
      msg.msg_iov = iov.data() + first;
      msg.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
      ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          KVTIER_RETURN_IF_ERROR(Wait(POLLOUT));
          continue;
        }
        return Fail(Status::IOError("redis " + addr_ + ": send: " + ErrnoText(errno)));
      }
      *sent += static_cast<uint64_t>(n);
      size_t left = static_cast<size_t>(n);
      while (first < iov.size() && left >= iov[first].iov_len) left -= iov[first++].iov_len;
      if (left > 0) {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
      }
    }
    return Status::OK();
  }

  // Reads the next reply; a bulk string goes to `sink` when given (see TryDirect).
  Result<std::unique_ptr<RedisReply>> Read(BulkSink* sink, uint64_t* received) {
    // Only a reply the reader has not started can bypass it.
    bool try_direct = sink != nullptr && reader_->ridx == -1;
    for (;;) {
      if (try_direct) {
        Result<DirectStep> d = TryDirect(sink, received);
        if (!d.ok()) return d.status();
        if (*d == DirectStep::kDone) {
          ++direct_replies_;
          auto r = std::make_unique<RedisReply>();
          r->type = RedisReply::Type::kString;
          r->sunk = true;
          return r;
        }
        if (*d == DirectStep::kNeedBytes) {
          // Small reads until the reply's first line is in: what follows it goes straight
          // to the sink's buffers instead of through the reader's.
          KVTIER_RETURN_IF_ERROR(FillReader(kLineRead, received));
          continue;
        }
        try_direct = false;
      }
      void* obj = nullptr;
      t_sink = sink;
      int rc = redisReaderGetReply(reader_, &obj);
      t_sink = nullptr;
      if (rc != REDIS_OK)
        return Fail(Status::IOError("redis " + addr_ + ": protocol error: " + std::string(reader_->errstr)));
      if (obj != nullptr) return std::unique_ptr<RedisReply>(static_cast<RedisReply*>(obj));
      KVTIER_RETURN_IF_ERROR(FillReader(chunk_, received));
    }
  }

  void set_deadline(RedisDeadline d) { deadline_ = d; }
  uint64_t TakeDirectReplies() { return std::exchange(direct_replies_, 0); }
  void MarkBroken() { broken_ = true; }

 private:
  static constexpr size_t kLineRead = 4096;              // bytes per read() while a reply's first line is awaited
  static constexpr uint64_t kDirectMinBytes = 64 << 10;  // smaller bulk replies go through the reader
  // While a direct read waits, poll() reports the socket readable only once this many bytes
  // of the value are in (SO_RCVLOWAT), instead of for every 64 KiB the server writes.
  static constexpr uint64_t kWakeBytes = 512 << 10;

  enum class DirectStep { kNotDirect, kNeedBytes, kDone };

  // A bulk reply of at least kDirectMinBytes whose sink gives buffers for it (BulkSink::Direct)
  // is received into them from the socket: the bytes the reader already holds are copied,
  // the rest are readv()'d in place, so the value never passes through the reader's buffer
  // (which would cost a copy into it, a copy out, and hiredis's compaction of what follows).
  // Anything else (errors, nil, small values, a sink that declines) is left to the reader.
  Result<DirectStep> TryDirect(BulkSink* sink, uint64_t* received) {
#if HIREDIS_MAJOR != 0
    (void)sink;
    (void)received;
    return DirectStep::kNotDirect;  // hiredis 1.x renamed the sds functions the compaction below needs
#else
    // Drop what was consumed (the reader does this itself only inside redisReaderGetReply,
    // which a run of direct replies never calls); what is left is at most a read's worth.
    if (reader_->pos > 0 && (reader_->pos == reader_->len || reader_->pos >= 1024)) {
      sdsrange(reader_->buf, static_cast<int>(reader_->pos), -1);
      reader_->pos = 0;
      reader_->len = sdslen(reader_->buf);
    }
    const char* p = reader_->buf + reader_->pos;
    const size_t avail = reader_->len - reader_->pos;
    constexpr size_t kMaxLine = 24;  // "$" + at most 20 digits + "\r\n"
    if (avail == 0) return DirectStep::kNeedBytes;
    if (p[0] != '$') return DirectStep::kNotDirect;
    const void* cr = std::memchr(p, '\r', std::min(avail, kMaxLine));
    if (cr == nullptr) return avail >= kMaxLine ? DirectStep::kNotDirect : DirectStep::kNeedBytes;
    const size_t line = static_cast<size_t>(static_cast<const char*>(cr) - p);
    if (line + 2 > avail) return DirectStep::kNeedBytes;
    if (p[line + 1] != '\n' || line < 2 || line > 20) return DirectStep::kNotDirect;  // the reader reports it
    uint64_t len = 0;
    for (size_t i = 1; i < line; ++i) {
      if (p[i] < '0' || p[i] > '9') return DirectStep::kNotDirect;  // "$-1": nil
      len = len * 10 + static_cast<uint64_t>(p[i] - '0');
    }
    if (len < kDirectMinBytes) return DirectStep::kNotDirect;
    std::vector<iovec> iov;
    if (!sink->Direct(len, &iov)) return DirectStep::kNotDirect;
    uint64_t total = 0;
    for (const iovec& v : iov) total += v.iov_len;
    if (total != len) return DirectStep::kNotDirect;
    reader_->pos += line + 2;

    size_t first = 0;
    auto advance = [&](size_t n) {
      while (n > 0 && first < iov.size()) {
        const size_t take = std::min(n, iov[first].iov_len);
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + take;
        iov[first].iov_len -= take;
        n -= take;
        if (iov[first].iov_len == 0) ++first;
      }
    };
    uint64_t left = len;
    // What the reader already holds.
    while (left > 0 && reader_->pos < reader_->len && first < iov.size()) {
      const size_t take = std::min({reader_->len - reader_->pos, iov[first].iov_len, static_cast<size_t>(left)});
      CopyBytes(iov[first].iov_base, reader_->buf + reader_->pos, take);
      reader_->pos += take;
      left -= take;
      advance(take);
    }
    // The rest, from the socket.
    while (left > 0) {
      while (first < iov.size() && iov[first].iov_len == 0) ++first;
      ssize_t n = ::readv(fd_, iov.data() + first, static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX)));
      if (n > 0) {
        *received += static_cast<uint64_t>(n);
        left -= static_cast<uint64_t>(n);
        advance(static_cast<size_t>(n));
        continue;
      }
      if (n == 0) return Fail(Status::IOError("redis " + addr_ + ": connection closed by the server"));
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        return Fail(Status::IOError("redis " + addr_ + ": read: " + ErrnoText(errno)));
      // Wake up once kWakeBytes (or the rest of the value, which is on its way) are in, not
      // for every segment that lands: on a machine with few cores the wakeups and the reads
      // they cost compete with the server for the CPU.
      SetLowWater(static_cast<int>(std::min<uint64_t>(left, kWakeBytes)));
      KVTIER_RETURN_IF_ERROR(Wait(POLLIN));
    }
    SetLowWater(1);
    // The value's trailing CRLF.
    while (reader_->len - reader_->pos < 2) KVTIER_RETURN_IF_ERROR(FillReader(kLineRead, received));
    if (reader_->buf[reader_->pos] != '\r' || reader_->buf[reader_->pos + 1] != '\n')
      return Fail(Status::IOError("redis " + addr_ + ": protocol error: bulk string not followed by CRLF"));
    reader_->pos += 2;
    sink->OnDirect(len);
    return DirectStep::kDone;
#endif
  }

  // Reads at least one byte (at most `max`) into the reader, waiting until the deadline.
  Status FillReader(size_t max, uint64_t* received) {
    for (;;) {
      ssize_t n = ReadIntoReader(max);
      if (n > 0) {
        *received += static_cast<uint64_t>(n);
        return Status::OK();
      }
      if (n == -2) return Fail(Status::NoMemory("redis " + addr_ + ": reader buffer"));
      if (n == 0) return Fail(Status::IOError("redis " + addr_ + ": connection closed by the server"));
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        return Fail(Status::IOError("redis " + addr_ + ": read: " + ErrnoText(errno)));
      KVTIER_RETURN_IF_ERROR(Wait(POLLIN));
    }
  }

  // read() of up to `max` bytes into the reader; -2 when its buffer cannot grow.
  ssize_t ReadIntoReader(size_t max) {
#if HIREDIS_MAJOR == 0
    // hiredis 0.x: straight into the reader's sds buffer, saving the copy redisReaderFeed
    // would make (one memcpy of every value byte; the buffer is a public field of the
    // reader and grows with sds's own function, as redisReaderFeed grows it).
    if (reader_->buf == nullptr) return -2;
    sds grown = sdsMakeRoomFor(reader_->buf, max);
    if (grown == nullptr) return -2;
    reader_->buf = grown;
    ssize_t n = ::read(fd_, reader_->buf + reader_->len, max);
    if (n > 0) {
      sdsIncrLen(reader_->buf, static_cast<int>(n));
      reader_->len = sdslen(reader_->buf);
    }
    return n;
#else
    ssize_t n = ::read(fd_, buf_.data(), std::min(max, buf_.size()));
    if (n > 0 && redisReaderFeed(reader_, buf_.data(), static_cast<size_t>(n)) != REDIS_OK) return -2;
    return n;
#endif
  }

  Status Wait(short events) {
    for (;;) {
      int ms = MillisLeft(deadline_);
      if (ms <= 0) return Fail(Status::TimedOut("redis " + addr_ + ": no reply within the deadline"));
      pollfd p{fd_, events, 0};
      int rc = ::poll(&p, 1, ms);
      if (rc > 0) return Status::OK();
      if (rc < 0 && errno != EINTR) return Fail(Status::IOError("redis " + addr_ + ": poll: " + ErrnoText(errno)));
    }
  }
  Status Fail(Status s) {
    broken_ = true;
    return s;
  }
  // SO_RCVLOWAT: poll() reports the socket readable once this many bytes are in (Linux caps
  // it to what the receive buffer allows; where it is not honoured, poll wakes as before). It
  // is raised only while the rest of a value is awaited, and is 1 again before any other
  // wait, so a wait never asks for bytes that may not come.
  void SetLowWater(int bytes) {
    if (bytes == lowat_) return;
    if (::setsockopt(fd_, SOL_SOCKET, SO_RCVLOWAT, &bytes, sizeof bytes) == 0) lowat_ = bytes;
  }

  int fd_;
  std::string addr_;
  redisReader* reader_;
  size_t chunk_;           // bytes per read()
  std::vector<char> buf_;  // hiredis 1.x: what read() fills before redisReaderFeed
  RedisDeadline deadline_{};
  uint64_t direct_replies_ = 0;  // replies received straight into a sink's buffers
  bool broken_ = false;
  int lowat_ = 1;  // the socket's SO_RCVLOWAT
};

// ---- nodes and their pools ---------------------------------------------------------------

struct RedisClient::Node {
  std::string addr, host;
  int port = 0;
  std::mutex mu;
  std::vector<std::unique_ptr<Connection>> idle;  // guarded by mu; at most pool_size
};

namespace {

// Appends the RESP encoding of `args` to `iov`; the framing bytes go to `frames` (a deque:
// its strings never move), the argument bytes are referenced where they are.
void EncodeCommand(const std::vector<RedisArg>& args, std::deque<std::string>* frames, std::vector<iovec>* iov) {
  std::string& head = frames->emplace_back("*" + std::to_string(args.size()) + "\r\n");
  std::vector<size_t> cut;  // offsets in head where an argument's bytes go
  for (const RedisArg& a : args) {
    AppendBulkHeader(&head, a.head.size() + a.tail.size());
    cut.push_back(head.size());
    head.append("\r\n");
  }
  size_t pos = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    iov->push_back({head.data() + pos, cut[i] - pos});
    if (!args[i].head.empty()) iov->push_back({const_cast<char*>(args[i].head.data()), args[i].head.size()});
    if (!args[i].tail.empty()) iov->push_back({const_cast<char*>(args[i].tail.data()), args[i].tail.size()});
    pos = cut[i];
  }
  iov->push_back({head.data() + pos, head.size() - pos});
}

Status SendCommand(RedisClient::Connection* c, const std::vector<RedisArg>& args, uint64_t* sent) {
  std::deque<std::string> frames;
  std::vector<iovec> iov;
  EncodeCommand(args, &frames, &iov);
  return c->Write(iov, sent);
}

}  // namespace

RedisClient::RedisClient(const RedisClientOptions& options) : options_(options), slots_(kSlots, kNoNode) {}

RedisClient::~RedisClient() = default;

Result<std::unique_ptr<RedisClient>> RedisClient::Open(const RedisClientOptions& options) {
  if (options.seeds.empty()) return Status::InvalidArgument("redis: no server address; set redis seeds to host:port");
  for (const std::string& s : options.seeds) {
    std::string host;
    int port = 0;
    if (!ParseHostPort(s, &host, &port))
      return Status::InvalidArgument("redis: bad address '" + s + "'; expected host:port");
  }
  if (options.pool_size == 0) return Status::InvalidArgument("redis: pool_size must be at least 1");
  if (!options.username.empty() && options.password.empty())
    return Status::InvalidArgument("redis: an ACL username needs a password");
  std::unique_ptr<RedisClient> c(new RedisClient(options));
  if (options.mode == RedisMode::kStandalone) {
    if (!c->NodeFor(options.seeds[0])) return Status::InvalidArgument("redis: bad address " + options.seeds[0]);
    std::unique_lock<std::shared_mutex> lock(c->topo_mu_);
    std::fill(c->slots_.begin(), c->slots_.end(), 0);  // every slot: the one node
  } else {
    for (const std::string& s : options.seeds) c->NodeFor(s);
    Status st = c->RefreshTopology(RedisClock::now() + options.connect_timeout * 2, true);
    if (!st.ok()) return st.WithContext("redis cluster: no seed gave the slot map: ");
  }
  return c;
}

std::shared_ptr<RedisClient::Node> RedisClient::NodeFor(const std::string& addr) {
  {
    std::shared_lock<std::shared_mutex> lock(topo_mu_);
    for (const auto& n : nodes_)
      if (n->addr == addr) return n;
  }
  std::unique_lock<std::shared_mutex> lock(topo_mu_);
  for (const auto& n : nodes_)
    if (n->addr == addr) return n;
  auto n = std::make_shared<Node>();
  n->addr = addr;
  if (!ParseHostPort(addr, &n->host, &n->port)) return nullptr;
  nodes_.push_back(n);
  return n;
}

std::shared_ptr<RedisClient::Node> RedisClient::NodeForSlot(uint16_t slot) {
  std::shared_lock<std::shared_mutex> lock(topo_mu_);
  uint16_t i = slots_[slot];
  return i == kNoNode ? nullptr : nodes_[i];
}

std::vector<std::string> RedisClient::Masters() const {
  std::shared_lock<std::shared_mutex> lock(topo_mu_);
  std::vector<bool> used(nodes_.size(), false);
  for (uint16_t i : slots_)
    if (i != kNoNode) used[i] = true;
  std::vector<std::string> out;
  for (size_t i = 0; i < nodes_.size(); ++i)
    if (used[i]) out.push_back(nodes_[i]->addr);
  return out;
}

Result<std::unique_ptr<RedisClient::Connection>> RedisClient::Connect(const Node& node, RedisDeadline deadline) {
  deadline = std::min(deadline, RedisClock::now() + options_.connect_timeout);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int gai = ::getaddrinfo(node.host.c_str(), std::to_string(node.port).c_str(), &hints, &res);
  if (gai != 0) return Status::IOError("redis " + node.addr + ": cannot resolve host: " + gai_strerror(gai));
  Status last = Status::IOError("redis " + node.addr + ": no address");
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last = Status::IOError("redis " + node.addr + ": socket: " + ErrnoText(errno));
      continue;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc < 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int ms = MillisLeft(deadline);
      rc = ms > 0 ? ::poll(&p, 1, ms) : 0;
      if (rc == 0) {
        ::close(fd);
        last = Status::TimedOut("redis " + node.addr + ": connect timed out");
        continue;
      }
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (rc < 0 || err != 0) {
        ::close(fd);
        last = Status::IOError("redis " + node.addr + ": connect: " + ErrnoText(rc < 0 ? errno : err));
        continue;
      }
    } else if (rc < 0) {
      last = Status::IOError("redis " + node.addr + ": connect: " + ErrnoText(errno));
      ::close(fd);
      continue;
    }
    ::freeaddrinfo(res);
    res = nullptr;
    auto c = std::make_unique<Connection>(fd, node.addr, std::max<size_t>(options_.read_chunk_bytes, 4096));
    if (!c->ok()) return Status::NoMemory("redis " + node.addr + ": cannot create a reply reader");
    if (!options_.password.empty()) {
      c->set_deadline(deadline);
      std::vector<RedisArg> auth = {RedisArg("AUTH")};
      if (!options_.username.empty()) auth.emplace_back(options_.username);
      auth.emplace_back(options_.password);
      uint64_t sent = 0, received = 0;
      KVTIER_RETURN_IF_ERROR(SendCommand(c.get(), auth, &sent));
      Result<std::unique_ptr<RedisReply>> r = c->Read(nullptr, &received);
      if (!r.ok()) return r.status();
      if ((*r)->type == RedisReply::Type::kError)
        return Status::InvalidArgument("redis " + node.addr + ": AUTH failed: " + (*r)->str +
                                       "; check the redis username and password");
    }
    connects_.fetch_add(1, std::memory_order_relaxed);
    return c;
  }
  if (res != nullptr) ::freeaddrinfo(res);
  return last;
}

Result<std::unique_ptr<RedisClient::Connection>> RedisClient::Checkout(Node* node, RedisDeadline deadline) {
  {
    std::lock_guard<std::mutex> lock(node->mu);
    if (!node->idle.empty()) {
      std::unique_ptr<Connection> c = std::move(node->idle.back());
      node->idle.pop_back();
      return c;
    }
  }
  // None idle: open one. Never waiting for another caller's connection keeps a caller that
  // holds connections to several nodes from deadlocking with another one.
  Result<std::unique_ptr<Connection>> c = Connect(*node, deadline);
  if (!c.ok()) connect_failures_.fetch_add(1, std::memory_order_relaxed);
  return c;
}

void RedisClient::Return(Node* node, std::unique_ptr<Connection> conn) {
  std::vector<std::unique_ptr<Connection>> dead;
  {
    std::lock_guard<std::mutex> lock(node->mu);
    if (conn->ok() && node->idle.size() < options_.pool_size) {
      node->idle.push_back(std::move(conn));
    } else if (!conn->ok()) {
      // A failed connection suggests the idle ones are stale too (server restart).
      dead.swap(node->idle);
    }
  }
  // `conn` (unless pooled) and `dead` close here, outside the lock.
}

// ---- topology ----------------------------------------------------------------------------

Status RedisClient::LoadSlotsFrom(const std::shared_ptr<Node>& node, RedisDeadline deadline) {
  Result<std::unique_ptr<Connection>> c = Checkout(node.get(), deadline);
  if (!c.ok()) return c.status();
  (*c)->set_deadline(deadline);
  uint64_t sent = 0, received = 0;
  Status st = SendCommand(c->get(), {RedisArg("CLUSTER"), RedisArg("SLOTS")}, &sent);
  Result<std::unique_ptr<RedisReply>> r = st.ok() ? (*c)->Read(nullptr, &received) : Result<std::unique_ptr<RedisReply>>(st);
  Return(node.get(), std::move(*c));
  if (!r.ok()) return r.status();
  const RedisReply& rep = **r;
  if (rep.type == RedisReply::Type::kError) return Status::IOError("redis " + node->addr + ": CLUSTER SLOTS: " + rep.str);
  if (rep.type != RedisReply::Type::kArray) return Status::IOError("redis " + node->addr + ": CLUSTER SLOTS: not an array");
  std::vector<std::pair<std::pair<int, int>, std::string>> ranges;
  for (const auto& e : rep.elements) {
    if (!e || e->type != RedisReply::Type::kArray || e->elements.size() < 3) continue;
    const auto& m = e->elements[2];
    if (!e->elements[0] || !e->elements[1] || !m || m->type != RedisReply::Type::kArray || m->elements.size() < 2) continue;
    std::string host = m->elements[0]->str;
    if (host.empty() || host == "?") host = node->host;  // "unknown endpoint": the node we asked
    std::string addr = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
                       std::to_string(m->elements[1]->integer);
    ranges.push_back({{static_cast<int>(e->elements[0]->integer), static_cast<int>(e->elements[1]->integer)}, addr});
  }
  if (ranges.empty()) return Status::IOError("redis " + node->addr + ": CLUSTER SLOTS lists no slots (cluster not set up?)");
  std::vector<std::shared_ptr<Node>> owners;
  for (const auto& rg : ranges) owners.push_back(NodeFor(rg.second));
  std::unique_lock<std::shared_mutex> lock(topo_mu_);
  std::vector<uint16_t> next(kSlots, kNoNode);
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (!owners[i]) continue;
    uint16_t idx = static_cast<uint16_t>(std::find(nodes_.begin(), nodes_.end(), owners[i]) - nodes_.begin());
    for (int s = std::max(0, ranges[i].first.first); s <= std::min(kSlots - 1, ranges[i].first.second); ++s) next[s] = idx;
  }
  slots_.swap(next);
  return Status::OK();
}

Status RedisClient::RefreshTopology(RedisDeadline deadline, bool force) {
  if (options_.mode != RedisMode::kCluster) return Status::OK();
  std::unique_lock<std::mutex> lock(refresh_mu_, std::try_to_lock);
  if (!lock.owns_lock()) {
    if (!force) return Status::OK();  // someone else is refreshing
    lock.lock();
  }
  auto now = RedisClock::now();
  if (!force && now - last_refresh_ < std::chrono::milliseconds(100)) return Status::OK();
  refresh_wanted_.store(false);
  refreshes_.fetch_add(1, std::memory_order_relaxed);
  // Masters first (they are current), then seeds, then any node seen.
  std::vector<std::shared_ptr<Node>> order;
  for (const std::string& m : Masters()) order.push_back(NodeFor(m));
  for (const std::string& s : options_.seeds) order.push_back(NodeFor(s));
  {
    std::shared_lock<std::shared_mutex> tl(topo_mu_);
    order.insert(order.end(), nodes_.begin(), nodes_.end());
  }
  Status last = Status::IOError("redis cluster: no node known");
  std::vector<Node*> tried;
  for (const auto& n : order) {
    if (!n || std::find(tried.begin(), tried.end(), n.get()) != tried.end()) continue;
    tried.push_back(n.get());
    if (RedisClock::now() >= deadline) break;
    // Each node gets a slice of the time so one hanging node does not use it all.
    RedisDeadline d = std::min(deadline, RedisClock::now() + std::chrono::milliseconds(300));
    last = LoadSlotsFrom(n, d);
    if (last.ok()) {
      last_refresh_ = RedisClock::now();
      return last;
    }
  }
  last_refresh_ = RedisClock::now();
  refresh_wanted_.store(true);
  return last;
}

// ---- batches ------------------------------------------------------------------------------

namespace {

struct Pending {
  size_t index;
  std::shared_ptr<RedisClient::Node> ask;  // ASK target for this try
};

// An error reply that the cluster logic consumes: MOVED/ASK <slot> <host:port>.
bool ParseRedirect(const std::string& err, std::string_view kind, std::string* addr) {
  if (!StartsWith(err, kind)) return false;
  size_t sp = err.rfind(' ');
  if (sp == std::string::npos) return false;
  *addr = err.substr(sp + 1);
  if (!addr->empty() && addr->front() == ':') addr->clear();  // ":port" with unknown host: refresh
  return true;
}

bool IsRetryableClusterError(const std::string& err) {
  return StartsWith(err, "TRYAGAIN") || StartsWith(err, "CLUSTERDOWN") || StartsWith(err, "LOADING") ||
         StartsWith(err, "MASTERDOWN");
}

}  // namespace

Status RedisClient::Execute(std::span<RedisCommand> commands, RedisDeadline deadline) {
  for (RedisCommand& c : commands) {
    c.reply.reset();
    c.status = Status::OK();
  }
  const bool cluster = options_.mode == RedisMode::kCluster;
  std::vector<Pending> pending;
  pending.reserve(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) pending.push_back({i, nullptr});
  const uint32_t rounds = cluster ? std::max<uint32_t>(1, options_.max_rounds) : 2;
  bool pause = false;
  for (uint32_t round = 0; round < rounds && !pending.empty(); ++round) {
    if (round > 0) retries_.fetch_add(pending.size(), std::memory_order_relaxed);
    if (pause) {
      auto nap = std::min<RedisClock::duration>(std::chrono::milliseconds(20 * round), deadline - RedisClock::now());
      if (nap > RedisClock::duration::zero()) std::this_thread::sleep_for(nap);
      pause = false;
    }
    if (RedisClock::now() >= deadline) break;
    if (cluster && refresh_wanted_.load()) (void)RefreshTopology(deadline, false);

    // Group by node, keeping the batch order within a node.
    struct Group {
      std::shared_ptr<Node> node;
      std::vector<Pending> items;
      std::unique_ptr<Connection> conn;
      Status status;
      std::deque<std::string> frames;         // encoded command heads (iov points into them)
      std::vector<std::vector<iovec>> iov;    // per item: its ASKING (if any) and its command
      size_t sent = 0;                        // items written
      uint64_t in_flight = 0;                 // weight of items written and not yet read
    };
    // Writes the group's next items while what is in flight weighs less than the window
    // (at least one item is always in flight).
    const uint64_t window = options_.max_in_flight_bytes;
    auto top_up = [&](Group& g, uint64_t* sent_bytes) {
      std::vector<iovec> out;
      while (g.sent < g.items.size() && (window == 0 || g.in_flight == 0 || g.in_flight < window)) {
        out.insert(out.end(), g.iov[g.sent].begin(), g.iov[g.sent].end());
        g.in_flight += commands[g.items[g.sent].index].weight;
        ++g.sent;
      }
      return out.empty() ? Status::OK() : g.conn->Write(out, sent_bytes);
    };
    std::vector<Group> groups;
    std::vector<Pending> next;
    for (Pending& p : pending) {
      std::shared_ptr<Node> n = p.ask;
      if (!n) {
        uint16_t slot = cluster ? RedisKeySlot(commands[p.index].key) : 0;
        n = NodeForSlot(slot);
      }
      if (!n) {  // slot not covered: refresh and retry
        refresh_wanted_.store(true);
        commands[p.index].status = Status::IOError("redis cluster: no node serves the key's slot");
        next.push_back({p.index, nullptr});
        pause = true;
        continue;
      }
      auto it = std::find_if(groups.begin(), groups.end(), [&](const Group& g) { return g.node == n; });
      if (it == groups.end()) {
        groups.emplace_back();
        groups.back().node = n;
        it = groups.end() - 1;
      }
      it->items.push_back(p);
    }

    uint64_t sent = 0, received = 0;
    // Send everything.
    for (Group& g : groups) {
      Result<std::unique_ptr<Connection>> c = Checkout(g.node.get(), deadline);
      if (!c.ok()) {
        g.status = c.status();
        continue;
      }
      g.conn = std::move(*c);
      g.conn->set_deadline(deadline);
      // The node's pipeline (its first window of it) in one sendmsg() series.
      static const std::vector<RedisArg> kAsking = {RedisArg("ASKING")};
      g.iov.resize(g.items.size());
      for (size_t k = 0; k < g.items.size(); ++k) {
        if (g.items[k].ask) EncodeCommand(kAsking, &g.frames, &g.iov[k]);
        EncodeCommand(commands[g.items[k].index].args, &g.frames, &g.iov[k]);
      }
      g.status = top_up(g, &sent);
    }
    // Read everything.
    for (Group& g : groups) {
      size_t done = 0;
      if (g.status.ok()) {
        for (; done < g.items.size(); ++done) {
          // What the replies read so far made room for (this item is written by now).
          if (Status w = top_up(g, &sent); !w.ok()) {
            g.status = w;
            break;
          }
          const Pending& p = g.items[done];
          RedisCommand& cmd = commands[p.index];
          if (p.ask) {
            Result<std::unique_ptr<RedisReply>> a = g.conn->Read(nullptr, &received);
            if (!a.ok()) {
              g.status = a.status();
              break;
            }
          }
          Result<std::unique_ptr<RedisReply>> r = g.conn->Read(cmd.sink, &received);
          if (!r.ok()) {
            g.status = r.status();
            break;
          }
          g.in_flight -= cmd.weight;
          std::unique_ptr<RedisReply> rep = std::move(*r);
          std::string addr;
          if (cluster && rep->type == RedisReply::Type::kError) {
            if (ParseRedirect(rep->str, "MOVED ", &addr)) {
              moved_.fetch_add(1, std::memory_order_relaxed);
              refresh_wanted_.store(true);
              std::shared_ptr<Node> target = addr.empty() ? nullptr : NodeFor(addr);
              if (target) {
                std::unique_lock<std::shared_mutex> lock(topo_mu_);
                uint16_t idx = static_cast<uint16_t>(std::find(nodes_.begin(), nodes_.end(), target) - nodes_.begin());
                slots_[RedisKeySlot(cmd.key)] = idx;
              }
              cmd.status = Status::IOError("redis cluster: " + rep->str + " (out of redirections)");
              next.push_back({p.index, nullptr});
              continue;
            }
            if (ParseRedirect(rep->str, "ASK ", &addr)) {
              asks_.fetch_add(1, std::memory_order_relaxed);
              std::shared_ptr<Node> target = addr.empty() ? nullptr : NodeFor(addr);
              cmd.status = Status::IOError("redis cluster: " + rep->str + " (out of redirections)");
              next.push_back({p.index, target});
              if (!target) refresh_wanted_.store(true);
              continue;
            }
            if (IsRetryableClusterError(rep->str)) {
              cmd.status = Status::IOError("redis " + g.node->addr + ": " + rep->str);
              next.push_back({p.index, nullptr});
              pause = true;
              continue;
            }
          }
          cmd.reply = std::move(rep);
          cmd.status = Status::OK();
        }
      }
      if (!g.status.ok()) {
        // Nothing more from this node in this round: a timeout ends those commands (the
        // deadline is gone); a connection error retries them after a topology refresh.
        bool timed_out = g.status.code() == Status::Code::kTimedOut;
        for (size_t k = done; k < g.items.size(); ++k) {
          commands[g.items[k].index].status = g.status;
          if (!timed_out) next.push_back({g.items[k].index, nullptr});
        }
        if (!timed_out) {
          refresh_wanted_.store(true);
          pause = true;
        }
      }
      if (g.conn) {
        direct_replies_.fetch_add(g.conn->TakeDirectReplies(), std::memory_order_relaxed);
        Return(g.node.get(), std::move(g.conn));
      }
    }
    bytes_sent_.fetch_add(sent, std::memory_order_relaxed);
    bytes_received_.fetch_add(received, std::memory_order_relaxed);
    pending.swap(next);
  }
  for (const Pending& p : pending) {
    RedisCommand& c = commands[p.index];
    if (c.status.ok() && !c.reply) c.status = Status::TimedOut("redis: no reply within the deadline");
    if (c.status.ok() && c.reply) continue;
    if (!c.status.ok() && RedisClock::now() >= deadline && c.status.code() != Status::Code::kTimedOut)
      c.status = Status::TimedOut("redis: deadline passed while retrying: " + c.status.message());
  }
  for (RedisCommand& c : commands)
    if (!c.status.ok()) return c.status;
  return Status::OK();
}

Status RedisClient::Ping(RedisDeadline deadline) {
  std::vector<std::string> masters = Masters();
  for (const std::string& m : masters) {
    std::shared_ptr<Node> n = NodeFor(m);
    if (!n) continue;
    Result<std::unique_ptr<Connection>> c = Connect(*n, deadline);
    if (!c.ok()) return c.status();
    (*c)->set_deadline(deadline);
    uint64_t sent = 0, received = 0;
    KVTIER_RETURN_IF_ERROR(SendCommand(c->get(), {RedisArg("PING")}, &sent));
    Result<std::unique_ptr<RedisReply>> r = (*c)->Read(nullptr, &received);
    if (!r.ok()) return r.status();
    if ((*r)->type == RedisReply::Type::kError) return Status::IOError("redis " + m + ": PING: " + (*r)->str);
  }
  return Status::OK();
}

RedisClientStats RedisClient::Stats() const {
  RedisClientStats s;
  s.connects = connects_.load(std::memory_order_relaxed);
  s.connect_failures = connect_failures_.load(std::memory_order_relaxed);
  s.moved = moved_.load(std::memory_order_relaxed);
  s.asks = asks_.load(std::memory_order_relaxed);
  s.retries = retries_.load(std::memory_order_relaxed);
  s.topology_refreshes = refreshes_.load(std::memory_order_relaxed);
  s.bytes_sent = bytes_sent_.load(std::memory_order_relaxed);
  s.bytes_received = bytes_received_.load(std::memory_order_relaxed);
  s.direct_replies = direct_replies_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace kvtier
