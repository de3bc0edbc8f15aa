/* The C ABI, exercised from C: lifecycle, round trip, partial loads, bad input, use
 * after close. Exits non-zero on the first failed check. */
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvtier/kvtier.h"

extern char** environ;

static int failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                     \
    }                                                                 \
  } while (0)

enum { kLayers = 2, kHeads = 2, kDim = 8, kBlockTokens = 4, kBlocks = 32, kChunkTokens = 8 };
#define ELEM 2 /* fp16 */
#define BLOCK_BYTES ((size_t)kBlockTokens * kHeads * kDim * ELEM)
#define LAYER_BYTES (2 * BLOCK_BYTES * kBlocks)

static uint8_t kv[kLayers][LAYER_BYTES];

static void describe(kvt_kv_layout* layout, kvt_layer_memory* layers) {
  kvt_kv_layout_init(layout);
  layout->block_tokens = kBlockTokens;
  layout->num_blocks = kBlocks;
  layout->num_layers = kLayers;
  layout->layers = layers;
  for (int l = 0; l < kLayers; ++l) {
    layers[l].base = kv[l];
    layers[l].bytes = LAYER_BYTES;
    layers[l].block_stride = BLOCK_BYTES;
    layers[l].token_stride = (uint64_t)kHeads * kDim * ELEM;
    layers[l].head_stride = (uint64_t)kDim * ELEM;
    layers[l].dim_stride = ELEM;
    layers[l].kv_offset = BLOCK_BYTES * kBlocks;
  }
}

static void spec_init(kvt_namespace_spec* s, const char* revision) {
  kvt_namespace_spec_init(s);
  s->model_name = "test/c-abi";
  s->model_revision = revision;
  s->num_layers = kLayers;
  s->num_kv_heads = kHeads;
  s->head_dim = kDim;
  s->dtype = KVT_DTYPE_FLOAT16;
  s->chunk_tokens = kChunkTokens;
}

static uint8_t* block_part(int layer, int kvi, int block) {
  return kv[layer] + (size_t)kvi * BLOCK_BYTES * kBlocks + (size_t)block * BLOCK_BYTES;
}

/* The NVMe tier through the C ABI: write-through saves survive closing and reopening
 * the store, and load back bit-exact. */
static void nvme_round_trip(void) {
  char dir[] = "/tmp/kvtier-c-abi-XXXXXX";
  if (mkdtemp(dir) == NULL) {
    CHECK(!"mkdtemp");
    return;
  }
  char data[128], meta[128];
  snprintf(data, sizeof data, "%s/nvme.dat", dir);
  snprintf(meta, sizeof meta, "%s/meta", dir);
  kvt_store_options opts;
  kvt_store_options_init(&opts);
  opts.host_capacity_bytes = 4u << 20;
  opts.huge_pages = KVT_HUGE_PAGES_OFF;
  opts.nvme_paths = data;
  opts.nvme_metadata_dir = meta;
  opts.nvme_capacity_bytes = 16u << 20;
  opts.nvme_policy = KVT_WRITE_THROUGH;
  kvt_layer_memory layers[kLayers];
  kvt_kv_layout layout;
  describe(&layout, layers);
  kvt_namespace_spec spec;
  spec_init(&spec, "nvme");
  int32_t tokens[16];
  for (int i = 0; i < 16; ++i) tokens[i] = 7000 + i;
  int32_t src[4] = {0, 1, 2, 3}, dst[4] = {20, 21, 22, 23};
  for (int l = 0; l < kLayers; ++l)
    for (int k = 0; k < 2; ++k)
      for (int b = 0; b < 4; ++b)
        for (size_t i = 0; i < BLOCK_BYTES; ++i) block_part(l, k, b)[i] = (uint8_t)(l * 7 + k * 3 + b * 11 + i * 5);
  char err[256] = {0};
  uint32_t done = 0;
  for (int round = 0; round < 2; ++round) {
    kvt_store* store = NULL;
    CHECK(kvt_store_open(&opts, &store, err, sizeof err) == KVT_OK);
    if (store == NULL) {
      fprintf(stderr, "open: %s\n", err);
      return;
    }
    kvt_namespace* ns = NULL;
    CHECK(kvt_namespace_register(store, &spec, &layout, &ns) == KVT_OK);
    kvt_ticket* t = NULL;
    if (round == 0) {
      CHECK(kvt_save(ns, tokens, 16, src, 4, NULL, 0, &t) == KVT_OK);
      CHECK(kvt_ticket_wait(t, -1, &done) == KVT_OK);
      CHECK(done == 2);
      kvt_ticket_release(t);
    } else {
      uint8_t tiers[2] = {9, 9};
      kvt_lookup_result lr;
      CHECK(kvt_lookup(ns, tokens, 16, NULL, 0, &lr, tiers, 2) == KVT_OK);
      CHECK(lr.matched_chunks == 2 && tiers[0] == KVT_TIER_NVME && tiers[1] == KVT_TIER_NVME);
      CHECK(kvt_load(ns, tokens, 16, dst, 4, NULL, 0, &t) == KVT_OK);
      CHECK(kvt_ticket_wait(t, -1, &done) == KVT_OK);
      CHECK(done == 2);
      kvt_ticket_release(t);
      for (int l = 0; l < kLayers; ++l)
        for (int k = 0; k < 2; ++k)
          for (int b = 0; b < 4; ++b) CHECK(memcmp(block_part(l, k, b), block_part(l, k, 20 + b), BLOCK_BYTES) == 0);
    }
    CHECK(kvt_namespace_release(ns) == KVT_OK);
    CHECK(kvt_store_close(store) == KVT_OK);
  }
  /* A bad policy is refused. */
  kvt_store* bad = NULL;
  opts.nvme_policy = 7;
  CHECK(kvt_store_open(&opts, &bad, err, sizeof err) == KVT_E_INVALID_ARGUMENT);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK(system(cmd) == 0);
}

