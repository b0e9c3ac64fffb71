"""The train-fold/docker deployment renders, through the real Prefect Docker worker, into a GPU container.

No Docker daemon is needed: the worker's own job configuration class applies the work pool's base job
template (deploy/docker/gpu-job-template.json) to the deployment's job variables (prefect.yaml), the
worker builds its container settings, and docker-py turns them into the create-container request, which
the test reads instead of sending.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

pytest.importorskip("prefect_docker")

import docker  # noqa: E402
from prefect.client.schemas.objects import FlowRun  # noqa: E402
from prefect.utilities.templating import apply_values  # noqa: E402
from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "docker" / "gpu-job-template.json"


class _SecretBlockOnly:
    """Stands in for the Prefect client: it holds the one Secret block the GPU template reads (hf-token);
    any other use of the API fails the test."""

    async def read_block_document_by_name(self, name, block_type_slug):
        assert (block_type_slug, name) == ("secret", "hf-token")
        return SimpleNamespace(data={"value": "hf_from_the_secret_block"})

    def __getattr__(self, name):
        raise AssertionError(f"the job template asked the Prefect API for {name!r}")


class _Sent(Exception):
    """Raised where docker-py would send the request to the daemon."""


def _create_container_request(configuration: DockerWorkerJobConfiguration) -> dict:
    """The body of the `POST /containers/create` the worker would send, captured before it leaves."""
    # A pinned API version: docker-py does not contact the daemon to negotiate one.
    client = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.44")
    client.api.version = lambda *args, **kwargs: {"Version": "27.0.0"}  # asked for the host-gateway mapping
    sent = {}

    def capture(config, name=None, platform=None):
        sent.update(config=config, name=name)
        raise _Sent

    client.api.create_container_from_config = capture
    worker = DockerWorker(work_pool_name="arena-gpu-docker", test_mode=True)
    settings = worker._build_container_settings(client, configuration)
    with pytest.raises(_Sent):
        worker._create_container(client, **settings)
    return sent["config"]


def test_train_fold_docker_container_has_one_gpu_the_env_the_volume_and_the_flow_command(monkeypatch):
    monkeypatch.setenv("ARENA_PREF_IMAGE", "registry.example/arena-pref:1.2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.internal")
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    (deployment,) = [
        d for d in deployments if (d["name"], d["entrypoint"]) == ("docker", "arena_pref.flows.train_fold:train_fold")
    ]
    assert deployment["work_pool"]["name"] == "arena-gpu-docker"
    # What `prefect deploy` stores: {{ $VAR }} placeholders resolved from the deployer's environment.
    job_variables = apply_values(deployment["work_pool"]["job_variables"], {})
    template = json.loads(TEMPLATE.read_text())

    configuration = asyncio.run(
        DockerWorkerJobConfiguration.from_template_and_values(template, job_variables, client=_SecretBlockOnly())
    )
    flow_run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="fold-0")
    configuration.prepare_for_flow_run(flow_run)
    request = _create_container_request(configuration)

    assert request["Image"] == "registry.example/arena-pref:1.2"
    assert request["Cmd"] == ["prefect", "flow-run", "execute"]
    env = dict(item.split("=", 1) for item in request["Env"])
    assert env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)  # what `prefect flow-run execute` runs
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.internal"
    assert env["HF_TOKEN"] == "hf_from_the_secret_block"  # read at run time, never stored in the deployment
    host = request["HostConfig"]
    (gpu,) = host["DeviceRequests"]
    assert gpu["Count"] == 1 and gpu["Capabilities"] == [["gpu"]] and gpu["Driver"] == "nvidia"
    (bind,) = host["Binds"]
    volume, mount = bind.split(":")[:2]
    assert volume == "arena-pref-scratch" and env["ARENA_PREF_OUTPUT_DIR"].startswith(mount + "/")
    assert host["AutoRemove"] is True


def test_the_gpu_template_is_the_workers_default_plus_the_hub_token():
    """The pool template keeps every variable of the installed worker's default (none lost on an upgrade)."""
    template = json.loads(TEMPLATE.read_text())
    default = DockerWorker.get_default_base_job_template()
    assert template["variables"] == default["variables"]
    changed = {
        k for k in default["job_configuration"] if template["job_configuration"][k] != default["job_configuration"][k]
    }
    assert changed == {"env"}
