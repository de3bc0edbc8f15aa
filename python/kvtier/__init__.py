"""kvtier: a tiered KV-cache store for LLM inference, from Python.

The extension module wraps the embedded C++ Store (include/kvtier/store.h)::

    import kvtier
    store = kvtier.Store(host_capacity_bytes=8 << 30)             # + nvme_paths=[...] for the NVMe tier
    ns = store.register_namespace("org/model", model_revision="abc123",
                                  num_layers=L, num_kv_heads=H, head_dim=D, dtype="bfloat16",
                                  chunk_tokens=256, block_tokens=16, num_blocks=N,
                                  layers=[kvtier.layer_memory(k, v, block_tokens=16) for k, v in kv])
    ns.lookup(tokens)["matched_tokens"]
    with ns.load(tokens, block_ids) as t:
        t.wait()
        loaded = t.chunks_done * ns.chunk_tokens

Engine memory is described by addresses and byte strides; KV bytes are copied by the
Store's workers and never pass through Python. Every call that can block releases the GIL.
Errors are exceptions derived from ``kvtier.Error`` (``InvalidArgumentError`` is also a
``ValueError``; ``ClosedError`` after ``Store.close()``).

The transformers adapter is ``kvtier.transformers`` (needs torch and transformers).
"""

from ._kvtier import (  # noqa: F401  (the public surface)
    BusyError,
    CancelledError,
    ClosedError,
    CorruptionError,
    Error,
    InternalError,
    InvalidArgumentError,
    IoError,
    Namespace,
    NoMemoryError,
    NoSpaceError,
    NotFoundError,
    NotSupportedError,
    Store,
    Ticket,
    TimedOutError,
    UnavailableError,
    PermissionDeniedError,
    __version__,
)

# torch dtypes by kvtier name; resolved lazily so that importing kvtier needs no torch.
_TORCH_DTYPE_NAMES = {
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float32": "float32",
    "float8_e4m3fn": "fp8_e4m3",
    "float8_e5m2": "fp8_e5m2",
    "int8": "int8",
    "uint8": "uint8",
}


def dtype_name(dtype):
    """The kvtier dtype name ("bfloat16", ...) of a torch dtype or a name string."""
    if isinstance(dtype, str):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _TORCH_DTYPE_NAMES:
        raise InvalidArgumentError(
            f"dtype {dtype} has no kvtier equivalent; use float16, bfloat16, float32, float8_e4m3fn, "
            "float8_e5m2, int8 or uint8"
        )
    return _TORCH_DTYPE_NAMES[name]


def _extent_bytes(tensor):
    """Bytes addressable from tensor.data_ptr() that the tensor's own elements span."""
    if tensor.numel() == 0:
        return 0
    elems = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    return elems * tensor.element_size()


def layer_memory(keys, values=None, *, block_tokens, token_dim=-2, head_dim_axis=-1, head_axis=-3):
    """Describes one layer of KV held in torch tensors, for ``Store.register_namespace``.

    ``keys``/``values``: tensors whose ``token_dim`` axis is the token position, blocked
    into engine blocks of ``block_tokens`` consecutive tokens (block b holds tokens
    [b*block_tokens, (b+1)*block_tokens)); ``head_axis`` and ``head_dim_axis`` are the KV
    head and head-dim axes. transformers' [batch, heads, seq, dim] (one batch row, e.g.
    ``k[0]`` or ``k[i:i+1]``) is the default. Strides are taken from the tensors, so
    views and transposed layouts work without copies. ``values=None``: an MLA latent.
    Only addresses and strides are read; the tensors must outlive the namespace (pass
    them as ``keepalive``).
    """
    for name, t in (("keys", keys), ("values", values)):
        if t is None:
            continue
        if t.device.type != "cpu":
            raise InvalidArgumentError(
                f"{name} is on {t.device}; the embedded store copies with the CPU, so pass CPU tensors"
            )
        lead = [s for i, s in enumerate(t.shape) if i not in {t.dim() + a if a < 0 else a
                                                              for a in (token_dim, head_dim_axis, head_axis)}]
        if any(s != 1 for s in lead):
            raise InvalidArgumentError(
                f"{name} has shape {tuple(t.shape)}: only one sequence per registration (batch 1); "
                "pass one row, e.g. t[i:i+1]"
            )
    if values is not None and (values.shape != keys.shape or values.stride() != keys.stride()
                               or values.dtype != keys.dtype):
        raise InvalidArgumentError(
            f"keys {tuple(keys.shape)}/{keys.stride()}/{keys.dtype} and values "
            f"{tuple(values.shape)}/{values.stride()}/{values.dtype} differ; K and V must share shape, "
            "strides and dtype"
        )
    e = keys.element_size()
    token_stride = keys.stride(token_dim) * e
    layer = {
        "base": keys.data_ptr(),
        "bytes": _extent_bytes(keys),
        "block_stride": token_stride * block_tokens,
        "token_stride": token_stride,
        "head_stride": keys.stride(head_axis) * e,
        "dim_stride": keys.stride(head_dim_axis) * e,
    }
    if values is not None:
        layer["v_base"] = values.data_ptr()
    return layer


__all__ = [
    "BusyError",
    "CancelledError",
    "ClosedError",
    "CorruptionError",
    "Error",
    "InternalError",
    "InvalidArgumentError",
    "IoError",
    "Namespace",
    "NoMemoryError",
    "NoSpaceError",
    "NotFoundError",
    "NotSupportedError",
    "Store",
    "Ticket",
    "TimedOutError",
    "dtype_name",
    "layer_memory",
]
