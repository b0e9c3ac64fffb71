"""The offline inference bundle (`arena-pref export`): its manifest, its checks and its `predict.py` command.

This module is copied verbatim into every bundle, with the other pure modules the prediction needs
(`CODE_MODULES`), and runs there with torch, transformers, peft, pandas, numpy and pyyaml only: no
pydantic (it reads the two config sections prediction needs as plain namespaces), no datasets, no prefect, no
mlflow, no arena-pref.

Bundle layout::

    predict.py            python predict.py --base-model PATH --test-csv test.csv --out submission.csv
    README.md             how to attach it on Kaggle, options
    manifest.json         format, base model (id/revision/fingerprint, architecture, content hash), sha256 of every file
    config.yaml           the resolved RunConfig of the training run
    calibration.json      the OOF temperature
    postprocess.json      rules learned on OOF for rows the model cannot judge (when the run learned any)
    class_prior.json      training class shares: what a test row that cannot be read gets
    label_tokens.json     head and label token ids the adapters were trained with
    adapters/<name>/      fold_0..fold_K-1 (ensemble) or average: LoRA, classifier head, tokenizer
    pref_core/            the inference code
    base_model/           optional (--base-model-dir): the base weights themselves
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence

from pref_core.config.choices import MODEL_DTYPES, QUANTIZATIONS
from pref_core.errors import UserError

BUNDLE_FORMAT = 1
MANIFEST_FILE = "manifest.json"
BASE_MODEL_DIR = "base_model"
# What the bundle's predict.py imports, as paths under pref_core/ (each subpackage's empty __init__.py is copied
# with its modules): pure modules only (a test runs them with pydantic/datasets blocked).
CODE_MODULES = (
    "__init__",
    "errors",
    "hashing",
    "progress",
    "publish",
    "terminal",
    "config/choices",
    "data/arena",
    "data/labels",
    "data/problems",
    "evaluate/calibration",
    "evaluate/blend",
    "evaluate/metrics",
    "evaluate/postprocess",
    "kaggle/bundle",
    "model/backbone",
    "model/losses",
    "model/precision",
    "model/preference",
    "predict/batching",
    "predict/budget",
    "predict/deadline",
    "predict/ensemble",
    "predict/inference",
    "predict/members",
    "predict/runner",
    "predict/submission",
    "predict/workers",
    "text/prompts",
    "text/truncation",
)
# The base model's config fields that must match for the adapters to fit it.
ARCHITECTURE_FIELDS = (
    "model_type",
    "architectures",
    "hidden_size",
    "num_hidden_layers",
    "vocab_size",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
)
# Files of a base model folder that decide its weights (tokenizer files come from the adapters).
_BASE_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


class BundleError(UserError, ValueError):
    """A bundle, base model or option that cannot be used: one line, exit code 2."""


# -- files and hashes --------------------------------------------------------------------------------------------


def bundle_files(bundle_dir: Path) -> list[str]:
    """Relative paths of the files the manifest covers: all but the manifest itself, the copied base model
    (checked through its content hash instead) and Python's byte-code caches."""
    out = []
    for path in sorted(bundle_dir.rglob("*")):
        rel = path.relative_to(bundle_dir).as_posix()
        if not path.is_file() or rel == MANIFEST_FILE or rel.startswith(BASE_MODEL_DIR + "/") or "__pycache__" in rel:
            continue
        out.append(rel)
    return out


