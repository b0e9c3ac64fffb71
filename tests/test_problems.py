"""The one problem collector that arena ingest, chosen/rejected pairs and teacher files report to."""

from __future__ import annotations

import pytest

from pref_core.data.problems import DataValidationError, ProblemCollector


def test_problems_come_out_in_row_order_with_their_row_names():
    collector = ProblemCollector.for_ids(["a", "", "c"])
    collector.report(2, "prompt", "bad; fix: x")
    collector.report(1, "id", "empty id; fix: y")
    collector.report(2, "winner_tie", "bad; fix: z")
    assert collector.n_bad == 2 and collector.bad_rows == [1, 2]
    assert [(p.row_id, p.column) for p in collector.problems()] == [
        ("<empty, data row 2>", "id"),
        ("c", "prompt"),
        ("c", "winner_tie"),
    ]
    assert collector.keep_mask(3).tolist() == [True, False, False]
    assert collector.rejected_frame().values.tolist() == [
        ["<empty, data row 2>", "id", "empty id; fix: y"],
        ["c", "prompt", "bad; fix: x"],
        ["c", "winner_tie", "bad; fix: z"],
    ]


def test_bad_share_policy_names_the_setting_and_lists_one_problem_per_line():
    collector = ProblemCollector(lambda number: f"pairs:{number}")
    collector.report(4, "chosen/rejected", "not JSON; fix: see the format")
    collector.check_bad_share(8, 0.2, None, "pairs.jsonl", noun="pairs")  # 1 of 8 is within 0.2: no error
    with pytest.raises(DataValidationError) as info:
        collector.check_bad_share(8, 0.1, None, "pairs.jsonl", noun="pairs")
    # One problem: the whole error is one line, the headline then the problem.
    (line,) = str(info.value).splitlines()
    assert line.startswith("pairs.jsonl: 1 of 8 pairs are invalid (12.5%)")
    assert "--set data.max_bad_fraction=0.13" in line
    assert line.endswith(" row id=pairs:4 column=chosen/rejected: not JSON; fix: see the format")
    two = ProblemCollector(lambda number: f"pairs:{number}")
    two.report(4, "chosen/rejected", "not JSON; fix: see the format")
    two.report(6, "chosen", "empty; fix: give the preferred answer")
    with pytest.raises(DataValidationError) as info:
        two.check_bad_share(8, 0.1, None, "pairs.jsonl", noun="pairs")
    headline, *lines = str(info.value).splitlines()
    assert headline.startswith("pairs.jsonl: 2 of 8 pairs are invalid (25.0%)")
    assert lines == [
        "  - row id=pairs:4 column=chosen/rejected: not JSON; fix: see the format",
        "  - row id=pairs:6 column=chosen: empty; fix: give the preferred answer",
    ]
    with pytest.raises(DataValidationError, match="all 1 pairs are invalid"):
        collector.check_bad_share(1, 1.0, None, "pairs.jsonl", noun="pairs")
