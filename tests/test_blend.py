"""Blends of members' OOF probabilities (pref_core.evaluate.blend): the member check, apply by hand, fitted
weights against a hand-solved optimum, the stacker against scikit-learn, and the honesty of the nested OOF."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pref_core.evaluate.blend import (
    BlendMember,
    BlendMembersError,
    align_members,
    apply,
    fit_blend,
    fit_stack,
    fit_weights,
)
from pref_core.evaluate.metrics import compute_log_loss


def member(name, ids, folds, data_hash="h" * 64, probs=None):
    probs = np.full((len(ids), 3), 1 / 3) if probs is None else probs
    return BlendMember(name, list(ids), list(folds), data_hash, np.asarray(probs, dtype=float))


# -- the member check ---------------------------------------------------------------------------------------


def test_members_on_other_data_are_refused_naming_both_hashes():
    a = member("runs:/a", ["1", "2"], [0, 1], data_hash="a" * 64)
    b = member("runs:/b", ["1", "2"], [0, 1], data_hash="b" * 64)
    with pytest.raises(
        BlendMembersError,
        match=r"member 1 \(runs:/b\) was trained on data hash bbbbbbbbbbbb, "
        r"blend member 0 \(runs:/a\) on aaaaaaaaaaaa; fix: ",
    ):
        align_members([a, b])


def test_the_first_row_in_another_fold_is_named_with_both_folds():
    a = member("a", ["1", "2", "3"], [0, 1, 1])
    b = member("b", ["3", "2", "1"], [0, 0, 0])  # rows 2 and 3 differ; row 2 comes first in member 0's order
    with pytest.raises(BlendMembersError) as err:
        align_members([a, b])
    message = str(err.value)
    assert "puts row id 2 in fold 0, blend member 0 (a) in fold 1 (2 rows differ)" in message
    assert "cv.n_folds and cv.seed" in message and "\n" not in message


def test_missing_extra_and_repeated_rows_are_refused():
    a = member("a", ["1", "2"], [0, 1])
    with pytest.raises(BlendMembersError, match="has no OOF prediction for row id 2 .1 rows missing"):
        align_members([a, member("b", ["1"], [0])])
    with pytest.raises(BlendMembersError, match="has an OOF prediction for row id 9 "):
        align_members([a, member("b", ["1", "2", "9"], [0, 1, 1])])
    with pytest.raises(BlendMembersError, match="predicts row id 1 more than once"):
        align_members([a, member("b", ["1", "1"], [0, 0])])
    with pytest.raises(BlendMembersError, match="at least 2 members"):
        align_members([a])
    with pytest.raises(BlendMembersError, match="named twice"):
        align_members([a, a])


def test_align_puts_every_member_in_the_first_members_row_order():
    a = member("a", ["x", "y"], [0, 1], probs=[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    b = member("b", ["y", "x"], [1, 0], probs=[[0.2, 0.2, 0.6], [0.7, 0.2, 0.1]])
    aligned = align_members([a, b])
    assert aligned.ids.tolist() == ["x", "y"] and aligned.folds.tolist() == [0, 1]
    np.testing.assert_array_equal(aligned.probs[1], [[0.7, 0.2, 0.1], [0.2, 0.2, 0.6]])


# -- apply by hand -------------------------------------------------------------------------------------------


def test_apply_mean_and_weights_by_hand():
    p1, p2 = np.array([[0.6, 0.3, 0.1]]), np.array([[0.2, 0.2, 0.6]])
    mean = {"method": "mean", "members": ["a", "b"], "weights": [0.5, 0.5]}
    np.testing.assert_allclose(apply(mean, [p1, p2]), [[0.4, 0.25, 0.35]])
    weighted = {"method": "weights", "members": ["a", "b"], "weights": [0.25, 0.75]}
    np.testing.assert_allclose(apply(weighted, [p1, p2]), [[0.3, 0.225, 0.475]])


def test_apply_stack_is_a_softmax_of_log_probabilities():
    p1, p2 = np.array([[0.6, 0.3, 0.1]]), np.array([[0.2, 0.2, 0.6]])
    # Coefficient 1 on member a's own log-probabilities, 0 elsewhere: softmax(log p_a) = p_a.
    identity = {
        "method": "stack",
        "members": ["a", "b"],
        "coef": np.hstack([np.eye(3), np.zeros((3, 3))]).tolist(),
        "intercept": [0.0, 0.0, 0.0],
    }
    np.testing.assert_allclose(apply(identity, [p1, p2]), p1)
    # Coefficient 1/2 on both: softmax(0.5 log p_a + 0.5 log p_b) = sqrt(p_a p_b) renormalised.
    geometric = {**identity, "coef": np.hstack([np.eye(3) / 2, np.eye(3) / 2]).tolist()}
    root = np.sqrt(p1 * p2)
    np.testing.assert_allclose(apply(geometric, [p1, p2]), root / root.sum())
    # No coefficients: the intercepts alone are the log shares.
    prior = {**identity, "coef": np.zeros((3, 6)).tolist(), "intercept": np.log([0.5, 0.3, 0.2]).tolist()}
    np.testing.assert_allclose(apply(prior, [p1, p2]), [[0.5, 0.3, 0.2]])


def test_apply_refuses_params_that_do_not_fit_the_members():
    p = np.array([[0.6, 0.3, 0.1]])
    with pytest.raises(BlendMembersError, match="name 2 members"):
        apply({"method": "mean", "members": ["a", "b"], "weights": [0.5, 0.5]}, [p])
    with pytest.raises(BlendMembersError, match="summing to 1"):
        apply({"method": "weights", "members": ["a", "b"], "weights": [0.9, 0.9]}, [p, p])
    with pytest.raises(BlendMembersError, match="not one of"):
        apply({"method": "median", "members": ["a", "b"]}, [p, p])


# -- fitting ------------------------------------------------------------------------------------------------


def test_fit_weights_finds_the_hand_solved_optimum():
    """Labels all 0. Member a gives the label probability 1, 1, 0; member b 0.5 on every row. The mixture gives
    0.5 + 0.5w, 0.5 + 0.5w, 0.5(1 - w): maximise 2 log(1 + w) + log(1 - w), so 2/(1 + w) = 1/(1 - w), w = 1/3."""
    a = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = np.tile([0.5, 0.25, 0.25], (3, 1))
    np.testing.assert_allclose(fit_weights(np.zeros(3, dtype=int), np.stack([a, b])), [1 / 3, 2 / 3], atol=1e-6)


def test_a_member_better_on_every_row_takes_all_the_weight():
    labels = np.array([0, 1, 2])
    good = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    weights = fit_weights(labels, np.stack([np.full((3, 3), 1 / 3), good]))
    np.testing.assert_allclose(weights, [0.0, 1.0], atol=1e-8)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0)


def synthetic_members(n=600, n_folds=5, seed=0):
    """Two members that know a row's label with different noise, member b also overconfident (temperature 0.5)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    folds = rng.integers(0, n_folds, n)
    signal = np.eye(3)[labels]

    def noisy(strength, sharpen):
        logits = strength * signal + rng.normal(0.0, 1.0, (n, 3))
        p = np.exp(sharpen * logits)
        return p / p.sum(axis=1, keepdims=True)

    return labels, folds, np.stack([noisy(1.0, 1.0), noisy(1.2, 2.0)])


