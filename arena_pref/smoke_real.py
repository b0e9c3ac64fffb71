"""`make smoke-real`: both heads of a real pretrained LM (SmolLM2-135M, offline) on a few hundred pairs, 2 folds, CPU.

    python -m arena_pref.smoke_real [--data PAIRS.jsonl.gz | ARENA.csv] [--n-pairs 300]

Pairs in the HH-RLHF transcript format are converted to arena rows first (chosen on side a or b at
random, no ties); without --data, synthetic arena data is used. Prints OOF log loss for each head
beside two baselines on the same folds (the class prior and TF-IDF + logistic regression, fit on each
fold's training rows) and writes `smoke_real.json` in the output folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from arena_pref import environment
from arena_pref.tasks import resources


def prepare_data(data: str | None, n_pairs: int, seed: int, out_dir: Path) -> Path:
    from pref_core.data.arena import read_arena_csv
    from pref_core.data.extra import read_pairs, write_arena_csv
    from pref_core.data.synthetic import write_synthetic_csvs

    if data is None:
        train, _ = write_synthetic_csvs(out_dir / "data", n_train=n_pairs, n_test=10, signal=0.9, seed=seed)
        return train
    path = Path(data)
    if path.suffix in (".gz", ".jsonl", ".json"):
        frame = read_pairs(path, seed=seed, max_bad_fraction=0.05).frame
    else:
        frame = read_arena_csv(path, kind="train", max_bad_fraction=0.05).frame
    frame = frame.sample(n=min(n_pairs, len(frame)), random_state=seed).reset_index(drop=True)
    return write_arena_csv(frame, out_dir / "data" / f"{path.name.split('.')[0]}_{len(frame)}.csv")


def same_fold_baselines(config, train_csv: Path) -> dict[str, dict]:
    """The class prior and TF-IDF + logistic regression on the folds the heads used (pref_core.data.folds,
    the same deterministic split as the flow's make-folds), fit on each fold's training rows."""
    import numpy as np

    from pref_core.data.arena import read_arena_csv
    from pref_core.data.folds import make_folds
    from pref_core.evaluate.baselines import prior_oof, tfidf_logreg_oof
    from pref_core.evaluate.metrics import compute_log_loss

    frame = read_arena_csv(train_csv, kind="train", max_bad_fraction=config.data.max_bad_fraction).frame
    folds = make_folds(frame, n_folds=config.cv.n_folds, seed=config.cv.seed)
    out = {}
    for name, fn in (("class prior", prior_oof), ("tfidf+logreg", tfidf_logreg_oof)):
        oof = fn(frame, folds)
        if config.cv.folds is not None:  # only the validation folds the heads were scored on
            oof = oof[oof["fold"].isin(config.cv.folds)]
        labels, probs = oof["label"].to_numpy(), np.stack(oof["probs"])
        out[name] = {
            "oof_log_loss": float(compute_log_loss(labels, probs)),
            "oof_accuracy": float((probs.argmax(axis=1) == labels).mean()),
            "n_oof": int(len(oof)),
        }
    return out


def main(argv=None) -> int:
    # Offline: the model comes from a PyPI package, never the Hub.
    environment.apply_defaults(*environment.PRODUCT, environment.NO_PROGRESS_BARS)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="chosen/rejected JSON lines (HH-RLHF) or an arena CSV")
    parser.add_argument("--n-pairs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="configs/smollm2-135m.yaml")
    parser.add_argument("--output-dir", default=str(resources.project_root() / "outputs" / "smoke-real"))
    parser.add_argument("--heads", nargs="+", default=["label_token", "classifier"])
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)

    from arena_pref.flows.cv_training import cv_training
    from arena_pref.preflight import preflight
    from pref_core.config.loading import load_config

    out_dir = Path(args.output_dir).resolve()
    train_csv = prepare_data(args.data, args.n_pairs, args.seed, out_dir)
    results = []
    for head in args.heads:
        config = load_config(
            resources.find_config(args.config),
            [
                f"data.train_csv={train_csv}",
                f"output_dir={out_dir}",
                f"model.head={head}",
                "tracking.experiment=smoke-real",
                "tracking.registered_model=arena-pref-smoke-real",
                *args.set,
            ],
        )
        preflight(config)
        started = time.time()
        result = cv_training(config)
        scores = result.oof.scores
        results.append(
            {
                "head": head,
                "data": str(train_csv),
                "folds": sorted(result.oof.fold_log_loss),
                "oof_log_loss": scores.log_loss,
                "oof_log_loss_calibrated": scores.calibrated_log_loss,
                "prior_log_loss": scores.prior_log_loss,
                "oof_accuracy": scores.accuracy,
                "n_oof": scores.n_oof,
                "seconds": round(time.time() - started, 1),
            }
        )
    baselines = same_fold_baselines(config, train_csv)
    print("\nhead          OOF log loss  calibrated  prior   accuracy  rows  seconds")
    for r in results:
        print(
            f"{r['head']:<13} {r['oof_log_loss']:>12.4f}  {r['oof_log_loss_calibrated'] or float('nan'):>10.4f}  "
            f"{r['prior_log_loss']:.4f}  {r['oof_accuracy']:>8.3f}  {r['n_oof']:>4}  {r['seconds']:>7}"
        )
    for name, b in baselines.items():
        print(f"{name:<13} {b['oof_log_loss']:>12.4f}  {'':>10}  {'':>6}  {b['oof_accuracy']:>8.3f}  {b['n_oof']:>4}")
    (out_dir / "smoke_real.json").write_text(json.dumps({"heads": results, "baselines": baselines}, indent=2))
    print(f"written {out_dir / 'smoke_real.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
