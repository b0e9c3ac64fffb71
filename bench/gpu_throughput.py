"""Benchmark 6: training throughput of the seed's setup against ours, Llama-3-8B architecture, random weights.

    make bench-gpu                          # CUDA: the full Meta-Llama-3-8B config (nothing downloaded)
    python -m bench.gpu_throughput --small  # any machine: a 2-layer config, same code paths (part of make bench)

Both sides: LoRA r16 / alpha 32 / dropout 0.05 on q_proj, k_proj, v_proj, AdamW on the LoRA weights,
rows of realistic token lengths (bench.lengths, max_length 1024) with random token ids, one optimizer step
per micro-batch, three-class loss on the label logits.

* seed: base weights quantized to 8 bit (bitsandbytes LLM.int8 linears), peft's
  prepare_model_for_kbit_training (fp32 norms, embeddings and LM head; gradient checkpointing), fp16
  autocast with a GradScaler, full (batch, seq, vocab) logits upcast and shifted as the HF causal-LM loss
  does, label logits gathered at the label position; random batches (no length grouping), batch 2.
* ours: bf16 base, pref_core.model.preference.PreferenceModel (label_token head: the last real token's hidden
  state times three rows of the LM head), bf16 autocast, length-grouped batches from
  pref_core.train.sampling.EpochSeededSampler, padding to a multiple of 8 as fine_tune_fold does on CUDA, batch 4.

Throughput counts real (non-pad) tokens. MFU = useful model FLOPs / (time x the GPU's dense bf16 peak),
useful FLOPs per row of length L = 2 x (2 N L) for the frozen linears (forward + input gradients, no
weight gradients) + 3 x (2 layers L^2 hidden) for causal attention; no recompute, no padding and the LM
head at one position are counted, so MFU ratios equal throughput ratios. The two models live side by
side and run in alternating blocks of steps; a side's peak memory is the allocator's peak during its
blocks less what the other side holds. Random weights have no activation outliers, so LLM.int8 runs
its fast path: the seed's speed here is, if anything, flattered.

After the alternating blocks the seed's model is freed and ours (the same model, built once) shows where
the headroom is (`--headroom`, on by default): rows of realistic lengths at max_length 2048 with the seed's
batch, then with the largest batch that fits (found by probing one training step on full-length rows at
doubling, then bisected, batch sizes until the allocator runs out of memory; capped by `--max-batch`).
Then it times `pref_core.predict.inference.predict` on `--predict-rows` (1,000) realistic rows, with and without
swap TTA (`--predict`, on by default). `make gpu-check` (bench/gpu_check.py) runs all of this on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arena_pref import environment
from bench import BENCH_ENVIRONMENT
from bench.lengths import sample_token_lengths
from bench.report import Verdict, print_table, save_results

NAME = "gpu_throughput"
GOAL = 3.0  # ours at least 3x the seed's real tokens per second
MFU_GOAL = 0.40  # and at least 40% MFU for ours (issue 18), on the GPU

# Meta-Llama-3-8B's config.json, written out (no download).
LLAMA3_8B = dict(
    vocab_size=128_256,
    hidden_size=4096,
    intermediate_size=14_336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500_000.0,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    bos_token_id=128_000,
    eos_token_id=128_001,
    tie_word_embeddings=False,
)
# Same vocabulary (the head's cost is the point) and shapes of the same kind, small enough for 2 CPU cores.
SMALL = dict(
    LLAMA3_8B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1
)
# Dense bf16 tensor-core peak by device name (spec sheets; fp16 is the same on these GPUs).
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L4": 121.0,
}
LABEL_TOKEN_IDS = (64, 65, 49_831)  # any three rows of the head: the weights are random


def pick_label_token_ids(vocab_size: int) -> tuple[int, int, int]:
    """LABEL_TOKEN_IDS, or three rows that exist in a smaller vocabulary (--vocab)."""
    return LABEL_TOKEN_IDS if vocab_size > max(LABEL_TOKEN_IDS) else (64, 65, vocab_size - 7)


@dataclass
class Side:
    name: str
    model: object
    step: object  # callable(batch) -> loss
    batches: list  # list of dict(input_ids, attention_mask, labels) on the device
    resident_bytes: int = 0
    optimizer: object = None  # cleared after a step that ran out of memory


def find_peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_TFLOPS.items():  # the table lists more specific names first
        if key in device_name:
            return value
    return None


def count_useful_flops(lengths: np.ndarray, config) -> float:
    """Model FLOPs of LoRA training on rows of these real lengths (see the module docstring)."""
    h, layers = config.hidden_size, config.num_hidden_layers
    kv = h * config.num_key_value_heads // config.num_attention_heads
    linear_params = layers * (2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size)  # q,o + k,v + mlp
    lengths = lengths.astype(np.float64)
    linear = 2 * (2 * linear_params * lengths.sum())
    attention = 3 * (2 * layers * h * (lengths**2).sum())
    return float(linear + attention)


def quantize_linears_8bit(model, device) -> None:
    """Swap every nn.Linear of the decoder for a bitsandbytes Linear8bitLt holding the same weights (int8)."""
    import bitsandbytes as bnb
    import torch
    from torch import nn

    decoder = model.get_decoder()
    for name, module in list(decoder.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and not isinstance(child, bnb.nn.Linear8bitLt):
                quantized = bnb.nn.Linear8bitLt(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    has_fp16_weights=False,
                    threshold=6.0,
                )
                weight = child.weight.data.to("cpu", torch.float16)  # Int8Params quantizes when moved off the CPU
                child.weight = None
                quantized.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
                setattr(module, child_name, quantized.to(device))
    model.is_loaded_in_8bit = True  # what peft's prepare_model_for_kbit_training looks for


def build_llama(config_kwargs: dict, dtype, device):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**config_kwargs)
    config.use_cache = False
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in the half dtype: no fp32 copy of 8B weights
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def lora_config(task_type=None):
    from peft import LoraConfig

    return LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj"],
        bias="none",
        task_type=task_type,
    )


def build_seed_side(config_kwargs: dict, device, batches: list) -> Side:
    """8-bit base, kbit preparation with gradient checkpointing, fp16 autocast + GradScaler, full logits."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    from pref_core.model.losses import preference_loss
    from pref_core.model.preference import last_token_indices

    model = build_llama(config_kwargs, torch.float16, device)
    quantize_linears_8bit(model, device)
    # Checkpointing set up as pref_core.model.backbone.load_backbone does (non-reentrant); peft would go through a
    # deprecated transformers API to do the same.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lora_config("CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    scaler = torch.amp.GradScaler(device.type)
    label_ids = torch.tensor(pick_label_token_ids(config_kwargs["vocab_size"]), device=device)

    def step(batch):
        with torch.autocast(device.type, dtype=torch.float16):
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits  # (b, seq, vocab)
        logits = logits.float()  # as LlamaForCausalLM's loss path upcasts
        shift_logits = logits[:, :-1, :].contiguous()  # (b, seq-1, vocab): the HF causal-LM shift
        # The label word would follow the last real token; the shifted logits one step earlier predict it.
        position = (last_token_indices(batch["attention_mask"]) - 1).clamp(min=0)
        rows = torch.arange(logits.shape[0], device=device)
        loss = preference_loss(shift_logits[rows, position][:, label_ids], batch["labels"])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return Side("seed", model, step, batches, optimizer=optimizer)


