#include "tiers/nvme/nvme_tier.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <xxhash.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>

namespace kvtier {
namespace {

constexpr uint8_t kRecordVersion = 1;
constexpr char kChunkPrefix = 'c';
constexpr char kNamespacePrefix = 'n';

// ---- little-endian record encoding ------------------------------------------------------

class Writer {
 public:
  void U8(uint8_t v) { s_.push_back(static_cast<char>(v)); }
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
  }
  void Hash(const Hash128& h) {
    U64(h.lo);
    U64(h.hi);
  }
  void Bytes(const std::string& b) { s_ += b; }
  // Appends XXH3-64 of everything so far.
  std::string Finish() {
    U64(XXH3_64bits(s_.data(), s_.size()));
    return std::move(s_);
  }

 private:
  std::string s_;
};

class Reader {
 public:
  Reader(const char* p, size_t n) : p_(reinterpret_cast<const uint8_t*>(p)), n_(n) {}
  bool U8(uint8_t* v) {
    if (pos_ + 1 > n_) return false;
    *v = p_[pos_++];
    return true;
  }
  bool U32(uint32_t* v) {
    if (pos_ + 4 > n_) return false;
    *v = 0;
    for (int i = 3; i >= 0; --i) *v = (*v << 8) | p_[pos_ + i];
    pos_ += 4;
    return true;
  }
  bool U64(uint64_t* v) {
    if (pos_ + 8 > n_) return false;
    *v = 0;
    for (int i = 7; i >= 0; --i) *v = (*v << 8) | p_[pos_ + i];
    pos_ += 8;
    return true;
  }
  bool Hash(Hash128* h) { return U64(&h->lo) && U64(&h->hi); }
  size_t remaining() const { return n_ - pos_; }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
};

// Splits off and checks the trailing checksum; false when it does not match.
bool CheckedBody(const std::string& value, std::string_view* body) {
  if (value.size() < 8) return false;
  const size_t n = value.size() - 8;
  Reader r(value.data() + n, 8);
  uint64_t sum = 0;
  r.U64(&sum);
  if (XXH3_64bits(value.data(), n) != sum) return false;
  *body = std::string_view(value.data(), n);
  return true;
}

std::string ChunkDbKey(const ChunkKey& k) {
  Writer w;
  w.U8(kChunkPrefix);
  w.Hash(k);
  std::string s = w.Finish();
  s.resize(17);  // prefix + key, no checksum in keys
  return s;
}

std::string NamespaceDbKey(const NamespaceId& id) {
  std::string s = ChunkDbKey(ChunkKey{id});
  s[0] = kNamespacePrefix;
  return s;
}

std::string EncodeRecord(const NvmeChunkRecord& r) {
  Writer w;
  w.U8(kRecordVersion);
  w.Hash(r.key);
  w.Hash(r.ns);
  w.U8(r.parent ? 1 : 0);
  w.Hash(r.parent ? *r.parent : ChunkKey{});
  w.U32(r.extent.file);
  w.U64(r.extent.offset);
  w.U64(r.extent.bytes);
  w.U64(r.payload_bytes);
  w.U64(r.payload_checksum);
  w.U64(r.last_access);
  w.U32(static_cast<uint32_t>(r.tokens.size()));
  for (int32_t t : r.tokens) w.U32(static_cast<uint32_t>(t));
  return w.Finish();
}

bool DecodeRecord(const std::string& value, NvmeChunkRecord* r) {
  std::string_view body;
  if (!CheckedBody(value, &body)) return false;
  Reader rd(body.data(), body.size());
  uint8_t version = 0, has_parent = 0;
  ChunkKey parent;
  uint32_t ntokens = 0;
  if (!rd.U8(&version) || version != kRecordVersion) return false;
  if (!rd.Hash(&r->key) || !rd.Hash(&r->ns) || !rd.U8(&has_parent) || !rd.Hash(&parent) || has_parent > 1 ||
      !rd.U32(&r->extent.file) || !rd.U64(&r->extent.offset) || !rd.U64(&r->extent.bytes) ||
      !rd.U64(&r->payload_bytes) || !rd.U64(&r->payload_checksum) || !rd.U64(&r->last_access) ||
      !rd.U32(&ntokens) || rd.remaining() != uint64_t{ntokens} * 4)
    return false;
  r->parent = has_parent ? std::optional<ChunkKey>(parent) : std::nullopt;
  r->tokens.resize(ntokens);
  for (uint32_t i = 0; i < ntokens; ++i) {
    uint32_t t = 0;
    rd.U32(&t);
    r->tokens[i] = static_cast<int32_t>(t);
  }
  return true;
}

uint64_t ExtentBytes(uint64_t payload_bytes) {
  return kChunkPayloadOffset + (payload_bytes + kDirectIoAlign - 1) / kDirectIoAlign * kDirectIoAlign;
}

struct AlignedFree {
  void operator()(uint8_t* p) const { std::free(p); }
};

}  // namespace

