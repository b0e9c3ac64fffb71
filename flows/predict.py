"""The `predict` flow: a registered model (e.g. models:/arena-pref@champion) over a test CSV -> submission.csv."""

from __future__ import annotations

from typing import Optional

from prefect import flow

from arena_pref.tasks.prediction import predict_submission


@flow(name="predict", log_prints=True)
def predict(
    model_uri: str = "models:/arena-pref@champion",
    test_csv: str = "outputs/demo/data/test.csv",
    out: str = "outputs/submission.csv",
    tracking_uri: Optional[str] = None,
    base_model: Optional[str] = None,
    max_batch_tokens: Optional[int] = None,
    dtype: Optional[str] = None,
) -> str:
    """A submission from a registered model. Defaults: the champion, the demo's test file, outputs/submission.csv
    (paths relative to the project root on the worker); `tracking_uri` defaults to $MLFLOW_TRACKING_URI;
    `base_model`: a local copy of the base model (checked against the registered fingerprint);
    `max_batch_tokens`: padded tokens per batch instead of train.eval_batch_size rows; `dtype`: auto, fp16, bf16
    or fp32 instead of the run's model.dtype."""
    return predict_submission(
        model_uri, test_csv, out, tracking_uri, base_model, max_batch_tokens=max_batch_tokens, dtype=dtype
    )
