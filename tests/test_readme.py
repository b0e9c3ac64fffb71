"""The README is executed: every command it shows runs as written, in a fresh project folder, or is excused here
with the reason (it needs a GPU, the Hub, a cluster or a Kaggle notebook).

Read: the lines of its fenced shell blocks (continuations joined, comments dropped) and the Commands table's
first cells (alternatives split at " / ", optional "[...]" parts dropped), in document order. Run: each through
bash in the project folder, as a new user would after `. .venv/bin/activate`, with `train.csv` / `test.csv`
standing for the demo's files (as the README says) and, to keep the suite short, every `demo` / `train` of the
tiny recipe on 2 folds of a few steps, in one process unless the command asks for parallel fold processes.
A README command that is neither run nor excused fails the test, as does an excuse that matches no command.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
README = PROJECT_ROOT / "README.md"
BIN = Path(sys.executable).parent

# What a line of a shell block starts with; a block whose lines start with none of these is not shell (a diagram).
PROGRAMS = (
    "arena-pref",
    "make",
    "pip",
    "python",
    "!python",
    "mkdir",
    "git",
    "export",
    "eval",
    "prefect",
    "kubectl",
    "hf",
    "mlflow",
    "ARENA_PREF_",
    "MLFLOW_TRACKING_URI=",
)

# Commands not run here, each with why and where it is covered instead.
EXCUSED = {
    r"make (demo|test)\b": (
        "the suite itself: .ci/run runs `make test` on a fresh clone; `make demo` runs `arena-pref demo`"
    ),
    r"(pip |python -m venv|git clone)": "installs: .ci/run installs the lock into a fresh venv",
    r"export HF_TOKEN": "a Hub credential",
    r"arena-pref train --config configs/seed-llama3-8b\.yaml": "needs a GPU and the gated Llama-3 weights",
    r"(arena-pref stack |eval \"\$\(arena-pref stack status|prefect deployment run 'cv-training/gpu')": (
        "Prefect + MLflow servers and workers: tests/test_stack_e2e.py (-m slow)"
    ),
    r"(prefect work-pool create|prefect worker start|kubectl |ARENA_PREF_IMAGE=|ARENA_PREF_ROOT=\$PWD "
    r"ARENA_PREF_IMAGE=|prefect deployment run 'cv-training/k8s'|python -c \"from prefect\.blocks)": (
        "a Kubernetes cluster or Docker daemon: tests/test_kubernetes_manifest.py and tests/test_docker_container.py "
        "render their requests with the real workers"
    ),
    r"!python /kaggle/": "a Kaggle notebook's paths: tests/test_export.py runs the bundle's predict.py",
}

# The demo's files, which the README's `train.csv` / `test.csv` stand for.
DATA = {"train.csv": "outputs/demo/data/train.csv", "test.csv": "outputs/demo/data/test.csv"}
FAST = " --set cv.n_folds=2 --set train.max_steps=4 --set train.save_steps=1000"
PROJECT_PREFIX = re.compile(r"^mkdir (\S+) && cd \1 && (.*)$")


def _shell_lines(block: list[str]) -> list[str]:
    commands, current = [], ""
    for line in block:
        line = line.strip()
        if current:
            line = current + " " + line
            current = ""
        if line.endswith("\\"):
            current = line[:-1].strip()
            continue
        line = re.sub(r"\s+#\s.*$", "", line) if not line.startswith("#") else ""
        if line:
            commands.append(line)
    return commands


def readme_commands(text: str) -> list[str]:
    """The README's commands in document order (see the module docstring for what counts)."""
    commands: list[str] = []
    lines = text.splitlines()
    i = 0
    in_commands_table = False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].lstrip().startswith("```"))
            block = _shell_lines(lines[i + 1 : end])
            if any(command.startswith(PROGRAMS) for command in block):
                commands.extend(block)
            i = end + 1
            continue
        if line.startswith("## "):
            in_commands_table = line.strip() == "## Commands"
        elif in_commands_table and line.startswith("| `"):
            cell = line.split(" | ")[0].lstrip("| ").replace("\\|", "|")
            for span in re.findall(r"`([^`]+)`", cell):
                span = re.sub(r"\s*\[[^\]]*\]", "", span).strip()
                if not span.startswith(PROGRAMS):  # `stack up --gpus 2` / `status`: the same command group
                    span = " ".join(commands[-1].split()[:2] + [span])
                commands.append(span)
        i += 1
    return list(dict.fromkeys(commands))


def _excuse(command: str) -> str | None:
    return next((why for pattern, why in EXCUSED.items() if re.match(pattern, command)), None)