// ---- open and recover ---------------------------------------------------------------------

Result<std::unique_ptr<NvmeTier>> NvmeTier::Open(const NvmeTierOptions& options, std::span<const iovec> registered) {
  if (options.paths.empty()) return Status::InvalidArgument("nvme tier: nvme.paths is empty; name at least one data file");
  if (options.metadata_dir.empty())
    return Status::InvalidArgument("nvme tier: nvme.metadata_dir is empty; name a directory for the metadata");
  if (options.queue_depth == 0 || options.queue_depth > 4096)
    return Status::InvalidArgument("nvme tier: nvme.queue_depth " + std::to_string(options.queue_depth) +
                                   " is outside 1..4096");
  if (options.max_io_bytes < kDirectIoAlign || options.max_io_bytes % kDirectIoAlign != 0)
    return Status::InvalidArgument("nvme tier: max_io_bytes must be a positive multiple of 4096");
  const uint64_t per_file = options.capacity_bytes / options.paths.size() / kDirectIoAlign * kDirectIoAlign;
  if (per_file < 2 * kChunkPayloadOffset)
    return Status::InvalidArgument("nvme tier: nvme.capacity_bytes " + std::to_string(options.capacity_bytes) +
                                   " is too small for " + std::to_string(options.paths.size()) + " data file(s)");
  std::unique_ptr<NvmeTier> t(new NvmeTier());
  t->options_ = options;
  t->env_ = options.env ? options.env : Env::Default();
  t->registered_.assign(registered.begin(), registered.end());
  for (const std::string& path : options.paths) {
    const size_t slash = path.find_last_of('/');
    if (slash != std::string::npos && slash > 0) KVTIER_RETURN_IF_ERROR(t->env_->CreateDirIfMissing(path.substr(0, slash)));
    Result<std::unique_ptr<DataFile>> f = t->env_->OpenDataFile(path, per_file, !options.buffered);
    if (!f.ok()) return f.status();
    t->file_ptrs_.push_back(f->get());
    t->files_.push_back(std::move(*f));
    t->space_.emplace_back(per_file, kDirectIoAlign);
  }
  KVTIER_RETURN_IF_ERROR(t->env_->CreateDirIfMissing(options.metadata_dir));
  rocksdb::Options o;
  o.create_if_missing = true;
  o.paranoid_checks = true;
  o.max_open_files = 256;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(o, options.metadata_dir, &db);
  if (!s.ok())
    return Status::IOError("nvme tier: cannot open the metadata database at " + options.metadata_dir + ": " +
                           s.ToString() + "; if it is damaged, move it away to start with an empty NVMe tier");
  t->db_.reset(db);
  return t;
}

NvmeTier::~NvmeTier() {
  idle_queues_.clear();
  if (db_) (void)db_->Close();
}

