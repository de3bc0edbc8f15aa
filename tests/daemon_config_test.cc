// kvtierd's configuration: the TOML subset, the four layers and their precedence, every
// refusal (naming key, value, what is allowed and where it was set), tenants and what each
// tenant's Store becomes, masking of secrets.
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "daemon/config.h"
#include "tests/temp_dir.h"

namespace kvtier {
namespace {

const char* const kTokenA = "token-of-tenant-a-0123456789";
const char* const kTokenB = "token-of-tenant-b-0123456789";

struct ConfigFiles {
  test::TempDir dir;
  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = dir.File(name);
    std::ofstream(path) << text;
    return path;
  }
};

// A file with one tenant, for tests about something else.
std::string WithTenant(const std::string& text) { return text + "\n[tenants.a]\ntoken = \"" + kTokenA + "\"\n"; }

Result<DaemonConfig> Load(const std::string& file, std::vector<std::string> env = {},
                          std::vector<std::string> sets = {}) {
  ConfigSources s;
  s.file = file;
  s.environment = std::move(env);
  s.sets = std::move(sets);
  return LoadDaemonConfig(s);
}

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t nl = s.find('\n', start);
    out.push_back(s.substr(start, nl == std::string::npos ? std::string::npos : nl - start));
    if (nl == std::string::npos) return out;
    start = nl + 1;
  }
}

// The error line that starts with `where`, or "" when there is none.
std::string LineAt(const Status& st, const std::string& where) {
  for (const std::string& l : Lines(st.message()))
    if (l.starts_with(where)) return l;
  return "";
}

TEST(DaemonConfig, DefaultsWithTheAnonymousTenant) {
  Result<DaemonConfig> c = Load("", {}, {"allow_anonymous=true"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->socket, "/run/kvtier/kvtierd.sock");
  EXPECT_EQ(c->metrics_listen, "127.0.0.1:9713");
  EXPECT_EQ(c->store.host_capacity_bytes, 1ull << 30);
  EXPECT_EQ(c->store.huge_pages, HugePages::kAuto);
  EXPECT_TRUE(c->store.shared_host_region);
  EXPECT_FALSE(c->store.nvme.enabled);
  ASSERT_EQ(c->tenants.size(), 1u);
  EXPECT_EQ(c->tenants[0].name, "");
  EXPECT_EQ(c->tenants[0].token, "");
  EXPECT_EQ(c->tenants[0].models, std::vector<std::string>{"*"});
}

TEST(DaemonConfig, NoTenantsIsRefusedUnlessAnonymousIsAllowed) {
  Result<DaemonConfig> c = Load("");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("no tenants"), std::string::npos) << c.status().ToString();
  EXPECT_NE(c.status().message().find("allow_anonymous = true"), std::string::npos);
  ConfigFiles f;
  Result<DaemonConfig> both = Load(f.Write("both.toml", WithTenant("allow_anonymous = true")));
  ASSERT_FALSE(both.ok());
  EXPECT_NE(LineAt(both.status(), f.dir.File("both.toml") + ":1: allow_anonymous").find("[tenants.a]"),
            std::string::npos)
      << both.status().ToString();
}

