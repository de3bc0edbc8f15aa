/* kvtier C ABI.
 *
 * An engine opens a store, registers its model identity and KV memory layout once
 * (a namespace), then asks how much of a prompt is cached (kvt_lookup), saves the KV of
 * computed blocks (kvt_save) and loads a cached prefix into its blocks (kvt_load).
 * Saves and loads are asynchronous: they return a ticket to poll, wait on, cancel and
 * release. A ticket may finish partially; *chunks_done says how many leading chunks
 * succeeded, and the engine recomputes the rest.
 *
 * Status: every int-returning call returns KVT_OK (0), KVT_IN_PROGRESS (>0) or a
 * negative KVT_E_* code. On an error with a non-null handle, kvt_*_last_error(handle)
 * gives a message naming the problem and the fix; the string stays valid until the
 * next call on that handle. A NULL handle returns KVT_E_INVALID_ARGUMENT and has no
 * message.
 *
 * Ownership: every handle returned through an out parameter belongs to the caller and
 * is freed by its close/release function, exactly once. kvt_store_close frees the store
 * handle; namespace and ticket handles obtained from it stay valid to call (they return
 * KVT_E_CLOSED) and must still be released.
 *
 * Memory: kvt_save reads and kvt_load writes the engine blocks named by block ids until
 * the ticket is done; do not touch those blocks meanwhile. Releasing a running ticket
 * cancels it and waits until it no longer touches them.
 *
 * Threads: all calls are thread-safe. Handles may be shared between threads, except
 * that last_error strings are per handle, not per thread.
 *
 * Versioning: structs with a struct_size field must have it set to sizeof(the struct)
 * (the kvt_*_init functions do this).
 */
#ifndef KVTIER_KVTIER_H_
#define KVTIER_KVTIER_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(KVTIER_BUILDING_ABI)
#define KVT_API __attribute__((visibility("default")))
#else
#define KVT_API
#endif

/* ---- status ---------------------------------------------------------------------- */
#define KVT_OK 0
#define KVT_IN_PROGRESS 1
#define KVT_E_INVALID_ARGUMENT (-1) /* bad input: layout, sizes, null buffers, oversized */
#define KVT_E_NOT_FOUND (-2)        /* unknown namespace; a chunk not cached (partial load) */
#define KVT_E_CORRUPTION (-3)       /* cached bytes failed a check; dropped, never served */
#define KVT_E_NO_SPACE (-4)         /* tier full; retry later */
#define KVT_E_BUSY (-5)
#define KVT_E_TIMED_OUT (-6)
#define KVT_E_CANCELLED (-7)
#define KVT_E_IO (-8)
#define KVT_E_NOT_SUPPORTED (-9)
#define KVT_E_CLOSED (-10) /* the store was closed */
#define KVT_E_NO_MEMORY (-11)
#define KVT_E_INTERNAL (-12)
#define KVT_E_UNAVAILABLE (-13) /* kvtierd is not reachable now (the client reconnects by itself) */
#define KVT_E_PERMISSION_DENIED (-14) /* the tenant's credentials do not allow it */

/* A short name for a status ("ok", "in progress", "invalid argument", ...). */
KVT_API const char* kvt_status_name(int status);
/* "0.1.0" */
KVT_API const char* kvt_version(void);

/* ---- types ----------------------------------------------------------------------- */
typedef struct kvt_store kvt_store;
typedef struct kvt_namespace kvt_namespace;
typedef struct kvt_ticket kvt_ticket;

typedef enum kvt_dtype {
  KVT_DTYPE_FLOAT16 = 1,
  KVT_DTYPE_BFLOAT16 = 2,
  KVT_DTYPE_FLOAT32 = 3,
  KVT_DTYPE_FP8_E4M3 = 4,
  KVT_DTYPE_FP8_E5M2 = 5,
  KVT_DTYPE_INT8 = 6,
  KVT_DTYPE_UINT8 = 7
} kvt_dtype;

