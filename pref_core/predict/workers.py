"""Device workers for prediction: one base model per device, loaded once, running the batches it is sent.

A worker loads the base onto its device with every adapter of the ensemble attached (or the one averaged adapter
merged into the base weights, `WorkerSpec.merge_adapter`) and answers each `BatchJob` with the probabilities of every
adapter (the adapters are switched per batch: peft's set_adapter flips flags, it moves no weights), the seconds the
batch took and, when a probability is not finite, the row and the first module whose output was not
(precision.locate_nonfinite). The scheduler (pref_core.predict.runner) decides what each worker runs.

`LocalWorker` runs in this process (one device). `ProcessWorker` runs in a spawned process (never fork: a forked CUDA
context or OpenMP pool is unusable in the child) and talks over a pipe, so that several devices run at once; with a
log file, everything the child prints (transformers, bitsandbytes) goes there instead of the console.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from pref_core.errors import UserError


class WorkerError(UserError, RuntimeError):
    """A worker process died or could not load its model: one line naming the device and the cause."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker loads: the model section, the adapters, the base and the device."""

    model_config: Any  # the training run's model section (dtype, quantization, head, ...)
    adapter_dirs: tuple[str, ...]
    base_model: Optional[str]
    device: Optional[str]  # None: the GPU when there is one, else the CPU
    pad_token_id: int
    pad_to_multiple_of: Optional[int] = None
    num_threads: Optional[int] = None  # torch CPU threads (CPU workers share the cores)
    merge_adapter: bool = False  # merge the single adapter into the base weights at load (no LoRA matmuls)
    log_path: Optional[str] = None  # a spawned worker's stdout and stderr go here


@dataclass
class BatchJob:
    """One batch of one view: `rows` (positions in the caller's row list) and their token ids, longest first."""

    job_id: int
    view: str  # "rows" or "swapped"
    rows: np.ndarray  # (n,) int
    sequences: list[list[int]]
    width: int  # the padded length (the plan's), for pricing

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), self.width


@dataclass
class BatchResult:
    job_id: int
    probabilities: np.ndarray  # (adapters, n, 3) float32
    seconds: float
    nonfinite: Optional[tuple[int, Optional[str]]] = None  # (position in the job, first non-finite module)


@dataclass
class LoadedModel:
    """A model on its device with its adapter names ([] when merged or when there is one plain model)."""

    model: Any
    adapter_names: list[str]
    device: Any
    pad_token_id: int
    pad_to_multiple_of: Optional[int]
    collate: Any = field(init=False)

    def __post_init__(self):
        from pref_core.predict.inference import PreferenceCollator

        self.collate = PreferenceCollator(self.pad_token_id, self.pad_to_multiple_of)

    def run(self, job: BatchJob) -> BatchResult:
        """Every adapter's probabilities of the job's rows; stops at the first adapter with a non-finite one."""
        import torch

        from pref_core.model.precision import locate_nonfinite
        from pref_core.predict.inference import forward_probabilities

        start = time.perf_counter()
        batch = self.collate([{"input_ids": seq} for seq in job.sequences])
        outputs = []
        with torch.inference_mode():
            for name in self.adapter_names or [None]:
                if name is not None:
                    self.model.set_adapter(name)  # LoRA weights and the classifier head switch together
                probs = forward_probabilities(self.model, batch, self.device)  # (n, 3)
                outputs.append(probs.numpy())
                bad = np.flatnonzero(~np.isfinite(outputs[-1]).all(axis=1))
                if bad.size:
                    row = int(bad[0])
                    single = self.collate([{"input_ids": job.sequences[row]}])
                    module = locate_nonfinite(
                        self.model,
                        input_ids=single["input_ids"].to(self.device),
                        attention_mask=single["attention_mask"].to(self.device),
                    )
                    outputs += [np.full_like(outputs[-1], np.nan)] * (max(len(self.adapter_names), 1) - len(outputs))
                    return BatchResult(job.job_id, np.stack(outputs), time.perf_counter() - start, (row, module))
        return BatchResult(job.job_id, np.stack(outputs), time.perf_counter() - start)


def load_model(spec: WorkerSpec) -> LoadedModel:
    """The base on `spec.device` with the adapters attached (adapter k named fold_k), or merged into it."""
    import torch

    from pref_core.model.backbone import resolve_load_device
    from pref_core.model.preference import load_preference_ensemble

    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    model, _, names = load_preference_ensemble(
        spec.model_config, list(spec.adapter_dirs), name_or_path=spec.base_model, device=spec.device
    )
    if spec.merge_adapter:
        if len(names) != 1 or spec.model_config.quantization != "none":
            raise ValueError("merge_adapter needs exactly one adapter over an unquantized base")
        # W + scaling * B @ A written into each base weight; the classifier head (modules_to_save) becomes the
        # trained copy. One matmul per adapted layer fewer in every forward pass.
        model = model.merge_and_unload()
        model.eval()
        names = []
    return LoadedModel(model, names, resolve_load_device(spec.device), spec.pad_token_id, spec.pad_to_multiple_of)


