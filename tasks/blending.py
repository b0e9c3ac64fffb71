"""Tasks of `arena-pref blend`: find the members in the registry, fit the blend on their OOF rows, log it as a
parent MLflow run of kind `blend`, and register it as a version that predict, export and the Kaggle bundle run.

The fitting is pref_core.evaluate.blending; here are the registry lookups, the downloads and the logging.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
from mlflow.exceptions import MlflowException
from prefect import task

from arena_pref.tasks import tracking
from arena_pref.tasks.preparation import TASK_DEFAULTS
from arena_pref.tasks.registry import RegistrationOutput, log_bundle_model, register_logged_model
from mlflow import MlflowClient
from pref_core.evaluate import plots
from pref_core.evaluate.blend import BlendMembersError
from pref_core.evaluate.blending import (
    BLEND_OOF_FILE,
    MemberOOF,
    blend_metrics,
    fit_member_blend,
)
from pref_core.evaluate.postprocess import RULES_FILE, postprocess_metrics, postprocess_params
from pref_core.predict.members import BLEND_FILE, MEMBERS_DIR

LOGGER = logging.getLogger(__name__)

OOF_FILE = "oof_predictions.parquet"  # what a cv-training run logs (tasks/evaluation.py)
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w.-]+))/?$")


@dataclass
class MemberRun:
    """A blend member found in the registry: the URI given, a unique path-safe name, its version and run."""

    uri: str
    name: str  # <registered model>-v<version>
    model_uri: str  # models:/<registered model>/<version>
    run_id: str  # the cv-training parent run that registered it
    experiment_id: str


@dataclass
class BlendRunOutput:
    """What fit-blend logged: the blend run, the report lines, the final parameters and the rules."""

    run_id: str
    method: str
    lines: list[str]
    oof_log_loss: float
    params: dict  # blend.json's final_params: what a registered blend applies
    data_hash: str
    n_folds: int
    n_oof: int
    postprocess: Optional[dict] = None
    registration: Optional[RegistrationOutput] = field(default=None)


def _version_of(client: MlflowClient, uri: str):
    """The registered version a models:/ URI or a cv-training run id names (BlendMembersError otherwise)."""
    match = _MODELS_URI.match(uri)
    try:
        if match and match["version"]:
            return client.get_model_version(match["name"], match["version"])
        if match:
            return client.get_model_version_by_alias(match["name"], match["alias"])
    except MlflowException:
        raise BlendMembersError(
            f"{uri}: no such registered version in {client.tracking_uri}; fix: pick one from `arena-pref models`"
        ) from None
    try:
        run = client.get_run(uri)
    except MlflowException:
        raise BlendMembersError(
            f"{uri}: neither a models:/NAME/VERSION (or models:/NAME@ALIAS) URI nor a run id in "
            f"{client.tracking_uri}; fix: pick versions from `arena-pref models`"
        ) from None
    name, version = run.data.params.get("tracking.registered_model"), run.data.tags.get("arena_pref.registered_version")
    if not (name and version):
        raise BlendMembersError(
            f"{uri}: this run registered no model version (it did not finish?); fix: blend registered versions "
            "(`arena-pref models`)"
        )
    return client.get_model_version(name, version)


@task(name="resolve-blend-members", **TASK_DEFAULTS)
def resolve_members(uris: list[str], tracking_uri: str) -> list[MemberRun]:
    """Each URI's registered version and its training run; refuses anything but a cv-training run's version."""
    client = MlflowClient(tracking_uri=tracking_uri)
    members = []
    for uri in uris:
        version = _version_of(client, uri)
        run = client.get_run(version.run_id)
        kind = run.data.tags.get(tracking.TAG_KIND)
        if kind != "cv":
            raise BlendMembersError(
                f"{uri} (version {version.version} of {version.name}) is a {kind or 'unknown'} model, not a "
                "cv-training run's; fix: blend the versions that training runs registered (a blend of blends "
                "is not supported: name its members instead)"
            )
        members.append(
            MemberRun(
                uri,
                f"{version.name}-v{version.version}",
                f"models:/{version.name}/{version.version}",
                run.info.run_id,
                run.info.experiment_id,
            )
        )
    return members


def _member_oof(client: MlflowClient, member: MemberRun, tracking_uri: str, tmp: Path) -> MemberOOF:
    """The member's OOF table, training-data hash and temperature (its registered calibration.json: what its
    predict applies)."""
    import mlflow
    from arena_pref.tasks.pyfunc_model import BUNDLE_ARTIFACT

    run = client.get_run(member.run_id)
    try:
        path = client.download_artifacts(member.run_id, OOF_FILE, str(tmp / member.name))
    except (MlflowException, OSError):
        raise BlendMembersError(
            f"{member.uri}: its run {member.run_id} has no {OOF_FILE}; fix: blend versions of finished cv-training runs"
        ) from None
    mlflow.set_tracking_uri(tracking_uri)
    calibration = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{member.model_uri}/artifacts/{BUNDLE_ARTIFACT}/calibration.json",
        dst_path=str(tmp / member.name / "calibration"),
    )
    temperature = float(json.loads(Path(calibration).read_text())["temperature"])
    return MemberOOF(member.name, pd.read_parquet(path), run.data.tags.get("arena_pref.train_hash", ""), temperature)


@task(name="fit-blend", **TASK_DEFAULTS)
def fit_blend_run(
    members: list[MemberRun],
    method: str,
    tracking_uri: str,
    postprocess_mode: str = "auto",
    min_rows: int = 30,
    near_identical: bool = True,
) -> BlendRunOutput:
    """Fit the blend on the members' OOF rows (nested over their folds) and log it as a `blend` run: members,
    weights per fold and final, honest OOF, mean, blend minus best member, plots, rules for rows the model
    cannot judge."""
    client = MlflowClient(tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        oofs = [_member_oof(client, member, tracking_uri, Path(tmp)) for member in members]
        fit = fit_member_blend(
            oofs, method, postprocess=postprocess_mode == "auto", min_rows=min_rows, near_identical=near_identical
        )
        run = client.create_run(
            members[0].experiment_id,
            run_name="blend",
            tags={
                tracking.TAG_KIND: "blend",
                "arena_pref.train_hash": oofs[0].data_hash,
                "arena_pref.blend_members": json.dumps([m.model_uri for m in members]),
            },
        )
        try:
            _log_blend(client, run.info.run_id, members, fit, Path(tmp), postprocess_mode, min_rows, near_identical)
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
    report = fit.result.report
    LOGGER.info("blend run %s: %s", run.info.run_id, "; ".join(fit.lines()))
    return BlendRunOutput(
        run_id=run.info.run_id,
        method=method,
        lines=fit.lines(),
        oof_log_loss=report.blend_log_loss,
        params=fit.result.final_params,
        data_hash=oofs[0].data_hash,
        n_folds=len(fit.result.fold_params),
        n_oof=report.n_rows,
        postprocess=fit.postprocess.to_dict() if fit.postprocess else None,
    )


def _log_blend(client, run_id, members, fit, folder: Path, postprocess_mode, min_rows, near_identical) -> None:
    report = fit.result.report
    tracking.log_params(
        client,
        run_id,
        {
            "blend.method": fit.result.method,
            "blend.members": [m.model_uri for m in members],
            "blend.member_runs": [m.run_id for m in members],
            "postprocess.mode": postprocess_mode,
            "postprocess.min_rows": min_rows,
            "postprocess.near_identical": near_identical,
            **(postprocess_params(fit.postprocess) if fit.postprocess is not None else {}),
        },
    )
    metrics = blend_metrics(fit)
    if fit.postprocess is not None:
        metrics.update(postprocess_metrics(fit.postprocess))
    tracking.log_metrics(client, run_id, metrics)
    blend_json = folder / BLEND_FILE
    blend_json.write_text(json.dumps({**fit.result.to_dict(), "member_uris": [m.model_uri for m in members]}, indent=2))
    client.log_artifact(run_id, str(blend_json))
    oof_path = folder / BLEND_OOF_FILE
    fit.oof.to_parquet(oof_path, index=False)
    client.log_artifact(run_id, str(oof_path))
    if fit.postprocess is not None:
        rules = folder / RULES_FILE
        rules.write_text(json.dumps(fit.postprocess.to_dict(), indent=2))
        client.log_artifact(run_id, str(rules))
    from pref_core.data.labels import LABEL_COLUMNS

    figures = {
        "plots/blend_log_loss.png": plots.plot_blend_log_loss(
            report.member_log_loss, report.mean_log_loss, report.blend_log_loss, report.method
        ),
        "plots/reliability.png": plots.plot_reliability(fit.oof["label"], fit.oof[list(LABEL_COLUMNS)].to_numpy()),
    }
    for name, figure in figures.items():
        client.log_figure(run_id, figure, name)
    client.set_terminated(run_id, "FINISHED")


@task(name="register-blend", **TASK_DEFAULTS)
def register_blend(
    members: list[MemberRun], fitted: BlendRunOutput, tracking_uri: str, registered_model: str
) -> RegistrationOutput:
    """The blend as a registered version: every member's registered bundle under members/<name>/, the final
    blend parameters (blend.json) and the rules learned on the blend's OOF (postprocess.json)."""
    from arena_pref.tasks.prediction import download_bundle

    client = MlflowClient(tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        for member in members:
            source = download_bundle(member.model_uri, tracking_uri, Path(tmp) / "download" / member.name)
            # A member's own rules were learned on its probabilities, not the blend's: the blend has its own.
            shutil.copytree(source, bundle / MEMBERS_DIR / member.name, ignore=shutil.ignore_patterns(RULES_FILE))
        spec = {
            "format": 1,
            "method": fitted.method,
            "members": [m.name for m in members],
            "member_uris": [m.model_uri for m in members],
            "final_params": fitted.params,
            "blend_run": fitted.run_id,
        }
        (bundle / BLEND_FILE).write_text(json.dumps(spec, indent=2))
        prior = bundle / MEMBERS_DIR / members[0].name / "class_prior.json"
        if prior.is_file():  # the members share their training data, so its class shares
            shutil.copy2(prior, bundle / "class_prior.json")
        if fitted.postprocess is not None:
            (bundle / RULES_FILE).write_text(json.dumps(fitted.postprocess, indent=2))
        info = log_bundle_model(client, fitted.run_id, bundle)
    tags = {
        "oof_log_loss": f"{fitted.oof_log_loss:.6f}",
        "n_folds": str(fitted.n_folds),
        "n_oof": str(fitted.n_oof),
        "data_hash": fitted.data_hash,
        "kind": "blend",
        "blend_method": fitted.method,
        "blend_members": ",".join(m.model_uri for m in members),
    }
    return register_logged_model(client, registered_model, info, fitted.run_id, tags)
