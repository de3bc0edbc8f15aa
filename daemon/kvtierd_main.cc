// kvtierd: the node cache daemon. One Store per tenant, served on a Unix socket
// (DaemonServer), with Prometheus metrics and one structured log line per event on stderr.
//
//   kvtierd [--config FILE] [--set section.key=value]... [--check-config] [--print-config]
//
// Signals: SIGTERM and SIGINT stop it: the server stops (clients see Unavailable), every
// Store's host-only chunks are flushed to NVMe, the Stores close, and it exits 0 (1 when a
// flush failed). A second SIGTERM/SIGINT during that exits at once with 1: what was not
// flushed yet is lost, and the NVMe metadata stays consistent (data is written before its
// record). SIGHUP is logged; reloading the config is not supported yet.
//
// Threads: signals are blocked before any thread starts and taken by sigwaitinfo on the
// main thread; nothing runs in a signal handler. The shutdown runs on a thread of its own
// so that the main thread can still take a second signal.
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "daemon/config.h"
#include "daemon/metrics.h"
#include "daemon/server.h"
#include "kvtier/status.h"
#include "kvtier/store.h"

#ifndef KVTIER_VERSION_STRING
#define KVTIER_VERSION_STRING "unknown"
#endif

extern char** environ;

namespace kvtier {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kUsage =
    "usage: kvtierd [--config FILE] [--set section.key=value]... [--check-config] [--print-config]\n"
    "\n"
    "The kvtier node cache daemon: one Store per tenant, served on a Unix socket.\n"
    "\n"
    "  --config FILE      read the configuration from FILE (TOML; see kvtierd.example.toml)\n"
    "  --set KEY=VALUE    set one key, over the file and the environment (repeatable),\n"
    "                     e.g. --set host.capacity=8GiB --set tenants.acme.token_file=/etc/kvtier/acme.token\n"
    "  --check-config     check the configuration, print \"config ok\" or every problem, exit 0 or 1\n"
    "  --print-config     print the effective configuration (tokens masked) and exit\n"
    "  --version          print the version and exit\n"
    "  --help             this text\n"
    "\n"
    "Environment: KVTIERD_<SECTION>__<KEY>=value sets section.key (KVTIERD_HOST__CAPACITY=4GiB);\n"
    "precedence: defaults < config file < environment < --set.\n"
    "Signals: SIGTERM/SIGINT flush host-only chunks to NVMe and exit; SIGHUP is logged (no reload yet).\n";

// ---- structured log: one line per event, key=value ----------------------------------------

std::string LogValue(std::string_view v) {
  bool plain = !v.empty();
  for (char c : v) plain = plain && c > ' ' && c != '"' && c != '=' && c != '\\' && c != 0x7f;
  if (plain) return std::string(v);
  std::string o = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += c;
    } else if (c == '\n') {
      o += "\\n";
    } else if (static_cast<unsigned char>(c) < ' ') {
      o += ' ';
    } else {
      o += c;
    }
  }
  return o + "\"";
}

// Thread-safe: the line goes out in one write.
void Log(const char* level, const char* event, std::initializer_list<std::pair<std::string_view, std::string>> kv) {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  tm utc{};
  ::gmtime_r(&ts.tv_sec, &utc);
  char when[96];
  std::snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, ts.tv_nsec / 1000000);
  std::string line = std::string("ts=") + when + " level=" + level + " event=" + event;
  for (const auto& [k, v] : kv) line += " " + std::string(k) + "=" + LogValue(v);
  line += "\n";
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

std::string TenantLabel(const std::string& name) { return name.empty() ? "\"\"" : name; }

std::string Seconds(Clock::duration d) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f", std::chrono::duration<double>(d).count());
  return buf;
}

const char* SignalName(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
  }
  return "signal";
}

// ---- arguments ------------------------------------------------------------------------------

struct Args {
  ConfigSources sources;
  bool check = false;
  bool print = false;
  bool help = false;
  bool version = false;
};

