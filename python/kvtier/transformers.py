"""kvtier for Hugging Face transformers: reuse a prompt's KV across ``generate()`` calls.

    import kvtier
    from kvtier.transformers import KVTierCache, generate_with_cache

    store = kvtier.Store(host_capacity_bytes=8 << 30)
    cache = KVTierCache(store, model, revision="main")      # model identity from model.config
    out = generate_with_cache(model, input_ids, cache, max_new_tokens=32)   # loads, generates, saves

``KVTierCache.load_prefix(input_ids)`` returns a ``DynamicCache`` holding the longest
cached run of whole chunks of the prompt (at most ``len - 1`` tokens: ``generate`` needs
the logits of the last prompt token, so that one is always recomputed), and
``generate(input_ids, past_key_values=cache)`` then prefills only the tail.
``KVTierCache.save(input_ids, past_key_values)`` stores the whole chunks of a computed
cache. Both hand the store the tensors' addresses and strides (K and V as separate
regions); the bytes are copied by the store's workers, never in Python.

Keys are bound to the model's identity: name (``config._name_or_path`` or ``name=``),
revision (``revision=``, else the config's commit hash), dtype and KV shape (layers,
KV heads, head dim, chunk tokens). Two revisions of one model never share KV.

Limits: one sequence at a time (batch 1), CPU tensors (the embedded store's copies run
on the CPU), full-attention caches (``DynamicLayer``; no sliding-window layers).
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import DynamicCache

import kvtier


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """What names a model's KV: any difference gives disjoint keys."""

    name: str
    revision: str
    dtype: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    chunk_tokens: int
    tokenizer_id: str = ""
    adapter_id: str = ""
    tenant_salt: str = ""

    @classmethod
    def from_model(cls, model, *, name=None, revision=None, dtype=None, chunk_tokens=256, tokenizer_id="",
                   adapter_id="", tenant_salt=""):
        config = model.config
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        name = name or getattr(config, "_name_or_path", "") or ""
        if not name:
            raise ValueError(
                "the model has no name (config._name_or_path is empty, e.g. a model built from a config): "
                "pass name= so that its KV is keyed by it"
            )
        if revision is None:
            revision = getattr(config, "_commit_hash", None) or ""
        heads = text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        layer_types = getattr(text, "layer_types", None)
        if layer_types and any(t != "full_attention" for t in layer_types):
            raise ValueError(
                f"layer types {sorted(set(layer_types))}: only full-attention caches are supported "
                "(sliding-window layers keep a rolling window that a prefix cannot be loaded into)"
            )
        return cls(
            name=str(name),
            revision=str(revision),
            dtype=kvtier.dtype_name(dtype if dtype is not None else model.dtype),
            num_layers=int(text.num_hidden_layers),
            num_kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            chunk_tokens=int(chunk_tokens),
            tokenizer_id=tokenizer_id,
            adapter_id=adapter_id,
            tenant_salt=tenant_salt,
        )

    def spec_kwargs(self):
        return dict(
            model_revision=self.revision, tokenizer_id=self.tokenizer_id, adapter_id=self.adapter_id,
            tenant_salt=self.tenant_salt, num_layers=self.num_layers, num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim, dtype=self.dtype, chunk_tokens=self.chunk_tokens,
        )


def _token_list(input_ids):
    """One sequence of token ids as an int32 tensor (input_ids may be [1, n] or [n])."""
    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() == 2:
        if input_ids.shape[0] != 1:
            raise ValueError(f"input_ids has batch {input_ids.shape[0]}; KVTierCache handles one sequence (batch 1)")
        input_ids = input_ids[0]
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; pass [n] or [1, n] token ids")
    return input_ids.to(device="cpu", dtype=torch.int32).contiguous()


