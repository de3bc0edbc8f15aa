// RedisTier (T3): chunks in Redis or Redis Cluster, shared by every process that uses the
// same servers and key prefix.
//
// Key:   <prefix>:<namespace id hex>:<chunk key hex>   (nothing local: processes that never
//        talked find each other's chunks)
// Value: chunk format v1 (tiers/chunk_format.h): the 128-byte header, then the payload as
//        stored. With LZ4 the header says codec lz4, payload_bytes = compressed size,
//        raw_bytes = raw size; the checksum always covers the stored bytes. A chunk that LZ4
//        does not shrink is stored uncompressed. TTL: SET ... EX when ttl_seconds > 0.
//
// Every call is a batch, synchronous, and bounded by a deadline (op_timeout unless the
// caller passes one): the Store calls it from its worker threads. Per item the outcome is
// kOk, kNotFound (absent), kCorruption (a check failed: treated as a miss, the key is
// deleted), kUnavailable (breaker open, timeout, connection or server error) or kInvalid
// (the caller's item is malformed). Get never leaves unverified bytes in a destination
// under kOk. A large uncompressed value is read as pipelined GETRANGEs of get_piece_bytes
// straight into the destination (its header into a buffer of its own), then the header,
// identity, length and checksum are checked there; a value whose pieces do not add up to the
// expected length (LZ4, foreign, or overwritten or removed meanwhile), or that fails a check,
// is read again with one GET, which decides. A value read with GET is checked while it is
// still in the reader's buffer (or, when large, once received into the destination); an
// uncompressed payload is then copied and checksummed block by block (one pass), an LZ4
// payload is checksummed before it is decompressed into the destination. A destination may
// hold scratch after a non-kOk outcome. A caller may follow a value read in pieces as it
// arrives (Get's on_arrived) to start using its bytes early at its own risk; only
// on_verified, and kOk, say they are right.
//
// A CircuitBreaker (circuit_breaker.h) guards every call: a call with any unanswered item
// is a failure, a fully answered one a success. While open, Get/Exists return misses
// (kUnavailable / false) and Put drops the items (counted) without touching the network.
//
// Thread-safety: every method is thread-safe and may run concurrently. RedisTier has no
// lock of its own: the RedisClient pools connections (a caller checks one out per node for
// the length of a call), the breaker has its own mutex, and statistics are atomics.
// Buffers passed in items must stay valid (and unmodified) until the call returns.
#ifndef KVTIER_TIERS_REDIS_REDIS_TIER_H_
#define KVTIER_TIERS_REDIS_REDIS_TIER_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "index/chunk_key.h"
#include "kvtier/status.h"
#include "tiers/chunk_format.h"
#include "tiers/redis/circuit_breaker.h"
#include "tiers/redis/redis_client.h"

namespace kvtier {

enum class RedisCompression : uint8_t { kNone, kLz4 };

struct RedisTierOptions {
  RedisMode mode = RedisMode::kStandalone;
  std::vector<std::string> seeds;  // "host:port"; standalone: the server; cluster: any nodes
  std::string username;            // ACL user (needs password); empty: the default user
  std::string password;            // empty: no AUTH
  uint32_t pool_size = 8;          // idle connections kept per node; each keeps a read buffer
                                   // as large as the largest value it received
  std::chrono::milliseconds connect_timeout{500};
  // Deadline of one Put/Get/Exists/Remove call: op_timeout plus op_timeout_per_mib for each
  // MiB of values it moves (the default allows ~0.5 GB/s before a large batch times out).
  std::chrono::milliseconds op_timeout{2000};
  std::chrono::microseconds op_timeout_per_mib{2000};
  uint32_t ttl_seconds = 0;                     // 0: keys do not expire
  RedisCompression compression = RedisCompression::kNone;
  std::string key_prefix = "kvt";
  CircuitBreakerOptions breaker;
  uint32_t max_batch_values = 64;               // values per pipelined round trip
  // Value bytes in flight per connection within a batch (RedisClientOptions): with the
  // whole batch requested at once, the server builds every reply before the client has
  // read the first, and serves large GETs at about half speed on a busy machine.
  uint64_t max_in_flight_bytes = 8ull << 20;
  uint64_t max_batch_bytes = 256ull << 20;      // value bytes per pipelined round trip
  // Get reads an uncompressed value longer than 2 x get_piece_bytes as GETRANGEs of
  // get_piece_bytes each (0: always one GET). Redis copies a GET reply into one output
  // block as large as the value; jemalloc, Redis's allocator, hands blocks of 8 MiB and more
  // back to the kernel when they are freed, so each large GET faults its reply's pages in
  // again, and a GET of 32 MiB runs at about half the speed of the same bytes in 1 MiB
  // ranges (docs/benchmarks.md, "Redis tier"). 0 or at least 64 KiB. One more GETRANGE, of
  // the byte after the expected length, must come back empty: a longer value is not the one
  // expected (a GET would see its length).
  uint64_t get_piece_bytes = 1ull << 20;
  uint32_t max_rounds = 5;                      // cluster: redirect/retry rounds per call
};

enum class RedisItemResult : uint8_t { kOk, kNotFound, kCorruption, kUnavailable, kInvalid };
const char* RedisItemResultName(RedisItemResult r);

// Whether Get reads a value of `value_bytes` (header + payload) in GETRANGEs of
// `piece_bytes` rather than with one GET (RedisTierOptions::get_piece_bytes).
inline bool RedisReadsInPieces(uint64_t value_bytes, uint64_t piece_bytes) {
  return piece_bytes > 0 && value_bytes > 2 * piece_bytes;
}

struct RedisPutItem {
  NamespaceId ns;
  ChunkKey key;
  std::span<const uint8_t> header;   // kChunkHeaderBytes: the chunk's encoded header (a host slot's)
  std::span<const uint8_t> payload;  // the raw payload (header's raw_bytes long)
  // Out.
  RedisItemResult result = RedisItemResult::kUnavailable;
  Status status;
};

struct RedisGetItem {
  ChunkIdentity id;         // what the caller expects: namespace, key, shape
  std::span<uint8_t> dst;   // ChunkPayloadBytes(id.shape) bytes: the raw payload goes here
  // Out.
  RedisItemResult result = RedisItemResult::kUnavailable;
  Status status;
};

struct RedisExistsItem {
  NamespaceId ns;
  ChunkKey key;
  bool exists = false;  // out: false also when Redis could not be asked
};

struct RedisTierStats {
  uint64_t puts = 0, puts_ok = 0;       // items
  uint64_t gets = 0, hits = 0, misses = 0, corrupt = 0;
  uint64_t exists_probes = 0, exists_hits = 0;
  uint64_t removes = 0;
  uint64_t unavailable = 0;             // items that got no answer (breaker open included)
  uint64_t errors = 0, timeouts = 0;    // calls that failed (as the breaker counts them)
  uint64_t bytes_out = 0;               // value bytes written (header + stored payload)
  uint64_t bytes_in = 0;                // value bytes read
  uint64_t piece_rereads = 0;           // values read in pieces that had to be read again whole
  uint64_t raw_bytes_saved = 0;         // payload bytes before the codec, of saved items
  uint64_t stored_bytes_saved = 0;      // and after it
  double compression_ratio = 1.0;       // raw / stored so far (1 without compression)
  BreakerCounters breaker;
  RedisClientStats client;
};

class RedisTier {
 public:
  // Validates the options and connects (cluster: loads the slot map). A wrong password is
  // an error here (InvalidArgument naming AUTH); a standalone server that is down is not:
  // the tier opens with the breaker deciding when it is back.
  static Result<std::unique_ptr<RedisTier>> Open(const RedisTierOptions& options);
  ~RedisTier();
  RedisTier(const RedisTier&) = delete;
  RedisTier& operator=(const RedisTier&) = delete;

