// Store: the embedded cache. See kvtier/store.h for the contract.
//
// Parts and locks (acquire in this order, never the reverse):
//   close_mu_      shared by every public call, exclusive in Close: nothing runs
//                  against a half-closed store.
//   placement_mu_  slot allocation, eviction, and publishing a chunk (host key map +
//                  index residency change together under it, so the two always agree).
//   reg_mu_        namespaces and registrations.
//   RadixIndex and HostTier locks: internal, held briefly.
// Loads never take placement_mu_: they pin their chunks in the index (a pinned chunk
// is never evicted, so its slot stays put) and copy without locks.
#include "kvtier/store.h"

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>
#include <tuple>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include "common/sync_point.h"
#include "index/chunk_key.h"
#include "index/radix_index.h"
#include "kernels/mover.h"
#include "store/daemon_client.h"
#include "store/gpu.h"
#include "store/task_pool.h"
#include "store/ticket.h"
#include "tiers/chunk_format.h"
#include "tiers/host/host_tier.h"
#include "tiers/nvme/nvme_tier.h"
#include "tiers/redis/redis_tier.h"

namespace kvtier {
namespace {

// Everything that registrations of one NamespaceSpec share.
struct NamespaceState {
  NamespaceState(const NamespaceSpec& s, const NamespaceId& i, LogicalClock* clock)
      : spec(s), id(i), payload_bytes(ChunkPayloadBytes(s.shape)), index(clock) {}
  const NamespaceSpec spec;
  const NamespaceId id;
  const uint64_t payload_bytes;
  RadixIndex index;
  std::atomic<double> prefill_tps{0};  // the engine's prefill tokens per second; 0: unknown
};

struct Registration {
  std::shared_ptr<NamespaceState> ns;
  std::optional<Mover> mover;      // the engine's memory; none for lease-only registrations
  std::shared_ptr<GpuCopier> gpu;  // engine memory on a GPU: copies run there; null otherwise
};

// A queued save or load. Called once: with abort=false by a worker to do the work, or
// with abort=true when the store closes first (it must release what it holds).
using Job = std::function<void(bool abort)>;

struct Counters {
  std::atomic<uint64_t> lookups{0}, lookup_hit_chunks{0}, lookup_miss_chunks{0};
  std::atomic<uint64_t> host_hit_chunks{0}, nvme_hit_chunks{0}, redis_hit_chunks{0};
  std::atomic<uint64_t> saves{0}, saved_chunks{0}, save_dedup_chunks{0}, save_failed_chunks{0};
  std::atomic<uint64_t> loads{0}, loaded_chunks{0}, load_failed_chunks{0};
  std::atomic<uint64_t> bytes_saved{0}, bytes_loaded{0}, evictions{0}, corrupt_chunks{0};
  std::atomic<uint64_t> demotions{0}, write_throughs{0}, promotions{0}, recovered_chunks{0};
  std::atomic<uint64_t> redis_saved{0}, redis_dropped{0}, redis_loaded{0}, redis_probe_hits{0}, redis_misses{0};
  std::atomic<uint64_t> admission_rejected{0}, prefetches{0}, prefetch_skipped{0}, prefetched_chunks{0},
      planner_skipped{0}, redis_evictions{0};
  std::atomic<uint64_t> gpu_saved{0}, gpu_loaded{0};
};

void Add(std::atomic<uint64_t>& c, uint64_t v) { c.fetch_add(v, std::memory_order_relaxed); }

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The planner's per-tier bandwidth estimates (bytes per second of one request's copies):
// configured values until the first measurement, then a moving average of measured
// seconds per byte — averaging time, not speed, so that a tier turning slow shows at once.
// Thread-safety: mu_ guards everything.
class TierRates {
 public:
  void Init(const PlannerConfig& c) {
    std::lock_guard<std::mutex> l(mu_);
    spb_[static_cast<int>(TierId::kGpu)] = 1 / (c.host_gbps * 1e9);
    spb_[static_cast<int>(TierId::kHost)] = 1 / (c.host_gbps * 1e9);
    spb_[static_cast<int>(TierId::kNvme)] = 1 / (c.nvme_gbps * 1e9);
    spb_[static_cast<int>(TierId::kRedis)] = 1 / (c.redis_gbps * 1e9);
  }
  void Observe(TierId t, uint64_t bytes, double seconds) {
    if (seconds <= 0 || bytes == 0) return;
    const double v = seconds / static_cast<double>(bytes);
    std::lock_guard<std::mutex> l(mu_);
    const int i = static_cast<int>(t);
    spb_[i] = measured_[i] ? 0.8 * spb_[i] + 0.2 * v : v;
    measured_[i] = true;
  }
  double BytesPerSecond(TierId t) const {
    std::lock_guard<std::mutex> l(mu_);
    return 1 / spb_[static_cast<int>(t)];
  }

 private:
  mutable std::mutex mu_;
  std::array<double, kTierCount> spb_{};  // seconds per byte
  std::array<bool, kTierCount> measured_{};
};

// How often each chunk key was asked for (lookups), approximately: a fixed table of
// (fingerprint, count) slots where a newcomer takes over its slot. Counts saturate at 3.
// Thread-safety: mu_ guards the table.
class SeenSet {
 public:
  explicit SeenSet(size_t slots) : table_(slots) {}
  void Ask(std::span<const ChunkKey> keys) {
    std::lock_guard<std::mutex> l(mu_);
    for (const ChunkKey& k : keys) {
      Slot& s = table_[k.lo % table_.size()];
      if (s.fp != k.hi) s = Slot{k.hi, 0};
      if (s.count < 3) ++s.count;
    }
  }
  uint32_t Asks(const ChunkKey& k) const {
    std::lock_guard<std::mutex> l(mu_);
    const Slot& s = table_[k.lo % table_.size()];
    return s.fp == k.hi ? s.count : 0;
  }

 private:
  struct Slot {
    uint64_t fp = 0;
    uint8_t count = 0;
  };
  mutable std::mutex mu_;
  std::vector<Slot> table_;
};

}  // namespace

struct Store::Impl {
  explicit Impl(const StoreConfig& c) : config(c) {}

  // ---- constant after Open
  const StoreConfig config;
  LogicalClock clock;

  mutable std::shared_mutex close_mu;
  bool closed = false;                      // guarded by close_mu
  std::unique_ptr<HostTier> host;           // reset by Close under close_mu (exclusive)
  std::unique_ptr<NvmeTier> nvme;           // null when the NVMe tier is off; reset by Close
  std::unique_ptr<TaskPool> io_pool;        // write-through writers; with nvme; reset by Close
  std::unique_ptr<RedisTier> redis;         // null when the Redis tier is off; reset by Close
  std::unique_ptr<GpuContext> gpu;          // host registration and the HBM tier; reset by Close
  std::atomic<uint64_t> redis_used{0};      // value bytes of the chunks indexed as in Redis
  std::vector<std::pair<NamespaceId, ChunkKey>> redis_garbage;  // to DEL (capacity); guarded by placement_mu

  std::mutex placement_mu;

  mutable std::shared_mutex reg_mu;
  std::unordered_map<NamespaceId, std::shared_ptr<NamespaceState>, ChunkKeyHash> namespaces;  // guarded by reg_mu
  std::unordered_map<uint32_t, std::shared_ptr<Registration>> registrations;                  // guarded by reg_mu
  uint32_t next_handle = 1;                                                                    // guarded by reg_mu

  std::mutex queue_mu;
  std::condition_variable queue_cv;
  std::deque<Job> queue;  // guarded by queue_mu
  bool stopping = false;  // guarded by queue_mu
  std::vector<std::thread> workers;

  Counters n;

  std::mutex inflight_mu;
  std::condition_variable inflight_cv;                          // a claim was released
  std::unordered_set<ChunkKey, ChunkKeyHash> inflight;          // guarded by inflight_mu

  std::mutex prefetch_mu;
  std::unordered_map<uint64_t, std::shared_ptr<TicketState>> prefetches;  // running; guarded by prefetch_mu
  uint64_t next_prefetch = 1;                                             // guarded by prefetch_mu

  TierRates rates;  // the planner's bandwidth estimates; thread-safe
  std::array<std::atomic<uint64_t>, kTierCount> queued_bytes{};  // loads submitted, not yet done

  mutable std::mutex sticky_mu;
  // PinPrefix pins: (namespace, key) -> calls; guarded by sticky_mu.
  std::map<std::tuple<NamespaceState*, uint64_t, uint64_t>, uint32_t> sticky;
  std::unique_ptr<SeenSet> seen;  // asks per chunk, for second-hit admission; null when off

  // ---- helpers
  void WorkerLoop();
  void Enqueue(Job job);
  Result<std::shared_ptr<Registration>> Find(NamespaceHandle h) const;
  struct CopyRequest;
  Result<std::shared_ptr<CopyRequest>> MakeCopyRequest(NamespaceHandle h, std::span<const int32_t> tokens,
                                                       std::span<const int32_t> block_ids,
                                                       std::span<const ExtraKey> extra_keys, bool keep_tokens);
  // The registration of h and the chunk keys of tokens, for calls that name no blocks.
  Status ResolveKeys(NamespaceHandle h, std::span<const int32_t> tokens, std::span<const ExtraKey> extras,
                     std::shared_ptr<Registration>* reg, std::vector<ChunkKey>* keys) const {
    Result<std::shared_ptr<Registration>> r = Find(h);
    if (!r.ok()) return r.status();
    *reg = std::move(*r);
    return PrepareRequest(**reg, tokens, {}, extras, false, keys);
  }
  Status PrepareRequest(const Registration& r, std::span<const int32_t> tokens, std::span<const int32_t> block_ids,
                        std::span<const ExtraKey> extras, bool need_blocks, std::vector<ChunkKey>* keys) const;
  Result<SlotId> AllocateSlot(uint64_t payload_bytes);
  std::vector<std::pair<std::shared_ptr<NamespaceState>, LeafCandidate>> LruLeaves(TierId tier,
                                                                                   size_t per_namespace);
  Result<NvmeExtent> AllocateExtent(uint64_t payload_bytes);  // requires placement_mu
  void FreeRemoved(NamespaceState& ns, const std::vector<RemovedChunk>& removed);  // requires placement_mu
  void DropRedisCopy(NamespaceState& ns, const ChunkKey& key);  // requires placement_mu
  void DeleteRedisGarbage();
  bool MakeRoomInRedis(uint64_t bytes);
  void DemoteBatch(std::unique_lock<std::mutex>& placement,
                   const std::vector<std::pair<std::shared_ptr<NamespaceState>, LeafCandidate>>& leaves);
  class WritePipe;
  bool HandToNvme(WritePipe& pipe, NamespaceState& ns, const std::vector<ChunkKey>& keys, size_t i,
                  std::vector<bool>* kept_in_host, Status* st);  // requires placement_mu
  uint32_t FinishWriteThrough(WritePipe& pipe, NamespaceState& ns, const std::vector<ChunkKey>& keys, size_t count,
                              const std::vector<bool>& kept_in_host, Status* st);
  NvmeTier::WriteItem MakeWriteItem(NamespaceState& ns, const ChunkKey& key, const std::optional<ChunkKey>& parent,
                                    SlotId slot, const NvmeExtent& extent);
  // Second-hit admission: may `key` go down to `tier`?
  bool Admits(TierId tier, const ChunkKey& key) {
    const bool second_hit = tier == TierId::kNvme ? config.admission.nvme_second_hit : config.admission.redis_second_hit;
    if (!second_hit || !seen || seen->Asks(key) >= 2) return true;
    Add(n.admission_rejected, 1);
    return false;
  }
  void SaveToRedis(NamespaceState& ns, std::span<const ChunkKey> keys);
  void DemoteToRedis(std::unique_lock<std::mutex>& placement, NamespaceState& ns, const ChunkKey& key);
  // Chunks of a batch from Redis while the batch is still arriving, each with (key index,
  // host slot). `verified`: a chunk of the batch's leading run of verified chunks, as soon
  // as its bytes are checked in its slot (a chunk after one that failed is not passed).
  // `arrived`, n: the first n payload bytes of a chunk read in pieces are in its slot as
  // received, NOT yet checked; 0: they no longer hold (it is read again). Either may be empty.
  struct EarlyChunk {
    std::function<void(size_t, SlotId)> verified;
    std::function<void(size_t, SlotId, uint64_t)> arrived;
  };
  size_t FetchFromRedis(NamespaceState& ns, const std::vector<ChunkKey>& keys, size_t from, size_t to,
                        std::vector<SlotId>* slots, Status* st, std::optional<ChunkKey>* gone,
                        const EarlyChunk* early);
  size_t FetchFromNvme(NamespaceState& ns, const std::vector<ChunkKey>& keys, size_t from, size_t to,
                       std::vector<SlotId>* slots, Status* st, std::optional<ChunkKey>* gone);
  std::optional<TierId> SourceTier(NamespaceState& ns, const ChunkKey& key) const;
  std::optional<SlotId> PinnedHostSlot(NamespaceState& ns, const ChunkKey& key) const;
  void AllocateSlots(NamespaceState& ns, size_t count, std::vector<SlotId>* slots, Status* st);
  void ForgetRedisCopy(NamespaceState& ns, const ChunkKey& key);
  size_t ProbeRedis(NamespaceState& ns, const std::vector<ChunkKey>& keys, size_t from);
  Status Recover();
  void DropChunk(NamespaceState& ns, const ChunkKey& key);
  void RunSave(Registration& r, const std::vector<ChunkKey>& keys, const std::vector<int32_t>& blocks,
               const std::vector<int32_t>& tokens, void* wait_event, TicketState& t);
  void RunLoad(Registration& r, const std::vector<ChunkKey>& keys, size_t matched, const std::vector<int32_t>& blocks,
               void* wait_event, TicketState& t);
  // A save once its cached prefix [0, matched) is pinned: fills (CPU gather) or takes
  // (`given`: payloads filled by the GPU or a lease's client, for chunks [matched, ...))
  // slots, then checks, publishes, indexes and writes through; finishes `t`.
  void SaveChunks(Registration& r, const std::vector<ChunkKey>& keys, const std::vector<int32_t>& blocks,
                  const std::vector<int32_t>& tokens, size_t matched, std::vector<SlotId>* given, Status given_st,
                  TicketState& t);
  // GPU saves: fresh slots for chunks [from, keys.size()), gathered from the GPU in one
  // launch (HBM copies too). Fewer when the host is full; *st says why.
  std::vector<SlotId> GatherFromGpu(Registration& r, const std::vector<ChunkKey>& keys, size_t from,
                                    const std::vector<int32_t>& blocks, const std::vector<int32_t>& tokens,
                                    void* wait_event, Status* st);
  // GPU loads: the chunks (host slots, or HBM entries where hbm[i]) into the engine.
  Status ScatterToGpu(Registration& r, const std::vector<ChunkKey>& keys, const std::vector<const uint8_t*>& payloads,
                      const std::vector<bool>& hbm, const std::vector<int32_t>& blocks, void* wait_event,
                      TicketState& t);
  void RunPrefetch(Registration& r, const std::vector<ChunkKey>& keys, size_t matched,
                   std::chrono::steady_clock::time_point deadline, TicketState& t);
  struct BringUpResult {
    Status status;                                         // why it stopped early
    std::optional<ChunkKey> corrupt, lost_on_nvme, lost_on_redis;  // to settle once unpinned
    uint64_t promoted = 0;                                 // chunks it read into host
  };
  // From chunk `first` on (the ones before are had elsewhere: HBM). `early`, when given,
  // sees the chunks fetched from Redis as FetchFromRedis describes: every chunk before
  // them is in the run too, so they are in what BringUp returns unless publishing fails.
  std::vector<SlotId> BringUp(NamespaceState& ns, const std::vector<ChunkKey>& keys, size_t matched,
                              const std::function<bool()>& stop, BringUpResult* out, size_t first = 0,
                              const EarlyChunk* early = nullptr);
  void SettleBringUp(NamespaceState& ns, const BringUpResult& b);
  // A lease (kvtier/store.h): what it pins and holds until it ends.
  struct Lease {
    bool save = false;
    std::shared_ptr<Registration> reg;
    std::vector<ChunkKey> keys;
    std::vector<int32_t> tokens;  // saves: the whole chunks' tokens
    size_t matched = 0;           // leading chunks pinned in the index
    std::vector<SlotId> slots;    // saves: reserved for chunks [matched, ...); loads: chunks [0, ...)
    BringUpResult bring_up;       // loads
  };
  std::mutex lease_mu;
  std::unordered_map<uint64_t, std::shared_ptr<Lease>> leases;  // guarded by lease_mu
  uint64_t next_lease = 1;                                      // guarded by lease_mu
  uint64_t AddLease(std::shared_ptr<Lease> lease);
  Result<std::shared_ptr<Lease>> TakeLease(uint64_t id, bool save);
  void EndLease(Lease& lease);  // unpins and frees what a lease still holds
  // In-flight promotions: a chunk being read into host is claimed; others wait for it.
  bool Claim(const ChunkKey& key);
  void Release(std::span<const ChunkKey> keys);
  void WaitInflight(const ChunkKey& key);
  void PlanLookup(NamespaceState& ns, const std::vector<TierMask>& residency, LookupResult* out);
};

