"""End to end with transformers on CPU: a tiny random-weight Llama, prompts whose prefix is
loaded from kvtier (host tier, and NVMe tier after a restart or host eviction), from an
embedded Store and through a kvtierd process. Greedy
generation with the loaded prefix must give exactly the tokens of generation without it,
only the tail may be prefilled, and the first step's logits must match to fp tolerance."""

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import kvtier  # noqa: E402
from kvtier.daemon import Daemon  # noqa: E402
from kvtier.transformers import KVTierCache, ModelIdentity, generate_with_cache  # noqa: E402

CHUNK = 32
NEW_TOKENS = 12
NAME = "test/tiny-llama"


def prompt(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1000, (1, n), generator=g)


def reference(model, ids):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True,
                              output_logits=True)


class ForwardLengths:
    """Records the number of new tokens of each forward call of the model."""

    def __init__(self, model):
        self.lengths = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.lengths.append(int(ids.shape[1]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def generate_cached(model, ids, cache):
    with torch.no_grad(), ForwardLengths(model) as calls:
        out = generate_with_cache(model, ids, cache, max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True)
    return out, calls.lengths


def assert_same_generation(model, ids, out, loaded, prefill_lengths):
    ref = reference(model, ids)
    assert out.kvtier_loaded_tokens == loaded
    assert torch.equal(out.sequences, ref.sequences), "greedy tokens differ with the cached prefix"
    # Only the tail was prefilled; then one token per step.
    assert prefill_lengths[0] == ids.shape[1] - loaded
    assert all(n == 1 for n in prefill_lengths[1:])
    for step, (got, want) in enumerate(zip(out.logits, ref.logits)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=f"logits of step {step}")


def open_store(**kw):
    kw.setdefault("host_capacity_bytes", 64 << 20)
    kw.setdefault("huge_pages", "off")
    return kvtier.Store(**kw)


def test_identity_comes_from_the_model_config(tiny_llama):
    ident = ModelIdentity.from_model(tiny_llama, name=NAME, revision="r1", chunk_tokens=CHUNK)
    assert (ident.name, ident.revision, ident.dtype) == (NAME, "r1", "float32")
    assert (ident.num_layers, ident.num_kv_heads, ident.head_dim, ident.chunk_tokens) == (3, 2, 32, CHUNK)
    with pytest.raises(ValueError, match="pass name="):
        ModelIdentity.from_model(tiny_llama)  # built from a config: no name to key by


def test_host_tier_prefix_reuse_matches_full_generation(tiny_llama):
    model = tiny_llama
    store = open_store()
    cache = KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=CHUNK)
    first = prompt(300, seed=1)

    out, lengths = generate_cached(model, first, cache)
    assert_same_generation(model, first, out, 0, lengths)  # a miss: the whole prompt
    assert out.kvtier_saved_tokens == (300 + NEW_TOKENS - 1) // CHUNK * CHUNK

    # The same prompt again: all whole chunks but the last token's.
    out, lengths = generate_cached(model, first, cache)
    assert_same_generation(model, first, out, 288, lengths)

    # A new prompt sharing 200 tokens: 6 chunks (192 tokens) come from kvtier.
    second = torch.cat([first[:, :200], prompt(70, seed=2)], dim=1)
    out, lengths = generate_cached(model, second, cache)
    assert_same_generation(model, second, out, 192, lengths)

    # A prompt of exactly whole chunks still recomputes its last token (its last chunk).
    exact = first[:, :256]
    out, lengths = generate_cached(model, exact, cache)
    assert_same_generation(model, exact, out, 224, lengths)

    s = store.stats()
    assert s["loaded_chunks"] == 9 + 6 + 7 and s["load_failed_chunks"] == 0
    assert s["promotions"] == 0 and not s["nvme_enabled"]
    store.close()


def test_loaded_kv_is_bit_exact(tiny_llama):
    model = tiny_llama
    store = open_store()
    cache = KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=CHUNK)
    ids = prompt(130, seed=3)
    with torch.no_grad():
        full = model(ids, use_cache=True).past_key_values
    assert cache.save(ids, full) == 128
    assert cache.lookup(ids) == 128
    loaded, n = cache.load_prefix(ids)
    assert n == 128 and loaded.get_seq_length() == 128
    for want, got in zip(full.layers, loaded.layers):
        assert torch.equal(got.keys, want.keys[:, :, :128])
        assert torch.equal(got.values, want.values[:, :, :128])
    # max_tokens caps the prefix; a prompt shorter than a chunk and one token has nothing to load.
    assert cache.load_prefix(ids, max_tokens=100)[1] == 96
    assert cache.load_prefix(ids[:, :CHUNK]) == (None, 0)
    store.close()


