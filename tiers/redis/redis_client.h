// RedisClient: pipelined batches of commands against one Redis server or a Redis Cluster.
//
// A batch is a span of RedisCommand. The client groups it by node (one node in standalone
// mode; the slot owner in cluster mode), writes every command of every group, then reads
// the replies group by group. Sending is our own RESP writer over sendmsg() (a value may be
// given as two pieces, e.g. a chunk header and a payload in a host slot, and is never copied
// into a buffer); replies are parsed by hiredis's redisReader with reply-object functions of
// our own. A large bulk string for a command with a BulkSink bypasses the reader: it is
// read from the socket straight into the sink's buffers (no user-space copy; the sink then
// verifies it in place), waking once 512 KiB or the rest of it has arrived (SO_RCVLOWAT). A smaller one is handed to the sink while it is still in the
// reader's buffer instead of being copied into a reply object first.
//
// Flow: a node's commands go out as one pipeline; with max_in_flight_bytes, as a sliding
// window over it (the next commands are written as replies come back), so a server holds
// a bounded amount of unread replies for a connection instead of a whole batch of values.
//
// Deadlines: every call takes a deadline for the whole batch. Sockets are non-blocking and
// every wait is a poll() bounded by the time left, so a call returns by its deadline (plus
// scheduling slack) when Redis hangs (SIGSTOP) or is gone. A connection that timed out or
// failed mid-batch is closed, never reused: its protocol state is unknown.
//
// Cluster: the slot map (16384 slots -> node) comes from CLUSTER SLOTS of any reachable
// node (seeds first, then known nodes). MOVED updates the slot's owner and schedules a
// refresh; ASK retries that command once on the named node after ASKING; TRYAGAIN,
// CLUSTERDOWN, LOADING and connection errors retry after a short pause, with a topology
// refresh first, for at most max_rounds rounds and never past the deadline.
//
// Thread-safety: every public method is thread-safe. topo_mu_ (shared) guards the node
// list and slot map; each node's pool of idle connections has its own mutex. Checkout
// takes an idle connection or opens a new one (never waits, so a caller holding
// connections to several nodes cannot deadlock with another); Return keeps at most
// pool_size idle and drops the node's idle ones when the returned one failed (a restarted
// server leaves them all stale). refresh_mu_ lets one thread at a time refresh the
// topology. A checked-out connection belongs to one thread until it is returned.
#ifndef KVTIER_TIERS_REDIS_REDIS_CLIENT_H_
#define KVTIER_TIERS_REDIS_REDIS_CLIENT_H_

#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/status.h"

struct redisReader;

namespace kvtier {

using RedisClock = std::chrono::steady_clock;
using RedisDeadline = RedisClock::time_point;

enum class RedisMode : uint8_t { kStandalone, kCluster };

struct RedisClientOptions {
  RedisMode mode = RedisMode::kStandalone;
  std::vector<std::string> seeds;  // "host:port"; standalone uses the first
  std::string username;            // ACL user; empty: AUTH <password> (the default user)
  std::string password;            // empty: no AUTH
  uint32_t pool_size = 8;          // idle connections kept per node (bursts open more)
  std::chrono::milliseconds connect_timeout{1000};
  uint32_t max_rounds = 5;         // cluster: redirect/retry rounds per batch
  size_t read_chunk_bytes = 1 << 20;  // bytes per read() from a socket
  // Per connection, commands are written only while those written and not yet answered
  // weigh less than this (RedisCommand::weight; at least one is always in flight); each
  // reply read makes room for more. 0: a batch is written whole before its replies are read.
  uint64_t max_in_flight_bytes = 0;
};

// CRC16 (XMODEM) of the key's hash tag (the part between the first '{' and the next '}'
// when that is non-empty) or of the whole key, modulo 16384.
uint16_t RedisKeySlot(std::string_view key);

// One parsed reply. Strings that went to a BulkSink are not stored (sunk = true).
struct RedisReply {
  enum class Type : uint8_t { kString, kArray, kInteger, kNil, kStatus, kError };
  Type type = Type::kNil;
  long long integer = 0;
  std::string str;  // string, status or error text
  bool sunk = false;
  std::vector<std::unique_ptr<RedisReply>> elements;
};

// Receives a top-level bulk-string reply, one of two ways:
// - Direct: for a large value (64 KiB or more) the client first asks Direct(len, iov). A
//   sink that returns true has set iov to buffers covering exactly len bytes; the client
//   receives the value into them straight from the socket and then calls OnDirect(len).
// - Otherwise OnBulk(data, len) with the value in the reader's buffer (`data` is valid only
//   during the call).
// A sink gets exactly one of OnDirect or OnBulk per reply, or neither when the reply is not a
// bulk string or the connection fails first (buffers given to Direct may then hold part of
// the value).
class BulkSink {
 public:
  virtual bool Direct(size_t /*len*/, std::vector<iovec>* /*iov*/) { return false; }
  virtual void OnDirect(size_t /*len*/) {}
  virtual void OnBulk(const uint8_t* data, size_t len) = 0;