def test_the_stacker_is_scikit_learns_logistic_regression_with_the_inner_cv_choice():
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    labels, folds, probs = synthetic_members(n=300, n_folds=3)
    params = fit_stack(labels, probs, folds, c_grid=(0.01, 1.0))
    inner = params["inner_log_loss"]
    assert set(inner) == {"0.01", "1.0"} and params["C"] == min((v, float(c)) for c, v in inner.items())[1]
    features = np.hstack([np.log(probs[0]), np.log(probs[1])])
    with threadpool_limits(1):  # as fit_stack fits: many BLAS threads are slow on these narrow matrices
        expected = LogisticRegression(C=params["C"], max_iter=2000).fit(features, labels).predict_proba(features)
    blended = apply({"method": "stack", "members": ["a", "b"], **params}, list(probs))
    np.testing.assert_allclose(blended, expected, atol=1e-10)


@pytest.mark.parametrize("method", ["weights", "stack"])
def test_fold_k_of_the_honest_oof_never_reads_fold_ks_labels(method):
    """The blend for fold k's rows is fitted on the other folds: scrambling fold 0's labels leaves fold 0's
    blended probabilities exactly as they were, and changes the final (all-rows) params."""
    labels, folds, probs = synthetic_members(n=300, n_folds=3)
    scrambled = labels.copy()
    scrambled[folds == 0] = (labels[folds == 0] + 1) % 3
    kwargs = {"c_grid": (0.1, 1.0), "n_boot": 50}
    first, second = (
        fit_blend(labels, folds, probs, method, **kwargs),
        fit_blend(scrambled, folds, probs, method, **kwargs),
    )
    np.testing.assert_array_equal(first.oof_probs[folds == 0], second.oof_probs[folds == 0])
    assert first.fold_params[0] == second.fold_params[0]
    assert first.final_params != second.final_params
    # And fold 0's rows are the fold-0 params applied to them.
    np.testing.assert_allclose(first.oof_probs[folds == 0], apply(first.fold_params[0], list(probs[:, folds == 0])))


