// DaemonClient: the client side of kvtierd, behind Store::Connect (kvtier/store.h).
//
// Every Store call becomes a request to the daemon over its Unix socket (Cap'n Proto
// messages, daemon/protocol.capnp). At connect the daemon passes the tenant's host region
// (a memfd) over the socket; the client maps it, and saves and loads copy between the
// engine's blocks (in this process) and host slots in that mapping with a local Mover:
//   save: ReserveSave -> gather each new chunk into its slot -> CommitSave
//   load: AcquireLoad -> scatter the leased chunks layer by layer -> ReleaseLoad
// so KV bytes never cross the socket. Saves and loads run on the client's own worker
// threads and complete Tickets as an embedded Store's do (layer-wise readiness included).
//
// Failure: when the daemon is unreachable, calls fail fast with Unavailable (a miss at the
// engine level: lookups report nothing cached, saves and loads fail their tickets). The
// client retries the connection at most every 100 ms on later calls; after a reconnect it
// maps the new region and registers its namespaces again (handles stay valid).
// Engine memory must be host memory: a layout with device >= 0 is NotSupported through the
// daemon for now.
//
// Thread-safety: all methods are thread-safe; requests use a pool of connections (one
// request in flight per connection). mu_ guards the connection state and registrations.
#ifndef KVTIER_STORE_DAEMON_CLIENT_H_
#define KVTIER_STORE_DAEMON_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kvtier/status.h"
#include "kvtier/store.h"

namespace kvtier {

class DaemonClient {
 public:
  // Connects (the daemon must answer now) and maps the tenant's region.
  static Result<std::shared_ptr<DaemonClient>> Connect(const DaemonClientConfig& config);
  ~DaemonClient();
  DaemonClient(const DaemonClient&) = delete;
  DaemonClient& operator=(const DaemonClient&) = delete;

  // Cancels queued saves and loads, waits for running ones, closes the connections.
  Status Close();

  Result<NamespaceHandle> RegisterNamespace(const NamespaceSpec& spec, const KvMemoryLayout& layout);
  Status UnregisterNamespace(NamespaceHandle ns);
  Result<LookupResult> Lookup(NamespaceHandle ns, std::span<const int32_t> tokens,
                              std::span<const ExtraKey> extra_keys, const LookupOptions& options);
  Status CancelPrefetch(uint64_t prefetch_id);
  Status SetPrefillRate(NamespaceHandle ns, double tokens_per_second);
  Status ReportPrefill(NamespaceHandle ns, uint64_t tokens, double seconds);
  Result<uint32_t> PinPrefix(NamespaceHandle ns, std::span<const int32_t> tokens,
                             std::span<const ExtraKey> extra_keys);
  Status UnpinPrefix(NamespaceHandle ns, std::span<const int32_t> tokens, std::span<const ExtraKey> extra_keys);
  Result<Ticket> Save(NamespaceHandle ns, std::span<const int32_t> tokens, std::span<const int32_t> block_ids,
                      std::span<const ExtraKey> extra_keys, const CopyOptions& options);
  Result<Ticket> Load(NamespaceHandle ns, std::span<const int32_t> tokens, std::span<const int32_t> block_ids,
                      std::span<const ExtraKey> extra_keys, const CopyOptions& options);
  // The daemon's counters for this tenant; Unavailable when the daemon is unreachable.
  Result<StoreStats> Stats() const;
  Result<std::vector<NamespaceInfo>> ListNamespaces() const;

  struct Impl;

 private:
  explicit DaemonClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier

#endif  // KVTIER_STORE_DAEMON_CLIENT_H_
