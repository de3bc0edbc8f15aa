#include "index/chunk_key.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>  // picks the AVX2/AVX-512 XXH3 kernels at run time
#endif

#include <cstdio>
#include <cstring>
#include <cstdint>

namespace kvtier {
namespace {

// Canonical encoding: every field tagged and length-prefixed, so that no two specs
// encode alike ("ab"+"c" vs "a"+"bc").
class Encoder {
 public:
  void Str(uint8_t tag, const std::string& s) {
    U8(tag);
    U64(s.size());
    out_.append(s);
  }
  void U32(uint8_t tag, uint32_t v) {
    U8(tag);
    U64(v);
  }
  const std::string& bytes() const { return out_; }

 private:
  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string out_;
};

void PutLE(const Hash128& h, unsigned char out[16]) {
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<unsigned char>(h.lo >> (8 * i));
    out[8 + i] = static_cast<unsigned char>(h.hi >> (8 * i));
  }
}

constexpr bool kLittleEndian = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
static_assert(kLittleEndian, "kvtier hashes token ids as little-endian int32; big-endian hosts need a swap");

}  // namespace

std::string Hash128::ToHex() const {
  char buf[33];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(hi),
                static_cast<unsigned long long>(lo));
  return buf;
}

Status ValidateNamespaceSpec(const NamespaceSpec& spec) {
  const KvShape& s = spec.shape;
  if (spec.model.name.empty()) return Status::InvalidArgument("namespace: model.name is empty; set the model id");
  if (spec.model.revision.empty() && spec.model.weights_digest.empty())
    return Status::InvalidArgument(
        "namespace: model.revision and model.weights_digest are both empty; set one so that two "
        "versions of the weights never share KV");
  if (s.num_layers == 0) return Status::InvalidArgument("namespace: shape.num_layers is 0");
  if (s.num_kv_heads == 0) return Status::InvalidArgument("namespace: shape.num_kv_heads is 0");
  if (s.head_dim == 0) return Status::InvalidArgument("namespace: shape.head_dim is 0");
  if (DTypeSize(s.dtype) == 0)
    return Status::InvalidArgument("namespace: shape.dtype " + std::to_string(static_cast<int>(s.dtype)) +
                                   " is not a known dtype");
  if (s.chunk_tokens == 0) return Status::InvalidArgument("namespace: shape.chunk_tokens is 0");
  if (s.tp_size == 0) return Status::InvalidArgument("namespace: shape.tp_size is 0");
  if (s.tp_rank >= s.tp_size)
    return Status::InvalidArgument("namespace: shape.tp_rank " + std::to_string(s.tp_rank) +
                                   " is not below shape.tp_size " + std::to_string(s.tp_size));
  if (s.mla && s.num_kv_heads != 1)
    return Status::InvalidArgument("namespace: an MLA shape has one latent head; shape.num_kv_heads is " +
                                   std::to_string(s.num_kv_heads));
  return Status::OK();
}

// Every field of the spec, tagged; TP only when with_tp.
static std::string EncodeSpecFields(const NamespaceSpec& spec, const char* magic, bool with_tp) {
  const KvShape& s = spec.shape;
  Encoder e;
  e.Str(1, magic);
  e.Str(2, spec.model.name);
  e.Str(3, spec.model.revision);
  e.Str(4, spec.model.weights_digest);
  e.Str(5, spec.model.tokenizer_id);
  e.U32(6, s.num_layers);
  e.U32(7, s.num_kv_heads);
  e.U32(8, s.head_dim);
  e.U32(9, static_cast<uint32_t>(s.dtype));
  e.U32(10, s.chunk_tokens);
  e.U32(11, s.mla ? 1 : 0);
  if (with_tp) {
    e.U32(12, s.tp_rank);
    e.U32(13, s.tp_size);
  }
  e.Str(14, spec.adapter_id);
  e.Str(15, spec.tenant_salt);
  return e.bytes();
}

NamespaceId ComputeNamespaceId(const NamespaceSpec& spec) {
  // Every MLA rank holds the same latent, so TP is not part of its identity.
  const std::string bytes = EncodeSpecFields(spec, "kvtier-namespace-v1", !spec.shape.mla);
  XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  NamespaceId id;
  id.lo = h.low64;
  id.hi = h.high64;
  return id;
}

