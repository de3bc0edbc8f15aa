#include "bench/redis_limit.h"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "tiers/redis/redis_client.h"
#include "tiers/redis/redis_tier.h"

extern char** environ;

namespace kvtier::bench {
namespace {

using Clock = std::chrono::steady_clock;

Result<redisContext*> ConnectRaw(const RedisEndpoint& ep) {
  timeval tv{5, 0};
  redisContext* c = redisConnectWithTimeout(ep.host.c_str(), ep.port, tv);
  if (c == nullptr) return Status::NoMemory("redis limit: cannot allocate a hiredis context");
  if (c->err != 0) {
    Status s = Status::IOError("redis limit: connect " + ep.host + ":" + std::to_string(ep.port) + ": " + c->errstr);
    redisFree(c);
    return s;
  }
  redisSetTimeout(c, timeval{30, 0});
  if (!ep.password.empty()) {
    redisReply* r = ep.username.empty()
                        ? static_cast<redisReply*>(redisCommand(c, "AUTH %s", ep.password.c_str()))
                        : static_cast<redisReply*>(redisCommand(c, "AUTH %s %s", ep.username.c_str(), ep.password.c_str()));
    bool ok = r != nullptr && r->type != REDIS_REPLY_ERROR;
    std::string msg = r != nullptr && r->type == REDIS_REPLY_ERROR ? r->str : "no reply";
    if (r != nullptr) freeReplyObject(r);
    if (!ok) {
      redisFree(c);
      return Status::InvalidArgument("redis limit: AUTH failed: " + msg);
    }
  }
  return c;
}

// Keeps up to `window` commands in flight on one connection until `total` replies are in:
// append(i) appends command i (hiredis status), check(reply, i) says whether reply i is right.
template <typename Append, typename Check>
Status Pipeline(redisContext* c, uint64_t total, uint64_t window, Append&& append, Check&& check) {
  uint64_t sent = 0, got = 0;
  while (got < total) {
    while (sent < total && sent - got < window) {
      if (append(sent) != REDIS_OK) return Status::IOError(std::string("redis limit: append: ") + c->errstr);
      ++sent;
    }
    void* reply = nullptr;
    if (redisGetReply(c, &reply) != REDIS_OK || reply == nullptr)
      return Status::IOError(std::string("redis limit: reply: ") + c->errstr);
    auto* r = static_cast<redisReply*>(reply);
    const bool bad = r->type == REDIS_REPLY_ERROR || !check(*r, got);
    std::string err = r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply";
    freeReplyObject(r);
    if (bad) return Status::IOError("redis limit: " + err);
    ++got;
  }
  return Status::OK();
}

// One phase on one connection: `count` SETs or GETs of keys in turn, `depth` in flight.
Status Phase(redisContext* c, bool set, const std::vector<std::string>& keys, const std::string& value,
             uint32_t count, uint32_t depth) {
  return Pipeline(
      c, count, depth,
      [&](uint64_t i) {
        const std::string& key = keys[i % keys.size()];
        const char* argv[3] = {set ? "SET" : "GET", key.data(), value.data()};
        size_t lens[3] = {3, key.size(), value.size()};
        return redisAppendCommandArgv(c, set ? 3 : 2, argv, lens);
      },
      [&](const redisReply& r, uint64_t) {
        return set || (r.type == REDIS_REPLY_STRING && static_cast<size_t>(r.len) == value.size());
      });
}

// Reads `count` values of keys in turn as GETRANGEs of `piece` bytes, `depth` values' worth
// of commands in flight; each reply must be a string of the piece's length.
Status RangedPhase(redisContext* c, const std::vector<std::string>& keys, uint64_t value_bytes, uint64_t piece,
                   uint32_t count, uint32_t depth) {
  const uint64_t per_value = (value_bytes + piece - 1) / piece;
  std::vector<std::string> ranges;  // "start", "end" per piece of a value
  for (uint64_t off = 0; off < value_bytes; off += piece) {
    ranges.push_back(std::to_string(off));
    ranges.push_back(std::to_string(std::min(off + piece, value_bytes) - 1));
  }
  return Pipeline(
      c, per_value * count, per_value * depth,
      [&](uint64_t i) {
        const std::string& key = keys[(i / per_value) % keys.size()];
        const std::string& from = ranges[2 * (i % per_value)];
        const std::string& to = ranges[2 * (i % per_value) + 1];
        const char* argv[4] = {"GETRANGE", key.data(), from.data(), to.data()};
        size_t lens[4] = {8, key.size(), from.size(), to.size()};
        return redisAppendCommandArgv(c, 4, argv, lens);
      },
      [&](const redisReply& r, uint64_t i) {
        const uint64_t p = i % per_value;
        return r.type == REDIS_REPLY_STRING && static_cast<uint64_t>(r.len) == std::min(piece, value_bytes - p * piece);
      });
}

}  // namespace

Result<RedisRawLimit> MeasureRedisRawLimit(const RedisEndpoint& ep, uint64_t value_bytes, uint32_t connections,
                                           uint32_t depth, uint32_t values_per_connection, const std::string& key_prefix,
                                           const std::vector<std::string>& read_keys, uint64_t get_piece_bytes,
                                           const std::string& new_keys_tag) {
  if (connections == 0 || depth == 0 || values_per_connection == 0)
    return Status::InvalidArgument("redis limit: connections, depth and values must be > 0");
  std::vector<redisContext*> ctx;
  for (uint32_t i = 0; i < connections; ++i) {
    Result<redisContext*> c = ConnectRaw(ep);
    if (!c.ok()) {
      for (redisContext* x : ctx) redisFree(x);
      return c.status();
    }
    ctx.push_back(*c);
  }
  std::string value(value_bytes, '\0');
  for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>((i * 131) ^ (i >> 9));
  std::vector<std::vector<std::string>> keys(connections);
  for (uint32_t c = 0; c < connections; ++c)
    for (uint32_t i = 0; i < depth; ++i) keys[c].push_back(key_prefix + ":raw:" + std::to_string(c) + ":" + std::to_string(i));

  RedisRawLimit out;
  out.values = uint64_t{connections} * values_per_connection;
  Status first;
  auto del_keys = [&] {
    for (uint32_t c = 0; c < connections; ++c) {
      for (const std::string& k : keys[c]) redisAppendCommand(ctx[c], "DEL %b", k.data(), k.size());
      for (size_t i = 0; i < keys[c].size(); ++i) {
        void* r = nullptr;
        if (redisGetReply(ctx[c], &r) == REDIS_OK && r != nullptr) freeReplyObject(r);
      }
    }
  };
  std::vector<std::vector<std::string>> new_keys(connections);
  if (!new_keys_tag.empty())
    for (uint32_t c = 0; c < connections; ++c)
      for (uint32_t i = 0; i < values_per_connection; ++i)
        new_keys[c].push_back(key_prefix + ":rawnew:" + new_keys_tag + ":" + std::to_string(c) + ":" + std::to_string(i));
  enum PhaseKind { kSet, kSetNew, kGet, kGetRange };
  const bool ranged = RedisReadsInPieces(value_bytes, get_piece_bytes);
  for (PhaseKind kind : {kSet, kSetNew, kGet, kGetRange}) {
    if (kind == kSetNew && new_keys_tag.empty()) continue;
    if (kind == kGetRange && !ranged) break;
    if (kind == kSetNew) del_keys();  // as after a save phase, the server has just freed values
    const bool set = kind == kSet || kind == kSetNew;
    std::vector<Status> st(connections);
    auto t0 = Clock::now();
    std::vector<std::thread> threads;
    std::vector<std::vector<std::string>> get_keys(connections);
    if (!set && !read_keys.empty())
      for (size_t i = 0; i < read_keys.size(); ++i) get_keys[i % connections].push_back(read_keys[i]);
    for (uint32_t c = 0; c < connections; ++c) {
      // Reads: the given keys, else the SETs' keys (the new ones once the others are gone).
      const std::vector<std::string>& k = kind == kSetNew                    ? new_keys[c]
                                          : !set && !get_keys[c].empty()     ? get_keys[c]
                                          : !set && !new_keys_tag.empty()    ? new_keys[c]
                                                                             : keys[c];
      threads.emplace_back([&, c] {
        st[c] = kind == kGetRange
                    ? RangedPhase(ctx[c], k, value_bytes, get_piece_bytes, values_per_connection, depth)
                    : Phase(ctx[c], set, k, value, values_per_connection, depth);
      });
    }
    for (auto& t : threads) t.join();
    double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    for (const Status& s : st)
      if (!s.ok() && first.ok()) first = s;
    double gbps = static_cast<double>(out.values * value_bytes) / secs / 1e9;
    (kind == kSet ? out.set_gbps : kind == kSetNew ? out.set_new_gbps : kind == kGet ? out.get_gbps : out.getrange_gbps) =
        gbps;
  }
  del_keys();  // the SETs' keys, unless the SET-new phase deleted them already
  for (redisContext* c : ctx) redisFree(c);
  if (!first.ok()) return first;
  return out;
}

namespace {

class CopySink final : public BulkSink {
 public:
  explicit CopySink(std::vector<char>* dst) : dst_(dst) {}
  void OnBulk(const uint8_t* data, size_t len) override {
    ok_ = len == dst_->size();
    if (ok_) std::memcpy(dst_->data(), data, len);
  }
  bool ok() const { return ok_; }

