"""kvtier.vllm.KVTierConnector driven by vLLM's own Scheduler on CPU.

No model runs: an Engine here is vLLM's Scheduler (which builds the connector's scheduler
half from kv_transfer_config) plus the connector's worker half over KV tensors that vLLM's
own allocator lays out on the CPU. Each step does what vLLM's model runner does around a
forward: bind the metadata, start loads, per layer wait for the load and write the KV of the
scheduled tokens (values derived from layer, position and token id, so any block can be
checked), then wait_for_save, get_finished and the load errors, and hand the scheduler a
ModelRunnerOutput. Engines of one test share the process's embedded Store, as a scheduler
and a worker in one vLLM process do.
"""

import itertools
import json
import os
import time

import pytest

# Skipped without vLLM, except where KVTIER_REQUIRE_ENGINE names it (scripts/test.sh's vllm
# stage, which built the venv for these tests): there a failed import fails the run.
try:
    import torch
    import vllm  # noqa: F401
except Exception as e:  # noqa: BLE001  (not installed, or installed without what it imports)
    reason = f"vLLM is not importable ({type(e).__name__}: {e}); scripts/vllm_env.sh makes a venv with it"
    if "vllm" in os.environ.get("KVTIER_REQUIRE_ENGINE", "").replace(",", " ").split():
        raise ImportError(f"KVTIER_REQUIRE_ENGINE names vllm, but {reason}") from e
    pytest.skip(reason, allow_module_level=True)

from vllm import SamplingParams  # noqa: E402
from vllm.config import (  # noqa: E402
    AttentionConfig,
    CacheConfig,
    DeviceConfig,
    KVTransferConfig,
    ModelConfig,
    SchedulerConfig,
    VllmConfig,
)
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_kv_cache_configs, get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec  # noqa: E402
from vllm.v1.kv_cache_layout import KVCacheLayout  # noqa: E402
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request, RequestStatus  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402
from vllm.v1.worker.utils import allocate_kv_cache  # noqa: E402

import kvtier  # noqa: E402
from kvtier.vllm import KVTierConnector, layer_memory  # noqa: E402

BLOCK = 16
CHUNK = 32  # two blocks: a chunk is not a block
LAYERS = 2
KV_HEADS = 2
HEAD = 16
NUM_BLOCKS = 128
EOS = 999
LAYER_NAMES = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]