def test_revision_change_is_a_miss(tiny_llama):
    model = tiny_llama
    store = open_store()
    ids = prompt(200, seed=4)
    r1 = KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=CHUNK)
    with torch.no_grad():
        r1.save(ids, model(ids, use_cache=True).past_key_values)
    assert r1.lookup(ids) == 192
    r2 = KVTierCache(store, model, name=NAME, revision="r2", chunk_tokens=CHUNK)
    assert r2.lookup(ids) == 0
    assert r2.load_prefix(ids) == (None, 0)
    out, lengths = generate_cached(model, ids, r2)
    assert_same_generation(model, ids, out, 0, lengths)
    # Other identity fields are keys too.
    assert KVTierCache(store, model, name="test/other", revision="r1", chunk_tokens=CHUNK).lookup(ids) == 0
    assert KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=64).lookup(ids) == 0
    assert KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=CHUNK,
                       dtype=torch.bfloat16).lookup(ids) == 0
    assert r1.lookup(ids) == 192
    store.close()


def test_nvme_tier_after_restart(tiny_llama, disk_dir):
    model = tiny_llama
    opts = dict(nvme_paths=[f"{disk_dir}/data.kvt"], nvme_capacity_bytes=64 << 20, nvme_policy="write_through")
    ids = prompt(260, seed=5)
    store = open_store(**opts)
    cache = KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=CHUNK)
    out, lengths = generate_cached(model, ids, cache)
    assert out.kvtier_saved_tokens == 256
    assert store.stats()["write_throughs"] == 8
    store.close()

    store = open_store(**opts)  # host tier empty: every chunk is on disk only
    cache = KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=CHUNK)
    assert store.stats()["recovered_chunks"] == 8
    out, lengths = generate_cached(model, ids, cache)
    assert_same_generation(model, ids, out, 256, lengths)
    s = store.stats()
    assert s["promotions"] == 8 and s["loaded_chunks"] == 8 and s["nvme_corrupt_chunks"] == 0
    store.close()


def test_nvme_tier_after_host_eviction(tiny_llama, disk_dir):
    model = tiny_llama
    ident = ModelIdentity.from_model(model, name=NAME, revision="r1", chunk_tokens=CHUNK)
    payload = ident.num_layers * 2 * CHUNK * ident.num_kv_heads * ident.head_dim * 4
    # Room for 10 chunks in DRAM (a save's chunks stay pinned until it ends, so one prompt
    # must fit); write-back demotes the least recently used leaves to NVMe.
    store = open_store(host_capacity_bytes=10 * (payload + 4096), nvme_paths=[f"{disk_dir}/data.kvt"],
                       nvme_capacity_bytes=64 << 20, nvme_policy="write_back")
    cache = KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=CHUNK)
    first = prompt(300, seed=6)
    with torch.no_grad():
        for ids in (first, prompt(300, seed=7), prompt(300, seed=9)):
            assert cache.save(ids, model(ids, use_cache=True).past_key_values) == 288
    tiers = cache.chunk_tiers(first)
    assert tiers == ["nvme"] * 9, tiers
    assert store.stats()["demotions"] >= 9
    out, lengths = generate_cached(model, first, cache)
    assert_same_generation(model, first, out, 288, lengths)
    s = store.stats()
    assert s["promotions"] >= 9 and s["nvme_corrupt_chunks"] == 0
    store.close()


def test_bad_input_raises_clear_errors(tiny_llama):
    model = tiny_llama
    store = open_store()
    cache = KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=CHUNK)
    ids = prompt(70, seed=8)
    with torch.no_grad():
        past = model(ids, use_cache=True).past_key_values
    with pytest.raises(ValueError, match="batch 1"):
        cache.load_prefix(torch.cat([ids, ids]))
    with pytest.raises(ValueError, match="shape"):
        cache.load_prefix(ids[None])
    half = KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=CHUNK, dtype=torch.float16)
    with pytest.raises(ValueError, match="keyed for float16"):
        half.save(ids, past)
    for layer in past.layers:  # a cache of another model's shape
        layer.keys = layer.keys[:, :1]
        layer.values = layer.values[:, :1]
    with pytest.raises(ValueError, match="expected \\[batch, 2, seq, 32\\]"):
        cache.save(ids, past)
    with pytest.raises(ValueError, match="DynamicCache"):
        cache.save(ids, None)
    with pytest.raises(kvtier.InvalidArgumentError, match="float64"):
        KVTierCache(store, model, name=NAME, dtype=torch.float64)
    store.close()
    with pytest.raises(kvtier.ClosedError):
        cache.lookup(ids)
    with pytest.raises(kvtier.ClosedError):
        generate_with_cache(model, ids, cache, max_new_tokens=2)


