"""`arena-pref demo | train | validate | show-prompt`: the commands that read data (and run cv-training)."""

from __future__ import annotations

from pathlib import Path

from arena_pref.commands.options import add_overrides, load_run_config
from pref_core.errors import UserError

TRAIN_EXAMPLES = """examples:
  arena-pref train --config configs/tiny.yaml --set data.train_csv=train.csv --set data.test_csv=test.csv
  arena-pref train --config configs/seed-llama3-8b.yaml --set data.train_csv=/data/train.csv --set cv.n_folds=3 -v"""


def register(sub) -> None:
    """demo, train, validate, show-prompt: the commands that read data."""
    demo = sub.add_parser("demo", help="synthetic data + tiny offline model + full 5-fold cv-training")
    demo.add_argument(
        "--config", default="configs/tiny.yaml", help="YAML recipe (a shipped one when no such file here)"
    )
    demo.add_argument("--output-dir", default="outputs/demo", help="data, caches, runs and logs of the demo")
    demo.add_argument("--n-train", type=int, default=1000, help="synthetic train rows")
    demo.add_argument("--n-test", type=int, default=200, help="synthetic test rows")
    demo.add_argument("--signal", type=float, default=0.9, help="share of rows that follow the learnable rule")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    demo.add_argument("--shuffle-labels", action="store_true", help="leakage check: OOF should stay near the prior")
    add_overrides(demo)
    # The demo builds its model locally, so it needs no Hub; like every command it leaves Hub access to the user.
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser(
        "train",
        help="run cv-training locally",
        description="Run cv-training locally: "
        "preflight checks, then ingest, tokenize, K folds, OOF evaluation, registry, submission.",
        epilog=TRAIN_EXAMPLES,
    )
    train.add_argument("--config", required=True, help="YAML recipe, e.g. configs/tiny.yaml")
    add_overrides(train)
    train.set_defaults(func=cmd_train)

    validate = sub.add_parser("validate", help="check a Kaggle-format CSV; one line per problem")
    validate.add_argument("path", help="the CSV file")
    validate.add_argument("--kind", choices=["train", "test"], default="train", help="train (with labels) or test")
    validate.add_argument(
        "--max-bad-fraction",
        type=float,
        default=1.0,
        help="share of bad rows that still counts as readable (1: list them all)",
    )
    validate.set_defaults(func=cmd_validate)

    show = sub.add_parser("show-prompt", help="the text pieces and token ids the model sees for some rows")
    show.add_argument("--config", required=True, help="YAML recipe whose template, truncation and tokenizer to use")
    show.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set prompt.max_length=512 (repeatable)",
    )
    show.add_argument(
        "--id",
        action="append",
        required=True,
        metavar="ROW_ID",
        help="a row id of data.train_csv or data.test_csv (repeatable)",
    )
    show.add_argument("--json", action="store_true", help="one JSON list instead of text")
    show.set_defaults(func=cmd_show_prompt)


def run_training(config, frame, force: bool = False, command: str = "train", argv=None):
    """Preflight, then cv-training inside the command's frame (arena_pref.console): quiet unless -v, with bars and
    a summary on the console and everything else in the run's log file (moved to output_dir/logs/). A Ctrl-C
    stops it cleanly (arena_pref.interruption); `argv` (the command's arguments) is the resume command."""
    from arena_pref import console, interruption
    from arena_pref.preflight import preflight
    from arena_pref.summary import print_summary
    from arena_pref.tasks import workspace

    user_console = frame.console
    preflight(config, user_console)
    log_path = console.log_file_path(workspace.output_root(config), command)
    if not frame.verbose:
        frame.place_log(log_path)
        user_console.print(f"log: {log_path}  (-v shows it here)")
    from arena_pref.flows.cv_training import cv_training
    from arena_pref.tasks.tracking import resolve_tracking_uri

    try:
        with (
            interruption.prefect_server_apart() as server,
            interruption.stop_on_interrupt(argv or [command], user_console.err, server),
        ):
            result = cv_training(config, force=force)
    except interruption.RunStopped:
        raise
    except BaseException as err:
        lost = _tracking_lost(config, argv or [command], log_path) if isinstance(err, Exception) else None
        if lost is not None:  # whatever failed first, the cause is the server: one line, how to go on
            raise lost from err
        if not frame.verbose:
            user_console.err.write(f"the run failed; full log: {log_path}\n")
        raise
    print_summary(result, resolve_tracking_uri(config), user_console)
    return result


def _tracking_lost(config, argv, log_path):
    """TrackingLostError when the run's tracking server no longer answers (it died during the run), else None."""
    from arena_pref import interruption
    from arena_pref.tasks import tracking, workspace

    uri = tracking.resolve_tracking_uri(config)
    problem = tracking.lost_server_problem(uri)
    if problem is None:
        return None
    runs = workspace.output_root(config) / "runs"
    resume = interruption.resume_command(argv)
    return tracking.lost_server_error(uri, problem, "the run", f"on disk in {runs}", resume, log_path)


