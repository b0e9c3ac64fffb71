"""Issue 29, item 7: fp16 rows/s of a Gemma-2-9B-shaped model at 2,048 tokens, with and without swap TTA, and the
projected time for Kaggle's 25,000 test rows on the card used (a step of `make gpu-check`).

    python -m bench.kaggle_throughput --out DIR/kaggle.json           # on a GPU (random weights, ~18.5 GB)
    python -m bench.kaggle_throughput --out DIR/kaggle.json --small   # CPU dry run: a 2-layer Gemma-2

The model is Gemma-2-9B's architecture (42 layers, hidden 3584, 16 heads of 256, 8 kv heads, softcaps 50 and 30)
with random fp16 weights, built straight on the device, under the classifier head the winners used, loaded the way
predict.py loads a base in fp16: attention chosen by pref_core.model.precision.choose_attention (eager attention with
fp32 scores and softcap: transformers refuses sdpa for Gemma-2), batches planned by a token budget
(--max-batch-tokens), probabilities checked finite. A merged adapter (--merge-adapter) costs exactly this; K fold
adapters cost K times the forward passes plus the LoRA matmuls.

Rows are exactly `--length` tokens (the worst case the issue names); the projection for 25,000 rows is given both at
that length and for a realistic length mix (bench.lengths at max_length 2048), priced per batch as
rows x width x (1 + width / width_scale) (pref_core.predict.budget) at the rate measured here. Only standard
library, torch, transformers and numpy: it runs under the GPU image's bare python3.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

GEMMA2_9B = dict(
    vocab_size=256000,
    hidden_size=3584,
    intermediate_size=14336,
    num_hidden_layers=42,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=256,
    query_pre_attn_scalar=256,
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
)
SMALL = dict(GEMMA2_9B, vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2, head_dim=16)
SMALL.update(num_attention_heads=4, num_key_value_heads=2, query_pre_attn_scalar=16, sliding_window=64)
KAGGLE_ROWS = 25_000


def build_model(config_kwargs: dict, dtype, device):
    """PreferenceModel (classifier head) over a random Gemma-2 of `config_kwargs`, weights created in `dtype` on
    `device` (no fp32 copy of 9B weights first); returns (model, attention implementation)."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from pref_core.model.precision import FP32_SOFTCAP_ATTENTION, choose_attention, register_softcap_attention
    from pref_core.model.preference import PreferenceModel

    config = Gemma2Config(**config_kwargs)
    attention = choose_attention("sdpa", config, dtype)
    if attention == FP32_SOFTCAP_ATTENTION:
        register_softcap_attention()
    config._attn_implementation = attention
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            backbone = Gemma2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    backbone.config.use_cache = False
    model = PreferenceModel(backbone, "classifier", pad_token_id=0).eval()
    return model, attention


def measure(args) -> dict:
    import torch

    from pref_core.model.backbone import dtype_name
    from pref_core.predict.budget import attention_width_scale, format_duration
    from pref_core.predict.deadline import plan_cost
    from pref_core.predict.inference import predict_token_ids

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16
    shape = SMALL if args.small else GEMMA2_9B
    started = time.perf_counter()
    model, attention = build_model(shape, dtype, device)
    build_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    vocab = shape["vocab_size"]
    rows = [rng.integers(10, vocab, size=args.length).tolist() for _ in range(args.rows)]
    swapped = [rng.integers(10, vocab, size=args.length).tolist() for _ in range(args.rows)]
    pad = 8 if device.type == "cuda" else None
    options = dict(batch_size=args.max_rows, pad_token_id=0, max_batch_tokens=args.max_batch_tokens)
    predict_token_ids(model, rows[: max(1, args.max_batch_tokens // args.length)], pad_to_multiple_of=pad, **options)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    out = {
        "mode": "small (2-layer Gemma-2 on CPU: checks the script, not a GPU number)" if args.small else "gpu",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "dtype": dtype_name(dtype),
        "attention": attention,
        "shape": shape,
        "rows": args.rows,
        "length": args.length,
        "max_batch_tokens": args.max_batch_tokens,
        "build_s": build_s,
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for name, views in (("no_tta", None), ("tta", swapped)):
        sync()
        start = time.perf_counter()
        probs = predict_token_ids(model, rows, views, pad_to_multiple_of=pad, **options)
        sync()
        seconds = time.perf_counter() - start
        finite = bool(np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3))
        n_views = 2 if views is not None else 1
        out[name] = {
            "seconds": seconds,
            "rows_per_s": args.rows / seconds,
            "tokens_per_s": n_views * args.rows * args.length / seconds,
            "finite": finite,
        }
        print(f"  {name}: {seconds:.2f} s, {args.rows / seconds:.2f} rows/s, finite={finite}", flush=True)
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    scale = attention_width_scale(
        shape["hidden_size"],
        shape["intermediate_size"],
        shape["num_attention_heads"],
        shape["num_key_value_heads"],
        shape["head_dim"],
    )
    measured_units = plan_cost([args.length] * args.rows, args.max_rows, args.max_batch_tokens, pad, scale)
    try:
        from bench.lengths import sample_token_lengths

        realistic = sample_token_lengths(KAGGLE_ROWS, max_length=args.length, seed=0)
    except ImportError as error:  # pandas missing on the image: the all-2k projection still stands
        print(f"  no realistic length mix ({error})", flush=True)
        realistic = None
    full_units = plan_cost([args.length] * KAGGLE_ROWS, args.max_rows, args.max_batch_tokens, pad, scale)
    mean_length = float(realistic.mean()) if realistic is not None else None
    projected = {"width_scale": scale, "realistic_mean_length": mean_length}
    for name in ("no_tta", "tta"):
        rate = out[name]["seconds"] / measured_units  # seconds per unit, both views counted in `tta`
        projected[f"{name}_all_{args.length}_h"] = rate * full_units / 3600
        line = f"  {KAGGLE_ROWS:,} rows {name}: {format_duration(rate * full_units)} at {args.length} tokens each"
        if realistic is not None:
            realistic_s = rate * plan_cost(realistic, args.max_rows, args.max_batch_tokens, pad, scale)
            projected[f"{name}_realistic_h"] = realistic_s / 3600
            line += f", {format_duration(realistic_s)} at the realistic length mix"
        print(line + " (one card)", flush=True)
    out["projected_25k"] = projected
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--small", action="store_true", help="CPU dry run: a 2-layer Gemma-2, short rows")
    parser.add_argument("--rows", type=int, default=None, help="rows per side (default 64, 12 with --small)")
    parser.add_argument("--length", type=int, default=None, help="tokens per row (default 2048, 128 with --small)")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="default 8 rows of --length")
    parser.add_argument("--max-rows", type=int, default=64, help="rows per batch at most")
    args = parser.parse_args(argv)
    args.rows = args.rows or (12 if args.small else 64)
    args.length = args.length or (128 if args.small else 2048)
    args.max_batch_tokens = args.max_batch_tokens or 8 * args.length
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = measure(args)
    except Exception as error:  # noqa: BLE001 (recorded in the JSON the check reads, then re-raised)
        args.out.write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}) + "\n", encoding="utf-8")
        raise
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    ok = result["no_tta"]["finite"] and result["tta"]["finite"] and math.isfinite(result["tta"]["rows_per_s"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