  // A zero deadline means now + op_timeout (+ op_timeout_per_mib per MiB of values).
  // Saves each item (SET key value [EX ttl]). Returns OK when every item is kOk, else the
  // first item's failure.
  Status Put(std::span<RedisPutItem> items, RedisDeadline deadline = {});
  // Loads each item into its dst (see the file comment for the outcomes). `on_verified`,
  // when given, is called with an item's index as soon as its bytes are in dst and have
  // passed every check (the item will be kOk), on the calling thread, before Get returns:
  // the caller can use that item while the values after it are still arriving.
  // `on_arrived`, when given, is called with (index, n) as a value read in pieces arrives:
  // dst's first n bytes hold the payload as received, NOT yet checked, and stay as they are
  // unless a later call for the index says 0 (the value is read again: nothing reported
  // before holds). n grows from call to call. It lets a caller start copying a large value
  // on while the rest of it arrives, provided it uses nothing before on_verified. Neither
  // callback may call into this tier.
  void Get(std::span<RedisGetItem> items, RedisDeadline deadline = {},
           const std::function<void(size_t)>& on_verified = nullptr,
           const std::function<void(size_t, uint64_t)>& on_arrived = nullptr);
  // One EXISTS per item, pipelined: one round trip per node. All false when unavailable.
  void Exists(std::span<RedisExistsItem> items, RedisDeadline deadline = {});
  // Best effort DEL.
  Status Remove(const NamespaceId& ns, const ChunkKey& key, RedisDeadline deadline = {});

  // The Redis key of a chunk.
  std::string KeyFor(const NamespaceId& ns, const ChunkKey& key) const;
  RedisTierStats Stats() const;
  BreakerState breaker_state() const { return breaker_.state(); }
  const RedisTierOptions& options() const { return options_; }

 private:
  RedisTier(const RedisTierOptions& options, std::unique_ptr<RedisClient> client);
  RedisDeadline DeadlineOr(RedisDeadline d, uint64_t value_bytes) const;
  // Runs commands in slices of max_batch_values values / max_batch_bytes (value_bytes[i] is
  // the size of command i's value; value_of[i], when given, the value command i reads part
  // of: a slice never splits a value's commands).
  void Run(std::span<RedisCommand> commands, std::span<const uint64_t> value_bytes, RedisDeadline deadline,
           std::span<const size_t> value_of = {});
  void DeleteKeys(const std::vector<std::string>& keys, RedisDeadline deadline);

  // Constant after Open.
  const RedisTierOptions options_;
  const std::unique_ptr<RedisClient> client_;

  CircuitBreaker breaker_;  // thread-safe

  std::atomic<uint64_t> puts_{0}, puts_ok_{0}, gets_{0}, hits_{0}, misses_{0}, corrupt_{0}, exists_probes_{0},
      exists_hits_{0}, removes_{0}, unavailable_{0}, bytes_out_{0}, bytes_in_{0}, piece_rereads_{0}, raw_saved_{0},
      stored_saved_{0};
};

}  // namespace kvtier

#endif  // KVTIER_TIERS_REDIS_REDIS_TIER_H_