def cmd_train(args) -> int:
    config = load_run_config(args.config, args.set, args.run_name)
    run_training(config, args.frame, force=args.force, argv=getattr(args, "argv", None))
    return 0


def cmd_demo(args) -> int:
    from pref_core.data.synthetic import shuffle_labels, write_synthetic_csvs

    config = load_run_config(args.config, args.set)  # a bad recipe or --set fails before any data is written
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
    args.console.print(f"synthetic data: {train_csv} ({args.n_train} rows), {test_csv} ({args.n_test} rows)")
    overrides = [f"data.train_csv={train_csv}", f"data.test_csv={test_csv}", f"output_dir={out}", *args.set]
    config = load_run_config(args.config, overrides, args.run_name)
    run_training(config, args.frame, force=args.force, command="demo", argv=getattr(args, "argv", None))
    return 0


def cmd_validate(args) -> int:
    """Exit 0 when every row is valid; a file that cannot be read, or any rejected row, is exit 2 (the error
    contract: something the user must fix), with one line per problem."""
    if not Path(args.path).is_file():  # before pandas is imported
        what = "is a folder, not a CSV file" if Path(args.path).is_dir() else "file not found"
        raise UserError(f"{args.path}: {what}; pass the path of a Kaggle-format CSV")
    from pref_core.data.arena import read_arena_csv
    from pref_core.evaluate.metrics import count_classes

    console = args.console
    result = read_arena_csv(args.path, kind=args.kind, max_bad_fraction=args.max_bad_fraction)
    counts = f"{result.n_read} rows read, {result.n_kept} valid, {result.n_rejected} rejected"
    console.print(f"{args.path}: {counts} ({args.kind} file)")
    if args.kind == "train" and result.n_kept:
        counts = count_classes(result.frame["label"].to_numpy())
        console.print("labels: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if result.n_rejected:
        for row in result.rejected.itertuples(index=False):
            console.print(f"rejected: row id={row.id} column={row.column}: {row.reason}")
        console.error(f"{args.path}: {result.n_rejected} of {result.n_read} rows cannot be used (listed above)")
        return 2
    return 0


def cmd_show_prompt(args) -> int:
    """The token ids the model sees for some rows, through the flow's own ingest and base-model steps. Reads only
    the files it needs: the train file, then the test file only for ids the train file does not hold (a recipe's
    placeholder test path is never opened when the rows are found before)."""
    import json

    import pandas as pd

    from arena_pref.tasks import intake
    from pref_core.config.loading import require_train_csv

    console = args.console
    config = load_run_config(args.config, args.set)
    if config.model.tiny is not None:
        require_train_csv(config, "the tiny model's tokenizer is built from the train texts")
    elif config.data.test_csv is None:
        require_train_csv(config, "the CSV that holds the rows, or data.test_csv")
    wanted = [str(i) for i in args.id]
    frames, train, read = [], None, []
    for kind in ("train", "test"):
        path = config.data.train_csv if kind == "train" else config.data.test_csv
        found = set().union(*(set(f["id"].astype(str)) for f in frames)) if frames else set()
        if path is None or set(wanted) <= found:
            continue
        ingested = intake.ingest_file(config, kind)
        train = ingested if kind == "train" else train
        frames.append(pd.read_parquet(ingested.parsed_path))
        read.append(str(path))
    frame = pd.concat(frames, ignore_index=True).drop_duplicates("id")
    missing = [i for i in wanted if i not in set(frame["id"].astype(str))]
    if missing:
        raise UserError(f"--id: no row with id {', '.join(missing)} in {', '.join(read)}")
    frame = frame.set_index(frame["id"].astype(str)).loc[wanted].reset_index(drop=True)
    from arena_pref.tasks import preparation  # Prefect and the tokenizer: only once the rows are known
    from pref_core.text.prompts import explain_rows
    from pref_core.text.tokenization import load_tokenizer

    tokenizer = load_tokenizer(preparation.prepare_base_model.fn(config, train), config.model.revision)
    try:
        explained = explain_rows(tokenizer, frame, config.prompt, config.model.head, config.model.label_tokens)
    except ValueError as err:  # a template too long for max_length, a label word that is not one token
        raise UserError(str(err)) from None
    if args.json:
        console.print(json.dumps(explained, ensure_ascii=False, indent=1))
        return 0
    for row in explained:
        console.print(
            f"row {row['id']}: {row['n_tokens']} tokens ({row['n_tokens_untruncated']} before truncation), "
            f"head reads position {row['head_position']}" + (f", label {row['label']}" if row["label"] else "")
        )
        if row["label_token_ids"]:
            console.print("  label token ids: " + ", ".join(f"{k}={v}" for k, v in row["label_token_ids"].items()))
        for seg in row["segments"]:
            console.print(f"  [{seg['name']}] {len(seg['ids'])} ids: {seg['text']!r}")
            console.print(f"    {seg['ids']}")
    return 0
