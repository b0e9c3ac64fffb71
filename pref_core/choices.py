"""Allowed values of the config's choice fields that pure modules check too, written once as Literals.

`pref_core.config` builds its fields from these types; modules that must import without pydantic (the
Kaggle bundle copies them, see pref_core/bundle.py) read the value tuples from here.
"""

from __future__ import annotations

from typing import Literal, get_args

Template = Literal["seed", "multi_turn"]
Truncation = Literal["seed", "seed_capped", "proportional"]

TEMPLATES: tuple[str, ...] = get_args(Template)
TRUNCATIONS: tuple[str, ...] = get_args(Truncation)
