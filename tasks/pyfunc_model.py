"""The registered arena-pref model: an MLflow `pyfunc` over a bundle of fold adapters.

Bundle layout (logged as the artifact ``bundle``):
  config.yaml            the resolved RunConfig of the CV run
  base_model.json        where the base weights come from (hub id + revision, or local path + fingerprint);
                         the base weights themselves are not copied
  calibration.json       the temperature fit on the OOF predictions (1.0 when calibration.method=none)
  adapters/fold_<k>/     one LoRA adapter per fold (safetensors, adapter config, tokenizer files, head)

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
    """Predict a validated frame (turn lists, as pref_core.data.arena returns it): average the fold adapters.
    `base_model`: where to load the base from instead of the bundle's record (a checked local copy);
    `max_batch_tokens`: token-budget batches; `dtype`: instead of the run's model.dtype."""
    from pref_core.predict.ensemble import predict_frame_probabilities

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
    out = pd.DataFrame(probs, columns=list(LABEL_COLUMNS))
    out.insert(0, "id", frame["id"].astype(str).to_numpy())
    return out


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
