"""`arena-pref`: the command line of the pipeline (demo, train, validate, models, promote, predict, blend, stack, ui,
config).

This module assembles the parser from the command groups (arena_pref/commands/) and runs the chosen command.
User errors (bad config, bad data, unreachable tracking store, a failed fold: every pref_core.errors.UserError)
end with one line and exit code 2, never a traceback. Nothing heavy is imported here or by the groups until a
command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from arena_pref import environment, interruption
from arena_pref.commands.options import HelpFormatter
from arena_pref.interruption import RunStopped
from pref_core.errors import UserError

# The command groups in help order: arena_pref.commands.<name>, whose register(sub) adds its subcommands.
# A new group is one more line here.
COMMAND_GROUPS = (
    "run",  # demo, train, validate, show-prompt
    "registry",  # models, promote, predict, export
    "blend",  # blend
    "services",  # stack, ui
    "config",  # config show | fields
    "report",  # report RUN_OR_MODEL ...
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("arena-pref")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arena-pref", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        importlib.import_module(f"arena_pref.commands.{group}").register(sub)
    for subparser in sub.choices.values():  # every group's subcommands end their help with the defaults
        subparser.formatter_class = HelpFormatter
    return parser


def apply_environment(args: argparse.Namespace) -> dict[str, str]:
    """Every command's environment defaults (arena_pref.environment.PRODUCT; Hub access stays the user's) and
    Prefect's local history in the project folder, set before prefect, mlflow or transformers are imported:
    they read these at import time."""
    from arena_pref.tasks import resources

    return environment.apply_defaults(*environment.PRODUCT, environment.local_prefect(resources.project_root()))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a stopped run prints as its resume command
    apply_environment(args)
    try:
        return int(args.func(args) or 0)
    except RunStopped as err:  # Ctrl-C during train or demo: one line, what stopped and how to resume
        print(str(err), file=sys.stderr)
        return interruption.EXIT_CODE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError, PermissionError) as err:  # what the user can fix: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
