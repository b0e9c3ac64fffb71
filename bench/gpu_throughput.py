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
* ours: bf16 base, pref_core.modeling.PreferenceModel (label_token head: the last real token's hidden
  state times three rows of the LM head), bf16 autocast, length-grouped batches from
  pref_core.training.EpochSeededSampler, padding to a multiple of 8 as train_fold does on CUDA, batch 4.

Throughput counts real (non-pad) tokens. MFU = useful model FLOPs / (time x the GPU's dense bf16 peak),
useful FLOPs per row of length L = 2 x (2 N L) for the frozen linears (forward + input gradients, no
weight gradients) + 3 x (2 layers L^2 hidden) for causal attention; no recompute, no padding and the LM
head at one position are counted, so MFU ratios equal throughput ratios. The two models live side by
side and run in alternating blocks of steps; a side's peak memory is the allocator's peak during its
blocks less what the other side holds. Random weights have no activation outliers, so LLM.int8 runs
its fast path: the seed's speed here is, if anything, flattered.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass

import numpy as np

from bench.report import Verdict, print_table, save_results

NAME = "gpu_throughput"
GOAL = 3.0  # ours at least 3x the seed's real tokens per second

# Meta-Llama-3-8B's config.json, written out (no download).
LLAMA3_8B = dict(
    vocab_size=128_256, hidden_size=4096, intermediate_size=14_336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500_000.0, rms_norm_eps=1e-5,
    hidden_act="silu", bos_token_id=128_000, eos_token_id=128_001, tie_word_embeddings=False,
)
# Same vocabulary (the head's cost is the point) and shapes of the same kind, small enough for 2 CPU cores.
SMALL = dict(LLAMA3_8B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=1)
# Dense bf16 tensor-core peak by device name (spec sheets; fp16 is the same on these GPUs).
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 756.0,
               "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "A10": 125.0, "L4": 121.0}
LABEL_TOKEN_IDS = (64, 65, 49_831)  # any three rows of the head: the weights are random


@dataclass
class Side:
    name: str
    model: object
    step: object  # callable(batch) -> loss
    batches: list  # list of dict(input_ids, attention_mask, labels) on the device
    resident_bytes: int = 0


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
                quantized = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                                has_fp16_weights=False, threshold=6.0)
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

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj"],
                      bias="none", task_type=task_type)


def build_seed_side(config_kwargs: dict, device, batches: list) -> Side:
    """8-bit base, kbit preparation with gradient checkpointing, fp16 autocast + GradScaler, full logits."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    from pref_core.modeling import last_token_indices, preference_loss

    model = build_llama(config_kwargs, torch.float16, device)
    quantize_linears_8bit(model, device)
    # Checkpointing set up as pref_core.modeling.load_backbone does (non-reentrant); peft would go through a
    # deprecated transformers API to do the same.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lora_config("CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    scaler = torch.amp.GradScaler(device.type)
    label_ids = torch.tensor(LABEL_TOKEN_IDS, device=device)

    def step(batch):
        with torch.autocast(device.type, dtype=torch.float16):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (b, seq, vocab)
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

    return Side("seed", model, step, batches)


def build_our_side(config_kwargs: dict, device, batches: list) -> Side:
    """bf16 base, PreferenceModel label_token head, LoRA as pref_core.modeling.build_model applies it."""
    import torch
    from peft import get_peft_model

    from pref_core.modeling import PreferenceModel

    backbone = build_llama(config_kwargs, torch.bfloat16, device)
    backbone.requires_grad_(False)
    model = get_peft_model(PreferenceModel(backbone, "label_token", LABEL_TOKEN_IDS), lora_config())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return Side("ours", model, step, batches)


def make_batches(lengths: np.ndarray, batch_size: int, grouped: bool, n_batches: int, pad_to_multiple_of, device,
                 vocab: int, seed: int) -> list:
    """`n_batches` batches drawn at random positions of one epoch in the training sampler's order."""
    import torch

    from pref_core.inference import PreferenceCollator
    from pref_core.training import EpochSeededSampler

    order = list(EpochSeededSampler(lengths.tolist(), batch_size=batch_size, seed=seed, group_by_length=grouped))
    epoch = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    picks = np.random.default_rng(seed).choice(len(epoch), size=n_batches, replace=False)
    rng = np.random.default_rng(seed + 1)
    collate = PreferenceCollator(pad_token_id=0, pad_to_multiple_of=pad_to_multiple_of)
    out = []
    for k in picks:
        rows = [{"input_ids": rng.integers(1000, vocab, size=int(lengths[i])).tolist(), "label": int(i % 3)}
                for i in epoch[k]]
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