std::string EncodeNamespaceSpec(const NamespaceSpec& spec) {
  return EncodeSpecFields(spec, "kvtier-namespace-spec-v1", true);
}
Result<NamespaceSpec> DecodeNamespaceSpec(std::string_view b) {
  size_t pos = 0;
  auto field = [&](uint8_t tag, uint64_t* v, std::string* str) -> bool {
    if (pos + 9 > b.size() || static_cast<uint8_t>(b[pos]) != tag) return false;
    uint64_t x = 0;
    for (int i = 7; i >= 0; --i) x = (x << 8) | static_cast<uint8_t>(b[pos + 1 + i]);
    pos += 9;
    if (str == nullptr) {
      *v = x;
      return true;
    }
    if (x > b.size() - pos) return false;
    str->assign(b.substr(pos, x));
    pos += x;
    return true;
  };
  NamespaceSpec spec;
  std::string magic;
  uint64_t v[8] = {};
  const bool ok = field(1, nullptr, &magic) && magic == "kvtier-namespace-spec-v1" &&
                  field(2, nullptr, &spec.model.name) && field(3, nullptr, &spec.model.revision) &&
                  field(4, nullptr, &spec.model.weights_digest) && field(5, nullptr, &spec.model.tokenizer_id) &&
                  field(6, &v[0], nullptr) && field(7, &v[1], nullptr) && field(8, &v[2], nullptr) &&
                  field(9, &v[3], nullptr) && field(10, &v[4], nullptr) && field(11, &v[5], nullptr) &&
                  field(12, &v[6], nullptr) && field(13, &v[7], nullptr) && field(14, nullptr, &spec.adapter_id) &&
                  field(15, nullptr, &spec.tenant_salt) && pos == b.size();
  for (uint64_t x : v)
    if (x > UINT32_MAX) return Status::Corruption("namespace spec: a field is out of range");
  if (!ok) return Status::Corruption("namespace spec: malformed encoding");
  spec.shape.num_layers = static_cast<uint32_t>(v[0]);
  spec.shape.num_kv_heads = static_cast<uint32_t>(v[1]);
  spec.shape.head_dim = static_cast<uint32_t>(v[2]);
  spec.shape.dtype = static_cast<DType>(v[3]);
  spec.shape.chunk_tokens = static_cast<uint32_t>(v[4]);
  spec.shape.mla = v[5] != 0;
  spec.shape.tp_rank = static_cast<uint32_t>(v[6]);
  spec.shape.tp_size = static_cast<uint32_t>(v[7]);
  KVTIER_RETURN_IF_ERROR(ValidateNamespaceSpec(spec).WithContext("namespace spec: "));
  return spec;
}

ChunkKey NextChunkKey(const Hash128& parent, std::span<const int32_t> chunk_tokens,
                      std::span<const ExtraKey> chunk_extras) {
  XXH3_state_t state;
  XXH3_128bits_reset(&state);
  unsigned char p[16];
  PutLE(parent, p);
  XXH3_128bits_update(&state, p, sizeof p);
  XXH3_128bits_update(&state, chunk_tokens.data(), chunk_tokens.size_bytes());
  if (!chunk_extras.empty()) {
    const unsigned char tag[4] = {'x', 't', 'r', 'a'};
    XXH3_128bits_update(&state, tag, sizeof tag);
    for (const ExtraKey& x : chunk_extras) {
      unsigned char b[16];
      PutLE(Hash128{x.lo, x.hi}, b);
      XXH3_128bits_update(&state, b, sizeof b);
    }
  }
  XXH128_hash_t h = XXH3_128bits_digest(&state);
  ChunkKey k;
  k.lo = h.low64;
  k.hi = h.high64;
  return k;
}

Status ComputeChunkKeys(const NamespaceId& ns, uint32_t chunk_tokens, std::span<const int32_t> tokens,
                        std::span<const ExtraKey> extras, std::vector<ChunkKey>* keys) {
  if (chunk_tokens == 0) return Status::InvalidArgument("chunk keys: chunk_tokens is 0");
  for (size_t i = 1; i < extras.size(); ++i) {
    if (extras[i].chunk_index < extras[i - 1].chunk_index)
      return Status::InvalidArgument("chunk keys: extra keys are not sorted by chunk_index (entry " +
                                     std::to_string(i) + ")");
  }
  const size_t n = tokens.size() / chunk_tokens;
  keys->clear();
  keys->reserve(n);
  Hash128 parent = ns;
  size_t x = 0;
  for (size_t i = 0; i < n; ++i) {
    size_t x_end = x;
    while (x_end < extras.size() && extras[x_end].chunk_index == i) ++x_end;
    ChunkKey k = NextChunkKey(parent, tokens.subspan(i * chunk_tokens, chunk_tokens),
                              extras.subspan(x, x_end - x));
    keys->push_back(k);
    parent = k;
    x = x_end;
  }
  return Status::OK();
}

}  // namespace kvtier