typedef enum kvt_tier { KVT_TIER_GPU = 0, KVT_TIER_HOST = 1, KVT_TIER_NVME = 2, KVT_TIER_REDIS = 3 } kvt_tier;

typedef enum kvt_huge_pages { KVT_HUGE_PAGES_AUTO = 0, KVT_HUGE_PAGES_OFF = 1, KVT_HUGE_PAGES_REQUIRE = 2 } kvt_huge_pages;

/* cudaHostRegister of the host tier's region, so GPU copies are DMA: when a device is
 * present (AUTO), never (OFF: GPU KV memory is refused), or fail the open without it. */
typedef enum kvt_host_registration {
  KVT_HOST_REGISTER_AUTO = 0,
  KVT_HOST_REGISTER_OFF = 1,
  KVT_HOST_REGISTER_REQUIRE = 2
} kvt_host_registration;

typedef enum kvt_write_policy {
  KVT_WRITE_BACK = 0,    /* chunks go to NVMe when host eviction demotes them */
  KVT_WRITE_THROUGH = 1, /* every save also goes to NVMe; done when durable there */
  KVT_WRITE_NONE = 2
} kvt_write_policy;

typedef struct kvt_store_options {
  uint32_t struct_size;
  uint32_t worker_threads;      /* default 2 */
  uint64_t host_capacity_bytes; /* default 1 GiB */
  uint64_t max_request_tokens;  /* default 2^21 */
  int32_t huge_pages;           /* kvt_huge_pages, default AUTO */
  int32_t prefault;             /* nonzero: fault the region in at open (default 1) */
  /* NVMe tier: on when nvme_paths is not NULL. Data files (comma-separated), preallocated,
   * opened O_DIRECT unless nvme_buffered; metadata in RocksDB at nvme_metadata_dir
   * (default: first path + ".meta"). */
  const char* nvme_paths;
  uint64_t nvme_capacity_bytes;
  const char* nvme_metadata_dir;
  uint32_t nvme_queue_depth; /* default 16 */
  int32_t nvme_buffered;
  int32_t nvme_policy; /* kvt_write_policy, default WRITE_BACK */
  /* ---- appended (struct_size tells which fields a caller has; older callers keep the
   * defaults for the rest) ---- */
  /* Redis tier: on when redis_addresses is not NULL ("host:port", comma-separated; for a
   * cluster any of its nodes). Saves write through (best effort: a Redis failure never
   * fails a save) or write back on host eviction, per redis_policy. */
  const char* redis_addresses;
  int32_t redis_cluster;             /* nonzero: Redis Cluster */
  int32_t redis_policy;              /* kvt_write_policy, default WRITE_THROUGH */
  const char* redis_username;        /* ACL user; NULL: default user */
  const char* redis_password;        /* NULL: no AUTH */
  const char* redis_key_prefix;      /* NULL: "kvt" */
  uint32_t redis_op_timeout_ms;      /* default 2000 */
  uint32_t redis_lookup_timeout_ms;  /* default 100 */
  uint32_t redis_ttl_seconds;        /* 0: no expiry */
  int32_t redis_lz4;                 /* nonzero: LZ4 values */
  uint64_t redis_capacity_bytes;     /* 0: no limit of the store's own */
  int32_t planner_enabled;           /* default 1 (acts once a prefill rate is known) */
  uint32_t admission_min_tokens;     /* default 0 */
  int32_t admission_nvme_second_hit;
  int32_t admission_redis_second_hit;
  uint32_t max_prefetches;           /* default 4 */
  /* ---- appended: the GPU path (a CUDA build; see kvt_kv_layout.device) ---- */
  int32_t gpu_register_host;         /* kvt_host_registration, default AUTO */
  int32_t gpu_device;                /* CUDA device of the HBM tier and registration; default 0 */
  uint64_t gpu_hbm_capacity_bytes;   /* HBM tier: copies of hot chunks in GPU memory; 0: off */
  /* ---- appended: daemon mode ---- */
  /* When daemon_address is not NULL ("unix:/run/kvtier/kvtierd.sock" or a socket path),
   * kvt_store_open connects to kvtierd instead of opening an embedded store, and every
   * other field above is the daemon's business (its config file). The rest of the API is
   * the same; calls fail with KVT_E_UNAVAILABLE while the daemon is unreachable (the
   * client reconnects by itself). */
  const char* daemon_address;
  const char* daemon_tenant;         /* NULL: the daemon's default tenant */
  const char* daemon_token;          /* the tenant's credential */
  uint32_t daemon_timeout_ms;        /* per request; default 5000 */
} kvt_store_options;

