"""`arena-pref models | promote | predict | export`: the commands on registered models."""

from __future__ import annotations

import contextlib
from typing import Iterator

from arena_pref.commands.options import add_tracking_uri
from pref_core.errors import UserError


def register(sub) -> None:
    """models, promote, predict, export: the commands on registered models."""

    def add_registry(p):
        p.add_argument("--name", default="arena-pref", help="registered model name (tracking.registered_model)")
        add_tracking_uri(p)

    models = sub.add_parser(
        "models", help="registered versions: aliases, OOF and prior log loss, data hash, run name, warnings"
    )
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
    add_tracking_uri(predict)
    predict.add_argument(
        "--base-model",
        default=None,
        metavar="PATH",
        help="a local copy of the base model (checked against the one the model was trained on)",
    )
    add_prediction_options(predict)
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="write a registered model as an offline bundle (a Kaggle dataset)")
    export.add_argument("model_uri", nargs="?", default="models:/arena-pref@champion", help="registered model URI")
    export.add_argument("--out", required=True, help="new folder for the bundle")
    export.add_argument(
        "--folds",
        choices=["ensemble", "average"],
        default="ensemble",
        help="ensemble: keep the K fold adapters and average probabilities; average: one adapter "
        "with the mean weight delta (K times faster)",
    )
    export.add_argument("--base-model-dir", default=None, help="copy this base model folder into the bundle")
    add_tracking_uri(export)
    export.set_defaults(func=cmd_export)


def add_prediction_options(p) -> None:
    """--max-batch-tokens and --dtype, as the Kaggle bundle's predict.py takes them."""
    from pref_core.config.choices import MODEL_DTYPES

    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        metavar="N",
        help="batches of at most N padded tokens (rows x longest row), longest rows first, so the first batch is "
        "the largest (default: train.eval_batch_size rows per batch)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        metavar="|".join(MODEL_DTYPES),
        help="weights' precision (default: the run's model.dtype; auto = bf16 on compute capability 8.0+, fp16 "
        "below, fp32 on CPU)",
    )


def check_prediction_options(args) -> None:
    """--dtype and --max-batch-tokens, in one line before anything loads."""
    from pref_core.config.choices import MODEL_DTYPES

    if args.dtype is not None and args.dtype not in MODEL_DTYPES:
        raise UserError(f"--dtype {args.dtype}: use one of {', '.join(MODEL_DTYPES)}")
    if args.max_batch_tokens is not None and args.max_batch_tokens < 1:
        raise UserError(f"--max-batch-tokens {args.max_batch_tokens}: must be a positive number of tokens, e.g. 16384")


def _tracking_uri(args) -> str:
    """--tracking-uri, else the default store (arena_pref.tasks.store), known without importing mlflow."""
    from arena_pref.tasks.store import default_tracking_uri

    return args.tracking_uri or default_tracking_uri()


