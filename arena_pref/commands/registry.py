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
    add_tracking_uri(predict)
    predict.add_argument(
        "--base-model",
        default=None,
        metavar="PATH",
        help="a local copy of the base model (checked against the one the model was trained on)",
    )
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
    console = args.console
    console.print(f"{'version':>7}  {'aliases':<20} {'oof_log_loss':>12} {'folds':>5}  {'data':<12}  run")
    for v in versions:
        console.print(
            f"{v.version:>7}  {','.join(sorted(aliases.get(str(v.version), []))) or '-':<20} "
            f"{v.tags.get('oof_log_loss', '?'):>12} {v.tags.get('n_folds', '?'):>5}  "
            f"{v.tags.get('data_hash', '?')[:12]:<12}  {v.run_id}"
        )
    return 0


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
        out = predict(args.model, args.test_csv, args.out, uri, args.base_model)
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
