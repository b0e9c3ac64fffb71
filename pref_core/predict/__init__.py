"""Predictions: batched inference with swap TTA, fold ensembles over one base, the submission."""