// ---- worker pool ------------------------------------------------------------------------

void Store::Impl::WorkerLoop() {
  for (;;) {
    Job job;
    {
      std::unique_lock<std::mutex> l(queue_mu);
      queue_cv.wait(l, [this] { return stopping || !queue.empty(); });
      if (queue.empty()) return;  // stopping and drained
      job = std::move(queue.front());
      queue.pop_front();
    }
    job(/*abort=*/false);
  }
}

void Store::Impl::Enqueue(Job job) {
  {
    std::lock_guard<std::mutex> l(queue_mu);
    if (!stopping) {
      queue.push_back(std::move(job));
      queue_cv.notify_one();
      return;
    }
  }
  job(/*abort=*/true);
}

// ---- requests ------------------------------------------------------------------------------

Result<std::shared_ptr<Registration>> Store::Impl::Find(NamespaceHandle h) const {
  std::shared_lock<std::shared_mutex> l(reg_mu);
  auto it = registrations.find(h.id);
  if (it == registrations.end())
    return Status::NotFound("unknown namespace handle " + std::to_string(h.id) +
                            ": register the namespace first (or it was unregistered)");
  return it->second;
}

Status Store::Impl::PrepareRequest(const Registration& r, std::span<const int32_t> tokens,
                                   std::span<const int32_t> block_ids, std::span<const ExtraKey> extras,
                                   bool need_blocks, std::vector<ChunkKey>* keys) const {
  if (tokens.size() > config.max_request_tokens)
    return Status::InvalidArgument("request names " + std::to_string(tokens.size()) +
                                   " tokens, more than max_request_tokens " +
                                   std::to_string(config.max_request_tokens) + "; split it or raise the limit");
  const uint32_t chunk_tokens = r.ns->spec.shape.chunk_tokens;
  const uint64_t chunks = tokens.size() / chunk_tokens;
  if (need_blocks) {
    const uint64_t need = chunks * r.mover->blocks_per_chunk();
    if (block_ids.size() < need)
      return Status::InvalidArgument(
          "token count mismatch: " + std::to_string(tokens.size()) + " tokens make " + std::to_string(chunks) +
          " whole chunks of " + std::to_string(chunk_tokens) + " tokens, which need " + std::to_string(need) +
          " block ids of " + std::to_string(r.mover->geometry().block_tokens) + " tokens; got " +
          std::to_string(block_ids.size()));
    const int64_t num_blocks = r.mover->geometry().num_blocks;
    for (uint64_t i = 0; i < need; ++i) {
      if (block_ids[i] < 0 || block_ids[i] >= num_blocks)
        return Status::InvalidArgument("block id " + std::to_string(block_ids[i]) + " at position " +
                                       std::to_string(i) + " is outside the layout's [0, " +
                                       std::to_string(num_blocks) + ")");
    }
  }
  return ComputeChunkKeys(r.ns->id, chunk_tokens, tokens, extras, keys);
}

// ---- placement -----------------------------------------------------------------------------

// Unpinned leaves of `tier` over every namespace, least recently used first (the clock
// is shared, so ticks compare across indexes); up to `per_namespace` from each.
std::vector<std::pair<std::shared_ptr<NamespaceState>, LeafCandidate>> Store::Impl::LruLeaves(
    TierId tier, size_t per_namespace) {
  std::vector<std::pair<std::shared_ptr<NamespaceState>, LeafCandidate>> out;
  {
    std::shared_lock<std::shared_mutex> rl(reg_mu);
    for (auto& [id, ns] : namespaces)
      for (const LeafCandidate& c : ns->index.LruLeaves(tier, per_namespace)) out.emplace_back(ns, c);
  }
  std::sort(out.begin(), out.end(),
            [](const auto& x, const auto& y) { return x.second.last_access < y.second.last_access; });
  return out;
}

// Chunks a load reads from one lower tier in one batch (one I/O queue, or one pipelined
// Redis round trip), and the most bytes such a batch holds in host slots at once.
constexpr size_t kBatchChunks = 16;
constexpr uint64_t kBatchBytes = 256ull << 20;

// Host leaves demoted to NVMe in one batch (write-back).
constexpr size_t kDemoteBatch = 16;

// How many eviction candidates to look at per namespace before giving up: a candidate is
// passed over when it, or a chunk below it that would go with it, is pinned.
constexpr size_t kEvictionCandidates = 16;

Result<SlotId> Store::Impl::AllocateSlot(uint64_t payload_bytes) {
  std::unique_lock<std::mutex> l(placement_mu);
  std::vector<RemovedChunk> removed;
  for (;;) {
    Result<SlotId> s = host->Allocate(payload_bytes);
    if (s.ok() || s.status().code() != Status::Code::kNoSpace) return s;
    // Evict the least recently used host leaf that can go. Extents merge on free, so this
    // ends once enough contiguous space is free or nothing evictable is left.
    bool evicted = false;
    const auto leaves = LruLeaves(TierId::kHost, kEvictionCandidates);
    // Write-back: the victims go to NVMe first, a batch at a time (one sync for all).
    if (nvme && config.nvme.policy != WritePolicy::kNone) DemoteBatch(l, leaves);
    for (auto& [ns, victim] : leaves) {
      if (redis && config.redis.policy == WritePolicy::kWriteBack) {
        std::optional<TierMask> r = ns->index.Residency(victim.key);
        if (r && (*r & TierBit(TierId::kRedis)) == 0) DemoteToRedis(l, *ns, victim.key);
      }
      removed.clear();
      // A pinned chunk may be being read from its slot: never free that slot.
      Status c = ns->index.ClearResident(victim.key, TierId::kHost, &removed, /*if_unpinned=*/true);
      if (c.code() == Status::Code::kBusy || c.IsNotFound()) continue;  // pinned, or gone meanwhile
      if (!c.ok()) return c.WithContext("host tier eviction: ");
      // Sync point: the index no longer has the victim (a ChunkKey) in host; its slot is
      // not freed yet. placement_mu is held.
      KVTIER_SYNC_POINT("Store::EvictHost:IndexCleared", &victim.key);
      if (host->Remove(victim.key)) Add(n.evictions, 1);
      FreeRemoved(*ns, removed);
      evicted = true;
      break;
    }
    if (!evicted)
      return Status::NoSpace("host tier: full, and every cached chunk is pinned by a save or load in flight; "
                             "retry later or raise host capacity");
  }
}

void Store::Impl::FreeRemoved(NamespaceState& ns, const std::vector<RemovedChunk>& removed) {
  for (const RemovedChunk& rc : removed) {
    if (rc.residency & TierBit(TierId::kHost)) host->Remove(rc.key);
    if (nvme && (rc.residency & TierBit(TierId::kNvme))) nvme->Remove(rc.key);
    if (redis && (rc.residency & TierBit(TierId::kRedis))) DropRedisCopy(ns, rc.key);
  }
}

Result<NvmeExtent> Store::Impl::AllocateExtent(uint64_t payload_bytes) {
  std::vector<RemovedChunk> removed;
  for (;;) {
    Result<NvmeExtent> e = nvme->Allocate(payload_bytes);
    if (e.ok() || e.status().code() != Status::Code::kNoSpace) return e;
    bool evicted = false;
    for (auto& [ns, victim] : LruLeaves(TierId::kNvme, kEvictionCandidates)) {
      removed.clear();
      Status c = ns->index.ClearResident(victim.key, TierId::kNvme, &removed, /*if_unpinned=*/true);
      if (c.code() == Status::Code::kBusy || c.IsNotFound()) continue;
      if (!c.ok()) return c.WithContext("nvme tier eviction: ");
      nvme->Remove(victim.key);
      FreeRemoved(*ns, removed);
      evicted = true;
      break;
    }
    if (!evicted) return Status::NoSpace("nvme tier: full, and every chunk on it is pinned");
  }
}

NvmeTier::WriteItem Store::Impl::MakeWriteItem(NamespaceState& ns, const ChunkKey& key,
                                               const std::optional<ChunkKey>& parent, SlotId slot,
                                               const NvmeExtent& extent) {
  const uint8_t* page = host->SlotAddress(slot);
  NvmeTier::WriteItem w;
  w.record.key = key;
  w.record.ns = ns.id;
  w.record.parent = parent;
  w.record.extent = extent;
  w.record.payload_bytes = ns.payload_bytes;
  w.record.last_access = clock.Now();
  const uint32_t nt = ns.spec.shape.chunk_tokens;
  if (nt <= kMaxPageTokens) {
    w.record.tokens.resize(nt);
    std::memcpy(w.record.tokens.data(), page + kChunkTokensOffset, nt * sizeof(int32_t));
  }
  w.page = page;
  w.payload = page + kChunkPayloadOffset;
  return w;
}

// Writes host LRU leaves that NVMe does not hold yet to NVMe before their slots are freed:
// up to kDemoteBatch of them in one batch, so that they share one data sync and one
// metadata commit. Runs with `placement` held on entry and exit and releases it for the
// I/O; the chunks stay pinned meanwhile, so their slots cannot go away.
void Store::Impl::DemoteBatch(std::unique_lock<std::mutex>& placement,
                              const std::vector<std::pair<std::shared_ptr<NamespaceState>, LeafCandidate>>& leaves) {
  std::vector<std::pair<NamespaceState*, ChunkKey>> chosen;
  std::vector<NvmeTier::WriteItem> items;
  for (const auto& [ns, leaf] : leaves) {
    if (items.size() == kDemoteBatch) break;
    const ChunkKey& k = leaf.key;
    std::optional<TierMask> r = ns->index.Residency(k);
    std::optional<SlotId> slot = host->Find(k);
    std::optional<ChunkKey> parent;
    if (!r || (*r & TierBit(TierId::kNvme)) || !slot || !ns->index.Parent(k, &parent) || !Admits(TierId::kNvme, k))
      continue;
    // Pinned before making room on NVMe: that eviction must not take this chunk (it would
    // go with an evicted parent) while we read its slot.
    ns->index.Pin(std::span<const ChunkKey>(&k, 1));
    Result<NvmeExtent> e = AllocateExtent(ns->payload_bytes);
    if (!e.ok()) {  // nothing evictable on NVMe either: the chunk is dropped
      ns->index.Unpin(std::span<const ChunkKey>(&k, 1));
      break;
    }
    items.push_back(MakeWriteItem(*ns, k, parent, *slot, *e));
    chosen.emplace_back(ns.get(), k);
  }
  if (items.empty()) return;
  placement.unlock();
  (void)nvme->Write(items);
  placement.lock();
  for (size_t i = 0; i < items.size(); ++i) {
    NamespaceState& ns = *chosen[i].first;
    const ChunkKey& k = chosen[i].second;
    if (items[i].status.ok() && ns.index.SetResident(k, TierId::kNvme).ok()) {
      Add(n.demotions, 1);
    } else if (!items[i].status.ok()) {
      nvme->Free(items[i].record.extent);
    } else {
      nvme->Remove(k);
    }
    ns.index.Unpin(std::span<const ChunkKey>(&k, 1));
  }
}