def build_our_side(config_kwargs: dict, device, batches: list) -> Side:
    """bf16 base, PreferenceModel label_token head, LoRA as pref_core.model.preference.build_model applies it."""
    import torch
    from peft import get_peft_model

    from pref_core.model.preference import PreferenceModel

    backbone = build_llama(config_kwargs, torch.bfloat16, device)
    backbone.requires_grad_(False)
    model = get_peft_model(
        PreferenceModel(backbone, "label_token", pick_label_token_ids(config_kwargs["vocab_size"])), lora_config()
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return Side("ours", model, step, batches, optimizer=optimizer)


def make_batches(
    lengths: np.ndarray,
    batch_size: int,
    grouped: bool,
    n_batches: int,
    pad_to_multiple_of,
    device,
    vocab: int,
    seed: int,
) -> list:
    """`n_batches` batches drawn at random positions of one epoch in the training sampler's order."""

    from pref_core.predict.inference import PreferenceCollator
    from pref_core.train.sampling import EpochSeededSampler

    order = list(EpochSeededSampler(lengths.tolist(), batch_size=batch_size, seed=seed, group_by_length=grouped))
    epoch = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    picks = np.random.default_rng(seed).choice(len(epoch), size=n_batches, replace=False)
    rng = np.random.default_rng(seed + 1)
    collate = PreferenceCollator(pad_token_id=0, pad_to_multiple_of=pad_to_multiple_of)
    out = []
    for k in picks:
        rows = [
            {"input_ids": rng.integers(1000, vocab, size=int(lengths[i])).tolist(), "label": int(i % 3)}
            for i in epoch[k]
        ]
        out.append({key: value.to(device) for key, value in collate(rows).items()})
    return out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_block(side: Side, batches: list, device) -> tuple[float, int]:
    """(seconds, allocator peak bytes on CUDA or resident growth on CPU) of one block of steps."""
    import torch

    from bench.memory import PeakRSS

    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        meter = contextlib.nullcontext()
    else:
        meter = PeakRSS()
    start = time.perf_counter()
    with meter:
        for batch in batches:
            side.step(batch)
        _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else int(meter.peak_mib * 2**20)
    return seconds, peak


def summarize_side(batches: list, seconds: float, peak_bytes: int, config, peak_tflops, batch: int) -> dict:
    """Real tokens/s, peak memory, MFU and padding of timed steps over `batches`."""
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    positions = sum(int(b["attention_mask"].numel()) for b in batches)
    row_lengths = np.concatenate([b["attention_mask"].sum(dim=1).cpu().numpy() for b in batches])
    flops = count_useful_flops(row_lengths, config)
    return {
        "tokens_per_s": real / seconds,
        "seconds": seconds,
        "peak_gib": peak_bytes / 2**30,
        "padding": 1 - real / positions,
        "real_tokens": real,
        "steps": len(batches),
        "batch": batch,
        "mfu": flops / seconds / (peak_tflops * 1e12) if peak_tflops else float("nan"),
    }


def free_side(sides: dict, name: str, device) -> None:
    """Drop one side's model, optimizer state and batches so that the other has the whole GPU."""
    import torch

    side = sides.pop(name)
    side.model = side.step = side.optimizer = side.batches = None
    del side
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def make_full_length_batch(batch_size: int, length: int, vocab: int, device) -> dict:
    """A worst-case batch: every row `length` real tokens (what the longest length group of an epoch holds)."""
    import torch

    generator = torch.Generator().manual_seed(batch_size)
    return {
        "input_ids": torch.randint(1000, vocab, (batch_size, length), generator=generator).to(device),  # (b, seq)
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long, device=device),  # (b, seq)
        "labels": (torch.arange(batch_size) % 3).to(device),  # (b,)
    }


