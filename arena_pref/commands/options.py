"""What the command groups share: the help format, the options several commands take, loading a --config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (or says it is required); epilogs keep their line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if action.required:
            return f"{text} (required)"
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if isinstance(action, argparse._AppendAction) and not action.default:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


def add_overrides(p: argparse.ArgumentParser) -> None:
    """--set, --force and -v of the commands that run cv-training."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.learning_rate=1e-4 (repeatable)",
    )
    p.add_argument(
        "--run-name",
        default=None,
        metavar="NAME",
        help="name of the MLflow run and the Prefect flow run (tracking.run_name; fold runs NAME/fold-k) "
        "(default: recipe·base·head·overrides·run key)",
    )
    p.add_argument("--force", action="store_true", help="retrain folds that an identical earlier run finished")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every log line here (default: progress bars and a summary; the rest goes to a log file)",
    )


def add_tracking_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else the running local server, else "
        "mlflow/mlflow.db in the project folder)",
    )


def load_run_config(config_path: str | Path, overrides: Sequence[str], run_name: Optional[str] = None):
    """The config a --config names: the file, else the shipped recipe of that name (arena_pref.tasks.resources);
    tracking.recipe names that file (run names list what differs from it), `run_name` (--run-name) sets
    tracking.run_name."""
    from arena_pref.tasks.resources import find_config
    from pref_core.config.loading import load_config
    from pref_core.config.naming import with_recipe

    found = find_config(config_path)
    config = with_recipe(load_config(found, overrides), found)
    if run_name:
        config = config.model_copy(update={"tracking": config.tracking.model_copy(update={"run_name": run_name})})
    return config
