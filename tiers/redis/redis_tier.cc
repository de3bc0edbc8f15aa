#include "tiers/redis/redis_tier.h"

#include <lz4.h>
#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>  // the same XXH3 kernels ChunkChecksum uses
#endif

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <string_view>

#include "common/copy.h"

namespace kvtier {
namespace {

std::string_view AsChars(std::span<const uint8_t> s) {
  return std::string_view(reinterpret_cast<const char*>(s.data()), s.size());
}

bool Unanswered(const RedisCommand& c) { return !c.status.ok() || !c.reply; }

// Verifies a GET reply while it sits in the reader's buffer and, only when every check
// passes, writes the raw payload to dst.
class ChunkSink final : public BulkSink {
 public:
  ChunkSink(const ChunkIdentity* id, std::span<uint8_t> dst, size_t index,
            const std::function<void(size_t)>* on_verified,
            const std::function<void(size_t, uint64_t)>* on_arrived = nullptr)
      : id_(id), dst_(dst), index_(index), on_verified_(on_verified), on_arrived_(on_arrived) {}

  // An uncompressed value (header + payload of the destination's size) is received with
  // its header in header_ and its payload straight into dst, then checked there. Any other
  // length (an LZ4 value, or a wrong one) goes through OnBulk.
  bool Direct(size_t len, std::vector<iovec>* iov) override {
    if (len != kChunkHeaderBytes + dst_.size()) return false;
    iov->assign({iovec{header_.data(), header_.size()}, iovec{dst_.data(), dst_.size()}});
    return true;
  }

  void OnDirect(size_t len) override { FinishDirect(len, nullptr); }

  // OnDirect's checks; `payload_checksum`, when given, is the destination's checksum already
  // computed as its bytes arrived (a value read in pieces), else it is computed here.
  void FinishDirect(size_t len, const uint64_t* payload_checksum) {
    called_ = true;
    bytes_ = len;
    Result<ChunkHeader> h = CheckHeader(header_, len);
    if (!h.ok()) {
      status_ = h.status();
      return;
    }
    if (h->codec != Codec::kNone) {  // our writer stores a value LZ4 does not shrink uncompressed
      status_ = Status::Corruption("redis value: compressed payload as large as the raw one");
      return;
    }
    const uint64_t sum = payload_checksum != nullptr ? *payload_checksum : ChunkChecksum(dst_.data(), dst_.size());
    status_ = sum == h->payload_checksum ? Status::OK() : Status::Corruption("redis value: payload checksum mismatch");
    Verified();
  }

  void OnBulk(const uint8_t* data, size_t len) override {
    called_ = true;
    bytes_ = len;
    Result<ChunkHeader> h = CheckHeader(std::span<const uint8_t>(data, len), len);
    if (!h.ok()) {
      status_ = h.status();
      return;
    }
    const uint8_t* stored = data + kChunkHeaderBytes;
    if (h->codec == Codec::kNone) {
      // Copy and checksum in cache-sized blocks (one pass over memory instead of two); the
      // destination is scratch until the checksum matches.
      if (!CopyVerified(stored, h->payload_bytes, h->payload_checksum)) {
        status_ = Status::Corruption("redis value: payload checksum mismatch");
        return;
      }
    } else if (ChunkChecksum(stored, h->payload_bytes) != h->payload_checksum) {
      status_ = Status::Corruption("redis value: payload checksum mismatch");
      return;
    } else if (h->codec == Codec::kLz4) {
      if (h->payload_bytes > static_cast<uint64_t>(LZ4_MAX_INPUT_SIZE) || dst_.size() > static_cast<uint64_t>(INT32_MAX)) {
        status_ = Status::Corruption("redis value: LZ4 sizes exceed what LZ4 can hold");
        return;
      }
      int n = LZ4_decompress_safe(reinterpret_cast<const char*>(stored), reinterpret_cast<char*>(dst_.data()),
                                  static_cast<int>(h->payload_bytes), static_cast<int>(dst_.size()));
      if (n < 0 || static_cast<uint64_t>(n) != h->raw_bytes) {
        status_ = Status::Corruption("redis value: LZ4 payload does not decompress to its raw size");
        return;
      }
    } else {
      status_ = Status::Corruption("redis value: unknown codec");
      return;
    }
    status_ = Status::OK();
    Verified();
  }

