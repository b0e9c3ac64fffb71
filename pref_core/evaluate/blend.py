"""Blends of K models' out-of-fold (OOF) probabilities on the same rows and folds, scored honestly.

Three methods, each a function of the members' (n, 3) probabilities:

- ``mean``: equal weights, p = (1/K) sum_j p_j. Nothing is fitted.
- ``weights``: p = sum_j w_j p_j with w_j >= 0, sum_j w_j = 1, the w minimising log loss (scipy SLSQP; log
  loss of a mixture is convex in w, so the optimum is global).
- ``stack``: multinomial logistic regression on the members' log-probabilities, x = [log p_1 | ... | log p_K]
  (n, 3K), p = softmax(x W^T + b) (scikit-learn); its L2 strength C is chosen by inner CV over the training
  folds (leave one training fold out: the folds are prompt-grouped, so the inner CV is as honest as the outer).

Honest OOF (`fit_blend`): for each fold k the blend is fitted on the other folds' OOF rows only and applied to
fold k's rows; a blend fitted on the rows it is scored on would report a loss no test set will see. The final
blend (what a registered blend applies to test rows) is fitted on all OOF rows.

`apply(params, member_probs)` is the one function that turns fitted parameters into probabilities: the flow's
submission, the registered pyfunc and the Kaggle bundle all call it. It needs numpy only (the stacker is stored
as its coefficients and intercepts, softmax computed here), and `params` is a JSON-serialisable dict.

The member probabilities must mean the same thing when fitted and applied: pass each member's OOF rows as its
`predict` would give them for test rows (its calibration temperature applied), in the order of params["members"].
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from pref_core.data.labels import LABEL_COLUMNS, NUM_CLASSES
from pref_core.errors import UserError
from pref_core.evaluate.metrics import row_log_losses

if TYPE_CHECKING:  # the bundle copies this module for `apply`; compare is needed only to fit
    from pref_core.evaluate.compare import PairedDifference

BlendMethod = Literal["mean", "weights", "stack"]
BLEND_METHODS: tuple[str, ...] = get_args(BlendMethod)
PARAMS_FORMAT = 1
DEFAULT_C_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
_EPS = 1e-15  # the clipping of metrics.row_log_losses: log(0) never reaches the stacker


class BlendMembersError(UserError, ValueError):
    """The members cannot be blended (other data, other folds, other rows, bad parameters): one line says the
    first difference and the fix."""


@dataclass(frozen=True)
class BlendMember:
    """One member's OOF predictions: `ids` (n,) row ids, `folds` (n,) the fold that predicted each row,
    `data_hash` the hash of the training data it was split from, `probs` (n, 3) in LABEL_COLUMNS order."""

    name: str
    ids: Sequence[str]
    folds: Sequence[int]
    data_hash: str
    probs: np.ndarray


@dataclass(frozen=True)
class AlignedMembers:
    """The members' OOF rows in one order (the first member's): ids (n,), folds (n,), probs (K, n, 3)."""

    names: tuple[str, ...]
    ids: np.ndarray
    folds: np.ndarray
    probs: np.ndarray


def _member_label(j: int, member: BlendMember) -> str:
    return f"blend member {j} ({member.name})"


def check_members(members: Sequence[BlendMember]) -> None:
    """Raise BlendMembersError unless there are 2+ uniquely named members that split the same data (hash) the
    same way (every row id predicted once by each, in the same fold). The message names the first difference,
    comparing each member in turn with member 0, and the fix."""
    if len(members) < 2:
        raise BlendMembersError(f"a blend needs at least 2 members, got {len(members)}; fix: name two or more models")
    names = [m.name for m in members]
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if repeated is not None:
        raise BlendMembersError(f"blend member {repeated!r} is named twice; fix: name each model once")
    for j, member in enumerate(members):
        if len(member.ids) != len(member.folds):
            raise BlendMembersError(
                f"{_member_label(j, member)} has {len(member.ids)} ids but {len(member.folds)} "
                "fold indices; fix: read ids and folds from the same OOF table"
            )
        ids = [str(i) for i in member.ids]
        if len(set(ids)) < len(ids):
            repeated = next(i for i, count in Counter(ids).items() if count > 1)
            raise BlendMembersError(
                f"{_member_label(j, member)} predicts row id {repeated} more than once; fix: "
                "give each member's OOF table with one row per id (its oof.parquet)"
            )
    first = members[0]
    first_folds = dict(zip(map(str, first.ids), (int(f) for f in first.folds)))
    for j, member in enumerate(members[1:], start=1):
        label, first_label = _member_label(j, member), _member_label(0, first)
        if member.data_hash != first.data_hash:
            raise BlendMembersError(
                f"{label} was trained on data hash {member.data_hash[:12]}, {first_label} on "
                f"{first.data_hash[:12]}; fix: blend only models trained on the same data.train_csv"
            )
        folds = dict(zip(map(str, member.ids), (int(f) for f in member.folds)))
        missing = [i for i in first_folds if i not in folds]
        if missing:
            raise BlendMembersError(
                f"{label} has no OOF prediction for row id {missing[0]} ({len(missing)} rows missing) that "
                f"{first_label} has; fix: train every fold of both (cv.folds: null) on the same data"
            )
        extra = [i for i in folds if i not in first_folds]
        if extra:
            raise BlendMembersError(
                f"{label} has an OOF prediction for row id {extra[0]} ({len(extra)} rows) that {first_label} "
                "lacks; fix: train every fold of both (cv.folds: null) on the same data"
            )
        moved = [i for i, f in first_folds.items() if folds[i] != f]
        if moved:
            raise BlendMembersError(
                f"{label} puts row id {moved[0]} in fold {folds[moved[0]]}, {first_label} in fold "
                f"{first_folds[moved[0]]} ({len(moved)} rows differ); fix: train the members with the same "
                "cv.n_folds and cv.seed"
            )


def align_members(members: Sequence[BlendMember]) -> AlignedMembers:
    """check_members, then every member's probabilities in the first member's row order."""
    check_members(members)
    ids = np.asarray([str(i) for i in members[0].ids], dtype=object)
    folds = np.asarray(members[0].folds, dtype=np.int64)
    stacked = []
    for j, member in enumerate(members):
        probs = _check_probs(member.probs, len(ids), _member_label(j, member))
        position = {row_id: pos for pos, row_id in enumerate(map(str, member.ids))}
        stacked.append(probs[[position[row_id] for row_id in ids]])
    return AlignedMembers(tuple(m.name for m in members), ids, folds, np.stack(stacked))


def _check_probs(probs, n: int, what: str) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.shape != (n, NUM_CLASSES):
        raise BlendMembersError(
            f"{what}: probabilities of shape {arr.shape}, expected ({n}, {NUM_CLASSES}); "
            "fix: pass one row of 3 probabilities per row id"
        )
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise BlendMembersError(f"{what}: probabilities hold NaN, inf or negative values; fix: pass softmax outputs")
    return arr


# -- apply: numpy only, shared by the flow, the registered pyfunc and the Kaggle bundle ------------------------


def stack_features(member_probs: np.ndarray) -> np.ndarray:
    """(K, n, 3) probabilities -> (n, 3K) features [log p_1 | ... | log p_K], clipped at 1e-15 like the log loss."""
    logp = np.log(np.clip(member_probs, _EPS, 1.0))  # (K, n, 3)
    return np.concatenate(list(logp), axis=1)  # (n, 3K)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)  # (n, 3)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply(params: dict, member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """(n, 3) blended probabilities (rows summing to 1) of the members' (n, 3) probabilities, given in the order
    of params["members"]. `params`: a dict from fit_blend (BlendResult.final_params), e.g. read from JSON."""
    method = params.get("method")
    if method not in BLEND_METHODS:
        raise BlendMembersError(
            f"blend params: method {method!r} is not one of {list(BLEND_METHODS)}; fix: use "
            "the params a blend run logged (blend.json)"
        )
    names = list(params.get("members", []))
    if len(member_probs) != len(names):
        raise BlendMembersError(
            f"blend params name {len(names)} members {names}, got {len(member_probs)} "
            "probability matrices; fix: predict with every member, in that order"
        )
    n = len(member_probs[0]) if len(member_probs) else 0
    probs = np.stack([_check_probs(p, n, f"blend member {j} ({names[j]})") for j, p in enumerate(member_probs)])
    if method == "stack":
        coef = np.asarray(params["coef"], dtype=np.float64)  # (3, 3K)
        intercept = np.asarray(params["intercept"], dtype=np.float64)  # (3,)
        if coef.shape != (NUM_CLASSES, NUM_CLASSES * len(names)) or intercept.shape != (NUM_CLASSES,):
            raise BlendMembersError(
                f"blend params: stack coef {coef.shape} / intercept {intercept.shape} do not fit "
                f"{len(names)} members; fix: use the params a blend run logged (blend.json)"
            )
        return _softmax(stack_features(probs) @ coef.T + intercept)
    weights = np.asarray(params["weights"], dtype=np.float64)  # (K,)
    if weights.shape != (len(names),) or (weights < 0).any() or abs(weights.sum() - 1.0) > 1e-6:
        raise BlendMembersError(
            f"blend params: weights {weights.tolist()} must be {len(names)} non-negative numbers "
            "summing to 1; fix: use the params a blend run logged (blend.json)"
        )
    mixed = np.tensordot(weights, probs, axes=1)  # (n, 3)
    return mixed / mixed.sum(axis=1, keepdims=True)


# -- fitting: scipy / scikit-learn, imported only here -------------------------------------------------------


def _mixture_loss(weights: np.ndarray, correct: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean -log(sum_j w_j p_j[y]) and its gradient in w; correct: (K, n) each member's probability of the label."""
    mixed = np.clip(weights @ correct, _EPS, None)  # (n,)
    return float(-np.mean(np.log(mixed))), -(correct / mixed).mean(axis=1)


