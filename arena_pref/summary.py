"""The console summary of a cv-training run: the fold table, OOF scores, the registry's decision, where things are."""

from __future__ import annotations


def registry_decision(registration) -> str:
    """The registry's decision (a RegistrationOutput) in plain words (the first version becoming @champion is not
    a failure)."""
    return registration.in_words()


def ui_hint(tracking_uri: str, run_id: str) -> str:
    """How to open the MLflow UI on this run's experiment: the runs table sorted by OOF log loss, scores as columns."""
    from arena_pref.tasks import tracking

    try:
        from mlflow import MlflowClient

        experiment_id = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id
        page = tracking.runs_table_url("http://127.0.0.1:5000", experiment_id)
    except Exception:  # noqa: BLE001 (the summary must not fail on a link)
        page = "http://127.0.0.1:5000"
    return f"open the MLflow UI: arena-pref ui   (then {page})"


def server_links(tracking_uri: str, run_id: str) -> list[str]:
    """Browser links to the run and to the runs table on a tracking server, else where the run lives."""
    if tracking_uri.startswith(("http://", "https://")):
        from arena_pref.tasks import tracking

        try:
            from mlflow import MlflowClient

            experiment_id = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id
            return [
                f"MLflow: {tracking.run_url(tracking_uri, experiment_id, run_id)}",
                f"runs by OOF log loss: {tracking.runs_table_url(tracking_uri, experiment_id)}",
            ]
        except Exception:  # noqa: BLE001 (the summary must not fail on a link)
            pass
    return [f"MLflow: run {run_id} in {tracking_uri}"]


def fold_devices(tracking_uri: str, fold_run_ids: dict) -> dict:
    """The device slot each fold ran on (cv.max_parallel), from its MLflow run's tag; none for in-process folds."""
    from arena_pref.tasks.tracking import TAG_DEVICE

    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        return {fold: client.get_run(run_id).data.tags.get(TAG_DEVICE) for fold, run_id in fold_run_ids.items()}
    except Exception:  # noqa: BLE001 (the summary must not fail on a lookup)
        return {}


def print_summary(result, tracking_uri: str, out=None) -> None:
    """The console summary of a CVTrainingResult: the fold table, OOF scores, registry, where things are."""
    write = (lambda text="": print(text)) if out is None else out.print
    scores = result.oof.scores
    devices = fold_devices(tracking_uri, result.fold_run_ids)
    write()
    write("fold  log loss  accuracy   rows  device")
    for fold, loss in sorted(result.oof.fold_log_loss.items()):
        acc = f"{scores.fold_accuracy[fold]:.3f}" if fold in scores.fold_accuracy else "-"
        rows = scores.fold_rows.get(fold, "-")
        write(f"{fold:>4}  {loss:>8.4f}  {acc:>8}  {rows:>5}  {devices.get(fold) or '-':>6}")
    write(f"OOF log loss {scores.log_loss:.4f}, accuracy {scores.accuracy:.3f} over {scores.n_oof} rows")
    if scores.calibrated_log_loss is not None:
        write(f"calibrated OOF log loss {scores.calibrated_log_loss:.4f} (temperature {scores.temperature:.3f})")
    write(f"class prior log loss {scores.prior_log_loss:.4f} (always predicting the training class shares)")
    if result.oof.postprocess_summary:
        write(result.oof.postprocess_summary)
    write(f"registry: {registry_decision(result.registration)}")
    if result.submission_path:
        write(f"submission: {result.submission_path}")
    write(f"OOF predictions: {result.oof.oof_path}")
    if getattr(result, "report_path", None):
        write(f"report page: {result.report_path}")
    for line in server_links(tracking_uri, result.parent_run_id):
        write(line)
    if not tracking_uri.startswith(("http://", "https://")):  # a server's links above already open the UI
        write(ui_hint(tracking_uri, result.parent_run_id))