class KVTierCache:
    """Saves and loads one model's KV in a kvtier Store.

    Thread-safety: methods may be called from several threads (each registers its own
    tensors with the store for the duration of the call).
    """

    def __init__(self, store, model, *, name=None, revision=None, dtype=None, chunk_tokens=256, tokenizer_id="",
                 adapter_id="", tenant_salt=""):
        self.store = store
        self.config = model.config
        self.identity = ModelIdentity.from_model(
            model, name=name, revision=revision, dtype=dtype, chunk_tokens=chunk_tokens, tokenizer_id=tokenizer_id,
            adapter_id=adapter_id, tenant_salt=tenant_salt)
        ident = self.identity
        self._torch_dtype = model.dtype if dtype is None else dtype
        # Lookups need a registration but copy nothing: one chunk of scratch for every layer.
        shape = (ident.num_kv_heads, ident.chunk_tokens, ident.head_dim)
        self._probe = (torch.empty(shape, dtype=self._torch_dtype), torch.empty(shape, dtype=self._torch_dtype))
        self._probe_ns = None

    @property
    def chunk_tokens(self):
        return self.identity.chunk_tokens

    def _register(self, keys, values, num_tokens, keepalive):
        """A namespace over per-layer K/V tensors of at least num_tokens tokens."""
        ident = self.identity
        layers = [kvtier.layer_memory(k, v, block_tokens=ident.chunk_tokens) for k, v in zip(keys, values)]
        return self.store.register_namespace(
            ident.name, **ident.spec_kwargs(), block_tokens=ident.chunk_tokens,
            num_blocks=num_tokens // ident.chunk_tokens, layers=layers, keepalive=keepalive)

    def _probe_namespace(self):
        if self._probe_ns is None:
            k, v = self._probe
            self._probe_ns = self._register([k] * self.identity.num_layers, [v] * self.identity.num_layers,
                                            self.identity.chunk_tokens, self._probe)
        return self._probe_ns

    def lookup(self, input_ids):
        """Leading tokens of input_ids whose whole chunks are cached."""
        return int(self._probe_namespace().lookup(_token_list(input_ids).numpy())["matched_tokens"])

    def chunk_tiers(self, input_ids):
        """The fastest tier ("host", "nvme", ...) of each cached leading chunk of input_ids."""
        return list(self._probe_namespace().lookup(_token_list(input_ids).numpy())["chunk_tiers"])

    def _check_layer(self, i, k, v):
        ident = self.identity
        want = (ident.num_kv_heads, ident.head_dim)
        for name, t in (("keys", k), ("values", v)):
            if t.dim() != 4 or (t.shape[1], t.shape[3]) != want:
                raise ValueError(
                    f"layer {i} {name} has shape {tuple(t.shape)}; expected [batch, {want[0]}, seq, {want[1]}] "
                    f"for {ident.name} ({ident.num_kv_heads} KV heads of {ident.head_dim})")
            if kvtier.dtype_name(t.dtype) != ident.dtype:
                raise ValueError(f"layer {i} {name} is {t.dtype} but the cache is keyed for {ident.dtype}; "
                                 "pass dtype= to KVTierCache, or convert the model")
            if t.device.type != "cpu":
                raise ValueError(f"layer {i} {name} is on {t.device}; the embedded store copies CPU tensors")

    def save(self, input_ids, past_key_values):
        """Stores the whole chunks of input_ids whose KV is in past_key_values (a DynamicCache
        holding at least those tokens, batch 1). Returns the number of tokens stored or
        already cached; chunks already in the store are skipped."""
        tokens = _token_list(input_ids)
        ident = self.identity
        layers = getattr(past_key_values, "layers", None)
        if layers is None or len(layers) != ident.num_layers:
            raise ValueError(f"past_key_values must be a DynamicCache of {ident.num_layers} layers, "
                             f"got {type(past_key_values).__name__}")
        keys, values = [], []
        for i, layer in enumerate(layers):
            k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
            if not isinstance(k, torch.Tensor) or not isinstance(v, torch.Tensor) or k.numel() == 0:
                raise ValueError(f"layer {i} of past_key_values holds no KV; run the model with use_cache=True first")
            self._check_layer(i, k, v)
            if k.shape[0] != 1:
                raise ValueError(f"past_key_values has batch {k.shape[0]}; KVTierCache handles batch 1")
            keys.append(k[0])
            values.append(v[0])
        seq = min(int(keys[0].shape[1]), int(tokens.numel()))
        n = seq // ident.chunk_tokens * ident.chunk_tokens
        if n == 0:
            return 0
        ns = self._register(keys, values, n, (keys, values))
        try:
            ticket = ns.save(tokens[:n].numpy(), torch.arange(n // ident.chunk_tokens, dtype=torch.int32).numpy())
            with ticket:
                ticket.wait()
                if not ticket.ok and ticket.chunks_done == 0:
                    ticket.raise_for_status()
                return ticket.chunks_done * ident.chunk_tokens
        finally:
            ns.release()

    def load_prefix(self, input_ids, max_tokens=None):
        """(DynamicCache, n): the KV of the first n tokens of input_ids, loaded from the
        store, with n the longest cached run of whole chunks and at most len - 1 (or
        max_tokens). (None, 0) on a miss."""
        tokens = _token_list(input_ids)
        ident = self.identity
        limit = tokens.numel() - 1 if max_tokens is None else min(int(max_tokens), tokens.numel())
        limit = max(0, limit) // ident.chunk_tokens * ident.chunk_tokens
        if limit == 0:
            return None, 0
        n = self.lookup(tokens[:limit])
        if n == 0:
            return None, 0
        shape = (ident.num_kv_heads, n, ident.head_dim)
        keys = [torch.empty(shape, dtype=self._torch_dtype) for _ in range(ident.num_layers)]
        values = [torch.empty(shape, dtype=self._torch_dtype) for _ in range(ident.num_layers)]
        ns = self._register(keys, values, n, (keys, values))
        try:
            ticket = ns.load(tokens[:n].numpy(), torch.arange(n // ident.chunk_tokens, dtype=torch.int32).numpy())
            with ticket:
                ticket.wait()
                done = ticket.chunks_done * ident.chunk_tokens  # a chunk evicted since the lookup ends the prefix
        finally:
            ns.release()
        if done == 0:
            return None, 0
        cache = DynamicCache(config=self.config)
        for i, layer in enumerate(cache.layers):
            k, v = keys[i][None, :, :done], values[i][None, :, :done]
            if type(layer).__name__ == "DynamicLayer" and hasattr(layer, "lazy_initialization"):
                layer.lazy_initialization(k, v)  # adopt the loaded tensors: update() would copy them
                layer.keys, layer.values = k, v
            else:
                cache.update(k, v, i)
        return cache, done

    def close(self):
        """Releases the lookup registration (the store stays open)."""
        if self._probe_ns is not None:
            self._probe_ns.release()
            self._probe_ns = None


def generate_with_cache(model, input_ids, cache, *, save=True, **generate_kwargs):
    """``model.generate(input_ids, ...)`` with the cached prefix loaded from ``cache``
    (a KVTierCache) so only the tail is prefilled; then, when ``save``, stores the whole
    chunks of the prompt and generated tokens for the next request.

    A kvtierd that cannot be reached makes the request a miss (nothing loaded or saved).
    Returns generate()'s output: always a dict-like output (``return_dict_in_generate``
    is forced on) with ``.sequences`` and ``.past_key_values``, plus ``.kvtier_loaded_tokens``
    and ``.kvtier_saved_tokens``.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; generate_with_cache takes [1, n]")
    # An unreachable kvtierd (Store.connect) is a miss: generate() prefills everything and
    # nothing is saved, rather than the request failing with the cache.
    try:
        past, loaded = cache.load_prefix(input_ids)
    except kvtier.UnavailableError:
        past, loaded = None, 0
    kwargs = dict(generate_kwargs)
    kwargs["return_dict_in_generate"] = True
    kwargs.setdefault("use_cache", True)
    if past is not None:
        kwargs["past_key_values"] = past
    out = model.generate(input_ids, **kwargs)
    saved = 0
    if save and out.past_key_values is not None:
        cached = out.past_key_values.get_seq_length()
        try:
            saved = cache.save(out.sequences[0, :cached], out.past_key_values)
        except kvtier.UnavailableError:
            saved = 0
    out["kvtier_loaded_tokens"] = loaded
    out["kvtier_saved_tokens"] = saved
    return out
