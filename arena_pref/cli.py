"""`arena-pref`: the command line of the pipeline (demo, train, validate, models, promote, predict, stack, ui).

User errors (bad config, bad data, unreachable tracking store, a failed fold)
end with one line per problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"

# Quiet, offline defaults, set before prefect, mlflow or transformers are imported.
_ENV_DEFAULTS = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DISABLE_MLFLOW_INTEGRATION": "TRUE",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    # Prefect's temporary server gets 20 s to start by default; a busy machine needs more.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


class UserError(Exception):
    """An error the user can fix; printed as is, exit code 2."""


def _apply_env_defaults() -> None:
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _user_errors() -> tuple[type[BaseException], ...]:
    from pref_core.config import ConfigError
    from pref_core.data import DataValidationError
    from tasks.evaluation import IncompleteOOFError
    from tasks.tracking import TrackingUnavailableError
    from tasks.training import FoldFailedError
    from arena_pref.stack import StackError

    return (UserError, StackError, ConfigError, DataValidationError, TrackingUnavailableError, FoldFailedError,
            IncompleteOOFError, FileNotFoundError, PermissionError)


# -- commands -----------------------------------------------------------------

def _load(config_path: str | Path, overrides: Sequence[str]):
    from pref_core.config import load_config

    return load_config(config_path, overrides)


def registry_decision(result: dict) -> str:
    """The registry's decision in plain words (the first version becoming @champion is not a failure)."""
    from tasks.artifacts import decision_in_words

    return decision_in_words(result["model_uri"], bool(result.get("promoted")), result["promotion"])


def _run_link(tracking_uri: str, run_id: str) -> str:
    """A browser link to the run on a tracking server, else where the run lives."""
    if tracking_uri.startswith(("http://", "https://")):
        try:
            from mlflow import MlflowClient

            experiment_id = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id
            return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        except Exception:  # the summary must not fail on a link
            pass
    return f"run {run_id} in {tracking_uri}"


def _print_summary(result: dict, tracking_uri: str, out=None) -> None:
    write = (lambda text="": print(text)) if out is None else out.print
    metrics = result["metrics"]
    accuracy, rows = result.get("fold_accuracy", {}), result.get("fold_rows", {})
    write()
    write("fold  log loss  accuracy   rows")
    for fold, loss in sorted(result["fold_log_loss"].items()):
        acc = f"{accuracy[fold]:.3f}" if fold in accuracy else "-"
        write(f"{fold:>4}  {loss:>8.4f}  {acc:>8}  {rows.get(fold, '-'):>5}")
    write(f"OOF log loss {metrics['oof_log_loss']:.4f}, accuracy {metrics['oof_accuracy']:.3f} over {metrics['n_oof']} rows")
    if "temperature" in metrics:
        write(f"calibrated OOF log loss {metrics['oof_log_loss_calibrated']:.4f} (temperature {metrics['temperature']:.3f})")
    write(f"class prior log loss {metrics['prior_log_loss']:.4f} (always predicting the training class shares)")
    write(f"registry: {registry_decision(result)}")
    if result.get("submission_path"):
        write(f"submission: {result['submission_path']}")
    write(f"OOF predictions: {result['oof_path']}")
    write(f"MLflow: {_run_link(tracking_uri, result['parent_run_id'])}")
    write("open the MLflow UI: arena-pref ui   (then http://127.0.0.1:5000)")


def preflight(config) -> None:
    """Everything that can fail fast, checked before Prefect starts: writable output, reachable
    tracking store, valid data. A bad file is reported here in one line per problem, with no
    orchestration traceback; the validated rows are cached, so the flow's ingest is a cache hit."""
    from tasks import preparation, tracking, workspace

    if config.data.train_csv is None:
        raise UserError("data.train_csv: not set; pass --set data.train_csv=PATH (a Kaggle-format train.csv)")
    root = workspace.output_root(config)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"output_dir: cannot write to {root} ({err.strerror or err}); "
                        "choose a writable folder with --set output_dir=PATH") from None
    tracking.check_tracking_reachable(tracking.resolve_tracking_uri(config))
    train = preparation.ingest.fn(config, "train")
    if config.data.test_csv is not None:
        preparation.ingest.fn(config, "test")
    if config.distill.teacher_csv is not None:
        from pref_core.data import read_teacher_probs

        read_teacher_probs(config.distill.teacher_csv)
    check_split(config, train.parsed_path)


def check_split(config, parsed_path) -> None:
    """Refuse (exit 2) a train file that cannot be split into cv.n_folds prompt-grouped folds; warn when the
    split works but scores poorly (a missing or rare class, tiny validation sets)."""
    import pandas as pd

    from pref_core.folds import SplitError, check_splittable

    try:
        warnings = check_splittable(pd.read_parquet(parsed_path, columns=["id", "prompt", "label"]), config.cv.n_folds)
    except SplitError as err:
        raise UserError(str(err)) from None
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)


