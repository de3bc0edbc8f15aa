// kvtier C++ API: the embedded Store.
//
//   auto store = Store::Open(config);                 // one per process (or per daemon)
//   auto ns = store->RegisterNamespace(spec, layout); // model identity + engine KV memory
//   store->Lookup(*ns, tokens)                        // how many leading tokens are cached
//   store->Save(*ns, tokens, block_ids)  -> Ticket    // copy those blocks' KV into the cache
//   store->Load(*ns, tokens, block_ids)  -> Ticket    // copy the cached prefix back into blocks
//
// Only whole chunks (shape.chunk_tokens tokens) are stored; a trailing partial chunk of
// `tokens` is ignored by every call. `block_ids` names the engine blocks holding the
// tokens in order: chunk i uses block_ids[i*B, (i+1)*B) with B = chunk_tokens / block_tokens.
//
// Saves and loads run asynchronously on the Store's workers. The engine must not
// change (save) or read (load) those blocks until the ticket is done. A ticket may
// complete partially: chunks_done() leading chunks succeeded and the rest should be
// recomputed. A chunk that fails an identity or checksum check is never counted as
// loaded. The blocks of any chunk past chunks_done may have been written all the same: a
// large chunk read from Redis in pieces is copied into its blocks layer by layer as it
// arrives, ahead of its checksum, so that copying overlaps the network; when it then fails
// its check, goes missing or unreachable partway, or the load is cancelled, the ticket
// stops before it and those blocks are the engine's to recompute.
//
// Thread-safety: every Store method may be called from any thread. A Ticket is used by
// one thread at a time (Cancel may come from any thread).
#ifndef KVTIER_STORE_H_
#define KVTIER_STORE_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

enum class HugePages : uint8_t {
  kAuto = 0,     // hugetlbfs pages if reserved, else transparent huge pages, else normal pages
  kOff = 1,      // normal pages only
  kRequire = 2,  // fail Open when hugetlbfs pages cannot be mapped
};

class Env;

// What a tier below host DRAM receives.
enum class WritePolicy : uint8_t {
  kWriteBack = 0,     // chunks go down when host eviction demotes them (LRU leaves)
  kWriteThrough = 1,  // every save also goes down; a save is done when it is durable there
  kNone = 2,          // never written by this Store (a read-only or externally filled tier)
};

// The NVMe tier (T2): data files on local disk, metadata in RocksDB. Off unless enabled.
struct NvmeConfig {
  bool enabled = false;
  std::vector<std::string> paths;  // data files, preallocated; capacity is split evenly
  uint64_t capacity_bytes = 0;
  std::string metadata_dir;        // RocksDB directory; default: paths[0] + ".meta"
  uint32_t queue_depth = 16;       // I/Os in flight per queue (one queue per concurrent caller)
  bool buffered = false;           // no O_DIRECT (for filesystems without it, e.g. tmpfs)
  WritePolicy policy = WritePolicy::kWriteBack;
};

