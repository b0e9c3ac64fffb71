"""Everything that can fail fast, checked before Prefect starts: the base model and what it needs from this machine,
a writable output folder, a reachable tracking store, valid and splittable data, the device plan, the teacher run.

Each check fails with one line (a UserError, exit code 2) or prints warnings; the heavy libraries are imported
inside the checks that need them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from pref_core.errors import UserError


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
    from pref_core.config.loading import require_train_csv

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
        raise UserError(
            f"output_dir: cannot write to {root} ({err.strerror or err}); "
            "choose a writable folder with --set output_dir=PATH"
        ) from None
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


def check_split(config, parsed_path) -> None:
    """Refuse (exit 2) a train file that cannot be split into cv.n_folds prompt-grouped folds; warn when the
    split works but scores poorly (a missing or rare class, tiny validation sets)."""
    import pandas as pd

    from pref_core.data.folds import check_splittable

    warnings = check_splittable(pd.read_parquet(parsed_path, columns=["id", "prompt", "label"]), config.cv.n_folds)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)


def check_predict_base(model_uri: str, tracking_uri: Optional[str], base_model: Optional[str]) -> None:
    """Before the predict flow: the registered model's base (or --base-model) is on this machine or reachable.
    Reads only the bundle's base_model.json; when even that cannot be fetched, the flow reports why."""
    import json
    import tempfile

    import mlflow
    from arena_pref.tasks.pyfunc_model import BUNDLE_ARTIFACT
    from arena_pref.tasks.tracking import default_tracking_uri
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
