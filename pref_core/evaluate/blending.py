"""A blend of trained runs from their OOF tables: what `arena-pref blend` fits, reports and registers.

Each member's OOF table (oof_predictions.parquet of its cv-training run: id, fold, label, the three probabilities
and the row kind) is calibrated with the member's own temperature, so that a member's OOF rows mean what its
`predict` gives for test rows. The members must split the same data into the same folds (blend.check_members names
the first difference); the blend is fitted nested over those folds (blend.fit_blend), and post-processing, when on,
is learned on the blend's honest OOF rows (postprocess.fit_postprocess), as a cv-training run learns it on its own.

Pure pandas/numpy (scipy / scikit-learn to fit): where the tables come from is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from pref_core.data.labels import LABEL_COLUMNS
from pref_core.evaluate.blend import BlendMember, BlendMembersError, BlendResult, align_members, fit_blend
from pref_core.evaluate.calibration import apply_temperature
from pref_core.evaluate.postprocess import (
    DEFAULT_MIN_ROWS,
    ROW_KIND_COLUMN,
    PostprocessRules,
    fit_postprocess,
    kinds_to_fit,
)

BLEND_OOF_FILE = "blend_oof_predictions.parquet"


@dataclass(frozen=True)
class MemberOOF:
    """One member as its training run left it: its OOF table, the hash of its training data and its temperature."""

    name: str
    table: pd.DataFrame  # id, fold, label, LABEL_COLUMNS (and ROW_KIND_COLUMN from runs that wrote it)
    data_hash: str
    temperature: float = 1.0


@dataclass(frozen=True)
class BlendFit:
    """The blend (fold and final parameters, honest OOF, report), the rules learned on its OOF rows (None: off or
    no row kinds recorded) and its OOF table (id, fold, label, row kind, the honest blend probabilities)."""

    result: BlendResult
    postprocess: Optional[PostprocessRules]
    oof: pd.DataFrame
    note: str = ""  # why post-processing was not learned, when it was asked for and was not

    def lines(self) -> list[str]:
        """The console report: members, best member, mean, blend, blend minus best, post-processing."""
        out = self.result.report.lines()
        if self.postprocess is not None:
            out.append(self.postprocess.summary())
        elif self.note:
            out.append(self.note)
        return out


def member_probabilities(member: MemberOOF) -> np.ndarray:
    """(n, 3) the member's OOF probabilities after its calibration temperature: what its predict writes."""
    return apply_temperature(member.table[list(LABEL_COLUMNS)].to_numpy(dtype=np.float64), member.temperature)


def blend_member(member: MemberOOF) -> BlendMember:
    """The member as blend.check_members / align_members compare it: ids, folds, data hash, calibrated OOF rows."""
    table = member.table
    return BlendMember(
        member.name, table["id"].astype(str).tolist(), table["fold"], member.data_hash, member_probabilities(member)
    )


def fit_member_blend(
    members: Sequence[MemberOOF],
    method: str,
    *,
    postprocess: bool = True,
    min_rows: int = DEFAULT_MIN_ROWS,
    near_identical: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
) -> BlendFit:
    """Check, align and blend the members' OOF rows (`method`: mean | weights | stack), then learn post-processing
    on the blend's honest OOF rows when `postprocess` is on and the first member recorded its row kinds."""
    aligned = align_members([blend_member(m) for m in members])
    first = members[0].table.assign(id=members[0].table["id"].astype(str)).set_index("id").loc[aligned.ids]
    labels = first["label"].to_numpy(dtype=np.int64)
    for member in members[1:]:
        theirs = member.table.assign(id=member.table["id"].astype(str)).set_index("id").loc[aligned.ids, "label"]
        differs = np.flatnonzero(theirs.to_numpy() != labels)
        if differs.size:
            raise BlendMembersError(
                f"blend member {member.name} labels row id {aligned.ids[differs[0]]} otherwise than "
                f"{members[0].name} ({differs.size} rows differ); fix: blend only runs of the same data.train_csv"
            )
    result = fit_blend(labels, aligned.folds, aligned.probs, method, aligned.names, n_boot=n_boot, seed=seed)
    oof = pd.DataFrame({"id": aligned.ids, "fold": aligned.folds, "label": labels})
    rules, note = None, ""
    if ROW_KIND_COLUMN in first.columns:
        oof[ROW_KIND_COLUMN] = first[ROW_KIND_COLUMN].to_numpy()
        if postprocess:
            rules = fit_postprocess(
                labels,
                aligned.folds,
                oof[ROW_KIND_COLUMN].to_numpy(),
                result.oof_probs,
                min_rows=min_rows,
                fit_kinds=kinds_to_fit(near_identical),
            )
    elif postprocess:
        note = (
            f"post-processing: not learned ({members[0].name}'s OOF table has no {ROW_KIND_COLUMN} column: "
            "it was trained before row kinds were recorded)"
        )
    for k, column in enumerate(LABEL_COLUMNS):
        oof[column] = result.oof_probs[:, k]
    return BlendFit(result, rules, oof, note)


def blend_metrics(fit: BlendFit) -> dict[str, float]:
    """The blend as MLflow metrics: the blend's honest OOF log loss (`oof_log_loss`, before post-processing, as
    a cv-training run reports its own), the plain mean, the best member, each member, blend minus best."""
    report = fit.result.report
    out = {
        "oof_log_loss": report.blend_log_loss,
        "oof_log_loss_mean": report.mean_log_loss,
        "oof_log_loss_best_member": report.member_log_loss[report.best_member],
        "blend_minus_best": report.difference.mean,
        "blend_minus_best_low": report.difference.low,
        "blend_minus_best_high": report.difference.high,
        "n_oof": report.n_rows,
    }
    for name, loss in report.member_log_loss.items():
        out[f"member_oof_log_loss/{name}"] = loss
    return out
