"""kvtier as SGLang's HiCache storage backend (the L3 tier below SGLang's host KV pool).

SGLang loads it by name through its ``dynamic`` storage backend::

    python -m sglang.launch_server --model-path Qwen/Qwen3-8B --revision <commit> --page-size 64 \\
        --enable-hierarchical-cache --hicache-mem-layout page_first \\
        --hicache-storage-backend dynamic \\
        --hicache-storage-backend-extra-config '{"backend_name": "kvtier",
            "module_path": "kvtier.sglang", "class_name": "KVTierStorage", "interface_v1": 1,
            "kvtier": {"host_capacity_gib": 32}}'

``interface_v1`` makes SGLang call ``batch_get_v1``/``batch_set_v1`` with page indices of
its host pool; this backend registers that pool's tensors with the Store (addresses and
byte strides), so KV bytes move between the pool and kvtier's tiers on the Store's workers
and never through Python. Options under ``"kvtier"`` are listed in ``OPTIONS``; see
docs/sglang.md.

Keys. SGLang names each page by a hash chained over its tokens from the start of the
sequence (``key[i] = sha256(key[i-1], tokens of page i)``), so one page's key already names
its whole prefix. Each page is stored as a kvtier sequence of exactly one chunk
(``chunk_tokens`` = page size) whose token ids are ``page_tokens(key)``: the SHA-256 of the
key as int32 words, repeated to fill the page. The chunk's ChunkKey is then
``H(namespace, page_tokens(key))``: the prefix (through SGLang's chain) and the model
identity (through the namespace) together, whatever batch or offset a call names the page
in. Pages need at least 4 tokens (128 bits of identity); smaller pages are refused.

Identity (the namespace): model name (SGLang's storage model name, which carries the host
pool's storage format tag), revision, tokenizer, KV dtype, layers, KV heads, head dim, page
size, TP rank and size (not for MLA), and, when they apply, the pipeline stage's layer
range, the context-parallel rank and packed draft layers. A difference in any of them gives
disjoint keys. The host pool's memory layout (page_first, layer_first, ...) is not part of
it: kvtier stores chunks in its own layer-major format, so a page saved from one layout
loads into another.

Thread-safety: SGLang calls ``batch_exists`` (prefetch thread), ``batch_get_v1`` (prefetch
I/O thread) and ``batch_set_v1`` (backup thread) concurrently; each call only reads state
fixed by ``register_mem_pool_host`` and calls the Store, which is thread-safe.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Any, List, Optional

import numpy as np
import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig, HiCacheStorageExtraInfo

import kvtier

logger = logging.getLogger(__name__)

# Keys under "kvtier" in --hicache-storage-backend-extra-config, and what each does.
OPTIONS = {
    # Daemon mode: the cache is kvtierd's, shared by every engine process on the node.
    "address": "kvtierd's socket ('unix:/run/kvtier/kvtierd.sock' or a path); absent: an embedded Store",
    "tenant": "daemon tenant (default: the daemon's default tenant)",
    "token": "daemon tenant credential (put it in an '@config.json' file, not on the command line)",
    "timeout_ms": "daemon request timeout (default 5000)",
    # Embedded mode: a Store in this process (one per SGLang scheduler, i.e. per TP rank).
    "host_capacity_gib": "host DRAM tier size in GiB (default 1)",
    "worker_threads": "Store threads that copy for saves and loads (default 2)",
    "huge_pages": "auto | off | require (default auto)",
    "prefault": "touch the host tier at start so saves never page-fault (default true)",
    "nvme_paths": "NVMe tier data files (a list); absent: no NVMe tier",
    "nvme_capacity_gib": "NVMe tier size in GiB",
    "nvme_metadata_dir": "NVMe tier RocksDB directory (default: first path + '.meta')",
    "nvme_policy": "write_back | write_through | none (default write_back)",
    "nvme_buffered": "no O_DIRECT, for filesystems without it (default false)",
    # Identity overrides (defaults come from SGLang's model config).
    "model_name": "model name (default: SGLang's storage model name)",
    "model_revision": "weights revision (default: --revision)",
    "tokenizer_id": "tokenizer identity (default: --tokenizer-path)",
    "adapter_id": "LoRA adapter identity (default empty; SGLang's page hashes already separate adapters)",
    "tenant_salt": "isolates tenants that share a Store (default empty)",
    "dtype": "KV dtype of a 1-byte host pool: fp8_e4m3 | fp8_e5m2 | int8 | uint8 (default: --kv-cache-dtype)",
    "draft_model": "identity of packed draft (MTP) layers (default: --speculative-draft-model-path)",
    # Calls.
    "timeout_s": "how long one batch_get_v1/batch_set_v1 waits for its copies (default 60)",
}

MIN_PAGE_TOKENS = 4  # int32 token slots per page: 4 of them hold 128 bits of the key's hash

_LEGACY_CALL = (
    "kvtier.sglang.KVTierStorage implements only the zero-copy v1 interface (batch_get_v1/batch_set_v1); "
    'set "interface_v1": 1 in --hicache-storage-backend-extra-config'
)


def page_tokens(key: str, tokens: int) -> np.ndarray:
    """The token ids that stand for SGLang page `key` in kvtier: SHA-256(key) as 8 int32
    words, repeated (or cut) to `tokens` ids. Any string works as a key."""
    digest = hashlib.sha256(b"kvtier.sglang page\0" + key.encode("utf-8")).digest()
    return np.resize(np.frombuffer(digest, dtype=np.int32), tokens)


def _engine_setting(bag: str, field: str) -> Any:
    """A resolved SGLang server setting (get_model().revision, ...), or None where the
    runtime context is not published (a backend built outside a server, e.g. in tests)."""
    try:
        from sglang.srt import runtime_context

        return getattr(getattr(runtime_context, f"get_{bag}")(), field, None)
    except Exception:  # not published, or a field this release lacks
        return None


def _gib(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"kvtier.{what} is {value!r}; give a positive number of GiB (e.g. 32 or 0.5)")
    return int(value * (1 << 30))


def open_store(options: dict):
    """The Store the options describe: kvtierd's (address) or an embedded one."""
    if options.get("address"):
        address = str(options["address"])
        try:
            return kvtier.Store.connect(address, tenant=str(options.get("tenant", "")),
                                        token=str(options.get("token", "")),
                                        timeout_ms=int(options.get("timeout_ms", 5000)))
        except kvtier.NotSupportedError as e:
            raise kvtier.NotSupportedError(
                f"kvtier.address {address!r}: this kvtier build cannot connect to kvtierd ({e}); "
                "remove 'address' from the kvtier options to run an embedded store in this process"
            ) from e
    kwargs = {}
    if "host_capacity_gib" in options:
        kwargs["host_capacity_bytes"] = _gib(options["host_capacity_gib"], "host_capacity_gib")
    for key in ("worker_threads", "huge_pages", "prefault", "nvme_metadata_dir", "nvme_policy", "nvme_buffered"):
        if key in options:
            kwargs[key] = options[key]
    if options.get("nvme_paths"):
        paths = options["nvme_paths"]
        kwargs["nvme_paths"] = [paths] if isinstance(paths, str) else list(paths)
        if "nvme_capacity_gib" not in options:
            raise ValueError("kvtier.nvme_paths is set but kvtier.nvme_capacity_gib is not; give the NVMe tier's size")
        kwargs["nvme_capacity_bytes"] = _gib(options["nvme_capacity_gib"], "nvme_capacity_gib")
    return kvtier.Store(**kwargs)


