"""kvtier for vLLM V1: a KV connector that reuses prompt prefixes across requests and engines.

    vllm serve MODEL --revision REV --kv-transfer-config '{"kv_connector": "KVTierConnector",
        "kv_connector_module_path": "kvtier.vllm", "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {"kvtier.host_capacity_bytes": 17179869184}}'

vLLM calls the connector from two places. The scheduler half asks the Store how many
leading tokens of a new request are cached (whole chunks of ``chunk_tokens``, beyond what
vLLM's own prefix cache already holds) and writes, per step, which blocks to load and which
to save into the connector metadata. The worker half registers vLLM's paged KV tensors with
the Store once (addresses and byte strides, read from each tensor), then submits those loads
before the forward and those saves after it. KV bytes are copied by the Store's workers,
never in Python.

Store: ``kvtier.daemon`` (a kvtierd address) shares one cache between vLLM's scheduler and
worker processes and between engines on the node. Otherwise the connector opens an embedded
Store, shared by every connector of this process: that works when the scheduler and the
worker run in one process (tensor_parallel_size 1, vLLM's default "uni" executor) and is
refused otherwise, since a per-process cache would never be hit there.

Keys: the namespace is the model (``model_config.model``, its revision or commit hash, dtype
and quantization, tokenizer), the KV shape (layers, KV heads, head size, KV dtype, chunk
tokens, TP rank and size), the LoRA adapter and the request's ``cache_salt``. Two revisions
of a model never share KV. Requests with multimodal inputs or prompt embeddings are neither
loaded nor saved (their token ids do not name their KV).

Layouts (``register_kv_caches``): per layer, vLLM's ``[num_blocks, num_kv_heads, block_size,
2 * head_size]`` view with K and V side by side in the last axis (FlashAttention, Triton and
FlexAttention backends; any physical order of the axes), the same view as the CPU backend
reads it (K then V, each ``[block_size, head_size]``, per block and head), and the older
``[2, num_blocks, block_size, num_kv_heads, head_size]`` (FlashAttention) and
``[num_blocks, 2, block_size, num_kv_heads, head_size]`` (FlashInfer) tensors. Refused with
an error naming the layer: MLA latents, quantized caches with scales, other backends'
packings, and GPU tensors (the Python binding registers host memory only).

Loads: synchronous (the forward waits for them) when every matched chunk is in host DRAM;
asynchronous when some are below (NVMe, Redis), so a slow read holds only its request
(``kvtier.load_mode``: auto, sync or async). A load that delivers fewer chunks than the
lookup promised reports the missing blocks through ``get_block_ids_with_load_errors`` and
vLLM recomputes them (set ``kv_load_failure_policy`` to ``recompute``; vLLM's default fails
the request).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import threading
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

import kvtier

try:  # vLLM labels external hits by the tier that served them (recent releases)
    from vllm.v1.metrics.cache_hit_source import CacheHitSource
except ImportError:  # pragma: no cover - older vLLM
    CacheHitSource = None

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

logger = logging.getLogger(__name__)

# Chunks hold this many of vLLM's blocks unless kvtier.chunk_tokens says otherwise.
DEFAULT_CHUNK_BLOCKS = 16

# vLLM keeps block 0 as its null block: never handed to a request, never read for a token.
# Loads write the chunks that vLLM already holds locally there (see _LoadSpec).
_NULL_BLOCK = 0

# Attention backends whose per-layer view keeps K and V side by side in the last axis.
_KV_IN_CONTENT_BACKENDS = ("FLASH_ATTN", "TRITON_ATTN", "FLEX_ATTENTION")
# The CPU backend reads each block and head as [K tokens | V tokens].
_KV_HALVES_BACKENDS = ("CPU_ATTN",)

# Layer-wise loads need Ticket.wait_layer in the binding; without it a synchronous load is
# waited for whole in start_load_kv, before the forward.
_LAYERWISE = hasattr(kvtier.Ticket, "wait_layer")


# ---- configuration --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
    """The connector's settings: ``kvtier.*`` keys of ``kv_connector_extra_config``."""

    daemon: str = ""  # kvtierd address ("unix:/run/kvtier/kvtierd.sock"); empty: embedded Store
    tenant: str = ""
    token: str = ""  # the tenant's credential; default: $KVTIER_TOKEN
    timeout_ms: int = 5000
    host_capacity_bytes: int = 1 << 30
    nvme_paths: tuple[str, ...] = ()
    nvme_capacity_bytes: int = 0
    nvme_metadata_dir: str = ""
    nvme_buffered: bool = False
    nvme_policy: str = "write_back"
    worker_threads: int = 2
    huge_pages: str = "auto"
    prefault: bool = True
    chunk_tokens: int = 0  # 0: DEFAULT_CHUNK_BLOCKS blocks
    load_mode: str = "auto"  # auto | sync | async
    model_name: str = ""  # default: model_config.model
    model_revision: str = ""  # default: model_config.revision, else the config's commit hash
    weights_digest: str = ""
    tenant_salt: str = ""

    @classmethod
    def from_extra_config(cls, extra: dict[str, Any] | None) -> ConnectorConfig:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in (extra or {}).items():
            if not key.startswith("kvtier."):
                continue
            name = key[len("kvtier."):]
            if name not in fields:
                known = ", ".join("kvtier." + n for n in fields)
                raise ValueError(f"kv_connector_extra_config has unknown key {key!r}; known keys: {known}")
            values[name] = _coerce(key, value, fields[name].default)
        cfg = cls(**values)
        if not cfg.token and cfg.daemon:
            cfg = dataclasses.replace(cfg, token=os.environ.get("KVTIER_TOKEN", ""))
        if cfg.load_mode not in ("auto", "sync", "async"):
            raise ValueError(f"kvtier.load_mode is {cfg.load_mode!r}; use auto, sync or async")
        if cfg.chunk_tokens < 0:
            raise ValueError(f"kvtier.chunk_tokens is {cfg.chunk_tokens}; use a positive multiple of the block size")
        return cfg