def run_training(config, force: bool = False, verbose: bool = True, command: str = "train") -> dict:
    """Preflight, then cv-training; quiet unless `verbose`: bars and a summary, everything else in a log file."""
    from arena_pref import console as run_console
    from tasks import workspace

    preflight(config)
    log_path = run_console.log_file_path(workspace.output_root(config), command)
    if not verbose:
        print(f"log: {log_path}  (-v shows it here)", flush=True)
    with run_console.quiet_run(log_path, verbose=verbose) as console:
        from flows.cv_training import cv_training
        from tasks.tracking import resolve_tracking_uri

        try:
            result = cv_training(config, force=force)
        except BaseException:
            if not verbose:
                console.err.write(f"the run failed; full log: {log_path}\n")
            raise
        _print_summary(result, resolve_tracking_uri(config), console)
    if not verbose:
        # Prefect stops its temporary server at exit and says so; atexit runs this first (last in, first out).
        import atexit
        import logging

        atexit.register(logging.getLogger("prefect").setLevel, logging.WARNING)
    return result


def cmd_train(args) -> int:
    config = _load(args.config, args.set)
    run_training(config, force=args.force, verbose=args.verbose)
    return 0


def cmd_demo(args) -> int:
    from pref_core.synthetic import shuffle_labels, write_synthetic_csvs

    out = Path(args.output_dir).resolve()
    data_dir = out / "data"
    train_csv, test_csv = write_synthetic_csvs(
        data_dir, n_train=args.n_train, n_test=args.n_test, signal=args.signal, seed=args.seed
    )
    if args.shuffle_labels:
        import pandas as pd

        shuffled = shuffle_labels(pd.read_csv(train_csv, dtype=str, keep_default_na=False), seed=args.seed)
        train_csv = data_dir / "train_shuffled.csv"
        shuffled.to_csv(train_csv, index=False)
    print(f"synthetic data: {train_csv} ({args.n_train} rows), {test_csv} ({args.n_test} rows)")
    overrides = [f"data.train_csv={train_csv}", f"data.test_csv={test_csv}", f"output_dir={out}", *args.set]
    config = _load(args.config, overrides)
    run_training(config, force=args.force, verbose=args.verbose, command="demo")
    return 0


