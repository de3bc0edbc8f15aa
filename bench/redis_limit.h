// The machine limit the Redis tier is compared to: raw pipelined SET and GET of values of
// one size with plain hiredis (redisAppendCommandArgv + redisGetReply; no header, no
// checksum, no codec) against the same server, and redis-benchmark's figure for the same
// size when it is installed.
#ifndef KVTIER_BENCH_REDIS_LIMIT_H_
#define KVTIER_BENCH_REDIS_LIMIT_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvtier/status.h"

namespace kvtier::bench {

struct RedisEndpoint {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string username;
  std::string password;
};

struct RedisRawLimit {
  double set_gbps = 0;  // value bytes per second / 1e9, all connections together
  double set_new_gbps = 0;  // SETs that each create a key (0: not measured)
  double get_gbps = 0;
  double getrange_gbps = 0;  // the same reads as GETRANGEs of get_piece_bytes (0: not measured)
  uint64_t values = 0;  // per phase, all connections
  // What a tier reading this way is held to: the faster of GET and GETRANGEs.
  double read_gbps() const { return get_gbps > getrange_gbps ? get_gbps : getrange_gbps; }
};

// `connections` threads, each with its own connection, keep `depth` commands in flight
// (append depth, read depth) until each has moved `values_per_connection` values. Phases:
// - SET: keys key_prefix:raw:<conn>:<i mod depth>, overwritten in turn (deleted after).
// - SET new (with new_keys_tag non-empty): after the DEL of those keys, as many SETs that each
//   create a key, key_prefix:rawnew:<new_keys_tag>:<conn>:<i>, as a tier's saves of new
//   chunks do. These keys are left for the caller to delete (RedisDeletePrefix(key_prefix +
//   ":rawnew:")), so the memory they took is not handed to whatever the server does next.
// - GET: of `read_keys` when given (each value_bytes long; connection c reads keys c,
//   c + connections, ... in turn), else of the keys the SETs wrote. A server serves a value
//   it has just written faster than one written long ago among many (it is still in the
//   CPU's caches): a tier that reads what it wrote earlier is compared with raw GETs of
//   those same keys.
// - GETRANGE (when the tier would read such values in pieces, RedisReadsInPieces): the
//   same keys as GETRANGEs of get_piece_bytes, depth values' worth in flight.
Result<RedisRawLimit> MeasureRedisRawLimit(const RedisEndpoint& ep, uint64_t value_bytes, uint32_t connections,
                                           uint32_t depth, uint32_t values_per_connection,
                                           const std::string& key_prefix = "kvtbench",
                                           const std::vector<std::string>& read_keys = {},
                                           uint64_t get_piece_bytes = 0, const std::string& new_keys_tag = "");

// The same, through the tier's transport (RedisClient: its RESP writer, hiredis's reply
// parser, a sink that copies each value to a buffer) without chunk header, checksum or
// verification: what the tier itself costs on top of its transport. Batches of `depth`
// per call (send depth, read depth), as the tier sends them.
Result<RedisRawLimit> MeasureRedisClientLimit(const RedisEndpoint& ep, uint64_t value_bytes, uint32_t connections,
                                              uint32_t depth, uint32_t values_per_connection,
                                              const std::string& key_prefix = "kvtbench");

// redis-benchmark -h -p -d <bytes> -P 4 -c 4 -t get|set -n N --csv, requests/s turned into
// GB/s. NotFound when redis-benchmark is not installed.
Result<double> RedisBenchmarkGbps(const RedisEndpoint& ep, uint64_t value_bytes, const std::string& test, uint32_t requests);

// "host:port" (a trailing ":port" after the last colon). InvalidArgument otherwise.
Result<RedisEndpoint> ParseRedisEndpoint(const std::string& host_port);

// Up to `max` keys that start with `prefix` (SCAN).
Result<std::vector<std::string>> RedisScanKeys(const RedisEndpoint& ep, const std::string& prefix, size_t max);

// FLUSHALL on the server (a benchmark's own server, between phases).
Status RedisFlushAll(const RedisEndpoint& ep);

// Deletes the keys that start with `prefix` (SCAN + UNLINK): a benchmark's own keys on a
// server that may hold others'.
Status RedisDeletePrefix(const RedisEndpoint& ep, const std::string& prefix);

// A redis-server of the benchmark's own on a free loopback port, in a temporary directory;
// killed and removed on destruction. No persistence.
class LocalRedisServer {
 public:
  // NotFound when redis-server is not installed (the message names the package and --redis).
  static Result<std::unique_ptr<LocalRedisServer>> Start();
  ~LocalRedisServer();
  LocalRedisServer(const LocalRedisServer&) = delete;
  LocalRedisServer& operator=(const LocalRedisServer&) = delete;
  const RedisEndpoint& endpoint() const { return ep_; }

 private:
  LocalRedisServer() = default;
  pid_t pid_ = -1;
  std::string dir_;
  RedisEndpoint ep_;
};

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_REDIS_LIMIT_H_
