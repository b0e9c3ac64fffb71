"""Learned post-processing for rows the model cannot judge: identical answers, an empty answer, two empty answers.

A row's kind comes from its two responses alone (`row_kind`; the prompt plays no part). A side's text is its
turns joined by "\\n", a JSON-null turn read as "" (so the whole conversation counts, not only the last turn):

- ``both_empty``: both texts are empty after stripping whitespace (every turn None, "" or blank);
- ``a_empty`` / ``b_empty``: that side's text is empty after stripping, the other's is not;
- ``identical``: the two texts are equal character for character (and not empty);
- ``near_identical`` (optional): the texts differ, but are equal once every run of whitespace is one space,
  the ends are stripped and letters are case-folded;
- ``""`` (NO_KIND): anything else. The first kind that matches, in this order, is the row's kind.

For each kind the class shares of its OOF rows are smoothed toward the model's mean prediction on the same rows,
q = w * shares + (1 - w) * model_mean, and q replaces the model's prediction on every row of that kind. The
weight w in [0, 1] is fitted on OOF too: leave one fold out among the fitting rows, shares and mean from the
other folds, w minimising the pooled log loss of the held-out rows (the log loss of a mixture is convex in w).
Nothing is hard-coded: shares, mean and weight all come from the data (the shares count half a row more per
class, SHARE_PRIOR, so no class of a kind ever gets probability 0).

Honesty, as in `blend`: the OOF "after" of fold k's rows uses the rule fitted on the other folds' rows only; the
final rule (applied to test rows) is fitted on all OOF rows. A kind is switched on only where that nested OOF
log loss on its rows is below the raw model's. (Choosing on/off per kind by the same nested numbers leaves a
small optimism in the overall "after"; a kind's rule itself never saw the rows it is scored on.)

Too few rows: a kind is fitted only from at least `min_rows` rows (default 30) spread over at least 2 folds
(the weight needs a fold to hold out). Otherwise it is left alone: the model's predictions stand. In the nested
OOF the rule counts the rows outside the held-out fold, so a small kind may be left alone in some folds.

`apply(rules, kinds, probs)` needs numpy only; `rules` is the JSON dict logged as ``postprocess.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pref_core.data.labels import LABEL_COLUMNS, NUM_CLASSES
from pref_core.errors import UserError
from pref_core.evaluate.metrics import row_log_losses

ROW_KINDS: tuple[str, ...] = ("both_empty", "a_empty", "b_empty", "identical", "near_identical")
NO_KIND = ""
DEFAULT_MIN_ROWS = 30  # a share estimated from 30 rows has a standard error of at most 0.09
RULES_FORMAT = 1
RULES_FILE = "postprocess.json"
ROW_KIND_COLUMN = "row_kind"  # the kind of each row of an OOF table (oof_predictions.parquet)
_EPS = 1e-15


class PostprocessRulesError(UserError, ValueError):
    """Post-processing rules or inputs that cannot be used: one line says what and how to fix it."""


# -- row kinds ----------------------------------------------------------------------------------------------


def side_text(turns: Sequence[str | None] | None) -> str:
    """A response's turns joined by "\\n", None read as "" (a missing cell as no turns)."""
    # `turns` may be a list, a numpy array (a list column read from parquet) or None.
    return "\n".join("" if t is None else t for t in ([] if turns is None else turns))


def _squeezed(text: str) -> str:
    return " ".join(text.split()).casefold()


def row_kind(response_a, response_b, near_identical: bool = True) -> str:
    """The kind of one row (see the module docstring), from its two lists of turns."""
    a, b = side_text(response_a), side_text(response_b)
    a_empty, b_empty = not a.strip(), not b.strip()
    if a_empty and b_empty:
        return "both_empty"
    if a_empty:
        return "a_empty"
    if b_empty:
        return "b_empty"
    if a == b:
        return "identical"
    if near_identical and _squeezed(a) == _squeezed(b):
        return "near_identical"
    return NO_KIND


def row_kinds(responses_a: Sequence, responses_b: Sequence, near_identical: bool = True) -> np.ndarray:
    """(n,) kinds (str, NO_KIND for ordinary rows) of rows given as two columns of turn lists, e.g. the
    response_a and response_b columns of an ingested frame (data.read_arena_csv parses the JSON)."""
    if len(responses_a) != len(responses_b):
        raise PostprocessRulesError(
            f"row_kinds: {len(responses_a)} response_a cells but {len(responses_b)} "
            "response_b cells; fix: pass the two columns of one frame"
        )
    return np.asarray([row_kind(a, b, near_identical) for a, b in zip(responses_a, responses_b)], dtype=object)