Status NvmeTier::Recover(std::vector<std::pair<NamespaceId, std::string>>* namespaces,
                         std::vector<NvmeChunkRecord>* chunks) {
  namespaces->clear();
  chunks->clear();
  rocksdb::WriteBatch drop;
  uint64_t dropped = 0;
  std::unordered_map<NamespaceId, bool, ChunkKeyHash> known;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(std::string(1, kNamespacePrefix)); it->Valid() && it->key()[0] == kNamespacePrefix; it->Next()) {
    std::string value = it->value().ToString();
    std::string_view body;
    Reader kr(it->key().data() + 1, it->key().size() - 1);
    NamespaceId id;
    if (it->key().size() != 17 || !kr.Hash(&id) || !CheckedBody(value, &body)) {
      drop.Delete(it->key());
      ++dropped;
      continue;
    }
    known[id] = true;
    namespaces->emplace_back(id, std::string(body));
  }
  std::unordered_map<ChunkKey, NvmeChunkRecord, ChunkKeyHash> all;
  for (it->Seek(std::string(1, kChunkPrefix)); it->Valid() && it->key()[0] == kChunkPrefix; it->Next()) {
    NvmeChunkRecord r;
    Reader kr(it->key().data() + 1, it->key().size() - 1);
    ChunkKey key;
    const bool ok = it->key().size() == 17 && kr.Hash(&key) && DecodeRecord(it->value().ToString(), &r) &&
                    r.key == key && known.count(r.ns) && r.extent.file < files_.size() &&
                    r.extent.bytes == ExtentBytes(r.payload_bytes) && r.payload_bytes > 0 &&
                    r.payload_bytes <= kMaxChunkPayloadBytes;
    if (!ok) {
      drop.Delete(it->key());
      ++dropped;
      continue;
    }
    all.emplace(key, std::move(r));
  }
  if (!it->status().ok())
    return Status::IOError("nvme tier: reading the metadata at " + options_.metadata_dir + " failed: " +
                           it->status().ToString() + "; move it away to start with an empty NVMe tier");
  it.reset();
  // Keep only chunks whose whole parent chain is here, parents first.
  std::unordered_map<ChunkKey, int, ChunkKeyHash> state;  // 1: kept, 2: dropped
  std::function<bool(const ChunkKey&)> keep = [&](const ChunkKey& k) -> bool {
    auto s = state.find(k);
    if (s != state.end()) return s->second == 1;
    auto r = all.find(k);
    if (r == all.end()) return false;
    state[k] = 2;  // a cycle (impossible unless records lie) ends here as dropped
    const bool parent_ok = !r->second.parent || keep(*r->second.parent);
    if (!parent_ok) return false;
    std::lock_guard<std::mutex> l(mu_);
    if (!space_[r->second.extent.file].Reserve(r->second.extent.offset, r->second.extent.bytes)) return false;
    state[k] = 1;
    chunks->push_back(r->second);
    return true;
  };
  for (auto& [k, r] : all) {
    if (!keep(k)) {
      drop.Delete(ChunkDbKey(k));
      ++dropped;
    }
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const NvmeChunkRecord& r : *chunks) {
      records_[r.key] = r;
      used_bytes_ += r.extent.bytes;
    }
  }
  if (dropped > 0) {
    dropped_ += dropped;
    rocksdb::WriteOptions wo;
    wo.sync = true;
    rocksdb::Status s = db_->Write(wo, &drop);
    if (!s.ok()) return Status::IOError("nvme tier: dropping bad metadata records failed: " + s.ToString());
  }
  return Status::OK();
}

Status NvmeTier::PutNamespace(const NamespaceId& id, const std::string& encoded_spec) {
  const std::string key = NamespaceDbKey(id);
  std::string existing;
  if (db_->Get(rocksdb::ReadOptions(), key, &existing).ok()) return Status::OK();
  Writer w;
  w.Bytes(encoded_spec);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  rocksdb::Status s = db_->Put(wo, key, w.Finish());
  if (!s.ok()) return Status::IOError("nvme tier: saving a namespace record failed: " + s.ToString());
  return Status::OK();
}

// ---- space ---------------------------------------------------------------------------------

Result<NvmeExtent> NvmeTier::Allocate(uint64_t payload_bytes) {
  const uint64_t need = ExtentBytes(payload_bytes);
  std::lock_guard<std::mutex> l(mu_);
  for (uint32_t f = 0; f < space_.size(); ++f) {
    // Start at a different file each time so chunks spread over all of them.
    const uint32_t file = static_cast<uint32_t>((f + used_bytes_ / need) % space_.size());
    if (std::optional<uint64_t> off = space_[file].Allocate(need)) {
      used_bytes_ += need;
      return NvmeExtent{file, *off, need};
    }
  }
  if (need > space_[0].size())
    return Status::InvalidArgument("nvme tier: a chunk of " + std::to_string(payload_bytes) +
                                   " bytes does not fit in a data file of " + std::to_string(space_[0].size()) +
                                   " bytes; raise nvme.capacity_bytes");
  return Status::NoSpace("nvme tier: no free extent of " + std::to_string(need) + " bytes");
}

