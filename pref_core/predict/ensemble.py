"""Fold ensembles: predict with several adapters over one base model and average them.

Used both inside the flow (one fold at a time, averaged at submission) and by
the registered model, through the same `average_probabilities`, so that the
two agree to float precision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from pref_core.data.labels import TURN_COLUMNS
from pref_core.errors import UserError

if TYPE_CHECKING:  # type only: the Kaggle bundle imports this module without pydantic
    from pref_core.config.schema import ModelConfig, PromptConfig
    from pref_core.predict.runner import RunOutput


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


def _pad_to_multiple_of(devices: Sequence[Optional[str]]) -> Optional[int]:
    """8 (tensor-core friendly widths) when a worker runs on a GPU; on CPU padding only costs."""
    import torch

    on_gpu = any(str(d).startswith("cuda") or (d is None and torch.cuda.is_available()) for d in devices)
    return 8 if on_gpu else None


def _dtype_name(model_config) -> str:
    from pref_core.model.backbone import dtype_name, resolve_dtype

    return dtype_name(resolve_dtype(model_config))


def run_ensemble(
    model_config: "ModelConfig",
    adapter_dirs: Sequence[str | Path],
    views: dict[str, list],
    *,
    batch_size: int,
    base_model: Optional[str] = None,
    devices: Optional[Sequence[str]] = None,
    progress: bool = False,
    max_batch_tokens: Optional[int] = None,
    merge_adapter: bool = False,
    row_ids: Optional[Sequence] = None,
    pad_token_id: Optional[int] = None,
    keeper=None,
    max_length: Optional[int] = None,
    reencode=None,
    say: Callable[[str], None] = lambda text: None,
    log: Callable[[str], None] = lambda text: None,
    log_path: Optional[str] = None,
):
    """Every adapter's probabilities of every view of `views` ("rows": token ids per row, and "swapped" for swap
    TTA), one base loaded per device: a pref_core.predict.runner.RunOutput.

    One device (default: the GPU if there is one, else the CPU) runs in this process; several (``["cuda:0",
    "cuda:1"]``, or ``["cpu", "cpu"]`` to stand in for two GPUs) each get a spawned worker process (`log_path`: where
    their output goes). With swap TTA on two devices each runs one view over all rows; otherwise they share the rows
    (pref_core.predict.runner). `max_batch_tokens` is checked against the longest row before any model loads;
    `merge_adapter` merges a single adapter into the base weights at load. `keeper` (a deadline.TimeKeeper, with
    `max_length` and `reencode`) applies a time limit; `say` and `log` get its lines.
    """
    from pref_core.predict.batching import check_token_budget
    from pref_core.predict.runner import RunOutput, n_devices_for_threads, run_batches
    from pref_core.predict.workers import WorkerSpec, close_workers, start_workers

    devices = list(devices) if devices else [None]
    pad = _pad_to_multiple_of(devices)
    for ids in views.values():
        check_token_budget([len(seq) for seq in ids], max_batch_tokens, pad, row_ids)
    if merge_adapter and (len(adapter_dirs) != 1 or model_config.quantization != "none"):
        raise EnsembleOptionError(
            f"merging the adapter into the base needs one adapter (--folds average) over an unquantized base; got "
            f"{len(adapter_dirs)} adapter(s) and quantization {model_config.quantization}"
        )
    if pad_token_id is None:
        from transformers import AutoTokenizer

        pad_token_id = AutoTokenizer.from_pretrained(adapter_dirs[0]).pad_token_id
    threads = n_devices_for_threads(devices) if len(devices) > 1 else None
    specs = [
        WorkerSpec(
            model_config,
            tuple(str(d) for d in adapter_dirs),
            base_model,
            device,
            0 if pad_token_id is None else int(pad_token_id),
            pad,
            threads if str(device).startswith("cpu") else None,
            merge_adapter,
            log_path,
        )
        for device in devices
    ]
    n = len(views["rows"])
    if keeper is not None and keeper.time_left() <= 0:  # the limit has passed before any model loaded
        empty = {view: np.full((len(adapter_dirs), n, 3), np.nan, dtype=np.float32) for view in views}
        return RunOutput(empty, {view: np.zeros(n, dtype=bool) for view in views}, [], stopped_at_s=keeper.elapsed())
    loading = time.perf_counter()
    workers = start_workers(specs, in_process=len(devices) == 1)
    load_s = time.perf_counter() - loading  # the workers load in parallel: the wall time until all are ready
    try:
        output = run_batches(
            workers,
            [str(d or "default") for d in devices],
            views,
            n_adapters=1 if merge_adapter else len(adapter_dirs),
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            pad_to_multiple_of=pad,
            row_ids=row_ids,
            dtype_name=_dtype_name(model_config),
            keeper=keeper,
            max_length=max_length,
            reencode=reencode,
            say=say,
            log=log,
            progress=progress,
        )
    finally:
        close_workers(workers)
    output.load_s = load_s
    return output


class EnsembleOptionError(UserError, ValueError):
    """A prediction option that does not fit the model (e.g. merging several adapters): one line, exit 2."""


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
    max_batch_tokens: Optional[int] = None,
):
    """Per-adapter (n, 3) probabilities in row order (with `input_ids_swap`, the two views averaged), and which
    worker did what: [(device, pid, rows run)] (see `run_ensemble`).

    `model_config`: the model section the adapters were trained with; `batch_size`: rows per forward pass
    (train.eval_batch_size), `max_batch_tokens`: padded tokens per forward pass instead.
    """
    views = {"rows": list(input_ids)}
    if input_ids_swap is not None:
        views["swapped"] = list(input_ids_swap)
    out = run_ensemble(
        model_config,
        adapter_dirs,
        views,
        batch_size=batch_size,
        base_model=base_model,
        devices=devices,
        progress=progress,
        max_batch_tokens=max_batch_tokens,
    )
    return out.per_adapter(), out.workers


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
    max_batch_tokens: Optional[int] = None,
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
        max_batch_tokens=max_batch_tokens,
    )
    return average_probabilities(outputs, temperature)


@dataclass
class FramePrediction:
    """What `predict_frame` returns: the calibrated fold mean of the rows it reached, which rows, and the run."""

    probabilities: np.ndarray  # (m, 3) float64, the rows where `predicted` is True, in frame order
    predicted: np.ndarray  # (n,) bool; False only when a time limit stopped the run first
    run: "RunOutput"


def predict_frame(
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
    max_batch_tokens: Optional[int] = None,
    merge_adapter: bool = False,
    keeper=None,
    say: Callable[[str], None] = lambda text: None,
    log: Callable[[str], None] = lambda text: None,
    log_path: Optional[str] = None,
) -> FramePrediction:
    """Encode a validated frame with the adapters' tokenizer and `prompt`, check the token budget, then predict it
    on `devices` (`run_ensemble`); with `keeper` (a time limit) the rows not reached are left out of
    `probabilities` (the caller gives them the class prior). Each fold's probabilities are calibrated by
    `temperature` before the mean, as the OOF temperature was fit."""
    import copy

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dirs[0])
    input_ids, input_ids_swap = encode_frame(frame, tokenizer, prompt, with_swap=tta_swap)
    views = {"rows": input_ids}
    if tta_swap:
        views["swapped"] = input_ids_swap

    def reencode(rows: np.ndarray, max_length: int, with_swap: bool):
        shorter = copy.copy(prompt)
        shorter.max_length = max_length
        return encode_frame(frame.iloc[rows], tokenizer, shorter, with_swap=with_swap)

    run = run_ensemble(
        model_config,
        adapter_dirs,
        views,
        batch_size=batch_size,
        base_model=base_model,
        devices=devices,
        progress=progress,
        max_batch_tokens=max_batch_tokens,
        merge_adapter=merge_adapter,
        row_ids=frame["id"].astype(str).tolist(),
        pad_token_id=tokenizer.pad_token_id,
        keeper=keeper,
        max_length=prompt.max_length,
        reencode=reencode,
        say=say,
        log=log,
        log_path=log_path,
    )
    predicted = run.predicted
    outputs = run.per_adapter()
    if predicted.any():
        probabilities = average_probabilities(outputs, temperature)
    else:
        probabilities = np.empty((0, 3), dtype=np.float64)
    return FramePrediction(probabilities, predicted, run)


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
    max_batch_tokens: Optional[int] = None,
) -> np.ndarray:
    """Calibrated fold-ensemble probabilities (n, 3) of a validated frame: what `arena-pref predict` and the
    registered pyfunc run, with the run's model and prompt sections and its train.eval_batch_size /
    train.tta_swap (`predict_frame` without a time limit)."""
    return predict_frame(
        model_config,
        prompt,
        adapter_dirs,
        frame,
        batch_size=batch_size,
        tta_swap=tta_swap,
        base_model=base_model,
        temperature=temperature,
        devices=devices,
        progress=progress,
        max_batch_tokens=max_batch_tokens,
    ).probabilities