  // Decodes the header at the front of `value` (at least its first kChunkHeaderBytes) and
  // checks it against the expected identity, the value's length `len` and the destination.
  Result<ChunkHeader> CheckHeader(std::span<const uint8_t> value, size_t len) const {
    Result<ChunkHeader> h = DecodeChunkHeader(value);
    if (!h.ok()) return h.status();
    KVTIER_RETURN_IF_ERROR(CheckChunkIdentity(*h, *id_));
    if (len - kChunkHeaderBytes != h->payload_bytes)
      return Status::Corruption("redis value holds " + std::to_string(len - kChunkHeaderBytes) +
                                " payload bytes, its header says " + std::to_string(h->payload_bytes));
    if ((h->flags & kFlagChecksum) == 0) return Status::Corruption("redis value has no payload checksum");
    if (h->raw_bytes != dst_.size())  // CheckChunkIdentity already ties raw_bytes to the shape
      return Status::Corruption("redis value: raw size differs from the destination");
    return h;
  }

  bool CopyVerified(const uint8_t* src, uint64_t n, uint64_t checksum) {
    constexpr uint64_t kBlock = 64 << 10;
    if (n <= kBlock) {
      if (n > 0) CopyBytes(dst_.data(), src, n);
      return ChunkChecksum(dst_.data(), n) == checksum;
    }
    std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> st(XXH3_createState(), XXH3_freeState);
    if (!st || XXH3_64bits_reset(st.get()) != XXH_OK) {  // no memory for the state: two passes
      CopyBytes(dst_.data(), src, n);
      return ChunkChecksum(dst_.data(), n) == checksum;
    }
    for (uint64_t off = 0; off < n; off += kBlock) {
      const uint64_t len = std::min(kBlock, n - off);
      CopyBytes(dst_.data() + off, src + off, len);
      (void)XXH3_64bits_update(st.get(), dst_.data() + off, len);
    }
    return XXH3_64bits_digest(st.get()) == checksum;
  }
  void Verified() const {
    if (status_.ok() && on_verified_ != nullptr && *on_verified_) (*on_verified_)(index_);
  }
  // dst's first n payload bytes are in as received (unchecked); 0: none of them hold any more.
  void Arrived(uint64_t n) const {
    if (on_arrived_ != nullptr && *on_arrived_) (*on_arrived_)(index_, n);
  }
  bool called() const { return called_; }
  uint64_t bytes() const { return bytes_; }
  const Status& status() const { return status_; }
  // Where a value read in pieces puts its header (then OnDirect checks it as a direct one's).
  std::span<uint8_t> header() { return header_; }
  std::span<uint8_t> dst() const { return dst_; }

 private:
  const ChunkIdentity* id_;
  std::span<uint8_t> dst_;
  size_t index_;
  const std::function<void(size_t)>* on_verified_;
  const std::function<void(size_t, uint64_t)>* on_arrived_;
  std::array<uint8_t, kChunkHeaderBytes> header_{};  // a direct value's header
  bool called_ = false;
  uint64_t bytes_ = 0;
  Status status_;
};

// A value read as GETRANGEs (RedisTierOptions::get_piece_bytes): what its pieces have done.
struct RangedValue {
  uint64_t total = 0;     // the value's expected length: header + payload of dst's size
  uint64_t commands = 0;  // its GETRANGEs: one for the end (must be empty), then the pieces
  uint64_t left = 0;      // of those, not yet in place
  bool mismatch = false;  // a piece came back with another length: not that value (LZ4, or
                          // overwritten or removed meanwhile); read it again with GET
  bool empty = false;     // the first piece came back empty: no such key
  // `arrived`: the payload bytes in place from the front, while pieces come in order (they
  // do: a value's pieces go on one connection), reported to on_arrived as they grow. Its
  // checksum is taken piece by piece along with it, while each piece is still in the CPU's
  // caches. Without a hash state, or after a piece out of order, the checksum is computed
  // over the whole at the end.
  std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> hash{nullptr, XXH3_freeState};
  uint64_t arrived = 0;
  bool in_order = true;
  bool told = false;  // on_arrived has been called for it
};

// One GETRANGE of a value read in pieces: value bytes [off, off + len), received straight into
// the item's header buffer and destination; or, with off = the value's length and len = 0,
// the GETRANGE that must come back empty (a longer value is not the one expected). When all
// are in, the item's ChunkSink checks the whole value as it checks a direct GET (OnDirect).
class PieceSink final : public BulkSink {
 public:
  PieceSink(ChunkSink* item, RangedValue* value, uint64_t off, uint64_t len)
      : item_(item), value_(value), off_(off), len_(len) {}

