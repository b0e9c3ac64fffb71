"""One error base: every error a user can cause derives from pref_core.errors.UserError, which the CLI catches alone
(one line, exit code 2, no traceback) and which costs nothing to import."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys

import pytest

import arena_pref
import arena_pref.flows
import arena_pref.tasks
import pref_core
from pref_core.errors import UserError

# Errors of the product that no user causes: CrossFieldError travels inside pydantic's validation and reaches the
# user as a ConfigError.
INTERNAL = {"CrossFieldError"}


def _product_exceptions() -> dict[str, type]:
    found = {}
    for package in (pref_core, arena_pref, arena_pref.tasks, arena_pref.flows):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith(("pyfunc_entry", "smoke_real")):  # run by MLflow / as a script, never imported
                continue
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                    found[f"{info.name}.{name}"] = value
    return found


def test_every_error_of_the_product_is_a_user_error():
    errors = _product_exceptions()
    assert {
        "pref_core.config.schema.ConfigError",
        "pref_core.data.problems.DataValidationError",
        "arena_pref.tasks.training.FoldFailedError",
        "arena_pref.stack.StackError",
    } <= set(errors)
    not_user = [
        name
        for name, cls in errors.items()
        if not issubclass(cls, UserError) and name.rsplit(".", 1)[1] not in INTERNAL
    ]
    assert not not_user, f"errors a user causes must derive from pref_core.errors.UserError: {not_user}"


@pytest.mark.parametrize(
    "error",
    [
        UserError("data.train_csv: not set; pass --set data.train_csv=PATH"),
        FileNotFoundError("no such file: train.csv"),
    ],
)
def test_the_cli_prints_a_user_error_in_one_line_with_exit_code_2(monkeypatch, capsys, error):
    from arena_pref import cli

    def fail(args):
        raise error

    monkeypatch.setattr(cli, "build_parser", _parser_running(fail))
    assert cli.main(["anything"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {error}\n"


def test_the_cli_keeps_the_traceback_of_a_bug(monkeypatch, capsys, tmp_path):
    """A bug is one line naming the log that holds its traceback (exit 1); the traceback never reaches the console."""
    from arena_pref import cli

    def fail(args):
        raise KeyError("a bug")

    monkeypatch.setenv("ARENA_PREF_LOG_DIR", str(tmp_path))
    monkeypatch.setattr(cli, "build_parser", _parser_running(fail))
    assert cli.main(["anything"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1, captured.err
    assert captured.err.startswith("error: unexpected KeyError: 'a bug' (a bug in arena-pref; the traceback is in ")
    logs = list(tmp_path.glob("*-anything.log"))
    assert len(logs) == 1 and str(logs[0]) in captured.err
    text = logs[0].read_text()
    assert "Traceback (most recent call last)" in text and "raise KeyError" in text


def _parser_running(func):
    import argparse

    def build():
        parser = argparse.ArgumentParser()
        parser.add_argument("command")
        parser.set_defaults(func=func)
        return parser

    return build


def test_the_error_base_imports_nothing_heavy():
    probe = (
        "import json, sys; import pref_core.errors; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert not {"pandas", "numpy", "torch", "pydantic", "prefect", "mlflow"} & set(json.loads(out))
