#include "store/gpu.h"

#include <algorithm>
#include <cstring>

#if KVTIER_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels/mover_cuda.h"
#endif

namespace kvtier {

#if KVTIER_WITH_CUDA

namespace {

// A device of the config, or why not.
Status CheckDevice(int device) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return CudaStatus(err, "no CUDA device");
  }
  if (count == 0) return Status::NotSupported("no CUDA device: cudaGetDeviceCount found none");
  if (device < 0 || device >= count)
    return Status::InvalidArgument("gpu.device " + std::to_string(device) + " is outside 0.." +
                                   std::to_string(count - 1) + " (the devices this process sees)");
  return CudaStatus(cudaSetDevice(device), "cudaSetDevice");
}

uint64_t Align8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

// Bytes a load's launch should move at least. Launches on one stream run one after the
// other, and each ramps up and drains (several microseconds in which the copy runs below
// full speed), so a launch must be long next to that: over PCIe 4 MiB take ~80 us; from
// HBM, 64 MiB take ~45 us. Measured with `kvtier bench kernels` (store_load_*).
constexpr uint64_t kMinHostLaunchBytes = 4ull << 20;
constexpr uint64_t kMinDeviceLaunchBytes = 64ull << 20;

}  // namespace

Result<std::unique_ptr<GpuContext>> GpuContext::Open(const GpuConfig& config, uint8_t* host_region,
                                                     uint64_t host_bytes) {
  std::unique_ptr<GpuContext> c(new GpuContext());
  c->host_region_ = host_region;
  c->host_bytes_ = host_bytes;
  const bool need = config.register_host == HostRegistration::kRequire || config.hbm_capacity_bytes > 0;
  if (config.register_host == HostRegistration::kOff && config.hbm_capacity_bytes == 0) {
    c->reason_ = "off (gpu.register_host is off)";
    return c;
  }
  Status dev = CheckDevice(config.device);
  if (!dev.ok()) {
    if (need) return dev.WithContext("gpu: ");
    c->reason_ = "off: " + dev.message();
    return c;
  }
  c->device_ = config.device;
  cudaDeviceProp prop{};
  std::string name = "device " + std::to_string(config.device);
  if (cudaGetDeviceProperties(&prop, config.device) == cudaSuccess) name += " (" + std::string(prop.name) + ")";
  if (config.register_host != HostRegistration::kOff) {
    cudaError_t err = cudaHostRegister(host_region, host_bytes, cudaHostRegisterPortable | cudaHostRegisterMapped);
    void* dptr = nullptr;
    if (err == cudaSuccess) {
      err = cudaHostGetDevicePointer(&dptr, host_region, 0);
      if (err != cudaSuccess) (void)cudaHostUnregister(host_region);
    }
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      Status s = CudaStatus(err, "cudaHostRegister of the host tier's region (" + std::to_string(host_bytes >> 20) +
                                     " MiB)");
      if (config.register_host == HostRegistration::kRequire)
        return Status::NotSupported(s.message() + "; raise the locked-memory limit (ulimit -l, systemd "
                                                  "LimitMEMLOCK=infinity) or set gpu.register_host to auto");
      c->reason_ = "host region not registered: " + s.message();
    } else {
      c->host_device_ = static_cast<uint8_t*>(dptr);
      c->reason_ = "host region registered with " + name;
    }
  } else {
    c->reason_ = "host region not registered (gpu.register_host is off) on " + name;
  }
  if (config.hbm_capacity_bytes > 0) {
    void* mem = nullptr;
    KVTIER_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&mem, config.hbm_capacity_bytes),
                                      "gpu: cudaMalloc of the HBM tier (" +
                                          std::to_string(config.hbm_capacity_bytes >> 20) + " MiB)"));
    c->hbm_memory_ = mem;
    c->hbm_ = std::make_unique<HbmTier>(static_cast<uint8_t*>(mem), config.hbm_capacity_bytes);
    c->reason_ += "; HBM tier " + std::to_string(config.hbm_capacity_bytes >> 20) + " MiB";
  }
  return c;
}