def _coerce(key, value, default):
    """value as the type of the field's default, from JSON (or its string form)."""
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(value, (bool, int)):
            return bool(value)
    elif isinstance(default, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            pass
    elif isinstance(default, tuple):
        if isinstance(value, str):
            return tuple(p for p in (s.strip() for s in value.split(",")) if p)
        if isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
            return tuple(value)
    elif isinstance(value, str):
        return value
    raise ValueError(f"kv_connector_extra_config[{key!r}] is {value!r}; expected a {type(default).__name__}")


# ---- stores, one per configuration and process ----------------------------------------


class _ProcessStores:
    """Stores shared by the connectors of this process (the scheduler's and the worker's,
    when vLLM runs both in one process). Thread-safe; a Store closes when its last user
    releases it."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _stores: ClassVar[dict[tuple, list]] = {}  # key -> [Store, users]; guarded by _lock

    @classmethod
    def acquire(cls, cfg: ConnectorConfig):
        key = cls._key(cfg)
        with cls._lock:
            entry = cls._stores.get(key)
            if entry is None:
                entry = cls._stores[key] = [cls._open(cfg), 0]
            entry[1] += 1
            return key, entry[0]

    @classmethod
    def release(cls, key):
        with cls._lock:
            entry = cls._stores.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del cls._stores[key]
        entry[0].close()

    @staticmethod
    def _key(cfg):
        if cfg.daemon:
            return ("daemon", cfg.daemon, cfg.tenant, cfg.token)
        return ("embedded", cfg.host_capacity_bytes, cfg.nvme_paths, cfg.nvme_capacity_bytes, cfg.nvme_metadata_dir,
                cfg.nvme_buffered, cfg.nvme_policy, cfg.worker_threads, cfg.huge_pages, cfg.prefault)

    @staticmethod
    def _open(cfg):
        if cfg.daemon:
            try:
                return kvtier.Store.connect(cfg.daemon, tenant=cfg.tenant, token=cfg.token,
                                            timeout_ms=cfg.timeout_ms, worker_threads=cfg.worker_threads)
            except kvtier.Error as e:
                raise type(e)(f"kvtier.daemon {cfg.daemon}: {e}; start kvtierd there, or drop kvtier.daemon for an "
                              "embedded Store (one process only)") from e
        return kvtier.Store(host_capacity_bytes=cfg.host_capacity_bytes, worker_threads=cfg.worker_threads,
                            huge_pages=cfg.huge_pages, prefault=cfg.prefault,
                            nvme_paths=list(cfg.nvme_paths) or None, nvme_capacity_bytes=cfg.nvme_capacity_bytes,
                            nvme_metadata_dir=cfg.nvme_metadata_dir, nvme_buffered=cfg.nvme_buffered,
                            nvme_policy=cfg.nvme_policy)


# ---- model identity -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """What names this engine's KV in the Store; any difference gives disjoint keys."""

    name: str
    revision: str
    weights_digest: str
    tokenizer_id: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str  # kvtier name of the KV cache dtype
    block_tokens: int
    chunk_tokens: int
    tp_rank: int
    tp_size: int
    tenant_salt: str

    @property
    def blocks_per_chunk(self) -> int:
        return self.chunk_tokens // self.block_tokens

    def register_kwargs(self, adapter_id: str, cache_salt: str) -> dict[str, Any]:
        salt = self.tenant_salt if not cache_salt else f"{self.tenant_salt}/{cache_salt}"
        return dict(model_name=self.name, model_revision=self.revision, weights_digest=self.weights_digest,
                    tokenizer_id=self.tokenizer_id, adapter_id=adapter_id, tenant_salt=salt,
                    num_layers=self.num_layers, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                    dtype=self.dtype, chunk_tokens=self.chunk_tokens, tp_rank=self.tp_rank, tp_size=self.tp_size,
                    block_tokens=self.block_tokens)

    @classmethod
    def from_vllm(cls, vllm_config: VllmConfig, kv_cache_config: KVCacheConfig | None, cfg: ConnectorConfig,
                  tp_rank: int) -> ModelIdentity:
        model = vllm_config.model_config
        parallel = vllm_config.parallel_config
        if getattr(parallel, "pipeline_parallel_size", 1) > 1:
            raise ValueError("KVTierConnector: pipeline parallelism is not supported (each stage holds other layers "
                             "under the same model identity); use pipeline_parallel_size 1")
        if getattr(parallel, "decode_context_parallel_size", 1) > 1:
            raise ValueError("KVTierConnector: decode context parallelism splits a request's KV over ranks by token; "
                             "use decode_context_parallel_size 1")
        if getattr(model, "use_mla", False):
            raise ValueError(f"KVTierConnector: {model.model} uses MLA; its latent cache is not supported by this "
                             "connector yet")
        spec, layer_names = _attention_spec(kv_cache_config)
        block_tokens = int(spec.block_size)
        chunk_tokens = cfg.chunk_tokens or DEFAULT_CHUNK_BLOCKS * block_tokens
        if chunk_tokens % block_tokens:
            raise ValueError(f"kvtier.chunk_tokens {chunk_tokens} is not a multiple of vLLM's block size "
                             f"{block_tokens}; use e.g. {DEFAULT_CHUNK_BLOCKS * block_tokens}")
        head_size_v = getattr(spec, "head_size_v", spec.head_size)
        if head_size_v != spec.head_size:
            raise ValueError(f"KVTierConnector: K head size {spec.head_size} and V head size {head_size_v} differ; "
                             "kvtier stores K and V of one head size")
        hf_config = getattr(model, "hf_config", None)
        revision = (cfg.model_revision or model.revision or getattr(hf_config, "_commit_hash", None)
                    or _snapshot_revision(model.model) or "")
        if not revision and not cfg.weights_digest:
            raise ValueError(f"KVTierConnector: {model.model} has no revision, so KV of other weights under that name "
                             "would be served; pass --revision, or set kvtier.model_revision (or "
                             "kvtier.weights_digest) in kv_connector_extra_config")
        # Weights in another dtype or quantization compute other KV: they are part of the revision.
        quantization = getattr(model, "quantization", None)
        variant = kvtier.dtype_name(model.dtype) + (f",{quantization}" if quantization else "")
        tokenizer = getattr(model, "tokenizer", "") or ""
        tokenizer_revision = getattr(model, "tokenizer_revision", "") or ""
        return cls(
            name=cfg.model_name or str(model.model),
            revision=f"{revision}|{variant}",
            weights_digest=cfg.weights_digest,
            tokenizer_id=f"{tokenizer}@{tokenizer_revision}" if tokenizer_revision else str(tokenizer),
            num_layers=len(layer_names),
            num_kv_heads=int(spec.num_kv_heads),
            head_dim=int(spec.head_size),
            dtype=kvtier.dtype_name(spec.dtype),
            block_tokens=block_tokens,
            chunk_tokens=int(chunk_tokens),
            tp_rank=int(tp_rank),
            tp_size=int(getattr(parallel, "tensor_parallel_size", 1)),
            tenant_salt=cfg.tenant_salt,
        )


def _attention_spec(kv_cache_config):
    """(spec, layer names) of the one full-attention KV cache group."""
    groups = list(getattr(kv_cache_config, "kv_cache_groups", None) or [])
    if len(groups) != 1:
        raise ValueError(f"KVTierConnector: the model has {len(groups)} KV cache groups; only models with one group of "
                         "full-attention layers are supported (no hybrid or sliding-window-only layouts)")
    spec = groups[0].kv_cache_spec
    kind = type(spec).__name__
    if "MLA" in kind or not all(hasattr(spec, a) for a in ("num_kv_heads", "head_size", "dtype", "block_size")):
        raise ValueError(f"KVTierConnector: KV cache spec {kind} is not supported; only full attention with K and V")
    return spec, list(groups[0].layer_names)


def _snapshot_revision(path):
    """The commit of a Hugging Face cache snapshot path (.../snapshots/<40 hex>), else None."""
    m = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", str(path))
    return m.group(1) if m else None


def _tp_rank():
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        return int(get_tensor_model_parallel_rank())
    except (AssertionError, ImportError, RuntimeError):  # no TP group: one rank
        return 0


def _namespace_key(request) -> tuple[str, str] | None:
    """(adapter id, cache salt) naming the request's namespace, or None when its token ids do
    not name its KV (multimodal inputs, prompt embeddings)."""
    if getattr(request, "prompt_token_ids", None) is None or getattr(request, "prompt_embeds", None) is not None:
        return None
    if getattr(request, "mm_features", None):
        return None
    lora = getattr(request, "lora_request", None)
    adapter = f"{lora.lora_name}@{lora.lora_path}" if lora is not None else ""
    return adapter, getattr(request, "cache_salt", None) or ""


# ---- KV memory ------------------------------------------------------------------------


def _natural_key(name):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _extent_bytes(t):
    if t.numel() == 0:
        return 0
    return (1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))) * t.element_size()


