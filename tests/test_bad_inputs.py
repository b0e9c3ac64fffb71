"""The bad-input corpus (tests/corpus, written by its generate.py) through the command line.

Every broken file makes `arena-pref validate` and `arena-pref train` exit non-zero with lines that
name the row id or column and the fix, no traceback, and nothing executed. Unusual but valid files
(BOM, CRLF, a huge cell, code-looking text inside a JSON string) are accepted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from arena_pref import cli

CORPUS = Path(__file__).resolve().parent / "corpus"
ROOT = Path(__file__).resolve().parents[1]

# file -> (kind, what the message must mention)
BROKEN = {
    "missing_column.csv": ("train", ["response_b", "fix"]),
    "renamed_column.csv": ("train", ["winner_model_a", "fix"]),
    "invalid_json.csv": ("train", ["row id=1001", "column=prompt", "invalid JSON", "fix"]),
    "json_not_list.csv": ("train", ["row id=1001", "column=response_a", "fix"]),
    "json_not_strings.csv": ("train", ["row id=1002", "column=response_b", "fix"]),
    "mismatched_turns.csv": ("train", ["row id=1000", "turn", "fix"]),
    "labels_not_numeric.csv": ("train", ["row id=1003", "column=winner_tie", "fix"]),
    "labels_not_one_hot.csv": ("train", ["row id=1001", "one-hot", "fix"]),
    "duplicate_ids.csv": ("train", ["row id=1000", "column=id", "unique"]),
    "python_code_cell.csv": ("train", ["row id=1000", "column=prompt", "invalid JSON"]),
    "empty.csv": ("train", ["empty", "fix"]),
    "header_only.csv": ("train", ["no data rows", "fix"]),
    "non_utf8.csv": ("train", ["UTF-8", "line 2", "fix"]),
    "test_with_labels.csv": ("test", ["label columns", "fix"]),
    "good_test.csv": ("train", ["missing required column", "is it a test file"]),
}
ACCEPTED = ["good_train.csv", "bom.csv", "crlf.csv", "huge_cell.csv", "python_code_in_json.csv"]


@pytest.fixture(autouse=True)
def _no_pwned(tmp_path, monkeypatch):
    """Run each case from an empty folder; a cell's `touch PWNED` must never run."""
    monkeypatch.chdir(tmp_path)
    yield
    assert not (tmp_path / "PWNED").exists() and not (ROOT / "PWNED").exists()


def _run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_corpus_covers_at_least_fifteen_kinds():
    assert len(BROKEN) + 1 >= 15  # + the unwritable output path below
    assert all((CORPUS / name).exists() for name in [*BROKEN, *ACCEPTED])


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_validate_reports_each_broken_file(name, capsys):
    kind, needles = BROKEN[name]
    code, output = _run_cli(capsys, "validate", str(CORPUS / name), "--kind", kind)
    assert code != 0
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output, f"{needle!r} missing from:\n{output}"


@pytest.mark.parametrize("name", sorted(n for n, (kind, _) in BROKEN.items() if kind == "train"))
def test_train_fails_before_any_training(name, capsys, tmp_path):
    _, needles = BROKEN[name]
    code, output = _run_cli(
        capsys,
        "train",
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--set",
        f"data.train_csv={CORPUS / name}",
        "--set",
        f"output_dir={tmp_path / 'out'}",
        "--set",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert code == 2
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output
    assert not (tmp_path / "out" / "runs").exists()


def test_train_rejects_a_test_file_with_labels_as_test_csv(capsys, tmp_path):
    code, output = _run_cli(
        capsys,
        "train",
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--set",
        f"data.train_csv={CORPUS / 'good_train.csv'}",
        "--set",
        f"data.test_csv={CORPUS / 'test_with_labels.csv'}",
        "--set",
        f"output_dir={tmp_path / 'out'}",
        "--set",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert code == 2 and "label columns" in output and "Traceback" not in output


def test_bad_rows_are_quarantined_under_a_lenient_policy(capsys, tmp_path):
    """With data.max_bad_fraction above the bad share, the rows go to a rejected file (preflight passes)."""
    from arena_pref.tasks import preparation
    from pref_core.config.loading import load_config

    config = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.train_csv={CORPUS / 'invalid_json.csv'}",
            "data.max_bad_fraction=0.3",
            f"output_dir={tmp_path}",
        ],
    )
    ingested = preparation.ingest.fn(config, "train")
    assert (ingested.n_read, ingested.n_kept, ingested.n_rejected) == (4, 3, 1)
    rejected = Path(ingested.rejected_path).read_text()
    assert "1001" in rejected and "prompt" in rejected and "invalid JSON" in rejected


def test_unwritable_output_path(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, output = _run_cli(
        capsys,
        "train",
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--set",
        f"data.train_csv={CORPUS / 'good_train.csv'}",
        "--set",
        f"output_dir={blocker / 'out'}",
        "--set",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert code == 2 and "output_dir" in output and "Traceback" not in output


def test_unknown_config_field_names_the_dotted_key(capsys, tmp_path):
    code, output = _run_cli(
        capsys, "train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--set", "train.learning_rat=1e-4"
    )
    assert code == 2 and "train.learning_rat" in output and "Traceback" not in output


@pytest.mark.parametrize("name", ACCEPTED)
def test_unusual_but_valid_files_are_accepted(name, capsys):
    code, output = _run_cli(capsys, "validate", str(CORPUS / name))
    assert code == 0, output
    assert "4 valid, 0 rejected" in output


def test_validate_exit_code_from_a_real_process(tmp_path):
    """The console script itself: non-zero exit and no traceback on stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "arena_pref.cli", "validate", str(CORPUS / "empty.csv")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "empty" in result.stderr and "Traceback" not in result.stderr
