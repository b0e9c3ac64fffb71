"""Benchmark results: the one-line verdict per benchmark, printed tables, JSON files, machine description."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Verdict:
    """One benchmark's headline number against its goal (the JSON line `make bench` ends with)."""

    name: str
    value: float
    unit: str
    goal: str
    met: bool

    def to_json_line(self) -> str:
        data = asdict(self)
        data["value"] = round(float(self.value), 4)
        data["met"] = bool(self.met)
        return json.dumps(data)


def describe_machine() -> dict[str, Any]:
    """What a number depends on: cores, CPU model, RAM, library versions, and when it was measured."""
    import torch

    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": ram_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # Other processes on a shared machine move wall times: say how busy it was.
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "command": _describe_command(),
    }
    for package in ("transformers", "peft", "datasets", "tokenizers", "prefect", "mlflow"):
        try:
            from importlib.metadata import version

            info[package] = version(package)
        except Exception:  # noqa: BLE001 (not installed, or unreadable metadata: simply not reported)
            pass
    return info


def _describe_command() -> str:
    """`python -m bench.x --args` as it was started (argv[0] of a `-m` run is the file path)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = f"python -m {spec.name}" if spec is not None else f"python {sys.argv[0]}"
    return " ".join([head, *sys.argv[1:]])


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[_format_cell(c) for c in row] for row in [list(header), *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if n and _is_number(c) else c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print(f"\n== {title}", flush=True)
    print(format_table(header, rows), flush=True)


def save_results(name: str, verdict: Verdict, details: dict[str, Any], out: Optional[Path] = None) -> Path:
    """Write bench/results/<name>.json (verdict, details with every repeat, machine) and return its path."""
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"verdict": json.loads(verdict.to_json_line()), "details": details, "machine": describe_machine()}
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def _format_cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("x%"))
        return True
    except ValueError:
        return False