void NvmeTier::Free(const NvmeExtent& e) {
  std::lock_guard<std::mutex> l(mu_);
  space_[e.file].Free(e.offset, e.bytes);
  used_bytes_ -= e.bytes;
}

bool NvmeTier::DropLocked(const ChunkKey& key) {
  auto it = records_.find(key);
  if (it == records_.end()) return false;
  (void)db_->Delete(rocksdb::WriteOptions(), ChunkDbKey(key));  // unsynced: see the class comment
  space_[it->second.extent.file].Free(it->second.extent.offset, it->second.extent.bytes);
  used_bytes_ -= it->second.extent.bytes;
  records_.erase(it);
  return true;
}

bool NvmeTier::Remove(const ChunkKey& key) {
  std::lock_guard<std::mutex> l(mu_);
  return DropLocked(key);
}

bool NvmeTier::Contains(const ChunkKey& key) const {
  std::lock_guard<std::mutex> l(mu_);
  return records_.count(key) != 0;
}

// ---- I/O -------------------------------------------------------------------------------------

Result<std::unique_ptr<IoQueue>> NvmeTier::TakeQueue() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!idle_queues_.empty()) {
      std::unique_ptr<IoQueue> q = std::move(idle_queues_.back());
      idle_queues_.pop_back();
      return q;
    }
  }
  return env_->NewIoQueue(file_ptrs_, options_.queue_depth, registered_);
}

void NvmeTier::ReturnQueue(std::unique_ptr<IoQueue> q) {
  std::lock_guard<std::mutex> l(mu_);
  idle_queues_.push_back(std::move(q));
}

// Ops moving one chunk: its header page, then the payload in pieces of max_io_bytes.
// Ops for one extent: the header page, then the payload in pieces of at most max_io_bytes
// so that one chunk fills the queue. When the payload follows the page in memory (a host
// slot), page and payload are one range cut into such pieces.
void NvmeTier::AddOps(const NvmeExtent& e, const uint8_t* page, const uint8_t* payload, IoOp::Kind kind,
                      std::vector<IoOp>* ops) const {
  IoOp op;
  op.kind = kind;
  op.file = e.file;
  uint64_t start = 0;  // offset in the extent where the pieces begin
  const uint8_t* base = page;
  if (payload != page + kChunkPayloadOffset) {
    op.offset = e.offset;
    op.buf = const_cast<uint8_t*>(page);
    op.len = kChunkPayloadOffset;
    ops->push_back(op);
    start = kChunkPayloadOffset;
    base = payload - kChunkPayloadOffset;
  }
  for (uint64_t done = start; done < e.bytes; done += options_.max_io_bytes) {
    op.offset = e.offset + done;
    op.buf = const_cast<uint8_t*>(base) + done;
    op.len = std::min(options_.max_io_bytes, e.bytes - done);
    ops->push_back(op);
  }
}

Status NvmeTier::Write(std::span<WriteItem> items) {
  (void)WriteData(items);
  return Commit(items);
}