// A save's write-through, pipelined: the save hands each chunk over as soon as it is
// gathered, and a writer task on the io pool writes what has been handed over while the
// save gathers the next chunks. Wait returns once every handed-over chunk is written (not
// yet durable: the caller commits).
// Thread-safety: Add and Wait are called by the save's worker; the writer runs on the io
// pool; mu_ guards the hand-over. Items are reserved up front, so they never move while
// the writer works on them.
class Store::Impl::WritePipe {
 public:
  WritePipe(NvmeTier* nvme, TaskPool* pool, size_t capacity) : nvme_(nvme), pool_(pool) { items_.reserve(capacity); }
  ~WritePipe() { (void)Wait(); }
  WritePipe(const WritePipe&) = delete;
  WritePipe& operator=(const WritePipe&) = delete;

  bool full() const { return items_.size() == items_.capacity(); }

  void Add(NvmeTier::WriteItem item) {
    bool start = false;
    {
      std::lock_guard<std::mutex> l(mu_);
      items_.push_back(std::move(item));
      start = !writing_;
      writing_ = true;
    }
    if (start) pool_->Submit([this] { Drain(); });
  }

  std::span<NvmeTier::WriteItem> Wait() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [this] { return !writing_; });
    return std::span<NvmeTier::WriteItem>(items_.data(), items_.size());
  }

 private:
  void Drain() {
    for (;;) {
      size_t from, to;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (taken_ == items_.size()) {
          writing_ = false;
          cv_.notify_all();
          return;
        }
        from = taken_;
        to = taken_ = items_.size();
      }
      (void)nvme_->WriteData(std::span<NvmeTier::WriteItem>(items_.data() + from, to - from));
    }
  }

  NvmeTier* const nvme_;
  TaskPool* const pool_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<NvmeTier::WriteItem> items_;  // size guarded by mu_; [0, taken_) belong to the writer
  size_t taken_ = 0;                        // guarded by mu_
  bool writing_ = false;                    // guarded by mu_: a writer task is queued or running
};

// Hands chunk keys[i] (in host, pinned by the caller) to the pipe unless it is on NVMe
// already. False, with *st set, when no extent can be had.
bool Store::Impl::HandToNvme(WritePipe& pipe, NamespaceState& ns, const std::vector<ChunkKey>& keys, size_t i,
                             std::vector<bool>* kept_in_host, Status* st) {
  std::optional<TierMask> r = ns.index.Residency(keys[i]);
  if (r && (*r & TierBit(TierId::kNvme))) return true;
  if (!Admits(TierId::kNvme, keys[i])) {
    (*kept_in_host)[i] = true;
    return true;
  }
  std::optional<SlotId> slot = host->Find(keys[i]);
  if (!slot) {
    *st = Status::Internal("write-through: chunk " + keys[i].ToHex() + " has no host slot");
    return false;
  }
  if (pipe.full()) {
    *st = Status::Internal("write-through: more chunks than the save holds");
    return false;
  }
  Result<NvmeExtent> e = AllocateExtent(ns.payload_bytes);
  if (!e.ok()) {
    *st = e.status();
    return false;
  }
  std::optional<ChunkKey> parent;
  if (i > 0) parent = keys[i - 1];
  pipe.Add(MakeWriteItem(ns, keys[i], parent, *slot, *e));
  return true;
}

// Waits for the pipe's writes, makes them durable, and marks the chunks that made it as
// on NVMe. Returns how many of the first `count` chunks of keys are where the policy wants
// them now: on NVMe, or in host when admission kept them out of NVMe.
uint32_t Store::Impl::FinishWriteThrough(WritePipe& pipe, NamespaceState& ns, const std::vector<ChunkKey>& keys,
                                         size_t count, const std::vector<bool>& kept_in_host, Status* st) {
  std::span<NvmeTier::WriteItem> items = pipe.Wait();
  if (!items.empty()) (void)nvme->Commit(items);
  {
    std::lock_guard<std::mutex> l(placement_mu);
    for (NvmeTier::WriteItem& w : items) {
      if (w.status.ok() && ns.index.SetResident(w.record.key, TierId::kNvme).ok()) {
        Add(n.write_throughs, 1);
      } else if (!w.status.ok()) {
        nvme->Free(w.record.extent);
        if (st->ok()) *st = w.status;
      } else {
        nvme->Remove(w.record.key);
      }
    }
  }
  uint32_t d = 0;
  for (; d < count; ++d) {
    if (kept_in_host[d]) continue;  // not admitted to NVMe: stored in host as the policy wants
    std::optional<TierMask> r = ns.index.Residency(keys[d]);
    if (!r || (*r & TierBit(TierId::kNvme)) == 0) break;
  }
  return d;
}

// ---- in-flight promotions ---------------------------------------------------------------

bool Store::Impl::Claim(const ChunkKey& key) {
  std::lock_guard<std::mutex> l(inflight_mu);
  return inflight.insert(key).second;
}

void Store::Impl::Release(std::span<const ChunkKey> keys) {
  if (keys.empty()) return;
  {
    std::lock_guard<std::mutex> l(inflight_mu);
    for (const ChunkKey& k : keys) inflight.erase(k);
  }
  inflight_cv.notify_all();
}

// Returns once nobody is bringing key up (at once if nobody was). The one who is holds no
// other wait, and its read is bounded (an I/O, or a Redis call with a deadline).
void Store::Impl::WaitInflight(const ChunkKey& key) {
  std::unique_lock<std::mutex> l(inflight_mu);
  inflight_cv.wait(l, [&] { return inflight.count(key) == 0; });
}

// ---- planner -----------------------------------------------------------------------------

// Cuts the matched prefix where loading stops paying: chunk i costs its bytes over its
// tier's bandwidth (plus, once per tier, the bytes already queued there), and saves
// chunk_tokens over the prefill rate. Keeps the prefix length with the largest saving.
void Store::Impl::PlanLookup(NamespaceState& ns, const std::vector<TierMask>& residency, LookupResult* out) {
  const double tps = ns.prefill_tps.load(std::memory_order_relaxed);
  if (!config.planner.enabled || tps <= 0 || out->matched_chunks == 0) return;
  const double per_chunk_recompute = ns.spec.shape.chunk_tokens / tps;
  std::array<bool, kTierCount> queued{};
  double load = 0, best_saving = 0, best_load = 0;
  uint32_t best = 0;
  for (uint32_t i = 0; i < out->matched_chunks; ++i) {
    const TierId t = out->chunk_tiers[i];
    const double bps = std::max(rates.BytesPerSecond(t), 1.0);
    if (!queued[static_cast<int>(t)]) {
      queued[static_cast<int>(t)] = true;
      load += static_cast<double>(queued_bytes[static_cast<int>(t)].load(std::memory_order_relaxed)) / bps;
    }
    load += static_cast<double>(ns.payload_bytes) / bps;
    const double saving = (i + 1) * per_chunk_recompute - load;
    if (saving > best_saving) {
      best_saving = saving;
      best = i + 1;
      best_load = load;
    }
  }
  (void)residency;
  Add(n.planner_skipped, out->matched_chunks - best);
  out->matched_chunks = best;
  out->chunk_tiers.resize(best);
  out->matched_tokens = uint64_t{best} * ns.spec.shape.chunk_tokens;
  out->expected_load_seconds = best_load;
  out->expected_recompute_seconds = best * per_chunk_recompute;
  out->expected_saving_seconds = best_saving;
}

// ---- Redis tier ------------------------------------------------------------------------------
// Redis is best effort everywhere: a chunk that cannot be written is dropped (counted), one
// that cannot be read is a miss. Its residency bit in the index means "was put there":
// Redis may have evicted or expired it since, which a load finds out (a miss, and the bit
// is cleared).

RedisDeadline RedisDeadlineIn(uint32_t ms) { return RedisClock::now() + std::chrono::milliseconds(ms); }

// Writes chunks cached in host (pinned by the caller) to Redis, unless they are there.
void Store::Impl::SaveToRedis(NamespaceState& ns, std::span<const ChunkKey> keys) {
  std::vector<RedisPutItem> items;
  items.reserve(keys.size());
  for (const ChunkKey& k : keys) {
    std::optional<TierMask> r = ns.index.Residency(k);
    if (!r || (*r & TierBit(TierId::kRedis)) || !Admits(TierId::kRedis, k)) continue;
    std::optional<SlotId> slot = host->Find(k);
    if (!slot) continue;
    const uint8_t* page = host->SlotAddress(*slot);
    RedisPutItem it;
    it.ns = ns.id;
    it.key = k;
    it.header = std::span<const uint8_t>(page, kChunkHeaderBytes);
    it.payload = std::span<const uint8_t>(page + kChunkPayloadOffset, ns.payload_bytes);
    items.push_back(it);
  }
  if (items.empty()) return;
  const uint64_t value_bytes = kChunkHeaderBytes + ns.payload_bytes;
  if (!MakeRoomInRedis(items.size() * value_bytes)) {
    Add(n.redis_dropped, items.size());
    DeleteRedisGarbage();
    return;
  }
  DeleteRedisGarbage();
  (void)redis->Put(items, RedisDeadline{});
  for (const RedisPutItem& it : items) {
    if (it.result == RedisItemResult::kOk && ns.index.SetResident(it.key, TierId::kRedis).ok()) {
      Add(n.redis_saved, 1);
      Add(redis_used, value_bytes);
    } else {
      Add(n.redis_dropped, 1);
    }
  }
}

// Our accounting forgets key's Redis copy; with a capacity the value is deleted too (by
// DeleteRedisGarbage, outside the placement lock).
void Store::Impl::DropRedisCopy(NamespaceState& ns, const ChunkKey& key) {
  const uint64_t b = kChunkHeaderBytes + ns.payload_bytes;
  uint64_t cur = redis_used.load(std::memory_order_relaxed);
  while (!redis_used.compare_exchange_weak(cur, cur > b ? cur - b : 0, std::memory_order_relaxed)) {
  }
  if (config.redis.capacity_bytes > 0) redis_garbage.emplace_back(ns.id, key);
}

void Store::Impl::DeleteRedisGarbage() {
  std::vector<std::pair<NamespaceId, ChunkKey>> g;
  {
    std::lock_guard<std::mutex> l(placement_mu);
    g.swap(redis_garbage);
  }
  for (const auto& [id, key] : g) (void)redis->Remove(id, key, RedisDeadline{});
}

// With redis.capacity_bytes: evicts LRU Redis leaves (from the index; their values are
// queued for DEL) until `bytes` more fit. False when they cannot.
bool Store::Impl::MakeRoomInRedis(uint64_t bytes) {
  const uint64_t cap = config.redis.capacity_bytes;
  if (cap == 0) return true;
  if (bytes > cap) return false;
  std::lock_guard<std::mutex> l(placement_mu);
  std::vector<RemovedChunk> removed;
  while (redis_used.load(std::memory_order_relaxed) + bytes > cap) {
    bool evicted = false;
    for (auto& [ns, victim] : LruLeaves(TierId::kRedis, kEvictionCandidates)) {
      removed.clear();
      Status c = ns->index.ClearResident(victim.key, TierId::kRedis, &removed, /*if_unpinned=*/true);
      if (!c.ok()) continue;  // pinned, or gone meanwhile
      if (removed.empty() || removed[0].key != victim.key) DropRedisCopy(*ns, victim.key);
      FreeRemoved(*ns, removed);
      Add(n.redis_evictions, 1);
      evicted = true;
      break;
    }
    if (!evicted) return false;
  }
  return true;
}

// Like Demote, to Redis: placement held on entry and exit, released for the I/O.
void Store::Impl::DemoteToRedis(std::unique_lock<std::mutex>& placement, NamespaceState& ns, const ChunkKey& key) {
  if (!host->Find(key)) return;
  const ChunkKey k = key;
  ns.index.Pin(std::span<const ChunkKey>(&k, 1));
  placement.unlock();
  SaveToRedis(ns, std::span<const ChunkKey>(&k, 1));
  placement.lock();
  ns.index.Unpin(std::span<const ChunkKey>(&k, 1));
}

// Up to `count` fresh host slots for chunks of ns (fewer when eviction cannot make room;
// *st says why when there are none).
void Store::Impl::AllocateSlots(NamespaceState& ns, size_t count, std::vector<SlotId>* slots, Status* st) {
  slots->clear();
  for (size_t i = 0; i < count; ++i) {
    Result<SlotId> s = AllocateSlot(ns.payload_bytes);
    if (!s.ok()) {
      if (i == 0) *st = s.status();
      return;
    }
    slots->push_back(*s);
  }
}

// The host slot of a chunk the caller has pinned, if the index has it in host. Without
// placement_mu, a slot found in the host tier alone may be on its way out: eviction
// clears the index's host bit (refused while the chunk is pinned) and then frees the
// slot, both under placement_mu, and a pin taken in between does not stop the second
// step. Host bit first, then the slot: a chunk that has the bit has its slot, and while
// it is pinned it keeps both.
std::optional<SlotId> Store::Impl::PinnedHostSlot(NamespaceState& ns, const ChunkKey& key) const {
  std::optional<TierMask> r = ns.index.Residency(key);
  if (!r || (*r & TierBit(TierId::kHost)) == 0) return std::nullopt;
  return host->Find(key);
}

// Where a chunk not in host is read from: NVMe if it is there, else Redis.
std::optional<TierId> Store::Impl::SourceTier(NamespaceState& ns, const ChunkKey& key) const {
  std::optional<TierMask> r = ns.index.Residency(key);
  if (!r) return std::nullopt;
  if (nvme && (*r & TierBit(TierId::kNvme))) return TierId::kNvme;
  if (redis && (*r & TierBit(TierId::kRedis))) return TierId::kRedis;
  return std::nullopt;
}

