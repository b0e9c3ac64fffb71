"""Blend members at prediction time: several trained models' fold adapters, each base loaded once.

A registered blend (`arena-pref blend --register`) predicts every member as that member's own `predict` would (its
fold adapters averaged, each calibrated by the member's temperature first), then combines them with the blend's
weights (pref_core.evaluate.blend.apply). Members trained over the same base weights share one load of it:
`group_members` puts together members whose base has the same identity (`base_identity` of its fingerprint) and
loads the same way (dtype, quantization, attention); `load_preference_members` attaches every adapter of a group
to that one base, and the head switches with the member (a label-token member and a classifier member can share
a base).

Pure (torch, transformers, peft, numpy): the registered pyfunc and the Kaggle bundle's predict.py both call
`predict_members`, with the model sections read by pydantic or as plain namespaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

# A registered blend's bundle (and its Kaggle bundle): blend.json (method, member names in order, final parameters)
# beside members/<name>/, one folder per member as its own registered version wrote it.
BLEND_FILE = "blend.json"
MEMBERS_DIR = "members"


@dataclass
class MemberModel:
    """What predicting one blend member needs: its sections as trained, its adapters and where its base is."""

    name: str
    model: Any  # the member's model section (head, label_tokens, dtype, quantization, ...)
    prompt: Any  # the member's prompt section
    tta_swap: bool  # its train.tta_swap
    batch_size: int  # its train.eval_batch_size
    temperature: float  # its OOF calibration, applied to each fold's probabilities before the mean
    adapter_dirs: list = field(default_factory=list)  # its fold adapters (or one averaged adapter)
    base: str = ""  # where its base loads from on this machine
    base_key: str = ""  # the identity of its base weights (`base_identity`)


def base_identity(fingerprint: dict) -> str:
    """Which base weights a fingerprint (pref_core.model.fingerprint.fingerprint_base) names: a local folder by its
    content hash (the same weights in two folders are one base), a Hub model by id and commit."""
    if fingerprint.get("kind") == "local" and fingerprint.get("content_sha256"):
        return f"sha256:{fingerprint['content_sha256']}"
    revision = fingerprint.get("commit") or fingerprint.get("revision") or "main"
    return f"{fingerprint.get('name_or_path')}@{revision}"


def _load_key(member: MemberModel) -> tuple:
    model = member.model
    return (member.base_key, str(model.dtype), str(model.quantization), str(getattr(model, "attn_implementation", "")))


def group_members(members: Sequence[MemberModel]) -> list[list[int]]:
    """Indices of the members that share one base load, groups in the order their first member appears."""
    groups: dict[tuple, list[int]] = {}
    for j, member in enumerate(members):
        groups.setdefault(_load_key(member), []).append(j)
    return list(groups.values())


def _group_on_device(specs, encoded, base, device, progress: bool, num_threads: Optional[int] = None):
    """Per member of one group, per adapter, the (n, 3) probabilities of its rows; one base load on `device`.

    specs[j] = (model section, adapter dirs, batch size, pad token id); encoded[j] = (input_ids, input_ids_swap)."""
    import torch

    from pref_core.model.preference import load_preference_members, unwrap_preference_model
    from pref_core.predict.inference import predict_token_ids

    if num_threads:
        torch.set_num_threads(num_threads)
    model, names, heads = load_preference_members(
        [(section, dirs) for section, dirs, _, _ in specs], name_or_path=base, device=device
    )
    inner = unwrap_preference_model(model)
    outputs = []
    for (_, _, batch_size, pad_token_id), (ids, ids_swap), member_names, head in zip(specs, encoded, names, heads):
        inner.use_head(head["head"], head.get("label_token_ids"))
        per_adapter = []
        for name in member_names:
            model.set_adapter(name)  # LoRA weights and the classifier head (modules_to_save) switch together
            per_adapter.append(
                predict_token_ids(
                    model, ids, ids_swap, batch_size=batch_size, pad_token_id=pad_token_id, progress=progress
                )
            )
        outputs.append(per_adapter)
    return outputs


def _take(rows, index):
    return None if rows is None else [rows[i] for i in index]


def _group_probabilities(specs, encoded, base, devices, progress: bool):
    """`_group_on_device` on one device in this process, or the rows split over several devices (one spawned
    worker each, rows dealt longest first by pref_core.predict.ensemble.split_rows) and merged back in order."""
    if not devices or len(devices) == 1:
        return _group_on_device(specs, encoded, base, devices[0] if devices else None, progress)
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from pref_core.predict.ensemble import split_rows

    n = len(encoded[0][0])
    lengths = [max(len(ids[i]) for ids, _ in encoded) for i in range(n)]
    shares = split_rows(lengths, len(devices))
    n_cpu = sum(1 for d in devices if str(d).startswith("cpu"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // n_cpu) if n_cpu else None
    merged = [[np.empty((n, 3)) for _ in spec[1]] for spec in specs]
    # spawn, never fork: a forked CUDA context (or a forked OpenMP pool) is unusable in the child.
    with ProcessPoolExecutor(max_workers=len(devices), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(
                _group_on_device,
                specs,
                [(_take(ids, share), _take(ids_swap, share)) for ids, ids_swap in encoded],
                base,
                device,
                False,
                threads if str(device).startswith("cpu") else None,
            )
            for device, share in zip(devices, shares)
        ]
        for share, future in zip(shares, futures):
            for target, part in zip(merged, future.result()):
                for adapter_target, adapter_part in zip(target, part):
                    adapter_target[share] = adapter_part
    return merged


def predict_members(
    members: Sequence[MemberModel], frame, *, devices: Optional[Sequence[str]] = None, progress: bool = False
) -> list[np.ndarray]:
    """Each member's (n, 3) probabilities of a validated frame (turn lists), as its own `predict` gives them: its
    fold adapters averaged, each calibrated by its temperature first. Members of one group (`group_members`) share
    one base load; `devices` as in pref_core.predict.ensemble.predict_fold_probabilities."""
    from transformers import AutoTokenizer

    from pref_core.predict.ensemble import average_probabilities, encode_frame

    specs, encoded = [], []
    for member in members:
        tokenizer = AutoTokenizer.from_pretrained(Path(member.adapter_dirs[0]))
        encoded.append(encode_frame(frame, tokenizer, member.prompt, with_swap=member.tta_swap))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        specs.append((member.model, [Path(d) for d in member.adapter_dirs], member.batch_size, pad))
    out: list[Optional[np.ndarray]] = [None] * len(members)
    for group in group_members(members):
        outputs = _group_probabilities(
            [specs[j] for j in group], [encoded[j] for j in group], members[group[0]].base, devices, progress
        )
        for j, per_adapter in zip(group, outputs):
            out[j] = average_probabilities(per_adapter, members[j].temperature)
    return out  # type: ignore[return-value]


def read_blend_spec(folder) -> Optional[dict]:
    """A bundle's BLEND_FILE (method, members in order, final_params), or None when the bundle is one model."""
    import json

    path = Path(folder) / BLEND_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def blend_members_probabilities(spec: dict, member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """(n, 3) the blend of the members' probabilities (given in spec["members"] order) by its final parameters."""
    from pref_core.evaluate.blend import apply

    return apply(spec["final_params"], list(member_probs))
