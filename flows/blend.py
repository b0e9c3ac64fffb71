"""The `blend` flow: registered models trained on the same folds -> one blend fitted on their OOF rows (a `blend`
MLflow run), optionally registered as a version that predict, export and the Kaggle bundle run."""

from __future__ import annotations

from typing import Optional

from prefect import flow

from arena_pref.tasks.blending import BlendRunOutput, fit_blend_run, register_blend, resolve_members


@flow(name="blend", log_prints=True)
def blend(
    model_uris: list[str],
    tracking_uri: str,
    method: str = "weights",
    register_version: bool = False,
    registered_model: Optional[str] = None,
    postprocess_mode: str = "auto",
    min_rows: int = 30,
    near_identical: bool = True,
) -> BlendRunOutput:
    """Blend `model_uris` (models:/NAME/VERSION, models:/NAME@ALIAS or cv-training run ids) by `method` (mean,
    weights, stack); with `register_version`, add it to `registered_model` (default: the first member's
    registered model)."""
    members = resolve_members(model_uris, tracking_uri)
    fitted = fit_blend_run(members, method, tracking_uri, postprocess_mode, min_rows, near_identical)
    if register_version:
        name = registered_model or members[0].model_uri.removeprefix("models:/").rsplit("/", 1)[0]
        fitted.registration = register_blend(members, fitted, tracking_uri, name)
    return fitted
