"""arena-pref core library: data, prompts, tokenization, folds, models, training, inference, metrics.

Pure library code: it imports neither prefect nor mlflow and hard-codes no paths.
"""

import logging as _logging

__version__ = "0.1.0"

# bitsandbytes >= 0.50 warns at import on every CPU-only machine that the optional `kernels`
# package (fetched from a hub, which we never reach) is missing; its pure-torch CPU path works.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
