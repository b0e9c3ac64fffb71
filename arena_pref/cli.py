"""`arena-pref`: the command line of the pipeline (demo, train, validate, models, promote, predict, stack, ui, config).

User errors (bad config, bad data, unreachable tracking store, a failed fold)
end with one line per problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from arena_pref import environment
from pref_core.errors import UserError


# -- commands -----------------------------------------------------------------

def _load(config_path: str | Path, overrides: Sequence[str]):
    """The config a --config names: the file, else the shipped recipe of that name (arena_pref.tasks.resources)."""
    from arena_pref.tasks.resources import find_config
    from pref_core.config.schema import load_config

    return load_config(find_config(config_path), overrides)


def registry_decision(registration) -> str:
    """The registry's decision (a RegistrationOutput) in plain words (the first version becoming @champion is not
    a failure)."""
    from arena_pref.tasks.artifacts import decision_in_words

    return decision_in_words(registration.model_uri, registration.promoted, registration.reason)


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


def _fold_devices(tracking_uri: str, fold_run_ids: dict) -> dict:
    """The device slot each fold ran on (cv.max_parallel), from its MLflow run's tag; none for in-process folds."""
    from arena_pref.tasks.training import TAG_DEVICE

    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        return {fold: client.get_run(run_id).data.tags.get(TAG_DEVICE) for fold, run_id in fold_run_ids.items()}
    except Exception:  # the summary must not fail on a lookup
        return {}


def _print_summary(result, tracking_uri: str, out=None) -> None:
    """The console summary of a CVTrainingResult: the fold table, OOF scores, registry, where things are."""
    write = (lambda text="": print(text)) if out is None else out.print
    scores = result.oof.scores
    devices = _fold_devices(tracking_uri, result.fold_run_ids)
    write()
    write("fold  log loss  accuracy   rows  device")
    for fold, loss in sorted(result.oof.fold_log_loss.items()):
        acc = f"{scores.fold_accuracy[fold]:.3f}" if fold in scores.fold_accuracy else "-"
        rows = scores.fold_rows.get(fold, "-")
        write(f"{fold:>4}  {loss:>8.4f}  {acc:>8}  {rows:>5}  {devices.get(fold) or '-':>6}")
    write(f"OOF log loss {scores.log_loss:.4f}, accuracy {scores.accuracy:.3f} over {scores.n_oof} rows")
    if scores.calibrated_log_loss is not None:
        write(f"calibrated OOF log loss {scores.calibrated_log_loss:.4f} (temperature {scores.temperature:.3f})")
    write(f"class prior log loss {scores.prior_log_loss:.4f} (always predicting the training class shares)")
    write(f"registry: {registry_decision(result.registration)}")
    if result.submission_path:
        write(f"submission: {result.submission_path}")
    write(f"OOF predictions: {result.oof.oof_path}")
    write(f"MLflow: {_run_link(tracking_uri, result.parent_run_id)}")
    write("open the MLflow UI: arena-pref ui   (then http://127.0.0.1:5000)")


def check_base_model(config) -> None:
    """The base model and what it needs from this machine, before anything is created: a Hub id resolves to
    its config and tokenizer at model.revision (the commit is logged), a folder must hold them; a gated,
    missing or unreachable model, or a quantized config without bitsandbytes/CUDA, is one line (exit 2).
    Fallbacks the run will take (flash-attn missing) are printed as warnings."""
    import logging

    from pref_core.model.source import resolve_base_model
    from pref_core.train.checks import check_runtime

    if config.model.name_or_path is not None:
        source = resolve_base_model(config.model.name_or_path, config.model.revision)
        logging.getLogger(__name__).info("base model: %s", source)
    for warning in check_runtime(config.model, config.train):
        print(f"warning: {warning}", file=sys.stderr)


def preflight(config) -> None:
    """Everything that can fail fast, checked before Prefect starts: the base model, writable output,
    reachable tracking store, valid data. A bad file is reported here in one line per problem, with no
    orchestration traceback; the validated rows are cached, so the flow's ingest is a cache hit."""
    from pref_core.config.schema import require_train_csv

    require_train_csv(config)
    check_base_model(config)  # before the output folder or any tracking store exists, and before slow imports
    from arena_pref.tasks import preparation, tracking, workspace

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
        from pref_core.data.teachers import read_teacher_probs

        read_teacher_probs(config.distill.teacher_csv)
    check_split(config, train.parsed_path)
    if config.cv.execution == "subprocess":
        from pref_core.train.devices import plan_device_slots

        try:
            plan_device_slots(config.cv.max_parallel, config.train.num_processes)
        except ValueError as err:
            raise UserError(str(err)) from None
    if config.distill.teacher_run is not None:  # same data and folds as the teacher, before any training
        from arena_pref.tasks.distillation import check_teacher_run

        check_teacher_run(config, train.data_hash, tracking.get_client(config))


