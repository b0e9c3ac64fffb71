"""Where the base model comes from, checked before any run starts.

`resolve_base_model` turns model.name_or_path into a `BaseModelSource`: for a Hub id, the config and
tokenizer files at model.revision are fetched into (or found in) the Hugging Face cache and the commit
they resolved to is recorded; for a folder, its config and tokenizer files are checked. Every failure
is a `BaseModelError` of one line that says what is wrong and how to fix it: not found, gated (the
licence page and HF_TOKEN), Hub unreachable (how to pre-download), a folder without a model.

What a registered model records about its base, and finding that base again: `pref_core.model.fingerprint`;
what the config needs from this machine (bitsandbytes, CUDA, flash-attn): `pref_core.train.checks.check_runtime`.

Hub settings (HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME, HF_TOKEN) are the user's: huggingface_hub reads
them from the environment when it is first imported; nothing here sets them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

from pref_core.errors import UserError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
# Any of these makes a loadable tokenizer (fast, sentencepiece or BPE vocab), next to tokenizer_config.json.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer.tiktoken")
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


class BaseModelError(UserError, ValueError):
    """The base model cannot be used as configured; the message is one line with the fix."""


@dataclass(frozen=True)
class BaseModelSource:
    """A resolved base model.

    kind: ``hub`` (name_or_path is a Hub id, `commit` the sha that `revision` resolved to) or ``local``
    (name_or_path is a folder). `files_dir`: the folder holding its config and tokenizer files (the
    cache snapshot for a Hub id).
    """

    kind: str
    name_or_path: str
    revision: Optional[str]
    commit: Optional[str]
    files_dir: str

    def to_dict(self) -> dict:
        return asdict(self)


def is_local_reference(name_or_path: str) -> bool:
    """True when `name_or_path` names a folder (existing, or written like a path) rather than a Hub id."""
    if Path(name_or_path).expanduser().exists():
        return True
    return name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path


def hub_page(repo_id: str) -> str:
    """The model's page on the Hub, where a gated model's licence is accepted."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{repo_id}"


def resolve_base_model(name_or_path: str, revision: Optional[str] = None) -> BaseModelSource:
    """Resolve a Hub id or folder to a `BaseModelSource`, or raise `BaseModelError` (one line)."""
    if is_local_reference(name_or_path):
        return _resolve_folder(name_or_path)
    return _resolve_hub(name_or_path, revision)


def _resolve_folder(name_or_path: str) -> BaseModelSource:
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise BaseModelError(
            f"model.name_or_path: folder {name_or_path} does not exist; give an existing model folder or a "
            "Hugging Face Hub id such as meta-llama/Meta-Llama-3-8B-Instruct"
        )
    if not (folder / CONFIG_FILE).is_file():
        raise BaseModelError(
            f"model.name_or_path: {folder} has no {CONFIG_FILE}, so it is not a Hugging Face model folder; "
            "point at the folder that holds config.json and the weights"
        )
    if not any((folder / name).is_file() for name in (TOKENIZER_CONFIG_FILE, *TOKENIZER_FILES)):
        raise BaseModelError(
            f"model.name_or_path: {folder} has no tokenizer files ({TOKENIZER_CONFIG_FILE}, tokenizer.json or "
            "tokenizer.model); save the tokenizer into the same folder (tokenizer.save_pretrained)"
        )
    return BaseModelSource("local", str(folder.resolve()), None, None, str(folder.resolve()))