TEST(DaemonConfig, LaterSourcesWinKeyByKey) {
  ConfigFiles f;
  const std::string file = f.Write("k.toml", WithTenant("[store]\nworker_threads = 3\nmax_prefetches = 7\n"
                                                        "[host]\ncapacity = \"64MiB\"\n"));
  const std::vector<std::string> env = {"KVTIERD_STORE__WORKER_THREADS=4", "KVTIERD_HOST__CAPACITY=128MiB",
                                        "UNRELATED=1"};
  const std::vector<std::string> sets = {"store.worker_threads=6", "store.worker_threads=5"};

  Result<DaemonConfig> file_only = Load(file);
  ASSERT_TRUE(file_only.ok()) << file_only.status().ToString();
  EXPECT_EQ(file_only->store.worker_threads, 3u);
  EXPECT_EQ(file_only->store.host_capacity_bytes, 64ull << 20);

  Result<DaemonConfig> with_env = Load(file, env);
  ASSERT_TRUE(with_env.ok()) << with_env.status().ToString();
  EXPECT_EQ(with_env->store.worker_threads, 4u);
  EXPECT_EQ(with_env->store.host_capacity_bytes, 128ull << 20);
  EXPECT_EQ(with_env->store.max_prefetches, 7u);  // untouched keys keep the file's value

  Result<DaemonConfig> all = Load(file, env, sets);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(all->store.worker_threads, 5u);  // the last --set wins
  EXPECT_EQ(all->store.host_capacity_bytes, 128ull << 20);

  Result<DaemonConfig> defaults = Load("", {}, {"allow_anonymous=true"});
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->store.worker_threads, 2u);
}

TEST(DaemonConfig, ReadsTheTomlSubset) {
  ConfigFiles f;
  const std::string file = f.Write("t.toml", R"(# kvtierd
socket = '/run/kv tier/d.sock'   # literal string
max_connections = 2_048

[metrics]
listen = "[::1]:0"

[host]
capacity = 268435456
huge_pages = "off"
prefault = false

[nvme]
enabled = true
paths = [
  "/data/nvme0/kv.data",  # first disk
  "/data/nvme1/kv.data",
]
capacity = "2GB"
write_policy = "write_through"

[redis]
addresses = ["10.0.0.1:6379", "redis-b:7000"]
key_prefix = "kv\u00e9\t"

[planner]
nvme_gbps = 3
redis_gbps = 0.25

[tenants.a]
token = "token-of-tenant-a-0123456789"
models = ["acme/*", "meta-llama/Llama-3"]
)");
  Result<DaemonConfig> c = Load(file);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->socket, "/run/kv tier/d.sock");
  EXPECT_EQ(c->server.max_connections, 2048u);
  EXPECT_EQ(c->metrics_listen, "[::1]:0");
  EXPECT_EQ(c->store.host_capacity_bytes, 256ull << 20);
  EXPECT_EQ(c->store.huge_pages, HugePages::kOff);
  EXPECT_FALSE(c->store.prefault);
  EXPECT_TRUE(c->store.nvme.enabled);
  EXPECT_EQ(c->store.nvme.paths, (std::vector<std::string>{"/data/nvme0/kv.data", "/data/nvme1/kv.data"}));
  EXPECT_EQ(c->store.nvme.capacity_bytes, 2000000000ull);
  EXPECT_EQ(c->store.nvme.policy, WritePolicy::kWriteThrough);
  EXPECT_EQ(c->store.redis.addresses, (std::vector<std::string>{"10.0.0.1:6379", "redis-b:7000"}));
  EXPECT_EQ(c->store.redis.key_prefix, "kv\xc3\xa9\t");
  EXPECT_EQ(c->store.planner.nvme_gbps, 3.0);
  EXPECT_EQ(c->store.planner.redis_gbps, 0.25);
  ASSERT_EQ(c->tenants.size(), 1u);
  EXPECT_EQ(c->tenants[0].token, kTokenA);
  // "acme/*" is the prefix "acme/"; a pattern without a star is a prefix too.
  EXPECT_EQ(c->tenants[0].models, (std::vector<std::string>{"acme/", "meta-llama/Llama-3"}));
}