def check_split(config, parsed_path) -> None:
    """Refuse (exit 2) a train file that cannot be split into cv.n_folds prompt-grouped folds; warn when the
    split works but scores poorly (a missing or rare class, tiny validation sets)."""
    import pandas as pd

    from pref_core.data.folds import check_splittable

    warnings = check_splittable(pd.read_parquet(parsed_path, columns=["id", "prompt", "label"]), config.cv.n_folds)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)


def run_training(config, force: bool = False, verbose: bool = True, command: str = "train"):
    """Preflight, then cv-training; quiet unless `verbose`: bars and a summary, everything else in a log file."""
    from arena_pref import console
    from arena_pref.tasks import workspace

    preflight(config)
    log_path = console.log_file_path(workspace.output_root(config), command)
    if not verbose:
        print(f"log: {log_path}  (-v shows it here)", flush=True)
    with console.quiet_run(log_path, verbose=verbose) as user_console:
        from arena_pref.flows.cv_training import cv_training
        from arena_pref.tasks.tracking import resolve_tracking_uri

        try:
            result = cv_training(config, force=force)
        except BaseException:
            if not verbose:
                user_console.err.write(f"the run failed; full log: {log_path}\n")
            raise
        _print_summary(result, resolve_tracking_uri(config), user_console)
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
    from pref_core.data.synthetic import shuffle_labels, write_synthetic_csvs

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
    from pref_core.data.arena import read_arena_csv
    from pref_core.evaluate.metrics import count_classes

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

    from arena_pref.tasks.tracking import default_tracking_uri

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

    from arena_pref.tasks.registry import promote

    client = _registry_client(args)
    try:
        client.get_model_version(args.name, str(args.version))
    except MlflowException:
        raise UserError(f"{args.name} has no version {args.version}; see `arena-pref models`") from None
    promote(client, args.name, str(args.version), "promoted by hand")
    print(f"{args.name} version {args.version} is now @champion")
    return 0


def check_predict_base(model_uri: str, tracking_uri: Optional[str], base_model: Optional[str]) -> None:
    """Before the predict flow: the registered model's base (or --base-model) is on this machine or reachable.
    Reads only the bundle's base_model.json; when even that cannot be fetched, the flow reports why."""
    import json
    import tempfile

    import mlflow

    from pref_core.model.fingerprint import check_base_available
    from arena_pref.tasks.pyfunc_model import BUNDLE_ARTIFACT
    from arena_pref.tasks.tracking import default_tracking_uri

    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model_uri.rstrip('/')}/artifacts/{BUNDLE_ARTIFACT}/base_model.json", dst_path=tmp)
            fingerprint = json.loads(Path(path).read_text())
        except Exception:  # noqa: BLE001 (an unknown model or store: the flow's own error names it)
            return
    check_base_available(fingerprint, base_model)


def cmd_predict(args) -> int:
    from arena_pref.flows.predict import predict

    check_predict_base(args.model, args.tracking_uri, args.base_model)
    out = predict(args.model, args.test_csv, args.out, args.tracking_uri, args.base_model)
    print(f"submission written to {out}")
    return 0


def cmd_show_prompt(args) -> int:
    """The token ids the model sees for some rows, through the flow's own ingest and base-model steps."""
    import json

    import pandas as pd

    from pref_core.text.prompts import explain_rows
    from pref_core.text.tokenization import load_tokenizer
    from arena_pref.tasks import preparation

    from pref_core.config.schema import require_train_csv

    config = _load(args.config, args.set)
    if config.model.tiny is not None:
        require_train_csv(config, "the tiny model's tokenizer is built from the train texts")
    elif config.data.test_csv is None:
        require_train_csv(config, "the CSV that holds the rows, or data.test_csv")
    frames, train = [], None
    for kind in ("train", "test"):
        if (config.data.train_csv if kind == "train" else config.data.test_csv) is not None:
            ingested = preparation.ingest.fn(config, kind)
            train = ingested if kind == "train" else train
            frames.append(pd.read_parquet(ingested.parsed_path))
    frame = pd.concat(frames, ignore_index=True).drop_duplicates("id")
    wanted = [str(i) for i in args.id]
    missing = [i for i in wanted if i not in set(frame["id"].astype(str))]
    if missing:
        raise UserError(f"--id: no row with id {', '.join(missing)} in "
                        f"{', '.join(str(p) for p in (config.data.train_csv, config.data.test_csv) if p)}")
    frame = frame.set_index(frame["id"].astype(str)).loc[wanted].reset_index(drop=True)
    tokenizer = load_tokenizer(preparation.prepare_base_model.fn(config, train), config.model.revision)
    try:
        explained = explain_rows(tokenizer, frame, config.prompt, config.model.head, config.model.label_tokens)
    except ValueError as err:  # a template too long for max_length, a label word that is not one token
        raise UserError(str(err)) from None
    if args.json:
        print(json.dumps(explained, ensure_ascii=False, indent=1))
        return 0
    for row in explained:
        print(f"row {row['id']}: {row['n_tokens']} tokens ({row['n_tokens_untruncated']} before truncation), "
              f"head reads position {row['head_position']}" + (f", label {row['label']}" if row["label"] else ""))
        if row["label_token_ids"]:
            print("  label token ids: " + ", ".join(f"{k}={v}" for k, v in row["label_token_ids"].items()))
        for seg in row["segments"]:
            print(f"  [{seg['name']}] {len(seg['ids'])} ids: {seg['text']!r}")
            print(f"    {seg['ids']}")
    return 0


