"""Learned post-processing (pref_core.evaluate.postprocess): row kinds by their definitions, a kind's rule worked
out by hand, the nesting over folds, the too-few rule, apply, and a synthetic run where the rule beats the model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pref_core.data.arena import parse_turns
from pref_core.data.folds import make_folds
from pref_core.data.labels import LABEL_COLUMNS
from pref_core.data.synthetic import make_synthetic_frames
from pref_core.evaluate.postprocess import (
    NO_KIND,
    PostprocessRulesError,
    apply,
    fit_kind_rule,
    fit_postprocess,
    fit_weight,
    postprocess_metrics,
    postprocess_params,
    row_kind,
    row_kinds,
)

# -- kinds --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "kind"),
    [
        (["x"], ["x"], "identical"),
        (["same", "turns"], ["same", "turns"], "identical"),
        (["same", "x"], ["same", "y"], NO_KIND),  # the whole conversation counts, not the first turn
        (["Paris."], [" paris. "], "near_identical"),
        (["one two"], ["one\n\ttwo"], "near_identical"),
        (["a", "b"], ["a\nb"], "identical"),  # turns are joined by a newline before comparing
        ([None], ["y"], "a_empty"),
        (["  \n"], ["y"], "a_empty"),
        (["", None], ["y", "z"], "a_empty"),
        (["y"], [None], "b_empty"),
        (None, ["y"], "a_empty"),  # a missing cell holds no turns
        ([None], [""], "both_empty"),  # empty wins over identical
        ([" "], [" "], "both_empty"),
        (["a"], ["b"], NO_KIND),
    ],
)
def test_row_kinds_follow_their_definitions(a, b, kind):
    assert row_kind(a, b) == kind


def test_row_kinds_read_turn_arrays_from_parquet(tmp_path):
    frame = pd.DataFrame(
        {"response_a": [["x", "y"], ["", ""], ["A b"]], "response_b": [["x", "y"], ["b", "c"], ["a  B"]]}
    )
    frame.to_parquet(tmp_path / "rows.parquet")
    back = pd.read_parquet(tmp_path / "rows.parquet")  # list cells come back as numpy arrays
    assert isinstance(back["response_a"].iloc[0], np.ndarray)
    assert row_kinds(back["response_a"], back["response_b"]).tolist() == ["identical", "a_empty", "near_identical"]


def test_near_identical_is_optional():
    assert row_kind(["Paris."], ["paris."], near_identical=False) == NO_KIND
    assert row_kinds([["x"], ["Paris."], [None]], [["x"], ["paris."], ["y"]]).tolist() == [
        "identical",
        "near_identical",
        "a_empty",
    ]


# -- fitting by hand ----------------------------------------------------------------------------------------


def test_a_kinds_rule_worked_out_by_hand():
    """Ten rows of one kind, the model uniform on all. Shares count half a row more per class (SHARE_PRIOR).
    Fold 0 labels 0,0,0,0,1: shares (4.5, 1.5, .5)/6.5; fold 1 labels 0,0,0,0,2: (4.5, .5, 1.5)/6.5. Leaving a fold
    out, each fold's rows meet the other fold's shares: eight label-0 rows at w*9/13 + (1-w)/3 = (13 + 14w)/39, two
    rows whose class the other fold never saw at w/13 + (1-w)/3 = (13 - 10w)/39. The loss' derivative
    8*14/(13 + 14w) - 2*10/(13 - 10w) vanishes at w = 1196/1400 = 299/350.
    Final rule: shares of all ten rows (8.5, 1.5, 1.5)/11.5 = (17, 3, 3)/23, model mean 1/3 each:
    q = 299/350*(17, 3, 3)/23 + 51/350*(1/3, 1/3, 1/3) = (221 + 17, 39 + 17, 39 + 17)/350 = (.68, .16, .16)."""
    labels = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 2])
    folds = np.array([0] * 5 + [1] * 5)
    rule = fit_kind_rule(labels, np.full((10, 3), 1 / 3), folds)
    assert rule["weight"] == pytest.approx(299 / 350, abs=1e-6)
    np.testing.assert_allclose(rule["shares"], np.array([17, 3, 3]) / 23)
    np.testing.assert_allclose(rule["model_mean"], [1 / 3] * 3)
    np.testing.assert_allclose(rule["probs"], [0.68, 0.16, 0.16], atol=1e-6)


def test_a_class_the_kinds_rows_never_showed_keeps_a_share():
    # 40 ties, the model uniform: the rule leans on the shares, yet never gives a class probability 0.
    rule = fit_kind_rule(np.full(40, 2), np.full((40, 3), 1 / 3), np.repeat([0, 1], 20))
    np.testing.assert_allclose(rule["shares"], np.array([0.5, 0.5, 40.5]) / 41.5)
    assert rule["weight"] == 1.0 and min(rule["probs"]) == pytest.approx(0.5 / 41.5)


def test_the_weight_lands_on_its_ends_when_one_side_is_always_better():
    # Shares that give every held-out label more than the model mean: all weight on the shares, and the reverse.
    assert fit_weight(np.array([0.9, 0.8]), np.array([0.3, 0.3])) == 1.0
    assert fit_weight(np.array([0.0, 0.1]), np.array([0.3, 0.3])) == 0.0


def kind_rows(kind, labels, probs, folds):
    return {"labels": labels, "probs": np.asarray(probs, dtype=float), "folds": folds, "kinds": [kind] * len(labels)}


def test_fold_k_reads_the_rule_fitted_on_the_other_folds_only():
    rng = np.random.default_rng(0)
    labels, folds = rng.choice(3, size=90, p=[0.1, 0.1, 0.8]), np.repeat([0, 1, 2], 30)
    probs = rng.dirichlet([2, 2, 2], size=90)
    kinds = np.array(["identical"] * 90, dtype=object)
    rules = fit_postprocess(labels, folds, kinds, probs, min_rows=20)
    rule = rules.kinds["identical"]
    assert rule.enabled  # mostly ties, and the model knows nothing: the rule wins, so oof_probs holds it
    for k in range(3):
        expected = fit_kind_rule(labels[folds != k], probs[folds != k], folds[folds != k])
        assert rule.fold_rules[k] == expected
        np.testing.assert_allclose(rules.oof_probs[folds == k], np.tile(expected["probs"], (30, 1)))
    # Scrambling fold 0's labels leaves the rule that scores fold 0's rows exactly as it was.
    scrambled = labels.copy()
    scrambled[folds == 0] = (labels[folds == 0] + 1) % 3
    again = fit_postprocess(scrambled, folds, kinds, probs, min_rows=20).kinds["identical"]
    assert again.fold_rules[0] == rule.fold_rules[0] and again.fold_rules[1] != rule.fold_rules[1]


def test_a_kind_with_too_few_rows_is_left_alone():
    labels, folds = np.array([2, 2, 2, 0, 1, 2]), np.array([0, 0, 1, 1, 2, 2])
    probs = np.full((6, 3), 1 / 3)
    kinds = np.array(["identical"] * 3 + ["a_empty"] * 3, dtype=object)
    rules = fit_postprocess(labels, folds, kinds, probs, min_rows=4)
    for kind in ("identical", "a_empty"):
        assert not rules.kinds[kind].enabled and rules.kinds[kind].probs is None
        assert "too few rows" in rules.kinds[kind].reason
    assert rules.kinds["identical"].class_counts == [0, 0, 3]
    np.testing.assert_array_equal(rules.oof_probs, probs)
    assert rules.oof_log_loss_after == rules.oof_log_loss_before
    # Logged: the scores as metrics, the rows and on/off per kind as params.
    assert set(postprocess_metrics(rules)) == {"oof_log_loss_postprocess_before", "oof_log_loss_postprocessed"}
    params = postprocess_params(rules)
    assert params["postprocess_rows_identical"] == 3 and params["postprocess_on_a_empty"] == 0


def test_a_kind_the_model_already_judges_stays_off():
    rng = np.random.default_rng(1)
    labels, folds = rng.integers(0, 3, 120), np.tile([0, 1, 2, 3], 30)
    probs = np.full((120, 3), 0.05)
    probs[np.arange(120), labels] = 0.9  # the model is right and sure on every row: one constant cannot beat it
    rules = fit_postprocess(labels, folds, np.array(["near_identical"] * 120, dtype=object), probs)
    rule = rules.kinds["near_identical"]
    assert not rule.enabled and rule.oof_log_loss_after > rule.oof_log_loss_before
    assert rules.oof_log_loss_after == rules.oof_log_loss_before
    assert "no change" in rules.summary() and "kept the model's" in rules.summary()


# -- apply --------------------------------------------------------------------------------------------------


def test_apply_replaces_the_rows_of_enabled_kinds_only():
    rules = {
        "format": 1,
        "kinds": {
            "identical": {"enabled": True, "probs": [0.06, 0.06, 0.88]},
            "a_empty": {"enabled": False, "probs": [0.04, 0.88, 0.08]},
            "b_empty": {"enabled": False, "probs": None},
        },
    }
    probs = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]])
    out = apply(rules, ["identical", "a_empty", ""], probs)
    np.testing.assert_array_equal(out, [[0.06, 0.06, 0.88], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]])
    assert probs[0, 0] == 0.5  # a copy: the input is untouched


def test_apply_refuses_rules_it_cannot_trust():
    probs = np.full((1, 3), 1 / 3)
    with pytest.raises(PostprocessRulesError, match="format"):
        apply({"kinds": {}}, [""], probs)
    with pytest.raises(PostprocessRulesError, match="summing to 1"):
        apply({"format": 1, "kinds": {"identical": {"enabled": True, "probs": [0.5, 0.5, 0.5]}}}, [""], probs)
    with pytest.raises(PostprocessRulesError, match="one kind per row"):
        apply({"format": 1, "kinds": {}}, ["", ""], probs)


# -- end to end on synthetic data ---------------------------------------------------------------------------


def seeded_frame(seed=0):
    """Synthetic arena rows, plus rows whose answers are identical (mostly ties), or one side empty (mostly the
    other side wins): the kinds a real model cannot judge from the text."""
    train, _ = make_synthetic_frames(n_train=600, n_test=0, seed=seed)
    frame = train.assign(**{c: train[c].map(parse_turns) for c in ("prompt", "response_a", "response_b")})
    frame["label"] = frame[list(LABEL_COLUMNS)].to_numpy().argmax(axis=1)
    rng = np.random.default_rng(seed)
    rows = []
    for i, (kind, shares) in enumerate(
        [("identical", [0.1, 0.1, 0.8])] * 80
        + [("a_empty", [0.05, 0.85, 0.1])] * 60
        + [("b_empty", [0.85, 0.05, 0.1])] * 60
    ):
        source = frame.iloc[i % len(frame)]
        a, b = list(source["response_a"]), list(source["response_b"])
        a, b = (
            (a, list(a)) if kind == "identical" else ([None] * len(a), b) if kind == "a_empty" else (a, [""] * len(b))
        )
        rows.append(
            {
                "id": f"injected-{i}",
                "prompt": [f"injected prompt {i}"] + source["prompt"][1:],
                "response_a": a,
                "response_b": b,
                "label": int(rng.choice(3, p=shares)),
            }
        )
    return pd.concat([frame, pd.DataFrame(rows)], ignore_index=True)


def test_the_learned_rule_beats_the_model_on_rows_it_cannot_judge():
    frame = seeded_frame()
    folds = make_folds(frame, n_folds=5, seed=42)["fold"].to_numpy()
    labels = frame["label"].to_numpy()
    kinds = row_kinds(frame["response_a"], frame["response_b"])
    rng = np.random.default_rng(7)
    # The "model": informative on ordinary rows, uninformative (noise around uniform) where it cannot judge.
    probs = rng.dirichlet([1, 1, 1], size=len(frame)) * 0.4 + 0.6 * np.eye(3)[labels]
    odd = kinds != NO_KIND
    probs[odd] = rng.dirichlet([20, 20, 20], size=int(odd.sum()))
    injected = frame["id"].str.startswith("injected-").to_numpy()
    assert {k: int((kinds[injected] == k).sum()) for k in ("identical", "a_empty", "b_empty")} == {
        "identical": 80,
        "a_empty": 60,
        "b_empty": 60,
    }
    assert (kinds[~injected] != "identical").all()  # the synthetic rows bring a few empty answers of their own

    rules = fit_postprocess(labels, folds, kinds, probs)
    for kind in ("identical", "a_empty", "b_empty"):
        rule = rules.kinds[kind]
        assert rule.enabled and rule.oof_log_loss_after < rule.oof_log_loss_before - 0.2, rule
    assert int(np.argmax(rules.kinds["identical"].probs)) == 2 and int(np.argmax(rules.kinds["a_empty"].probs)) == 1
    assert rules.oof_log_loss_after < rules.oof_log_loss_before
    # Ordinary rows are untouched, and the JSON round trip applies the final rules.
    np.testing.assert_array_equal(rules.oof_probs[~odd], probs[~odd])
    logged = json.loads(json.dumps(rules.to_dict()))
    applied = apply(logged, kinds, probs)
    np.testing.assert_allclose(applied[kinds == "identical"], np.tile(rules.kinds["identical"].probs, (80, 1)))
    np.testing.assert_array_equal(applied[~odd], probs[~odd])
    summary = rules.summary()
    assert summary.startswith("post-processing: ") and "identical (80 rows) -> [" in summary and "\n" not in summary
    print(summary)
