// kvtier._kvtier: the Python binding of the embedded Store (include/kvtier/store.h).
//
// What crosses this edge: token ids and block ids (copied into C++ vectors), and engine
// KV memory as addresses and byte strides (KvLayerMemory). KV bytes never pass through
// Python: saves and loads copy between the engine's tensors and the tiers on the Store's
// workers.
//
// Errors: a non-OK Status becomes a Python exception of the class for its code
// (kvtier.InvalidArgumentError, ClosedError, ...; all derive from kvtier.Error), with the
// Store's message. No C++ exception crosses into Python otherwise (pybind11 maps the rest).
//
// The GIL is released around every call that can block or take a Store lock: open, close,
// register/unregister, lookup, save/load submission, ticket wait/cancel/release, stats.
//
// Lifetimes: a Namespace keeps the Store object alive (calls after close raise
// ClosedError) and holds a Python reference to whatever owns the registered memory
// (`keepalive`); a Ticket holds its Namespace, so that memory outlives every copy into or
// out of it. Releasing or collecting a running Ticket cancels it and waits.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kvtier/status.h"
#include "common/stats_fields.h"
#include "kvtier/store.h"
#include "kvtier/types.h"

namespace py = pybind11;

namespace kvtier::python {
namespace {

// Exception classes by Status code; set once at import, never freed (they live as long
// as the interpreter).
PyObject* g_errors[15] = {};
PyObject* g_base_error = nullptr;

[[noreturn]] void Raise(const Status& s) {
  const int code = static_cast<int>(s.code());
  PyObject* type = code > 0 && code < 15 && g_errors[code] != nullptr ? g_errors[code] : g_base_error;
  PyErr_SetString(type, s.message().empty() ? Status::CodeName(s.code()) : s.message().c_str());
  throw py::error_already_set();
}

[[noreturn]] void RaiseInvalid(const std::string& message) { Raise(Status::InvalidArgument(message)); }

void Check(const Status& s) {
  if (!s.ok()) Raise(s);
}

// Token or block ids: a 1-D buffer of 4- or 8-byte integers (numpy), or any sequence of
// ints. Values must fit int32.
std::vector<int32_t> Int32Vector(const py::handle& obj, const char* what) {
  std::vector<int32_t> out;
  auto narrow = [&](int64_t v, size_t i) {
    if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
      RaiseInvalid(std::string(what) + "[" + std::to_string(i) + "] is " + std::to_string(v) +
                   ", outside int32; ids are 32-bit");
    return static_cast<int32_t>(v);
  };
  if (PyObject_CheckBuffer(obj.ptr())) {
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(obj).request();
    const char kind = info.format.empty() ? '?' : info.format.back();
    const bool integer = std::string("iIlLqQ").find(kind) != std::string::npos;
    if (info.ndim != 1 || !integer || (info.itemsize != 4 && info.itemsize != 8))
      RaiseInvalid(std::string(what) + " must be a 1-D buffer of 32- or 64-bit integers (got format '" + info.format +
                   "', " + std::to_string(info.ndim) + " dimensions); pass e.g. tensor.to(torch.int32).numpy()");
    const auto* base = static_cast<const char*>(info.ptr);
    out.resize(static_cast<size_t>(info.shape[0]));
    for (size_t i = 0; i < out.size(); ++i) {
      const char* p = base + static_cast<py::ssize_t>(i) * info.strides[0];
      const bool is_unsigned = kind == 'I' || kind == 'L' || kind == 'Q';
      if (info.itemsize == 4) {
        out[i] = is_unsigned ? narrow(*reinterpret_cast<const uint32_t*>(p), i) : *reinterpret_cast<const int32_t*>(p);
      } else {
        const uint64_t u = *reinterpret_cast<const uint64_t*>(p);
        out[i] = narrow(is_unsigned && u > uint64_t{INT64_MAX} ? INT64_MAX : static_cast<int64_t>(u), i);
      }
    }
    return out;
  }
  if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::str>(obj))
    RaiseInvalid(std::string(what) + " must be a sequence of ints or a 1-D integer array");
  const auto seq = py::reinterpret_borrow<py::sequence>(obj);
  out.reserve(seq.size());
  for (size_t i = 0; i < seq.size(); ++i) {
    py::handle item = seq[i];
    if (!py::isinstance<py::int_>(item))
      RaiseInvalid(std::string(what) + "[" + std::to_string(i) + "] is not an int");
    out.push_back(narrow(item.cast<int64_t>(), i));
  }
  return out;
}

DType ParseDType(const py::handle& obj) {
  if (py::isinstance<py::int_>(obj)) {
    const int v = obj.cast<int>();
    if (v < 1 || v > 7) RaiseInvalid("dtype " + std::to_string(v) + " is not a kvtier dtype number (1..7)");
    return static_cast<DType>(v);
  }
  const std::string name = py::str(obj);
  static const std::pair<const char*, DType> kNames[] = {
      {"float16", DType::kFloat16},   {"bfloat16", DType::kBFloat16}, {"float32", DType::kFloat32},
      {"fp8_e4m3", DType::kFp8E4M3}, {"fp8_e5m2", DType::kFp8E5M2}, {"int8", DType::kInt8},
      {"uint8", DType::kUInt8}};
  for (const auto& [n, d] : kNames)
    if (name == n) return d;
  RaiseInvalid("dtype '" + name + "' is not one of float16, bfloat16, float32, fp8_e4m3, fp8_e5m2, int8, uint8");
}

uint64_t DictU64(const py::dict& d, const char* key, bool required, size_t layer) {
  if (!d.contains(key)) {
    if (required) RaiseInvalid("layers[" + std::to_string(layer) + "] has no '" + key + "'");
    return 0;
  }
  py::handle v = d[key];
  if (v.is_none()) return 0;
  if (!py::isinstance<py::int_>(v)) RaiseInvalid("layers[" + std::to_string(layer) + "]['" + key + "'] is not an int");
  if (v.cast<py::int_>() < py::int_(0))
    RaiseInvalid("layers[" + std::to_string(layer) + "]['" + key + "'] is negative; byte strides and sizes are >= 0");
  return v.cast<uint64_t>();
}

// A layer: a dict with base, bytes, block_stride, token_stride, head_stride, dim_stride
// and optional kv_offset, v_base (addresses as ints).
KvLayerMemory ParseLayer(const py::handle& obj, size_t i) {
  if (!py::isinstance<py::dict>(obj))
    RaiseInvalid("layers[" + std::to_string(i) + "] must be a dict (base, bytes, block_stride, token_stride, "
                 "head_stride, dim_stride, and kv_offset or v_base)");
  const auto d = py::reinterpret_borrow<py::dict>(obj);
  KvLayerMemory m;
  m.base = reinterpret_cast<void*>(static_cast<uintptr_t>(DictU64(d, "base", true, i)));
  m.bytes = DictU64(d, "bytes", true, i);
  m.block_stride = DictU64(d, "block_stride", true, i);
  m.token_stride = DictU64(d, "token_stride", true, i);
  m.head_stride = DictU64(d, "head_stride", true, i);
  m.dim_stride = DictU64(d, "dim_stride", true, i);
  m.kv_offset = DictU64(d, "kv_offset", false, i);
  m.v_base = reinterpret_cast<void*>(static_cast<uintptr_t>(DictU64(d, "v_base", false, i)));
  return m;
}

// extra_keys: None, or a sequence of (chunk_index, lo, hi) with lo and hi the two 64-bit
// halves of a 128-bit hash bound to that chunk.
std::vector<ExtraKey> ExtraKeys(const py::handle& obj) {
  std::vector<ExtraKey> out;
  if (obj.is_none()) return out;
  if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::str>(obj))
    throw py::type_error("extra_keys must be a sequence of (chunk_index, lo, hi) tuples");
  for (const py::handle& item : obj.cast<py::sequence>()) {
    py::tuple t;
    try {
      t = item.cast<py::tuple>();
    } catch (const py::cast_error&) {
      throw py::type_error("extra_keys: each item must be a (chunk_index, lo, hi) tuple");
    }
    if (t.size() != 3) throw py::type_error("extra_keys: each item must be a (chunk_index, lo, hi) tuple");
    ExtraKey k;
    try {
      k.chunk_index = t[0].cast<uint32_t>();
      k.lo = t[1].cast<uint64_t>();
      k.hi = t[2].cast<uint64_t>();
    } catch (const py::cast_error&) {
      throw py::value_error("extra_keys: chunk_index must fit 32 bits and lo, hi 64 bits (unsigned)");
    }
    out.push_back(k);
  }
  return out;
}