def describe_base_model(base_dir: Path) -> dict[str, Any]:
    """Architecture fields of a base model folder and a content hash of its config and weight files."""
    import hashlib

    from pref_core.hashing import hash_file

    config_file = base_dir / "config.json"
    if not config_file.is_file():
        raise BundleError(
            f"{base_dir}: no config.json; point at the folder of the base model (its config.json, "
            "tokenizer and *.safetensors files)"
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    text_config = config.get("text_config") or config
    architecture = {f: text_config.get(f, config.get(f)) for f in ARCHITECTURE_FIELDS}
    digest = hashlib.sha256()
    weight_files = [
        p
        for p in sorted(base_dir.rglob("*"))
        if p.is_file() and (p.name == "config.json" or p.name.endswith(_BASE_WEIGHT_SUFFIXES))
    ]
    for path in weight_files:
        digest.update(f"{path.relative_to(base_dir).as_posix()}\0{hash_file(path)}\n".encode())
    return {
        "architecture": architecture,
        "content_sha256": digest.hexdigest(),
        "files": [p.relative_to(base_dir).as_posix() for p in weight_files],
    }


def write_manifest(bundle_dir: Path, base_model: dict, base_description: Optional[dict], extra: dict) -> Path:
    from pref_core.hashing import hash_file

    manifest = {
        "format": BUNDLE_FORMAT,
        "base_model": base_model,
        "base_description": base_description,
        **extra,
        "files": {rel: hash_file(bundle_dir / rel) for rel in bundle_files(bundle_dir)},
    }
    path = bundle_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def verify_bundle(bundle_dir: Path) -> dict:
    """The manifest, after checking that every file it lists is there with its sha256 and nothing was added."""
    from pref_core.hashing import hash_file

    path = bundle_dir / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST_FILE}; this is not a folder written by `arena-pref export`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON ({err.msg}); re-export the bundle") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: cannot be read ({getattr(err, 'strerror', None) or err}); re-export") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: not a manifest (a JSON object is expected); re-export the bundle")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {manifest.get('format')!r}, this predict.py reads {BUNDLE_FORMAT}")
    listed = manifest.get("files", {})
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise BundleError(f"{path}: 'files' must map each file to its sha256; re-export the bundle")
    if not isinstance(manifest.get("base_model", {}), dict):
        raise BundleError(f"{path}: 'base_model' must be an object; re-export the bundle")
    root = bundle_dir.resolve()
    for rel, expected in listed.items():
        file = bundle_dir / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not file.resolve().is_relative_to(root):
            # The bundle trusts only what lies inside it: a listed path that leads out of it is never read.
            raise BundleError(f"{path}: lists {rel!r}, which is outside the bundle; re-export the bundle")
        if not file.is_file():
            raise BundleError(f"bundle file {rel} is missing (listed in {MANIFEST_FILE}); re-upload the whole bundle")
        if hash_file(file) != expected:
            raise BundleError(
                f"bundle file {rel} does not match its sha256 in {MANIFEST_FILE} (corrupted or "
                "replaced); re-export or re-upload the bundle"
            )
    extra = sorted(set(bundle_files(bundle_dir)) - set(listed))
    if extra:
        raise BundleError(
            f"bundle file {extra[0]} is not in {MANIFEST_FILE} ({len(extra)} unlisted file(s)); "
            "remove it or re-export the bundle"
        )
    return manifest


def check_base_model(base_dir: Path, manifest: dict, verify_hash: bool = True) -> None:
    """The base model folder is the one the adapters were trained on: same architecture, same content hash
    (where the export could record them)."""
    expected = manifest.get("base_description")
    name = manifest.get("base_model", {}).get("name_or_path")
    if not base_dir.is_dir():
        raise BundleError(
            f"--base-model {base_dir}: no such folder; attach the base model ({name}) as a Kaggle "
            "input and pass its folder"
        )
    if expected is None:
        if not (base_dir / "config.json").is_file():
            raise BundleError(f"--base-model {base_dir}: no config.json; pass the folder of the base model ({name})")
        return
    found = (
        describe_base_model(base_dir) if verify_hash else {"architecture": describe_base_model_architecture(base_dir)}
    )
    for field, want in expected["architecture"].items():
        got = found["architecture"].get(field)
        if got != want:
            raise BundleError(
                f"--base-model {base_dir}: {field} is {got!r} but the adapters were trained on "
                f"{want!r} ({name}); pass the matching base model"
            )
    if verify_hash and found["content_sha256"] != expected["content_sha256"]:
        raise BundleError(
            f"--base-model {base_dir}: its weights' content hash {found['content_sha256'][:12]} is not "
            f"the trained base's {expected['content_sha256'][:12]} ({name}); pass the same checkpoint, "
            "or --skip-base-hash if you know it is the same model"
        )


