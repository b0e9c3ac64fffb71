"""The CLI's console and error contract, for every subcommand, run as a user runs it (a process of its own).

- Console (issue 24 item 2): only arena-pref's own lines reach the terminal. The console frame records each line it
  shows into the command's log (pref_core.terminal); the terminal's output must equal those recorded lines, so any
  line a library printed, warned or logged (now or in a later release) fails the test.
- Errors (issue 24 item 5, issue 27): each subcommand against each class of bad input answers with exit code 2, one
  line (a short report, one line per problem, where several are found: `validate`), no traceback on the console,
  within a time bound; input, path, config and registry errors import neither prefect, torch nor mlflow; nothing is
  half-written (an existing good file is never replaced, no staging file is left).

The parser tree is walked: a new subcommand fails `test_every_subcommand_has_a_success_and_an_error_case` until
CASES holds both paths for it. The success paths of the commands that need a trained model share one demo run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
import pytest

from arena_pref import cli
from pref_core.terminal import recorded_lines, visible_text

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "cli_runner.py"
CORPUS = ROOT / "tests" / "corpus"
# Wall-clock bound of an error on a loaded 2-core CI runner; bench/cli_latency.py measures the real latency (the
# issue's 2 s, on an idle machine). An unreachable server gets its bounded retries on top (the 10 s).
ERROR_BOUND_S = 20.0
UNREACHABLE_BOUND_S = 30.0
FORBIDDEN_ON_ERROR = {"prefect", "torch", "mlflow"}
DEAD_SERVER = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused
DEMO = [
    "--n-train",
    "120",
    "--n-test",
    "20",
    "--set",
    "cv.n_folds=2",
    "--set",
    "cv.execution=in_process",
    "--set",
    "train.num_epochs=1",
    "--set",
    "train.save_steps=1000",
]


@dataclass
class Case:
    """One command line. `argv` is formatted with the project's paths ({p}: the project folder, {train_id}: a row id
    of the demo's train file, {port}: a port held busy while the command runs)."""

    id: str
    argv: list[str]
    code: int = 2
    words: tuple[str, ...] = ()  # what the (first) error line must say
    needs_store: bool = False  # runs after the shared demo trained and registered a model
    light: bool = True  # an error that must be found before prefect, torch and mlflow are imported
    one_line: bool = True
    bound_s: float = ERROR_BOUND_S
    absent: tuple[str, ...] = ()  # paths that must not exist afterwards
    env: dict[str, str] = field(default_factory=dict)
    interrupt: bool = False  # a server: Ctrl-C once its first line is shown

    def formatted(self, values: dict[str, str]) -> list[str]:
        return [part.format(**values) for part in self.argv]


def _predict(*extra: str) -> list[str]:
    return ["predict", "--test-csv", "{p}/good_test.csv", "--out", "{p}/good.csv", *extra]


TINY = ["--config", "configs/tiny.yaml"]
TRAIN_DATA = ["--set", "data.train_csv={p}/demo/data/train.csv", "--set", "output_dir={p}/out"]
STORE = ["--tracking-uri", "sqlite:///{p}/mlflow/mlflow.db"]

