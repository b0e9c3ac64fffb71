"""Benchmark 1: memory and time of the label head in one training step, the seed's way against ours.

Only the head is measured: the decoder's last hidden states are a given leaf tensor (batch 2, seq 1024,
a tiny hidden size) that needs a gradient, as it would inside a LoRA model, and the LM head is a frozen
(vocab 128,256, hidden) matrix. One step = head forward + 3-class loss + backward to the hidden states.

* seed: ``logits = lm_head(hidden)`` over every position -> (2, 1024, 128256), ``.float()`` as
  LlamaForCausalLM does, the shifted ``logits[:, :-1].contiguous()`` copy of the HF causal-LM loss,
  then the 3 label logits gathered at the label position.
* ours: pref_core.model.preference.PreferenceModel with head=label_token (the real forward: last real token
  from the mask, ``hidden_last @ lm_head.weight[label_ids].T``), around a 1-layer Llama whose decoder
  returns the given hidden states.

Peak memory, in a fresh process per side after one warm-up step (bench.memory): the most bytes held
at once by the tensors the step allocates (torch.profiler allocation events; this is the headline
ratio), and, as a cross-check, the growth of the kernel's resident high-water mark during the step.
Step times come from a third process holding both sides, stepping them alternately. Both sides must
produce the same (batch, 3) logits, or the benchmark fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

from bench.report import Verdict, print_table, save_results
from bench.timing import median, spread

NAME = "label_head"
LLAMA3_VOCAB = 128_256
MEMORY_GOAL = 10.0  # at least 10x less peak memory


# -- one side, in its own process -----------------------------------------------------------------


def _build_inputs(batch: int, seq: int, hidden: int, vocab: int, dtype_name: str, seed: int = 0):
    import torch
    from torch import nn

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    generator = torch.Generator().manual_seed(seed)
    lm_head = nn.Linear(hidden, vocab, bias=False, dtype=dtype)
    with torch.no_grad():
        lm_head.weight.copy_(torch.randn(vocab, hidden, generator=generator) * 0.02)
    lm_head.weight.requires_grad_(False)  # LoRA never trains the LM head
    hidden_states = torch.randn(batch, seq, hidden, generator=generator).to(dtype)  # (batch, seq, hidden)
    # The seed's rows end with the label word ("...Answer: a"); ours end just before it (the model
    # predicts it). Later rows are right-padded, so the label position differs per row.
    seed_mask = torch.ones(batch, seq, dtype=torch.long)  # (batch, seq)
    seed_mask[1:, int(seq * 0.7) :] = 0
    our_mask = seed_mask.clone()
    our_mask[torch.arange(batch), seed_mask.sum(dim=1) - 1] = 0  # drop the label word
    labels = torch.arange(batch) % 3  # (batch,)
    label_token_ids = [vocab - 3, vocab // 2, 17]  # any three rows of the head
    return lm_head, hidden_states, seed_mask, our_mask, labels, label_token_ids


def build_head_only_backbone(lm_head, hidden_size: int, vocab: int):
    """A real 1-layer LlamaForCausalLM sharing `lm_head`, whose decoder just returns `backbone.hidden_states`:
    PreferenceModel runs unchanged on it, and only its head part does any work."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden_size,
        vocab_size=vocab,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        intermediate_size=hidden_size,
    )
    backbone = LlamaForCausalLM(config).to(lm_head.weight.dtype)
    backbone.requires_grad_(False)
    backbone.lm_head = lm_head
    backbone.hidden_states = None  # set per step: what the decoder "returns"
    backbone.get_decoder().forward = lambda **_: SimpleNamespace(last_hidden_state=backbone.hidden_states)
    return backbone


