"""What the run report and the comparison page share: the Jinja2 environment, the page layout with its inline
CSS, and matplotlib figures embedded as base64 PNG.

A page is one self-contained HTML file: no external stylesheet, script, font or image, so it opens offline
from the run folder and inline in the MLflow artifact view. Every value reaches the HTML through Jinja2 with
autoescaping on: a prompt holding `<script>` shows as text, never runs.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any, Mapping

_CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --good: #1a7f37; --bad: #cf222e;
        --warn: #9a6700; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--ink);
       background: #fff; }
main { max-width: 1260px; margin: 0 auto; padding: 20px 24px 48px; }
h1 { font-size: 22px; margin: 0 0 2px; word-break: break-all; }
h2 { font-size: 17px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 0 0 6px; }
.sub { color: var(--muted); margin: 0 0 14px; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.tile { border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; min-width: 150px;
        background: var(--soft); }
.tile .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.tile .value { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
.tile .note { color: var(--muted); font-size: 12px; }
.tile.main { border-color: var(--accent); background: #ddf4ff; min-width: 210px; }
.tile.main .value { font-size: 40px; }
.good { color: var(--good); } .bad { color: var(--bad); } .muted { color: var(--muted); }
.banner { border-radius: 6px; padding: 8px 14px; margin: 8px 0; border: 1px solid; }
.banner.good { background: #dafbe1; border-color: #4ac26b; color: #116329; }
.banner.bad { background: #ffebe9; border-color: #ff8182; color: #82071e; }
.banner.info { background: var(--soft); border-color: var(--line); color: var(--ink); }
table { border-collapse: collapse; margin: 4px 0 8px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
tr.best td { background: #dafbe1; font-weight: 600; }
td.text { max-width: 260px; font-size: 12px; color: var(--muted); overflow-wrap: anywhere; }
td.key { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
td.value { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; overflow-wrap: anywhere;
           max-width: 420px; }
.p-true { font-weight: 700; color: var(--good); } .p-pred { font-weight: 700; color: var(--bad); }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 16px; }
.figs.side { grid-template-columns: repeat(var(--n), minmax(0, 500px)); }
figure.grow { flex: 1 1 300px; max-width: 460px; }
td.name { white-space: nowrap; font-weight: 600; }
figure { margin: 0; } figure img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 2px; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
"""

BASE_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %}</title>
<style>{{ css | safe }}</style>
</head>
<body><main>
{% block body %}{% endblock %}
<footer>{{ footer }}</footer>
</main></body>
</html>
"""


# Shared pieces: a score tile and a figure with its caption.
MACROS_TEMPLATE = """
{% macro tile(label, value, note, kind="") %}
<div class="tile {{ 'main' if kind == 'main' else '' }}"><div class="label">{{ label }}</div>
  <div class="value{{ ' ' ~ kind if kind in ('good', 'bad') else '' }}">{{ value }}</div>
  <div class="note">{{ note }}</div></div>
{% endmacro %}
{% macro figure(fig, cls="") %}
<figure{% if cls %} class="{{ cls }}"{% endif %}><img alt="{{ fig.caption }}" src="{{ fig.src }}">
  <figcaption>{{ fig.caption }}</figcaption></figure>
{% endmacro %}
"""


def _number(value: Any, digits: int = 4, signed: bool = False) -> str:
    """A float with `digits` decimals (a leading + when `signed`); '–' for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):+.{digits}f}" if signed else f"{float(value):.{digits}f}"


def _count(value: Any) -> str:
    """An integer with thousands separators; '–' for None."""
    return "–" if value is None else f"{int(value):,}"


def make_environment(templates: Mapping[str, str]):
    """A Jinja2 environment over `templates` (name -> source) plus `base.html` and `macros.html`: autoescaping
    on for every template, undefined names are errors (a typo fails the test, not the page)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.DictLoader({"base.html": BASE_TEMPLATE, "macros.html": MACROS_TEMPLATE, **templates}),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _number
    env.filters["count"] = _count
    env.globals["css"] = _CSS
    return env


# Colours kept per embedded figure. Plots have flat colours, so a 64-colour palette looks the same and is about
# 3.4x smaller than the RGBA file. Size matters: MLflow 3.17's HTML artifact view builds a new blob URL on every
# re-render, and a page of ~130 kB or more (five full-colour plots) never painted there in headless Chromium.
PALETTE_COLORS = 64


def figure_to_data_uri(fig, dpi: int = 110) -> str:
    """`data:image/png;base64,...` of a matplotlib figure (pref_core.evaluate.plots builds them on the Agg canvas),
    as a palette PNG of PALETTE_COLORS colours."""
    from PIL import Image  # matplotlib's own dependency

    rgba = io.BytesIO()
    fig.savefig(rgba, format="png", dpi=dpi)
    image = Image.open(io.BytesIO(rgba.getvalue())).convert("RGB")
    palette = image.quantize(colors=PALETTE_COLORS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    palette.save(buffer, format="png", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