def cmd_export(args) -> int:
    from arena_pref.export import export_bundle

    out = export_bundle(args.model_uri, args.out, args.tracking_uri, folds=args.folds, base_model_dir=args.base_model_dir)
    print(f"bundle written to {out}: upload it as a Kaggle dataset and run `python {out}/predict.py --help`")
    return 0


def cmd_stack(args) -> int:
    from arena_pref import stack

    state_dir = Path(args.state_dir) if args.state_dir else None
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
    from arena_pref.tasks import resources

    launcher = resources.shipped_file("mlflow/launch.sh")
    # The store is the project folder's (never the installed package's); mlflow is the one beside this python.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    os.execve("/bin/bash", ["bash", str(launcher), "--store", str(resources.store_dir()), "--host", args.host,
                            "--port", str(args.port)], env)
    return 0  # not reached: the launcher replaces this process


def cmd_config_show(args) -> int:
    """The resolved, validated config as YAML: defaults filled in, overrides applied."""
    from pref_core.config.schema import config_yaml

    print(config_yaml(_load(args.config, args.set)), end="")
    return 0


def cmd_config_fields(args) -> int:
    """Every leaf field of the config: dotted name, type, default, then its description, indented."""
    import textwrap

    from pref_core.config.fields import describe_fields

    prefix = (args.prefix or "").rstrip(".")
    docs = [d for d in describe_fields() if not prefix or d.name == prefix or d.name.startswith(prefix + ".")]
    if not docs:
        raise UserError(f"no config field or section {args.prefix!r}; `arena-pref config fields` lists them all")
    # A few choice types are long (lr_scheduler): they push their own default right rather than every row's.
    name_width, type_width = max(len(d.name) for d in docs), min(24, max(len(d.type) for d in docs))
    print(f"{'field':<{name_width}}  {'type':<{type_width}}  default")
    for doc in docs:
        neutral = "  (result-neutral: not in the run key)" if doc.result_neutral else ""
        print(f"{doc.name:<{name_width}}  {doc.type:<{type_width}}  {doc.default}{neutral}")
        for line in textwrap.wrap(doc.description, width=96):
            print(f"    {line}")
    return 0


def add_config_commands(sub) -> None:
    """`arena-pref config show|fields`: what a config resolves to, and what each field means."""
    config = sub.add_parser("config", help="show a resolved config, or list every config field")
    actions = config.add_subparsers(dest="config_command", required=True, metavar="{show,fields}",
                                    help="show: the resolved YAML; fields: each field's type, default and description")
    show = actions.add_parser("show", help="print the resolved, validated config as YAML", formatter_class=HelpFormatter)
    show.add_argument("config", help="YAML recipe, e.g. configs/tiny.yaml")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config field, e.g. --set train.learning_rate=1e-4 (repeatable)")
    show.set_defaults(func=cmd_config_show)
    fields = actions.add_parser("fields", help="list each field: dotted name, type, default, description",
                                formatter_class=HelpFormatter)
    fields.add_argument("prefix", nargs="?", default=None, help="only this field or section, e.g. train or cv.folds")
    fields.set_defaults(func=cmd_config_fields)


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


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.learning_rate=1e-4 (repeatable)")
    p.add_argument("--force", action="store_true", help="retrain folds that an identical earlier run finished")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show every log line here (default: progress bars and a summary; the rest goes to a log file)")


def _add_tracking_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else the running local server, else "
                        "mlflow/mlflow.db in the project folder)")


