"""RunConfig: errors name the dotted field and the value; overrides; YAML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from pref_core.config.loading import apply_overrides, dump_config, load_config, parse_config
from pref_core.config.schema import ConfigError, RunConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model": {"tiny": {}}}


def problems_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.problems


def test_defaults_are_valid():
    config = parse_config(TINY)
    assert config.prompt.template == "seed" and config.prompt.max_length == 1024
    assert config.data.max_bad_fraction == 0.0


def test_error_names_the_dotted_field_and_the_value():
    assert problems_of({**TINY, "train": {"learning_rate": -1}}) == [
        "train.learning_rate: got -1; Input should be greater than 0"
    ]


def test_choice_words_yaml_reads_as_booleans_keep_their_meaning(tmp_path):
    # PyYAML reads `off` and `no` as False, in recipes and in --set alike.
    config = parse_config(apply_overrides(TINY, ["postprocess.mode=off", "train.mixed_precision=no"]))
    assert config.postprocess.mode == "off" and config.train.mixed_precision == "no"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {tiny: {}}\npostprocess:\n  mode: off\n")
    assert load_config(recipe).postprocess.mode == "off"
    assert problems_of({**TINY, "postprocess": {"mode": True}}) == [
        "postprocess.mode: got True; Input should be 'auto' or 'off'"  # no allowed word reads as True
    ]
    with pytest.raises(ConfigError):  # a real boolean field stays a boolean
        parse_config({**TINY, "postprocess": {"near_identical": "maybe"}})


def test_all_problems_are_reported_at_once():
    problems = problems_of({**TINY, "train": {"learning_rate": 0, "lr": 1}, "prompt": {"template": "chatml"}})
    assert len(problems) == 3
    assert problems[0].startswith("prompt.template: got 'chatml'; Input should be 'seed' or 'multi_turn'")
    assert problems[1].startswith("train.learning_rate: got 0")
    assert problems[2].startswith("train.lr: unknown field")


def test_section_validator_names_its_field():
    assert problems_of({"model": {}}) == [
        "model.name_or_path: set a hub id or local folder (or model.tiny for the offline tiny "
        "model, or model.gguf for a GGUF file shipped in a package)"
    ]
    assert problems_of({})[0].startswith("model: required field is missing; set it in the YAML or with --set model=")


def test_union_field_gives_one_line():
    problems = problems_of({**TINY, "lora": {"target_modules": "some"}})
    assert problems == ["lora.target_modules: got 'some'; Input should be 'all-linear' or Input should be a valid list"]
    assert problems_of({**TINY, "lora": {"target_modules": []}}) == [
        "lora.target_modules: got []; give at least one module name, or 'all-linear'"
    ]


def test_cross_field_problem():
    problems = problems_of({**TINY, "cv": {"n_folds": 3, "folds": [0, 5]}})
    assert problems == ["cv.folds: got [5]; fold indices must lie in 0..2 (cv.n_folds=3)"]


def test_max_bad_fraction_range():
    assert problems_of({**TINY, "data": {"max_bad_fraction": 1.5}})[0].startswith("data.max_bad_fraction: got 1.5")


def test_overrides_are_parsed_as_yaml():
    raw = apply_overrides(TINY, ["train.learning_rate=1e-4", "prompt.template=multi_turn", "cv.folds=[0, 2]"])
    config = parse_config(raw)
    assert config.train.learning_rate == 1e-4
    assert config.prompt.template == "multi_turn"
    assert config.cv.folds == [0, 2]
    assert TINY == {"model": {"tiny": {}}}  # the input dict is not changed


def test_fold_indices_are_the_chosen_folds_or_all_of_them():
    assert parse_config(apply_overrides(TINY, ["cv.n_folds=3"])).cv.fold_indices() == [0, 1, 2]
    assert parse_config(apply_overrides(TINY, ["cv.n_folds=3", "cv.folds=[2, 0]"])).cv.fold_indices() == [2, 0]


def test_override_fills_a_null_section():
    config = parse_config(apply_overrides({"model": {"tiny": None}}, ["model.tiny.hidden_size=32"]))
    assert config.model.tiny.hidden_size == 32


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.learning_rate", "expected key=value"),
        ("=3", "the key before '=' is empty"),
        ("train.learning_rate.x=1", "learning_rate is a value, not a section"),
        ("train.learning_rate=[1", "not valid YAML"),
    ],
)
def test_bad_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides({**TINY, "train": {"learning_rate": 1.0}}, [override])


def test_load_config_with_overrides_and_round_trip(tmp_path):
    config = load_config(ROOT / "configs" / "tiny.yaml", ["prompt.max_length=128", "data.max_bad_fraction=0.5"])
    assert config.prompt.max_length == 128 and config.data.max_bad_fraction == 0.5
    path = dump_config(config, tmp_path / "resolved.yaml")
    assert load_config(path) == config
    assert config.flat()["prompt.max_length"] == 128


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("model:\n  tiny: {}\ntrain:\n  learning_rate: -2\n")
    with pytest.raises(ConfigError, match=r"train.learning_rate: got -2"):
        load_config(wrong)


def test_run_config_is_the_single_schema():
    assert set(RunConfig.model_fields) >= {"data", "prompt", "model", "lora", "train", "cv", "tracking", "output_dir"}


def test_every_field_has_a_description():
    from pydantic import BaseModel

    from pref_core.config.fields import describe_fields, iter_fields

    leaves = dict(iter_fields())
    assert {"train.learning_rate", "model.tiny.hidden_size", "output_dir"} <= set(leaves)
    undocumented = [name for name, field in leaves.items() if not (field.description or "").strip()]
    assert undocumented == []
    sections = [name for name, field in RunConfig.model_fields.items() if not (field.description or "").strip()]
    assert sections == []
    assert all(doc.description for doc in describe_fields())
    assert not any(isinstance(field.default, BaseModel) for field in leaves.values())  # sections are walked, not leaves


def test_describe_fields_gives_type_and_default():
    from pref_core.config.fields import describe_fields

    docs = {doc.name: doc for doc in describe_fields()}
    assert (docs["prompt.template"].type, docs["prompt.template"].default) == ("seed | multi_turn", '"seed"')
    assert (docs["train.cpu_threads"].type, docs["train.cpu_threads"].default) == ("int | null", "null")
    assert docs["model.gguf.file"].default == "required"
    assert docs["lora.target_modules"].default == '["q_proj", "k_proj", "v_proj"]'


def test_choice_fields_read_their_values_from_choices():
    from typing import get_args

    from pref_core.config import choices
    from pref_core.config.fields import iter_fields

    fields = dict(iter_fields())
    for name, alias in [
        ("prompt.template", choices.Template),
        ("prompt.truncation", choices.Truncation),
        ("model.head", choices.Head),
        ("model.dtype", choices.ModelDtype),
        ("model.quantization", choices.Quantization),
        ("model.attn_implementation", choices.AttnImplementation),
        ("train.lr_scheduler", choices.LrScheduler),
        ("train.optim", choices.Optimizer),
        ("train.mixed_precision", choices.MixedPrecision),
        ("train.swap", choices.SwapMode),
        ("train.distributed", choices.DistributedMode),
        ("cv.execution", choices.FoldExecution),
        ("calibration.method", choices.CalibrationMethod),
    ]:
        assert fields[name].annotation is alias, name
    assert choices.allowed_values(choices.SwapMode) == choices.SWAP_MODES == ("none", "random", "both")
    assert get_args(fields["lora.target_modules"].annotation)[0] is choices.AllLinear


def test_require_choice_names_the_field_the_value_and_the_choices():
    from pref_core.config.choices import SwapMode, require_choice

    assert require_choice("train.swap", "both", SwapMode) == "both"
    with pytest.raises(ValueError, match=r"^train.swap: got 'twice'; use one of 'none', 'random', 'both'$"):
        require_choice("train.swap", "twice", SwapMode)
    with pytest.raises(TypeError):
        require_choice("train.swap", "both", str)


def test_field_and_cross_field_problems_are_reported_in_one_round():
    problems = problems_of({**TINY, "train": {"learning_rate": -1}, "cv": {"n_folds": 3, "folds": [0, 5]}})
    assert problems == [
        "train.learning_rate: got -1; Input should be greater than 0",
        "cv.folds: got [5]; fold indices must lie in 0..2 (cv.n_folds=3)",
    ]


def test_a_rule_in_the_section_of_a_bad_field_still_runs():
    problems = problems_of(
        {**TINY, "train": {"learning_rate": -1, "gradient_accumulation_steps": 3, "num_processes": 2}}
    )
    assert problems[0] == "train.learning_rate: got -1; Input should be greater than 0"
    assert problems[1].startswith("train.gradient_accumulation_steps: got 3, not a multiple of train.num_processes=2")
    assert problems[1].endswith("set it to a multiple of train.num_processes (e.g. 4)")
    assert len(problems) == 2


def test_a_rule_whose_field_failed_is_skipped():
    # cv.n_folds is refused: checking cv.folds against it (or its default) would report a made-up problem.
    assert problems_of({**TINY, "cv": {"n_folds": 1, "folds": [0, 4]}}) == [
        "cv.n_folds: got 1; Input should be greater than or equal to 2"
    ]
    # a refused subsection (model.tiny) skips the model-source rule instead of calling the model unset
    problems = problems_of(
        {"model": {"tiny": {"hidden_size": 1}}, "distill": {"teacher_csv": "t.csv", "teacher_run": "r"}}
    )
    assert problems == [
        "model.tiny.hidden_size: got 1; Input should be greater than or equal to 8",
        "distill: distill.teacher_csv and distill.teacher_run are both set; "
        "choose one teacher source (set the others to null)",
    ]


def test_every_rule_is_reported_with_every_field_problem():
    problems = problems_of(
        {
            "model": {"name_or_path": "x/y", "tiny": {}, "quantization": "4bit", "dtype": "bf16"},
            "train": {"mixed_precision": "fp16", "gradient_accumulation_steps": 3, "num_processes": 2, "lr": 1},
            "distill": {"teacher_csv": "t.csv", "hard_weight": 0, "kl_weight": 0},
            "output_dir": ["not", "a", "path"],
        }
    )
    assert [p.split(":")[0] for p in problems] == [
        "train.lr",
        "output_dir",
        "model",
        "train.mixed_precision",
        "train.gradient_accumulation_steps",
        "distill.hard_weight and distill.kl_weight are both 0",
    ]


def test_rules_run_when_the_config_is_validated_directly():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"cv.folds: got \[5\]"):
        RunConfig.model_validate({**TINY, "cv": {"n_folds": 3, "folds": [5]}})


def test_max_steps_is_optional_not_a_sentinel(tmp_path):
    from pref_core.train.trainer import build_training_arguments

    assert parse_config(TINY).train.max_steps is None
    tiny = parse_config(TINY)
    assert build_training_arguments(tiny.train, tiny.model, tmp_path).max_steps == -1  # transformers: train by epochs
    limited = parse_config({**TINY, "train": {"max_steps": 7}})
    assert build_training_arguments(limited.train, limited.model, tmp_path).max_steps == 7
    assert problems_of({**TINY, "train": {"max_steps": -1}}) == [
        "train.max_steps: got -1; -1 no longer means 'no limit': use null (train by train.num_epochs)"
    ]
    assert problems_of({**TINY, "train": {"max_steps": 0}})[0].startswith(
        "train.max_steps: got 0; Input should be greater"
    )