def try_step(side: Side, batch: dict, device) -> bool:
    """One training step; False (memory released, gradients cleared) when CUDA ran out of memory."""
    import torch

    try:
        side.step(batch)
        _sync(device)
        return True
    except torch.cuda.OutOfMemoryError:
        pass  # leave the except block first: its traceback holds the step's activations
    if side.optimizer is not None:
        side.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.empty_cache()
    return False


def find_largest_batch(
    side: Side, length: int, vocab: int, device, start: int, cap: int, bisect_probes: int = 3
) -> dict:
    """Largest batch of full-length rows for which one training step fits: doubling from `start`, then
    bisection between the last fit and the first out-of-memory batch (at most `bisect_probes` probes)."""
    probes = []
    fit, oom = 0, None
    batch = start
    while batch <= cap:
        ok = try_step(side, make_full_length_batch(batch, length, vocab, device), device)
        probes.append({"batch": batch, "fits": ok})
        if not ok:
            oom = batch
            break
        fit, batch = batch, batch * 2
    while oom is not None and fit and oom - fit > 1 and bisect_probes > 0:
        batch = (fit + oom) // 2
        ok = try_step(side, make_full_length_batch(batch, length, vocab, device), device)
        probes.append({"batch": batch, "fits": ok})
        fit, oom = (batch, oom) if ok else (fit, batch)
        bisect_probes -= 1
    limit = "out of memory" if oom is not None else f"--max-batch {cap} (never ran out of memory)"
    return {"largest_batch": fit, "first_oom_batch": oom, "limited_by": limit, "probes": probes, "probe_length": length}


