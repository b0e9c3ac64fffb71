"""`arena-pref export MODEL_URI --out DIR`: a registered model as a self-contained offline bundle (a Kaggle dataset).

The bundle holds the fold adapters (or one averaged adapter), the resolved config, calibration, class prior,
label token ids, the inference code (pref_core's pure modules, copied verbatim) and a `predict.py` that
needs only torch, transformers, peft, pandas and numpy; see pref_core/kaggle/bundle.py for the layout.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from pref_core.errors import UserError

PREDICT_PY = '''"""Kaggle submission from this arena-pref bundle:
python predict.py --base-model PATH --test-csv test.csv --out submission.csv

Needs torch, transformers, peft, pandas, numpy (what a Kaggle GPU image has). See README.md.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bundled pref_core, not an installed one

from pref_core.kaggle.bundle import main  # noqa: E402

if __name__ == "__main__":  # worker processes (one per device) re-import this file
    sys.exit(main())
'''


class ExportError(UserError, ValueError):
    """A user error of `arena-pref export` (one line, exit 2)."""


def _copy_code(dest: Path) -> None:
    """pref_core's modules that predict.py imports (CODE_MODULES), each with its subpackage's __init__.py."""
    import pref_core
    from pref_core.kaggle.bundle import CODE_MODULES

    source = Path(pref_core.__file__).resolve().parent
    for name in CODE_MODULES:
        module = Path(f"{name}.py")
        for relative in (module, module.parent / "__init__.py"):  # pref_core/__init__.py for a top-level module
            (dest / "pref_core" / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, dest / "pref_core" / relative)
    (dest / "predict.py").write_text(PREDICT_PY, encoding="utf-8")


def _class_prior(registered: Path) -> dict:
    path = registered / "class_prior.json"
    if path.is_file():
        return json.loads(path.read_text())
    from pref_core.data.labels import LABEL_COLUMNS

    # Versions registered before class_prior.json existed: a uniform prior, said so in the file.
    return {
        "columns": list(LABEL_COLUMNS),
        "prior": [1 / 3] * 3,
        "n_train": None,
        "note": "uniform: the registered version did not record its training class shares",
    }


def _describe_base(base_dir: Optional[Path], name_or_path: str) -> Optional[dict]:
    """Architecture and content hash of the base, where a local copy is at hand (else None: predict.py then
    checks that the folder it is given has a config.json, nothing more)."""
    from pref_core.kaggle.bundle import describe_base_model

    for candidate in (base_dir, Path(name_or_path)):
        if candidate is not None and (candidate / "config.json").is_file():
            return describe_base_model(candidate)
    return None


def write_readme(dest: Path, manifest_base: dict, folds: str, n_adapters: int, has_base: bool) -> None:
    name = manifest_base.get("name_or_path")
    revision = manifest_base.get("revision") or manifest_base.get("commit")
    kind = (
        f"{n_adapters} fold adapters, probabilities averaged"
        if folds == "ensemble"
        else "one adapter averaged from the folds (one base pass per row instead of one per fold)"
    )
    base_line = (
        "The base weights are inside (`base_model/`): `--base-model` may be omitted."
        if has_base
        else f"Attach the base model `{name}`{f' at revision {revision}' if revision else ''} as a second input "
        "(a Kaggle model or dataset holding its config.json, tokenizer and *.safetensors)."
    )
    text = f"""# arena-pref offline bundle

Predicts `winner_model_a, winner_model_b, winner_tie` for a Kaggle LMSYS-format `test.csv`
with {kind}. Written by `arena-pref export`; `manifest.json` lists the base model and the sha256 of
every file, checked at every run.

## On Kaggle
1. Upload this folder as a Kaggle dataset and add it to the notebook (Add input).
2. {base_line}
3. Internet off is fine: nothing is downloaded. The notebook needs only what the Kaggle GPU image has
   (torch, transformers, peft, pandas, numpy; `bitsandbytes` only for `--quantization 8bit/4bit`).
4. In a cell:

```
!python /kaggle/input/<this-dataset>/predict.py \\
    --base-model /kaggle/input/<base-model-folder> \\
    --test-csv /kaggle/input/<competition>/test.csv --out /kaggle/working/submission.csv
```

## What it checks
- every bundle file against `manifest.json` (a corrupted or swapped adapter stops the run);
- the base model's architecture (and the content hash of its weights, unless `--skip-base-hash`);
- the test CSV with the same validator as `arena-pref validate --kind test`. A row it cannot read gets the
  training class prior (`class_prior.json`) and a line in `<out>.rejected.csv`; the submission has every
  test id exactly once and rows summing to 1.
Each problem is one line on stderr and exit code 2.

## Options
- `--devices auto|cpu|cuda:0,cuda:1|cpu,cpu`: one worker process per device, each loads the base once and
  predicts its share of the rows (auto: every visible GPU, e.g. both T4s).
- `--tta-swap config|on|off`: also read each row with responses a and b exchanged (2x the time).
- `--max-length N`: tokens per row (default: the training `prompt.max_length`).
- `--quantization config|none|8bit|4bit`: load the base with bitsandbytes (CUDA).
- `--batch-size N`, `--skip-base-hash`, `--progress`, `--rejected PATH`.

## Expected time
Not measured on a GPU yet. `predict.py` prints the measured seconds per 1,000 rows at the end of every run;
time a few hundred rows first (a `test.csv` cut to its first lines) and scale: rows are sorted by length
into batches, so the time grows with the total token count and with the number of folds (`ensemble`) or
not (`average`), and halves without swap TTA.
"""
    (dest / "README.md").write_text(text, encoding="utf-8")


def export_bundle(
    model_uri: str,
    out: str | Path,
    tracking_uri: Optional[str] = None,
    folds: str = "ensemble",
    base_model_dir: Optional[str | Path] = None,
) -> Path:
    """Download `model_uri`'s registered bundle and write the offline bundle to `out` (must not exist or be empty)."""
    from arena_pref.tasks.prediction import download_bundle
    from arena_pref.tasks.pyfunc_model import read_bundle
    from arena_pref.tasks.store import default_tracking_uri
    from pref_core.evaluate.postprocess import RULES_FILE
    from pref_core.kaggle.bundle import BASE_MODEL_DIR, write_manifest
    from pref_core.model.averaging import average_adapters
    from pref_core.predict.members import read_blend_spec
    from pref_core.publish import publishing_new_dir

    if folds not in ("ensemble", "average"):
        raise ExportError(f"--folds {folds!r}: use ensemble or average")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out}: exists and is not empty; choose a new folder or remove it")
    base_dir = Path(base_model_dir) if base_model_dir else None
    if base_dir is not None and not (base_dir / "config.json").is_file():
        raise ExportError(f"--base-model-dir {base_dir}: no config.json there; pass the base model's folder")
    with tempfile.TemporaryDirectory() as tmp:
        registered = download_bundle(model_uri, tracking_uri or default_tracking_uri(), Path(tmp))
        if read_blend_spec(registered) is not None:  # a registered blend: every member, each base listed once
            from arena_pref.export_blend import write_blend_bundle

            return write_blend_bundle(registered, out, model_uri, folds, base_dir)
        config, base, adapters, temperature = read_bundle(registered)
        with publishing_new_dir(out, "--out", prefix=f".{out.name}.partial-") as staging:
            (staging / "adapters").mkdir(parents=True)
            if folds == "average":
                average_adapters(adapters, staging / "adapters" / "average")
            else:
                for adapter in adapters:
                    shutil.copytree(adapter, staging / "adapters" / adapter.name)
            for name in ("config.yaml", "base_model.json", "calibration.json"):
                shutil.copy2(registered / name, staging / name)
            if (registered / RULES_FILE).is_file():  # post-processing learned on OOF (absent: postprocess.mode=off)
                shutil.copy2(registered / RULES_FILE, staging / RULES_FILE)
            (staging / "class_prior.json").write_text(json.dumps(_class_prior(registered), indent=2))
            head = json.loads((adapters[0] / "preference_head.json").read_text())
            (staging / "label_tokens.json").write_text(
                json.dumps(
                    {
                        "head": head["head"],
                        "label_tokens": list(config.model.label_tokens),
                        "label_token_ids": head.get("label_token_ids"),
                    },
                    indent=2,
                )
            )
            _copy_code(staging)
            if base_dir is not None:
                shutil.copytree(base_dir, staging / BASE_MODEL_DIR)
            write_readme(staging, base, folds, len(adapters), has_base=base_dir is not None)
            write_manifest(
                staging,
                base,
                _describe_base(base_dir, base["name_or_path"]),
                {"model_uri": model_uri, "folds": folds, "n_fold_adapters": len(adapters), "temperature": temperature},
            )
    return out