/* Model identity and KV shape; strings are copied, NULL means "". */
typedef struct kvt_namespace_spec {
  uint32_t struct_size;
  const char* model_name;
  const char* model_revision;
  const char* weights_digest;
  const char* tokenizer_id;
  const char* adapter_id;
  const char* tenant_salt;
  uint32_t num_layers;
  uint32_t num_kv_heads; /* per TP rank; 1 for MLA */
  uint32_t head_dim;     /* MLA: latent width */
  int32_t dtype;         /* kvt_dtype */
  uint32_t chunk_tokens; /* a multiple of the layout's block_tokens; default 256 */
  uint32_t tp_rank;
  uint32_t tp_size; /* default 1 */
  int32_t mla;      /* nonzero: one latent tensor per layer */
} kvt_namespace_spec;

/* One layer of engine KV memory; strides in bytes. Element (block b, token t, head h,
 * dim d) of K is at base + b*block_stride + t*token_stride + h*head_stride +
 * d*dim_stride, and its V element kv_offset bytes further (unused for MLA), or in V's
 * own region when kvt_kv_layout.v_bases names one. `bytes` is how much memory is
 * addressable from base (and from the layer's V base); every block must fit. */
typedef struct kvt_layer_memory {
  void* base;
  size_t bytes;
  uint64_t block_stride;
  uint64_t token_stride;
  uint64_t head_stride;
  uint64_t dim_stride;
  uint64_t kv_offset;
} kvt_layer_memory;

typedef struct kvt_kv_layout {
  uint32_t struct_size;
  uint32_t block_tokens; /* tokens per engine block */
  uint32_t num_blocks;   /* blocks per layer */
  uint32_t num_layers;   /* entries in layers */
  const kvt_layer_memory* layers;
  /* Optional (NULL: V is kv_offset after K in every layer). num_layers entries: V of
   * layer i lives in its own region at v_bases[i], with the strides of layers[i] (K and
   * V as separate tensors, e.g. transformers' DynamicCache); the two regions must not
   * overlap, and kv_offset is ignored. A NULL entry keeps kv_offset for that layer.
   * Callers built before this field (struct_size 24) are still accepted. */
  void* const* v_bases;
  /* -1 (kvt_kv_layout_init's default): the layers are host memory. Otherwise the CUDA
   * device whose memory holds them: saves and loads then run the CUDA copy kernels
   * (needs a CUDA build and the host region registered). Callers built before this
   * field (struct_size 32) get -1. */
  int32_t device;
} kvt_kv_layout;

/* kvt_save_ex / kvt_load_ex: per-call options. */
typedef struct kvt_copy_options {
  uint32_t struct_size;
  /* GPU KV memory: a cudaEvent_t the engine recorded on its stream after writing the
   * blocks to save (or last reading the blocks a load overwrites); the copies wait for it
   * on the GPU. NULL: none. Must stay valid until the ticket is done. */
  void* cuda_wait_event;
} kvt_copy_options;

/* A hash bound to one chunk in addition to its tokens (e.g. an image's hash). */
typedef struct kvt_extra_key {
  uint32_t chunk_index;
  uint64_t lo;
  uint64_t hi;
} kvt_extra_key;

typedef struct kvt_lookup_result {
  uint64_t matched_tokens; /* leading tokens whose whole chunks are cached */
  uint32_t matched_chunks;
  uint32_t total_chunks;
} kvt_lookup_result;