TEST(DaemonConfig, SizesTakeUnits) {
  const std::pair<const char*, uint64_t> cases[] = {
      {"1048576", 1ull << 20}, {"\"1MiB\"", 1ull << 20}, {"\"4GiB\"", 4ull << 30},  {"\"2gib\"", 2ull << 30},
      {"\"3MB\"", 3000000},    {"\"1TiB\"", 1ull << 40}, {"\"5000000B\"", 5000000}, {"\"1536KiB\"", 1536ull << 10}};
  ConfigFiles f;
  for (const auto& [text, bytes] : cases) {
    Result<DaemonConfig> c = Load(f.Write("s.toml", WithTenant(std::string("[host]\ncapacity = ") + text)));
    ASSERT_TRUE(c.ok()) << text << ": " << c.status().ToString();
    EXPECT_EQ(c->store.host_capacity_bytes, bytes) << text;
  }
  EXPECT_EQ(FormatSize(4ull << 30), "4GiB");
  EXPECT_EQ(FormatSize(1536ull << 20), "1536MiB");
  EXPECT_EQ(FormatSize(1000), "1000");
}

// Each bad value on a known line; every one is reported, with where, key, value and what is allowed.
TEST(DaemonConfig, EveryBadValueIsRefusedWithKeyValueAllowedAndLine) {
  struct Case {
    const char* table;
    const char* line;
    const char* key;  // as reported
    std::vector<const char*> expect;
  };
  const std::vector<Case> cases = {
      {"", "socket = \"relative.sock\"", "socket", {"\"relative.sock\"", "absolute path"}},
      {"", "max_connections = 0", "max_connections", {"= 0", "1..1048576"}},
      {"", "io_timeout_ms = \"soon\"", "io_timeout_ms", {"\"soon\"", "not an integer", "1..600000"}},
      {"metrics", "listen = \"localhost\"", "metrics.listen", {"\"localhost\"", "host:port"}},
      {"host", "capacity = \"8 GB\"", "host.capacity", {"\"8 GB\"", "GiB", "such as", "64GiB"}},
      {"host", "capacity = \"1.5GiB\"", "host.capacity", {"fractions", "1536MiB"}},
      {"host", "capacity = 4096", "host.capacity", {"= 4096", "minimum of 1MiB"}},
      {"host", "capacity = \"8XB\"", "host.capacity", {"unknown unit 'XB'"}},
      {"host", "huge_pages = \"maybe\"", "host.huge_pages", {"\"maybe\"", "auto, on, off"}},
      {"host", "prefault = \"yes\"", "host.prefault", {"\"yes\"", "true or false"}},
      {"store", "worker_threads = 300", "store.worker_threads", {"= 300", "1..256"}},
      {"store", "max_prefetches = -1", "store.max_prefetches", {"= -1", "0..4096"}},
      {"nvme", "paths = [\"relative/kv.data\"]", "nvme.paths", {"relative/kv.data", "absolute path"}},
      {"nvme", "paths = [\"/data/nvme0/\"]", "nvme.paths", {"/data/nvme0/", "names a directory"}},
      {"nvme", "capacity = true", "nvme.capacity", {"= true", "a boolean", "GiB"}},
      {"nvme", "queue_depth = 0", "nvme.queue_depth", {"= 0", "1..4096"}},
      {"nvme",
       "write_policy = \"sometimes\"",
       "nvme.write_policy",
       {"\"sometimes\"", "write_back, write_through, none"}},
      {"nvme", "metadata_dir = \"meta\"", "nvme.metadata_dir", {"\"meta\"", "absolute path"}},
      {"redis", "addresses = [\"redis-host\"]", "redis.addresses", {"redis-host", "host:port"}},
      {"redis", "addresses = [\"h:0\"]", "redis.addresses", {"port '0'", "1..65535"}},
      {"redis", "addresses = \"h:1\"", "redis.addresses", {"not an array", "[\"a\", \"b\"]"}},
      {"redis", "key_prefix = \"\"", "redis.key_prefix", {"empty"}},
      {"planner", "host_gbps = -2.5", "planner.host_gbps", {"-2.5", "above 0"}},
      {"admission", "nvme_second_hit = 1", "admission.nvme_second_hit", {"= 1", "true or false"}},
  };
  ConfigFiles f;
  for (const Case& c : cases) {
    // One file per case (a key may be set once per file): the bad line, then a good tenant.
    const bool tabled = *c.table != '\0';
    const std::string text = (tabled ? std::string("[") + c.table + "]\n" : "") + c.line + "\n";
    const std::string file = f.Write("bad.toml", WithTenant(text));
    Result<DaemonConfig> r = Load(file);
    ASSERT_FALSE(r.ok()) << c.line;
    const std::string where = file + ":" + (tabled ? "2" : "1") + ": " + c.key + " = ";
    const std::string l = LineAt(r.status(), where);
    ASSERT_FALSE(l.empty()) << "no error for " << c.line << " at " << where << "\n" << r.status().message();
    for (const char* e : c.expect) EXPECT_NE(l.find(e), std::string::npos) << "'" << e << "' not in: " << l;
  }

  // Several at once: each is reported, not only the first.
  const std::string file = f.Write("many.toml",
                                   "socket = \"relative.sock\"\n"  // 1
                                   "[host]\n"                      // 2
                                   "capacity = \"8 GB\"\n"         // 3
                                   "huge_pages = \"maybe\"\n"      // 4
                                   "[tenants.a]\n"                 // 5
                                   "token = \"tiny-tok\"\n"        // 6
                                   "models = [\"ll*ama\"]\n");     // 7
  Result<DaemonConfig> c = Load(file);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(LineAt(c.status(), file + ":1: socket = \"relative.sock\": "), "") << c.status().message();
  EXPECT_NE(LineAt(c.status(), file + ":3: host.capacity = \"8 GB\": "), "") << c.status().message();
  EXPECT_NE(LineAt(c.status(), file + ":4: host.huge_pages = \"maybe\": "), "") << c.status().message();
  const std::string token = LineAt(c.status(), file + ":6: tenants.a.token = ");
  EXPECT_NE(token.find("<hidden, 8 characters>"), std::string::npos) << c.status().message();
  EXPECT_NE(token.find("16 characters"), std::string::npos);
  EXPECT_EQ(c.status().message().find("tiny-tok"), std::string::npos) << "a token must never be shown";
  const std::string models = LineAt(c.status(), file + ":7: tenants.a.models = ");
  EXPECT_NE(models.find("may only end"), std::string::npos) << c.status().message();
  // The tenant had no valid token: that is reported as well.
  EXPECT_NE(c.status().message().find("tenant a has no token"), std::string::npos);
}