Status NvmeTier::WriteData(std::span<WriteItem> items) {
  if (items.empty()) return Status::OK();
  // Unsealed headers are completed in pages of our own; payloads go straight from the slots.
  size_t unsealed = 0;
  std::vector<bool> sealed(items.size(), false);
  std::vector<Result<ChunkHeader>> headers;
  headers.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    WriteItem& w = items[i];
    headers.push_back(DecodeChunkHeader(std::span<const uint8_t>(w.page, kChunkHeaderBytes)));
    sealed[i] = headers.back().ok() && (headers.back()->flags & kFlagChecksum) != 0 &&
                w.payload == w.page + kChunkPayloadOffset;
    if (!sealed[i]) ++unsealed;
  }
  uint8_t* raw = nullptr;
  if (unsealed > 0) {
    raw = static_cast<uint8_t*>(std::aligned_alloc(kDirectIoAlign, unsealed * kChunkPayloadOffset));
    if (raw == nullptr) {
      for (WriteItem& w : items) w.status = Status::NoMemory("nvme tier: no memory for header pages");
      return items[0].status;
    }
  }
  std::unique_ptr<uint8_t, AlignedFree> pages(raw);
  std::vector<IoOp> ops;
  std::vector<size_t> first_op(items.size() + 1);
  for (size_t i = 0, next_page = 0; i < items.size(); ++i) {
    WriteItem& w = items[i];
    first_op[i] = ops.size();
    Result<ChunkHeader>& h = headers[i];
    if (!h.ok()) {
      w.status = h.status().WithContext("nvme tier: write: ");
      continue;
    }
    w.status = Status::OK();
    if (sealed[i]) {
      w.record.payload_checksum = h->payload_checksum;
      AddOps(w.record.extent, w.page, w.payload, IoOp::Kind::kWrite, &ops);
      continue;
    }
    uint8_t* page = raw + (next_page++) * kChunkPayloadOffset;
    std::memcpy(page, w.page, kChunkPayloadOffset);
    w.record.payload_checksum = ChunkChecksum(w.payload, w.record.payload_bytes);
    h->payload_checksum = w.record.payload_checksum;
    h->flags |= kFlagChecksum;
    EncodeChunkHeader(*h, page);
    AddOps(w.record.extent, page, w.payload, IoOp::Kind::kWrite, &ops);
  }
  first_op[items.size()] = ops.size();
  Result<std::unique_ptr<IoQueue>> q = TakeQueue();
  if (!q.ok()) {
    for (WriteItem& w : items)
      if (w.status.ok()) w.status = q.status();
    return q.status();
  }
  (void)(*q)->Run(ops);
  ReturnQueue(std::move(*q));
  Status first;
  for (size_t i = 0; i < items.size(); ++i) {
    for (size_t o = first_op[i]; o < first_op[i + 1] && items[i].status.ok(); ++o)
      if (!ops[o].status.ok()) items[i].status = ops[o].status;
    if (!items[i].status.ok() && first.ok()) first = items[i].status;
  }
  return first;
}

Status NvmeTier::Commit(std::span<WriteItem> items) {
  if (items.empty()) return Status::OK();
  std::vector<bool> touched(files_.size(), false);
  bool any = false;
  for (const WriteItem& w : items) {
    if (!w.status.ok()) continue;
    touched[w.record.extent.file] = true;
    any = true;
  }
  if (!any) {  // nothing to make durable
    write_errors_ += items.size();
    return items[0].status;
  }
  // Durable data first. Group commit: a sync that starts after our writes completed
  // covers them, so concurrent writers share one fdatasync per file.
  const uint64_t my_epoch = write_epoch_.fetch_add(1, std::memory_order_acq_rel) + 1;
  {
    std::lock_guard<std::mutex> sl(sync_mu_);
    if (synced_epoch_ < my_epoch) {
      const uint64_t target = write_epoch_.load(std::memory_order_acquire);
      Status all;
      for (size_t f = 0; f < files_.size(); ++f) {
        Status s = files_[f]->Sync();
        if (!s.ok() && all.ok()) all = s;
      }
      if (all.ok()) {
        synced_epoch_ = target;
      } else {
        for (WriteItem& w : items)
          if (w.status.ok() && touched[w.record.extent.file]) w.status = all.WithContext("nvme tier: sync: ");
      }
    }
  }
  // ... then the records, in one synced batch.
  rocksdb::WriteBatch batch;
  size_t n = 0;
  for (WriteItem& w : items) {
    if (!w.status.ok()) continue;
    batch.Put(ChunkDbKey(w.record.key), EncodeRecord(w.record));
    ++n;
  }
  if (n > 0) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    rocksdb::Status s = db_->Write(wo, &batch);
    if (!s.ok()) {
      for (WriteItem& w : items)
        if (w.status.ok()) w.status = Status::IOError("nvme tier: committing metadata failed: " + s.ToString());
    }
  }
  Status first;
  std::lock_guard<std::mutex> l(mu_);
  for (WriteItem& w : items) {
    if (w.status.ok()) {
      auto old = records_.find(w.record.key);
      if (old != records_.end()) {  // rewritten: the old extent is free now
        space_[old->second.extent.file].Free(old->second.extent.offset, old->second.extent.bytes);
        used_bytes_ -= old->second.extent.bytes;
      }
      records_[w.record.key] = w.record;
    } else {
      write_errors_++;
      if (first.ok()) first = w.status;
    }
  }
  return first;
}

