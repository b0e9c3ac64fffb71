"""Run `arena-pref ARGS...` as the program does, then write which heavy libraries the command imported.

Usage: python tests/cli_runner.py MODULES_JSON ARGS...  (tests/test_cli_contract.py). The frame is held until the
interpreter exits, exactly as the installed `arena-pref` script holds it; the exit code is the command's.
"""

from __future__ import annotations

import json
import sys

HEAVY = ("prefect", "mlflow", "torch", "transformers", "sklearn")

if __name__ == "__main__":
    from arena_pref import cli

    modules_json, argv = sys.argv[1], sys.argv[2:]
    try:
        code = cli.main(argv, hold_until_exit=True)
    finally:
        with open(modules_json, "w", encoding="utf-8") as handle:
            json.dump(sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY)), handle)
    sys.exit(code)