def measure(args) -> Verdict:
    import torch

    from bench.lengths import sample_token_lengths

    device = torch.device("cpu" if args.small else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.gpu_throughput needs CUDA for the full config; use --small to run it on CPU")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    config_kwargs = SMALL if args.small else LLAMA3_8B
    from transformers import LlamaConfig

    config = LlamaConfig(**config_kwargs)
    lengths = sample_token_lengths(args.rows, max_length=args.max_length, seed=args.seed)
    n_batches = args.blocks * args.steps_per_block + 1  # +1: a warm-up step
    seed_batches = make_batches(lengths, args.seed_batch, False, n_batches, None, device, config.vocab_size, args.seed)
    our_batches = make_batches(lengths, args.our_batch, True, n_batches, 8 if device.type == "cuda" else None, device,
                               config.vocab_size, args.seed)

    sides = {}
    for name, build, batches in (("seed", build_seed_side, seed_batches), ("ours", build_our_side, our_batches)):
        before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        sides[name] = build(config_kwargs, device, batches)
        sides[name].step(batches[0])  # warm-up: kernels, optimizer state, autotuning
        sides[name].resident_bytes = (torch.cuda.memory_allocated() - before) if device.type == "cuda" else 0
        print(f"built {name}: {sides[name].resident_bytes / 2**30:.2f} GiB resident", flush=True)

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

    peak_tflops = find_peak_tflops(torch.cuda.get_device_name(0), args.peak_tflops) if device.type == "cuda" else None
    results = {}
    for name, side in sides.items():
        used = side.batches[1:]
        real = sum(int(b["attention_mask"].sum()) for b in used)
        positions = sum(int(b["attention_mask"].numel()) for b in used)
        seconds = sum(times[name])
        row_lengths = np.concatenate([b["attention_mask"].sum(dim=1).cpu().numpy() for b in used])
        flops = count_useful_flops(row_lengths, config)
        results[name] = {
            "tokens_per_s": real / seconds, "seconds": seconds, "block_seconds": times[name],
            "peak_gib": max(peaks[name]) / 2**30, "padding": 1 - real / positions, "real_tokens": real,
            "mfu": flops / seconds / (peak_tflops * 1e12) if peak_tflops else float("nan"),
            "batch": args.seed_batch if name == "seed" else args.our_batch,
        }
    ratio = results["ours"]["tokens_per_s"] / results["seed"]["tokens_per_s"]
    memory_label = "peak GiB (allocator)" if device.type == "cuda" else "peak GiB (RSS growth)"
    print_table(
        f"training throughput, {'small config on CPU' if args.small else 'Llama-3-8B config on ' + torch.cuda.get_device_name(0)}"
        f", {args.blocks} alternating blocks x {args.steps_per_block} steps per side",
        ["side", "batch", "real tokens/s", memory_label, "MFU %", "padding %"],
        [[name, r["batch"], r["tokens_per_s"], r["peak_gib"], r["mfu"] * 100, r["padding"] * 100]
         for name, r in results.items()],
    )
    print(f"ours: {ratio:.2f}x the seed's real tokens/s (goal >= {GOAL:.0f}x on CUDA with the full config)")
    if args.small:
        verdict = Verdict(NAME, ratio, "x seed tokens/s (CPU smoke run, small config)",
                          f">={GOAL:.0f}x on CUDA, Llama-3-8B (make bench-gpu): not measured", False)
    else:
        verdict = Verdict(NAME, ratio, "x seed tokens/s (Llama-3-8B config)", f">={GOAL:.0f}x", ratio >= GOAL)
    save_results(NAME + ("_small" if args.small else ""), verdict,
                 {"args": vars(args), "results": results, "peak_tflops": peak_tflops, "ratio": ratio})
    return verdict


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a 2-layer config on CPU (smoke run)")
    parser.add_argument("--max-length", type=int, default=None, help="default: 1024, or 256 with --small")
    parser.add_argument("--rows", type=int, default=5000, help="rows of the simulated epoch the batches come from")
    parser.add_argument("--seed-batch", type=int, default=2)
    parser.add_argument("--our-batch", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=None, help="alternating blocks per side (default 4, 2 with --small)")
    parser.add_argument("--steps-per-block", type=int, default=None, help="default 8, 2 with --small")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, if the GPU is not in the table")
    parser.add_argument("--threads", type=int, default=1, help="torch threads with --small (see bench.orchestration)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.max_length = args.max_length or (256 if args.small else 1024)
    args.blocks = args.blocks or (2 if args.small else 4)
    args.steps_per_block = args.steps_per_block or (2 if args.small else 8)
    return args


def main(argv=None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(measure(parse_args(argv)).to_json_line())


if __name__ == "__main__":
    main()