// Exits 2 on a malformed command line.
Args ParseArgs(int argc, char** argv) {
  Args a;
  auto need = [&](int& i, const std::string& flag) -> std::string {
    if (i + 1 >= argc) {
      std::fprintf(stderr, "kvtierd: %s needs a value; see --help\n", flag.c_str());
      std::exit(2);
    }
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--config") {
      a.sources.file = need(i, arg);
    } else if (arg.starts_with("--config=")) {
      a.sources.file = arg.substr(9);
    } else if (arg == "--set") {
      a.sources.sets.push_back(need(i, arg));
    } else if (arg.starts_with("--set=")) {
      a.sources.sets.push_back(arg.substr(6));
    } else if (arg == "--check-config") {
      a.check = true;
    } else if (arg == "--print-config") {
      a.print = true;
    } else if (arg == "--help" || arg == "-h") {
      a.help = true;
    } else if (arg == "--version") {
      a.version = true;
    } else {
      std::fprintf(stderr, "kvtierd: unknown argument '%s'; see --help\n", arg.c_str());
      std::exit(2);
    }
  }
  for (char** e = environ; *e != nullptr; ++e) a.sources.environment.emplace_back(*e);
  return a;
}

// ---- the daemon -----------------------------------------------------------------------------

struct TenantStore {
  std::string name;
  std::unique_ptr<Store> store;
};

// Opens every tenant's Store; on failure the ones opened are closed by their destructors.
Result<std::vector<TenantStore>> OpenStores(const DaemonConfig& config) {
  std::vector<TenantStore> out;
  for (const TenantConfig& t : config.tenants) {
    const StoreConfig sc = TenantStoreConfig(config, t);
    const Clock::time_point t0 = Clock::now();
    Result<std::unique_ptr<Store>> s = Store::Open(sc);
    if (!s.ok()) return s.status().WithContext("tenant " + TenantLabel(t.name) + ": ");
    const StoreStats st = (*s)->Stats();
    std::string nvme = "off";
    if (sc.nvme.enabled) {
      nvme.clear();
      for (const std::string& p : sc.nvme.paths) nvme += (nvme.empty() ? "" : ",") + p;
    }
    Log("info", "store_open",
        {{"tenant", t.name},
         {"host_capacity", FormatSize(st.host_capacity_bytes)},
         {"huge_pages", st.huge_pages},
         {"nvme", nvme},
         {"nvme_capacity", FormatSize(st.nvme_capacity_bytes)},
         {"nvme_io", st.nvme_io_backend.empty() ? "-" : st.nvme_io_backend},
         {"recovered_chunks", std::to_string(st.recovered_chunks)},
         {"redis", sc.redis.enabled ? sc.redis.key_prefix : "off"},
         {"seconds", Seconds(Clock::now() - t0)}});
    out.push_back(TenantStore{t.name, std::move(*s)});
  }
  return out;
}

