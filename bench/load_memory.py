"""Host memory of loading a base model: peak RSS growth during `load_backbone`, before and after loading
straight onto the target device (device_map), each in a fresh process, sides alternated.

    python -m bench.load_memory [--hidden 1536 --layers 16 --repeats 2 --folder /tmp/arena-load-bench]

Writes a random Llama of >= 500M parameters (bf16 safetensors) once, then loads it `repeats` times per side.
"before" is the previous load_backbone call (no device_map: the weights are materialised on the CPU and
moved afterwards); "after" is the current one. Growth = the process's peak RSS (VmHWM) after the load
minus its RSS just before it, and again after reading every weight once (memory-mapped pages count only
when read); reported against one copy of the weights (parameters x 2 bytes). On a CPU-only machine the
target device is the CPU itself; the saving of device_map shows on a GPU, where "before" materialises the
weights in host RAM and then copies them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def build(folder: Path, hidden: int, layers: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def measure(folder: Path, side: str) -> dict:
    """In this (fresh) process: load once, return RSS numbers in MiB."""
    import torch
    from transformers import AutoModelForCausalLM

    from pref_core.config.schema import ModelConfig
    from pref_core.model.backbone import load_backbone

    model_config = ModelConfig(name_or_path=str(folder), dtype="bf16")
    before_kb = _status_kb("VmRSS")
    if side == "before":  # the previous call: no device_map for an unquantized base
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16, attn_implementation="sdpa")
        model.to("cuda" if torch.cuda.is_available() else "cpu")
    else:
        model = load_backbone(model_config)
    peak_kb, after_kb = _status_kb("VmHWM"), _status_kb("VmRSS")
    # safetensors are memory-mapped: pages count once read. Read every weight, as a forward pass (or a copy to
    # the GPU) would, so the peak includes what the weights really occupy in host RAM.
    with torch.no_grad():
        for p in model.parameters():
            p.data.view(-1)[:: max(1, 4096 // p.element_size())].sum()  # one element per 4 KiB page
    touched_kb = _status_kb("VmHWM")
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "side": side,
        "growth_mib": (peak_kb - before_kb) / 1024,
        "resident_after_mib": (after_kb - before_kb) / 1024,
        "touched_growth_mib": (touched_kb - before_kb) / 1024,
        "weights_mib": n_params * 2 / 2**20,
        "n_params": n_params,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/arena-load-bench")
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--_measure", choices=["before", "after"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if args._measure:
        print(json.dumps(measure(folder, args._measure)))
        return 0
    if not (folder / "config.json").exists():
        n = build(folder, args.hidden, args.layers)
        print(f"wrote a random Llama of {n / 1e6:.0f}M parameters (bf16 safetensors) to {folder}")
    rows = []
    for _ in range(args.repeats):
        for side in ("before", "after"):
            out = subprocess.run(
                [sys.executable, "-m", "bench.load_memory", "--folder", str(folder), "--_measure", side],
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"{r['side']:<6}  peak growth during load {r['growth_mib']:6.0f} MiB "
                f"({r['growth_mib'] / r['weights_mib']:.2f}x one copy of {r['weights_mib']:.0f} MiB, "
                f"{r['n_params'] / 1e6:.0f}M params); after reading every weight {r['touched_growth_mib']:6.0f} MiB "
                f"({r['touched_growth_mib'] / r['weights_mib']:.2f}x)"
            )
    for side in ("before", "after"):
        load = [r["growth_mib"] / r["weights_mib"] for r in rows if r["side"] == side]
        touched = [r["touched_growth_mib"] / r["weights_mib"] for r in rows if r["side"] == side]
        print(
            f"{side}: peak RSS growth {min(load):.2f}-{max(load):.2f}x one copy during load, "
            f"{min(touched):.2f}-{max(touched):.2f}x with every weight read"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
