// DaemonConfig: what kvtierd runs with.
//
// Four sources, each overriding the one before it key by key:
//   built-in defaults  <  the config file (--config)  <  the environment  <  --set flags
//
// The file is a subset of TOML: `[section]` and `[tenants.NAME]` tables, `key = value`
// with strings ("basic" with \" \\ \n \t \r \uXXXX escapes, or 'literal'), integers
// (1_000 allowed), floats, booleans and arrays of strings (which may span lines; a
// trailing comma is fine); `#` comments. No dotted keys, inline tables, arrays of
// tables or multi-line strings. A key set twice, or a table opened twice, is refused.
//
// Environment: KVTIERD_<SECTION>__<KEY>, a double underscore for each dot, upper case;
// e.g. KVTIERD_HOST__CAPACITY=4GiB is host.capacity, KVTIERD_SOCKET is socket, and
// KVTIERD_TENANTS__ACME__TOKEN is tenants.acme.token (tenant names are lower-cased).
// A KVTIERD_* variable that names no key is refused, except one a tenant's token_env names.
// --set: `--set section.key=value` (tenants.NAME.key for a tenant's).
// Values from either are read as TOML values when they parse as one ("x", 12, true,
// ["a", "b"]) and as plain text otherwise; a key that takes a list also takes "a,b,c",
// and a key that takes a string takes any text as it is.
//
// Sizes (capacities): a byte count, or a string of an integer and a unit: B, KB, MB, GB,
// TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. "64GiB". No fractions.
//
// Tenants: each [tenants.NAME] table is one tenant with its own Store: its own host region
// (a memfd of host_capacity, default host.capacity), its own NVMe files and metadata, and
// its own Redis key prefix. A tenant needs exactly one of token, token_file, token_env.
// NAME: 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit.
//  - NVMe: each data file path DIR/FILE in nvme.paths becomes DIR/NAME/FILE; metadata_dir,
//    when set, becomes metadata_dir/NAME (unset: the tenant's first data file + ".meta").
//    nvme.capacity is per tenant (tenants.NAME.nvme_capacity overrides it).
//  - Redis: key prefix redis.key_prefix + ":" + NAME; redis.capacity is per tenant.
// With no [tenants.*] table, kvtierd refuses to start unless allow_anonymous = true; then it
// serves one tenant, "", with no token (any local process that can open the socket), whose
// Store uses nvme.paths, metadata_dir and redis.key_prefix exactly as written.
// allow_anonymous = true together with [tenants.*] tables is refused (pick one).
//
// Errors: every problem found is reported, one per line, as
//   <where>: <key> = <value>: <what is wrong>; <what is allowed>
// where <where> is file:line, "environment KVTIERD_...", or "--set". Token and password
// values are never shown.
//
// Thread-safety: plain values and pure functions (LoadDaemonConfig reads token files).
#ifndef KVTIER_DAEMON_CONFIG_H_
#define KVTIER_DAEMON_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "daemon/server.h"
#include "kvtier/status.h"
#include "kvtier/store.h"

namespace kvtier {

struct TenantConfig {
  std::string name;                  // "" only for the anonymous tenant
  std::string token;                 // the credential, resolved from one of:
  bool token_inline = false;         //   token = "..."
  std::string token_file;            //   token_file = "/path" (its content, trailing whitespace cut)
  std::string token_env;             //   token_env = "VAR"
  std::vector<std::string> models;   // model-name prefixes (DaemonTenant::model_prefixes); "*" is any
  uint64_t host_capacity_bytes = 0;  // 0: host.capacity
  uint64_t nvme_capacity_bytes = 0;  // 0: nvme.capacity
};

struct DaemonConfig {
  std::string socket = "/run/kvtier/kvtierd.sock";
  std::string metrics_listen = "127.0.0.1:9713";  // host:port; "" turns metrics off; port 0 picks one
  bool allow_anonymous = false;
  DaemonServerOptions server;
  // The template every tenant's Store starts from (TenantStoreConfig).
  StoreConfig store = DefaultStore();
  std::vector<TenantConfig> tenants;  // by name; after LoadDaemonConfig never empty

  static StoreConfig DefaultStore() {
    StoreConfig s;
    s.shared_host_region = true;                   // clients map the host region
    s.gpu.register_host = HostRegistration::kOff;  // clients copy engine memory themselves
    return s;
  }
};

struct ConfigSources {
  std::string file;                      // empty: none
  std::vector<std::string> environment;  // "NAME=value" entries (e.g. from environ)
  std::vector<std::string> sets;         // "key=value", one per --set, in order (the last wins)
};

// Reads, merges and checks everything; InvalidArgument lists every problem, one per line.
Result<DaemonConfig> LoadDaemonConfig(const ConfigSources& sources);

// The Store a tenant runs (see "Tenants" above).
StoreConfig TenantStoreConfig(const DaemonConfig& config, const TenantConfig& tenant);

// The effective configuration as a config file, tokens and passwords masked.
std::string PrintDaemonConfig(const DaemonConfig& config);

// A size as the config prints it: "64GiB" when a binary unit divides it, else bytes.
std::string FormatSize(uint64_t bytes);

}  // namespace kvtier

#endif  // KVTIER_DAEMON_CONFIG_H_
