"""The comparison page of several runs (pref_core.evaluate.comparison): row alignment counts, paired statistics
and config differences against hand-computed values, and what the page shows."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from pref_core.data.labels import LABEL_COLUMNS
from pref_core.evaluate.comparison import (
    ConfigDifference,
    RunResult,
    align_oof,
    compare_runs,
    diff_configs,
    render_comparison,
    unique_names,
)
from pref_core.evaluate.report import FoldScore, RunScores, RunSummary

LN2 = float(np.log(2))


def oof_frame(ids, labels, p_true) -> pd.DataFrame:
    """Each row gives its label `p_true` and splits the rest evenly over the two other classes."""
    labels = np.asarray(labels)
    p_true = np.broadcast_to(np.asarray(p_true, dtype=float), labels.shape)
    probs = np.repeat(((1 - p_true) / 2)[:, None], 3, axis=1)
    probs[np.arange(len(labels)), labels] = p_true
    return pd.DataFrame(
        {
            "id": [str(i) for i in ids],
            "fold": 0,
            **{c: probs[:, k] for k, c in enumerate(LABEL_COLUMNS)},
            "label": labels,
        }
    )


def test_alignment_keeps_the_common_ids_and_counts_what_each_run_loses():
    a = oof_frame([1, 2, 3, 4, 5], [0, 1, 2, 0, 1], 0.5)
    b = oof_frame([7, 6, 5, 4, 3], [0, 0, 1, 0, 2], 0.4)  # another order; ids 3, 4, 5 shared with the same labels
    aligned = align_oof({"A": a, "B": b})
    assert aligned.ids == ("3", "4", "5")
    assert aligned.labels.tolist() == [2, 0, 1]
    assert aligned.rows == {"A": 5, "B": 5} and aligned.dropped == {"A": 2, "B": 2}
    np.testing.assert_allclose(aligned.probs["B"][:, [2, 0, 1]].diagonal(), [0.4, 0.4, 0.4])  # B's rows re-ordered
    assert aligned.in_words() == "3 rows scored by all 2 runs; left out: A 2 of 5, B 2 of 5"
    assert aligned.to_dict() == {
        "names": ["A", "B"],
        "n_common": 3,
        "rows": {"A": 5, "B": 5},
        "dropped": {"A": 2, "B": 2},
        "label_conflicts": [],
    }


def test_common_rows_with_different_labels_are_left_out_and_named():
    a = oof_frame([1, 2, 3], [0, 1, 2], 0.5)
    b = oof_frame([1, 2, 3, 4], [0, 2, 2, 1], 0.5)  # id 2: label b in A, tie in B
    aligned = align_oof({"A": a, "B": b})
    assert aligned.ids == ("1", "3") and aligned.label_conflicts == ("2",)
    assert aligned.dropped == {"A": 1, "B": 2}
    assert "1 common rows carry different labels in different runs (e.g. id 2)" in aligned.in_words()


def test_a_run_with_a_repeated_id_is_refused():
    with pytest.raises(ValueError, match=r"run 'A': the OOF table holds 1 repeated ids \(e.g. \['1'\]\)"):
        align_oof({"A": oof_frame([1, 1, 2], [0, 0, 1], 0.5), "B": oof_frame([1, 2], [0, 1], 0.5)})


def test_paired_statistics_on_hand_computed_losses():
    """A gives every true label 1/2 (loss ln 2), B gives it 1/4 (loss ln 4): B - A = ln 2 on every row, so
    every resample's mean is ln 2 and B is worse. C gives the true label 1/4 on row 0 only: differences
    [ln 2, 0], resample means in {0, ln2/2, ln 2}: the interval [0, ln 2] contains 0, no clear difference."""
    ids, labels = [10, 11], [0, 2]
    aligned = align_oof(
        {"A": oof_frame(ids, labels, 0.5), "B": oof_frame(ids, labels, 0.25), "C": oof_frame(ids, labels, [0.25, 0.5])}
    )
    b, c = compare_runs(aligned, n_boot=4000, seed=3)
    assert (b.reference, b.other) == ("A", "B")
    assert b.reference_log_loss == pytest.approx(LN2) and b.other_log_loss == pytest.approx(2 * LN2)
    assert (b.difference.mean, b.difference.low, b.difference.high) == (pytest.approx(LN2),) * 3
    assert b.outcome == "worse" and b.difference.share_b_better == 0.0
    assert b.verdict().startswith("B is worse than A: higher log loss by 0.6931")
    assert c.difference.mean == pytest.approx(LN2 / 2) and c.difference.n_rows == 2
    assert (c.difference.low, c.difference.high) == (pytest.approx(0.0), pytest.approx(LN2))
    assert c.outcome == "unclear" and "contains 0" in c.verdict()
    assert json.loads(json.dumps(c.to_dict()))["outcome"] == "unclear"


def test_the_better_run_is_called_better_on_the_common_rows_only():
    """A scores rows 1..4; B only 1..3, where it gives the truth 0.8 against A's 0.5: B - A = ln(0.5/0.8) each row.
    Row 4, which B never scored, takes no part."""
    a = oof_frame([1, 2, 3, 4], [0, 1, 2, 0], [0.5, 0.5, 0.5, 0.01])
    b = oof_frame([1, 2, 3], [0, 1, 2], 0.8)
    (pair,) = compare_runs(align_oof({"A": a, "B": b}), n_boot=200)
    assert pair.difference.n_rows == 3 and pair.reference_log_loss == pytest.approx(LN2)
    assert pair.difference.high == pytest.approx(np.log(0.5 / 0.8)) and pair.outcome == "better"
    assert pair.short_verdict() == "better: the whole interval is below 0"


def test_no_common_rows_is_an_error_that_says_so():
    aligned = align_oof({"A": oof_frame([1], [0], 0.5), "B": oof_frame([2], [0], 0.5)})
    assert aligned.ids == () and aligned.dropped == {"A": 1, "B": 1}
    with pytest.raises(ValueError, match="no OOF row in common"):
        compare_runs(aligned)


def test_config_differences():
    configs = {
        "a": {"train.learning_rate": 1e-4, "seed": 0, "tracking.uri": "x", "model.tiny": {"layers": 2}},
        "b": {
            "train.learning_rate": 0.0001,
            "seed": 0,
            "tracking.uri": "y",
            "model.tiny": {"layers": 2},
            "data.test_csv": None,
        },
        "c": {"train.learning_rate": 2e-3, "seed": 0, "tracking.uri": "z", "model.tiny": {"layers": 4}},
    }
    assert diff_configs(configs, ignore=["tracking"]) == [
        ConfigDifference("data.test_csv", (None, "null", None)),  # absent in a and c, null in b
        ConfigDifference("model.tiny", ('{"layers": 2}', '{"layers": 2}', '{"layers": 4}')),
        ConfigDifference("train.learning_rate", ("0.0001", "0.0001", "0.002")),
    ]
    assert "tracking.uri" in [d.key for d in diff_configs(configs)]
    assert diff_configs({"a": {"x": "0.001", "y": "True"}, "b": {"x": 0.001, "y": True}}) == [
        ConfigDifference("y", ("True", "true"))
    ]  # compared as shown: a param string equals its number
    assert diff_configs({"a": {"lr": 1e-4, "seed": 0}, "b": {"lr": 2e-3, "seed": 0}}) == [
        ConfigDifference("lr", ("0.0001", "0.002"))
    ]


def test_repeated_run_names_get_numbers():
    assert unique_names(["run", "other", "run", "run"]) == ["run", "other", "run #2", "run #3"]


def _run(name, frame, lr):
    labels, probs = frame["label"].to_numpy(), frame[list(LABEL_COLUMNS)].to_numpy()
    loss = float(-np.log(probs[np.arange(len(labels)), labels]).mean())
    scores = RunScores(oof_log_loss=loss, oof_accuracy=0.5, prior_log_loss=1.0986, n_oof=len(frame))
    return RunResult(
        RunSummary(
            name=name,
            scores=scores,
            folds=(FoldScore(0, loss, 0.5, len(frame)),),
            config={"train.learning_rate": lr, "cv.n_folds": 1, "output_dir": name},
        ),
        frame,
    )


def test_the_page_shows_scores_pairs_differences_and_plots_side_by_side():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    a = oof_frame(range(60), labels, 0.5)
    b = oof_frame(range(10, 60), labels[10:], 0.6)  # 10 rows fewer
    html = render_comparison([_run("lr=<1e-4>", a, 1e-4), _run("lr=2e-3", b, 2e-3)], n_boot=300, ignore=["output_dir"])
    assert "50 rows scored by all 2 runs; left out: lr=&lt;1e-4&gt; 10 of 60, lr=2e-3 0 of 50" in html
    assert f"{np.log(0.5 / 0.6):+.4f}" in html and "better: the whole interval is below 0" in html
    assert '<td class="key">train.learning_rate</td><td class="value">0.0001</td><td class="value">0.002</td>' in html
    assert "output_dir" not in html  # ignored, and the only other difference
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', html)) == 8  # 4 plots x 2 runs
    assert 'style="--n: 2"' in html and "<script" not in html
    assert re.search(r'<tr class="best"><td class="name">lr=2e-3 ★', html)


def test_one_run_renders_without_pairs():
    html = render_comparison([_run("only", oof_frame([1, 2], [0, 1], 0.5), 1e-4)])
    assert "One run only: nothing to pair it with." in html
