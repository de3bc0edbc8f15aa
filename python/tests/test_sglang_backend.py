"""kvtier.sglang: SGLang's HiCache storage interface, driven as SGLang's cache controller
drives it, on SGLang's real host KV pools (MHATokenToKVPoolHost, MLATokenToKVPoolHost) built
on the CPU. Needs sglang (scripts/sglang_env.sh builds a venv with it); skipped without,
except where KVTIER_REQUIRE_ENGINE names sglang (scripts/test.sh's sglang stage): there a
failed import fails the run.

Bytes are checked with SGLang's own page accessor (get_data_page), not with the strides the
backend registers, so a wrong stride cannot agree with itself.
"""

import hashlib
import os
import warnings

import pytest

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sglang warns that its CUDA-only quantizers are off
        import torch
        from sglang.srt.mem_cache.device_pool_info import KVBufferLayout, KVBuffers, MHABufferInfo, MLABufferInfo
        from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig, HiCacheStorageExtraInfo
        from sglang.srt.mem_cache.pool_host.base import host_memory_budget_scope
        from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
        from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost
        from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory
except Exception as e:  # noqa: BLE001  (not installed, or installed without what it imports)
    reason = f"sglang is not importable ({type(e).__name__}: {e}); scripts/sglang_env.sh makes a venv with it"
    if "sglang" in os.environ.get("KVTIER_REQUIRE_ENGINE", "").replace(",", " ").split():
        raise ImportError(f"KVTIER_REQUIRE_ENGINE names sglang, but {reason}") from e
    pytest.skip(reason, allow_module_level=True)

import kvtier
from kvtier.sglang import KVTierStorage

PAGE, LAYERS, HEADS, DIM = 4, 3, 2, 8
MODEL = "test-org/tiny-llama"
MHA_LAYOUTS = ["page_first", "layer_first", "page_first_direct", "page_head"]


# ---- SGLang's pieces, built on the CPU ------------------------------------------------------

def fill(pool, seed):
    """Known random bytes in the whole pool."""
    flat = pool.kv_buffer.reshape(-1).view(torch.uint8)
    flat.copy_(torch.randint(0, 256, flat.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)))
    return pool


def mha_pool(layout, *, page=PAGE, layers=LAYERS, dtype=torch.bfloat16, seed=1):
    """SGLang's MHA host pool (33 pages) over a small device pool, filled with known bytes."""
    device_tokens = 64
    k = tuple(torch.zeros(device_tokens + page, HEADS, DIM, dtype=dtype) for _ in range(layers))
    v = tuple(torch.zeros(device_tokens + page, HEADS, DIM, dtype=dtype) for _ in range(layers))
    ptrs = lambda ts: torch.tensor([t.data_ptr() for t in ts], dtype=torch.uint64)  # noqa: E731
    info = MHABufferInfo(
        buffers=KVBuffers(k=k, v=v, k_data_ptrs=ptrs(k), v_data_ptrs=ptrs(v), layout=KVBufferLayout.NHD),
        page_size=page, head_num=HEADS, head_dim=DIM, v_head_dim=DIM, dtype=dtype, device=torch.device("cpu"))
    with host_memory_budget_scope(1 << 30):  # size against a fixed budget, not this machine's free memory
        pool = MHATokenToKVPoolHost(info, 2.0, 0, page, layout, pin_memory=False, device="cpu",
                                    device_capacity_tokens=device_tokens, start_layer=0, end_layer=layers)
    return fill(pool, seed)


def mla_pool(layout, *, seed=1):
    """SGLang's MLA host pool (latent 16 + rope 8), filled with known bytes."""
    device_tokens, width = 64, 24
    bufs = tuple(torch.zeros(device_tokens + PAGE, 1, width, dtype=torch.bfloat16) for _ in range(LAYERS))
    info = MLABufferInfo(buffers=bufs, data_ptrs=torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64),
                         layer_indices=tuple(range(LAYERS)), device_layer_num=LAYERS, page_size=PAGE,
                         kv_lora_rank=16, qk_rope_head_dim=8, kv_cache_dim=width, dtype=torch.bfloat16,
                         device=torch.device("cpu"))
    with host_memory_budget_scope(1 << 30):
        pool = MLATokenToKVPoolHost(info, 2.0, 0, PAGE, layout, pin_memory=False, device="cpu",
                                    device_capacity_tokens=device_tokens, start_layer=0, end_layer=LAYERS,
                                    target_layer_num=LAYERS)
    return fill(pool, seed)