CASES = [
    # -- success paths ---------------------------------------------------------------------------------------------
    Case("demo-ok", ["demo", "--output-dir", "{p}/demo", *DEMO], code=0, needs_store=True, bound_s=1800),
    Case(
        "train-ok",
        [
            "train",
            *TINY,
            "--set",
            "data.train_csv={p}/demo/data/train.csv",
            "--set",
            "output_dir={p}/demo",
            *DEMO[4:],
            "--set",
            "model.head=classifier",  # another recipe on the same folds: version 2, for blend and report
        ],
        code=0,
        needs_store=True,
        bound_s=1800,
    ),
    Case("validate-ok", ["validate", "{p}/demo/data/test.csv", "--kind", "test"], code=0, needs_store=True),
    Case(
        "show-prompt-ok",  # the recipe's test path is a placeholder that does not exist: never opened
        ["show-prompt", *TINY, *TRAIN_DATA, "--set", "data.test_csv={p}/no/such/test.csv", "--id", "{train_id}"],
        code=0,
        needs_store=True,
        bound_s=600,
    ),
    Case("models-ok", ["models"], code=0, needs_store=True),
    Case("promote-ok", ["promote", "1"], code=0, needs_store=True, bound_s=600),
    Case(
        "predict-ok",
        ["predict", "--test-csv", "{p}/demo/data/test.csv", "--out", "{p}/fresh/sub.csv"],
        code=0,
        needs_store=True,
        bound_s=900,
    ),
    Case("export-ok", ["export", "--out", "{p}/bundle"], code=0, needs_store=True, bound_s=900),
    Case(
        "blend-ok",
        ["blend", "models:/arena-pref/1", "models:/arena-pref/2", "--output-dir", "{p}/blend"],
        code=0,
        needs_store=True,
        bound_s=900,
    ),
    Case(
        "report-ok",
        ["report", "models:/arena-pref/1", "models:/arena-pref/2", "--out", "{p}/compare.html"],
        code=0,
        needs_store=True,
        bound_s=600,
    ),
    Case("stack-ok", ["stack", "status"], code=0),
    Case("ui-ok", ["ui", "--port", "{free_port}"], code=0, interrupt=True, bound_s=600),
    Case("config-show-ok", ["config", "show", "configs/tiny.yaml"], code=0),
    Case("config-fields-ok", ["config", "fields", "cv"], code=0),
    # -- config errors ---------------------------------------------------------------------------------------------
    Case("config-show-missing", ["config", "show", "{p}/nowhere.yaml"], words=("nowhere.yaml", "not found")),
    Case(
        "config-show-yaml-syntax",
        ["config", "show", "{p}/syntax.yaml"],
        words=("syntax.yaml, line 4, column 6", "starts at line 3, column 13"),
    ),
    Case(
        "config-show-python-tag",
        ["config", "show", "{p}/tag.yaml"],
        words=("tag.yaml, line 2, column 14", "!!python/object/apply:os.system is not allowed"),
    ),
    Case(
        "config-show-unknown-field",
        ["config", "show", "configs/tiny.yaml", "--set", "train.nope=1"],
        words=("train.nope",),
    ),
    Case("config-fields-unknown", ["config", "fields", "nope"], words=("no config field or section 'nope'",)),
    Case("train-missing-config", ["train", "--config", "{p}/nowhere.yaml"], words=("nowhere.yaml",)),
    Case("train-yaml-syntax", ["train", "--config", "{p}/syntax.yaml"], words=("line 4, column 6",)),
    Case("train-no-data", ["train", *TINY], words=("data.train_csv",)),
    Case(
        "demo-bad-set",
        ["demo", "--output-dir", "{p}/never", "--set", "cv.n_folds=abc"],
        words=("cv.n_folds",),
        absent=("{p}/never",),
    ),
    # -- input errors ----------------------------------------------------------------------------------------------
    Case("validate-missing", ["validate", "{p}/nowhere.csv"], words=("nowhere.csv", "not found")),
    Case("validate-test-as-train", ["validate", "{p}/good_test.csv"], words=("missing required column",)),
    Case("validate-empty", ["validate", "{p}/empty.csv"], words=("empty",)),
    Case("validate-not-utf8", ["validate", "{p}/non_utf8.csv"], words=("UTF-8",)),
    Case(
        "validate-bad-rows", ["validate", "{p}/invalid_json.csv"], words=("1 of 4 rows cannot be used",), one_line=False
    ),
    Case("train-missing-csv", ["train", *TINY, "--set", "data.train_csv={p}/nowhere.csv"], words=("nowhere.csv",)),
    Case("train-bad-rows", ["train", *TINY, "--set", "data.train_csv={p}/invalid_json.csv"], words=("row id=1001",)),
    Case(
        "train-3-rows-2-folds",
        ["train", *TINY, "--set", "data.train_csv={p}/three.csv", "--set", "cv.n_folds=2"],
        words=("data.train_csv", "fold"),
    ),
    Case(
        "train-6-rows-5-folds",
        ["train", *TINY, "--set", "data.train_csv={p}/six.csv"],
        words=("data.train_csv", "cv.n_folds=5"),
    ),
    Case(
        "train-output-is-a-file",
        ["train", *TINY, "--set", "data.train_csv={p}/demo/data/train.csv", "--set", "output_dir={p}/good.csv"],
        needs_store=True,
        words=("output_dir",),
    ),
    Case(
        "show-prompt-unknown-id",
        ["show-prompt", *TINY, *TRAIN_DATA, "--id", "nope"],
        needs_store=True,
        words=("--id", "nope"),
    ),
    Case(
        "predict-missing-csv",
        ["predict", "--test-csv", "{p}/nowhere.csv", "--out", "{p}/good.csv"],
        words=("nowhere.csv",),
    ),
    Case(
        "predict-train-file",
        ["predict", "--test-csv", "{p}/demo/data/train.csv", "--out", "{p}/good.csv"],
        needs_store=True,
        words=("label columns",),
    ),
    Case(
        "predict-out-is-a-folder",
        ["predict", "--test-csv", "{p}/good_test.csv", "--out", "{p}/folder"],
        words=("--out", "is a folder"),
    ),
    Case("export-out-not-empty", ["export", "--out", "{p}/folder_full"], words=("--out", "not empty")),
    Case("export-out-under-a-file", ["export", "--out", "{p}/good.csv/bundle"], words=("--out", "not a folder")),
    Case(
        "stack-root-missing",
        ["stack", "status"],
        env={"ARENA_PREF_ROOT": "/no/such/arena/root"},
        words=("ARENA_PREF_ROOT",),
    ),
    Case("ui-busy-port", ["ui", "--port", "{busy_port}"], words=("--port", "cannot listen")),
    # -- registry errors -------------------------------------------------------------------------------------------
    Case("models-unknown-name", ["models", "--name", "nope"], needs_store=True, words=("no registered model 'nope'",)),
    Case(
        "models-empty-store",
        ["models", "--tracking-uri", "sqlite:///{p}/empty/mlflow.db"],
        words=("no registered model",),
        absent=("{p}/empty/mlflow.db",),
    ),
    Case("promote-unknown-version", ["promote", "99"], needs_store=True, words=("no version 99",)),
    Case("promote-not-a-number", ["promote", "abc"], needs_store=True, words=("a number",)),
    Case(
        "predict-malformed-uri",
        _predict("--model", "arena-pref"),
        words=("not a registered model", "models:/NAME@ALIAS"),
    ),
    Case(
        "predict-unknown-alias",
        _predict("--model", "models:/arena-pref@nope"),
        needs_store=True,
        words=("no alias @nope", "@champion"),
    ),
    Case(
        "predict-unknown-version",
        _predict("--model", "models:/arena-pref/99"),
        needs_store=True,
        words=("no version 99",),
    ),
    Case(
        "predict-unknown-name",
        _predict("--model", "models:/nope@champion"),
        needs_store=True,
        words=("no registered model 'nope'",),
    ),
    Case(
        "export-unknown-alias",
        ["export", "models:/arena-pref@nope", "--out", "{p}/bundle2"],
        needs_store=True,
        words=("no alias @nope",),
        absent=("{p}/bundle2",),
    ),
    Case(
        "export-malformed-uri",
        ["export", "arena-pref", "--out", "{p}/bundle3"],
        words=("not a registered model", "models:/NAME@ALIAS"),
        absent=("{p}/bundle3",),
    ),
    Case(
        "export-malformed-models-uri",
        ["export", "models:/a/b/c", "--out", "{p}/bundle5"],
        words=("malformed",),
        absent=("{p}/bundle5",),
    ),
    # -- tracking store down or unknown ----------------------------------------------------------------------------
    Case(
        "train-server-down",  # found before the data is read
        ["train", *TINY, "--set", "data.train_csv={p}/six.csv", "--set", f"tracking.uri={DEAD_SERVER}"],
        words=(DEAD_SERVER, "not reachable", "arena-pref ui"),
        bound_s=UNREACHABLE_BOUND_S,
    ),
    Case(
        "train-unknown-scheme",
        ["train", *TINY, *TRAIN_DATA, "--set", "tracking.uri=foo://x"],
        needs_store=True,
        words=("unknown scheme", "foo://"),
    ),
    Case(
        "models-server-down",
        ["models", "--tracking-uri", DEAD_SERVER],
        words=(DEAD_SERVER, "not reachable"),
        bound_s=UNREACHABLE_BOUND_S,
    ),
    Case("models-unknown-scheme", ["models", "--tracking-uri", "foo://x"], words=("unknown scheme",)),
    Case("blend-one-member", ["blend", "models:/arena-pref/1"], words=("at least 2 members",)),
    Case(
        "blend-server-down",
        ["blend", "models:/arena-pref/1", "models:/arena-pref/2", "--tracking-uri", DEAD_SERVER],
        words=(DEAD_SERVER, "not reachable"),
        bound_s=UNREACHABLE_BOUND_S,
    ),
    Case(
        "report-server-down",
        ["report", "models:/arena-pref/1", "--tracking-uri", DEAD_SERVER],
        words=(DEAD_SERVER, "not reachable"),
        bound_s=UNREACHABLE_BOUND_S,
    ),
    Case(
        "promote-server-down",
        ["promote", "1", "--tracking-uri", DEAD_SERVER],
        words=(DEAD_SERVER,),
        bound_s=UNREACHABLE_BOUND_S,
    ),
    Case(
        "predict-server-down",
        _predict("--tracking-uri", DEAD_SERVER),
        words=(DEAD_SERVER, "not reachable"),
        bound_s=UNREACHABLE_BOUND_S,
    ),
    Case(
        "export-server-down",
        ["export", "--out", "{p}/bundle4", "--tracking-uri", DEAD_SERVER],
        words=(DEAD_SERVER,),
        absent=("{p}/bundle4",),
        bound_s=UNREACHABLE_BOUND_S,
    ),
]


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every runnable subcommand path of the parser tree (`("config", "show")`)."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        return [prefix]
    return [
        path
        for action in subparsers
        for name, sub in action.choices.items()
        for path in _commands(sub, (*prefix, name))
    ]


