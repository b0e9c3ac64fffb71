"""Benchmark 2: share of padded positions over an epoch, length-grouped batches against random ones.

Uses the training code's own sampler (pref_core.train.sampling.EpochSeededSampler, built exactly as
PreferenceTrainer._get_train_sampler builds it: mega-batches for per_device x accumulation rows) and the
collator's padding rule (pref_core.predict.inference.PreferenceCollator: pad to the batch's longest row, rounded
up to a multiple of 8 on CUDA). Token lengths are those of bench.lengths: the real sample's uncut
character lengths, resampled, at ~4 characters per Llama-3 token, seed truncation at max_length 1024.
Nothing is tokenized; the numbers are exact for the given lengths.
"""

from __future__ import annotations

import argparse
from typing import Optional

import numpy as np

from bench.lengths import CHARS_PER_TOKEN, estimate_token_lengths, load_char_lengths, sample_char_lengths
from bench.report import Verdict, print_table, save_results

NAME = "padding"
GOAL = 0.05  # at most 5% padded positions at batch 8
# One fold's training rows of the real train.csv (57,477 rows, 5 folds).
FOLD_TRAIN_ROWS = 57_477 * 4 // 5


def padded_width(batch_lengths: np.ndarray, pad_to_multiple_of: Optional[int]) -> int:
    """PreferenceCollator's width rule: the longest row, rounded up to the multiple when one is set."""
    width = int(batch_lengths.max())
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    return width


def measure_padding(
    lengths: np.ndarray,
    per_device: int,
    accumulation: int,
    grouped: bool,
    epoch: int = 0,
    seed: int = 42,
    pad_to_multiple_of: Optional[int] = None,
) -> dict:
    """Padded share of all positions the model computes over one epoch, in the Trainer's batch order."""
    from pref_core.train.sampling import EpochSeededSampler

    # As PreferenceTrainer._get_train_sampler: mega-batches sized for one optimizer step.
    sampler = EpochSeededSampler(
        lengths.tolist(), batch_size=per_device * accumulation, seed=seed, group_by_length=grouped
    )
    sampler.set_epoch(epoch)
    order = np.fromiter(iter(sampler), dtype=np.int64, count=len(lengths))
    real = padded = 0
    for start in range(0, len(order), per_device):  # the DataLoader's batches (drop_last=False)
        batch = lengths[order[start : start + per_device]]
        width = padded_width(batch, pad_to_multiple_of)
        real += int(batch.sum())
        padded += width * len(batch)
    return {"real_tokens": real, "positions": padded, "pad_share": 1.0 - real / padded}


def measure(args) -> Verdict:
    from pref_core.train.sampling import EpochSeededSampler  # noqa: F401 (import cost outside the loops)

    _, source = load_char_lengths()
    chars = sample_char_lengths(args.rows, seed=args.seed)
    lengths = estimate_token_lengths(chars, args.max_length, args.chars_per_token)
    print(
        f"{args.rows:,} rows, token lengths from {source}: median {np.median(lengths):.0f}, mean {lengths.mean():.0f}, "
        f"p90 {np.percentile(lengths, 90):.0f}, "
        f"{np.mean(lengths >= args.max_length - 8):.1%} at the {args.max_length} cap"
    )

    settings = [(8, 1, None), (8, 1, 8), (2, 2, None), (2, 2, 8)]  # (per_device, accumulation, multiple)
    rows, details = [], []
    headline = None
    for per_device, accumulation, multiple in settings:
        shares = {}
        for grouped in (True, False):
            epochs = [
                measure_padding(lengths, per_device, accumulation, grouped, epoch=e, pad_to_multiple_of=multiple)
                for e in range(args.epochs)
            ]
            shares[grouped] = epochs
        grouped_share = float(np.mean([e["pad_share"] for e in shares[True]]))
        random_share = float(np.mean([e["pad_share"] for e in shares[False]]))
        compute_ratio = np.mean([e["positions"] for e in shares[False]]) / np.mean(
            [e["positions"] for e in shares[True]]
        )
        label = f"{per_device} x {accumulation}" + (f", pad to x{multiple}" if multiple else "")
        rows.append([label, grouped_share * 100, random_share * 100, compute_ratio])
        details.append(
            {
                "per_device": per_device,
                "accumulation": accumulation,
                "pad_to_multiple_of": multiple,
                "grouped": shares[True],
                "random": shares[False],
                "positions_ratio": compute_ratio,
            }
        )
        if (per_device, accumulation, multiple) == (8, 1, None):
            headline = grouped_share
    print_table(
        f"padded share of positions over an epoch ({args.epochs} epochs averaged), max_length {args.max_length}",
        ["batch (per device x accumulation)", "grouped %", "random %", "positions random / grouped"],
        rows,
    )
    sensitivity = []
    for cpt in (3.0, 4.0, 5.0):
        alt = estimate_token_lengths(chars, args.max_length, cpt)
        sensitivity.append(
            [
                cpt,
                np.median(alt),
                measure_padding(alt, 8, 1, True)["pad_share"] * 100,
                measure_padding(alt, 8, 1, False)["pad_share"] * 100,
            ]
        )
    print_table(
        "sensitivity to the characters-per-token assumption (batch 8 x 1, epoch 0)",
        ["chars/token", "median tokens", "grouped %", "random %"],
        sensitivity,
    )
    print(f"grouped padding at batch 8: {headline:.2%} (goal <= {GOAL:.0%})")
    verdict = Verdict(
        NAME,
        headline * 100,
        "% padded positions (grouped, batch 8)",
        f"<={GOAL * 100:.0f}% (random batches: {rows[0][2]:.1f}%)",
        headline <= GOAL,
    )
    save_results(
        NAME, verdict, {"args": vars(args), "settings": details, "sensitivity": sensitivity, "length_source": source}
    )
    return verdict


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=FOLD_TRAIN_ROWS)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--chars-per-token", type=float, default=CHARS_PER_TOKEN)
    parser.add_argument("--epochs", type=int, default=3, help="epochs (sampler orders) averaged")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    print(measure(parse_args(argv)).to_json_line())


if __name__ == "__main__":
    main()