def _add_run_commands(sub) -> None:
    """demo, train, validate, show-prompt: the commands that read data."""
    demo = sub.add_parser("demo", help="synthetic data + tiny offline model + full 5-fold cv-training")
    demo.add_argument("--config", default="configs/tiny.yaml", help="YAML recipe (a shipped one when no such file here)")
    demo.add_argument("--output-dir", default="outputs/demo", help="data, caches, runs and logs of the demo")
    demo.add_argument("--n-train", type=int, default=1000, help="synthetic train rows")
    demo.add_argument("--n-test", type=int, default=200, help="synthetic test rows")
    demo.add_argument("--signal", type=float, default=0.9, help="share of rows that follow the learnable rule")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    demo.add_argument("--shuffle-labels", action="store_true", help="leakage check: OOF should stay near the prior")
    _add_overrides(demo)
    # The demo builds its model locally, so it needs no Hub; like every command it leaves Hub access to the user.
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="run cv-training locally", description="Run cv-training locally: "
                           "preflight checks, then ingest, tokenize, K folds, OOF evaluation, registry, submission.",
                           epilog=TRAIN_EXAMPLES)
    train.add_argument("--config", required=True, help="YAML recipe, e.g. configs/tiny.yaml")
    _add_overrides(train)
    train.set_defaults(func=cmd_train)

    validate = sub.add_parser("validate", help="check a Kaggle-format CSV; one line per problem")
    validate.add_argument("path", help="the CSV file")
    validate.add_argument("--kind", choices=["train", "test"], default="train", help="train (with labels) or test")
    validate.add_argument("--max-bad-fraction", type=float, default=1.0,
                          help="share of bad rows that still counts as readable (1: list them all)")
    validate.set_defaults(func=cmd_validate)

    show = sub.add_parser("show-prompt", help="the text pieces and token ids the model sees for some rows")
    show.add_argument("--config", required=True, help="YAML recipe whose template, truncation and tokenizer to use")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config field, e.g. --set prompt.max_length=512 (repeatable)")
    show.add_argument("--id", action="append", required=True, metavar="ROW_ID",
                      help="a row id of data.train_csv or data.test_csv (repeatable)")
    show.add_argument("--json", action="store_true", help="one JSON list instead of text")
    show.set_defaults(func=cmd_show_prompt)


def _add_registry_commands(sub) -> None:
    """models, promote, predict, export: the commands on registered models."""

    def add_registry(p):
        p.add_argument("--name", default="arena-pref", help="registered model name (tracking.registered_model)")
        _add_tracking_uri(p)

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
    _add_tracking_uri(predict)
    predict.add_argument("--base-model", default=None, metavar="PATH",
                         help="a local copy of the base model (checked against the one the model was trained on)")
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="write a registered model as an offline bundle (a Kaggle dataset)")
    export.add_argument("model_uri", nargs="?", default="models:/arena-pref@champion", help="registered model URI")
    export.add_argument("--out", required=True, help="new folder for the bundle")
    export.add_argument("--folds", choices=["ensemble", "average"], default="ensemble",
                        help="ensemble: keep the K fold adapters and average probabilities; average: one adapter "
                             "with the mean weight delta (K times faster)")
    export.add_argument("--base-model-dir", default=None, help="copy this base model folder into the bundle")
    _add_tracking_uri(export)
    export.set_defaults(func=cmd_export)


def _add_service_commands(sub) -> None:
    """stack, ui: the local servers."""
    stack = sub.add_parser("stack", help="local Prefect + MLflow servers and GPU workers: up | down | status")
    stack.add_argument("action", choices=["up", "down", "status"], help="start, stop or show the services")
    stack.add_argument("--gpus", type=int, default=None, help="fold workers (default: visible GPUs)")
    stack.add_argument("--state-dir", default=None,
                       help="pid files and logs of the services (default: .stack in the project folder: "
                            "$ARENA_PREF_ROOT, the checkout, else the current folder)")
    stack.add_argument("--prefect-port", type=int, default=4200, help="Prefect server port")
    stack.add_argument("--mlflow-port", type=int, default=5000, help="MLflow server port")
    stack.set_defaults(func=cmd_stack)

    ui = sub.add_parser("ui", help="MLflow UI on the local store (127.0.0.1)")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind")
    ui.add_argument("--port", type=int, default=5000, help="port to bind")
    ui.set_defaults(func=cmd_ui)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arena-pref", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_commands(sub)
    _add_registry_commands(sub)
    _add_service_commands(sub)
    add_config_commands(sub)
    for subparser in sub.choices.values():  # also the subcommands added above by other modules' entries
        subparser.formatter_class = HelpFormatter
    return parser


def apply_environment(args: argparse.Namespace) -> dict[str, str]:
    """Every command's environment defaults (arena_pref.environment.PRODUCT; Hub access stays the user's) and
    Prefect's local history in the project folder, set before prefect, mlflow or transformers are imported:
    they read these at import time."""
    from arena_pref.tasks import resources

    return environment.apply_defaults(*environment.PRODUCT, environment.local_prefect(resources.project_root()))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    apply_environment(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError, PermissionError) as err:  # what the user can fix: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