// Like FetchFromRedis, from NVMe: the chunks' reads share one I/O queue.
size_t Store::Impl::FetchFromNvme(NamespaceState& ns, const std::vector<ChunkKey>& keys, size_t from, size_t to,
                                  std::vector<SlotId>* slots, Status* st, std::optional<ChunkKey>* gone) {
  AllocateSlots(ns, to - from, slots, st);
  std::vector<NvmeTier::ReadItem> items(slots->size());
  for (size_t j = 0; j < items.size(); ++j) {
    items[j].key = keys[from + j];
    items[j].id = ChunkIdentity{ns.id, keys[from + j], ns.spec.shape};
    items[j].dst = host->SlotAddress((*slots)[j]);
    items[j].dst_bytes = (*slots)[j].bytes;
  }
  if (!items.empty()) nvme->ReadMany(items);
  size_t ok = 0;
  while (ok < items.size() && items[ok].status.ok()) ++ok;
  if (ok < items.size()) {
    const Status& bad = items[ok].status;
    for (size_t j = ok; j < items.size(); ++j)  // the tier dropped each of them: count each
      if (items[j].status.IsCorruption()) Add(n.corrupt_chunks, 1);
    if (bad.IsCorruption() || bad.IsNotFound()) *gone = keys[from + ok];
    *st = bad.WithContext("chunk " + std::to_string(from + ok) + ": ");
    for (size_t j = ok; j < slots->size(); ++j) host->Free((*slots)[j]);
    slots->resize(ok);
  }
  return ok;
}

// Reads keys[from, to) (indexed in Redis, pinned by the caller) into fresh host slots, in
// one pipelined batch. Returns how many leading chunks arrived intact; their slots are in
// *slots (not published), the rest are freed. *st says why the run stopped early, and
// *gone names the chunk Redis no longer holds intact, if that was why.
size_t Store::Impl::FetchFromRedis(NamespaceState& ns, const std::vector<ChunkKey>& keys, size_t from, size_t to,
                                   std::vector<SlotId>* slots, Status* st, std::optional<ChunkKey>* gone,
                                   const EarlyChunk* early) {
  AllocateSlots(ns, to - from, slots, st);
  std::vector<RedisGetItem> items(slots->size());
  for (size_t j = 0; j < items.size(); ++j) {
    uint8_t* page = host->SlotAddress((*slots)[j]);
    EncodeChunkHeader(MakeChunkHeader(ns.id, keys[from + j], ns.spec.shape), page);
    items[j].id = ChunkIdentity{ns.id, keys[from + j], ns.spec.shape};
    items[j].dst = std::span<uint8_t>(page + kChunkPayloadOffset, ns.payload_bytes);
  }
  if (!items.empty()) {
    std::function<void(size_t)> verified;
    std::function<void(size_t, uint64_t)> arrived;
    size_t next = 0;  // only the batch's leading run: nothing past a chunk that failed
    if (early != nullptr && early->verified)
      verified = [&](size_t j) {
        if (j != next) {
          next = SIZE_MAX;
          return;
        }
        ++next;
        early->verified(from + j, (*slots)[j]);
      };
    if (early != nullptr && early->arrived)
      arrived = [&](size_t j, uint64_t n) { early->arrived(from + j, (*slots)[j], n); };
    redis->Get(items, RedisDeadline{}, verified, arrived);
  }
  size_t ok = 0;
  while (ok < items.size() && items[ok].result == RedisItemResult::kOk) ++ok;
  if (ok < items.size()) {
    const RedisGetItem& bad = items[ok];
    Add(n.redis_misses, 1);
    if (bad.result == RedisItemResult::kCorruption) Add(n.corrupt_chunks, 1);
    if (bad.result == RedisItemResult::kNotFound || bad.result == RedisItemResult::kCorruption)
      *gone = keys[from + ok];
    *st = (bad.status.ok() ? Status::IOError(std::string("redis: ") + RedisItemResultName(bad.result))
                           : bad.status)
              .WithContext("chunk " + std::to_string(from + ok) + " from redis: ");
    for (size_t j = ok; j < slots->size(); ++j) host->Free((*slots)[j]);
    slots->resize(ok);
  }
  Add(n.redis_loaded, ok);
  return ok;
}

// Redis no longer has key (expired, evicted, corrupt): so the index must not say it does.
void Store::Impl::ForgetRedisCopy(NamespaceState& ns, const ChunkKey& key) {
  std::lock_guard<std::mutex> l(placement_mu);
  std::vector<RemovedChunk> removed;
  std::optional<TierMask> r = ns.index.Residency(key);
  if (!r || (*r & TierBit(TierId::kRedis)) == 0) return;
  if (!ns.index.ClearResident(key, TierId::kRedis, &removed, /*if_unpinned=*/false).ok()) return;
  if (removed.empty() || removed[0].key != key) DropRedisCopy(ns, key);  // else FreeRemoved does
  FreeRemoved(ns, removed);
}

// A lookup that missed locally from keys[from] on: asks Redis (one pipelined round trip,
// short deadline) which of the following chunks it holds, and indexes the leading run it
// does. Returns that run's length.
size_t Store::Impl::ProbeRedis(NamespaceState& ns, const std::vector<ChunkKey>& keys, size_t from) {
  std::vector<RedisExistsItem> items(keys.size() - from);
  for (size_t i = from; i < keys.size(); ++i) {
    items[i - from].ns = ns.id;
    items[i - from].key = keys[i];
  }
  redis->Exists(items, RedisDeadlineIn(config.redis.lookup_timeout_ms));
  size_t run = 0;
  while (run < items.size() && items[run].exists) ++run;
  if (run == 0) return 0;
  std::lock_guard<std::mutex> l(placement_mu);
  size_t indexed = 0;
  for (; indexed < run; ++indexed) {
    const size_t i = from + indexed;
    std::optional<ChunkKey> parent;
    if (i > 0) parent = keys[i - 1];
    if (!ns.index.Insert(parent, keys[i], TierId::kRedis).ok()) break;  // the parent went meanwhile
    Add(redis_used, kChunkHeaderBytes + ns.payload_bytes);
  }
  Add(n.redis_probe_hits, indexed);
  return indexed;
}

// Removes a chunk that failed a check, with its subtree, from the index and the host tier.
void Store::Impl::DropChunk(NamespaceState& ns, const ChunkKey& key) {
  std::lock_guard<std::mutex> l(placement_mu);
  std::vector<RemovedChunk> removed;
  if (!ns.index.Erase(key, &removed).ok()) return;  // pinned by another load: it will see the same
  FreeRemoved(ns, removed);
}

void Store::Impl::RunSave(Registration& r, const std::vector<ChunkKey>& keys, const std::vector<int32_t>& blocks,
                          const std::vector<int32_t>& tokens, void* wait_event, TicketState& t) {
  NamespaceState& ns = *r.ns;
  const uint32_t total = static_cast<uint32_t>(keys.size());
  const uint64_t tokens_saved = uint64_t{total} * ns.spec.shape.chunk_tokens;
  if (tokens_saved < config.admission.min_tokens) {
    Add(n.admission_rejected, total);
    Add(n.save_failed_chunks, total);
    t.Finish(Status::Cancelled("save not admitted: " + std::to_string(tokens_saved) +
                               " tokens in whole chunks, fewer than admission.min_tokens " +
                               std::to_string(config.admission.min_tokens)),
             0);
    return;
  }
  // Pin the cached prefix so that the chunks we attach below keep their parents.
  MatchOptions mo;
  mo.tiers = TierBit(TierId::kHost);
  mo.pin = true;
  const size_t matched = ns.index.Match(keys, mo);
  // GPU engine memory: the chunks not cached yet come over in one launch first.
  Status gathered_st;
  std::vector<SlotId> gathered;
  if (r.gpu && matched < total) gathered = GatherFromGpu(r, keys, matched, blocks, tokens, wait_event, &gathered_st);
  SaveChunks(r, keys, blocks, tokens, matched, r.gpu ? &gathered : nullptr, std::move(gathered_st), t);
}

void Store::Impl::SaveChunks(Registration& r, const std::vector<ChunkKey>& keys, const std::vector<int32_t>& blocks,
                             const std::vector<int32_t>& tokens, size_t matched, std::vector<SlotId>* given,
                             Status given_st, TicketState& t) {
  NamespaceState& ns = *r.ns;
  const uint32_t total = static_cast<uint32_t>(keys.size());
  std::vector<ChunkKey> pinned(keys.begin(), keys.begin() + static_cast<ptrdiff_t>(matched));
  const uint32_t bpc = r.mover ? r.mover->blocks_per_chunk() : 0;
  Add(n.save_dedup_chunks, matched);
  const bool write_through = nvme && config.nvme.policy == WritePolicy::kWriteThrough;
  uint32_t done = static_cast<uint32_t>(matched);
  if (!write_through) t.set_chunks_done(done);
  Status st = std::move(given_st);
  // Write-through: chunks go to NVMe while later ones are gathered (cached ones too, if
  // NVMe does not hold them yet); the save is acknowledged once they are durable.
  std::optional<WritePipe> pipe;
  std::vector<bool> kept_in_host(total, false);
  Status nvme_st;
  bool nvme_ok = true;  // false once a chunk could not be handed over: later ones are not durable
  if (write_through) {
    pipe.emplace(nvme.get(), io_pool.get(), total);
    std::lock_guard<std::mutex> l(placement_mu);
    for (size_t i = 0; i < matched && nvme_ok; ++i) nvme_ok = HandToNvme(*pipe, ns, keys, i, &kept_in_host, &nvme_st);
  }
  // Slots whose payloads someone else filled (GPU gathers, leases): chunks [matched, ...).
  const uint32_t first_fresh = done;
  uint32_t given_taken = done;  // given slots of chunks before this one are consumed
  for (uint32_t i = done; i < total; ++i) {
    if (t.cancel_requested()) {
      st = Status::Cancelled("save cancelled after " + std::to_string(i) + " of " + std::to_string(total) + " chunks");
      break;
    }
    Result<SlotId> slot = SlotId{};
    if (given != nullptr) {
      if (i - first_fresh >= given->size()) break;  // st says why, if anything
      slot = (*given)[i - first_fresh];
      given_taken = i + 1;
    } else {
      slot = AllocateSlot(ns.payload_bytes);
    }
    if (!slot.ok()) {
      st = slot.status();
      break;
    }
    uint8_t* addr = host->SlotAddress(*slot);
    const uint32_t ct = ns.spec.shape.chunk_tokens;
    if (given == nullptr && ct <= kMaxPageTokens)  // the tokens travel with the chunk to lower tiers' metadata
      std::memcpy(addr + kChunkTokensOffset, tokens.data() + uint64_t{i} * ct, uint64_t{ct} * sizeof(int32_t));
    Status g = given != nullptr ? Status::OK()
                                : r.mover->Gather(std::span<const int32_t>(blocks).subspan(uint64_t{i} * bpc, bpc),
                                                  addr + kChunkPayloadOffset, ns.payload_bytes);
    if (!g.ok()) {
      host->Free(*slot);
      st = g;
      break;
    }
    ChunkHeader header = MakeChunkHeader(ns.id, keys[i], ns.spec.shape);
    if (write_through) {  // sealed: NVMe writes the slot as it is, checksum included
      header.payload_checksum = ChunkChecksum(addr + kChunkPayloadOffset, ns.payload_bytes);
      header.flags |= kFlagChecksum;
    }
    EncodeChunkHeader(header, addr);
    {
      std::lock_guard<std::mutex> l(placement_mu);
      const bool fresh = host->Publish(keys[i], *slot).ok();
      if (!fresh) host->Free(*slot);  // a concurrent save stored it first
      std::optional<ChunkKey> parent;
      if (i > 0) parent = keys[i - 1];
      Status ins = ns.index.Insert(parent, keys[i], TierId::kHost);
      if (!ins.ok()) {
        if (fresh) host->Remove(keys[i]);
        st = ins.WithContext("save: ");
        break;
      }
      ns.index.Pin(std::span<const ChunkKey>(&keys[i], 1));
      pinned.push_back(keys[i]);
      if (write_through && nvme_ok) nvme_ok = HandToNvme(*pipe, ns, keys, i, &kept_in_host, &nvme_st);
      if (fresh) {
        Add(n.saved_chunks, 1);
        Add(n.bytes_saved, ns.payload_bytes);
      } else {
        Add(n.save_dedup_chunks, 1);
      }
    }
    if (!write_through) t.set_chunks_done(done + 1);
    ++done;
  }
  if (given != nullptr)  // not reached: freed
    for (size_t j = given_taken - first_fresh; j < given->size(); ++j) host->Free((*given)[j]);
  const uint32_t in_host = done;
  if (write_through) {
    // Acknowledged only once durable: chunks_done counts leading chunks on NVMe.
    done = FinishWriteThrough(*pipe, ns, keys, done, kept_in_host, &nvme_st);
    if (st.ok() && !nvme_st.ok()) st = nvme_st.WithContext("save: write-through: ");
  }
  // Redis is best effort: what it does not take is counted, the save does not fail.
  if (redis && config.redis.policy == WritePolicy::kWriteThrough && in_host > 0)
    SaveToRedis(ns, std::span<const ChunkKey>(keys.data(), in_host));
  ns.index.Unpin(pinned);
  Add(n.save_failed_chunks, total - done);
  t.Finish(std::move(st), done);
}

