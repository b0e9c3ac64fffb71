"""What the registry does with a finished run: register it or not (an identical rerun registers nothing), alias
it or not (a model no better than the class prior, or trained without some class, gets no alias), and when it
replaces the champion (only on the same data and OOF rows, and only with a lower OOF log loss). Tags and scores
in, decisions out; the registry calls are the caller's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from pref_core.evaluate.calibration import TEMPERATURE_BOUNDS, temperature_at_bound


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


@dataclass(frozen=True)
class RegistrationDecision:
    """Whether a finished run becomes a registry version, and whether it may carry an alias.

    `existing`: the version that already holds this computation (same run key); then nothing is registered.
    `warnings`: why the version gets no alias (@challenger / @champion); empty when it may have them."""

    register: bool
    existing: Optional[str] = None
    warnings: tuple[str, ...] = ()

    @property
    def aliases_allowed(self) -> bool:
        return self.register and not self.warnings


def deciding_log_loss(oof_log_loss: float, calibrated_log_loss: Optional[float] = None) -> float:
    """The log loss a run's submissions get: the calibrated OOF when a temperature was fitted (predict, export and
    the bundle apply it), else the OOF."""
    return oof_log_loss if calibrated_log_loss is None else calibrated_log_loss


def prior_warning(
    oof_log_loss: float, prior_log_loss: float, calibrated_log_loss: Optional[float] = None
) -> Optional[str]:
    """Why a model is no better than always predicting the class shares, judged on its deciding log loss; None when
    it beats them. The registry and the report page both say it with these words."""
    log_loss = deciding_log_loss(oof_log_loss, calibrated_log_loss)
    if log_loss < prior_log_loss:
        return None
    which = "OOF log loss" if calibrated_log_loss is None else "calibrated OOF log loss"
    return (
        f"{which} {log_loss:.4f} does not beat the class prior {prior_log_loss:.4f} (always predicting the class "
        "shares): the model learned nothing the shares do not already say (too few rows or steps, a learning rate "
        "far off, or broken labels)"
    )


def registration_warnings(
    oof_log_loss: float,
    prior_log_loss: float,
    missing_classes: Sequence[str] = (),
    temperature: Optional[float] = None,
    temperature_bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    calibrated_log_loss: Optional[float] = None,
) -> list[str]:
    """Why a model must not be aliased automatically: no better than the class prior (prior_warning), trained
    without some class, or a calibration temperature stuck at one of its bounds (the fit found no useful scale)."""
    found = []
    worse = prior_warning(oof_log_loss, prior_log_loss, calibrated_log_loss)
    if worse is not None:
        found.append(worse)
    if missing_classes:
        found.append(
            f"the training data has no row of class {', '.join(missing_classes)}: the model never saw "
            f"{'it' if len(missing_classes) == 1 else 'them'}"
        )
    if temperature is not None and temperature_at_bound(temperature, temperature_bounds):
        found.append(
            f"the calibration temperature {temperature:.3g} is at its bound "
            f"({temperature_bounds[0]:g}..{temperature_bounds[1]:g}): the predictions carry no usable confidence"
        )
    return found


def decide_registration(same_key_versions: Sequence[str], warnings: Sequence[str] = ()) -> RegistrationDecision:
    """Register a run unless a version with its run key exists (an identical rerun: say which version it is);
    a version with `warnings` (registration_warnings) is registered without aliases."""
    if same_key_versions:
        return RegistrationDecision(register=False, existing=min(same_key_versions, key=int))
    return RegistrationDecision(register=True, warnings=tuple(warnings))
