"""Model registry: register each CV run as a pyfunc version, and promote it by alias when it is better.

Aliases only (`challenger`, `champion`): registry stages are deprecated in MLflow.
Versions trained on different data, or evaluated on different rows, are never
compared silently: the version's `arena_pref.promotion` tag says why it was or
was not promoted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from prefect import task

from arena_pref.tasks import tracking
from arena_pref.tasks.evaluation import OOFOutput
from arena_pref.tasks.preparation import TASK_DEFAULTS, PreparedInputs
from mlflow import MlflowClient
from pref_core.config.loading import dump_config
from pref_core.config.run_key import compute_model_key
from pref_core.config.schema import RunConfig
from pref_core.evaluate import promotion
from pref_core.evaluate.postprocess import RULES_FILE
from pref_core.model.fingerprint import fingerprint_base, pin_base

LOGGER = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_ARTIFACT = "model"


@dataclass
class RegistrationOutput:
    name: str
    version: str
    model_uri: str
    promoted: bool
    reason: str
    registered: bool = True  # False: an identical earlier run's version (`version`) holds this computation
    warnings: tuple[str, ...] = ()  # why the version got no alias (promotion.registration_warnings)

    def in_words(self) -> str:
        """The decision as the console, the summary and the report page say it."""
        from arena_pref.tasks.artifacts import decision_in_words

        return decision_in_words(self.model_uri, self.promoted, self.reason, self.registered, self.warnings)


def _pip_requirements() -> list[str]:
    import importlib.metadata as md

    names = ["torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "pandas", "pydantic", "pyyaml"]
    return [f"{n}=={md.version(n)}" for n in names] + ["arena-pref"]


def build_bundle(
    config: RunConfig,
    client: MlflowClient,
    fold_run_ids: dict[int, str],
    base_model: str,
    dest: Path,
    temperature: float = 1.0,
) -> Path:
    """Assemble config, base reference, calibration and fold adapters (fetched from the fold runs) into `dest`."""
    (dest / "adapters").mkdir(parents=True)
    for fold, run_id in sorted(fold_run_ids.items()):
        downloaded = Path(client.download_artifacts(run_id, "adapter", str(dest / "adapters" / f".fold_{fold}")))
        downloaded.rename(dest / "adapters" / f"fold_{fold}")
        (dest / "adapters" / f".fold_{fold}").rmdir()
    # The bundle loads its base from where the weights were fingerprinted (Hub id + commit, or folder + content
    # hash), so another machine finds or checks the same weights: no tiny-model rebuild, no data needed.
    fingerprint = fingerprint_base(base_model, config.model.revision)
    dump_config(config.model_copy(update={"model": pin_base(config.model, fingerprint)}), dest / "config.yaml")
    (dest / "base_model.json").write_text(json.dumps(fingerprint, indent=2))
    (dest / "calibration.json").write_text(
        json.dumps({"method": config.calibration.method, "temperature": temperature})
    )
    return dest


def write_class_prior(prepared: PreparedInputs, bundle: Path) -> Path:
    """class_prior.json: the training class shares, which an exported bundle gives a test row it cannot read."""
    import pandas as pd

    from pref_core.data.labels import LABEL_COLUMNS
    from pref_core.predict.submission import class_prior

    labels = pd.read_parquet(prepared.train.parsed_path, columns=["label"])["label"].to_numpy()
    path = bundle / "class_prior.json"
    path.write_text(
        json.dumps({"columns": list(LABEL_COLUMNS), "prior": class_prior(labels).tolist(), "n_train": int(len(labels))})
    )
    return path


def _champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def compare_with_champion(client: MlflowClient, name: str, version) -> tuple[bool, str]:
    """Compare `version` with the current champion on the same data and rows; return (promote?, reason)."""
    champion = _champion(client, name)
    return promotion.decide_promotion(
        version.version, version.tags, champion.version if champion else None, champion.tags if champion else {}
    )


def promote(client: MlflowClient, name: str, version: str, reason: str) -> None:
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "arena_pref.promotion", f"champion: {reason}")


@task(name="register-model", **TASK_DEFAULTS)
def register_model(
    config: RunConfig, parent_run_id: str, fold_run_ids: dict[int, str], prepared: PreparedInputs, oof: OOFOutput
) -> RegistrationOutput:
    """Log the fold ensemble as a pyfunc on the parent run, register it, alias it `challenger`, maybe `champion`.

    An identical rerun (a version with the same run key exists) registers nothing and names that version; a
    model no better than the class prior, trained without some class or with its temperature at a bound is
    registered with an `arena_pref.warning` tag and no alias (promotion.decide_registration)."""
    client = tracking.get_client(config)
    name = config.tracking.registered_model
    model_key = compute_model_key(config, prepared.run_key)  # the run key, plus post-processing
    same_key = [v.version for v in client.search_model_versions(f"name = '{name}' and tags.model_key = '{model_key}'")]
    decision = promotion.decide_registration(same_key, _warnings(config, prepared, oof))
    if not decision.register:
        return _already_registered(client, name, decision.existing, parent_run_id, model_key)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = build_bundle(config, client, fold_run_ids, prepared.base_model, Path(tmp) / "bundle", oof.temperature)
        write_class_prior(prepared, bundle)
        if oof.postprocess is not None:  # the rules learned on OOF, applied by predict, export and the bundle
            (bundle / RULES_FILE).write_text(json.dumps(oof.postprocess, indent=2))
        info = log_bundle_model(client, parent_run_id, bundle)
    tags = {
        "oof_log_loss": f"{oof.scores.log_loss:.6f}",
        "n_folds": str(len(fold_run_ids)),
        "n_oof": str(oof.scores.n_oof),
        "temperature": f"{oof.temperature:.6f}",
        "base_model": prepared.base_model,
        "data_hash": prepared.train_hash,
        "run_key": prepared.run_key,
        "model_key": model_key,
        "prior_log_loss": f"{oof.scores.prior_log_loss:.6f}",
        "run_name": client.get_run(parent_run_id).info.run_name or "",
        "recipe": config.tracking.recipe or "",
    }
    return register_logged_model(client, name, info, parent_run_id, tags, decision.warnings)


def log_bundle_model(client: MlflowClient, run_id: str, bundle: Path):
    """Log a bundle folder as the registered model's pyfunc on `run_id` (models from code: nothing pickled)."""
    import mlflow
    from arena_pref.tasks.pyfunc_model import BUNDLE_ARTIFACT, MODEL_SIGNATURE

    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={BUNDLE_ARTIFACT: str(bundle)},
            signature=MODEL_SIGNATURE,
            pip_requirements=_pip_requirements(),
        )


