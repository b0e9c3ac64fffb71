"""The run report page (pref_core.evaluate.report): its numbers, escaping, images and the confidently wrong rows,
against hand-built OOF tables."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from pref_core.data.labels import LABEL_COLUMNS
from pref_core.evaluate import promotion
from pref_core.evaluate.report import (
    FoldScore,
    RunScores,
    RunSummary,
    preview_text,
    render_run_report,
    select_confident_errors,
)

IMG = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def oof_frame(probs, labels, ids=None) -> pd.DataFrame:
    probs = np.asarray(probs, dtype=float)
    ids = [str(i) for i in (ids if ids is not None else range(len(labels)))]
    return pd.DataFrame(
        {
            "id": ids,
            "fold": np.arange(len(labels)) % 2,
            **{c: probs[:, k] for k, c in enumerate(LABEL_COLUMNS)},
            "label": labels,
        }
    )


def summary(**changes) -> RunSummary:
    base = dict(
        name="tiny·label_token·lr=2e-3·3f09d8",
        scores=RunScores(
            oof_log_loss=0.81234,
            oof_accuracy=0.6125,
            prior_log_loss=1.09861,
            n_oof=40,
            oof_log_loss_calibrated=0.80111,
            temperature=1.25,
        ),
        folds=(FoldScore(0, 0.79876, 0.65, 20, "cuda:0"), FoldScore(1, 0.82592, 0.575, 20, None)),
        overrides={"train.learning_rate": 0.002},
        decision="models:/arena-pref/3 is @challenger, @champion unchanged: oof_log_loss does not beat v2",
    )
    return RunSummary(**{**base, **changes})


@pytest.fixture(scope="module")
def run_oof():
    """40 rows: 30 right with confidence 0.6, 10 wrong; row 7's prompt holds a script tag."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    probs = np.full((40, 3), 0.2)
    probs[np.arange(40), labels] = 0.6
    for i in range(10):  # wrong rows 0..9: predicted (label + 1) % 3 with confidence 0.5 + 0.04 i
        probs[i] = 0.0
        probs[i, (labels[i] + 1) % 3] = 0.5 + 0.04 * i
        probs[i, labels[i]] = 1.0 - probs[i].sum()
    return oof_frame(probs, labels)


@pytest.fixture(scope="module")
def run_texts(run_oof):
    prompts = [[f"prompt of row {i}", "second turn"] for i in range(40)]
    prompts[7] = ["<script>alert('x')</script> which & why?"]
    return pd.DataFrame(
        {
            "id": run_oof["id"],
            "prompt": prompts,
            "response_a": [["answer a " + "word " * 60] for _ in range(40)],
            "response_b": [[None] for _ in range(40)],
        }
    )


@pytest.fixture(scope="module")
def page(run_oof, run_texts):
    return render_run_report(summary(), run_oof, run_texts)


def test_the_fold_table_and_the_scores_are_on_the_page(page):
    cells = re.findall(r'<td class="num">([^<]*)</td>', page)
    assert cells[:4] == ["0", "0.7988", "0.650", "20"]  # fold 0: log loss, accuracy, rows (4 decimals, 3 for accuracy)
    assert cells[4:8] == ["1", "0.8259", "0.575", "20"]
    assert "<td>cuda:0</td>" in page and "<td>–</td>" in page  # fold 1 has no device
    for shown in ("0.8123", "0.8011", "1.0986", "0.613", "temperature 1.250"):
        assert shown in page
    assert "+0.2975" in page  # gain over prior, calibrated as the submissions are: 1.09861 - 0.80111
    assert "oof_log_loss does not beat v2" in page and "train.learning_rate" in page


