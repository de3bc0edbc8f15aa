// libFuzzer target: kvtierd decodes requests from any process that can reach its socket,
// so decoding arbitrary bytes must never crash, hang or allocate without bound, and what it
// accepts must be a request it can encode again and read back unchanged. The same bytes
// also go through the other decoders (hello, replies, responses) for crashes only.
//
// Built with -DKVTIER_FUZZ=ON (clang); run: build-fuzz/bin/daemon_request_fuzz -max_len=65536
#include <cstdint>
#include <cstdio>
#include <span>

#include "daemon/wire.h"

using namespace kvtier;

#define FUZZ_CHECK(cond)                                                                              \
  do {                                                                                                \
    if (!(cond)) {                                                                                    \
      std::fprintf(stderr, "daemon_request_fuzz: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      __builtin_trap();                                                                               \
    }                                                                                                 \
  } while (0)

namespace {

bool SameSpec(const NamespaceSpec& a, const NamespaceSpec& b) {
  return a.model.name == b.model.name && a.model.revision == b.model.revision &&
         a.model.weights_digest == b.model.weights_digest && a.model.tokenizer_id == b.model.tokenizer_id &&
         a.shape.num_layers == b.shape.num_layers && a.shape.num_kv_heads == b.shape.num_kv_heads &&
         a.shape.head_dim == b.shape.head_dim && a.shape.dtype == b.shape.dtype &&
         a.shape.chunk_tokens == b.shape.chunk_tokens && a.shape.tp_rank == b.shape.tp_rank &&
         a.shape.tp_size == b.shape.tp_size && a.shape.mla == b.shape.mla && a.adapter_id == b.adapter_id &&
         a.tenant_salt == b.tenant_salt;
}

bool SameRequest(const wire::Request& a, const wire::Request& b) {
  if (a.extra_keys.size() != b.extra_keys.size()) return false;
  for (size_t i = 0; i < a.extra_keys.size(); ++i)
    if (a.extra_keys[i].chunk_index != b.extra_keys[i].chunk_index || a.extra_keys[i].lo != b.extra_keys[i].lo ||
        a.extra_keys[i].hi != b.extra_keys[i].hi)
      return false;
  return a.id == b.id && a.op == b.op && SameSpec(a.spec, b.spec) && a.ns == b.ns && a.tokens == b.tokens &&
         a.lookup.prefetch == b.lookup.prefetch && a.lookup.prefetch_deadline == b.lookup.prefetch_deadline &&
         a.target == b.target && a.count == b.count && a.value == b.value;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> in(data, size);
  Result<wire::Request> q = wire::DecodeRequest(in);
  if (q.ok()) {
    FUZZ_CHECK(q->tokens.size() <= wire::kMaxRequestTokens);
    FUZZ_CHECK(q->extra_keys.size() <= wire::kMaxExtraKeys);
    FUZZ_CHECK(DTypeSize(q->spec.shape.dtype) != 0);
    Result<std::vector<uint8_t>> again = wire::EncodeRequest(*q);
    FUZZ_CHECK(again.ok());
    Result<wire::Request> back = wire::DecodeRequest(*again);
    FUZZ_CHECK(back.ok() && SameRequest(*q, *back));
  }
  (void)wire::DecodeHello(in);
  (void)wire::DecodeHelloReply(in);
  (void)wire::DecodeResponse(in);
  return 0;
}