int Run(const DaemonConfig& config, const std::string& config_file, const sigset_t& signals) {
  Log("info", "starting",
      {{"version", KVTIER_VERSION_STRING},
       {"pid", std::to_string(::getpid())},
       {"config", config_file.empty() ? "-" : config_file},
       {"tenants", std::to_string(config.tenants.size())}});
  Result<std::vector<TenantStore>> opened = OpenStores(config);
  if (!opened.ok()) {
    Log("error", "store_open_failed", {{"error", opened.status().ToString()}});
    return 1;
  }
  std::vector<TenantStore> stores = std::move(*opened);

  std::map<std::string, DaemonTenant> tenants;
  for (size_t i = 0; i < stores.size(); ++i) {
    const TenantConfig& t = config.tenants[i];
    tenants[t.name] = DaemonTenant{t.token, t.models, stores[i].store.get()};
  }
  DaemonServer server(std::move(tenants), config.server);
  std::atomic<bool> serving{false};
  const Clock::time_point t_start = Clock::now();

  // Metrics first: a failure to bind them stops kvtierd before any client saved anything.
  MetricsServer::Handlers handlers;
  handlers.metrics = [&] {
    DaemonMetrics m;
    for (const TenantStore& t : stores) m.tenants.push_back(TenantStats{t.name, t.store->Stats()});
    m.server = server.counters();
    m.version = KVTIER_VERSION_STRING;
    m.uptime_seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
    return RenderPrometheus(m);
  };
  handlers.health = [&]() -> Status {
    if (!serving.load()) return Status::Unavailable("kvtierd is not serving (starting or shutting down)");
    for (const TenantStore& t : stores) {
      Result<SharedRegion> r = t.store->SharedHostRegion();
      if (!r.ok()) return r.status().WithContext("tenant " + TenantLabel(t.name) + ": ");
    }
    return Status::OK();
  };
  MetricsServer metrics(handlers);
  if (!config.metrics_listen.empty()) {
    Status st = metrics.Start(config.metrics_listen);
    if (!st.ok()) {
      Log("error", "metrics_failed", {{"listen", config.metrics_listen}, {"error", st.ToString()}});
      return 1;
    }
  }
  Status started = server.Start(config.socket);
  if (!started.ok()) {
    Log("error", "listen_failed", {{"socket", config.socket}, {"error", started.ToString()}});
    return 1;
  }
  serving = true;
  Log("info", "ready",
      {{"socket", config.socket},
       {"metrics", metrics.address().empty() ? "off" : metrics.address()},
       {"tenants", std::to_string(stores.size())}});

  int sig = 0;
  for (;;) {
    siginfo_t info{};
    sig = ::sigwaitinfo(&signals, &info);
    if (sig < 0) continue;  // EINTR
    if (sig == SIGHUP) {
      Log("warn", "reload_unsupported",
          {{"signal", "SIGHUP"}, {"msg", "reload not supported yet; restart kvtierd to apply a new config"}});
      continue;
    }
    break;
  }
  Log("info", "stopping", {{"signal", SignalName(sig)}});

  std::atomic<bool> done{false};
  std::atomic<int> code{0};
  std::thread shutdown([&] {
    serving = false;
    server.Stop();
    Log("info", "server_stopped", {{"socket", config.socket}});
    for (const TenantStore& t : stores) {
      const Clock::time_point t0 = Clock::now();
      Result<uint64_t> n = t.store->Flush();
      if (n.ok()) {
        Log("info", "flush",
            {{"tenant", t.name}, {"chunks", std::to_string(*n)}, {"seconds", Seconds(Clock::now() - t0)}});
      } else if (n.status().code() == Status::Code::kNotSupported) {
        Log("info", "flush", {{"tenant", t.name}, {"chunks", "0"}, {"skipped", n.status().message()}});
      } else {
        Log("error", "flush_failed", {{"tenant", t.name}, {"error", n.status().ToString()}});
        code = 1;
      }
    }
    metrics.Stop();
    for (const TenantStore& t : stores) {
      Status st = t.store->Close();
      if (!st.ok()) {
        Log("error", "close_failed", {{"tenant", t.name}, {"error", st.ToString()}});
        code = 1;
      }
    }
    done = true;
  });
  const timespec tick{0, 100 * 1000 * 1000};
  while (!done.load()) {
    siginfo_t info{};
    const int again = ::sigtimedwait(&signals, &info, &tick);
    if (again == SIGTERM || again == SIGINT) {
      Log("warn", "forced_exit",
          {{"signal", SignalName(again)}, {"msg", "second signal during shutdown: exiting before the flush is done"}});
      std::_Exit(1);
    }
    if (again == SIGHUP) Log("warn", "reload_unsupported", {{"signal", "SIGHUP"}, {"msg", "shutting down"}});
  }
  shutdown.join();
  Log("info", "exit", {{"code", std::to_string(code.load())}});
  return code.load();
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) {
  using namespace kvtier;
  // Before any thread exists, so that every thread inherits the mask and only sigwaitinfo
  // on the main thread takes these signals.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  const Args args = ParseArgs(argc, argv);
  if (args.help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (args.version) {
    std::printf("kvtierd %s\n", KVTIER_VERSION_STRING);
    return 0;
  }
  Result<DaemonConfig> config = LoadDaemonConfig(args.sources);
  if (!config.ok()) {
    const std::string& msg = config.status().message();
    size_t lines = 1;
    for (char c : msg) lines += c == '\n' ? 1 : 0;
    std::fprintf(stderr, "kvtierd: the configuration has %zu problem%s:\n", lines, lines == 1 ? "" : "s");
    size_t start = 0;
    for (;;) {
      const size_t nl = msg.find('\n', start);
      std::fprintf(stderr, "  %s\n",
                   msg.substr(start, nl == std::string::npos ? std::string::npos : nl - start).c_str());
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
    return 1;
  }
  if (args.print) std::fputs(PrintDaemonConfig(*config).c_str(), stdout);
  if (args.check) std::puts("config ok");
  if (args.print || args.check) return 0;
  return Run(*config, args.sources.file, signals);
}