py::dict StatsDict(const StoreStats& s) {
  py::dict d;
#define KVTIER_STAT(f) d[#f] = s.f;
  KVTIER_STORE_STATS_NUMBERS(KVTIER_STAT)
  KVTIER_STORE_STATS_STRINGS(KVTIER_STAT)
#undef KVTIER_STAT
  return d;
}

// ---- classes ------------------------------------------------------------------------

class PyStore {
 public:
  explicit PyStore(std::unique_ptr<Store> store) : store_(std::move(store)) {}
  explicit PyStore(const StoreConfig& config) {
    Result<std::unique_ptr<Store>> s = [&] {
      py::gil_scoped_release nogil;
      return Store::Open(config);
    }();
    Check(s.status());
    store_ = std::shared_ptr<Store>(std::move(*s));
  }
  ~PyStore() {
    py::gil_scoped_release nogil;
    store_.reset();  // the last reference (no Namespace left) closes the Store
  }

  void Close() {
    Status s;
    {
      py::gil_scoped_release nogil;
      s = store_->Close();
    }
    closed_ = true;
    Check(s);
  }
  bool closed() const { return closed_; }
  py::dict Stats() const {
    if (closed_) Raise(Status::Closed("store is closed; open a new one"));
    StoreStats s;
    {
      py::gil_scoped_release nogil;
      s = store_->Stats();
    }
    return StatsDict(s);
  }
  const std::shared_ptr<Store>& store() const { return store_; }