// Brings keys[0, matched) (pinned by the caller) into host slots, in order: chunks in host
// already are used where they are; a chunk that another load or prefetch is bringing up
// is waited for; the others are read from NVMe or Redis — runs of chunks from one tier in
// one batch — into fresh slots, verified, and published in host (promotion). Every slot's header is
// checked against the chunk it should hold. Stops at the first chunk that cannot be had,
// or when stop() says so; returns the slots of the leading chunks it got.
std::vector<SlotId> Store::Impl::BringUp(NamespaceState& ns, const std::vector<ChunkKey>& keys, size_t matched,
                                         const std::function<bool()>& stop, BringUpResult* out, size_t first,
                                         const EarlyChunk* early) {
  const ChunkIdentity identity{ns.id, {}, ns.spec.shape};
  std::vector<SlotId> slots;
  slots.reserve(matched);
  // Chunks [batch_begin, batch_end) were fetched from batch_tier in one batch into
  // batch_slots, claimed in `inflight` until published.
  std::vector<SlotId> batch_slots;
  size_t batch_begin = 0, batch_end = 0;
  TierId batch_tier = TierId::kHost;
  bool batch_short = false;  // the batch stopped at a chunk it could not get: so does the run
  size_t i = first;
  for (; i < matched; ++i) {
    if (i >= batch_end && batch_short) break;  // out->status says why
    if (i >= batch_end && stop()) {
      out->status = Status::Cancelled("cancelled after " + std::to_string(i) + " of " + std::to_string(keys.size()) +
                                      " chunks");
      break;
    }
    std::optional<SlotId> slot;
    TierId from = TierId::kHost;
    if (i < batch_end) {
      slot = batch_slots[i - batch_begin];
      from = batch_tier;
    } else {
      // In host, or being brought up by another load or prefetch (wait for it), or ours
      // to read once claimed.
      slot = PinnedHostSlot(ns, keys[i]);
      while (!slot) {
        if (Claim(keys[i])) {
          slot = PinnedHostSlot(ns, keys[i]);  // it may have arrived between Find and Claim
          if (slot) Release(std::span<const ChunkKey>(&keys[i], 1));
          break;
        }
        WaitInflight(keys[i]);
        slot = PinnedHostSlot(ns, keys[i]);
      }
    }
    if (!slot) {  // ours to read, claimed: this chunk and the following ones that only the
                  // same lower tier holds, in one batch (one queue, or one Redis round trip)
      const std::optional<TierId> tier = SourceTier(ns, keys[i]);
      if (!tier) {
        Release(std::span<const ChunkKey>(&keys[i], 1));
        out->status = Status::Internal("chunk " + keys[i].ToHex() + " is indexed but no tier holds it");
        break;
      }
      const size_t max_batch = std::clamp<uint64_t>(kBatchBytes / ns.payload_bytes, 1, kBatchChunks);
      size_t to = i + 1;
      for (; to < matched && to - i < max_batch && !PinnedHostSlot(ns, keys[to]) && SourceTier(ns, keys[to]) == tier;
           ++to)
        if (!Claim(keys[to])) break;
      const auto t0 = std::chrono::steady_clock::now();
      const size_t got = *tier == TierId::kNvme
                             ? FetchFromNvme(ns, keys, i, to, &batch_slots, &out->status, &out->lost_on_nvme)
                             : FetchFromRedis(ns, keys, i, to, &batch_slots, &out->status, &out->lost_on_redis, early);
      if (got > 0) rates.Observe(*tier, got * ns.payload_bytes, SecondsSince(t0));
      Release(std::span<const ChunkKey>(keys.data() + i + got, to - i - got));
      batch_begin = i;
      batch_end = i + got;
      batch_tier = *tier;
      batch_short = got < to - i;
      if (got == 0) break;
      slot = batch_slots[0];
      from = *tier;
    }
    // The header is checked on every read: a slot that does not hold this chunk is never served.
    const uint8_t* addr = host->SlotAddress(*slot);
    Result<ChunkHeader> h = DecodeChunkHeader(std::span<const uint8_t>(addr, kChunkHeaderBytes));
    ChunkIdentity want = identity;
    want.key = keys[i];
    Status hs = h.ok() ? CheckChunkIdentity(*h, want) : h.status();
    if (from != TierId::kHost) {  // promotion: publish in host, then let waiters go
      std::lock_guard<std::mutex> l(placement_mu);
      if (hs.ok() && host->Publish(keys[i], *slot).ok() && ns.index.SetResident(keys[i], TierId::kHost).ok()) {
        Add(n.promotions, 1);
        ++out->promoted;
      } else if (!host->Find(keys[i]) || host->Find(keys[i])->offset != slot->offset) {
        host->Free(*slot);  // not published
        if (hs.ok()) slot = host->Find(keys[i]);  // published by another path meanwhile
      } else {
        host->Remove(keys[i]);  // published but the index refused it
        slot.reset();
      }
      Release(std::span<const ChunkKey>(&keys[i], 1));
    }
    if (!hs.ok()) {
      Add(n.corrupt_chunks, 1);
      if (from == TierId::kHost) out->corrupt = keys[i];
      if (from == TierId::kNvme) out->lost_on_nvme = keys[i];
      out->status = hs.WithContext("host slot of chunk " + std::to_string(i) + ": ");
      break;
    }
    if (!slot) {
      out->status = Status::Internal("chunk " + keys[i].ToHex() + " could not be published in host");
      break;
    }
    slots.push_back(*slot);
  }
  // Fetched from Redis but never reached (the run stopped at chunk i inside the batch):
  // not published, so freed, and their claims let go.
  for (size_t j = std::max(i + 1, batch_begin); j < batch_end; ++j) {
    host->Free(batch_slots[j - batch_begin]);
    Release(std::span<const ChunkKey>(&keys[j], 1));
  }
  return slots;
}

// After the pins of a bring-up are gone: forget what turned out not to be there.
void Store::Impl::SettleBringUp(NamespaceState& ns, const BringUpResult& b) {
  if (b.lost_on_redis) ForgetRedisCopy(ns, *b.lost_on_redis);
  if (b.corrupt) DropChunk(ns, *b.corrupt);
  if (b.lost_on_nvme) {  // its record is gone (dropped as corrupt, or missing): so is its NVMe residency
    std::lock_guard<std::mutex> l(placement_mu);
    std::vector<RemovedChunk> removed;
    if (ns.index.ClearResident(*b.lost_on_nvme, TierId::kNvme, &removed).ok()) FreeRemoved(ns, removed);
  }
}

// A load: the chunks come up into host (BringUp), then go into the engine's blocks layer
// by layer, each layer published on the ticket as it lands. Once copying into the engine
// has started it finishes (cancellation is checked before), so a cancelled load never
// leaves a chunk half written that chunks_done counts.
void Store::Impl::RunLoad(Registration& r, const std::vector<ChunkKey>& keys, size_t matched,
                          const std::vector<int32_t>& blocks, void* wait_event, TicketState& t) {
  NamespaceState& ns = *r.ns;
  const uint32_t total = static_cast<uint32_t>(keys.size());
  const uint32_t bpc = r.mover->blocks_per_chunk();
  // GPU loads: the leading chunks the HBM tier holds need no host slot.
  HbmTier* hbm = r.gpu && gpu ? gpu->hbm() : nullptr;
  std::vector<const uint8_t*> payloads;  // GPU loads: each chunk's source
  std::vector<bool> in_hbm;
  if (hbm != nullptr) {
    for (size_t i = 0; i < matched; ++i) {
      std::optional<uint8_t*> p = hbm->Acquire(keys[i]);
      if (!p) break;
      payloads.push_back(*p);
      in_hbm.push_back(true);
    }
  }
  const size_t first = payloads.size();
  BringUpResult b;
  // Host engines: a chunk from Redis is copied into the engine while the values after it
  // are still arriving (the rest go layer by layer below). A chunk read in pieces has each
  // whole layer copied as soon as its bytes are in, unchecked, while the layers after it
  // arrive (in the engine's blocks of this request, which count as loaded only once the
  // chunk is verified: a chunk that fails is not in chunks_done, so the engine recomputes
  // those blocks); on verification the layers not copied yet follow. What a cancel finds
  // started completes; nothing starts after it.
  std::vector<bool> scattered;
  std::vector<uint32_t> layers_in;  // per chunk: leading layers copied from bytes as received
  EarlyChunk early;
  if (!r.gpu) {
    const uint32_t layers = ns.spec.shape.num_layers;
    const uint64_t layer_bytes = r.mover->layer_bytes();
    // Layers [layers_in[i], to) of chunk i from its slot; false when the copy failed.
    auto copy_layers = [&](size_t i, SlotId slot, uint32_t to) {
      if (layers_in.size() <= i) layers_in.resize(i + 1, 0);
      if (to <= layers_in[i]) return true;
      if (!r.mover->Scatter(std::span<const int32_t>(blocks).subspan(uint64_t{i} * bpc, bpc),
                            host->SlotAddress(slot) + kChunkPayloadOffset, ns.payload_bytes, layers_in[i],
                            to - layers_in[i])
               .ok())
        return false;  // copied again below, where a failure is reported
      layers_in[i] = to;
      return true;
    };
    early.arrived = [&, copy_layers, layers, layer_bytes](size_t i, SlotId slot, uint64_t n) {
      if (n == 0 && i < layers_in.size()) layers_in[i] = 0;
      if (n == 0 || t.cancel_requested()) return;
      (void)copy_layers(i, slot, static_cast<uint32_t>(std::min<uint64_t>(n / layer_bytes, layers)));
    };
    early.verified = [&, copy_layers, layers](size_t i, SlotId slot) {
      if (t.cancel_requested() || !copy_layers(i, slot, layers)) return;
      if (scattered.size() <= i) scattered.resize(i + 1, false);
      scattered[i] = true;
    };
  }
  std::vector<SlotId> slots = BringUp(ns, keys, matched, [&t] { return t.cancel_requested(); }, &b, first, &early);
  Status st = b.status.ok() ? Status::OK() : b.status.WithContext("load: ");
  uint32_t done = static_cast<uint32_t>(first + slots.size());
  if (done > 0 && t.cancel_requested()) {
    st = Status::Cancelled("load cancelled before copying into the engine");
    done = 0;
  }
  // Sync point: the chunks are in host slots and copying into the engine is next; the
  // arg is the load's keys (std::vector<ChunkKey>). No lock is held.
  KVTIER_SYNC_POINT("Store::RunLoad:BeforeCopy", &keys);
  const auto t0 = std::chrono::steady_clock::now();
  if (r.gpu) {
    for (size_t i = 0; i < slots.size(); ++i) {
      std::optional<uint8_t*> p = hbm != nullptr ? hbm->Acquire(keys[first + i]) : std::nullopt;
      payloads.push_back(p ? *p : host->SlotAddress(slots[i]) + kChunkPayloadOffset);
      in_hbm.push_back(p.has_value());
    }
    if (done > 0) {
      Status g = ScatterToGpu(r, keys, payloads, in_hbm, blocks, wait_event, t);
      if (!g.ok()) {
        st = g.WithContext("load: ");
        done = 0;
      }
    }
    if (hbm != nullptr)
      for (size_t i = 0; i < in_hbm.size(); ++i)
        if (in_hbm[i]) hbm->Unpin(keys[i]);
    if (done > 0) Add(n.gpu_loaded, done);
  }
  for (uint32_t l = 0; !r.gpu && l < ns.spec.shape.num_layers && done > 0; ++l) {
    for (uint32_t i = 0; i < done; ++i) {
      if (i < scattered.size() && scattered[i]) continue;
      Status s = r.mover->Scatter(std::span<const int32_t>(blocks).subspan(uint64_t{i} * bpc, bpc),
                                 host->SlotAddress(slots[i]) + kChunkPayloadOffset, ns.payload_bytes, l, 1);
      if (!s.ok()) {  // the request was validated: this is a bug, and nothing counts as loaded
        st = s.WithContext("load: ");
        done = 0;
        break;
      }
    }
    t.set_layers_ready(l + 1, done);
  }
  if (done > 0) rates.Observe(TierId::kHost, uint64_t{done} * ns.payload_bytes, SecondsSince(t0));
  ns.index.Unpin(std::span<const ChunkKey>(keys.data(), matched));
  SettleBringUp(ns, b);
  Add(n.loaded_chunks, done);
  Add(n.bytes_loaded, uint64_t{done} * ns.payload_bytes);
  if (st.ok() && done < total)
    st = Status::NotFound("load: chunk " + std::to_string(done) + " of " + std::to_string(total) +
                          " is not cached; recompute from token " +
                          std::to_string(uint64_t{done} * ns.spec.shape.chunk_tokens));
  Add(n.load_failed_chunks, total - done);
  t.Finish(std::move(st), done);
}

std::vector<SlotId> Store::Impl::GatherFromGpu(Registration& r, const std::vector<ChunkKey>& keys, size_t from,
                                               const std::vector<int32_t>& blocks, const std::vector<int32_t>& tokens,
                                               void* wait_event, Status* st) {
  NamespaceState& ns = *r.ns;
  std::vector<SlotId> slots;
  AllocateSlots(ns, keys.size() - from, &slots, st);
  if (slots.empty()) return slots;
  const uint32_t bpc = r.mover->blocks_per_chunk();
  const uint32_t ct = ns.spec.shape.chunk_tokens;
  HbmTier* hbm = gpu->hbm();
  std::vector<uint8_t*> payloads(slots.size()), hbm_dst(slots.size(), nullptr);
  for (size_t j = 0; j < slots.size(); ++j) {
    uint8_t* addr = host->SlotAddress(slots[j]);
    if (ct <= kMaxPageTokens)  // the tokens travel with the chunk to lower tiers' metadata
      std::memcpy(addr + kChunkTokensOffset, tokens.data() + (from + j) * ct, uint64_t{ct} * sizeof(int32_t));
    payloads[j] = addr + kChunkPayloadOffset;
    if (hbm != nullptr) hbm_dst[j] = hbm->Reserve(keys[from + j], ns.payload_bytes).value_or(nullptr);
  }
  Status g = r.gpu->Gather(std::span<const int32_t>(blocks).subspan(from * bpc, slots.size() * bpc), payloads,
                           hbm_dst, wait_event);
  for (size_t j = 0; j < slots.size(); ++j) {
    if (hbm_dst[j] == nullptr) continue;
    if (g.ok()) {
      hbm->Commit(keys[from + j]);
    } else {
      hbm->Abort(keys[from + j]);
    }
  }
  if (!g.ok()) {
    for (const SlotId& slot : slots) host->Free(slot);
    slots.clear();
    *st = g.WithContext("save: ");
    return slots;
  }
  Add(n.gpu_saved, slots.size());
  return slots;
}

