"""The shipped recipes behave as documented: every one loads, round-trips and keys its runs stably; the seed
recipe tokenizes, builds and trains as the seed notebook (/work/shared/seed_tokenize.md, README "Configs and
recipes"); the winners' recipes build a classifier with LoRA on every linear layer, train in bf16 with both a/b
orders in a step and cut rows to 2048 tokens; the tiny recipe keeps every example within its 256 tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pref_core.config.loading import dump_config, load_config
from pref_core.config.run_key import compute_run_key
from pref_core.data.folds import make_folds, prompt_group_key
from pref_core.data.labels import LABEL_COLUMNS
from pref_core.model.backbone import build_quantization_config, resolve_attn_implementation, resolve_dtype
from pref_core.text.prompts import explain_rows
from pref_core.train.trainer import build_training_arguments, resolve_mixed_precision
from tests import factories
from tests.test_seed_exact import frame_of, generated_rows, seed_reference

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SEED = ROOT / "configs" / "seed-llama3-8b.yaml"
WINNERS = ["gemma2-9b-cls.yaml", "llama3-8b-cls.yaml"]
INPUTS = {"train": "0123456789abcdef", "test": None, "extra": None, "teacher": None, "teacher_dir": None}
# The tiny base these tests build a recipe's model on: the recipe's LoRA and head, a 2-layer Llama underneath.
ON_TINY = ["model.quantization=none", "model.dtype=fp32"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = factories.tiny_base(tmp_path_factory.mktemp("base"))
    return folder, AutoTokenizer.from_pretrained(folder)


def lora_targets(model) -> dict[str, object]:
    """Name -> module of every layer that carries a LoRA adapter."""
    return {name: module for name, module in model.named_modules() if hasattr(module, "lora_A") and module.lora_A}


def cpu_training_arguments(config, tmp_path):
    """The recipe's TrainingArguments as this CPU machine can build them (fp16/bf16 mixed precision need CUDA)."""
    cpu = config.model_copy(update={"train": config.train.model_copy(update={"mixed_precision": "no"})})
    return build_training_arguments(cpu.train, cpu.model, tmp_path / "checkpoints")


# -- every recipe -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_recipe_validates_and_survives_a_dump_and_reload(path, tmp_path):
    config = load_config(path)
    again = load_config(dump_config(config, tmp_path / "resolved.yaml"))
    assert again == config
    assert compute_run_key(again, INPUTS) == compute_run_key(config, INPUTS)


