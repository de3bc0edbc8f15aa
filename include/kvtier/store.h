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
// recomputed. Nothing that fails an identity or checksum check is ever copied out.
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

struct StoreConfig {
  uint64_t host_capacity_bytes = 1ull << 30;  // the host tier's region
  HugePages huge_pages = HugePages::kAuto;
  bool prefault = true;          // touch the region at Open so that saves never page-fault
  uint32_t worker_threads = 2;   // threads that run saves and loads
  uint64_t max_request_tokens = 1ull << 21;  // a call naming more tokens is refused
  NvmeConfig nvme;
  Env* env = nullptr;  // file system for the NVMe tier (tests inject faults); default POSIX
};

struct NamespaceHandle {
  uint32_t id = 0;  // 0 is never a valid handle
};

struct LookupResult {
  uint64_t matched_tokens = 0;     // leading tokens whose whole chunks are cached
  uint32_t matched_chunks = 0;
  uint32_t total_chunks = 0;       // whole chunks in the request
  std::vector<TierId> chunk_tiers; // fastest tier holding each matched chunk
};

// Counters since Open. Monotonic except the *_bytes/chunks gauges.
struct StoreStats {
  uint64_t lookups = 0;
  uint64_t lookup_hit_chunks = 0;
  uint64_t lookup_miss_chunks = 0;
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
  std::string nvme_io_backend;          // "io_uring" or "pread"
};

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
                              std::span<const ExtraKey> extra_keys = {});
  Result<Ticket> Save(NamespaceHandle ns, std::span<const int32_t> tokens, std::span<const int32_t> block_ids,
                      std::span<const ExtraKey> extra_keys = {});
  Result<Ticket> Load(NamespaceHandle ns, std::span<const int32_t> tokens, std::span<const int32_t> block_ids,
                      std::span<const ExtraKey> extra_keys = {});

  StoreStats Stats() const;

  struct Impl;

 private:
  explicit Store(std::unique_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace kvtier

#endif  // KVTIER_STORE_H_
