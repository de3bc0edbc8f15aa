#include "daemon/wire.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <new>
#include <thread>

#include "common/stats_fields.h"
#include "daemon/protocol.capnp.h"

namespace kvtier::wire {

static_assert(kProtocolVersion == proto::PROTOCOL_VERSION, "wire.h and protocol.capnp disagree on the version");

namespace {

std::string Errno(const char* what, int err) { return std::string(what) + ": " + std::strerror(err); }

int PollTimeoutMs(Deadline deadline) {
  if (deadline == kNoDeadline) return -1;
  const Clock::time_point now = Clock::now();
  if (deadline <= now) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

// Waits for `events` on fd (hang-ups and errors wake it too: the next call reports them).
Status PollFor(int fd, short events, Deadline deadline, const char* what) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int timeout = PollTimeoutMs(deadline);
    const int r = ::poll(&p, 1, timeout);
    if (r > 0) return Status::OK();
    if (r == 0) {
      if (Clock::now() >= deadline) return Status::TimedOut(std::string(what) + ": no progress before the deadline");
      continue;
    }
    if (errno == EINTR) continue;
    return Status::IOError(Errno("poll", errno));
  }
}

// Reads exactly n bytes. A clean end before the first byte is Closed when allowed.
Status ReadExact(int fd, uint8_t* p, size_t n, Deadline deadline, bool eof_ok) {
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::recv(fd, p + done, n - done, MSG_DONTWAIT);
    if (r > 0) {
      done += static_cast<size_t>(r);
      continue;
    }
    if (r == 0) {
      if (done == 0 && eof_ok) return Status::Closed("connection closed by the peer");
      return Status::IOError("connection closed by the peer in the middle of a message (" + std::to_string(done) +
                             " of " + std::to_string(n) + " bytes)");
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      KVTIER_RETURN_IF_ERROR(PollFor(fd, POLLIN, deadline, "read"));
      continue;
    }
    return Status::IOError(Errno("recv", errno));
  }
  return Status::OK();
}

// ---- Cap'n Proto plumbing ----------------------------------------------------------------

template <typename Build>
Result<std::vector<uint8_t>> Encode(const char* what, Build&& build) {
  try {
    capnp::MallocMessageBuilder message;
    Status st = build(message);
    if (!st.ok()) return st;
    kj::Array<capnp::word> flat = capnp::messageToFlatArray(message);
    kj::ArrayPtr<const kj::byte> bytes = flat.asBytes();
    return std::vector<uint8_t>(bytes.begin(), bytes.end());
  } catch (const kj::Exception& e) {
    return Status::InvalidArgument(std::string(what) + ": cannot encode: " + e.getDescription().cStr());
  } catch (const std::bad_alloc&) {
    return Status::NoMemory(std::string(what) + ": out of memory encoding the message");
  }
}

template <typename T, typename Parse>
Result<T> Decode(std::span<const uint8_t> bytes, const char* what, Parse&& parse) {
  const size_t words = bytes.size() / sizeof(capnp::word);
  if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0)
    return Status::InvalidArgument(std::string(what) + ": " + std::to_string(bytes.size()) +
                                   " bytes are not a whole number of 8-byte words");
  try {
    // Cap'n Proto reads words in place: copy only when the bytes are not word-aligned.
    kj::Array<capnp::word> copy;
    const capnp::word* w = reinterpret_cast<const capnp::word*>(bytes.data());
    if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(capnp::word) != 0) {
      copy = kj::heapArray<capnp::word>(words);
      std::memcpy(copy.begin(), bytes.data(), bytes.size());
      w = copy.begin();
    }
    capnp::ReaderOptions options;
    // Every object is read once; the slack bounds what pointer tricks can amplify.
    options.traversalLimitInWords = words * 4 + 1024;
    options.nestingLimit = 16;
    capnp::FlatArrayMessageReader reader(kj::arrayPtr(w, words), options);
    if (reader.getEnd() != w + words)
      return Status::InvalidArgument(std::string(what) + ": bytes after the end of the message");
    return parse(reader);
  } catch (const kj::Exception& e) {
    return Status::InvalidArgument(std::string(what) + ": malformed message: " + e.getDescription().cStr());
  } catch (const std::bad_alloc&) {
    return Status::NoMemory(std::string(what) + ": out of memory decoding the message");
  }
}

kj::StringPtr Ptr(const std::string& s) { return kj::StringPtr(s.c_str(), s.size()); }

Status CheckTextSize(const std::string& s, const char* field, size_t max = kMaxTextBytes) {
  if (s.size() > max)
    return Status::InvalidArgument(std::string(field) + " is " + std::to_string(s.size()) + " bytes, more than " +
                                   std::to_string(max));
  return Status::OK();
}

Status ReadText(capnp::Text::Reader t, const char* field, std::string* out, size_t max = kMaxTextBytes) {
  if (t.size() > max)
    return Status::InvalidArgument(std::string(field) + " is " + std::to_string(t.size()) + " bytes, more than " +
                                   std::to_string(max));
  out->assign(t.cStr(), t.size());
  return Status::OK();
}