 private:
  std::vector<char>* dst_;
  bool ok_ = false;
};

}  // namespace

Result<RedisRawLimit> MeasureRedisClientLimit(const RedisEndpoint& ep, uint64_t value_bytes, uint32_t connections,
                                              uint32_t depth, uint32_t values_per_connection, const std::string& key_prefix) {
  if (connections == 0 || depth == 0 || values_per_connection == 0)
    return Status::InvalidArgument("redis limit: connections, depth and values must be > 0");
  RedisClientOptions o;
  o.seeds = {ep.host + ":" + std::to_string(ep.port)};
  o.username = ep.username;
  o.password = ep.password;
  o.pool_size = connections;
  Result<std::unique_ptr<RedisClient>> client = RedisClient::Open(o);
  if (!client.ok()) return client.status();
  std::string value(value_bytes, '\0');
  for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>((i * 131) ^ (i >> 9));
  RedisRawLimit out;
  out.values = uint64_t{connections} * values_per_connection;
  Status first;
  for (bool set : {true, false}) {
    std::vector<Status> st(connections);
    auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (uint32_t c = 0; c < connections; ++c)
      threads.emplace_back([&, c] {
        std::vector<std::string> keys;
        for (uint32_t i = 0; i < depth; ++i) keys.push_back(key_prefix + ":client:" + std::to_string(c) + ":" + std::to_string(i));
        std::vector<std::vector<char>> dst(set ? 0 : depth, std::vector<char>(value_bytes));
        for (uint32_t done = 0; done < values_per_connection && st[c].ok(); done += depth) {
          std::vector<RedisCommand> cmds(depth);
          std::vector<CopySink> sinks;
          sinks.reserve(depth);
          for (uint32_t i = 0; i < depth; ++i) {
            cmds[i].key = keys[i];
            if (set) {
              cmds[i].args = {RedisArg("SET"), RedisArg(keys[i]), RedisArg(value)};
            } else {
              sinks.emplace_back(&dst[i]);
              cmds[i].args = {RedisArg("GET"), RedisArg(keys[i])};
              cmds[i].sink = &sinks[i];
            }
          }
          st[c] = (*client)->Execute(cmds, RedisClock::now() + std::chrono::seconds(60));
          for (uint32_t i = 0; i < depth && st[c].ok(); ++i)
            if (cmds[i].reply->type == RedisReply::Type::kError || (!set && !sinks[i].ok()))
              st[c] = Status::IOError("redis client limit: unexpected reply " + cmds[i].reply->str);
        }
      });
    for (auto& t : threads) t.join();
    double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    for (const Status& s : st)
      if (!s.ok() && first.ok()) first = s;
    uint64_t moved = uint64_t{connections} * ((values_per_connection + depth - 1) / depth * depth);
    (set ? out.set_gbps : out.get_gbps) = static_cast<double>(moved * value_bytes) / secs / 1e9;
  }
  std::vector<RedisCommand> del(uint64_t{connections} * depth);
  std::vector<std::string> keys;
  for (uint32_t c = 0; c < connections; ++c)
    for (uint32_t i = 0; i < depth; ++i) keys.push_back(key_prefix + ":client:" + std::to_string(c) + ":" + std::to_string(i));
  for (size_t i = 0; i < keys.size(); ++i) {
    del[i].key = keys[i];
    del[i].args = {RedisArg("DEL"), RedisArg(keys[i])};
  }
  (void)(*client)->Execute(del, RedisClock::now() + std::chrono::seconds(10));
  if (!first.ok()) return first;
  return out;
}

Result<double> RedisBenchmarkGbps(const RedisEndpoint& ep, uint64_t value_bytes, const std::string& test, uint32_t requests) {
  if (::access("/usr/bin/redis-benchmark", X_OK) != 0 && std::system("command -v redis-benchmark >/dev/null 2>&1") != 0)
    return Status::NotFound("redis-benchmark is not installed (Debian package redis-tools)");
  if (test != "get" && test != "set") return Status::InvalidArgument("redis-benchmark test must be get or set");
  std::ostringstream cmd;
  cmd << "redis-benchmark -h " << ep.host << " -p " << ep.port;
  if (!ep.username.empty()) cmd << " --user '" << ep.username << "'";
  if (!ep.password.empty()) cmd << " -a '" << ep.password << "'";
  cmd << " -d " << value_bytes << " -P 4 -c 4 -t " << test << " -n " << requests << " --csv 2>/dev/null";
  FILE* f = ::popen(cmd.str().c_str(), "r");
  if (f == nullptr) return Status::IOError("cannot run redis-benchmark");
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, f) != nullptr) out += buf;
  int rc = ::pclose(f);
  // CSV: a header line, then "SET","<rps>",... (redis 7) or "SET","<rps>" (older).
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    std::string name = test == "get" ? "\"GET\"" : "\"SET\"";
    if (line.rfind(name, 0) != 0) continue;
    size_t q1 = line.find('"', name.size());
    size_t q2 = q1 == std::string::npos ? q1 : line.find('"', q1 + 1);
    if (q2 == std::string::npos) break;
    double rps = std::strtod(line.substr(q1 + 1, q2 - q1 - 1).c_str(), nullptr);
    if (rps <= 0) break;
    return rps * static_cast<double>(value_bytes) / 1e9;
  }
  return Status::IOError("redis-benchmark gave no " + test + " figure (exit " + std::to_string(rc) + "): " + out.substr(0, 200));
}

