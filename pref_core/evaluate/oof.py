"""Out-of-fold (OOF) assembly and scoring: the folds' validation predictions joined into one table.

Pure pandas/numpy: the caller fetches the fold tables (from MLflow, disk, anywhere) and logs the result.
Every kept training row of a trained fold must be predicted exactly once, or nothing is scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from pref_core.data.labels import LABEL_COLUMNS, TURN_COLUMNS
from pref_core.errors import UserError
from pref_core.evaluate import metrics, plots
from pref_core.evaluate.calibration import apply_temperature, fit_temperature

OOF_COLUMNS = ("id", "fold", *LABEL_COLUMNS, "label")


class IncompleteOOFError(UserError, RuntimeError):
    """The out-of-fold predictions do not cover the kept rows exactly once."""


# The parent run's score metrics, in the order a table of runs shows them (OOFScores.metrics logs them).
SCORE_METRICS = ("oof_log_loss", "oof_log_loss_calibrated", "oof_accuracy", "prior_log_loss")


@dataclass
class OOFScores:
    """What the OOF table scores: log loss, accuracy, the class prior's log loss, calibration, per-fold breakdowns."""

    log_loss: float
    accuracy: float
    prior_log_loss: float  # always predicting the training class shares
    n_oof: int  # rows scored
    temperature: float  # 1.0 unless calibration.method=temperature; applied to the submission
    fitted_temperature: float  # always fitted: the calibration plot shows it even when not applied
    calibrated_log_loss: Optional[float] = None  # with calibration.method=temperature
    fold_accuracy: dict[int, float] = field(default_factory=dict)
    fold_rows: dict[int, int] = field(default_factory=dict)
    fold_log_loss: dict[int, float] = field(default_factory=dict)  # of each fold's validation rows

    @property
    def metrics(self) -> dict[str, float]:
        """The scores under their MLflow metric names: what the parent run's charts and comparisons lead with
        (bookkeeping such as the row count is in `params`)."""
        out = {"oof_log_loss": self.log_loss, "oof_accuracy": self.accuracy, "prior_log_loss": self.prior_log_loss}
        if self.calibrated_log_loss is not None:
            out["oof_log_loss_calibrated"] = self.calibrated_log_loss
        return out

    @property
    def params(self) -> dict[str, float]:
        """What the scores were computed on and with (rows, the applied temperature): MLflow params, not metrics."""
        out: dict[str, float] = {"n_oof": self.n_oof}
        if self.calibrated_log_loss is not None:
            out["temperature"] = self.temperature
        return out


def assemble_oof(
    fold_predictions: Mapping[int, pd.DataFrame], labels: pd.DataFrame, folds: pd.DataFrame
) -> pd.DataFrame:
    """One table of OOF_COLUMNS from each fold's validation predictions (id + LABEL_COLUMNS).

    `labels` (id, label) are the ingested rows: the label comes from there, not from what the folds
    echoed back. `folds` (id, fold) is the fold table; the folds in `fold_predictions` must cover their
    rows exactly once (IncompleteOOFError otherwise).
    """
    pieces = [frame.assign(fold=fold) for fold, frame in sorted(fold_predictions.items())]
    oof = pd.concat(pieces, ignore_index=True)
    oof["id"] = oof["id"].astype(str)
    expected = set(folds.loc[folds["fold"].isin(list(fold_predictions)), "id"].astype(str))
    check_coverage(oof["id"], expected)
    kept = labels[["id", "label"]].assign(id=labels["id"].astype(str))
    oof = oof.drop(columns=["label"], errors="ignore").merge(kept, on="id", how="left")
    return oof[list(OOF_COLUMNS)]


def check_coverage(ids: pd.Series, expected: set[str]) -> None:
    """Raise IncompleteOOFError unless `ids` hold each of `expected` exactly once and nothing else."""
    duplicated = ids[ids.duplicated()].tolist()
    missing = expected - set(ids)
    extra = set(ids) - expected
    if duplicated or missing or extra:
        raise IncompleteOOFError(
            f"OOF predictions must cover each validation row exactly once: {len(duplicated)} duplicated "
            f"(e.g. {duplicated[:3]}), {len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} unexpected."
        )


def score_oof(oof: pd.DataFrame, calibration_method: str) -> OOFScores:
    """Log loss, accuracy and the prior's log loss of the OOF table; with calibration_method=temperature
    also the fitted temperature and the calibrated log loss."""
    labels, probs = oof["label"].to_numpy(), oof[list(LABEL_COLUMNS)].to_numpy()
    summary = metrics.summarize_predictions(labels, probs)
    fitted = fit_temperature(labels, probs)
    temperature, calibrated = 1.0, None
    if calibration_method == "temperature":
        temperature = fitted
        calibrated = float(metrics.compute_log_loss(labels, apply_temperature(probs, temperature)))
    fold_index = oof["fold"].to_numpy()
    folds = sorted(set(fold_index.tolist()))
    return OOFScores(
        log_loss=float(summary["log_loss"]),
        accuracy=float(summary["accuracy"]),
        prior_log_loss=float(summary["prior_log_loss"]),
        n_oof=int(len(oof)),
        temperature=temperature,
        fitted_temperature=fitted,
        calibrated_log_loss=calibrated,
        fold_accuracy={k: metrics.compute_accuracy(labels[fold_index == k], probs[fold_index == k]) for k in folds},
        fold_rows={k: int((fold_index == k).sum()) for k in folds},
        fold_log_loss={k: metrics.compute_log_loss(labels[fold_index == k], probs[fold_index == k]) for k in folds},
    )


def text_lengths(frame: pd.DataFrame, ids: pd.Series) -> np.ndarray:
    """(n,) characters of prompt + both responses per row of `frame` (parsed turns, before any truncation),
    in the order of `ids`."""
    total = sum(frame[c].map(lambda turns: sum(len(t) for t in turns if t)) for c in TURN_COLUMNS)
    return pd.Series(total.to_numpy(), index=frame["id"].astype(str)).loc[ids.astype(str)].to_numpy()


def oof_figures(oof: pd.DataFrame, scores: OOFScores, fold_log_loss: Mapping[int, float], lengths: np.ndarray) -> dict:
    """The OOF plots by artifact name: fold losses, reliability, confusion, calibration, loss by length."""
    labels, probs = oof["label"].to_numpy(), oof[list(LABEL_COLUMNS)].to_numpy()
    temperature = scores.fitted_temperature
    return {
        "plots/fold_log_loss.png": plots.plot_fold_log_loss(fold_log_loss, scores.log_loss, scores.prior_log_loss),
        "plots/reliability.png": plots.plot_reliability(labels, probs),
        "plots/confusion_matrix.png": plots.plot_confusion(labels, probs),
        # The fitted temperature is shown even when calibration.method=none (then it is not applied).
        "plots/calibration_temperature.png": plots.plot_calibration_before_after(
            labels, probs, apply_temperature(probs, temperature), temperature
        ),
        "plots/log_loss_by_length.png": plots.plot_log_loss_by_length(labels, probs, lengths, scores.log_loss),
    }