TEST(DaemonConfig, BadValuesFromTheEnvironmentAndFlagsNameTheirSource) {
  Result<DaemonConfig> c = Load("", {"KVTIERD_HOST__CAPACITY=lots", "KVTIERD_ALLOW_ANONYMOUS=true"},
                                {"store.worker_threads=0", "nvme.write_policy=write_later"});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(LineAt(c.status(), "environment KVTIERD_HOST__CAPACITY: host.capacity = \"lots\": not a size"), "")
      << c.status().message();
  EXPECT_NE(LineAt(c.status(), "--set: store.worker_threads = \"0\": out of range; allowed: an integer in 1..256"), "")
      << c.status().message();
  EXPECT_NE(LineAt(c.status(),
                   "--set: nvme.write_policy = \"write_later\": not one of the choices; allowed: "
                   "write_back, write_through, none"),
            "")
      << c.status().message();
  Result<DaemonConfig> no_eq = Load("", {"KVTIERD_ALLOW_ANONYMOUS=true"}, {"store.worker_threads"});
  ASSERT_FALSE(no_eq.ok());
  EXPECT_NE(no_eq.status().message().find("--set store.worker_threads: expected section.key=value"), std::string::npos);
}

TEST(DaemonConfig, UnknownKeysAndTablesAreRefused) {
  ConfigFiles f;
  const std::string file = f.Write("u.toml", WithTenant("[nvme]\npath = [\"/x/y\"]\n[tenants.b]\ntokn = \"x\"\n"));
  Result<DaemonConfig> c = Load(file, {"KVTIERD_HOST__CAPACTY=1GiB"}, {"bogus=1"});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(LineAt(c.status(), file + ":2: unknown key nvme.path (= [\"/x/y\"]); did you mean nvme.paths?"), "")
      << c.status().message();
  EXPECT_NE(LineAt(c.status(), file + ":4: unknown key tenants.b.tokn (= <hidden, 1 characters>); did you mean "
                                      "tenants.b.token?"),
            "")
      << c.status().message();
  EXPECT_NE(LineAt(c.status(),
                   "environment KVTIERD_HOST__CAPACTY: unknown key host.capacty (= \"1GiB\"); did you "
                   "mean host.capacity?"),
            "")
      << c.status().message();
  EXPECT_NE(LineAt(c.status(), "--set: unknown key bogus"), "") << c.status().message();

  Result<DaemonConfig> table = Load(f.Write("t.toml", WithTenant("[nvmee]\nenabled = true\n")));
  ASSERT_FALSE(table.ok());
  EXPECT_NE(table.status().message().find("t.toml:1: unknown table [nvmee]; did you mean nvme?"), std::string::npos)
      << table.status().message();
}