# ---- through kvtierd ----------------------------------------------------------------------


@pytest.fixture
def kvtierd_binary():
    try:
        return kvtier.daemon.binary()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            raise  # CI installs the wheel, which carries kvtierd: its absence is a failure there
        pytest.skip(str(e))


def test_through_kvtierd_host_tier(tiny_llama, kvtierd_binary):
    model = tiny_llama
    with Daemon(allow_anonymous=True, **{"host.capacity": "64MiB", "host.huge_pages": "off"}) as d:
        store = kvtier.Store.connect(d.address)
        cache = KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=CHUNK)
        first = prompt(300, seed=11)
        out, lengths = generate_cached(model, first, cache)
        assert_same_generation(model, first, out, 0, lengths)
        # Another client process would see the same cache: here, a second connection.
        other = kvtier.Store.connect(d.address)
        cache2 = KVTierCache(other, model, name=NAME, revision="r1", chunk_tokens=CHUNK)
        second = torch.cat([first[:, :200], prompt(70, seed=12)], dim=1)
        out, lengths = generate_cached(model, second, cache2)
        assert_same_generation(model, second, out, 192, lengths)
        # A new revision is a miss through the daemon too.
        r2 = KVTierCache(store, model, name=NAME, revision="r2", chunk_tokens=CHUNK)
        assert r2.lookup(first) == 0
        s = store.stats()  # the daemon's counters
        assert s["loaded_chunks"] == 6 and s["load_failed_chunks"] == 0 and s["corrupt_chunks"] == 0
        other.close()
        store.close()
        assert d.stop() == 0


def test_through_kvtierd_nvme_tier_after_restart(tiny_llama, kvtierd_binary, disk_dir):
    model = tiny_llama
    settings = {"host.capacity": "64MiB", "host.huge_pages": "off", "nvme.enabled": True,
                "nvme.paths": [f"{disk_dir}/data.kvt"], "nvme.capacity": "64MiB", "nvme.write_policy": "write_back"}
    ids = prompt(260, seed=13)
    d = Daemon(allow_anonymous=True, **settings).start()
    try:
        store = kvtier.Store.connect(d.address)
        cache = KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=CHUNK)
        out, lengths = generate_cached(model, ids, cache)
        assert out.kvtier_saved_tokens == 256
        store.close()
        # SIGTERM writes the host-only chunks (write-back) to NVMe before the daemon exits.
        assert d.stop() == 0, d.log()
        assert "chunks=8" in d.log(), d.log()
        d.start()  # the same paths: the chunks come back from NVMe
        store = kvtier.Store.connect(d.address)
        assert store.stats()["recovered_chunks"] == 8
        cache = KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=CHUNK)
        assert cache.chunk_tiers(ids) == ["nvme"] * 8
        out, lengths = generate_cached(model, ids, cache)
        assert_same_generation(model, ids, out, 256, lengths)
        s = store.stats()
        assert s["promotions"] == 8 and s["loaded_chunks"] == 8 and s["nvme_corrupt_chunks"] == 0
        store.close()
    finally:
        d.stop()
        d.kill()


def test_through_kvtierd_a_dead_daemon_is_a_miss_not_an_error(tiny_llama, kvtierd_binary):
    model = tiny_llama
    d = Daemon(allow_anonymous=True, **{"host.capacity": "64MiB", "host.huge_pages": "off"}).start()
    store = kvtier.Store.connect(d.address, timeout_ms=1000)
    cache = KVTierCache(store, model, name=NAME, revision="r1", chunk_tokens=CHUNK)
    ids = prompt(100, seed=14)
    out, lengths = generate_cached(model, ids, cache)
    assert out.kvtier_saved_tokens == 96
    d.kill()  # no flush: a crash
    with pytest.raises(kvtier.UnavailableError):
        cache.lookup(ids)
    # generate_with_cache goes on without the cache: the whole prompt is prefilled.
    out, lengths = generate_cached(model, ids, cache)
    assert_same_generation(model, ids, out, 0, lengths)
    assert out.kvtier_saved_tokens == 0
    store.close()
