// Sync points: named places in the code where a test can run a callback of its own, to
// force an interleaving of threads that is too rare to hit by running them (a load that
// looks at a chunk while an eviction is halfway through freeing it, say). Always compiled;
// off unless a test installs a callback, when reaching a point costs one atomic load.
//
//   KVTIER_SYNC_POINT("Store::EvictHost:IndexCleared", &key);
//
// Points are named "Class::Method:where" and documented where they sit; `arg` is what the
// point offers the callback (documented there too), or null.
//
// Thread-safety: the callback runs on whichever thread reaches the point, with whatever
// locks that thread holds, so it must not call back into what those locks guard. Set the
// callback before the threads it steers start and clear it (nullptr) after they are done;
// the callback object must outlive every point reached while it is set.
#ifndef KVTIER_COMMON_SYNC_POINT_H_
#define KVTIER_COMMON_SYNC_POINT_H_

#include <atomic>
#include <functional>
#include <string_view>

namespace kvtier {

using SyncPointCallback = std::function<void(std::string_view point, const void* arg)>;

namespace sync_point_internal {
inline std::atomic<const SyncPointCallback*> callback{nullptr};
}  // namespace sync_point_internal

// Installs `cb` (nullptr: none). Not owned.
inline void SetSyncPointCallback(const SyncPointCallback* cb) {
  sync_point_internal::callback.store(cb, std::memory_order_release);
}

inline void ReachSyncPoint(std::string_view point, const void* arg) {
  if (const SyncPointCallback* cb = sync_point_internal::callback.load(std::memory_order_acquire); cb != nullptr)
    (*cb)(point, arg);
}

}  // namespace kvtier

#define KVTIER_SYNC_POINT(point, arg) ::kvtier::ReachSyncPoint(point, arg)

#endif  // KVTIER_COMMON_SYNC_POINT_H_