# -- workers ---------------------------------------------------------------------------------------------------------


class LocalWorker:
    """A worker in this process: `start` loads the model, `submit` runs a job at once, `collect` hands it back."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.pid = os.getpid()
        self._loaded: Optional[LoadedModel] = None
        self._result: Optional[BatchResult] = None

    def start(self) -> None:
        self._loaded = load_model(self.spec)

    def wait_ready(self) -> None:
        pass

    def submit(self, job: BatchJob) -> None:
        self._result = self._loaded.run(job)

    def ready(self) -> bool:
        return self._result is not None

    def collect(self) -> BatchResult:
        result, self._result = self._result, None
        return result

    @property
    def waitable(self):
        return None

    def close(self) -> None:
        self._loaded = None


def _serve(spec: WorkerSpec, connection) -> None:
    """A spawned worker's loop: load, say ready (or why not), then run jobs until it gets None."""
    if spec.log_path:
        # Everything this process prints, C libraries included, goes to the log: the console is the parent's.
        log = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(name)s: %(message)s")
        logging.captureWarnings(True)
    try:
        loaded = load_model(spec)
    except BaseException as error:  # noqa: BLE001 (sent to the parent, which raises it in one line)
        connection.send(("error", _picklable(error)))
        return
    connection.send(("ready", os.getpid()))
    while True:
        try:
            job = connection.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if job is None:
            return
        try:
            connection.send(("result", loaded.run(job)))
        except BaseException as error:  # noqa: BLE001 (an out-of-memory error, say: the parent reports it)
            connection.send(("error", _picklable(error)))
            return


def _picklable(error: BaseException) -> BaseException:
    """The error itself when it can cross the pipe (an exception whose __init__ takes other arguments than it keeps
    cannot be rebuilt on the other side), else its text. The round trip uses the pipe's own serializer on our own
    object in this process: nothing is read from a file or another party."""
    from multiprocessing.reduction import ForkingPickler

    try:
        ForkingPickler.loads(ForkingPickler.dumps(error))
        return error
    except Exception:  # noqa: BLE001 (any exception that cannot cross the pipe becomes its text)
        return RuntimeError(f"{type(error).__name__}: {error}")


class ProcessWorker:
    """A worker in a spawned process (see the module docstring)."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.pid: Optional[int] = None
        self._process = None
        self._connection = None
        self._pending = False

    def start(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(self.spec, child), daemon=True)
        self._process.start()
        child.close()
        self._connection = parent

    def _receive(self):
        try:
            kind, payload = self._connection.recv()
        except (EOFError, OSError):
            code = self._process.exitcode if self._process is not None else None
            raise WorkerError(
                f"the worker on {self.spec.device} stopped (exit code {code}; killed for memory?); "
                f"see {self.spec.log_path or 'its output'}"
            ) from None
        if kind == "error":
            if isinstance(payload, UserError):
                raise payload
            raise WorkerError(f"the worker on {self.spec.device} failed: {type(payload).__name__}: {payload}")
        return payload

    def wait_ready(self) -> None:
        self.pid = self._receive()

    def submit(self, job: BatchJob) -> None:
        self._connection.send(job)
        self._pending = True

    def ready(self) -> bool:
        return self._pending and self._connection.poll()

    def collect(self) -> BatchResult:
        self._pending = False
        return self._receive()

    @property
    def waitable(self):
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError, EOFError, BrokenPipeError):
                self._connection.send(None)
            self._connection.close()
        if self._process is not None:
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()


def start_workers(specs: Sequence[WorkerSpec], in_process: bool) -> list:
    """Start one worker per spec (in this process when `in_process`, which needs exactly one) and wait until each
    has loaded its model; the models load in parallel. On any failure the started ones are closed."""
    if in_process and len(specs) != 1:
        raise ValueError("an in-process worker runs on one device")
    workers = [LocalWorker(specs[0])] if in_process else [ProcessWorker(spec) for spec in specs]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
    except BaseException:
        close_workers(workers)
        raise
    return workers


def close_workers(workers: Sequence) -> None:
    for worker in workers:
        worker.close()


def wait_any(workers: Sequence, busy: Sequence[int]) -> list[int]:
    """Indices (of `busy`, the workers with a job in flight) whose results are ready; blocks until there is one."""
    from multiprocessing.connection import wait

    done = [k for k in busy if workers[k].ready()]
    if done:
        return done
    waitables = {workers[k].waitable: k for k in busy if workers[k].waitable is not None}
    ready = wait(list(waitables))
    return [waitables[w] for w in ready]