 private:
  std::shared_ptr<Store> store_;
  bool closed_ = false;  // guarded by the GIL
};

class PyNamespace {
 public:
  PyNamespace(std::shared_ptr<Store> store, NamespaceHandle h, NamespaceSpec spec, py::object keepalive)
      : store_(std::move(store)), handle_(h), spec_(std::move(spec)), keepalive_(std::move(keepalive)) {}
  ~PyNamespace() {
    if (released_) return;
    py::gil_scoped_release nogil;
    (void)store_->UnregisterNamespace(handle_);
  }

  void Release() {
    if (released_) return;
    released_ = true;
    Status s;
    {
      py::gil_scoped_release nogil;
      s = store_->UnregisterNamespace(handle_);
    }
    keepalive_ = py::none();
    if (!s.ok() && s.code() != Status::Code::kClosed) Raise(s);
  }

  py::dict Lookup(const py::handle& tokens_obj, const py::handle& extra_obj, bool prefetch,
                  uint32_t prefetch_deadline_ms) {
    CheckLive();
    const std::vector<int32_t> tokens = Int32Vector(tokens_obj, "tokens");
    const std::vector<ExtraKey> extra = ExtraKeys(extra_obj);
    LookupOptions o;
    o.prefetch = prefetch;
    o.prefetch_deadline = std::chrono::milliseconds(prefetch_deadline_ms);
    Result<LookupResult> r = [&] {
      py::gil_scoped_release nogil;
      return store_->Lookup(handle_, tokens, extra, o);
    }();
    Check(r.status());
    py::list tiers;
    for (TierId t : r->chunk_tiers) tiers.append(TierName(t));
    py::dict d;
    d["matched_tokens"] = r->matched_tokens;
    d["matched_chunks"] = r->matched_chunks;
    d["total_chunks"] = r->total_chunks;
    d["cached_chunks"] = r->cached_chunks;
    d["chunk_tiers"] = tiers;
    d["prefetch_id"] = r->prefetch_id;
    return d;
  }

  void CancelPrefetch(uint64_t id) {
    CheckLive();
    Check(store_->CancelPrefetch(id));
  }

  // Save or load; the returned ticket holds `self` so the registered memory stays alive.
  template <bool kSave>
  Ticket Submit(const py::handle& tokens_obj, const py::handle& blocks_obj, const py::handle& extra_obj) {
    CheckLive();
    const std::vector<int32_t> tokens = Int32Vector(tokens_obj, "tokens");
    const std::vector<int32_t> blocks = Int32Vector(blocks_obj, "block_ids");
    const std::vector<ExtraKey> extra = ExtraKeys(extra_obj);
    Result<Ticket> t = [&] {
      py::gil_scoped_release nogil;
      return kSave ? store_->Save(handle_, tokens, blocks, extra) : store_->Load(handle_, tokens, blocks, extra);
    }();
    Check(t.status());
    return std::move(*t);
  }