 protected:
  ~BulkSink() = default;
};

// An argument: `head` followed by `tail` (tail is usually empty; a chunk value is its
// encoded header followed by its payload). Both must outlive the call.
struct RedisArg {
  std::string_view head;
  std::string_view tail;
  RedisArg(std::string_view h) : head(h) {}  // NOLINT: implicit for brevity
  RedisArg(std::string_view h, std::string_view t) : head(h), tail(t) {}
  RedisArg(const char* h) : head(h) {}  // NOLINT
};

struct RedisCommand {
  std::vector<RedisArg> args;  // e.g. {"GET", key}
  std::string_view key;        // routing key in cluster mode (empty: any node)
  BulkSink* sink = nullptr;    // receives a bulk-string reply instead of reply->str
  uint64_t weight = 0;         // value bytes it moves either way (max_in_flight_bytes)
  // Out: a reply (possibly an error reply from Redis) with OK, or no reply: TimedOut
  // (deadline) or IOError (connection, topology or retry budget), naming the node.
  std::unique_ptr<RedisReply> reply;
  Status status;
};

struct RedisClientStats {
  uint64_t connects = 0;
  uint64_t connect_failures = 0;
  uint64_t moved = 0;
  uint64_t asks = 0;
  uint64_t retries = 0;
  uint64_t topology_refreshes = 0;
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t direct_replies = 0;  // bulk replies read straight into a sink's buffers (BulkSink::Direct)
};

class RedisClient {
 public:
  // Validates options; in cluster mode loads the slot map (Unavailable-style IOError when no
  // seed answers). Does not require standalone Redis to be up: a down server is the breaker's
  // business, a wrong password is reported by Ping().
  static Result<std::unique_ptr<RedisClient>> Open(const RedisClientOptions& options);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Runs the batch (see the file comment). Returns OK when every command got a reply,
  // else the first command's failure; per-command results are in the commands.
  Status Execute(std::span<RedisCommand> commands, RedisDeadline deadline);

  // PING on a fresh connection to every master: errors such as a wrong password come back
  // as they are ("AUTH failed: WRONGPASS ...").
  Status Ping(RedisDeadline deadline);

  RedisClientStats Stats() const;
  RedisMode mode() const { return options_.mode; }
  // Masters currently known ("host:port").
  std::vector<std::string> Masters() const;

  class Connection;
  struct Node;

 private:
  explicit RedisClient(const RedisClientOptions& options);
  std::shared_ptr<Node> NodeFor(const std::string& addr);  // finds or adds; takes topo_mu_
  std::shared_ptr<Node> NodeForSlot(uint16_t slot);
  Status RefreshTopology(RedisDeadline deadline, bool force);
  Status LoadSlotsFrom(const std::shared_ptr<Node>& node, RedisDeadline deadline);
  Result<std::unique_ptr<Connection>> Checkout(Node* node, RedisDeadline deadline);
  void Return(Node* node, std::unique_ptr<Connection> conn);
  Result<std::unique_ptr<Connection>> Connect(const Node& node, RedisDeadline deadline);

  // Constant after Open.
  const RedisClientOptions options_;

  mutable std::shared_mutex topo_mu_;
  std::vector<std::shared_ptr<Node>> nodes_;  // guarded by topo_mu_: every node ever seen
  std::vector<uint16_t> slots_;               // guarded by topo_mu_: slot -> index in nodes_ (kNoNode)
  std::atomic<bool> refresh_wanted_{false};

  std::mutex refresh_mu_;                      // one refresh at a time
  RedisClock::time_point last_refresh_{};      // guarded by refresh_mu_

  mutable std::atomic<uint64_t> connects_{0}, connect_failures_{0}, moved_{0}, asks_{0}, retries_{0},
      refreshes_{0}, bytes_sent_{0}, bytes_received_{0}, direct_replies_{0};
};

}  // namespace kvtier

#endif  // KVTIER_TIERS_REDIS_REDIS_CLIENT_H_