def layer_memory(name: str, t: torch.Tensor, ident: ModelIdentity, backend: str | None) -> tuple[dict, int]:
    """(the kvtier layer description of vLLM's KV tensor `t` for layer `name`, its block count).

    Reads the layout from the tensor's shape and strides; raises ValueError naming the layer
    and the layouts that are supported when it is none of them."""
    if t.device.type != "cpu":
        raise ValueError(f"layer {name}: the KV cache is on {t.device}; kvtier's Python binding registers host "
                         "memory only, so this connector runs with vLLM's CPU backend (GPU KV caches need the "
                         "binding to pass KvMemoryLayout.device and CUDA events)")
    if kvtier.dtype_name(t.dtype) != ident.dtype:
        raise ValueError(f"layer {name}: KV dtype {t.dtype} differs from the KV cache spec's {ident.dtype}")
    e = t.element_size()
    heads, dim, tokens = ident.num_kv_heads, ident.head_dim, ident.block_tokens
    s = [x * e for x in t.stride()]
    if min(s, default=0) < 0:
        raise ValueError(f"layer {name}: negative strides {t.stride()} are not supported")
    memory = {"base": t.data_ptr(), "bytes": _extent_bytes(t)}
    if t.dim() == 4 and tuple(t.shape[1:]) == (heads, tokens, 2 * dim):
        if backend in _KV_HALVES_BACKENDS:
            if t.stride(3) != 1 or t.stride(2) != 2 * dim:
                raise ValueError(f"layer {name}: {backend} reads each block and head as [K tokens | V tokens], which "
                                 f"needs tokens and features contiguous; strides are {t.stride()}")
            memory.update(block_stride=s[0], head_stride=s[1], token_stride=dim * e, dim_stride=e,
                          kv_offset=tokens * dim * e)
        elif backend is None or backend in _KV_IN_CONTENT_BACKENDS:
            memory.update(block_stride=s[0], head_stride=s[1], token_stride=s[2], dim_stride=s[3],
                          kv_offset=dim * s[3])
        else:
            known = ", ".join(_KV_IN_CONTENT_BACKENDS + _KV_HALVES_BACKENDS)
            raise ValueError(f"layer {name}: attention backend {backend} is not supported (its KV page packing is "
                             f"not known to kvtier); use one of {known}")
        return memory, int(t.shape[0])
    if t.dim() == 5 and tuple(t.shape[2:]) == (tokens, heads, dim) and 2 in tuple(t.shape[:2]):
        # [2, blocks, ...] (FlashAttention) or [blocks, 2, ...] (FlashInfer); with 2 blocks, FlashAttention's.
        kv_axis = 0 if t.shape[0] == 2 else 1
        block_axis = 1 - kv_axis
        memory.update(block_stride=s[block_axis], token_stride=s[2], head_stride=s[3], dim_stride=s[4],
                      kv_offset=s[kv_axis])
        return memory, int(t.shape[block_axis])
    raise ValueError(
        f"layer {name}: KV tensor of shape {tuple(t.shape)} and strides {t.stride()} is not a supported layout for "
        f"{heads} KV heads of {dim} and blocks of {tokens} tokens; supported: [num_blocks, {heads}, {tokens}, "
        f"{2 * dim}] (K|V in the last axis), [2, num_blocks, {tokens}, {heads}, {dim}] and "
        f"[num_blocks, 2, {tokens}, {heads}, {dim}]; MLA and quantized caches with scales are not")