void WriteStatus(proto::StatusMsg::Builder b, const Status& s) {
  b.setCode(static_cast<uint16_t>(s.code()));
  const std::string& m = s.message();
  if (m.size() <= kMaxStatusMessageBytes) {
    b.setMessage(Ptr(m));
  } else {
    const std::string cut = m.substr(0, kMaxStatusMessageBytes);
    b.setMessage(Ptr(cut));
  }
}

Status ReadStatus(proto::StatusMsg::Reader r) {
  std::string message;
  // A daemon cuts its messages; a longer one is cut here rather than refused.
  capnp::Text::Reader t = r.getMessage();
  message.assign(t.cStr(), std::min<size_t>(t.size(), kMaxStatusMessageBytes));
  return StatusFromCode(r.getCode(), message);
}

// ---- values ------------------------------------------------------------------------------

Status WriteSpec(proto::NamespaceSpec::Builder b, const NamespaceSpec& s) {
  KVTIER_RETURN_IF_ERROR(CheckTextSize(s.model.name, "model name"));
  KVTIER_RETURN_IF_ERROR(CheckTextSize(s.model.revision, "model revision"));
  KVTIER_RETURN_IF_ERROR(CheckTextSize(s.model.weights_digest, "weights digest"));
  KVTIER_RETURN_IF_ERROR(CheckTextSize(s.model.tokenizer_id, "tokenizer id"));
  KVTIER_RETURN_IF_ERROR(CheckTextSize(s.adapter_id, "adapter id"));
  KVTIER_RETURN_IF_ERROR(CheckTextSize(s.tenant_salt, "tenant salt"));
  proto::ModelIdentity::Builder m = b.initModel();
  m.setName(Ptr(s.model.name));
  m.setRevision(Ptr(s.model.revision));
  m.setWeightsDigest(Ptr(s.model.weights_digest));
  m.setTokenizerId(Ptr(s.model.tokenizer_id));
  proto::KvShape::Builder k = b.initShape();
  k.setNumLayers(s.shape.num_layers);
  k.setNumKvHeads(s.shape.num_kv_heads);
  k.setHeadDim(s.shape.head_dim);
  k.setDtype(static_cast<uint8_t>(s.shape.dtype));
  k.setChunkTokens(s.shape.chunk_tokens);
  k.setTpRank(s.shape.tp_rank);
  k.setTpSize(s.shape.tp_size);
  k.setMla(s.shape.mla);
  b.setAdapterId(Ptr(s.adapter_id));
  b.setTenantSalt(Ptr(s.tenant_salt));
  return Status::OK();
}

Status ReadSpec(proto::NamespaceSpec::Reader r, NamespaceSpec* s) {
  proto::ModelIdentity::Reader m = r.getModel();
  KVTIER_RETURN_IF_ERROR(ReadText(m.getName(), "model name", &s->model.name));
  KVTIER_RETURN_IF_ERROR(ReadText(m.getRevision(), "model revision", &s->model.revision));
  KVTIER_RETURN_IF_ERROR(ReadText(m.getWeightsDigest(), "weights digest", &s->model.weights_digest));
  KVTIER_RETURN_IF_ERROR(ReadText(m.getTokenizerId(), "tokenizer id", &s->model.tokenizer_id));
  proto::KvShape::Reader k = r.getShape();
  const uint8_t dtype = k.getDtype();
  if (DTypeSize(static_cast<DType>(dtype)) == 0)
    return Status::InvalidArgument("dtype " + std::to_string(dtype) + " is not a kvtier DType");
  s->shape.num_layers = k.getNumLayers();
  s->shape.num_kv_heads = k.getNumKvHeads();
  s->shape.head_dim = k.getHeadDim();
  s->shape.dtype = static_cast<DType>(dtype);
  s->shape.chunk_tokens = k.getChunkTokens();
  s->shape.tp_rank = k.getTpRank();
  s->shape.tp_size = k.getTpSize();
  s->shape.mla = k.getMla();
  KVTIER_RETURN_IF_ERROR(ReadText(r.getAdapterId(), "adapter id", &s->adapter_id));
  KVTIER_RETURN_IF_ERROR(ReadText(r.getTenantSalt(), "tenant salt", &s->tenant_salt));
  return Status::OK();
}

Status WriteSpan(proto::TokenSpan::Builder b, const Request& q) {
  if (q.tokens.size() > kMaxRequestTokens)
    return Status::InvalidArgument("request names " + std::to_string(q.tokens.size()) +
                                   " tokens, more than kvtierd's " + std::to_string(kMaxRequestTokens) + "; split it");
  if (q.extra_keys.size() > kMaxExtraKeys)
    return Status::InvalidArgument("request has " + std::to_string(q.extra_keys.size()) +
                                   " extra keys, more than kvtierd's " + std::to_string(kMaxExtraKeys));
  b.setNs(q.ns);
  capnp::List<int32_t>::Builder t = b.initTokens(static_cast<unsigned>(q.tokens.size()));
  for (size_t i = 0; i < q.tokens.size(); ++i) t.set(static_cast<unsigned>(i), q.tokens[i]);
  capnp::List<proto::ExtraKey>::Builder e = b.initExtraKeys(static_cast<unsigned>(q.extra_keys.size()));
  for (size_t i = 0; i < q.extra_keys.size(); ++i) {
    proto::ExtraKey::Builder k = e[static_cast<unsigned>(i)];
    k.setChunkIndex(q.extra_keys[i].chunk_index);
    k.setLo(q.extra_keys[i].lo);
    k.setHi(q.extra_keys[i].hi);
  }
  return Status::OK();
}

