// kvtierd's wire: frames on a Unix socket, and the messages of daemon/protocol.capnp as
// plain C++ values.
//
// A frame is a 4-byte little-endian length, then a Cap'n Proto message as a flat array.
// Reads are exact: ReadFrame takes the frame's bytes and nothing after them, because the
// handshake passes the host region's memfd (SCM_RIGHTS, on one byte) right behind the
// HelloReply, and ReceiveFd must find that byte still in the socket. Every read and write
// has a deadline (poll), retries EINTR, and writes never raise SIGPIPE (MSG_NOSIGNAL).
// Sockets may be blocking or not; the calls never block past their deadline.
//
// Decode* take bytes from the other side of the socket and trust none of them: sizes are
// bounded before anything is allocated, Cap'n Proto's traversal and nesting limits apply,
// every enum value and union tag is checked, and a malformed message is InvalidArgument,
// never an exception or a crash (tests/fuzz/daemon_request_fuzz.cc drives DecodeRequest).
// Only wire.cc includes the generated protocol header.
//
// Thread-safety: free functions on values; a socket is used by one thread at a time.
#ifndef KVTIER_DAEMON_WIRE_H_
#define KVTIER_DAEMON_WIRE_H_

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kvtier/status.h"
#include "kvtier/store.h"
#include "kvtier/types.h"