GpuContext::~GpuContext() {
  if (device_ >= 0) (void)cudaSetDevice(device_);
  hbm_.reset();
  if (hbm_memory_ != nullptr) (void)cudaFree(hbm_memory_);
  if (host_device_ != nullptr) (void)cudaHostUnregister(host_region_);
}

Status GpuContext::CheckLayout(const KvMemoryLayout& layout) const {
  if (device_ < 0) return Status::NotSupported("GPU KV memory: the GPU path is " + reason_);
  if (host_device_ == nullptr)
    return Status::NotSupported("GPU KV memory needs the host tier registered with the device: " + reason_);
  if (layout.device != device_)
    return Status::InvalidArgument("KV layout: device " + std::to_string(layout.device) +
                                   ", but the store's GPU path is on device " + std::to_string(device_) +
                                   " (gpu.device)");
  for (size_t i = 0; i < layout.layers.size(); ++i) {
    for (void* p : {layout.layers[i].base, layout.layers[i].v_base}) {
      if (p == nullptr) continue;
      cudaPointerAttributes a{};
      const cudaError_t err = cudaPointerGetAttributes(&a, p);
      if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return CudaStatus(err, "KV layout: layer " + std::to_string(i) + " base");
      }
      if (a.type != cudaMemoryTypeDevice || a.device != layout.device)
        return Status::InvalidArgument("KV layout: layer " + std::to_string(i) + " is not device memory of device " +
                                       std::to_string(layout.device) + " (layout.device says it is)");
    }
  }
  return Status::OK();
}

const uint8_t* GpuContext::DeviceAddress(const uint8_t* p) const {
  if (host_device_ != nullptr && p >= host_region_ && p < host_region_ + host_bytes_)
    return host_device_ + (p - host_region_);
  return p;
}

// One stream and its table buffers (pinned staging on the host, a device copy).
struct GpuCopier::Op {
  cudaStream_t stream = nullptr;
  void* staging = nullptr;  // pinned host
  void* table = nullptr;    // device
  uint64_t capacity = 0;
  ~Op() {
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
    if (staging != nullptr) (void)cudaFreeHost(staging);
    if (table != nullptr) (void)cudaFree(table);
  }
};

Result<std::unique_ptr<GpuCopier>> GpuCopier::Create(const GpuContext* context, const Mover& mover, int device) {
  std::unique_ptr<GpuCopier> c(new GpuCopier());
  c->context_ = context;
  c->device_ = device;
  c->geom_ = mover.geometry();
  KVTIER_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
  const size_t bytes = sizeof(LayerGeometry) * mover.layers().size();
  KVTIER_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&c->layer_table_, bytes), "cudaMalloc of the layer table"));
  KVTIER_RETURN_IF_ERROR(CudaStatus(cudaMemcpy(c->layer_table_, mover.layers().data(), bytes, cudaMemcpyHostToDevice),
                                    "cudaMemcpy of the layer table"));
  return c;
}

GpuCopier::~GpuCopier() {
  (void)cudaSetDevice(device_);
  ops_.clear();
  if (layer_table_ != nullptr) (void)cudaFree(layer_table_);
}

Result<GpuCopier::Op*> GpuCopier::TakeOp(uint64_t table_bytes) {
  Op* op = nullptr;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!idle_.empty()) {
      op = idle_.back();
      idle_.pop_back();
    } else {
      ops_.push_back(std::make_unique<Op>());
      op = ops_.back().get();
    }
  }
  Status st;
  if (op->stream == nullptr)
    st = CudaStatus(cudaStreamCreateWithFlags(&op->stream, cudaStreamNonBlocking), "cudaStreamCreate");
  if (st.ok() && op->capacity < table_bytes) {
    const uint64_t want = std::max<uint64_t>(table_bytes, 64 << 10);
    if (op->staging != nullptr) (void)cudaFreeHost(op->staging);
    if (op->table != nullptr) (void)cudaFree(op->table);
    op->staging = op->table = nullptr;
    op->capacity = 0;
    st = CudaStatus(cudaMallocHost(&op->staging, want), "cudaMallocHost of copy tables");
    if (st.ok()) st = CudaStatus(cudaMalloc(&op->table, want), "cudaMalloc of copy tables");
    if (st.ok()) op->capacity = want;
  }
  if (!st.ok()) {
    ReturnOp(op);
    return st;
  }
  return op;
}

