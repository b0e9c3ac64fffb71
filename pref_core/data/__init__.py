"""Rows: labels and columns, ingest and validation of arena CSVs, extra pairs, teacher files, synthetic data, folds
and one fold's rows."""
