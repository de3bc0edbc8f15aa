// kvtier: the command-line tool. Subcommands dispatch to bench/ and to the daemon client
// (stats, ls).
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench.h"

namespace kvtier::cli {
int RunStats(const std::vector<std::string>& argv);
int RunLs(const std::vector<std::string>& argv);
}  // namespace kvtier::cli

namespace {

const char kUsage[] =
    "kvtier — tiered KV-cache storage for LLM inference\n"
    "\n"
    "usage: kvtier <command> [options]\n"
    "\n"
    "commands:\n"
    "  bench recompute  offload vs recompute: per model profile and context length, load time\n"
    "                per tier measured through the real Store (host warm, NVMe cold) next to\n"
    "                modeled prefill on H100/H200; speedup, break-even context, reuse\n"
    "                probability that pays for storage, end-to-end latency; table + PNG plot\n"
    "      --models llama3-8b,llama3-70b,qwen3-30b-a3b,mistral-7b,deepseek-v3 (default: all)\n"
    "      --contexts 1K,2K,...,128K  --tiers host,nvme  --chunk-tokens 256  --measure-mib 512\n"
    "      --reps 3  --seconds 0.25  --mfu 0.5  --hbm-efficiency 0.8  --gpus N  --gpu-tflops T\n"
    "      --gpu-cost-per-hour D  --storage-cost-per-gb-hour-{host,nvme} D  --residency-hours 1\n"
    "      --io 1K/512,16K/512,32K/1K  --measured-prefill-json FILE  --nvme-dir DIR  --buffered\n"
    "      --plot kvtier-recompute.png | --no-plot  --no-progress  --json\n"
    "      --engine auto|gpu|host  engine KV in GPU memory when a GPU is present (auto)\n"
    "      custom shape: --layers L --kv-heads H --head-dim D --params-b B [--q-heads Q\n"
    "                    --dtype bf16 --window W --mla --active-params-b B --name N]\n"
    "  bench tiers   save/load throughput of a tier through the real Store, next to the\n"
    "                machine limit measured in the same run (memcpy for the host tier)\n"
    "      --tier host|nvme|redis tier to measure\n"
    "      --sizes 2,8,32         chunk sizes in MiB (Llama-3-8B shape: 128 KiB per token)\n"
    "      --seconds 0.4          time per measurement\n"
    "      --reps 5               repetitions (limit, save, load interleaved; medians)\n"
    "      --host-capacity-mib 1024  --engine-mib 256  --workers 1  --depth 2\n"
    "      --engine host|gpu|auto  where the engine's KV lives (host: limit is memcpy; gpu: cudaMemcpy)\n"
    "      --json                 one JSON object per result line\n"
    "      nvme: --nvme-dir DIR (default: a fresh dir under $TMPDIR)  --nvme-capacity-mib 4096\n"
    "            --queue-depth 16  --workers 4  --depth 4  --buffered  --no-fio  --keep\n"
    "      redis: --redis host:port (default: starts a local redis-server)  --workers 4  --lz4\n"
    "            --get-piece-kib 1024 (loads read values in GETRANGEs of this size; 0: one GET)\n"
    "            --no-redis-benchmark\n"
    "  bench restart time to reopen an NVMe tier holding --chunks chunks (default 100000)\n"
    "      --nvme-dir DIR  --chunk-tokens 16  --chunks-per-request 64  --json\n"
    "  bench index   lookup latency of a long fully cached prompt in a large index\n"
    "      --chunks 250000  --prompt-tokens 131072  --chunk-tokens 256  --iters 300  --json\n"
    "  bench kernels CUDA gather/scatter of batches of chunks (Llama-3-8B shape, 32 MiB chunks)\n"
    "                next to cudaMemcpyAsync of the same bytes; load/save from pinned host memory\n"
    "      --batches 1,4,16  --iters 10  --reps 5  --json   (needs a GPU; exits 2 without one)\n"
    "  bench redis   the Redis tier's Put/Get (no Store) next to raw pipelined hiredis SET/GET\n"
    "                of the same value size, connections and depth against the same server\n"
    "      --redis host:port (default: starts a local redis-server)  --user U --password P\n"
    "      --sizes 2,8,32  --connections 4  --depth 4  --calls 4  --reps 3  --lz4-mib 8 (0: skip)\n"
    "      --no-redis-benchmark  --json   (exits 2 when there is no redis-server to start)\n"
    "  bench trace FILE  replay a workload trace (JSONL: timestamp, input_length, output_length,\n"
    "                hash_ids, optional round) through the real Store: hit ratio per tier and\n"
    "                overall, bytes moved per tier, modeled prefill time saved, per round\n"
    "      --host-capacity-tokens N|inf  (e.g. 1M, 542K; default inf)  --nvme-capacity-tokens N|inf\n"
    "      --model llama3-8b|llama3-70b|qwen3-8b|mistral-7b|deepseek-v3|tiny  --shape auto|model|tiny\n"
    "      --max-host-gib 4  --block-tokens B (default: inferred)  --gpu-tflops 400  --compare-host-only\n"
    "      --nvme-dir DIR  --buffered  --keep  --workers 2  --no-verify  --no-progress  --json\n"
    "  stats         the counters of a running kvtierd (this tenant's store)\n"
    "      --daemon unix:/run/kvtier/kvtierd.sock ($KVTIER_DAEMON)  --tenant T ($KVTIER_TENANT)\n"
    "      --token X ($KVTIER_TOKEN)  --json\n"
    "  ls            the namespaces a running kvtierd holds, with chunk counts per tier\n"
    "      (the same flags)\n"
    "  version       print the version\n"
    "  help          this text (also --help, -h)\n";

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string& cmd = args[0];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (cmd == "version" || cmd == "--version") {
    std::printf("kvtier 0.1.0\n");
    return 0;
  }
  if (cmd == "stats" || cmd == "ls") {
    std::vector<std::string> rest(args.begin() + 1, args.end());
    for (const std::string& r : rest) {
      if (r == "--help" || r == "-h") {
        std::fputs(kUsage, stdout);
        return 0;
      }
    }
    return cmd == "stats" ? kvtier::cli::RunStats(rest) : kvtier::cli::RunLs(rest);
  }
  if (cmd == "bench") {
    if (args.size() < 2 || args[1] == "--help" || args[1] == "-h") {
      std::fputs(kUsage, args.size() < 2 ? stderr : stdout);
      return args.size() < 2 ? 2 : 0;
    }
    std::vector<std::string> rest(args.begin() + 2, args.end());
    for (const std::string& r : rest) {
      if (r == "--help" || r == "-h") {
        std::fputs(kUsage, stdout);
        return 0;
      }
    }
    if (args[1] == "tiers") return kvtier::bench::RunBenchTiers(rest);
    if (args[1] == "recompute") return kvtier::bench::RunBenchRecompute(rest);
    if (args[1] == "index") return kvtier::bench::RunBenchIndex(rest);
    if (args[1] == "restart") return kvtier::bench::RunBenchRestart(rest);
    if (args[1] == "kernels") return kvtier::bench::RunBenchKernels(rest);
    if (args[1] == "redis") return kvtier::bench::RunBenchRedisTierDirect(rest);
    if (args[1] == "trace") return kvtier::bench::RunBenchTrace(rest);
    std::fprintf(stderr, "kvtier bench: unknown benchmark '%s' (recompute, tiers, index, restart, kernels, redis, trace)\n", args[1].c_str());
    return 2;
  }
  std::fprintf(stderr, "kvtier: unknown command '%s'; see kvtier --help\n", cmd.c_str());
  return 2;
}
