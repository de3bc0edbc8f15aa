// The CUDA kernels (kernels/mover_cuda.h) against their CPU twin (GatherUnitsCpu,
// ScatterUnitsCpu; itself checked against the Mover and the reference in
// mover_units_test.cc): batches of 1..8 chunks over the random layouts of
// tests/kv_layouts.h, engine memory mirrored on the device at the same offsets, payloads
// at every misalignment; gathered payloads and scattered engine memory must be the same
// bytes. These skip, saying why, where there is no CUDA device. The launchers' host-side
// checks and the Status edge need no device and always run.

#include "kernels/mover_cuda.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/mover.h"
#include "kernels/mover_units.h"
#include "tests/kv_layouts.h"

namespace kvtier {
namespace {

using namespace test;  // NOLINT: the layouts and the reference (kv_layouts.h)

testing::AssertionResult CudaOk(cudaError_t err) {
  if (err == cudaSuccess) return testing::AssertionSuccess();
  return testing::AssertionFailure() << cudaGetErrorName(err) << ": " << cudaGetErrorString(err);
}

struct CudaFree {
  void operator()(uint8_t* p) const { (void)cudaFree(p); }
};
using DevicePtr = std::unique_ptr<uint8_t, CudaFree>;

DevicePtr DeviceAlloc(size_t bytes) {
  void* p = nullptr;
  EXPECT_TRUE(CudaOk(cudaMalloc(&p, std::max<size_t>(bytes, 1))));
  return DevicePtr(static_cast<uint8_t*>(p));
}

testing::AssertionResult Upload(void* dst, const void* src, size_t n) {
  return CudaOk(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice));
}
testing::AssertionResult Download(void* dst, const void* src, size_t n) {
  return CudaOk(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost));
}

class MoverCuda : public testing::Test {
 protected:
  void SetUp() override {
    int devices = 0;
    const cudaError_t err = cudaGetDeviceCount(&devices);
    if (err != cudaSuccess) GTEST_SKIP() << "no CUDA device: " << cudaGetErrorString(err);
    if (devices == 0) GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount found none";
    ASSERT_TRUE(CudaOk(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)));
  }
  void TearDown() override {
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }

  cudaStream_t stream_ = nullptr;
};

// Engine memory on the device: one device buffer per host buffer, and the Mover's layer
// table with each base moved to the same offset in the device copy.
struct DeviceEngine {
  std::vector<DevicePtr> buffers;
  DevicePtr table;
  std::vector<LayerGeometry> host_layers;

  DeviceEngine(const Engine& e, const Mover& mover) {
    for (const Bytes& b : e.buffers) {
      buffers.push_back(DeviceAlloc(b.size()));
      EXPECT_TRUE(Upload(buffers.back().get(), b.data(), b.size()));
    }
    host_layers.assign(mover.layers().begin(), mover.layers().end());
    std::vector<LayerGeometry> device_layers = host_layers;
    for (size_t i = 0; i < device_layers.size(); ++i) {
      LayerGeometry& l = device_layers[i];
      const auto [buf, off] = e.Locate(reinterpret_cast<const uint8_t*>(static_cast<uintptr_t>(l.base)));
      l.base = reinterpret_cast<uintptr_t>(buffers[buf].get()) + off;
      const KvLayerMemory& m = e.layout.layers[i];
      if (!e.d.mla && m.v_base != nullptr) {  // V's own buffer: the distance to its device copy, mod 2^64
        const auto [v_buf, v_off] = e.Locate(static_cast<const uint8_t*>(m.v_base));
        l.kv_offset = reinterpret_cast<uintptr_t>(buffers[v_buf].get()) + v_off - l.base;
      }
    }
    table = DeviceAlloc(sizeof(LayerGeometry) * device_layers.size());
    EXPECT_TRUE(Upload(table.get(), device_layers.data(), sizeof(LayerGeometry) * device_layers.size()));
  }
  GpuMoverPlan plan(const Mover& mover) const {
    return GpuMoverPlan{mover.geometry(), reinterpret_cast<const LayerGeometry*>(table.get())};
  }
  // Engine memory as the device has it now.
  std::vector<Bytes> Snapshot(const Engine& e) const {
    std::vector<Bytes> out;
    for (size_t i = 0; i < buffers.size(); ++i) {
      out.emplace_back(e.buffers[i].size());
      EXPECT_TRUE(Download(out.back().data(), buffers[i].get(), out.back().size()));
    }
    return out;
  }
};