Status ReadSpan(proto::TokenSpan::Reader r, Request* q) {
  q->ns = r.getNs();
  capnp::List<int32_t>::Reader t = r.getTokens();
  if (t.size() > kMaxRequestTokens)
    return Status::InvalidArgument("request names " + std::to_string(t.size()) + " tokens, more than kvtierd's " +
                                   std::to_string(kMaxRequestTokens) + "; split it");
  q->tokens.resize(t.size());
  for (unsigned i = 0; i < t.size(); ++i) q->tokens[i] = t[i];
  capnp::List<proto::ExtraKey>::Reader e = r.getExtraKeys();
  if (e.size() > kMaxExtraKeys)
    return Status::InvalidArgument("request has " + std::to_string(e.size()) + " extra keys, more than kvtierd's " +
                                   std::to_string(kMaxExtraKeys));
  q->extra_keys.resize(e.size());
  for (unsigned i = 0; i < e.size(); ++i) {
    proto::ExtraKey::Reader k = e[i];
    q->extra_keys[i] = ExtraKey{k.getChunkIndex(), k.getLo(), k.getHi()};
  }
  return Status::OK();
}

Status CheckFinite(double v, const char* what) {
  if (!std::isfinite(v)) return Status::InvalidArgument(std::string(what) + " is not a finite number");
  return Status::OK();
}

// StoreStats through common/stats_fields.h: one table, both directions.
struct NumberField {
  const char* name;
  uint64_t (*get)(const StoreStats&);
  void (*set)(StoreStats&, uint64_t);
};
#define KVT_NUMBER_FIELD(f)                                                            \
  NumberField{#f, [](const StoreStats& s) { return static_cast<uint64_t>(s.f); },      \
              [](StoreStats& s, uint64_t v) { s.f = static_cast<decltype(s.f)>(v); }},
constexpr NumberField kNumberFields[] = {KVTIER_STORE_STATS_NUMBERS(KVT_NUMBER_FIELD)};
#undef KVT_NUMBER_FIELD
struct TextField {
  const char* name;
  std::string StoreStats::*member;
};
#define KVT_TEXT_FIELD(f) TextField{#f, &StoreStats::f},
constexpr TextField kTextFields[] = {KVTIER_STORE_STATS_STRINGS(KVT_TEXT_FIELD)};
#undef KVT_TEXT_FIELD
constexpr size_t kMaxStatFields = 4096;  // a reply with more is not from a kvtierd

void WriteStats(proto::Stats::Builder b, const StoreStats& s) {
  capnp::List<proto::StatNumber>::Builder n = b.initNumbers(std::size(kNumberFields));
  for (unsigned i = 0; i < std::size(kNumberFields); ++i) {
    n[i].setName(kNumberFields[i].name);
    n[i].setValue(kNumberFields[i].get(s));
  }
  capnp::List<proto::StatText>::Builder t = b.initTexts(std::size(kTextFields));
  for (unsigned i = 0; i < std::size(kTextFields); ++i) {
    t[i].setName(kTextFields[i].name);
    const std::string& v = s.*kTextFields[i].member;
    t[i].setValue(Ptr(v.size() <= kMaxTextBytes ? v : v.substr(0, kMaxTextBytes)));
  }
}

Status ReadStats(proto::Stats::Reader r, StoreStats* s) {
  capnp::List<proto::StatNumber>::Reader n = r.getNumbers();
  capnp::List<proto::StatText>::Reader t = r.getTexts();
  if (n.size() > kMaxStatFields || t.size() > kMaxStatFields)
    return Status::InvalidArgument("stats reply has " + std::to_string(n.size() + t.size()) + " fields");
  for (proto::StatNumber::Reader f : n) {
    capnp::Text::Reader name = f.getName();
    for (const NumberField& field : kNumberFields)  // names this side does not know are skipped
      if (name == field.name) field.set(*s, f.getValue());
  }
  for (proto::StatText::Reader f : t) {
    capnp::Text::Reader name = f.getName();
    for (const TextField& field : kTextFields)
      if (name == field.name) KVTIER_RETURN_IF_ERROR(ReadText(f.getValue(), field.name, &(s->*field.member)));
  }
  return Status::OK();
}

}  // namespace

// ---- frames -------------------------------------------------------------------------------

