// The Store's GPU path: engine KV memory on a CUDA device.
//
// GpuContext (one per Store) registers the host tier's region with the CUDA driver
// (cudaHostRegister, mapped), so the copy kernels read and write host slots directly at
// PCIe DMA speed, and owns the HBM tier's device memory. GpuCopier (one per namespace
// registration whose KvMemoryLayout::device >= 0) moves chunks between the engine's
// blocks and payloads — pinned host slots or HBM entries — with the kernels of
// kernels/mover_cuda.h: a save gathers every chunk of the request in one launch; a load
// scatters one launch per layer and records a CUDA event after each, so an engine's
// stream can wait for layer i (cudaStreamWaitEvent) while later layers are still moving.
//
// Built in every configuration: without CUDA compiled in, Open returns a context with no
// device (a GPU config that asks for one is refused, saying why) and Create refuses.
//
// Thread-safety: GpuContext is immutable after Open; its methods may be called from any
// thread. A GpuCopier's Gather and Scatter may run concurrently from several threads:
// each call takes its own stream and table buffers from the copier's pool (mu_). Every
// call sets the calling thread's current device first.
#ifndef KVTIER_STORE_GPU_H_
#define KVTIER_STORE_GPU_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "kernels/mover.h"
#include "kvtier/status.h"
#include "kvtier/store.h"
#include "tiers/gpu/hbm_tier.h"

namespace kvtier {

// The CUDA events of one load, one per layer (cudaEvent_t as void*); destroyed with the
// last owner.
using GpuEvents = std::shared_ptr<const std::vector<void*>>;

class GpuContext {
 public:
  // Registers [host_region, host_region + host_bytes) per config.register_host and
  // allocates the HBM tier (config.hbm_capacity_bytes, 0: none) on config.device.
  // NotSupported, saying why, when the config needs a device that is not there (no CUDA
  // compiled in, no device, device out of range) or registration is required and fails;
  // with kAuto a missing device or a failed registration leaves the context without one
  // (reason() says why).
  static Result<std::unique_ptr<GpuContext>> Open(const GpuConfig& config, uint8_t* host_region,
                                                  uint64_t host_bytes);
  ~GpuContext();
  GpuContext(const GpuContext&) = delete;
  GpuContext& operator=(const GpuContext&) = delete;

  bool host_registered() const { return host_device_ != nullptr; }
  int device() const { return device_; }
  HbmTier* hbm() const { return hbm_.get(); }
  // One line for logs and stats: "host region registered with device 0 (NVIDIA H100 ...)",
  // or why not.
  const std::string& reason() const { return reason_; }

  // OK when `layout` can be copied by the GPU path: CUDA compiled in, the host region
  // registered, and every layer's K (and V) base device memory of layout.device.
  Status CheckLayout(const KvMemoryLayout& layout) const;

  // The device's address of a host-region byte, or `p` itself when it is not in the
  // region (an HBM address).
  const uint8_t* DeviceAddress(const uint8_t* p) const;

 private:
  GpuContext() = default;

  int device_ = -1;
  uint8_t* host_region_ = nullptr;
  uint64_t host_bytes_ = 0;
  uint8_t* host_device_ = nullptr;  // the region's device address once registered
  void* hbm_memory_ = nullptr;
  std::unique_ptr<HbmTier> hbm_;
  std::string reason_;
};

class GpuCopier {
 public:
  // NotSupported without CUDA; errors from uploading the layer table.
  static Result<std::unique_ptr<GpuCopier>> Create(const GpuContext* context, const Mover& mover, int device);
  ~GpuCopier();
  GpuCopier(const GpuCopier&) = delete;
  GpuCopier& operator=(const GpuCopier&) = delete;

  // Save: copies every layer of blocks.size() / blocks_per_chunk chunks from engine
  // memory into `payloads` (host slot payloads in the registered region) and, where
  // hbm[i] is not null, into that HBM entry too. The copies wait for `wait_event` (a
  // cudaEvent_t of the engine's, null: none) first. Returns once they are done.
  Status Gather(std::span<const int32_t> blocks, std::span<uint8_t* const> payloads,
                std::span<uint8_t* const> hbm, void* wait_event);

  // Load: copies each chunk's payload (a host slot payload or an HBM entry) into its
  // blocks, one launch per layer with an event recorded after each; `enqueued` receives
  // the events once every layer is on the stream, and `landed(l)` is called once layer l
  // is in engine memory. Then chunks with fill[i] != null are gathered back from the
  // engine into that HBM entry. Returns once everything is done (an error only after the
  // stream has drained, so no copy still reads a payload).
  Status Scatter(std::span<const int32_t> blocks, std::span<const uint8_t* const> payloads,
                 std::span<uint8_t* const> fill, void* wait_event, const std::function<void(GpuEvents)>& enqueued,
                 const std::function<void(uint32_t)>& landed);

 private:
  struct Op;
  GpuCopier() = default;
  Result<Op*> TakeOp(uint64_t table_bytes);
  void ReturnOp(Op* op);

  const GpuContext* context_ = nullptr;
  int device_ = -1;
  ChunkGeometry geom_{};
  void* layer_table_ = nullptr;  // device memory: geom_.num_layers LayerGeometry

  std::mutex mu_;
  std::vector<std::unique_ptr<Op>> ops_;  // all ops; guarded by mu_
  std::vector<Op*> idle_;                 // guarded by mu_
};

}  // namespace kvtier

#endif  // KVTIER_STORE_GPU_H_