/* K and V in separate buffers (kvt_kv_layout.v_bases): chunks saved from them load into
 * the one-region layout of the same model, K and V where kv_offset puts them; a caller
 * built before v_bases (a 24-byte kvt_kv_layout) still registers. */
typedef struct kv_layout_before_v_bases {
  uint32_t struct_size, block_tokens, num_blocks, num_layers;
  const kvt_layer_memory* layers;
} kv_layout_before_v_bases;

static uint8_t k_only[kLayers][LAYER_BYTES / 2], v_only[kLayers][LAYER_BYTES / 2];

static void split_kv(void) {
  char err[256] = {0};
  kvt_store_options opts;
  kvt_store_options_init(&opts);
  opts.host_capacity_bytes = 4u << 20;
  opts.huge_pages = KVT_HUGE_PAGES_OFF;
  kvt_store* store = NULL;
  CHECK(kvt_store_open(&opts, &store, err, sizeof err) == KVT_OK);
  if (store == NULL) return;
  kvt_namespace_spec spec;
  spec_init(&spec, "split");

  kvt_layer_memory split_layers[kLayers];
  kvt_kv_layout split;
  describe(&split, split_layers);
  CHECK(split.v_bases == NULL); /* kvt_kv_layout_init: V is kv_offset after K */
  void* v_bases[kLayers];
  split.v_bases = v_bases;
  for (int l = 0; l < kLayers; ++l) {
    split_layers[l].base = k_only[l];
    split_layers[l].bytes = LAYER_BYTES / 2;
    split_layers[l].kv_offset = 0;
    v_bases[l] = v_only[l];
    for (size_t i = 0; i < LAYER_BYTES / 2; ++i) {
      k_only[l][i] = (uint8_t)(i * 3 + l);
      v_only[l][i] = (uint8_t)(i * 5 + l + 1);
    }
  }
  kvt_namespace* ns_split = NULL;
  CHECK(kvt_namespace_register(store, &spec, &split, &ns_split) == KVT_OK);
  if (ns_split == NULL) return;

  /* V overlapping K, a V region too short: refused, naming the field. */
  kvt_namespace* bad = NULL;
  v_bases[1] = k_only[1] + 64;
  CHECK(kvt_namespace_register(store, &spec, &split, &bad) == KVT_E_INVALID_ARGUMENT);
  CHECK(strstr(kvt_store_last_error(store), "layers[1].v_base") != NULL);
  v_bases[1] = v_only[1];
  split_layers[1].bytes = LAYER_BYTES / 2 - 1;
  CHECK(kvt_namespace_register(store, &spec, &split, &bad) == KVT_E_INVALID_ARGUMENT);
  CHECK(strstr(kvt_store_last_error(store), "layers[1].bytes") != NULL);
  split_layers[1].bytes = LAYER_BYTES / 2;
  CHECK(bad == NULL);

  /* The one-region layout, as a caller built before v_bases describes it. */
  kvt_layer_memory one_region[kLayers];
  kvt_kv_layout tmp;
  describe(&tmp, one_region);
  kv_layout_before_v_bases old_layout = {sizeof(kv_layout_before_v_bases), kBlockTokens, kBlocks, kLayers, one_region};
  CHECK(sizeof(kv_layout_before_v_bases) == 24);
  kvt_namespace* ns_old = NULL;
  CHECK(kvt_namespace_register(store, &spec, (const kvt_kv_layout*)&old_layout, &ns_old) == KVT_OK);
  if (ns_old == NULL) return;

  int32_t tokens[16];
  for (int i = 0; i < 16; ++i) tokens[i] = 500 + i;
  int32_t src[4] = {2, 3, 6, 7}, dst[4] = {8, 9, 10, 11};
  kvt_ticket* t = NULL;
  uint32_t done = 0;
  CHECK(kvt_save(ns_split, tokens, 16, src, 4, NULL, 0, &t) == KVT_OK);
  CHECK(kvt_ticket_wait(t, -1, &done) == KVT_OK && done == 2);
  kvt_ticket_release(t);
  memset(kv, 0, sizeof kv);
  CHECK(kvt_load(ns_old, tokens, 16, dst, 4, NULL, 0, &t) == KVT_OK);
  CHECK(kvt_ticket_wait(t, -1, &done) == KVT_OK && done == 2);
  kvt_ticket_release(t);
  for (int l = 0; l < kLayers; ++l)
    for (int b = 0; b < 4; ++b) {
      CHECK(memcmp(block_part(l, 0, dst[b]), k_only[l] + (size_t)src[b] * BLOCK_BYTES, BLOCK_BYTES) == 0);
      CHECK(memcmp(block_part(l, 1, dst[b]), v_only[l] + (size_t)src[b] * BLOCK_BYTES, BLOCK_BYTES) == 0);
    }
  /* And back into the separate buffers, at other blocks. */
  int32_t back[4] = {12, 13, 14, 15};
  CHECK(kvt_load(ns_split, tokens, 16, back, 4, NULL, 0, &t) == KVT_OK);
  CHECK(kvt_ticket_wait(t, -1, &done) == KVT_OK && done == 2);
  kvt_ticket_release(t);
  for (int l = 0; l < kLayers; ++l)
    for (int b = 0; b < 4; ++b) {
      const size_t to = (size_t)back[b] * BLOCK_BYTES, from = (size_t)src[b] * BLOCK_BYTES;
      CHECK(memcmp(k_only[l] + to, k_only[l] + from, BLOCK_BYTES) == 0);
      CHECK(memcmp(v_only[l] + to, v_only[l] + from, BLOCK_BYTES) == 0);
    }
  CHECK(kvt_namespace_release(ns_split) == KVT_OK);
  CHECK(kvt_namespace_release(ns_old) == KVT_OK);
  CHECK(kvt_store_close(store) == KVT_OK);
}