def test_the_report_sets_members_mean_and_blend_side_by_side():
    labels, folds, probs = synthetic_members()
    result = fit_blend(labels, folds, probs, "weights", names=["a", "b"], n_boot=200)
    report = result.report
    assert report.member_log_loss == {
        "a": pytest.approx(compute_log_loss(labels, probs[0])),
        "b": pytest.approx(compute_log_loss(labels, probs[1])),
    }
    assert report.best_member == min(report.member_log_loss, key=report.member_log_loss.get)
    assert report.mean_log_loss == pytest.approx(compute_log_loss(labels, probs.mean(axis=0)))
    assert report.blend_log_loss == pytest.approx(compute_log_loss(labels, result.oof_probs))
    assert report.difference.mean == pytest.approx(report.blend_log_loss - report.member_log_loss[report.best_member])
    # Two members with independent noise: the fitted mixture beats the better one, honestly scored.
    assert report.blend_log_loss < min(report.member_log_loss.values())
    assert len(report.lines()) == 6 and report.lines()[-1].startswith("blend - best member: -")
    logged = json.loads(json.dumps(result.to_dict()))  # blend.json is plain JSON
    assert logged["final_params"]["method"] == "weights" and set(logged["fold_params"]) == {"0", "1", "2", "3", "4"}
    np.testing.assert_allclose(apply(logged["final_params"], list(probs)), apply(result.final_params, list(probs)))


def test_the_stacker_undoes_an_overconfident_member():
    """Member b is right more often but sharpened twice over: the weighted mean cannot undo that, the stacker's
    coefficients can (its honest OOF beats the weighted mixture's)."""
    labels, folds, probs = synthetic_members(n=600, n_folds=4)
    weights = fit_blend(labels, folds, probs, "weights", n_boot=50).report
    stack = fit_blend(labels, folds, probs, "stack", c_grid=(0.1, 10.0), n_boot=50).report
    assert stack.blend_log_loss < weights.blend_log_loss < weights.member_log_loss[weights.best_member]


def test_an_honest_stack_needs_three_folds():
    labels, folds, probs = synthetic_members(n=100, n_folds=2)
    with pytest.raises(BlendMembersError, match="cv.n_folds >= 3"):
        fit_blend(labels, folds, probs, "stack")


def test_a_stacker_cannot_learn_a_class_it_never_saw():
    labels, folds, probs = synthetic_members(n=120, n_folds=3)
    labels = labels % 2  # no ties at all
    with pytest.raises(BlendMembersError, match="hold no winner_tie row; fix: use --method weights"):
        fit_blend(labels, folds, probs, "stack")