def _as_run_here(command: str) -> str:
    for short, path in DATA.items():
        command = re.sub(rf"(?<![\w/.-]){re.escape(short)}", path, command)
    if re.match(r"arena-pref (demo|train --config configs/tiny\.yaml)\b", command):
        command += FAST
        if "cv.max_parallel" not in command:  # fold processes where the README asks for them, else in this process
            command += " --set cv.execution=in_process"
    return command


def _env(project: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "MLFLOW_", "ARENA_PREF_")) and key != "VIRTUAL_ENV"
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # what `. .venv/bin/activate` does
        VIRTUAL_ENV=str(BIN.parent),
        ARENA_PREF_ROOT=str(project),  # the code runs from the checkout; the project folder is the new one
        HF_HUB_OFFLINE="1",
        DO_NOT_TRACK="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    return env


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _run_ui(command: str, project: Path, env: dict[str, str]) -> str:
    port = 5000
    if not _free(port):  # another program holds the README's port on this machine: the same command elsewhere
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command += f" --port {port}"
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"{command!r} ended early: {process.communicate()[0]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:  # noqa: S310
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, f"{command!r}: nothing answered on port {port} in 120 s"
                time.sleep(1)
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole group
        try:
            output = process.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output = process.communicate()[0]
            pytest.fail(f"{command!r} did not stop within 30 s of Ctrl-C: {output}")
    return output


def test_readme_commands_are_read_from_blocks_and_the_table():
    text = """
## Commands

| command | what it does |
| --- | --- |
| `arena-pref validate train.csv` / `arena-pref validate test.csv --kind test` | checks |
| `arena-pref export X --out b/ [--folds ensemble\\|average]` | export |
| `arena-pref stack up --gpus 2` / `status` | servers |

## Pipeline

```
 train.csv ─► ingest
```

```bash
make demo    # the demo
arena-pref show-prompt --config c.yaml \\
    --id 7
# a comment line
```
"""
    assert readme_commands(text) == [
        "arena-pref validate train.csv",
        "arena-pref validate test.csv --kind test",
        "arena-pref export X --out b/",
        "arena-pref stack up --gpus 2",
        "arena-pref stack status",
        "make demo",
        "arena-pref show-prompt --config c.yaml --id 7",
    ]
    assert _as_run_here("arena-pref validate test.csv --kind test") == (
        "arena-pref validate outputs/demo/data/test.csv --kind test"
    )
    assert _as_run_here("arena-pref train --config configs/tiny.yaml --set data.train_csv=train.csv").endswith(
        "data.train_csv=outputs/demo/data/train.csv" + FAST + " --set cv.execution=in_process"
    )


def test_every_readme_command_works_as_written(tmp_path):
    commands = readme_commands(README.read_text(encoding="utf-8"))
    excuses = {command: _excuse(command) for command in commands}
    used = {pattern for pattern in EXCUSED if any(re.match(pattern, command) for command in commands)}
    assert used == set(EXCUSED), f"excuses matching no README command (remove them): {set(EXCUSED) - used}"

    project = None
    env = None
    ran = []
    for command in commands:
        if excuses[command]:
            continue
        match = PROJECT_PREFIX.match(command)
        if match:
            project = tmp_path / match.group(1)
            project.mkdir()
            env = _env(project)
            to_run = _as_run_here(match.group(2))
        else:
            assert project is not None, f"{command!r} comes before the README makes a project folder"
            to_run = _as_run_here(command)
        if to_run.startswith("arena-pref ui"):
            output = _run_ui(to_run, project, env)
        else:
            done = subprocess.run(
                ["bash", "-c", to_run], cwd=project, env=env, capture_output=True, text=True, timeout=900
            )
            output = done.stdout + done.stderr
            assert done.returncode == 0, f"README command failed: {command!r}\nran: {to_run!r}\n{output}"
        assert "Traceback" not in output, f"{command!r} printed a traceback:\n{output}"
        for written in re.findall(r"--out (\S+)", to_run):
            assert (project / written).exists(), f"{command!r} did not write {written}"
        ran.append(command)

    # What the commands left behind is what the README says they do.
    assert (project / "mlflow" / "mlflow.db").is_file()
    assert not (project / "mlruns").exists() and not (project.parent / "mlflow.db").exists()
    submission = (project / "submission.csv").read_text().splitlines()
    assert submission[0].split(",")[1:] == ["winner_model_a", "winner_model_b", "winner_tie"]
    assert len(submission) == 1 + 200  # the demo's 200 test rows
    assert (project / "bundle" / "predict.py").is_file() and (project / "bundle-avg" / "manifest.json").is_file()
    for must in ("arena-pref demo", "arena-pref ui", "arena-pref predict", "arena-pref export", "mlflow models"):
        assert any(command.startswith(must) or must in command for command in ran), f"no {must!r} was run"
