"""arena-pref core library: data, prompts, tokenization, folds, models, training, inference, metrics.

Pure library code: it imports neither prefect nor mlflow and hard-codes no paths.
"""

__version__ = "0.1.0"