def cmd_validate(args) -> int:
    from pref_core.data import read_arena_csv
    from pref_core.metrics import count_classes

    result = read_arena_csv(args.path, kind=args.kind, max_bad_fraction=args.max_bad_fraction)
    print(f"{args.path}: {result.n_read} rows read, {result.n_kept} valid, {result.n_rejected} rejected ({args.kind} file)")
    if args.kind == "train" and result.n_kept:
        counts = count_classes(result.frame["label"].to_numpy())
        print("labels: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if result.n_rejected:
        for row in result.rejected.itertuples(index=False):
            print(f"rejected: row id={row.id} column={row.column}: {row.reason}")
        return 1
    return 0


def _registry_client(args):
    from mlflow import MlflowClient

    from tasks.tracking import default_tracking_uri

    return MlflowClient(tracking_uri=args.tracking_uri or default_tracking_uri())


def cmd_models(args) -> int:
    from mlflow.exceptions import MlflowException

    client = _registry_client(args)
    try:
        registered = client.get_registered_model(args.name)
    except MlflowException:
        raise UserError(f"no registered model {args.name!r} in {client.tracking_uri}; run `arena-pref train` first") from None
    aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    versions = sorted(client.search_model_versions(f"name = '{args.name}'"), key=lambda v: int(v.version))
    print(f"{'version':>7}  {'aliases':<20} {'oof_log_loss':>12} {'folds':>5}  {'data':<12}  run")
    for v in versions:
        print(f"{v.version:>7}  {','.join(sorted(aliases.get(str(v.version), []))) or '-':<20} "
              f"{v.tags.get('oof_log_loss', '?'):>12} {v.tags.get('n_folds', '?'):>5}  "
              f"{v.tags.get('data_hash', '?')[:12]:<12}  {v.run_id}")
    return 0


def cmd_promote(args) -> int:
    from mlflow.exceptions import MlflowException

    from tasks.registry import promote

    client = _registry_client(args)
    try:
        client.get_model_version(args.name, str(args.version))
    except MlflowException:
        raise UserError(f"{args.name} has no version {args.version}; see `arena-pref models`") from None
    promote(client, args.name, str(args.version), "promoted by hand")
    print(f"{args.name} version {args.version} is now @champion")
    return 0


def cmd_predict(args) -> int:
    from flows.predict import predict

    out = predict(args.model, args.test_csv, args.out, args.tracking_uri)
    print(f"submission written to {out}")
    return 0


def cmd_stack(args) -> int:
    from arena_pref import stack

    state_dir = Path(args.state_dir)
    if args.action == "up":
        state = stack.up(state_dir, gpus=args.gpus, prefect_port=args.prefect_port, mlflow_port=args.mlflow_port)
        print("\n".join(stack.status(state_dir)))
        print("\nIn your shell:")
        print(f"  export PREFECT_API_URL={state.prefect_api_url} MLFLOW_TRACKING_URI={state.mlflow_url}")
        print("  prefect deployment run 'cv-training/gpu' --param config_path=configs/tiny.yaml "
              "--param overrides='[\"data.train_csv=PATH\"]' --watch")
    elif args.action == "down":
        stopped = stack.down(state_dir)
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    else:
        print("\n".join(stack.status(state_dir)))
    return 0


def cmd_ui(args) -> int:
    launcher = PROJECT_ROOT / "mlflow" / "launch.sh"
    os.execv("/bin/bash", ["bash", str(launcher), "--host", args.host, "--port", str(args.port)])
    return 0  # not reached: the launcher replaces this process


# -- entry point --------------------------------------------------------------

TRAIN_EXAMPLES = """examples:
  arena-pref train --config configs/tiny.yaml --set data.train_csv=train.csv --set data.test_csv=test.csv
  arena-pref train --config configs/seed-llama3-8b.yaml --set data.train_csv=/data/train.csv --set cv.n_folds=3 -v"""


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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("arena-pref")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arena-pref", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_overrides(p):
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set train.learning_rate=1e-4 (repeatable)")
        p.add_argument("--force", action="store_true", help="retrain folds that an identical earlier run finished")
        p.add_argument("-v", "--verbose", action="store_true",
                       help="show every log line here (default: progress bars and a summary; the rest goes to a log file)")

    demo = sub.add_parser("demo", help="synthetic data + tiny offline model + full 5-fold cv-training")
    demo.add_argument("--config", default=str(CONFIG_DIR / "tiny.yaml"), help="YAML recipe")
    demo.add_argument("--output-dir", default="outputs/demo", help="data, caches, runs and logs of the demo")
    demo.add_argument("--n-train", type=int, default=1000, help="synthetic train rows")
    demo.add_argument("--n-test", type=int, default=200, help="synthetic test rows")
    demo.add_argument("--signal", type=float, default=0.9, help="share of rows that follow the learnable rule")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    demo.add_argument("--shuffle-labels", action="store_true", help="leakage check: OOF should stay near the prior")
    add_overrides(demo)
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="run cv-training locally", description="Run cv-training locally: "
                           "preflight checks, then ingest, tokenize, K folds, OOF evaluation, registry, submission.",
                           epilog=TRAIN_EXAMPLES)
    train.add_argument("--config", required=True, help="YAML recipe, e.g. configs/tiny.yaml")
    add_overrides(train)
    train.set_defaults(func=cmd_train)

    validate = sub.add_parser("validate", help="check a Kaggle-format CSV; one line per problem")
    validate.add_argument("path", help="the CSV file")
    validate.add_argument("--kind", choices=["train", "test"], default="train", help="train (with labels) or test")
    validate.add_argument("--max-bad-fraction", type=float, default=1.0,
                          help="share of bad rows that still counts as readable (1: list them all)")
    validate.set_defaults(func=cmd_validate)

    def add_registry(p):
        p.add_argument("--name", default="arena-pref", help="registered model name (tracking.registered_model)")
        p.add_argument("--tracking-uri", default=None,
                       help="MLflow store (default: $MLFLOW_TRACKING_URI, else the running local server, else mlflow/mlflow.db)")

    models = sub.add_parser("models", help="registered versions, aliases and metrics")
    add_registry(models)
    models.set_defaults(func=cmd_models)

    promote = sub.add_parser("promote", help="give a registered version the @champion alias")
    promote.add_argument("version", help="the registered version number (see `arena-pref models`)")
    add_registry(promote)
    promote.set_defaults(func=cmd_promote)

    predict = sub.add_parser("predict", help="write a submission from a registered model")
    predict.add_argument("--model", default="models:/arena-pref@champion", help="registered model URI")
    predict.add_argument("--test-csv", required=True, help="Kaggle-format test.csv")
    predict.add_argument("--out", default="submission.csv", help="where the submission goes")
    predict.add_argument("--tracking-uri", default=None,
                         help="MLflow store (default: $MLFLOW_TRACKING_URI, else the running local server, else mlflow/mlflow.db)")
    predict.set_defaults(func=cmd_predict)

    stack = sub.add_parser("stack", help="local Prefect + MLflow servers and GPU workers: up | down | status")
    stack.add_argument("action", choices=["up", "down", "status"], help="start, stop or show the services")
    stack.add_argument("--gpus", type=int, default=None, help="fold workers (default: visible GPUs)")
    stack.add_argument("--state-dir", default=str(PROJECT_ROOT / ".stack"), help="pid files and logs of the services")
    stack.add_argument("--prefect-port", type=int, default=4200, help="Prefect server port")
    stack.add_argument("--mlflow-port", type=int, default=5000, help="MLflow server port")
    stack.set_defaults(func=cmd_stack)

    ui = sub.add_parser("ui", help="MLflow UI on the local store (127.0.0.1)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind")
    ui.add_argument("--port", type=int, default=5000, help="port to bind")
    ui.set_defaults(func=cmd_ui)
    for subparser in sub.choices.values():  # also the subcommands added above by other modules' entries
        subparser.formatter_class = HelpFormatter
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    _apply_env_defaults()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if isinstance(err, _user_errors()):
            print(f"error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