// Payloads of a batch: chunk c at c * stride + leads[c] (0..15) in one buffer, on the host
// and on the device alike; the device keeps a copy of its pointer array.
struct BatchPayloads {
  uint64_t stride;
  std::vector<size_t> leads;
  Bytes host;
  DevicePtr device;
  DevicePtr device_ptrs;

  BatchPayloads(uint32_t chunks, uint64_t chunk_bytes, std::mt19937_64& rng) : stride(chunk_bytes + 24) {
    for (uint32_t c = 0; c < chunks; ++c) leads.push_back(Uniform(rng, 0, 15));
    host = RandomBytes(stride * chunks, rng);
    device = DeviceAlloc(host.size());
    std::vector<void*> ptrs = Pointers(device.get());
    device_ptrs = DeviceAlloc(sizeof(void*) * chunks);
    EXPECT_TRUE(Upload(device_ptrs.get(), ptrs.data(), sizeof(void*) * chunks));
  }
  std::vector<void*> Pointers(uint8_t* base) const {
    std::vector<void*> ptrs;
    for (size_t c = 0; c < leads.size(); ++c) ptrs.push_back(base + c * stride + leads[c]);
    return ptrs;
  }
  void* const* device_array() const { return reinterpret_cast<void* const*>(device_ptrs.get()); }
};

// `chunks` chunks of distinct ids (a scatter must not name a block twice on the GPU), or
// fewer when the engine has too few blocks.
std::vector<int32_t> DistinctIds(const Dims& d, uint32_t* chunks, std::mt19937_64& rng) {
  *chunks = std::max(1u, std::min(*chunks, d.num_blocks / d.blocks_per_chunk()));
  std::vector<int32_t> all(d.num_blocks);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(uint64_t{*chunks} * d.blocks_per_chunk());
  return all;
}

void RunCase(Layout kind, std::mt19937_64& rng, cudaStream_t stream) {
  const Dims d = RandomDims(rng, kind == Layout::kMla);
  Engine e = BuildEngine(kind, d, rng);
  Result<Mover> created = Mover::Create(d.shape(), e.layout);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  const Mover& mover = created.value();
  const ChunkGeometry& g = mover.geometry();
  DeviceEngine dev(e, mover);
  ASSERT_FALSE(testing::Test::HasFailure());

  // Gather: any ids, repeats allowed, now and then one out of range (skipped by both).
  uint32_t chunks = Uniform(rng, 1, 8);
  std::vector<int32_t> ids;
  for (uint32_t c = 0; c < chunks; ++c) {
    const std::vector<int32_t> chunk = RandomIds(d, rng);
    ids.insert(ids.end(), chunk.begin(), chunk.end());
  }
  if (Uniform(rng, 0, 3) == 0)
    ids[Uniform(rng, 0, static_cast<uint32_t>(ids.size() - 1))] =
        Uniform(rng, 0, 1) ? -1 : static_cast<int32_t>(d.num_blocks);
  SCOPED_TRACE(std::string(LayoutName(kind)) + " " + d.ToString() + " chunks=" + std::to_string(chunks) +
               " ids=" + IdsToString(ids));
  {
    BatchPayloads p(chunks, d.payload_bytes(), rng);
    DevicePtr device_ids = DeviceAlloc(sizeof(int32_t) * ids.size());
    ASSERT_TRUE(Upload(device_ids.get(), ids.data(), sizeof(int32_t) * ids.size()));
    ASSERT_TRUE(Upload(p.device.get(), p.host.data(), p.host.size()));
    ASSERT_TRUE(CudaOk(LaunchGather(dev.plan(mover), reinterpret_cast<const int32_t*>(device_ids.get()), chunks,
                                    p.device_array(), stream)));
    ASSERT_TRUE(CudaOk(cudaStreamSynchronize(stream)));
    Bytes got(p.host.size());
    ASSERT_TRUE(Download(got.data(), p.device.get(), got.size()));
    const std::vector<void*> host_ptrs = p.Pointers(p.host.data());
    ASSERT_TRUE(GatherUnitsCpu(g, dev.host_layers, ids.data(), chunks, host_ptrs.data()).ok());
    EXPECT_TRUE(SameBytes(got, p.host)) << "gather: GPU vs CPU twin";
  }

  // Scatter: distinct ids over the batch.
  ids = DistinctIds(d, &chunks, rng);
  SCOPED_TRACE("scatter chunks=" + std::to_string(chunks) + " ids=" + IdsToString(ids));
  {
    BatchPayloads p(chunks, d.payload_bytes(), rng);
    DevicePtr device_ids = DeviceAlloc(sizeof(int32_t) * ids.size());
    ASSERT_TRUE(Upload(device_ids.get(), ids.data(), sizeof(int32_t) * ids.size()));
    ASSERT_TRUE(Upload(p.device.get(), p.host.data(), p.host.size()));
    ASSERT_TRUE(CudaOk(LaunchScatter(dev.plan(mover), reinterpret_cast<const int32_t*>(device_ids.get()), chunks,
                                     p.device_array(), stream)));
    ASSERT_TRUE(CudaOk(cudaStreamSynchronize(stream)));
    const std::vector<Bytes> got = dev.Snapshot(e);
    const std::vector<void*> host_ptrs = p.Pointers(p.host.data());
    std::vector<const void*> const_ptrs(host_ptrs.begin(), host_ptrs.end());
    ASSERT_TRUE(ScatterUnitsCpu(g, dev.host_layers, ids.data(), chunks, const_ptrs.data()).ok());
    for (size_t i = 0; i < got.size(); ++i)
      EXPECT_TRUE(SameBytes(got[i], e.buffers[i])) << "scatter: GPU vs CPU twin, engine buffer " << i;
  }
}