def hub_reachable(timeout_s: float = 5.0) -> bool:
    """One request to the Hub endpoint, without retries (huggingface_hub retries a refused connection for
    ~25 s); any HTTP answer counts. Uses huggingface_hub's own session, so proxies apply as they would."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s)
    except Exception as err:  # noqa: BLE001 (connection refused, DNS, timeout, TLS: all mean unreachable)
        logger.info("Hub %s unreachable: %s", constants.ENDPOINT, err)
        return False
    return True


def _resolve_hub(repo_id: str, revision: Optional[str]) -> BaseModelSource:
    from huggingface_hub import constants, hf_hub_download

    at = f" at revision {revision}" if revision else ""
    # Offline (by choice or because the Hub does not answer): the cache alone, at once.
    local_only = constants.is_offline_mode() or not hub_reachable()
    try:
        config_path = Path(hf_hub_download(repo_id, CONFIG_FILE, revision=revision, local_files_only=local_only))
    except Exception as err:  # noqa: BLE001 (every Hub failure becomes one line)
        raise BaseModelError(describe_hub_error(err, repo_id, revision)) from None
    snapshot = config_path.parent
    # tokenizer_config.json next, then the first tokenizer file the repo has.
    for name in (TOKENIZER_CONFIG_FILE, *TOKENIZER_FILES):
        try:
            hf_hub_download(repo_id, name, revision=revision, local_files_only=local_only)
        except Exception as err:  # noqa: BLE001
            if _is_missing_entry(err, local_only):
                continue
            raise BaseModelError(describe_hub_error(err, repo_id, revision)) from None
        if name != TOKENIZER_CONFIG_FILE:
            break
    else:
        where = f"in the local cache ({constants.HF_HUB_CACHE})" if local_only else f"on the Hub ({constants.ENDPOINT})"
        raise BaseModelError(
            f"model.name_or_path: {repo_id}{at} has a config but no tokenizer files ({', '.join(TOKENIZER_FILES)}) "
            f"{where}; choose a repository that ships its tokenizer, or download it whole (`hf download {repo_id}`)"
        )
    commit = snapshot.name if COMMIT_SHA.match(snapshot.name) else None
    logger.info("base model %s%s resolved to commit %s (%s)", repo_id, at, commit, snapshot)
    return BaseModelSource("hub", repo_id, revision, commit, str(snapshot))


# What a run loads from a Hub repository: config, tokenizer and safetensors weights. Not `original/` (Meta's
# consolidated .pth checkpoints, another 16 GB for Llama-3-8B) nor duplicate .bin/.gguf/.onnx weights.
SNAPSHOT_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.py")
SNAPSHOT_IGNORE = ("original/*", "*/original/*")


def download_base_model(name_or_path: str, revision: Optional[str] = None) -> str:
    """A folder to load the base from: a local folder as is, a Hub id as its cache snapshot at `revision`
    (downloaded once, or taken from the cache when HF_HUB_OFFLINE is set or the Hub does not answer).

    Folds then load from disk: no Hub request per fold and file, and a run keeps working from the cache
    when the network drops. `hub_reference(path)` maps the snapshot folder back to (id, commit).
    """
    if is_local_reference(name_or_path):
        return _resolve_folder(name_or_path).files_dir
    from huggingface_hub import constants, snapshot_download

    local_only = constants.is_offline_mode() or not hub_reachable()
    try:
        folder = Path(
            snapshot_download(
                name_or_path,
                revision=revision,
                allow_patterns=list(SNAPSHOT_PATTERNS),
                ignore_patterns=list(SNAPSHOT_IGNORE),
                local_files_only=local_only,
            )
        )
    except Exception as err:  # noqa: BLE001
        raise BaseModelError(describe_hub_error(err, name_or_path, revision)) from None
    if not any(folder.glob("*.safetensors")):
        raise BaseModelError(
            f"model.name_or_path: {name_or_path} has no safetensors weights in {folder}"
            + (" (the local cache only: the Hub was not used)" if local_only else "")
            + f"; download them with `hf download {name_or_path}`, or convert the weights to safetensors"
        )
    return str(folder)


def hub_reference(path: Union[str, Path]) -> Optional[tuple[str, str]]:
    """(repo id, commit) when `path` is a snapshot folder of the Hugging Face cache
    (``.../models--org--name/snapshots/<sha>``), else None. Repo ids never contain ``--``."""
    path = Path(path)
    if path.parent.name != "snapshots" or not COMMIT_SHA.match(path.name):
        return None
    repo = path.parent.parent.name
    if not repo.startswith("models--"):
        return None
    return repo.removeprefix("models--").replace("--", "/"), path.name


def _causes(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _is_missing_entry(err: BaseException, local_only: bool) -> bool:
    """The repo lacks this file (online), or the cache lacks it (offline: the other tokenizer files may be there)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    kinds = (RemoteEntryNotFoundError, LocalEntryNotFoundError) if local_only else (RemoteEntryNotFoundError,)
    return any(isinstance(e, kinds) for e in _causes(err))


def describe_hub_error(err: BaseException, repo_id: str, revision: Optional[str]) -> str:
    """One line for a failed Hub look-up of `repo_id`: gated, not found, revision unknown, or unreachable."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain = list(_causes(err))
    status = next(
        (
            e.response.status_code
            for e in chain
            if isinstance(e, HfHubHTTPError) and getattr(e, "response", None) is not None
        ),
        None,
    )
    download = (
        f"pre-download it on a machine with access (`hf download {repo_id}`"
        + (f" --revision {revision}" if revision else "")
        + "), then run with HF_HUB_OFFLINE=1"
    )
    if any(isinstance(e, GatedRepoError) for e in chain) or status == 403:
        return (
            f"model.name_or_path: {repo_id} is a gated model; accept its licence at {hub_page(repo_id)} "
            "while logged in, then give this machine your token (export HF_TOKEN=hf_... or `hf auth login`)"
        )
    if any(isinstance(e, RevisionNotFoundError) for e in chain):
        return (
            f"model.revision: {revision!r} does not exist in {repo_id}; use a branch, tag or commit of "
            f"{hub_page(repo_id)} (or null for main)"
        )
    if any(isinstance(e, RepositoryNotFoundError) for e in chain) or status in (401, 404):
        return (
            f"model.name_or_path: {repo_id} was not found on the Hub ({constants.ENDPOINT}); check the "
            "spelling, or, if it is private or gated, set HF_TOKEN to a token that can read it"
        )
    if any(isinstance(e, RemoteEntryNotFoundError) for e in chain):
        return (
            f"model.name_or_path: {repo_id} has no {CONFIG_FILE}, so it is not a transformers model; "
            "choose a model repository"
        )
    if constants.is_offline_mode() or any(isinstance(e, OfflineModeIsEnabled) for e in chain):
        return (
            f"model.name_or_path: {repo_id} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"and HF_HUB_OFFLINE=1 forbids downloading it; unset HF_HUB_OFFLINE, or {download}"
        )
    return (
        f"model.name_or_path: cannot reach the Hugging Face Hub ({constants.ENDPOINT}) to fetch {repo_id}, "
        f"and it is not in the local cache ({constants.HF_HUB_CACHE}); check the network, or {download}"
    )
