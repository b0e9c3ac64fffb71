"""The run config's schema read as data: each dotted field with its type, default, description and marks.

`arena-pref config fields` prints `describe_fields()`; pref_core/config/run_key.py leaves `result_neutral_fields()`
out of the run key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Iterator, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from pref_core.config.schema import AFTER_FOLDS, RESULT_NEUTRAL, RunConfig


@dataclass(frozen=True)
class FieldDoc:
    """One leaf field of the schema, as `arena-pref config fields` lists it."""

    name: str  # dotted, e.g. train.learning_rate
    type: str  # e.g. "int | null", "seed | multi_turn"
    default: str  # JSON text (valid YAML for --set), or "required"
    description: str
    result_neutral: bool  # left out of the run key (RESULT_NEUTRAL)


def _section_of(annotation: Any) -> Optional[type[BaseModel]]:
    """The section model a field holds (`TrainConfig`, or `TinyModelConfig` in Optional[...]), else None."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def iter_fields(model: Optional[type[BaseModel]] = None, prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """(dotted name, FieldInfo) of every leaf field, sections walked in declaration order."""
    for name, field in (model or RunConfig).model_fields.items():
        section = _section_of(field.annotation)
        if section is None:
            yield prefix + name, field
        else:
            yield from iter_fields(section, f"{prefix}{name}.")


def type_name(annotation: Any) -> str:
    """A field type in the words of the YAML that sets it: `int | null`, `seed | multi_turn`, `list[path]`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is Union or origin is UnionType:
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin in (list, tuple):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def describe_fields() -> list[FieldDoc]:
    """Every leaf field of RunConfig with its type, default and description."""
    neutral = result_neutral_fields()
    docs = []
    for name, field in iter_fields():
        default = (
            "required"
            if field.is_required()
            else json.dumps(to_jsonable_python(field.get_default(call_default_factory=True)))
        )
        in_neutral = any(name == marked or name.startswith(marked + ".") for marked in neutral)
        docs.append(FieldDoc(name, type_name(field.annotation), default, field.description or "", in_neutral))
    return docs


def _marked(field: FieldInfo, mark: dict) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and all(extra.get(key) == value for key, value in mark.items())


def result_neutral_fields() -> tuple[str, ...]:
    """Dotted names of the fields (or whole sections, e.g. `tracking`) marked RESULT_NEUTRAL, in schema order."""
    return _marked_fields(RunConfig, "", RESULT_NEUTRAL)


def after_folds_fields() -> tuple[str, ...]:
    """Dotted names of the result-neutral fields marked AFTER_FOLDS: outside the run key, inside the model key."""
    return _marked_fields(RunConfig, "", AFTER_FOLDS)


def _marked_fields(model: type[BaseModel], prefix: str, mark: dict) -> tuple[str, ...]:
    found: list[str] = []
    for name, field in model.model_fields.items():
        section = _section_of(field.annotation)
        if _marked(field, mark):
            found.append(prefix + name)
        elif section is not None:
            found.extend(_marked_fields(section, f"{prefix}{name}.", mark))
    return tuple(found)