  uint32_t chunk_tokens() const { return spec_.shape.chunk_tokens; }
  const NamespaceSpec& spec() const { return spec_; }
  bool released() const { return released_; }

 private:
  void CheckLive() const {
    if (released_) RaiseInvalid("namespace was released; register it again");
  }

  std::shared_ptr<Store> store_;
  NamespaceHandle handle_;
  NamespaceSpec spec_;
  py::object keepalive_;   // owner of the registered memory
  bool released_ = false;  // guarded by the GIL
};

class PyTicket {
 public:
  PyTicket(Ticket t, py::object owner) : ticket_(std::move(t)), owner_(std::move(owner)) {}
  ~PyTicket() {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> l(mu_);
    ticket_.Release();
  }

  // True when done; false when `timeout` (seconds) passed first. Waits in slices, the
  // lock dropped between them, so that cancel() from another thread is not held up.
  bool Wait(std::optional<double> timeout) {
    py::gil_scoped_release nogil;
    using Clock = std::chrono::steady_clock;
    const auto wait_for = std::chrono::nanoseconds(static_cast<int64_t>(std::max(0.0, timeout.value_or(0)) * 1e9));
    const auto deadline = timeout.has_value() ? Clock::now() + wait_for : Clock::time_point::max();
    constexpr auto kSlice = std::chrono::milliseconds(20);
    for (;;) {
      {
        std::lock_guard<std::mutex> l(mu_);
        if (!ticket_.valid() || ticket_.done()) return true;
        const auto now = Clock::now();
        if (now >= deadline) return false;
        (void)ticket_.Wait(std::min<Clock::duration>(kSlice, deadline - now));
        if (ticket_.done()) return true;
      }
    }
  }
  bool done() {
    std::lock_guard<std::mutex> l(mu_);
    return !ticket_.valid() || ticket_.done();
  }
  uint32_t chunks_done() {
    std::lock_guard<std::mutex> l(mu_);
    return ticket_.valid() ? ticket_.chunks_done() : released_chunks_done_;
  }
  uint32_t chunks_requested() {
    std::lock_guard<std::mutex> l(mu_);
    return ticket_.valid() ? ticket_.chunks_requested() : released_chunks_requested_;
  }
  Status status() {
    std::lock_guard<std::mutex> l(mu_);
    return ticket_.valid() ? ticket_.status() : released_status_;
  }
  void Cancel() {
    std::lock_guard<std::mutex> l(mu_);
    if (ticket_.valid()) ticket_.Cancel();
  }
  void Release() {
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> l(mu_);
      if (!ticket_.valid()) return;
      const bool was_done = ticket_.done();
      ticket_.Cancel();
      (void)ticket_.Wait();
      released_chunks_done_ = ticket_.chunks_done();
      released_chunks_requested_ = ticket_.chunks_requested();
      released_status_ = was_done ? ticket_.status() : Status::Cancelled("ticket released while running");
      ticket_.Release();
    }
    owner_ = py::none();
  }

 private:
  std::mutex mu_;  // a Ticket is used by one thread at a time; Python threads may share this object
  Ticket ticket_;
  py::object owner_;  // the Namespace (and through it the engine memory)
  uint32_t released_chunks_done_ = 0;
  uint32_t released_chunks_requested_ = 0;
  Status released_status_ = Status::Cancelled("ticket released");
};

