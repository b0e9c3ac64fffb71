"""Cross-field rules of the run config: checks that read more than one field.

Each rule names the dotted fields it reads. `RunConfig` runs them all once every field is valid; when
some fields are not, `pref_core.config.loading.parse_config` still runs each rule whose fields did validate
(`partial_view`), so one round reports the field errors (`format_field_errors`) and the
cross-field errors together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Optional

from pydantic import BaseModel, TypeAdapter, ValidationError


class CrossFieldError(ValueError):
    """Raised by RunConfig's validator; carries one line per broken rule."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Rule:
    reads: tuple[str, ...]  # dotted fields, passed to `check` in this order
    check: Callable[..., Optional[str]]  # returns the problem (dotted field, value, fix), or None


RULES: list[Rule] = []


def rule(*reads: str):
    """Register `check(*values of reads)` as a cross-field rule."""

    def register(check):
        RULES.append(Rule(reads, check))
        return check

    return register


@rule("model.name_or_path", "model.tiny", "model.gguf")
def _one_model_source(name_or_path, tiny, gguf) -> Optional[str]:
    sources = [
        name for name, value in (("name_or_path", name_or_path), ("tiny", tiny), ("gguf", gguf)) if value is not None
    ]
    if not sources:
        return (
            "model.name_or_path: set a hub id or local folder (or model.tiny for the offline tiny "
            "model, or model.gguf for a GGUF file shipped in a package)"
        )
    if len(sources) > 1:
        return (
            f"model: {' and '.join('model.' + s for s in sources)} are both set; choose one source "
            "(set the others to null)"
        )
    return None


@rule("cv.folds", "cv.n_folds")
def _folds_in_range(folds, n_folds) -> Optional[str]:
    bad = [k for k in folds or () if not 0 <= k < n_folds]
    if bad:
        return f"cv.folds: got {bad}; fold indices must lie in 0..{n_folds - 1} (cv.n_folds={n_folds})"
    return None


@rule("model.quantization", "model.dtype", "train.mixed_precision")
def _one_half_format(quantization, dtype, mixed_precision) -> Optional[str]:
    if quantization != "none" and mixed_precision == "fp16" and dtype == "bf16":
        return (
            f"train.mixed_precision: got 'fp16' with model.dtype='bf16' on a quantized base "
            f"(model.quantization={quantization!r}): that mixes half formats; use bf16 for both"
        )
    return None


@rule("train.gradient_accumulation_steps", "train.num_processes")
def _accumulation_shared_evenly(accumulation, processes) -> Optional[str]:
    if accumulation % processes:
        return (
            f"train.gradient_accumulation_steps: got {accumulation}, not a multiple of "
            f"train.num_processes={processes}: each process accumulates an equal share of a step's batches; "
            f"set it to a multiple of train.num_processes (e.g. {math.ceil(accumulation / processes) * processes})"
        )
    return None


@rule("distill.teacher_csv", "distill.teacher_run", "distill.teacher_dir")
def _one_teacher(teacher_csv, teacher_run, teacher_dir) -> Optional[str]:
    given = [
        name
        for name, value in (("teacher_csv", teacher_csv), ("teacher_run", teacher_run), ("teacher_dir", teacher_dir))
        if value is not None
    ]
    if len(given) > 1:
        return (
            f"distill: {' and '.join('distill.' + n for n in given)} are both set; choose one "
            "teacher source (set the others to null)"
        )
    return None


@rule("distill.teacher_csv", "distill.teacher_run", "distill.teacher_dir", "distill.hard_weight", "distill.kl_weight")
def _some_loss(teacher_csv, teacher_run, teacher_dir, hard_weight, kl_weight) -> Optional[str]:
    enabled = any(v is not None for v in (teacher_csv, teacher_run, teacher_dir))
    if enabled and hard_weight == kl_weight == 0:
        return "distill.hard_weight and distill.kl_weight are both 0: the loss would be 0; set either above 0"
    return None


