"""The run key: which CV computation a run is, so reruns find their finished folds and different setups never
share a folder.

It hashes the resolved config less its result-neutral fields (paths, tracking, execution: marked in
pref_core/config/schema.py) together with the content hash of every input file.

The model key: which registered model a run is. Its run key plus the settings applied after the folds
(post-processing, marked AFTER_FOLDS): a rerun that only changes those reuses every fold, yet is a different model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pref_core.config.fields import after_folds_fields, result_neutral_fields
from pref_core.config.schema import DistillConfig, RunConfig
from pref_core.hashing import hash_file, hash_json


def teacher_hashes(distill: DistillConfig) -> dict[str, Optional[str]]:
    """Content hashes of the distillation inputs: the teacher CSV, and the per-fold teacher folder's
    `fold_*` files by name (None where not configured)."""
    teacher_csv, teacher_dir = distill.teacher_csv, distill.teacher_dir
    return {
        "teacher": hash_file(teacher_csv) if teacher_csv else None,
        "teacher_dir": hash_json(sorted((p.name, hash_file(p)) for p in Path(teacher_dir).glob("fold_*")))
        if teacher_dir
        else None,
    }


def compute_run_key(config: RunConfig, input_hashes: dict[str, Optional[str]]) -> str:
    """Hash of what a CV run computes: the config less its result-neutral fields and `input_hashes`
    (input name -> content hash, None for an input not given)."""
    tree = config.model_dump(mode="json")
    for dotted in result_neutral_fields():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:  # a field inside an unset optional section (model.tiny: null) has nothing to drop
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return hash_json({"config": tree, "inputs": input_hashes})


def compute_model_key(config: RunConfig, run_key: str) -> str:
    """Hash of what a run registers: its `run_key` and the values of the AFTER_FOLDS fields (post-processing)."""
    flat = config.flat()
    after = {
        name: {k: v for k, v in flat.items() if k == name or k.startswith(name + ".")} for name in after_folds_fields()
    }
    return hash_json({"run_key": run_key, "after_folds": after})