def profile_step(side: Side, batch: dict, device, row_limit: int = 15) -> dict:
    """Where one training step's time goes: torch.profiler's table (printed) and its top operators."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        side.step(batch)
        _sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    print(
        f"\n== profile of one {side.name} step (batch {batch['input_ids'].shape[0]}, "
        f"width {batch['input_ids'].shape[1]}), sorted by {key}"
    )
    print(averages.table(sort_by=key, row_limit=row_limit), flush=True)
    rows = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:row_limit]
    return {"sorted_by": key, "top": [{"op": e.key, "ms": getattr(e, key) / 1e3, "calls": e.count} for e in rows]}


class ColumnRows:
    """The part of a datasets.Dataset that pref_core.predict.inference.predict reads, over plain lists: used only
    when datasets cannot be imported (the GPU image lacks it unless its wheel was brought)."""

    def __init__(self, columns: dict):
        self._columns = columns

    @property
    def column_names(self) -> list:
        return list(self._columns)

    def __len__(self) -> int:
        return len(next(iter(self._columns.values())))

    def __getitem__(self, key):
        if isinstance(key, str):
            return self._columns[key]
        return {name: [values[i] for i in key] for name, values in self._columns.items()}

    def select_columns(self, names) -> "ColumnRows":
        return ColumnRows({name: self._columns[name] for name in names})

    def select(self, indices) -> "ColumnRows":
        return ColumnRows(self[list(indices)])


def make_prediction_rows(n: int, max_length: int, vocab: int, seed: int):
    """`n` rows of realistic lengths with random ids, both views (a/b swapped: same length, other ids)."""
    lengths = sample_token_lengths(n, max_length=max_length, seed=seed)
    rng = np.random.default_rng(seed)
    columns = {
        "input_ids": [rng.integers(1000, vocab, size=int(k)).tolist() for k in lengths],
        "length": lengths.tolist(),
        "input_ids_swap": [rng.integers(1000, vocab, size=int(k)).tolist() for k in lengths],
        "length_swap": lengths.tolist(),
    }
    try:
        from datasets import Dataset

        return Dataset.from_dict(columns), "datasets.Dataset"
    except ImportError:
        return ColumnRows(columns), "bench.gpu_throughput.ColumnRows (datasets not importable)"


def measure_prediction(side: Side, args, config, device) -> dict:
    """Rows/s of pref_core.predict.inference.predict on realistic rows, without and with swap TTA."""
    from pref_core.predict.inference import predict_probabilities

    dataset, kind = make_prediction_rows(args.predict_rows, args.max_length, config.vocab_size, args.seed + 7)
    pad = 8 if device.type == "cuda" else None
    warm = dataset.select(range(min(len(dataset), 2 * args.predict_batch)))
    predict_probabilities(side.model, warm, batch_size=args.predict_batch, pad_to_multiple_of=pad)  # warm-up: kernels
    real = int(sum(dataset["length"]))
    out = {
        "rows": len(dataset),
        "batch": args.predict_batch,
        "max_length": args.max_length,
        "dataset": kind,
        "mean_length": real / len(dataset),
    }
    for name, tta in (("no_tta", False), ("tta", True)):
        _sync(device)
        start = time.perf_counter()
        probabilities = predict_probabilities(
            side.model, dataset, batch_size=args.predict_batch, tta_swap=tta, pad_to_multiple_of=pad
        )
        _sync(device)
        seconds = time.perf_counter() - start
        if not (np.isfinite(probabilities).all() and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)):
            raise RuntimeError(f"prediction ({name}) gave probabilities that are not finite or do not sum to 1")
        views = 2 if tta else 1
        out[name] = {
            "seconds": seconds,
            "rows_per_s": len(dataset) / seconds,
            "real_tokens_per_s": views * real / seconds,
        }
        print(f"  predict {name}: {seconds:.2f} s, {len(dataset) / seconds:.1f} rows/s", flush=True)
    return out


def measure_headroom(side: Side, args, config, device, peak_tflops) -> dict:
    """Ours alone at max_length `args.headroom_length`: the seed's batch, then the largest batch that fits."""
    lengths = sample_token_lengths(args.rows, max_length=args.headroom_length, seed=args.seed + 3)
    pad = 8 if device.type == "cuda" else None
    out = {"max_length": args.headroom_length}
    search = find_largest_batch(
        side, args.headroom_length, config.vocab_size, device, start=args.seed_batch, cap=args.max_batch
    )
    print(
        f"  largest batch at {args.headroom_length} tokens: {search['largest_batch']} ({search['limited_by']}); "
        f"probes {search['probes']}",
        flush=True,
    )
    out["search"] = search
    settings = [("seed_batch", args.seed_batch)]
    if search["largest_batch"] and search["largest_batch"] != args.seed_batch:
        settings.append(("largest_batch", search["largest_batch"]))
    for name, batch in settings:
        while batch >= 1:
            batches = make_batches(
                lengths, batch, True, args.headroom_steps + 1, pad, device, config.vocab_size, args.seed + batch
            )
            if try_step(side, batches[0], device):  # warm-up at this shape
                break
            # The probe fitted once; allocator fragmentation can still tip a later step over: one row fewer.
            print(f"  batch {batch} ran out of memory when timed; trying {batch - 1}", flush=True)
            batch -= 1
        seconds, peak = run_block(side, batches[1:], device)
        out[name] = summarize_side(batches[1:], seconds, peak, config, peak_tflops, batch)
        print(
            f"  ours, batch {batch} at {args.headroom_length} tokens: {out[name]['tokens_per_s']:,.0f} tokens/s",
            flush=True,
        )
    if "largest_batch" not in out:
        out["largest_batch"] = dict(out["seed_batch"])
    return out