def _page_views(pool) -> list:
    """Per layer, (K, V) of the host pool as [page, token, head, dim] views of its buffer
    (V is None for MLA). Raises for pools and layouts this backend does not describe."""
    from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
    from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost

    kind = type(pool)
    if kind not in (MHATokenToKVPoolHost, MLATokenToKVPoolHost):
        # Subclasses keep more than kv_buffer (scales, packed formats): storing only
        # kv_buffer would lose it, so each needs its own description.
        raise NotImplementedError(
            f"kvtier.sglang: host pool {kind.__module__}.{kind.__name__} is not supported; it handles "
            "MHATokenToKVPoolHost and MLATokenToKVPoolHost (full-attention models; no hybrid, SWA or "
            "packed-scale pools)"
        )
    if getattr(pool, "storage_format_tag", None) is not None or getattr(pool, "stores_page_envelope", False):
        raise NotImplementedError(
            f"kvtier.sglang: host pool page format {pool.storage_format_tag!r} is not plain KV; not supported"
        )
    if getattr(pool, "dcp_size", 1) != 1:
        raise NotImplementedError("kvtier.sglang: decode context parallelism (--dcp-size > 1) is not supported")
    kv = getattr(pool, "kv_buffer", None)
    if not isinstance(kv, torch.Tensor):
        raise NotImplementedError(
            f"kvtier.sglang: the {pool.layout} host pool has no single KV buffer (allocator-only or split "
            "buffers); use --hicache-mem-layout page_first"
        )
    if kv.device.type != "cpu":
        raise ValueError(f"kvtier.sglang: the host pool is on {kv.device}; the store copies host memory")
    layers, page = pool.layer_num, pool.page_size
    pages = pool.size // page
    mla = kind is MLATokenToKVPoolHost
    if mla:
        heads, dim = 1, pool.kv_cache_dim
        parts = (kv,)
    else:
        if pool.v_head_dim != pool.head_dim:
            raise NotImplementedError(
                f"kvtier.sglang: K head dim {pool.head_dim} differs from V head dim {pool.v_head_dim}; not supported"
            )
        heads, dim = pool.head_num, pool.head_dim
        parts = (kv[0], kv[1])
    layout = pool.layout

    def view(t, layer):
        if layout == "page_first":  # [token, layer, head, dim]
            return t[:, layer].unflatten(0, (pages, page))
        if layout == "layer_first":  # [layer, token, head, dim]
            return t[layer].unflatten(0, (pages, page))
        if layout == "page_first_direct":  # [page, layer, token, head, dim]
            return t[:, layer]
        if layout == "page_head" and not mla:  # [page, head, token, layer, dim]
            return t[:, :, :, layer].transpose(1, 2)
        raise NotImplementedError(
            f"kvtier.sglang: host memory layout {layout!r} is not supported; use --hicache-mem-layout "
            "page_first (or layer_first, page_first_direct" + ("" if mla else ", page_head") + ")"
        )

    out = []
    for layer in range(layers):
        k = view(parts[0], layer)
        if tuple(k.shape) != (pages, page, heads, dim):
            raise ValueError(
                f"kvtier.sglang: layer {layer} of the {layout} host pool has shape {tuple(k.shape)}, expected "
                f"{(pages, page, heads, dim)}; the pool's buffer is not what this backend describes"
            )
        out.append((k, None if mla else view(parts[1], layer)))
    return out