def _attention_backend(vllm_config, layer_names) -> str | None:
    """The attention backend's name (FLASH_ATTN, CPU_ATTN, ...) of these layers, None when unknown."""
    context = getattr(vllm_config.compilation_config, "static_forward_context", None) or {}
    names = set()
    for layer_name in layer_names:
        layer = context.get(layer_name)
        get = getattr(layer, "get_attn_backend", None)
        backend = get() if callable(get) else getattr(layer, "attn_backend", None)
        if backend is not None and hasattr(backend, "get_name"):
            names.add(backend.get_name())
    if len(names) > 1:
        raise ValueError(f"KVTierConnector: layers use several attention backends {sorted(names)}; one is supported")
    if names:
        return names.pop()
    configured = getattr(getattr(vllm_config, "attention_config", None), "backend", None)
    return getattr(configured, "name", configured) or None


# ---- connector metadata (scheduler -> workers; pickled) -------------------------------


@dataclasses.dataclass
class _LoadSpec:
    req_id: str
    namespace: tuple[str, str]
    tokens: np.ndarray  # int32, whole chunks
    block_ids: np.ndarray  # int32, chunks * blocks_per_chunk; vLLM's local blocks replaced by _NULL_BLOCK
    local_blocks: int  # leading blocks vLLM computed itself (written to the null block, never reported)
    is_async: bool


@dataclasses.dataclass
class _SaveSpec:
    req_id: str
    namespace: tuple[str, str]
    tokens: np.ndarray  # int32, whole chunks from position 0
    block_ids: np.ndarray  # int32


