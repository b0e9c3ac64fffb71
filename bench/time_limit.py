"""Issue 29, item 4: how well `--time-limit` projects the prediction time, measured on CPU.

    python -m bench.time_limit                       # 2,000 realistic rows, tiny model, swap TTA, one CPU worker
    python -m bench.time_limit --rows 300 --threads 1

Runs pref_core.predict.ensemble.predict_frame (what the bundle's predict.py runs) on a realistic-length test frame
(bench.lengths) with the shipped tiny config's model and one adapter, under a time limit far above the run (so it
never stops), and compares the first projection (made after `check_after` measured batches, each worker's first
left out) with the prediction time it took. Then a second run with a limit of half that time and --fit-time shows the
decisions and that the run stops before the limit less the reserve. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def build(args, tmp: Path):
    from arena_pref.tasks import resources
    from bench.lengths import make_realistic_frame
    from pref_core.config.loading import load_config
    from pref_core.model.preference import build_model, save_adapter
    from pref_core.model.tiny import build_tiny_checkpoint
    from pref_core.text.prompts import build_prompt
    from pref_core.train.fold import load_training_tokenizer

    frame = make_realistic_frame(args.rows, seed=args.seed).drop(columns=["label"])
    config = load_config(resources.shipped_file("configs/tiny.yaml"), [f"prompt.max_length={args.max_length}"])
    texts = [build_prompt(p, a, b) for p, a, b in zip(frame["prompt"][:500], frame["response_a"], frame["response_b"])]
    tiny = config.model.tiny
    model_dir = build_tiny_checkpoint(
        texts,
        tmp / "model",
        hidden_size=tiny.hidden_size,
        num_layers=tiny.num_layers,
        num_heads=tiny.num_heads,
        intermediate_size=tiny.intermediate_size,
        vocab_size=tiny.vocab_size,
    )
    tokenizer = load_training_tokenizer(config.model, model_dir)
    model = build_model(config.model, config.lora, tokenizer, name_or_path=model_dir, seed=config.train.seed)
    adapter = save_adapter(model, tmp / "adapter", tokenizer)
    return config, frame, model_dir, adapter


def one_run(args, config, frame, model_dir, adapter, limit_s: float, fit: bool) -> dict:
    from pref_core.predict.deadline import TimeKeeper, TimeLimit
    from pref_core.predict.ensemble import predict_frame
    from pref_core.predict.runner import width_scale_of

    started = time.time()
    keeper = TimeKeeper(TimeLimit(limit_s, started, fit=fit), width_scale_of(model_dir))
    lines: list[str] = []
    prediction = predict_frame(
        config.model,
        config.prompt,
        [adapter],
        frame,
        batch_size=args.batch_size,
        tta_swap=True,
        base_model=str(model_dir),
        devices=["cpu"],
        max_batch_tokens=args.max_batch_tokens,
        keeper=keeper,
        say=lines.append,
    )
    ended = time.time()
    first = keeper.first_projection()
    actual = ended - keeper.predict_started_at
    out = {
        "limit_s": limit_s,
        "fit_time": fit,
        "reserve_s": keeper.limit.reserve,
        "rows_predicted": int(prediction.predicted.sum()),
        "rows": len(frame),
        "predict_s": round(actual, 2),
        "total_s": round(ended - started, 2),
        "hard_stop_s": keeper.hard_stop(),
        "console": lines,
        "decisions": [d.to_dict() for d in prediction.run.decisions],
    }
    if first is not None and not out["decisions"]:  # with decisions the plan changed after the projection
        out["first_projection_predict_s"] = round(first["projected_predict_s"], 2)
        out["first_projection_at_s"] = round(first["at_s"], 2)
        out["projection_error_pct"] = round(100 * (first["projected_predict_s"] - actual) / actual, 1)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fit-run", action="store_true", help="only the projection run")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        config, frame, model_dir, adapter = build(args, Path(tmp))
        result = {"args": vars(args), "projection": one_run(args, config, frame, model_dir, adapter, 36000.0, False)}
        if not args.no_fit_run:
            limit = max(10.0, result["projection"]["total_s"] / 2)
            result["fit_time"] = one_run(args, config, frame, model_dir, adapter, limit, True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
