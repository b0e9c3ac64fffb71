"""What a trained fold leaves behind: the fold folder's layout and `FoldResult`, the one typed result of a fold.

The fold driver (pref_core.train.fold) returns it; a fold process of a multi-process fold writes it for its
caller; the fit-fold task keeps it in the fold folder as the mark of a finished fold (a rerun reuses the fold)
and returns it; the train-fold flow returns it. `save` and `load` are its only serialisation.

Layout of a fold folder::

    checkpoints/checkpoint-<step>/   Trainer checkpoints (adapter, optimizer, scheduler, RNG, state)
    adapter/                         final adapter + tokenizer (pref_core.model.preference.save_adapter)
    val_predictions.parquet          id, winner_model_a, winner_model_b, winner_tie, label
    test_predictions.parquet         id, winner_model_a, winner_model_b, winner_tie (when a test set is given:
                                     predicted by the trained model in memory, no reload of the base)
    train_predictions.parquet        the same for the fold's training rows (train.predict_train_rows)
    result.json                      the FoldResult of the finished fold

Standard library only: the tasks and the CLI read it without torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
VAL_PREDICTIONS_FILE = "val_predictions.parquet"
TEST_PREDICTIONS_FILE = "test_predictions.parquet"
TRAIN_PREDICTIONS_FILE = "train_predictions.parquet"
RESULT_FILE = "result.json"

_PATHS = ("fold_dir", "adapter_dir", "val_predictions", "test_predictions", "train_predictions")
# Keys of result.json files written before FoldResult was the one shape (the fold's index and MLflow run id,
# which its caller knows): read and dropped, so folds finished by an earlier version are still reused.
_OLD_KEYS = ("fold", "mlflow_run_id")


@dataclass
class FoldResult:
    """What a trained fold leaves behind (paths, never models: they are handed between processes).

    `metrics`: val_log_loss / val_accuracy of the saved validation predictions (with train.tta_swap,
    of the averaged views; the plain view's loss is val_log_loss_no_tta), train_loss (mean over the
    fold's steps; after a resume, over the steps whose loss was logged: the Trainer does not
    checkpoint the running loss; with distill.teacher_csv, of the distillation objective),
    train_runtime_s (this call only), train_samples_per_second, train_tokens_per_second and global_step.
    """

    fold_dir: Path
    adapter_dir: Path
    val_predictions: Path
    metrics: dict[str, float] = field(default_factory=dict)
    test_predictions: Optional[Path] = None  # when a test set was given
    train_predictions: Optional[Path] = None  # with train.predict_train_rows
    resumed_from: Optional[str] = None  # the checkpoint this run of the fold started from
    reused: bool = False  # finished by an earlier run and found in its folder, not trained now

    def save(self, path: Union[str, Path]) -> Path:
        """Write the result as JSON (paths as strings) to `path`."""
        data: dict[str, Any] = asdict(self)
        for key in _PATHS:
            data[key] = None if data[key] is None else str(data[key])
        path = Path(path)
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "FoldResult":
        """The result `save` wrote to `path` (also a result.json of an earlier version)."""
        data = {k: v for k, v in json.loads(Path(path).read_text(encoding="utf-8")).items() if k not in _OLD_KEYS}
        for key in _PATHS:
            if data.get(key) is not None:
                data[key] = Path(data[key])
        return cls(**data)