@dataclasses.dataclass
class KVTierMetadata(KVConnectorMetadata):
    loads: list[_LoadSpec] = dataclasses.field(default_factory=list)
    saves: list[_SaveSpec] = dataclasses.field(default_factory=list)
    preempted: set[str] = dataclasses.field(default_factory=set)


# ---- scheduler half -------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:  # a lookup's answer, until the request's blocks are allocated
    matched: int
    local: int
    tiers: list[str]
    is_async: bool
    namespace: tuple[str, str]


@dataclasses.dataclass
class _Running:  # a request the scheduler admitted
    request: Any
    namespace: tuple[str, str] | None
    block_ids: list[int] = dataclasses.field(default_factory=list)
    stored_chunks: int = 0  # leading chunks cached or already sent to be saved


class _SchedulerSide:
    """Lookups, load plans and save decisions. Called from vLLM's scheduler thread only."""

    def __init__(self, vllm_config, kv_cache_config, cfg):
        self.cfg = cfg
        self.ident = ModelIdentity.from_vllm(vllm_config, kv_cache_config, cfg, tp_rank=0)
        self._dtype_bytes = _attention_spec(kv_cache_config)[0].dtype.itemsize
        transfer = vllm_config.kv_transfer_config
        self.loads_enabled = bool(getattr(transfer, "is_kv_consumer", True))
        self.saves_enabled = bool(getattr(transfer, "is_kv_producer", True))
        if not cfg.daemon:
            _check_one_process(vllm_config)
        self.store_key, self.store = _ProcessStores.acquire(cfg)
        self.null_block = _NULL_BLOCK
        self._probes: dict[tuple[str, str], Any] = {}  # lookup-only namespaces
        self._probe_memory = None
        self._prefetch = True  # the binding takes lookup(prefetch=...); cleared when it does not
        self._plans: dict[str, _Plan] = {}
        self._hits: dict[str, tuple[int, list[str]]] = {}  # req -> (local tokens, chunk tiers)
        self._running: dict[str, _Running] = {}
        self._loads: list[_LoadSpec] = []  # for the next metadata
        self._async_loading: set[str] = set()
        self._saving: set[str] = set()  # requests with a save sent; the worker reports them finished

    # Lookups need a registration; it copies nothing, so one block of scratch serves all layers.
    def _probe(self, key):
        ns = self._probes.get(key)
        if ns is None:
            ident, e = self.ident, self._dtype_bytes
            token_bytes = ident.num_kv_heads * 2 * ident.head_dim * e
            if self._probe_memory is None:
                self._probe_memory = torch.zeros(ident.block_tokens * token_bytes, dtype=torch.uint8)
            t = self._probe_memory
            layer = {"base": t.data_ptr(), "bytes": t.numel(), "block_stride": ident.block_tokens * token_bytes,
                     "token_stride": token_bytes, "head_stride": 2 * ident.head_dim * e, "dim_stride": e,
                     "kv_offset": ident.head_dim * e}
            ns = self.store.register_namespace(**ident.register_kwargs(*key), num_blocks=1,
                                               layers=[layer] * ident.num_layers, keepalive=t)
            self._probes[key] = ns
        return ns

    def _lookup(self, key, tokens):
        ns = self._probe(key)
        if self._prefetch:
            try:
                return ns.lookup(tokens, prefetch=True)
            except TypeError:
                self._prefetch = False
        return ns.lookup(tokens)

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        self._plans.pop(request.request_id, None)
        key = _namespace_key(request) if self.loads_enabled else None
        if key is None:
            return 0, False
        c = self.ident.chunk_tokens
        num_tokens = request.num_tokens
        whole = num_tokens // c * c
        if whole <= num_computed_tokens:
            return 0, False
        tokens = np.asarray(request.all_token_ids[:whole], dtype=np.int32)
        try:
            result = self._lookup(key, tokens)
        except kvtier.UnavailableError as e:  # kvtierd is down: a miss, vLLM computes the prompt
            logger.warning("kvtier: lookup of %s: %s", request.request_id, e)
            return 0, False
        matched = int(result["matched_tokens"])
        tiers = [str(t) for t in result["chunk_tiers"]]
        slow = any(t not in ("host", "gpu") for t in tiers)
        is_async = self.cfg.load_mode == "async" or (self.cfg.load_mode == "auto" and slow)
        # A synchronous hit leaves the last prompt token to compute (vLLM needs its logits);
        # the load still fills its chunk and the forward rewrites that one token.
        hit = matched if is_async else min(matched, num_tokens - 1)
        if hit <= num_computed_tokens:
            return 0, False
        self._plans[request.request_id] = _Plan(matched, num_computed_tokens, tiers, is_async, key)
        return hit - num_computed_tokens, is_async

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        req_id = request.request_id
        plan = self._plans.pop(req_id, None)
        running = self._running.get(req_id)
        if running is None:
            running = self._running[req_id] = _Running(request, _namespace_key(request))
        if plan is None:
            return
        c, bpc = self.ident.chunk_tokens, self.ident.blocks_per_chunk
        running.stored_chunks = max(running.stored_chunks, plan.matched // c)
        if num_external_tokens <= 0:
            return
        block_ids = list(blocks.get_block_ids()[0])
        chunks = min(math.ceil((plan.local + num_external_tokens) / c), plan.matched // c, len(block_ids) // bpc)
        if chunks <= 0:
            return
        local_blocks = min(plan.local // self.ident.block_tokens, chunks * bpc)
        ids = [self.null_block] * local_blocks + block_ids[local_blocks:chunks * bpc]
        self._loads.append(_LoadSpec(
            req_id=req_id, namespace=plan.namespace,
            tokens=np.asarray(request.all_token_ids[:chunks * c], dtype=np.int32),
            block_ids=np.asarray(ids, dtype=np.int32), local_blocks=local_blocks, is_async=plan.is_async))
        self._hits[req_id] = (plan.local, plan.tiers)
        if plan.is_async:
            self._async_loading.add(req_id)

    def external_hit_sources(self, request, num_external_tokens):
        local, tiers = self._hits.pop(request.request_id, (0, []))
        c = self.ident.chunk_tokens
        by_source: dict[Any, int] = {}
        end = local + num_external_tokens
        for i, tier in enumerate(tiers):
            n = max(0, min(end, (i + 1) * c) - max(local, i * c))
            if n:
                source = {"host": CacheHitSource.HOST, "gpu": CacheHitSource.HOST,
                          "nvme": CacheHitSource.DISK}.get(tier, CacheHitSource.EXTERNAL_UNSPECIFIED)
                by_source[source] = by_source.get(source, 0) + n
        if sum(by_source.values()) != num_external_tokens:
            return {CacheHitSource.HOST: num_external_tokens}
        return by_source

    def build_connector_meta(self, out):
        meta = KVTierMetadata(loads=self._loads, preempted=set(getattr(out, "preempted_req_ids", None) or ()))
        self._loads = []
        if not self.saves_enabled:
            return meta
        scheduled = out.num_scheduled_tokens
        for new in out.scheduled_new_reqs:
            running = self._running.get(new.req_id)
            if running is not None:
                running.block_ids = list(new.block_ids[0])
                self._maybe_save(running, new.num_computed_tokens + scheduled.get(new.req_id, 0), meta)
        cached = out.scheduled_cached_reqs
        resumed = getattr(cached, "resumed_req_ids", None) or set()
        for i, req_id in enumerate(cached.req_ids):
            running = self._running.get(req_id)
            if running is None:
                continue
            new_blocks = cached.new_block_ids[i]
            if req_id in resumed:
                running.block_ids = list(new_blocks[0]) if new_blocks else []
            elif new_blocks:
                running.block_ids.extend(new_blocks[0])
            self._maybe_save(running, cached.num_computed_tokens[i] + scheduled.get(req_id, 0), meta)
        return meta

    def _maybe_save(self, running, computed_after_step, meta):
        """Sends the whole chunks whose KV this step completes (tokens known to the scheduler)."""
        if running.namespace is None:
            return
        c, bpc = self.ident.chunk_tokens, self.ident.blocks_per_chunk
        request = running.request
        chunks = min(min(computed_after_step, request.num_tokens) // c, len(running.block_ids) // bpc)
        if chunks <= running.stored_chunks:
            return
        meta.saves.append(_SaveSpec(
            req_id=request.request_id, namespace=running.namespace,
            tokens=np.asarray(request.all_token_ids[:chunks * c], dtype=np.int32),
            block_ids=np.asarray(running.block_ids[:chunks * bpc], dtype=np.int32)))
        running.stored_chunks = chunks
        self._saving.add(request.request_id)

    def update_connector_output(self, output):
        for req_id in getattr(output, "finished_recving", None) or ():
            self._async_loading.discard(req_id)
        invalid = getattr(output, "invalid_block_ids", None)
        if invalid:  # chunks that failed to load are gone from the Store: save them again once recomputed
            bpc = self.ident.blocks_per_chunk
            for running in self._running.values():
                first = next((i for i, b in enumerate(running.block_ids) if b in invalid), None)
                if first is not None:
                    running.stored_chunks = min(running.stored_chunks, first // bpc)

    def request_finished(self, request, block_ids):
        req_id = request.request_id
        self._running.pop(req_id, None)
        self._plans.pop(req_id, None)
        self._hits.pop(req_id, None)
        # Blocks stay allocated until the worker reports the saves (finished_sending) or the
        # async load (finished_recving) that still touch them.
        delay = req_id in self._saving or req_id in self._async_loading
        self._saving.discard(req_id)
        return delay, None

    def shutdown(self):
        for ns in self._probes.values():
            ns.release()
        self._probes.clear()
        if self.store is not None:
            _ProcessStores.release(self.store_key)
            self.store = None


def _check_one_process(vllm_config):
    parallel = vllm_config.parallel_config
    world = getattr(parallel, "world_size", 1)
    backend = getattr(parallel, "distributed_executor_backend", None)
    if world > 1 or backend in ("mp", "ray"):
        raise ValueError(f"KVTierConnector: an embedded kvtier Store lives in one process, but vLLM runs its workers "
                         f"apart from the scheduler here (world size {world}, executor {backend!r}), so no lookup "
                         "would see their saves; run kvtierd and set kvtier.daemon")


# ---- worker half ----------------------------------------------------------------------


class _WorkerSide:
    """Registers vLLM's KV tensors and runs loads and saves. vLLM calls it from the model
    runner's thread; Store tickets run on the Store's workers."""

    def __init__(self, vllm_config, kv_cache_config, cfg):
        self.vllm_config = vllm_config
        self.cfg = cfg
        self.ident = ModelIdentity.from_vllm(vllm_config, kv_cache_config, cfg, tp_rank=_tp_rank())
        _, self.layer_names = _attention_spec(kv_cache_config)
        self.store_key, self.store = _ProcessStores.acquire(cfg)
        self._layers: list[dict] | None = None
        self._num_blocks = 0
        self._layer_index: dict[str, int] = {}
        self._keepalive: list[torch.Tensor] = []
        self._namespaces: dict[tuple[str, str], Any] = {}
        self._sync: list[tuple[Any, _LoadSpec]] = []  # this step's loads the forward waits for
        self._async: dict[str, tuple[Any, _LoadSpec]] = {}
        self._saves: dict[str, list] = {}  # req -> save tickets not yet reaped
        self._saved_reqs: set[str] = set()  # requests that had a save (the scheduler delays their free)
        self._finishing: set[str] = set()  # finished by the scheduler, saves still running
        self._errors: set[int] = set()

    def register_kv_caches(self, kv_caches):
        wanted = set(self.layer_names)
        names = sorted((n for n in kv_caches if n in wanted), key=_natural_key)
        if len(names) != self.ident.num_layers:
            raise ValueError(f"KVTierConnector: register_kv_caches got {len(names)} of the {self.ident.num_layers} "
                             f"attention layers of the KV cache config ({sorted(wanted - set(names))[:4]} missing)")
        backend = _attention_backend(self.vllm_config, names)
        layers, counts = [], set()
        for name in names:
            memory, blocks = layer_memory(name, kv_caches[name], self.ident, backend)
            layers.append(memory)
            counts.add(blocks)
        if len(counts) != 1:
            raise ValueError(f"KVTierConnector: layers hold different block counts {sorted(counts)}")
        self._layers, self._num_blocks = layers, counts.pop()
        self._layer_index = {n: i for i, n in enumerate(names)}
        self._keepalive = [kv_caches[n] for n in names]
        if backend is None:
            logger.warning("kvtier: the attention backend is not known; reading KV pages as K|V in the last axis "
                           "(FlashAttention's packing)")
        logger.info("kvtier: registered %d layers of %d blocks (backend %s, chunks of %d tokens)", len(names),
                    self._num_blocks, backend, self.ident.chunk_tokens)

    def _namespace(self, key):
        ns = self._namespaces.get(key)
        if ns is None:
            if self._layers is None:
                raise RuntimeError("KVTierConnector: register_kv_caches was not called before the first load or save")
            ns = self.store.register_namespace(**self.ident.register_kwargs(*key), num_blocks=self._num_blocks,
                                               layers=self._layers, keepalive=self._keepalive)
            self._namespaces[key] = ns
        return ns

    def start_load_kv(self, meta):
        for spec in meta.loads:
            try:
                ticket = self._namespace(spec.namespace).load(spec.tokens, spec.block_ids)
            except kvtier.Error as e:
                logger.warning("kvtier: load of %s not submitted: %s", spec.req_id, e)
                ticket = None
            if spec.is_async:
                self._async[spec.req_id] = (ticket, spec)
            else:
                self._sync.append((ticket, spec))
        if not _LAYERWISE:
            self._finish_sync_loads()

    def wait_for_layer_load(self, layer_name):
        if not self._sync or not _LAYERWISE:
            return
        layer = self._layer_index.get(layer_name)
        if layer is None:
            return
        for ticket, _ in self._sync:
            if ticket is not None:
                ticket.wait_layer(layer)

    def _finish_sync_loads(self):
        for ticket, spec in self._sync:
            self._finish_load(ticket, spec)
        self._sync = []

    def _finish_load(self, ticket, spec):
        """Waits for a load and records the blocks it did not fill."""
        bpc = self.ident.blocks_per_chunk
        done = 0
        if ticket is not None:
            ticket.wait()
            done = ticket.chunks_done
            if not ticket.ok:
                logger.info("kvtier: load of %s delivered %d of %d chunks (%s)", spec.req_id, done,
                            len(spec.block_ids) // bpc, ticket.error)
            ticket.release()
        first = max(done * bpc, spec.local_blocks)
        self._errors.update(int(b) for b in spec.block_ids[first:])

    def wait_for_save(self, meta):
        self._finish_sync_loads()
        for spec in meta.saves:
            self._saved_reqs.add(spec.req_id)
            try:
                ticket = self._namespace(spec.namespace).save(spec.tokens, spec.block_ids)
            except kvtier.Error as e:  # a dropped save is a later miss, never an engine error
                logger.warning("kvtier: save of %s not submitted: %s", spec.req_id, e)
                continue
            self._saves.setdefault(spec.req_id, []).append(ticket)

    def handle_preemptions(self, meta):
        # A preempted request's blocks go back to vLLM now: its saves must stop reading them.
        for req_id in getattr(meta, "preempted", ()) or ():
            for ticket in self._saves.pop(req_id, []):
                ticket.wait()
                ticket.release()

    def _reap_saves(self):
        for req_id in list(self._saves):
            pending = []
            for ticket in self._saves[req_id]:
                if ticket.done:
                    if not ticket.ok:
                        logger.info("kvtier: save of %s stored %d of %d chunks (%s)", req_id, ticket.chunks_done,
                                    ticket.chunks_requested, ticket.error)
                    ticket.release()
                else:
                    pending.append(ticket)
            if pending:
                self._saves[req_id] = pending
            else:
                del self._saves[req_id]

    def get_finished(self, finished_req_ids):
        self._finishing.update(r for r in finished_req_ids if r in self._saved_reqs)
        self._reap_saves()
        sending = {r for r in self._finishing if r not in self._saves}
        self._finishing -= sending
        self._saved_reqs -= sending
        recving = set()
        for req_id, (ticket, spec) in list(self._async.items()):
            if ticket is None or ticket.done:
                self._finish_load(ticket, spec)
                del self._async[req_id]
                recving.add(req_id)
        return sending or None, recving or None

    def take_load_errors(self):
        errors, self._errors = self._errors, set()
        return errors

    def shutdown(self):
        for ticket, _ in self._sync + list(self._async.values()):
            if ticket is not None:
                ticket.release()  # cancels and waits: nothing writes vLLM's blocks afterwards
        self._sync, self._async = [], {}
        for tickets in self._saves.values():
            for ticket in tickets:
                ticket.wait()
                ticket.release()
        self._saves.clear()
        for ns in self._namespaces.values():
            ns.release()
        self._namespaces.clear()
        if self.store is not None:
            _ProcessStores.release(self.store_key)
            self.store = None


# ---- the connector --------------------------------------------------------------------


class KVTierConnector(KVConnectorBase_V1):
    """vLLM V1 KV connector backed by a kvtier Store (see the module docstring).

    One object per role: the scheduler's answers lookups and writes the per-step metadata;
    each worker's registers its KV tensors and runs the loads and saves that metadata names.
    """

    if CacheHitSource is not None:
        _cache_hit_source = CacheHitSource.HOST

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig | None = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.kvtier_config = ConnectorConfig.from_extra_config(self._kv_transfer_config.kv_connector_extra_config)
        self._scheduler: _SchedulerSide | None = None
        self._worker: _WorkerSide | None = None
        if role == KVConnectorRole.SCHEDULER:
            self._scheduler = _SchedulerSide(vllm_config, kv_cache_config, self.kvtier_config)
        else:
            self._worker = _WorkerSide(vllm_config, kv_cache_config, self.kvtier_config)

    @property
    def identity(self) -> ModelIdentity:
        return (self._scheduler or self._worker).ident

    @property
    def store(self):
        return (self._scheduler or self._worker).store

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a cache: a dropped save is a later miss

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config: dict[str, Any]) -> bool:
        return _LAYERWISE

    # ---- scheduler side ----

    def bind_gpu_block_pool(self, gpu_block_pool) -> None:
        null = getattr(gpu_block_pool, "null_block", None)
        if self._scheduler is not None and null is not None:
            self._scheduler.null_block = int(null.block_id)

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        return self._scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int):
        self._scheduler.update_state_after_alloc(request, blocks, num_external_tokens)

    def get_external_cache_hit_sources(self, request: Request, num_external_tokens: int):
        if num_external_tokens == 0 or CacheHitSource is None:
            return {}
        return self._scheduler.external_hit_sources(request, num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        return self._scheduler.build_connector_meta(scheduler_output)

    def update_connector_output(self, connector_output: KVConnectorOutput):
        self._scheduler.update_connector_output(connector_output)

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        return self._scheduler.request_finished(request, block_ids)

    # ---- worker side ----

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]):
        self._worker.register_kv_caches(kv_caches)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        self._worker.start_load_kv(self._get_connector_metadata())

    def wait_for_layer_load(self, layer_name: str) -> None:
        self._worker.wait_for_layer_load(layer_name)

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        # kvtier saves whole chunks of every layer in one pass (wait_for_save), so that a chunk
        # is stored only once all its layers are written.
        return

    def wait_for_save(self):
        self._worker.wait_for_save(self._get_connector_metadata())

    def handle_preemptions(self, kv_connector_metadata: KVConnectorMetadata):
        self._worker.handle_preemptions(kv_connector_metadata)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        return self._worker.get_finished(finished_req_ids)

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._worker.take_load_errors()

    def shutdown(self):
        (self._scheduler or self._worker).shutdown()