/* kvt_lookup_ex: what to do besides matching. */
typedef struct kvt_lookup_options {
  uint32_t struct_size;
  int32_t prefetch;              /* nonzero: start bringing matched chunks below host into host */
  uint32_t prefetch_deadline_ms; /* default 10000 */
} kvt_lookup_options;

/* kvt_lookup_ex: the answer, with the planner's view. */
typedef struct kvt_lookup_info {
  uint32_t struct_size;
  uint32_t matched_chunks;       /* leading chunks worth loading (planner applied) */
  uint64_t matched_tokens;
  uint32_t total_chunks;
  uint32_t cached_chunks;        /* leading chunks cached in some tier (before the planner) */
  double expected_load_seconds;  /* zero when the namespace has no prefill rate */
  double expected_recompute_seconds;
  double expected_saving_seconds;
  uint64_t prefetch_id;          /* the prefetch started, 0 if none */
} kvt_lookup_info;

KVT_API void kvt_store_options_init(kvt_store_options* opts);
KVT_API void kvt_namespace_spec_init(kvt_namespace_spec* spec);
KVT_API void kvt_kv_layout_init(kvt_kv_layout* layout);
KVT_API void kvt_lookup_options_init(kvt_lookup_options* opts);
KVT_API void kvt_copy_options_init(kvt_copy_options* opts);

/* ---- store ------------------------------------------------------------------------ */
/* Opens an embedded store. On error *out is NULL and, when err is not NULL, a message is
 * written to err (at most err_len bytes, NUL-terminated). opts may be NULL (defaults). */
KVT_API int kvt_store_open(const kvt_store_options* opts, kvt_store** out, char* err, size_t err_len);
/* Cancels queued work, waits for running copies, frees the store handle. */
KVT_API int kvt_store_close(kvt_store* store);
KVT_API const char* kvt_store_last_error(const kvt_store* store);

/* ---- namespaces ------------------------------------------------------------------- */
KVT_API int kvt_namespace_register(kvt_store* store, const kvt_namespace_spec* spec, const kvt_kv_layout* layout,
                                   kvt_namespace** out);
/* Forgets the registration (cached chunks stay) and frees the handle. */
KVT_API int kvt_namespace_release(kvt_namespace* ns);
KVT_API const char* kvt_namespace_last_error(const kvt_namespace* ns);

/* ---- operations ------------------------------------------------------------------- */
/* How many leading tokens are cached. When chunk_tiers is not NULL, the fastest tier
 * (kvt_tier) of each matched chunk is written there, up to chunk_tiers_len entries. */
KVT_API int kvt_lookup(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const kvt_extra_key* extra_keys,
                       size_t num_extra_keys, kvt_lookup_result* out, uint8_t* chunk_tiers, size_t chunk_tiers_len);
/* kvt_lookup with options (prefetch) and the planner's figures. opts may be NULL; out's
 * struct_size must be set (kvt_lookup_info from this header). */
KVT_API int kvt_lookup_ex(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens,
                          const kvt_extra_key* extra_keys, size_t num_extra_keys, const kvt_lookup_options* opts,
                          kvt_lookup_info* out, uint8_t* chunk_tiers, size_t chunk_tiers_len);
/* Stops a prefetch (chunks already brought up stay). KVT_E_NOT_FOUND when it is over. */
KVT_API int kvt_prefetch_cancel(kvt_namespace* ns, uint64_t prefetch_id);
/* The engine's prefill speed, for the planner: set it (<= 0 forgets it), or report
 * measured prefills (a moving average is kept). */
KVT_API int kvt_set_prefill_rate(kvt_namespace* ns, double tokens_per_second);
KVT_API int kvt_report_prefill(kvt_namespace* ns, uint64_t tokens, double seconds);
/* Keeps the cached chunks of tokens (a system prompt) from eviction until unpinned;
 * pinned (may be NULL) receives how many chunks were pinned. */
KVT_API int kvt_pin_prefix(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens,
                           const kvt_extra_key* extra_keys, size_t num_extra_keys, uint32_t* pinned);