def page_kv(pool, page):
    """One host page as [layer, (K, V), token, head, dim] (MLA: [layer, token, 1, width]),
    read through SGLang's get_data_page, whatever the pool's layout."""
    d = pool.get_data_page(page * pool.page_size, flat=False)
    if isinstance(pool, MLATokenToKVPoolHost):
        return {"page_first": lambda: d.transpose(0, 1), "layer_first": lambda: d,
                "page_first_direct": lambda: d[0]}[pool.layout]().contiguous()
    return {"page_first": lambda: d.permute(2, 0, 1, 3, 4), "layer_first": lambda: d.transpose(0, 1),
            "page_first_direct": lambda: d[:, 0].transpose(0, 1),
            "page_head": lambda: d[:, 0].permute(3, 0, 2, 1, 4)}[pool.layout]().contiguous()


def same_bytes(a, b):
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def page_keys(tokens, page=PAGE):
    """Page keys as SGLang makes them: SHA-256 chained page by page from the sequence start, hex."""
    keys, prior = [], b""
    for i in range(0, len(tokens) - len(tokens) % page, page):
        prior = hashlib.sha256(prior + b"".join(t.to_bytes(4, "little") for t in tokens[i:i + page])).digest()
        keys.append(prior.hex())
    return keys


def host_indices(pages, page=PAGE):
    """Host token indices of those pages, as SGLang's cache controller passes them."""
    return torch.cat([torch.arange(p * page, (p + 1) * page) for p in pages])


def storage_config(*, kvtier_options=None, tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, mla=False,
                   model_name=MODEL, interface_v1=True):
    extra = {"backend_name": "kvtier", "module_path": "kvtier.sglang", "class_name": "KVTierStorage",
             "kvtier": {"model_revision": "rev-1", **(kvtier_options or {})}}
    if interface_v1:
        extra["interface_v1"] = 1
    return HiCacheStorageConfig(tp_rank=tp_rank, tp_size=tp_size, pp_rank=pp_rank, pp_size=pp_size, attn_cp_rank=0,
                                attn_cp_size=1, is_mla_model=mla, enable_storage_metrics=False,
                                is_page_first_layout=True, model_name=model_name, extra_config=extra)


@pytest.fixture(scope="module")
def store():
    s = kvtier.Store(host_capacity_bytes=64 << 20, worker_threads=2, huge_pages="off")
    yield s
    s.close()


def backend(store, pool, **config):
    """A backend on the shared store, attached the way SGLang's cache controller attaches one."""
    b = KVTierStorage(storage_config(**config), {}, store=store)
    b.register_mem_pool_host(pool)
    return b


# ---- the interface -------------------------------------------------------------------------

def test_launch_flags_reach_the_backend_through_sglangs_dynamic_loader():
    """The flags of docs/sglang.md, parsed by SGLang's own argument parser and extra-config
    reader, make SGLang's factory import kvtier.sglang.KVTierStorage and build it with an
    embedded store from the kvtier options; then it is attached as the controller does."""
    import argparse
    import json

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sglang.srt.mem_cache.hybrid_cache.hybrid_cache_controller import HybridCacheController
        from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    extra = {"backend_name": "kvtier", "module_path": "kvtier.sglang", "class_name": "KVTierStorage",
             "interface_v1": 1, "kvtier": {"host_capacity_gib": 1 / 64, "huge_pages": "off", "model_revision": "r"}}
    args = parser.parse_args([
        "--model-path", MODEL, "--page-size", str(PAGE), "--enable-hierarchical-cache",
        "--hicache-mem-layout", "page_first", "--hicache-storage-backend", "dynamic",
        "--hicache-storage-backend-extra-config", json.dumps(extra)])
    assert args.hicache_storage_backend == "dynamic"
    parsed = HybridCacheController.parse_storage_backend_extra_config(args.hicache_storage_backend_extra_config)[0]
    config = storage_config()
    config.extra_config = parsed
    pool = mha_pool(args.hicache_mem_layout)
    b = StorageBackendFactory.create_backend(args.hicache_storage_backend, config, pool)
    try:
        assert isinstance(b, KVTierStorage)
        b.register_mem_pool_host(pool)
        keys = page_keys(list(range(1000, 1008)))
        assert b.batch_set_v1(keys, host_indices([3, 4])) == [True, True]
        assert b.batch_exists(keys) == 2
        assert b.exists(keys[0])
        assert b.store.stats()["saved_chunks"] == 2
        assert b.store.stats()["host_capacity_bytes"] == 16 << 20
    finally:
        b.close()
    assert b.store.closed  # it opened the store, so it closes it


