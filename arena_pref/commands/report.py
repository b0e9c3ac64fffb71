"""`arena-pref report RUN_OR_MODEL ...`: one run's page, or the comparison page of several runs."""

from __future__ import annotations

import re

from arena_pref.commands.options import add_tracking_uri
from pref_core.errors import UserError

REPORT_EXAMPLES = """examples:
  arena-pref report models:/arena-pref@champion --out champion.html
  arena-pref report 'tiny·label_token·lr=2e-3·77c383' models:/arena-pref/1 --out compare.html"""

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class RunNotFoundError(UserError, LookupError):
    """A run id, run name or models:/ URI that names no finished cv-training run."""


def register(sub) -> None:
    """report: a run's page, or several runs compared."""
    report = sub.add_parser(
        "report",
        help="a run's report page, or the comparison page of several runs (HTML)",
        description="Write the report page of one cv-training run, or the comparison page of several "
        "(paired bootstrap of their OOF log loss on the rows every run scored, config differences).",
        epilog=REPORT_EXAMPLES,
    )
    report.add_argument(
        "runs", nargs="+", metavar="RUN_OR_MODEL", help="an MLflow run id, a run name, or a models:/ URI"
    )
    report.add_argument("--out", default="report.html", help="where the HTML page goes")
    report.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of the paired comparison")
    add_tracking_uri(report)
    report.set_defaults(func=cmd_report)


def resolve_run(client, ref: str):
    """The MLflow run that `ref` names: a models:/name/version or models:/name@alias URI, a run id, or a run name
    (the newest run of that name)."""
    from mlflow.exceptions import MlflowException

    if ref.startswith("models:/"):
        name, _, which = ref[len("models:/") :].partition("@")
        try:
            if which:
                version = client.get_model_version_by_alias(name, which)
            else:
                name, _, number = name.rpartition("/")
                version = client.get_model_version(name, number)
        except MlflowException:
            raise RunNotFoundError(f"{ref}: no such registered model version; see `arena-pref models`") from None
        return client.get_run(version.run_id)
    if _RUN_ID.match(ref):
        try:
            return client.get_run(ref)
        except MlflowException:
            pass
    experiments = [e.experiment_id for e in client.search_experiments()]
    escaped = ref.replace("'", "\\'")
    found = client.search_runs(
        experiments, filter_string=f"attributes.run_name = '{escaped}'", order_by=["attributes.start_time DESC"]
    )
    if not found:
        raise RunNotFoundError(f"{ref!r}: no MLflow run has this id or name in {client.tracking_uri}")
    return found[0]


def load_run_result(client, run, directory):
    """A finished run's RunResult (its run_summary.json and OOF table, downloaded into `directory`)."""
    import json
    from pathlib import Path

    import pandas as pd
    from mlflow.exceptions import MlflowException

    from arena_pref.tasks.report_page import OOF_FILE, REPORT_DIR, SUMMARY_FILE
    from pref_core.evaluate.comparison import RunResult
    from pref_core.evaluate.report import RunSummary

    run_id = run.info.run_id
    target = Path(directory) / run_id
    target.mkdir(parents=True, exist_ok=True)
    try:
        summary = client.download_artifacts(run_id, f"{REPORT_DIR}/{SUMMARY_FILE}", str(target))
        oof = client.download_artifacts(run_id, OOF_FILE, str(target))
    except (MlflowException, OSError):
        raise RunNotFoundError(
            f"run {run.info.run_name or run_id} ({run_id}) has no {REPORT_DIR}/{SUMMARY_FILE} or {OOF_FILE}: "
            "only finished cv-training runs have a report"
        ) from None
    data = json.loads(Path(summary).read_text(encoding="utf-8"))
    return RunResult(summary=RunSummary.from_dict(data), oof=pd.read_parquet(oof))


def cmd_report(args) -> int:
    import os
    import tempfile
    import time
    from pathlib import Path

    from arena_pref import tracking_probe
    from arena_pref.commands.registry import _tracking_uri
    from pref_core.config.fields import result_neutral_fields
    from pref_core.evaluate.comparison import render_comparison
    from pref_core.evaluate.report import render_run_report

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no download bars between our lines
    started = time.perf_counter()
    uri = _tracking_uri(args)
    tracking_probe.check_reachable(uri)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = [resolve_run(client, ref) for ref in args.runs]
    with tempfile.TemporaryDirectory() as tmp:
        results = [load_run_result(client, run, tmp) for run in runs]
    if len(results) == 1:
        page = render_run_report(results[0].summary, results[0].oof)
    else:
        page = render_comparison(results, n_boot=args.n_boot, ignore=result_neutral_fields())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    what = "report of" if len(results) == 1 else "comparison of"
    names = ", ".join(r.summary.name for r in results)
    args.console.print(f"{out}: {what} {names} ({time.perf_counter() - started:.1f} s)")
    return 0