void GpuCopier::ReturnOp(Op* op) {
  std::lock_guard<std::mutex> l(mu_);
  idle_.push_back(op);
}

namespace {

// Builds copy tables in pinned staging memory and names their device twins.
class Tables {
 public:
  Tables(void* staging, void* device) : host_(static_cast<uint8_t*>(staging)), dev_(static_cast<uint8_t*>(device)) {}
  // Appends ids; returns their device address.
  const int32_t* Ids(std::span<const int32_t> ids) {
    std::memcpy(host_ + used_, ids.data(), ids.size_bytes());
    const auto* d = reinterpret_cast<const int32_t*>(dev_ + used_);
    used_ = Align8(used_ + ids.size_bytes());
    return d;
  }
  void* const* Ptrs(const std::vector<const void*>& p) {
    std::memcpy(host_ + used_, p.data(), p.size() * sizeof(void*));
    auto* d = reinterpret_cast<void* const*>(dev_ + used_);
    used_ += p.size() * sizeof(void*);
    return d;
  }
  Status Upload(cudaStream_t s) const {
    return CudaStatus(cudaMemcpyAsync(dev_, host_, used_, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync of copy tables");
  }
  static uint64_t Bytes(uint64_t ids, uint64_t ptrs) { return Align8(ids * sizeof(int32_t)) + ptrs * sizeof(void*); }

 private:
  uint8_t* host_;
  uint8_t* dev_;
  uint64_t used_ = 0;
};

// Blocks of the chunks whose entry in `sel` is not null, and those entries.
void Select(std::span<const int32_t> blocks, uint32_t bpc, std::span<uint8_t* const> sel, std::vector<int32_t>* ids,
            std::vector<const void*>* ptrs) {
  for (size_t i = 0; i < sel.size(); ++i) {
    if (sel[i] == nullptr) continue;
    ids->insert(ids->end(), blocks.begin() + static_cast<ptrdiff_t>(i * bpc),
                blocks.begin() + static_cast<ptrdiff_t>((i + 1) * bpc));
    ptrs->push_back(sel[i]);
  }
}

}  // namespace

Status GpuCopier::Gather(std::span<const int32_t> blocks, std::span<uint8_t* const> payloads,
                         std::span<uint8_t* const> hbm, void* wait_event) {
  const uint32_t bpc = BlocksPerChunk(geom_);
  const auto n = static_cast<uint32_t>(payloads.size());
  if (n == 0) return Status::OK();
  KVTIER_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device_), "cudaSetDevice"));
  std::vector<const void*> ptrs(n);
  for (uint32_t i = 0; i < n; ++i) ptrs[i] = context_->DeviceAddress(payloads[i]);
  std::vector<int32_t> hbm_ids;
  std::vector<const void*> hbm_ptrs;
  Select(blocks, bpc, hbm, &hbm_ids, &hbm_ptrs);
  Result<Op*> op = TakeOp(Tables::Bytes(blocks.size(), n) + Tables::Bytes(hbm_ids.size(), hbm_ptrs.size()));
  if (!op.ok()) return op.status();
  cudaStream_t s = (*op)->stream;
  Tables t((*op)->staging, (*op)->table);
  const int32_t* ids = t.Ids(blocks);
  void* const* dst = t.Ptrs(ptrs);
  const int32_t* h_ids = t.Ids(hbm_ids);
  void* const* h_dst = t.Ptrs(hbm_ptrs);
  const GpuMoverPlan plan{geom_, static_cast<const LayerGeometry*>(layer_table_)};
  Status st = t.Upload(s);
  if (st.ok() && wait_event != nullptr)
    st = CudaStatus(cudaStreamWaitEvent(s, static_cast<cudaEvent_t>(wait_event), 0), "cudaStreamWaitEvent");
  if (st.ok()) st = CudaStatus(LaunchGather(plan, ids, n, dst, s), "gather into host slots");
  if (st.ok() && !hbm_ptrs.empty())
    st = CudaStatus(LaunchGather(plan, h_ids, static_cast<uint32_t>(hbm_ptrs.size()), h_dst, s), "gather into HBM");
  const Status sync = CudaStatus(cudaStreamSynchronize(s), "save: copies from GPU memory");
  ReturnOp(*op);
  return st.ok() ? sync : st;
}