std::unique_ptr<PyStore> OpenStore(uint64_t host_capacity_bytes, uint32_t worker_threads, const std::string& huge_pages,
                       bool prefault, uint64_t max_request_tokens, const py::object& nvme_paths,
                       uint64_t nvme_capacity_bytes, const std::string& nvme_metadata_dir, uint32_t nvme_queue_depth,
                       bool nvme_buffered, const std::string& nvme_policy) {
  StoreConfig c;
  c.host_capacity_bytes = host_capacity_bytes;
  c.worker_threads = worker_threads;
  if (huge_pages == "auto") {
    c.huge_pages = HugePages::kAuto;
  } else if (huge_pages == "off") {
    c.huge_pages = HugePages::kOff;
  } else if (huge_pages == "require") {
    c.huge_pages = HugePages::kRequire;
  } else {
    RaiseInvalid("huge_pages '" + huge_pages + "' is not one of auto, off, require");
  }
  c.prefault = prefault;
  c.max_request_tokens = max_request_tokens;
  if (!nvme_paths.is_none()) {
    c.nvme.enabled = true;
    if (py::isinstance<py::str>(nvme_paths) || py::isinstance(nvme_paths, py::module_::import("os").attr("PathLike"))) {
      c.nvme.paths.push_back(py::str(py::module_::import("os").attr("fspath")(nvme_paths)));
    } else {
      for (py::handle p : nvme_paths) c.nvme.paths.push_back(py::str(py::module_::import("os").attr("fspath")(p)));
    }
    if (c.nvme.paths.empty()) RaiseInvalid("nvme_paths is empty; name at least one data file (or pass None)");
    c.nvme.capacity_bytes = nvme_capacity_bytes;
    c.nvme.metadata_dir = nvme_metadata_dir;
    c.nvme.queue_depth = nvme_queue_depth;
    c.nvme.buffered = nvme_buffered;
    if (nvme_policy == "write_back") {
      c.nvme.policy = WritePolicy::kWriteBack;
    } else if (nvme_policy == "write_through") {
      c.nvme.policy = WritePolicy::kWriteThrough;
    } else if (nvme_policy == "none") {
      c.nvme.policy = WritePolicy::kNone;
    } else {
      RaiseInvalid("nvme_policy '" + nvme_policy + "' is not one of write_back, write_through, none");
    }
  }
  return std::make_unique<PyStore>(c);
}

// Store.connect: a Store whose cache is kvtierd's.
std::unique_ptr<PyStore> ConnectStore(const std::string& address, const std::string& tenant, const std::string& token,
                                      uint32_t timeout_ms, uint32_t worker_threads) {
  DaemonClientConfig c;
  c.address = address;
  c.tenant = tenant;
  c.token = token;
  c.timeout = std::chrono::milliseconds(timeout_ms);
  c.worker_threads = worker_threads;
  Result<std::unique_ptr<Store>> s = [&] {
    py::gil_scoped_release nogil;
    return Store::Connect(c);
  }();
  Check(s.status());
  return std::make_unique<PyStore>(std::move(*s));
}

void DefineErrors(py::module_& m) {
  g_base_error = PyErr_NewExceptionWithDoc("kvtier._kvtier.Error", "A kvtier call failed; .args[0] is the message.",
                                           PyExc_RuntimeError, nullptr);
  m.attr("Error") = py::handle(g_base_error);
  struct Def {
    Status::Code code;
    const char* name;
    PyObject* also;  // a builtin it is also, or null
  };
  const Def defs[] = {
      {Status::Code::kInvalidArgument, "InvalidArgumentError", PyExc_ValueError},
      {Status::Code::kNotFound, "NotFoundError", nullptr},
      {Status::Code::kCorruption, "CorruptionError", nullptr},
      {Status::Code::kNoSpace, "NoSpaceError", nullptr},
      {Status::Code::kBusy, "BusyError", nullptr},
      {Status::Code::kTimedOut, "TimedOutError", PyExc_TimeoutError},
      {Status::Code::kCancelled, "CancelledError", nullptr},
      {Status::Code::kIOError, "IoError", PyExc_OSError},
      {Status::Code::kNotSupported, "NotSupportedError", PyExc_NotImplementedError},
      {Status::Code::kClosed, "ClosedError", nullptr},
      {Status::Code::kNoMemory, "NoMemoryError", PyExc_MemoryError},
      {Status::Code::kInternal, "InternalError", nullptr},
      {Status::Code::kUnavailable, "UnavailableError", PyExc_ConnectionError},
      {Status::Code::kPermissionDenied, "PermissionDeniedError", PyExc_PermissionError},
  };
  for (const Def& d : defs) {
    PyObject* bases = d.also != nullptr ? PyTuple_Pack(2, g_base_error, d.also) : PyTuple_Pack(1, g_base_error);
    const std::string qualified = std::string("kvtier._kvtier.") + d.name;
    PyObject* type = PyErr_NewException(qualified.c_str(), bases, nullptr);
    Py_DECREF(bases);
    if (type == nullptr) throw py::error_already_set();
    g_errors[static_cast<int>(d.code)] = type;
    m.attr(d.name) = py::handle(type);
  }
}

}  // namespace
}  // namespace kvtier::python

