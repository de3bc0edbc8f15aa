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
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>
#include <unordered_map>

#include "index/chunk_key.h"
#include "index/radix_index.h"
#include "kernels/mover.h"
#include "store/task_pool.h"
#include "store/ticket.h"
#include "tiers/chunk_format.h"
#include "tiers/host/host_tier.h"
#include "tiers/nvme/nvme_tier.h"

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
};

struct Registration {
  std::shared_ptr<NamespaceState> ns;
  Mover mover;
};

// A queued save or load. Called once: with abort=false by a worker to do the work, or
// with abort=true when the store closes first (it must release what it holds).
using Job = std::function<void(bool abort)>;

struct Counters {
  std::atomic<uint64_t> lookups{0}, lookup_hit_chunks{0}, lookup_miss_chunks{0};
  std::atomic<uint64_t> saves{0}, saved_chunks{0}, save_dedup_chunks{0}, save_failed_chunks{0};
  std::atomic<uint64_t> loads{0}, loaded_chunks{0}, load_failed_chunks{0};
  std::atomic<uint64_t> bytes_saved{0}, bytes_loaded{0}, evictions{0}, corrupt_chunks{0};
  std::atomic<uint64_t> demotions{0}, write_throughs{0}, promotions{0}, recovered_chunks{0};
};

void Add(std::atomic<uint64_t>& c, uint64_t v) { c.fetch_add(v, std::memory_order_relaxed); }

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

  // ---- helpers
  void WorkerLoop();
  void Enqueue(Job job);
  Result<std::shared_ptr<Registration>> Find(NamespaceHandle h) const;
  struct CopyRequest;
  Result<std::shared_ptr<CopyRequest>> MakeCopyRequest(NamespaceHandle h, std::span<const int32_t> tokens,
                                                       std::span<const int32_t> block_ids,
                                                       std::span<const ExtraKey> extra_keys, bool keep_tokens);
  Status PrepareRequest(const Registration& r, std::span<const int32_t> tokens, std::span<const int32_t> block_ids,
                        std::span<const ExtraKey> extras, bool need_blocks, std::vector<ChunkKey>* keys) const;
  Result<SlotId> AllocateSlot(uint64_t payload_bytes);
  std::vector<std::pair<std::shared_ptr<NamespaceState>, LeafCandidate>> LruLeaves(TierId tier,
                                                                                   size_t per_namespace);
  Result<NvmeExtent> AllocateExtent(uint64_t payload_bytes);  // requires placement_mu
  void FreeRemoved(const std::vector<RemovedChunk>& removed);  // requires placement_mu
  void Demote(std::unique_lock<std::mutex>& placement, NamespaceState& ns, const ChunkKey& key);
  class WritePipe;
  bool HandToNvme(WritePipe& pipe, NamespaceState& ns, const std::vector<ChunkKey>& keys, size_t i,
                  Status* st);  // requires placement_mu
  uint32_t FinishWriteThrough(WritePipe& pipe, NamespaceState& ns, const std::vector<ChunkKey>& keys, size_t count,
                              Status* st);
  NvmeTier::WriteItem MakeWriteItem(NamespaceState& ns, const ChunkKey& key, const std::optional<ChunkKey>& parent,
                                    SlotId slot, const NvmeExtent& extent);
  Status Recover();
  void DropChunk(NamespaceState& ns, const ChunkKey& key);
  void RunSave(Registration& r, const std::vector<ChunkKey>& keys, const std::vector<int32_t>& blocks,
               const std::vector<int32_t>& tokens, TicketState& t);
  void RunLoad(Registration& r, const std::vector<ChunkKey>& keys, size_t matched, const std::vector<int32_t>& blocks,
               TicketState& t);
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
    const uint64_t need = chunks * r.mover.blocks_per_chunk();
    if (block_ids.size() < need)
      return Status::InvalidArgument(
          "token count mismatch: " + std::to_string(tokens.size()) + " tokens make " + std::to_string(chunks) +
          " whole chunks of " + std::to_string(chunk_tokens) + " tokens, which need " + std::to_string(need) +
          " block ids of " + std::to_string(r.mover.geometry().block_tokens) + " tokens; got " +
          std::to_string(block_ids.size()));
    const int64_t num_blocks = r.mover.geometry().num_blocks;
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
    for (auto& [ns, victim] : LruLeaves(TierId::kHost, kEvictionCandidates)) {
      if (nvme && config.nvme.policy != WritePolicy::kNone) {
        std::optional<TierMask> r = ns->index.Residency(victim.key);
        if (r && (*r & TierBit(TierId::kNvme)) == 0) Demote(l, *ns, victim.key);
      }
      removed.clear();
      // A pinned chunk may be being read from its slot: never free that slot.
      Status c = ns->index.ClearResident(victim.key, TierId::kHost, &removed, /*if_unpinned=*/true);
      if (c.code() == Status::Code::kBusy || c.IsNotFound()) continue;  // pinned, or gone meanwhile
      if (!c.ok()) return c.WithContext("host tier eviction: ");
      if (host->Remove(victim.key)) Add(n.evictions, 1);
      FreeRemoved(removed);
      evicted = true;
      break;
    }
    if (!evicted)
      return Status::NoSpace("host tier: full, and every cached chunk is pinned by a save or load in flight; "
                             "retry later or raise host capacity");
  }
}

