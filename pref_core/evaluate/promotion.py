"""When a newly registered fold ensemble replaces the champion: only on the same data and OOF rows, and
only with a lower OOF log loss. Tags in, decision out; the registry calls are the caller's."""

from __future__ import annotations

from typing import Mapping, Optional


def decide_promotion(
    version: str, tags: Mapping[str, str], champion_version: Optional[str], champion_tags: Mapping[str, str]
) -> tuple[bool, str]:
    """(promote?, reason) for model version `version` with `tags` (oof_log_loss, data_hash, n_oof) against
    the champion (None when there is none yet)."""
    if champion_version is None:
        return True, "no champion yet"
    if str(champion_version) == str(version):
        return False, "already champion"
    if champion_tags.get("data_hash") != tags.get("data_hash"):
        return False, (
            f"not compared: champion v{champion_version} was trained on data "
            f"{champion_tags.get('data_hash', '?')[:12]}, "
            f"this version on {tags.get('data_hash', '?')[:12]}; promote by hand with `arena-pref promote {version}`"
        )
    if champion_tags.get("n_oof") != tags.get("n_oof"):
        return False, (
            f"not compared: champion v{champion_version} was evaluated on {champion_tags.get('n_oof')} OOF rows, "
            f"this version on {tags.get('n_oof')} (different folds); promote by hand if intended"
        )
    best, new = float(champion_tags["oof_log_loss"]), float(tags["oof_log_loss"])
    if new < best:
        return True, f"oof_log_loss {new:.5f} beats champion v{champion_version} ({best:.5f})"
    return False, f"oof_log_loss {new:.5f} does not beat champion v{champion_version} ({best:.5f})"
