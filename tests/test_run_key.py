"""The run key leaves out exactly the fields marked result-neutral in the schema, the same ones as before."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pref_core.config.fields import describe_fields, result_neutral_fields
from pref_core.config.loading import load_config
from pref_core.config.run_key import compute_model_key, compute_run_key

ROOT = Path(__file__).resolve().parents[1]
# The list tasks/workspace.py kept by hand before the schema carried the mark.
FORMER_NON_SEMANTIC_FIELDS = (
    "tracking",
    "cv.execution",
    "cv.fold_deployment",
    "cv.folds",
    "cv.max_parallel",
    "data.train_csv",
    "data.test_csv",
    "data.extra_csvs",
    "data.extra_pairs",
    "distill.teacher_csv",
    "distill.teacher_dir",
    "output_dir",
)
# Marked result-neutral since: unlabelled-row files enter the key by their content hash (as extra files do), and
# post-processing is fitted on the OOF after the folds, so it never changes what a fold trains.
ADDED_NON_SEMANTIC_FIELDS = ("data.unlabeled_csvs", "data.unlabeled_pairs", "postprocess")
INPUTS = {"train": "0123456789abcdef", "test": None, "extra": None, "teacher": None, "teacher_dir": None}


def former_run_key(config, input_hashes) -> str:
    """compute_run_key as it was written with the hand-kept list."""
    tree = config.model_dump(mode="json")
    for dotted in (*FORMER_NON_SEMANTIC_FIELDS, *ADDED_NON_SEMANTIC_FIELDS):
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    payload = {"config": tree, "inputs": input_hashes}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_the_marked_fields_are_the_former_list_and_the_added_ones():
    assert sorted(result_neutral_fields()) == sorted((*FORMER_NON_SEMANTIC_FIELDS, *ADDED_NON_SEMANTIC_FIELDS))
    neutral = {doc.name for doc in describe_fields() if doc.result_neutral}
    assert "tracking.uri" in neutral and "train.learning_rate" not in neutral and "distill.teacher_run" not in neutral


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_run_key_of_every_recipe_is_unchanged(recipe, tmp_path):
    overrides = [f"data.train_csv={tmp_path / 'train.csv'}", f"output_dir={tmp_path}", "cv.folds=[0]"]
    config = load_config(ROOT / "configs" / recipe, overrides)
    assert compute_run_key(config, INPUTS) == former_run_key(config, INPUTS)


def test_result_neutral_fields_do_not_change_the_key_and_others_do(tmp_path):
    tiny = ROOT / "configs" / "tiny.yaml"
    key = compute_run_key(load_config(tiny), INPUTS)
    moved = load_config(
        tiny,
        [
            "tracking.experiment=other",
            "cv.execution=in_process",
            f"output_dir={tmp_path}",
            "cv.max_parallel=2",
            "data.test_csv=t.csv",
        ],
    )
    assert compute_run_key(moved, INPUTS) == key
    assert compute_run_key(load_config(tiny, ["train.learning_rate=1e-4"]), INPUTS) != key
    assert compute_run_key(load_config(tiny, ["distill.teacher_run=abc"]), INPUTS) != key


def test_teacher_hashes_cover_the_teacher_csv_and_each_fold_file_of_the_teacher_dir(tmp_path):
    from pref_core.config.run_key import teacher_hashes
    from pref_core.hashing import hash_json

    tiny = ROOT / "configs" / "tiny.yaml"
    assert teacher_hashes(load_config(tiny).distill) == {"teacher": None, "teacher_dir": None}
    teachers = tmp_path / "teachers"
    teachers.mkdir()
    (teachers / "fold_0.csv").write_text("id\n1\n")
    (teachers / "fold_1.csv").write_text("id\n2\n")
    (teachers / "notes.txt").write_text("not a fold file")
    csv = tmp_path / "teacher.csv"
    csv.write_text("id\n3\n")
    config = load_config(tiny, [f"distill.teacher_dir={teachers}"])
    sha = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    expected_dir = hash_json([["fold_0.csv", sha("id\n1\n")], ["fold_1.csv", sha("id\n2\n")]])
    assert teacher_hashes(config.distill)["teacher_dir"] == expected_dir
    (teachers / "notes.txt").write_text("edited")  # not a fold file: same key
    assert teacher_hashes(config.distill)["teacher_dir"] == expected_dir
    (teachers / "fold_1.csv").write_text("id\n9\n")
    assert teacher_hashes(config.distill)["teacher_dir"] != expected_dir
    assert teacher_hashes(load_config(tiny, [f"distill.teacher_csv={csv}"]).distill)["teacher"] == sha("id\n3\n")


def test_post_processing_keeps_the_run_key_and_changes_the_model_key(tmp_path):
    overrides = [f"data.train_csv={tmp_path / 'train.csv'}", f"output_dir={tmp_path}"]
    base = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    changed = load_config(ROOT / "configs" / "tiny.yaml", [*overrides, "postprocess.mode=off"])
    moved = load_config(ROOT / "configs" / "tiny.yaml", [*overrides, f"output_dir={tmp_path / 'elsewhere'}"])
    key = compute_run_key(base, INPUTS)
    assert compute_run_key(changed, INPUTS) == key  # the folds are reused ...
    assert compute_model_key(changed, key) != compute_model_key(base, key)  # ... yet it is another model
    assert compute_model_key(moved, compute_run_key(moved, INPUTS)) == compute_model_key(base, key)
    assert compute_model_key(base, key) != compute_model_key(base, "another run key")