def describe_base_model_architecture(base_dir: Path) -> dict:
    """Architecture fields only (no hashing): the fast check."""
    config_file = base_dir / "config.json"
    if not config_file.is_file():
        raise BundleError(f"--base-model {base_dir}: no config.json; pass the folder of the base model")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    text_config = config.get("text_config") or config
    return {f: text_config.get(f, config.get(f)) for f in ARCHITECTURE_FIELDS}


# -- config ------------------------------------------------------------------------------------------------------


def to_namespace(tree: Any) -> Any:
    """Nested dicts -> nested SimpleNamespace: a config section read from YAML, by attribute (`model.head`)."""
    if isinstance(tree, dict):
        return SimpleNamespace(**{key: to_namespace(value) for key, value in tree.items()})
    if isinstance(tree, list):
        return [to_namespace(value) for value in tree]
    return tree


@dataclass
class PredictionSettings:
    """What prediction reads of the training run's config.yaml: the `model` and `prompt` sections (their fields
    as written; no pydantic here, they were validated when the run wrote them), swap TTA and the batch size."""

    model: Any  # the model section: name_or_path, head, label_tokens, dtype, quantization, ...
    prompt: Any  # the prompt section: template, truncation, max_length, ...
    tta_swap: bool  # train.tta_swap
    batch_size: int  # train.eval_batch_size


def read_prediction_settings(bundle_dir: Path) -> PredictionSettings:
    """The sections prediction needs, from the bundle's config.yaml."""
    import yaml

    config = yaml.safe_load((bundle_dir / "config.yaml").read_text(encoding="utf-8"))
    return PredictionSettings(
        model=to_namespace(config["model"]),
        prompt=to_namespace(config["prompt"]),
        tta_swap=bool(config["train"]["tta_swap"]),
        batch_size=int(config["train"]["eval_batch_size"]),
    )


def adapter_dirs(bundle_dir: Path) -> list[Path]:
    """adapters/fold_0.. in fold order, or adapters/average."""
    folders = [p for p in (bundle_dir / "adapters").iterdir() if p.is_dir()]
    return sorted(folders, key=lambda p: int(p.name.split("_")[1]) if p.name.startswith("fold_") else -1)


# -- predict.py --------------------------------------------------------------------------------------------------