def make_seed_step(lm_head, attention_mask, labels, label_token_ids):
    """The seed's head: full logits over every position, upcast, shifted copy, gather at the label."""
    import torch

    from pref_core.model.losses import preference_loss
    from pref_core.model.preference import last_token_indices

    label_ids = torch.tensor(label_token_ids)
    # Shifted logits at t predict token t+1: the label word's position minus one.
    label_position = last_token_indices(attention_mask) - 1  # (batch,)
    rows = torch.arange(attention_mask.shape[0])

    def step(hidden_states):
        logits = lm_head(hidden_states)  # (batch, seq, vocab)
        logits = logits.float()  # LlamaForCausalLM upcasts the logits before the loss
        shift_logits = logits[:, :-1, :].contiguous()  # (batch, seq-1, vocab): the HF causal-LM loss' shift
        three = shift_logits[rows, label_position][:, label_ids]  # (batch, 3)
        loss = preference_loss(three, labels)
        loss.backward()
        return three.detach()

    return step


def make_our_step(lm_head, attention_mask, labels, label_token_ids, hidden_size: int, vocab: int):
    """Ours: pref_core's PreferenceModel (label_token head) forward and loss, then backward."""
    import torch

    from pref_core.model.preference import PreferenceModel

    backbone = build_head_only_backbone(lm_head, hidden_size, vocab)
    model = PreferenceModel(backbone, "label_token", label_token_ids)
    input_ids = torch.zeros_like(attention_mask)

    def step(hidden_states):
        backbone.hidden_states = hidden_states
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        out["loss"].backward()
        return out["logits"].detach()

    return step


def _make_step(side: str, args):
    """(step, hidden_states): `step()` runs one training step of `side` on fixed inputs, returns (batch, 3) logits."""
    lm_head, hidden_states, seed_mask, our_mask, labels, label_ids = _build_inputs(
        args.batch, args.seq, args.hidden, args.vocab, args.dtype
    )
    hidden_states.requires_grad_(True)  # a LoRA model back-propagates into the decoder through them
    if side == "seed":
        inner = make_seed_step(lm_head, seed_mask, labels, label_ids)
    else:
        inner = make_our_step(lm_head, our_mask, labels, label_ids, args.hidden, args.vocab)

    def step():
        hidden_states.grad = None
        return inner(hidden_states)

    step.clear = lambda: setattr(hidden_states, "grad", None)  # free the last gradient before measuring
    return step


def measure_side_memory(side: str, args) -> dict:
    """In a fresh process: warm-up step, then the peak of one step seen by the kernel (resident pages)
    and by torch's allocator (profiler allocation events)."""
    from bench.memory import PeakRSS, profile_peak_allocated_mib

    step = _make_step(side, args)
    logits = step()  # warm-up: first-call allocations, lazy initialisation
    step.clear()
    with PeakRSS() as meter:
        step()
    step.clear()  # else the profiler sees a free of a block it never saw allocated
    allocated = profile_peak_allocated_mib(step)
    return {
        "side": side,
        "peak_rss_mib": meter.peak_mib,
        "peak_allocated_mib": allocated,
        "logits": logits.float().tolist(),
    }


def measure_step_times(args) -> dict:
    """In one process: both sides built once, steps timed alternately (seed, ours, seed, ours, ...)."""
    import torch

    from bench.timing import time_call

    steps = {side: _make_step(side, args) for side in ("seed", "ours")}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {"seed": [], "ours": []}
    for _ in range(args.steps):
        times["seed"].append(time_call(steps["seed"]))
        times["ours"].extend(time_call(steps["ours"]) for _ in range(5))  # cheap: more samples, steadier median
    return {"step_s": times, "threads": torch.get_num_threads()}


# -- both sides -----------------------------------------------------------------------------------