constexpr int kCasesPerLayout = 20;

void RunCases(Layout kind, uint64_t seed, cudaStream_t stream) {
  std::mt19937_64 rng(seed);
  for (int i = 0; i < kCasesPerLayout && !testing::Test::HasFatalFailure(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i) + " of seed " + std::to_string(seed));
    RunCase(kind, rng, stream);
  }
}

TEST_F(MoverCuda, VllmFlashAttentionNhd) { RunCases(Layout::kVllmNhd, 201, stream_); }
TEST_F(MoverCuda, FlashInfer) { RunCases(Layout::kFlashInfer, 202, stream_); }
TEST_F(MoverCuda, Hnd) { RunCases(Layout::kHnd, 203, stream_); }
TEST_F(MoverCuda, BlocksFirstAcrossLayers) { RunCases(Layout::kBlocksFirst, 204, stream_); }
TEST_F(MoverCuda, MlaLatent) { RunCases(Layout::kMla, 205, stream_); }
TEST_F(MoverCuda, PaddedStrides) { RunCases(Layout::kPadded, 206, stream_); }
TEST_F(MoverCuda, TransposedDims) { RunCases(Layout::kTransposed, 207, stream_); }
TEST_F(MoverCuda, PermutedAxes) { RunCases(Layout::kPermuted, 208, stream_); }
TEST_F(MoverCuda, SplitKvTensors) { RunCases(Layout::kSplitKv, 210, stream_); }

// A Llama-3-8B-like batch: 16-byte pieces, several thread blocks' worth of units.
TEST_F(MoverCuda, LlamaShapedBatchRoundTrips) {
  std::mt19937_64 rng(209);
  Dims d;
  d.layers = 4;
  d.heads = 8;
  d.head_dim = 128;
  d.block_tokens = 16;
  d.chunk_tokens = 64;
  d.num_blocks = 32;
  Engine e = BuildEngine(Layout::kVllmNhd, d, rng);
  Result<Mover> created = Mover::Create(d.shape(), e.layout);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  DeviceEngine dev(e, *created);
  uint32_t chunks = 8;
  const std::vector<int32_t> ids = DistinctIds(d, &chunks, rng);
  ASSERT_EQ(chunks, 8u);
  BatchPayloads in(chunks, d.payload_bytes(), rng), out(chunks, d.payload_bytes(), rng);
  DevicePtr device_ids = DeviceAlloc(sizeof(int32_t) * ids.size());
  ASSERT_TRUE(Upload(device_ids.get(), ids.data(), sizeof(int32_t) * ids.size()));
  ASSERT_TRUE(Upload(in.device.get(), in.host.data(), in.host.size()));
  const auto* dev_ids = reinterpret_cast<const int32_t*>(device_ids.get());
  ASSERT_TRUE(CudaOk(LaunchScatter(dev.plan(*created), dev_ids, chunks, in.device_array(), stream_)));
  ASSERT_TRUE(CudaOk(LaunchGather(dev.plan(*created), dev_ids, chunks, out.device_array(), stream_)));
  ASSERT_TRUE(CudaOk(cudaStreamSynchronize(stream_)));
  Bytes back(out.host.size());
  ASSERT_TRUE(Download(back.data(), out.device.get(), back.size()));
  for (uint32_t c = 0; c < chunks; ++c)
    EXPECT_EQ(0, std::memcmp(back.data() + c * out.stride + out.leads[c], in.host.data() + c * in.stride + in.leads[c],
                             d.payload_bytes()))
        << "chunk " << c;
}

