"""Base-model preflight against a fake Hub on 127.0.0.1, and Hub settings left to the user.

huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HOME when it is first imported (and derives its
URL template from the endpoint then), and this session runs with HF_HUB_OFFLINE=1 (conftest). Patching
`huggingface_hub.constants` afterwards does not redirect downloads, so every Hub path runs in a fresh
process with a clean environment: the endpoint is the fake server, HF_HOME a temporary folder,
HF_HUB_OFFLINE unset.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pref_core.config.loading import load_config
from pref_core.data.synthetic import write_synthetic_csvs
from pref_core.model.fingerprint import hash_folder
from pref_core.model.source import BaseModelError, hub_reference, resolve_base_model
from pref_core.train.checks import MachineError, check_runtime

ROOT = Path(__file__).resolve().parents[1]
GATED_ID = "meta-llama/Meta-Llama-3-8B-Instruct"


@contextlib.contextmanager
def fake_hub(status: int | None, error_code: str | None = None):
    """An endpoint answering every request with `status` (+ X-Error-Code), or a closed port when status is None."""
    if status is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        yield f"http://127.0.0.1:{port}"  # nothing listens there any more
        return

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(status)
            if error_code:
                self.send_header("X-Error-Code", error_code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def hub_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "MLFLOW_TRACKING_URI")
    }
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp_path / "hf-home"),
        PYTHONPATH=str(ROOT),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
    )  # a loaded CI machine
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "arena_pref.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


HUB_FAILURES = [
    pytest.param(401, "GatedRepo", "is a gated model", id="gated-401"),
    pytest.param(403, "GatedRepo", "is a gated model", id="gated-403"),
    pytest.param(404, "RepoNotFound", "was not found on the Hub", id="not-found"),
    pytest.param(None, None, "cannot reach the Hugging Face Hub", id="unreachable"),
]


@pytest.mark.parametrize(("status", "error_code", "expected"), HUB_FAILURES)
def test_seed_config_against_a_failing_hub_exits_2_in_one_line_before_any_run(tmp_path, status, error_code, expected):
    out, store = tmp_path / "out", tmp_path / "mlflow.db"
    seed_id = load_config(ROOT / "configs" / "seed-llama3-8b.yaml").model.name_or_path  # the checkpoint the seed ran
    # A good train file: the cheap input checks pass (a missing file would be reported first) and the Hub is next.
    train_csv, _ = write_synthetic_csvs(tmp_path / "data", n_train=100, n_test=10, signal=0.9, seed=1)
    with fake_hub(status, error_code) as endpoint:
        started = time.monotonic()
        result = run_cli(
            [
                "train",
                "--config",
                str(ROOT / "configs" / "seed-llama3-8b.yaml"),
                "--set",
                f"data.train_csv={train_csv}",
                "--set",
                f"output_dir={out}",
                "--set",
                f"tracking.uri=sqlite:///{store}",
            ],
            hub_env(tmp_path, endpoint),
            tmp_path,
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert seed_id in errors[0]
    if error_code == "GatedRepo":
        assert f"{endpoint}/{seed_id}" in errors[0] and "HF_TOKEN" in errors[0]
    if status is None:
        assert f"hf download {seed_id}" in errors[0] and "HF_HUB_OFFLINE=1" in errors[0]
    # No tracking store, no run: at most the checked inputs' cache (ingest/), which the next run reuses.
    assert not store.exists() and (not out.exists() or [p.name for p in out.iterdir()] == ["ingest"])
    assert elapsed < 60  # imports included; the Hub look-up itself takes about a second


def _write_cached_tiny_model(hf_home: Path, repo_id: str, texts: list[str]) -> tuple[Path, str]:
    """The tiny model in the Hub cache layout (models--org--name/{refs/main, snapshots/<sha>/})."""
    from pref_core.model.tiny import build_tiny_checkpoint

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    build_tiny_checkpoint(
        texts, snapshot, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=400, seed=0
    )
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot, commit


@pytest.mark.slow
def test_hub_id_from_a_prepopulated_cache_trains_one_fold_without_the_hub(tmp_path, synthetic_csvs):
    from pref_core.data.arena import read_arena_csv
    from pref_core.model.tiny import tokenizer_corpus

    repo_id = "arena-test/tiny-llama"
    train_csv, _ = synthetic_csvs
    texts = tokenizer_corpus(read_arena_csv(train_csv, "train").frame)
    snapshot, commit = _write_cached_tiny_model(tmp_path / "hf-home", repo_id, texts)
    with fake_hub(None) as endpoint:  # HF_HUB_OFFLINE unset and the Hub unreachable: the cache serves
        result = run_cli(
            [
                "train",
                "--config",
                str(ROOT / "configs" / "tiny.yaml"),
                "--set",
                "model.tiny=null",
                "--set",
                f"model.name_or_path={repo_id}",
                "--set",
                f"data.train_csv={train_csv}",
                "--set",
                f"output_dir={tmp_path / 'out'}",
                "--set",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                "--set",
                "cv.execution=in_process",
                "--set",
                "cv.folds=[0]",
                "--set",
                "train.max_steps=2",
                "--set",
                "calibration.method=none",
            ],
            hub_env(tmp_path, endpoint),
            tmp_path,
            timeout=600,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OOF log loss" in result.stdout
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = client.search_model_versions("name = 'arena-pref'")[0]
    bundle_ref = client.get_run(version.run_id).data.tags["arena_pref.base_model"]
    assert hub_reference(bundle_ref) == (repo_id, commit)  # folds loaded the cache snapshot, not the network
    assert Path(bundle_ref) == snapshot


def test_local_folder_resolves_and_missing_parts_are_named(tmp_path, tiny_tokenizer):
    from transformers import LlamaConfig

    with pytest.raises(BaseModelError, match="does not exist"):
        resolve_base_model(str(tmp_path / "nowhere"))
    folder = tmp_path / "base"
    folder.mkdir()
    with pytest.raises(BaseModelError, match="has no config.json"):
        resolve_base_model(str(folder))
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(folder)
    with pytest.raises(BaseModelError, match="no tokenizer files"):
        resolve_base_model(str(folder))
    tiny_tokenizer.save_pretrained(folder)
    source = resolve_base_model(str(folder))
    assert (source.kind, source.commit, source.files_dir) == ("local", None, str(folder.resolve()))


def test_hub_reference_reads_id_and_commit_from_cache_snapshot_paths(tmp_path):
    sha = "a" * 40
    assert hub_reference(tmp_path / "hub" / "models--meta-llama--Llama-3-8B" / "snapshots" / sha) == (
        "meta-llama/Llama-3-8B",
        sha,
    )
    assert hub_reference(tmp_path / "models" / "tiny") is None
    assert hub_reference(tmp_path / "models--x--y" / "snapshots" / "main") is None


def test_hash_folder_changes_with_content_not_with_location(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "sub").mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "sub" / "w.bin").write_bytes(b"\x00" * 10)
    assert hash_folder(a) == hash_folder(b)
    (b / "sub" / "w.bin").write_bytes(b"\x00" * 9 + b"\x01")
    assert hash_folder(a) != hash_folder(b)


def _config(**model):
    from pref_core.config.loading import parse_config

    optim = model.pop("optim", "auto")
    return parse_config({"model": {"name_or_path": "x/y", **model}, "train": {"optim": optim}})


def _model_and_train(**model):
    """The two sections check_runtime reads."""
    config = _config(**model)
    return config.model, config.train


def test_runtime_check_names_bitsandbytes_cuda_and_flash_attn(monkeypatch):
    import pref_core.train.checks as checks

    with pytest.raises(MachineError, match="model.quantization=8bit needs a CUDA GPU"):
        check_runtime(*_model_and_train(quantization="8bit"), cuda_available=False)
    with pytest.raises(MachineError, match="train.optim=adamw_8bit needs a CUDA GPU"):
        check_runtime(*_model_and_train(optim="adamw_8bit"), cuda_available=False)
    assert check_runtime(*_model_and_train(quantization="4bit"), cuda_available=True) == []
    monkeypatch.setattr(checks, "_installed", lambda module: module not in ("bitsandbytes", "flash_attn"))
    with pytest.raises(MachineError, match=r"needs bitsandbytes.*arena-pref\[gpu\]"):
        check_runtime(*_model_and_train(quantization="4bit"), cuda_available=True)
    (warning,) = check_runtime(*_model_and_train(attn_implementation="flash_attention_2"), cuda_available=True)
    assert "flash-attn" in warning and "using sdpa" in warning


def test_cli_leaves_hub_settings_to_the_user(monkeypatch):
    from arena_pref import cli

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_user_token")
    monkeypatch.setenv("HF_HOME", "/data/hf")
    cli.apply_environment(cli.build_parser().parse_args(["train", "--config", "configs/tiny.yaml"]))
    assert "HF_HUB_OFFLINE" not in os.environ
    assert (os.environ["HF_TOKEN"], os.environ["HF_HOME"]) == ("hf_user_token", "/data/hf")


@pytest.mark.parametrize("offline", [None, "0", "1"])
def test_stack_workers_inherit_hub_settings_unchanged(monkeypatch, tmp_path, offline):
    from arena_pref.stack import StackState, base_env

    if offline is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_TOKEN", "hf_user_token")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    env = base_env(
        StackState(prefect_api_url="http://127.0.0.1:1/api", mlflow_url="http://127.0.0.1:2", state_dir=str(tmp_path))
    )
    assert env.get("HF_HUB_OFFLINE") == offline
    assert (env["HF_TOKEN"], env["HF_HOME"]) == ("hf_user_token", str(tmp_path / "hf"))


def _tiny_base(folder: Path, tokenizer) -> Path:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_local_base_fingerprint_finds_or_refuses_a_copy(tmp_path, tiny_tokenizer):
    import shutil

    from pref_core.model.fingerprint import fingerprint_base, locate_base

    base = _tiny_base(tmp_path / "train-machine" / "base", tiny_tokenizer)
    fingerprint = fingerprint_base(str(base))
    assert fingerprint["kind"] == "local" and fingerprint["content_sha256"] == hash_folder(base)
    assert locate_base(fingerprint) == str(base.resolve())

    copy = shutil.copytree(base, tmp_path / "copy")
    shutil.rmtree(base)  # "another machine": the recorded path is gone
    with pytest.raises(BaseModelError, match=r"not on this machine; pass --base-model PATH") as err:
        locate_base(fingerprint)
    assert str(base.resolve()) in str(err.value) and "\n" not in str(err.value)
    assert locate_base(fingerprint, str(copy)) == str(copy)
    (copy / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(BaseModelError, match="differs from the base the model was trained on"):
        locate_base(fingerprint, str(copy))
    with pytest.raises(BaseModelError, match="no config.json"):
        locate_base(fingerprint, str(tmp_path))


def test_hub_base_fingerprint_is_id_and_commit_and_missing_names_base_model_option(tmp_path):
    from pref_core.model.fingerprint import fingerprint_base, locate_base

    sha = "b" * 40
    snapshot = tmp_path / "hub" / "models--org--model" / "snapshots" / sha
    fingerprint = fingerprint_base(str(snapshot), revision=None)
    assert fingerprint == {"kind": "hub", "name_or_path": "org/model", "revision": None, "commit": sha}
    # This session is offline (HF_HUB_OFFLINE=1) with an empty cache for org/model.
    with pytest.raises(BaseModelError, match=r"org/model.*--base-model PATH"):
        locate_base(fingerprint)
    other = tmp_path / "hub" / "models--org--model" / "snapshots" / ("c" * 40)
    other.mkdir(parents=True)
    (other / "config.json").write_text("{}")
    with pytest.raises(BaseModelError, match="a snapshot of commit cccccccccccc"):
        locate_base(fingerprint, str(other))


def test_predict_without_the_registered_base_fails_in_one_line_naming_base_model(tmp_path, capsys):
    import json

    import mlflow
    from arena_pref import cli
    from mlflow import MlflowClient

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "base_model.json").write_text(
        json.dumps(
            {"kind": "local", "name_or_path": str(tmp_path / "gone"), "revision": None, "content_sha256": "ab" * 32}
        )
    )
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("predict-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), artifacts={"bundle": str(bundle)})
    client.create_registered_model("arena-pref")
    version = client.create_model_version(
        "arena-pref", source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id
    )
    client.set_registered_model_alias("arena-pref", "champion", version.version)

    _, test_csv = write_synthetic_csvs(tmp_path / "data", n_train=20, n_test=5, signal=0.9, seed=2)  # a good input
    args = ["predict", "--test-csv", str(test_csv), "--out", str(tmp_path / "sub.csv"), "--tracking-uri", uri]
    capsys.readouterr()  # the store's setup logs
    assert cli.main(args) == 2
    stderr = capsys.readouterr().err
    (err,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert str(tmp_path / "gone") in err and "--base-model PATH" in err and "Traceback" not in stderr
    assert cli.main([*args, "--base-model", str(tmp_path / "nowhere")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_the_bundle_config_names_the_fingerprinted_base_and_builds_nothing():
    from pref_core.model.fingerprint import pin_base

    tiny = load_config(ROOT / "configs" / "tiny.yaml")
    assert tiny.model.tiny is not None
    local = pin_base(tiny.model, {"kind": "local", "name_or_path": "/models/tiny", "content_sha256": "ab"})
    assert (local.name_or_path, local.tiny, local.gguf) == ("/models/tiny", None, None)
    assert local.revision == tiny.model.revision and local.head == tiny.model.head
    hub = pin_base(tiny.model, {"kind": "hub", "name_or_path": "org/model", "commit": "c" * 40})
    assert (hub.name_or_path, hub.revision) == ("org/model", "c" * 40)
    assert tiny.model.tiny is not None  # the run's own config is left as it was