def kinds_to_fit(near_identical: bool) -> tuple[str, ...]:
    """The kinds a rule is learned for (postprocess.near_identical adds the last one). Kinds are always computed
    with near_identical on: it is the last kind checked, so leaving its rule out leaves those rows alone."""
    return ROW_KINDS if near_identical else tuple(k for k in ROW_KINDS if k != "near_identical")


# -- fitting ------------------------------------------------------------------------------------------------


# Pseudo-rows added to every class when counting a kind's class shares (the Jeffreys / Krichevsky-Trofimov estimate):
# a class that a kind's rows never showed keeps a small share instead of 0, since a probability of exactly 0 in a
# submission costs the clip's -log(1e-15) = 34.5 on any test row of that class.
SHARE_PRIOR = 0.5


def _shares(labels: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels, minlength=NUM_CLASSES) + SHARE_PRIOR
    return counts / counts.sum()


def fit_weight(label_share: np.ndarray, label_mean: np.ndarray) -> float:
    """The w in [0, 1] minimising mean -log(w * label_share + (1 - w) * label_mean): each held-out row's
    probability of its label under the shares and under the model mean (both fitted without it)."""
    from scipy.optimize import minimize_scalar

    def loss(w: float) -> float:
        return float(-np.mean(np.log(np.clip(w * label_share + (1 - w) * label_mean, _EPS, None))))

    result = minimize_scalar(loss, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-7})
    # The bounded search never lands exactly on 0 or 1: take an end when it is at least as good.
    return float(min((0.0, float(result.x), 1.0), key=lambda w: (loss(w), abs(w - result.x))))


def fit_kind_rule(labels, probs, folds) -> dict:
    """The rule of one kind fitted on these rows (labels (n,), the model's probs (n, 3), folds (n,)):
    {"shares", "model_mean", "weight", "probs"} with probs = weight * shares + (1 - weight) * model_mean.
    The weight comes from leave-one-fold-out over `folds`, which must hold 2+ folds."""
    labels, probs, folds = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64), np.asarray(folds)
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise PostprocessRulesError(
            f"fit_kind_rule: the weight is fitted by leaving a fold out, got rows of "
            f"folds {fold_ids.tolist()} only; fix: fit on rows of 2+ folds"
        )
    label_share, label_mean = np.empty(len(labels)), np.empty(len(labels))
    for fold in fold_ids:
        held = folds == fold
        label_share[held] = _shares(labels[~held])[labels[held]]
        label_mean[held] = probs[~held].mean(axis=0)[labels[held]]
    weight = fit_weight(label_share, label_mean)
    shares, model_mean = _shares(labels), probs.mean(axis=0)
    rule_probs = weight * shares + (1 - weight) * model_mean
    return {
        "shares": shares.tolist(),
        "model_mean": model_mean.tolist(),
        "weight": weight,
        "probs": (rule_probs / rule_probs.sum()).tolist(),
    }


def _fittable(folds: np.ndarray, min_rows: int) -> bool:
    return len(folds) >= min_rows and len(np.unique(folds)) >= 2


@dataclass(frozen=True)
class KindRule:
    """What was learned for one kind: `probs` replaces the model's prediction on its rows when `enabled`.

    n_rows / class_counts: its OOF rows; shares, model_mean, weight, probs: the final rule (None when the kind
    has too few rows); oof_log_loss_before / _after: the raw model and the nested rule on its rows (after ==
    before where left alone); fold_rules[k]: the rule that scored fold k's rows (None: left alone)."""

    kind: str
    n_rows: int
    class_counts: list
    enabled: bool
    reason: str
    shares: list | None = None
    model_mean: list | None = None
    weight: float | None = None
    probs: list | None = None
    oof_log_loss_before: float | None = None
    oof_log_loss_after: float | None = None
    fold_rules: dict = field(default_factory=dict)

    def in_words(self) -> str:
        if self.n_rows == 0:
            return f"{self.kind}: no rows"
        if self.probs is None:
            return f"{self.kind} ({self.n_rows} rows): {self.reason}"
        change = f"OOF {self.oof_log_loss_before:.4f} -> {self.oof_log_loss_after:.4f}"
        if not self.enabled:
            return f"{self.kind} ({self.n_rows} rows): kept the model's ({change}, no better)"
        shown = ", ".join(f"{p:.2f}" for p in self.probs)
        return f"{self.kind} ({self.n_rows} rows) -> [{shown}] ({change})"