  bool Direct(size_t len, std::vector<iovec>* iov) override {
    if (len != len_) return false;
    iov->clear();
    ForEachRegion([&](uint8_t* p, size_t n, size_t) { iov->push_back(iovec{p, n}); });
    return true;
  }
  void OnDirect(size_t /*len*/) override { Done(); }
  void OnBulk(const uint8_t* data, size_t len) override {
    if (len != len_) {
      (len == 0 && off_ == 0 ? value_->empty : value_->mismatch) = true;
      return;
    }
    ForEachRegion([&](uint8_t* p, size_t n, size_t at) {
      if (n > 0) CopyBytes(p, data + at, n);
    });
    Done();
  }

 private:
  // fn(dst, bytes, offset within this piece) for the piece's part of the header, then of the
  // payload.
  template <typename Fn>
  void ForEachRegion(Fn&& fn) {
    const uint64_t end = off_ + len_;
    if (off_ < kChunkHeaderBytes) {
      const uint64_t n = std::min<uint64_t>(len_, kChunkHeaderBytes - off_);
      fn(item_->header().data() + off_, n, 0);
    }
    if (end > kChunkHeaderBytes) {
      const uint64_t from = std::max<uint64_t>(off_, kChunkHeaderBytes);
      fn(item_->dst().data() + (from - kChunkHeaderBytes), end - from, from - off_);
    }
  }
  void Done() {
    RangedValue& v = *value_;
    const uint64_t from = std::max<uint64_t>(off_, kChunkHeaderBytes), end = off_ + len_;
    if (end > from && v.in_order) {
      if (from - kChunkHeaderBytes == v.arrived) {
        if (v.hash) (void)XXH3_64bits_update(v.hash.get(), item_->dst().data() + v.arrived, end - from);
        v.arrived += end - from;
        if (!v.mismatch && !v.empty) {
          item_->Arrived(v.arrived);
          v.told = true;
        }
      } else {
        v.in_order = false;
      }
    }
    if (--v.left > 0 || v.mismatch || v.empty) return;
    if (v.hash && v.in_order && v.arrived == item_->dst().size()) {
      const uint64_t sum = XXH3_64bits_digest(v.hash.get());
      item_->FinishDirect(v.total, &sum);
    } else {
      item_->FinishDirect(v.total, nullptr);
    }
  }