KVT_API int kvt_unpin_prefix(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens,
                             const kvt_extra_key* extra_keys, size_t num_extra_keys);
/* The store's counters as one JSON object. Writes at most buf_len bytes (NUL-terminated)
 * and the full length (without the NUL) to *needed; KVT_E_INVALID_ARGUMENT when buf is
 * too small (call again with *needed + 1 bytes). */
KVT_API int kvt_store_stats_json(kvt_store* store, char* buf, size_t buf_len, size_t* needed);
/* Saves the whole chunks of tokens from the blocks named by block_ids (chunk i uses
 * block_ids[i*B .. (i+1)*B), B = chunk_tokens / block_tokens). */
KVT_API int kvt_save(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const int32_t* block_ids,
                     size_t num_block_ids, const kvt_extra_key* extra_keys, size_t num_extra_keys, kvt_ticket** out);
/* Loads the cached leading chunks of tokens into the blocks named by block_ids. */
KVT_API int kvt_load(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const int32_t* block_ids,
                     size_t num_block_ids, const kvt_extra_key* extra_keys, size_t num_extra_keys, kvt_ticket** out);

/* kvt_save / kvt_load with options (opts may be NULL). */
KVT_API int kvt_save_ex(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const int32_t* block_ids,
                        size_t num_block_ids, const kvt_extra_key* extra_keys, size_t num_extra_keys,
                        const kvt_copy_options* opts, kvt_ticket** out);
KVT_API int kvt_load_ex(kvt_namespace* ns, const int32_t* tokens, size_t num_tokens, const int32_t* block_ids,
                        size_t num_block_ids, const kvt_extra_key* extra_keys, size_t num_extra_keys,
                        const kvt_copy_options* opts, kvt_ticket** out);

/* ---- tickets ------------------------------------------------------------------------ */
/* KVT_IN_PROGRESS while running; then KVT_OK or the error of the first chunk that failed.
 * chunks_done (may be NULL) receives the number of leading chunks that succeeded. */
KVT_API int kvt_ticket_poll(kvt_ticket* ticket, uint32_t* chunks_done);
/* Waits up to timeout_us microseconds (negative: no limit); KVT_IN_PROGRESS if still running. */
KVT_API int kvt_ticket_wait(kvt_ticket* ticket, int64_t timeout_us, uint32_t* chunks_done);
/* Loads: waits up to timeout_us (negative: no limit) until layer `layer` of the chunks
 * the load delivers is in engine memory; *chunks (may be NULL) receives how many leading
 * chunks that is (0: nothing to use). KVT_IN_PROGRESS on timeout. Layers land in order. */
KVT_API int kvt_ticket_wait_layer(kvt_ticket* ticket, uint32_t layer, int64_t timeout_us, uint32_t* chunks);
/* Loads into GPU memory: waits (up to timeout_us; negative: no limit) only until layer
 * `layer` is enqueued on the GPU, and writes to *cuda_event a cudaEvent_t that completes
 * when it lands, for the engine's stream to wait on (cudaStreamWaitEvent) without
 * blocking the host; *chunks (may be NULL) as kvt_ticket_wait_layer. *cuda_event is NULL
 * when there is nothing to wait for on the GPU (host memory, or nothing delivered). The
 * event belongs to the ticket until it is released. KVT_IN_PROGRESS on timeout. */
KVT_API int kvt_ticket_layer_event(kvt_ticket* ticket, uint32_t layer, int64_t timeout_us, uint32_t* chunks,
                                   void** cuda_event);
/* Best effort: chunks not started are skipped. */
KVT_API int kvt_ticket_cancel(kvt_ticket* ticket);
/* Cancels if running, waits, and frees the handle. NULL is a no-op. */
KVT_API void kvt_ticket_release(kvt_ticket* ticket);
KVT_API const char* kvt_ticket_last_error(const kvt_ticket* ticket);

#ifdef __cplusplus
}
#endif

#endif /* KVTIER_KVTIER_H_ */
