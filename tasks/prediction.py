"""Prediction from the registry: load a registered fold ensemble and write a validated submission."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

from prefect import task

from arena_pref.tasks.preparation import TASK_DEFAULTS
from arena_pref.tasks.tracking import default_tracking_uri
from pref_core.predict.submission import validate_submission

LOGGER = logging.getLogger(__name__)


def download_bundle(model_uri: str, tracking_uri: str, dest: Path) -> Path:
    """Fetch a registered model's bundle folder without unpickling anything."""
    import mlflow
    from arena_pref.tasks.pyfunc_model import BUNDLE_ARTIFACT

    mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))
    return local / "artifacts" / BUNDLE_ARTIFACT


@task(name="predict-submission", **TASK_DEFAULTS)
def predict_submission(
    model_uri: str,
    test_csv: str,
    out: str,
    tracking_uri: Optional[str] = None,
    base_model: Optional[str] = None,
    max_batch_tokens: Optional[int] = None,
    dtype: Optional[str] = None,
) -> str:
    """`base_model`: a local copy of the registered model's base (``--base-model PATH``), checked against the
    fingerprint in the bundle; default: the recorded folder or Hub id at its commit. `max_batch_tokens` and
    `dtype`: see flows.predict."""
    import json

    from arena_pref.tasks.pyfunc_model import predict_parsed
    from pref_core.data.arena import read_arena_csv
    from pref_core.model.fingerprint import locate_base
    from pref_core.predict.members import read_blend_spec

    tracking_uri = tracking_uri or default_tracking_uri()
    test = read_arena_csv(test_csv, kind="test", max_bad_fraction=0.0)  # fail on bad input before loading models
    with tempfile.TemporaryDirectory() as tmp:
        bundle = download_bundle(model_uri, tracking_uri, Path(tmp))
        if read_blend_spec(bundle) is not None:  # a registered blend: every member's base, checked the same way
            base = locate_blend_base(bundle, base_model)
        else:
            base = locate_base(json.loads((bundle / "base_model.json").read_text()), base_model)
        submission = predict_parsed(
            bundle, test.frame, progress=True, base_model=base, max_batch_tokens=max_batch_tokens, dtype=dtype
        )
    validate_submission(submission, test.frame["id"].astype(str).tolist())
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    submission.to_csv(out_path, index=False)
    LOGGER.info("wrote %d predictions from %s to %s", len(submission), model_uri, out_path)
    return str(out_path)


def locate_blend_base(bundle: Path, base_model: Optional[str]) -> Optional[str]:
    """Check every base of a registered blend as a single model's is checked (pref_core.model.fingerprint.
    locate_base); returns `base_model` when given (allowed only when the members share one base), else None (each
    member loads its recorded base)."""
    import json

    from pref_core.model.fingerprint import locate_base
    from pref_core.model.source import BaseModelError
    from pref_core.predict.members import MEMBERS_DIR, base_identity, read_blend_spec

    fingerprints = {}
    for name in read_blend_spec(bundle)["members"]:
        fingerprint = json.loads((bundle / MEMBERS_DIR / name / "base_model.json").read_text())
        fingerprints.setdefault(base_identity(fingerprint), fingerprint)
    if base_model is not None and len(fingerprints) > 1:
        raise BaseModelError(
            f"--base-model {base_model}: this blend's members use {len(fingerprints)} different bases "
            f"({', '.join(f['name_or_path'] for f in fingerprints.values())}); leave --base-model out so that each "
            "member loads its own"
        )
    for fingerprint in fingerprints.values():
        located = locate_base(fingerprint, base_model)
    return located if base_model is not None else None
