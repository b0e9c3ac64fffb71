"""The offline Kaggle bundle: its manifest, checks and `predict.py` command."""
