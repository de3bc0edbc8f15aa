# kvtierd's wire protocol: Cap'n Proto messages over a Unix socket.
#
# Every message travels in a frame: a 4-byte little-endian length, then the message as a
# flat array (capnp::messageToFlatArray: segment table, then segments). daemon/wire.h reads
# and writes frames and turns these structs into plain C++ values; nothing else includes
# the generated header.
#
# A connection starts with Hello -> HelloReply. When the reply's status is OK, the daemon
# then sends one byte carrying the tenant's host region (a memfd) as SCM_RIGHTS; the client
# maps it. After that the client sends Requests and the daemon answers each with one
# Response carrying the same id, in order (one request in flight per connection).
#
# KV bytes never travel here: saves and loads reserve and lease slots in the shared region
# and the client copies there itself.
#
# Compatibility: fields are only ever added. A daemon refuses a Hello whose protocolVersion
# it does not speak.

@0xdb893b4656985332;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("kvtier::proto");

const protocolVersion :UInt32 = 1;

# Status (kvtier/status.h): code is Status::Code's stable number.
struct StatusMsg {
  code @0 :UInt16;
  message @1 :Text;
}

struct Hello {
  protocolVersion @0 :UInt32;
  tenant @1 :Text;
  token @2 :Text;
  # Random, chosen by the client for the life of one daemon connection set: the daemon
  # groups a client's connections by it, and leases and registrations belong to it.
  sessionId @3 :UInt64;
  clientPid @4 :Int32;       # for logs only
}

struct HelloReply {
  status @0 :StatusMsg;
  regionBytes @1 :UInt64;    # size of the memfd that follows
  tenant @2 :Text;           # the tenant the connection belongs to
  daemonVersion @3 :Text;
  sessionExisted @4 :Bool;   # the session id had other connections open already
}

# ---- values (kvtier/types.h, kvtier/store.h) ----

struct ModelIdentity {
  name @0 :Text;
  revision @1 :Text;
  weightsDigest @2 :Text;
  tokenizerId @3 :Text;
}

struct KvShape {
  numLayers @0 :UInt32;
  numKvHeads @1 :UInt32;
  headDim @2 :UInt32;
  dtype @3 :UInt8;           # DType's stable number
  chunkTokens @4 :UInt32;
  tpRank @5 :UInt32;
  tpSize @6 :UInt32;
  mla @7 :Bool;
}

struct NamespaceSpec {
  model @0 :ModelIdentity;
  shape @1 :KvShape;
  adapterId @2 :Text;
  tenantSalt @3 :Text;
}

struct ExtraKey {
  chunkIndex @0 :UInt32;
  lo @1 :UInt64;
  hi @2 :UInt64;
}

# A namespace handle (the daemon's) and a token span.
struct TokenSpan {
  ns @0 :UInt32;
  tokens @1 :List(Int32);
  extraKeys @2 :List(ExtraKey);
}

struct LookupArgs {
  span @0 :TokenSpan;
  prefetch @1 :Bool;
  prefetchDeadlineMs @2 :UInt32;
}

struct PrefillRate {
  ns @0 :UInt32;
  tokensPerSecond @1 :Float64;
}

struct PrefillReport {
  ns @0 :UInt32;
  tokens @1 :UInt64;
  seconds @2 :Float64;
}

struct CommitArgs {
  lease @0 :UInt64;
  written @1 :UInt32;
}

struct Request {
  id @0 :UInt64;
  union {
    registerNamespace @1 :NamespaceSpec;
    unregisterNamespace @2 :UInt32;
    lookup @3 :LookupArgs;
    cancelPrefetch @4 :UInt64;
    setPrefillRate @5 :PrefillRate;
    reportPrefill @6 :PrefillReport;
    pinPrefix @7 :TokenSpan;
    unpinPrefix @8 :TokenSpan;
    reserveSave @9 :TokenSpan;
    commitSave @10 :CommitArgs;
    abortSave @11 :UInt64;
    acquireLoad @12 :TokenSpan;
    releaseLoad @13 :UInt64;
    stats @14 :Void;
    listNamespaces @15 :Void;
  }
}

struct LookupReply {
  matchedTokens @0 :UInt64;
  matchedChunks @1 :UInt32;
  totalChunks @2 :UInt32;
  cachedChunks @3 :UInt32;
  chunkTiers @4 :List(UInt8);   # TierId's stable numbers
  expectedLoadSeconds @5 :Float64;
  expectedRecomputeSeconds @6 :Float64;
  expectedSavingSeconds @7 :Float64;
  prefetchId @8 :UInt64;
}

struct SaveLease {
  id @0 :UInt64;
  totalChunks @1 :UInt32;
  cachedChunks @2 :UInt32;
  payloadBytes @3 :UInt64;
  payloadOffsets @4 :List(UInt64);
}

struct LoadLease {
  id @0 :UInt64;
  totalChunks @1 :UInt32;
  payloadBytes @2 :UInt64;
  payloadOffsets @3 :List(UInt64);
  status @4 :StatusMsg;
}

# StoreStats as name/value pairs: both sides map them through one table
# (common/stats_fields.h), so a field added there travels without a schema change, and
# a name one side does not know is ignored.
struct StatNumber {
  name @0 :Text;
  value @1 :UInt64;
}

struct StatText {
  name @0 :Text;
  value @1 :Text;
}

struct Stats {
  numbers @0 :List(StatNumber);
  texts @1 :List(StatText);
}

struct NamespaceInfo {
  spec @0 :NamespaceSpec;
  chunks @1 :UInt64;
  hostChunks @2 :UInt64;
  nvmeChunks @3 :UInt64;
  redisChunks @4 :UInt64;
  registrations @5 :UInt32;
}

struct Response {
  id @0 :UInt64;
  status @1 :StatusMsg;
  # Set only when status is OK, and then to the request's kind (none: it returns nothing).
  union {
    none @2 :Void;
    registerNamespace @3 :UInt32;   # the daemon's namespace handle
    lookup @4 :LookupReply;
    pinPrefix @5 :UInt32;           # chunks pinned
    reserveSave @6 :SaveLease;
    commitSave @7 :UInt32;          # leading chunks stored
    acquireLoad @8 :LoadLease;
    stats @9 :Stats;
    listNamespaces @10 :List(NamespaceInfo);
  }
  # commitSave that failed: the leading chunks stored all the same.
  storedOnError @11 :UInt32;
}