@rule("distill.pseudo_from", "data.unlabeled_csvs", "data.unlabeled_pairs", "distill.kl_weight")
def _pseudo_labels_complete(pseudo_from, unlabeled_csvs, unlabeled_pairs, kl_weight) -> Optional[str]:
    has_rows = bool(unlabeled_csvs) or bool(unlabeled_pairs)
    if pseudo_from is not None and not has_rows:
        return (
            f"distill.pseudo_from: got {pseudo_from!r} but no unlabelled rows; set data.unlabeled_csvs or "
            "data.unlabeled_pairs, or set distill.pseudo_from=null"
        )
    if pseudo_from is None and has_rows:
        return (
            "data.unlabeled_csvs / data.unlabeled_pairs: unlabelled rows need a teacher; set "
            "distill.pseudo_from=<teacher's cv-training run id or models:/ URI>, or remove them"
        )
    if pseudo_from is not None and kl_weight == 0:
        return (
            "distill.kl_weight: got 0 with distill.pseudo_from set; pseudo-labelled rows learn only through the KL "
            "term, so set distill.kl_weight above 0"
        )
    return None


def _lookup(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def _overlaps(read: str, failed: str) -> bool:
    """A rule reading `read` cannot run when `failed` is that field, a section above it, or a field inside it."""
    return read == failed or read.startswith(failed + ".") or failed.startswith(read + ".")


def check_rules(root: Any, failed: Iterable[str] = ()) -> list[str]:
    """The problems of every rule whose fields all validated; `root` is a RunConfig or a `partial_view`."""
    failed = list(failed)
    problems = []
    for each in RULES:
        if any(_overlaps(read, bad) for read in each.reads for bad in failed):
            continue
        problem = each.check(*(_lookup(root, read) for read in each.reads))
        if problem:
            problems.append(problem)
    return problems


def partial_view(schema: type[BaseModel], raw: Any, err: ValidationError) -> tuple[SimpleNamespace, set[str]]:
    """The sections of `raw` validated without the fields `err` refused, and the dotted names refused.

    A refused field (`train.learning_rate`) or a refused subsection (`model.tiny`, whatever inside it failed)
    is dropped from its section, which is validated again without it; a section that still fails, or that
    is required and missing, counts as refused as a whole. Sections hold no validators across their own
    fields (those are rules, here), so a dropped field's default never raises a false problem.
    """
    failed: set[str] = set()
    dropped: dict[str, set[str]] = {}
    for item in err.errors():
        loc = [str(part) for part in item["loc"]]
        if not loc:  # the rules' own error, or a top level that is not a mapping
            continue
        failed.add(".".join(loc[:2]))
        if len(loc) > 1:
            dropped.setdefault(loc[0], set()).add(loc[1])
    sections: dict[str, Any] = {}
    raw = raw if isinstance(raw, dict) else {}
    for name, field in schema.model_fields.items():
        if name in failed:
            continue
        if name not in raw:
            if field.is_required():
                failed.add(name)
            else:
                sections[name] = field.get_default(call_default_factory=True)
            continue
        value = raw[name]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in dropped.get(name, ())}
        try:
            sections[name] = TypeAdapter(field.annotation).validate_python(value)
        except ValidationError:
            failed.add(name)
    return SimpleNamespace(**sections), failed


def format_field_errors(err: ValidationError) -> list[str]:
    """One line per field pydantic refused: the dotted field, the value given and what is allowed (the rules'
    own error is left out: `check_rules` reports those, also when some fields failed)."""
    problems: list[str] = []
    unions: dict[str, tuple[int, Any, list[str]]] = {}  # loc -> (line index, value, messages of each branch)
    for item in err.errors():
        if isinstance(item.get("ctx", {}).get("error"), CrossFieldError):
            continue
        parts = [str(p) for p in item["loc"]]
        # Union branches add tags such as "literal['all-linear']" or "list[str]" to the location: not fields.
        fields = [p for p in parts if p.isidentifier() or p.isdigit()]
        loc = ".".join(fields)
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            problems.append(f"{loc}: unknown field; check the spelling (`arena-pref config fields` lists the fields)")
        elif item["type"] == "missing":
            problems.append(f"{loc}: required field is missing; set it in the YAML or with --set {loc}=...")
        elif len(fields) != len(parts):  # one line per union field, listing what each branch accepts
            if loc not in unions:
                unions[loc] = (len(problems), item.get("input"), [])
                problems.append("")
            unions[loc][2].append(msg)
        elif loc:
            problems.append(f"{loc}: got {item.get('input')!r}; {msg}")
        else:  # the whole config (not a mapping, say): no field to name
            problems.append(msg)
    for loc, (index, value, messages) in unions.items():
        problems[index] = f"{loc}: got {value!r}; " + " or ".join(messages)
    return problems
