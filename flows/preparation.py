"""Wiring shared by `cv-training` and `train-fold`: the preparation tasks in order.

A fold flow runs the same steps as its parent: on the parent's machine they
are cache hits; on a separate GPU worker they rebuild the same inputs from the
shared data location.
"""

from __future__ import annotations

from arena_pref.tasks import preparation, pseudo_labels
from arena_pref.tasks.preparation import PreparedInputs
from pref_core.config.loading import require_train_csv
from pref_core.config.run_key import compute_run_key, teacher_hashes
from pref_core.config.schema import RunConfig


def prepare_inputs(config: RunConfig) -> PreparedInputs:
    require_train_csv(config)
    train = preparation.ingest(config, "train")
    test = preparation.ingest(config, "test") if config.data.test_csv else None
    extra = preparation.ingest_extra(config, train)
    unlabeled = pseudo_labels.ingest_unlabeled(config, train, extra)
    base_model = preparation.prepare_base_model(config, train)
    run_key = compute_run_key(
        config,
        {
            "train": train.data_hash,
            "test": test.data_hash if test else None,
            "extra": extra.data_hash if extra else None,
            **teacher_hashes(config.distill),
            # Only when set: run keys of runs without unlabelled rows stay what they were.
            **({"unlabeled": unlabeled.data_hash} if unlabeled else {}),
        },
    )
    # Training reads the swapped view for swap augmentation, inference for swap TTA.
    train_swap = config.train.tta_swap or config.train.swap != "none"
    train_tokens = preparation.tokenize_and_cache(config, train, base_model, with_swap=train_swap)
    extra_tokens = preparation.tokenize_and_cache(config, extra, base_model, with_swap=train_swap) if extra else None
    unlabeled_tokens = (
        preparation.tokenize_and_cache(config, unlabeled, base_model, with_swap=train_swap) if unlabeled else None
    )
    test_tokens = (
        preparation.tokenize_and_cache(config, test, base_model, with_swap=config.train.tta_swap) if test else None
    )
    folds_path = preparation.write_fold_table(config, train, run_key)
    return PreparedInputs(
        run_key=run_key,
        base_model=base_model,
        tokenizer_hash=train_tokens.tokenizer_hash,
        train=train,
        train_tokens=train_tokens,
        folds_path=folds_path,
        test=test,
        test_tokens=test_tokens,
        extra=extra,
        extra_tokens=extra_tokens,
        unlabeled=unlabeled,
        unlabeled_tokens=unlabeled_tokens,
    )
