"""kvtier bench e2e: time to first token with and without a cached prefix, transformers on CPU.

    python -m kvtier.bench_e2e [--lengths 1024,2048,4096,8192] [--tier host|nvme] [--json]
                               [--out points.json]

For each prompt length N the prompt is a prefix seen before (its whole chunks are in the
store) followed by `--tail` new tokens. Measured, each the fastest of `--reps` runs:

  ttft_full     generate(max_new_tokens=1) on the whole prompt, no cache
  ttft_cached   generate_with_cache: lookup + load of the prefix + prefill of the tail + first token
  prefill       one forward over the whole prompt (the compute a cache hit avoids)
  tail_prefill  one forward over the tail with the prefix KV already in memory
                (both keep the last position's logits only, as generate() does)
  load          KVTierCache.load_prefix alone (lookup + copy out of the tier + DynamicCache)

ideal = prefill / tail_prefill (what a free, instant load would give), achieved =
ttft_full / ttft_cached, share = achieved / ideal. The model is a random-weight Llama built
from a config (nothing downloaded), sized so CPU prefill takes long enough to matter.

`--out` writes {"engine": "transformers-cpu", "model": {...}, "points": [{"tokens", "prefill_s",
"load_s", "ttft_cached_s", ...}]}; `--prefill-jsonl` writes the same points as the JSON Lines that
`kvtier bench recompute --measured-prefill-json` reads (docs/recompute.md), which prints them next
to its own prediction for the same KV shape.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time


def parse_args(argv):
    p = argparse.ArgumentParser(prog="kvtier bench e2e", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="1024,2048,4096,8192", help="prompt lengths in tokens (comma-separated)")
    p.add_argument("--tail", type=int, default=256, help="new tokens after the cached prefix (default 256)")
    p.add_argument("--chunk-tokens", type=int, default=256)
    p.add_argument("--reps", type=int, default=3, help="runs per figure; the fastest is reported (default 3)")
    p.add_argument("--tier", choices=["host", "nvme"], default="host",
                   help="where the prefix is loaded from: host DRAM, or NVMe after a store restart")
    p.add_argument("--nvme-dir", default=None,
                   help="directory for the NVMe data file (default: $KVTIER_TEST_DIR, $TMPDIR or /tmp); "
                        "must support O_DIRECT (not tmpfs)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out", default=None, help="also write the prefill-vs-load points to this JSON file")
    p.add_argument("--prefill-jsonl", default=None,
                   help="also write the points as JSON Lines for `kvtier bench recompute --measured-prefill-json`")
    return p.parse_args(argv)


def best_time(fn, reps):
    """The fastest of `reps` runs: on a shared machine the least disturbed one."""
    times = []
    result = None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import kvtier
    from kvtier.transformers import KVTierCache, generate_with_cache

    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",") if x]
    if any(n <= args.tail for n in lengths):
        sys.exit(f"every prompt length must exceed --tail {args.tail}")
    torch.manual_seed(args.seed)
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                         max_position_embeddings=max(lengths) + 16)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    head_dim = args.hidden // args.heads
    kv_bytes_per_token = args.layers * 2 * args.kv_heads * head_dim * 4
    model_info = {"arch": "llama (random weights)", "params": params, "layers": args.layers, "hidden": args.hidden,
                  "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": head_dim,
                  "intermediate": args.intermediate, "vocab": args.vocab, "dtype": "float32",
                  "kv_bytes_per_token": kv_bytes_per_token}

    chunk = args.chunk_tokens
    host_bytes = max(256 << 20, 2 * max(lengths) * kv_bytes_per_token + (64 << 20))
    nvme_dir = None
    store_opts = dict(host_capacity_bytes=host_bytes, huge_pages="off")
    if args.tier == "nvme":
        root = args.nvme_dir or os.environ.get("KVTIER_TEST_DIR") or os.environ.get("TMPDIR") or "/tmp"
        os.makedirs(root, exist_ok=True)
        nvme_dir = tempfile.mkdtemp(prefix="kvtier_bench_e2e_", dir=root)
        store_opts.update(nvme_paths=[os.path.join(nvme_dir, "data.kvt")],
                          nvme_capacity_bytes=2 * sum(lengths) * kv_bytes_per_token + (256 << 20),
                          nvme_policy="write_through")

    def fresh_cache(store):
        return KVTierCache(store, model, name="bench/e2e-llama", revision=f"seed{args.seed}", chunk_tokens=chunk)

    gen = torch.Generator().manual_seed(args.seed + 1)
    points = []
    with torch.no_grad():
        model(torch.randint(0, args.vocab, (1, 64), generator=gen), use_cache=True)  # warm up
        for n in lengths:
            ids = torch.randint(0, args.vocab, (1, n), generator=gen)
            prefix_len = (n - args.tail) // chunk * chunk
            store = kvtier.Store(**store_opts)
            cache = fresh_cache(store)
            prefix_kv = model(ids[:, :prefix_len], use_cache=True).past_key_values
            saved = cache.save(ids[:, :prefix_len], prefix_kv)
            assert saved == prefix_len, (saved, prefix_len)
            if args.tier == "nvme":  # a restart: the host tier is empty, every chunk is read from disk
                cache.close()
                store.close()
                store = kvtier.Store(**store_opts)
                cache = fresh_cache(store)
                assert cache.chunk_tiers(ids) == ["nvme"] * (prefix_len // chunk)

            def full():
                return model.generate(ids, max_new_tokens=1, do_sample=False)

            def cached():
                return generate_with_cache(model, ids, cache, max_new_tokens=1, do_sample=False, save=False)

            # logits_to_keep=1: the last position's logits only, as generate() computes them.
            def prefill():
                return model(ids, use_cache=True, logits_to_keep=1)

            def tail_prefill():
                past = copy.deepcopy(prefix_kv)  # outside the timed region below
                t0 = time.perf_counter()
                model(ids[:, prefix_len:], past_key_values=past, use_cache=True, logits_to_keep=1)
                return time.perf_counter() - t0

            def load():
                past, got = cache.load_prefix(ids)
                assert got == prefix_len, (got, prefix_len)
                return past

            # Rounds interleave the figures, so that each one's fastest run comes from the
            # same stretch of machine time as the others'.
            times = {k: [] for k in ("full", "cached", "prefill", "tail", "load")}
            ref = out = None
            for rep in range(args.reps):
                t, ref = best_time(full, 1)
                times["full"].append(t)
                if args.tier == "host" or rep == 0:
                    # NVMe: only the first cached run reads the prefix from disk (it is promoted
                    # to DRAM then), so the NVMe figure is that single cold run.
                    t, out = best_time(cached, 1)
                    times["cached"].append(t)
                times["prefill"].append(best_time(prefill, 1)[0])
                times["tail"].append(tail_prefill())
                times["load"].append(best_time(load, 1)[0])
            ttft_full, ttft_cached, prefill_s, tail_s, load_s = (
                min(times[k]) for k in ("full", "cached", "prefill", "tail", "load"))
            assert out.kvtier_loaded_tokens == prefix_len
            assert torch.equal(out.sequences, ref), "the cached run generated a different first token"
            ideal = prefill_s / tail_s
            achieved = ttft_full / ttft_cached
            point = {"tokens": n, "cached_tokens": prefix_len, "tail_tokens": n - prefix_len,
                     "ttft_full_s": ttft_full, "ttft_cached_s": ttft_cached, "prefill_s": prefill_s,
                     "tail_prefill_s": tail_s, "load_s": load_s, "ideal_speedup": ideal,
                     "achieved_speedup": achieved, "share_of_ideal": achieved / ideal,
                     "load_gbps": prefix_len * kv_bytes_per_token / load_s / 1e9, "tier": args.tier}
            if args.tier == "nvme":
                point["nvme_promoted_chunks"] = store.stats()["promotions"]
                point["note"] = "ttft_cached_s includes the NVMe read; load_s is from DRAM after the promotion"
            points.append(point)
            cache.close()
            store.close()
            if not args.json:
                print(f"  measured {n} tokens", file=sys.stderr, flush=True)
    if nvme_dir:
        import shutil
        shutil.rmtree(nvme_dir, ignore_errors=True)

    result = {"engine": "transformers-cpu", "model": model_info, "chunk_tokens": chunk, "tier": args.tier,
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu": platform.processor()
              or platform.machine(), "cpus": os.cpu_count(), "reps": args.reps, "points": points}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    if args.prefill_jsonl:
        with open(args.prefill_jsonl, "w") as f:
            for pt in points:
                f.write(json.dumps({
                    "model": f"llama-random-{params / 1e6:.0f}M", "engine": "transformers", "device": "cpu",
                    "layers": args.layers, "kv_heads": args.kv_heads, "head_dim": head_dim, "dtype": "float32",
                    "context_tokens": pt["tokens"], "prefill_s": pt["prefill_s"],
                    "cached_tokens": pt["cached_tokens"], "tail_prefill_s": pt["tail_prefill_s"],
                    "ttft_full_s": pt["ttft_full_s"], "ttft_cached_s": pt["ttft_cached_s"],
                    "load_s": pt["load_s"], "tier": pt["tier"]}) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"kvtier bench e2e: transformers {model_info['arch']}, {params / 1e6:.1f}M params, {args.layers} layers, "
          f"{args.kv_heads} KV heads x {head_dim}, float32, CPU ({torch.get_num_threads()} torch threads), "
          f"tier {args.tier}, chunk {chunk} tokens, best of {args.reps}")
    hdr = (f"{'tokens':>7} {'cached':>7} {'tail':>5} {'ttft_full_s':>11} {'ttft_cached_s':>13} {'prefill_s':>9} "
           f"{'tail_prefill_s':>14} {'load_s':>8} {'ideal_x':>8} {'achieved_x':>10} {'share':>6}")
    print(hdr)
    for p in points:
        print(f"{p['tokens']:>7} {p['cached_tokens']:>7} {p['tail_tokens']:>5} {p['ttft_full_s']:>11.3f} "
              f"{p['ttft_cached_s']:>13.3f} {p['prefill_s']:>9.3f} {p['tail_prefill_s']:>14.3f} {p['load_s']:>8.4f} "
              f"{p['ideal_speedup']:>8.2f} {p['achieved_speedup']:>10.2f} {p['share_of_ideal']:>6.0%}")
    print("ideal = prefill_s / tail_prefill_s; achieved = ttft_full_s / ttft_cached_s; share = achieved / ideal")
    if args.out:
        print(f"points written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