// The Redis tier (T3): chunks in Redis or a Redis Cluster, shared by every Store that
// uses the same servers and key prefix (keys derive only from namespace and ChunkKey).
// Off unless enabled. Redis is never on an engine call's failure path: errors and
// timeouts trip a circuit breaker, and while it is open the tier is skipped (misses;
// saves still succeed in the tiers above and their Redis copies are dropped, counted).
struct RedisConfig {
  bool enabled = false;
  bool cluster = false;                 // Redis Cluster (slot routing, MOVED/ASK) or one server
  std::vector<std::string> addresses;   // "host:port"; cluster: any of its nodes
  std::string username;                 // ACL user; empty: the default user
  std::string password;                 // empty: no AUTH
  uint32_t pool_size = 8;               // idle connections kept per node
  uint32_t connect_timeout_ms = 500;
  uint32_t op_timeout_ms = 2000;        // deadline of one batch of Redis reads or writes, plus:
  uint32_t op_timeout_per_mib_us = 10000;  // per MiB the batch moves (10 ms: a 100 MB/s floor)
  uint32_t lookup_timeout_ms = 100;     // deadline of a lookup's probe (Lookup is synchronous)
  uint32_t ttl_seconds = 0;             // 0: chunks do not expire
  bool lz4 = false;                     // compress values (the benchmark reports ratio and cost)
  // Loads read an uncompressed value longer than twice this as GETRANGEs of this many
  // bytes (Redis serves a large value in 1 MiB ranges about twice as fast as with one GET);
  // 0: one GET per value.
  uint64_t get_piece_bytes = 1ull << 20;
  std::string key_prefix = "kvt";
  // Bytes of values this Store keeps in Redis (header + payload of the chunks its index
  // holds there, its own and those it found); beyond, it deletes its least recently used
  // Redis leaves. 0: no limit of its own (Redis's maxmemory and the TTL decide).
  uint64_t capacity_bytes = 0;
  // kWriteThrough: every save also goes to Redis (within the save's ticket, best effort:
  // a failed Redis write does not fail the save). kWriteBack: chunks go to Redis when host
  // eviction takes them. kNone: read only (lookups probe, loads read).
  WritePolicy policy = WritePolicy::kWriteThrough;
  bool probe_on_miss = true;            // a lookup that misses locally asks Redis (one round trip)
};

// The offload-or-recompute planner: a lookup reports a cached chunk only when loading it
// is expected to finish sooner than the engine would recompute it. It needs the
// namespace's prefill rate (Store::SetPrefillRate, or learned from Store::ReportPrefill);
// until one is known, every cached chunk is reported. Tier bandwidths start at the values
// below and follow what loads measure (per-request throughput, so concurrency shows).
struct PlannerConfig {
  bool enabled = true;
  double host_gbps = 8.0;   // initial estimates (GB/s) until loads measure them
  double nvme_gbps = 1.5;
  double redis_gbps = 1.0;
};

// What a save must be to be stored, per tier below host.
struct AdmissionConfig {
  uint32_t min_tokens = 0;         // a save of fewer tokens stores nothing (a miss, counted)
  bool nvme_second_hit = false;    // NVMe takes a chunk only once it has been asked for before
  bool redis_second_hit = false;   // the same for Redis
};

// The GPU path (kvtier built with CUDA). Engines whose KV lives on a GPU register it with
// KvMemoryLayout::device; saves and loads then run the CUDA copy kernels between its
// blocks and the host tier, which is registered with the driver for DMA.
enum class HostRegistration : uint8_t {
  kAuto = 0,     // register when a device is present; carry on without (GPU namespaces refused)
  kOff = 1,      // never (GPU namespaces refused)
  kRequire = 2,  // fail Open when the region cannot be registered
};

struct GpuConfig {
  HostRegistration register_host = HostRegistration::kAuto;
  int32_t device = 0;              // CUDA device of the HBM tier (and of registration)
  // HBM tier (T0): device memory holding copies of hot chunks, so a GPU load of one is a
  // device-to-device copy. 0: off. Needs a device.
  uint64_t hbm_capacity_bytes = 0;
};

struct StoreConfig {
  uint64_t host_capacity_bytes = 1ull << 30;  // the host tier's region
  HugePages huge_pages = HugePages::kAuto;
  bool prefault = true;          // touch the region at Open so that saves never page-fault
  uint32_t worker_threads = 2;   // threads that run saves and loads
  uint64_t max_request_tokens = 1ull << 21;  // a call naming more tokens is refused
  NvmeConfig nvme;
  RedisConfig redis;
  PlannerConfig planner;
  AdmissionConfig admission;
  uint32_t max_prefetches = 4;   // prefetches running at once; a lookup beyond that starts none
  // The host region is a memfd (SharedHostRegion) that other processes map: kvtierd's
  // clients copy between their engine memory and it (leases, below). Huge pages then come
  // from hugetlbfs only (kAuto: when reserved), as shared memory gets no transparent ones.
  bool shared_host_region = false;
  GpuConfig gpu;
  Env* env = nullptr;  // file system for the NVMe tier (tests inject faults); default POSIX
};