Result<RedisEndpoint> ParseRedisEndpoint(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  char* end = nullptr;
  const long port = colon == std::string::npos ? 0 : std::strtol(host_port.c_str() + colon + 1, &end, 10);
  if (colon == std::string::npos || colon == 0 || end == nullptr || *end != '\0' || port <= 0 || port > 65535)
    return Status::InvalidArgument("--redis wants host:port, got '" + host_port + "'");
  RedisEndpoint ep;
  ep.host = host_port.substr(0, colon);
  ep.port = static_cast<int>(port);
  return ep;
}

Status RedisFlushAll(const RedisEndpoint& ep) {
  Result<redisContext*> c = ConnectRaw(ep);
  if (!c.ok()) return c.status();
  redisReply* r = static_cast<redisReply*>(redisCommand(*c, "FLUSHALL"));
  const bool ok = r != nullptr && r->type != REDIS_REPLY_ERROR;
  if (r != nullptr) freeReplyObject(r);
  redisFree(*c);
  return ok ? Status::OK() : Status::IOError("redis: FLUSHALL failed");
}

Result<std::vector<std::string>> RedisScanKeys(const RedisEndpoint& ep, const std::string& prefix, size_t max) {
  Result<redisContext*> c = ConnectRaw(ep);
  if (!c.ok()) return c.status();
  const std::string pattern = prefix + "*";
  std::string cursor = "0";
  std::vector<std::string> out;
  do {
    redisReply* r =
        static_cast<redisReply*>(redisCommand(*c, "SCAN %s MATCH %s COUNT 1000", cursor.c_str(), pattern.c_str()));
    if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
      if (r != nullptr) freeReplyObject(r);
      redisFree(*c);
      return Status::IOError("redis: SCAN failed");
    }
    cursor.assign(r->element[0]->str, r->element[0]->len);
    const redisReply* keys = r->element[1];
    for (size_t i = 0; i < keys->elements && out.size() < max; ++i)
      out.emplace_back(keys->element[i]->str, keys->element[i]->len);
    freeReplyObject(r);
  } while (cursor != "0" && out.size() < max);
  redisFree(*c);
  return out;
}

