"""The `arena-pref` command groups: one module each, whose `register(sub)` adds its subcommands to the parser.

`arena_pref.cli` lists the groups. Like the CLI itself, a group imports prefect, mlflow, torch or pandas only inside
the functions that run a command, so `arena-pref --help` and a config error stay instant.
"""
