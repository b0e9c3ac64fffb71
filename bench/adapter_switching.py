"""Benchmark: a 5-fold prediction with one base load and switched adapters (pref_core.predict.ensemble) against one
base load per fold (the ensemble before issue 13/15), on a random Llama of >= 500M parameters saved to disk.

Both sides predict the same rows with the same five LoRA adapters (label_token head, r=16 on every
linear layer of the decoder, random non-zero weights), on the CPU in fp32; the sides alternate within one
run. The numbers of both sides are checked to agree within 1e-5.

    python -m bench.adapter_switching --rows 50 --repeats 2 [--workdir DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import numpy as np

TEXTS = [
    "<prompt>: which river is longest ? <response_a>: the nile is long <response_b>: the amazon carries more water",
    "Which is the better response for the prompt ? a or b or tie ? Answer: tie",
    "the cat sat on the mat and the dog ran to the garden while the sun was bright",
] * 20


def build_base(out_dir: Path, layers: int, hidden: int, vocab: int) -> tuple[Path, int]:
    """A random Llama-3-shaped model (GQA, 128k vocabulary, untied head) saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pref_core.model.tiny import train_tokenizer

    tokenizer = train_tokenizer(TEXTS, vocab_size=400)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del model
    gc.collect()
    return out_dir, n_params


def make_config(base_dir: Path):
    from pref_core.config.loading import parse_config

    return parse_config(
        {
            "model": {"name_or_path": str(base_dir), "head": "label_token", "dtype": "fp32"},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
            "train": {"seed": 0, "eval_batch_size": 8},
        }
    )


def build_adapters(config, base_dir: Path, out: Path, n_folds: int) -> list[Path]:
    import torch
    from transformers import AutoTokenizer

    from pref_core.model.preference import build_model, save_adapter

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = build_model(config.model, config.lora, tokenizer, name_or_path=base_dir, seed=config.train.seed)
    dirs = []
    for fold in range(n_folds):
        generator = torch.Generator().manual_seed(fold)
        with torch.no_grad():
            for _, param in model.named_parameters():
                if param.requires_grad:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        dirs.append(save_adapter(model, out / f"fold_{fold}", tokenizer))
    del model
    gc.collect()
    return dirs


def per_fold_reloads(config, adapter_dirs, ids) -> list[np.ndarray]:
    """Before: pref_core.predict.ensemble.predict_with_adapters as it was, one base load per fold."""
    from pref_core.model.preference import load_preference_model
    from pref_core.predict.inference import predict_token_ids

    outputs = []
    for adapter_dir in adapter_dirs:
        model, tokenizer = load_preference_model(config.model, adapter_dir, device="cpu")
        outputs.append(
            predict_token_ids(model, ids, batch_size=config.train.eval_batch_size, pad_token_id=tokenizer.pad_token_id)
        )
        del model
        gc.collect()
    return outputs


def one_base(config, adapter_dirs, ids) -> list[np.ndarray]:
    """After: one base load, the adapters switched (pref_core.predict.ensemble.predict_fold_probabilities)."""
    from pref_core.predict.ensemble import predict_fold_probabilities

    outputs, _ = predict_fold_probabilities(
        config.model, adapter_dirs, ids, batch_size=config.train.eval_batch_size, devices=["cpu"]
    )
    gc.collect()
    return outputs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--workdir", default=None, help="keep the model here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="write the measurements here")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        base_dir = work / "base"
        if (base_dir / "config.json").is_file():
            from transformers import AutoConfig, AutoModelForCausalLM

            with torch.device("meta"):
                n_params = sum(
                    p.numel()
                    for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir)).parameters()
                )
        else:
            base_dir, n_params = build_base(base_dir, args.layers, args.hidden, args.vocab)
        config = make_config(base_dir)
        adapter_dirs = build_adapters(config, base_dir, work / "adapters", args.folds)
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        rng = np.random.default_rng(0)
        base_ids = tokenizer.encode(" ".join(TEXTS[:3]))
        ids = [base_ids[: int(n)] for n in rng.integers(16, 48, size=args.rows)]
        disk_mb = sum(p.stat().st_size for p in base_dir.glob("*.safetensors")) / 1e6
        print(
            f"base: {n_params / 1e6:.0f}M parameters, {disk_mb:.0f} MB safetensors; {args.folds} folds, "
            f"{args.rows} rows of 16-47 tokens; torch threads {torch.get_num_threads()}"
        )
        times = {"per_fold_reloads": [], "one_base": []}
        results = {}
        for repeat in range(args.repeats):
            sides = ["per_fold_reloads", "one_base"] if repeat % 2 == 0 else ["one_base", "per_fold_reloads"]
            for side in sides:
                fn = per_fold_reloads if side == "per_fold_reloads" else one_base
                start = time.perf_counter()
                results[side] = fn(config, adapter_dirs, ids)
                times[side].append(time.perf_counter() - start)
                print(f"repeat {repeat} {side}: {times[side][-1]:.1f} s", flush=True)
        worst = max(float(np.abs(a - b).max()) for a, b in zip(results["per_fold_reloads"], results["one_base"]))
        before, after = float(np.median(times["per_fold_reloads"])), float(np.median(times["one_base"]))
        summary = {
            "n_params": n_params,
            "rows": args.rows,
            "folds": args.folds,
            "times_s": times,
            "median_before_s": before,
            "median_after_s": after,
            "speedup": before / after,
            "max_abs_diff": worst,
        }
        print(json.dumps(summary))
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