namespace kvtier::wire {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;
inline constexpr Deadline kNoDeadline = Deadline::max();

inline constexpr uint32_t kProtocolVersion = 1;  // protocol.capnp's protocolVersion
// The most tokens one request may name (64 MiB of them); the Store's own
// max_request_tokens is usually far lower and is checked by the Store.
inline constexpr uint64_t kMaxRequestTokens = uint64_t{16} << 20;
inline constexpr uint64_t kMaxExtraKeys = uint64_t{1} << 20;
// A frame carries at most the tokens above plus room for everything else.
inline constexpr uint64_t kMaxFrameBytes = kMaxRequestTokens * sizeof(int32_t) + (uint64_t{16} << 20);
inline constexpr uint64_t kMaxHelloBytes = 64 << 10;  // Hello and HelloReply frames
inline constexpr size_t kMaxTextBytes = 4096;          // a name, revision, tenant, token...
inline constexpr size_t kMaxStatusMessageBytes = 16 << 10;  // longer messages are cut on encode
inline constexpr uint64_t kMaxNamespaces = uint64_t{1} << 16;  // in a ListNamespaces reply

// ---- frames ------------------------------------------------------------------------

// Writes one frame. TimedOut past the deadline; IOError when the socket fails (EPIPE:
// the peer is gone).
Status WriteFrame(int fd, std::span<const uint8_t> message, Deadline deadline);
// Reads one frame of at most max_bytes. Closed when the peer closed the socket before
// the frame began; IOError when it closed or failed mid-frame; InvalidArgument when the
// length is over max_bytes (or not whole words); TimedOut past the deadline.
Result<std::vector<uint8_t>> ReadFrame(int fd, uint64_t max_bytes, Deadline deadline);
// Waits until the socket has bytes to read or is closed (then reading says which).
Status WaitReadable(int fd, Deadline deadline);
// Sends `fd_to_send` on one byte (SCM_RIGHTS). The receiver owns its copy.
Status SendFd(int sock, int fd_to_send, Deadline deadline);
// Receives exactly the one byte SendFd sends and the descriptor it carries (close-on-exec).
Result<int> ReceiveFd(int sock, Deadline deadline);

// ---- listening ---------------------------------------------------------------------

// The accept loop of a listening socket that another thread stops through an eventfd (or
// any descriptor that turns readable). Waits on both; returns the next accepted connection
// (close-on-exec, non-blocking; the caller owns it), or -1 once `wake_fd` is readable,
// which wins when both are. Retries EINTR, and backs off (10 ms) when poll fails or when
// accept4 is out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) rather than
// spin on a socket that stays ready; other accept4 failures (a connection reset before it
// was taken) are passed over.
int AcceptUntilWoken(int listen_fd, int wake_fd);

// ---- handshake ---------------------------------------------------------------------

struct Hello {
  uint32_t protocol_version = kProtocolVersion;
  std::string tenant;
  std::string token;
  uint64_t session_id = 0;
  int32_t client_pid = 0;
};

struct HelloReply {
  Status status;
  uint64_t region_bytes = 0;
  std::string tenant;
  std::string daemon_version;
  bool session_existed = false;
};

Result<std::vector<uint8_t>> EncodeHello(const Hello& hello);
Result<Hello> DecodeHello(std::span<const uint8_t> bytes);
Result<std::vector<uint8_t>> EncodeHelloReply(const HelloReply& reply);
Result<HelloReply> DecodeHelloReply(std::span<const uint8_t> bytes);

// ---- requests and responses --------------------------------------------------------

// Every DaemonClient operation, as the request's union names it.
enum class Op : uint8_t {
  kRegisterNamespace,
  kUnregisterNamespace,
  kLookup,
  kCancelPrefetch,
  kSetPrefillRate,
  kReportPrefill,
  kPinPrefix,
  kUnpinPrefix,
  kReserveSave,
  kCommitSave,
  kAbortSave,
  kAcquireLoad,
  kReleaseLoad,
  kStats,
  kListNamespaces,
};
const char* OpName(Op op) noexcept;

// A request as plain values. Which fields mean something depends on op (see each).
struct Request {
  uint64_t id = 0;
  Op op = Op::kStats;
  NamespaceSpec spec;                // kRegisterNamespace
  uint32_t ns = 0;                   // the daemon's namespace handle: every op on a namespace
  std::vector<int32_t> tokens;       // kLookup, kPinPrefix, kUnpinPrefix, kReserveSave, kAcquireLoad
  std::vector<ExtraKey> extra_keys;  // the same ops
  LookupOptions lookup;              // kLookup (deadline in whole milliseconds)
  // kCancelPrefetch: the prefetch id; kCommitSave, kAbortSave, kReleaseLoad: the lease id;
  // kUnregisterNamespace: unused (ns names it).
  uint64_t target = 0;
  uint64_t count = 0;  // kReportPrefill: tokens; kCommitSave: chunks written
  double value = 0;    // kSetPrefillRate: tokens per second; kReportPrefill: seconds
};

// What an OK response carries.
enum class ResultKind : uint8_t {
  kNone,        // nothing (unregister, cancel, rates, unpin, abort, release)
  kHandle,      // number: the daemon's namespace handle
  kLookup,      // lookup
  kPinned,      // number: chunks pinned
  kSaveLease,   // save_lease
  kStored,      // number: leading chunks stored
  kLoadLease,   // load_lease
  kStats,       // stats
  kNamespaces,  // namespaces
};
ResultKind ResultOf(Op op) noexcept;

struct Response {
  uint64_t id = 0;
  Status status;
  ResultKind kind = ResultKind::kNone;  // OK responses only; encoded from the request's op
  uint64_t number = 0;
  uint32_t stored_on_error = 0;  // a failed kCommitSave: leading chunks stored all the same
  LookupResult lookup;
  SaveLease save_lease;
  LoadLease load_lease;
  StoreStats stats;
  std::vector<NamespaceInfo> namespaces;
};

// InvalidArgument when the request is over the limits above (tokens, extra keys, texts).
Result<std::vector<uint8_t>> EncodeRequest(const Request& request);
// Validates everything (sizes, enum values, union tags, finite numbers) before building
// the value; InvalidArgument naming what is wrong otherwise.
Result<Request> DecodeRequest(std::span<const uint8_t> bytes);
Result<std::vector<uint8_t>> EncodeResponse(const Response& response);
Result<Response> DecodeResponse(std::span<const uint8_t> bytes);

// A Status with this code and message (Internal for a number outside Status::Code).
Status StatusFromCode(int code, std::string_view message);

}  // namespace kvtier::wire

#endif  // KVTIER_DAEMON_WIRE_H_
