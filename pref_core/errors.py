"""The one base of every error a user can cause and fix.

A bad config, input file, base model, machine, bundle, tracking store or fold run raises a subclass of
`UserError` whose message says what is wrong, where and how to fix it, in one line. The command line catches
`UserError` alone and prints it with exit code 2, no traceback; anything else is a bug and keeps its traceback.
Each subclass lives beside the code that raises it (ConfigError in pref_core.config.schema, ...) and may also
derive from the built-in type it always was (ValueError, RuntimeError), so existing `except` clauses still hold.

Standard library only and imported by nothing heavy: catching it costs nothing, and the Kaggle bundle copies it.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; its message is the one line the CLI prints (exit code 2)."""
