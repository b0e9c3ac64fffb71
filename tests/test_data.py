"""Ingest: every kind of bad input gives a specific Problem (row id, column); nothing is dropped silently."""

from __future__ import annotations

import csv
import hashlib
import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pref_core.data.arena import (
    DataValidationError,
    Problem,
    parse_turns,
    read_arena_csv,
    validate_arena_frame,
    write_rejected,
)
from pref_core.data.labels import LABEL_COLUMNS
from pref_core.hashing import hash_file

TRAIN_HEADER = ["id", "model_a", "model_b", "prompt", "response_a", "response_b", *LABEL_COLUMNS]


def good_row(row_id: str, label: int = 0, turns: int = 1) -> dict[str, str]:
    row = {
        "id": row_id,
        "model_a": "m1",
        "model_b": "m2",
        "prompt": json.dumps([f"question {i}" for i in range(turns)]),
        "response_a": json.dumps([f"answer a {i}" for i in range(turns)]),
        "response_b": json.dumps([f"answer b {i}" for i in range(turns)]),
    }
    row.update({c: str(int(k == label)) for k, c in enumerate(LABEL_COLUMNS)})
    return row


def write_csv(path, rows, header=TRAIN_HEADER, **kwargs):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore", **kwargs)
        writer.writeheader()
        writer.writerows(rows)
    return path


def only_problem(err: DataValidationError) -> Problem:
    assert len(err.problems) == 1, [str(p) for p in err.problems]
    return err.problems[0]


# -- parse_turns ---------------------------------------------------------------------------------


def test_parse_turns_valid_cells():
    assert parse_turns('["hi", null, "bye"]') == ["hi", None, "bye"]
    assert parse_turns(' ["x"] ') == ["x"]
    assert parse_turns('["caf\\u00e9 \\ud83d\\ude00"]') == ["café \U0001f600"]  # escaped surrogate pair


def test_parse_turns_replaces_lone_surrogates():
    # An emoji cut in half by the arena: a lone surrogate would crash UTF-8 encoding in the tokenizer.
    assert parse_turns('["ok \\ud83d"]') == ["ok \ufffd"]


@pytest.mark.parametrize(
    ("cell", "fragment"),
    [
        ('["a", "b"', "invalid JSON (Expecting ',' delimiter at char 9)"),
        ('["cut off', "invalid JSON (Unterminated string starting at char 1)"),
        ("", "empty cell"),
        ("   ", "empty cell"),
        ("[]", "empty list"),
        ('{"a": 1}', "JSON dict instead of a list"),
        ('"text"', "JSON str instead of a list"),
        ('["a", 3]', "turn 1 is a JSON int"),
        ('[["nested"]]', "turn 0 is a JSON list"),
        ("NaN", "JSON float instead of a list"),
        ("[" * 100_000, "invalid JSON"),
        ("['single quotes']", "invalid JSON"),
    ],
)
def test_parse_turns_rejects_with_reason(cell, fragment):
    with pytest.raises(ValueError) as info:
        parse_turns(cell)
    assert fragment in str(info.value)
    assert 'fix: the cell must be a JSON list of strings such as ["hi"]' in str(info.value)


def test_parse_turns_rejects_non_text():
    with pytest.raises(ValueError, match="expected text, got float"):
        parse_turns(float("nan"))


def test_parse_turns_never_executes_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cell = "[\"__import__('os').system('touch PWNED')\"]"
    assert parse_turns(cell) == ["__import__('os').system('touch PWNED')"]
    with pytest.raises(ValueError):
        parse_turns("__import__('os').system('touch PWNED')")  # what eval() would have run
    assert not (tmp_path / "PWNED").exists()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)
cells = st.one_of(
    st.text(max_size=200),  # mostly not JSON at all
    json_values.map(json.dumps),  # valid JSON of every shape
    st.tuples(json_values.map(json.dumps), st.integers(0, 50)).map(lambda t: t[0][: t[1]]),  # JSON cut short
)


@settings(max_examples=400, deadline=None)
@given(cells)
def test_parse_turns_fuzz_only_value_error(text):
    try:
        turns = parse_turns(text)
    except ValueError:
        return
    assert isinstance(turns, list) and turns
    assert all(t is None or isinstance(t, str) for t in turns)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text()), min_size=1, max_size=5))