struct NamespaceHandle {
  uint32_t id = 0;  // 0 is never a valid handle
};

struct LookupOptions {
  // Start bringing the matched chunks that sit below host (NVMe, Redis) into host DRAM
  // now, so that the load that follows finds them there (it waits only for what has not
  // arrived). Runs in the background, bounded by max_prefetches, until done, cancelled
  // (CancelPrefetch, Close) or past its deadline.
  bool prefetch = false;
  std::chrono::milliseconds prefetch_deadline{10000};
};

// Per save or load.
struct CopyOptions {
  // GPU namespaces: a CUDA event (cudaEvent_t) the engine recorded on its stream after
  // writing the blocks to save (or last reading the blocks a load overwrites). The
  // Store's copies wait for it on the GPU, so the engine need not synchronize first.
  // It must stay valid until the ticket is done. Ignored for host namespaces.
  void* cuda_wait_event = nullptr;
};

struct LookupResult {
  uint64_t matched_tokens = 0;     // leading tokens worth loading (whole chunks, planner applied)
  uint32_t matched_chunks = 0;
  uint32_t total_chunks = 0;       // whole chunks in the request
  uint32_t cached_chunks = 0;      // leading chunks cached in some tier (before the planner)
  std::vector<TierId> chunk_tiers; // fastest tier holding each matched chunk
  // The planner's view of the matched prefix (zero when no prefill rate is known).
  double expected_load_seconds = 0;       // loading the matched chunks, queueing included
  double expected_recompute_seconds = 0;  // recomputing them instead
  double expected_saving_seconds = 0;     // the difference; never negative
  uint64_t prefetch_id = 0;        // the prefetch started (LookupOptions::prefetch), 0 if none
};

