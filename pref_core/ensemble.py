"""Fold ensembles: predict with several adapters over one base model and average them.

Used both inside the flow (one fold at a time, averaged at submission) and by
the registered model, through the same `average_probabilities`, so that the
two agree to float precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pref_core.config import RunConfig


def average_probabilities(per_model: Sequence[np.ndarray], temperature: float = 1.0) -> np.ndarray:
    """Mean of (n, 3) probability matrices, rows renormalised to sum to 1 (float64).

    `temperature` (calibration.apply_temperature) is applied to each model's matrix before the
    mean: it was fit on OOF rows, each predicted by one fold model, so that is where it belongs;
    the mean of K models is already less confident than any one of them.
    """
    from pref_core.calibration import apply_temperature

    if not per_model:
        raise ValueError("average_probabilities needs at least one (n, 3) matrix")
    if temperature != 1.0:
        per_model = [apply_temperature(p, temperature) for p in per_model]
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in per_model])  # (models, n, 3)
    mean = stacked.mean(axis=0)
    return mean / mean.sum(axis=1, keepdims=True)


def predict_with_adapters(
    config: RunConfig,
    adapter_dirs: Sequence[str | Path],
    dataset,
    base_model: Optional[str] = None,
    progress: bool = False,
    temperature: float = 1.0,
) -> np.ndarray:
    """Average the predictions of each fold adapter on `dataset` (each calibrated by `temperature`
    first, see `average_probabilities`), loading one model at a time.

    Only one copy of the base sits in memory at once: an 8B base per fold
    would not fit on one GPU.
    """
    import gc

    import torch

    from pref_core.inference import predict
    from pref_core.modeling import load_preference_model

    outputs = []
    for adapter_dir in adapter_dirs:
        model, tokenizer = load_preference_model(config, adapter_dir, name_or_path=base_model)
        outputs.append(
            predict(model, dataset, batch_size=config.train.eval_batch_size, tta_swap=config.train.tta_swap,
                    pad_token_id=tokenizer.pad_token_id, progress=progress)
        )
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return average_probabilities(outputs, temperature)