def visible_devices() -> list[str]:
    """Every visible CUDA device, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{k}" for k in range(torch.cuda.device_count())]
    return ["cpu"]


class _OneLineParser(argparse.ArgumentParser):
    """A bad option is one line on stderr and exit code 2 (argparse would print the usage first)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see predict.py --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="predict.py", description="Kaggle submission from an arena-pref bundle (offline; see README.md)."
    )
    parser.add_argument(
        "--base-model",
        default=None,
        help=f"folder of the base model (default: the bundle's {BASE_MODEL_DIR}/ when it was copied in); a blend's "
        "bundle over several bases: one folder per base, comma-separated, in manifest.json's order",
    )
    parser.add_argument("--test-csv", required=True, help="Kaggle test.csv (id, prompt, response_a, response_b)")
    parser.add_argument("--out", default="submission.csv", help="submission CSV to write")
    parser.add_argument(
        "--rejected", default=None, help="where rows that cannot be read are listed (default: <out>.rejected.csv)"
    )
    parser.add_argument(
        "--log",
        default=None,
        help="log file: library output, warnings, the time checks and decisions (default: <out> with .log)",
    )
    parser.add_argument(
        "--devices",
        default="auto",
        help="comma-separated devices, one worker process each: auto (every GPU, else cpu), "
        "cuda:0,cuda:1, cpu, or cpu,cpu (two CPU workers); with swap TTA on two devices one reads the "
        "original order and the other the swapped order",
    )
    parser.add_argument(
        "--tta-swap",
        choices=["config", "on", "off"],
        default="config",
        help="also read every row with responses a and b exchanged and average (2x the work)",
    )
    parser.add_argument("--max-length", type=int, default=None, help="override prompt.max_length (tokens per row)")
    parser.add_argument(
        "--dtype",
        choices=["config", *MODEL_DTYPES],
        default="config",
        help="weights' precision: auto = bf16 on compute capability 8.0+, fp16 below (T4), fp32 on CPU",
    )
    parser.add_argument(
        "--quantization",
        choices=["config", *QUANTIZATIONS],
        default="config",
        help="load the base with bitsandbytes 8-bit or 4-bit",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="override train.eval_batch_size (rows per batch)")
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="batches of at most this many padded tokens (rows x longest row), longest rows first, so the first "
        "batch is the largest; --batch-size still caps the rows",
    )
    parser.add_argument(
        "--merge-adapter",
        action="store_true",
        help="merge the one adapter of a --folds average bundle into the base weights at load (no LoRA "
        "matmuls; not with --quantization)",
    )
    parser.add_argument(
        "--time-limit",
        default=None,
        help="e.g. 9h or 8h30m, counted from the start of predict.py: project the time after the first batches, "
        "and stop in time (rows not reached get the class prior)",
    )
    parser.add_argument(
        "--fit-time",
        action="store_true",
        help="with --time-limit: when the projection does not fit, turn swap TTA off, then lower --max-length step "
        "by step down to --max-length-floor",
    )
    parser.add_argument(
        "--max-length-floor", type=int, default=None, help="lowest max_length --fit-time may use (default: half)"
    )
    parser.add_argument(
        "--time-reserve",
        default=None,
        help="time kept back before the limit for writing the submission (default: 5%% of it, at most 10m)",
    )
    parser.add_argument(
        "--skip-base-hash",
        action="store_true",
        help="check the base model's architecture only, not its content hash (saves reading the weights)",
    )
    parser.add_argument("--progress", action="store_true", help="progress bars")
    return parser


def apply_options(settings: PredictionSettings, args) -> PredictionSettings:
    """The command-line overrides on the bundle's settings (in place); returns them."""
    if args.tta_swap != "config":
        settings.tta_swap = args.tta_swap == "on"
    if args.max_length is not None:
        if args.max_length < 32:
            raise BundleError(f"--max-length {args.max_length}: too small for the prompt template; use 256 or more")
        settings.prompt.max_length = args.max_length
    if args.quantization != "config":
        settings.model.quantization = args.quantization
    if args.dtype != "config":
        settings.model.dtype = args.dtype
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise BundleError(f"--batch-size {args.batch_size}: must be at least 1")
        settings.batch_size = args.batch_size
    if args.max_batch_tokens is not None and args.max_batch_tokens < 1:
        raise BundleError(
            f"--max-batch-tokens {args.max_batch_tokens}: must be a positive number of tokens, e.g. 16384"
        )
    if args.merge_adapter and settings.model.quantization != "none":
        raise BundleError(
            f"--merge-adapter with quantization {settings.model.quantization}: merging into quantized weights loses "
            "precision; use --quantization none, or leave --merge-adapter out"
        )
    return settings


def read_time_limit(args, max_length: int, started_at: float):
    """The --time-limit options as a deadline.TimeLimit (None without --time-limit); BundleError when one is bad."""
    from pref_core.predict.budget import parse_duration
    from pref_core.predict.deadline import TimeLimit

    if args.time_limit is None:
        if args.fit_time or args.max_length_floor is not None or args.time_reserve is not None:
            raise BundleError("--fit-time, --max-length-floor and --time-reserve need --time-limit, e.g. 9h")
        return None
    try:
        limit_s = parse_duration(args.time_limit)
        reserve_s = parse_duration(args.time_reserve) if args.time_reserve is not None else None
    except ValueError as error:
        raise BundleError(f"--time-limit/--time-reserve: {error}") from None
    floor = args.max_length_floor
    if floor is not None and not 32 <= floor <= max_length:
        raise BundleError(f"--max-length-floor {floor}: use a value from 32 to max_length ({max_length})")
    if reserve_s is not None and reserve_s >= limit_s:
        raise BundleError(f"--time-reserve {args.time_reserve} is not shorter than --time-limit {args.time_limit}")
    return TimeLimit(limit_s, started_at, fit=args.fit_time, floor_max_length=floor, reserve_s=reserve_s)


