// kvtierd as a process: the built binary (KVTIERD_PATH) started with posix_spawn on a
// config file, spoken to by Store::Connect clients in this process, stopped with SIGTERM
// or SIGKILL, and started again on the same files.
//
// The NVMe files go under $KVTIER_TEST_DIR, else under the build directory: O_DIRECT needs
// a block-backed filesystem, and /tmp may be tmpfs. Sockets go under /tmp (a short path).
// Metrics are off, so that runs in parallel never compete for a port.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kvtier/store.h"
#include "tests/daemon_harness.h"
#include "tests/temp_dir.h"
#include "tests/test_engine.h"

namespace kvtier {
namespace {

using test::Blocks;
using test::ClientConfig;
using test::ConnectWithin;
using test::Eventually;
using test::kBlockTokens;
using test::kBpc;
using test::kChunkTokens;
using test::kEngineBlocks;
using test::LoadPrompt;
using test::Prompt;
using test::SavePrompt;
using test::Shape;
using test::Spec;
using test::TestEngine;
using Clock = std::chrono::steady_clock;

constexpr std::chrono::seconds kWait{10};
const char* const kTokenA = "token-of-tenant-a-0123456789";
const char* const kTokenB = "token-of-tenant-b-0123456789";

std::string ScratchRoot() {
  const char* v = std::getenv("KVTIER_TEST_DIR");
  std::string root = v != nullptr && *v != '\0' ? v : KVTIERD_TEST_SCRATCH;
  std::error_code ec;
  std::filesystem::create_directories(root, ec);
  return root;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// A kvtierd process; killed (SIGKILL) if still running when this goes away.
class Kvtierd {
 public:
  Kvtierd() = default;
  Kvtierd(const Kvtierd&) = delete;
  Kvtierd& operator=(const Kvtierd&) = delete;
  ~Kvtierd() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      (void)::waitpid(pid_, &st, 0);
    }
  }

  // Starts kvtierd with `args`; stdout goes to out_path, stderr is appended to err_path.
  // `env` is added to this process's environment, whose KVTIERD_* variables are left out.
  bool Start(const std::vector<std::string>& args, const std::string& out_path, const std::string& err_path,
             const std::vector<std::string>& env = {}) {
    err_path_ = err_path;
    test::SpawnOptions options;
    options.env = env;
    options.drop_env_prefix = "KVTIERD_";  // the test's config alone
    options.out.path = out_path;
    options.err = {err_path, /*append=*/true};
    pid_ = test::Spawn(KVTIERD_PATH, args, options);
    return pid_ > 0;
  }

  // The exit status (128 + signal when killed), or -1 when it runs past `limit` (then it is killed).
  int Wait(std::chrono::milliseconds limit) {
    const int code = test::WaitExit(pid_, limit);
    pid_ = -1;
    return code;
  }

  bool Signal(int sig) { return pid_ > 0 && ::kill(pid_, sig) == 0; }

