"""Champion/challenger decisions (pref_core.evaluate.promotion) from tags alone."""

from __future__ import annotations

from pref_core.evaluate.calibration import TEMPERATURE_BOUNDS
from pref_core.evaluate.promotion import decide_promotion, decide_registration, registration_warnings

CHAMPION = {"oof_log_loss": "0.950000", "data_hash": "abc123abc123ff", "n_oof": "1000"}


def test_the_first_version_becomes_champion():
    assert decide_promotion("1", CHAMPION, None, {}) == (True, "no champion yet")


def test_a_lower_log_loss_on_the_same_rows_wins():
    promoted, reason = decide_promotion("2", {**CHAMPION, "oof_log_loss": "0.940000"}, "1", CHAMPION)
    assert promoted and reason == "oof_log_loss 0.94000 beats champion v1 (0.95000)"


def test_an_equal_log_loss_does_not_win():
    promoted, reason = decide_promotion("2", CHAMPION, "1", CHAMPION)
    assert not promoted and "does not beat champion v1" in reason


def test_other_data_or_other_rows_are_not_compared():
    promoted, reason = decide_promotion("2", {**CHAMPION, "data_hash": "zzz", "oof_log_loss": "0.1"}, "1", CHAMPION)
    assert not promoted and reason.startswith("not compared") and "arena-pref promote 2" in reason
    promoted, reason = decide_promotion("2", {**CHAMPION, "n_oof": "500", "oof_log_loss": "0.1"}, "1", CHAMPION)
    assert not promoted and "500" in reason and "1000" in reason


def test_the_champion_itself_is_not_promoted_again():
    assert decide_promotion("1", CHAMPION, "1", CHAMPION) == (False, "already champion")


def test_an_identical_rerun_registers_nothing_and_names_the_version():
    decision = decide_registration(["7", "3"], ["ignored"])
    assert not decision.register and decision.existing == "3" and not decision.aliases_allowed


def test_a_model_no_better_than_the_prior_or_missing_a_class_is_registered_without_aliases():
    assert registration_warnings(0.95, 1.09) == []
    worse = registration_warnings(1.10, 1.09)
    assert len(worse) == 1 and "does not beat the class prior 1.0900" in worse[0]
    missing = registration_warnings(0.5, 1.0, missing_classes=["winner_tie"])
    assert len(missing) == 1 and "no row of class winner_tie" in missing[0]
    at_bound = registration_warnings(0.5, 1.0, temperature=TEMPERATURE_BOUNDS[1])
    assert len(at_bound) == 1 and "at its bound" in at_bound[0]
    decision = decide_registration([], worse)
    assert decision.register and not decision.aliases_allowed and decision.warnings == tuple(worse)
    assert decide_registration([], []).aliases_allowed
