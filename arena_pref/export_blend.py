"""`arena-pref export` of a registered blend: every member's adapters, each base listed once in the manifest.

Layout (beside what every bundle holds: predict.py, README.md, manifest.json, class_prior.json, pref_core/)::

    blend.json                 method, members in order, the final blend parameters
    postprocess.json           rules learned on the blend's OOF rows (when the blend learned any)
    members/<name>/            each member: config.yaml, calibration.json, base_model.json, label_tokens.json,
                               adapters/fold_<k>/ (or adapters/average/ with --folds average)

manifest.json lists every base (`bases`: its fingerprint, what the export could describe of it, the members over
it); predict.py takes one --base-model folder per base, comma-separated in that order, and loads each base once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional


def write_blend_bundle(registered: Path, out: Path, model_uri: str, folds: str, base_dir: Optional[Path]) -> Path:
    """The offline bundle of a registered blend's folder `registered` (downloaded by export_bundle) at `out`."""
    from arena_pref.export import ExportError, _class_prior, _copy_code, _describe_base
    from arena_pref.tasks.pyfunc_model import read_bundle
    from pref_core.evaluate.postprocess import RULES_FILE
    from pref_core.kaggle.bundle import BASE_MODEL_DIR, write_manifest
    from pref_core.model.averaging import average_adapters
    from pref_core.predict.members import BLEND_FILE, MEMBERS_DIR, base_identity, read_blend_spec
    from pref_core.publish import publishing_new_dir

    spec = read_blend_spec(registered)
    bases: dict[str, dict] = {}
    members = []
    for name in spec["members"]:
        config, base, adapters, temperature = read_bundle(registered / MEMBERS_DIR / name)
        bases.setdefault(base_identity(base), {"base_model": base, "members": []})["members"].append(name)
        members.append((name, config, adapters, temperature))
    if base_dir is not None and len(bases) > 1:
        raise ExportError(
            f"--base-model-dir {base_dir}: this blend's members use {len(bases)} bases; leave it out and attach "
            "each base as its own Kaggle input"
        )
    with publishing_new_dir(out, "--out", prefix=f".{out.name}.partial-") as staging:
        for name, config, adapters, _ in members:
            source, dest = registered / MEMBERS_DIR / name, staging / MEMBERS_DIR / name
            (dest / "adapters").mkdir(parents=True)
            if folds == "average":
                average_adapters(adapters, dest / "adapters" / "average")
            else:
                for adapter in adapters:
                    shutil.copytree(adapter, dest / "adapters" / adapter.name)
            for file in ("config.yaml", "base_model.json", "calibration.json"):
                shutil.copy2(source / file, dest / file)
            head = json.loads((adapters[0] / "preference_head.json").read_text())
            (dest / "label_tokens.json").write_text(
                json.dumps(
                    {
                        "head": head["head"],
                        "label_tokens": list(config.model.label_tokens),
                        "label_token_ids": head.get("label_token_ids"),
                    },
                    indent=2,
                )
            )
        shutil.copy2(registered / BLEND_FILE, staging / BLEND_FILE)
        if (registered / RULES_FILE).is_file():
            shutil.copy2(registered / RULES_FILE, staging / RULES_FILE)
        (staging / "class_prior.json").write_text(json.dumps(_class_prior(registered), indent=2))
        _copy_code(staging)
        if base_dir is not None:
            shutil.copytree(base_dir, staging / BASE_MODEL_DIR)
        listed = [
            {
                "base_model": entry["base_model"],
                "base_description": _describe_base(base_dir, entry["base_model"]["name_or_path"]),
                "members": entry["members"],
            }
            for entry in bases.values()
        ]
        write_blend_readme(staging, spec, listed, folds, has_base=base_dir is not None)
        write_manifest(
            staging,
            listed[0]["base_model"],
            listed[0]["base_description"],
            {
                "kind": "blend",
                "model_uri": model_uri,
                "folds": folds,
                "method": spec["method"],
                "bases": listed,
                "members": [
                    {"name": name, "n_fold_adapters": len(adapters), "temperature": temperature}
                    for name, _, adapters, temperature in members
                ],
            },
        )
    return out


def _base_in_words(entry: dict) -> str:
    base = entry["base_model"]
    revision = base.get("commit") or base.get("revision")
    at = f" at revision {revision}" if revision else ""
    return f"`{base.get('name_or_path')}`{at} (members {', '.join(entry['members'])})"


def write_blend_readme(dest: Path, spec: dict, bases: list[dict], folds: str, has_base: bool) -> None:
    names = ", ".join(spec["members"])
    listed = "\n".join(f"   {i}. {_base_in_words(b)}" for i, b in enumerate(bases, start=1))
    base_line = (
        "The base weights are inside (`base_model/`): `--base-model` may be omitted."
        if has_base
        else "Attach each base model below as a Kaggle input (its config.json, tokenizer and *.safetensors) and pass "
        "their folders to `--base-model`, comma-separated, in this order:\n" + listed
    )
    adapters = "each member's fold adapters" if folds == "ensemble" else "one averaged adapter per member"
    text = f"""# arena-pref offline bundle: a blend

Predicts `winner_model_a, winner_model_b, winner_tie` for a Kaggle LMSYS-format `test.csv` with a blend
({spec["method"]}) of {len(spec["members"])} models ({names}), {adapters}, each base loaded once, probabilities
combined with the blend's final weights (`blend.json`), then the rules in `postprocess.json` when present.
Written by `arena-pref export`; `manifest.json` lists every base and the sha256 of every file, checked at every run.

## On Kaggle
1. Upload this folder as a Kaggle dataset and add it to the notebook (Add input).
2. {base_line}
3. Internet off is fine. The notebook needs torch, transformers, peft, pandas, numpy (what the Kaggle GPU image has).
4. In a cell:

```
!python /kaggle/input/<this-dataset>/predict.py --base-model /kaggle/input/<base-model-folder> \\
    --test-csv /kaggle/input/<competition>/test.csv --out /kaggle/working/submission.csv
```

Options and checks are those of a single model's bundle (`python predict.py --help`); `--tta-swap`,
`--max-length`, `--quantization` and `--batch-size` apply to every member.
"""
    (dest / "README.md").write_text(text, encoding="utf-8")