Status RedisDeletePrefix(const RedisEndpoint& ep, const std::string& prefix) {
  Result<redisContext*> c = ConnectRaw(ep);
  if (!c.ok()) return c.status();
  const std::string pattern = prefix + "*";
  std::string cursor = "0";
  Status st;
  do {
    redisReply* r =
        static_cast<redisReply*>(redisCommand(*c, "SCAN %s MATCH %s COUNT 1000", cursor.c_str(), pattern.c_str()));
    if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
      if (r != nullptr) freeReplyObject(r);
      st = Status::IOError("redis: SCAN failed");
      break;
    }
    cursor.assign(r->element[0]->str, r->element[0]->len);
    const redisReply* keys = r->element[1];
    if (keys->elements > 0) {
      std::vector<const char*> argv = {"UNLINK"};
      std::vector<size_t> lens = {6};
      for (size_t i = 0; i < keys->elements; ++i) {
        argv.push_back(keys->element[i]->str);
        lens.push_back(keys->element[i]->len);
      }
      redisReply* d = static_cast<redisReply*>(
          redisCommandArgv(*c, static_cast<int>(argv.size()), argv.data(), lens.data()));
      if (d != nullptr) freeReplyObject(d);
    }
    freeReplyObject(r);
  } while (cursor != "0");
  redisFree(*c);
  return st;
}

