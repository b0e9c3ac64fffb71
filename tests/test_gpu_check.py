"""`make gpu-check` cannot rot: its CPU dry run (`--small`, a 2-layer config) runs every step end to end.

The numbers it produces are CPU numbers of a tiny model: this checks the script and the summary's shape
(finite, positive measurements), not any GPU goal.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = "arena_gpu_check_probe"


def write_probe_wheel(folder: Path) -> Path:
    """A one-module pure-Python wheel, so that the install step runs as it does on the GPU machine."""
    folder.mkdir(parents=True, exist_ok=True)
    dist_info = f"{PROBE}-0.1.dist-info"
    files = {
        f"{PROBE}.py": "VALUE = 42\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: 0.1\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    path = folder / f"{PROBE}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return path


def assert_positive(value, what: str) -> None:
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{what}: {value!r}"


@pytest.mark.slow
def test_gpu_check_small_runs_every_step_and_writes_the_summary(tmp_path):
    write_probe_wheel(tmp_path / "wheels")
    out, site = tmp_path / "out", tmp_path / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu_check",
            "--small",
            "--out",
            str(out),
            "--wheels",
            str(tmp_path / "wheels"),
            "--site",
            str(site),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is True and summary["mode"].startswith("small")
    assert {"install", "environment", "tests", "throughput", "kaggle"} <= set(summary["steps"])
    assert all(step["status"] == "ok" for step in summary["steps"].values()), summary["steps"]
    # The wheels went into the site folder and that folder is on the later steps' path.
    assert (site / f"{PROBE}.py").is_file() and str(site.resolve()) in summary["python_path"]
    assert summary["environment"]["packages"]["torch"] and "torch" not in summary["environment"]["import_errors"]
    assert summary["tests"]["found"] and summary["tests"]["tests"] > 0  # collected (they skip without CUDA)
    assert summary["tests"]["failures"] == summary["tests"]["errors"] == 0

    details = summary["throughput"]["details"]
    assert details["goals"]["measured_on_gpu"] is False  # CPU numbers are never reported as GPU numbers
    for side in ("seed", "ours"):
        for key in ("tokens_per_s", "seconds", "real_tokens", "steps", "batch"):
            assert_positive(details["results"][side][key], f"{side}.{key}")
    assert_positive(details["ratio"], "ratio")
    headroom = details["headroom"]
    assert headroom["search"]["largest_batch"] >= headroom["seed_batch"]["batch"]
    for key in ("seed_batch", "largest_batch"):
        assert_positive(headroom[key]["tokens_per_s"], f"headroom.{key}")
    prediction = details["prediction"]
    for key in ("no_tta", "tta"):
        assert_positive(prediction[key]["rows_per_s"], f"prediction.{key}")
        assert_positive(prediction[key]["real_tokens_per_s"], f"prediction.{key}")

    kaggle = summary["kaggle"]  # issue 29: Gemma-2-9B-shaped fp16 rows/s (here its 2-layer CPU stand-in)
    assert kaggle["mode"].startswith("small") and kaggle["attention"] == "eager_fp32_softcap"
    for key in ("no_tta", "tta"):
        assert_positive(kaggle[key]["rows_per_s"], f"kaggle.{key}")
        assert kaggle[key]["finite"] is True
        assert_positive(kaggle["projected_25k"][f"{key}_realistic_h"], f"kaggle.projected_25k.{key}")

    # At most 8 files: what the GPU tool brings back from its output folder. The table comes last.
    assert len(list(out.iterdir())) <= 8, sorted(p.name for p in out.iterdir())
    tail = done.stdout.strip().splitlines()[-30:]
    assert any("ours / seed" in line for line in tail) and any("predict rows/s" in line for line in tail)


def test_a_step_past_its_limit_is_stopped_even_mid_line(tmp_path):
    from bench.gpu_check import run_step

    # pytest's progress dots end no line: the limit must hold while a child sits after a partial line.
    command = [sys.executable, "-c", "import sys, time; sys.stdout.write('.'); sys.stdout.flush(); time.sleep(60)"]
    step = run_step("sleeper", command, tmp_path / "sleeper.log", env=None, limit_s=2.0)
    assert step["status"] == "timed out" and step["exit_code"] is None and step["seconds"] < 30
    assert (tmp_path / "sleeper.log").read_text().endswith(".")


def test_junit_report_counts_and_failure_messages(tmp_path):
    from bench.gpu_check import read_junit

    (tmp_path / "report.xml").write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="1" skipped="1">'
        '<testcase classname="tests.gpu.test_gpu" name="test_ok" time="1.5"/>'
        '<testcase classname="tests.gpu.test_gpu" name="test_bad" time="2"><failure message="assert 1 == 2&#10;more"/>'
        '</testcase><testcase classname="tests.gpu.test_gpu" name="test_err"><error message="boom"/></testcase>'
        '<testcase classname="tests.gpu.test_gpu" name="test_skip"><skipped message="needs a CUDA GPU"/></testcase>'
        "</testsuite></testsuites>"
    )
    report = read_junit(tmp_path / "report.xml")
    assert (report["tests"], report["passed"], report["failures"], report["errors"], report["skipped"]) == (
        4,
        1,
        1,
        1,
        1,
    )
    outcomes = {case["test"].split("::")[1]: (case["outcome"], case["message"]) for case in report["cases"]}
    assert outcomes == {
        "test_ok": ("passed", ""),
        "test_bad": ("failed", "assert 1 == 2"),
        "test_err": ("error", "boom"),
        "test_skip": ("skipped", "needs a CUDA GPU"),
    }
    assert read_junit(tmp_path / "missing.xml") == {"found": False}
