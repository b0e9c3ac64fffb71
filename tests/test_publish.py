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