Status WriteFrame(int fd, std::span<const uint8_t> message, Deadline deadline) {
  if (message.size() > UINT32_MAX)
    return Status::InvalidArgument("message of " + std::to_string(message.size()) + " bytes is too large for a frame");
  const uint32_t n = static_cast<uint32_t>(message.size());
  const uint8_t header[4] = {static_cast<uint8_t>(n), static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n >> 16),
                             static_cast<uint8_t>(n >> 24)};
  iovec iov[2] = {{const_cast<uint8_t*>(header), sizeof(header)},
                  {const_cast<uint8_t*>(message.data()), message.size()}};
  size_t first = 0;
  while (first < 2) {
    msghdr msg{};
    msg.msg_iov = iov + first;
    msg.msg_iovlen = 2 - first;
    const ssize_t r = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        KVTIER_RETURN_IF_ERROR(PollFor(fd, POLLOUT, deadline, "write"));
        continue;
      }
      return Status::IOError(Errno("send", errno));
    }
    size_t left = static_cast<size_t>(r);
    while (first < 2 && left >= iov[first].iov_len) {
      left -= iov[first].iov_len;
      ++first;
    }
    if (first < 2) {
      iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
  return Status::OK();
}

Result<std::vector<uint8_t>> ReadFrame(int fd, uint64_t max_bytes, Deadline deadline) {
  uint8_t header[4];
  KVTIER_RETURN_IF_ERROR(ReadExact(fd, header, sizeof(header), deadline, true));
  const uint32_t n = uint32_t{header[0]} | uint32_t{header[1]} << 8 | uint32_t{header[2]} << 16 |
                     uint32_t{header[3]} << 24;
  if (n == 0 || n > max_bytes || n % sizeof(capnp::word) != 0)
    return Status::InvalidArgument("frame of " + std::to_string(n) + " bytes refused (at most " +
                                   std::to_string(max_bytes) + ", in whole 8-byte words)");
  std::vector<uint8_t> body(n);  // operator new's alignment is enough for Cap'n Proto's words
  KVTIER_RETURN_IF_ERROR(ReadExact(fd, body.data(), n, deadline, false));
  return body;
}

Status WaitReadable(int fd, Deadline deadline) { return PollFor(fd, POLLIN, deadline, "wait for a message"); }

Status SendFd(int sock, int fd_to_send, Deadline deadline) {
  char byte = 'F';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd_to_send, sizeof(int));
  for (;;) {
    const ssize_t r = ::sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r == 1) return Status::OK();
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      KVTIER_RETURN_IF_ERROR(PollFor(sock, POLLOUT, deadline, "pass the region"));
      continue;
    }
    return Status::IOError(Errno("sendmsg (passing the region)", r < 0 ? errno : EIO));
  }
}

Result<int> ReceiveFd(int sock, Deadline deadline) {
  constexpr size_t kMaxFds = 8;  // room to see (and close) more than the one expected
  for (;;) {
    char byte = 0;
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    const ssize_t r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        KVTIER_RETURN_IF_ERROR(PollFor(sock, POLLIN, deadline, "receive the region"));
        continue;
      }
      return Status::IOError(Errno("recvmsg (receiving the region)", errno));
    }
    if (r == 0) return Status::IOError("connection closed by the peer before it passed the region");
    std::vector<int> fds;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        fds.push_back(fd);
      }
    }
    if (fds.size() == 1 && (msg.msg_flags & MSG_CTRUNC) == 0) return fds[0];
    for (int fd : fds) ::close(fd);
    return Status::IOError("expected one descriptor (the region) with the byte after the handshake; got " +
                           std::to_string(fds.size()) + ((msg.msg_flags & MSG_CTRUNC) ? " and more cut off" : ""));
  }
}

// ---- listening ------------------------------------------------------------------------------

