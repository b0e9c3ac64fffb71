"""How fast the CLI's errors answer (issue 24 item 5): each error path against `arena-pref --version`, side by side.

    python -m bench.cli_latency --repeats 5

Builds a throw-away project folder (bad inputs, a SQLite store holding one registered model with @champion), then
runs, for each repeat, every error path right after `arena-pref --version` (alternating, so both sides see the same
machine load) and prints the medians as a markdown table (docs/benchmarks.md), then one JSON verdict line: the
slowest error path's median against the goal of 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.timing import median, spread

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 2.0

# (label, arguments); {p} is the project folder, {port} a port held busy during the run.
PATHS = [
    ("config show: missing file", ["config", "show", "{p}/nowhere.yaml"]),
    ("config show: YAML syntax error", ["config", "show", "{p}/syntax.yaml"]),
    ("config show: unknown field", ["config", "show", "configs/tiny.yaml", "--set", "train.nope=1"]),
    ("validate: test file without --kind test", ["validate", "{p}/good_test.csv"]),
    ("validate: missing file", ["validate", "{p}/nowhere.csv"]),
    ("train: data.train_csv not set", ["train", "--config", "configs/tiny.yaml"]),
    ("train: invalid JSON cell", ["train", "--config", "configs/tiny.yaml", "--set", "data.train_csv={p}/bad.csv"]),
    ("train: 6 rows, 5 folds", ["train", "--config", "configs/tiny.yaml", "--set", "data.train_csv={p}/six.csv"]),
    ("train: unknown tracking scheme", ["train", "--config", "configs/tiny.yaml", "--set",
                                        "data.train_csv={p}/train.csv", "--set", "tracking.uri=foo://x"]),
    ("models: unknown name", ["models", "--name", "nope"]),
    ("promote 99 (no such version)", ["promote", "99"]),
    ("predict: unknown alias", ["predict", "--model", "models:/arena-pref@nope", "--test-csv", "{p}/good_test.csv",
                                "--out", "{p}/sub.csv"]),
    ("predict: --out is a folder", ["predict", "--test-csv", "{p}/good_test.csv", "--out", "{p}"]),
    ("predict: train file as test file", ["predict", "--test-csv", "{p}/train.csv", "--out", "{p}/sub.csv"]),
    ("export: unknown version", ["export", "models:/arena-pref/99", "--out", "{p}/bundle"]),
    ("export: --out not empty", ["export", "--out", "{p}/full"]),
    ("ui: port busy", ["ui", "--port", "{port}"]),
    ("models: server down (3 tries)", ["models", "--tracking-uri", "http://127.0.0.1:1"]),
]  # fmt: skip


def build_project(folder: Path) -> None:
    """Bad inputs and a store with `arena-pref` version 1 @champion (made with MLflow here, outside the timing)."""
    import pandas as pd

    from pref_core.data.synthetic import make_synthetic_frames

    train, test = make_synthetic_frames(n_train=60, n_test=10, signal=0.9, seed=0)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "good_test.csv", index=False)
    bad = train.head(5).copy()
    bad.loc[bad.index[1], "prompt"] = '["unterminated'
    bad.to_csv(folder / "bad.csv", index=False)
    label = train[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy().argmax(axis=1)
    pd.concat([train[label == k].head(2) for k in range(3)]).to_csv(folder / "six.csv", index=False)
    (folder / "syntax.yaml").write_text("data:\n  test_csv: [unclosed\nmodel: {}\n")
    (folder / "full").mkdir()
    (folder / "full" / "keep.txt").write_text("keep")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow' / 'mlflow.db'}"
    (folder / "mlflow").mkdir()
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model("arena-pref")
    (folder / "model").mkdir()
    version = client.create_model_version("arena-pref", str(folder / "model"))
    client.set_registered_model_alias("arena-pref", "champion", version.version)


def run_once(arguments: list[str], env: dict, cwd: Path) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(arguments, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    return time.perf_counter() - start, done.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    program = str(Path(sys.executable).with_name("arena-pref"))
    folder = Path(tempfile.mkdtemp(prefix="cli-latency-"))
    try:
        build_project(folder)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env.update(ARENA_PREF_ROOT=str(folder), ARENA_PREF_LOG_DIR=str(folder / "logs"), HF_HUB_OFFLINE="1")
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            values = {"p": str(folder), "port": str(busy.getsockname()[1])}
            version_s: dict[str, list[float]] = {label: [] for label, _ in PATHS}
            error_s: dict[str, list[float]] = {label: [] for label, _ in PATHS}
            codes: dict[str, set[int]] = {label: set() for label, _ in PATHS}
            for _ in range(args.repeats):
                for label, path in PATHS:  # alternating: --version, then the error path, under the same load
                    version_s[label].append(run_once([program, "--version"], env, folder)[0])
                    seconds, code = run_once([program, *(part.format(**values) for part in path)], env, folder)
                    error_s[label].append(seconds)
                    codes[label].add(code)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"| error path (`arena-pref ...`) | exit | median s (min..max of {args.repeats}) "
        "| `--version` median s | ratio |"
    )
    print("| --- | --- | --- | --- | --- |")
    for label, _ in PATHS:
        err, ver = median(error_s[label]), median(version_s[label])
        exits = ",".join(str(c) for c in sorted(codes[label]))
        print(f"| {label} | {exits} | {err:.2f} ({spread(error_s[label])}) | {ver:.2f} | {err / ver:.1f}x |")
    local = [median(error_s[label]) for label, _ in PATHS if "server down" not in label]
    print(
        json.dumps(
            {
                "name": "cli_latency",
                "value": round(max(local), 3),
                "unit": "s (slowest local error path, median)",
                "goal": f"< {GOAL_S} s",
                "met": max(local) < GOAL_S and all(codes[label] == {2} for label, _ in PATHS),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
