"""One process of a fold that several processes train together (train.num_processes > 1).

`fit-fold` writes the fold's tokenized rows and a spec to the fold folder, then starts
``torchrun --nproc-per-node N -m arena_pref.tasks.fold_worker SPEC`` (tasks/training.py). Every process trains
(DDP); rank 0 alone streams metrics to the fold's MLflow run, writes the adapter and the validation
predictions, and leaves the fold's `FoldResult` (``distributed/result.json``) for `fit-fold` to read. torchrun
restarts the whole group when a process dies (preemption, OOM killer, SIGKILL), and the restarted processes resume
from the fold's latest checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from pref_core.train.result import RESULT_FILE


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # Written before anything slow, so that a supervisor (or a test) can find every process of the fold.
    (spec_path.parent / f"pid-{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))

    import torch

    if torch.cuda.is_available():  # before the model loads: each process on its own GPU
        torch.cuda.set_device(local_rank)
    from datasets import load_from_disk

    from pref_core.config.loading import parse_config
    from pref_core.train.checks import is_main_process
    from pref_core.train.fold import fine_tune_fold

    config = parse_config(spec["config"])
    callbacks = []
    if is_main_process():
        from arena_pref.tasks import tracking
        from mlflow import MlflowClient

        client = MlflowClient(spec["tracking_uri"])
        restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        tracking.set_tags(
            client,
            spec["mlflow_run_id"],
            {
                "arena_pref.num_processes": os.environ.get("WORLD_SIZE", "1"),
                "arena_pref.distributed_restarts": restarts,
            },
        )
        callbacks.append(tracking.MlflowFoldCallback(client, spec["mlflow_run_id"]))
    from pref_core.text.tokenization import load_token_cache

    test_ds = load_token_cache(spec["test"]) if spec.get("test") else None
    result = fine_tune_fold(
        config,
        load_from_disk(spec["train"]),
        load_from_disk(spec["val"]),
        spec["output_dir"],
        callbacks=callbacks,
        name_or_path=spec["base_model"],
        test_ds=test_ds,
    )
    if is_main_process():
        result.save(spec_path.parent / RESULT_FILE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
