"""Is model B really better than model A? A paired comparison of per-row log losses on the rows both scored.

Two runs scored on the same OOF rows differ by less than their spread across rows suggests: most of a row's loss
is the row's difficulty, shared by both models. Pairing the rows removes it; the bootstrap resamples rows (with
replacement) and reads the interval of the mean difference from the resampled means (percentile interval).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """mean(loss_b - loss_a) over `n_rows` paired rows: negative means B has the lower log loss.

    `low`..`high` is the bootstrap percentile interval at `level`; `share_b_better` is the share of bootstrap
    resamples in which B's mean loss is lower than A's."""

    n_rows: int
    mean: float
    low: float
    high: float
    level: float
    share_b_better: float

    def in_words(self, name_a: str = "A", name_b: str = "B") -> str:
        """One line, e.g. 'B - A: -0.0123 log loss (95% interval -0.0201 .. -0.0049, B lower in 99.9% of resamples)'."""
        return (
            f"{name_b} - {name_a}: {self.mean:+.4f} log loss over {self.n_rows} rows "
            f"({self.level:.0%} interval {self.low:+.4f} .. {self.high:+.4f}, "
            f"{name_b} lower in {self.share_b_better:.1%} of resamples)"
        )


def paired_difference(loss_a, loss_b, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> PairedDifference:
    """Paired bootstrap of mean(loss_b - loss_a) from two (n,) arrays of per-row losses on the same rows, in the
    same order (metrics.row_log_losses of each model against the same labels).

    Example: losses A = [1.0, 0.5], B = [0.5, 0.5] pair to differences [-0.5, 0.0], mean -0.25; every resample
    of two rows has a mean of -0.5, -0.25 or 0.0, so the interval lies within [-0.5, 0.0].
    """
    a, b = np.asarray(loss_a, dtype=np.float64), np.asarray(loss_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired losses must be two (n,) arrays of one length, got shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no rows in common: a paired comparison needs rows both models scored")
    if not (0 < level < 1) or n_boot < 1:
        raise ValueError(f"level must be in (0, 1) and n_boot >= 1, got level={level}, n_boot={n_boot}")
    diff = b - a  # (n,)
    rng = np.random.default_rng(seed)
    # (n_boot, n) row indices, drawn in chunks so a 100k-row OOF with 2,000 resamples stays within ~100 MB.
    means = np.empty(n_boot)
    chunk = max(1, 10_000_000 // diff.size)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = diff[rng.integers(0, diff.size, size=(stop - start, diff.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedDifference(
        n_rows=int(diff.size),
        mean=float(diff.mean()),
        low=float(low),
        high=float(high),
        level=level,
        share_b_better=float(np.mean(means < 0)),
    )