def _command_of(case: Case) -> tuple[str, ...]:
    return tuple(case.argv[:2]) if case.argv[0] == "config" else (case.argv[0],)


def test_every_subcommand_has_a_success_and_an_error_case():
    commands = _commands(cli.build_parser())
    assert ("config", "show") in commands and ("train",) in commands
    for command in commands:
        codes = {case.code for case in CASES if _command_of(case) == command}
        assert 0 in codes and 2 in codes, f"`arena-pref {' '.join(command)}` needs a success and an error case"


# -- the project folder and the shared trained model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder holding the bad inputs; the store and logs of every command live in it."""
    from pref_core.data.synthetic import make_synthetic_frames

    p = tmp_path_factory.mktemp("project")
    for name in ("good_test.csv", "empty.csv", "non_utf8.csv", "invalid_json.csv"):
        shutil.copy(CORPUS / name, p / name)
    train, _ = make_synthetic_frames(n_train=60, n_test=1, signal=0.9, seed=3)
    label = train[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy().argmax(axis=1)
    train.head(3).to_csv(p / "three.csv", index=False)
    pd.concat([train[label == k].head(2) for k in range(3)]).to_csv(p / "six.csv", index=False)
    (p / "syntax.yaml").write_text("data:\n  train_csv: x.csv\n  test_csv: [unclosed\nmodel: {}\n")
    (p / "tag.yaml").write_text("data:\n  train_csv: !!python/object/apply:os.system ['touch PWNED']\n")
    (p / "good.csv").write_text("a good earlier submission\n")
    (p / "folder").mkdir()
    (p / "folder_full").mkdir()
    (p / "folder_full" / "keep.txt").write_text("keep")
    return p


@pytest.fixture(scope="module")
def trained(project) -> Path:
    """The demo, run once: it trains and registers models:/arena-pref/1 in the project's store (its own case)."""
    demo = next(case for case in CASES if case.id == "demo-ok")
    outcome = run_cli(project, demo.formatted(_values(project)))
    _check(demo, outcome, project)
    return project


def _values(project: Path) -> dict[str, str]:
    values = {"p": str(project), "busy_port": "0", "free_port": "0", "train_id": ""}
    train = project / "demo" / "data" / "train.csv"
    if train.is_file():
        values["train_id"] = str(pd.read_csv(train, usecols=["id"], dtype=str)["id"].iloc[0])
    return values


# -- running a command --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float
    heavy: list[str]
    log_text: str


def _env(project: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    env.update(
        ARENA_PREF_ROOT=str(project),
        ARENA_PREF_LOG_DIR=str(project / "logs"),
        ARENA_PREF_KEEP_LOGS="1",  # keep even a log holding only our lines: the test reads what was recorded
        HF_HUB_OFFLINE="1",
        DO_NOT_TRACK="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    env.update(extra)
    return env


def _logs(project: Path) -> set[Path]:
    return {p for p in project.rglob("*.log") if p.name[:8].isdigit() and p.parent.name == "logs"}


def run_cli(project: Path, argv: list[str], env: Optional[dict] = None, interrupt: bool = False) -> Outcome:
    before = _logs(project)
    modules = project / f".modules-{time.monotonic_ns()}.json"
    command = [sys.executable, str(RUNNER), str(modules), *argv]
    start = time.perf_counter()
    if interrupt:  # a server: wait for its first line, then Ctrl-C
        process = subprocess.Popen(
            command, cwd=project, env=_env(project, env or {}), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        first = process.stdout.readline()
        process.send_signal(signal.SIGINT)
        rest, err_bytes = process.communicate(timeout=120)
        out_bytes, code = first + rest, process.returncode
    else:
        done = subprocess.run(command, cwd=project, env=_env(project, env or {}), capture_output=True, timeout=1800)
        out_bytes, err_bytes, code = done.stdout, done.stderr, done.returncode
    # Bytes, decoded here: text mode would turn a progress bar's carriage returns into line breaks.
    out, err = out_bytes.decode("utf-8", "replace"), err_bytes.decode("utf-8", "replace")
    seconds = time.perf_counter() - start
    heavy = json.loads(modules.read_text()) if modules.is_file() else ["?"]
    modules.unlink(missing_ok=True)
    new = sorted(_logs(project) - before)
    assert len(new) == 1, f"{argv}: expected one new log, found {new}\n{out}{err}"
    return Outcome(code, out, err, seconds, heavy, new[0].read_text(encoding="utf-8", errors="replace"))


def _terminal_lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [visible_text(line) for line in lines]


def _check(case: Case, outcome: Outcome, project: Path) -> None:
    shown = _terminal_lines(outcome.out) + _terminal_lines(outcome.err)
    context = f"{case.id}: exit {outcome.code} in {outcome.seconds:.1f} s\n--- console\n{outcome.out}{outcome.err}"
    assert outcome.code == case.code, context
    # Only our lines reached the terminal: exactly what the console frame recorded in the log.
    recorded = Counter(recorded_lines(outcome.log_text))
    unrecorded, unshown = Counter(shown) - recorded, recorded - Counter(shown)
    assert not unrecorded and not unshown, f"{context}\n--- not ours: {unrecorded}\n--- recorded, not shown: {unshown}"
    assert "Traceback" not in outcome.out + outcome.err, context
    assert "LOAD_GLOBAL" not in outcome.log_text, f"{context}\n(bytecode in the log)"
    assert outcome.seconds < case.bound_s, context
    if case.code == 2:
        errors = [line for line in _terminal_lines(outcome.err) if line.startswith("error: ")]
        assert errors, context
        if case.one_line:
            assert len(shown) == 1, context
        for word in case.words:
            assert word in errors[0], f"{word!r} missing\n{context}"
        if case.light:
            assert not FORBIDDEN_ON_ERROR & set(outcome.heavy), f"imported {outcome.heavy}\n{context}"
    assert (project / "good.csv").read_text() == "a good earlier submission\n", context  # never replaced
    assert [p.name for p in (project / "folder_full").iterdir()] == ["keep.txt"], context
    for path in case.absent:
        assert not Path(path.format(p=project)).exists(), f"{path} was written\n{context}"
    staging = [p.name for p in project.rglob("*") if ".partial-" in p.name or ".building-" in p.name]
    assert not [name for name in staging if name.endswith(".tmp") or "partial" in name], f"{staging}\n{context}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_cli_case(case, project, request):
    if case.id == "demo-ok":
        request.getfixturevalue("trained")  # the demo itself, checked there
        return
    if case.needs_store:
        request.getfixturevalue("trained")
    values = _values(project)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values["busy_port"] = str(busy.getsockname()[1])
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            values["free_port"] = str(probe.getsockname()[1])
        outcome = run_cli(project, case.formatted(values), case.env, case.interrupt)
    _check(case, outcome, project)
