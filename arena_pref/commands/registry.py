"""`arena-pref models | promote | predict | export`: the commands on registered models."""

from __future__ import annotations

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


def _registry_client(args):
    from arena_pref.tasks.tracking import default_tracking_uri
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=args.tracking_uri or default_tracking_uri())


def cmd_models(args) -> int:
    from mlflow.exceptions import MlflowException

    client = _registry_client(args)
    try:
        registered = client.get_registered_model(args.name)
    except MlflowException:
        raise UserError(
            f"no registered model {args.name!r} in {client.tracking_uri}; run `arena-pref train` first"
        ) from None
    aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    versions = sorted(client.search_model_versions(f"name = '{args.name}'"), key=lambda v: int(v.version))
    print(models_table(versions, aliases))
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
    from mlflow.exceptions import MlflowException

    from arena_pref.tasks.registry import promote

    client = _registry_client(args)
    try:
        client.get_model_version(args.name, str(args.version))
    except MlflowException:
        raise UserError(f"{args.name} has no version {args.version}; see `arena-pref models`") from None
    promote(client, args.name, str(args.version), "promoted by hand")
    print(f"{args.name} version {args.version} is now @champion")
    return 0


def cmd_predict(args) -> int:
    from arena_pref.flows.predict import predict
    from arena_pref.preflight import check_predict_base

    check_prediction_options(args)
    check_predict_base(args.model, args.tracking_uri, args.base_model)
    out = predict(
        args.model,
        args.test_csv,
        args.out,
        args.tracking_uri,
        args.base_model,
        max_batch_tokens=args.max_batch_tokens,
        dtype=args.dtype,
    )
    print(f"submission written to {out}")
    return 0


def cmd_export(args) -> int:
    from arena_pref.export import export_bundle

    out = export_bundle(
        args.model_uri, args.out, args.tracking_uri, folds=args.folds, base_model_dir=args.base_model_dir
    )
    print(f"bundle written to {out}: upload it as a Kaggle dataset and run `python {out}/predict.py --help`")
    return 0