def test_parse_turns_roundtrip(turns):
    # Any JSON list of strings/nulls parses back to itself (lone surrogates aside, which become U+FFFD).
    expected = [t if t is None else t.encode("utf-16", "surrogatepass").decode("utf-16", "replace") for t in turns]
    assert parse_turns(json.dumps(turns)) == expected


# -- file-level problems -------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataValidationError) as info:
        read_arena_csv(tmp_path / "nope.csv", "train")
    problem = only_problem(info.value)
    assert (problem.row_id, problem.column) == (None, None)
    assert "file not found" in problem.reason
    assert info.value.path == tmp_path / "nope.csv"


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(DataValidationError, match="not a regular file"):
        read_arena_csv(tmp_path, "train")


@pytest.mark.parametrize("content", [b"", b" \n\r\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(DataValidationError, match="file is empty"):
        read_arena_csv(path, "train")


def test_header_only(tmp_path):
    path = write_csv(tmp_path / "h.csv", [])
    with pytest.raises(DataValidationError, match="header but no data rows"):
        read_arena_csv(path, "train")


def test_not_utf8_reports_byte_offset(tmp_path):
    path = write_csv(tmp_path / "latin.csv", [good_row("1")])
    data = path.read_bytes()
    offset = len(data)
    path.write_bytes(data + '2,m1,m2,"[""caf\xe9""]","[""x""]","[""y""]",1,0,0\n'.encode("latin-1"))
    with pytest.raises(DataValidationError) as info:
        read_arena_csv(path, "train")
    reason = only_problem(info.value).reason
    expected_offset = offset + len('2,m1,m2,"[""caf')
    assert f"byte 0xe9 at byte offset {expected_offset} (line 3)" in reason
    assert "re-save the file as UTF-8" in reason


def test_bom_and_crlf_are_accepted(tmp_path):
    path = write_csv(tmp_path / "excel.csv", [good_row("1"), good_row("2", label=2)], lineterminator="\r\n")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    frame = read_arena_csv(path, "train").frame
    assert frame["id"].tolist() == ["1", "2"]
    assert frame["label"].tolist() == [0, 2]
    assert frame["prompt"][0] == ["question 0"]


def test_multiline_cells_with_crlf(tmp_path):
    row = good_row("1")
    row["prompt"] = json.dumps(["line one\r\nline two"])  # escaped in JSON
    row["response_a"] = '["raw\r\nnewline"]'  # a real CRLF inside a quoted CSV cell
    path = write_csv(tmp_path / "ml.csv", [row], lineterminator="\r\n")
    frame = read_arena_csv(path, "train").frame
    assert frame["prompt"][0] == ["line one\r\nline two"]
    assert frame["response_a"][0] == ["raw\r\nnewline"]


def test_missing_columns_are_all_named(tmp_path):
    header = ["id", "prompt", "response_a", "winner_model_a"]
    path = write_csv(tmp_path / "cols.csv", [good_row("1")], header=header)
    with pytest.raises(DataValidationError) as info:
        read_arena_csv(path, "train")
    reason = only_problem(info.value).reason
    assert "missing required column(s) ['response_b', 'winner_model_b', 'winner_tie'] for a train file" in reason


def test_test_file_read_as_train_gets_a_hint(tmp_path):
    header = ["id", "prompt", "response_a", "response_b"]
    path = write_csv(tmp_path / "test.csv", [good_row("1")], header=header)
    with pytest.raises(DataValidationError, match="is it a test file"):
        read_arena_csv(path, "train")
    assert read_arena_csv(path, "test").n_kept == 1


def test_test_file_with_label_columns_is_an_error(tmp_path):
    path = write_csv(tmp_path / "t.csv", [good_row("1")])
    with pytest.raises(DataValidationError, match=r"must not carry label columns, found \['winner_model_a'"):
        read_arena_csv(path, "test")


def test_repeated_header_column(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text('id,prompt,prompt,response_a,response_b\n1,"[""a""]","[""a""]","[""b""]","[""c""]"\n')
    with pytest.raises(DataValidationError, match=r"repeats column\(s\) \['prompt'\]"):
        read_arena_csv(path, "test")


def test_malformed_csv_line(tmp_path):
    path = write_csv(tmp_path / "bad.csv", [good_row("1")])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('2,m1,m2,"[""a""]","[""b""]","[""c""]",1,0,0,extra,fields\n')
    with pytest.raises(DataValidationError, match="not a well-formed CSV.*line 3"):
        read_arena_csv(path, "train")


# -- row-level problems --------------------------------------------------------------------------


def bad_rows_case(tmp_path, mutate, n_good: int = 3):
    """Write n_good good rows plus one row changed by `mutate`; return the single Problem of the bad row."""
    rows = [good_row(str(i)) for i in range(n_good)]
    bad = good_row("bad-1")
    mutate(bad)
    path = write_csv(tmp_path / "rows.csv", rows + [bad])
    with pytest.raises(DataValidationError) as info:
        read_arena_csv(path, "train")
    return only_problem(info.value)


@pytest.mark.parametrize(
    ("column", "value", "fragment"),
    [
        ("prompt", '["cut', "invalid JSON (Unterminated string"),
        ("response_a", '{"a": 1}', "JSON dict instead of a list"),
        ("response_b", "[]", "empty list"),
        ("prompt", "", "empty cell"),
        ("response_a", '["x", 1]', "turn 1 is a JSON int"),
        ("winner_model_a", "yes", "label 'yes' is not 0 or 1"),
        ("winner_tie", "2", "label '2' is not 0 or 1"),
        ("winner_model_b", "", "label '' is not 0 or 1"),
    ],
)
def test_bad_cell_names_row_and_column(tmp_path, column, value, fragment):
    problem = bad_rows_case(tmp_path, lambda row: row.update({column: value}))
    assert problem.row_id == "bad-1"
    assert problem.column == column
    assert fragment in problem.reason


def test_unequal_turn_counts(tmp_path):
    problem = bad_rows_case(tmp_path, lambda row: row.update(response_b=json.dumps(["one", "two"])))
    assert (problem.row_id, problem.column) == ("bad-1", "response_b")
    assert "2 turn(s) but prompt has 1" in problem.reason


@pytest.mark.parametrize("labels", [("1", "1", "0"), ("0", "0", "0"), ("1.0", "1", "1")])
def test_labels_not_one_hot(tmp_path, labels):
    problem = bad_rows_case(tmp_path, lambda row: row.update(dict(zip(LABEL_COLUMNS, labels))))
    assert (problem.row_id, problem.column) == ("bad-1", "winner_model_a+winner_model_b+winner_tie")
    assert "not one-hot" in problem.reason


def test_float_labels_are_accepted(tmp_path):
    row = good_row("1")
    row.update(dict(zip(LABEL_COLUMNS, ("0.0", "1.0", "0.0"))))
    frame = read_arena_csv(write_csv(tmp_path / "f.csv", [row]), "train").frame
    assert frame["label"].tolist() == [1]
    assert frame["winner_model_b"].tolist() == [1]


def test_duplicated_ids_report_every_copy(tmp_path):
    rows = [good_row("7"), good_row("8"), good_row("7"), good_row("9")]
    with pytest.raises(DataValidationError) as info:
        read_arena_csv(write_csv(tmp_path / "d.csv", rows), "train")
    problems = info.value.problems
    assert [(p.row_id, p.column) for p in problems] == [("7", "id"), ("7", "id")]
    assert "id appears on 2 rows (data rows 1, 3)" in problems[0].reason


def test_empty_id_names_the_data_row(tmp_path):
    rows = [good_row("1"), good_row("")]
    with pytest.raises(DataValidationError) as info:
        read_arena_csv(write_csv(tmp_path / "e.csv", rows), "train")
    problem = only_problem(info.value)
    assert (problem.row_id, problem.column) == ("<empty, data row 2>", "id")


def test_all_problems_are_reported_with_policy_in_headline(tmp_path):
    rows = [good_row(str(i)) for i in range(6)]
    rows[1]["prompt"] = "not json"
    rows[1]["winner_tie"] = "x"
    rows[4]["response_a"] = '["a", "b"]'
    with pytest.raises(DataValidationError) as info:
        read_arena_csv(write_csv(tmp_path / "m.csv", rows), "train")
    err = info.value
    assert [(p.row_id, p.column) for p in err.problems] == [("1", "prompt"), ("1", "winner_tie"), ("4", "response_a")]
    message = str(err)
    assert message.splitlines()[0].startswith(f"{tmp_path / 'm.csv'}: 2 of 6 rows are invalid (33.3%)")
    assert "data.max_bad_fraction=0.0" in message
    assert "--set data.max_bad_fraction=0.34" in message
    assert "row id=1 column=prompt: invalid JSON (Expecting value at char 0)" in message
    assert len(message.splitlines()) == 1 + 3


def test_bad_rows_below_the_policy_are_dropped_and_returned(tmp_path):
    rows = [good_row(str(i), label=i % 3) for i in range(10)]
    rows[3]["prompt"] = '["cut'
    rows[3]["response_b"] = '["cut'
    rows[7]["winner_model_a"] = "1"  # now two ones
    result = read_arena_csv(write_csv(tmp_path / "p.csv", rows), "train", max_bad_fraction=0.2)
    assert (result.n_read, result.n_kept, result.n_rejected) == (10, 8, 2)
    assert "3" not in result.frame["id"].tolist() and "7" not in result.frame["id"].tolist()
    assert list(result.rejected.columns) == ["id", "column", "reason"]
    assert result.rejected[["id", "column"]].values.tolist() == [
        ["3", "prompt"],
        ["3", "response_b"],
        ["7", "winner_model_a+winner_model_b+winner_tie"],
    ]
    with pytest.raises(DataValidationError, match="2 of 10 rows"):
        read_arena_csv(write_csv(tmp_path / "p.csv", rows), "train", max_bad_fraction=0.19)


def test_all_rows_bad_fails_even_when_tolerated(tmp_path):
    row = good_row("1")
    row["prompt"] = "oops"
    with pytest.raises(DataValidationError, match="all 1 rows are invalid"):
        read_arena_csv(write_csv(tmp_path / "a.csv", [row]), "train", max_bad_fraction=1.0)


def test_bad_policy_and_kind(tmp_path, synthetic_csvs):
    with pytest.raises(ValueError, match="max_bad_fraction must lie in"):
        read_arena_csv(synthetic_csvs[0], "train", max_bad_fraction=1.5)
    with pytest.raises(ValueError, match="kind must be"):
        read_arena_csv(synthetic_csvs[0], "valid")


# -- output --------------------------------------------------------------------------------------


def test_output_columns_and_types(tmp_path):
    rows = [good_row("007", label=1, turns=2), good_row("NA", label=2)]
    rows[0]["response_a"] = json.dumps(["first", None])
    rows[0]["winner_model_a"] = " 0"  # stray spaces are fine
    header = TRAIN_HEADER + ["label", "fold", "notes"]  # extra columns (the real sample has these) are ignored
    rows[0].update(label="zzz", fold="3", notes="x")
    rows[1].update(label="", fold="", notes="")
    result = read_arena_csv(write_csv(tmp_path / "o.csv", rows, header=header), "train")
    frame = result.frame
    assert list(frame.columns) == [
        "id",
        "model_a",
        "model_b",
        "prompt",
        "response_a",
        "response_b",
        *LABEL_COLUMNS,
        "label",
    ]
    assert frame["id"].tolist() == ["007", "NA"]  # not 7 and not NaN
    assert frame["response_a"][0] == ["first", None]
    assert frame["label"].tolist() == [1, 2]
    assert all(frame[c].dtype == "int64" for c in (*LABEL_COLUMNS, "label"))
    assert result.rejected.empty and result.n_rejected == 0


def test_model_columns_are_optional(tmp_path):
    header = ["id", "prompt", "response_a", "response_b"]
    frame = read_arena_csv(write_csv(tmp_path / "t.csv", [good_row("1")], header=header), "test").frame
    assert list(frame.columns) == ["id", "prompt", "response_a", "response_b"]


def test_problem_str():
    problem = Problem("123", "prompt", "invalid JSON (Expecting ',' delimiter at char 511); fix: x")
    assert str(problem) == "row id=123 column=prompt: invalid JSON (Expecting ',' delimiter at char 511); fix: x"
    assert str(Problem(None, None, "file is empty")) == "file: file is empty"


def test_write_rejected_roundtrip(tmp_path):
    rejected = pd.DataFrame({"id": ["007"], "column": ["prompt"], "reason": ["invalid JSON, with a comma"]})
    path = write_rejected(rejected, tmp_path / "sub" / "rejected.csv")
    back = pd.read_csv(path, dtype=str)
    assert back.values.tolist() == [["007", "prompt", "invalid JSON, with a comma"]]


def test_hash_file(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc" * 1000)
    assert hash_file(path, chunk_size=7) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_synthetic_csvs_ingest_cleanly(synthetic_csvs):
    train = read_arena_csv(synthetic_csvs[0], "train")
    test = read_arena_csv(synthetic_csvs[1], "test")
    assert (train.n_read, train.n_kept, test.n_kept) == (300, 300, 60)
    assert "label" not in test.frame.columns


# -- the real sample (skipped when absent) -------------------------------------------------------


def test_real_sample_default_policy_reports_every_bad_row(real_train_csv):
    with pytest.raises(DataValidationError) as info:
        read_arena_csv(real_train_csv, "train")
    err = info.value
    bad_ids = {p.row_id for p in err.problems}
    assert len(bad_ids) == 172
    assert all(p.column in ("prompt", "response_a", "response_b") for p in err.problems)
    assert all(p.reason.startswith("invalid JSON (") for p in err.problems)
    assert "172 of 210 rows are invalid" in str(err)
    assert all(f"row id={row_id} " in str(err) for row_id in bad_ids)


def test_real_sample_tolerant_policy_keeps_38_rows(real_train_csv):
    result = read_arena_csv(real_train_csv, "train", max_bad_fraction=0.9)
    assert (result.n_read, result.n_kept, result.n_rejected) == (210, 38, 172)
    assert result.rejected["id"].nunique() == 172
    assert not set(result.rejected["id"]) & set(result.frame["id"])
    raw = pd.read_csv(real_train_csv, dtype=str, keep_default_na=False).set_index("id")
    # Our label agrees with the file's own `label` column (which ingest ignores).
    assert result.frame["label"].tolist() == raw.loc[result.frame["id"], "label"].astype(int).tolist()


# -- in-memory frames (model serving) ------------------------------------------------------------


def test_validate_arena_frame_accepts_numbers_and_lists():
    raw = pd.DataFrame(
        {
            "id": [7, 8],
            "prompt": ['["q"]', ["q2", "q3"]],
            "response_a": ['["a"]', ["a2", None]],
            "response_b": ['["b"]', ["b2", "b3"]],
            "winner_model_a": [1, 0],
            "winner_model_b": [0.0, 0.0],
            "winner_tie": ["0", "1"],
        }
    )
    frame = validate_arena_frame(raw, "train").frame
    assert frame["id"].tolist() == ["7", "8"]
    assert frame["prompt"].tolist() == [["q"], ["q2", "q3"]]
    assert frame["label"].tolist() == [0, 2]


def test_validate_arena_frame_reports_like_a_file():
    raw = pd.DataFrame(
        {"id": ["1", "2"], "prompt": ['["q"]', "bad"], "response_a": ['["a"]'] * 2, "response_b": ['["b"]'] * 2}
    )
    with pytest.raises(DataValidationError) as info:
        validate_arena_frame(raw, "test", source="model input")
    assert info.value.path is None
    assert str(info.value).startswith("model input: 1 of 2 rows are invalid")
    assert [(p.row_id, p.column) for p in info.value.problems] == [("2", "prompt")]
    with pytest.raises(DataValidationError, match=r"missing required column\(s\) \['response_b'\]"):
        validate_arena_frame(raw.drop(columns=["response_b"]), "test")
    with pytest.raises(DataValidationError, match="must not carry label columns"):
        validate_arena_frame(raw.assign(winner_tie=0), "test")
    with pytest.raises(DataValidationError, match="label 'True' is not 0 or 1"):
        validate_arena_frame(raw.iloc[:1].assign(winner_model_a=True, winner_model_b=0, winner_tie=0), "train")