@pytest.mark.parametrize("layout", ["page_first", "page_first_direct"])
def test_set_exists_get_roundtrip(store, layout):
    pool = mha_pool(layout)
    b = backend(store, pool)
    base = 2000 + 100 * MHA_LAYOUTS.index(layout)  # each case its own pages: the store is shared
    keys = page_keys(list(range(base, base + 5 * PAGE)))
    src, dst = [1, 2, 3, 4, 5], [20, 9, 30, 11, 7]  # loads land in other pages, in any order
    expected = [page_kv(pool, p).clone() for p in src]
    assert b.batch_exists(keys) == 0
    assert b.batch_set_v1(keys, host_indices(src), HiCacheStorageExtraInfo(prefix_keys=[])) == [True] * 5
    assert b.batch_exists(keys) == 5
    for p in dst:
        assert not same_bytes(page_kv(pool, p), expected[0])
    assert b.batch_get_v1(keys, host_indices(dst)) == [True] * 5
    for p, want in zip(dst, expected):
        assert same_bytes(page_kv(pool, p), want)
    b.close()


def test_saving_a_stored_page_again_is_skipped(store):
    pool = mha_pool("page_first")
    b = backend(store, pool)
    keys = page_keys(list(range(3000, 3000 + 3 * PAGE)))
    assert b.batch_set_v1(keys, host_indices([1, 2, 3])) == [True] * 3
    before = store.stats()
    assert b.batch_set_v1(keys, host_indices([4, 5, 6])) == [True] * 3
    after = store.stats()
    assert after["saved_chunks"] == before["saved_chunks"]
    assert after["save_dedup_chunks"] == before["save_dedup_chunks"] + 3
    b.close()


def test_partially_stored_prefix_reports_its_leading_pages(store):
    pool = mha_pool("page_first")
    b = backend(store, pool)
    keys = page_keys(list(range(4000, 4000 + 6 * PAGE)))
    # Pages 0-2 and 4 stored, 3 and 5 not: three leading pages are usable.
    assert b.batch_set_v1(keys[:3], host_indices([1, 2, 3])) == [True] * 3
    assert b.batch_set_v1(keys[4:5], host_indices([5])) == [True]
    assert b.batch_exists(keys) == 3
    assert b.batch_exists(keys[3:]) == 0
    want = [page_kv(pool, p).clone() for p in (1, 2, 3)]
    untouched = page_kv(pool, 13).clone()
    got = b.batch_get_v1(keys, host_indices([10, 11, 12, 13, 14, 15]))
    assert got[:4] == [True, True, True, False] and got[4]  # the controller uses the leading run only
    assert not got[5]
    for p, w in zip((10, 11, 12), want):
        assert same_bytes(page_kv(pool, p), w)
    assert same_bytes(page_kv(pool, 13), untouched)  # a miss writes nothing
    b.close()


@pytest.mark.parametrize("change", [
    {"kvtier_options": {"model_revision": "rev-2"}},
    {"model_name": "test-org/other-model"},
    {"kvtier_options": {"tenant_salt": "tenant-b"}},
    {"tp_rank": 1, "tp_size": 2},
    {"pp_rank": 0, "pp_size": 2},
])
def test_another_identity_misses(store, change):
    """Another revision, model, tenant or shard never sees this one's pages."""
    pool = mha_pool("page_first")
    ours = backend(store, pool)
    keys = page_keys(list(range(5000, 5000 + 2 * PAGE)))
    assert ours.batch_set_v1(keys, host_indices([1, 2])) == [True, True]
    assert ours.batch_exists(keys) == 2
    other = backend(store, pool, **change)
    assert other.batch_exists(keys) == 0
    before = page_kv(pool, 20).clone()
    assert other.batch_get_v1(keys, host_indices([20, 21])) == [False, False]
    assert same_bytes(page_kv(pool, 20), before)
    ours.close()
    other.close()


def test_another_kv_dtype_misses(store):
    b16 = backend(store, mha_pool("page_first", dtype=torch.bfloat16))
    f16 = backend(store, mha_pool("page_first", dtype=torch.float16))
    keys = page_keys(list(range(5500, 5500 + PAGE)))
    assert b16.batch_set_v1(keys, host_indices([1])) == [True]
    assert f16.batch_exists(keys) == 0
    b16.close()
    f16.close()


@pytest.mark.parametrize("layout", ["layer_first", "page_first_direct", "page_head"])
def test_page_saved_from_page_first_loads_into_another_layout(store, layout):
    """Chunks are kvtier's own format: the host pool's layout is not part of the identity."""
    saver = backend(store, mha_pool("page_first", seed=7))
    loader_pool = mha_pool(layout, seed=8)
    loader = backend(store, loader_pool)
    base = 6000 + 100 * MHA_LAYOUTS.index(layout)
    keys = page_keys(list(range(base, base + 2 * PAGE)))
    want = [page_kv(saver.mem_pool_host, p).clone() for p in (4, 5)]
    assert saver.batch_set_v1(keys, host_indices([4, 5])) == [True, True]
    assert loader.batch_exists(keys) == 2
    assert loader.batch_get_v1(keys, host_indices([17, 2])) == [True, True]
    assert same_bytes(page_kv(loader_pool, 17), want[0])
    assert same_bytes(page_kv(loader_pool, 2), want[1])
    saver.close()
    loader.close()


