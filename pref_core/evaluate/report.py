"""The report page of one CV run: one self-contained HTML file a Kaggler reads at a glance.

Scores first (OOF log loss, calibrated OOF, class prior, accuracy, the gain over the prior), then the fold
table, the diagnostic plots of pref_core.evaluate.plots (embedded PNG), the config overrides, the registry decision in
words, and the 20 most confidently wrong OOF rows with the start of their texts.

Inputs are plain data: a RunSummary (scores, folds, overrides, decision; JSON via to_dict/from_dict), the OOF
table (pref_core.oof.OOF_COLUMNS) and, optionally, the parsed texts (id, prompt, response_a, response_b as
lists of turns). Rendering is pure: no files, no clock, no tracking store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from pref_core.data.labels import LABEL_COLUMNS, TURN_COLUMNS
from pref_core.evaluate.metrics import row_log_losses
from pref_core.evaluate.promotion import deciding_log_loss, prior_warning

# "winner_model_a" -> "a", "winner_tie" -> "tie": the short class names, derived from the one definition.
CLASS_NAMES: tuple[str, ...] = tuple(name.rsplit("_", 1)[-1] for name in LABEL_COLUMNS)
TURN_SEPARATOR = " ‖ "  # between the turns of a multi-turn cell in a text preview


@dataclass(frozen=True)
class FoldScore:
    """One fold's validation scores, as the fold table shows them."""

    fold: int
    log_loss: float
    accuracy: Optional[float] = None
    rows: Optional[int] = None
    device: Optional[str] = None  # the device slot the fold ran on (None: in-process or unknown)


@dataclass(frozen=True)
class RunScores:
    """The run's OOF scores (the metrics pref_core.oof.score_oof returns, under the same names)."""

    oof_log_loss: float
    oof_accuracy: float
    prior_log_loss: float
    n_oof: int
    oof_log_loss_calibrated: Optional[float] = None  # only with calibration.method=temperature
    temperature: Optional[float] = None

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float]) -> "RunScores":
        """From a metrics dict (OOFScores.metrics or an MLflow run's metrics); names the missing keys."""
        required = ("oof_log_loss", "oof_accuracy", "prior_log_loss", "n_oof")
        missing = [k for k in required if k not in metrics]
        if missing:
            raise ValueError(
                f"run scores need the metrics {list(required)}; missing {missing} (is this a finished cv-training run?)"
            )
        optional = {
            k: float(metrics[k]) for k in ("oof_log_loss_calibrated", "temperature") if metrics.get(k) is not None
        }
        return cls(
            oof_log_loss=float(metrics["oof_log_loss"]),
            oof_accuracy=float(metrics["oof_accuracy"]),
            prior_log_loss=float(metrics["prior_log_loss"]),
            n_oof=int(metrics["n_oof"]),
            **optional,
        )

    @property
    def deciding_log_loss(self) -> float:
        """The log loss the run's submissions get (promotion.deciding_log_loss), as the registry judges it."""
        return deciding_log_loss(self.oof_log_loss, self.oof_log_loss_calibrated)

    @property
    def gain_over_prior(self) -> float:
        """prior - deciding log loss: positive when the model beats always predicting the class shares."""
        return self.prior_log_loss - self.deciding_log_loss

    @property
    def beats_prior(self) -> bool:
        return self.prior_warning is None

    @property
    def prior_warning(self) -> Optional[str]:
        """promotion.prior_warning for these scores (None when the run beats the class prior)."""
        return prior_warning(self.oof_log_loss, self.prior_log_loss, self.oof_log_loss_calibrated)


