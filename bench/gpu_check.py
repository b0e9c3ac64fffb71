"""`make gpu-check OUT=DIR`: the whole GPU check as one command of at most 8 minutes (issue 18).

    python -m bench.gpu_check --out DIR            # on the GPU machine (one H200, no network)
    python -m bench.gpu_check --out DIR --small    # CPU dry run of every step (a 2-layer config; CI runs it)

Steps, each a child process with its own time limit and log in DIR (install.log, tests.log, throughput.log):

1. install the wheels brought along in `.whl/` (`make gpu-wheels` downloads them here) into a folder put
   first on the children's PYTHONPATH (`pip install --no-index --no-deps --target`): the GPU image has
   torch, transformers, peft and accelerate, but not bitsandbytes, datasets or pydantic;
2. record the machine: GPU, driver, torch and CUDA, and the version (or import error) of every package used;
3. `python -m bench.gpu_throughput`: the seed's setup against ours on the Meta-Llama-3-8B architecture with
   random weights, alternating in one process; ours at 2,048 tokens with the seed's batch and with the
   largest batch that fits; prediction of 1,000 realistic rows with and without swap TTA (first: the goals'
   numbers; it saves its JSON after every phase, so a run cut off at its limit keeps what it measured);
4. `pytest -m gpu tests/gpu` (CUDA-only tests; every one skips without CUDA), with a JUnit XML report;
   tests that measure something (the resume tolerance) append it to DIR/gpu_measurements.jsonl;
5. `python -m bench.kaggle_throughput` (issue 29): fp16 rows/s of a Gemma-2-9B-shaped random model at 2,048
   tokens with and without swap TTA, and the projected time for 25,000 rows on this card (DIR/kaggle.json; its
   output goes to the end of throughput.log). Last, so that it takes only what the budget has left.

Then it writes DIR/summary.json (every step's outcome, the machine, test counts and failures, the
measurements and the goals) and prints a short table last. The exit code is 0 only when every step
succeeded; the summary is written either way. DIR holds at most 8 files (what the GPU tool brings back).
With --small the numbers are CPU numbers of a 2-layer model: they check the script, not the goals.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Optional

# Standard library only, like this script: it runs under the GPU machine's bare python3 from the checkout.
from arena_pref.environment import child_env
from bench import BENCH_ENVIRONMENT
from bench.report import format_table

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_FILE = "summary.json"
MEASUREMENTS_FILE = "gpu_measurements.jsonl"  # tests/gpu append {"name", "value", "unit", "tolerance"} lines
TESTS_XML = "gpu_tests.xml"
THROUGHPUT_JSON = "throughput.json"
KAGGLE_JSON = "kaggle.json"
# Packages whose versions the summary records (and whose import errors it shows).
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "datasets",
    "pydantic",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "pyarrow",
    "pytest",
)
# Seconds per step on the H200 (the whole check must fit 8 minutes with room for a rerun); --small: CPU.
STEP_LIMITS = {"install": 90, "environment": 60, "throughput": 300, "tests": 200, "kaggle": 150}
# On a shared 2-core CI machine a loaded neighbour can triple wall times: --small gets far more room (and a
# 1,200 s budget), since it checks the script, not the 8-minute sizing.
SMALL_STEP_LIMITS = {"install": 120, "environment": 120, "throughput": 360, "tests": 300, "kaggle": 240}
# The throughput step's arguments on the GPU: one 8B build per side, a handful of timed steps after warm-up.
GPU_THROUGHPUT_ARGS = ["--blocks", "4", "--steps-per-block", "5", "--headroom-steps", "5", "--predict-rows", "1000"]
# --small: the same code paths at the smallest sizes (a 4,096-word vocabulary: the seed's full fp16 logits are
# slow on CPU), so that the default test suite can afford the whole dry run.
SMALL_THROUGHPUT_ARGS = [
    "--small",
    "--vocab",
    "4096",
    "--rows",
    "400",
    "--blocks",
    "2",
    "--steps-per-block",
    "1",
    "--headroom-length",
    "256",
    "--headroom-steps",
    "1",
    "--max-batch",
    "4",
    "--predict-rows",
    "24",
]

# argv: "import" or "versions" (--small: versions only; every import costs seconds of CPU), then package names.
_ENVIRONMENT_PROBE = r"""
import importlib, json, sys
from importlib.metadata import version
out = {"python": sys.version.split()[0], "packages": {}, "import_errors": {}}
for name in sys.argv[2:]:
    try:
        out["packages"][name] = version(name)
        if sys.argv[1] == "import":
            importlib.import_module(name)
    except Exception as error:
        out["import_errors"][name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
try:
    import torch
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        out["compute_capability"] = f"{props.major}.{props.minor}"
        out["bf16_supported"] = torch.cuda.is_bf16_supported()
except Exception as error:
    out["import_errors"]["torch.cuda"] = repr(error)[:300]
print(json.dumps(out))
"""


def find_wheels(folder: Optional[Path]) -> list[Path]:
    return sorted(folder.glob("*.whl")) if folder is not None and folder.is_dir() else []


def run_step(name: str, command: list[str], log_path: Path, env: dict, limit_s: float) -> dict:
    """Run one step (stdout and stderr to its log, echoed live); outcome, seconds and exit code."""
    print(f"\n##### {name}: {' '.join(command)}  (limit {limit_s:.0f} s, log {log_path.name})", flush=True)
    start = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = start + limit_s
            for text in _output_until(proc, deadline):
                log.write(text)
                log.flush()
                print(text, end="", flush=True)
            code = proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code, status = None, "timed out"
    seconds = time.perf_counter() - start
    print(f"({name}: {status}, {seconds:.0f} s)", flush=True)
    return {"status": status, "exit_code": code, "seconds": round(seconds, 1), "limit_s": limit_s, "log": log_path.name}


def _output_until(proc: subprocess.Popen, deadline: float):
    """The child's output as it comes (chunks, not lines: pytest's progress dots end no line); raises
    TimeoutExpired once `deadline` has passed, even while the child prints nothing."""
    import codecs
    import selectors

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    fd = proc.stdout.fileno()
    while True:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        if not selector.select(timeout=min(remaining, 5.0)):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        yield decoder.decode(chunk)


def read_junit(path: Path) -> dict:
    """Counts and the failed tests (with their one-line messages) of a pytest JUnit XML report."""
    if not path.is_file():
        return {"found": False}
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    outcomes = []
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                element = case.find(tag)
                if element is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    message = (element.get("message") or "").splitlines()[0][:300] if element.get("message") else ""
                    break
            outcomes.append(
                {
                    "test": f"{case.get('classname', '')}::{case.get('name', '')}",
                    "outcome": outcome,
                    "message": message,
                    "seconds": float(case.get("time", 0) or 0),
                }
            )
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"found": True, **counts, "cases": outcomes}


def read_measurements(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_kaggle(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def read_throughput(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def build_table(summary: dict) -> tuple[list[str], list[list[Any]]]:
    """The rows printed last: each step's outcome, then the headline numbers against their goals (a phase the
    throughput step did not finish is left out; its error is in the summary)."""
    try:
        return _build_table(summary)
    except (KeyError, TypeError, ValueError) as error:  # a partial throughput JSON must not lose the summary
        header, rows = _build_table({**summary, "throughput": None})
        return header, rows + [["throughput table", f"incomplete ({type(error).__name__}: {error})", "", ""]]


def _build_table(summary: dict) -> tuple[list[str], list[list[Any]]]:
    rows: list[list[Any]] = []
    for name, step in summary["steps"].items():
        rows.append([f"step: {name}", step["status"], f"{step['seconds']:.0f} s", ""])
    tests = summary.get("tests") or {}
    if tests.get("found"):
        rows.append(
            [
                "gpu tests",
                f"{tests['passed']} passed, {tests['failures'] + tests['errors']} failed, {tests['skipped']} skipped",
                f"of {tests['tests']}",
                "all pass",
            ]
        )
    for m in summary.get("measurements", []):
        rows.append([f"measured: {m['name']}", f"{m['value']:.3g}", m.get("unit", ""), m.get("tolerance", "")])
    t = summary.get("throughput")
    if t:
        res = t["details"]["results"]
        where = "GPU" if t["details"]["goals"]["measured_on_gpu"] else "CPU smoke run, not a GPU number"
        rows.append(["seed tokens/s", f"{res['seed']['tokens_per_s']:,.0f}", f"batch {res['seed']['batch']}", where])
        rows.append(["ours tokens/s", f"{res['ours']['tokens_per_s']:,.0f}", f"batch {res['ours']['batch']}", where])
        rows.append(
            ["ours / seed", f"{t['details']['ratio']:.2f}x", "", f">= {t['details']['goals']['ratio']:.0f}x on GPU"]
        )
        mfu = res["ours"]["mfu"]
        rows.append(
            [
                "ours MFU",
                "-" if mfu != mfu else f"{100 * mfu:.1f}%",
                "",
                f">= {100 * t['details']['goals']['mfu']:.0f}% on GPU",
            ]
        )
        head = t["details"].get("headroom")
        if head:
            for key in ("seed_batch", "largest_batch"):
                r = head[key]
                rows.append(
                    [
                        f"ours at {head['max_length']}, {key.replace('_', ' ')}",
                        f"{r['tokens_per_s']:,.0f}",
                        f"batch {r['batch']}, {r['peak_gib']:.1f} GiB",
                        head["search"]["limited_by"] if key == "largest_batch" else "",
                    ]
                )
        pred = t["details"].get("prediction")
        if pred:
            for key in ("no_tta", "tta"):
                rows.append(
                    [
                        f"predict rows/s ({key.replace('_', ' ')})",
                        f"{pred[key]['rows_per_s']:,.1f}",
                        f"{pred['rows']} rows",
                        where,
                    ]
                )
    kaggle = summary.get("kaggle")
    if kaggle and "tta" in kaggle:
        where = kaggle["device"] if kaggle["mode"] == "gpu" else "CPU smoke run, not a GPU number"
        for key in ("no_tta", "tta"):
            rows.append(
                [
                    f"Gemma-2-9B fp16 rows/s ({key.replace('_', ' ')})",
                    f"{kaggle[key]['rows_per_s']:,.2f}",
                    f"{kaggle['rows']} rows x {kaggle['length']} tokens, finite={kaggle[key]['finite']}",
                    where,
                ]
            )
            hours = kaggle["projected_25k"][f"{key}_all_{kaggle['length']}_h"]
            rows.append([f"25,000 rows projected ({key.replace('_', ' ')})", f"{hours:.2f} h", "one card", where])
    elif kaggle:
        rows.append(["Gemma-2-9B fp16", "failed", kaggle.get("error", "")[:80], ""])
    return ["what", "value", "detail", "goal / note"], rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder: summary.json and the logs")
    parser.add_argument("--small", action="store_true", help="CPU dry run: a 2-layer config, tiny sizes")
    parser.add_argument(
        "--wheels",
        type=Path,
        default=None,
        help="folder of wheels to install first (default .whl/, from make gpu-wheels; none with --small)",
    )
    parser.add_argument(
        "--site",
        type=Path,
        default=None,
        help="where the wheels are installed (default /tmp/arena-pref-site, or a folder under --out's "
        "parent with --small)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["install", "tests", "throughput", "kaggle"],
        help="steps to leave out (a rerun of only what failed)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock budget of the whole check (default 480 s, 1,200 s with --small)",
    )
    args = parser.parse_args(argv)
    args.budget_s = args.budget_s or (1200.0 if args.small else 480.0)

    started = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in (
        SUMMARY_FILE,
        MEASUREMENTS_FILE,
        TESTS_XML,
        THROUGHPUT_JSON,
        KAGGLE_JSON,
        "install.log",
        "tests.log",
        "throughput.log",
    ):
        (out / stale).unlink(missing_ok=True)
    limits = SMALL_STEP_LIMITS if args.small else STEP_LIMITS
    default_site = out.parent / f".{out.name}-site" if args.small else Path("/tmp/arena-pref-site")
    site = (args.site or default_site).resolve()
    # The brought wheels are Python 3.12 / x86-64 builds for the GPU machine: a CPU dry run installs only what
    # --wheels names.
    wheel_folder = args.wheels if args.wheels is not None else (None if args.small else ROOT / ".whl")

    env = {
        **child_env(*BENCH_ENVIRONMENT),
        "PYTHONUNBUFFERED": "1",
        "ARENA_PREF_GPU_MEASUREMENTS": str(out / MEASUREMENTS_FILE),
    }
    python_path = [str(ROOT)]
    steps: dict[str, dict] = {}

    def remaining(step: str) -> float:
        return max(1.0, min(limits[step], args.budget_s - (time.perf_counter() - started)))

    wheels = find_wheels(wheel_folder)
    if "install" in args.skip:
        steps["install"] = {"status": "skipped (--skip)", "seconds": 0.0}
    elif not wheels:
        steps["install"] = {"status": f"skipped: no wheels in {wheel_folder}", "seconds": 0.0}
    else:
        steps["install"] = run_step(
            "install",
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--no-cache-dir",
                "--upgrade",
                "--disable-pip-version-check",
                "--target",
                str(site),
                *map(str, wheels),
            ],
            out / "install.log",
            env,
            remaining("install"),
        )
        steps["install"]["wheels"] = [w.name for w in wheels]
    if wheels and steps["install"]["status"] == "ok":
        python_path.append(str(site))  # after the repo: the project's own code wins
    env["PYTHONPATH"] = os.pathsep.join(python_path + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))

    environment: dict[str, Any] = {}
    # Its one JSON line goes to the end of install.log: the GPU tool brings back at most 8 files.
    probe = run_step(
        "environment",
        [sys.executable, "-c", _ENVIRONMENT_PROBE, "versions" if args.small else "import", *PACKAGES],
        out / "install.log",
        env,
        remaining("environment"),
    )
    steps["environment"] = probe
    lines = (out / "install.log").read_text(encoding="utf-8").splitlines()
    if probe["status"] == "ok" and lines and lines[-1].startswith("{"):
        environment = json.loads(lines[-1])
    environment["nvidia_smi"] = _nvidia_smi()

    if "throughput" in args.skip:
        steps["throughput"] = {"status": "skipped (--skip)", "seconds": 0.0}
    else:
        extra = SMALL_THROUGHPUT_ARGS if args.small else GPU_THROUGHPUT_ARGS
        steps["throughput"] = run_step(
            "throughput",
            [sys.executable, "-m", "bench.gpu_throughput", *extra, "--out", str(out / THROUGHPUT_JSON)],
            out / "throughput.log",
            env,
            remaining("throughput"),
        )

    if "tests" in args.skip:
        steps["tests"] = {"status": "skipped (--skip)", "seconds": 0.0}
    else:
        # --noconftest: tests/conftest.py imports prefect, which the GPU image lacks; tests/gpu needs none of it.
        steps["tests"] = run_step(
            "tests",
            [
                sys.executable,
                "-m",
                "pytest",
                "-m",
                "gpu",
                "tests/gpu",
                "-q",
                "-rfEs",
                "--noconftest",
                "-p",
                "no:cacheprovider",
                "-p",
                "no:hypothesispytest",
                f"--junitxml={out / TESTS_XML}",
            ],
            out / "tests.log",
            env,
            remaining("tests"),
        )

    if "kaggle" in args.skip:
        steps["kaggle"] = {"status": "skipped (--skip)", "seconds": 0.0}
    else:
        steps["kaggle"] = run_step(
            "kaggle",
            [
                sys.executable,
                "-m",
                "bench.kaggle_throughput",
                *(["--small"] if args.small else []),
                "--out",
                str(out / KAGGLE_JSON),
            ],
            out / "throughput.log",
            env,
            remaining("kaggle"),
        )

    summary = {
        "mode": "small (2-layer config on CPU: checks the script; its numbers are not GPU numbers)"
        if args.small
        else "gpu (Meta-Llama-3-8B config, random weights)",
        "command": " ".join(
            [Path(sys.executable).name, "-m", "bench.gpu_check", *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - started, 1),
        "budget_s": args.budget_s,
        "environment": environment,
        "python_path": env["PYTHONPATH"],
        "steps": steps,
        "tests": read_junit(out / TESTS_XML),
        "measurements": read_measurements(out / MEASUREMENTS_FILE),
        "throughput": read_throughput(out / THROUGHPUT_JSON),
        "kaggle": read_kaggle(out / KAGGLE_JSON),
    }
    ok = all(step["status"] == "ok" or step["status"].startswith("skipped") for step in steps.values())
    summary["ok"] = ok
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=_json_default) + "\n", encoding="utf-8")

    header, rows = build_table(summary)
    gpu = environment.get("gpu") or "no CUDA GPU"
    print(
        f"\n===== gpu-check ({summary['mode']}; {gpu}; {summary['seconds']:.0f} s of {args.budget_s:.0f}; "
        f"{out / SUMMARY_FILE})"
    )
    print(format_table(header, rows), flush=True)
    return 0 if ok else 1


def _nvidia_smi() -> Optional[str]:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _json_default(value):
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
