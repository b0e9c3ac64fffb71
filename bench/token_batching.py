"""Issue 29, item 1: token-budget batches (--max-batch-tokens) against a fixed batch size, on CPU.

    python -m bench.token_batching                      # 2,000 realistic rows, tiny model, 1 thread
    python -m bench.token_batching --rows 400 --hidden-size 512

The tiny model of configs/tiny.yaml (LoRA, its own tokenizer; `--hidden-size` widens it so that dense cost dominates as
in 8B models) reads rows of realistic lengths (bench.lengths) through pref_core.predict.inference.predict_token_ids,
once with `--batch-size` rows per batch (longest first, today's path) and once with a token budget equal to that
path's peak padded tokens (batch size x the longest row), capped at `--max-rows` rows: the same peak batch, so the
same peak activation memory by construction; the budget packs more short rows per batch. Sides alternate; time is
wall less run-queue wait (bench.timing, one torch thread). Predictions must agree within `--tolerance` (1e-6). Peak
extra resident memory of each side is read with bench.memory.PeakRSS (Linux high-water mark, reset per side).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.report import Verdict, print_table, save_results
from bench.timing import median, spread, time_call_detailed

NAME = "token_batching"
GOAL = 1.2  # the goal; on CPU, sorted fixed batches already pad little (see docs/benchmarks.md)


def measure(args) -> Verdict:
    import torch

    from arena_pref.tasks import resources
    from bench.lengths import make_realistic_frame
    from bench.memory import PeakRSS, is_supported
    from pref_core.config.loading import load_config
    from pref_core.model.preference import build_model
    from pref_core.model.tiny import build_tiny_checkpoint
    from pref_core.predict.batching import plan_batches
    from pref_core.predict.ensemble import encode_frame
    from pref_core.predict.inference import predict_token_ids
    from pref_core.text.prompts import build_prompt
    from pref_core.train.fold import load_training_tokenizer

    torch.set_num_threads(args.threads)
    frame = make_realistic_frame(args.rows, seed=args.seed)
    overrides = [f"prompt.max_length={args.max_length}"]
    if args.hidden_size:
        overrides += [
            f"model.tiny.hidden_size={args.hidden_size}",
            f"model.tiny.intermediate_size={4 * args.hidden_size}",
        ]
    config = load_config(resources.shipped_file("configs/tiny.yaml"), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        texts = [
            build_prompt(p, a, b) for p, a, b in zip(frame["prompt"][:1000], frame["response_a"], frame["response_b"])
        ]
        tiny = config.model.tiny
        model_dir = build_tiny_checkpoint(
            texts,
            Path(tmp) / "model",
            hidden_size=tiny.hidden_size,
            num_layers=tiny.num_layers,
            num_heads=tiny.num_heads,
            intermediate_size=tiny.intermediate_size,
            vocab_size=tiny.vocab_size,
        )
        tokenizer = load_training_tokenizer(config.model, model_dir)
        model = build_model(config.model, config.lora, tokenizer, name_or_path=model_dir, seed=config.train.seed)
    model.eval()
    ids, _ = encode_frame(frame, tokenizer, config.prompt, with_swap=False)
    lengths = np.asarray([len(seq) for seq in ids])
    real_tokens = int(lengths.sum())
    budget = args.batch_size * int(lengths.max())
    settings = {
        "fixed": dict(batch_size=args.batch_size, max_batch_tokens=None),
        "budget": dict(batch_size=args.max_rows, max_batch_tokens=budget),
    }
    plans = {side: plan_batches(lengths, s["batch_size"], s["max_batch_tokens"]) for side, s in settings.items()}
    pad = tokenizer.pad_token_id

    def run(side: str) -> np.ndarray:
        with torch.inference_mode():
            return predict_token_ids(model, ids, pad_token_id=pad, **settings[side])

    reference = run("fixed")  # warm-up, and the check
    diff = float(np.abs(run("budget") - reference).max())
    if diff > args.tolerance:
        raise AssertionError(f"token-budget predictions differ from fixed batches by {diff:.2e} (> {args.tolerance:g})")
    times: dict[str, list[float]] = {"fixed": [], "budget": []}
    wall: dict[str, list[float]] = {"fixed": [], "budget": []}
    for repeat in range(args.repeats):
        for side in ("fixed", "budget") if repeat % 2 == 0 else ("budget", "fixed"):
            timing = time_call_detailed(lambda side=side: run(side))
            times[side].append(timing["busy"])
            wall[side].append(timing["wall"])
    peak = {}
    for side in settings:
        if is_supported():
            with PeakRSS() as meter:
                run(side)
            peak[side] = meter.peak_mib
        else:
            peak[side] = float("nan")
    rows = []
    for side, label in (("fixed", f"fixed {args.batch_size} rows"), ("budget", f"budget {budget:,} tokens")):
        plan = plans[side]
        t = median(times[side])
        rows.append(
            [
                label,
                len(plan.batches),
                max(plan.padded_tokens()),
                100 * (1 - real_tokens / sum(plan.padded_tokens())),
                median(wall[side]),
                t,
                spread(times[side]),
                real_tokens / t,
                peak[side],
            ]
        )
    ratio = median(times["fixed"]) / median(times["budget"])
    print_table(
        f"token-budget batches, tiny model (hidden {config.model.tiny.hidden_size}), {args.rows:,} rows (median "
        f"{np.median(lengths):.0f} tokens, max {lengths.max()}), {args.threads} thread(s), {args.repeats} alternating "
        f"repeats; predictions agree within {diff:.1e}",
        [
            "batches",
            "n",
            "peak padded tokens",
            "padding %",
            "wall s",
            "less run-queue wait s",
            "range",
            "real tokens/s",
            "peak extra RSS MiB",
        ],
        rows,
    )
    print(f"token budget: {ratio:.2f}x the tokens/s of fixed batches (goal >= {GOAL}x)")
    verdict = Verdict(NAME, ratio, "x tokens/s, token budget vs fixed batches", f">={GOAL}x", ratio >= GOAL)
    save_results(
        NAME if not args.hidden_size else f"{NAME}_h{args.hidden_size}",
        verdict,
        {
            "args": vars(args),
            "busy_s": times,
            "wall_s": wall,
            "real_tokens": real_tokens,
            "budget": budget,
            "plans": {
                side: {"batches": len(p.batches), "padded_tokens": sum(p.padded_tokens())} for side, p in plans.items()
            },
            "peak_extra_rss_mib": peak,
            "max_abs_diff": diff,
            "ratio": ratio,
        },
    )
    return verdict


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-rows", type=int, default=64, help="row cap of the token-budget side")
    parser.add_argument("--hidden-size", type=int, default=None, help="widen the tiny model (e.g. 512)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-6,
        help="largest difference allowed between the two sides' probabilities (fp32 sums in another order: a wider "
        "model differs more, e.g. 1.2e-6 at hidden 512)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    measure(parse_args(argv))


if __name__ == "__main__":
    main()