@dataclass(frozen=True)
class PostprocessRules:
    """Per-kind rules and the OOF log loss of all rows before and after (nested, enabled kinds only)."""

    kinds: dict
    min_rows: int
    n_rows: int
    oof_log_loss_before: float
    oof_log_loss_after: float
    oof_probs: np.ndarray | None = None  # (n, 3) the nested OOF after; not logged in the JSON

    def to_dict(self) -> dict:
        """postprocess.json: plain JSON (apply reads it back as it is)."""
        kinds = {}
        for name, rule in self.kinds.items():
            entry = {k: v for k, v in rule.__dict__.items() if k not in ("kind", "fold_rules")}
            entry["fold_rules"] = {str(k): v for k, v in rule.fold_rules.items()}
            kinds[name] = entry
        return {
            "format": RULES_FORMAT,
            "label_columns": list(LABEL_COLUMNS),
            "min_rows": self.min_rows,
            "n_rows": self.n_rows,
            "oof_log_loss_before": self.oof_log_loss_before,
            "oof_log_loss_after": self.oof_log_loss_after,
            "kinds": kinds,
        }

    def summary(self) -> str:
        """One line of what post-processing changed, e.g. 'post-processing: identical (412 rows) -> [0.06, 0.06,
        0.88] (OOF 1.0712 -> 0.4010); a_empty (12 rows): too few ...; OOF 0.9950 -> 0.9713 over 5000 rows'."""
        enabled = [r for r in self.kinds.values() if r.enabled]
        parts = [r.in_words() for r in self.kinds.values() if r.n_rows]
        head = "post-processing" if enabled else "post-processing: no change"
        tail = f"OOF {self.oof_log_loss_before:.4f} -> {self.oof_log_loss_after:.4f} over {self.n_rows} rows"
        return f"{head}: " + "; ".join([*parts, tail]) if parts else f"{head}: no row of a known kind; {tail}"


def fit_postprocess(
    labels, folds, kinds, probs, *, min_rows: int = DEFAULT_MIN_ROWS, fit_kinds: Sequence[str] = ROW_KINDS
) -> PostprocessRules:
    """Fit the rule of each kind in `fit_kinds` on OOF rows, nested over the folds, and switch on the kinds
    whose nested OOF log loss beats the raw model's.

    labels (n,) class indices; folds (n,) the fold of each OOF row; kinds (n,) from row_kinds; probs (n, 3) the
    model's OOF probabilities (after calibration or a blend: whatever the submission would write).
    """
    labels = np.asarray(labels, dtype=np.int64)
    folds, kinds = np.asarray(folds), np.asarray(kinds, dtype=object)
    probs = np.asarray(probs, dtype=np.float64)
    if not (len(labels) == len(folds) == len(kinds) == len(probs)) or probs.shape[1:] != (NUM_CLASSES,):
        raise PostprocessRulesError(
            f"fit_postprocess: labels {labels.shape}, folds {folds.shape}, kinds "
            f"{kinds.shape} and probs {probs.shape} must describe the same n rows"
        )
    unknown = sorted(set(fit_kinds) - set(ROW_KINDS))
    if unknown:
        raise PostprocessRulesError(f"unknown row kind(s) {unknown}; fix: choose from {list(ROW_KINDS)}")
    if min_rows < 2:
        raise PostprocessRulesError(f"min_rows={min_rows}: a rule needs at least 2 rows; fix: use 2 or more")
    before = row_log_losses(labels, probs)  # (n,)
    after_probs = probs.copy()
    rules = {}
    for kind in fit_kinds:
        rule, kind_probs = _fit_one_kind(kind, labels, folds, kinds == kind, probs, before, min_rows)
        rules[kind] = rule
        if rule.enabled:
            after_probs[kinds == kind] = kind_probs
    return PostprocessRules(
        rules,
        min_rows,
        len(labels),
        float(before.mean()),
        float(row_log_losses(labels, after_probs).mean()),
        after_probs,
    )


def _fit_one_kind(kind, labels, folds, mask, probs, before, min_rows) -> tuple[KindRule, np.ndarray]:
    """The KindRule of the rows in `mask`, and their nested OOF probabilities under it."""
    y, p, f = labels[mask], probs[mask], folds[mask]
    counts = np.bincount(y, minlength=NUM_CLASSES).tolist()
    if not _fittable(f, min_rows):
        reason = f"too few rows to learn from (a kind needs {min_rows}+ rows in 2+ folds), left alone"
        return KindRule(kind, int(mask.sum()), counts, False, reason), p
    nested = p.copy()
    fold_rules = {}
    for fold in np.unique(folds):
        held, fitting = f == fold, f != fold
        if not held.any():
            continue
        rule = fit_kind_rule(y[fitting], p[fitting], f[fitting]) if _fittable(f[fitting], min_rows) else None
        fold_rules[int(fold)] = rule
        if rule is not None:
            nested[held] = rule["probs"]
    final = fit_kind_rule(y, p, f)
    loss_before = float(before[mask].mean())
    loss_after = float(row_log_losses(y, nested).mean())
    enabled = loss_after < loss_before
    reason = "nested OOF improves" if enabled else "nested OOF no better than the model's"
    return KindRule(
        kind,
        int(mask.sum()),
        counts,
        enabled,
        reason,
        final["shares"],
        final["model_mean"],
        final["weight"],
        final["probs"],
        loss_before,
        loss_after,
        fold_rules,
    ), nested


