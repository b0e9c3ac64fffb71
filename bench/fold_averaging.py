"""Benchmark: `--folds average` (one adapter, the mean of the fold LoRA deltas) against `--folds ensemble`
(K adapters, probabilities averaged) on a labelled held-out set, tiny model, CPU.

Trains the tiny recipe (configs/tiny.yaml, 5 folds, in-process) with the cv-training flow on synthetic rows,
registers it (SQLite store in a temporary folder), exports both bundles with `arena-pref export`, then
predicts held-out rows that training never saw with each bundle's config and adapters through
pref_core.predict.ensemble.predict_frame_probabilities (what the bundle's predict.py runs), sides alternating.

    python -m bench.fold_averaging --train 700 --heldout 300 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=700)
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--head", default="label_token", choices=["label_token", "classifier"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import torch

    from arena_pref.cli import main as cli_main
    from arena_pref.flows.cv_training import cv_training
    from pref_core.config.loading import load_config
    from pref_core.data.arena import read_arena_csv
    from pref_core.data.synthetic import make_synthetic_frames
    from pref_core.evaluate.metrics import compute_log_loss
    from pref_core.kaggle.bundle import adapter_dirs, read_prediction_settings
    from pref_core.predict.ensemble import predict_frame_probabilities

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frame, _ = make_synthetic_frames(n_train=args.train + args.heldout, n_test=0, signal=0.9, seed=11)
        frame.iloc[: args.train].to_csv(tmp / "train.csv", index=False)
        frame.iloc[args.train :].to_csv(tmp / "heldout.csv", index=False)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        config = load_config(
            ROOT / "configs" / "tiny.yaml",
            [
                f"data.train_csv={tmp / 'train.csv'}",
                f"output_dir={tmp / 'out'}",
                f"tracking.uri={uri}",
                "cv.execution=in_process",
                f"model.head={args.head}",
                "train.num_epochs=2",
            ],
        )
        result = cv_training(config)
        bundles = {}
        for folds in ("ensemble", "average"):
            out = tmp / f"bundle-{folds}"
            assert (
                cli_main(
                    [
                        "export",
                        "models:/arena-pref@champion",
                        "--out",
                        str(out),
                        "--tracking-uri",
                        uri,
                        "--folds",
                        folds,
                    ]
                )
                == 0
            )
            bundles[folds] = out
        heldout = read_arena_csv(tmp / "heldout.csv", kind="train").frame
        labels = heldout["label"].to_numpy()
        base = json.loads((bundles["ensemble"] / "manifest.json").read_text())["base_model"]["name_or_path"]
        temperature = json.loads((bundles["ensemble"] / "calibration.json").read_text())["temperature"]
        times = {k: [] for k in bundles}
        probs = {}
        for repeat in range(args.repeats):
            order = list(bundles) if repeat % 2 == 0 else list(reversed(bundles))
            for folds in order:
                bundle = bundles[folds]
                start = time.perf_counter()
                settings = read_prediction_settings(bundle)
                probs[folds] = predict_frame_probabilities(
                    settings.model,
                    settings.prompt,
                    adapter_dirs(bundle),
                    heldout,
                    batch_size=settings.batch_size,
                    tta_swap=settings.tta_swap,
                    base_model=base,
                    temperature=temperature,
                    devices=["cpu"],
                )
                times[folds].append(time.perf_counter() - start)
        summary = {
            "head": args.head,
            "n_train": args.train,
            "n_heldout": len(heldout),
            "n_folds": config.cv.n_folds,
            "oof_log_loss": result.oof.scores.log_loss,
            "temperature": temperature,
            "prior_log_loss": float(
                compute_log_loss(labels, np.tile(np.bincount(labels, minlength=3) / len(labels), (len(labels), 1)))
            ),
            **{f"{k}_log_loss": float(compute_log_loss(labels, p)) for k, p in probs.items()},
            **{f"{k}_seconds": float(np.median(t)) for k, t in times.items()},
            "times": times,
        }
        print(json.dumps(summary, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
