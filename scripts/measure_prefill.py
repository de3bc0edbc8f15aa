#!/usr/bin/env python3
"""Measure an engine's prefill time for a model shape, for `kvtier bench recompute`.

Builds a Llama-architecture model from its config with random weights (nothing is
downloaded), runs one forward pass over a prompt of each context length with the KV cache
on (what a prefill is), logits for the last position only, and times it (CUDA-synchronized
on a GPU; best of --reps after a warm-up). Writes JSON Lines that
`kvtier bench recompute --measured-prefill-json FILE` prints next to the measured load of
the same KV shape, and prints the achieved TFLOP/s with the FLOP count the benchmark's
model uses (bench/model_profiles.cc: 2 x matmul parameters per token, plus causal
attention), so the GPU profile's MFU can be checked against a real run.

  python3 scripts/measure_prefill.py --model llama3-8b --device cuda --contexts 1K,4K,16K,32K \\
      --out prefill-h100.jsonl

Needs torch and transformers; no kvtier module.
"""
import argparse
import json
import sys
import time

# Shapes of the benchmark's built-in profiles (bench/model_profiles.cc) that transformers'
# Llama/Mistral classes build directly.
SHAPES = {
    "llama3-8b": dict(arch="llama", hidden=4096, inter=14336, layers=32, q_heads=32, kv_heads=8, head_dim=128,
                      vocab=128256, rope_theta=500000.0, window=0, matmul_params=6.98e9),
    "mistral-7b": dict(arch="mistral", hidden=4096, inter=14336, layers=32, q_heads=32, kv_heads=8, head_dim=128,
                       vocab=32000, rope_theta=10000.0, window=4096, matmul_params=6.98e9),
}


def parse_tokens(s):
    s = s.strip().upper()
    mult = 1
    if s.endswith("K"):
        mult, s = 1024, s[:-1]
    elif s.endswith("M"):
        mult, s = 1024 * 1024, s[:-1]
    return int(s) * mult


def attention_pairs(n, window):
    if window == 0 or n <= window:
        return n * (n + 1) / 2
    return window * (window + 1) / 2 + (n - window) * window


def prefill_flops(shape, n):
    linear = 2.0 * shape["matmul_params"] * n
    attention = 2.0 * 2 * shape["head_dim"] * shape["q_heads"] * shape["layers"] * attention_pairs(n, shape["window"])
    return linear + attention


def build(shape, dtype, device, attn):
    import torch
    import transformers
    common = dict(hidden_size=shape["hidden"], intermediate_size=shape["inter"], num_hidden_layers=shape["layers"],
                  num_attention_heads=shape["q_heads"], num_key_value_heads=shape["kv_heads"],
                  head_dim=shape["head_dim"], vocab_size=shape["vocab"], rope_theta=shape["rope_theta"],
                  max_position_embeddings=131072)
    if shape["arch"] == "mistral":
        cfg = transformers.MistralConfig(sliding_window=shape["window"], **common)
        cls = transformers.MistralForCausalLM
    else:
        cfg = transformers.LlamaConfig(**common)
        cls = transformers.LlamaForCausalLM
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama3-8b", choices=sorted(SHAPES))
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--attn", default="sdpa", help="transformers attention implementation (sdpa, eager, ...)")
    p.add_argument("--contexts", default="1K,2K,4K,8K,16K,32K")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON Lines for kvtier bench recompute --measured-prefill-json")
    args = p.parse_args()

    import torch
    import transformers
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("measure_prefill: not supported on this machine: no CUDA device for --device cuda", file=sys.stderr)
        return 2
    shape = SHAPES[args.model]
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    t0 = time.time()
    model = build(shape, dtype, args.device, args.attn)
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    engine = "transformers-%s %s %s" % (transformers.__version__, args.attn, args.dtype)
    print("measure_prefill: %s on %s (%s), built in %.1f s" % (args.model, device_name, engine, time.time() - t0),
          flush=True)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize(args.device)

    out = open(args.out, "w") if args.out else None
    gen = torch.Generator(device="cpu").manual_seed(1)
    for ctx in [parse_tokens(c) for c in args.contexts.split(",")]:
        ids = torch.randint(0, shape["vocab"], (1, ctx), generator=gen).to(args.device)
        times = []
        with torch.inference_mode():
            for r in range(args.reps + 1):  # the first is a warm-up
                sync()
                t = time.perf_counter()
                model(input_ids=ids, use_cache=True, logits_to_keep=1)
                sync()
                if r > 0:
                    times.append(time.perf_counter() - t)
        best = min(times)
        tflops = prefill_flops(shape, ctx) / best / 1e12
        print("  context %6d: prefill %.4f s  (%.0f TFLOP/s by the benchmark's FLOP count)" % (ctx, best, tflops),
              flush=True)
        if out:
            out.write(json.dumps({
                "model": args.model, "device": device_name, "engine": engine, "layers": shape["layers"],
                "kv_heads": shape["kv_heads"], "head_dim": shape["head_dim"], "window": shape["window"],
                "dtype": args.dtype, "context_tokens": ctx, "prefill_s": best, "tflops": tflops}) + "\n")
        del ids
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
