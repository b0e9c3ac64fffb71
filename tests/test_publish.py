"""pref_core.publish: a build appears at its target whole, or not at all."""

import pytest

from pref_core.publish import publishing_dir, publishing_file


def test_a_built_folder_appears_at_the_target_and_no_staging_remains(tmp_path):
    target = tmp_path / "cache" / "key"
    with publishing_dir(target) as staging:
        assert not target.exists()
        (staging / "data.bin").write_bytes(b"abc")
    assert (target / "data.bin").read_bytes() == b"abc"
    assert sorted(p.name for p in target.parent.iterdir()) == ["key"]


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    target = tmp_path / "key"
    with pytest.raises(RuntimeError, match="boom"), publishing_dir(target) as staging:
        (staging / "half").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_the_first_of_two_concurrent_builds_wins_and_the_second_is_discarded(tmp_path):
    target = tmp_path / "key"
    with publishing_dir(target) as staging:
        (staging / "who").write_text("second")
        target.mkdir()  # another process publishes first, while this build is still running
        (target / "who").write_text("first")
    assert (target / "who").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_an_empty_target_folder_is_replaced(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with publishing_dir(target) as staging:
        (staging / "README.md").write_text("bundle")
    assert (target / "README.md").read_text() == "bundle"


def test_a_file_is_replaced_whole_and_a_failed_write_keeps_the_old_one(tmp_path):
    dest = tmp_path / "folds.parquet"
    dest.write_text("old")
    with pytest.raises(OSError), publishing_file(dest) as staging:
        staging.write_text("half")
        raise OSError("disk full")
    assert dest.read_text() == "old"
    with publishing_file(dest) as staging:
        staging.write_text("new")
    assert dest.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folds.parquet"]


def test_an_output_file_is_refused_before_work_when_it_is_a_folder_or_under_a_file(tmp_path):
    from pref_core.errors import UserError
    from pref_core.publish import check_output_file

    assert (
        check_output_file(tmp_path / "new" / "deeper" / "sub.csv", "--out") == tmp_path / "new" / "deeper" / "sub.csv"
    )
    assert not (tmp_path / "new").exists()  # checked, nothing created
    with pytest.raises(UserError, match=r"^--out .*: is a folder; give a file path"):
        check_output_file(tmp_path, "--out")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output_file(tmp_path / "plain" / "sub.csv", "--out")


def test_a_new_folder_must_be_absent_or_empty(tmp_path):
    from pref_core.errors import UserError
    from pref_core.publish import check_new_folder

    check_new_folder(tmp_path / "bundle", "--out")
    (tmp_path / "empty").mkdir()
    check_new_folder(tmp_path / "empty", "--out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="is a folder that is not empty"):
        check_new_folder(tmp_path / "full", "--out")


def test_two_writers_of_one_target_the_second_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
    import hashlib
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from pref_core.errors import UserError
    from pref_core.publish import exclusive_target

    target = tmp_path / "bundle"
    refused = pytest.raises(UserError, match=r"another process \(pid \d+\) is writing it now")
    with exclusive_target(target, "--out"), refused, exclusive_target(target, "--out"):
        pass
    # A lock left by a process that died is stale: taken over, then removed.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    key = hashlib.sha256(str(target.absolute()).encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"arena-pref-{key}.lock"
    lock.write_text(dead.stdout.strip())
    with exclusive_target(target, "--out"):
        assert lock.read_text() != dead.stdout.strip()
    assert not lock.exists()


def test_a_new_folder_filled_meanwhile_by_another_process_is_kept(tmp_path):
    from pref_core.errors import UserError
    from pref_core.publish import publishing_new_dir

    target = tmp_path / "bundle"
    refused = pytest.raises(UserError, match="written by another process meanwhile")
    with refused, publishing_new_dir(target, "--out") as staging:
        (staging / "mine").write_text("second")
        target.mkdir()
        (target / "theirs").write_text("first")
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging folder left
