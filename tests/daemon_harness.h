// What the tests of kvtierd and of leases share: one KV shape and namespace, a Store config
// whose host region is shared, client configs, prompt saves and loads that check every byte
// (through a Store or a DaemonClient alike), save/load traffic on a thread, polling, and
// child processes.
//
// Processes are started with posix_spawn (safe in a multi-threaded test process).
#ifndef KVTIER_TESTS_DAEMON_HARNESS_H_
#define KVTIER_TESTS_DAEMON_HARNESS_H_

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kvtier/store.h"
#include "tests/test_engine.h"
#include "tiers/chunk_format.h"

extern char** environ;

namespace kvtier::test {

inline constexpr uint32_t kChunkTokens = 16;
inline constexpr uint32_t kBlockTokens = 4;
inline constexpr uint32_t kBpc = kChunkTokens / kBlockTokens;  // engine blocks per chunk
inline constexpr uint32_t kLayers = 3;
inline constexpr uint32_t kEngineBlocks = 256;

// 3 layers of 2 KV heads of 32 fp16 values, 16-token chunks.
inline KvShape Shape() {
  KvShape s;
  s.num_layers = kLayers;
  s.num_kv_heads = 2;
  s.head_dim = 32;
  s.dtype = DType::kFloat16;
  s.chunk_tokens = kChunkTokens;
  return s;
}

inline NamespaceSpec Spec(const std::string& model = "acme/llama-test") {
  NamespaceSpec n;
  n.model.name = model;
  n.model.revision = "r1";
  n.shape = Shape();
  return n;
}

// What one chunk of Shape() takes in the host tier: its header (kChunkPayloadOffset bytes),
// then its payload in whole 4 KiB pages.
inline uint64_t SlotBytes() { return kChunkPayloadOffset + ((ChunkPayloadBytes(Shape()) + 4095) / 4096 * 4096); }

// A Store with room for `host_chunks` chunks in a host region that other processes may map
// (a memfd), without huge pages.
inline StoreConfig SharedHostConfig(uint64_t host_chunks) {
  StoreConfig c;
  c.host_capacity_bytes = host_chunks * SlotBytes();
  c.huge_pages = HugePages::kOff;
  c.shared_host_region = true;
  return c;
}

// A client of the daemon on Unix socket `socket`: two connections, two workers, 3 s calls.
inline DaemonClientConfig ClientConfig(const std::string& socket, const std::string& tenant,
                                       const std::string& token) {
  DaemonClientConfig c;
  c.address = "unix:" + socket;
  c.tenant = tenant;
  c.token = token;
  c.connections = 2;
  c.worker_threads = 2;
  c.timeout = std::chrono::milliseconds(3000);
  return c;
}

// Connects with C::Connect (C is Store or DaemonClient), retrying for up to `limit` while
// the daemon is still starting (Unavailable).
template <typename C>
auto ConnectWithin(const DaemonClientConfig& config, std::chrono::milliseconds limit = std::chrono::seconds(10))
    -> decltype(C::Connect(config)) {
  const std::chrono::steady_clock::time_point end = std::chrono::steady_clock::now() + limit;
  for (;;) {
    auto c = C::Connect(config);
    if (c.ok() || c.status().code() != Status::Code::kUnavailable || std::chrono::steady_clock::now() > end) return c;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Saves prompt `id` (`chunks` whole chunks) from engine blocks [first, ...) and waits up to
// `wait`. `client` is a Store or a DaemonClient.
template <typename Client>
Status SavePrompt(Client& client, NamespaceHandle ns, TestEngine& e, uint32_t id, uint32_t chunks, uint32_t first,
                  std::chrono::nanoseconds wait) {
  const std::vector<int32_t> tokens = Prompt(id, chunks * kChunkTokens);
  FillPrompt(e, KeysOf(Spec(), tokens), Blocks(first, chunks * kBpc));
  Result<Ticket> t = client.Save(ns, tokens, Blocks(first, chunks * kBpc), {}, {});
  if (!t.ok()) return t.status();
  return t->Wait(wait);
}

// Loads prompt `id` into zeroed blocks [first, ...), waiting up to `wait`: `*done` chunks
// came, and `*intact` says whether each of them holds exactly what was saved (true when
// none came).
template <typename Client>
Status LoadPrompt(Client& client, NamespaceHandle ns, TestEngine& e, uint32_t id, uint32_t chunks, uint32_t first,
                  std::chrono::nanoseconds wait, uint32_t* done, bool* intact) {
  const std::vector<int32_t> tokens = Prompt(id, chunks * kChunkTokens);
  for (uint32_t b = first; b < first + chunks * kBpc; ++b) e.Zero(b);
  *done = 0;
  *intact = true;
  Result<Ticket> t = client.Load(ns, tokens, Blocks(first, chunks * kBpc), {}, {});
  if (!t.ok()) return t.status();
  Status st = t->Wait(wait);
  *done = t->chunks_done();
  *intact = HoldsPrompt(e, KeysOf(Spec(), tokens), Blocks(first, chunks * kBpc), *done);
  return st;
}

// Polls `pred` until it holds (true) or `limit` passes (false).
template <typename Pred>
bool Eventually(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const std::chrono::steady_clock::time_point end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// Traffic for a daemon to die under: on a thread of its own, saves a two-chunk prompt (a new
// one each round) from blocks [0, 8) and loads it back into blocks [32, 40), over and over
// until Stop. Counts loads that came whole, loads that did not, loads that reported chunks
// whose bytes were wrong, and saves and loads that ran past `wait` (a gone daemon must fail
// calls, not hang them). `client`, `ns` and `e` must outlive it.
class SaveLoadTraffic {
 public:
  template <typename Client>
  SaveLoadTraffic(Client& client, NamespaceHandle ns, TestEngine& e, std::chrono::nanoseconds wait)
      : thread_([this, &client, ns, &e, wait] { Run(client, ns, e, wait); }) {}
  SaveLoadTraffic(const SaveLoadTraffic&) = delete;
  SaveLoadTraffic& operator=(const SaveLoadTraffic&) = delete;
  ~SaveLoadTraffic() { Stop(); }

  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  std::atomic<uint32_t> loaded{0}, failed{0}, wrong{0}, stuck{0};

 private:
  template <typename Client>
  void Run(Client& client, NamespaceHandle ns, TestEngine& e, std::chrono::nanoseconds wait) {
    for (uint32_t i = 0; !stop_.load(); ++i) {
      const uint32_t id = 500 + i;
      Status s = SavePrompt(client, ns, e, id, 2, 0, wait);
      if (s.code() == Status::Code::kTimedOut) ++stuck;
      uint32_t done = 0;
      bool intact = true;
      Status l = LoadPrompt(client, ns, e, id, 2, 32, wait, &done, &intact);
      if (l.code() == Status::Code::kTimedOut) ++stuck;
      if (!intact) ++wrong;
      if (l.ok() && done == 2) {
        ++loaded;
      } else {
        ++failed;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
  }

  std::atomic<bool> stop_{false};
  std::thread thread_;  // last: it starts once the counters exist
};

// ---- child processes ---------------------------------------------------------------------

// Where a child's stdout or stderr goes: where this process's goes (no path), or into a
// file, created when missing and emptied first unless `append`.
struct Redirect {
  std::string path;
  bool append = false;
};

struct SpawnOptions {
  std::vector<std::string> env;  // NAME=value, added to this process's environment
  std::string drop_env_prefix;   // this process's variables whose names start with it are left out
  Redirect out;                  // stdout
  Redirect err;                  // stderr
};

// Starts `exe` with argv {exe, args...}: its pid, or -1 when it could not be started.
inline pid_t Spawn(const std::string& exe, const std::vector<std::string>& args, const SpawnOptions& options = {}) {
  std::vector<std::string> argv_s = {exe};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string& drop = options.drop_env_prefix;
  std::vector<std::string> env_s;
  for (char** e = environ; *e != nullptr; ++e)
    if (drop.empty() || std::strncmp(*e, drop.c_str(), drop.size()) != 0) env_s.emplace_back(*e);
  env_s.insert(env_s.end(), options.env.begin(), options.env.end());
  std::vector<char*> envp;
  for (std::string& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  for (const auto& [fd, to] : {std::pair{STDOUT_FILENO, &options.out}, std::pair{STDERR_FILENO, &options.err}})
    if (!to->path.empty())
      posix_spawn_file_actions_addopen(&actions, fd, to->path.c_str(),
                                       O_WRONLY | O_CREAT | (to->append ? O_APPEND : O_TRUNC), 0644);
  pid_t pid = -1;
  const int r = ::posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  return r == 0 ? pid : -1;
}

// Waits for child `pid` to end: its exit status, 128 + the signal that ended it, or -1 when
// it is no child (pid <= 0 too), or runs past `limit` (then it is killed and reaped).
inline int WaitExit(pid_t pid, std::chrono::milliseconds limit) {
  if (pid <= 0) return -1;  // never waitpid or kill a process group, or every process
  const std::chrono::steady_clock::time_point end = std::chrono::steady_clock::now() + limit;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0 && errno != EINTR) return -1;
    if (std::chrono::steady_clock::now() > end) {
      ::kill(pid, SIGKILL);
      (void)::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace kvtier::test

#endif  // KVTIER_TESTS_DAEMON_HARNESS_H_
