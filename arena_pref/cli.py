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


def command_name(args: argparse.Namespace) -> str:
    """The subcommand as typed (`config show`), for the log file's name."""
    return " ".join(str(part) for part in (args.command, getattr(args, "config_command", None)) if part)


def describe_error(error: BaseException) -> str:
    """The text after `error: ` for an error the user can fix: the UserError's own message (one line, or a short
    report of one line per problem); a file-system error as `PATH: reason`, never a raw `[Errno N]`."""
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror[0].lower()}{error.strerror[1:]}"
    return str(error)


def run_command(args: argparse.Namespace, frame) -> int:
    """Run the parsed command inside its frame: a user error is one line (exit 2), a bug one line naming the log
    that holds its traceback (exit 1); tracebacks never reach the console."""
    console = frame.console
    try:
        return int(args.func(args) or 0)
    except RunStopped as stopped:  # Ctrl-C during train or demo: one line, what stopped and how to resume
        frame.log_exception(stopped)
        console.err.write(f"{stopped}\n")
        console.err.flush()
        return interruption.EXIT_CODE
    except KeyboardInterrupt as interrupt:
        frame.log_exception(interrupt)
        console.error("interrupted")
        return 130
    except (UserError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as err:
        frame.log_exception(err)  # what the user can fix: one line here, the traceback in the log
        console.error(describe_error(err))
        return 2
    except Exception as bug:  # noqa: BLE001 (a bug: one line here, the traceback in the log)
        frame.log_exception(bug)
        where = f"; the traceback is in {frame.keep_path}" if frame.keep_path else ""
        console.error(f"unexpected {type(bug).__name__}: {bug} (a bug in arena-pref{where}; please report it)")
        return 1


def main(argv: Optional[Sequence[str]] = None, *, hold_until_exit: Optional[bool] = None) -> int:
    """Parse `argv` (default: the process's arguments) and run the command inside its console frame
    (arena_pref.console). The program itself (`argv` None) keeps the frame until the interpreter exits, so that
    what libraries print at exit (Prefect stopping its temporary server) goes to the log too; a caller passing
    `argv` (a test) gets its terminal back when main returns."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a stopped run prints as its resume command
    apply_environment(args)
    from arena_pref.console import CommandFrame

    frame = CommandFrame(command_name(args), verbose=bool(getattr(args, "verbose", False)))
    args.console, args.frame = frame.console, frame
    try:
        return run_command(args, frame)
    finally:
        if not (argv is None if hold_until_exit is None else hold_until_exit):
            frame.close()


if __name__ == "__main__":
    sys.exit(main())