def test_user_text_is_escaped_and_the_page_has_no_script(run_oof, run_texts):
    labels = run_oof["label"].to_numpy()
    probs = run_oof[list(LABEL_COLUMNS)].to_numpy().copy()
    probs[7] = 0.0
    probs[7, (labels[7] + 1) % 3] = 0.99  # row 7 becomes the most confidently wrong one
    probs[7, labels[7]] = 0.01
    html = render_run_report(
        summary(name="<b>run</b>", overrides={"data.train_csv": "<img src=x>"}), oof_frame(probs, labels), run_texts
    )
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; which &amp; why?" in html
    assert "&lt;b&gt;run&lt;/b&gt;" in html and "&lt;img src=x&gt;" in html
    assert "<script" not in html.lower() and "<b>run" not in html


def test_the_page_is_self_contained_with_its_images_embedded(page):
    images = IMG.findall(page)
    assert len(images) == 5  # folds, length, reliability, calibration, confusion
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from a file or the network
    assert "<link" not in page and "@import" not in page


def test_the_page_stays_small_enough_for_the_mlflow_artifact_view(page):
    # MLflow 3.17's HTML view re-creates its blob URL on every render: a 135 kB page (five RGBA plots) stayed
    # blank there, 56 kB showed. The figures are palette PNGs (PNG colour type 3) to keep the page small.
    images = [base64.b64decode(data) for data in IMG.findall(page)]
    assert all(png[25] == 3 for png in images)  # IHDR colour type: indexed colour
    assert len(page.encode()) < 90_000, len(page.encode())


def test_without_texts_the_length_plot_and_previews_are_left_out_and_said_so(run_oof):
    html = render_run_report(summary(), run_oof)
    assert len(IMG.findall(html)) == 4
    assert "Log loss by length left out: no texts were given." in html
    assert "<th>prompt</th>" not in html


def test_the_wrong_rows_on_the_page_are_the_selected_ones_in_order(page, run_oof):
    chosen = select_confident_errors(run_oof)
    assert chosen["id"].tolist() == [str(i) for i in range(9, -1, -1)]  # confidence 0.86, 0.82, ... 0.50
    positions = [page.index(f'<td class="key">{i}</td>') for i in chosen["id"]]
    assert positions == sorted(positions)
    assert "The 10 most confidently wrong OOF rows" in page
    assert "prompt of row 9 ‖ second turn" in page and "(no answer)" in page


def test_twenty_most_confident_wrong_rows_ordered_by_the_predicted_class_probability():
    """Rows 0..24 (label a) predict b with confidence 1/2 + i/64 and p(true) 1/16; rows 25..29 are right with 0.95.
    Rows 30, 31 and 32 predict tie with row 10's confidence 0.65625 and p(true) 0.25, 0.03125 and 0.25. Ties go
    by row loss (lower p(true) first), then by id: 31, 10, 30, 32. So the 20 are rows 24..11, 31, 10, 30, 32, 9,
    8 (exact binary fractions: no rounding decides a tie)."""
    probs = [[1 / 16, 0.5 + i / 64, 1 - 1 / 16 - (0.5 + i / 64)] for i in range(25)]
    probs += [[0.95, 0.03, 0.02]] * 5
    probs += [[0.25, 0.09375, 0.65625], [0.03125, 0.3125, 0.65625], [0.25, 0.09375, 0.65625]]
    chosen = select_confident_errors(oof_frame(probs, [0] * len(probs)))
    expected = [*(str(i) for i in range(24, 10, -1)), "31", "10", "30", "32", "9", "8"]
    assert chosen["id"].tolist() == expected
    assert chosen["confidence"].is_monotonic_decreasing and chosen.loc[0, "confidence"] == 0.875
    assert chosen["predicted"].tolist()[14:18] == [2, 1, 2, 2]
    assert chosen.loc[0, "row_log_loss"] == pytest.approx(np.log(16))


def test_the_docstring_example_selects_the_one_wrong_row():
    chosen = select_confident_errors(oof_frame([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]], [0, 1]))
    assert chosen[["id", "label", "predicted"]].values.tolist() == [["1", 1, 0]]
    assert chosen.loc[0, "confidence"] == pytest.approx(0.6) and chosen.loc[0, "p_true"] == pytest.approx(0.3)


