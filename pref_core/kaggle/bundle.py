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

from pref_core.config.choices import QUANTIZATIONS
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
    "evaluate/metrics",
    "kaggle/bundle",
    "model/backbone",
    "model/losses",
    "model/preference",
    "predict/ensemble",
    "predict/inference",
    "predict/submission",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py", description="Kaggle submission from an arena-pref bundle (offline; see README.md)."
    )
    parser.add_argument(
        "--base-model",
        default=None,
        help=f"folder of the base model (default: the bundle's {BASE_MODEL_DIR}/ when it was copied in)",
    )
    parser.add_argument("--test-csv", required=True, help="Kaggle test.csv (id, prompt, response_a, response_b)")
    parser.add_argument("--out", default="submission.csv", help="submission CSV to write")
    parser.add_argument(
        "--rejected", default=None, help="where rows that cannot be read are listed (default: <out>.rejected.csv)"
    )
    parser.add_argument(
        "--devices",
        default="auto",
        help="comma-separated devices, one worker process each: auto (every GPU, else cpu), "
        "cuda:0,cuda:1, cpu, or cpu,cpu (two CPU workers)",
    )
    parser.add_argument(
        "--tta-swap",
        choices=["config", "on", "off"],
        default="config",
        help="also read every row with responses a and b exchanged and average (2x time)",
    )
    parser.add_argument("--max-length", type=int, default=None, help="override prompt.max_length (tokens per row)")
    parser.add_argument(
        "--quantization",
        choices=["config", *QUANTIZATIONS],
        default="config",
        help="load the base with bitsandbytes 8-bit or 4-bit (CUDA)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="override train.eval_batch_size")
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
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise BundleError(f"--batch-size {args.batch_size}: must be at least 1")
        settings.batch_size = args.batch_size
    return settings


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


def _bundle_value(bundle_dir: Path, name: str, key: str) -> Any:
    """`key` of the bundle's JSON file `name` (verified against the manifest first); one line when unreadable."""
    try:
        return json.loads((bundle_dir / name).read_text(encoding="utf-8"))[key]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BundleError(f"bundle file {name}: no readable {key!r} ({type(err).__name__}); re-export") from None


def run(args) -> dict:
    """predict.py's work; returns a summary. Raises BundleError/DataValidationError for user errors."""
    from pref_core.data.arena import read_arena_csv, write_rejected
    from pref_core.predict.ensemble import predict_frame_probabilities
    from pref_core.predict.submission import test_file_ids
    from pref_core.publish import check_output_file, publishing_file

    bundle_dir = Path(__file__).resolve().parents[2]  # <bundle>/pref_core/kaggle/bundle.py
    manifest = verify_bundle(bundle_dir)
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
    # Input first (cheap), then the base model, then the expensive part.
    test = read_arena_csv(test_csv, kind="test", max_bad_fraction=1.0)
    check_base_model(base_dir, manifest, verify_hash=not args.skip_base_hash)
    settings = apply_options(read_prediction_settings(bundle_dir), args)
    devices = _parse_devices(args.devices)
    temperature = float(_bundle_value(bundle_dir, "calibration.json", "temperature"))
    prior = _bundle_value(bundle_dir, "class_prior.json", "prior")
    rejected_path = Path(args.rejected) if args.rejected else out.with_name(out.stem + ".rejected.csv")
    start = time.perf_counter()
    probs = predict_frame_probabilities(
        settings.model,
        settings.prompt,
        adapter_dirs(bundle_dir),
        test.frame,
        batch_size=settings.batch_size,
        tta_swap=settings.tta_swap,
        base_model=str(base_dir),
        temperature=temperature,
        devices=devices,
        progress=args.progress,
    )
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
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pref_core.data.arena import DataValidationError

    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except DataValidationError as err:  # file-level problems only (bad rows get the prior): one line
        print(f"error: {' '.join([err.headline, *map(str, err.problems)])}", file=sys.stderr)
        return 2
    except (UserError, OSError) as err:
        if isinstance(err, OSError) and err.strerror:
            err = f"{err.filename + ': ' if err.filename else ''}{err.strerror.lower()}"
        print(f"error: {err}", file=sys.stderr)
        return 2
    per_1000 = summary["seconds"] / max(summary["predicted"], 1) * 1000
    print(
        f"wrote {summary['rows']} rows to {summary['out']} ({summary['predicted']} predicted on "
        f"{','.join(summary['devices'])} in {summary['seconds']:.1f} s, {per_1000:.1f} s per 1,000 rows)"
    )
    if summary["rejected"]:
        print(f"{summary['rejected']} rows could not be read and got the class prior; see {summary['rejected_path']}")
    return 0