def _layer_memory(k: torch.Tensor, v: Optional[torch.Tensor]) -> dict:
    """The register_namespace entry of one layer's [page, token, head, dim] views."""
    e = k.element_size()
    layer = {
        "base": k.data_ptr(),
        "bytes": kvtier._extent_bytes(k),
        "block_stride": k.stride(0) * e,
        "token_stride": k.stride(1) * e,
        "head_stride": k.stride(2) * e,
        "dim_stride": k.stride(3) * e,
    }
    if v is not None:
        layer["v_base"] = v.data_ptr()
    return layer


def _kv_dtype(pool, options: dict) -> str:
    name = kvtier.dtype_name(pool.dtype)
    if name not in ("uint8", "int8"):
        if options.get("dtype") not in (None, name):
            raise ValueError(f"kvtier.dtype is {options['dtype']!r} but the host pool holds {pool.dtype}")
        return name
    # SGLang keeps fp8 KV in byte buffers: which fp8 it is comes from --kv-cache-dtype.
    want = options.get("dtype") or {"fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"}.get(
        _engine_setting("model", "kv_cache_dtype"))
    if want not in ("fp8_e4m3", "fp8_e5m2", "int8", "uint8"):
        raise ValueError(
            f"kvtier.sglang: the host pool holds {pool.dtype} bytes of an unknown KV format; set kvtier.dtype "
            "(fp8_e4m3, fp8_e5m2, int8 or uint8) so that it is part of the cache's identity"
        )
    return want