Status NvmeTier::Read(const ChunkKey& key, const ChunkIdentity& id, uint8_t* dst, uint64_t dst_bytes) {
  ReadItem item{key, id, dst, dst_bytes, Status()};
  ReadMany(std::span<ReadItem>(&item, 1));
  return item.status;
}

void NvmeTier::ReadMany(std::span<ReadItem> items) {
  std::vector<NvmeChunkRecord> recs(items.size());
  std::vector<IoOp> ops;
  std::vector<size_t> first_op(items.size() + 1);
  {
    std::lock_guard<std::mutex> l(mu_);
    for (size_t i = 0; i < items.size(); ++i) {
      auto it = records_.find(items[i].key);
      items[i].status = it == records_.end()
                            ? Status::NotFound("nvme tier: chunk " + items[i].key.ToHex() + " is not stored")
                            : Status::OK();
      if (it != records_.end()) recs[i] = it->second;
    }
  }
  for (size_t i = 0; i < items.size(); ++i) {
    first_op[i] = ops.size();
    ReadItem& it = items[i];
    if (!it.status.ok()) continue;
    if (it.dst_bytes < recs[i].extent.bytes) {
      it.status = Status::InvalidArgument("nvme tier: read of " + std::to_string(recs[i].extent.bytes) +
                                          " bytes into a buffer of " + std::to_string(it.dst_bytes));
      continue;
    }
    AddOps(recs[i].extent, it.dst, it.dst + kChunkPayloadOffset, IoOp::Kind::kRead, &ops);
  }
  first_op[items.size()] = ops.size();
  if (!ops.empty()) {
    Result<std::unique_ptr<IoQueue>> q = TakeQueue();
    if (!q.ok()) {
      for (ReadItem& it : items)
        if (it.status.ok()) it.status = q.status();
      return;
    }
    (void)(*q)->Run(ops);  // one queue for the whole batch: its chunks' pieces overlap
    ReturnQueue(std::move(*q));
  }
  for (size_t i = 0; i < items.size(); ++i) {
    ReadItem& it = items[i];
    if (!it.status.ok()) continue;
    for (size_t o = first_op[i]; o < first_op[i + 1]; ++o) {
      if (ops[o].status.ok()) continue;
      read_errors_++;
      it.status = ops[o].status.WithContext("nvme tier: read: ");
      break;
    }
    if (!it.status.ok()) continue;
    const NvmeChunkRecord& r = recs[i];
    Result<ChunkHeader> h = DecodeChunkHeader(std::span<const uint8_t>(it.dst, kChunkHeaderBytes));
    Status v = h.ok() ? CheckChunkIdentity(*h, it.id) : h.status();
    if (v.ok() && ((h->flags & kFlagChecksum) == 0 || h->payload_bytes != r.payload_bytes ||
                   h->payload_checksum != r.payload_checksum))
      v = Status::Corruption("chunk header disagrees with its metadata record");
    if (v.ok() && ChunkChecksum(it.dst + kChunkPayloadOffset, r.payload_bytes) != r.payload_checksum)
      v = Status::Corruption("payload checksum mismatch");
    if (v.ok()) continue;
    corrupt_++;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto rec = records_.find(it.key);
      if (rec != records_.end() && rec->second.extent.offset == r.extent.offset &&
          rec->second.extent.file == r.extent.file)
        DropLocked(it.key);
    }
    it.status = v.WithContext("nvme tier: chunk " + it.key.ToHex() + " in " + files_[r.extent.file]->path() + ": ");
  }
}

NvmeStats NvmeTier::Stats() const {
  NvmeStats s;
  std::lock_guard<std::mutex> l(mu_);
  for (const ExtentAllocator& a : space_) s.capacity_bytes += a.size();
  s.used_bytes = used_bytes_;
  s.chunks = records_.size();
  s.corrupt_chunks = corrupt_.load();
  s.dropped_records = dropped_.load();
  s.write_errors = write_errors_.load();
  s.read_errors = read_errors_.load();
  s.io_backend = env_->io_backend();
  return s;
}

}  // namespace kvtier