def _parse_devices(spec: str) -> list[str]:
    if spec == "auto":
        return visible_devices()
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    import torch

    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BundleError(f"--devices {spec}: {device} requested but no CUDA GPU is visible; use --devices cpu")
        if not (device == "cpu" or device.startswith("cuda")):
            raise BundleError(f"--devices {spec}: {device!r} is not a device; use cpu, cuda:0, cuda:1, ...")
    return devices


def assemble_submission(ids: Sequence[str], predicted_ids: Sequence[str], probs, prior):
    """One row per id of `ids` (file order): the prediction where there is one, else the class prior; each row
    renormalized in float64 so it sums to 1 as written, then checked as the training pipeline checks its own."""
    import numpy as np
    import pandas as pd

    from pref_core.data.labels import LABEL_COLUMNS
    from pref_core.predict.submission import fill_missing_with_prior, validate_submission

    predicted = pd.DataFrame(
        np.asarray(probs, dtype=np.float64).reshape(-1, len(LABEL_COLUMNS)), columns=list(LABEL_COLUMNS)
    )
    predicted.insert(0, "id", [str(i) for i in predicted_ids])
    out, _ = fill_missing_with_prior(predicted, ids, np.asarray(prior, dtype=np.float64))
    values = out[list(LABEL_COLUMNS)].to_numpy(dtype=np.float64)
    out[list(LABEL_COLUMNS)] = values / values.sum(axis=1, keepdims=True)
    try:
        validate_submission(out, ids)
    except ValueError as error:
        raise BundleError(f"internal check failed: {error}") from None
    return out


def postprocess_bundle_rows(bundle_dir: Path, frame, probs):
    """The bundle's postprocess.json rules (learned on OOF) applied to the predicted rows, as `arena-pref predict`
    applies them; unchanged without the file."""
    from pref_core.evaluate.postprocess import apply_to_rows, read_rules

    rules = read_rules(bundle_dir)
    return probs if rules is None else apply_to_rows(rules, frame["response_a"], frame["response_b"], probs)


def _bundle_value(bundle_dir: Path, name: str, key: str) -> Any:
    """`key` of the bundle's JSON file `name` (verified against the manifest first); one line when unreadable."""
    try:
        return json.loads((bundle_dir / name).read_text(encoding="utf-8"))[key]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BundleError(f"bundle file {name}: no readable {key!r} ({type(err).__name__}); re-export") from None