Status Store::Impl::ScatterToGpu(Registration& r, const std::vector<ChunkKey>& keys,
                                 const std::vector<const uint8_t*>& payloads, const std::vector<bool>& hbm_src,
                                 const std::vector<int32_t>& blocks, void* wait_event, TicketState& t) {
  NamespaceState& ns = *r.ns;
  const auto n_chunks = static_cast<uint32_t>(payloads.size());
  // Chunks that came from host go into HBM too (gathered back from the engine's blocks
  // on the GPU, device to device), committed once they are there.
  HbmTier* hbm = gpu->hbm();
  std::vector<uint8_t*> fill(n_chunks, nullptr);
  if (hbm != nullptr)
    for (uint32_t i = 0; i < n_chunks; ++i)
      if (!hbm_src[i]) fill[i] = hbm->Reserve(keys[i], ns.payload_bytes).value_or(nullptr);
  Status st = r.gpu->Scatter(
      std::span<const int32_t>(blocks).first(uint64_t{n_chunks} * r.mover->blocks_per_chunk()), payloads, fill,
      wait_event, [&t, n_chunks](GpuEvents events) { t.set_gpu_enqueued(std::move(events), n_chunks); },
      [&t, n_chunks](uint32_t l) { t.set_layers_ready(l + 1, n_chunks); });
  for (uint32_t i = 0; i < n_chunks; ++i) {
    if (fill[i] == nullptr) continue;
    if (st.ok()) {
      hbm->Commit(keys[i]);
    } else {
      hbm->Abort(keys[i]);
    }
  }
  return st;
}

// A prefetch: BringUp only, until done, cancelled, or past its deadline.
void Store::Impl::RunPrefetch(Registration& r, const std::vector<ChunkKey>& keys, size_t matched,
                              std::chrono::steady_clock::time_point deadline, TicketState& t) {
  NamespaceState& ns = *r.ns;
  BringUpResult b;
  std::vector<SlotId> slots = BringUp(
      ns, keys, matched,
      [&t, deadline] { return t.cancel_requested() || std::chrono::steady_clock::now() > deadline; }, &b);
  ns.index.Unpin(std::span<const ChunkKey>(keys.data(), matched));
  SettleBringUp(ns, b);
  Add(n.prefetched_chunks, b.promoted);
  t.Finish(b.status, static_cast<uint32_t>(slots.size()));
}

// ---- Store ------------------------------------------------------------------------------------

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::Store(std::shared_ptr<DaemonClient> remote) : remote_(std::move(remote)) {}

Store::~Store() { (void)Close(); }