TEST(DaemonConfig, SyntaxErrorsNameTheLine) {
  const std::pair<const char*, const char*> cases[] = {
      {"socket = \"/x\n", ":1: a string is not closed"},
      {"\n\nnvme.enabled = true\n", ":3: dotted keys such as nvme.enabled are not supported; use a [nvme] table"},
      {"socket = \"/a\"\nsocket = \"/b\"\n", ":2: socket is set twice (first at line 1)"},
      {"[host]\n[host]\n", ":2: table [host] is opened twice"},
      {"socket \"/a\"\n", ":1: expected '=' after the key socket"},
      {"socket = /a\n", ":1: expected a value"},
      {"max_connections = 12abc\n", ":1: '12abc' is not a value"},
      {"socket = \"/a\" extra\n", ":1: unexpected text after the value"},
      {"[nvme]\npaths = [\"/a\",\n  12]\n", ":3: arrays hold strings only"},
      {"[nvme]\npaths = [\"/a\"\n", ":3: an array is not closed"},
      {"[[tenants]]\n", ":1: arrays of tables"},
      {"[tenants.\"bad name\"]\n", ":1: [tenants.bad name]: tenant name 'bad name' is not allowed"},
      {"x = {a = 1}\n", ":1: inline tables are not supported"},
      {"s = \"\\q\"\n", ":1: unknown escape \\q"},
  };
  ConfigFiles f;
  for (const auto& [text, expect] : cases) {
    const std::string file = f.Write("syntax.toml", text);
    Result<DaemonConfig> c = Load(file);
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_NE(c.status().message().find(file + expect), std::string::npos)
        << "for " << text << " expected " << expect << ", got: " << c.status().message();
  }
  Result<DaemonConfig> missing = Load(f.dir.File("nope.toml"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("nope.toml: cannot open"), std::string::npos);
}

TEST(DaemonConfig, TenantsResolveTokensAndGetTheirOwnStores) {
  ConfigFiles f;
  const std::string token_file = f.Write("b.token", std::string(kTokenB) + "\n");
  const std::string file = f.Write("tenants.toml", R"(
[host]
capacity = "64MiB"
[nvme]
enabled = true
paths = ["/data/nvme0/kv.data", "/data/nvme1/kv.data"]
capacity = "1GiB"
metadata_dir = "/data/meta/"
[redis]
enabled = true
addresses = ["127.0.0.1:6379"]
key_prefix = "kvt"

[tenants.a]
token = "token-of-tenant-a-0123456789"
models = ["acme/"]
host_capacity = "32MiB"

[tenants.b]
token_file = ")" + token_file + R"("
nvme_capacity = "4GiB"

[tenants.c]
token_env = "KVTIERD_TOKEN_OF_C"
)");
  Result<DaemonConfig> c = Load(file, {"KVTIERD_TOKEN_OF_C=token-of-tenant-c-0123456789"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->tenants.size(), 3u);
  const TenantConfig& a = c->tenants[0];
  const TenantConfig& b = c->tenants[1];
  const TenantConfig& cc = c->tenants[2];
  EXPECT_EQ(a.name, "a");
  EXPECT_EQ(a.token, kTokenA);
  EXPECT_EQ(b.token, kTokenB);  // the file's trailing newline is not part of it
  EXPECT_EQ(cc.token, "token-of-tenant-c-0123456789");
  EXPECT_EQ(b.models, std::vector<std::string>{"*"});

  const StoreConfig sa = TenantStoreConfig(*c, a);
  EXPECT_TRUE(sa.shared_host_region);
  EXPECT_EQ(sa.host_capacity_bytes, 32ull << 20);
  EXPECT_EQ(sa.nvme.capacity_bytes, 1ull << 30);
  EXPECT_EQ(sa.nvme.paths, (std::vector<std::string>{"/data/nvme0/a/kv.data", "/data/nvme1/a/kv.data"}));
  EXPECT_EQ(sa.nvme.metadata_dir, "/data/meta/a");
  EXPECT_EQ(sa.redis.key_prefix, "kvt:a");
  const StoreConfig sb = TenantStoreConfig(*c, b);
  EXPECT_EQ(sb.host_capacity_bytes, 64ull << 20);
  EXPECT_EQ(sb.nvme.capacity_bytes, 4ull << 30);
  EXPECT_EQ(sb.nvme.paths[0], "/data/nvme0/b/kv.data");
  EXPECT_EQ(sb.redis.key_prefix, "kvt:b");

  // The anonymous tenant uses the paths and prefix as written.
  Result<DaemonConfig> anon = Load(
      "", {}, {"allow_anonymous=true", "nvme.enabled=true", "nvme.paths=/d/x.data,/e/y.data", "nvme.capacity=1GiB"});
  ASSERT_TRUE(anon.ok()) << anon.status().ToString();
  const StoreConfig s0 = TenantStoreConfig(*anon, anon->tenants[0]);
  EXPECT_EQ(s0.nvme.paths, (std::vector<std::string>{"/d/x.data", "/e/y.data"}));
  EXPECT_EQ(s0.nvme.metadata_dir, "");  // the Store's default: /d/x.data.meta
  EXPECT_EQ(s0.redis.key_prefix, "kvt");
}

TEST(DaemonConfig, TenantsFromTheEnvironmentAndFlags) {
  Result<DaemonConfig> c = Load("", {"KVTIERD_TENANTS__ENVT__TOKEN=token-of-envt-0123456789"},
                                {"tenants.flagt.token=1234567890123456789", "tenants.flagt.models=acme/,other/"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->tenants.size(), 2u);
  EXPECT_EQ(c->tenants[0].name, "envt");
  EXPECT_EQ(c->tenants[0].token, "token-of-envt-0123456789");
  EXPECT_EQ(c->tenants[1].name, "flagt");
  EXPECT_EQ(c->tenants[1].token, "1234567890123456789");  // all digits, still a string
  EXPECT_EQ(c->tenants[1].models, (std::vector<std::string>{"acme/", "other/"}));
}

TEST(DaemonConfig, TenantMistakesAreRefused) {
  ConfigFiles f;
  const std::string file = f.Write("bad-tenants.toml", R"([tenants.none]
models = []

[tenants.two]
token = "token-of-tenant-two-0123456789"
token_env = "SOME_VAR"

[tenants.nofile]
token_file = "/nonexistent/kvtier.token"

[tenants.noenv]
token_env = "KVTIER_NOT_SET_ANYWHERE"

[tenants.nvme]
token = "token-of-tenant-nvme-0123456789"
nvme_capacity = "1GiB"
)");
  Result<DaemonConfig> c = Load(file);
  ASSERT_FALSE(c.ok());
  const std::string& m = c.status().message();
  EXPECT_NE(m.find(file + ":1: tenant none has no token; set one of tenants.none.token, token_file or token_env"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find(file + ":2: tenants.none.models: []: the tenant could register no model"), std::string::npos) << m;
  EXPECT_NE(m.find(file + ":4: tenant two sets more than one of token, token_file and token_env"), std::string::npos)
      << m;
  EXPECT_NE(m.find(file + ":9: tenants.nofile.token_file: \"/nonexistent/kvtier.token\": the token file: cannot open"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find(file + ":12: tenants.noenv.token_env: \"KVTIER_NOT_SET_ANYWHERE\": the variable: not set"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find(file + ":16: tenants.nvme.nvme_capacity: set while nvme.enabled = false"), std::string::npos) << m;
}

TEST(DaemonConfig, CrossKeyChecks) {
  Result<DaemonConfig> c =
      Load("", {}, {"allow_anonymous=true", "nvme.enabled=true", "redis.enabled=true", "nvme.paths=/a/x,/a/x"});
  ASSERT_FALSE(c.ok());
  const std::string& m = c.status().message();
  EXPECT_NE(m.find("--set: nvme.paths: names \"/a/x\" twice"), std::string::npos) << m;
  EXPECT_NE(m.find("config: nvme.capacity: 0 while nvme.enabled = true"), std::string::npos) << m;
  EXPECT_NE(m.find("config: redis.addresses: empty while redis.enabled = true"), std::string::npos) << m;
  Result<DaemonConfig> no_paths = Load("", {}, {"allow_anonymous=true", "nvme.enabled=true", "nvme.capacity=1GiB"});
  ASSERT_FALSE(no_paths.ok());
  EXPECT_NE(no_paths.status().message().find("nvme.paths: empty while nvme.enabled = true"), std::string::npos);
}

TEST(DaemonConfig, PrintMasksSecretsAndReadsBack) {
  ConfigFiles f;
  const std::string token_file = f.Write("b.token", kTokenB);
  const std::string file = f.Write("p.toml",
                                   "[redis]\npassword = \"redis-secret-password\"\n"
                                   "[nvme]\nenabled = true\npaths = [\"/data/kv.data\"]\ncapacity = \"3GiB\"\n"
                                   "[tenants.a]\ntoken = \"" +
                                       std::string(kTokenA) +
                                       "\"\nmodels = [\"acme/\"]\n"
                                       "[tenants.b]\ntoken_file = \"" +
                                       token_file + "\"\n");
  Result<DaemonConfig> c = Load(file, {}, {"host.capacity=96MiB"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const std::string printed = PrintDaemonConfig(*c);
  EXPECT_EQ(printed.find(kTokenA), std::string::npos) << printed;
  EXPECT_EQ(printed.find(kTokenB), std::string::npos) << printed;
  EXPECT_EQ(printed.find("redis-secret-password"), std::string::npos) << printed;
  EXPECT_NE(printed.find("[tenants.a]\ntoken = \"********\"\nmodels = [\"acme/\"]"), std::string::npos) << printed;
  EXPECT_NE(printed.find("token_file = \"" + token_file + "\""), std::string::npos) << printed;
  EXPECT_NE(printed.find("password = \"********\""), std::string::npos) << printed;
  EXPECT_NE(printed.find("[host]\ncapacity = \"96MiB\""), std::string::npos) << printed;
  EXPECT_NE(printed.find("capacity = \"3GiB\""), std::string::npos) << printed;

  // What it prints is a config file that gives the same configuration (secrets set again).
  const std::string again = f.Write("again.toml", printed);
  Result<DaemonConfig> back = Load(again, {}, {"tenants.a.token=" + std::string(kTokenA), "redis.password=x"});
  ASSERT_TRUE(back.ok()) << back.status().ToString() << "\n" << printed;
  EXPECT_EQ(PrintDaemonConfig(*back), printed);
}

}  // namespace
}  // namespace kvtier