/* Daemon mode: kvt_store_open with daemon_address connects to a kvtierd process (the
 * binary in $KVTIERD, started here) and the same calls save, look up and load through it;
 * a wrong token is refused, and with the daemon gone, open fails with KVT_E_UNAVAILABLE. */
static void daemon_mode(void) {
  const char* kvtierd = getenv("KVTIERD");
  if (kvtierd == NULL || *kvtierd == '\0') {
    fprintf(stderr, "c_abi_test: KVTIERD not set, daemon mode not tested\n");
    return;
  }
  char dir[] = "/tmp/kvtier-c-abi-daemon-XXXXXX";
  if (mkdtemp(dir) == NULL) {
    CHECK(!"mkdtemp");
    return;
  }
  char sock[160], set_socket[200], address[200];
  snprintf(sock, sizeof sock, "%s/kvtierd.sock", dir);
  snprintf(set_socket, sizeof set_socket, "socket=%s", sock);
  snprintf(address, sizeof address, "unix:%s", sock);
  char* argv[] = {(char*)kvtierd, "--set", set_socket, "--set", "metrics.listen=", "--set", "host.capacity=8MiB",
                  "--set", "host.huge_pages=off", "--set", "tenants.c.token=token-of-the-c-test", NULL};
  pid_t pid = -1;
  CHECK(posix_spawn(&pid, kvtierd, NULL, NULL, argv, environ) == 0);
  if (pid <= 0) return;

  kvt_store_options opts;
  kvt_store_options_init(&opts);
  opts.daemon_address = address;
  opts.daemon_tenant = "c";
  opts.daemon_token = "token-of-the-c-test";
  opts.daemon_timeout_ms = 2000;
  char err[256] = {0};
  kvt_store* store = NULL;
  int rc = KVT_E_UNAVAILABLE;
  for (int i = 0; i < 1000 && rc == KVT_E_UNAVAILABLE; ++i) { /* until it listens (10 s at most) */
    rc = kvt_store_open(&opts, &store, err, sizeof err);
    if (rc == KVT_E_UNAVAILABLE) usleep(10000);
  }
  CHECK(rc == KVT_OK);
  if (store != NULL) {
    kvt_layer_memory layers[kLayers];
    kvt_kv_layout layout;
    describe(&layout, layers);
    kvt_namespace_spec spec;
    spec_init(&spec, "daemon");
    kvt_namespace* ns = NULL;
    CHECK(kvt_namespace_register(store, &spec, &layout, &ns) == KVT_OK);
    int32_t tokens[16];
    for (int i = 0; i < 16; ++i) tokens[i] = 9000 + i * 3;
    int32_t src[4] = {0, 1, 2, 3}, dst[4] = {24, 25, 26, 27};
    for (int l = 0; l < kLayers; ++l)
      for (int k = 0; k < 2; ++k)
        for (int b = 0; b < 4; ++b)
          for (size_t i = 0; i < BLOCK_BYTES; ++i) block_part(l, k, b)[i] = (uint8_t)(l * 5 + k * 13 + b * 3 + i * 7);
    kvt_ticket* t = NULL;
    uint32_t done = 0;
    CHECK(kvt_save(ns, tokens, 16, src, 4, NULL, 0, &t) == KVT_OK);
    CHECK(kvt_ticket_wait(t, -1, &done) == KVT_OK);
    CHECK(done == 2);
    kvt_ticket_release(t);
    kvt_lookup_result lr;
    uint8_t tiers[2] = {9, 9};
    CHECK(kvt_lookup(ns, tokens, 16, NULL, 0, &lr, tiers, 2) == KVT_OK);
    CHECK(lr.matched_chunks == 2 && tiers[0] == KVT_TIER_HOST && tiers[1] == KVT_TIER_HOST);
    CHECK(kvt_load(ns, tokens, 16, dst, 4, NULL, 0, &t) == KVT_OK);
    CHECK(kvt_ticket_wait(t, -1, &done) == KVT_OK);
    CHECK(done == 2);
    kvt_ticket_release(t);
    for (int l = 0; l < kLayers; ++l)
      for (int k = 0; k < 2; ++k)
        for (int b = 0; b < 4; ++b) CHECK(memcmp(block_part(l, k, b), block_part(l, k, 24 + b), BLOCK_BYTES) == 0);
    CHECK(kvt_namespace_release(ns) == KVT_OK);
    CHECK(kvt_store_close(store) == KVT_OK);
  }
  /* Another tenant's name with this token: refused. */
  kvt_store* other = NULL;
  opts.daemon_tenant = "d";
  CHECK(kvt_store_open(&opts, &other, err, sizeof err) == KVT_E_PERMISSION_DENIED);
  CHECK(other == NULL);
  /* The daemon gone: open fails fast, saying so. */
  kill(pid, SIGTERM);
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
  opts.daemon_tenant = "c";
  CHECK(kvt_store_open(&opts, &other, err, sizeof err) == KVT_E_UNAVAILABLE);
  CHECK(strstr(err, sock) != NULL);
  rmdir(dir);
}