Result<std::unique_ptr<Store>> Store::Open(const StoreConfig& config) {
  if (config.worker_threads == 0 || config.worker_threads > 256)
    return Status::InvalidArgument("store: worker_threads " + std::to_string(config.worker_threads) +
                                   " is outside 1..256");
  if (config.max_request_tokens == 0) return Status::InvalidArgument("store: max_request_tokens is 0");
  for (double g : {config.planner.host_gbps, config.planner.nvme_gbps, config.planner.redis_gbps})
    if (!(g > 0))
      return Status::InvalidArgument("store: planner bandwidths must be positive GB/s (host_gbps, nvme_gbps, "
                                     "redis_gbps); got " + std::to_string(g));
  auto impl = std::make_unique<Impl>(config);
  impl->rates.Init(config.planner);
  if (config.admission.nvme_second_hit || config.admission.redis_second_hit)
    impl->seen = std::make_unique<SeenSet>(size_t{1} << 20);
  HostTierOptions ho;
  ho.capacity_bytes = config.host_capacity_bytes;
  ho.huge_pages = config.huge_pages;
  ho.prefault = config.prefault;
  ho.shared = config.shared_host_region;
  Result<std::unique_ptr<HostTier>> host = HostTier::Create(ho);
  if (!host.ok()) return host.status();
  impl->host = std::move(*host);
  Result<std::unique_ptr<GpuContext>> gpu =
      GpuContext::Open(config.gpu, impl->host->region(), impl->host->capacity_bytes());
  if (!gpu.ok()) return gpu.status();
  impl->gpu = std::move(*gpu);
  if (config.nvme.enabled) {
    NvmeTierOptions no;
    no.paths = config.nvme.paths;
    no.capacity_bytes = config.nvme.capacity_bytes;
    no.metadata_dir = config.nvme.metadata_dir;
    if (no.metadata_dir.empty() && !no.paths.empty()) no.metadata_dir = no.paths[0] + ".meta";
    no.queue_depth = config.nvme.queue_depth;
    no.buffered = config.nvme.buffered;
    no.env = config.env;
    const iovec region{impl->host->region(), impl->host->capacity_bytes()};
    Result<std::unique_ptr<NvmeTier>> nv = NvmeTier::Open(no, std::span<const iovec>(&region, 1));
    if (!nv.ok()) return nv.status();
    impl->nvme = std::move(*nv);
    impl->io_pool = std::make_unique<TaskPool>(config.worker_threads);
    KVTIER_RETURN_IF_ERROR(impl->Recover());
  }
  if (config.redis.enabled) {
    const RedisConfig& rc = config.redis;
    if (rc.addresses.empty())
      return Status::InvalidArgument("store: redis.addresses is empty: name the server (host:port), or for a "
                                     "cluster any of its nodes");
    if (rc.op_timeout_ms == 0 || rc.lookup_timeout_ms == 0 || rc.connect_timeout_ms == 0)
      return Status::InvalidArgument("store: redis timeouts must be at least 1 ms");
    RedisTierOptions ro;
    ro.mode = rc.cluster ? RedisMode::kCluster : RedisMode::kStandalone;
    ro.seeds = rc.addresses;
    ro.username = rc.username;
    ro.password = rc.password;
    ro.pool_size = rc.pool_size;
    ro.connect_timeout = std::chrono::milliseconds(rc.connect_timeout_ms);
    ro.op_timeout = std::chrono::milliseconds(rc.op_timeout_ms);
    ro.op_timeout_per_mib = std::chrono::microseconds(rc.op_timeout_per_mib_us);
    ro.ttl_seconds = rc.ttl_seconds;
    ro.compression = rc.lz4 ? RedisCompression::kLz4 : RedisCompression::kNone;
    ro.get_piece_bytes = rc.get_piece_bytes;
    ro.key_prefix = rc.key_prefix;
    Result<std::unique_ptr<RedisTier>> rt = RedisTier::Open(ro);
    if (!rt.ok()) return rt.status().WithContext("store: redis tier: ");
    impl->redis = std::move(*rt);
  }
  for (uint32_t i = 0; i < config.worker_threads; ++i) impl->workers.emplace_back([p = impl.get()] { p->WorkerLoop(); });
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

Status Store::Close() {
  if (remote_) return remote_->Close();
  if (!impl_) return Status::OK();
  Impl& s = *impl_;
  std::unique_lock<std::shared_mutex> cl(s.close_mu);
  if (s.closed) return Status::OK();
  s.closed = true;
  {
    std::lock_guard<std::mutex> l(s.prefetch_mu);
    for (auto& [id, t] : s.prefetches) t->Cancel();
  }
  std::deque<Job> pending;
  {
    std::lock_guard<std::mutex> l(s.queue_mu);
    s.stopping = true;
    pending.swap(s.queue);
  }
  s.queue_cv.notify_all();
  for (Job& j : pending) j(/*abort=*/true);
  for (std::thread& w : s.workers) w.join();
  s.workers.clear();
  {
    std::unordered_map<uint64_t, std::shared_ptr<Impl::Lease>> left;
    {
      std::lock_guard<std::mutex> l(s.lease_mu);
      left.swap(s.leases);
    }
    for (auto& [id, lease] : left) s.EndLease(*lease);
  }
  s.io_pool.reset();
  s.nvme.reset();
  s.redis.reset();
  s.gpu.reset();  // unregisters the region before it is unmapped
  s.host.reset();
  return Status::OK();
}

// Rebuilds the indexes from the NVMe tier's metadata: namespaces first, then chunks in
// an order where parents come before children (NvmeTier::Recover guarantees it).
Status Store::Impl::Recover() {
  std::vector<std::pair<NamespaceId, std::string>> specs;
  std::vector<NvmeChunkRecord> chunks;
  KVTIER_RETURN_IF_ERROR(nvme->Recover(&specs, &chunks));
  std::unique_lock<std::shared_mutex> l(reg_mu);
  for (auto& [id, bytes] : specs) {
    Result<NamespaceSpec> spec = DecodeNamespaceSpec(bytes);
    if (!spec.ok() || !(ComputeNamespaceId(*spec) == id) || !host->CheckFits(ChunkPayloadBytes(spec->shape)).ok())
      continue;  // its chunks find no namespace below and are dropped
    namespaces[id] = std::make_shared<NamespaceState>(*spec, id, &clock);
  }
  for (const NvmeChunkRecord& r : chunks) {
    auto ns = namespaces.find(r.ns);
    bool ok = ns != namespaces.end() && r.payload_bytes == ns->second->payload_bytes &&
              ns->second->index.Insert(r.parent, r.key, TierId::kNvme).ok();
    if (ok) {
      Add(n.recovered_chunks, 1);
    } else {
      nvme->Remove(r.key);
    }
  }
  return Status::OK();
}

#define KVTIER_OPEN_GUARD(impl)                                   \
  std::shared_lock<std::shared_mutex> _close_guard((impl).close_mu); \
  if ((impl).closed) return Status::Closed("store is closed")

Result<NamespaceHandle> Store::RegisterNamespace(const NamespaceSpec& spec, const KvMemoryLayout& layout) {
  if (remote_) return remote_->RegisterNamespace(spec, layout);
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  KVTIER_RETURN_IF_ERROR(ValidateNamespaceSpec(spec));
  Result<Mover> mover = Mover::Create(spec.shape, layout);
  if (!mover.ok()) return mover.status();
  std::shared_ptr<GpuCopier> copier;
  if (layout.device >= 0) {  // engine memory on a GPU: the CUDA kernels copy it
    KVTIER_RETURN_IF_ERROR(s.gpu->CheckLayout(layout));
    Result<std::unique_ptr<GpuCopier>> c = GpuCopier::Create(s.gpu.get(), *mover, layout.device);
    if (!c.ok()) return c.status();
    copier = std::move(*c);
  } else if (layout.device != -1) {
    return Status::InvalidArgument("KV layout: device " + std::to_string(layout.device) +
                                   " is neither -1 (host memory) nor a CUDA device ordinal");
  }
  const NamespaceId id = ComputeNamespaceId(spec);
  std::unique_lock<std::shared_mutex> l(s.reg_mu);
  std::shared_ptr<NamespaceState>& ns = s.namespaces[id];
  if (!ns) {
    Status fits = s.host->CheckFits(ChunkPayloadBytes(spec.shape));
    if (!fits.ok()) {
      s.namespaces.erase(id);
      return fits;
    }
    if (s.nvme) {
      Status p = s.nvme->PutNamespace(id, EncodeNamespaceSpec(spec));
      if (!p.ok()) {
        s.namespaces.erase(id);
        return p;
      }
    }
    ns = std::make_shared<NamespaceState>(spec, id, &s.clock);
  }
  const uint32_t h = s.next_handle++;
  s.registrations.emplace(h, std::make_shared<Registration>(Registration{ns, std::move(*mover), std::move(copier)}));
  return NamespaceHandle{h};
}

Status Store::UnregisterNamespace(NamespaceHandle h) {
  if (remote_) return remote_->UnregisterNamespace(h);
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  std::unique_lock<std::shared_mutex> l(s.reg_mu);
  if (s.registrations.erase(h.id) == 0)
    return Status::NotFound("unknown namespace handle " + std::to_string(h.id));
  return Status::OK();
}

Result<LookupResult> Store::Lookup(NamespaceHandle h, std::span<const int32_t> tokens,
                                   std::span<const ExtraKey> extra_keys, const LookupOptions& options) {
  if (remote_) return remote_->Lookup(h, tokens, extra_keys, options);
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  std::shared_ptr<Registration> reg;
  std::vector<ChunkKey> keys;
  KVTIER_RETURN_IF_ERROR(s.ResolveKeys(h, tokens, extra_keys, &reg, &keys));
  NamespaceState& ns = *reg->ns;
  if (s.seen) s.seen->Ask(keys);
  std::vector<TierMask> residency;
  size_t m = ns.index.Match(keys, MatchOptions{}, &residency);
  if (m < keys.size() && s.redis && s.config.redis.probe_on_miss) {
    // Another Store may have put the rest of this prompt in Redis.
    const size_t more = s.ProbeRedis(ns, keys, m);
    residency.resize(std::max(residency.size(), m + more));
    for (size_t i = m; i < m + more; ++i) residency[i] = TierBit(TierId::kRedis);
    m += more;
  }
  LookupResult out;
  out.matched_chunks = out.cached_chunks = static_cast<uint32_t>(m);
  out.total_chunks = static_cast<uint32_t>(keys.size());
  out.matched_tokens = uint64_t{out.matched_chunks} * ns.spec.shape.chunk_tokens;
  out.chunk_tiers.resize(m);
  for (size_t i = 0; i < m; ++i) out.chunk_tiers[i] = static_cast<TierId>(__builtin_ctz(residency[i]));
  s.PlanLookup(ns, residency, &out);
  Add(s.n.lookups, 1);
  Add(s.n.lookup_hit_chunks, out.matched_chunks);
  Add(s.n.lookup_miss_chunks, keys.size() - out.matched_chunks);
  std::array<uint64_t, kTierCount> by_tier{};
  for (uint32_t i = 0; i < out.matched_chunks; ++i) ++by_tier[static_cast<size_t>(out.chunk_tiers[i])];
  Add(s.n.host_hit_chunks, by_tier[static_cast<size_t>(TierId::kGpu)] + by_tier[static_cast<size_t>(TierId::kHost)]);
  Add(s.n.nvme_hit_chunks, by_tier[static_cast<size_t>(TierId::kNvme)]);
  Add(s.n.redis_hit_chunks, by_tier[static_cast<size_t>(TierId::kRedis)]);
  const bool below_host = std::any_of(out.chunk_tiers.begin(), out.chunk_tiers.end(),
                                      [](TierId t) { return t != TierId::kHost; });
  if (options.prefetch && below_host) {
    auto t = std::make_shared<TicketState>(out.matched_chunks);
    uint64_t id = 0;
    {
      std::lock_guard<std::mutex> l(s.prefetch_mu);
      if (s.prefetches.size() < s.config.max_prefetches) {
        id = s.next_prefetch++;
        s.prefetches.emplace(id, t);
      }
    }
    // Pinned until the prefetch ends, so that what it brings up stays. Pinned by a match:
    // a chunk evicted since the lookup's match ends the run (pinning it by key would miss
    // it, and the prefetch's unpin would then take a pin another reader holds on a chunk
    // cached again under that key).
    if (id != 0) {
      keys.resize(out.matched_chunks);
      MatchOptions pin;
      pin.touch = false;
      pin.pin = true;
      keys.resize(ns.index.Match(keys, pin));
      if (keys.empty()) {
        std::lock_guard<std::mutex> l(s.prefetch_mu);
        s.prefetches.erase(id);
        id = 0;
      }
    }
    if (id == 0) {
      Add(s.n.prefetch_skipped, 1);
    } else {
      const auto deadline = std::chrono::steady_clock::now() + options.prefetch_deadline;
      Add(s.n.prefetches, 1);
      out.prefetch_id = id;
      s.Enqueue([&s, reg, keys = std::move(keys), deadline, t, id](bool abort) {
        if (abort) {
          reg->ns->index.Unpin(keys);
          t->Finish(Status::Cancelled("prefetch: store closed before it ran"), 0);
        } else {
          s.RunPrefetch(*reg, keys, keys.size(), deadline, *t);
        }
        std::lock_guard<std::mutex> l(s.prefetch_mu);
        s.prefetches.erase(id);
      });
    }
  }
  return out;
}

Status Store::CancelPrefetch(uint64_t prefetch_id) {
  if (remote_) return remote_->CancelPrefetch(prefetch_id);
  Impl& s = *impl_;
  std::lock_guard<std::mutex> l(s.prefetch_mu);
  auto it = s.prefetches.find(prefetch_id);
  if (it == s.prefetches.end())
    return Status::NotFound("prefetch " + std::to_string(prefetch_id) + " is finished or unknown");
  it->second->Cancel();
  return Status::OK();
}

Status Store::SetPrefillRate(NamespaceHandle h, double tokens_per_second) {
  if (remote_) return remote_->SetPrefillRate(h, tokens_per_second);
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  Result<std::shared_ptr<Registration>> r = s.Find(h);
  if (!r.ok()) return r.status();
  if (!(tokens_per_second == tokens_per_second))
    return Status::InvalidArgument("prefill rate is not a number");
  (*r)->ns->prefill_tps.store(std::max(tokens_per_second, 0.0), std::memory_order_relaxed);
  return Status::OK();
}

Status Store::ReportPrefill(NamespaceHandle h, uint64_t tokens, double seconds) {
  if (remote_) return remote_->ReportPrefill(h, tokens, seconds);
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  Result<std::shared_ptr<Registration>> r = s.Find(h);
  if (!r.ok()) return r.status();
  if (tokens == 0 || !(seconds > 0))
    return Status::InvalidArgument("prefill report needs tokens > 0 and seconds > 0; got " + std::to_string(tokens) +
                                   " tokens in " + std::to_string(seconds) + " s");
  const double v = static_cast<double>(tokens) / seconds;
  std::atomic<double>& rate = (*r)->ns->prefill_tps;
  double cur = rate.load(std::memory_order_relaxed);
  while (!rate.compare_exchange_weak(cur, cur > 0 ? 0.8 * cur + 0.2 * v : v, std::memory_order_relaxed)) {
  }
  return Status::OK();
}

Result<uint32_t> Store::PinPrefix(NamespaceHandle h, std::span<const int32_t> tokens,
                                  std::span<const ExtraKey> extra_keys) {
  if (remote_) return remote_->PinPrefix(h, tokens, extra_keys);
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  std::shared_ptr<Registration> reg;
  std::vector<ChunkKey> keys;
  KVTIER_RETURN_IF_ERROR(s.ResolveKeys(h, tokens, extra_keys, &reg, &keys));
  NamespaceState* ns = reg->ns.get();
  MatchOptions mo;
  mo.pin = true;
  std::lock_guard<std::mutex> l(s.sticky_mu);
  const size_t m = ns->index.Match(keys, mo);
  for (size_t i = 0; i < m; ++i) ++s.sticky[{ns, keys[i].lo, keys[i].hi}];
  return static_cast<uint32_t>(m);
}

Status Store::UnpinPrefix(NamespaceHandle h, std::span<const int32_t> tokens, std::span<const ExtraKey> extra_keys) {
  if (remote_) return remote_->UnpinPrefix(h, tokens, extra_keys);
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  std::shared_ptr<Registration> reg;
  std::vector<ChunkKey> keys;
  KVTIER_RETURN_IF_ERROR(s.ResolveKeys(h, tokens, extra_keys, &reg, &keys));
  NamespaceState* ns = reg->ns.get();
  std::lock_guard<std::mutex> l(s.sticky_mu);
  for (const ChunkKey& k : keys) {
    auto it = s.sticky.find({ns, k.lo, k.hi});
    if (it == s.sticky.end()) continue;
    ns->index.Unpin(std::span<const ChunkKey>(&k, 1));
    if (--it->second == 0) s.sticky.erase(it);
  }
  return Status::OK();
}

// What a save or load job needs, copied out of the caller's spans.
struct Store::Impl::CopyRequest {
  std::shared_ptr<Registration> reg;
  std::vector<ChunkKey> keys;
  std::vector<int32_t> blocks;  // the whole chunks' block ids
  std::vector<int32_t> tokens;  // the whole chunks' tokens (saves only)
};

Result<std::shared_ptr<Store::Impl::CopyRequest>> Store::Impl::MakeCopyRequest(
    NamespaceHandle h, std::span<const int32_t> tokens, std::span<const int32_t> block_ids,
    std::span<const ExtraKey> extra_keys, bool keep_tokens) {
  Result<std::shared_ptr<Registration>> r = Find(h);
  if (!r.ok()) return r.status();
  if (!(*r)->mover)
    return Status::InvalidArgument("namespace handle " + std::to_string(h.id) +
                                   " was registered without engine memory: it serves lookups and leases only");
  auto req = std::make_shared<CopyRequest>();
  req->reg = std::move(*r);
  KVTIER_RETURN_IF_ERROR(PrepareRequest(*req->reg, tokens, block_ids, extra_keys, true, &req->keys));
  const uint64_t chunks = req->keys.size();
  req->blocks.assign(block_ids.begin(), block_ids.begin() + chunks * req->reg->mover->blocks_per_chunk());
  if (keep_tokens) req->tokens.assign(tokens.begin(), tokens.begin() + chunks * req->reg->ns->spec.shape.chunk_tokens);
  return req;
}

Result<Ticket> Store::Save(NamespaceHandle h, std::span<const int32_t> tokens, std::span<const int32_t> block_ids,
                           std::span<const ExtraKey> extra_keys, const CopyOptions& options) {
  if (remote_) return remote_->Save(h, tokens, block_ids, extra_keys, options);
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  Result<std::shared_ptr<Impl::CopyRequest>> req = s.MakeCopyRequest(h, tokens, block_ids, extra_keys, true);
  if (!req.ok()) return req.status();
  auto t = std::make_shared<TicketState>(static_cast<uint32_t>((*req)->keys.size()));
  Add(s.n.saves, 1);
  s.Enqueue([&s, q = *req, t, wait_event = options.cuda_wait_event](bool abort) {
    if (abort) {
      Add(s.n.save_failed_chunks, q->keys.size());
      t->Finish(Status::Cancelled("save: store closed before the save ran"), 0);
      return;
    }
    s.RunSave(*q->reg, q->keys, q->blocks, q->tokens, wait_event, *t);
  });
  return Ticket(std::move(t));
}

Result<Ticket> Store::Load(NamespaceHandle h, std::span<const int32_t> tokens, std::span<const int32_t> block_ids,
                           std::span<const ExtraKey> extra_keys, const CopyOptions& options) {
  if (remote_) return remote_->Load(h, tokens, block_ids, extra_keys, options);
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  Result<std::shared_ptr<Impl::CopyRequest>> req = s.MakeCopyRequest(h, tokens, block_ids, extra_keys, false);
  if (!req.ok()) return req.status();
  // Pin now, so that what is cached at submission stays cached until it is copied.
  MatchOptions mo;
  mo.tiers = TierBit(TierId::kHost) | (s.nvme ? TierBit(TierId::kNvme) : 0) | (s.redis ? TierBit(TierId::kRedis) : 0);
  mo.pin = true;
  std::vector<TierMask> residency;
  const size_t matched = (*req)->reg->ns->index.Match((*req)->keys, mo, &residency);
  // What this load will move from each tier, for the planner's queueing estimate.
  std::array<uint64_t, kTierCount> queued{};
  for (size_t i = 0; i < matched; ++i) queued[__builtin_ctz(residency[i])] += (*req)->reg->ns->payload_bytes;
  for (int i = 0; i < kTierCount; ++i) Add(s.queued_bytes[i], queued[i]);
  auto t = std::make_shared<TicketState>(static_cast<uint32_t>((*req)->keys.size()));
  Add(s.n.loads, 1);
  s.Enqueue([&s, q = *req, matched, t, queued, wait_event = options.cuda_wait_event](bool abort) {
    if (abort) {
      q->reg->ns->index.Unpin(std::span<const ChunkKey>(q->keys.data(), matched));
      Add(s.n.load_failed_chunks, q->keys.size());
      t->Finish(Status::Cancelled("load: store closed before the load ran"), 0);
    } else {
      s.RunLoad(*q->reg, q->keys, matched, q->blocks, wait_event, *t);
    }
    for (int i = 0; i < kTierCount; ++i) s.queued_bytes[i].fetch_sub(queued[i], std::memory_order_relaxed);
  });
  return Ticket(std::move(t));
}

StoreStats Store::Stats() const {
  if (remote_) {  // the daemon's counters for this tenant; zeros when it is unreachable
    Result<StoreStats> r = remote_->Stats();
    return r.ok() ? *r : StoreStats{};
  }
  const Impl& s = *impl_;
  StoreStats o;
  auto g = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
  o.lookups = g(s.n.lookups);
  o.lookup_hit_chunks = g(s.n.lookup_hit_chunks);
  o.lookup_miss_chunks = g(s.n.lookup_miss_chunks);
  o.host_hit_chunks = g(s.n.host_hit_chunks);
  o.nvme_hit_chunks = g(s.n.nvme_hit_chunks);
  o.redis_hit_chunks = g(s.n.redis_hit_chunks);
  o.saves = g(s.n.saves);
  o.saved_chunks = g(s.n.saved_chunks);
  o.save_dedup_chunks = g(s.n.save_dedup_chunks);
  o.save_failed_chunks = g(s.n.save_failed_chunks);
  o.loads = g(s.n.loads);
  o.loaded_chunks = g(s.n.loaded_chunks);
  o.load_failed_chunks = g(s.n.load_failed_chunks);
  o.bytes_saved = g(s.n.bytes_saved);
  o.bytes_loaded = g(s.n.bytes_loaded);
  o.evictions = g(s.n.evictions);
  o.corrupt_chunks = g(s.n.corrupt_chunks);
  std::shared_lock<std::shared_mutex> cl(s.close_mu);
  if (s.host) {
    o.host_capacity_bytes = s.host->capacity_bytes();
    o.host_used_bytes = s.host->used_bytes();
    o.host_chunks = s.host->chunk_count();
    o.huge_pages = s.host->huge_pages();
  }
  if (s.nvme) {
    NvmeStats ns = s.nvme->Stats();
    o.nvme_enabled = true;
    o.nvme_capacity_bytes = ns.capacity_bytes;
    o.nvme_used_bytes = ns.used_bytes;
    o.nvme_chunks = ns.chunks;
    o.nvme_corrupt_chunks = ns.corrupt_chunks;
    o.nvme_dropped_records = ns.dropped_records;
    o.nvme_write_errors = ns.write_errors;
    o.nvme_read_errors = ns.read_errors;
    o.nvme_io_backend = ns.io_backend;
  }
  if (s.redis) {
    RedisTierStats rs = s.redis->Stats();
    o.redis_enabled = true;
    o.redis_breaker = BreakerStateName(rs.breaker.state);
    o.redis_corrupt_chunks = rs.corrupt;
    o.redis_errors = rs.errors;
    o.redis_timeouts = rs.timeouts;
    o.redis_breaker_opens = rs.breaker.opens;
    o.redis_breaker_closes = rs.breaker.closes;
    o.redis_skipped = rs.breaker.skipped_ops;
    o.redis_bytes_out = rs.bytes_out;
    o.redis_bytes_in = rs.bytes_in;
  }
  o.redis_saved_chunks = g(s.n.redis_saved);
  o.redis_dropped_saves = g(s.n.redis_dropped);
  o.redis_loaded_chunks = g(s.n.redis_loaded);
  o.redis_probe_hits = g(s.n.redis_probe_hits);
  o.redis_misses = g(s.n.redis_misses);
  o.redis_evictions = g(s.n.redis_evictions);
  o.redis_used_bytes = g(s.redis_used);
  o.gpu_saved_chunks = g(s.n.gpu_saved);
  o.gpu_loaded_chunks = g(s.n.gpu_loaded);
  if (s.gpu) {
    o.gpu_host_registered = s.gpu->host_registered();
    o.gpu = s.gpu->reason();
    if (HbmTier* h = s.gpu->hbm()) {
      const HbmTierStats hs = h->Stats();
      o.hbm_capacity_bytes = hs.capacity_bytes;
      o.hbm_used_bytes = hs.used_bytes;
      o.hbm_chunks = hs.chunks;
      o.hbm_hits = hs.hits;
      o.hbm_inserts = hs.inserts;
      o.hbm_evictions = hs.evictions;
    }
  }
  o.admission_rejected_chunks = g(s.n.admission_rejected);
  o.prefetches = g(s.n.prefetches);
  o.prefetch_skipped = g(s.n.prefetch_skipped);
  o.prefetched_chunks = g(s.n.prefetched_chunks);
  o.planner_skipped_chunks = g(s.n.planner_skipped);
  {
    std::lock_guard<std::mutex> l(s.sticky_mu);
    o.pinned_chunks = s.sticky.size();
  }
  o.demotions = g(s.n.demotions);
  o.write_throughs = g(s.n.write_throughs);
  o.promotions = g(s.n.promotions);
  o.recovered_chunks = g(s.n.recovered_chunks);
  std::shared_lock<std::shared_mutex> rl(s.reg_mu);
  o.namespaces = static_cast<uint32_t>(s.namespaces.size());
  for (auto& [id, ns] : s.namespaces) {
    o.index_chunks += ns->index.size();
    o.index_memory_bytes += ns->index.MemoryUsage();
  }
  return o;
}

// ---- leases --------------------------------------------------------------------------------

uint64_t Store::Impl::AddLease(std::shared_ptr<Lease> lease) {
  std::lock_guard<std::mutex> l(lease_mu);
  const uint64_t id = next_lease++;
  leases.emplace(id, std::move(lease));
  return id;
}

Result<std::shared_ptr<Store::Impl::Lease>> Store::Impl::TakeLease(uint64_t id, bool save) {
  std::lock_guard<std::mutex> l(lease_mu);
  auto it = leases.find(id);
  if (it == leases.end() || it->second->save != save)
    return Status::NotFound(std::string(save ? "save" : "load") + " lease " + std::to_string(id) +
                            " is unknown or already ended");
  std::shared_ptr<Lease> lease = std::move(it->second);
  leases.erase(it);
  return lease;
}

void Store::Impl::EndLease(Lease& lease) {
  NamespaceState& ns = *lease.reg->ns;
  if (lease.save) {
    for (const SlotId& slot : lease.slots) host->Free(slot);
  }
  lease.slots.clear();
  ns.index.Unpin(std::span<const ChunkKey>(lease.keys.data(), lease.matched));
  lease.matched = 0;
  if (!lease.save) SettleBringUp(ns, lease.bring_up);
}

Result<NamespaceHandle> Store::RegisterNamespace(const NamespaceSpec& spec) {
  if (remote_) return Status::NotSupported("namespaces without engine memory are for embedded stores (kvtierd)");
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  KVTIER_RETURN_IF_ERROR(ValidateNamespaceSpec(spec));
  const NamespaceId id = ComputeNamespaceId(spec);
  std::unique_lock<std::shared_mutex> l(s.reg_mu);
  std::shared_ptr<NamespaceState>& ns = s.namespaces[id];
  if (!ns) {
    Status fits = s.host->CheckFits(ChunkPayloadBytes(spec.shape));
    if (fits.ok() && s.nvme) fits = s.nvme->PutNamespace(id, EncodeNamespaceSpec(spec));
    if (!fits.ok()) {
      s.namespaces.erase(id);
      return fits;
    }
    ns = std::make_shared<NamespaceState>(spec, id, &s.clock);
  }
  const uint32_t h = s.next_handle++;
  s.registrations.emplace(h, std::make_shared<Registration>(Registration{ns, std::nullopt, nullptr}));
  return NamespaceHandle{h};
}

Result<SaveLease> Store::ReserveSave(NamespaceHandle h, std::span<const int32_t> tokens,
                                     std::span<const ExtraKey> extra_keys) {
  if (remote_) return Status::NotSupported("save leases are for embedded stores (kvtierd)");
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  auto lease = std::make_shared<Impl::Lease>();
  lease->save = true;
  KVTIER_RETURN_IF_ERROR(s.ResolveKeys(h, tokens, extra_keys, &lease->reg, &lease->keys));
  NamespaceState& ns = *lease->reg->ns;
  SaveLease out;
  out.total_chunks = static_cast<uint32_t>(lease->keys.size());
  out.payload_bytes = ns.payload_bytes;
  Add(s.n.saves, 1);
  const uint64_t tokens_saved = uint64_t{out.total_chunks} * ns.spec.shape.chunk_tokens;
  if (tokens_saved < s.config.admission.min_tokens) {
    Add(s.n.admission_rejected, out.total_chunks);
    Add(s.n.save_failed_chunks, out.total_chunks);
    return out;  // nothing to write; the save stores nothing
  }
  lease->tokens.assign(tokens.begin(), tokens.begin() + uint64_t{out.total_chunks} * ns.spec.shape.chunk_tokens);
  MatchOptions mo;
  mo.tiers = TierBit(TierId::kHost);
  mo.pin = true;
  lease->matched = ns.index.Match(lease->keys, mo);
  out.cached_chunks = static_cast<uint32_t>(lease->matched);
  Status st;
  if (lease->matched < lease->keys.size()) s.AllocateSlots(ns, lease->keys.size() - lease->matched, &lease->slots, &st);
  const uint32_t ct = ns.spec.shape.chunk_tokens;
  for (size_t j = 0; j < lease->slots.size(); ++j) {
    uint8_t* addr = s.host->SlotAddress(lease->slots[j]);
    if (ct <= kMaxPageTokens)  // the tokens travel with the chunk to lower tiers' metadata
      std::memcpy(addr + kChunkTokensOffset, lease->tokens.data() + (lease->matched + j) * ct,
                  uint64_t{ct} * sizeof(int32_t));
    out.payload_offsets.push_back(lease->slots[j].offset + kChunkPayloadOffset);
  }
  if (lease->slots.empty() && lease->matched < lease->keys.size() && lease->matched == 0) {
    s.EndLease(*lease);
    Add(s.n.save_failed_chunks, out.total_chunks);
    return st.ok() ? Status::NoSpace("save lease: no host slot could be reserved") : st.WithContext("save lease: ");
  }
  out.id = s.AddLease(std::move(lease));
  return out;
}

Result<uint32_t> Store::CommitSave(uint64_t id, uint32_t written) {
  if (remote_) return Status::NotSupported("save leases are for embedded stores (kvtierd)");
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  Result<std::shared_ptr<Impl::Lease>> lease = s.TakeLease(id, true);
  if (!lease.ok()) return lease.status();
  Impl::Lease& l = **lease;
  if (written > l.slots.size()) {
    const size_t reserved = l.slots.size();
    s.EndLease(l);
    return Status::InvalidArgument("save lease " + std::to_string(id) + ": " + std::to_string(written) +
                                   " chunks written, but " + std::to_string(reserved) + " were reserved");
  }
  for (size_t j = written; j < l.slots.size(); ++j) s.host->Free(l.slots[j]);
  l.slots.resize(written);
  TicketState t(static_cast<uint32_t>(l.keys.size()));
  const size_t unwritten = l.keys.size() - l.matched - written;
  Status short_st = unwritten == 0 ? Status::OK()
                                   : Status::Cancelled(std::to_string(unwritten) + " chunks were not written");
  // SaveChunks takes over the pins and the slots.
  s.SaveChunks(*l.reg, l.keys, {}, l.tokens, l.matched, &l.slots, std::move(short_st), t);
  l.slots.clear();
  l.matched = 0;
  Status st = t.status();
  if (!st.ok())
    return st.WithContext("save lease: " + std::to_string(t.chunks_done()) + " of " +
                          std::to_string(l.keys.size()) + " chunks stored: ");
  return t.chunks_done();
}

Status Store::AbortSave(uint64_t id) {
  if (remote_) return Status::NotSupported("save leases are for embedded stores (kvtierd)");
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  Result<std::shared_ptr<Impl::Lease>> lease = s.TakeLease(id, true);
  if (!lease.ok()) return lease.status();
  Add(s.n.save_failed_chunks, (*lease)->keys.size() - (*lease)->matched);
  s.EndLease(**lease);
  return Status::OK();
}

Result<LoadLease> Store::AcquireLoad(NamespaceHandle h, std::span<const int32_t> tokens,
                                     std::span<const ExtraKey> extra_keys) {
  if (remote_) return Status::NotSupported("load leases are for embedded stores (kvtierd)");
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  auto lease = std::make_shared<Impl::Lease>();
  KVTIER_RETURN_IF_ERROR(s.ResolveKeys(h, tokens, extra_keys, &lease->reg, &lease->keys));
  NamespaceState& ns = *lease->reg->ns;
  LoadLease out;
  out.total_chunks = static_cast<uint32_t>(lease->keys.size());
  out.payload_bytes = ns.payload_bytes;
  Add(s.n.loads, 1);
  MatchOptions mo;
  mo.tiers = TierBit(TierId::kHost) | (s.nvme ? TierBit(TierId::kNvme) : 0) | (s.redis ? TierBit(TierId::kRedis) : 0);
  mo.pin = true;
  lease->matched = ns.index.Match(lease->keys, mo);
  lease->slots = s.BringUp(ns, lease->keys, lease->matched, [] { return false; }, &lease->bring_up);
  const uint32_t got = static_cast<uint32_t>(lease->slots.size());
  for (const SlotId& slot : lease->slots) out.payload_offsets.push_back(slot.offset + kChunkPayloadOffset);
  Add(s.n.loaded_chunks, got);
  Add(s.n.bytes_loaded, uint64_t{got} * ns.payload_bytes);
  Add(s.n.load_failed_chunks, out.total_chunks - got);
  if (!lease->bring_up.status.ok()) {
    out.status = lease->bring_up.status.WithContext("load lease: ");
  } else if (got < out.total_chunks) {
    out.status = Status::NotFound("load: chunk " + std::to_string(got) + " of " + std::to_string(out.total_chunks) +
                                  " is not cached; recompute from token " +
                                  std::to_string(uint64_t{got} * ns.spec.shape.chunk_tokens));
  }
  if (got == 0) {
    s.EndLease(*lease);
    return out;
  }
  out.id = s.AddLease(std::move(lease));
  return out;
}

Status Store::ReleaseLoad(uint64_t id) {
  if (remote_) return Status::NotSupported("load leases are for embedded stores (kvtierd)");
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  Result<std::shared_ptr<Impl::Lease>> lease = s.TakeLease(id, false);
  if (!lease.ok()) return lease.status();
  s.EndLease(**lease);
  return Status::OK();
}

Result<SharedRegion> Store::SharedHostRegion() const {
  if (remote_) return Status::NotSupported("the shared host region belongs to the daemon's embedded store");
  const Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  if (s.host->shared_fd() < 0)
    return Status::NotSupported("the host region is not shared: open the store with shared_host_region = true");
  return SharedRegion{s.host->shared_fd(), s.host->capacity_bytes()};
}

Result<uint64_t> Store::Flush() {
  if (remote_) return Status::NotSupported("flush is the daemon's (it flushes at SIGTERM)");
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  if (!s.nvme) return Status::NotSupported("flush: the store has no NVMe tier");
  if (s.config.nvme.policy == WritePolicy::kNone) return uint64_t{0};
  std::vector<std::shared_ptr<NamespaceState>> all;
  {
    std::shared_lock<std::shared_mutex> l(s.reg_mu);
    for (auto& [id, ns] : s.namespaces) all.push_back(ns);
  }
  const uint64_t before = s.n.demotions.load(std::memory_order_relaxed);
  for (const std::shared_ptr<NamespaceState>& ns : all) {
    // Host-only chunks, parents first (an NVMe record names its parent).
    std::vector<std::pair<std::shared_ptr<NamespaceState>, LeafCandidate>> todo;
    ns->index.ForEach([&](const ChunkKey& key, const std::optional<ChunkKey>&, TierMask residency, uint64_t tick) {
      if ((residency & TierBit(TierId::kHost)) && !(residency & TierBit(TierId::kNvme)))
        todo.push_back({ns, LeafCandidate{key, tick}});
    });
    for (size_t i = 0; i < todo.size(); i += kDemoteBatch) {
      std::vector<std::pair<std::shared_ptr<NamespaceState>, LeafCandidate>> batch(
          todo.begin() + static_cast<ptrdiff_t>(i),
          todo.begin() + static_cast<ptrdiff_t>(std::min(todo.size(), i + kDemoteBatch)));
      std::unique_lock<std::mutex> l(s.placement_mu);
      s.DemoteBatch(l, batch);
    }
  }
  return s.n.demotions.load(std::memory_order_relaxed) - before;
}

Result<std::vector<NamespaceInfo>> Store::ListNamespaces() const {
  if (remote_) return remote_->ListNamespaces();
  const Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  std::shared_lock<std::shared_mutex> l(s.reg_mu);
  std::vector<NamespaceInfo> out;
  for (const auto& [id, ns] : s.namespaces) {
    NamespaceInfo info;
    info.spec = ns->spec;
    info.chunks = ns->index.size();
    info.host_chunks = ns->index.CountResident(TierId::kHost);
    info.nvme_chunks = ns->index.CountResident(TierId::kNvme);
    info.redis_chunks = ns->index.CountResident(TierId::kRedis);
    for (const auto& [h, r] : s.registrations)
      if (r->ns == ns) ++info.registrations;
    out.push_back(std::move(info));
  }
  return out;
}

Result<std::unique_ptr<Store>> Store::Connect(const DaemonClientConfig& config) {
  Result<std::shared_ptr<DaemonClient>> c = DaemonClient::Connect(config);
  if (!c.ok()) return c.status();
  return std::unique_ptr<Store>(new Store(std::move(*c)));
}

}  // namespace kvtier
