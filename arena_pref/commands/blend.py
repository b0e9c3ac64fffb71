"""`arena-pref blend MODEL_URI MODEL_URI [...]`: one blend of registered models trained on the same folds."""

from __future__ import annotations

from arena_pref.commands.options import add_tracking_uri
from pref_core.config.choices import BLEND_METHODS
from pref_core.errors import UserError

BLEND_EXAMPLES = """examples:
  arena-pref blend models:/arena-pref/1 models:/arena-pref/2
  arena-pref blend models:/arena-pref/1 models:/arena-pref/2 models:/arena-pref@champion --method stack --register

Every member must be trained on the same data with the same cv.n_folds and cv.seed (every row in the same fold).
The blend's OOF is honest: the weights scoring fold k's rows are fitted on the other folds' OOF rows only."""


def register(sub) -> None:
    """blend: fit a blend of registered models on their OOF rows, log it, optionally register it."""
    p = sub.add_parser(
        "blend",
        help="blend registered models trained on the same folds (OOF-fitted, honest OOF)",
        description="Blend registered models trained on the same data and folds: weights (or a stacker) fitted on "
        "their out-of-fold predictions, nested over the folds, reported against each member and their plain mean, "
        "logged as an MLflow run of kind blend; --register adds it to the registry as a model that predict, "
        "`mlflow models predict`, export and the Kaggle bundle run.",
        epilog=BLEND_EXAMPLES,
    )
    p.add_argument(
        "model_uris",
        nargs="+",
        metavar="MODEL_URI",
        help="models:/NAME/VERSION, models:/NAME@ALIAS or a cv-training run id (two or more)",
    )
    p.add_argument(
        "--method",
        choices=BLEND_METHODS,
        default="weights",
        help="mean: equal weights; weights: non-negative weights summing to 1 that minimise OOF log loss; stack: "
        "multinomial logistic regression on the members' log-probabilities (regularisation by inner CV)",
    )
    p.add_argument("--register", action="store_true", help="register the blend as a model version")
    p.add_argument("--name", default=None, help="registered model of --register (default: the first member's)")
    p.add_argument(
        "--postprocess",
        choices=["auto", "off"],
        default="auto",
        help="learn rules for rows the model cannot judge (identical or empty answers) on the blend's OOF rows, "
        "kept per kind only where the nested OOF improves",
    )
    p.add_argument("--output-dir", default="outputs", help="where the log file goes (logs/)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every log line here")
    add_tracking_uri(p)
    p.set_defaults(func=cmd_blend)


def check_members(model_uris: list[str], tracking_uri: str) -> None:
    """Before Prefect starts: two or more members, each a cv-training run's registered version, all on the same
    data and folds (the first difference in one line, exit 2)."""
    import tempfile
    from pathlib import Path

    from arena_pref.tasks.blending import _member_oof, resolve_members
    from mlflow import MlflowClient
    from pref_core.evaluate.blend import BlendMembersError, check_members
    from pref_core.evaluate.blending import blend_member

    if len(model_uris) < 2:
        raise BlendMembersError(
            f"a blend needs at least 2 members, got {len(model_uris)}; fix: name two or more models"
        )
    members = resolve_members.fn(model_uris, tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        oofs = [_member_oof(client, member, tracking_uri, Path(tmp)) for member in members]
    check_members([blend_member(m) for m in oofs])


def cmd_blend(args) -> int:
    if len(args.model_uris) < 2:  # before anything heavy is imported
        raise UserError(
            f"a blend needs at least 2 members, got {len(args.model_uris)}; fix: name two or more registered models"
        )
    import os
    from pathlib import Path

    from arena_pref import console
    from arena_pref.environment import NO_PROGRESS_BARS
    from arena_pref.summary import registry_decision, server_links
    from arena_pref.tasks.store import default_tracking_uri
    from arena_pref.tasks.workspace import OUTPUT_DIR_ENV

    tracking_uri = args.tracking_uri or default_tracking_uri()
    from arena_pref import tracking_probe

    tracking_probe.check_reachable(tracking_uri)
    for model_uri in args.model_uris:
        tracking_probe.check_model_uri(tracking_uri, model_uri)  # a read-only probe: no MLflow import
    saved = {key: os.environ.get(key) for key in NO_PROGRESS_BARS}
    os.environ.update(NO_PROGRESS_BARS)  # the members' OOF downloads show no bars on the console
    try:
        check_members(args.model_uris, tracking_uri)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    log_path = console.log_file_path(Path(os.environ.get(OUTPUT_DIR_ENV) or args.output_dir).resolve(), "blend")
    frame, user_console = args.frame, args.console
    if not frame.verbose:
        frame.place_log(log_path)
        user_console.print(f"log: {log_path}  (-v shows it here)")
    from arena_pref.flows.blend import blend

    result = blend(
        args.model_uris,
        tracking_uri,
        method=args.method,
        register_version=args.register,
        registered_model=args.name,
        postprocess_mode=args.postprocess,
    )
    for line in result.lines:
        user_console.print(line)
    for line in server_links(tracking_uri, result.run_id):
        user_console.print(line)
    if result.registration is not None:
        user_console.print(f"registry: {registry_decision(result.registration)}")
    return 0