def namespace_identity(config: HiCacheStorageConfig, pool, options: dict) -> dict:
    """register_namespace's identity arguments for this engine rank and host pool."""
    name = options.get("model_name") or config.model_name or _engine_setting("model", "model_path")
    if not name:
        raise ValueError("kvtier.sglang: the engine gave no model name; set kvtier.model_name")
    if "model_revision" in options:
        revision = str(options["model_revision"])
    else:
        revision = str(_engine_setting("model", "revision") or "")
    if not revision:
        logger.warning(
            "kvtier.sglang: no revision for %s: its KV is keyed by name only, so new weights under the same "
            "name would be served old KV; launch with --revision or set kvtier.model_revision", name)
    tags = []
    if config.pp_size > 1:  # a pipeline stage holds a layer range of its own
        tags.append(f"layers={pool.start_layer}-{pool.end_layer}")
    if config.attn_cp_size > 1:  # each context-parallel rank holds a slice of every page
        tags.append(f"cp={config.attn_cp_rank}/{config.attn_cp_size}")
    draft_layers = pool.layer_num - getattr(pool, "target_layer_num", pool.layer_num)
    if draft_layers > 0:  # packed MTP layers: their KV is the draft model's
        draft = options.get("draft_model") or _engine_setting("spec", "speculative_draft_model_path")
        if not draft:
            raise ValueError("kvtier.sglang: the host pool packs draft layers of an unknown draft model; "
                             "set kvtier.draft_model")
        draft_rev = _engine_setting("spec", "speculative_draft_model_revision") or ""
        tags.append(f"draft={draft}@{draft_rev}x{draft_layers}")
    return dict(
        model_name=str(name) + ("#" + ",".join(tags) if tags else ""),
        model_revision=revision,
        tokenizer_id=str(options.get("tokenizer_id") or _engine_setting("serving", "tokenizer_path") or ""),
        adapter_id=str(options.get("adapter_id", "")),
        tenant_salt=str(options.get("tenant_salt", "")),
        dtype=_kv_dtype(pool, options),
    )