def _run_worker(mode: str, args, out_dir: Path) -> dict:
    out = out_dir / f"{mode}.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.label_head",
        "--worker",
        mode,
        "--worker-out",
        str(out),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--hidden",
        str(args.hidden),
        "--vocab",
        str(args.vocab),
        "--dtype",
        args.dtype,
        "--steps",
        str(args.steps),
    ]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def measure(args) -> Verdict:
    import numpy as np

    from bench.memory import is_supported

    if not is_supported():
        raise SystemExit("bench.label_head needs Linux /proc/self/clear_refs to measure peak resident memory")
    with tempfile.TemporaryDirectory() as tmp:
        memory = {side: _run_worker(side, args, Path(tmp)) for side in ("seed", "ours")}
        timing = _run_worker("timing", args, Path(tmp))
    seed_logits = np.asarray(memory["seed"]["logits"])
    our_logits = np.asarray(memory["ours"]["logits"])
    max_diff = float(np.abs(seed_logits - our_logits).max())
    if not np.allclose(seed_logits, our_logits, atol=1e-2, rtol=1e-2):
        raise AssertionError(f"the two heads disagree (max |diff| {max_diff:.3g}): the comparison is not like for like")

    summary = {
        side: {
            "peak_allocated_mib": memory[side]["peak_allocated_mib"],
            "peak_rss_mib": memory[side]["peak_rss_mib"],
            "step_s": median(timing["step_s"][side]),
            "steps_s": timing["step_s"][side],
        }
        for side in ("seed", "ours")
    }
    memory_ratio = summary["seed"]["peak_allocated_mib"] / summary["ours"]["peak_allocated_mib"]
    speed_ratio = summary["seed"]["step_s"] / summary["ours"]["step_s"]
    logits_mib = args.batch * args.seq * args.vocab * 4 / 2**20
    print_table(
        f"label head, one training step: batch {args.batch}, seq {args.seq}, vocab {args.vocab:,}, "
        f"hidden {args.hidden}, "
        f"{args.dtype} weights; memory in a fresh process per side, {args.steps} alternating timed steps",
        ["side", "peak allocated MiB", "peak RSS growth MiB", "step ms (median)", "step ms (min)", "step ms range"],
        [
            [
                side,
                s["peak_allocated_mib"],
                s["peak_rss_mib"],
                s["step_s"] * 1e3,
                min(s["steps_s"]) * 1e3,
                spread([t * 1e3 for t in s["steps_s"]]),
            ]
            for side, s in summary.items()
        ],
    )
    print(
        f"(one fp32 (batch, seq, vocab) logits tensor is {logits_mib:,.0f} MiB; "
        f"the two heads' logits agree to {max_diff:.2g};"
        " RSS growth 0 = the step fit in heap pages freed by the warm-up;\n the median of ours is mostly"
        " OpenMP wake-ups of tiny ops on a busy machine, the min is the op cost)"
    )
    print(
        f"peak memory: {memory_ratio:,.0f}x less (goal >= {MEMORY_GOAL:.0f}x); "
        f"step time: {speed_ratio:,.0f}x faster (goal > 1x)"
    )
    verdict = Verdict(
        NAME,
        memory_ratio,
        "x less peak memory (head step)",
        f">={MEMORY_GOAL:.0f}x, and faster (measured {speed_ratio:,.0f}x faster)",
        memory_ratio >= MEMORY_GOAL and speed_ratio > 1.0,
    )
    save_results(
        NAME,
        verdict,
        {
            "args": vars(args),
            "summary": summary,
            "speed_ratio": speed_ratio,
            "memory_ratio": memory_ratio,
            "logits_fp32_mib": logits_mib,
            "max_logit_diff": max_diff,
        },
    )
    return verdict


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=64, help="tiny on purpose: the head's cost is the vocabulary")
    parser.add_argument("--vocab", type=int, default=LLAMA3_VOCAB)
    parser.add_argument(
        "--dtype",
        choices=["bf16", "fp16", "fp32"],
        default="bf16",
        help="weights and hidden states; bf16 stands for the seed's fp16 (half precision, upcast logits)",
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side (alternating)")
    parser.add_argument("--worker", choices=["seed", "ours", "timing"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        result = measure_step_times(args) if args.worker == "timing" else measure_side_memory(args.worker, args)
        args.worker_out.write_text(json.dumps(result))
        return
    print(measure(args).to_json_line())


if __name__ == "__main__":
    main()