def test_previews_join_turns_collapse_whitespace_and_cut():
    assert preview_text(["first\nturn", None, "third"], 100) == "first turn ‖ (no answer) ‖ third"
    assert preview_text(np.array(["abcdefghij"], dtype=object), 6) == "abcde…"
    assert preview_text("  a  plain   string ", 50) == "a plain string"
    assert preview_text(None) == ""


def test_a_run_worse_than_the_prior_is_flagged_in_red():
    scores = RunScores(oof_log_loss=1.18, oof_accuracy=0.35, prior_log_loss=1.10, n_oof=4)
    html = render_run_report(summary(scores=scores), oof_frame(np.full((4, 3), 1 / 3), [0, 1, 2, 0]))
    assert "OOF log loss 1.1800 does not beat the class prior 1.1000" in html
    assert '<div class="value bad">-0.0800</div>' in html
    assert '<div class="banner bad"><b>Registry:</b>' in html


def test_the_prior_check_uses_the_calibrated_log_loss_as_the_registry_does():
    # Raw OOF 1.12 loses to the prior 1.10, but the bundle applies the temperature: calibrated 1.05 beats it, so the
    # registry aliases the version and the page must not say the model learned nothing.
    saved = RunScores(1.12, 0.40, 1.10, 4, oof_log_loss_calibrated=1.05, temperature=2.0)
    assert saved.beats_prior and saved.gain_over_prior == pytest.approx(0.05)
    assert promotion.registration_warnings(1.12, 1.10, calibrated_log_loss=1.05) == []
    html = render_run_report(summary(scores=saved), oof_frame(np.full((4, 3), 1 / 3), [0, 1, 2, 0]))
    assert "does not beat the class prior" not in html and '<div class="value good">+0.0500</div>' in html
    # The other way round: raw 1.08 beats 1.10, calibrated 1.11 does not; one warning, the registry's words.
    lost = RunScores(1.08, 0.40, 1.10, 4, oof_log_loss_calibrated=1.11, temperature=0.5)
    registry_says = promotion.registration_warnings(1.08, 1.10, calibrated_log_loss=1.11)
    assert registry_says == [lost.prior_warning]
    assert "calibrated OOF log loss 1.1100 does not beat the class prior 1.1000" in registry_says[0]
    flagged = summary(scores=lost, warnings=tuple(registry_says))
    assert flagged.all_warnings() == registry_says
    html = render_run_report(flagged, oof_frame(np.full((4, 3), 1 / 3), [0, 1, 2, 0]))
    assert html.count("does not beat the class prior") == 1 and '<div class="value bad">-0.0100</div>' in html


def test_the_summary_survives_json_and_reads_metrics_dicts():
    original = summary(
        config={"train.learning_rate": 0.002, "data.test_csv": None},
        facts={"recipe": "tiny"},
        warnings=("training data lacks class tie",),
        run_id="abc",
    )
    assert RunSummary.from_dict(json.loads(json.dumps(original.to_dict()))) == original
    scores = RunScores.from_metrics({"oof_log_loss": 0.8, "oof_accuracy": 0.6, "prior_log_loss": 1.1, "n_oof": 10.0})
    assert scores == RunScores(0.8, 0.6, 1.1, 10) and scores.beats_prior
    with pytest.raises(ValueError, match=r"missing \['prior_log_loss'\]"):
        RunScores.from_metrics({"oof_log_loss": 0.8, "oof_accuracy": 0.6, "n_oof": 10})


def test_an_oof_table_without_its_columns_is_refused_by_name():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['label'\]"):
        select_confident_errors(oof_frame([[1, 0, 0]], [0]).drop(columns=["label"]))


def test_rows_without_text_are_said_so_and_the_length_plot_left_out(run_oof, run_texts):
    html = render_run_report(summary(), run_oof, run_texts[run_texts["id"] != "9"])
    assert "Log loss by length left out: some OOF ids have no text." in html
    assert html.count("(text not available)") == 3  # row 9, the most confident error: prompt and both responses
    assert len(IMG.findall(html)) == 4
