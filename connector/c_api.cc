// The C ABI (include/kvtier/kvtier.h) over the C++ Store. Every entry point catches
// everything: no exception crosses this edge. Status codes map 1:1 (-code).
#include "kvtier/kvtier.h"

#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>

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

Status SpansOk(const void* p, size_t n, const char* what) {
  if (p == nullptr && n > 0)
    return Status::InvalidArgument(std::string(what) + " is NULL but its length is " + std::to_string(n));
  return Status::OK();
}

// Submits a save or load through `fn` (a Store member).
template <typename Fn>
int Submit(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const int32_t* block_ids, size_t num_block_ids,
           const kvt_extra_key* extra, size_t num_extra, kvt_ticket** out, Fn fn) {
  if (ns == nullptr) return KVT_E_INVALID_ARGUMENT;
  return Guard(ns, [&]() -> int {
    if (out == nullptr) return Fail(ns, Status::InvalidArgument("out ticket pointer is NULL"));
    *out = nullptr;
    Status s = SpansOk(tokens, num_tokens, "tokens");
    if (s.ok()) s = SpansOk(block_ids, num_block_ids, "block_ids");
    if (s.ok()) s = SpansOk(extra, num_extra, "extra_keys");
    if (!s.ok()) return Fail(ns, s);
    static_assert(sizeof(kvt_extra_key) == sizeof(kvtier::ExtraKey));
    static_assert(offsetof(kvt_extra_key, lo) == offsetof(kvtier::ExtraKey, lo));
    static_assert(offsetof(kvt_extra_key, hi) == offsetof(kvtier::ExtraKey, hi));
    kvtier::Result<kvtier::Ticket> t =
        ((*ns->store).*fn)(ns->handle, std::span<const int32_t>(tokens, num_tokens),
                           std::span<const int32_t>(block_ids, num_block_ids),
                           std::span<const kvtier::ExtraKey>(reinterpret_cast<const kvtier::ExtraKey*>(extra), num_extra));
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
    if (opts != nullptr) {
      Status s = CheckSize(opts->struct_size, sizeof *opts, "kvt_store_options");
      if (!s.ok()) return report(s);
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
        std::string paths = opts->nvme_paths;
        for (size_t start = 0; start <= paths.size();) {
          size_t comma = paths.find(',', start);
          if (comma == std::string::npos) comma = paths.size();
          if (comma > start) c.nvme.paths.push_back(paths.substr(start, comma - start));
          start = comma + 1;
        }
        c.nvme.capacity_bytes = opts->nvme_capacity_bytes;
        c.nvme.metadata_dir = Str(opts->nvme_metadata_dir);
        c.nvme.queue_depth = opts->nvme_queue_depth;
        c.nvme.buffered = opts->nvme_buffered != 0;
        c.nvme.policy = static_cast<kvtier::WritePolicy>(opts->nvme_policy);
      }
    }
    kvtier::Result<std::unique_ptr<kvtier::Store>> s = kvtier::Store::Open(c);
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
    if (s.ok()) s = CheckSize(layout->struct_size, sizeof *layout, "kvt_kv_layout");
    if (s.ok()) s = SpansOk(layout->layers, layout->num_layers, "kv layout layers");
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
    kl.block_tokens = layout->block_tokens;
    kl.num_blocks = layout->num_blocks;
    kl.layers.resize(layout->num_layers);
    for (uint32_t i = 0; i < layout->num_layers; ++i) {
      const kvt_layer_memory& m = layout->layers[i];
      kl.layers[i] = kvtier::KvLayerMemory{m.base,         m.bytes,      m.block_stride, m.token_stride,
                                           m.head_stride, m.dim_stride, m.kv_offset};
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

int kvt_save(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const int32_t* block_ids,
             size_t num_block_ids, const kvt_extra_key* extra, size_t num_extra, kvt_ticket** out) {
  return Submit(ns, tokens, num_tokens, block_ids, num_block_ids, extra, num_extra, out, &kvtier::Store::Save);
}

int kvt_load(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const int32_t* block_ids,
             size_t num_block_ids, const kvt_extra_key* extra, size_t num_extra, kvt_ticket** out) {
  return Submit(ns, tokens, num_tokens, block_ids, num_block_ids, extra, num_extra, out, &kvtier::Store::Load);
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
