"""What a run shows as metrics (scores, at the step they were computed) and what as params (bookkeeping)."""

from __future__ import annotations

import time

from mlflow.entities import Metric

from arena_pref.tasks.training import fold_final_metrics
from mlflow import MlflowClient


def test_a_fold_end_logs_no_second_or_step_0_point_of_what_the_callback_streamed(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("kinds")).info.run_id
    now = int(time.time() * 1000)
    # The Trainer callback streamed validation points at steps 5 and 10 (the last optimizer step).
    client.log_batch(run_id, metrics=[Metric("val_log_loss", v, now, s) for v, s in ((1.0, 5), (0.9, 10))])
    metrics = {
        "val_log_loss": 0.9,
        "val_accuracy": 0.6,
        "val_log_loss_no_tta": 0.95,
        "global_step": 10,
        "train_runtime_s": 3.5,
    }
    step, final = fold_final_metrics(client, run_id, metrics)
    assert step == 10
    assert final == {
        "val_accuracy": 0.6,
        "val_log_loss_no_tta": 0.95,
    }  # val_log_loss already has its point at step 10; bookkeeping is no metric
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in final.items()])
    assert [m.step for m in client.get_metric_history(run_id, "val_log_loss")] == [5, 10]
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [10]