  ChunkSink* item_;
  RangedValue* value_;
  uint64_t off_, len_;
};

}  // namespace

const char* RedisItemResultName(RedisItemResult r) {
  switch (r) {
    case RedisItemResult::kOk: return "ok";
    case RedisItemResult::kNotFound: return "not-found";
    case RedisItemResult::kCorruption: return "corruption";
    case RedisItemResult::kUnavailable: return "unavailable";
    case RedisItemResult::kInvalid: return "invalid";
  }
  return "?";
}

RedisTier::RedisTier(const RedisTierOptions& options, std::unique_ptr<RedisClient> client)
    : options_(options), client_(std::move(client)), breaker_(options.breaker) {}

RedisTier::~RedisTier() = default;

Result<std::unique_ptr<RedisTier>> RedisTier::Open(const RedisTierOptions& options) {
  if (options.key_prefix.empty()) return Status::InvalidArgument("redis tier: key_prefix must not be empty");
  if (options.max_batch_values == 0 || options.max_batch_bytes == 0)
    return Status::InvalidArgument("redis tier: max_batch_values and max_batch_bytes must be > 0");
  if (options.get_piece_bytes != 0 && options.get_piece_bytes < (64 << 10))
    return Status::InvalidArgument("redis tier: get_piece_bytes must be 0 (one GET per value) or at least 64 KiB, not " +
                                   std::to_string(options.get_piece_bytes));
  if (options.op_timeout.count() <= 0 || options.op_timeout_per_mib.count() < 0)
    return Status::InvalidArgument("redis tier: op_timeout must be > 0 and op_timeout_per_mib >= 0");
  RedisClientOptions co;
  co.mode = options.mode;
  co.seeds = options.seeds;
  co.username = options.username;
  co.password = options.password;
  co.max_in_flight_bytes = options.max_in_flight_bytes;
  co.pool_size = options.pool_size;
  co.connect_timeout = options.connect_timeout;
  co.max_rounds = options.max_rounds;
  Result<std::unique_ptr<RedisClient>> client = RedisClient::Open(co);
  if (!client.ok()) return client.status().WithContext("redis tier: ");
  // Credentials are checked now: a wrong password is a configuration error, not an outage.
  Status ping = (*client)->Ping(RedisClock::now() + options.connect_timeout);
  if (!ping.ok() && ping.code() == Status::Code::kInvalidArgument) return ping.WithContext("redis tier: ");
  return std::unique_ptr<RedisTier>(new RedisTier(options, std::move(*client)));
}

RedisDeadline RedisTier::DeadlineOr(RedisDeadline d, uint64_t value_bytes) const {
  if (d != RedisDeadline{}) return d;
  auto per_bytes = std::chrono::duration_cast<RedisClock::duration>(options_.op_timeout_per_mib * (value_bytes >> 20));
  return RedisClock::now() + options_.op_timeout + per_bytes;
}

std::string RedisTier::KeyFor(const NamespaceId& ns, const ChunkKey& key) const {
  return options_.key_prefix + ":" + ns.ToHex() + ":" + key.ToHex();
}

void RedisTier::Run(std::span<RedisCommand> commands, std::span<const uint64_t> value_bytes, RedisDeadline deadline,
                    std::span<const size_t> value_of) {
  auto value = [&](size_t i) { return value_of.empty() ? i : value_of[i]; };
  size_t begin = 0;
  while (begin < commands.size()) {
    size_t end = begin, values = 0;
    uint64_t bytes = 0;
    while (end < commands.size()) {
      // The next value's commands: [end, next).
      size_t next = end;
      uint64_t b = 0;
      while (next < commands.size() && value(next) == value(end)) b += value_bytes[next++];
      if (end > begin && (values == options_.max_batch_values || bytes + b > options_.max_batch_bytes)) break;
      bytes += b, ++values, end = next;
    }
    (void)client_->Execute(commands.subspan(begin, end - begin), deadline);
    begin = end;
  }
}

Status RedisTier::Put(std::span<RedisPutItem> items, RedisDeadline deadline) {
  uint64_t total = 0;
  for (const RedisPutItem& it : items) total += it.payload.size();
  deadline = DeadlineOr(deadline, total);
  puts_.fetch_add(items.size(), std::memory_order_relaxed);
  CircuitBreaker::Decision d = breaker_.Allow();
  if (d == CircuitBreaker::Decision::kReject) {
    for (RedisPutItem& it : items) {
      it.result = RedisItemResult::kUnavailable;
      it.status = Status::Busy("redis tier: circuit breaker open; save dropped");
    }
    breaker_.CountDroppedSaves(items.size());
    unavailable_.fetch_add(items.size(), std::memory_order_relaxed);
    return items.empty() ? Status::OK() : items[0].status;
  }
  const std::string ttl = std::to_string(options_.ttl_seconds);
  std::vector<std::array<uint8_t, kChunkHeaderBytes>> headers(items.size());
  std::vector<std::vector<uint8_t>> compressed(items.size());
  std::vector<std::string> keys(items.size());
  std::vector<RedisCommand> cmds;
  std::vector<size_t> owner;  // item index of each command
  std::vector<uint64_t> value_bytes;
  cmds.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    RedisPutItem& it = items[i];
    it.status = Status::OK();
    Result<ChunkHeader> h = it.header.size() == kChunkHeaderBytes
                                ? DecodeChunkHeader(it.header)
                                : Result<ChunkHeader>(Status::InvalidArgument("header is not 128 bytes"));
    if (h.ok() && !(h->ns == it.ns && h->key == it.key))
      h = Status::InvalidArgument("header names another chunk than the item");
    if (h.ok() && h->codec != Codec::kNone) h = Status::InvalidArgument("header must describe a raw payload");
    if (h.ok() && it.payload.size() != h->raw_bytes)
      h = Status::InvalidArgument("payload is " + std::to_string(it.payload.size()) + " bytes, header says " +
                                  std::to_string(h->raw_bytes));
    if (!h.ok()) {
      it.result = RedisItemResult::kInvalid;
      it.status = h.status().WithContext("redis tier put: ");
      continue;
    }
    ChunkHeader hh = *h;
    std::span<const uint8_t> stored = it.payload;
    if (options_.compression == RedisCompression::kLz4 && it.payload.size() <= static_cast<size_t>(LZ4_MAX_INPUT_SIZE)) {
      int bound = LZ4_compressBound(static_cast<int>(it.payload.size()));
      compressed[i].resize(static_cast<size_t>(bound));
      int n = LZ4_compress_default(reinterpret_cast<const char*>(it.payload.data()),
                                   reinterpret_cast<char*>(compressed[i].data()), static_cast<int>(it.payload.size()), bound);
      if (n > 0 && static_cast<size_t>(n) < it.payload.size()) {
        stored = std::span<const uint8_t>(compressed[i].data(), static_cast<size_t>(n));
        hh.codec = Codec::kLz4;
      }
    }
    // A raw payload whose header already carries its checksum (a host slot's) keeps it: a
    // wrong one makes every read a miss, never wrong bytes.
    const bool reuse = hh.codec == Codec::kNone && (h->flags & kFlagChecksum) != 0 && h->payload_bytes == stored.size();
    if (!reuse) hh.payload_checksum = ChunkChecksum(stored.data(), stored.size());
    hh.payload_bytes = stored.size();
    hh.flags |= kFlagChecksum;
    EncodeChunkHeader(hh, headers[i].data());
    keys[i] = KeyFor(it.ns, it.key);
    RedisCommand c;
    c.key = keys[i];
    c.args = {RedisArg("SET"), RedisArg(keys[i]), RedisArg(AsChars(headers[i]), AsChars(stored))};
    if (options_.ttl_seconds > 0) {
      c.args.emplace_back("EX");
      c.args.emplace_back(ttl);
    }
    cmds.push_back(std::move(c));
    owner.push_back(i);
    value_bytes.push_back(kChunkHeaderBytes + stored.size());
    cmds.back().weight = value_bytes.back();
    raw_saved_.fetch_add(it.payload.size(), std::memory_order_relaxed);
    stored_saved_.fetch_add(stored.size(), std::memory_order_relaxed);
  }
  if (cmds.empty()) {
    if (d == CircuitBreaker::Decision::kProbe) breaker_.AbandonProbe();
    return items.empty() ? Status::OK() : items[0].status;
  }
  Run(cmds, value_bytes, deadline);
  bool failed = false, timed_out = false;
  for (size_t k = 0; k < cmds.size(); ++k) {
    RedisPutItem& it = items[owner[k]];
    const RedisCommand& c = cmds[k];
    if (Unanswered(c)) {
      failed = true;
      timed_out |= c.status.code() == Status::Code::kTimedOut;
      it.result = RedisItemResult::kUnavailable;
      it.status = c.status.ok() ? Status::IOError("redis tier: no reply") : c.status;
      unavailable_.fetch_add(1, std::memory_order_relaxed);
    } else if (c.reply->type == RedisReply::Type::kError) {
      it.result = RedisItemResult::kUnavailable;  // e.g. OOM: the server refused the value
      it.status = Status::IOError("redis tier put: server said: " + c.reply->str);
      unavailable_.fetch_add(1, std::memory_order_relaxed);
    } else {
      it.result = RedisItemResult::kOk;
      puts_ok_.fetch_add(1, std::memory_order_relaxed);
      bytes_out_.fetch_add(value_bytes[k], std::memory_order_relaxed);
    }
  }
  if (failed) breaker_.RecordFailure(timed_out);
  else breaker_.RecordSuccess();
  for (const RedisPutItem& it : items)
    if (!it.status.ok()) return it.status;
  return Status::OK();
}