int AcceptUntilWoken(int listen_fd, int wake_fd) {
  for (;;) {
    pollfd p[2] = {{listen_fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno != EINTR) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    if (p[1].revents != 0) return -1;
    if ((p[0].revents & POLLIN) == 0) continue;
    const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) return fd;
    // Out of descriptors or memory: back off instead of spinning on the ready socket.
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

// ---- status ---------------------------------------------------------------------------------

Status StatusFromCode(int code, std::string_view m) {
  using C = Status::Code;
  switch (static_cast<C>(code)) {
    case C::kOk: return Status::OK();
    case C::kInvalidArgument: return Status::InvalidArgument(m);
    case C::kNotFound: return Status::NotFound(m);
    case C::kCorruption: return Status::Corruption(m);
    case C::kNoSpace: return Status::NoSpace(m);
    case C::kBusy: return Status::Busy(m);
    case C::kTimedOut: return Status::TimedOut(m);
    case C::kCancelled: return Status::Cancelled(m);
    case C::kIOError: return Status::IOError(m);
    case C::kNotSupported: return Status::NotSupported(m);
    case C::kClosed: return Status::Closed(m);
    case C::kNoMemory: return Status::NoMemory(m);
    case C::kInternal: return Status::Internal(m);
    case C::kUnavailable: return Status::Unavailable(m);
    case C::kPermissionDenied: return Status::PermissionDenied(m);
  }
  return Status::Internal("status code " + std::to_string(code) + " unknown to this kvtier: " + std::string(m));
}

// ---- handshake ------------------------------------------------------------------------------

Result<std::vector<uint8_t>> EncodeHello(const Hello& h) {
  return Encode("hello", [&](capnp::MessageBuilder& m) {
    KVTIER_RETURN_IF_ERROR(CheckTextSize(h.tenant, "tenant"));
    KVTIER_RETURN_IF_ERROR(CheckTextSize(h.token, "token"));
    proto::Hello::Builder b = m.initRoot<proto::Hello>();
    b.setProtocolVersion(h.protocol_version);
    b.setTenant(Ptr(h.tenant));
    b.setToken(Ptr(h.token));
    b.setSessionId(h.session_id);
    b.setClientPid(h.client_pid);
    return Status::OK();
  });
}

Result<Hello> DecodeHello(std::span<const uint8_t> bytes) {
  return Decode<Hello>(bytes, "hello", [](capnp::MessageReader& m) -> Result<Hello> {
    proto::Hello::Reader r = m.getRoot<proto::Hello>();
    Hello h;
    h.protocol_version = r.getProtocolVersion();
    KVTIER_RETURN_IF_ERROR(ReadText(r.getTenant(), "tenant", &h.tenant));
    KVTIER_RETURN_IF_ERROR(ReadText(r.getToken(), "token", &h.token));
    h.session_id = r.getSessionId();
    h.client_pid = r.getClientPid();
    return h;
  });
}

Result<std::vector<uint8_t>> EncodeHelloReply(const HelloReply& h) {
  return Encode("hello reply", [&](capnp::MessageBuilder& m) {
    KVTIER_RETURN_IF_ERROR(CheckTextSize(h.tenant, "tenant"));
    KVTIER_RETURN_IF_ERROR(CheckTextSize(h.daemon_version, "daemon version"));
    proto::HelloReply::Builder b = m.initRoot<proto::HelloReply>();
    WriteStatus(b.initStatus(), h.status);
    b.setRegionBytes(h.region_bytes);
    b.setTenant(Ptr(h.tenant));
    b.setDaemonVersion(Ptr(h.daemon_version));
    b.setSessionExisted(h.session_existed);
    return Status::OK();
  });
}

Result<HelloReply> DecodeHelloReply(std::span<const uint8_t> bytes) {
  return Decode<HelloReply>(bytes, "hello reply", [](capnp::MessageReader& m) -> Result<HelloReply> {
    proto::HelloReply::Reader r = m.getRoot<proto::HelloReply>();
    HelloReply h;
    h.status = ReadStatus(r.getStatus());
    h.region_bytes = r.getRegionBytes();
    KVTIER_RETURN_IF_ERROR(ReadText(r.getTenant(), "tenant", &h.tenant));
    KVTIER_RETURN_IF_ERROR(ReadText(r.getDaemonVersion(), "daemon version", &h.daemon_version));
    h.session_existed = r.getSessionExisted();
    return h;
  });
}

// ---- requests -------------------------------------------------------------------------------

const char* OpName(Op op) noexcept {
  switch (op) {
    case Op::kRegisterNamespace: return "registerNamespace";
    case Op::kUnregisterNamespace: return "unregisterNamespace";
    case Op::kLookup: return "lookup";
    case Op::kCancelPrefetch: return "cancelPrefetch";
    case Op::kSetPrefillRate: return "setPrefillRate";
    case Op::kReportPrefill: return "reportPrefill";
    case Op::kPinPrefix: return "pinPrefix";
    case Op::kUnpinPrefix: return "unpinPrefix";
    case Op::kReserveSave: return "reserveSave";
    case Op::kCommitSave: return "commitSave";
    case Op::kAbortSave: return "abortSave";
    case Op::kAcquireLoad: return "acquireLoad";
    case Op::kReleaseLoad: return "releaseLoad";
    case Op::kStats: return "stats";
    case Op::kListNamespaces: return "listNamespaces";
  }
  return "unknown";
}

ResultKind ResultOf(Op op) noexcept {
  switch (op) {
    case Op::kRegisterNamespace: return ResultKind::kHandle;
    case Op::kLookup: return ResultKind::kLookup;
    case Op::kPinPrefix: return ResultKind::kPinned;
    case Op::kReserveSave: return ResultKind::kSaveLease;
    case Op::kCommitSave: return ResultKind::kStored;
    case Op::kAcquireLoad: return ResultKind::kLoadLease;
    case Op::kStats: return ResultKind::kStats;
    case Op::kListNamespaces: return ResultKind::kNamespaces;
    default: return ResultKind::kNone;
  }
}

Result<std::vector<uint8_t>> EncodeRequest(const Request& q) {
  return Encode("request", [&](capnp::MessageBuilder& m) -> Status {
    proto::Request::Builder b = m.initRoot<proto::Request>();
    b.setId(q.id);
    switch (q.op) {
      case Op::kRegisterNamespace: return WriteSpec(b.initRegisterNamespace(), q.spec);
      case Op::kUnregisterNamespace: b.setUnregisterNamespace(q.ns); return Status::OK();
      case Op::kLookup: {
        proto::LookupArgs::Builder l = b.initLookup();
        l.setPrefetch(q.lookup.prefetch);
        const int64_t ms = q.lookup.prefetch_deadline.count();
        l.setPrefetchDeadlineMs(static_cast<uint32_t>(std::clamp<int64_t>(ms, 0, UINT32_MAX)));
        return WriteSpan(l.initSpan(), q);
      }
      case Op::kCancelPrefetch: b.setCancelPrefetch(q.target); return Status::OK();
      case Op::kSetPrefillRate: {
        proto::PrefillRate::Builder r = b.initSetPrefillRate();
        r.setNs(q.ns);
        r.setTokensPerSecond(q.value);
        return Status::OK();
      }
      case Op::kReportPrefill: {
        proto::PrefillReport::Builder r = b.initReportPrefill();
        r.setNs(q.ns);
        r.setTokens(q.count);
        r.setSeconds(q.value);
        return Status::OK();
      }
      case Op::kPinPrefix: return WriteSpan(b.initPinPrefix(), q);
      case Op::kUnpinPrefix: return WriteSpan(b.initUnpinPrefix(), q);
      case Op::kReserveSave: return WriteSpan(b.initReserveSave(), q);
      case Op::kCommitSave: {
        if (q.count > UINT32_MAX) return Status::InvalidArgument("commit of more than 2^32 chunks");
        proto::CommitArgs::Builder c = b.initCommitSave();
        c.setLease(q.target);
        c.setWritten(static_cast<uint32_t>(q.count));
        return Status::OK();
      }
      case Op::kAbortSave: b.setAbortSave(q.target); return Status::OK();
      case Op::kAcquireLoad: return WriteSpan(b.initAcquireLoad(), q);
      case Op::kReleaseLoad: b.setReleaseLoad(q.target); return Status::OK();
      case Op::kStats: b.setStats(); return Status::OK();
      case Op::kListNamespaces: b.setListNamespaces(); return Status::OK();
    }
    return Status::InvalidArgument("request kind " + std::to_string(static_cast<int>(q.op)) + " is unknown");
  });
}

Result<Request> DecodeRequest(std::span<const uint8_t> bytes) {
  return Decode<Request>(bytes, "request", [](capnp::MessageReader& m) -> Result<Request> {
    proto::Request::Reader r = m.getRoot<proto::Request>();
    Request q;
    q.id = r.getId();
    const proto::Request::Which which = r.which();
    switch (which) {
      case proto::Request::REGISTER_NAMESPACE:
        q.op = Op::kRegisterNamespace;
        KVTIER_RETURN_IF_ERROR(ReadSpec(r.getRegisterNamespace(), &q.spec));
        break;
      case proto::Request::UNREGISTER_NAMESPACE:
        q.op = Op::kUnregisterNamespace;
        q.ns = r.getUnregisterNamespace();
        break;
      case proto::Request::LOOKUP: {
        q.op = Op::kLookup;
        proto::LookupArgs::Reader l = r.getLookup();
        q.lookup.prefetch = l.getPrefetch();
        q.lookup.prefetch_deadline = std::chrono::milliseconds(l.getPrefetchDeadlineMs());
        KVTIER_RETURN_IF_ERROR(ReadSpan(l.getSpan(), &q));
        break;
      }
      case proto::Request::CANCEL_PREFETCH:
        q.op = Op::kCancelPrefetch;
        q.target = r.getCancelPrefetch();
        break;
      case proto::Request::SET_PREFILL_RATE: {
        q.op = Op::kSetPrefillRate;
        proto::PrefillRate::Reader p = r.getSetPrefillRate();
        q.ns = p.getNs();
        q.value = p.getTokensPerSecond();
        KVTIER_RETURN_IF_ERROR(CheckFinite(q.value, "prefill rate"));
        break;
      }
      case proto::Request::REPORT_PREFILL: {
        q.op = Op::kReportPrefill;
        proto::PrefillReport::Reader p = r.getReportPrefill();
        q.ns = p.getNs();
        q.count = p.getTokens();
        q.value = p.getSeconds();
        KVTIER_RETURN_IF_ERROR(CheckFinite(q.value, "prefill seconds"));
        break;
      }
      case proto::Request::PIN_PREFIX:
        q.op = Op::kPinPrefix;
        KVTIER_RETURN_IF_ERROR(ReadSpan(r.getPinPrefix(), &q));
        break;
      case proto::Request::UNPIN_PREFIX:
        q.op = Op::kUnpinPrefix;
        KVTIER_RETURN_IF_ERROR(ReadSpan(r.getUnpinPrefix(), &q));
        break;
      case proto::Request::RESERVE_SAVE:
        q.op = Op::kReserveSave;
        KVTIER_RETURN_IF_ERROR(ReadSpan(r.getReserveSave(), &q));
        break;
      case proto::Request::COMMIT_SAVE: {
        q.op = Op::kCommitSave;
        proto::CommitArgs::Reader c = r.getCommitSave();
        q.target = c.getLease();
        q.count = c.getWritten();
        break;
      }
      case proto::Request::ABORT_SAVE:
        q.op = Op::kAbortSave;
        q.target = r.getAbortSave();
        break;
      case proto::Request::ACQUIRE_LOAD:
        q.op = Op::kAcquireLoad;
        KVTIER_RETURN_IF_ERROR(ReadSpan(r.getAcquireLoad(), &q));
        break;
      case proto::Request::RELEASE_LOAD:
        q.op = Op::kReleaseLoad;
        q.target = r.getReleaseLoad();
        break;
      case proto::Request::STATS:
        q.op = Op::kStats;
        break;
      case proto::Request::LIST_NAMESPACES:
        q.op = Op::kListNamespaces;
        break;
      default:
        return Status::InvalidArgument("request kind " + std::to_string(static_cast<int>(which)) +
                                       " is unknown to this kvtierd");
    }
    return q;
  });
}

// ---- responses ------------------------------------------------------------------------------

Result<std::vector<uint8_t>> EncodeResponse(const Response& p) {
  return Encode("response", [&](capnp::MessageBuilder& m) -> Status {
    proto::Response::Builder b = m.initRoot<proto::Response>();
    b.setId(p.id);
    WriteStatus(b.initStatus(), p.status);
    b.setStoredOnError(p.stored_on_error);
    if (!p.status.ok()) {
      b.setNone();
      return Status::OK();
    }
    switch (p.kind) {
      case ResultKind::kNone: b.setNone(); break;
      case ResultKind::kHandle:
        b.setRegisterNamespace(static_cast<uint32_t>(p.number));
        break;
      case ResultKind::kPinned:
        b.setPinPrefix(static_cast<uint32_t>(p.number));
        break;
      case ResultKind::kStored:
        b.setCommitSave(static_cast<uint32_t>(p.number));
        break;
      case ResultKind::kLookup: {
        const LookupResult& l = p.lookup;
        proto::LookupReply::Builder r = b.initLookup();
        r.setMatchedTokens(l.matched_tokens);
        r.setMatchedChunks(l.matched_chunks);
        r.setTotalChunks(l.total_chunks);
        r.setCachedChunks(l.cached_chunks);
        capnp::List<uint8_t>::Builder tiers = r.initChunkTiers(static_cast<unsigned>(l.chunk_tiers.size()));
        for (size_t i = 0; i < l.chunk_tiers.size(); ++i)
          tiers.set(static_cast<unsigned>(i), static_cast<uint8_t>(l.chunk_tiers[i]));
        r.setExpectedLoadSeconds(l.expected_load_seconds);
        r.setExpectedRecomputeSeconds(l.expected_recompute_seconds);
        r.setExpectedSavingSeconds(l.expected_saving_seconds);
        r.setPrefetchId(l.prefetch_id);
        break;
      }
      case ResultKind::kSaveLease: {
        const SaveLease& l = p.save_lease;
        proto::SaveLease::Builder r = b.initReserveSave();
        r.setId(l.id);
        r.setTotalChunks(l.total_chunks);
        r.setCachedChunks(l.cached_chunks);
        r.setPayloadBytes(l.payload_bytes);
        capnp::List<uint64_t>::Builder o = r.initPayloadOffsets(static_cast<unsigned>(l.payload_offsets.size()));
        for (size_t i = 0; i < l.payload_offsets.size(); ++i) o.set(static_cast<unsigned>(i), l.payload_offsets[i]);
        break;
      }
      case ResultKind::kLoadLease: {
        const LoadLease& l = p.load_lease;
        proto::LoadLease::Builder r = b.initAcquireLoad();
        r.setId(l.id);
        r.setTotalChunks(l.total_chunks);
        r.setPayloadBytes(l.payload_bytes);
        capnp::List<uint64_t>::Builder o = r.initPayloadOffsets(static_cast<unsigned>(l.payload_offsets.size()));
        for (size_t i = 0; i < l.payload_offsets.size(); ++i) o.set(static_cast<unsigned>(i), l.payload_offsets[i]);
        WriteStatus(r.initStatus(), l.status);
        break;
      }
      case ResultKind::kStats: WriteStats(b.initStats(), p.stats); break;
      case ResultKind::kNamespaces: {
        if (p.namespaces.size() > kMaxNamespaces)
          return Status::InvalidArgument(std::to_string(p.namespaces.size()) +
                                         " namespaces are more than a reply holds");
        capnp::List<proto::NamespaceInfo>::Builder l = b.initListNamespaces(static_cast<unsigned>(p.namespaces.size()));
        for (size_t i = 0; i < p.namespaces.size(); ++i) {
          const NamespaceInfo& n = p.namespaces[i];
          proto::NamespaceInfo::Builder e = l[static_cast<unsigned>(i)];
          KVTIER_RETURN_IF_ERROR(WriteSpec(e.initSpec(), n.spec));
          e.setChunks(n.chunks);
          e.setHostChunks(n.host_chunks);
          e.setNvmeChunks(n.nvme_chunks);
          e.setRedisChunks(n.redis_chunks);
          e.setRegistrations(n.registrations);
        }
        break;
      }
    }
    return Status::OK();
  });
}

Result<Response> DecodeResponse(std::span<const uint8_t> bytes) {
  return Decode<Response>(bytes, "response", [](capnp::MessageReader& m) -> Result<Response> {
    proto::Response::Reader r = m.getRoot<proto::Response>();
    Response p;
    p.id = r.getId();
    p.status = ReadStatus(r.getStatus());
    p.stored_on_error = r.getStoredOnError();
    const proto::Response::Which which = r.which();
    switch (which) {
      case proto::Response::NONE: p.kind = ResultKind::kNone; break;
      case proto::Response::REGISTER_NAMESPACE:
        p.kind = ResultKind::kHandle;
        p.number = r.getRegisterNamespace();
        break;
      case proto::Response::PIN_PREFIX:
        p.kind = ResultKind::kPinned;
        p.number = r.getPinPrefix();
        break;
      case proto::Response::COMMIT_SAVE:
        p.kind = ResultKind::kStored;
        p.number = r.getCommitSave();
        break;
      case proto::Response::LOOKUP: {
        p.kind = ResultKind::kLookup;
        proto::LookupReply::Reader l = r.getLookup();
        LookupResult& o = p.lookup;
        o.matched_tokens = l.getMatchedTokens();
        o.matched_chunks = l.getMatchedChunks();
        o.total_chunks = l.getTotalChunks();
        o.cached_chunks = l.getCachedChunks();
        capnp::List<uint8_t>::Reader tiers = l.getChunkTiers();
        if (o.matched_chunks > o.total_chunks || o.cached_chunks > o.total_chunks || tiers.size() > o.total_chunks)
          return Status::InvalidArgument("lookup reply counts more chunks than the request has");
        for (uint8_t t : tiers) {
          if (t >= kTierCount) return Status::InvalidArgument("lookup reply names tier " + std::to_string(t));
          o.chunk_tiers.push_back(static_cast<TierId>(t));
        }
        o.expected_load_seconds = l.getExpectedLoadSeconds();
        o.expected_recompute_seconds = l.getExpectedRecomputeSeconds();
        o.expected_saving_seconds = l.getExpectedSavingSeconds();
        o.prefetch_id = l.getPrefetchId();
        break;
      }
      case proto::Response::RESERVE_SAVE: {
        p.kind = ResultKind::kSaveLease;
        proto::SaveLease::Reader l = r.getReserveSave();
        SaveLease& o = p.save_lease;
        o.id = l.getId();
        o.total_chunks = l.getTotalChunks();
        o.cached_chunks = l.getCachedChunks();
        o.payload_bytes = l.getPayloadBytes();
        capnp::List<uint64_t>::Reader off = l.getPayloadOffsets();
        if (o.cached_chunks > o.total_chunks || off.size() > o.total_chunks - o.cached_chunks)
          return Status::InvalidArgument("save lease counts more chunks than the request has");
        o.payload_offsets.reserve(off.size());
        for (uint64_t v : off) o.payload_offsets.push_back(v);
        break;
      }
      case proto::Response::ACQUIRE_LOAD: {
        p.kind = ResultKind::kLoadLease;
        proto::LoadLease::Reader l = r.getAcquireLoad();
        LoadLease& o = p.load_lease;
        o.id = l.getId();
        o.total_chunks = l.getTotalChunks();
        o.payload_bytes = l.getPayloadBytes();
        capnp::List<uint64_t>::Reader off = l.getPayloadOffsets();
        if (off.size() > o.total_chunks)
          return Status::InvalidArgument("load lease counts more chunks than the request has");
        o.payload_offsets.reserve(off.size());
        for (uint64_t v : off) o.payload_offsets.push_back(v);
        o.status = ReadStatus(l.getStatus());
        break;
      }
      case proto::Response::STATS:
        p.kind = ResultKind::kStats;
        KVTIER_RETURN_IF_ERROR(ReadStats(r.getStats(), &p.stats));
        break;
      case proto::Response::LIST_NAMESPACES: {
        p.kind = ResultKind::kNamespaces;
        capnp::List<proto::NamespaceInfo>::Reader l = r.getListNamespaces();
        if (l.size() > kMaxNamespaces)
          return Status::InvalidArgument("namespace list of " + std::to_string(l.size()) + " entries");
        p.namespaces.resize(l.size());
        for (unsigned i = 0; i < l.size(); ++i) {
          proto::NamespaceInfo::Reader e = l[i];
          NamespaceInfo& n = p.namespaces[i];
          KVTIER_RETURN_IF_ERROR(ReadSpec(e.getSpec(), &n.spec));
          n.chunks = e.getChunks();
          n.host_chunks = e.getHostChunks();
          n.nvme_chunks = e.getNvmeChunks();
          n.redis_chunks = e.getRedisChunks();
          n.registrations = e.getRegistrations();
        }
        break;
      }
      default:
        return Status::InvalidArgument("response kind " + std::to_string(static_cast<int>(which)) + " is unknown");
    }
    return p;
  });
}

}  // namespace kvtier::wire
