"""The comparison page of several CV runs: scores side by side, a paired per-row comparison on the OOF rows
they all scored (is B really better than A?), the config keys whose values differ, and their plots side by side.

The pure parts stand alone: align_oof (which rows every run scored, and how many each run loses, never
silently), compare_runs (each run against the first, by pref_core.evaluate.compare.paired_difference) and
diff_configs. render_comparison puts them on one self-contained HTML page.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from pref_core.data.labels import LABEL_COLUMNS
from pref_core.evaluate.compare import PairedDifference, paired_difference
from pref_core.evaluate.metrics import row_log_losses
from pref_core.evaluate.report import RunSummary, check_oof_frame, run_figures, text_lengths_or_none


@dataclass
class RunResult:
    """One run as the comparison page needs it: its summary, its OOF table and (optionally) its parsed texts
    (id and the turn columns, for the log loss by length)."""

    summary: RunSummary
    oof: pd.DataFrame
    texts: Optional[pd.DataFrame] = None


@dataclass(frozen=True)
class OOFAlignment:
    """The OOF rows every run scored with one label, in id order, and what each run lost to get there.

    `rows[name]`: rows the run scored; `dropped[name]`: of those, rows left out (not scored by every run, or
    one of `label_conflicts`: ids the runs scored with different labels, so different data)."""

    names: tuple[str, ...]
    ids: tuple[str, ...]
    labels: np.ndarray  # (n,) class indices
    probs: Mapping[str, np.ndarray]  # name -> (n, 3)
    rows: Mapping[str, int]
    dropped: Mapping[str, int]
    label_conflicts: tuple[str, ...] = ()

    def in_words(self) -> str:
        """e.g. '960 rows scored by all 2 runs; left out: run-a 40 of 1,000, run-b 0 of 960'."""
        lost = ", ".join(f"{name} {self.dropped[name]:,} of {self.rows[name]:,}" for name in self.names)
        text = f"{len(self.ids):,} rows scored by all {len(self.names)} runs; left out: {lost}"
        if self.label_conflicts:
            text += (
                f"; {len(self.label_conflicts):,} common rows carry different labels in different runs "
                f"(e.g. id {', '.join(self.label_conflicts[:3])}): the runs were trained on different data"
            )
        return text

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "n_common": len(self.ids),
            "rows": dict(self.rows),
            "dropped": dict(self.dropped),
            "label_conflicts": list(self.label_conflicts),
        }


def align_oof(frames: Mapping[str, pd.DataFrame]) -> OOFAlignment:
    """Align the runs' OOF tables (name -> id, label, three probability columns) on the ids they all scored.

    Example: run A scored ids 1..5, run B ids 3..7, all with the same labels: 3 rows (3, 4, 5) are kept and
    each run has 2 left out. An id whose label differs between runs is left out too and named in
    `label_conflicts`. A run with a repeated id is an error (an OOF table scores each row once).
    """
    if len(frames) < 1:
        raise ValueError("align_oof needs at least one run's OOF table")
    indexed = {}
    for name, frame in frames.items():
        check_oof_frame(frame)
        ids = frame["id"].astype(str)
        repeated = ids[ids.duplicated()].unique().tolist()
        if repeated:
            raise ValueError(
                f"run {name!r}: the OOF table holds {len(repeated)} repeated ids (e.g. {repeated[:3]}); "
                "an OOF table scores each row once"
            )
        indexed[name] = frame.assign(id=ids).set_index("id")
    common = sorted(set.intersection(*(set(f.index) for f in indexed.values())))
    labels = pd.DataFrame(
        {name: f.loc[common, "label"].astype(int).to_numpy() for name, f in indexed.items()},
        index=pd.Index(common, dtype=object),
    )
    agree = labels.nunique(axis=1) == 1
    conflicts = tuple(labels.index[~agree])
    kept = labels.index[agree].tolist()
    return OOFAlignment(
        names=tuple(frames),
        ids=tuple(kept),
        labels=labels.loc[kept].iloc[:, 0].to_numpy(dtype=np.int64) if kept else np.zeros(0, dtype=np.int64),
        probs={name: f.loc[kept, list(LABEL_COLUMNS)].to_numpy(dtype=np.float64) for name, f in indexed.items()},
        rows={name: len(f) for name, f in indexed.items()},
        dropped={name: len(f) - len(kept) for name, f in indexed.items()},
        label_conflicts=conflicts,
    )


@dataclass(frozen=True)
class PairedComparison:
    """`other` against `reference` on the aligned rows: both log losses there and the paired difference
    (other - reference: negative means `other` is better)."""

    reference: str
    other: str
    reference_log_loss: float
    other_log_loss: float
    difference: PairedDifference

    def verdict(self) -> str:
        """One sentence: better, worse, or no clear difference (the interval contains 0)."""
        d = self.difference
        interval = f"{d.level:.0%} interval {d.low:+.4f} .. {d.high:+.4f}"
        if d.high < 0:
            return (
                f"{self.other} is better than {self.reference}: lower log loss by {-d.mean:.4f} "
                f"({interval}, all below 0)"
            )
        if d.low > 0:
            return (
                f"{self.other} is worse than {self.reference}: higher log loss by {d.mean:.4f} "
                f"({interval}, all above 0)"
            )
        return f"no clear difference between {self.other} and {self.reference}: the {interval} contains 0"

    def short_verdict(self) -> str:
        """'better: the whole interval is below 0', 'worse: ...above 0' or 'unclear: the interval contains 0'."""
        return {
            "better": "better: the whole interval is below 0",
            "worse": "worse: the whole interval is above 0",
            "unclear": "unclear: the interval contains 0",
        }[self.outcome]

    @property
    def outcome(self) -> str:
        """'better', 'worse' or 'unclear' (for `other` against `reference`)."""
        return "better" if self.difference.high < 0 else "worse" if self.difference.low > 0 else "unclear"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict(), "outcome": self.outcome}


def compare_runs(
    alignment: OOFAlignment, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> list[PairedComparison]:
    """Every run after the first against the first (the reference), paired on the aligned rows."""
    if not alignment.ids:
        raise ValueError(
            "the runs have no OOF row in common (with one label): a paired comparison needs rows all "
            "runs scored; compare runs trained on the same data and folds"
        )
    reference = alignment.names[0]
    losses = {name: row_log_losses(alignment.labels, alignment.probs[name]) for name in alignment.names}  # (n,) each
    return [
        PairedComparison(
            reference=reference,
            other=name,
            reference_log_loss=float(losses[reference].mean()),
            other_log_loss=float(losses[name].mean()),
            difference=paired_difference(losses[reference], losses[name], n_boot, level, seed),
        )
        for name in alignment.names[1:]
    ]


@dataclass(frozen=True)
class ConfigDifference:
    """A config key whose values differ between runs: one display value per run, None where the run lacks it."""

    key: str
    values: tuple[Optional[str], ...]


def _display(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def diff_configs(configs: Mapping[str, Mapping[str, Any]], ignore: Iterable[str] = ()) -> list[ConfigDifference]:
    """The dotted keys (sorted) whose values are not the same in every run, a key missing from some run included.

    Values compare as the page shows them: strings as they are, anything else as JSON (1e-4, 0.0001 and
    '0.0001' are equal; True and 'True' are not: JSON says true), so give every run's config from one source
    (all RunConfig.flat(), or all MLflow params). `ignore`: keys or whole sections ('tracking' ignores
    tracking.uri) left out, e.g. the result-neutral fields.

    Example: {'a': {'lr': 1e-4, 'seed': 0}, 'b': {'lr': 2e-3, 'seed': 0}}
    -> [ConfigDifference('lr', ('0.0001', '0.002'))].
    """
    ignored = tuple(ignore)

    def skipped(key: str) -> bool:
        return any(key == i or key.startswith(i + ".") for i in ignored)

    keys = sorted({k for config in configs.values() for k in config if not skipped(k)})
    out = []
    for key in keys:
        values = tuple(_display(config[key]) if key in config else None for config in configs.values())
        if len(set(values)) > 1:
            out.append(ConfigDifference(key, values))
    return out


def unique_names(names: Sequence[str]) -> list[str]:
    """The names with repeats numbered ('run', 'run #2'): two identical reruns still get a column each."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


