"""`arena-pref config show` prints the resolved YAML; `arena-pref config fields` documents every field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from arena_pref import cli
from pref_core.config.fields import describe_fields
from pref_core.config.loading import load_config, parse_config

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def test_show_prints_the_resolved_config_with_overrides(capsys):
    assert cli.main(["config", "show", TINY, "--set", "train.learning_rate=1e-4", "--set", "cv.folds=[0, 2]"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["learning_rate"] == 1e-4 and shown["cv"]["folds"] == [0, 2]
    assert shown["train"]["eval_steps"] == 0  # a default the YAML leaves out is filled in
    assert shown["tracking"]["recipe"] == TINY  # the command records the recipe it was given (a tracking field)
    assert parse_config(shown) == load_config(
        TINY, ["train.learning_rate=1e-4", "cv.folds=[0, 2]", f"tracking.recipe={TINY}"]
    )


def test_show_refuses_a_bad_config_with_exit_2_and_every_problem(capsys, tmp_path):
    assert cli.main(["config", "show", TINY, "--set", "train.lr=1", "--set", "cv.n_folds=1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: Invalid configuration:")
    assert "train.lr: unknown field" in captured.err and "cv.n_folds: got 1" in captured.err
    assert cli.main(["config", "show", TINY, "--set", "train.learning_rate"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    assert cli.main(["config", "show", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_fields_lists_every_leaf_field_with_type_default_and_description(capsys):
    assert cli.main(["config", "fields"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["field", "type", "default"]
    rows = {line.split()[0]: line for line in lines[1:] if not line.startswith(" ")}
    assert set(rows) == {doc.name for doc in describe_fields()}
    row = lines.index(rows["train.learning_rate"])
    assert rows["train.learning_rate"].split() == ["train.learning_rate", "float", "0.0002"]
    assert lines[row + 1].strip() == "Peak learning rate of the LoRA (and head) weights."
    assert rows["cv.max_parallel"].split()[:5] == ["cv.max_parallel", "int", "|", "null", "null"]
    assert rows["cv.max_parallel"].endswith("(result-neutral: not in the run key)")


def test_fields_of_one_section_or_field(capsys):
    assert cli.main(["config", "fields", "cv"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if not line.startswith(" ")]
    assert names and all(name.startswith("cv.") for name in names)
    assert cli.main(["config", "fields", "train.swap"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if not line.startswith(" ")] == [
        "train.swap"
    ]
    assert cli.main(["config", "fields", "trian"]) == 2
    assert "no config field or section 'trian'" in capsys.readouterr().err


def test_a_missing_train_csv_is_one_message_everywhere(capsys):
    from pref_core.config.loading import require_train_csv
    from pref_core.config.schema import ConfigError

    config = load_config(TINY)
    with pytest.raises(ConfigError) as info:
        require_train_csv(config)
    assert info.value.problems == [
        "data.train_csv: not set; pass --set data.train_csv=PATH (a Kaggle-format train.csv)"
    ]
    assert require_train_csv(load_config(TINY, ["data.train_csv=t.csv"])) == Path("t.csv")

    assert cli.main(["train", "--config", TINY]) == 2
    assert (
        capsys.readouterr().err == f"error: Invalid configuration: {info.value.problems[0]}\n"
    )  # one problem, one line
    assert cli.main(["show-prompt", "--config", TINY, "--id", "1", "--set", "data.test_csv=t.csv"]) == 2
    assert (
        "data.train_csv: not set; pass --set data.train_csv=PATH (the tiny model's tokenizer is built from the "
        "train texts)"
    ) in capsys.readouterr().err

    from arena_pref.flows.preparation import prepare_inputs

    with pytest.raises(ConfigError, match=r"data.train_csv: not set; pass --set data.train_csv=PATH"):
        prepare_inputs(config)