@dataclass(frozen=True)
class RunSummary:
    """Everything a run's page says besides the OOF table: serialisable (to_dict / from_dict, JSON-ready).

    `overrides`: dotted config key -> value where the run differs from its recipe. `config`: the whole flat
    config (dotted key -> value), which the comparison page diffs. `facts`: short header facts in display order
    (recipe, base model, run key, data). `decision`: the registry's decision in words. `warnings`: shown in red
    at the top (a page also warns by itself when the run does not beat the class prior)."""

    name: str
    scores: RunScores
    folds: tuple[FoldScore, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    facts: Mapping[str, str] = field(default_factory=dict)
    decision: str = ""
    warnings: tuple[str, ...] = ()
    run_id: Optional[str] = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["folds"] = [asdict(f) for f in self.folds]
        out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunSummary":
        data = dict(data)
        data["scores"] = RunScores(**data["scores"])
        data["folds"] = tuple(FoldScore(**f) for f in data.get("folds", ()))
        data["warnings"] = tuple(data.get("warnings", ()))
        return cls(**data)

    def all_warnings(self) -> list[str]:
        """The given warnings, led by the class-prior one when the run does not beat it (once: the registry's
        warnings may hold the same words)."""
        found = list(self.warnings)
        own = self.scores.prior_warning
        if own is not None and own not in found:
            found.insert(0, own)
        return found


def check_oof_frame(oof: pd.DataFrame) -> None:
    """Raise ValueError naming the missing columns unless `oof` has id, label and the three probability columns."""
    missing = [c for c in ("id", *LABEL_COLUMNS, "label") if c not in oof.columns]
    if missing:
        raise ValueError(
            f"the OOF table lacks column(s) {missing}; expected id, {', '.join(LABEL_COLUMNS)}, label "
            "(pref_core.oof.OOF_COLUMNS)"
        )


def select_confident_errors(oof: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """The `n` most confidently wrong OOF rows: rows whose most probable class is not the label, ordered by
    the probability of that predicted class (highest first; ties by row log loss, highest first, then id).

    Returns id, label, predicted (class indices), confidence (p of the predicted class), p_true, row_log_loss
    and the three probability columns, with a fresh index. Fewer than `n` rows when fewer are wrong.

    Example: labels [0, 1], probabilities [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]]: row 1 is wrong (predicted a,
    label b) with confidence 0.6; row 0 is right and not selected.
    """
    check_oof_frame(oof)
    probs = oof[list(LABEL_COLUMNS)].to_numpy(dtype=np.float64)  # (rows, 3)
    labels = oof["label"].to_numpy()
    predicted = probs.argmax(axis=1)
    table = pd.DataFrame(
        {
            "id": oof["id"].astype(str).to_numpy(),
            "label": labels.astype(int),
            "predicted": predicted,
            "confidence": probs.max(axis=1),
            "p_true": probs[np.arange(len(labels)), labels.astype(int)],
            "row_log_loss": row_log_losses(labels.astype(int), probs),
            **{c: probs[:, k] for k, c in enumerate(LABEL_COLUMNS)},
        }
    )
    wrong = table[table["predicted"] != table["label"]]
    ordered = wrong.sort_values(["confidence", "row_log_loss", "id"], ascending=[False, False, True], kind="mergesort")
    return ordered.head(n).reset_index(drop=True)


def preview_text(cell: Any, n_chars: int = 160) -> str:
    """The first `n_chars` characters of a text cell, whitespace collapsed: a list of turns (parsed cells,
    JSON null turns shown as '(no answer)') joined by TURN_SEPARATOR, or a string as it is; '…' when cut."""
    if cell is None:
        return ""
    if isinstance(cell, str):
        text = cell
    else:
        text = TURN_SEPARATOR.join("(no answer)" if turn is None else str(turn) for turn in list(cell))
    text = " ".join(text.split())
    return text if len(text) <= n_chars else text[: n_chars - 1].rstrip() + "…"


def error_rows(oof: pd.DataFrame, texts: Optional[pd.DataFrame], n: int = 20, n_chars: int = 160) -> list[dict]:
    """select_confident_errors as display rows: class names, probabilities and (when `texts` is given) the
    previews of prompt and both responses."""
    chosen = select_confident_errors(oof, n)
    by_id = None if texts is None else texts.assign(id=texts["id"].astype(str)).drop_duplicates("id").set_index("id")
    rows = []
    for row in chosen.itertuples(index=False):
        record = {
            "id": row.id,
            "label": CLASS_NAMES[row.label],
            "predicted": CLASS_NAMES[row.predicted],
            # (probability, css class): the true class green, the predicted one red.
            "prob_cells": [
                (getattr(row, c), "p-true" if k == row.label else "p-pred" if k == row.predicted else "")
                for k, c in enumerate(LABEL_COLUMNS)
            ],
            "confidence": row.confidence,
            "row_log_loss": row.row_log_loss,
        }
        if by_id is not None:
            found = row.id in by_id.index
            record["texts"] = [
                preview_text(by_id.at[row.id, c], n_chars) if found else "(text not available)" for c in TURN_COLUMNS
            ]
        rows.append(record)
    return rows


def text_lengths_or_none(oof: pd.DataFrame, texts: Optional[pd.DataFrame]) -> Optional[np.ndarray]:
    """(rows,) characters of prompt + responses per OOF row (pref_core.oof.text_lengths), None without texts
    or when some OOF id has no text (the length plot is then left out, and the page says so)."""
    if texts is None:
        return None
    from pref_core.evaluate.oof import text_lengths

    try:
        return text_lengths(texts, oof["id"])
    except KeyError:
        return None


def run_figures(
    summary: RunSummary,
    oof: pd.DataFrame,
    lengths: Optional[np.ndarray],
    which: Sequence[str] = ("folds", "reliability", "calibration", "confusion", "length"),
) -> list[dict]:
    """The run's plots (pref_core.evaluate.plots) as [{key, caption, src}] with base64 PNG sources, in `which` order;
    'length' is left out without lengths."""
    from pref_core.evaluate import plots
    from pref_core.evaluate.calibration import apply_temperature, fit_temperature
    from pref_core.evaluate.page import figure_to_data_uri

    labels = oof["label"].to_numpy().astype(int)
    probs = oof[list(LABEL_COLUMNS)].to_numpy(dtype=np.float64)  # (rows, 3)
    scores = summary.scores
    builders = {
        "folds": (
            "Validation log loss per fold, against the OOF and the class prior",
            lambda: plots.plot_fold_log_loss(
                {f.fold: f.log_loss for f in summary.folds}, scores.oof_log_loss, scores.prior_log_loss
            ),
        ),
        "reliability": (
            "Reliability per class: points on the diagonal are calibrated",
            lambda: plots.plot_reliability(labels, probs),
        ),
        "calibration": (
            "Top-class calibration before and after temperature scaling",
            lambda: _calibration_figure(plots, labels, probs, scores.temperature, fit_temperature, apply_temperature),
        ),
        "confusion": ("Confusion matrix of the most probable class", lambda: plots.plot_confusion(labels, probs)),
        "length": (
            "OOF log loss by prompt + responses length: long rows lose most to truncation",
            lambda: plots.plot_log_loss_by_length(labels, probs, lengths, scores.oof_log_loss),
        ),
    }
    figures = []
    for key in which:
        if key == "length" and lengths is None:
            continue
        caption, build = builders[key]
        figures.append({"key": key, "caption": caption, "src": figure_to_data_uri(build())})
    return figures


def _calibration_figure(plots, labels, probs, temperature, fit_temperature, apply_temperature):
    # Without calibration.method=temperature the run fitted no temperature to show: fit one here (not applied).
    t = temperature if temperature is not None else fit_temperature(labels, probs)
    return plots.plot_calibration_before_after(labels, probs, apply_temperature(probs, t), t)


RUN_TEMPLATE = """{% extends "base.html" %}
{% import "macros.html" as m %}
{% block title %}{{ s.name }} · OOF {{ s.scores.oof_log_loss | num }}{% endblock %}
{% block body %}
<h1>{{ s.name }}</h1>
<p class="sub">{% for k, v in s.facts.items() %}{{ k }}: <b>{{ v }}</b>{{ " · " if not loop.last }}{% endfor %}
{% if s.run_id %}{{ " · " if s.facts }}MLflow run <code>{{ s.run_id }}</code>{% endif %}</p>

<div class="tiles">
{{ m.tile("OOF log loss", s.scores.oof_log_loss | num, (s.scores.n_oof | count) ~ " rows, "
          ~ (s.folds | length) ~ " folds", "main") }}
{{ m.tile("calibrated OOF", s.scores.oof_log_loss_calibrated | num,
          "no calibration applied" if s.scores.temperature is none
          else "temperature " ~ (s.scores.temperature | num(3))) }}
{{ m.tile("class prior", s.scores.prior_log_loss | num, "always the class shares") }}
{{ m.tile("gain over prior", s.scores.gain_over_prior | num(4, true), (gain_percent | num(1, true)) ~ " % of the prior"
          ~ (", calibrated" if s.scores.oof_log_loss_calibrated is not none else ""),
          "good" if s.scores.beats_prior else "bad") }}
{{ m.tile("accuracy", s.scores.oof_accuracy | num(3), "most probable class") }}
</div>
{% for w in warnings %}<div class="banner bad">⚠ {{ w }}</div>{% endfor %}
{% if s.decision %}
<div class="banner {{ 'info' if s.scores.beats_prior else 'bad' }}"><b>Registry:</b> {{ s.decision }}</div>
{% endif %}

<h2>Folds</h2>
<div class="row">
<table>
  <tr><th class="num">fold</th><th class="num">log loss</th><th class="num">accuracy</th><th class="num">rows</th>
      <th>device</th></tr>
  {% for f in s.folds %}
  <tr><td class="num">{{ f.fold }}</td><td class="num">{{ f.log_loss | num }}</td>
      <td class="num">{{ f.accuracy | num(3) }}</td><td class="num">{{ f.rows | count }}</td>
      <td>{{ f.device or "–" }}</td></tr>
  {% endfor %}
  <tr><th class="num">OOF</th><th class="num">{{ s.scores.oof_log_loss | num }}</th>
      <th class="num">{{ s.scores.oof_accuracy | num(3) }}</th><th class="num">{{ s.scores.n_oof | count }}</th>
      <th></th></tr>
</table>
{% for fig in figures if fig.key in ("folds", "length") %}{{ m.figure(fig, "grow") }}{% endfor %}
</div>
{% if no_length_reason %}<p class="muted">{{ no_length_reason }}</p>{% endif %}

<h2>Calibration and errors</h2>
<div class="figs">
{% for fig in figures if fig.key not in ("folds", "length") %}{{ m.figure(fig) }}{% endfor %}
</div>

<h2>Config overrides</h2>
{% if s.overrides %}
<table>
  <tr><th>key</th><th>value</th></tr>
  {% for k, v in s.overrides.items() %}
  <tr><td class="key">{{ k }}</td><td class="value">{{ v }}</td></tr>
  {% endfor %}
</table>
{% else %}<p class="muted">None: the recipe as it is.</p>{% endif %}

<h2>The {{ errors | length }} most confidently wrong OOF rows</h2>
<p class="sub">Rows whose most probable class is not the label, most confident first. Probabilities in
<span class="p-pred">red</span>: the predicted class; in <span class="p-true">green</span>: the true one.
{% if show_texts %}The first {{ n_chars }} characters of each text; {{ separator }} separates turns.{% endif %}</p>
{% if errors %}
<table>
  <tr><th>id</th><th>label</th>{% for c in class_names %}<th class="num">p({{ c }})</th>{% endfor %}
      <th class="num">row loss</th>
      {% if show_texts %}<th>prompt</th><th>response a</th><th>response b</th>{% endif %}</tr>
  {% for r in errors %}
  <tr><td class="key">{{ r.id }}</td><td>{{ r.label }}</td>
    {% for p, css in r.prob_cells %}<td class="num {{ css }}">{{ p | num(3) }}</td>{% endfor %}
    <td class="num">{{ r.row_log_loss | num(3) }}</td>
    {% if show_texts %}{% for t in r.texts %}<td class="text">{{ t }}</td>{% endfor %}{% endif %}</tr>
  {% endfor %}
</table>
{% else %}<p class="muted">No OOF row is wrong.</p>{% endif %}
{% endblock %}
"""


def render_run_report(
    summary: RunSummary,
    oof: pd.DataFrame,
    texts: Optional[pd.DataFrame] = None,
    *,
    n_errors: int = 20,
    n_chars: int = 160,
    footer: str = "arena-pref run report",
) -> str:
    """The run's page as one HTML string (write it with encoding='utf-8').

    `oof`: the run's OOF table (id, label and the three probability columns; fold optional). `texts`: the
    parsed train rows (id and the turn columns as lists of turns), for the text previews and the log loss by
    length; without it both are left out."""
    from pref_core.evaluate.page import make_environment

    check_oof_frame(oof)
    lengths = text_lengths_or_none(oof, texts)
    no_length_reason = ""
    if lengths is None:
        no_length_reason = "Log loss by length left out: " + (
            "no texts were given." if texts is None else "some OOF ids have no text."
        )
    template = make_environment({"run.html": RUN_TEMPLATE}).get_template("run.html")
    return template.render(
        s=summary,
        warnings=summary.all_warnings(),
        figures=run_figures(summary, oof, lengths),
        errors=error_rows(oof, texts, n_errors, n_chars),
        show_texts=texts is not None,
        n_chars=n_chars,
        separator=TURN_SEPARATOR.strip(),
        class_names=CLASS_NAMES,
        no_length_reason=no_length_reason,
        footer=footer,
        gain_percent=100 * summary.scores.gain_over_prior / summary.scores.prior_log_loss,
    )
