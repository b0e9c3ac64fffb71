"""Fold-adapter averaging: one LoRA adapter whose weight delta is the exact mean of the K fold deltas.

A LoRA layer adds ``delta = scaling * B @ A`` to a frozen weight. Concatenating the fold factors,
``A_cat = [w_1 s_1 A_1; ...; w_K s_K A_K]`` (stacked rows) and ``B_cat = [B_1 ... B_K]`` (side by side),
gives ``B_cat @ A_cat = sum_k w_k s_k B_k A_k``: with ``w_k = 1/K`` and the new adapter's scaling 1
(``r = lora_alpha = sum of the ranks``) that is the mean delta, exactly. This is peft's
``add_weighted_adapter(combination_type="cat")`` (a test checks the two agree), done here on the saved
files so that no base model is loaded, and with the classifier heads (peft ``modules_to_save``, which
``add_weighted_adapter`` refuses) averaged too. Cost: rank K*r at inference instead of r, one base pass
instead of K (the 1st-place LMSYS recipe).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence, Union

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def _lora_scaling(config: dict) -> float:
    if config.get("use_rslora"):
        return config["lora_alpha"] / config["r"] ** 0.5
    return config["lora_alpha"] / config["r"]


def _check_averageable(configs: list[dict], folders: list[Path]) -> None:
    first = configs[0]
    for config, folder in zip(configs, folders):
        if config.get("peft_type") != "LORA":
            raise ValueError(f"{folder}: only LoRA adapters can be averaged, got {config.get('peft_type')}")
        if config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
            raise ValueError(
                f"{folder}: DoRA and per-module rank/alpha patterns cannot be averaged by concatenation; "
                "use --folds ensemble"
            )
        if sorted(config["target_modules"]) != sorted(first["target_modules"]) or config.get(
            "modules_to_save"
        ) != first.get("modules_to_save"):
            raise ValueError(
                f"{folder}: its target_modules/modules_to_save differ from {folders[0]}; the folds of one "
                "run must share them"
            )


def average_adapters(adapter_dirs: Sequence[Union[str, Path]], out_dir: Union[str, Path]) -> Path:
    """Write to `out_dir` the averaged adapter of `adapter_dirs` (folders of pref_core.model.preference.save_adapter).

    LoRA: the exact mean delta (module docstring). Other saved tensors (the classifier head's weight and
    bias): their mean. Tokenizer and head description are copied from the first fold.
    """
    import torch
    from safetensors.torch import load_file, save_file

    folders = [Path(d) for d in adapter_dirs]
    if not folders:
        raise ValueError("average_adapters needs at least one adapter folder")
    configs = [json.loads((f / ADAPTER_CONFIG).read_text(encoding="utf-8")) for f in folders]
    _check_averageable(configs, folders)
    states = [load_file(str(f / ADAPTER_WEIGHTS)) for f in folders]
    keys = set(states[0])
    for state, folder in zip(states[1:], folders[1:]):
        if set(state) != keys:
            raise ValueError(f"{folder}: its tensors differ from {folders[0]}'s; the folds of one run must share them")
    weight = 1.0 / len(folders)
    averaged: dict[str, torch.Tensor] = {}
    for key in sorted(keys):
        dtype = states[0][key].dtype
        if ".lora_A." in key:
            # (r_k, in) each -> (sum r_k, in); the weight and the fold's own scaling go into A.
            parts = [s[key].float() * (weight * _lora_scaling(c)) for s, c in zip(states, configs)]
            averaged[key] = torch.cat(parts, dim=0).to(dtype)
        elif ".lora_B." in key:
            averaged[key] = torch.cat([s[key].float() for s in states], dim=1).to(dtype)  # (out, sum r_k)
        elif "lora_" in key:
            raise ValueError(f"{folders[0]}: cannot average the tensor {key} (LoRA embedding or bias)")
        else:  # modules_to_save: the classifier head
            averaged[key] = torch.stack([s[key].float() for s in states]).mean(dim=0).to(dtype)
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(folders[0], out_dir, ignore=shutil.ignore_patterns(ADAPTER_WEIGHTS, ADAPTER_CONFIG))
    new_rank = sum(c["r"] for c in configs)
    config = {**configs[0], "r": new_rank, "lora_alpha": new_rank, "use_rslora": False}
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(averaged, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return out_dir