COMPARISON_TEMPLATE = """{% extends "base.html" %}
{% import "macros.html" as m %}
{% block title %}{{ names | length }} runs compared{% endblock %}
{% block body %}
{% set tone = {"better": "good", "worse": "bad"} %}
<h1>{{ names | length }} runs compared</h1>
<p class="sub">Reference (first run): <b>{{ names[0] }}</b>. Differences are other − reference:
negative is better.</p>
{% for p in pairs %}
<div class="banner {{ tone.get(p.outcome, 'info') }}"><b>{{ p.other }}</b> − <b>{{ p.reference }}</b>:
{{ p.difference.mean | num(4, true) }} log loss on {{ p.difference.n_rows | count }} common rows ({{ level }} interval
{{ p.difference.low | num(4, true) }} .. {{ p.difference.high | num(4, true) }}): <b>{{ p.short_verdict() }}</b>.</div>
{% endfor %}

<h2>Scores</h2>
<table>
  <tr><th>run</th><th class="num">OOF log loss</th><th class="num">Δ vs reference</th><th class="num">calibrated</th>
      <th class="num">class prior</th><th class="num">gain over prior</th><th class="num">accuracy</th>
      <th class="num">OOF rows</th><th class="num">folds</th></tr>
  {% for name, s in runs %}
  <tr class="{{ 'best' if name == best }}"><td class="name">{{ name }}{{ " ★" if name == best }}</td>
    <td class="num">{{ s.scores.oof_log_loss | num }}</td>
    <td class="num">{{ "–" if loop.first else (s.scores.oof_log_loss - reference_loss) | num(4, true) }}</td>
    <td class="num">{{ s.scores.oof_log_loss_calibrated | num }}</td>
    <td class="num">{{ s.scores.prior_log_loss | num }}</td>
    <td class="num {{ 'good' if s.scores.beats_prior else 'bad' }}">{{ s.scores.gain_over_prior | num(4, true) }}</td>
    <td class="num">{{ s.scores.oof_accuracy | num(3) }}</td><td class="num">{{ s.scores.n_oof | count }}</td>
    <td class="num">{{ s.folds | length }}</td></tr>
  {% endfor %}
</table>
<p class="muted">Over each run's own OOF rows; the paired comparison below uses only the rows every run scored.</p>
{% for name, s in runs if not s.scores.beats_prior %}
<div class="banner bad">⚠ {{ name }} does not beat its class prior.</div>
{% endfor %}

<h2>Paired comparison on the common OOF rows</h2>
<div class="banner {{ 'bad' if alignment.label_conflicts else 'info' }}">{{ alignment.in_words() }}.</div>
{% if pairs %}
<table>
  <tr><th>run</th><th class="num">log loss on common rows</th><th class="num">− reference</th>
      <th class="num">{{ level }} interval</th><th class="num">lower in resamples</th><th>verdict</th></tr>
  <tr><td class="name">{{ names[0] }}</td><td class="num">{{ pairs[0].reference_log_loss | num }}</td>
      <td class="num">–</td><td class="num">–</td><td class="num">–</td><td class="muted">reference</td></tr>
  {% for p in pairs %}
  <tr><td class="name">{{ p.other }}</td><td class="num">{{ p.other_log_loss | num }}</td>
    <td class="num {{ tone.get(p.outcome, '') }}">{{ p.difference.mean | num(4, true) }}</td>
    <td class="num">{{ p.difference.low | num(4, true) }} .. {{ p.difference.high | num(4, true) }}</td>
    <td class="num">{{ (100 * p.difference.share_b_better) | num(1) }} %</td>
    <td class="{{ tone.get(p.outcome, 'muted') }}">{{ p.short_verdict() }}</td></tr>
  {% endfor %}
</table>
<p class="muted">Each run's per-row log losses paired with the reference's on the same rows; {{ n_boot | count }}
bootstrap resamples of the rows give the interval of the mean difference.</p>
{% elif no_pairs_reason %}<p class="muted">{{ no_pairs_reason }}</p>{% endif %}

<h2>Config differences</h2>
{% if differences %}
<table>
  <tr><th>key</th>{% for name in names %}<th class="name">{{ name }}</th>{% endfor %}</tr>
  {% for d in differences %}
  <tr><td class="key">{{ d.key }}</td>
      {%- for v in d.values %}<td class="value">{{ "(not set)" if v is none else v }}</td>{% endfor %}</tr>
  {% endfor %}
</table>
{% else %}
<p class="muted">The configs are the same{{ " (leaving out " ~ (ignored | join(", ")) ~ ")" if ignored }}.</p>
{% endif %}

<h2>Plots side by side</h2>
<div class="figs side" style="--n: {{ names | length }}">
  {% for name in names %}<h3>{{ name }}</h3>{% endfor %}
  {% for row in figure_rows %}{% for fig in row %}
  {% if fig %}{{ m.figure(fig) }}{% else %}<p class="muted">no texts given: not drawn</p>{% endif %}
  {% endfor %}{% endfor %}
</div>
{% endblock %}
"""