def register_logged_model(
    client: MlflowClient, name: str, info, run_id: str, tags: dict, warnings: Sequence[str] = ()
) -> RegistrationOutput:
    """Register the pyfunc `info` (logged on `run_id`) as a version of `name` with `tags`, alias it `challenger`,
    and `champion` when it beats the champion on the same data and rows (a CV run's fold ensemble, or a blend).
    With `warnings` (promotion.decide_registration's), the version gets an `arena_pref.warning` tag and no alias."""
    warnings = tuple(warnings)
    with contextlib.suppress(MlflowException):  # exists already
        client.create_registered_model(name, description="arena-pref fold ensembles (LoRA adapters over a base LM)")
    version = client.create_model_version(
        name, source=info.model_uri, run_id=run_id, tags=tags, model_id=getattr(info, "model_id", None)
    )
    if warnings:
        promoted, reason = False, "no alias: " + "; ".join(warnings)
        client.set_model_version_tag(name, version.version, "arena_pref.warning", "; ".join(warnings))
        client.set_model_version_tag(name, version.version, "arena_pref.promotion", reason)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        version = client.get_model_version(name, version.version)
        promoted, reason = compare_with_champion(client, name, version)
        if promoted:
            promote(client, name, version.version, reason)
        else:
            client.set_model_version_tag(name, version.version, "arena_pref.promotion", reason)
    tracking.set_tags(
        client, run_id, {"arena_pref.registered_version": version.version, "arena_pref.promotion": reason}
    )
    LOGGER.info("registered %s version %s (%s)", name, version.version, "champion: " + reason if promoted else reason)
    return RegistrationOutput(
        name=name,
        version=str(version.version),
        model_uri=f"models:/{name}/{version.version}",
        promoted=promoted,
        reason=reason,
        warnings=warnings,
    )


def missing_classes(prepared: PreparedInputs) -> list[str]:
    """The label columns (winner_model_a/b, winner_tie) that no kept training row has."""
    import pandas as pd

    from pref_core.data.labels import LABEL_COLUMNS

    labels = set(pd.read_parquet(prepared.train.parsed_path, columns=["label"])["label"].astype(int))
    return [column for k, column in enumerate(LABEL_COLUMNS) if k not in labels]


def _warnings(config: RunConfig, prepared: PreparedInputs, oof: OOFOutput) -> list[str]:
    scores = oof.scores
    return promotion.registration_warnings(
        scores.log_loss,
        scores.prior_log_loss,
        missing_classes(prepared),
        temperature=scores.fitted_temperature if config.calibration.method == "temperature" else None,
        calibrated_log_loss=scores.calibrated_log_loss,
    )


def _already_registered(
    client: MlflowClient, name: str, existing: str, parent_run_id: str, model_key: str
) -> RegistrationOutput:
    """An identical rerun: nothing registered, the run points at the version that holds its computation."""
    reason = f"identical to version {existing} (same config and data, model key {model_key[:12]}): nothing registered"
    tracking.set_tags(
        client, parent_run_id, {"arena_pref.registered_version": existing, "arena_pref.promotion": reason}
    )
    LOGGER.info("%s %s", name, reason)
    return RegistrationOutput(
        name=name,
        version=str(existing),
        model_uri=f"models:/{name}/{existing}",
        promoted=False,
        reason=reason,
        registered=False,
    )
