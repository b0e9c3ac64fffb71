"""Scores: metrics, calibration, out-of-fold assembly, plots, reference baselines, champion promotion."""