_FIGURES = ("folds", "reliability", "calibration", "confusion", "length")


def render_comparison(
    runs: Sequence[RunResult],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    ignore: Iterable[str] = (),
    footer: str = "arena-pref run comparison",
) -> str:
    """The comparison page of `runs` (the first is the reference) as one HTML string.

    `ignore`: config keys or sections left out of the differences (e.g. the result-neutral fields)."""
    from pref_core.evaluate.page import make_environment

    if not runs:
        raise ValueError("render_comparison needs at least one run")
    names = unique_names([r.summary.name for r in runs])
    alignment = align_oof({name: r.oof for name, r in zip(names, runs)})
    pairs, no_pairs_reason = [], ""
    if len(runs) < 2:
        no_pairs_reason = "One run only: nothing to pair it with."
    elif not alignment.ids:
        no_pairs_reason = "No OOF row was scored by every run with the same label: no paired comparison."
    else:
        pairs = compare_runs(alignment, n_boot, level, seed)
    ignored = list(ignore)
    differences = diff_configs({name: r.summary.config for name, r in zip(names, runs)}, ignored)
    per_run = [{f["key"]: f for f in run_figures(r.summary, r.oof, text_lengths_or_none(r.oof, r.texts))} for r in runs]
    figure_rows = [
        [figures.get(key) for figures in per_run] for key in _FIGURES if any(key in figures for figures in per_run)
    ]
    best = min(zip(names, runs), key=lambda item: item[1].summary.scores.oof_log_loss)[0]
    template = make_environment({"comparison.html": COMPARISON_TEMPLATE}).get_template("comparison.html")
    return template.render(
        names=names,
        runs=[(name, r.summary) for name, r in zip(names, runs)],
        best=best,
        alignment=alignment,
        reference_loss=runs[0].summary.scores.oof_log_loss,
        pairs=pairs,
        no_pairs_reason=no_pairs_reason,
        level=f"{level:.0%}",
        n_boot=n_boot,
        differences=differences,
        ignored=ignored,
        figure_rows=figure_rows,
        footer=footer,
    )
