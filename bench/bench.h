// `kvtier bench ...`: benchmarks that print each figure next to the machine limit
// measured in the same run, and their ratio. One JSON object per result line with
// --json; a readable table otherwise.
#ifndef KVTIER_BENCH_BENCH_H_
#define KVTIER_BENCH_BENCH_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kvtier/status.h"

namespace kvtier::bench {

// --name value / --name=value / --flag. Positional words are kept in order.
class Args {
 public:
  // Parses argv; InvalidArgument on a flag not in `known` (names without "--").
  static Result<Args> Parse(const std::vector<std::string>& argv, const std::vector<std::string>& known,
                            const std::vector<std::string>& boolean_flags);
  bool Has(const std::string& name) const { return values_.count(name) != 0; }
  std::string Get(const std::string& name, const std::string& def) const;
  Result<double> GetDouble(const std::string& name, double def) const;
  Result<uint64_t> GetUint(const std::string& name, uint64_t def) const;
  Result<std::vector<double>> GetDoubleList(const std::string& name, const std::vector<double>& def) const;

 private:
  std::map<std::string, std::string> values_;
};

// One result line: ordered key/value pairs printed as a JSON object or a table row.
class Report {
 public:
  explicit Report(bool json) : json_(json) {}
  Report& Add(const std::string& key, const std::string& value);
  Report& Add(const std::string& key, const char* value) { return Add(key, std::string(value)); }
  Report& Add(const std::string& key, double value, int precision = 3);
  Report& Add(const std::string& key, uint64_t value);
  // Prints the line (JSON object, or `key=value` pairs aligned for reading).
  void Print();

 private:
  struct Field {
    std::string key;
    std::string text;
    bool quoted;
  };
  bool json_;
  std::vector<Field> fields_;
};

int RunBenchTiers(const std::vector<std::string>& argv);
int RunBenchIndex(const std::vector<std::string>& argv);
int RunBenchTiersNvme(const std::vector<std::string>& argv);
// The Store with a Redis tier against raw pipelined SET/GET (bench_tiers_redis.cc).
int RunBenchTiersRedis(const std::vector<std::string>& argv);
int RunBenchRestart(const std::vector<std::string>& argv);
// Offload versus recompute: load time per tier measured through the Store, next to modeled
// prefill on GPU profiles, per model profile and context length (docs/recompute.md).
int RunBenchRecompute(const std::vector<std::string>& argv);
// The Mover's CUDA kernels against cudaMemcpyAsync; exits 2 where CUDA is not built or no device.
int RunBenchKernels(const std::vector<std::string>& argv);
// RedisTier Put/Get straight on the tier next to raw pipelined hiredis SET/GET (bench_redis.cc).
int RunBenchRedisTierDirect(const std::vector<std::string>& argv);
// Replays a workload trace (JSONL, Mooncake schema) through the real Store: hit ratio per
// tier, bytes moved, modeled prefill time saved (bench_trace.cc).
int RunBenchTrace(const std::vector<std::string>& argv);

}  // namespace kvtier::bench

#endif  // KVTIER_BENCH_BENCH_H_