void RedisTier::Get(std::span<RedisGetItem> items, RedisDeadline deadline,
                    const std::function<void(size_t)>& on_verified,
                    const std::function<void(size_t, uint64_t)>& on_arrived) {
  uint64_t total = 0;
  for (const RedisGetItem& it : items) total += it.dst.size();
  deadline = DeadlineOr(deadline, total);
  gets_.fetch_add(items.size(), std::memory_order_relaxed);
  CircuitBreaker::Decision d = breaker_.Allow();
  if (d == CircuitBreaker::Decision::kReject) {
    for (RedisGetItem& it : items) {
      it.result = RedisItemResult::kUnavailable;
      it.status = Status::Busy("redis tier: circuit breaker open; treated as a miss");
    }
    unavailable_.fetch_add(items.size(), std::memory_order_relaxed);
    return;
  }
  // Values this tier stored compressed have unknown lengths: those are read whole.
  const uint64_t piece = options_.compression == RedisCompression::kNone ? options_.get_piece_bytes : 0;
  std::vector<std::string> keys(items.size());
  std::vector<ChunkSink> sinks;
  sinks.reserve(items.size());
  std::vector<RangedValue> ranged(items.size());
  std::vector<PieceSink> pieces;
  std::vector<std::string> offsets;  // GETRANGE's start and end arguments, two per piece
  std::vector<size_t> valid;
  for (size_t i = 0; i < items.size(); ++i) {
    RedisGetItem& it = items[i];
    sinks.emplace_back(&it.id, it.dst, i, &on_verified, &on_arrived);
    if (it.dst.size() != ChunkPayloadBytes(it.id.shape) || (it.dst.data() == nullptr && !it.dst.empty())) {
      it.result = RedisItemResult::kInvalid;
      it.status = Status::InvalidArgument("redis tier get: destination is " + std::to_string(it.dst.size()) +
                                          " bytes, the shape's payload is " + std::to_string(ChunkPayloadBytes(it.id.shape)));
      continue;
    }
    keys[i] = KeyFor(it.id.ns, it.id.key);
    valid.push_back(i);
    const uint64_t len = kChunkHeaderBytes + it.dst.size();
    if (RedisReadsInPieces(len, piece)) {
      ranged[i].total = len;
      ranged[i].commands = ranged[i].left = (len + piece - 1) / piece + 1;
      ranged[i].hash.reset(XXH3_createState());
      if (ranged[i].hash && XXH3_64bits_reset(ranged[i].hash.get()) != XXH_OK) ranged[i].hash.reset();
    }
  }
  size_t piece_count = 0;
  for (size_t i : valid) piece_count += ranged[i].commands;
  pieces.reserve(piece_count);  // sinks are pointed to: no reallocation
  offsets.reserve(2 * piece_count);
  std::vector<RedisCommand> cmds;
  std::vector<size_t> owner;  // item of each command
  std::vector<uint64_t> value_bytes;
  std::vector<size_t> first_cmd(items.size(), 0);
  auto get_command = [&](size_t i, BulkSink* sink) {
    RedisCommand c;
    c.key = keys[i];
    c.args = {RedisArg("GET"), RedisArg(keys[i])};
    c.sink = sink;
    c.weight = kChunkHeaderBytes + items[i].dst.size();
    return c;
  };
  for (size_t i : valid) {
    first_cmd[i] = cmds.size();
    if (ranged[i].commands == 0) {
      cmds.push_back(get_command(i, &sinks[i]));
      value_bytes.push_back(cmds.back().weight);
      owner.push_back(i);
      continue;
    }
    // First the end (nothing may follow the expected length), then the pieces in order.
    for (uint64_t k = 0; k < ranged[i].commands; ++k) {
      const uint64_t off = k == 0 ? ranged[i].total : (k - 1) * piece;
      const uint64_t n = k == 0 ? 0 : std::min(piece, ranged[i].total - off);
      pieces.emplace_back(&sinks[i], &ranged[i], off, n);
      offsets.push_back(std::to_string(off));
      offsets.push_back(std::to_string(k == 0 ? off : off + n - 1));
      RedisCommand c;
      c.key = keys[i];
      c.args = {RedisArg("GETRANGE"), RedisArg(keys[i]), RedisArg(offsets[offsets.size() - 2]),
                RedisArg(offsets.back())};
      c.sink = &pieces.back();
      c.weight = n;
      value_bytes.push_back(n);
      cmds.push_back(std::move(c));
      owner.push_back(i);
    }
  }
  if (cmds.empty()) {
    if (d == CircuitBreaker::Decision::kProbe) breaker_.AbandonProbe();
    return;
  }
  Run(cmds, value_bytes, deadline, owner);

  bool failed = false, timed_out = false;
  std::vector<std::string> bad;
  // The outcome of item i from a reply to GET (or from a value read in pieces, whose last
  // piece had the sink check it).
  auto settle = [&](size_t i, const RedisReply& r, const ChunkSink& s) {
    RedisGetItem& it = items[i];
    if (r.type == RedisReply::Type::kNil) {
      it.result = RedisItemResult::kNotFound;
      it.status = Status::NotFound("redis tier: chunk not in Redis");
      misses_.fetch_add(1, std::memory_order_relaxed);
    } else if (r.type == RedisReply::Type::kString && s.called()) {
      bytes_in_.fetch_add(s.bytes(), std::memory_order_relaxed);
      if (s.status().ok()) {
        it.result = RedisItemResult::kOk;
        it.status = Status::OK();
        hits_.fetch_add(1, std::memory_order_relaxed);
      } else {
        it.result = RedisItemResult::kCorruption;
        it.status = s.status().WithContext("redis tier: " + keys[i] + ": ");
        corrupt_.fetch_add(1, std::memory_order_relaxed);
        bad.push_back(keys[i]);
      }
    } else if (r.type == RedisReply::Type::kError && r.str.rfind("WRONGTYPE", 0) == 0) {
      it.result = RedisItemResult::kCorruption;  // something else lives under our key
      it.status = Status::Corruption("redis tier: " + keys[i] + " holds a non-string value");
      corrupt_.fetch_add(1, std::memory_order_relaxed);
      bad.push_back(keys[i]);
    } else {
      it.result = RedisItemResult::kUnavailable;
      it.status = Status::IOError("redis tier get: unexpected reply: " + r.str);
      unavailable_.fetch_add(1, std::memory_order_relaxed);
    }
  };
  auto unanswered = [&](size_t i, const RedisCommand& c) {
    failed = true;
    timed_out |= c.status.code() == Status::Code::kTimedOut;
    items[i].result = RedisItemResult::kUnavailable;
    items[i].status = c.status.ok() ? Status::IOError("redis tier: no reply") : c.status;
    unavailable_.fetch_add(1, std::memory_order_relaxed);
  };
  std::vector<size_t> again;  // values read in pieces that must be read whole
  for (size_t i : valid) {
    if (ranged[i].commands == 0) {
      const RedisCommand& c = cmds[first_cmd[i]];
      if (Unanswered(c)) unanswered(i, c);
      else settle(i, *c.reply, sinks[i]);
      continue;
    }
    const uint64_t count = ranged[i].commands;
    const RedisCommand* gone = nullptr;
    const RedisCommand* error = nullptr;
    for (size_t k = first_cmd[i]; k < first_cmd[i] + count; ++k) {
      if (Unanswered(cmds[k])) gone = gone ? gone : &cmds[k];
      else if (cmds[k].reply->type != RedisReply::Type::kString) error = error ? error : &cmds[k];
    }
    if (gone != nullptr) {
      unanswered(i, *gone);
    } else if (error != nullptr) {
      settle(i, *error->reply, sinks[i]);  // WRONGTYPE: not our value; else unavailable
    } else if (ranged[i].empty) {
      RedisReply nil;
      settle(i, nil, sinks[i]);
    } else if (sinks[i].called() && sinks[i].status().ok()) {
      settle(i, *cmds[first_cmd[i]].reply, sinks[i]);
    } else {
      // Another length (LZ4, a foreign value), a failed check, or a value overwritten between
      // pieces: one GET decides, atomically.
      again.push_back(i);
    }
  }
  if (!again.empty()) {
    piece_rereads_.fetch_add(again.size(), std::memory_order_relaxed);
    std::vector<ChunkSink> whole;
    whole.reserve(again.size());
    std::vector<RedisCommand> retry;
    std::vector<uint64_t> retry_bytes;
    for (size_t i : again) {
      if (ranged[i].told) sinks[i].Arrived(0);  // the GET below rewrites dst
      whole.emplace_back(&items[i].id, items[i].dst, i, &on_verified);
      retry.push_back(get_command(i, &whole.back()));
      retry_bytes.push_back(retry.back().weight);
    }
    Run(retry, retry_bytes, deadline);
    for (size_t k = 0; k < again.size(); ++k) {
      if (Unanswered(retry[k])) unanswered(again[k], retry[k]);
      else settle(again[k], *retry[k].reply, whole[k]);
    }
  }
  if (failed) breaker_.RecordFailure(timed_out);
  else breaker_.RecordSuccess();
  if (!bad.empty()) DeleteKeys(bad, deadline);
}

