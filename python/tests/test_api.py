"""The binding itself: store lifecycle, save/load round trips through torch tensors (K and
V as separate regions, and in one region), partial loads, identity isolation, errors."""

import threading

import pytest

torch = pytest.importorskip("torch")

import kvtier  # noqa: E402

LAYERS, HEADS, DIM, CHUNK, BLOCK = 2, 2, 8, 16, 4


def open_store(**kw):
    kw.setdefault("host_capacity_bytes", 8 << 20)
    kw.setdefault("huge_pages", "off")
    return kvtier.Store(**kw)


def spec(revision="r1", **kw):
    d = dict(model_revision=revision, num_layers=LAYERS, num_kv_heads=HEADS, head_dim=DIM, dtype="float16",
             chunk_tokens=CHUNK)
    d.update(kw)
    return d


def kv_tensors(blocks, fill=True):
    """Per layer K and V as [blocks * BLOCK, heads, dim] fp16 (token-major, vLLM-like)."""
    g = torch.Generator().manual_seed(blocks)
    make = (lambda: torch.randn(blocks * BLOCK, HEADS, DIM, generator=g).half()) if fill else (
        lambda: torch.zeros(blocks * BLOCK, HEADS, DIM, dtype=torch.float16))
    return [make() for _ in range(LAYERS)], [make() for _ in range(LAYERS)]


