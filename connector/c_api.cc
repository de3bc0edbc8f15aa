// The C ABI (include/kvtier/kvtier.h) over the C++ Store. Every entry point catches
// everything: no exception crosses this edge. Status codes map 1:1 (-code).
#include "kvtier/kvtier.h"

#include <chrono>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "common/stats_fields.h"
#include "kvtier/store.h"

using kvtier::Status;

struct kvt_store {
  std::shared_ptr<kvtier::Store> store;
  mutable std::mutex mu;
  std::string last_error;  // guarded by mu
};

struct kvt_namespace {
  std::shared_ptr<kvtier::Store> store;  // keeps the Store object alive after kvt_store_close
  kvtier::NamespaceHandle handle;
  mutable std::mutex mu;
  std::string last_error;  // guarded by mu
};

struct kvt_ticket {
  kvtier::Ticket ticket;
  mutable std::mutex mu;
  std::string last_error;  // guarded by mu
};

namespace {

int ToCode(const Status& s) { return -static_cast<int>(s.code()); }

// Records the message on the handle and returns the code.
template <typename H>
int Fail(H* h, const Status& s) {
  if (h != nullptr) {
    std::lock_guard<std::mutex> l(h->mu);
    h->last_error = s.ToString();
  }
  return ToCode(s);
}

template <typename H>
const char* LastError(const H* h) {
  if (h == nullptr) return "";
  std::lock_guard<std::mutex> l(h->mu);
  return h->last_error.c_str();
}

// Runs fn, mapping exceptions to statuses.
template <typename H, typename Fn>
int Guard(H* h, Fn&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return Fail(h, Status::NoMemory("out of memory"));
  } catch (const std::exception& e) {
    return Fail(h, Status::Internal(std::string("unexpected exception: ") + e.what()));
  } catch (...) {
    return Fail(h, Status::Internal("unexpected exception"));
  }
}

const char* Str(const char* s) { return s ? s : ""; }

Status CheckSize(uint32_t got, size_t want, const char* what) {
  if (got == want) return Status::OK();
  return Status::InvalidArgument(std::string(what) + ".struct_size is " + std::to_string(got) + ", expected " +
                                 std::to_string(want) + ": initialise it with " + what +
                                 "_init() from the kvtier.h this library was built with");
}

// kvt_store_options as it was before the Redis fields: still accepted.
constexpr size_t kStoreOptionsV0Size = offsetof(kvt_store_options, redis_addresses);
// ... and before the GPU fields, and before the daemon fields.
constexpr size_t kStoreOptionsV1Size = offsetof(kvt_store_options, gpu_register_host);
constexpr size_t kStoreOptionsV2Size = offsetof(kvt_store_options, daemon_address);