void RedisTier::DeleteKeys(const std::vector<std::string>& keys, RedisDeadline deadline) {
  // Best effort; a short extra allowance when the call's deadline is already gone.
  deadline = std::max(deadline, RedisClock::now() + std::chrono::milliseconds(50));
  std::vector<RedisCommand> cmds(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    cmds[i].key = keys[i];
    cmds[i].args = {RedisArg("DEL"), RedisArg(keys[i])};
  }
  (void)client_->Execute(cmds, deadline);
  removes_.fetch_add(keys.size(), std::memory_order_relaxed);
}

void RedisTier::Exists(std::span<RedisExistsItem> items, RedisDeadline deadline) {
  deadline = DeadlineOr(deadline, 0);
  exists_probes_.fetch_add(items.size(), std::memory_order_relaxed);
  for (RedisExistsItem& it : items) it.exists = false;
  if (items.empty()) return;
  if (breaker_.Allow() == CircuitBreaker::Decision::kReject) {
    unavailable_.fetch_add(items.size(), std::memory_order_relaxed);
    return;
  }
  std::vector<std::string> keys(items.size());
  std::vector<RedisCommand> cmds(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    keys[i] = KeyFor(items[i].ns, items[i].key);
    cmds[i].key = keys[i];
    cmds[i].args = {RedisArg("EXISTS"), RedisArg(keys[i])};
  }
  // EXISTS replies are tiny: the whole batch is one pipeline per node.
  (void)client_->Execute(cmds, deadline);
  bool failed = false, timed_out = false;
  for (size_t i = 0; i < items.size(); ++i) {
    if (Unanswered(cmds[i])) {
      failed = true;
      timed_out |= cmds[i].status.code() == Status::Code::kTimedOut;
      unavailable_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    items[i].exists = cmds[i].reply->type == RedisReply::Type::kInteger && cmds[i].reply->integer > 0;
    if (items[i].exists) exists_hits_.fetch_add(1, std::memory_order_relaxed);
  }
  if (failed) breaker_.RecordFailure(timed_out);
  else breaker_.RecordSuccess();
}

Status RedisTier::Remove(const NamespaceId& ns, const ChunkKey& key, RedisDeadline deadline) {
  deadline = DeadlineOr(deadline, 0);
  if (breaker_.Allow() == CircuitBreaker::Decision::kReject)
    return Status::Busy("redis tier: circuit breaker open; remove skipped");
  std::string k = KeyFor(ns, key);
  RedisCommand c;
  c.key = k;
  c.args = {RedisArg("DEL"), RedisArg(k)};
  Status st = client_->Execute(std::span<RedisCommand>(&c, 1), deadline);
  if (!st.ok()) {
    breaker_.RecordFailure(st.code() == Status::Code::kTimedOut);
    return st;
  }
  breaker_.RecordSuccess();
  removes_.fetch_add(1, std::memory_order_relaxed);
  if (c.reply->type == RedisReply::Type::kError) return Status::IOError("redis tier remove: server said: " + c.reply->str);
  return Status::OK();
}

RedisTierStats RedisTier::Stats() const {
  RedisTierStats s;
  s.puts = puts_.load(std::memory_order_relaxed);
  s.puts_ok = puts_ok_.load(std::memory_order_relaxed);
  s.gets = gets_.load(std::memory_order_relaxed);
  s.hits = hits_.load(std::memory_order_relaxed);
  s.misses = misses_.load(std::memory_order_relaxed);
  s.corrupt = corrupt_.load(std::memory_order_relaxed);
  s.exists_probes = exists_probes_.load(std::memory_order_relaxed);
  s.exists_hits = exists_hits_.load(std::memory_order_relaxed);
  s.removes = removes_.load(std::memory_order_relaxed);
  s.unavailable = unavailable_.load(std::memory_order_relaxed);
  s.bytes_out = bytes_out_.load(std::memory_order_relaxed);
  s.bytes_in = bytes_in_.load(std::memory_order_relaxed);
  s.piece_rereads = piece_rereads_.load(std::memory_order_relaxed);
  s.raw_bytes_saved = raw_saved_.load(std::memory_order_relaxed);
  s.stored_bytes_saved = stored_saved_.load(std::memory_order_relaxed);
  s.compression_ratio = s.stored_bytes_saved == 0 ? 1.0
                                                  : static_cast<double>(s.raw_bytes_saved) / static_cast<double>(s.stored_bytes_saved);
  s.breaker = breaker_.Counters();
  s.errors = s.breaker.errors;
  s.timeouts = s.breaker.timeouts;
  s.client = client_->Stats();
  return s;
}

}  // namespace kvtier
