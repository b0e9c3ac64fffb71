"""Issue 28 end to end on the tiny model: two runs with different heads on the same folds (train rows seeded with
identical and empty answers) -> post-processing learned on their OOF and applied in the submission and the
registered model; `arena-pref blend --register` -> `predict` and the exported bundle's predict.py agree; a student
with pseudo-labels from a teacher run reads teacher fold k only (and fails when it is handed another fold's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arena_pref.cli import main as cli_main
from mlflow import MlflowClient
from pref_core.data.labels import LABEL_COLUMNS
from tests.factories import tiny_recipe_config
from tests.test_export import blocked_env  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

TIE, B_WINS = [0, 0, 1], [0, 1, 0]


def seeded_frames(seed: int = 11):
    """Synthetic train/test rows; 30 train rows get identical answers (ties) and 30 an empty answer a (b wins),
    and the test file gets 4 of each."""
    from pref_core.data.synthetic import make_synthetic_frames

    train, test = make_synthetic_frames(n_train=160, n_test=30, signal=0.9, seed=seed)
    for frame, n in ((train, 30), (test, 4)):
        same, empty = frame.index[:n], frame.index[n : 2 * n]
        frame.loc[same, "response_b"] = frame.loc[same, "response_a"]
        frame.loc[empty, "response_a"] = [json.dumps([""] * len(json.loads(p))) for p in frame.loc[empty, "prompt"]]
        if "winner_tie" in frame:
            frame.loc[same, list(LABEL_COLUMNS)] = TIE
            frame.loc[empty, list(LABEL_COLUMNS)] = B_WINS
    return train, test


@pytest.fixture(scope="module")
def runs(prefect_harness, tmp_path_factory):
    """Two registered 2-fold runs on the same data and folds: label_token head (v1) and classifier head (v2)."""
    from arena_pref.flows.cv_training import cv_training

    tmp = tmp_path_factory.mktemp("signal")
    train, test = seeded_frames()
    (tmp / "data").mkdir()
    train_csv, test_csv = tmp / "data" / "train.csv", tmp / "data" / "test.csv"
    train.to_csv(train_csv, index=False)
    test.to_csv(test_csv, index=False)
    common = ("cv.execution=in_process", "cv.n_folds=2", "train.num_epochs=1", "postprocess.min_rows=10")
    configs = [
        tiny_recipe_config(tmp, train_csv, *common, test_csv=test_csv),
        tiny_recipe_config(tmp, train_csv, *common, "model.head=classifier", test_csv=test_csv),
    ]
    results = [cv_training(config) for config in configs]
    return {
        "tmp": tmp,
        "uri": configs[0].tracking.uri,
        "train_csv": train_csv,
        "test_csv": test_csv,
        "configs": configs,
        "results": results,
        "model_uris": [f"models:/arena-pref/{r.registration.version}" for r in results],
    }


def predict_cli(model_uri: str, runs, out: Path) -> pd.DataFrame:
    args = ["predict", "--model", model_uri, "--test-csv", str(runs["test_csv"]), "--out", str(out)]
    assert cli_main([*args, "--tracking-uri", runs["uri"]]) == 0
    return pd.read_csv(out, dtype={"id": str})


def test_postprocessing_is_learned_on_oof_and_applied_in_submission_and_registered_model(runs, tmp_path):
    result, config = runs["results"][1], runs["configs"][1]
    client = MlflowClient(runs["uri"])
    rules = json.loads(
        Path(client.download_artifacts(result.parent_run_id, "postprocess.json", str(tmp_path))).read_text()
    )
    assert rules["kinds"]["identical"]["n_rows"] >= 30 and rules["kinds"]["a_empty"]["n_rows"] >= 30
    assert result.oof.postprocess_summary.startswith("post-processing")
    data = client.get_run(result.parent_run_id).data
    metrics = data.metrics
    # Bookkeeping is a param, the scores are metrics (scores first).
    assert int(data.params["postprocess_rows_identical"]) == rules["kinds"]["identical"]["n_rows"]
    assert not [key for key in metrics if key.startswith(("postprocess_rows_", "postprocess_on_"))]
    enabled = [kind for kind, rule in rules["kinds"].items() if rule["enabled"]]
    # The learned rules never make the nested OOF worse: a kind is on only where it improves it.
    assert metrics["oof_log_loss_postprocessed"] <= metrics["oof_log_loss_postprocess_before"] + 1e-12

    # The flow's submission and the registered model's predict apply the same rules to the same rows.
    flow_sub = pd.read_csv(result.submission_path, dtype={"id": str})
    ours = predict_cli(runs["model_uris"][1], runs, tmp_path / "sub.csv")
    assert ours["id"].tolist() == flow_sub["id"].tolist()
    np.testing.assert_allclose(ours[list(LABEL_COLUMNS)], flow_sub[list(LABEL_COLUMNS)], atol=1e-5)
    test = pd.read_csv(runs["test_csv"], dtype=str)
    same = test["response_a"] == test["response_b"]
    if "identical" in enabled:
        expected = rules["kinds"]["identical"]["probs"]
        np.testing.assert_allclose(
            ours.loc[same.to_numpy(), list(LABEL_COLUMNS)], [expected] * int(same.sum()), atol=1e-6
        )
    assert config.postprocess.mode == "auto"


def test_blend_registers_a_model_that_predict_and_the_bundle_agree_on(runs, blocked_env, tmp_path, capsys):  # noqa: F811
    from tests.test_export import base_model_dir, run_bundle

    a, b = runs["model_uris"]
    code = cli_main(["blend", a, b, "--method", "weights", "--register", "--tracking-uri", runs["uri"]])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "blend (weights)" in out or "blend" in out
    client = MlflowClient(runs["uri"])
    version = client.get_model_version("arena-pref", "3")
    assert version.tags["kind"] == "blend"
    blend_run = client.get_run(version.run_id)
    assert blend_run.data.tags["arena_pref.kind"] == "blend"
    metrics = blend_run.data.metrics
    assert {"oof_log_loss", "oof_log_loss_mean", "blend_minus_best_low", "blend_minus_best_high"} <= set(metrics)
    assert f"member_oof_log_loss/arena-pref-v{a.rsplit('/', 1)[1]}" in metrics
    spec = json.loads(Path(client.download_artifacts(blend_run.info.run_id, "blend.json", str(tmp_path))).read_text())
    weights = np.asarray(spec["final_params"]["weights"])
    assert weights.shape == (2,) and (weights >= 0).all() and abs(weights.sum() - 1) < 1e-9

    cli_sub = predict_cli("models:/arena-pref/3", runs, tmp_path / "blend_cli.csv")
    members = [predict_cli(uri, runs, tmp_path / f"m{i}.csv") for i, uri in enumerate(runs["model_uris"])]
    assert not np.allclose(cli_sub[list(LABEL_COLUMNS)], members[0][list(LABEL_COLUMNS)], atol=1e-4)

    bundle = tmp_path / "bundle"
    assert cli_main(["export", "models:/arena-pref/3", "--out", str(bundle), "--tracking-uri", runs["uri"]]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["kind"] == "blend" and len(manifest["bases"]) == 1  # both members over one base, listed once
    assert sorted(manifest["bases"][0]["members"]) == sorted(spec["members"])
    assert manifest["bases"][0]["base_model"]["content_sha256"]
    done = run_bundle(
        bundle,
        blocked_env,
        "--base-model",
        str(base_model_dir(bundle)),
        "--test-csv",
        str(runs["test_csv"]),
        "--out",
        str(tmp_path / "bundle_sub.csv"),
    )
    assert done.returncode == 0, done.stderr
    ours = pd.read_csv(tmp_path / "bundle_sub.csv", dtype={"id": str})
    assert ours["id"].tolist() == cli_sub["id"].tolist()
    np.testing.assert_allclose(ours[list(LABEL_COLUMNS)], cli_sub[list(LABEL_COLUMNS)], atol=1e-5)


def test_members_on_other_folds_are_refused_in_one_line(runs, capsys):
    from arena_pref.flows.cv_training import cv_training

    other = tiny_recipe_config(
        runs["tmp"],
        runs["train_csv"],
        "cv.execution=in_process",
        "cv.n_folds=2",
        "cv.seed=7",
        "train.num_epochs=1",
        "train.max_steps=2",
        name="other-folds",
    )
    uri = f"models:/other-folds/{cv_training(other).registration.version}"
    capsys.readouterr()  # the training's own output
    code = cli_main(["blend", runs["model_uris"][0], uri, "--tracking-uri", runs["uri"]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "fold" in err
    assert cli_main(["blend", runs["model_uris"][0], "--tracking-uri", runs["uri"]]) == 2


def unlabeled_csv(folder: Path, n: int = 40, *, with_labels: bool = False, id_from=None) -> Path:
    from pref_core.data.synthetic import make_synthetic_frames

    train, _ = make_synthetic_frames(n_train=n, n_test=1, signal=0.9, seed=23)
    frame = train if with_labels else train[["id", "prompt", "response_a", "response_b"]].copy()
    frame["id"] = [f"u{i}" for i in range(len(frame))] if id_from is None else id_from[: len(frame)]
    path = folder / f"unlabeled-{len(list(folder.glob('unlabeled-*')))}.csv"
    frame.to_csv(path, index=False)
    return path


def student_config(runs, unlabeled: Path, *extra: str, output: str | None = None):
    teacher = runs["results"][1].parent_run_id  # the classifier run
    return tiny_recipe_config(
        runs["tmp"],
        runs["train_csv"],
        "cv.execution=in_process",
        "cv.n_folds=2",
        "train.num_epochs=1",
        f"data.unlabeled_csvs=[{unlabeled}]",
        f"distill.pseudo_from={teacher}",
        "data.pseudo_weight=0.5",
        *extra,
        name="student",
        output=output,
    )


def test_student_fold_k_learns_pseudo_labels_of_teacher_fold_k_only(runs, tmp_path, monkeypatch):
    import pref_core.data.pseudo as pseudo
    from arena_pref.flows.cv_training import cv_training
    from arena_pref.tasks import pseudo_labels

    unlabeled = unlabeled_csv(tmp_path)
    read, predicted = {}, []
    original_rows, original_predict = pseudo.rows_for_fold, pseudo_labels._predict_teacher_folds

    def spy_rows(unlabeled_rows, frame, fold, keys, source):
        read[fold] = frame.copy()
        return original_rows(unlabeled_rows, frame, fold, keys, source)

    def spy_predict(teacher, folds, *args):
        predicted.append(list(folds))
        return original_predict(teacher, folds, *args)

    monkeypatch.setattr(pseudo, "rows_for_fold", spy_rows)
    monkeypatch.setattr(pseudo_labels, "_predict_teacher_folds", spy_predict)
    config = student_config(runs, unlabeled)
    student = cv_training(config)
    assert predicted == [[0, 1]]  # every teacher fold once, before the folds
    assert sorted(read) == [0, 1]
    for fold, frame in read.items():
        assert set(frame["teacher_fold"]) == {fold}
        assert len(frame) == 40
    # Teacher folds disagree on the rows: reading the other fold's file would hand other soft labels.
    assert not np.allclose(read[0][list(LABEL_COLUMNS)], read[1][list(LABEL_COLUMNS)])
    client = MlflowClient(runs["uri"])
    for fold, run_id in student.fold_run_ids.items():
        assert int(client.get_run(run_id).data.params["n_pseudo_rows"]) > 0
    assert "val_log_loss" in client.get_run(student.fold_run_ids[0]).data.metrics

    # Cache reuse: another student on the same rows and teacher predicts nothing again.
    predicted.clear()
    cv_training(student_config(runs, unlabeled, "data.pseudo_weight=1.0", "train.max_steps=2"))
    assert predicted == []

    # The leak rule: a student fold handed another teacher fold's predictions stops.
    original_labels = pseudo_labels.teacher_pseudo_labels

    def wrong_fold(config, prepared, folds):
        paths = original_labels.fn(config, prepared, [0, 1])
        return {k: paths[1 - k] for k in folds}

    monkeypatch.setattr(pseudo_labels, "teacher_pseudo_labels", wrong_fold)
    with pytest.raises(Exception, match="teacher fold"):
        cv_training(student_config(runs, unlabeled, "data.pseudo_weight=0.25", "train.max_steps=2"))


@pytest.mark.parametrize(
    "problem, match",
    [("labels", "label"), ("collide", "id"), ("empty", "no data rows"), ("folds", "cv.seed")],
)
def test_bad_unlabelled_rows_and_teachers_stop_in_one_line_before_training(runs, tmp_path, problem, match):
    train_ids = pd.read_csv(runs["train_csv"], dtype=str)["id"].tolist()
    path = {
        "labels": lambda: unlabeled_csv(tmp_path, with_labels=True),
        "collide": lambda: unlabeled_csv(tmp_path, id_from=train_ids),
        "empty": lambda: _empty_csv(tmp_path),
        "folds": lambda: unlabeled_csv(tmp_path),
    }[problem]()
    config = student_config(runs, path, *(["cv.seed=7"] if problem == "folds" else []), output=f"bad-{problem}")
    from pref_core.config.loading import dump_config

    yaml_path = dump_config(config, tmp_path / "student.yaml")
    done = subprocess.run(
        [str(Path(sys.executable).with_name("arena-pref")), "train", "--config", str(yaml_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    # One error (a file the reader cannot use lists its one problem below its headline), no traceback.
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert done.returncode == 2, done.stderr
    assert len(errors) == 1 and match in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not list((Path(config.output_dir) / "runs").glob("*/fold_*"))


def _empty_csv(folder: Path) -> Path:
    path = folder / "empty.csv"
    path.write_text("id,prompt,response_a,response_b\n")
    return path