def test_recipe_run_keys_are_the_same_in_another_process_and_differ_between_recipes():
    keys = {p.name: compute_run_key(load_config(p), INPUTS) for p in CONFIGS}
    script = (
        "import json, sys; from pathlib import Path; from pref_core.config.run_key import compute_run_key; "
        "from pref_core.config.loading import load_config; inputs = json.loads(sys.argv[1]); "
        "print(json.dumps({p.name: compute_run_key(load_config(p), inputs) "
        "for p in sorted(Path(sys.argv[2]).glob('*.yaml'))}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(INPUTS), str(ROOT / "configs")],
        cwd=ROOT,
        env=dict(os.environ, PYTHONHASHSEED="12345"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == keys
    assert len(set(keys.values())) == len(keys)


# -- the seed recipe ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix_space", [True, False], ids=["prefix_space", "no_prefix_space"])
def test_seed_recipe_tokenizes_as_the_seed_notebook(tiny_tokenizer, prefix_space):
    """seed_tokenize.md steps 1-3 and 5 with the recipe's own prompt and head settings (1024 as the trigger)."""
    import copy

    from tokenizers import pre_tokenizers

    tokenizer = tiny_tokenizer
    if not prefix_space:  # as Llama-3 does
        tokenizer = copy.deepcopy(tiny_tokenizer)
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    seed = load_config(SEED)
    raw = generated_rows(60, seed=3)
    # This tiny vocabulary splits "tie" without the prefix space (Llama-3 keeps it whole): no label head there.
    head = seed.model.head if prefix_space else "classifier"
    explained = explain_rows(tokenizer, frame_of(raw), seed.prompt, head, seed.model.label_tokens)
    expected = [seed_reference(tokenizer, *row, max_length=1024) for row in raw]
    assert [row["input_ids"] for row in explained] == expected
    assert any(len(ids) > 1024 for ids in expected)  # the trigger fired, with no second check
    if prefix_space:
        first_ids = {
            col: tokenizer(word, add_special_tokens=False)["input_ids"][0]
            for col, word in zip(LABEL_COLUMNS, ("a", "b", "tie"))
        }
        assert all(row["label_token_ids"] == first_ids for row in explained)
    assert all(row["head_position"] == len(row["input_ids"]) - 1 for row in explained)  # right after "Answer: "


def test_seed_recipe_builds_lora_on_q_k_v_with_the_label_token_head(tiny_base):
    from pref_core.data.labels import get_label_token_ids
    from pref_core.model.preference import build_model, unwrap_preference_model

    base, tokenizer = tiny_base
    seed = load_config(SEED, ON_TINY)
    model = build_model(seed.model, seed.lora, tokenizer, name_or_path=base, seed=seed.train.seed)
    targets = lora_targets(model)
    assert {name.rsplit(".", 1)[-1] for name in targets} == {"q_proj", "k_proj", "v_proj"}
    assert len(targets) == 3 * model.get_base_model().backbone.config.num_hidden_layers
    for module in targets.values():
        assert module.r["default"] == 16 and module.scaling["default"] == pytest.approx(32 / 16)
        assert module.lora_dropout["default"].p == pytest.approx(0.05)
    # Only LoRA weights train: bias none, and the label_token head reads frozen lm_head rows.
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    inner = unwrap_preference_model(model)
    assert inner.head == "label_token"
    assert inner.label_token_ids.tolist() == get_label_token_ids(tokenizer, ("a", "b", "tie"))


def test_seed_recipe_trains_as_the_notebook(tmp_path, monkeypatch):
    seed = load_config(SEED)
    args = cpu_training_arguments(seed, tmp_path)
    assert args.learning_rate == pytest.approx(2e-4) and args.warmup_steps == 20
    assert str(args.lr_scheduler_type.value) == "linear"
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 2)
    assert args.num_train_epochs == 1 and args.max_steps == -1
    assert str(args.optim.value) == "paged_adamw_8bit"  # 8-bit AdamW, paged as QLoRA trains
    assert str(args.eval_strategy.value) == "epoch"  # evaluation each epoch
    assert args.seed == 42
    # fp16 weights, 4-bit nf4 QLoRA over them, fp16 mixed precision: on a GPU only, never a silent fallback.
    assert resolve_dtype(seed.model) == torch.float16
    quantization = build_quantization_config(seed.model)
    assert quantization.load_in_4bit and not quantization.load_in_8bit
    assert quantization.bnb_4bit_quant_type == "nf4" and quantization.bnb_4bit_compute_dtype == torch.float16
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            resolve_mixed_precision(seed.train)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_mixed_precision(seed.train) == "fp16"


def test_seed_recipe_folds_five_ways_grouped_by_prompt(train_frame):
    seed = load_config(SEED)
    folds = make_folds(train_frame, seed.cv.n_folds, seed.cv.seed)
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert folds["id"].tolist() == train_frame["id"].astype(str).tolist()  # every row in exactly one fold
    per_prompt = folds.assign(group=train_frame["prompt"].map(prompt_group_key).to_numpy()).groupby("group")["fold"]
    assert per_prompt.nunique().max() == 1  # grouped by prompt (the project's change from row_index % 5)
    assert make_folds(train_frame, seed.cv.n_folds, seed.cv.seed).equals(folds)


# -- the winners' recipes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WINNERS)
def test_winner_recipe_builds_a_classifier_with_lora_on_every_linear_layer(name, tiny_base):
    from torch import nn

    from pref_core.model.preference import CLASSIFIER_NAME, build_model, unwrap_preference_model

    base, tokenizer = tiny_base
    recipe = load_config(ROOT / "configs" / name, ON_TINY)
    model = build_model(recipe.model, recipe.lora, tokenizer, name_or_path=base, seed=recipe.train.seed)
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(base)  # the base's own linear layers, before LoRA wraps them
    decoder_linear = {n.rsplit(".", 1)[-1] for n, m in plain.get_decoder().named_modules() if isinstance(m, nn.Linear)}
    targets = lora_targets(model)
    assert {n.rsplit(".", 1)[-1] for n in targets} == decoder_linear >= {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert not any("lm_head" in n or CLASSIFIER_NAME in n for n in targets)
    assert unwrap_preference_model(model).head == "classifier"
    head_params = [p for n, p in model.named_parameters() if CLASSIFIER_NAME in n and "lora_" not in n]
    assert head_params and any(p.requires_grad for p in head_params)  # the head trains in full


@pytest.mark.parametrize("name", WINNERS)
def test_winner_recipe_predicts_the_average_of_both_orders(name, tiny_base, train_frame, tmp_path):
    """Swap TTA: the recipe's prediction is the mean of the row and its a/b-swapped copy read back."""
    import numpy as np

    from pref_core.model.preference import build_model, save_adapter
    from pref_core.predict.ensemble import predict_frame_probabilities

    base, tokenizer = tiny_base
    config = load_config(ROOT / "configs" / name, ON_TINY)
    model = build_model(config.model, config.lora, tokenizer, name_or_path=base, seed=config.train.seed)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an untrained head is near-uniform: give the adapter something to say
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    adapter = save_adapter(model, tmp_path / "fold_0", tokenizer)
    frame = train_frame.head(6)
    swapped = frame.assign(response_a=frame["response_b"], response_b=frame["response_a"])
    no_tta = config.model_copy(update={"train": config.train.model_copy(update={"tta_swap": False})})
    with_tta = predict_frame_probabilities(
        config.model,
        config.prompt,
        [adapter],
        frame,
        batch_size=config.train.eval_batch_size,
        tta_swap=config.train.tta_swap,
        base_model=str(base),
    )
    plain = predict_frame_probabilities(
        no_tta.model,
        no_tta.prompt,
        [adapter],
        frame,
        batch_size=no_tta.train.eval_batch_size,
        tta_swap=no_tta.train.tta_swap,
        base_model=str(base),
    )
    mirrored = predict_frame_probabilities(
        no_tta.model,
        no_tta.prompt,
        [adapter],
        swapped,
        batch_size=no_tta.train.eval_batch_size,
        tta_swap=no_tta.train.tta_swap,
        base_model=str(base),
    )[:, [1, 0, 2]]
    assert not np.allclose(plain, mirrored, atol=1e-3)  # the order matters to this model
    np.testing.assert_allclose(with_tta, (plain + mirrored) / 2, atol=1e-5)


@pytest.mark.parametrize("name, calibrated", [(w, True) for w in WINNERS] + [("seed-llama3-8b.yaml", False)])
def test_recipe_fits_a_temperature_only_where_documented(name, calibrated):
    import numpy as np
    import pandas as pd

    from pref_core.evaluate.oof import score_oof

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    guess = np.where(rng.random(300) < 0.5, labels, rng.integers(0, 3, 300))
    probs = np.full((300, 3), 0.025)
    probs[np.arange(300), guess] = 0.95  # overconfident: right about 2 times in 3
    oof = pd.DataFrame(probs, columns=list(LABEL_COLUMNS)).assign(
        id=[str(i) for i in range(300)], label=labels, fold=np.arange(300) % 5
    )
    scores = score_oof(oof, load_config(ROOT / "configs" / name).calibration.method)
    if calibrated:
        assert scores.temperature > 1.0
        assert scores.metrics["oof_log_loss_calibrated"] < scores.metrics["oof_log_loss"]
    else:
        assert scores.temperature == 1.0 and "oof_log_loss_calibrated" not in scores.metrics


@pytest.mark.parametrize("name", WINNERS)
def test_winner_recipe_trains_bf16_with_both_orders_in_a_step(name, tmp_path, monkeypatch):
    config = load_config(ROOT / "configs" / name)
    args = cpu_training_arguments(config, tmp_path)
    assert args.per_device_train_batch_size == 2 * 2  # 2 pairs a device batch, each in both orders
    assert args.gradient_accumulation_steps == 4 and str(args.lr_scheduler_type.value) == "cosine"
    assert resolve_dtype(config.model) == torch.bfloat16 and build_quantization_config(config.model) is None
    # "or set model.quantization=4bit for 24 GB cards": QLoRA with bf16 compute.
    small_card = build_quantization_config(load_config(ROOT / "configs" / name, ["model.quantization=4bit"]).model)
    assert small_card.load_in_4bit and small_card.bnb_4bit_compute_dtype == torch.bfloat16
    assert resolve_attn_implementation(config.model) == ("eager" if name.startswith("gemma2") else "sdpa")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_mixed_precision(config.train) == "bf16"


@pytest.mark.parametrize("name", WINNERS)
def test_winner_recipe_cuts_long_rows_to_2048_tokens(name, tiny_tokenizer):
    config = load_config(ROOT / "configs" / name)
    rows = explain_rows(
        tiny_tokenizer,
        frame_of(generated_rows(40, seed=11)),
        config.prompt,
        config.model.head,
        config.model.label_tokens,
    )
    assert max(row["n_tokens"] for row in rows) <= 2048
    assert any(row["n_tokens_untruncated"] > 2048 for row in rows)  # the set holds rows that had to be cut


def test_tiny_recipe_keeps_every_example_within_its_256_tokens(tiny_tokenizer):
    config = load_config(ROOT / "configs" / "tiny.yaml")
    rows = explain_rows(
        tiny_tokenizer,
        frame_of(generated_rows(60, seed=5)),
        config.prompt,
        config.model.head,
        config.model.label_tokens,
    )
    assert max(row["n_tokens"] for row in rows) <= config.prompt.max_length == 256
    assert any(row["n_tokens_untruncated"] > 256 for row in rows)


@pytest.mark.slow
def test_winners_options_together_through_the_flow(prefect_harness, tmp_path, synthetic_csvs):
    """classifier head + all-linear LoRA + swap=both + swap TTA + multi-turn template + distillation
    + calibration, end to end on the tiny model: the pipeline wires every option."""
    import numpy as np
    import pandas as pd

    from arena_pref.flows.cv_training import cv_training
    from mlflow import MlflowClient
    from pref_core.data.arena import read_arena_csv
    from pref_core.data.labels import LABEL_COLUMNS

    train = read_arena_csv(synthetic_csvs[0], "train").frame
    probs = np.full((len(train), 3), 0.1)
    probs[np.arange(len(train)), train["label"].to_numpy()] = 0.8
    teacher = pd.DataFrame(probs, columns=list(LABEL_COLUMNS))
    teacher.insert(0, "id", train["id"])
    teacher_csv = tmp_path / "teacher.csv"
    teacher.to_csv(teacher_csv, index=False)

    config = factories.tiny_recipe_config(
        tmp_path,
        synthetic_csvs[0],
        "model.head=classifier",
        "train.swap=both",
        "train.tta_swap=true",
        "prompt.template=multi_turn",
        "prompt.truncation=proportional",
        f"distill.teacher_csv={teacher_csv}",
        "distill.kl_weight=0.5",
        "cv.execution=in_process",
        "cv.folds=[0]",
        "train.num_epochs=1",
        test_csv=synthetic_csvs[1],
    )
    result = cv_training(config)
    client = MlflowClient(config.tracking.uri)
    parent = client.get_run(result.parent_run_id)
    assert {"oof_log_loss", "oof_log_loss_calibrated"} <= set(parent.data.metrics)
    assert "temperature" in parent.data.params and "temperature" not in parent.data.metrics
    assert parent.data.metrics["oof_log_loss_calibrated"] <= parent.data.metrics["oof_log_loss"] + 1e-9
    fold = client.get_run(result.fold_run_ids[0])
    assert "val_log_loss_no_tta" in fold.data.metrics  # swap TTA evaluated
    submission = pd.read_csv(result.submission_path)
    np.testing.assert_allclose(submission[list(LABEL_COLUMNS)].sum(axis=1), 1.0, atol=1e-6)