// Counters since Open. Monotonic except the *_bytes/chunks gauges.
struct StoreStats {
  uint64_t lookups = 0;
  uint64_t lookup_hit_chunks = 0;
  uint64_t lookup_miss_chunks = 0;
  // lookup_hit_chunks by the fastest tier that held each (an HBM copy counts as host).
  uint64_t host_hit_chunks = 0;
  uint64_t nvme_hit_chunks = 0;
  uint64_t redis_hit_chunks = 0;
  uint64_t saves = 0;
  uint64_t saved_chunks = 0;         // newly stored
  uint64_t save_dedup_chunks = 0;    // already cached, skipped
  uint64_t save_failed_chunks = 0;   // requested but not stored (no space, cancelled, error)
  uint64_t loads = 0;
  uint64_t loaded_chunks = 0;
  uint64_t load_failed_chunks = 0;   // requested but not loaded (miss, cancelled, corrupt)
  uint64_t bytes_saved = 0;
  uint64_t bytes_loaded = 0;
  uint64_t evictions = 0;
  uint64_t corrupt_chunks = 0;       // failed a header/identity/checksum check; dropped
  uint64_t host_capacity_bytes = 0;
  uint64_t host_used_bytes = 0;      // bytes in slots holding chunks
  uint64_t host_chunks = 0;
  uint64_t index_chunks = 0;
  uint64_t index_memory_bytes = 0;
  uint32_t namespaces = 0;
  std::string huge_pages;            // "hugetlb", "transparent", or "none"
  // NVMe tier (zero when disabled).
  bool nvme_enabled = false;
  uint64_t nvme_capacity_bytes = 0;
  uint64_t nvme_used_bytes = 0;
  uint64_t nvme_chunks = 0;
  uint64_t nvme_corrupt_chunks = 0;     // reads that failed a check: dropped, served as misses
  uint64_t nvme_dropped_records = 0;    // bad metadata records dropped at open
  uint64_t nvme_write_errors = 0;
  uint64_t nvme_read_errors = 0;
  uint64_t demotions = 0;               // host -> nvme on eviction
  uint64_t write_throughs = 0;          // host -> nvme on save
  uint64_t promotions = 0;              // nvme -> host on load
  uint64_t recovered_chunks = 0;        // indexed from NVMe metadata at open
  // Placement, prefetch, planner.
  uint64_t admission_rejected_chunks = 0;  // not stored (min_tokens) or kept out of a lower tier (second hit)
  uint64_t prefetches = 0;              // started
  uint64_t prefetch_skipped = 0;        // not started: max_prefetches running
  uint64_t prefetched_chunks = 0;       // brought into host by prefetches
  uint64_t planner_skipped_chunks = 0;  // cached but reported as misses: recomputing is faster
  uint64_t pinned_chunks = 0;           // held by PinPrefix now
  std::string nvme_io_backend;          // "io_uring" or "pread"
  // Redis tier (zero when disabled).
  bool redis_enabled = false;
  std::string redis_breaker;            // "closed", "open" or "half-open"
  uint64_t redis_saved_chunks = 0;      // chunks written to Redis
  uint64_t redis_dropped_saves = 0;     // chunks not written (breaker open, error, timeout)
  uint64_t redis_loaded_chunks = 0;     // chunks read from Redis (promoted to host)
  uint64_t redis_probe_hits = 0;        // chunks a lookup found in Redis but not locally
  uint64_t redis_misses = 0;            // indexed in Redis but gone, corrupt, or unreachable
  uint64_t redis_corrupt_chunks = 0;    // failed a check: deleted, served as misses
  uint64_t redis_errors = 0;            // failed calls (errors and timeouts)
  uint64_t redis_timeouts = 0;
  uint64_t redis_breaker_opens = 0;
  uint64_t redis_breaker_closes = 0;
  uint64_t redis_skipped = 0;           // items skipped while the breaker was open
  uint64_t redis_bytes_out = 0;
  uint64_t redis_bytes_in = 0;
  uint64_t redis_used_bytes = 0;        // value bytes of the chunks indexed as in Redis
  uint64_t redis_evictions = 0;         // chunks deleted to stay within redis.capacity_bytes
  // GPU path.
  bool gpu_host_registered = false;     // the host region is registered for DMA
  std::string gpu;                      // what the GPU path has, or why it is off
  uint64_t gpu_saved_chunks = 0;        // gathered from GPU engine memory
  uint64_t gpu_loaded_chunks = 0;       // scattered into GPU engine memory
  uint64_t hbm_capacity_bytes = 0;      // HBM tier (zero when off)
  uint64_t hbm_used_bytes = 0;
  uint64_t hbm_chunks = 0;
  uint64_t hbm_hits = 0;                // GPU load chunks served device to device
  uint64_t hbm_inserts = 0;
  uint64_t hbm_evictions = 0;
};

// ---- Leases: copies that another process does ------------------------------------------
// kvtierd's clients hold their engine memory in their own process, so they copy between
// their blocks and host slots in the shared host region themselves, and the Store does the
// rest. A lease pins what it names until it is committed, aborted or released.

struct SaveLease {
  uint64_t id = 0;               // 0: nothing to write (every chunk was cached, or none fit)
  uint32_t total_chunks = 0;     // whole chunks in the request
  uint32_t cached_chunks = 0;    // leading chunks already cached: nothing to write for them
  uint64_t payload_bytes = 0;    // per chunk
  // Chunks [cached_chunks, cached_chunks + size()): where each payload goes, as offsets in
  // the host region. Fewer than total - cached when the host tier could not make room.
  std::vector<uint64_t> payload_offsets;
};

struct LoadLease {
  uint64_t id = 0;               // 0: nothing to read
  uint32_t total_chunks = 0;
  uint64_t payload_bytes = 0;
  // The leading chunks that are cached, in order: where each payload is in the host region
  // (read only; valid until ReleaseLoad).
  std::vector<uint64_t> payload_offsets;
  Status status;                 // why fewer than total_chunks (NotFound: recompute from...)
};

struct SharedRegion {
  int fd = -1;         // memfd; owned by the Store (dup it to keep it)
  uint64_t bytes = 0;
};

struct NamespaceInfo {
  NamespaceSpec spec;
  uint64_t chunks = 0;        // in the index
  uint64_t host_chunks = 0;   // resident per tier (a chunk may be in several)
  uint64_t nvme_chunks = 0;
  uint64_t redis_chunks = 0;
  uint32_t registrations = 0;
};