PYBIND11_MODULE(_kvtier, m) {
  using namespace kvtier;          // NOLINT: the module body names the C++ API throughout
  using namespace kvtier::python;  // NOLINT
  m.doc() = "kvtier: a tiered KV-cache store (embedded Store; see kvtier/__init__.py)";
  DefineErrors(m);

  py::class_<PyStore>(m, "Store", "An embedded kvtier Store: host DRAM tier, optional NVMe tier.")
      .def(py::init(&OpenStore), py::arg("host_capacity_bytes") = uint64_t{1} << 30, py::arg("worker_threads") = 2,
           py::arg("huge_pages") = "auto", py::arg("prefault") = true,
           py::arg("max_request_tokens") = uint64_t{1} << 21, py::arg("nvme_paths") = py::none(),
           py::arg("nvme_capacity_bytes") = 0, py::arg("nvme_metadata_dir") = "", py::arg("nvme_queue_depth") = 16,
           py::arg("nvme_buffered") = false, py::arg("nvme_policy") = "write_back")
      .def_static("connect", &ConnectStore, py::arg("address"), py::arg("tenant") = "", py::arg("token") = "",
                  py::arg("timeout_ms") = 5000, py::arg("worker_threads") = 2,
                  "A Store whose cache is kvtierd's (address: 'unix:/path' or a socket path); the same API, bytes "
                  "through the daemon's shared memory. UnavailableError while the daemon is unreachable.")
      .def("close", &PyStore::Close, "Cancels queued work, waits for running copies; later calls raise ClosedError.")
      .def_property_readonly("closed", &PyStore::closed)
      .def("stats", &PyStore::Stats, "Counters since open (a dict; see StoreStats in kvtier/store.h).")
      .def(
          "register_namespace",
          [](PyStore& self, const std::string& model_name, const std::string& model_revision,
             const std::string& weights_digest, const std::string& tokenizer_id, const std::string& adapter_id,
             const std::string& tenant_salt, uint32_t num_layers, uint32_t num_kv_heads, uint32_t head_dim,
             const py::object& dtype, uint32_t chunk_tokens, uint32_t tp_rank, uint32_t tp_size, bool mla,
             uint32_t block_tokens, uint32_t num_blocks, const py::sequence& layers, py::object keepalive) {
            NamespaceSpec spec;
            spec.model.name = model_name;
            spec.model.revision = model_revision;
            spec.model.weights_digest = weights_digest;
            spec.model.tokenizer_id = tokenizer_id;
            spec.adapter_id = adapter_id;
            spec.tenant_salt = tenant_salt;
            spec.shape.num_layers = num_layers;
            spec.shape.num_kv_heads = num_kv_heads;
            spec.shape.head_dim = head_dim;
            spec.shape.dtype = ParseDType(dtype);
            spec.shape.chunk_tokens = chunk_tokens;
            spec.shape.tp_rank = tp_rank;
            spec.shape.tp_size = tp_size;
            spec.shape.mla = mla;
            KvMemoryLayout layout;
            layout.block_tokens = block_tokens;
            layout.num_blocks = num_blocks;
            for (size_t i = 0; i < layers.size(); ++i) layout.layers.push_back(ParseLayer(layers[i], i));
            if (self.closed()) Raise(Status::Closed("store is closed; open a new one"));
            Result<NamespaceHandle> h = [&] {
              py::gil_scoped_release nogil;
              return self.store()->RegisterNamespace(spec, layout);
            }();
            Check(h.status());
            return std::make_unique<PyNamespace>(self.store(), *h, std::move(spec), std::move(keepalive));
          },
          py::arg("model_name"), py::kw_only(), py::arg("model_revision") = "", py::arg("weights_digest") = "",
          py::arg("tokenizer_id") = "", py::arg("adapter_id") = "", py::arg("tenant_salt") = "",
          py::arg("num_layers"), py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("dtype"),
          py::arg("chunk_tokens") = 256, py::arg("tp_rank") = 0, py::arg("tp_size") = 1, py::arg("mla") = false,
          py::arg("block_tokens"), py::arg("num_blocks"), py::arg("layers"), py::arg("keepalive") = py::none(),
          "Registers a model identity and the engine memory it reads and writes (one dict per layer: base, bytes, "
          "block_stride, token_stride, head_stride, dim_stride in bytes, and kv_offset or v_base). `keepalive` is "
          "held until release() so that memory outlives the namespace.");

  py::class_<PyNamespace>(m, "Namespace", "A registration: model identity plus engine KV memory.")
      .def("lookup", &PyNamespace::Lookup, py::arg("tokens"), py::arg("extra_keys") = py::none(),
           py::arg("prefetch") = false, py::arg("prefetch_deadline_ms") = 10000,
           "How many leading tokens are cached: {matched_tokens, matched_chunks, total_chunks, cached_chunks, "
           "chunk_tiers, prefetch_id}. extra_keys: (chunk_index, lo, hi) tuples bound to chunks (e.g. an image's "
           "128-bit hash). prefetch: start bringing chunks below host (NVMe, Redis) up now; prefetch_id names it.")
      .def("cancel_prefetch", &PyNamespace::CancelPrefetch, py::arg("prefetch_id"),
           "Stops a prefetch (chunks already brought up stay); NotFoundError when it is finished or unknown.")
      .def(
          "save",
          [](py::object self, const py::handle& tokens, const py::handle& block_ids, const py::handle& extra_keys) {
            Ticket t = self.cast<PyNamespace&>().Submit<true>(tokens, block_ids, extra_keys);
            return std::make_unique<PyTicket>(std::move(t), self);
          },
          py::arg("tokens"), py::arg("block_ids"), py::arg("extra_keys") = py::none(),
          "Saves the whole chunks of tokens from those blocks; a Ticket.")
      .def(
          "load",
          [](py::object self, const py::handle& tokens, const py::handle& block_ids, const py::handle& extra_keys) {
            Ticket t = self.cast<PyNamespace&>().Submit<false>(tokens, block_ids, extra_keys);
            return std::make_unique<PyTicket>(std::move(t), self);
          },
          py::arg("tokens"), py::arg("block_ids"), py::arg("extra_keys") = py::none(),
          "Loads the cached leading chunks of tokens into those blocks; a Ticket (chunks_done says how many).")
      .def("release", &PyNamespace::Release, "Forgets the registration (cached chunks stay).")
      .def_property_readonly("released", &PyNamespace::released)
      .def_property_readonly("chunk_tokens", &PyNamespace::chunk_tokens)
      .def_property_readonly("model_name", [](const PyNamespace& n) { return n.spec().model.name; })
      .def_property_readonly("model_revision", [](const PyNamespace& n) { return n.spec().model.revision; })
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyNamespace& n, py::args) { n.Release(); });

  py::class_<PyTicket>(m, "Ticket", "An asynchronous save or load.")
      .def("wait", &PyTicket::Wait, py::arg("timeout") = py::none(),
           "Blocks until done or `timeout` seconds pass; True when done.")
      .def_property_readonly("done", &PyTicket::done)
      .def_property_readonly("chunks_done", &PyTicket::chunks_done, "Leading chunks that succeeded.")
      .def_property_readonly("chunks_requested", &PyTicket::chunks_requested)
      .def_property_readonly("ok", [](PyTicket& t) { return t.done() && t.status().ok(); })
      .def_property_readonly("status", [](PyTicket& t) { return std::string(Status::CodeName(t.status().code())); },
                             "'ok', or the first failure's code name ('not found' for a miss, ...).")
      .def_property_readonly("error",
                             [](PyTicket& t) -> py::object {
                               const Status s = t.status();
                               if (s.ok()) return py::none();
                               return py::str(s.ToString());
                             })
      .def(
          "raise_for_status",
          [](PyTicket& t) {
            const Status s = t.status();
            if (!s.ok()) Raise(s);
          },
          "Raises the exception for the final status (BusyError while running).")
      .def("cancel", &PyTicket::Cancel, "Best effort: chunks not started are skipped.")
      .def("release", &PyTicket::Release, "Cancels if running, waits, drops the handle.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyTicket& t, py::args) { t.Release(); });

  m.attr("__version__") = "0.1.0";
}
