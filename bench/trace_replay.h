// Replays a workload trace (bench/trace.h) through the real Store: every block id
// becomes a span of tokens, and each request runs Lookup -> Load of the matched prefix
// -> Save of all its chunks, synchronously, as one engine would. The index, the keys,
// the placement (LRU leaves, demotion to NVMe, promotion) and the copies are the
// Store's own; only the KV bytes are synthetic.
//
//   tokens     block id b gives chunk_tokens token ids derived from (b, i) by a hash, so
//              equal ids give equal tokens and the Store's chained keys follow the
//              trace's prefix chains. One trace block is one Store chunk.
//   partial    the last block of a request may hold fewer tokens; it is stored as a whole
//              chunk (padded with the block's own derived tokens, so the same id always
//              maps to the same chunk) and its hit counts its real token count. It takes
//              a whole chunk of capacity, as the reference LRU counts it.
//   hits       a block hits when the Store loaded it: Lookup's matched prefix is exactly
//              "stored before, and every earlier block hit". Each hit is attributed to
//              the tier Lookup named for it.
//   bytes      the engine's blocks are filled from the block id before a save and
//              checked after a load (`verify`), so a chunk served with the wrong bytes
//              is counted.
//
// Thread-safety: ReplayTrace is self-contained (its own Store); call it from one thread.
#ifndef KVTIER_BENCH_TRACE_REPLAY_H_
#define KVTIER_BENCH_TRACE_REPLAY_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "bench/trace.h"
#include "kvtier/status.h"
#include "kvtier/store.h"
#include "kvtier/types.h"

namespace kvtier::bench {

// A model's KV shape (one TP rank holding the whole KV) and its active parameters, for
// sizing real bytes and for the modeled prefill time. "tiny" is a shape of 8 bytes per
// token that exercises the same code with little memory.
struct TraceModel {
  std::string name;
  KvShape shape;             // chunk_tokens is set by the replay
  double active_params = 0;  // weights touched per token (0 for tiny: no prefill model)
};
const std::vector<TraceModel>& TraceModels();
const TraceModel* FindTraceModel(const std::string& name);
// KV bytes of one token of this shape.
uint64_t TokenBytes(const KvShape& shape);

// Token ids of block `block_id`: `n` ids from a hash of (block_id, i), non-negative.
void BlockTokens(uint64_t block_id, uint32_t n, int32_t* out);

struct ReplayOptions {
  uint32_t chunk_tokens = 0;          // the trace's block size
  KvShape shape;                      // bytes per token of the replay (chunk_tokens overridden)
  uint64_t host_capacity_tokens = 0;  // 0: every unique block fits
  bool nvme = false;
  uint64_t nvme_capacity_tokens = 0;  // 0: every unique block fits
  std::string nvme_dir;               // data file and metadata go here (must exist)
  bool nvme_buffered = false;         // no O_DIRECT
  // Redis tier (write-back: what host eviction takes also goes to Redis), bounded by
  // redis.capacity_bytes. The server must be reachable; keys use redis_key_prefix.
  bool redis = false;
  uint64_t redis_capacity_tokens = 0;  // 0: every unique block fits
  std::string redis_address;           // host:port
  std::string redis_key_prefix = "kvt-trace";
  bool verify = true;
  uint32_t worker_threads = 2;
  // Called after each request with (done, total) from the replaying thread.
  std::function<void(size_t, size_t)> progress;
};

// The slot a chunk takes in the host tier (4 KiB header page + payload rounded to 4 KiB);
// an NVMe extent has the same size.
uint64_t ReplaySlotBytes(const KvShape& shape, uint32_t chunk_tokens);
// Chunks a capacity of `tokens` holds (0 tokens: `unique_blocks`, every block of the trace).
uint64_t CapacityChunks(uint64_t tokens, uint32_t chunk_tokens, uint64_t unique_blocks);

struct RoundStats {
  int64_t round = 0;
  uint64_t requests = 0;
  uint64_t blocks = 0, hit_blocks = 0;
  uint64_t tokens = 0, hit_tokens = 0;
};

struct ReplayResult {
  uint64_t requests = 0;
  uint64_t blocks = 0, hit_blocks = 0;
  uint64_t tokens = 0, hit_tokens = 0;
  uint64_t tier_hit_blocks[kTierCount] = {};
  uint64_t tier_hit_tokens[kTierCount] = {};
  uint64_t lookup_matched_chunks = 0;  // what Lookup reported (hits are what Load delivered)
  uint64_t load_short_chunks = 0;      // matched by Lookup but not loaded
  uint64_t verify_errors = 0;          // loaded chunks whose bytes were not the block's
  uint64_t save_failed_chunks = 0;     // a request longer than the host tier, typically
  uint64_t chunk_payload_bytes = 0;
  uint64_t slot_bytes = 0;
  uint64_t host_capacity_chunks = 0;
  uint64_t nvme_capacity_chunks = 0;
  uint64_t redis_capacity_chunks = 0;
  std::vector<RoundStats> rounds;  // by round, ascending; empty without rounds
  double open_seconds = 0;         // Store::Open (the host region is prefaulted)
  double replay_seconds = 0;
  StoreStats store;  // the Store's counters at the end
};

// InvalidArgument for a trace whose blocks do not match chunk_tokens or options the
// Store refuses; the Store's error for anything failing during the replay.
Result<ReplayResult> ReplayTrace(const Trace& trace, const ReplayOptions& options);

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_TRACE_REPLAY_H_
