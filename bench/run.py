"""`make bench`: every CPU benchmark, each in a fresh process, then a summary and one JSON line each.

    python -m bench.run                      # all six (6-8 minutes on 2 shared cores)
    python -m bench.run --only padding inference

Each benchmark prints its own table; its stderr (library logs, progress bars) goes to
bench/results/<name>.log. The last lines of the output are the verdicts, one JSON object per line
with keys name, value, unit, goal, met.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from arena_pref import environment
from bench import BENCH_ENVIRONMENT
from bench.report import RESULTS_DIR, format_table

# (name, module, arguments): the order is cheapest-to-understand first; orchestration is the long one.
BENCHMARKS = (
    ("label_head", "bench.label_head", []),
    ("padding", "bench.padding", []),
    ("token_cache", "bench.token_cache", []),
    ("orchestration", "bench.orchestration", []),
    ("inference", "bench.inference", ["--rows", "400"]),
    ("gpu_throughput", "bench.gpu_throughput", ["--small", "--vocab", "4096"]),
)


def run_benchmark(name: str, module: str, arguments: list[str]) -> dict:
    """Run one benchmark module; returns its verdict (the last JSON line it printed) plus seconds taken."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS_DIR / f"{name}.log"
    env = environment.child_env(*BENCH_ENVIRONMENT)  # offline models only: no Hub
    print(f"\n##### {name}: {sys.executable} -m {module} {' '.join(arguments)}", flush=True)
    start = time.perf_counter()
    verdict = None
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *arguments], stdout=subprocess.PIPE, stderr=log, text=True, env=env
        )
        for line in proc.stdout:  # stream the tables as they come
            if line.startswith("{") and '"name"' in line:
                verdict = json.loads(line)
            else:
                print(line, end="", flush=True)
        code = proc.wait()
    seconds = time.perf_counter() - start
    if code != 0 or verdict is None:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        print(f"{name} FAILED (exit code {code}); last lines of {log_path}:\n" + "\n".join(tail), flush=True)
        verdict = {"name": name, "value": None, "unit": "", "goal": "", "met": False}
    print(f"({name}: {seconds:.0f} s)", flush=True)
    return {**verdict, "_seconds": seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=[b[0] for b in BENCHMARKS], help="run only these")
    args = parser.parse_args(argv)
    selected = [b for b in BENCHMARKS if not args.only or b[0] in args.only]
    start = time.perf_counter()
    verdicts = [run_benchmark(*b) for b in selected]
    total = time.perf_counter() - start

    rows = []
    for v in verdicts:
        value = "FAILED" if v["value"] is None else f"{v['value']:,.4g}"
        rows.append([v["name"], value, v["unit"], v["goal"], "yes" if v["met"] else "NO", f"{v['_seconds']:.0f}"])
    print("\n===== summary (" + f"{total / 60:.1f} min; details in {RESULTS_DIR}/)")
    print(format_table(["benchmark", "value", "unit", "goal", "met", "s"], rows))
    print()
    for v in verdicts:
        print(json.dumps({k: v[k] for k in ("name", "value", "unit", "goal", "met")}))
    if any(v["value"] is None for v in verdicts):
        sys.exit(1)  # a crashed benchmark fails `make bench`; an unmet goal is a result, not an error


if __name__ == "__main__":
    main()