Status GpuCopier::Scatter(std::span<const int32_t> blocks, std::span<const uint8_t* const> payloads,
                          std::span<uint8_t* const> fill, void* wait_event,
                          const std::function<void(GpuEvents)>& enqueued, const std::function<void(uint32_t)>& landed) {
  const uint32_t bpc = BlocksPerChunk(geom_);
  const auto n = static_cast<uint32_t>(payloads.size());
  const uint32_t layers = geom_.num_layers;
  if (n == 0) return Status::OK();
  KVTIER_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device_), "cudaSetDevice"));
  // Layer l of chunk i: its payload's layer l (payloads are layer-major).
  const uint64_t layer_bytes = PayloadLayerBytes(geom_);
  std::vector<const void*> ptrs(uint64_t{layers} * n);
  for (uint32_t i = 0; i < n; ++i) {
    const uint8_t* base = context_->DeviceAddress(payloads[i]);
    for (uint32_t l = 0; l < layers; ++l) ptrs[uint64_t{l} * n + i] = base + l * layer_bytes;
  }
  std::vector<int32_t> fill_ids;
  std::vector<const void*> fill_ptrs;
  Select(blocks, bpc, fill, &fill_ids, &fill_ptrs);
  Result<Op*> op = TakeOp(Tables::Bytes(blocks.size(), ptrs.size()) + Tables::Bytes(fill_ids.size(), fill_ptrs.size()));
  if (!op.ok()) return op.status();
  cudaStream_t s = (*op)->stream;
  Tables t((*op)->staging, (*op)->table);
  const int32_t* ids = t.Ids(blocks);
  void* const* src = t.Ptrs(ptrs);
  const int32_t* f_ids = t.Ids(fill_ids);
  void* const* f_dst = t.Ptrs(fill_ptrs);

  // Layers go in groups, one launch and one event each, so that a launch moves enough
  // bytes to hide its ramp and drain; the engine then gets layers group by group.
  bool all_device = true;
  for (uint32_t i = 0; i < n; ++i) all_device = all_device && context_->DeviceAddress(payloads[i]) == payloads[i];
  const uint64_t min_launch_bytes = all_device ? kMinDeviceLaunchBytes : kMinHostLaunchBytes;
  const uint64_t group_bytes = uint64_t{n} * layer_bytes;
  const auto per_group = static_cast<uint32_t>(
      std::clamp<uint64_t>((min_launch_bytes + group_bytes - 1) / group_bytes, 1, layers));
  const uint32_t groups = (layers + per_group - 1) / per_group;
  // The events outlive this call (the ticket holds them, a layer's event being its
  // group's); each is destroyed once, with the last owner.
  auto* raw = new std::vector<void*>();
  auto unique = std::make_shared<std::vector<cudaEvent_t>>();
  GpuEvents events(raw, [unique](const std::vector<void*>* v) {
    for (cudaEvent_t e : *unique) (void)cudaEventDestroy(e);
    delete v;
  });
  Status st;
  for (uint32_t g = 0; g < groups && st.ok(); ++g) {
    cudaEvent_t e = nullptr;
    st = CudaStatus(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
    if (st.ok()) unique->push_back(e);
  }
  if (st.ok()) st = t.Upload(s);
  if (st.ok() && wait_event != nullptr)
    st = CudaStatus(cudaStreamWaitEvent(s, static_cast<cudaEvent_t>(wait_event), 0), "cudaStreamWaitEvent");
  for (uint32_t g = 0; g < groups && st.ok(); ++g) {
    const uint32_t first = g * per_group, count = std::min(per_group, layers - first);
    // Layers [first, first + count): a plan of `count` layers starting at the table's
    // row `first`, over payload pointers that start at layer `first` (payloads are
    // layer-major, so the kernel's layer offsets land on the right layers).
    ChunkGeometry part = geom_;
    part.num_layers = count;
    const GpuMoverPlan plan{part, static_cast<const LayerGeometry*>(layer_table_) + first};
    st = CudaStatus(LaunchScatter(plan, ids, n, reinterpret_cast<const void* const*>(src + uint64_t{first} * n), s),
                    "scatter into GPU memory");
    if (st.ok()) st = CudaStatus(cudaEventRecord((*unique)[g], s), "cudaEventRecord");
    for (uint32_t l = first; l < first + count; ++l) raw->push_back((*unique)[g]);
  }
  if (st.ok()) {
    enqueued(events);
    if (!fill_ptrs.empty()) {
      const GpuMoverPlan plan{geom_, static_cast<const LayerGeometry*>(layer_table_)};
      st = CudaStatus(LaunchGather(plan, f_ids, static_cast<uint32_t>(fill_ptrs.size()), f_dst, s), "gather into HBM");
    }
    for (uint32_t g = 0; g < groups; ++g) {
      const Status w = CudaStatus(cudaEventSynchronize((*unique)[g]), "load: copies into GPU");
      if (!w.ok()) {
        st = w;
        break;
      }
      landed(std::min(layers, (g + 1) * per_group) - 1);
    }
  }
  const Status sync = CudaStatus(cudaStreamSynchronize(s), "load: copies into GPU memory");
  ReturnOp(*op);
  return st.ok() ? sync : st;
}

