"""Everything that can fail fast, checked before Prefect starts, cheapest first: a writable output folder, valid
and splittable data, a reachable tracking store (before Prefect, MLflow or torch is imported); then the device plan,
the base model and what it needs from this machine, the teacher run.

Each check fails with one line (a UserError, exit code 2) or prints warnings on the console; the heavy libraries
are imported inside the checks that need them, after the light ones passed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Optional

from pref_core.errors import UserError


def _warner(console) -> Callable[[str], None]:
    if console is not None:
        return console.warn
    return lambda text: print(f"warning: {text}", file=sys.stderr)


def check_base_model(config, console=None) -> None:
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
        _warner(console)(warning)


def check_writable_folder(folder: Path, what: str) -> None:
    """`folder` exists and is writable, or can be created where its nearest existing parent is writable; nothing is
    created here. One line naming `what` (the option to change) otherwise."""
    folder = Path(folder).expanduser().resolve()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        reason = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"{existing} is not writable"
    else:
        return
    raise UserError(f"{what}: cannot write to {folder} ({reason}); choose a writable folder with --set {what}=PATH")


def preflight(config, console=None) -> None:
    """Everything that can fail fast, checked before Prefect starts: writable output, valid and splittable data,
    a reachable tracking store, the device plan, the base model, the teacher run. A bad file is reported here in
    one line per problem, with no orchestration traceback; the validated rows are cached, so the flow's ingest is
    a cache hit."""
    from pref_core.config.loading import require_train_csv

    require_train_csv(config)
    from arena_pref import tracking_probe
    from arena_pref.tasks import workspace
    from arena_pref.tasks.store import default_tracking_uri

    check_writable_folder(workspace.output_root(config), "output_dir")
    tracking_uri = config.tracking.uri or default_tracking_uri()
    tracking_probe.check_reachable(tracking_uri)  # a typo in the URI, a server that is down: before reading data
    from arena_pref.tasks import intake  # pandas: only once the cheap checks passed

    train = intake.ingest_file(config, "train")
    if config.data.test_csv is not None:
        intake.ingest_file(config, "test")
    if config.distill.teacher_csv is not None:
        from pref_core.data.teachers import read_teacher_probs

        read_teacher_probs(config.distill.teacher_csv)
    check_split(config, train.parsed_path, console)
    if tracking_probe.scheme_of(tracking_uri) == "sqlite":  # its folder, created only once the data is known good
        tracking_probe.check_reachable(tracking_uri, writable=True)
    if config.cv.execution == "subprocess":
        from pref_core.train.devices import plan_device_slots

        try:
            plan_device_slots(config.cv.max_parallel, config.train.num_processes)
        except ValueError as err:
            raise UserError(str(err)) from None
    check_base_model(config, console)  # imports transformers and torch: after the checks that need neither
    if config.distill.teacher_run is not None:  # same data and folds as the teacher, before any training
        from arena_pref.tasks import tracking
        from arena_pref.tasks.distillation import check_teacher_run

        check_teacher_run(config, train.data_hash, tracking.get_client(config))
    if config.distill.pseudo_from is not None:
        check_pseudo_labels(config, train)


def check_pseudo_labels(config, train) -> None:
    """Before any training: the unlabelled rows (no label columns, rows present, ids unused by the training and
    extra rows) and the teacher of distill.pseudo_from (a cv-training run on the same data and folds, every fold
    finished). The checked rows are cached, so the flow's ingest is a cache hit."""
    from arena_pref.tasks import preparation, pseudo_labels, tracking

    extra = preparation.ingest_extra.fn(config, train)
    pseudo_labels.ingest_unlabeled.fn(config, train, extra)
    pseudo_labels.resolve_teacher(config, train.data_hash, tracking.get_client(config))


def check_split(config, parsed_path, console=None) -> None:
    """Refuse (exit 2) a train file that cannot be split into cv.n_folds prompt-grouped, stratified folds that each
    train on every class present; warn when the split works but scores poorly (a missing or rare class, tiny
    validation sets)."""
    import pandas as pd

    from pref_core.data.folds import check_fold_classes, check_splittable

    frame = pd.read_parquet(parsed_path, columns=["id", "prompt", "label"])
    warnings = check_splittable(frame, config.cv.n_folds)
    check_fold_classes(frame, config.cv.n_folds, config.cv.seed, config.cv.fold_indices())
    for line in warnings:
        _warner(console)(line)


def check_predict_base(model_uri: str, tracking_uri: Optional[str], base_model: Optional[str]) -> None:
    """Before the predict flow: the registered model's base (or --base-model) is on this machine or reachable.
    Reads only the bundle's base_model.json; when even that cannot be fetched, the flow reports why."""
    import json
    import tempfile

    import mlflow
    from arena_pref.tasks.pyfunc_model import BUNDLE_ARTIFACT
    from arena_pref.tasks.store import default_tracking_uri
    from pref_core.model.fingerprint import check_base_available

    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model_uri.rstrip('/')}/artifacts/{BUNDLE_ARTIFACT}/base_model.json", dst_path=tmp
            )
            fingerprint = json.loads(Path(path).read_text())
        except Exception:  # noqa: BLE001 (an unknown model or store: the flow's own error names it)
            return
    check_base_available(fingerprint, base_model)