@contextlib.contextmanager
def store_errors(tracking_uri: str) -> Iterator[None]:
    """An MLflow error about the store or the registry (what the probe could not tell in advance: another kind of
    store, a server that failed meanwhile) as one line naming the store; the traceback goes to the log."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        first = (str(getattr(err, "message", None) or err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"MLflow store {tracking_uri}: {first[:300]}") from None


def cmd_models(args) -> int:
    from arena_pref import tracking_probe

    uri = _tracking_uri(args)
    tracking_probe.check_reachable(uri)
    tracking_probe.check_registered_model(uri, args.name)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    with store_errors(uri):
        registered = client.get_registered_model(args.name)
        versions = sorted(client.search_model_versions(f"name = '{args.name}'"), key=lambda v: int(v.version))
    aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    versions = sorted(client.search_model_versions(f"name = '{args.name}'"), key=lambda v: int(v.version))
    for line in models_table(versions, aliases).splitlines():
        args.console.print(line)
    if registered.aliases and "champion" in registered.aliases:  # MLflow's own clients need the store's URI
        args.console.print("")
        args.console.print(
            f"MLflow's clients: MLFLOW_TRACKING_URI={uri} mlflow models predict -m models:/{args.name}@champion "
            "-i test.csv -t csv --env-manager local"
        )
    return 0


def models_table(versions, aliases: dict[str, list[str]]) -> str:
    """One line per registered version: aliases, OOF and prior log loss, folds, data hash, run name (else recipe,
    else run id); a version registered with a warning says so under its line."""
    lines = [f"{'version':>7}  {'aliases':<18} {'oof':>7} {'prior':>7} {'folds':>5}  {'data':<12}  run"]
    for v in versions:
        tags = v.tags or {}
        lines.append(
            f"{v.version:>7}  {','.join('@' + a for a in sorted(aliases.get(str(v.version), []))) or '-':<18} "
            f"{_short(tags.get('oof_log_loss')):>7} {_short(tags.get('prior_log_loss')):>7} "
            f"{tags.get('n_folds', '?'):>5}  {tags.get('data_hash', '?')[:12]:<12}  "
            f"{tags.get('run_name') or tags.get('recipe') or v.run_id}"
        )
        if tags.get("arena_pref.warning"):
            lines.append(f"{'':>9}warning: {tags['arena_pref.warning']}")
    return "\n".join(lines)


def _short(value) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return "?"


def cmd_promote(args) -> int:
    from arena_pref import tracking_probe

    uri = _tracking_uri(args)
    tracking_probe.check_reachable(uri)
    tracking_probe.check_registered_model(uri, args.name)
    tracking_probe.check_version(uri, args.name, str(args.version))
    from arena_pref.tasks.registry import promote
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    with store_errors(uri):
        client.get_model_version(args.name, str(args.version))
        promote(client, args.name, str(args.version), "promoted by hand")
    args.console.print(f"{args.name} version {args.version} is now @champion")
    return 0


def cmd_predict(args) -> int:
    """Every input checked before the flow starts (the output path, the test file as `validate --kind test`, the
    model URI in the registry, the base model), then the predict flow; the submission is written whole or not at
    all (a temporary name, renamed when complete)."""
    from pathlib import Path

    from arena_pref import tracking_probe
    from pref_core.publish import check_output_file

    check_prediction_options(args)
    uri = _tracking_uri(args)
    check_output_file(args.out, "--out")
    if not Path(args.test_csv).is_file():  # before pandas is imported
        raise UserError(f"--test-csv {args.test_csv}: file not found; pass the Kaggle-format test.csv")
    tracking_probe.check_model_uri(uri, args.model)  # a read-only probe: no MLflow import
    from pref_core.data.arena import read_arena_csv

    read_arena_csv(args.test_csv, kind="test", max_bad_fraction=0.0)
    from arena_pref.flows.predict import predict
    from arena_pref.preflight import check_predict_base

    with store_errors(uri):
        check_predict_base(args.model, uri, args.base_model)
        out = predict(
            args.model,
            args.test_csv,
            args.out,
            uri,
            args.base_model,
            max_batch_tokens=args.max_batch_tokens,
            dtype=args.dtype,
        )
    args.console.print(f"submission written to {out}")
    return 0


def cmd_export(args) -> int:
    """The output folder (new, writable, not being written by another export) and the model URI in the registry,
    checked before anything is downloaded; the bundle appears whole or not at all."""
    from arena_pref import tracking_probe
    from pref_core.publish import check_new_folder, exclusive_target

    uri = _tracking_uri(args)
    check_new_folder(args.out, "--out")
    with exclusive_target(args.out, "--out"):
        tracking_probe.check_model_uri(uri, args.model_uri)
        from arena_pref.export import export_bundle

        with store_errors(uri):
            out = export_bundle(args.model_uri, args.out, uri, folds=args.folds, base_model_dir=args.base_model_dir)
    args.console.print(
        f"bundle written to {out}: upload it as a Kaggle dataset and run `python {out}/predict.py --help`"
    )
    return 0