_ids = itertools.count(1)
_salts = itertools.count(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama config; no weights are read, no tokenizer is loaded."""
    path = tmp_path_factory.mktemp("tiny-llama")
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD, "vocab_size": 1000, "max_position_embeddings": 4096,
        "torch_dtype": "float16", "rms_norm_eps": 1e-5}))
    init_none_hash(sha256)
    return str(path)


def make_config(model_dir, *, revision="r1", salt=None, extra=None, max_batched_tokens=64, async_scheduling=None,
                backend="FLASH_ATTN"):
    """A VllmConfig like vLLM's connector unit tests build, with kvtier as the connector. Each
    test gets its own tenant salt, so its engines share cached KV only with each other."""
    kvtier_config = {"kvtier.host_capacity_bytes": 32 << 20, "kvtier.huge_pages": "off", "kvtier.prefault": False,
                     "kvtier.chunk_tokens": CHUNK, "kvtier.tenant_salt": salt or f"test-{next(_salts)}"}
    kvtier_config.update(extra or {})
    model = ModelConfig(model=model_dir, revision=revision, dtype="float16", seed=0, skip_tokenizer_init=True,
                        max_model_len=1024)
    cache = CacheConfig(block_size=BLOCK, cache_dtype="auto", enable_prefix_caching=True)
    # What the engine core resolves for the backend before connectors start.
    cache.kv_cache_layout = "LBHNC" if backend == "CPU_ATTN" else "LBNHC"
    return VllmConfig(
        model_config=model,
        scheduler_config=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=max_batched_tokens, max_model_len=1024,
                                         enable_chunked_prefill=True, is_encoder_decoder=False,
                                         async_scheduling=async_scheduling),
        cache_config=cache,
        kv_transfer_config=KVTransferConfig(
            kv_connector="KVTierConnector", kv_connector_module_path="kvtier.vllm", kv_role="kv_both",
            kv_load_failure_policy="recompute", kv_connector_extra_config=kvtier_config),
        device_config=DeviceConfig("cpu"),
        attention_config=AttentionConfig(backend=backend),
    )


def kv_cache_config(vllm_config):
    """The KVCacheConfig vLLM derives for this model's layers and NUM_BLOCKS blocks."""
    specs = {n: FullAttentionSpec(block_size=BLOCK, num_kv_heads=KV_HEADS, head_size=HEAD, dtype=torch.float16)
             for n in LAYER_NAMES}
    page = specs[LAYER_NAMES[0]].page_size_bytes
    return get_kv_cache_configs(vllm_config, [specs], [page * LAYERS * NUM_BLOCKS])[0]


def expected_block(layer, kv, positions, tokens):
    """[len(positions), KV_HEADS, HEAD]: the KV the fake forward writes for these positions and
    token ids, small integers / 8 (exact in float16) that differ by layer, K/V, position, token,
    head and dim."""
    p = torch.tensor(positions, dtype=torch.float64)[:, None, None]
    t = torch.tensor(tokens, dtype=torch.float64)[:, None, None]
    h = torch.arange(KV_HEADS, dtype=torch.float64)[None, :, None]
    d = torch.arange(HEAD, dtype=torch.float64)[None, None, :]
    return (torch.remainder(layer * 31 + kv * 17 + p * 7 + t * 3 + h * 5 + d, 251) / 8.0).to(torch.float16)


def kv_views(t, backend="FLASH_ATTN"):
    """(K, V) of a layer as [block, token, head, dim], read the way the backend reads them."""
    if t.dim() == 5:  # [2, blocks, tokens, heads, head]
        return t[0], t[1]
    if backend == "CPU_ATTN":  # each block and head is [K tokens | V tokens]
        k, v = t.view(t.shape[0], KV_HEADS, 2 * BLOCK, HEAD).chunk(2, dim=2)
        return k.transpose(1, 2), v.transpose(1, 2)
    return t.transpose(1, 2).split(HEAD, dim=-1)  # K | V in the last axis


class Engine:
    """vLLM's scheduler and the connector's worker half over CPU KV tensors."""

    def __init__(self, vllm_config, kv_caches=None):
        self.config = vllm_config
        self.kv_cache_config = kv_cache_config(vllm_config)
        vllm_config.cache_config.num_gpu_blocks = self.kv_cache_config.num_blocks
        cls = AsyncScheduler if vllm_config.scheduler_config.async_scheduling else Scheduler
        self.scheduler = cls(vllm_config=vllm_config, kv_cache_config=self.kv_cache_config, log_stats=True,
                             structured_output_manager=StructuredOutputManager(vllm_config), block_size=BLOCK)
        self.worker = KVTierConnector(vllm_config, KVConnectorRole.WORKER, self.kv_cache_config)
        self.backend = vllm_config.attention_config.backend.name
        if kv_caches is None:
            layout = KVCacheLayout[vllm_config.cache_config.kv_cache_layout]
            kv_caches = allocate_kv_cache(self.kv_cache_config, torch.device("cpu"), layout)
        self.kv_caches = kv_caches
        self.worker.register_kv_caches(kv_caches)
        self.requests = {}
        self.load_errors = []  # per step
        self.finished_sending = set()

    @property
    def connector(self):
        return self.scheduler.get_kv_connector()

    def add(self, tokens, max_tokens=2):
        params = SamplingParams(max_tokens=max_tokens)
        params.update_from_generation_config({}, EOS)
        req = Request(request_id=f"req-{next(_ids)}", prompt_token_ids=list(tokens), sampling_params=params,
                      pooling_params=None, mm_features=None, block_hasher=get_request_block_hasher(BLOCK, sha256))
        self.scheduler.add_request(req)
        self.requests[req.request_id] = req
        return req

    def write_forward(self, out, layer):
        """The KV a forward writes for the scheduled tokens of each request, in layer `layer`."""
        k_cache, v_cache = kv_views(self.kv_caches[LAYER_NAMES[layer]], self.backend)
        for req_id, n in out.num_scheduled_tokens.items():
            req = self.requests[req_id]
            start = req.num_computed_tokens - n  # the scheduler advanced it when it scheduled
            blocks = self.scheduler.kv_cache_manager.get_block_ids(req_id)[0]
            positions = list(range(start, min(start + n, req.num_tokens)))
            tokens = [req.all_token_ids[p] for p in positions]
            for kv, cache in ((0, k_cache), (1, v_cache)):
                values = expected_block(layer, kv, positions, tokens)
                for i, p in enumerate(positions):
                    cache[blocks[p // BLOCK], p % BLOCK] = values[i]

    def step(self):
        out = self.scheduler.schedule()
        meta = out.kv_connector_metadata
        w = self.worker
        w.handle_preemptions(meta)
        w.bind_connector_metadata(meta)
        w.start_load_kv(None)
        for layer, name in enumerate(LAYER_NAMES):
            w.wait_for_layer_load(name)
            self.write_forward(out, layer)
            w.save_kv_layer(name, self.kv_caches[name], None)
        w.wait_for_save()
        sending, recving = w.get_finished(out.finished_req_ids)
        errors = w.get_block_ids_with_load_errors()
        w.clear_connector_metadata()
        self.load_errors.append(errors)
        self.finished_sending |= sending or set()
        req_ids = list(out.num_scheduled_tokens)
        output = ModelRunnerOutput(
            req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
            sampled_token_ids=[[] if self.requests[r].is_prefill_chunk else [7] for r in req_ids], logprobs=None,
            prompt_logprobs_dict={}, pooler_output=None,
            kv_connector_output=KVConnectorOutput(finished_sending=sending, finished_recving=recving,
                                                  invalid_block_ids=errors))
        self.scheduler.update_from_output(out, output)
        return out

    def step_until(self, done, timeout=30.0):
        """Steps until done() holds. The Store's workers run beside the steps, so a step with
        nothing to schedule (waiting for a load or a save) yields the CPU briefly."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"not done after {timeout}s; requests left: {list(self.scheduler.requests)}")
            if not self.step().num_scheduled_tokens:
                time.sleep(0.001)

    def run(self):
        """Steps until no request is left (finished, and its blocks returned after its saves)."""
        self.step_until(lambda: not self.scheduler.requests)

    def assert_kv(self, req, upto):
        """The KV of positions [0, upto) of req in its blocks is what a forward writes."""
        blocks = self.scheduler.kv_cache_manager.get_block_ids(req.request_id)[0]
        tokens = list(req.all_token_ids[:upto])
        for layer, name in enumerate(LAYER_NAMES):
            for kv, cache in enumerate(kv_views(self.kv_caches[name], self.backend)):
                for b in range(0, upto, BLOCK):
                    positions = list(range(b, min(b + BLOCK, upto)))
                    got = cache[blocks[b // BLOCK], :len(positions)]
                    want = expected_block(layer, kv, positions, tokens[b:b + len(positions)])
                    bad = (got != want).nonzero().tolist()
                    first = tuple(bad[0]) if bad else None
                    assert not bad, (f"layer {layer} {'KV'[kv]} block {b // BLOCK}: {len(bad)} elements differ, "
                                     f"first [token, head, dim] {first}: {got[first]} != {want[first]}")

    def stats(self):
        return self.worker.store.stats()

    def close(self):
        self.scheduler.shutdown()
        self.worker.shutdown()


@pytest.fixture
def engines():
    made = []
    yield made
    for e in reversed(made):
        e.close()


def prompt(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 900, (n,), generator=g).tolist()


def test_first_request_saves_whole_chunks(model_dir, engines):
    a = Engine(make_config(model_dir))
    engines.append(a)
    req = a.add(prompt(100, 1))  # 3 whole chunks; chunked prefill over two steps of 64
    a.run()
    assert req.status == RequestStatus.FINISHED_LENGTH_CAPPED
    assert req.request_id in a.finished_sending, "the request's blocks were freed before its saves finished"
    s = a.stats()
    assert s["saved_chunks"] == 3
    assert a.scheduler.kv_cache_manager.block_pool.get_num_free_blocks() == NUM_BLOCKS - 1  # no block held


def test_second_engine_loads_the_prefix(model_dir, engines):
    config = make_config(model_dir)
    a = Engine(config)
    engines.append(a)
    tokens = prompt(100, 2)
    a.add(tokens)
    a.run()
    b = Engine(config)  # another engine: zeroed KV tensors, nothing in its prefix cache, same Store
    engines.append(b)
    req = b.add(tokens)
    out = b.step()
    assert out.num_scheduled_tokens[req.request_id] == 100 - 96, "the 96 cached tokens were computed again"
    assert req.num_computed_tokens == 100
    assert b.load_errors[-1] == set()
    b.assert_kv(req, 100)
    assert b.stats()["loaded_chunks"] >= 3


def test_local_hit_loads_only_the_rest(model_dir, engines):
    config = make_config(model_dir)
    a = Engine(config)
    engines.append(a)
    tokens = prompt(100, 3)
    a.add(tokens)
    a.run()
    b = Engine(config)
    engines.append(b)
    first = b.add(tokens[:40], max_tokens=1)  # leaves 2 blocks (32 tokens) in b's own prefix cache
    b.run()
    del first
    req = b.add(tokens)
    connector = b.connector
    asked = []
    original = connector.get_num_new_matched_tokens

    def spy(request, num_computed_tokens):
        result = original(request, num_computed_tokens)
        asked.append((num_computed_tokens, result))
        return result

    connector.get_num_new_matched_tokens = spy
    out = b.step()
    assert asked == [(32, (96 - 32, False))]
    assert out.num_scheduled_tokens[req.request_id] == 4
    b.assert_kv(req, 100)


def test_whole_prompt_cached_recomputes_last_token(model_dir, engines):
    config = make_config(model_dir)
    a = Engine(config)
    engines.append(a)
    tokens = prompt(96, 4)
    a.add(tokens)
    a.run()
    b = Engine(config)
    engines.append(b)
    req = b.add(tokens)
    out = b.step()
    assert out.num_scheduled_tokens[req.request_id] == 1
    b.assert_kv(req, 96)


def test_async_load(model_dir, engines):
    config = make_config(model_dir, extra={"kvtier.load_mode": "async"})
    a = Engine(config)
    engines.append(a)
    tokens = prompt(100, 5)
    a.add(tokens)
    a.run()
    b = Engine(config)
    engines.append(b)
    req = b.add(tokens)
    out = b.step()
    assert req.request_id not in out.num_scheduled_tokens
    assert req.status == RequestStatus.WAITING_FOR_REMOTE_KVS
    b.step_until(lambda: req.status == RequestStatus.RUNNING)  # the load finished; the request was scheduled
    assert req.num_computed_tokens == 100
    b.assert_kv(req, 100)
    b.run()


def test_other_revision_misses(model_dir, engines):
    salt = f"test-{next(_salts)}"
    a = Engine(make_config(model_dir, revision="r1", salt=salt))
    engines.append(a)
    tokens = prompt(100, 6)
    a.add(tokens)
    a.run()
    c = Engine(make_config(model_dir, revision="r2", salt=salt))
    engines.append(c)
    assert a.connector.identity.revision != c.connector.identity.revision
    req = c.add(tokens)
    out = c.step()
    assert out.num_scheduled_tokens[req.request_id] == 64  # the whole budget: nothing came from the cache
    assert req.num_computed_tokens == 64


def test_load_error_reports_blocks_and_recomputes(model_dir, engines):
    # A host tier of 8 chunks: filling it after the lookup evicts what the lookup found.
    # vLLM's synchronous scheduler: with async scheduling, the step whose load failed keeps
    # its output placeholder in this harness and the request never finishes.
    config = make_config(model_dir, extra={"kvtier.host_capacity_bytes": 8 * 8192 + 4096}, async_scheduling=False)
    a = Engine(config)
    engines.append(a)
    tokens = prompt(100, 7)
    a.add(tokens)
    a.run()
    b = Engine(config)
    engines.append(b)
    req = b.add(tokens)
    out = b.scheduler.schedule()  # the lookup hits; the metadata names 3 chunks to load
    assert out.num_scheduled_tokens[req.request_id] == 4
    filler = Engine(make_config(model_dir, salt="filler", extra={"kvtier.host_capacity_bytes": 8 * 8192 + 4096}))
    engines.append(filler)
    for seed in range(10, 14):
        filler.add(prompt(100, seed))
    filler.run()
    # The worker's part of the step whose schedule() ran above.
    w = b.worker
    w.bind_connector_metadata(out.kv_connector_metadata)
    w.start_load_kv(None)
    for layer, name in enumerate(LAYER_NAMES):
        w.wait_for_layer_load(name)
        b.write_forward(out, layer)
    w.wait_for_save()
    errors = w.get_block_ids_with_load_errors()
    w.clear_connector_metadata()
    blocks = b.scheduler.kv_cache_manager.get_block_ids(req.request_id)[0]
    assert errors and errors <= set(blocks[:6]), f"errors {errors} are not among the loaded blocks {blocks[:6]}"
    output = ModelRunnerOutput(
        req_ids=[req.request_id], req_id_to_index={req.request_id: 0}, sampled_token_ids=[[7]], logprobs=None,
        prompt_logprobs_dict={}, pooler_output=None,
        kv_connector_output=KVConnectorOutput(invalid_block_ids=errors))
    b.scheduler.update_from_output(out, output)
    first_bad = min(blocks.index(e) for e in errors)
    assert req.num_computed_tokens == first_bad * BLOCK  # vLLM recomputes from the first block that failed
    b.run()
    assert req.status == RequestStatus.FINISHED_LENGTH_CAPPED
    # The recomputed chunks were saved again: the next engine finds them.
    c = Engine(config)
    engines.append(c)
    again = c.add(tokens)
    assert c.step().num_scheduled_tokens[again.request_id] == 4
    c.assert_kv(again, 100)


def test_legacy_flash_attention_tensors_share_kv(model_dir, engines):
    # [2, num_blocks, block_size, num_kv_heads, head_size] per layer, saved; loaded by an
    # engine with vLLM's current per-layer views: the chunk format is layout-independent.
    config = make_config(model_dir)
    legacy = {n: torch.zeros(2, NUM_BLOCKS, BLOCK, KV_HEADS, HEAD, dtype=torch.float16) for n in LAYER_NAMES}
    a = Engine(config, kv_caches=legacy)
    engines.append(a)
    tokens = prompt(100, 8)
    a.add(tokens)
    a.run()
    b = Engine(config)
    engines.append(b)
    req = b.add(tokens)
    b.step()
    b.assert_kv(req, 100)


def test_cpu_backend_pages_share_kv_with_flash_attention(model_dir, engines):
    # vLLM's CPU backend reads a block's page per head as [K tokens | V tokens] (layout LBHNC);
    # FlashAttention as tokens of [K | V]. KV saved from one is the same KV loaded into the other.
    salt = f"test-{next(_salts)}"
    cpu = Engine(make_config(model_dir, salt=salt, backend="CPU_ATTN"))
    engines.append(cpu)
    tokens = prompt(100, 9)
    cpu.add(tokens)
    cpu.run()
    flash = Engine(make_config(model_dir, salt=salt))
    engines.append(flash)
    req = flash.add(tokens)
    assert flash.step().num_scheduled_tokens[req.request_id] == 4
    flash.assert_kv(req, 100)
    back = Engine(make_config(model_dir, salt=salt, backend="CPU_ATTN"))
    engines.append(back)
    again = back.add(tokens)
    assert back.step().num_scheduled_tokens[again.request_id] == 4
    back.assert_kv(again, 100)


def test_layouts_refused_with_the_reason(model_dir):
    config = make_config(model_dir)
    ident = KVTierConnector(config, KVConnectorRole.WORKER, kv_cache_config(config))
    try:
        mla = torch.zeros(NUM_BLOCKS, BLOCK, 576, dtype=torch.float16)
        with pytest.raises(ValueError, match="not a supported layout"):
            layer_memory("layer0", mla, ident.identity, "FLASH_ATTN")
        with pytest.raises(ValueError, match="not supported"):
            layer_memory("layer0", torch.zeros(NUM_BLOCKS, KV_HEADS, BLOCK, 2 * HEAD, dtype=torch.float16),
                         ident.identity, "FLASHINFER")
        with pytest.raises(ValueError, match="dtype"):
            layer_memory("layer0", torch.zeros(NUM_BLOCKS, KV_HEADS, BLOCK, 2 * HEAD), ident.identity, None)
    finally:
        ident.shutdown()


def test_configuration_errors(model_dir):
    config = make_config(model_dir, extra={"kvtier.chunk_tokens": 24})
    with pytest.raises(ValueError, match="multiple of vLLM's block size"):
        KVTierConnector(config, KVConnectorRole.WORKER, kv_cache_config(config))
    config = make_config(model_dir, extra={"kvtier.chunk_tokenz": 32})
    with pytest.raises(ValueError, match="unknown key 'kvtier.chunk_tokenz'"):
        KVTierConnector(config, KVConnectorRole.WORKER, kv_cache_config(config))
    config = make_config(model_dir, revision=None)
    with pytest.raises(ValueError, match="no revision"):
        KVTierConnector(config, KVConnectorRole.WORKER, kv_cache_config(config))


def test_unreachable_daemon_is_an_error(model_dir):
    config = make_config(model_dir, extra={"kvtier.daemon": "unix:/nonexistent/kvtierd.sock"})
    with pytest.raises(kvtier.Error, match="kvtier.daemon unix:/nonexistent/kvtierd.sock"):
        KVTierConnector(config, KVConnectorRole.WORKER, kv_cache_config(config))


# ---- through kvtierd ---------------------------------------------------------------------


def _run_engine_child(model_dir, address, salt, tokens):
    """In a child process: an engine (scheduler and worker) that runs one request through
    kvtierd, so its chunks are saved into the daemon's cache."""
    init_none_hash(sha256)
    a = Engine(make_config(model_dir, salt=salt, extra={"kvtier.daemon": address}))
    a.add(tokens)
    a.run()
    saved = a.stats()["saved_chunks"]
    a.close()
    assert saved >= 3, saved


def test_engines_in_two_processes_share_kv_through_kvtierd(model_dir, engines):
    """vLLM's multi-process layout: one engine in another process saves a prompt's KV through
    kvtierd; an engine here (its own scheduler and worker, zeroed KV) finds it from its
    scheduler and loads it bit-exact into its blocks."""
    import os
    import subprocess
    import sys

    from kvtier.daemon import Daemon

    with Daemon(allow_anonymous=True, **{"host.capacity": "32MiB", "host.huge_pages": "off",
                                         "host.prefault": False}) as d:
        salt = f"test-{next(_salts)}"
        tokens = prompt(100, 21)
        here = os.path.dirname(os.path.abspath(__file__))
        code = (f"import sys; sys.path.insert(0, {here!r}); import test_vllm_connector as t; "
                f"t._run_engine_child({model_dir!r}, {d.address!r}, {salt!r}, {tokens!r})")
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert child.returncode == 0, child.stderr[-4000:]

        b = Engine(make_config(model_dir, salt=salt, extra={"kvtier.daemon": d.address}))
        engines.append(b)
        req = b.add(tokens)
        out = b.step()
        assert out.num_scheduled_tokens[req.request_id] == 100 - 96, "the 96 cached tokens were computed again"
        assert b.load_errors[-1] == set()
        b.assert_kv(req, 100)
        s = b.stats()  # the daemon's counters: the child's save and this load
        assert s["saved_chunks"] >= 3 and s["loaded_chunks"] >= 3
        engines.remove(b)
        b.close()
        assert d.stop() == 0
