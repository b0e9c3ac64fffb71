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
    from arena_pref.export import ExportError
    from arena_pref.stack import StackError
    from pref_core.bundle import BundleError

    return (UserError, StackError, ExportError, BundleError, ConfigError, DataValidationError, TrackingUnavailableError, FoldFailedError,
            IncompleteOOFError, FileNotFoundError, PermissionError)


# -- commands -----------------------------------------------------------------

def _load(config_path: str | Path, overrides: Sequence[str]):
    from pref_core.config import load_config

    return load_config(config_path, overrides)


def _print_summary(result: dict, tracking_uri: str) -> None:
    metrics = result["metrics"]
    print()
    print("fold  val_log_loss")
    for fold, loss in sorted(result["fold_log_loss"].items()):
        print(f"{fold:>4}  {loss:.4f}")
    print(f"OOF log loss {metrics['oof_log_loss']:.4f}   class prior {metrics['prior_log_loss']:.4f}   "
          f"accuracy {metrics['oof_accuracy']:.3f}   rows {metrics['n_oof']}")
    if "temperature" in metrics:
        print(f"after temperature scaling (T={metrics['temperature']:.3f}): {metrics['oof_log_loss_calibrated']:.4f}")
    print(f"registered {result['model_uri']}: {result['promotion']}")
    print(f"OOF predictions: {result['oof_path']}")
    if result.get("submission_path"):
        print(f"submission:      {result['submission_path']}")
    print(f"MLflow: parent run {result['parent_run_id']} in {tracking_uri}")
    print("Open the MLflow UI with `arena-pref ui` (http://127.0.0.1:5000).")


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
    preparation.ingest.fn(config, "train")
    if config.data.test_csv is not None:
        preparation.ingest.fn(config, "test")
    if config.distill.teacher_csv is not None:
        from pref_core.data import read_teacher_probs

        read_teacher_probs(config.distill.teacher_csv)


def run_training(config, force: bool = False) -> dict:
    from flows.cv_training import cv_training
    from tasks.tracking import resolve_tracking_uri

    preflight(config)
    result = cv_training(config, force=force)
    _print_summary(result, resolve_tracking_uri(config))
    return result


def cmd_train(args) -> int:
    config = _load(args.config, args.set)
    run_training(config, force=args.force)
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
    run_training(config, force=args.force)
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


def cmd_export(args) -> int:
    from arena_pref.export import export_bundle

    out = export_bundle(args.model_uri, args.out, args.tracking_uri, folds=args.folds, base_model_dir=args.base_model_dir)
    print(f"bundle written to {out}: upload it as a Kaggle dataset and run `python {out}/predict.py --help`")
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

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arena-pref", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add_overrides(p):
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set train.learning_rate=1e-4 (repeatable)")
        p.add_argument("--force", action="store_true", help="retrain folds that an identical earlier run finished")

    demo = sub.add_parser("demo", help="synthetic data + tiny offline model + full 5-fold cv-training")
    demo.add_argument("--config", default=str(CONFIG_DIR / "tiny.yaml"))
    demo.add_argument("--output-dir", default="outputs/demo")
    demo.add_argument("--n-train", type=int, default=1000)
    demo.add_argument("--n-test", type=int, default=200)
    demo.add_argument("--signal", type=float, default=0.9, help="share of rows that follow the learnable rule")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--shuffle-labels", action="store_true", help="leakage check: OOF should stay near the prior")
    add_overrides(demo)
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="run cv-training locally")
    train.add_argument("--config", required=True)
    add_overrides(train)
    train.set_defaults(func=cmd_train)

    validate = sub.add_parser("validate", help="check a Kaggle-format CSV; one line per problem")
    validate.add_argument("path")
    validate.add_argument("--kind", choices=["train", "test"], default="train")
    validate.add_argument("--max-bad-fraction", type=float, default=1.0,
                          help="share of bad rows that still counts as readable (default 1: list them all)")
    validate.set_defaults(func=cmd_validate)

    def add_registry(p):
        p.add_argument("--name", default="arena-pref", help="registered model name (tracking.registered_model)")
        p.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, the local server or store")

    models = sub.add_parser("models", help="registered versions, aliases and metrics")
    add_registry(models)
    models.set_defaults(func=cmd_models)

    promote = sub.add_parser("promote", help="give a registered version the @champion alias")
    promote.add_argument("version")
    add_registry(promote)
    promote.set_defaults(func=cmd_promote)

    predict = sub.add_parser("predict", help="write a submission from a registered model")
    predict.add_argument("--model", default="models:/arena-pref@champion")
    predict.add_argument("--test-csv", required=True)
    predict.add_argument("--out", default="submission.csv")
    predict.add_argument("--tracking-uri", default=None)
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="write a registered model as an offline bundle (a Kaggle dataset)")
    export.add_argument("model_uri", nargs="?", default="models:/arena-pref@champion")
    export.add_argument("--out", required=True, help="new folder for the bundle")
    export.add_argument("--folds", choices=["ensemble", "average"], default="ensemble",
                        help="ensemble: keep the K fold adapters and average probabilities; average: one adapter "
                             "with the mean weight delta (K times faster)")
    export.add_argument("--base-model-dir", default=None, help="copy this base model folder into the bundle")
    export.add_argument("--tracking-uri", default=None)
    export.set_defaults(func=cmd_export)

    stack = sub.add_parser("stack", help="local Prefect + MLflow servers and GPU workers: up | down | status")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--gpus", type=int, default=None, help="fold workers (default: visible GPUs)")
    stack.add_argument("--state-dir", default=str(PROJECT_ROOT / ".stack"))
    stack.add_argument("--prefect-port", type=int, default=4200)
    stack.add_argument("--mlflow-port", type=int, default=5000)
    stack.set_defaults(func=cmd_stack)

    ui = sub.add_parser("ui", help="MLflow UI on the local store (127.0.0.1)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)
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