class LogFile:
    """The run's log file: library output (transformers, bitsandbytes), warnings and the time decisions go there,
    so that only predict.py's own lines reach the console; progress bars still do (pref_core.progress)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> "LogFile":
        import logging
        import os

        from pref_core.progress import CONSOLE_FD_ENV

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed in __exit__)
        self._handler = logging.FileHandler(self.path, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self._handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        try:  # transformers logs through a handler of its own on stderr
            from transformers.utils import logging as hf_logging

            hf_logging.disable_default_handler()
            hf_logging.enable_propagation()
        except ImportError:
            pass
        sys.stderr.flush()
        self._console = os.dup(2)  # progress bars and, after the run, error lines
        os.environ[CONSOLE_FD_ENV] = str(self._console)
        self._saved_stderr = os.dup(2)
        os.dup2(self._file.fileno(), 2)  # C libraries and spawned workers inherit it
        self._stderr = sys.stderr
        sys.stderr = self._file
        return self

    def write(self, text: str) -> None:
        self._file.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text.rstrip("\n") + "\n")

    def __exit__(self, *exc) -> None:
        import logging
        import os

        from pref_core.progress import CONSOLE_FD_ENV

        sys.stderr = self._stderr
        os.dup2(self._saved_stderr, 2)
        os.close(self._saved_stderr)
        os.environ.pop(CONSOLE_FD_ENV, None)
        logging.getLogger().removeHandler(self._handler)
        logging.getLogger().setLevel(self._level)
        logging.captureWarnings(False)
        self._handler.close()
        self._file.close()
        os.close(self._console)


def run(args, started_at: Optional[float] = None, say=print) -> dict:
    """predict.py's work; returns a summary. Raises BundleError/DataValidationError for user errors.

    `started_at` (time.time() when predict.py started) is where --time-limit counts from; `say` prints our lines."""
    from pref_core.data.arena import read_arena_csv, write_rejected
    from pref_core.predict.deadline import TimeKeeper
    from pref_core.predict.ensemble import predict_frame
    from pref_core.predict.runner import width_scale_of
    from pref_core.predict.submission import test_file_ids
    from pref_core.publish import check_output_file, publishing_file

    started_at = time.time() if started_at is None else started_at
    bundle_dir = Path(__file__).resolve().parents[2]  # <bundle>/pref_core/kaggle/bundle.py
    manifest = verify_bundle(bundle_dir)
    if manifest.get("kind") == "blend":  # several models' adapters over one or more bases
        return run_blend(args, bundle_dir, manifest)
    base_dir = Path(args.base_model) if args.base_model else bundle_dir / BASE_MODEL_DIR
    if args.base_model is None and not base_dir.is_dir():
        raise BundleError(
            f"--base-model is required: this bundle has no {BASE_MODEL_DIR}/ folder; attach the base "
            f"model ({manifest.get('base_model', {}).get('name_or_path')}) and pass its folder"
        )
    test_csv = Path(args.test_csv)
    if not test_csv.is_file():
        raise BundleError(f"--test-csv {test_csv}: no such file")
    out = check_output_file(Path(args.out), "--out")  # before any work: not a folder, in a writable place
    # Options first (instant), then the input (cheap), then the base model, then the expensive part.
    settings = apply_options(read_prediction_settings(bundle_dir), args)
    limit = read_time_limit(args, settings.prompt.max_length, started_at)
    adapters = adapter_dirs(bundle_dir)
    if args.merge_adapter and len(adapters) != 1:
        raise BundleError(
            f"--merge-adapter needs the one averaged adapter of an `arena-pref export --folds average` bundle; "
            f"this one holds {len(adapters)} fold adapters"
        )
    devices = _parse_devices(args.devices)
    test = read_arena_csv(test_csv, kind="test", max_bad_fraction=1.0)
    check_base_model(base_dir, manifest, verify_hash=not args.skip_base_hash)
    temperature = float(_bundle_value(bundle_dir, "calibration.json", "temperature"))
    prior = _bundle_value(bundle_dir, "class_prior.json", "prior")
    rejected_path = Path(args.rejected) if args.rejected else out.with_name(out.stem + ".rejected.csv")
    log = getattr(args, "log_file", None)
    keeper = TimeKeeper(limit, width_scale_of(base_dir)) if limit is not None else None
    start = time.perf_counter()
    prediction = predict_frame(
        settings.model,
        settings.prompt,
        adapters,
        test.frame,
        batch_size=settings.batch_size,
        tta_swap=settings.tta_swap,
        base_model=str(base_dir),
        temperature=temperature,
        devices=devices,
        progress=args.progress,
        max_batch_tokens=args.max_batch_tokens,
        merge_adapter=args.merge_adapter,
        keeper=keeper,
        say=say,
        log=log.write if log is not None else (lambda text: None),
        log_path=str(log.path) if log is not None else None,
    )
    seconds = time.perf_counter() - start
    frame_ids = test.frame["id"].astype(str).to_numpy()
    predicted_ids = frame_ids[prediction.predicted].tolist()
    from pref_core.model.precision import check_finite_probabilities

    check_finite_probabilities(prediction.probabilities, predicted_ids, settings.model.dtype)
    probs = postprocess_bundle_rows(bundle_dir, test.frame[prediction.predicted], prediction.probabilities)
    submission = assemble_submission(test_file_ids(test_csv), predicted_ids, probs, prior)
    with publishing_file(out) as staging:  # whole or not at all: a failure never leaves half a submission
        submission.to_csv(staging, index=False)
    if test.n_rejected:
        write_rejected(test.rejected, rejected_path)
    summary = {
        "rows": len(submission),
        "predicted": int(prediction.predicted.sum()),
        "not_reached": int((~prediction.predicted).sum()),
        "rejected": test.n_rejected,
        "rejected_path": str(rejected_path) if test.n_rejected else None,
        "seconds": seconds,
        "devices": devices,
        "out": str(out),
        "workers": prediction.run.workers,
        "load_s": prediction.run.load_s,
        "decisions": [d.to_dict() for d in prediction.run.decisions],
        "total_s": time.time() - started_at,
    }
    if keeper is not None:
        summary["time"] = {
            "limit_s": limit.limit_s,
            "reserve_s": limit.reserve,
            "stopped_at_s": prediction.run.stopped_at_s,
            "first_projection": keeper.first_projection(),
            "predict_s": time.time() - keeper.predict_started_at if keeper.predict_started_at else None,
            "checks": [c.to_dict() for c in keeper.checks],
        }
    if log is not None:
        log.write("summary: " + json.dumps(summary, default=str))
    return summary


# -- a blend's bundle ---------------------------------------------------------------------------------------------


def base_folders(args, bundle_dir: Path, bases: list[dict]) -> list[Path]:
    """The folder of each base in manifest order: --base-model's comma-separated folders, or the bundle's copy."""
    names = ", ".join(str(b["base_model"].get("name_or_path")) for b in bases)
    if args.base_model:
        folders = [Path(p.strip()) for p in args.base_model.split(",") if p.strip()]
    elif len(bases) == 1 and (bundle_dir / BASE_MODEL_DIR).is_dir():
        folders = [bundle_dir / BASE_MODEL_DIR]
    else:
        raise BundleError(
            f"--base-model is required: attach this blend's base model(s) ({names}) and pass their folders, "
            "comma-separated, in that order"
        )
    if len(folders) != len(bases):
        raise BundleError(
            f"--base-model: {len(folders)} folder(s) given, but this blend's members use {len(bases)} base(s) "
            f"({names}); pass one folder per base, comma-separated, in that order"
        )
    return folders


def run_blend(args, bundle_dir: Path, manifest: dict) -> dict:
    """predict.py's work for a blend's bundle (`arena-pref export` of a registered blend); the summary of `run`.

    manifest.json lists the bases (`bases`: fingerprint, what the export could describe of it, the members over
    it); each --base-model folder is checked as a single model's base is. Every member is predicted as its own
    bundle would predict it (pref_core.predict.members: each base loaded once), the members are combined with
    the blend's final parameters (blend.json), then the rules learned on the blend's OOF rows are applied."""
    from pref_core.data.arena import read_arena_csv, write_rejected
    from pref_core.predict.members import (
        MEMBERS_DIR,
        MemberModel,
        base_identity,
        blend_members_probabilities,
        predict_members,
        read_blend_spec,
    )
    from pref_core.predict.submission import test_file_ids
    from pref_core.publish import check_output_file, publishing_file

    bases = manifest["bases"]
    folders = base_folders(args, bundle_dir, bases)
    test_csv = Path(args.test_csv)
    if not test_csv.is_file():
        raise BundleError(f"--test-csv {test_csv}: no such file")
    # Input first (cheap), then the base models, then the expensive part.
    test = read_arena_csv(test_csv, kind="test", max_bad_fraction=1.0)
    for folder, base in zip(folders, bases):
        check_base_model(folder, base, verify_hash=not args.skip_base_hash)
    folder_of = {name: str(folder) for folder, base in zip(folders, bases) for name in base["members"]}
    spec = read_blend_spec(bundle_dir)
    members = []
    for name in spec["members"]:
        member_dir = bundle_dir / MEMBERS_DIR / name
        settings = apply_options(read_prediction_settings(member_dir), args)
        members.append(
            MemberModel(
                name=name,
                model=settings.model,
                prompt=settings.prompt,
                tta_swap=settings.tta_swap,
                batch_size=settings.batch_size,
                temperature=float(json.loads((member_dir / "calibration.json").read_text())["temperature"]),
                adapter_dirs=adapter_dirs(member_dir),
                base=folder_of[name],
                base_key=base_identity(json.loads((member_dir / "base_model.json").read_text())),
            )
        )
    devices = _parse_devices(args.devices)
    prior = _bundle_value(bundle_dir, "class_prior.json", "prior")
    out = check_output_file(Path(args.out), "--out")
    rejected_path = Path(args.rejected) if args.rejected else out.with_name(out.stem + ".rejected.csv")
    start = time.perf_counter()
    member_probs = predict_members(members, test.frame, devices=devices, progress=args.progress)
    probs = postprocess_bundle_rows(bundle_dir, test.frame, blend_members_probabilities(spec, member_probs))
    seconds = time.perf_counter() - start
    submission = assemble_submission(test_file_ids(test_csv), test.frame["id"].tolist(), probs, prior)
    with publishing_file(out) as staging:  # whole or not at all: a failure never leaves half a submission
        submission.to_csv(staging, index=False)
    if test.n_rejected:
        write_rejected(test.rejected, rejected_path)
    return {
        "rows": len(submission),
        "predicted": len(test.frame),
        "rejected": test.n_rejected,
        "rejected_path": str(rejected_path) if test.n_rejected else None,
        "seconds": seconds,
        "devices": devices,
        "out": str(out),
        "not_reached": 0,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    started_at = time.time()
    from pref_core.data.arena import DataValidationError

    args = build_parser().parse_args(argv)
    out = Path(args.out)
    log_path = Path(args.log) if args.log else out.with_suffix(".log")

    def say(text: str) -> None:
        print(text, flush=True)
        if getattr(args, "log_file", None) is not None:
            args.log_file.write(text)

    try:
        with LogFile(log_path) as log:
            args.log_file = log
            summary = run(args, started_at, say)
    except DataValidationError as err:  # file-level problems only (bad rows get the prior): one line
        print(f"error: {' '.join([err.headline, *map(str, err.problems)])}", file=sys.stderr)
        return 2
    except (UserError, OSError) as err:
        if isinstance(err, OSError) and err.strerror:
            err = f"{err.filename + ': ' if err.filename else ''}{err.strerror.lower()}"
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Prediction speed without the model load (said apart): what --time-limit projects and what scales with rows.
    load_s = summary.get("load_s", 0.0)
    predict_s = max(summary["seconds"] - load_s, 0.0)
    rate = ""
    if summary["predicted"]:
        rate = f", {predict_s / summary['predicted'] * 1000:.1f} s per 1,000 rows"
    print(
        f"wrote {summary['rows']} rows to {summary['out']} ({summary['predicted']} predicted on "
        f"{','.join(summary['devices'])}: model load {load_s:.1f} s, prediction {predict_s:.1f} s{rate}; "
        f"log: {log_path})"
    )
    if summary["not_reached"]:
        print(
            f"time limit {args.time_limit}: {summary['not_reached']} of {summary['predicted'] + summary['not_reached']}"
            " rows were not reached in time and got the class prior (the submission is complete and valid)"
        )
    if summary["rejected"]:
        print(f"{summary['rejected']} rows could not be read and got the class prior; see {summary['rejected_path']}")
    return 0