#else  // !KVTIER_WITH_CUDA

namespace {
constexpr const char* kNoCuda =
    "kvtier was built without CUDA (no nvcc at configure time, or -DKVTIER_WITH_CUDA=OFF); rebuild with the CUDA "
    "toolkit installed";
}

Result<std::unique_ptr<GpuContext>> GpuContext::Open(const GpuConfig& config, uint8_t* host_region,
                                                     uint64_t host_bytes) {
  if (config.register_host == HostRegistration::kRequire || config.hbm_capacity_bytes > 0)
    return Status::NotSupported(std::string("gpu: ") + kNoCuda);
  std::unique_ptr<GpuContext> c(new GpuContext());
  c->host_region_ = host_region;
  c->host_bytes_ = host_bytes;
  c->reason_ = std::string("off: ") + kNoCuda;
  return c;
}

GpuContext::~GpuContext() = default;

Status GpuContext::CheckLayout(const KvMemoryLayout&) const {
  return Status::NotSupported(std::string("not supported yet: GPU KV memory: ") + kNoCuda);
}

const uint8_t* GpuContext::DeviceAddress(const uint8_t* p) const { return p; }

struct GpuCopier::Op {};

Result<std::unique_ptr<GpuCopier>> GpuCopier::Create(const GpuContext*, const Mover&, int) {
  return Status::NotSupported(std::string("not supported yet: GPU KV memory: ") + kNoCuda);
}

GpuCopier::~GpuCopier() = default;

Status GpuCopier::Gather(std::span<const int32_t>, std::span<uint8_t* const>, std::span<uint8_t* const>, void*) {
  return Status::NotSupported(kNoCuda);
}

Status GpuCopier::Scatter(std::span<const int32_t>, std::span<const uint8_t* const>, std::span<uint8_t* const>, void*,
                          const std::function<void(GpuEvents)>&, const std::function<void(uint32_t)>&) {
  return Status::NotSupported(kNoCuda);
}

#endif  // KVTIER_WITH_CUDA

}  // namespace kvtier
