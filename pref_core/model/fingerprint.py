"""What a registered model records about its base model, and where to find that base on another machine.

`fingerprint_base` records a Hub base as (id, revision, commit) and a local folder as its path plus a
content hash (`hash_folder`); `locate_base` finds weights that match the fingerprint (the recorded
folder, the Hub commit, or a ``--base-model PATH`` copy), and `check_base_available` is its cheap part
for a command's preflight. Failures are `BaseModelError`s of one line naming ``--base-model PATH``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from pref_core.model.source import (
    COMMIT_SHA,
    CONFIG_FILE,
    BaseModelError,
    download_base_model,
    hub_reachable,
    hub_reference,
    is_local_reference,
)

if TYPE_CHECKING:
    from pref_core.config.schema import ModelConfig


def hash_folder(folder: Union[str, Path], chunk_size: int = 1 << 20) -> str:
    """sha256 over the relative paths and bytes of every file under `folder` (hidden files excluded)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_size):
                digest.update(chunk)
    return digest.hexdigest()


def fingerprint_base(name_or_path: str, revision: Optional[str] = None) -> dict:
    """What a registered model records about its base, to find the same weights on another machine.

    A Hub base (an id, or its cache snapshot folder) -> ``{"kind": "hub", "name_or_path": id, "revision",
    "commit"}``; a local folder -> ``{"kind": "local", "name_or_path": path, "content_sha256"}`` (hash_folder).
    """
    reference = hub_reference(name_or_path)
    if reference is not None:
        repo_id, commit = reference
        return {"kind": "hub", "name_or_path": repo_id, "revision": revision, "commit": commit}
    if not is_local_reference(name_or_path):
        commit = revision if revision and COMMIT_SHA.match(revision) else None
        return {"kind": "hub", "name_or_path": name_or_path, "revision": revision, "commit": commit}
    return {
        "kind": "local",
        "name_or_path": str(Path(name_or_path).resolve()),
        "revision": None,
        "content_sha256": hash_folder(name_or_path),
    }


def pin_base(model: ModelConfig, fingerprint: dict) -> ModelConfig:
    """The model section naming the fingerprinted base: a Hub base by id at the commit it resolved to (not this
    machine's cache folder), a folder by its path; no tiny-model or GGUF build left to redo."""
    update = {"name_or_path": fingerprint["name_or_path"], "tiny": None, "gguf": None}
    if fingerprint["kind"] == "hub" and fingerprint.get("commit"):
        update["revision"] = fingerprint["commit"]
    return model.model_copy(update=update)


def locate_base(fingerprint: dict, override: Optional[str] = None) -> str:
    """Where to load a registered model's base from on this machine, checked against its fingerprint.

    `override` (``--base-model PATH``): a local copy, which must hash to the recorded content (a local base)
    or be the recorded commit's snapshot when it is one (a Hub base). Without it: the recorded folder (same
    hash), or the Hub id at the recorded commit (cache or download). Raises `BaseModelError` (one line)
    naming what is missing and ``--base-model PATH``.
    """
    kind, recorded = fingerprint.get("kind"), fingerprint["name_or_path"]
    expected = fingerprint.get("content_sha256")
    described = (
        f"the local folder {recorded} (content sha256 {expected[:12]})"
        if kind == "local"
        else f"{recorded} at commit {fingerprint.get('commit') or fingerprint.get('revision') or 'main'}"
    )
    if override is not None:
        folder = Path(override).expanduser()
        if not (folder / CONFIG_FILE).is_file():
            raise BaseModelError(
                f"--base-model {override}: no {CONFIG_FILE} there; point at a folder holding a copy "
                f"of the base model, {described}"
            )
        if kind == "local" and hash_folder(folder) != expected:
            raise BaseModelError(
                f"--base-model {override}: its content (sha256 {hash_folder(folder)[:12]}) differs from the base the "
                f"model was trained on, {described}; point at an exact copy of that folder"
            )
        snapshot = hub_reference(folder.resolve())
        if kind == "hub" and snapshot and fingerprint.get("commit") and snapshot[1] != fingerprint["commit"]:
            raise BaseModelError(
                f"--base-model {override}: a snapshot of commit {snapshot[1][:12]}, but the model was trained on "
                f"{described}; `hf download {recorded} --revision {fingerprint['commit']}` and point at that"
            )
        return str(folder)
    if kind == "local":
        if not Path(recorded).is_dir():
            raise BaseModelError(
                f"the registered model's base is {described}, which is not on this machine; pass --base-model PATH "
                "pointing at a copy of it"
            )
        if expected and hash_folder(recorded) != expected:
            raise BaseModelError(
                f"the registered model's base {recorded} changed since training (content sha256 "
                f"{hash_folder(recorded)[:12]}, expected {expected[:12]}); pass --base-model PATH pointing at a copy "
                "of the original"
            )
        return recorded
    if kind == "hub":
        try:
            return download_base_model(recorded, fingerprint.get("commit") or fingerprint.get("revision"))
        except BaseModelError as err:
            raise BaseModelError(f"{err}; or pass --base-model PATH pointing at a local copy of {described}") from None
    return recorded  # a bundle from before fingerprints had a kind: load as recorded


def check_base_available(fingerprint: dict, override: Optional[str] = None) -> None:
    """The cheap part of `locate_base`, for a command's preflight: the override or the recorded folder exists,
    or a Hub base is in the cache or the Hub answers. Content hashes are checked by `locate_base` itself."""
    kind, recorded = fingerprint.get("kind"), fingerprint["name_or_path"]
    if override is not None:
        if not (Path(override).expanduser() / CONFIG_FILE).is_file():
            raise BaseModelError(
                f"--base-model {override}: no {CONFIG_FILE} there; point at a folder holding a copy "
                f"of the base model {recorded}"
            )
        return
    if kind == "local" and not Path(recorded).is_dir():
        sha = (fingerprint.get("content_sha256") or "?")[:12]
        raise BaseModelError(
            f"the registered model's base is the local folder {recorded} (content sha256 {sha}), which is not on "
            "this machine; pass --base-model PATH pointing at a copy of it"
        )
    if kind == "hub":
        from huggingface_hub import constants, try_to_load_from_cache

        revision = fingerprint.get("commit") or fingerprint.get("revision")
        cached = try_to_load_from_cache(recorded, CONFIG_FILE, revision=revision)
        if not isinstance(cached, str) and (constants.is_offline_mode() or not hub_reachable()):
            raise BaseModelError(
                f"the registered model's base {recorded} (commit {revision or 'main'}) is not in the local Hugging "
                f"Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot be used; `hf download {recorded}"
                + (f" --revision {revision}" if revision else "")
                + "` first, or pass --base-model PATH pointing at a "
                "local copy"
            )