// ---- no device needed ----------------------------------------------------------------------

TEST(MoverCudaLaunch, RefusesUnusablePlansBeforeLaunching) {
  ChunkGeometry g{};
  g.num_layers = 2;
  g.num_heads = 2;
  g.head_dim = 8;
  g.elem_bytes = 2;
  g.block_tokens = 4;
  g.chunk_tokens = 8;
  g.num_kv = 2;
  g.num_blocks = 4;
  const auto* fake_layers = reinterpret_cast<const LayerGeometry*>(uintptr_t{4096});
  const auto* fake_ids = reinterpret_cast<const int32_t*>(uintptr_t{8192});
  void* const* fake_payloads = reinterpret_cast<void* const*>(uintptr_t{16384});

  EXPECT_EQ(LaunchGather(GpuMoverPlan{g, nullptr}, fake_ids, 1, fake_payloads, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(LaunchGather(GpuMoverPlan{g, fake_layers}, nullptr, 1, fake_payloads, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(LaunchScatter(GpuMoverPlan{g, fake_layers}, fake_ids, 1, nullptr, nullptr), cudaErrorInvalidValue);
  for (uint32_t ChunkGeometry::*field : {&ChunkGeometry::num_layers, &ChunkGeometry::block_tokens,
                                         &ChunkGeometry::num_kv, &ChunkGeometry::head_dim}) {
    ChunkGeometry bad = g;
    bad.*field = 0;
    EXPECT_EQ(LaunchGather(GpuMoverPlan{bad, fake_layers}, fake_ids, 1, fake_payloads, nullptr),
              cudaErrorInvalidValue);
  }
  ChunkGeometry uneven = g;
  uneven.chunk_tokens = 6;
  EXPECT_EQ(LaunchGather(GpuMoverPlan{uneven, fake_layers}, fake_ids, 1, fake_payloads, nullptr),
            cudaErrorInvalidValue);
  ChunkGeometry huge = g;
  huge.block_tokens = huge.chunk_tokens = 1u << 20;
  huge.num_heads = 1u << 10;
  ASSERT_FALSE(UnitFits32(huge));
  EXPECT_EQ(LaunchGather(GpuMoverPlan{huge, fake_layers}, fake_ids, 1, fake_payloads, nullptr),
            cudaErrorInvalidValue);
  // An empty batch launches nothing, so it succeeds even with nothing behind the pointers.
  EXPECT_EQ(LaunchGather(GpuMoverPlan{g, fake_layers}, nullptr, 0, nullptr, nullptr), cudaSuccess);
  EXPECT_EQ(LaunchScatter(GpuMoverPlan{g, fake_layers}, nullptr, 0, nullptr, nullptr), cudaSuccess);
}

TEST(MoverCudaStatus, MapsErrorsOnceAtTheEdge) {
  EXPECT_TRUE(CudaStatus(cudaSuccess, "gather").ok());
  const Status bad = CudaStatus(cudaErrorInvalidValue, "gather of 4 chunks");
  EXPECT_TRUE(bad.IsInvalidArgument()) << bad.ToString();
  EXPECT_EQ(bad.message().rfind("gather of 4 chunks: cudaErrorInvalidValue", 0), 0u) << bad.message();
  EXPECT_EQ(CudaStatus(cudaErrorMemoryAllocation, "x").code(), Status::Code::kNoMemory);
  EXPECT_EQ(CudaStatus(cudaErrorNoDevice, "x").code(), Status::Code::kNotSupported);
  EXPECT_EQ(CudaStatus(cudaErrorInsufficientDriver, "x").code(), Status::Code::kNotSupported);
  const Status arch = CudaStatus(cudaErrorNoKernelImageForDevice, "x");
  EXPECT_EQ(arch.code(), Status::Code::kNotSupported);
  EXPECT_NE(arch.message().find("CMAKE_CUDA_ARCHITECTURES"), std::string::npos) << arch.message();
  EXPECT_EQ(CudaStatus(cudaErrorNotReady, "x").code(), Status::Code::kBusy);
  EXPECT_EQ(CudaStatus(cudaErrorIllegalAddress, "x").code(), Status::Code::kInternal);
}

}  // namespace
}  // namespace kvtier
