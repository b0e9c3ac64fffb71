"""From YAML (and `--set key=value` overrides) to a validated RunConfig, and back to YAML.

Every problem is reported at once in one ConfigError: the fields' own (the schema, pref_core.config.schema) and
those of every cross-field rule whose fields are valid (pref_core.config.rules).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence, Union

import yaml
from pydantic import ValidationError

from pref_core.config.rules import check_rules, format_field_errors, partial_view
from pref_core.config.schema import ConfigError, RunConfig


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true/false (any case) are booleans. YAML 1.1 also reads
    off/no/on/yes as booleans, so `postprocess.mode: off` and `--set train.mixed_precision=no` arrived as False for
    fields whose allowed words they are; a boolean field still takes them (pydantic reads the words)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(text: str) -> Any:
    """A recipe or an override value as the config reads it (YAML 1.2 booleans, see _Yaml12Loader)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)


def parse_config(raw: dict[str, Any]) -> RunConfig:
    """Validate a plain dict into a RunConfig, raising ConfigError listing every problem: the fields' own,
    then those of every cross-field rule whose fields are valid (so one round reports both kinds)."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        view, failed = partial_view(RunConfig, raw, err)
        raise ConfigError(format_field_errors(err) + check_rules(view, failed)) from None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b=c` strings to a config dict; values are parsed as YAML (numbers, bools, lists, null)."""
    out = _deep_copy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError([f"override {item!r}: expected key=value, for example train.learning_rate=1e-4"])
        key, _, text = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError([f"override {item!r}: the key before '=' is empty"])
        try:
            value = read_yaml(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError([f"override {item!r}: value is not valid YAML ({err.__class__.__name__})"]) from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:  # absent, or an empty/null section in the YAML (`tiny: null`)
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError([f"override {item!r}: {part} is a value, not a section"])
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _deep_copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deep_copy(v) for v in tree]
    return tree


def load_config(path: Union[str, Path], overrides: Sequence[str] = ()) -> RunConfig:
    """Load a YAML config, apply `--set key=value` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {str(path)!r} not found; pass an existing YAML such as configs/tiny.yaml"])
    try:
        raw = read_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError([yaml_problem(path, err)]) from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise ConfigError([f"{path}: cannot be read ({reason}); pass a UTF-8 YAML file"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections (data, model, ...)"])
    return parse_config(apply_overrides(raw, overrides))


def yaml_problem(path: Path, err: "yaml.YAMLError") -> str:
    """One line for a YAML error: file, line and column, and what the parser found (a syntax error, or a tag such
    as !!python/object that safe loading refuses to build: nothing in the file is executed)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    if problem.startswith("could not determine a constructor for the tag"):
        tag = problem.split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
        problem = f"the tag {tag} is not allowed (recipes are plain data: nothing in them is run)"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None and mark is not None and start.line != mark.line:  # where the open part began
        problem += f" ({context.replace('while ', '')} that starts at line {start.line + 1}, column {start.column + 1})"
    return f"{where}: not valid YAML: {problem}; fix that line"


def require_train_csv(config: RunConfig, needed_for: str = "a Kaggle-format train.csv") -> Path:
    """data.train_csv, or ConfigError saying how to set it (the one message every entry point gives)."""
    if config.data.train_csv is None:
        raise ConfigError([f"data.train_csv: not set; pass --set data.train_csv=PATH ({needed_for})"])
    return config.data.train_csv


def config_yaml(config: RunConfig) -> str:
    """The resolved config as YAML text, sections and fields in schema order."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def dump_config(config: RunConfig, path: Union[str, Path]) -> Path:
    """Write the resolved config as YAML (logged with every run, bundled with models)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_yaml(config), encoding="utf-8")
    return path
