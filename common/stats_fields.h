// Every field of StoreStats (kvtier/store.h), once, for the code that lists them all: the
// C ABI's JSON, kvtierd's wire format and metrics, `kvtier stats`. X(name) for the numeric
// fields (integers and booleans, read as uint64_t), S(name) for the strings.
#ifndef KVTIER_COMMON_STATS_FIELDS_H_
#define KVTIER_COMMON_STATS_FIELDS_H_

#define KVTIER_STORE_STATS_NUMBERS(X)                                                                              \
  X(lookups) X(lookup_hit_chunks) X(lookup_miss_chunks) X(host_hit_chunks) X(nvme_hit_chunks) X(redis_hit_chunks) \
  X(saves) X(saved_chunks) X(save_dedup_chunks)                                                                    \
  X(save_failed_chunks) X(loads) X(loaded_chunks) X(load_failed_chunks) X(bytes_saved) X(bytes_loaded)            \
  X(evictions) X(corrupt_chunks) X(host_capacity_bytes) X(host_used_bytes) X(host_chunks) X(index_chunks)         \
  X(index_memory_bytes) X(namespaces) X(nvme_enabled) X(nvme_capacity_bytes) X(nvme_used_bytes) X(nvme_chunks)     \
  X(nvme_corrupt_chunks) X(nvme_dropped_records) X(nvme_write_errors) X(nvme_read_errors) X(demotions)             \
  X(write_throughs) X(promotions) X(recovered_chunks) X(admission_rejected_chunks) X(prefetches)                   \
  X(prefetch_skipped) X(prefetched_chunks) X(planner_skipped_chunks) X(pinned_chunks) X(redis_enabled)             \
  X(redis_saved_chunks) X(redis_dropped_saves) X(redis_loaded_chunks) X(redis_probe_hits) X(redis_misses)          \
  X(redis_corrupt_chunks) X(redis_errors) X(redis_timeouts) X(redis_breaker_opens) X(redis_breaker_closes)         \
  X(redis_skipped) X(redis_bytes_out) X(redis_bytes_in) X(redis_used_bytes) X(redis_evictions)                     \
  X(gpu_host_registered) X(gpu_saved_chunks) X(gpu_loaded_chunks) X(hbm_capacity_bytes) X(hbm_used_bytes)          \
  X(hbm_chunks) X(hbm_hits) X(hbm_inserts) X(hbm_evictions)

#define KVTIER_STORE_STATS_STRINGS(S) S(huge_pages) S(nvme_io_backend) S(redis_breaker) S(gpu)

#endif  // KVTIER_COMMON_STATS_FIELDS_H_