// How a client reaches kvtierd (Store::Connect).
struct DaemonClientConfig {
  std::string address;      // "unix:/run/kvtier/kvtierd.sock" or a socket path
  std::string tenant;       // empty: the daemon's default tenant, when it has one
  std::string token;        // the tenant's credential
  uint32_t connections = 4; // requests in flight at once
  uint32_t worker_threads = 2;  // client threads that copy for saves and loads
  std::chrono::milliseconds timeout{5000};  // per request; a dead daemon fails calls fast
};

class DaemonClient;
class TicketState;

// The handle of a save or load. Move-only. Destroying or Release()-ing a ticket that
// is still running cancels it and waits until it no longer touches engine memory.
class Ticket {
 public:
  Ticket() = default;
  explicit Ticket(std::shared_ptr<TicketState> state);
  Ticket(Ticket&&) noexcept = default;
  Ticket& operator=(Ticket&& other) noexcept;
  Ticket(const Ticket&) = delete;
  Ticket& operator=(const Ticket&) = delete;
  ~Ticket();

  bool valid() const { return state_ != nullptr; }
  bool done() const;
  // Blocks until done or until `timeout` passes (TimedOut then; the ticket keeps running).
  Status Wait(std::chrono::nanoseconds timeout) const;
  Status Wait() const;
  // Final status once done: OK when every requested chunk succeeded, else the first
  // failure (NotFound for a chunk that is not cached, NoSpace, Cancelled, Corruption...).
  // Busy("in progress") while running.
  Status status() const;
  uint32_t chunks_done() const;       // leading chunks that succeeded (final once done)
  // Loads: waits until layer `layer` (0-based) of the chunks this load delivers is in
  // engine memory, and returns how many leading chunks that is (0: nothing to use; the
  // final chunks_done once the ticket is done). Layers land in order, so an engine can
  // run layer i while i + 1 is still being copied (vLLM's wait_for_layer_load).
  // TimedOut when `timeout` passes first.
  Result<uint32_t> WaitLayer(uint32_t layer, std::chrono::nanoseconds timeout) const;
  // GPU loads: waits only until the copies of layer `layer` are enqueued on the GPU, and
  // returns a CUDA event (cudaEvent_t) that completes when they land, for the engine's
  // stream to wait on (cudaStreamWaitEvent) without blocking the host; `chunks` is what
  // WaitLayer would return. cuda_event is null when there is nothing to wait for on the
  // GPU (a host namespace, or a load that delivers nothing): use chunks alone then. The
  // event belongs to the ticket and is valid until it is released. TimedOut as WaitLayer.
  struct LayerEvent {
    uint32_t chunks = 0;
    void* cuda_event = nullptr;
  };
  Result<LayerEvent> WaitLayerEnqueued(uint32_t layer, std::chrono::nanoseconds timeout) const;
  uint32_t chunks_requested() const;
  // Best effort: chunks not started yet are skipped; a chunk being copied completes.
  void Cancel();
  // Cancels if running, waits, and drops the handle.
  void Release();

 private:
  std::shared_ptr<TicketState> state_;
};

class Store {
 public:
  static Result<std::unique_ptr<Store>> Open(const StoreConfig& config);
  // A Store whose cache is kvtierd's: the same API, every call a request to the daemon;
  // saves and loads copy through the daemon's shared host region in this process. When
  // the daemon goes away calls fail fast (Unavailable) and the client reconnects, and
  // re-registers its namespaces, once it is back.
  static Result<std::unique_ptr<Store>> Connect(const DaemonClientConfig& config);
  ~Store();  // Close()
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Cancels queued work, waits for running copies, frees the tiers. Later calls return
  // Closed. Safe to call twice.
  Status Close();

