"""train.distributed=fsdp on two GPUs (opt-in: `pytest -m gpu`; skipped with fewer than two CUDA devices).

accelerate shards models only on accelerators, so this is the one FSDP fold the project runs (the CPU tests
check the arguments: tests/test_distributed.py). Two torchrun processes train the tiny model sharded
(FSDP2, a unit per decoder layer) on the same rows per optimizer step as one process; the fold must end
with one adapter and validation log loss within TOLERANCE of the 1-process fold. TOLERANCE is not measured
yet (no machine with two GPUs has run this): fp32 weights, so only the order of the sharded reductions
differs. Expected to fail until pref_core.train.fold gathers the sharded adapter and predicts on every rank
(it saves and predicts on rank 0 alone today), which is why FSDP sits behind ARENA_PREF_FSDP_EXPERIMENTAL.

This file is also the torchrun entry point of its processes (`python tests/gpu/test_fsdp_fold.py SPEC`):
GPU images have no Prefect or MLflow, so the fold is trained through pref_core alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP needs two CUDA GPUs"),
]

TOLERANCE = 1e-4
TEXTS = ["the cat sat on the mat Answer:", "a dog ran to the river Answer:", "zebra zebra river Answer:"] * 20


def _config(num_processes: int, distributed: str) -> dict:
    return {
        "model": {"tiny": {}, "head": "label_token", "dtype": "fp32", "quantization": "none"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {
            "max_steps": 4,
            "per_device_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "learning_rate": 1e-3,
            "warmup_steps": 0,
            "optim": "adamw_torch",
            "mixed_precision": "no",
            "save_steps": 2,
            "eval_batch_size": 8,
            "num_processes": num_processes,
            "distributed": distributed,
        },
    }


def _fold(spec: dict) -> dict:
    """Train one fold in this process (one of torchrun's when WORLD_SIZE > 1) and return rank 0's metrics."""
    from datasets import load_from_disk

    from pref_core.config.loading import parse_config
    from pref_core.train.checks import is_main_process
    from pref_core.train.fold import fine_tune_fold

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    result = fine_tune_fold(
        parse_config(spec["config"]),
        load_from_disk(spec["train"]),
        load_from_disk(spec["val"]),
        spec["output_dir"],
        name_or_path=spec["base_model"],
    )
    if is_main_process():
        Path(spec["output_dir"], "metrics.json").write_text(json.dumps(result.metrics))
    return result.metrics


def test_two_gpu_fsdp_fold_matches_one_process(tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from pref_core.model.tiny import build_tiny_checkpoint

    folder = build_tiny_checkpoint(TEXTS, tmp_path / "tiny", hidden_size=64, intermediate_size=128, vocab_size=300)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = [tokenizer.encode(t) for t in TEXTS]
    rows = Dataset.from_dict(
        {
            "id": [str(i) for i in range(len(ids))],
            "input_ids": ids,
            "length": [len(x) for x in ids],
            "label": [i % 3 for i in range(len(ids))],
        }
    )
    rows.select(range(40)).save_to_disk(str(tmp_path / "train"))
    rows.select(range(40, 60)).save_to_disk(str(tmp_path / "val"))
    common = {"train": str(tmp_path / "train"), "val": str(tmp_path / "val"), "base_model": str(folder)}

    single = _fold({**common, "config": _config(1, "ddp"), "output_dir": str(tmp_path / "single")})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**common, "config": _config(2, "fsdp"), "output_dir": str(tmp_path / "fsdp")}))
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__, str(spec)],
        check=True,
        timeout=600,
        env={**os.environ, "ARENA_PREF_FSDP_EXPERIMENTAL": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    sharded = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    assert sharded["global_step"] == single["global_step"] == 4
    gap = abs(sharded["val_log_loss"] - single["val_log_loss"])
    print(f"FSDP 2-GPU vs 1-process val_log_loss gap: {gap:.2e}")
    assert gap < TOLERANCE
    adapters = [p for p in (tmp_path / "fsdp").glob("**/adapter_model.safetensors") if "checkpoint" not in str(p)]
    assert [p.parent.name for p in adapters] == ["adapter"]


if __name__ == "__main__":
    _fold(json.loads(Path(sys.argv[1]).read_text()))
