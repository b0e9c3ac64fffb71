"""Fold ensembles: predict with several adapters over one base model and average them.

Used both inside the flow (one fold at a time, averaged at submission) and by
the registered model, through the same `average_probabilities`, so that the
two agree to float precision.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from pref_core.data.labels import TURN_COLUMNS

if TYPE_CHECKING:  # type only: the Kaggle bundle imports this module without pydantic
    from pref_core.config.schema import ModelConfig, PromptConfig


def average_probabilities(per_model: Sequence[np.ndarray], temperature: float = 1.0) -> np.ndarray:
    """Mean of (n, 3) probability matrices, rows renormalised to sum to 1 (float64).

    `temperature` (calibration.apply_temperature) is applied to each model's matrix before the
    mean: it was fit on OOF rows, each predicted by one fold model, so that is where it belongs;
    the mean of K models is already less confident than any one of them.
    """
    from pref_core.evaluate.calibration import apply_temperature

    if not per_model:
        raise ValueError("average_probabilities needs at least one (n, 3) matrix")
    if temperature != 1.0:
        per_model = [apply_temperature(p, temperature) for p in per_model]
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in per_model])  # (models, n, 3)
    mean = stacked.mean(axis=0)
    return mean / mean.sum(axis=1, keepdims=True)


def encode_frame(frame, tokenizer, prompt_config, with_swap: bool = False, batch_rows: int = 1000):
    """Token ids of a validated arena frame (turn lists), without `datasets`: (input_ids, input_ids_swap or None).

    The same ids as pref_core.text.tokenization.tokenize_frame (both call PromptEncoder.encode_batch_with_swap).
    """
    from pref_core.text.prompts import PromptEncoder

    encoder = PromptEncoder(tokenizer, prompt_config)
    rows = list(zip(*(frame[column] for column in TURN_COLUMNS)))
    ids: list[list[int]] = []
    ids_swap: Optional[list[list[int]]] = [] if with_swap else None
    for start in range(0, len(rows), batch_rows):
        chunk, chunk_swap = encoder.encode_batch_with_swap(rows[start : start + batch_rows], with_swap=with_swap)
        ids += chunk
        if with_swap:
            ids_swap += chunk_swap
    return ids, ids_swap


def split_rows(lengths: Sequence[int], n_parts: int) -> list[np.ndarray]:
    """Row indices for `n_parts` workers: rows dealt out longest first, so every worker gets as many tokens."""
    if n_parts < 1:
        raise ValueError(f"n_parts must be at least 1, got {n_parts}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [np.sort(order[k::n_parts]) for k in range(n_parts)]


def _fold_probabilities_on_device(
    model_config,
    adapter_dirs,
    input_ids,
    input_ids_swap,
    base_model,
    device,
    batch_size: int,
    progress: bool = False,
    num_threads: Optional[int] = None,
):
    """Per-adapter (n, 3) probabilities of the rows, one base loaded on `device` with every adapter switched in."""
    import os

    import torch

    from pref_core.model.preference import load_preference_ensemble
    from pref_core.predict.inference import predict_token_ids

    if num_threads:
        torch.set_num_threads(num_threads)
    model, tokenizer, names = load_preference_ensemble(
        model_config, adapter_dirs, name_or_path=base_model, device=device
    )
    outputs = []
    for name in names:
        model.set_adapter(name)  # LoRA weights and the classifier head (modules_to_save) switch together
        outputs.append(
            predict_token_ids(
                model,
                input_ids,
                input_ids_swap,
                batch_size=batch_size,
                pad_token_id=tokenizer.pad_token_id,
                progress=progress,
            )
        )
    return outputs, os.getpid()


def predict_fold_probabilities(
    model_config: "ModelConfig",
    adapter_dirs: Sequence[str | Path],
    input_ids: Sequence[Sequence[int]],
    input_ids_swap: Optional[Sequence[Sequence[int]]] = None,
    *,
    batch_size: int,
    base_model: Optional[str] = None,
    devices: Optional[Sequence[str]] = None,
    progress: bool = False,
):
    """Per-adapter (n, 3) probabilities in row order, and which worker did what: [(device, pid, n_rows)].

    `model_config`: the model section the adapters were trained with; `batch_size`: rows per forward pass
    (train.eval_batch_size).

    One device (default: the GPU if there is one, else the CPU) runs in this process. Several devices
    (e.g. ``["cuda:0", "cuda:1"]``, or ``["cpu", "cpu"]`` to stand in for two GPUs) each get one spawned
    worker process that loads the base once and predicts its share of the rows (`split_rows`); the
    shares are merged back in the original row order.
    """
    if not devices or len(devices) == 1:
        device = devices[0] if devices else None
        outputs, pid = _fold_probabilities_on_device(
            model_config, adapter_dirs, input_ids, input_ids_swap, base_model, device, batch_size, progress=progress
        )
        return outputs, [(str(device or "default"), pid, len(input_ids))]
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    adapter_dirs = [str(d) for d in adapter_dirs]
    shares = split_rows([len(seq) for seq in input_ids], len(devices))
    n_cpu_workers = sum(1 for d in devices if str(d).startswith("cpu"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // n_cpu_workers) if n_cpu_workers else None
    merged = None
    workers = []
    # spawn, never fork: a forked CUDA context (or a forked OpenMP pool) is unusable in the child.
    with ProcessPoolExecutor(max_workers=len(devices), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = []
        for device, share in zip(devices, shares):
            ids = [input_ids[i] for i in share]
            ids_swap = None if input_ids_swap is None else [input_ids_swap[i] for i in share]
            futures.append(
                pool.submit(
                    _fold_probabilities_on_device,
                    model_config,
                    adapter_dirs,
                    ids,
                    ids_swap,
                    base_model,
                    device,
                    batch_size,
                    False,
                    threads if str(device).startswith("cpu") else None,
                )
            )
        for device, share, future in zip(devices, shares, futures):
            outputs, pid = future.result()
            if merged is None:
                merged = [np.empty((len(input_ids), p.shape[1]), dtype=p.dtype) for p in outputs]
            for target, part in zip(merged, outputs):
                target[share] = part
            workers.append((str(device), pid, len(share)))
    return merged, workers


def predict_with_adapters(
    model_config: "ModelConfig",
    adapter_dirs: Sequence[str | Path],
    dataset,
    *,
    batch_size: int,
    tta_swap: bool,
    base_model: Optional[str] = None,
    progress: bool = False,
    temperature: float = 1.0,
    devices: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """Average the predictions of the fold adapters on `dataset` (`tta_swap`, train.tta_swap: also the
    a/b-swapped view), each fold's calibrated by `temperature` first (see `average_probabilities`).

    The base is loaded once (per device) and the adapters are switched over it, instead of one base load
    per fold. `dataset`: a datasets.Dataset or a mapping with ``input_ids`` (and ``input_ids_swap``) lists.
    """
    input_ids = list(dataset["input_ids"])
    input_ids_swap = None
    if tta_swap:
        columns = dataset.column_names if hasattr(dataset, "column_names") else list(dataset.keys())
        if "input_ids_swap" not in columns or dataset["input_ids_swap"] is None:
            raise ValueError(
                "tta_swap (train.tta_swap) needs an 'input_ids_swap' column: tokenize the frame with the swapped "
                "view as well, or set train.tta_swap=false"
            )
        input_ids_swap = list(dataset["input_ids_swap"])
    outputs, _ = predict_fold_probabilities(
        model_config,
        adapter_dirs,
        input_ids,
        input_ids_swap,
        batch_size=batch_size,
        base_model=base_model,
        devices=devices,
        progress=progress,
    )
    return average_probabilities(outputs, temperature)


def predict_frame_probabilities(
    model_config: "ModelConfig",
    prompt: "PromptConfig",
    adapter_dirs: Sequence[str | Path],
    frame,
    *,
    batch_size: int,
    tta_swap: bool,
    base_model: Optional[str] = None,
    temperature: float = 1.0,
    devices: Optional[Sequence[str]] = None,
    progress: bool = False,
) -> np.ndarray:
    """Calibrated fold-ensemble probabilities (n, 3) of a validated frame: what `arena-pref predict`, the
    registered pyfunc and the exported Kaggle bundle all run, with the run's model and prompt sections and its
    train.eval_batch_size / train.tta_swap."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dirs[0])
    input_ids, input_ids_swap = encode_frame(frame, tokenizer, prompt, with_swap=tta_swap)
    # Each fold's probabilities are calibrated before the mean, as the OOF temperature was fit.
    return predict_with_adapters(
        model_config,
        adapter_dirs,
        {"input_ids": input_ids, "input_ids_swap": input_ids_swap},
        batch_size=batch_size,
        tta_swap=tta_swap,
        base_model=base_model,
        progress=progress,
        devices=devices,
        temperature=temperature,
    )
