"""Run names and descriptions (pref_core.config.naming): what differs from the recipe, said briefly."""

from __future__ import annotations

from pref_core.config.fields import result_neutral_fields
from pref_core.config.loading import load_config
from pref_core.config.naming import (
    base_model_label,
    config_overrides,
    describe_overrides,
    fold_run_name,
    format_value,
    run_name,
)


def test_the_name_holds_recipe_head_the_differing_override_and_a_short_run_key():
    recipe = load_config("configs/tiny.yaml")
    config = load_config("configs/tiny.yaml", ["train.learning_rate=2e-3", "tracking.run_name=x"])
    overrides = config_overrides(config.flat(), recipe.flat())
    assert overrides == {"train.learning_rate": 0.002, "tracking.run_name": "x"}
    name = run_name("configs/tiny.yaml", base_model_label(config.model), config.model.head, overrides, "3f09d8c1ab")
    assert name == "tiny·label_token·lr=2e-3·3f09d8"  # tracking.* names the run itself: not part of the name


def test_result_neutral_overrides_stay_out_of_the_name_but_in_the_description():
    recipe = load_config("configs/tiny.yaml")
    config = load_config("configs/tiny.yaml", ["data.train_csv=/tmp/x/train.csv", "lora.r=4"])
    overrides = config_overrides(config.flat(), recipe.flat())
    name = run_name("configs/tiny.yaml", "tiny", "label_token", overrides, None, neutral=result_neutral_fields())
    assert name == "tiny·label_token·r=4"
    text = describe_overrides("configs/tiny.yaml", overrides)
    assert '`data.train_csv` = `"/tmp/x/train.csv"`' in text and "`lora.r` = `4`" in text


def test_many_overrides_are_counted_and_clashing_leaves_keep_their_section():
    overrides = {f"a{k}.x": k for k in range(6)}
    name = run_name(None, "smollm2", "classifier", overrides)
    assert name == "smollm2·classifier·a0.x=0·a1.x=1·a2.x=2·a3.x=3·+2 more"


def test_values_read_short():
    assert format_value(0.0002) == "2e-4" and format_value(0.5) == "0.5" and format_value(True) == "true"
    assert format_value(["q_proj", "v_proj"]) == "q_proj,v_proj"
    assert format_value("x" * 40).endswith("…") and len(format_value("x" * 40)) == 16


def test_fold_runs_read_as_part_of_their_parent_and_no_overrides_are_said_so():
    assert fold_run_name("tiny·label_token·3f09d8", 2) == "tiny·label_token·3f09d8/fold-2"
    assert describe_overrides("configs/tiny.yaml", {}) == "Recipe `configs/tiny.yaml`, as it is: no overrides."
