"""Content hashes, defined once: of a file's bytes, and of a JSON-able value (the keys of caches and runs).

Standard library only: the Kaggle bundle's `predict.py` hashes its files with it before pandas is imported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Union


def hash_file(path: Union[str, Path], chunk_size: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes, read in chunks (the 184 MB train.csv never sits in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def hash_json(obj) -> str:
    """16 hex digits of the sha256 of `obj` as sorted-key JSON (non-JSON values by their str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