def measure(args) -> Verdict:
    import torch

    device = torch.device("cpu" if args.small else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.gpu_throughput needs CUDA for the full config; use --small to run it on CPU")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    config_kwargs = dict(SMALL if args.small else LLAMA3_8B)
    if args.vocab:
        config_kwargs.update(vocab_size=args.vocab, bos_token_id=1, eos_token_id=2)
    from transformers import LlamaConfig

    config = LlamaConfig(**config_kwargs)
    lengths = sample_token_lengths(args.rows, max_length=args.max_length, seed=args.seed)
    n_batches = args.blocks * args.steps_per_block + 1  # +1: a warm-up step
    seed_batches = make_batches(lengths, args.seed_batch, False, n_batches, None, device, config.vocab_size, args.seed)
    our_batches = make_batches(
        lengths,
        args.our_batch,
        True,
        n_batches,
        8 if device.type == "cuda" else None,
        device,
        config.vocab_size,
        args.seed,
    )

    sides = {}
    build_seconds = {}
    for name, build, batches in (("seed", build_seed_side, seed_batches), ("ours", build_our_side, our_batches)):
        before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        start = time.perf_counter()
        sides[name] = build(config_kwargs, device, batches)
        sides[name].step(batches[0])  # warm-up: kernels, optimizer state, autotuning
        _sync(device)
        build_seconds[name] = time.perf_counter() - start
        sides[name].resident_bytes = (torch.cuda.memory_allocated() - before) if device.type == "cuda" else 0
        print(
            f"built {name}: {sides[name].resident_bytes / 2**30:.2f} GiB resident, {build_seconds[name]:.1f} s "
            "(build + warm-up step)",
            flush=True,
        )

    times = {name: [] for name in sides}
    peaks = {name: [] for name in sides}
    for block in range(args.blocks):
        names = ("seed", "ours") if block % 2 == 0 else ("ours", "seed")
        for name in names:
            side = sides[name]
            chunk = side.batches[1 + block * args.steps_per_block : 1 + (block + 1) * args.steps_per_block]
            seconds, peak = run_block(side, chunk, device)
            times[name].append(seconds)
            other = sum(s.resident_bytes for n, s in sides.items() if n != name)
            peaks[name].append(peak - other if device.type == "cuda" else peak)
            print(f"  block {block} {name}: {seconds:.2f} s", flush=True)

    device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    peak_tflops = find_peak_tflops(device_name, args.peak_tflops) if device.type == "cuda" else None
    results = {}
    for name, side in sides.items():
        results[name] = summarize_side(
            side.batches[1:],
            sum(times[name]),
            max(peaks[name]),
            config,
            peak_tflops,
            args.seed_batch if name == "seed" else args.our_batch,
        )
        results[name]["block_seconds"] = times[name]
        results[name]["build_seconds"] = build_seconds[name]
    ratio = results["ours"]["tokens_per_s"] / results["seed"]["tokens_per_s"]
    if args.small:
        verdict = Verdict(
            NAME,
            ratio,
            "x seed tokens/s (CPU smoke run, small config)",
            f">={GOAL:.0f}x on CUDA, Llama-3-8B (make bench-gpu): not measured",
            False,
        )
    else:
        verdict = Verdict(NAME, ratio, "x seed tokens/s (Llama-3-8B config)", f">={GOAL:.0f}x", ratio >= GOAL)
    details = {
        "args": vars(args),
        "device": device_name,
        "config": "small (2 layers, CPU)" if args.small else "Meta-Llama-3-8B",
        "results": results,
        "peak_tflops": peak_tflops,
        "ratio": ratio,
        "headroom": None,
        "prediction": None,
        "profile": {},
        "errors": {},
        "goals": {"ratio": GOAL, "mfu": MFU_GOAL, "measured_on_gpu": not args.small},
    }
    if device.type == "cuda":
        details["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30

    def save() -> None:  # after every phase: a run stopped at its time limit keeps what it measured
        save_results(NAME + ("_small" if args.small else ""), verdict, details, out=args.out)

    save()
    if args.profile:
        for name, side in sides.items():
            try:
                details["profile"][name] = profile_step(side, side.batches[-1], device)
            except Exception as error:  # noqa: BLE001 (diagnostics only: never lose the measurements over it)
                details["profile"][name] = {"error": f"{type(error).__name__}: {error}"}
    free_side(sides, "seed", device)
    ours = sides["ours"]
    for phase, enabled, run in (
        ("headroom", args.headroom, lambda: measure_headroom(ours, args, config, device, peak_tflops)),
        ("prediction", args.predict, lambda: measure_prediction(ours, args, config, device)),
    ):
        if not enabled:
            continue
        try:
            details[phase] = run()
        except Exception as error:  # noqa: BLE001 (keep the other phases' numbers; the run still fails at the end)
            details["errors"][phase] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            print(f"{phase} FAILED: {details['errors'][phase]}", flush=True)
        save()

    memory_label = "peak GiB (allocator)" if device.type == "cuda" else "peak GiB (RSS growth)"
    rows = [
        [name, r["batch"], args.max_length, r["tokens_per_s"], r["peak_gib"], r["mfu"] * 100, r["padding"] * 100]
        for name, r in results.items()
    ]
    headroom, prediction = details["headroom"], details["prediction"]
    if headroom:
        for key in ("seed_batch", "largest_batch"):
            r = headroom[key]
            rows.append(
                [
                    f"ours ({key.replace('_', ' ')})",
                    r["batch"],
                    headroom["max_length"],
                    r["tokens_per_s"],
                    r["peak_gib"],
                    r["mfu"] * 100,
                    r["padding"] * 100,
                ]
            )
    print_table(
        f"training throughput, {'small config on CPU' if args.small else 'Llama-3-8B config on ' + device_name}"
        f", {args.blocks} alternating blocks x {args.steps_per_block} steps per side",
        ["side", "batch", "max length", "real tokens/s", memory_label, "MFU %", "padding %"],
        rows,
    )
    if prediction:
        print_table(
            f"prediction, {prediction['rows']} rows (mean {prediction['mean_length']:.0f} tokens), "
            f"batch {prediction['batch']}",
            ["swap TTA", "rows/s", "real tokens/s", "seconds"],
            [
                [
                    name,
                    prediction[name]["rows_per_s"],
                    prediction[name]["real_tokens_per_s"],
                    prediction[name]["seconds"],
                ]
                for name in ("no_tta", "tta")
            ],
        )
    print(f"ours: {ratio:.2f}x the seed's real tokens/s (goal >= {GOAL:.0f}x on CUDA with the full config)")
    if details["errors"]:
        raise RuntimeError(f"phases failed (their errors are in {args.out or 'the results JSON'}): {details['errors']}")
    return verdict


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a 2-layer config on CPU (smoke run)")
    parser.add_argument("--max-length", type=int, default=None, help="default: 1024, or 256 with --small")
    parser.add_argument("--rows", type=int, default=5000, help="rows of the simulated epoch the batches come from")
    parser.add_argument("--seed-batch", type=int, default=2)
    parser.add_argument("--our-batch", type=int, default=4)
    parser.add_argument(
        "--blocks", type=int, default=None, help="alternating blocks per side (default 4, 2 with --small)"
    )
    parser.add_argument("--steps-per-block", type=int, default=None, help="default 8, 2 with --small")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak, if the GPU is not in the table"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads with --small (see bench.orchestration)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--vocab",
        type=int,
        default=None,
        help="vocabulary size instead of Llama-3's 128,256 (a faster dry run: the seed's full logits "
        "in fp16 are slow on CPU)",
    )
    parser.add_argument(
        "--headroom",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ours alone at --headroom-length: the seed's batch, then the largest batch that fits",
    )
    parser.add_argument("--headroom-length", type=int, default=None, help="default 2048, 512 with --small")
    parser.add_argument(
        "--headroom-steps", type=int, default=None, help="timed steps per batch (default 6, 2 with --small)"
    )
    parser.add_argument("--max-batch", type=int, default=None, help="largest batch probed (default 64, 8 with --small)")
    parser.add_argument(
        "--predict",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time pref_core.predict.inference.predict on realistic rows, with and without swap TTA",
    )
    parser.add_argument("--predict-rows", type=int, default=None, help="default 1000, 100 with --small")
    parser.add_argument("--predict-batch", type=int, default=None, help="default 16, 8 with --small")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile one step per side (default: on CUDA only)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON results file (default bench/results/gpu_throughput[_small].json)"
    )
    args = parser.parse_args(argv)
    args.max_length = args.max_length or (256 if args.small else 1024)
    args.blocks = args.blocks or (2 if args.small else 4)
    args.steps_per_block = args.steps_per_block or (2 if args.small else 8)
    args.headroom_length = args.headroom_length or (512 if args.small else 2048)
    args.headroom_steps = args.headroom_steps or (2 if args.small else 6)
    args.max_batch = args.max_batch or (8 if args.small else 64)
    args.predict_rows = args.predict_rows or (100 if args.small else 1000)
    args.predict_batch = args.predict_batch or (8 if args.small else 16)
    args.profile = (not args.small) if args.profile is None else args.profile
    return args


def main(argv=None) -> None:
    environment.apply_defaults(*BENCH_ENVIRONMENT)
    print(measure(parse_args(argv)).to_json_line())


if __name__ == "__main__":
    main()