class KVTierStorage(HiCacheStorage):
    """SGLang HiCache storage backed by a kvtier Store.

    Built by SGLang's StorageBackendFactory as ``KVTierStorage(storage_config, kwargs)``;
    the host pool arrives later through ``register_mem_pool_host``, which registers its
    memory as the namespace every call uses. ``store=``: a Store to use instead of opening
    one from the options (several backends in one process may share it); it is not closed
    by ``close()``.
    """

    def __init__(self, storage_config: HiCacheStorageConfig, engine_kwargs: Optional[dict] = None, *, store=None):
        extra = dict(storage_config.extra_config or {})
        if not extra.get("interface_v1"):
            raise ValueError(_LEGACY_CALL)
        options = extra.get("kvtier") or {}
        if not isinstance(options, dict):
            raise ValueError(f'"kvtier" in the extra config is {type(options).__name__}; give an object of options')
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"kvtier options {unknown} are not known; the options are: {', '.join(OPTIONS)}")
        if storage_config.dcp_size > 1:
            raise NotImplementedError("kvtier.sglang: decode context parallelism (--dcp-size > 1) is not supported")
        if storage_config.should_split_heads:
            raise NotImplementedError("kvtier.sglang: tp_lcm_size head splitting is not supported")
        self.storage_config = storage_config
        self.options = options
        self.timeout_s = float(options.get("timeout_s", 60))
        self._owns_store = store is None
        self.store = open_store(options) if store is None else store
        self.namespace = None  # set once by register_mem_pool_host
        self.page_size = 0

    # ---- setup -------------------------------------------------------------------------

    def register_mem_pool_host(self, mem_pool_host) -> None:
        super().register_mem_pool_host(mem_pool_host)
        page = int(mem_pool_host.page_size)
        if page < MIN_PAGE_TOKENS:
            raise NotImplementedError(
                f"kvtier.sglang: page size {page} is below {MIN_PAGE_TOKENS}: a page's key is carried in its "
                f"token ids, {MIN_PAGE_TOKENS} of which hold 128 bits; launch with --page-size 16 or more (64 is usual)"
            )
        views = _page_views(mem_pool_host)
        k0 = views[0][0]
        mla = views[0][1] is None
        if self.namespace is not None:
            self.namespace.release()
        self.namespace = self.store.register_namespace(
            **namespace_identity(self.storage_config, mem_pool_host, self.options),
            num_layers=len(views), num_kv_heads=int(k0.shape[2]), head_dim=int(k0.shape[3]),
            chunk_tokens=page, tp_rank=self.storage_config.tp_rank, tp_size=self.storage_config.tp_size, mla=mla,
            block_tokens=page, num_blocks=int(k0.shape[0]), layers=[_layer_memory(k, v) for k, v in views],
            keepalive=mem_pool_host,
        )
        self.page_size = page
        if mla and self.storage_config.tp_size > 1 and not self.options.get("address"):
            logger.warning(
                "kvtier.sglang: MLA with TP %d on embedded stores: SGLang saves MLA pages from one rank only and "
                "takes the smallest hit count of all ranks, so the other ranks' empty stores make every lookup a "
                "miss; share one store through kvtierd (kvtier.address)", self.storage_config.tp_size)
        logger.info("kvtier.sglang: %s host pool registered as %s (%s), %d-token pages, %d layers, %s store",
                    mem_pool_host.layout, self.namespace.model_name, self.namespace.model_revision or "no revision",
                    page, len(views), "daemon" if self.options.get("address") else "embedded")

    def _ns(self):
        if self.namespace is None:
            raise RuntimeError("kvtier.sglang: no host pool registered yet (register_mem_pool_host comes first)")
        return self.namespace

    # ---- the v1 interface --------------------------------------------------------------

    def batch_exists(self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo] = None) -> int:
        """How many leading pages of `keys` are stored."""
        ns = self._ns()
        for i, key in enumerate(keys):
            try:
                if ns.lookup(page_tokens(key, self.page_size))["matched_chunks"] != 1:
                    return i
            except kvtier.Error as e:
                logger.warning("kvtier.sglang: lookup of page %d failed (%s); reporting a miss", i, e)
                return i
        return len(keys)

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        """Loads each page into its host pool page; per page, whether it arrived."""
        return self._copy(keys, host_indices, load=True)

    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        """Saves each page from its host pool page (a page already stored is skipped);
        per page, whether it is stored."""
        return self._copy(keys, host_indices, load=False)

    def _pages(self, keys: List[str], host_indices: torch.Tensor) -> List[Optional[int]]:
        """The host pool page of each key (None where the indices do not name one whole page)."""
        page = self.page_size
        idx = torch.as_tensor(host_indices).reshape(-1).to("cpu", torch.int64)
        if idx.numel() != len(keys) * page:
            logger.error("kvtier.sglang: %d host indices for %d pages of %d tokens; nothing copied",
                         idx.numel(), len(keys), page)
            return [None] * len(keys)
        rows = idx.view(len(keys), page)
        first = rows[:, 0]
        whole = (first % page == 0) & (rows == first[:, None] + torch.arange(page)).all(dim=1)
        out = []
        for i, (start, ok) in enumerate(zip(first.tolist(), whole.tolist())):
            if not ok:
                logger.error("kvtier.sglang: host indices of page %d are not one aligned page; not copied", i)
            out.append(start // page if ok else None)
        return out

    def _copy(self, keys: List[str], host_indices: torch.Tensor, *, load: bool) -> List[bool]:
        ns = self._ns()
        submit = ns.load if load else ns.save
        tickets = []
        for key, page in zip(keys, self._pages(keys, host_indices)):
            ticket = None
            if page is not None:
                try:
                    ticket = submit(page_tokens(key, self.page_size), [page])
                except kvtier.Error as e:
                    logger.warning("kvtier.sglang: %s of a page failed to start: %s", "load" if load else "save", e)
            tickets.append(ticket)
        # Every ticket is released before returning, running ones cancelled and waited for:
        # SGLang may reuse a page reported as failed, and no copy may still touch it then.
        deadline = time.monotonic() + self.timeout_s
        results = []
        for ticket in tickets:
            if ticket is None:
                results.append(False)
                continue
            with ticket:
                done = ticket.wait(max(0.0, deadline - time.monotonic()))
                results.append(done and ticket.chunks_done == 1)
                if not done:
                    logger.warning("kvtier.sglang: a page %s took over %.0f s; cancelled",
                                   "load" if load else "save", self.timeout_s)
        return results

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    # ---- the legacy interface (copies through flat page tensors) -------------------------

    def get(self, key: str, target_location: Optional[Any] = None, target_sizes: Optional[Any] = None):
        raise NotImplementedError(_LEGACY_CALL)

    def batch_get(self, keys: List[str], target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None):
        raise NotImplementedError(_LEGACY_CALL)

    def set(self, key: str, value: Optional[Any] = None, target_location: Optional[Any] = None,
            target_sizes: Optional[Any] = None) -> bool:
        raise NotImplementedError(_LEGACY_CALL)

    def batch_set(self, keys: List[str], values: Optional[Any] = None, target_locations: Optional[Any] = None,
                  target_sizes: Optional[Any] = None) -> bool:
        raise NotImplementedError(_LEGACY_CALL)

    # ---- lifecycle ---------------------------------------------------------------------

    def clear(self) -> bool:
        logger.warning("kvtier.sglang: kvtier has no call that drops cached chunks; they leave by LRU eviction "
                       "(restart the store, or kvtierd, to empty it)")
        return False

    def close(self) -> None:
        """Forgets the host pool registration; closes the store if this backend opened it."""
        if self.namespace is not None:
            self.namespace.release()
            self.namespace = None
        if self._owns_store and not self.store.closed:
            self.store.close()
