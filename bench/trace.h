// Workload traces for `kvtier bench trace`: JSONL in the Mooncake trace schema, one
// request per line:
//
//   {"timestamp": <ms>, "input_length": <tokens>, "output_length": <tokens>,
//    "hash_ids": [<block id>, ...], "round": <n>}        // round: optional (multi-turn)
//
// hash_ids are prefix-chained block ids of B tokens each (the last block may be
// partial): two requests share KV exactly as far as their hash_ids agree. Unknown fields
// are skipped; input_length and hash_ids are required. Errors name the file, line and
// column. The reader is a small JSON parser of its own (no dependency): it accepts any
// JSON value in a skipped field, but only numbers where the schema has them.
//
// Pure functions over plain structs; any thread.
#ifndef KVTIER_BENCH_TRACE_H_
#define KVTIER_BENCH_TRACE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/status.h"

namespace kvtier::bench {

struct TraceRequest {
  uint64_t line = 0;  // 1-based line in the file, for messages
  double timestamp_ms = 0;
  uint64_t input_length = 0;  // tokens
  uint64_t output_length = 0;
  int64_t round = -1;  // -1: the line has no "round"
  std::vector<uint64_t> hash_ids;
};

struct Trace {
  std::string name;  // file name, for messages
  std::vector<TraceRequest> requests;
  bool has_rounds = false;     // every request has "round"
  uint64_t total_blocks = 0;   // sum of len(hash_ids)
  uint64_t unique_blocks = 0;  // distinct hash ids
  uint64_t total_tokens = 0;   // sum of input_length
  uint64_t max_blocks = 0;     // longest request, in blocks
};

// Parses JSONL text; blank lines are skipped. `name` prefixes error messages.
Result<Trace> ParseTrace(std::string_view text, const std::string& name);
// Reads and parses a file.
Result<Trace> LoadTrace(const std::string& path);

// The block size B consistent with every request (len(hash_ids) == ceil(input_length / B),
// i.e. ceil(L/n) <= B and (n-1)*B < L). When several fit, the power of two among them
// (the largest if more than one), else the smallest. InvalidArgument when none fits.
Result<uint32_t> InferBlockTokens(const Trace& trace);
// InvalidArgument naming the first line whose len(hash_ids) != ceil(input_length / B).
Status CheckBlockTokens(const Trace& trace, uint32_t block_tokens);

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_TRACE_H_