  // Waits until kvtierd's log holds `text`; false when it exits or `limit` passes first.
  bool WaitForLog(const std::string& text, std::chrono::seconds limit = std::chrono::seconds(15)) {
    const Clock::time_point end = Clock::now() + limit;
    while (Clock::now() < end) {
      if (Log().find(text) != std::string::npos) return true;
      int st = 0;
      if (pid_ > 0 && ::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        return Log().find(text) != std::string::npos;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  std::string Log() const { return ReadFile(err_path_); }

 private:
  pid_t pid_ = -1;
  std::string err_path_;
};

// Runs kvtierd to its end: exit status, stdout, stderr.
struct Ran {
  int code = -1;
  std::string out, err;
};
Ran RunKvtierd(const std::string& dir, const std::vector<std::string>& args) {
  Kvtierd d;
  Ran r;
  const std::string out = dir + "/run.out", err = dir + "/run.err";
  ::unlink(err.c_str());
  if (!d.Start(args, out, err)) return r;
  r.code = d.Wait(std::chrono::seconds(20));
  r.out = ReadFile(out);
  r.err = ReadFile(err);
  return r;
}

// A config for tenants a (models acme/) and b (any), host tier small, NVMe under `dir`.
std::string Config(const std::string& socket, const std::string& dir, const std::string& extra = "") {
  return "socket = \"" + socket + "\"\n" +
         "[metrics]\nlisten = \"\"\n"
         "[host]\ncapacity = \"8MiB\"\nhuge_pages = \"off\"\n"
         "[store]\nworker_threads = 1\n"
         "[nvme]\nenabled = true\npaths = [\"" +
         dir +
         "/nvme/kv.data\"]\ncapacity = \"32MiB\"\n"
         "write_policy = \"write_back\"\n" +
         extra + "[tenants.a]\ntoken = \"" + kTokenA +
         "\"\nmodels = [\"acme/\"]\n"
         "[tenants.b]\ntoken = \"" +
         kTokenB + "\"\n";
}

struct Dirs {
  test::TempDir data{ScratchRoot()};
  test::TempDir sockets{"/tmp"};
  std::string socket() const { return sockets.File("kvtierd.sock"); }
};

// ---- tests ---------------------------------------------------------------------------------

TEST(Kvtierd, CheckConfigSaysOkOrNamesTheKey) {
  Dirs d;
  ASSERT_TRUE(d.data.ok() && d.sockets.ok());
  const std::string good = d.data.File("good.toml");
  WriteFile(good, Config(d.socket(), d.data.path()));
  Ran ok = RunKvtierd(d.data.path(), {"--config", good, "--check-config"});
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_EQ(ok.out, "config ok\n");
  EXPECT_EQ(::access(d.socket().c_str(), F_OK), -1) << "--check-config must not start serving";

  const std::string bad = d.data.File("bad.toml");
  WriteFile(bad, Config(d.socket(), d.data.path(), "queue_depth = 0\n"));  // line 14, in [nvme]
  Ran no = RunKvtierd(d.data.path(), {"--config", bad, "--check-config"});
  EXPECT_EQ(no.code, 1);
  EXPECT_NE(no.err.find(bad + ":14: nvme.queue_depth = 0: out of range; allowed: an integer in 1..4096"),
            std::string::npos)
      << no.err;
  EXPECT_EQ(no.out.find("config ok"), std::string::npos);
  // Started for real on a bad config: the same refusal, nothing served.
  Ran run = RunKvtierd(d.data.path(), {"--config", bad});
  EXPECT_EQ(run.code, 1);
  EXPECT_NE(run.err.find("nvme.queue_depth"), std::string::npos) << run.err;

  // A flag over the file, and an unknown key from a flag.
  Ran flagged = RunKvtierd(d.data.path(), {"--config", bad, "--set", "nvme.queue_depth=8", "--check-config"});
  EXPECT_EQ(flagged.code, 0) << flagged.err;
  Ran unknown = RunKvtierd(d.data.path(), {"--config", good, "--set=nvme.queue_dept=8", "--check-config"});
  EXPECT_EQ(unknown.code, 1);
  EXPECT_NE(unknown.err.find("--set: unknown key nvme.queue_dept (= \"8\"); did you mean nvme.queue_depth?"),
            std::string::npos)
      << unknown.err;

  // The example config checks, given a token file that exists.
  const std::string token = d.data.File("acme.token");
  WriteFile(token, std::string(kTokenA) + "\n");
  Ran example = RunKvtierd(d.data.path(), {"--config", KVTIERD_EXAMPLE_CONFIG, "--set",
                                           "tenants.acme.token_file=" + token, "--check-config", "--print-config"});
  EXPECT_EQ(example.code, 0) << example.err;
  EXPECT_NE(example.out.find("[tenants.acme]\ntoken_file = \"" + token + "\""), std::string::npos) << example.out;
  EXPECT_EQ(example.out.find(kTokenA), std::string::npos) << "a token is printed";

  Ran print = RunKvtierd(d.data.path(), {"--config", good, "--print-config"});
  EXPECT_EQ(print.code, 0) << print.err;
  EXPECT_NE(print.out.find("[tenants.a]\ntoken = \"********\""), std::string::npos) << print.out;
  EXPECT_EQ(print.out.find(kTokenA), std::string::npos);

  Ran usage = RunKvtierd(d.data.path(), {"--bogus"});
  EXPECT_EQ(usage.code, 2);
  EXPECT_NE(usage.err.find("unknown argument '--bogus'"), std::string::npos);
  Ran help = RunKvtierd(d.data.path(), {"--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("--check-config"), std::string::npos);
}

TEST(Kvtierd, SigtermFlushesToNvmeAndARestartServesTheChunks) {
  Dirs d;
  ASSERT_TRUE(d.data.ok() && d.sockets.ok());
  const std::string config = d.data.File("kvtierd.toml");
  WriteFile(config, Config(d.socket(), d.data.path()));
  const std::string log = d.data.File("kvtierd.log");
  constexpr uint32_t kPrompts = 3, kChunks = 3;
  {
    Kvtierd daemon;
    ASSERT_TRUE(daemon.Start({"--config", config}, d.data.File("out"), log));
    ASSERT_TRUE(daemon.WaitForLog("event=ready")) << daemon.Log();
    Result<std::unique_ptr<Store>> c = ConnectWithin<Store>(ClientConfig(d.socket(), "a", kTokenA));
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    TestEngine e(Shape(), kBlockTokens, kEngineBlocks);
    Result<NamespaceHandle> ns = (*c)->RegisterNamespace(Spec(), e.layout);
    ASSERT_TRUE(ns.ok()) << ns.status().ToString();
    for (uint32_t p = 0; p < kPrompts; ++p)
      ASSERT_TRUE(SavePrompt(**c, *ns, e, 10 + p, kChunks, p * kChunks * kBpc, kWait).ok());
    Result<LookupResult> l = (*c)->Lookup(*ns, Prompt(10, kChunks * kChunkTokens));
    ASSERT_TRUE(l.ok());
    ASSERT_EQ(l->cached_chunks, kChunks);
    EXPECT_EQ(l->chunk_tiers[0], TierId::kHost);  // write-back: nothing on NVMe yet
    EXPECT_EQ((*c)->Stats().nvme_chunks, 0u);

    // SIGHUP is logged, and kvtierd keeps serving.
    ASSERT_TRUE(daemon.Signal(SIGHUP));
    ASSERT_TRUE(daemon.WaitForLog("event=reload_unsupported")) << daemon.Log();
    ASSERT_TRUE((*c)->Lookup(*ns, Prompt(10, kChunkTokens)).ok());

    const Clock::time_point t0 = Clock::now();
    ASSERT_TRUE(daemon.Signal(SIGTERM));
    EXPECT_EQ(daemon.Wait(std::chrono::seconds(15)), 0) << daemon.Log();
    EXPECT_LT(Clock::now() - t0, std::chrono::seconds(15));
    const std::string text = daemon.Log();
    EXPECT_NE(text.find("event=stopping signal=SIGTERM"), std::string::npos) << text;
    EXPECT_NE(text.find("event=flush tenant=a chunks=9 "), std::string::npos) << text;
    EXPECT_NE(text.find("event=flush tenant=b chunks=0 "), std::string::npos) << text;
    EXPECT_NE(text.find("event=exit code=0"), std::string::npos) << text;
    // The client sees a daemon that is gone, fast.
    const Clock::time_point t1 = Clock::now();
    EXPECT_EQ((*c)->Lookup(*ns, Prompt(10, kChunkTokens)).status().code(), Status::Code::kUnavailable);
    EXPECT_LT(Clock::now() - t1, std::chrono::seconds(1));
  }
  EXPECT_EQ(::access(d.socket().c_str(), F_OK), -1) << "the socket file is left behind";
  // Tenant a's files sit in its own subdirectory.
  EXPECT_EQ(::access((d.data.path() + "/nvme/a/kv.data").c_str(), F_OK), 0);
  EXPECT_EQ(::access((d.data.path() + "/nvme/b/kv.data").c_str(), F_OK), 0);

  Kvtierd again;
  ASSERT_TRUE(again.Start({"--config", config}, d.data.File("out2"), d.data.File("kvtierd-again.log")));
  ASSERT_TRUE(again.WaitForLog("event=store_open tenant=a ")) << again.Log();
  EXPECT_NE(again.Log().find("recovered_chunks=9 "), std::string::npos) << again.Log();
  Result<std::unique_ptr<Store>> c = ConnectWithin<Store>(ClientConfig(d.socket(), "a", kTokenA));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  TestEngine e(Shape(), kBlockTokens, kEngineBlocks);
  Result<NamespaceHandle> ns = (*c)->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok()) << ns.status().ToString();
  for (uint32_t p = 0; p < kPrompts; ++p) {
    Result<LookupResult> l = (*c)->Lookup(*ns, Prompt(10 + p, kChunks * kChunkTokens));
    ASSERT_TRUE(l.ok()) << l.status().ToString();
    EXPECT_EQ(l->cached_chunks, kChunks) << "prompt " << p;
    ASSERT_EQ(l->chunk_tiers.size(), kChunks);
    EXPECT_EQ(l->chunk_tiers[0], TierId::kNvme);
    uint32_t done = 0;
    bool intact = false;
    Status st = LoadPrompt(**c, *ns, e, 10 + p, kChunks, 128 + p * kChunks * kBpc, kWait, &done, &intact);
    EXPECT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(done, kChunks);
    EXPECT_TRUE(intact) << "prompt " << p << " came back with other bytes";
  }
  EXPECT_EQ((*c)->Stats().recovered_chunks, uint64_t{kPrompts} * kChunks);
  EXPECT_TRUE((*c)->Close().ok());
  ASSERT_TRUE(again.Signal(SIGINT));
  EXPECT_EQ(again.Wait(std::chrono::seconds(15)), 0) << again.Log();
}

TEST(Kvtierd, TenantsAreIsolatedAndTokensChecked) {
  Dirs d;
  ASSERT_TRUE(d.data.ok() && d.sockets.ok());
  const std::string config = d.data.File("kvtierd.toml");
  WriteFile(config, Config(d.socket(), d.data.path()));
  Kvtierd daemon;
  ASSERT_TRUE(daemon.Start({"--config", config}, d.data.File("out"), d.data.File("kvtierd.log")));
  ASSERT_TRUE(daemon.WaitForLog("event=ready")) << daemon.Log();

  Result<std::unique_ptr<Store>> a = ConnectWithin<Store>(ClientConfig(d.socket(), "a", kTokenA));
  Result<std::unique_ptr<Store>> b = ConnectWithin<Store>(ClientConfig(d.socket(), "b", kTokenB));
  ASSERT_TRUE(a.ok() && b.ok()) << a.status().ToString() << " " << b.status().ToString();
  TestEngine ea(Shape(), kBlockTokens, kEngineBlocks), eb(Shape(), kBlockTokens, kEngineBlocks);
  Result<NamespaceHandle> na = (*a)->RegisterNamespace(Spec(), ea.layout);
  Result<NamespaceHandle> nb = (*b)->RegisterNamespace(Spec(), eb.layout);
  ASSERT_TRUE(na.ok() && nb.ok());
  ASSERT_TRUE(SavePrompt(**a, *na, ea, 7, 3, 0, kWait).ok());

  const std::vector<int32_t> tokens = Prompt(7, 3 * kChunkTokens);
  Result<LookupResult> la = (*a)->Lookup(*na, tokens);
  Result<LookupResult> lb = (*b)->Lookup(*nb, tokens);
  ASSERT_TRUE(la.ok() && lb.ok());
  EXPECT_EQ(la->cached_chunks, 3u);
  EXPECT_EQ(lb->cached_chunks, 0u) << "tenant b sees tenant a's chunks";
  uint32_t done = 0;
  bool intact = false;
  EXPECT_EQ(LoadPrompt(**b, *nb, eb, 7, 3, 100, kWait, &done, &intact).code(), Status::Code::kNotFound);
  EXPECT_EQ(done, 0u);
  for (uint32_t blk = 100; blk < 100 + 3 * kBpc; ++blk) EXPECT_TRUE(eb.IsZero(blk));
  EXPECT_EQ((*b)->Stats().saved_chunks, 0u);
  EXPECT_EQ((*a)->Stats().saved_chunks, 3u);
  Result<std::vector<NamespaceInfo>> list_b = (*b)->ListNamespaces();
  ASSERT_TRUE(list_b.ok());
  ASSERT_EQ(list_b->size(), 1u);
  EXPECT_EQ((*list_b)[0].chunks, 0u);

  // Tenant a may register only acme/ models.
  EXPECT_EQ((*a)->RegisterNamespace(Spec("other/model"), ea.layout).status().code(), Status::Code::kPermissionDenied);
  // Wrong tokens, another tenant's token, an unknown tenant, no tenant (no anonymous one).
  EXPECT_EQ(Store::Connect(ClientConfig(d.socket(), "a", "not-the-token-of-a-at-all")).status().code(),
            Status::Code::kPermissionDenied);
  EXPECT_EQ(Store::Connect(ClientConfig(d.socket(), "a", kTokenB)).status().code(), Status::Code::kPermissionDenied);
  EXPECT_EQ(Store::Connect(ClientConfig(d.socket(), "zz", kTokenA)).status().code(), Status::Code::kPermissionDenied);
  EXPECT_EQ(Store::Connect(ClientConfig(d.socket(), "", "")).status().code(), Status::Code::kPermissionDenied);

  // A second kvtierd on the same config is refused (its files are in use), and the first
  // one serves on.
  Ran second = RunKvtierd(d.data.path(), {"--config", config});
  EXPECT_EQ(second.code, 1) << second.err;
  EXPECT_NE(second.err.find("level=error event=store_open_failed"), std::string::npos) << second.err;
  EXPECT_TRUE((*a)->Lookup(*na, tokens).ok());

  EXPECT_TRUE((*a)->Close().ok());
  EXPECT_TRUE((*b)->Close().ok());
  ASSERT_TRUE(daemon.Signal(SIGTERM));
  EXPECT_EQ(daemon.Wait(std::chrono::seconds(15)), 0) << daemon.Log();
}

TEST(Kvtierd, TheAnonymousTenantFromFlagsAndEnvironment) {
  Dirs d;
  ASSERT_TRUE(d.data.ok() && d.sockets.ok());
  Kvtierd daemon;
  // No config file: the socket from the environment, the rest from flags.
  ASSERT_TRUE(daemon.Start({"--set", "allow_anonymous=true", "--set", "metrics.listen=", "--set", "host.capacity=8MiB",
                            "--set", "host.huge_pages=off", "--set", "store.worker_threads=1"},
                           d.data.File("out"), d.data.File("kvtierd.log"),
                           {"KVTIERD_SOCKET=" + d.socket(), "KVTIERD_HOST__CAPACITY=4GiB"}));
  ASSERT_TRUE(daemon.WaitForLog("event=ready")) << daemon.Log();
  EXPECT_NE(daemon.Log().find("event=store_open tenant=\"\" host_capacity=8MiB "), std::string::npos) << daemon.Log();
  Result<std::unique_ptr<Store>> c = ConnectWithin<Store>(ClientConfig(d.socket(), "", ""));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  TestEngine e(Shape(), kBlockTokens, kEngineBlocks);
  Result<NamespaceHandle> ns = (*c)->RegisterNamespace(Spec("any/model"), e.layout);
  ASSERT_TRUE(ns.ok()) << ns.status().ToString();
  EXPECT_EQ(Store::Connect(ClientConfig(d.socket(), "a", kTokenA)).status().code(), Status::Code::kPermissionDenied);
  EXPECT_TRUE((*c)->Close().ok());
  ASSERT_TRUE(daemon.Signal(SIGTERM));
  EXPECT_EQ(daemon.Wait(std::chrono::seconds(15)), 0) << daemon.Log();
  // No NVMe tier: nothing to flush, and the log says so.
  EXPECT_NE(daemon.Log().find("event=flush tenant=\"\" chunks=0 skipped="), std::string::npos) << daemon.Log();
}

TEST(Kvtierd, SigkillMidTrafficFailsFastAndRestartServesAgain) {
  Dirs d;
  ASSERT_TRUE(d.data.ok() && d.sockets.ok());
  const std::string config = d.data.File("kvtierd.toml");
  WriteFile(config, Config(d.socket(), d.data.path()));
  const std::string log = d.data.File("kvtierd.log");
  auto daemon = std::make_unique<Kvtierd>();
  ASSERT_TRUE(daemon->Start({"--config", config}, d.data.File("out"), log));
  ASSERT_TRUE(daemon->WaitForLog("event=ready")) << daemon->Log();
  Result<std::unique_ptr<Store>> cr = ConnectWithin<Store>(ClientConfig(d.socket(), "a", kTokenA));
  ASSERT_TRUE(cr.ok()) << cr.status().ToString();
  Store& c = **cr;
  TestEngine e(Shape(), kBlockTokens, kEngineBlocks);
  Result<NamespaceHandle> ns = c.RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok()) << ns.status().ToString();

  // Save a prompt, load it back, over and over; every chunk a load reports is checked.
  test::SaveLoadTraffic traffic(c, *ns, e, kWait);
  EXPECT_TRUE(Eventually([&] { return traffic.loaded.load() >= 5; }));
  ASSERT_TRUE(daemon->Signal(SIGKILL));
  EXPECT_EQ(daemon->Wait(std::chrono::seconds(10)), 128 + SIGKILL);

  for (int i = 0; i < 3; ++i) {
    const Clock::time_point t0 = Clock::now();
    Result<LookupResult> r = c.Lookup(*ns, Prompt(1, kChunkTokens));
    EXPECT_EQ(r.status().code(), Status::Code::kUnavailable) << r.status().ToString();
    EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(500));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const uint32_t failed_before = traffic.failed.load();
  EXPECT_TRUE(Eventually([&] { return traffic.failed.load() > failed_before + 3; })) << "traffic is not failing fast";

  // The same config again (the stale socket file is replaced): the client comes back by itself.
  daemon = std::make_unique<Kvtierd>();
  ASSERT_TRUE(daemon->Start({"--config", config}, d.data.File("out2"), log));
  EXPECT_TRUE(Eventually([&] { return c.Lookup(*ns, Prompt(1, kChunkTokens)).ok(); })) << daemon->Log();
  const uint32_t loaded_before = traffic.loaded.load();
  EXPECT_TRUE(Eventually([&] { return traffic.loaded.load() >= loaded_before + 5; })) << daemon->Log();
  traffic.Stop();
  EXPECT_EQ(traffic.wrong.load(), 0u) << "a load reported chunks whose bytes were wrong";
  EXPECT_EQ(traffic.stuck.load(), 0u) << "a save or load ran past its wait";
  EXPECT_TRUE(c.Close().ok());
  ASSERT_TRUE(daemon->Signal(SIGTERM));
  EXPECT_EQ(daemon->Wait(std::chrono::seconds(15)), 0) << daemon->Log();
}

}  // namespace
}  // namespace kvtier

namespace kvtier {
namespace {

#ifdef KVTIER_CLI_PATH
// Runs the kvtier CLI to its end (20 s at most): exit status, stdout, stderr.
Ran RunCli(const std::string& dir, const std::vector<std::string>& args) {
  Ran r;
  test::SpawnOptions options;
  options.out.path = dir + "/cli.out";
  options.err.path = dir + "/cli.err";
  const pid_t pid = test::Spawn(KVTIER_CLI_PATH, args, options);
  if (pid < 0) return r;
  r.code = test::WaitExit(pid, std::chrono::seconds(20));
  r.out = ReadFile(options.out.path);
  r.err = ReadFile(options.err.path);
  return r;
}

// `kvtier ls` and `kvtier stats` against a running kvtierd: the tenant's namespaces with
// chunk counts per tier, its counters; a wrong token and a dead daemon are clear errors.
TEST(Kvtierd, CliLsAndStatsTalkToTheDaemon) {
  Dirs d;
  ASSERT_TRUE(d.data.ok() && d.sockets.ok());
  const std::string config = d.data.File("kvtierd.toml");
  WriteFile(config, Config(d.socket(), d.data.path()));
  Kvtierd daemon;
  ASSERT_TRUE(daemon.Start({"--config", config}, d.data.File("out"), d.data.File("kvtierd.log")));
  ASSERT_TRUE(daemon.WaitForLog("event=ready")) << daemon.Log();
  Result<std::unique_ptr<Store>> a = ConnectWithin<Store>(ClientConfig(d.socket(), "a", kTokenA));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  TestEngine e(Shape(), kBlockTokens, kEngineBlocks);
  Result<NamespaceHandle> ns = (*a)->RegisterNamespace(Spec(), e.layout);
  ASSERT_TRUE(ns.ok());
  ASSERT_TRUE(SavePrompt(**a, *ns, e, 11, 3, 0, kWait).ok());

  const std::string address = "unix:" + d.socket();
  Ran ls = RunCli(d.data.path(), {"ls", "--daemon", address, "--tenant", "a", "--token", kTokenA, "--json"});
  EXPECT_EQ(ls.code, 0) << ls.err;
  EXPECT_NE(ls.out.find("\"model\": \"acme/llama-test\""), std::string::npos) << ls.out;
  EXPECT_NE(ls.out.find("\"chunks\": 3"), std::string::npos) << ls.out;
  EXPECT_NE(ls.out.find("\"host_chunks\": 3"), std::string::npos) << ls.out;
  Ran table = RunCli(d.data.path(), {"ls", "--daemon", address, "--tenant", "a", "--token", kTokenA});
  EXPECT_EQ(table.code, 0) << table.err;
  EXPECT_NE(table.out.find("acme/llama-test"), std::string::npos) << table.out;
  // Tenant b sees no chunks of a's (the namespace list is its own).
  Ran ls_b = RunCli(d.data.path(), {"ls", "--daemon", address, "--tenant", "b", "--token", kTokenB, "--json"});
  EXPECT_EQ(ls_b.code, 0) << ls_b.err;
  EXPECT_EQ(ls_b.out.find("\"chunks\": 3"), std::string::npos) << ls_b.out;

  Ran stats = RunCli(d.data.path(), {"stats", "--daemon", address, "--tenant", "a", "--token", kTokenA, "--json"});
  EXPECT_EQ(stats.code, 0) << stats.err;
  EXPECT_NE(stats.out.find("\"saved_chunks\": 3"), std::string::npos) << stats.out;
  EXPECT_NE(stats.out.find("\"nvme_enabled\": 1"), std::string::npos) << stats.out;

  Ran denied = RunCli(d.data.path(), {"stats", "--daemon", address, "--tenant", "a", "--token", kTokenB});
  EXPECT_EQ(denied.code, 1);
  EXPECT_NE(denied.err.find("ermission"), std::string::npos) << denied.err;

  EXPECT_TRUE((*a)->Close().ok());
  ASSERT_TRUE(daemon.Signal(SIGTERM));
  EXPECT_EQ(daemon.Wait(std::chrono::seconds(15)), 0) << daemon.Log();
  Ran gone = RunCli(d.data.path(), {"ls", "--daemon", address, "--tenant", "a", "--token", kTokenA});
  EXPECT_EQ(gone.code, 1);
  EXPECT_NE(gone.err.find(d.socket()), std::string::npos) << gone.err;
}
#else
TEST(Kvtierd, CliLsAndStatsTalkToTheDaemon) { GTEST_SKIP() << "the kvtier CLI is not built here (KVTIER_BUILD_BENCH=OFF)"; }
#endif

}  // namespace
}  // namespace kvtier