Result<std::unique_ptr<LocalRedisServer>> LocalRedisServer::Start() {
  std::unique_ptr<LocalRedisServer> srv(new LocalRedisServer());
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/kvtier_redis_XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) return Status::IOError("cannot make a temp dir for redis-server");
  srv->dir_ = templ;
  for (int attempt = 0; attempt < 20; ++attempt) {
    const int port = 20000 + static_cast<int>(std::random_device{}() % 30000);
    std::vector<std::string> argv = {"redis-server", "--port", std::to_string(port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--dir", srv->dir_, "--logfile",
                                     srv->dir_ + "/redis.log", "--daemonize", "no"};
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    const int rc = posix_spawnp(&srv->pid_, "redis-server", &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      srv->pid_ = -1;
      return Status::NotFound("redis-server is not installed (Debian package redis-server); or pass --redis host:port");
    }
    srv->ep_.host = "127.0.0.1";
    srv->ep_.port = port;
    for (int i = 0; i < 200; ++i) {
      int st = 0;
      if (::waitpid(srv->pid_, &st, WNOHANG) == srv->pid_) {  // exited: port taken, try another
        srv->pid_ = -1;
        break;
      }
      if (MeasureRedisRawLimit(srv->ep_, 1, 1, 1, 1).ok()) return srv;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    if (srv->pid_ > 0) return Status::IOError("redis-server did not answer on port " + std::to_string(port));
  }
  return Status::IOError("could not start redis-server on a free port");
}

LocalRedisServer::~LocalRedisServer() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
  }
  std::error_code ec;
  if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
}

}  // namespace kvtier::bench