int main(void) {
  char err[256] = {0};
  kvt_store* store = NULL;
  kvt_store_options opts;
  kvt_store_options_init(&opts);
  opts.host_capacity_bytes = 4u << 20;
  opts.huge_pages = KVT_HUGE_PAGES_OFF;
  CHECK(kvt_store_open(&opts, &store, err, sizeof err) == KVT_OK);
  CHECK(store != NULL);
  if (store == NULL) return 1;

  /* Bad options: refused with a message. */
  kvt_store* bad_store = NULL;
  kvt_store_options bad_opts = opts;
  bad_opts.struct_size = 3;
  CHECK(kvt_store_open(&bad_opts, &bad_store, err, sizeof err) == KVT_E_INVALID_ARGUMENT);
  CHECK(bad_store == NULL);
  CHECK(strstr(err, "struct_size") != NULL);
  bad_opts = opts;
  bad_opts.worker_threads = 0;
  CHECK(kvt_store_open(&bad_opts, &bad_store, err, sizeof err) == KVT_E_INVALID_ARGUMENT);
  bad_opts = opts;
  bad_opts.redis_addresses = "";
  CHECK(kvt_store_open(&bad_opts, &bad_store, err, sizeof err) == KVT_E_INVALID_ARGUMENT);
  CHECK(strstr(err, "redis.addresses") != NULL);
  bad_opts = opts;
  bad_opts.redis_addresses = "127.0.0.1:1";
  bad_opts.redis_policy = 7;
  CHECK(kvt_store_open(&bad_opts, &bad_store, err, sizeof err) == KVT_E_INVALID_ARGUMENT);
  CHECK(strstr(err, "redis_policy") != NULL);
  /* A caller built before the Redis fields (a shorter struct) still opens a store. */
  kvt_store* old_store = NULL;
  kvt_store_options old_opts = opts;
  old_opts.struct_size = (uint32_t)offsetof(kvt_store_options, redis_addresses);
  CHECK(kvt_store_open(&old_opts, &old_store, err, sizeof err) == KVT_OK);
  CHECK(kvt_store_close(old_store) == KVT_OK);

  kvt_layer_memory layers[kLayers];
  kvt_kv_layout layout;
  describe(&layout, layers);
  kvt_namespace_spec spec;
  spec_init(&spec, "r1");
  kvt_namespace* ns = NULL;
  CHECK(kvt_namespace_register(store, &spec, &layout, &ns) == KVT_OK);
  if (ns == NULL) return 1;

  /* Wrong layout: refused, message names the problem. */
  kvt_namespace* bad_ns = NULL;
  kvt_kv_layout short_layout = layout;
  kvt_layer_memory short_layers[kLayers];
  memcpy(short_layers, layers, sizeof layers);
  short_layers[1].bytes = 100;
  short_layout.layers = short_layers;
  CHECK(kvt_namespace_register(store, &spec, &short_layout, &bad_ns) == KVT_E_INVALID_ARGUMENT);
  CHECK(bad_ns == NULL);
  CHECK(strlen(kvt_store_last_error(store)) > 0);
  short_layout = layout;
  short_layout.num_layers = kLayers - 1;
  CHECK(kvt_namespace_register(store, &spec, &short_layout, &bad_ns) == KVT_E_INVALID_ARGUMENT);
  short_layout = layout;
  short_layout.layers = NULL;
  CHECK(kvt_namespace_register(store, &spec, &short_layout, &bad_ns) == KVT_E_INVALID_ARGUMENT);
  CHECK(kvt_namespace_register(store, NULL, &layout, &bad_ns) == KVT_E_INVALID_ARGUMENT);
  CHECK(kvt_namespace_register(NULL, &spec, &layout, &bad_ns) == KVT_E_INVALID_ARGUMENT);

  /* Save 3 chunks (24 tokens, 6 blocks) from blocks 0..5. */
  int32_t tokens[24];
  for (int i = 0; i < 24; ++i) tokens[i] = 1000 + i * 7;
  int32_t src[6] = {0, 1, 2, 3, 4, 5};
  int32_t dst[6] = {10, 11, 12, 13, 14, 15};
  for (int l = 0; l < kLayers; ++l)
    for (int k = 0; k < 2; ++k)
      for (int b = 0; b < 6; ++b)
        for (size_t i = 0; i < BLOCK_BYTES; ++i) block_part(l, k, b)[i] = (uint8_t)(l * 131 + k * 17 + b * 29 + i);

  kvt_lookup_result lr;
  CHECK(kvt_lookup(ns, tokens, 24, NULL, 0, &lr, NULL, 0) == KVT_OK);
  CHECK(lr.matched_tokens == 0 && lr.total_chunks == 3);

  kvt_ticket* t = NULL;
  CHECK(kvt_save(ns, tokens, 24, src, 6, NULL, 0, &t) == KVT_OK);
  uint32_t done = 0;
  CHECK(kvt_ticket_wait(t, -1, &done) == KVT_OK);
  CHECK(done == 3);
  CHECK(kvt_ticket_poll(t, &done) == KVT_OK);
  kvt_ticket_release(t);

  uint8_t tiers[8] = {9, 9, 9, 9, 9, 9, 9, 9};
  CHECK(kvt_lookup(ns, tokens, 24, NULL, 0, &lr, tiers, 8) == KVT_OK);
  CHECK(lr.matched_tokens == 24 && lr.matched_chunks == 3);
  CHECK(tiers[0] == KVT_TIER_HOST && tiers[2] == KVT_TIER_HOST && tiers[3] == 9);

  /* Load back into blocks 10..15 and compare. */
  CHECK(kvt_load(ns, tokens, 24, dst, 6, NULL, 0, &t) == KVT_OK);
  CHECK(kvt_ticket_wait(t, 10 * 1000 * 1000, &done) == KVT_OK);
  CHECK(done == 3);
  kvt_ticket_release(t);
  for (int l = 0; l < kLayers; ++l)
    for (int k = 0; k < 2; ++k)
      for (int b = 0; b < 6; ++b) CHECK(memcmp(block_part(l, k, b), block_part(l, k, 10 + b), BLOCK_BYTES) == 0);

  /* A longer request loads the cached prefix and reports the rest as not found. */
  int32_t longer[40];
  memcpy(longer, tokens, sizeof tokens);
  for (int i = 24; i < 40; ++i) longer[i] = i;
  int32_t dst10[10] = {16, 17, 18, 19, 20, 21, 22, 23, 24, 25};
  CHECK(kvt_load(ns, longer, 40, dst10, 10, NULL, 0, &t) == KVT_OK);
  CHECK(kvt_ticket_wait(t, -1, &done) == KVT_E_NOT_FOUND);
  CHECK(done == 3);
  CHECK(strstr(kvt_ticket_last_error(t), "recompute from token 24") != NULL);
  kvt_ticket_release(t);

  /* Another revision of the model: a miss. */
  kvt_namespace_spec spec2;
  spec_init(&spec2, "r2");
  kvt_namespace* ns2 = NULL;
  CHECK(kvt_namespace_register(store, &spec2, &layout, &ns2) == KVT_OK);
  CHECK(kvt_lookup(ns2, tokens, 24, NULL, 0, &lr, NULL, 0) == KVT_OK);
  CHECK(lr.matched_tokens == 0);

  /* Bad input on operations: a clear error, no ticket. */
  t = (kvt_ticket*)1;
  CHECK(kvt_save(ns, tokens, 24, src, 5, NULL, 0, &t) == KVT_E_INVALID_ARGUMENT);
  CHECK(t == NULL);
  CHECK(strstr(kvt_namespace_last_error(ns), "block ids") != NULL);
  CHECK(kvt_save(ns, NULL, 24, src, 6, NULL, 0, &t) == KVT_E_INVALID_ARGUMENT);
  CHECK(kvt_load(ns, tokens, 24, NULL, 6, NULL, 0, &t) == KVT_E_INVALID_ARGUMENT);
  CHECK(kvt_save(ns, tokens, 24, src, 6, NULL, 0, NULL) == KVT_E_INVALID_ARGUMENT);
  int32_t bad_blocks[6] = {0, 1, 2, 3, 4, kBlocks};
  CHECK(kvt_load(ns, tokens, 24, bad_blocks, 6, NULL, 0, &t) == KVT_E_INVALID_ARGUMENT);
  CHECK(kvt_lookup(ns, tokens, 24, NULL, 0, NULL, NULL, 0) == KVT_E_INVALID_ARGUMENT);
  CHECK(kvt_lookup(NULL, tokens, 24, NULL, 0, &lr, NULL, 0) == KVT_E_INVALID_ARGUMENT);
  kvt_extra_key extras[2] = {{1, 5, 5}, {0, 5, 5}};
  CHECK(kvt_lookup(ns, tokens, 24, extras, 2, &lr, NULL, 0) == KVT_E_INVALID_ARGUMENT);
  CHECK(kvt_ticket_poll(NULL, &done) == KVT_E_INVALID_ARGUMENT);
  CHECK(strcmp(kvt_status_name(KVT_E_NOT_FOUND), "not found") == 0);
  CHECK(strcmp(kvt_status_name(KVT_IN_PROGRESS), "in progress") == 0);

  /* The data is intact after all that. */
  CHECK(kvt_lookup(ns, tokens, 24, NULL, 0, &lr, NULL, 0) == KVT_OK);
  CHECK(lr.matched_chunks == 3);

  /* Lookup with options and the planner's figures; a prefetch starts only below host. */
  kvt_lookup_options lopts;
  kvt_lookup_options_init(&lopts);
  lopts.prefetch = 1;
  kvt_lookup_info info;
  memset(&info, 0, sizeof info);
  CHECK(kvt_lookup_ex(ns, tokens, 24, NULL, 0, &lopts, &info, tiers, 8) == KVT_E_INVALID_ARGUMENT); /* no struct_size */
  info.struct_size = sizeof info;
  CHECK(kvt_lookup_ex(ns, tokens, 24, NULL, 0, &lopts, &info, tiers, 8) == KVT_OK);
  CHECK(info.matched_chunks == 3 && info.cached_chunks == 3 && info.prefetch_id == 0);
  CHECK(info.expected_saving_seconds == 0.0); /* no prefill rate yet */
  CHECK(kvt_set_prefill_rate(ns, 1e12) == KVT_OK); /* recomputing is instant: nothing is worth loading */
  CHECK(kvt_lookup_ex(ns, tokens, 24, NULL, 0, NULL, &info, NULL, 0) == KVT_OK);
  CHECK(info.matched_chunks == 0 && info.cached_chunks == 3);
  CHECK(kvt_set_prefill_rate(ns, 0) == KVT_OK);
  CHECK(kvt_report_prefill(ns, 0, 1.0) == KVT_E_INVALID_ARGUMENT);
  CHECK(kvt_prefetch_cancel(ns, 12345) == KVT_E_NOT_FOUND);

  /* Layer-wise: every layer of a load reports the chunks it delivers. */
  kvt_ticket* lt = NULL;
  CHECK(kvt_load(ns, tokens, 24, dst, 6, NULL, 0, &lt) == KVT_OK);
  for (uint32_t l = 0; l < kLayers; ++l) {
    uint32_t c = 99;
    CHECK(kvt_ticket_wait_layer(lt, l, -1, &c) == KVT_OK);
    CHECK(c == 3);
  }
  CHECK(kvt_ticket_wait(lt, -1, &done) == KVT_OK && done == 3);
  kvt_ticket_release(lt);

  /* Pinned prefixes and the stats JSON. */
  uint32_t pinned = 0;
  CHECK(kvt_pin_prefix(ns, tokens, 24, NULL, 0, &pinned) == KVT_OK && pinned == 3);
  char stats[4096];
  size_t need = 0;
  CHECK(kvt_store_stats_json(store, stats, 8, &need) == KVT_E_INVALID_ARGUMENT && need > 8);
  CHECK(kvt_store_stats_json(store, stats, sizeof stats, &need) == KVT_OK);
  CHECK(strstr(stats, "\"pinned_chunks\":3") != NULL);
  CHECK(strstr(stats, "\"saved_chunks\":3") != NULL);
  CHECK(kvt_unpin_prefix(ns, tokens, 24, NULL, 0) == KVT_OK);
  CHECK(kvt_store_stats_json(store, stats, sizeof stats, &need) == KVT_OK);
  CHECK(strstr(stats, "\"pinned_chunks\":0") != NULL);

  /* Use after close: namespace handles stay callable and say the store is closed. */
  kvt_ticket* pending = NULL;
  CHECK(kvt_load(ns, tokens, 24, dst, 6, NULL, 0, &pending) == KVT_OK);
  CHECK(kvt_store_close(store) == KVT_OK);
  int prc = kvt_ticket_wait(pending, -1, &done);
  CHECK(prc == KVT_OK || prc == KVT_E_CANCELLED);
  kvt_ticket_release(pending);
  CHECK(kvt_lookup(ns, tokens, 24, NULL, 0, &lr, NULL, 0) == KVT_E_CLOSED);
  CHECK(strstr(kvt_namespace_last_error(ns), "closed") != NULL);
  CHECK(kvt_save(ns, tokens, 24, src, 6, NULL, 0, &t) == KVT_E_CLOSED);
  CHECK(kvt_namespace_release(ns) == KVT_OK);
  CHECK(kvt_namespace_release(ns2) == KVT_OK);
  kvt_ticket_release(NULL);

  nvme_round_trip();
  split_kv();
  daemon_mode();

  if (failures) {
    fprintf(stderr, "c_abi_test: %d checks failed\n", failures);
    return 1;
  }
  printf("c_abi_test: all checks passed\n");
  return 0;
}
