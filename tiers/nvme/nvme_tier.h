// NvmeTier (T2): chunks in preallocated data files on local disk, metadata in RocksDB.
//
// Data files are opened O_DIRECT (or buffered when configured) and carved into 4 KiB
// aligned extents by an ExtentAllocator per file. An extent holds a chunk exactly as a
// host slot does: a 4 KiB header page (the chunk header, now with its payload checksum,
// then the tokens) and the payload. I/O goes through the Env (env.h): io_uring queues,
// one per thread at a time, with the host tier's region registered as fixed buffers.
//
// Metadata (RocksDB, one record per chunk, key "c" + ChunkKey): extent, payload checksum,
// namespace, parent key, tokens, last access, and a checksum of the record itself.
// Namespace specs are kept too ("n" + NamespaceId) so that a restart knows the shape of
// every chunk before any engine registers.
//
// Write order: data, then fdatasync of the files written, then the records of the chunks
// whose data is durable, in one synced batch. A crash at any point leaves either no
// record (the chunk was never acknowledged) or a record pointing at complete data. A
// record whose extent was reused after an unsynced delete is caught on read: the header
// names another chunk. Every read verifies header, identity and payload checksum; a
// failure deletes the record and is reported as Corruption (a miss for the engine).
//
// Recover() reads every record back at open: records that fail their own checksum, name
// an unknown namespace, overlap another's extent, or whose key does not hash from their
// parent and tokens are deleted and counted.
//
// Thread-safety: all methods are thread-safe. mu_ guards the allocators and the key map;
// I/O runs outside it on a queue leased from a pool (one ring per concurrent caller).
// The caller (the Store) keeps an extent's chunk pinned in its index while reading it.
#ifndef KVTIER_TIERS_NVME_NVME_TIER_H_
#define KVTIER_TIERS_NVME_NVME_TIER_H_

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "index/chunk_key.h"
#include "kvtier/status.h"
#include "tiers/chunk_format.h"
#include "tiers/extent_allocator.h"
#include "tiers/nvme/env.h"

namespace rocksdb {
class DB;
}

namespace kvtier {

struct NvmeTierOptions {
  std::vector<std::string> paths;  // data files; capacity is split evenly between them
  uint64_t capacity_bytes = 0;
  std::string metadata_dir;        // RocksDB directory
  uint32_t queue_depth = 16;
  uint64_t max_io_bytes = 4ull << 20;  // larger transfers are split so one chunk fills the queue
  bool buffered = false;               // no O_DIRECT (tmpfs); data goes through the page cache
  Env* env = nullptr;                  // Env::Default() when null
};

struct NvmeExtent {
  uint32_t file = 0;
  uint64_t offset = 0;
  uint64_t bytes = 0;  // header page + payload, rounded to 4 KiB
};

struct NvmeChunkRecord {
  ChunkKey key;
  NamespaceId ns;
  std::optional<ChunkKey> parent;
  NvmeExtent extent;
  uint64_t payload_bytes = 0;
  uint64_t payload_checksum = 0;
  uint64_t last_access = 0;
  std::vector<int32_t> tokens;
};

struct NvmeStats {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t chunks = 0;
  uint64_t corrupt_chunks = 0;   // reads that failed a check (record dropped)
  uint64_t dropped_records = 0;  // records dropped by Recover
  uint64_t write_errors = 0;
  uint64_t read_errors = 0;
  std::string io_backend;
};

class NvmeTier {
 public:
  // Opens (creating) the data files and the metadata database. `registered` is memory
  // the tier may register with the kernel for I/O (the host tier's region).
  static Result<std::unique_ptr<NvmeTier>> Open(const NvmeTierOptions& options, std::span<const iovec> registered);
  ~NvmeTier();
  NvmeTier(const NvmeTier&) = delete;
  NvmeTier& operator=(const NvmeTier&) = delete;

  // Reads every record (see the class comment). Namespaces come back as (id, encoded spec)
  // and chunks with parents before children. Call once, right after Open.
  Status Recover(std::vector<std::pair<NamespaceId, std::string>>* namespaces,
                 std::vector<NvmeChunkRecord>* chunks);

