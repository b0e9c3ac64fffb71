"""The registered arena-pref model: an MLflow `pyfunc` over a bundle of fold adapters.

Bundle layout (logged as the artifact ``bundle``):
  config.yaml            the resolved RunConfig of the CV run
  base_model.json        where the base weights come from (hub id + revision, or local path + fingerprint);
                         the base weights themselves are not copied
  calibration.json       the temperature fit on the OOF predictions (1.0 when calibration.method=none)
  postprocess.json       rules for rows the model cannot judge, learned on OOF (absent: postprocess.mode=off)
  adapters/fold_<k>/     one LoRA adapter per fold (safetensors, adapter config, tokenizer files, head)

A registered blend (`arena-pref blend --register`) holds blend.json (method, members in order, final weights),
members/<name>/ (each member's bundle as above, without its own postprocess.json), class_prior.json and the
postprocess.json learned on the blend's OOF rows; `predict` runs every member (each base loaded once) and blends.

`predict(df)` takes a Kaggle-format test frame and returns
``id, winner_model_a, winner_model_b, winner_tie``, averaging the folds (and the
a/b swap when `train.tta_swap` was set). We log adapters, never a merged
`transformers` model: `mlflow.transformers.log_model` of a PEFT model over a
local base silently saves random base weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import AnyType

from pref_core.data.labels import LABEL_COLUMNS, TURN_COLUMNS

BUNDLE_ARTIFACT = "bundle"
# Kaggle test.csv in, sample_submission.csv out. Kaggle ids are integers, other files' ids strings: `id`
# takes either (AnyType), and the output keeps the input's ids as they came.
MODEL_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(AnyType(), "id"), *(ColSpec("string", name) for name in TURN_COLUMNS)]),
    outputs=Schema([ColSpec(AnyType(), "id"), *(ColSpec("double", name) for name in LABEL_COLUMNS)]),
)


def read_bundle(bundle: str | Path):
    """(config, base model location, adapter folders in fold order, temperature) of a bundle folder."""
    from pref_core.config.loading import load_config

    bundle = Path(bundle)
    config = load_config(bundle / "config.yaml")
    base = json.loads((bundle / "base_model.json").read_text())
    adapters = sorted((bundle / "adapters").iterdir(), key=lambda p: int(p.name.split("_")[-1]))
    temperature = float(json.loads((bundle / "calibration.json").read_text())["temperature"])
    return config, base, adapters, temperature


def predict_parsed(
    bundle: str | Path,
    frame: pd.DataFrame,
    progress: bool = False,
    base_model: str | None = None,
    max_batch_tokens: int | None = None,
    dtype: str | None = None,
) -> pd.DataFrame:
    """Predict a validated frame (turn lists, as pref_core.data.arena returns it): average the fold adapters (a
    blend: each member's, then the blend's weights), then the post-processing rules learned on OOF.
    `base_model`: where to load the base from instead of the bundle's record (a checked local copy);
    `max_batch_tokens`: token-budget batches; `dtype`: instead of the run's model.dtype (single models; a blend
    predicts its members as they were registered)."""
    from pref_core.predict.ensemble import predict_frame_probabilities
    from pref_core.predict.members import blend_members_probabilities, predict_members, read_blend_spec

    spec = read_blend_spec(bundle)
    if spec is not None:
        probs = blend_members_probabilities(
            spec, predict_members(blend_member_models(bundle, spec, base_model), frame, progress=progress)
        )
    else:
        config, base, adapters, temperature = read_bundle(bundle)
        model_config = config.model if dtype is None else config.model.model_copy(update={"dtype": dtype})
        probs = predict_frame_probabilities(
            model_config,
            config.prompt,
            adapters,
            frame,
            batch_size=config.train.eval_batch_size,
            tta_swap=config.train.tta_swap,
            base_model=base_model or base["name_or_path"],
            temperature=temperature,
            progress=progress,
            max_batch_tokens=max_batch_tokens,
        )
    probs = postprocess_rows(bundle, frame, probs)
    out = pd.DataFrame(probs, columns=list(LABEL_COLUMNS))
    out.insert(0, "id", frame["id"].astype(str).to_numpy())
    return out


def blend_member_models(bundle: str | Path, spec: dict, base_model: str | None = None) -> list:
    """A registered blend's members (pref_core.predict.members.MemberModel), read from members/<name>/ in the
    blend's order; `base_model` (a checked local copy) replaces the recorded base of every member (one base)."""
    from pref_core.predict.members import MEMBERS_DIR, MemberModel, base_identity

    members = []
    for name in spec["members"]:
        config, base, adapters, temperature = read_bundle(Path(bundle) / MEMBERS_DIR / name)
        members.append(
            MemberModel(
                name=name,
                model=config.model,
                prompt=config.prompt,
                tta_swap=config.train.tta_swap,
                batch_size=config.train.eval_batch_size,
                temperature=temperature,
                adapter_dirs=adapters,
                base=base_model or base["name_or_path"],
                base_key=base_identity(base),
            )
        )
    return members


def postprocess_rows(bundle: str | Path, frame: pd.DataFrame, probs):
    """The bundle's postprocess.json rules applied to the predicted rows (unchanged without the file)."""
    from pref_core.evaluate.postprocess import apply_to_rows, read_rules

    rules = read_rules(bundle)
    return probs if rules is None else apply_to_rows(rules, frame["response_a"], frame["response_b"], probs)


def predict_frame(bundle: str | Path, raw: pd.DataFrame, progress: bool = False) -> pd.DataFrame:
    """Validate a raw Kaggle test frame (JSON cells as strings), then predict it."""
    from pref_core.data.arena import validate_arena_frame

    frame = validate_arena_frame(raw, kind="test", max_bad_fraction=0.0, source="model input").frame
    out = predict_parsed(bundle, frame, progress=progress)
    out["id"] = raw["id"].to_numpy()  # every row was kept, in order: give the ids back with their own type
    return out


class ArenaPrefModel(mlflow.pyfunc.PythonModel):
    """Fold-ensemble preference model; see the module docstring for the bundle layout."""

    def load_context(self, context):
        self.bundle = Path(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return predict_frame(self.bundle, model_input)