def register(store, keys, values, revision="r1", **kw):
    layers = [kvtier.layer_memory(k, v, block_tokens=BLOCK, token_dim=0, head_axis=1, head_dim_axis=2)
              for k, v in zip(keys, values)]
    return store.register_namespace("test/api", **spec(revision, **kw), block_tokens=BLOCK,
                                    num_blocks=keys[0].shape[0] // BLOCK, layers=layers, keepalive=(keys, values))


def test_version_and_errors_hierarchy():
    assert kvtier.__version__
    assert issubclass(kvtier.InvalidArgumentError, kvtier.Error)
    assert issubclass(kvtier.InvalidArgumentError, ValueError)
    assert issubclass(kvtier.ClosedError, kvtier.Error)
    assert issubclass(kvtier.Error, RuntimeError)


def test_save_load_round_trip_separate_k_and_v():
    store = open_store()
    keys, values = kv_tensors(12)
    ns = register(store, keys, values)
    tokens = list(range(100, 148))  # 3 chunks
    assert ns.lookup(tokens) == {"matched_tokens": 0, "matched_chunks": 0, "total_chunks": 3, "cached_chunks": 0,
                                 "chunk_tiers": [], "prefetch_id": 0}
    with ns.save(tokens, list(range(12))) as t:
        assert t.wait() is True
        assert t.ok and t.status == "ok" and t.error is None
        assert t.chunks_done == 3 == t.chunks_requested
    r = ns.lookup(tokens)
    assert r["matched_tokens"] == 48 and r["chunk_tiers"] == ["host"] * 3

    dk, dv = kv_tensors(16, fill=False)
    dst = register(store, dk, dv)
    blocks = torch.arange(12, dtype=torch.int32)  # a buffer works as well as a list
    t = dst.load(torch.tensor(tokens, dtype=torch.int64).numpy(), blocks.numpy())
    t.wait()
    assert t.ok and t.chunks_done == 3
    t.release()
    for layer in range(LAYERS):
        assert torch.equal(dk[layer][:48], keys[layer][:48])
        assert torch.equal(dv[layer][:48], values[layer][:48])
        assert not dk[layer][48:].any()
    s = store.stats()
    assert s["saved_chunks"] == 3 and s["loaded_chunks"] == 3 and s["host_chunks"] == 3
    assert s["bytes_loaded"] == 3 * LAYERS * 2 * CHUNK * HEADS * DIM * 2
    store.close()


def test_one_region_layout_reads_what_separate_regions_wrote():
    store = open_store()
    keys, values = kv_tensors(8)
    src = register(store, keys, values)
    tokens = list(range(7, 7 + 32))
    with src.save(tokens, list(range(8))) as t:
        t.wait()
    # [2, blocks*BLOCK, heads, dim] per layer: V kv_offset bytes after K.
    both = [torch.zeros(2, 8 * BLOCK, HEADS, DIM, dtype=torch.float16) for _ in range(LAYERS)]
    layers = []
    for b in both:
        m = kvtier.layer_memory(b[0], None, block_tokens=BLOCK, token_dim=0, head_axis=1, head_dim_axis=2)
        m["bytes"] = b.numel() * b.element_size()
        m["kv_offset"] = b.stride(0) * b.element_size()
        layers.append(m)
    dst = store.register_namespace("test/api", **spec(), block_tokens=BLOCK, num_blocks=8, layers=layers,
                                   keepalive=both)
    with dst.load(tokens, [4, 5, 6, 7, 0, 1, 2, 3]) as t:
        t.wait()
        assert t.chunks_done == 2
    for layer in range(LAYERS):
        assert torch.equal(both[layer][0][16:32], keys[layer][:16])
        assert torch.equal(both[layer][1][16:32], values[layer][:16])
        assert torch.equal(both[layer][0][0:16], keys[layer][16:32])
    store.close()


def test_partial_load_reports_the_cached_prefix():
    store = open_store()
    keys, values = kv_tensors(12)
    ns = register(store, keys, values)
    tokens = list(range(500, 532))
    with ns.save(tokens, list(range(8))) as t:
        t.wait()
    longer = tokens + list(range(16))
    t = ns.load(longer, list(range(12)))
    t.wait()
    assert t.chunks_done == 2 and t.chunks_requested == 3
    assert not t.ok and t.status == "not found"
    assert "recompute from token 32" in t.error
    with pytest.raises(kvtier.NotFoundError):
        t.raise_for_status()
    t.release()
    assert t.chunks_done == 2  # still answered after release
    store.close()


def test_model_identity_isolates_keys():
    store = open_store()
    keys, values = kv_tensors(8)
    r1 = register(store, keys, values, revision="r1")
    tokens = list(range(32))
    with r1.save(tokens, list(range(8))) as t:
        t.wait()
    assert r1.lookup(tokens)["matched_tokens"] == 32
    assert register(store, keys, values, revision="r2").lookup(tokens)["matched_tokens"] == 0
    assert register(store, keys, values, tenant_salt="other").lookup(tokens)["matched_tokens"] == 0
    assert register(store, keys, values, revision="r1").lookup(tokens)["matched_tokens"] == 32
    store.close()


def test_bad_input_raises_clear_errors():
    store = open_store()
    keys, values = kv_tensors(4)
    with pytest.raises(kvtier.InvalidArgumentError, match="dtype 'float64'"):
        register(store, keys, values, dtype="float64")
    with pytest.raises(ValueError, match="head_dim"):  # InvalidArgumentError is a ValueError
        register(store, keys, values, head_dim=0)
    bad = kvtier.layer_memory(keys[0], values[0], block_tokens=BLOCK, token_dim=0, head_axis=1, head_dim_axis=2)
    bad["v_base"] = bad["base"] + 64  # V inside K's region
    with pytest.raises(kvtier.InvalidArgumentError, match=r"layers\[0\]\.v_base"):
        store.register_namespace("test/api", **spec(), block_tokens=BLOCK, num_blocks=4, layers=[bad, bad])
    with pytest.raises(kvtier.InvalidArgumentError, match="no 'bytes'"):
        store.register_namespace("test/api", **spec(), block_tokens=BLOCK, num_blocks=4,
                                 layers=[{"base": 1}, {"base": 1}])
    with pytest.raises(kvtier.InvalidArgumentError, match="same|differ"):
        kvtier.layer_memory(keys[0], values[0][:8], block_tokens=BLOCK, token_dim=0, head_axis=1, head_dim_axis=2)
    with pytest.raises(kvtier.InvalidArgumentError, match="huge_pages"):
        kvtier.Store(huge_pages="sometimes")

    ns = register(store, keys, values)
    with pytest.raises(kvtier.InvalidArgumentError, match="block ids"):
        ns.save(list(range(16)), [0, 1, 2])
    with pytest.raises(kvtier.InvalidArgumentError, match="block id 99"):
        ns.save(list(range(16)), [99, 1, 2, 3])
    with pytest.raises(kvtier.InvalidArgumentError, match="outside int32"):
        ns.lookup([1 << 40])
    np = pytest.importorskip("numpy")
    with pytest.raises(kvtier.InvalidArgumentError, match="outside int32"):
        ns.lookup(np.array([1, 1 << 31], dtype=np.uint32))
    with pytest.raises(kvtier.InvalidArgumentError, match="32- or 64-bit integers"):
        ns.lookup(np.array([1.0, 2.0]))
    assert ns.lookup(np.arange(16, dtype=np.uint64))["total_chunks"] == 1
    with pytest.raises(kvtier.InvalidArgumentError, match="1-D"):
        ns.lookup(torch.zeros(2, 2, dtype=torch.int32).numpy())
    with pytest.raises(kvtier.InvalidArgumentError, match="sequence"):
        ns.lookup("abc")
    ns.release()
    with pytest.raises(kvtier.InvalidArgumentError, match="released"):
        ns.lookup([1, 2, 3])
    store.close()


def test_closed_store_raises_closed_error():
    store = open_store()
    keys, values = kv_tensors(4)
    ns = register(store, keys, values)
    store.close()
    assert store.closed
    with pytest.raises(kvtier.ClosedError):
        ns.lookup(list(range(16)))
    with pytest.raises(kvtier.ClosedError):
        ns.save(list(range(16)), [0, 1, 2, 3])
    with pytest.raises(kvtier.ClosedError):
        store.stats()
    with pytest.raises(kvtier.ClosedError):
        register(store, keys, values)
    ns.release()  # fine after close
    store.close()  # twice is fine


def test_waits_release_the_gil():
    """Another Python thread keeps running while one thread blocks in the store."""
    store = open_store(worker_threads=1)
    keys, values = kv_tensors(64)
    ns = register(store, keys, values)
    tokens = list(range(64 * BLOCK))
    ticks = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks.append(1)

    th = threading.Thread(target=spin)
    th.start()
    try:
        for _ in range(20):
            with ns.save(tokens, list(range(64))) as t:
                assert t.wait(timeout=10.0)
            with ns.load(tokens, list(range(64))) as t:
                assert t.wait(timeout=10.0)
    finally:
        stop.set()
        th.join()
    assert len(ticks) > 0
    store.close()


def test_nvme_tier_round_trip(disk_dir):
    path = f"{disk_dir}/data.kvt"
    opts = dict(nvme_paths=[path], nvme_capacity_bytes=16 << 20, nvme_policy="write_through")
    keys, values = kv_tensors(8)
    tokens = list(range(900, 932))
    store = open_store(**opts)
    ns = register(store, keys, values)
    with ns.save(tokens, list(range(8))) as t:
        t.wait()
        assert t.ok
    assert store.stats()["write_throughs"] == 2
    store.close()

    store = open_store(**opts)  # a new process would see the same: chunks come back from disk
    dk, dv = kv_tensors(8, fill=False)
    ns = register(store, dk, dv)
    assert ns.lookup(tokens)["chunk_tiers"] == ["nvme", "nvme"]
    with ns.load(tokens, list(range(8))) as t:
        t.wait()
        assert t.ok
    for layer in range(LAYERS):
        assert torch.equal(dk[layer], keys[layer])
        assert torch.equal(dv[layer], values[layer])
    s = store.stats()
    assert s["recovered_chunks"] == 2 and s["promotions"] == 2 and s["nvme_enabled"]
    store.close()


def test_extra_keys_bind_chunks_to_more_than_tokens():
    store = open_store()
    keys, values = kv_tensors(12)
    ns = register(store, keys, values)
    tokens = list(range(1200, 1248))  # 3 chunks
    image = (1, 0x1234, 0xABCD)  # chunk 1 carries an image's hash
    with ns.save(tokens, list(range(12)), extra_keys=[image]) as t:
        t.wait()
        assert t.chunks_done == 3
    assert ns.lookup(tokens, extra_keys=[image])["matched_chunks"] == 3
    # Another image in chunk 1: chunk 0 still matches, chunk 1 on do not.
    assert ns.lookup(tokens, extra_keys=[(1, 0x1234, 0xABCE)])["matched_chunks"] == 1
    assert ns.lookup(tokens)["matched_chunks"] == 1
    dk, dv = kv_tensors(12, fill=False)
    dst = register(store, dk, dv)
    with dst.load(tokens, list(range(12)), extra_keys=[image]) as t:
        t.wait()
        assert t.ok and t.chunks_done == 3
    for layer in range(LAYERS):
        assert torch.equal(dk[layer], keys[layer])
    for bad in ([(1, 2)], [("a", 1, 2)], [(1, -1, 2)], "abc"):
        with pytest.raises((TypeError, ValueError)):
            ns.lookup(tokens, extra_keys=bad)
    store.close()


def test_lookup_prefetch_brings_nvme_chunks_up(disk_dir):
    # A host tier of 4 chunks, write-back: later saves push the first prompt down to NVMe.
    keys, values = kv_tensors(8)
    payload = LAYERS * 2 * CHUNK * HEADS * DIM * 2
    store = open_store(host_capacity_bytes=4 * (payload + 8192), nvme_paths=[f"{disk_dir}/data.kvt"],
                       nvme_capacity_bytes=16 << 20, nvme_policy="write_back")
    ns = register(store, keys, values)
    first = list(range(3000, 3032))
    for p in range(4):
        with ns.save(list(range(3000 + 100 * p, 3032 + 100 * p)), list(range(8))) as t:
            t.wait()
    assert ns.lookup(first)["chunk_tiers"] == ["nvme", "nvme"]
    r = ns.lookup(first, prefetch=True)
    assert r["prefetch_id"] != 0
    for _ in range(500):
        if ns.lookup(first)["chunk_tiers"] == ["host", "host"]:
            break
        threading.Event().wait(0.01)
    assert ns.lookup(first)["chunk_tiers"] == ["host", "host"]
    assert store.stats()["prefetched_chunks"] >= 2
    with pytest.raises(kvtier.NotFoundError):
        ns.cancel_prefetch(987654321)
    store.close()