  // Persists a namespace spec (synced) unless it is already there.
  Status PutNamespace(const NamespaceId& id, const std::string& encoded_spec);

  // An extent for a chunk with `payload_bytes` of payload; NoSpace when none is free.
  Result<NvmeExtent> Allocate(uint64_t payload_bytes);
  void Free(const NvmeExtent& extent);

  struct WriteItem {
    NvmeChunkRecord record;   // extent from Allocate; payload checksum filled by WriteData
    const uint8_t* page;      // the chunk's 4 KiB header page (header, then tokens)
    const uint8_t* payload;   // payload_bytes bytes
    Status status;            // out
  };
  // Writes the items' data: not durable yet, not visible to Read. A sealed item — its
  // header already carries the payload checksum (kFlagChecksum) and the payload follows
  // the page directly (payload == page + 4 KiB, as in a host slot) — goes to disk as one
  // range, as it is. Otherwise the header is completed with the checksum in a page of
  // our own. Each item's status says how its data went.
  Status WriteData(std::span<WriteItem> items);
  // Makes the data of the items whose status is OK durable, then commits their records
  // in one synced batch; from then on Read finds them. Returns the first failure.
  Status Commit(std::span<WriteItem> items);
  // WriteData, then Commit. A failed item keeps its extent reserved: the caller frees it.
  // Returns the first failure, OK when all succeeded.
  Status Write(std::span<WriteItem> items);

  // Reads `key` into dst (a slot: header page then payload, dst_bytes long) and verifies
  // it against `id`. Corruption (record dropped), NotFound, or an I/O error.
  Status Read(const ChunkKey& key, const ChunkIdentity& id, uint8_t* dst, uint64_t dst_bytes);
  // Read for several chunks at once, their I/O in one queue so that small chunks still keep
  // it full. Each item's status is what Read would have returned for it.
  struct ReadItem {
    ChunkKey key;
    ChunkIdentity id;
    uint8_t* dst;
    uint64_t dst_bytes;
    Status status;  // out
  };
  void ReadMany(std::span<ReadItem> items);

  // Forgets key (record deleted without sync; its extent is free for reuse).
  bool Remove(const ChunkKey& key);
  bool Contains(const ChunkKey& key) const;

  NvmeStats Stats() const;
  const char* io_backend() const { return env_->io_backend(); }

 private:
  NvmeTier() = default;
  class QueueLease;
  Result<std::unique_ptr<IoQueue>> TakeQueue();
  void ReturnQueue(std::unique_ptr<IoQueue> q);
  void AddOps(const NvmeExtent& e, const uint8_t* page, const uint8_t* payload, IoOp::Kind kind,
              std::vector<IoOp>* ops) const;
  bool DropLocked(const ChunkKey& key);

  // Constant after Open.
  NvmeTierOptions options_;
  Env* env_ = nullptr;
  std::vector<std::unique_ptr<DataFile>> files_;
  std::vector<DataFile*> file_ptrs_;
  std::vector<iovec> registered_;
  std::unique_ptr<rocksdb::DB> db_;

  mutable std::mutex mu_;
  // Guarded by mu_.
  std::vector<ExtentAllocator> space_;  // one per file
  std::unordered_map<ChunkKey, NvmeChunkRecord, ChunkKeyHash> records_;
  std::vector<std::unique_ptr<IoQueue>> idle_queues_;
  uint64_t used_bytes_ = 0;

  std::atomic<uint64_t> corrupt_{0}, dropped_{0}, write_errors_{0}, read_errors_{0};

  // Group commit of data syncs: a Write takes an epoch once its data is written; a sync
  // that starts later makes it durable. synced_epoch_ is guarded by sync_mu_.
  std::atomic<uint64_t> write_epoch_{0};
  std::mutex sync_mu_;
  uint64_t synced_epoch_ = 0;
};

}  // namespace kvtier

#endif  // KVTIER_TIERS_NVME_NVME_TIER_H_
