"""Run names that say what a run is: recipe, base model, head, the overrides that differ from the recipe and a
short run key, e.g. ``tiny·label_token·lr=2e-3·3f09d8``.

Pure: the caller loads the recipe (a RunConfig) and knows the run key. `config_overrides` is the diff the name
and the run's description are made of; `run_name` composes the name; `describe_overrides` is the description
(markdown) the MLflow run page shows.

Example: the tiny recipe with --set train.learning_rate=2e-3 and run key 3f09d8c1...:
>>> run_name("configs/tiny.yaml", "tiny", "label_token", {"train.learning_rate": 0.002}, "3f09d8c1")
'tiny·label_token·lr=2e-3·3f09d8'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from pref_core.config.schema import ModelConfig, RunConfig

SEPARATOR = "·"
RUN_KEY_CHARS = 6  # of the run key in a name: enough to tell runs apart at a glance
MAX_NAME_OVERRIDES = 4  # overrides spelled out in a name; the rest are counted ("+2 more")
MAX_VALUE_CHARS = 16
# Fields a name shows in another way (the base model, the head) or that only name the run itself.
NAME_SKIPS = ("model.name_or_path", "model.gguf", "model.head", "tracking")
# Short names of the keys runs are most often told apart by; any other key shows its last part.
SHORT_KEYS = {
    "train.learning_rate": "lr",
    "train.num_epochs": "epochs",
    "train.max_steps": "steps",
    "train.per_device_batch_size": "bs",
    "train.gradient_accumulation_steps": "accum",
    "train.warmup_steps": "warmup",
    "train.weight_decay": "wd",
    "lora.r": "r",
    "lora.alpha": "alpha",
    "lora.target_modules": "lora",
    "prompt.max_length": "len",
    "cv.n_folds": "folds",
}


def base_model_label(model: ModelConfig) -> str:
    """The base model in a word: 'tiny', the GGUF file's stem, or the last part of a hub id or folder."""
    if model.tiny is not None:
        return "tiny"
    if model.gguf is not None:
        return Path(model.gguf.file).stem
    if model.name_or_path:
        return Path(str(model.name_or_path).rstrip("/")).name or str(model.name_or_path)
    return "no-model"


def recipe_label(recipe: Optional[str]) -> Optional[str]:
    """'configs/tiny.yaml' -> 'tiny'; None stays None."""
    return Path(recipe).stem if recipe else None


def _skipped(key: str, ignore: Iterable[str]) -> bool:
    return any(key == i or key.startswith(i + ".") for i in ignore)


def config_overrides(
    flat: Mapping[str, Any], recipe_flat: Mapping[str, Any], ignore: Iterable[str] = ("tracking.recipe",)
) -> dict[str, Any]:
    """The dotted keys (schema order) whose value in `flat` (RunConfig.flat()) differs from the recipe's, with the
    run's value; `ignore`: keys or sections left out."""
    ignored = tuple(ignore)
    return {
        key: value
        for key, value in flat.items()
        if not _skipped(key, ignored) and (key not in recipe_flat or recipe_flat[key] != value)
    }


def format_value(value: Any) -> str:
    """A config value as short as it reads: 2e-3, 0.5, true, q_proj,v_proj; long values are cut with '…'."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = _short_number(value)
    elif isinstance(value, (list, tuple)):
        text = ",".join(format_value(v) for v in value)
    elif value is None:
        text = "null"
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def _short_number(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 1e5:
        return f"{value:.4g}"
    mantissa, exponent = f"{value:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def short_key(key: str, keys: Iterable[str]) -> str:
    """SHORT_KEYS' name, else the last part of `key`, or its last two parts when another of `keys` ends the same."""
    if key in SHORT_KEYS:
        return SHORT_KEYS[key]
    leaf = key.rsplit(".", 1)[-1]
    clash = [k for k in keys if k != key and k not in SHORT_KEYS and k.rsplit(".", 1)[-1] == leaf]
    return ".".join(key.split(".")[-2:]) if clash else leaf


def run_name(
    recipe: Optional[str],
    base: str,
    head: str,
    overrides: Mapping[str, Any],
    run_key: Optional[str] = None,
    neutral: Iterable[str] = (),
) -> str:
    """recipe·base·head·key=value...·run key: the base is left out when it is the recipe's own name, result-neutral
    overrides (`neutral`: keys or sections such as data.train_csv, output_dir) and those NAME_SKIPS names are left
    out, at most MAX_NAME_OVERRIDES are spelled out ('+N more' counts the rest), the run key is cut to
    RUN_KEY_CHARS (None: left out, e.g. before the data is hashed)."""
    label = recipe_label(recipe)
    parts = [p for p in (label, None if base == label else base, head) if p]
    shown = [k for k in overrides if not _skipped(k, (*NAME_SKIPS, *neutral))]
    parts += [f"{short_key(k, shown)}={format_value(overrides[k])}" for k in shown[:MAX_NAME_OVERRIDES]]
    if len(shown) > MAX_NAME_OVERRIDES:
        parts.append(f"+{len(shown) - MAX_NAME_OVERRIDES} more")
    if run_key:
        parts.append(run_key[:RUN_KEY_CHARS])
    return SEPARATOR.join(parts)


def fold_run_name(parent_name: str, fold: int) -> str:
    """'<parent name>/fold-k': a fold run reads as part of its parent in any list of runs."""
    return "/".join((parent_name, f"fold-{fold}"))


def describe_overrides(recipe: Optional[str], overrides: Mapping[str, Any]) -> str:
    """The run's description (markdown): the recipe and every key that differs from it, with its value."""
    head = f"Recipe `{recipe}`" if recipe else "No recipe file (a config built in code)"
    if not overrides:
        return f"{head}, as it is: no overrides."
    lines = [f"{head}, with these overrides:", ""]
    lines += [f"- `{key}` = `{json.dumps(value, default=str)}`" for key, value in overrides.items()]
    return "\n".join(lines)


def with_recipe(config: RunConfig, recipe: Union[str, Path]) -> RunConfig:
    """`config` with tracking.recipe set to the YAML it was loaded from (unless it names one already)."""
    if config.tracking.recipe:
        return config
    return config.model_copy(update={"tracking": config.tracking.model_copy(update={"recipe": str(recipe)})})
