// Real Redis servers for tests: started on free loopback ports in a temp directory, stopped
// (SIGKILL + wait) when the test is done. A test that needs Redis calls
// RedisServerMissing() and skips with its message when redis-server is not installed.
//
// Processes are started with posix_spawn (safe in a multi-threaded test process).
// Not thread-safe: one test thread drives a harness object.
#ifndef KVTIER_TESTS_REDIS_HARNESS_H_
#define KVTIER_TESTS_REDIS_HARNESS_H_

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/temp_dir.h"

extern char** environ;

namespace kvtier::test {

inline std::string FindExecutable(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    std::string p = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

// Empty when redis-server and redis-cli are there; else why the test must skip.
inline std::string RedisServerMissing() {
  if (FindExecutable("redis-server").empty()) return "redis-server is not installed (Debian package redis-server)";
  if (FindExecutable("redis-cli").empty()) return "redis-cli is not installed (Debian package redis-tools)";
  return "";
}

inline bool PortFree(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

// A free loopback port whose cluster bus port (+10000) is free too.
inline int FreePort() {
  for (int attempt = 0; attempt < 200; ++attempt) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    int port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
      port = ntohs(a.sin_port);
    ::close(fd);
    if (port > 1024 && port < 55000 && PortFree(port + 10000)) return port;
  }
  return 0;
}

inline pid_t Spawn(const std::vector<std::string>& argv, int stdout_fd) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (stdout_fd >= 0) {
    posix_spawn_file_actions_adddup2(&fa, stdout_fd, 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  } else {
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  }
  pid_t pid = -1;
  if (posix_spawnp(&pid, argv[0].c_str(), &fa, nullptr, args.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

// Runs a command, returns its stdout (trailing newlines removed).
inline std::string RunCapture(const std::vector<std::string>& argv) {
  int p[2];
  if (::pipe(p) != 0) return "";
  pid_t pid = Spawn(argv, p[1]);
  ::close(p[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(p[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(p[0]);
  if (pid > 0) {
    int st = 0;
    ::waitpid(pid, &st, 0);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

// redis-cli against 127.0.0.1:port (with -a password when given).
inline std::string RedisCli(int port, std::vector<std::string> args, const std::string& password = "") {
  std::vector<std::string> argv = {"redis-cli", "-h", "127.0.0.1", "-p", std::to_string(port)};
  if (!password.empty()) {
    argv.push_back("--no-auth-warning");
    argv.push_back("-a");
    argv.push_back(password);
  }
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCapture(argv);
}

class RedisServer {
 public:
  RedisServer() = default;
  ~RedisServer() { Kill(); }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  // Starts redis-server on a free port (or `port` when non-zero) and waits for PING.
  bool Start(const std::string& dir, std::vector<std::string> extra = {}, int port = 0) {
    port_ = port != 0 ? port : FreePort();
    if (port_ == 0) return false;
    dir_ = dir;
    extra_ = std::move(extra);
    return Restart();
  }
  // Starts again with the same port and arguments (after Kill).
  bool Restart() {
    std::vector<std::string> argv = {"redis-server", "--port", std::to_string(port_), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--dir", dir_, "--daemonize", "no",
                                     "--logfile", dir_ + "/redis-" + std::to_string(port_) + ".log",
                                     "--dbfilename", "dump-" + std::to_string(port_) + ".rdb"};
    argv.insert(argv.end(), extra_.begin(), extra_.end());
    pid_ = Spawn(argv, -1);
    if (pid_ <= 0) return false;
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < until) {
      std::string pong = RedisCli(port_, {"PING"}, password_);
      if (pong == "PONG" || pong.find("NOAUTH") != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  void set_password(const std::string& p) { password_ = p; }
  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
  }
  bool running() const { return pid_ > 0; }
  int port() const { return port_; }
  std::string addr() const { return "127.0.0.1:" + std::to_string(port_); }
  std::string Cli(std::vector<std::string> args) const { return RedisCli(port_, std::move(args), password_); }

 private:
  int port_ = 0;
  pid_t pid_ = -1;
  std::string dir_, password_;
  std::vector<std::string> extra_;
};

// Six servers (three masters, three replicas) made a cluster with redis-cli --cluster create.
class RedisClusterHarness {
 public:
  bool Start(const std::string& dir, int node_timeout_ms = 1000, int nodes = 6) {
    for (int i = 0; i < nodes; ++i) {
      auto s = std::make_unique<RedisServer>();
      int port = FreePort();
      if (!s->Start(dir, {"--cluster-enabled", "yes", "--cluster-config-file", dir + "/nodes-" + std::to_string(port) + ".conf",
                          "--cluster-node-timeout", std::to_string(node_timeout_ms),
                          // replicas sync at once (the default waits 5 s), so a failover can happen
                          "--repl-diskless-sync-delay", "0"},
                    port))
        return false;
      servers_.push_back(std::move(s));
    }
    std::vector<std::string> argv = {"redis-cli", "--cluster", "create"};
    for (auto& s : servers_) argv.push_back(s->addr());
    argv.insert(argv.end(), {"--cluster-replicas", "1", "--cluster-yes"});
    create_log_ = RunCapture(argv);
    return WaitOk(std::chrono::seconds(30)) && WaitReplicasInSync(std::chrono::seconds(30));
  }
  // Every replica's link to its master is up (it finished its first sync).
  bool WaitReplicasInSync(std::chrono::seconds limit) {
    auto until = std::chrono::steady_clock::now() + limit;
    for (;;) {
      bool ok = true;
      for (auto& s : servers_) {
        std::string info = s->Cli({"INFO", "replication"});
        if (info.find("role:slave") != std::string::npos && info.find("master_link_status:up") == std::string::npos) ok = false;
      }
      if (ok) return true;
      if (std::chrono::steady_clock::now() >= until) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  // Every running node reports cluster_state:ok and sees the same number of masters with slots.
  bool WaitOk(std::chrono::seconds limit) {
    auto until = std::chrono::steady_clock::now() + limit;
    for (;;) {
      bool ok = true;
      for (auto& s : servers_) {
        if (!s->running()) continue;
        std::string info = s->Cli({"CLUSTER", "INFO"});
        if (info.find("cluster_state:ok") == std::string::npos || info.find("cluster_slots_assigned:16384") == std::string::npos ||
            info.find("cluster_slots_ok:16384") == std::string::npos) {
          ok = false;
          break;
        }
      }
      if (ok) return true;
      if (std::chrono::steady_clock::now() >= until) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  // After a master was killed: every running node marks it failed (its replica took its
  // slots) and reports cluster_state:ok.
  bool WaitFailover(int dead_port, std::chrono::seconds limit) {
    auto until = std::chrono::steady_clock::now() + limit;
    const std::string needle = ":" + std::to_string(dead_port) + "@";
    while (std::chrono::steady_clock::now() < until) {
      bool ok = true;
      for (auto& s : servers_) {
        if (!s->running()) continue;
        std::stringstream nodes(s->Cli({"CLUSTER", "NODES"}));
        std::string line;
        bool marked = false;
        while (std::getline(nodes, line)) {
          std::stringstream ls(line);
          std::string id, addr, flags;
          ls >> id >> addr >> flags;
          if (addr.find(needle) != std::string::npos && flags.find("fail") != std::string::npos &&
              flags.find("fail?") == std::string::npos)
            marked = true;
        }
        if (!marked) {
          ok = false;
          break;
        }
      }
      if (ok && WaitOk(std::chrono::seconds(0))) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  std::vector<std::string> Seeds() const {
    std::vector<std::string> out;
    for (auto& s : servers_) out.push_back(s->addr());
    return out;
  }
  RedisServer* ByPort(int port) {
    for (auto& s : servers_)
      if (s->port() == port) return s.get();
    return nullptr;
  }
  // Lines of CLUSTER NODES from a running node.
  std::string Nodes() {
    for (auto& s : servers_)
      if (s->running()) return s->Cli({"CLUSTER", "NODES"});
    return "";
  }
  const std::string& create_log() const { return create_log_; }
  std::vector<std::unique_ptr<RedisServer>>& servers() { return servers_; }

 private:
  std::vector<std::unique_ptr<RedisServer>> servers_;
  std::string create_log_;
};

}  // namespace kvtier::test

#endif  // KVTIER_TESTS_REDIS_HARNESS_H_
