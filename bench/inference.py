"""Benchmark 5: inference throughput, length-sorted batches (pref_core.predict.inference.predict) against input order.

The tiny model of configs/tiny.yaml (random 2-layer Llama + LoRA, label_token head) reads rows of
realistic lengths (bench.lengths, tokenized with its own byte-level BPE at max_length 1024). Both sides
use the same model, collator (pad to the batch's longest row) and batch size under torch.inference_mode;
only the order of the rows differs. Throughput counts real (non-pad) tokens. Sides alternate.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from arena_pref import environment
from arena_pref.tasks import resources
from bench import BENCH_ENVIRONMENT
from bench.report import Verdict, print_table, save_results
from bench.timing import median, spread, time_call_detailed

NAME = "inference"
GOAL = 1.0  # length-sorted must beat input order


def predict_in_input_order(model, dataset, batch_size: int, pad_token_id: int) -> np.ndarray:
    """pref_core.predict.inference.predict's loop without its longest-first sort: batches in dataset order."""
    import torch

    from pref_core.predict.inference import PreferenceCollator

    collate = PreferenceCollator(pad_token_id)
    rows = dataset.select_columns(["input_ids"])
    out = np.empty((len(dataset), 3), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = collate([{"input_ids": ids} for ids in rows[start : start + batch_size]["input_ids"]])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]  # (batch, 3)
            out[start : start + batch_size] = torch.softmax(logits.float(), dim=-1).numpy()
    return out


def padded_positions(lengths: np.ndarray, batch_size: int) -> int:
    """Positions computed when consecutive rows of `lengths` form batches padded to their longest row."""
    return int(
        sum(
            lengths[i : i + batch_size].max() * len(lengths[i : i + batch_size])
            for i in range(0, len(lengths), batch_size)
        )
    )


def measure(args) -> Verdict:
    import datasets
    import torch

    from bench.lengths import make_realistic_frame
    from pref_core.config.loading import load_config
    from pref_core.model.preference import build_model
    from pref_core.model.tiny import build_tiny_checkpoint
    from pref_core.predict.inference import predict_probabilities
    from pref_core.text.prompts import build_prompt
    from pref_core.text.tokenization import tokenize_frame
    from pref_core.train.fold import load_training_tokenizer

    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    frame = make_realistic_frame(args.rows, seed=args.seed)
    config = load_config(resources.shipped_file("configs/tiny.yaml"), [f"prompt.max_length={args.max_length}"])
    with tempfile.TemporaryDirectory() as tmp:
        texts = [
            build_prompt(p, a, b)
            for p, a, b in zip(frame["prompt"][:1000], frame["response_a"][:1000], frame["response_b"][:1000])
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
    dataset = tokenize_frame(frame, tokenizer, config.prompt)
    lengths = np.asarray(dataset["length"])
    real_tokens = int(lengths.sum())
    pad_id = tokenizer.pad_token_id

    sorted_probs = predict_probabilities(
        model, dataset, batch_size=args.batch_size, pad_token_id=pad_id
    )  # warm-up, and the check
    input_probs = predict_in_input_order(model, dataset, args.batch_size, pad_id)
    if not np.allclose(sorted_probs, input_probs, atol=1e-4):
        raise AssertionError("length-sorted and input-order predictions differ: padding leaks into the results")
    times: dict[str, list[float]] = {"sorted": [], "input": []}
    wall: dict[str, list[float]] = {"sorted": [], "input": []}
    for repeat in range(args.repeats):
        for side in ("sorted", "input") if repeat % 2 == 0 else ("input", "sorted"):
            if side == "sorted":
                timing = time_call_detailed(
                    lambda: predict_probabilities(model, dataset, batch_size=args.batch_size, pad_token_id=pad_id)
                )
            else:
                timing = time_call_detailed(lambda: predict_in_input_order(model, dataset, args.batch_size, pad_id))
            times[side].append(timing["busy"])  # wall less run-queue wait: one torch thread, see bench.timing
            wall[side].append(timing["wall"])
    positions = {
        "sorted": padded_positions(np.sort(lengths)[::-1], args.batch_size),
        "input": padded_positions(lengths, args.batch_size),
    }
    rows = []
    for side, label in (("input", "input order"), ("sorted", "length-sorted (predict)")):
        t = median(times[side])
        rows.append(
            [
                label,
                median(wall[side]),
                t,
                spread(times[side]),
                real_tokens / t,
                100 * (1 - real_tokens / positions[side]),
            ]
        )
    ratio = median(times["input"]) / median(times["sorted"])
    print_table(
        f"inference, tiny model, {args.rows:,} rows (median {np.median(lengths):.0f} tokens), batch {args.batch_size}, "
        f"{args.threads} thread(s), {args.repeats} alternating repeats",
        ["order", "wall s", "less run-queue wait s", "range", "real tokens/s", "padding %"],
        rows,
    )
    print(f"length-sorted: {ratio:.2f}x the tokens/s of input order (goal > {GOAL:.0f}x)")
    verdict = Verdict(NAME, ratio, "x tokens/s, sorted vs input order", f">{GOAL:.0f}x", ratio > GOAL)
    save_results(
        NAME,
        verdict,
        {
            "args": vars(args),
            "busy_s": times,
            "wall_s": wall,
            "real_tokens": real_tokens,
            "positions": positions,
            "ratio": ratio,
        },
    )
    return verdict


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: robust on shared cores, see orchestration)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    environment.apply_defaults(*BENCH_ENVIRONMENT)
    print(measure(parse_args(argv)).to_json_line())


if __name__ == "__main__":
    main()
