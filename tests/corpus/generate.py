"""Writes the bad-input corpus next to this file: `python tests/corpus/generate.py`.

Each file is one way a Kaggle-format CSV arrives broken (or merely unusual, like a BOM or CRLF
line ends, which must be accepted). The expectations live in tests/test_bad_inputs.py.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN = [
    "id",
    "model_a",
    "model_b",
    "prompt",
    "response_a",
    "response_b",
    "winner_model_a",
    "winner_model_b",
    "winner_tie",
]
TEST = ["id", "prompt", "response_a", "response_b"]


def _cell(*turns) -> str:
    return json.dumps(list(turns))


def _good_rows(n: int = 4) -> list[list[str]]:
    rows = []
    for i in range(n):
        label = [0, 0, 0]
        label[i % 3] = 1
        rows.append(
            [
                str(1000 + i),
                "model-x",
                "model-y",
                _cell(f"question {i}"),
                _cell(f"answer a {i}"),
                _cell(f"answer b {i}"),
                *map(str, label),
            ]
        )
    return rows


def _write(
    name: str, header: list[str], rows: list[list[str]], *, newline: str = "\n", encoding: str = "utf-8"
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    (HERE / name).write_bytes(buffer.getvalue().encode(encoding))


def main() -> None:
    good = _good_rows()
    _write("good_train.csv", TRAIN, good)
    _write("good_test.csv", TEST, [[r[0], r[3], r[4], r[5]] for r in good])

    _write("missing_column.csv", [c for c in TRAIN if c != "response_b"], [r[:5] + r[6:] for r in good])
    _write("renamed_column.csv", [("winner_a" if c == "winner_model_a" else c) for c in TRAIN], good)

    def broken(name: str, row: int, column: str, value: str) -> None:
        rows = [list(r) for r in good]
        rows[row][TRAIN.index(column)] = value
        _write(name, TRAIN, rows)

    broken("invalid_json.csv", 1, "prompt", '["an unterminated cell')
    broken("json_not_list.csv", 1, "response_a", '{"text": "a dict, not a list"}')
    broken("json_not_strings.csv", 2, "response_b", "[1, 2]")
    broken("mismatched_turns.csv", 0, "prompt", _cell("first turn", "second turn"))
    broken("labels_not_numeric.csv", 3, "winner_tie", "yes")
    rows = [list(r) for r in good]
    rows[1][6:9] = ["1", "1", "0"]
    _write("labels_not_one_hot.csv", TRAIN, rows)
    rows = [list(r) for r in good]
    rows[2][0] = rows[0][0]
    _write("duplicate_ids.csv", TRAIN, rows)
    broken("python_code_cell.csv", 0, "prompt", "__import__('os').system('touch PWNED')")
    broken("python_code_in_json.csv", 0, "prompt", _cell("__import__('os').system('touch PWNED')"))
    broken("huge_cell.csv", 0, "response_a", _cell("word " * 400_000))

    (HERE / "empty.csv").write_bytes(b"")
    _write("header_only.csv", TRAIN, [])
    # A Latin-1 export: the e-acute is one byte (0xE9), not valid UTF-8.
    latin = json.dumps(["caf\u00e9 au lait"], ensure_ascii=False)
    _write("non_utf8.csv", TRAIN, [r[:3] + [latin] + r[4:] for r in good[:1]] + good[1:], encoding="latin-1")
    (HERE / "bom.csv").write_bytes(b"\xef\xbb\xbf" + (HERE / "good_train.csv").read_bytes())
    _write("crlf.csv", TRAIN, good, newline="\r\n")
    _write(
        "test_with_labels.csv",
        TEST + ["winner_model_a", "winner_model_b", "winner_tie"],
        [[r[0], r[3], r[4], r[5], *r[6:]] for r in good],
    )


if __name__ == "__main__":
    main()