std::vector<std::string> SplitCommas(const char* list) {
  std::vector<std::string> out;
  const std::string all = Str(list);
  for (size_t start = 0; start <= all.size();) {
    size_t comma = all.find(',', start);
    if (comma == std::string::npos) comma = all.size();
    if (comma > start) out.push_back(all.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

Status CheckPolicy(int32_t p, const char* field) {
  if (p >= 0 && p <= 2) return Status::OK();
  return Status::InvalidArgument(std::string("kvt_store_options.") + field + " " + std::to_string(p) +
                                 " is not a kvt_write_policy");
}

// One JSON object with every counter (numbers and strings only).
std::string StatsJson(const kvtier::StoreStats& st) {
  std::string out = "{";
  auto num = [&](const char* k, uint64_t v) {
    if (out.size() > 1) out += ",";
    out += "\"";
    out += k;
    out += "\":" + std::to_string(v);
  };
  auto str = [&](const char* k, const std::string& v) {
    if (out.size() > 1) out += ",";
    out += "\"";
    out += k;
    out += "\":\"";
    for (char c : v)
      if (c != '"' && c != '\\' && static_cast<unsigned char>(c) >= 0x20) out += c;
    out += "\"";
  };
#define KVT_NUM(f) num(#f, static_cast<uint64_t>(st.f));
#define KVT_STR(f) str(#f, st.f);
  KVTIER_STORE_STATS_NUMBERS(KVT_NUM)
  KVTIER_STORE_STATS_STRINGS(KVT_STR)
#undef KVT_STR
#undef KVT_NUM
  return out + "}";
}

// kvt_kv_layout as it was before v_bases: still accepted.
constexpr size_t kKvLayoutV0Size = offsetof(kvt_kv_layout, v_bases);
static_assert(kKvLayoutV0Size == 24, "the size callers built before v_bases pass is fixed");
// ... and before device.
constexpr size_t kKvLayoutV1Size = offsetof(kvt_kv_layout, device);
static_assert(kKvLayoutV1Size == 32, "the size callers built before device pass is fixed");

Status SpansOk(const void* p, size_t n, const char* what) {
  if (p == nullptr && n > 0)
    return Status::InvalidArgument(std::string(what) + " is NULL but its length is " + std::to_string(n));
  return Status::OK();
}

// Submits a save or load through `fn` (a Store member).
template <typename Fn>
int Submit(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const int32_t* block_ids, size_t num_block_ids,
           const kvt_extra_key* extra, size_t num_extra, const kvt_copy_options* opts, kvt_ticket** out, Fn fn) {
  if (ns == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(ns, [&]() -> int {
    if (out == nullptr) return Fail(ns, Status::InvalidArgument("out ticket pointer is NULL"));
    *out = nullptr;
    Status s = SpansOk(tokens, num_tokens, "tokens");
    if (s.ok()) s = SpansOk(block_ids, num_block_ids, "block_ids");
    if (s.ok()) s = SpansOk(extra, num_extra, "extra_keys");
    if (s.ok() && opts != nullptr) s = CheckSize(opts->struct_size, sizeof *opts, "kvt_copy_options");
    if (!s.ok()) return Fail(ns, s);
    kvtier::CopyOptions co;
    if (opts != nullptr) co.cuda_wait_event = opts->cuda_wait_event;
    static_assert(sizeof(kvt_extra_key) == sizeof(kvtier::ExtraKey));
    static_assert(offsetof(kvt_extra_key, lo) == offsetof(kvtier::ExtraKey, lo));
    static_assert(offsetof(kvt_extra_key, hi) == offsetof(kvtier::ExtraKey, hi));
    kvtier::Result<kvtier::Ticket> t =
        ((*ns->store).*fn)(ns->handle, std::span<const int32_t>(tokens, num_tokens),
                           std::span<const int32_t>(block_ids, num_block_ids),
                           std::span<const kvtier::ExtraKey>(reinterpret_cast<const kvtier::ExtraKey*>(extra), num_extra),
                           co);
    if (!t.ok()) return Fail(ns, t.status());
    auto* h = new kvt_ticket();
    h->ticket = std::move(*t);
    *out = h;
    return KVT_OK;
  });
}

int TicketResult(kvt_ticket* t, const Status& s, uint32_t* chunks_done) {
  if (chunks_done != nullptr) *chunks_done = t->ticket.chunks_done();
  if (s.ok()) return KVT_OK;
  return Fail(t, s);
}

}  // namespace

extern "C" {

const char* kvt_status_name(int status) {
  if (status == KVT_OK) return "ok";
  if (status > 0) return "in progress";
  return Status::CodeName(static_cast<Status::Code>(-status));
}

const char* kvt_version(void) { return "0.1.0"; }

void kvt_store_options_init(kvt_store_options* o) {
  if (o == nullptr) return;
  kvtier::StoreConfig d;
  std::memset(o, 0, sizeof *o);
  o->struct_size = sizeof *o;
  o->worker_threads = d.worker_threads;
  o->host_capacity_bytes = d.host_capacity_bytes;
  o->max_request_tokens = d.max_request_tokens;
  o->huge_pages = static_cast<int32_t>(d.huge_pages);
  o->prefault = d.prefault ? 1 : 0;
  o->nvme_queue_depth = d.nvme.queue_depth;
  o->nvme_policy = static_cast<int32_t>(d.nvme.policy);
  o->redis_policy = static_cast<int32_t>(d.redis.policy);
  o->redis_op_timeout_ms = d.redis.op_timeout_ms;
  o->redis_lookup_timeout_ms = d.redis.lookup_timeout_ms;
  o->planner_enabled = d.planner.enabled ? 1 : 0;
  o->max_prefetches = d.max_prefetches;
  o->gpu_register_host = static_cast<int32_t>(d.gpu.register_host);
  o->gpu_device = d.gpu.device;
  o->gpu_hbm_capacity_bytes = d.gpu.hbm_capacity_bytes;
  o->daemon_timeout_ms = 5000;
}

void kvt_copy_options_init(kvt_copy_options* o) {
  if (o == nullptr) return;
  std::memset(o, 0, sizeof *o);
  o->struct_size = sizeof *o;
}

void kvt_lookup_options_init(kvt_lookup_options* o) {
  if (o == nullptr) return;
  std::memset(o, 0, sizeof *o);
  o->struct_size = sizeof *o;
  o->prefetch_deadline_ms = 10000;
}

void kvt_namespace_spec_init(kvt_namespace_spec* s) {
  if (s == nullptr) return;
  std::memset(s, 0, sizeof *s);
  s->struct_size = sizeof *s;
  s->dtype = KVT_DTYPE_BFLOAT16;
  s->chunk_tokens = 256;
  s->tp_size = 1;
}

void kvt_kv_layout_init(kvt_kv_layout* l) {
  if (l == nullptr) return;
  std::memset(l, 0, sizeof *l);
  l->struct_size = sizeof *l;
  l->device = -1;
}

int kvt_store_open(const kvt_store_options* opts, kvt_store** out, char* err, size_t err_len) {
  auto report = [&](const Status& s) {
    if (err != nullptr && err_len > 0) {
      std::string m = s.ToString();
      std::strncpy(err, m.c_str(), err_len - 1);
      err[err_len - 1] = '\0';
    }
    return ToCode(s);
  };
  try {
    if (out == nullptr) return report(Status::InvalidArgument("out store pointer is NULL"));
    *out = nullptr;
    kvtier::StoreConfig c;
    kvt_store_options full;
    kvt_store_options_init(&full);
    if (opts != nullptr) {
      Status s = opts->struct_size == kStoreOptionsV0Size || opts->struct_size == kStoreOptionsV1Size ||
                         opts->struct_size == kStoreOptionsV2Size
                     ? Status::OK()
                     : CheckSize(opts->struct_size, sizeof *opts, "kvt_store_options");
      if (!s.ok()) return report(s);
      std::memcpy(&full, opts, opts->struct_size);  // an older caller's missing fields keep their defaults
      full.struct_size = sizeof full;
      opts = &full;
      if (opts->huge_pages < 0 || opts->huge_pages > 2)
        return report(Status::InvalidArgument("kvt_store_options.huge_pages " + std::to_string(opts->huge_pages) +
                                              " is not a kvt_huge_pages value"));
      c.worker_threads = opts->worker_threads;
      c.host_capacity_bytes = opts->host_capacity_bytes;
      c.max_request_tokens = opts->max_request_tokens;
      c.huge_pages = static_cast<kvtier::HugePages>(opts->huge_pages);
      c.prefault = opts->prefault != 0;
      if (opts->nvme_paths != nullptr) {
        if (opts->nvme_policy < 0 || opts->nvme_policy > 2)
          return report(Status::InvalidArgument("kvt_store_options.nvme_policy " +
                                                std::to_string(opts->nvme_policy) + " is not a kvt_write_policy"));
        c.nvme.enabled = true;
        c.nvme.paths = SplitCommas(opts->nvme_paths);
        c.nvme.capacity_bytes = opts->nvme_capacity_bytes;
        c.nvme.metadata_dir = Str(opts->nvme_metadata_dir);
        c.nvme.queue_depth = opts->nvme_queue_depth;
        c.nvme.buffered = opts->nvme_buffered != 0;
        c.nvme.policy = static_cast<kvtier::WritePolicy>(opts->nvme_policy);
      }
      if (opts->redis_addresses != nullptr) {
        if (Status p = CheckPolicy(opts->redis_policy, "redis_policy"); !p.ok()) return report(p);
        c.redis.enabled = true;
        c.redis.cluster = opts->redis_cluster != 0;
        c.redis.addresses = SplitCommas(opts->redis_addresses);
        c.redis.policy = static_cast<kvtier::WritePolicy>(opts->redis_policy);
        c.redis.username = Str(opts->redis_username);
        c.redis.password = Str(opts->redis_password);
        if (opts->redis_key_prefix != nullptr) c.redis.key_prefix = opts->redis_key_prefix;
        c.redis.op_timeout_ms = opts->redis_op_timeout_ms;
        c.redis.lookup_timeout_ms = opts->redis_lookup_timeout_ms;
        c.redis.ttl_seconds = opts->redis_ttl_seconds;
        c.redis.lz4 = opts->redis_lz4 != 0;
        c.redis.capacity_bytes = opts->redis_capacity_bytes;
      }
      c.planner.enabled = opts->planner_enabled != 0;
      c.admission.min_tokens = opts->admission_min_tokens;
      c.admission.nvme_second_hit = opts->admission_nvme_second_hit != 0;
      c.admission.redis_second_hit = opts->admission_redis_second_hit != 0;
      c.max_prefetches = opts->max_prefetches;
      if (opts->gpu_register_host < 0 || opts->gpu_register_host > 2)
        return report(Status::InvalidArgument("kvt_store_options.gpu_register_host " +
                                              std::to_string(opts->gpu_register_host) +
                                              " is not a kvt_host_registration value"));
      c.gpu.register_host = static_cast<kvtier::HostRegistration>(opts->gpu_register_host);
      c.gpu.device = opts->gpu_device;
      c.gpu.hbm_capacity_bytes = opts->gpu_hbm_capacity_bytes;
    }
    kvtier::Result<std::unique_ptr<kvtier::Store>> s = Status::Internal("unset");
    if (opts != nullptr && opts->daemon_address != nullptr) {
      kvtier::DaemonClientConfig dc;
      dc.address = opts->daemon_address;
      dc.tenant = Str(opts->daemon_tenant);
      dc.token = Str(opts->daemon_token);
      dc.worker_threads = opts->worker_threads == 0 ? dc.worker_threads : opts->worker_threads;
      if (opts->daemon_timeout_ms > 0) dc.timeout = std::chrono::milliseconds(opts->daemon_timeout_ms);
      s = kvtier::Store::Connect(dc);
    } else {
      s = kvtier::Store::Open(c);
    }
    if (!s.ok()) return report(s.status());
    auto* h = new kvt_store();
    h->store = std::shared_ptr<kvtier::Store>(std::move(*s));
    *out = h;
    return KVT_OK;
  } catch (const std::bad_alloc&) {
    return report(Status::NoMemory("out of memory"));
  } catch (...) {
    return report(Status::Internal("unexpected exception"));
  }
}

int kvt_store_close(kvt_store* store) {
  if (store == nullptr) return KVT_E_INVALID_ARGUMENT;
  int rc = KVT_OK;
  try {
    Status s = store->store->Close();
    rc = ToCode(s);
  } catch (...) {
    rc = KVT_E_INTERNAL;
  }
  delete store;
  return rc;
}

const char* kvt_store_last_error(const kvt_store* store) { return LastError(store); }

int kvt_namespace_register(kvt_store* store, const kvt_namespace_spec* spec, const kvt_kv_layout* layout,
                           kvt_namespace** out) {
  if (store == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(store, [&]() -> int {
    if (out == nullptr) return Fail(store, Status::InvalidArgument("out namespace pointer is NULL"));
    *out = nullptr;
    if (spec == nullptr) return Fail(store, Status::InvalidArgument("namespace spec is NULL"));
    if (layout == nullptr) return Fail(store, Status::InvalidArgument("kv layout is NULL"));
    Status s = CheckSize(spec->struct_size, sizeof *spec, "kvt_namespace_spec");
    if (!s.ok()) return Fail(store, s);
    if (layout->struct_size != kKvLayoutV0Size && layout->struct_size != kKvLayoutV1Size)
      s = CheckSize(layout->struct_size, sizeof *layout, "kvt_kv_layout");
    if (!s.ok()) return Fail(store, s);
    kvt_kv_layout lay;  // fields an older caller did not have keep their defaults
    kvt_kv_layout_init(&lay);
    std::memcpy(&lay, layout, layout->struct_size);
    s = SpansOk(lay.layers, lay.num_layers, "kv layout layers");
    if (!s.ok()) return Fail(store, s);
    kvtier::NamespaceSpec ns;
    ns.model.name = Str(spec->model_name);
    ns.model.revision = Str(spec->model_revision);
    ns.model.weights_digest = Str(spec->weights_digest);
    ns.model.tokenizer_id = Str(spec->tokenizer_id);
    ns.adapter_id = Str(spec->adapter_id);
    ns.tenant_salt = Str(spec->tenant_salt);
    ns.shape.num_layers = spec->num_layers;
    ns.shape.num_kv_heads = spec->num_kv_heads;
    ns.shape.head_dim = spec->head_dim;
    if (spec->dtype < 0 || spec->dtype > 255)
      return Fail(store, Status::InvalidArgument("namespace: dtype " + std::to_string(spec->dtype) +
                                                 " is not a kvt_dtype value"));
    ns.shape.dtype = static_cast<kvtier::DType>(spec->dtype);
    ns.shape.chunk_tokens = spec->chunk_tokens;
    ns.shape.tp_rank = spec->tp_rank;
    ns.shape.tp_size = spec->tp_size;
    ns.shape.mla = spec->mla != 0;
    kvtier::KvMemoryLayout kl;
    kl.block_tokens = lay.block_tokens;
    kl.num_blocks = lay.num_blocks;
    kl.device = lay.device;
    kl.layers.resize(lay.num_layers);
    for (uint32_t i = 0; i < lay.num_layers; ++i) {
      const kvt_layer_memory& m = lay.layers[i];
      kl.layers[i] = kvtier::KvLayerMemory{m.base,         m.bytes,      m.block_stride, m.token_stride,
                                           m.head_stride, m.dim_stride, m.kv_offset,
                                           lay.v_bases != nullptr ? lay.v_bases[i] : nullptr};
    }
    kvtier::Result<kvtier::NamespaceHandle> h = store->store->RegisterNamespace(ns, kl);
    if (!h.ok()) return Fail(store, h.status());
    auto* n = new kvt_namespace();
    n->store = store->store;
    n->handle = *h;
    *out = n;
    return KVT_OK;
  });
}

int kvt_namespace_release(kvt_namespace* ns) {
  if (ns == nullptr) return KVT_E_INVALID_ARGUMENT;
  int rc = KVT_OK;
  try {
    Status s = ns->store->UnregisterNamespace(ns->handle);
    if (!s.ok() && s.code() != Status::Code::kClosed) rc = ToCode(s);
  } catch (...) {
    rc = KVT_E_INTERNAL;
  }
  delete ns;
  return rc;
}

const char* kvt_namespace_last_error(const kvt_namespace* ns) { return LastError(ns); }

int kvt_lookup(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const kvt_extra_key* extra,
               size_t num_extra, kvt_lookup_result* out, uint8_t* chunk_tiers, size_t chunk_tiers_len) {
  if (ns == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(ns, [&]() -> int {
    if (out == nullptr) return Fail(ns, Status::InvalidArgument("out lookup result is NULL"));
    std::memset(out, 0, sizeof *out);
    Status s = SpansOk(tokens, num_tokens, "tokens");
    if (s.ok()) s = SpansOk(extra, num_extra, "extra_keys");
    if (s.ok()) s = SpansOk(chunk_tiers, chunk_tiers_len, "chunk_tiers");
    if (!s.ok()) return Fail(ns, s);
    kvtier::Result<kvtier::LookupResult> r = ns->store->Lookup(
        ns->handle, std::span<const int32_t>(tokens, num_tokens),
        std::span<const kvtier::ExtraKey>(reinterpret_cast<const kvtier::ExtraKey*>(extra), num_extra));
    if (!r.ok()) return Fail(ns, r.status());
    out->matched_tokens = r->matched_tokens;
    out->matched_chunks = r->matched_chunks;
    out->total_chunks = r->total_chunks;
    for (size_t i = 0; chunk_tiers != nullptr && i < chunk_tiers_len && i < r->chunk_tiers.size(); ++i)
      chunk_tiers[i] = static_cast<uint8_t>(r->chunk_tiers[i]);
    return KVT_OK;
  });
}

int kvt_lookup_ex(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const kvt_extra_key* extra,
                  size_t num_extra, const kvt_lookup_options* opts, kvt_lookup_info* out, uint8_t* chunk_tiers,
                  size_t chunk_tiers_len) {
  if (ns == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(ns, [&]() -> int {
    if (out == nullptr) return Fail(ns, Status::InvalidArgument("out lookup info is NULL"));
    Status s = CheckSize(out->struct_size, sizeof *out, "kvt_lookup_info");
    if (s.ok() && opts != nullptr) s = CheckSize(opts->struct_size, sizeof *opts, "kvt_lookup_options");
    if (s.ok()) s = SpansOk(tokens, num_tokens, "tokens");
    if (s.ok()) s = SpansOk(extra, num_extra, "extra_keys");
    if (s.ok()) s = SpansOk(chunk_tiers, chunk_tiers_len, "chunk_tiers");
    if (!s.ok()) return Fail(ns, s);
    std::memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    kvtier::LookupOptions lo;
    if (opts != nullptr) {
      lo.prefetch = opts->prefetch != 0;
      lo.prefetch_deadline = std::chrono::milliseconds(opts->prefetch_deadline_ms);
    }
    kvtier::Result<kvtier::LookupResult> r = ns->store->Lookup(
        ns->handle, std::span<const int32_t>(tokens, num_tokens),
        std::span<const kvtier::ExtraKey>(reinterpret_cast<const kvtier::ExtraKey*>(extra), num_extra), lo);
    if (!r.ok()) return Fail(ns, r.status());
    out->matched_chunks = r->matched_chunks;
    out->matched_tokens = r->matched_tokens;
    out->total_chunks = r->total_chunks;
    out->cached_chunks = r->cached_chunks;
    out->expected_load_seconds = r->expected_load_seconds;
    out->expected_recompute_seconds = r->expected_recompute_seconds;
    out->expected_saving_seconds = r->expected_saving_seconds;
    out->prefetch_id = r->prefetch_id;
    for (size_t i = 0; chunk_tiers != nullptr && i < chunk_tiers_len && i < r->chunk_tiers.size(); ++i)
      chunk_tiers[i] = static_cast<uint8_t>(r->chunk_tiers[i]);
    return KVT_OK;
  });
}

int kvt_prefetch_cancel(kvt_namespace* ns, uint64_t prefetch_id) {
  if (ns == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(ns, [&]() -> int {
    Status s = ns->store->CancelPrefetch(prefetch_id);
    return s.ok() ? KVT_OK : Fail(ns, s);
  });
}

int kvt_set_prefill_rate(kvt_namespace* ns, double tokens_per_second) {
  if (ns == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(ns, [&]() -> int {
    Status s = ns->store->SetPrefillRate(ns->handle, tokens_per_second);
    return s.ok() ? KVT_OK : Fail(ns, s);
  });
}

int kvt_report_prefill(kvt_namespace* ns, uint64_t tokens, double seconds) {
  if (ns == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(ns, [&]() -> int {
    Status s = ns->store->ReportPrefill(ns->handle, tokens, seconds);
    return s.ok() ? KVT_OK : Fail(ns, s);
  });
}

int kvt_pin_prefix(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const kvt_extra_key* extra,
                   size_t num_extra, uint32_t* pinned) {
  if (ns == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(ns, [&]() -> int {
    Status s = SpansOk(tokens, num_tokens, "tokens");
    if (s.ok()) s = SpansOk(extra, num_extra, "extra_keys");
    if (!s.ok()) return Fail(ns, s);
    kvtier::Result<uint32_t> r = ns->store->PinPrefix(
        ns->handle, std::span<const int32_t>(tokens, num_tokens),
        std::span<const kvtier::ExtraKey>(reinterpret_cast<const kvtier::ExtraKey*>(extra), num_extra));
    if (!r.ok()) return Fail(ns, r.status());
    if (pinned != nullptr) *pinned = *r;
    return KVT_OK;
  });
}

int kvt_unpin_prefix(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const kvt_extra_key* extra,
                     size_t num_extra) {
  if (ns == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(ns, [&]() -> int {
    Status s = SpansOk(tokens, num_tokens, "tokens");
    if (s.ok()) s = SpansOk(extra, num_extra, "extra_keys");
    if (s.ok())
      s = ns->store->UnpinPrefix(
          ns->handle, std::span<const int32_t>(tokens, num_tokens),
          std::span<const kvtier::ExtraKey>(reinterpret_cast<const kvtier::ExtraKey*>(extra), num_extra));
    return s.ok() ? KVT_OK : Fail(ns, s);
  });
}

int kvt_store_stats_json(kvt_store* store, char* buf, size_t buf_len, size_t* needed) {
  if (store == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(store, [&]() -> int {
    const std::string j = StatsJson(store->store->Stats());
    if (needed != nullptr) *needed = j.size();
    if (buf == nullptr || buf_len < j.size() + 1)
      return Fail(store, Status::InvalidArgument("stats buffer of " + std::to_string(buf_len) + " bytes; " +
                                                 std::to_string(j.size() + 1) + " needed"));
    std::memcpy(buf, j.c_str(), j.size() + 1);
    return KVT_OK;
  });
}

int kvt_save(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const int32_t* block_ids,
             size_t num_block_ids, const kvt_extra_key* extra, size_t num_extra, kvt_ticket** out) {
  return Submit(ns, tokens, num_tokens, block_ids, num_block_ids, extra, num_extra, nullptr, out, &kvtier::Store::Save);
}

int kvt_save_ex(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const int32_t* block_ids,
                size_t num_block_ids, const kvt_extra_key* extra, size_t num_extra, const kvt_copy_options* opts,
                kvt_ticket** out) {
  return Submit(ns, tokens, num_tokens, block_ids, num_block_ids, extra, num_extra, opts, out, &kvtier::Store::Save);
}

int kvt_load_ex(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const int32_t* block_ids,
                size_t num_block_ids, const kvt_extra_key* extra, size_t num_extra, const kvt_copy_options* opts,
                kvt_ticket** out) {
  return Submit(ns, tokens, num_tokens, block_ids, num_block_ids, extra, num_extra, opts, out, &kvtier::Store::Load);
}

int kvt_load(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const int32_t* block_ids,
             size_t num_block_ids, const kvt_extra_key* extra, size_t num_extra, kvt_ticket** out) {
  return Submit(ns, tokens, num_tokens, block_ids, num_block_ids, extra, num_extra, nullptr, out, &kvtier::Store::Load);
}

int kvt_ticket_poll(kvt_ticket* t, uint32_t* chunks_done) {
  if (t == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(t, [&]() -> int {
    if (!t->ticket.done()) {
      if (chunks_done != nullptr) *chunks_done = t->ticket.chunks_done();
      return KVT_IN_PROGRESS;
    }
    return TicketResult(t, t->ticket.status(), chunks_done);
  });
}

int kvt_ticket_wait(kvt_ticket* t, int64_t timeout_us, uint32_t* chunks_done) {
  if (t == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(t, [&]() -> int {
    Status s = timeout_us < 0 ? t->ticket.Wait() : t->ticket.Wait(std::chrono::microseconds(timeout_us));
    if (!t->ticket.done()) {
      if (chunks_done != nullptr) *chunks_done = t->ticket.chunks_done();
      return KVT_IN_PROGRESS;
    }
    return TicketResult(t, s, chunks_done);
  });
}

int kvt_ticket_wait_layer(kvt_ticket* t, uint32_t layer, int64_t timeout_us, uint32_t* chunks) {
  if (t == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(t, [&]() -> int {
    const std::chrono::nanoseconds timeout =
        timeout_us < 0 ? std::chrono::nanoseconds(std::chrono::hours(24 * 365)) : std::chrono::microseconds(timeout_us);
    kvtier::Result<uint32_t> r = t->ticket.WaitLayer(layer, timeout);
    if (!r.ok()) {
      if (r.status().code() == Status::Code::kTimedOut) return KVT_IN_PROGRESS;
      return Fail(t, r.status());
    }
    if (chunks != nullptr) *chunks = *r;
    return KVT_OK;
  });
}

int kvt_ticket_layer_event(kvt_ticket* t, uint32_t layer, int64_t timeout_us, uint32_t* chunks, void** cuda_event) {
  if (t == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(t, [&]() -> int {
    if (cuda_event == nullptr) return Fail(t, Status::InvalidArgument("cuda_event pointer is NULL"));
    *cuda_event = nullptr;
    const std::chrono::nanoseconds timeout =
        timeout_us < 0 ? std::chrono::nanoseconds(std::chrono::hours(24 * 365)) : std::chrono::microseconds(timeout_us);
    kvtier::Result<kvtier::Ticket::LayerEvent> r = t->ticket.WaitLayerEnqueued(layer, timeout);
    if (!r.ok()) {
      if (r.status().code() == Status::Code::kTimedOut) return KVT_IN_PROGRESS;
      return Fail(t, r.status());
    }
    if (chunks != nullptr) *chunks = r->chunks;
    *cuda_event = r->cuda_event;
    return KVT_OK;
  });
}

int kvt_ticket_cancel(kvt_ticket* t) {
  if (t == nullptr) return KVT_E_INVALID_ARGUMENT;
  t->ticket.Cancel();
  return KVT_OK;
}

void kvt_ticket_release(kvt_ticket* t) {
  if (t == nullptr) return;
  try {
    t->ticket.Release();
  } catch (...) {
  }
  delete t;
}

const char* kvt_ticket_last_error(const kvt_ticket* t) { return LastError(t); }

}  // extern "C"
