"""Help: every option of every subcommand says what it does and its default; --version; train's examples."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from arena_pref import cli


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _all_subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every subcommand, nested ones under their full name ("config show")."""
    found = {}
    for name, sub in _subparsers(parser).items():
        found[prefix + name] = sub
        found.update(_all_subcommands(sub, prefix + name + " "))
    return found


def test_every_option_has_help_with_its_default():
    parser = cli.build_parser()
    subcommands = _all_subcommands(parser)
    assert {
        "demo",
        "train",
        "validate",
        "models",
        "promote",
        "predict",
        "show-prompt",
        "export",
        "stack",
        "ui",
        "config",
        "config show",
        "config fields",
    } <= set(subcommands)
    for name, sub in subcommands.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.dest}: no help"
            if action.option_strings:
                text = formatter._get_help_string(action)
                assert "default" in text or "(required)" in text, f"{name} {action.option_strings}: {text!r}"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("arena-pref ") and len(out.split()) == 2


def test_train_help_ends_with_two_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-3] == "examples:"
    assert all(line.strip().startswith("arena-pref train --config ") for line in lines[-2:])
    assert "(default: off)" in "\n".join(lines)  # --force


def test_the_cli_starts_light():
    """Importing the CLI and building its parser (every command group) imports no prefect, mlflow, torch, pandas or
    pydantic: `--help`, a typo and a user error answer at once."""
    probe = (
        "import json, sys; from arena_pref import cli; cli.build_parser(); "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    )
    assert "arena_pref" in loaded
    assert not {"prefect", "mlflow", "torch", "pandas", "pydantic", "transformers"} & set(loaded)


def test_a_command_group_is_one_line_of_the_cli():
    """Each group module registers its own subcommands; the CLI lists the groups."""
    import importlib

    registered = {}
    for group in cli.COMMAND_GROUPS:
        parser = argparse.ArgumentParser()
        importlib.import_module(f"arena_pref.commands.{group}").register(parser.add_subparsers())
        registered[group] = set(_subparsers(parser))
    assert registered == {
        "run": {"demo", "train", "validate", "show-prompt"},
        "registry": {"models", "promote", "predict", "export"},
        "blend": {"blend"},
        "services": {"stack", "ui"},
        "config": {"config"},
        "report": {"report"},
    }