void Store::Impl::FreeRemoved(const std::vector<RemovedChunk>& removed) {
  for (const RemovedChunk& rc : removed) {
    if (rc.residency & TierBit(TierId::kHost)) host->Remove(rc.key);
    if (nvme && (rc.residency & TierBit(TierId::kNvme))) nvme->Remove(rc.key);
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
      FreeRemoved(removed);
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

// Writes an evicted host chunk to NVMe before its slot is freed. Runs with `placement`
// held on entry and exit, and releases it for the I/O; the chunk stays pinned meanwhile,
// so its slot cannot go away.
void Store::Impl::Demote(std::unique_lock<std::mutex>& placement, NamespaceState& ns, const ChunkKey& key) {
  std::optional<SlotId> slot = host->Find(key);
  std::optional<ChunkKey> parent;
  if (!slot || !ns.index.Parent(key, &parent)) return;
  // Pinned before making room on NVMe: that eviction must not take this chunk (it would
  // go with an evicted parent) while we read its slot.
  const ChunkKey k = key;
  ns.index.Pin(std::span<const ChunkKey>(&k, 1));
  Result<NvmeExtent> e = AllocateExtent(ns.payload_bytes);
  if (!e.ok()) {  // nothing evictable on NVMe either: the chunk is dropped
    ns.index.Unpin(std::span<const ChunkKey>(&k, 1));
    return;
  }
  std::vector<NvmeTier::WriteItem> items;
  items.push_back(MakeWriteItem(ns, k, parent, *slot, *e));
  placement.unlock();
  (void)nvme->Write(items);
  placement.lock();
  if (items[0].status.ok() && ns.index.SetResident(k, TierId::kNvme).ok()) {
    Add(n.demotions, 1);
  } else if (!items[0].status.ok()) {
    nvme->Free(*e);
  } else {
    nvme->Remove(k);
  }
  ns.index.Unpin(std::span<const ChunkKey>(&k, 1));
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
                             Status* st) {
  std::optional<TierMask> r = ns.index.Residency(keys[i]);
  if (r && (*r & TierBit(TierId::kNvme))) return true;
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
// on NVMe. Returns how many of the first `count` chunks of keys are on NVMe now.
uint32_t Store::Impl::FinishWriteThrough(WritePipe& pipe, NamespaceState& ns, const std::vector<ChunkKey>& keys,
                                         size_t count, Status* st) {
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
    std::optional<TierMask> r = ns.index.Residency(keys[d]);
    if (!r || (*r & TierBit(TierId::kNvme)) == 0) break;
  }
  return d;
}

// Removes a chunk that failed a check, with its subtree, from the index and the host tier.
void Store::Impl::DropChunk(NamespaceState& ns, const ChunkKey& key) {
  std::lock_guard<std::mutex> l(placement_mu);
  std::vector<RemovedChunk> removed;
  if (!ns.index.Erase(key, &removed).ok()) return;  // pinned by another load: it will see the same
  FreeRemoved(removed);
}

void Store::Impl::RunSave(Registration& r, const std::vector<ChunkKey>& keys, const std::vector<int32_t>& blocks,
                          const std::vector<int32_t>& tokens, TicketState& t) {
  NamespaceState& ns = *r.ns;
  const uint32_t total = static_cast<uint32_t>(keys.size());
  const uint32_t bpc = r.mover.blocks_per_chunk();
  // Pin the cached prefix so that the chunks we attach below keep their parents.
  MatchOptions mo;
  mo.tiers = TierBit(TierId::kHost);
  mo.pin = true;
  const size_t matched = ns.index.Match(keys, mo);
  std::vector<ChunkKey> pinned(keys.begin(), keys.begin() + static_cast<ptrdiff_t>(matched));
  Add(n.save_dedup_chunks, matched);
  const bool write_through = nvme && config.nvme.policy == WritePolicy::kWriteThrough;
  uint32_t done = static_cast<uint32_t>(matched);
  if (!write_through) t.set_chunks_done(done);
  Status st;
  // Write-through: chunks go to NVMe while later ones are gathered (cached ones too, if
  // NVMe does not hold them yet); the save is acknowledged once they are durable.
  std::optional<WritePipe> pipe;
  Status nvme_st;
  bool nvme_ok = true;  // false once a chunk could not be handed over: later ones are not durable
  if (write_through) {
    pipe.emplace(nvme.get(), io_pool.get(), total);
    std::lock_guard<std::mutex> l(placement_mu);
    for (size_t i = 0; i < matched && nvme_ok; ++i) nvme_ok = HandToNvme(*pipe, ns, keys, i, &nvme_st);
  }
  for (uint32_t i = done; i < total; ++i) {
    if (t.cancel_requested()) {
      st = Status::Cancelled("save cancelled after " + std::to_string(i) + " of " + std::to_string(total) + " chunks");
      break;
    }
    Result<SlotId> slot = AllocateSlot(ns.payload_bytes);
    if (!slot.ok()) {
      st = slot.status();
      break;
    }
    uint8_t* addr = host->SlotAddress(*slot);
    const uint32_t ct = ns.spec.shape.chunk_tokens;
    if (ct <= kMaxPageTokens)  // the tokens travel with the chunk to lower tiers' metadata
      std::memcpy(addr + kChunkTokensOffset, tokens.data() + uint64_t{i} * ct, uint64_t{ct} * sizeof(int32_t));
    Status g = r.mover.Gather(std::span<const int32_t>(blocks).subspan(uint64_t{i} * bpc, bpc),
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
      if (write_through && nvme_ok) nvme_ok = HandToNvme(*pipe, ns, keys, i, &nvme_st);
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
  if (write_through) {
    // Acknowledged only once durable: chunks_done counts leading chunks on NVMe.
    done = FinishWriteThrough(*pipe, ns, keys, done, &nvme_st);
    if (st.ok() && !nvme_st.ok()) st = nvme_st.WithContext("save: write-through: ");
  }
  ns.index.Unpin(pinned);
  Add(n.save_failed_chunks, total - done);
  t.Finish(std::move(st), done);
}

void Store::Impl::RunLoad(Registration& r, const std::vector<ChunkKey>& keys, size_t matched,
                          const std::vector<int32_t>& blocks, TicketState& t) {
  NamespaceState& ns = *r.ns;
  const uint32_t total = static_cast<uint32_t>(keys.size());
  const uint32_t bpc = r.mover.blocks_per_chunk();
  const ChunkIdentity identity{ns.id, {}, ns.spec.shape};
  uint32_t done = 0;
  Status st;
  std::optional<ChunkKey> corrupt, lost_on_nvme;
  for (uint32_t i = 0; i < matched; ++i) {
    if (t.cancel_requested()) {
      st = Status::Cancelled("load cancelled after " + std::to_string(i) + " of " + std::to_string(total) + " chunks");
      break;
    }
    std::optional<SlotId> slot = host->Find(keys[i]);
    bool promoted = false;
    if (!slot) {
      if (!nvme) {
        st = Status::Internal("load: chunk " + keys[i].ToHex() + " is indexed in the host tier but has no slot");
        break;
      }
      // On NVMe only: read it into a fresh host slot (verified there), copy it out, and
      // keep it in host DRAM (promotion).
      Result<SlotId> fresh = AllocateSlot(ns.payload_bytes);
      if (!fresh.ok()) {
        st = fresh.status().WithContext("load: ");
        break;
      }
      ChunkIdentity want = identity;
      want.key = keys[i];
      Status rs = nvme->Read(keys[i], want, host->SlotAddress(*fresh), fresh->bytes);
      if (!rs.ok()) {
        host->Free(*fresh);
        if (rs.IsCorruption()) Add(n.corrupt_chunks, 1);
        if (rs.IsCorruption() || rs.IsNotFound()) lost_on_nvme = keys[i];
        st = rs.WithContext("load: chunk " + std::to_string(i) + ": ");
        break;
      }
      slot = *fresh;
      promoted = true;
    }
    const uint8_t* addr = host->SlotAddress(*slot);
    // The header is checked on every read: a slot that does not hold this chunk is never served.
    Result<ChunkHeader> h = DecodeChunkHeader(std::span<const uint8_t>(addr, kChunkHeaderBytes));
    ChunkIdentity want = identity;
    want.key = keys[i];
    Status hs = h.ok() ? CheckChunkIdentity(*h, want) : h.status();
    if (!hs.ok()) {
      Add(n.corrupt_chunks, 1);
      if (promoted) {
        host->Free(*slot);
        lost_on_nvme = keys[i];
      } else {
        corrupt = keys[i];
      }
      st = hs.WithContext("load: host slot of chunk " + std::to_string(i) + ": ");
      break;
    }
    Status s = r.mover.Scatter(std::span<const int32_t>(blocks).subspan(uint64_t{i} * bpc, bpc),
                               addr + kChunkPayloadOffset, ns.payload_bytes);
    if (promoted) {
      std::lock_guard<std::mutex> l(placement_mu);
      if (s.ok() && host->Publish(keys[i], *slot).ok() && ns.index.SetResident(keys[i], TierId::kHost).ok()) {
        Add(n.promotions, 1);
      } else if (!host->Find(keys[i]) || host->Find(keys[i])->offset != slot->offset) {
        host->Free(*slot);  // not published (a concurrent load promoted it first, or the copy failed)
      } else {
        host->Remove(keys[i]);  // published but the index refused it
      }
    }
    if (!s.ok()) {
      st = s;
      break;
    }
    Add(n.loaded_chunks, 1);
    Add(n.bytes_loaded, ns.payload_bytes);
    t.set_chunks_done(++done);
  }
  ns.index.Unpin(std::span<const ChunkKey>(keys.data(), matched));
  if (corrupt) DropChunk(ns, *corrupt);
  if (lost_on_nvme) {  // its record is gone (dropped as corrupt, or missing): so is its NVMe residency
    std::lock_guard<std::mutex> l(placement_mu);
    std::vector<RemovedChunk> removed;
    if (ns.index.ClearResident(*lost_on_nvme, TierId::kNvme, &removed).ok()) FreeRemoved(removed);
  }
  if (st.ok() && done < total)
    st = Status::NotFound("load: chunk " + std::to_string(done) + " of " + std::to_string(total) +
                          " is not cached; recompute from token " +
                          std::to_string(uint64_t{done} * ns.spec.shape.chunk_tokens));
  Add(n.load_failed_chunks, total - done);
  t.Finish(std::move(st), done);
}

// ---- Store ------------------------------------------------------------------------------------

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Store::~Store() { (void)Close(); }

Result<std::unique_ptr<Store>> Store::Open(const StoreConfig& config) {
  if (config.worker_threads == 0 || config.worker_threads > 256)
    return Status::InvalidArgument("store: worker_threads " + std::to_string(config.worker_threads) +
                                   " is outside 1..256");
  if (config.max_request_tokens == 0) return Status::InvalidArgument("store: max_request_tokens is 0");
  auto impl = std::make_unique<Impl>(config);
  HostTierOptions ho;
  ho.capacity_bytes = config.host_capacity_bytes;
  ho.huge_pages = config.huge_pages;
  ho.prefault = config.prefault;
  Result<std::unique_ptr<HostTier>> host = HostTier::Create(ho);
  if (!host.ok()) return host.status();
  impl->host = std::move(*host);
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
  for (uint32_t i = 0; i < config.worker_threads; ++i) impl->workers.emplace_back([p = impl.get()] { p->WorkerLoop(); });
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

Status Store::Close() {
  if (!impl_) return Status::OK();
  Impl& s = *impl_;
  std::unique_lock<std::shared_mutex> cl(s.close_mu);
  if (s.closed) return Status::OK();
  s.closed = true;
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
  s.io_pool.reset();
  s.nvme.reset();
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
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  KVTIER_RETURN_IF_ERROR(ValidateNamespaceSpec(spec));
  Result<Mover> mover = Mover::Create(spec.shape, layout);
  if (!mover.ok()) return mover.status();
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
  s.registrations.emplace(h, std::make_shared<Registration>(Registration{ns, std::move(*mover)}));
  return NamespaceHandle{h};
}

Status Store::UnregisterNamespace(NamespaceHandle h) {
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  std::unique_lock<std::shared_mutex> l(s.reg_mu);
  if (s.registrations.erase(h.id) == 0)
    return Status::NotFound("unknown namespace handle " + std::to_string(h.id));
  return Status::OK();
}

Result<LookupResult> Store::Lookup(NamespaceHandle h, std::span<const int32_t> tokens,
                                   std::span<const ExtraKey> extra_keys) {
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  Result<std::shared_ptr<Registration>> r = s.Find(h);
  if (!r.ok()) return r.status();
  std::vector<ChunkKey> keys;
  KVTIER_RETURN_IF_ERROR(s.PrepareRequest(**r, tokens, {}, extra_keys, false, &keys));
  std::vector<TierMask> residency;
  const size_t m = (*r)->ns->index.Match(keys, MatchOptions{}, &residency);
  LookupResult out;
  out.matched_chunks = static_cast<uint32_t>(m);
  out.total_chunks = static_cast<uint32_t>(keys.size());
  out.matched_tokens = uint64_t{out.matched_chunks} * (*r)->ns->spec.shape.chunk_tokens;
  out.chunk_tiers.resize(m);
  for (size_t i = 0; i < m; ++i) out.chunk_tiers[i] = static_cast<TierId>(__builtin_ctz(residency[i]));
  Add(s.n.lookups, 1);
  Add(s.n.lookup_hit_chunks, m);
  Add(s.n.lookup_miss_chunks, keys.size() - m);
  return out;
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
  auto req = std::make_shared<CopyRequest>();
  req->reg = std::move(*r);
  KVTIER_RETURN_IF_ERROR(PrepareRequest(*req->reg, tokens, block_ids, extra_keys, true, &req->keys));
  const uint64_t chunks = req->keys.size();
  req->blocks.assign(block_ids.begin(), block_ids.begin() + chunks * req->reg->mover.blocks_per_chunk());
  if (keep_tokens) req->tokens.assign(tokens.begin(), tokens.begin() + chunks * req->reg->ns->spec.shape.chunk_tokens);
  return req;
}

Result<Ticket> Store::Save(NamespaceHandle h, std::span<const int32_t> tokens, std::span<const int32_t> block_ids,
                           std::span<const ExtraKey> extra_keys) {
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  Result<std::shared_ptr<Impl::CopyRequest>> req = s.MakeCopyRequest(h, tokens, block_ids, extra_keys, true);
  if (!req.ok()) return req.status();
  auto t = std::make_shared<TicketState>(static_cast<uint32_t>((*req)->keys.size()));
  Add(s.n.saves, 1);
  s.Enqueue([&s, q = *req, t](bool abort) {
    if (abort) {
      Add(s.n.save_failed_chunks, q->keys.size());
      t->Finish(Status::Cancelled("save: store closed before the save ran"), 0);
      return;
    }
    s.RunSave(*q->reg, q->keys, q->blocks, q->tokens, *t);
  });
  return Ticket(std::move(t));
}

Result<Ticket> Store::Load(NamespaceHandle h, std::span<const int32_t> tokens, std::span<const int32_t> block_ids,
                           std::span<const ExtraKey> extra_keys) {
  Impl& s = *impl_;
  KVTIER_OPEN_GUARD(s);
  Result<std::shared_ptr<Impl::CopyRequest>> req = s.MakeCopyRequest(h, tokens, block_ids, extra_keys, false);
  if (!req.ok()) return req.status();
  // Pin now, so that what is cached at submission stays cached until it is copied.
  MatchOptions mo;
  mo.tiers = TierBit(TierId::kHost) | (s.nvme ? TierBit(TierId::kNvme) : 0);
  mo.pin = true;
  const size_t matched = (*req)->reg->ns->index.Match((*req)->keys, mo);
  auto t = std::make_shared<TicketState>(static_cast<uint32_t>((*req)->keys.size()));
  Add(s.n.loads, 1);
  s.Enqueue([&s, q = *req, matched, t](bool abort) {
    if (abort) {
      q->reg->ns->index.Unpin(std::span<const ChunkKey>(q->keys.data(), matched));
      Add(s.n.load_failed_chunks, q->keys.size());
      t->Finish(Status::Cancelled("load: store closed before the load ran"), 0);
      return;
    }
    s.RunLoad(*q->reg, q->keys, matched, q->blocks, *t);
  });
  return Ticket(std::move(t));
}

StoreStats Store::Stats() const {
  const Impl& s = *impl_;
  StoreStats o;
  auto g = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
  o.lookups = g(s.n.lookups);
  o.lookup_hit_chunks = g(s.n.lookup_hit_chunks);
  o.lookup_miss_chunks = g(s.n.lookup_miss_chunks);
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

}  // namespace kvtier