@pytest.mark.parametrize("layout", ["page_first", "layer_first"])
def test_mla_roundtrip(store, layout):
    pool = mla_pool(layout)
    b = backend(store, pool, mla=True, tp_rank=1, tp_size=2)
    base = 7000 + 100 * MHA_LAYOUTS.index(layout)
    keys = page_keys(list(range(base, base + 3 * PAGE)))
    want = [page_kv(pool, p).clone() for p in (1, 2, 3)]
    assert b.batch_set_v1(keys, host_indices([1, 2, 3])) == [True] * 3
    # MLA's latent is the same on every TP rank: rank 0 finds rank 1's pages.
    rank0 = backend(store, pool, mla=True, tp_rank=0, tp_size=2)
    assert rank0.batch_exists(keys) == 3
    assert rank0.batch_get_v1(keys, host_indices([30, 31, 29])) == [True] * 3
    for p, w in zip((30, 31, 29), want):
        assert same_bytes(page_kv(pool, p), w)
    b.close()
    rank0.close()


def test_indices_that_are_not_whole_pages_copy_nothing(store):
    pool = mha_pool("page_first")
    b = backend(store, pool)
    keys = page_keys(list(range(8000, 8000 + 2 * PAGE)))
    shifted = host_indices([1, 2]) + 1  # straddles pages
    assert b.batch_set_v1(keys, shifted) == [False, False]
    assert b.batch_set_v1(keys, host_indices([1])) == [False, False]  # too few indices
    assert b.batch_exists(keys) == 0
    b.close()


# ---- refusals ------------------------------------------------------------------------------

def test_refuses_what_it_cannot_serve_correctly(store):
    with pytest.raises(ValueError, match="interface_v1"):
        KVTierStorage(storage_config(interface_v1=False), {}, store=store)
    with pytest.raises(ValueError, match="host_capacity_gb"):
        KVTierStorage(storage_config(kvtier_options={"host_capacity_gb": 4}), {}, store=store)
    b = KVTierStorage(storage_config(), {}, store=store)
    with pytest.raises(NotImplementedError, match="page size 2"):
        b.register_mem_pool_host(mha_pool("page_first", page=2))
    with pytest.raises(NotImplementedError, match="interface_v1"):
        b.get("k")
    with pytest.raises(RuntimeError, match="register_mem_pool_host"):
        b.batch_exists(["k"])
    b.close()
    assert not store.closed  # a store passed in stays open


def test_daemon_address_without_daemon_is_a_clear_error():
    config = storage_config(kvtier_options={"address": "unix:/nonexistent/kvtierd.sock", "timeout_ms": 200})
    with pytest.raises(kvtier.Error, match="kvtierd|daemon|address"):
        KVTierStorage(config, {})


def test_two_ranks_share_pages_through_kvtierd():
    """Daemon mode: two backends (as two SGLang ranks or instances would be) each with their
    own connection to one kvtierd; pages one saves, the other finds and loads bit-exact."""
    from kvtier.daemon import Daemon

    with Daemon(allow_anonymous=True, **{"host.capacity": "32MiB", "host.huge_pages": "off",
                                         "host.prefault": False}) as d:
        options = {"address": d.address, "timeout_ms": 5000}
        pool_a, pool_b = mha_pool("page_first", seed=3), mha_pool("page_first", seed=4)
        a = KVTierStorage(storage_config(kvtier_options=options), {})
        a.register_mem_pool_host(pool_a)
        b = KVTierStorage(storage_config(kvtier_options=options), {})
        b.register_mem_pool_host(pool_b)
        assert a.store is not b.store
        keys = page_keys(list(range(7000, 7000 + 3 * PAGE)))
        expected = [page_kv(pool_a, p).clone() for p in (1, 2, 3)]
        assert b.batch_exists(keys) == 0
        assert a.batch_set_v1(keys, host_indices([1, 2, 3])) == [True] * 3
        assert b.batch_exists(keys) == 3
        assert b.batch_get_v1(keys, host_indices([10, 11, 12])) == [True] * 3
        for p, want in zip((10, 11, 12), expected):
            assert same_bytes(page_kv(pool_b, p), want)
        assert b.store.stats()["saved_chunks"] == 3  # the daemon's counters
        a.close()
        b.close()
        assert d.stop() == 0