  // Registers the engine's KV memory for a model identity. Registrations with equal
  // specs share cached chunks (e.g. two engine instances of one model). InvalidArgument
  // when the spec or layout is malformed or they disagree (layers, heads, head_dim,
  // dtype, chunk_tokens not a multiple of block_tokens).
  Result<NamespaceHandle> RegisterNamespace(const NamespaceSpec& spec, const KvMemoryLayout& layout);
  // Forgets a registration (the cached chunks stay). Call after its tickets are released.
  Status UnregisterNamespace(NamespaceHandle ns);

  Result<LookupResult> Lookup(NamespaceHandle ns, std::span<const int32_t> tokens,
                              std::span<const ExtraKey> extra_keys = {}, const LookupOptions& options = {});
  // Stops a prefetch started by Lookup (chunks already brought up stay). NotFound when it
  // is finished or unknown.
  Status CancelPrefetch(uint64_t prefetch_id);
  // The engine's prefill speed for this namespace, for the planner: set it, or report
  // measured prefills and the Store keeps a moving average. tokens_per_second <= 0 forgets it.
  Status SetPrefillRate(NamespaceHandle ns, double tokens_per_second);
  Status ReportPrefill(NamespaceHandle ns, uint64_t tokens, double seconds);
  // Keeps the cached chunks of `tokens` (e.g. a system prompt) from ever being evicted
  // until UnpinPrefix; returns how many chunks it pinned. Chunks saved later are not
  // pinned by an earlier call: pin after saving.
  Result<uint32_t> PinPrefix(NamespaceHandle ns, std::span<const int32_t> tokens,
                             std::span<const ExtraKey> extra_keys = {});
  Status UnpinPrefix(NamespaceHandle ns, std::span<const int32_t> tokens, std::span<const ExtraKey> extra_keys = {});
  Result<Ticket> Save(NamespaceHandle ns, std::span<const int32_t> tokens, std::span<const int32_t> block_ids,
                      std::span<const ExtraKey> extra_keys = {}, const CopyOptions& options = {});
  Result<Ticket> Load(NamespaceHandle ns, std::span<const int32_t> tokens, std::span<const int32_t> block_ids,
                      std::span<const ExtraKey> extra_keys = {}, const CopyOptions& options = {});

  StoreStats Stats() const;
  // Every namespace the Store knows (registered, or recovered from NVMe), with chunk
  // counts per tier.
  Result<std::vector<NamespaceInfo>> ListNamespaces() const;

  // ---- leases (see SaveLease); embedded Stores only ----
  // A namespace without engine memory in this process: for leases and lookups only.
  Result<NamespaceHandle> RegisterNamespace(const NamespaceSpec& spec);
  // Reserves host slots for the chunks of tokens that are not cached yet.
  Result<SaveLease> ReserveSave(NamespaceHandle ns, std::span<const int32_t> tokens,
                                std::span<const ExtraKey> extra_keys = {});
  // The first `written` reserved chunks hold their payloads: check, publish and index them
  // (and write them through, as a save would); the rest are freed. Returns the leading
  // chunks of the request now stored (cached ones included).
  Result<uint32_t> CommitSave(uint64_t lease, uint32_t written);
  Status AbortSave(uint64_t lease);
  // Brings the cached leading chunks of tokens into host (from NVMe or Redis) and pins them.
  Result<LoadLease> AcquireLoad(NamespaceHandle ns, std::span<const int32_t> tokens,
                                std::span<const ExtraKey> extra_keys = {});
  Status ReleaseLoad(uint64_t lease);
  // The host region as a memfd other processes can map (config.shared_host_region).
  Result<SharedRegion> SharedHostRegion() const;
  // Writes every chunk that only host holds down to NVMe (write-back before a shutdown).
  // Returns how many it wrote. NotSupported without an NVMe tier.
  Result<uint64_t> Flush();

  struct Impl;

 private:
  explicit Store(std::unique_ptr<Impl> impl);
  explicit Store(std::shared_ptr<DaemonClient> remote);
  std::shared_ptr<Impl> impl_;
  std::shared_ptr<DaemonClient> remote_;  // set by Connect: every call goes to the daemon
};

}  // namespace kvtier

#endif  // KVTIER_STORE_H_