def fit_oof_table(oof, temperature: float = 1.0, *, min_rows: int = DEFAULT_MIN_ROWS, near_identical: bool = True):
    """The rules of an OOF table (columns fold, label, LABEL_COLUMNS and ROW_KIND_COLUMN), fitted on its
    probabilities after the calibration `temperature`: what the submission writes before post-processing."""
    from pref_core.evaluate.calibration import apply_temperature

    probs = apply_temperature(oof[list(LABEL_COLUMNS)].to_numpy(dtype=np.float64), temperature)
    return fit_postprocess(
        oof["label"].to_numpy(),
        oof["fold"].to_numpy(),
        oof[ROW_KIND_COLUMN].to_numpy(),
        probs,
        min_rows=min_rows,
        fit_kinds=kinds_to_fit(near_identical),
    )


def postprocess_metrics(rules: PostprocessRules) -> dict[str, float]:
    """The rules' scores as MLflow metrics: the OOF log loss before and after (nested)."""
    return {
        "oof_log_loss_postprocess_before": rules.oof_log_loss_before,
        "oof_log_loss_postprocessed": rules.oof_log_loss_after,
    }


def postprocess_params(rules: PostprocessRules) -> dict[str, int]:
    """The rules' bookkeeping as MLflow params (scores first: no row count among the metrics): per kind, its rows
    and whether it is on."""
    out: dict[str, int] = {}
    for kind, rule in rules.kinds.items():
        out[f"postprocess_rows_{kind}"] = rule.n_rows
        out[f"postprocess_on_{kind}"] = int(rule.enabled)
    return out


# -- apply: numpy only, shared by the flow, the registered pyfunc and the Kaggle bundle ------------------------


def apply(rules: dict, kinds, probs) -> np.ndarray:
    """A copy of the (n, 3) `probs` with every row of an enabled kind set to that kind's rule probabilities.
    `rules`: the postprocess.json dict (PostprocessRules.to_dict); kinds: (n,) from row_kinds on the same rows."""
    if isinstance(rules, PostprocessRules):
        rules = rules.to_dict()
    out = np.array(probs, dtype=np.float64)
    kinds = np.asarray(kinds, dtype=object)
    if out.ndim != 2 or out.shape[1] != NUM_CLASSES or len(kinds) != len(out):
        raise PostprocessRulesError(
            f"postprocess apply: probs {out.shape} must be (n, {NUM_CLASSES}) with one kind "
            f"per row, got {len(kinds)} kinds"
        )
    if rules.get("format") != RULES_FORMAT or "kinds" not in rules:
        raise PostprocessRulesError(
            f"{RULES_FILE}: format {rules.get('format')!r} is not {RULES_FORMAT} or it has "
            "no kinds; fix: use the file a training run logged"
        )
    for kind, rule in rules["kinds"].items():
        if not rule.get("enabled"):
            continue
        target = np.asarray(rule.get("probs"), dtype=np.float64)
        if (
            kind not in ROW_KINDS
            or target.shape != (NUM_CLASSES,)
            or (target < 0).any()
            or abs(target.sum() - 1.0) > 1e-6
        ):
            raise PostprocessRulesError(
                f"{RULES_FILE}: kind {kind!r} has probs {rule.get('probs')!r}; fix: a known "
                f"kind ({', '.join(ROW_KINDS)}) with {NUM_CLASSES} probabilities summing to 1"
            )
        out[kinds == kind] = target
    return out


def apply_to_rows(rules: dict, responses_a, responses_b, probs) -> np.ndarray:
    """`apply` with the kinds computed from the rows' two response columns (turn lists): the one call the flow's
    submission, the registered pyfunc and the Kaggle bundle make."""
    return apply(rules, row_kinds(responses_a, responses_b), probs)


def read_rules(folder) -> dict | None:
    """The RULES_FILE of a model folder (a registered bundle, a Kaggle bundle), or None when it has none."""
    import json
    from pathlib import Path

    path = Path(folder) / RULES_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PostprocessRulesError(f"{path}: not valid JSON ({err.msg}); fix: export the model again") from None