def fit_weights(labels: np.ndarray, member_probs: np.ndarray) -> np.ndarray:
    """(K,) non-negative weights summing to 1 that minimise the log loss of sum_j w_j p_j on these rows."""
    from scipy.optimize import minimize

    k = member_probs.shape[0]
    correct = member_probs[:, np.arange(len(labels)), labels]  # (K, n)
    result = minimize(
        _mixture_loss,
        np.full(k, 1.0 / k),
        args=(correct,),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    if not result.success:
        raise RuntimeError(f"blend weights did not converge ({result.message}); this is a bug, please report it")
    weights = np.clip(result.x, 0.0, None)
    return weights / weights.sum()


def _logistic(c: float, warm_start: bool = False):
    from sklearn.linear_model import LogisticRegression

    # scikit-learn's default tol (1e-4): on 57k rows 1e-6 took twice as long for a held-out log loss 1e-5 apart.
    return LogisticRegression(C=c, max_iter=2000, warm_start=warm_start)


def fit_stack(
    labels: np.ndarray, member_probs: np.ndarray, folds: np.ndarray, c_grid: Sequence[float] = DEFAULT_C_GRID
) -> dict:
    """Multinomial logistic regression on stack_features: C from `c_grid` by leave-one-fold-out CV over `folds`
    (the fold of each of these rows; pooled log loss of the held-out rows, ties to the smaller C), then refit on
    all these rows. Returns {"C", "coef" (3, 3K), "intercept" (3,), "inner_log_loss" {C: loss}}."""
    from threadpoolctl import threadpool_limits

    features = stack_features(member_probs)  # (n, 3K)
    inner_folds = np.unique(folds)
    if len(inner_folds) < 2:
        raise BlendMembersError(
            f"stack: its inner CV needs rows from 2+ folds, got folds {inner_folds.tolist()}; "
            "fix: train the members with cv.n_folds >= 3, or use --method weights"
        )
    absent = [LABEL_COLUMNS[c] for c in range(NUM_CLASSES) if not (labels == c).any()]
    if absent:  # a multinomial model cannot learn odds for a class it never saw
        raise BlendMembersError(
            f"stack: the rows it is fitted on hold no {', '.join(absent)} row; fix: use --method weights"
        )
    grid = sorted(float(c) for c in c_grid)
    losses = np.empty((len(grid), len(labels)))  # (C, n) held-out row losses
    # One BLAS thread: the (n, 3K) matrices are too narrow for threads to pay (measured 5-7x slower with them on
    # 50k rows of a busy 2-core machine).
    with threadpool_limits(1):
        for fold in inner_folds:
            held = folds == fold
            model = _logistic(grid[0], warm_start=True)  # each C starts from the previous C's solution
            for i, c in enumerate(grid):
                model.set_params(C=c).fit(features[~held], labels[~held])
                losses[i, held] = row_log_losses(labels[held], model.predict_proba(features[held]))
        inner_loss = {c: float(row.mean()) for c, row in zip(grid, losses)}
        best = min(grid, key=lambda c: (inner_loss[c], c))
        model = _logistic(best).fit(features, labels)
    return {
        "C": best,
        "coef": model.coef_.tolist(),
        "intercept": model.intercept_.tolist(),
        "inner_log_loss": {repr(c): loss for c, loss in inner_loss.items()},
    }


def fit_params(
    method: str,
    names: Sequence[str],
    labels: np.ndarray,
    member_probs: np.ndarray,
    folds: np.ndarray,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
) -> dict:
    """The JSON-serialisable params of `method` fitted on these rows (labels (n,), member_probs (K, n, 3),
    folds (n,) for the stacker's inner CV)."""
    base = {"format": PARAMS_FORMAT, "method": method, "members": list(names)}
    k = member_probs.shape[0]
    if method == "mean":
        return {**base, "weights": [1.0 / k] * k}
    if method == "weights":
        return {**base, "weights": fit_weights(labels, member_probs).tolist()}
    if method == "stack":
        return {**base, **fit_stack(labels, member_probs, folds, c_grid)}
    raise BlendMembersError(
        f"blend method {method!r} is not one of {list(BLEND_METHODS)}; fix: --method " + "|".join(BLEND_METHODS)
    )


# -- the honest report ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlendReport:
    """OOF log loss of each member, of the plain mean and of the blend (honest: nested over the folds), and
    the paired bootstrap of blend minus best member on the same rows (negative: the blend is better)."""

    method: str
    n_rows: int
    member_log_loss: dict
    best_member: str
    mean_log_loss: float
    blend_log_loss: float
    difference: PairedDifference  # loss_a = best member, loss_b = blend

    def lines(self) -> list[str]:
        """The console report, one fact a line."""
        out = [f"member {name}: OOF log loss {loss:.4f}" for name, loss in self.member_log_loss.items()]
        out.append(f"best member: {self.best_member} ({self.member_log_loss[self.best_member]:.4f})")
        out.append(f"plain mean: OOF log loss {self.mean_log_loss:.4f}")
        out.append(
            f"blend ({self.method}, fitted on the other folds for each fold): OOF log loss "
            f"{self.blend_log_loss:.4f} over {self.n_rows} rows"
        )
        out.append(self.difference.in_words("best member", "blend"))
        return out

    def to_dict(self) -> dict:
        d = self.difference
        return {
            "method": self.method,
            "n_rows": self.n_rows,
            "member_log_loss": dict(self.member_log_loss),
            "best_member": self.best_member,
            "mean_log_loss": self.mean_log_loss,
            "blend_log_loss": self.blend_log_loss,
            "blend_minus_best": {
                "mean": d.mean,
                "low": d.low,
                "high": d.high,
                "level": d.level,
                "share_blend_better": d.share_b_better,
            },
        }


@dataclass(frozen=True)
class BlendResult:
    """fold_params[k]: fitted on every fold but k and applied to fold k's rows, giving oof_probs (n, 3) in the
    aligned row order; final_params: fitted on all OOF rows, what a registered blend applies to test rows."""

    method: str
    names: tuple[str, ...]
    fold_params: dict
    final_params: dict
    oof_probs: np.ndarray
    report: BlendReport

    def to_dict(self) -> dict:
        """blend.json: everything but the (n, 3) OOF probabilities (logged as a table of their own)."""
        return {
            "method": self.method,
            "members": list(self.names),
            "final_params": self.final_params,
            "fold_params": {str(k): p for k, p in self.fold_params.items()},
            "report": self.report.to_dict(),
        }


def fit_blend(
    labels,
    folds,
    member_probs,
    method: str,
    names: Sequence[str] | None = None,
    *,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    n_boot: int = 2000,
    seed: int = 0,
) -> BlendResult:
    """Fit `method` fold by fold (honest OOF) and on all rows (final), and report it against the members.

    labels: (n,) class indices; folds: (n,) the fold of each OOF row; member_probs: (K, n, 3) in the same row
    order (AlignedMembers.probs); names: K member names (default member_0..). n_boot/seed: the paired bootstrap.
    """
    from pref_core.evaluate.compare import paired_difference

    labels = np.asarray(labels, dtype=np.int64)
    folds = np.asarray(folds, dtype=np.int64)
    probs = np.asarray(member_probs, dtype=np.float64)
    k = probs.shape[0]
    names = tuple(names) if names is not None else tuple(f"member_{j}" for j in range(k))
    if (
        probs.ndim != 3
        or probs.shape[1:] != (len(labels), NUM_CLASSES)
        or len(names) != k
        or folds.shape != labels.shape
    ):
        raise BlendMembersError(
            f"fit_blend: member_probs {probs.shape} must be (K, n, 3) with n = {len(labels)} "
            f"labels and folds, and K = {len(names)} names"
        )
    if method not in BLEND_METHODS:
        raise BlendMembersError(
            f"blend method {method!r} is not one of {list(BLEND_METHODS)}; fix: --method " + "|".join(BLEND_METHODS)
        )
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise BlendMembersError(
            f"an honest blend needs OOF rows from 2+ folds, got {fold_ids.tolist()}; fix: train "
            "every fold of the members (cv.folds: null)"
        )
    oof = np.empty((len(labels), NUM_CLASSES))
    fold_params = {}
    for fold in fold_ids:
        held = folds == fold
        params = fit_params(method, names, labels[~held], probs[:, ~held], folds[~held], c_grid)
        fold_params[int(fold)] = params
        oof[held] = apply(params, list(probs[:, held]))
    final = fit_params(method, names, labels, probs, folds, c_grid)
    member_losses = [row_log_losses(labels, p) for p in probs]  # K x (n,)
    member_log_loss = {name: float(loss.mean()) for name, loss in zip(names, member_losses)}
    best = min(range(k), key=lambda j: member_log_loss[names[j]])
    blend_losses = row_log_losses(labels, oof)
    report = BlendReport(
        method=method,
        n_rows=len(labels),
        member_log_loss=member_log_loss,
        best_member=names[best],
        mean_log_loss=float(row_log_losses(labels, probs.mean(axis=0)).mean()),
        blend_log_loss=float(blend_losses.mean()),
        difference=paired_difference(member_losses[best], blend_losses, n_boot=n_boot, seed=seed),
    )
    return BlendResult(method, names, fold_params, final, oof, report)
