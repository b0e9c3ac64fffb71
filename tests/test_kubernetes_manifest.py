"""The train-fold/k8s deployment renders, through the real Prefect Kubernetes worker, into a GPU job.

No cluster is needed: the worker's own job configuration class applies the work pool's base job
template (deploy/kubernetes/gpu-job-template.json) to the deployment's job variables (prefect.yaml),
then prepares it for a flow run exactly as the worker does before it submits the Job.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

pytest.importorskip("prefect_kubernetes")

from prefect.client.schemas.objects import FlowRun  # noqa: E402
from prefect.utilities.templating import apply_values  # noqa: E402
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class _NoServer:
    """Stands in for the Prefect client: the GPU template has no block or variable references to resolve,
    so rendering must not need an API at all (any use of the client fails the test)."""

    def __getattr__(self, name):
        raise AssertionError(f"the job template asked the Prefect API for {name!r}")


def _render(template: dict, values: dict) -> KubernetesWorkerJobConfiguration:
    import asyncio

    return asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values, client=_NoServer()))


def _deployment(flow_module: str, name: str) -> dict:
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    return next(d for d in deployments if d["name"] == name and d["entrypoint"].startswith(flow_module + ":"))


def test_train_fold_k8s_job_has_one_gpu_the_env_and_the_flow_command(monkeypatch):
    monkeypatch.setenv("ARENA_PREF_IMAGE", "registry.example/arena-pref:1.2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.internal")
    deployment = _deployment("arena_pref.flows.train_fold", "k8s")
    assert deployment["work_pool"]["name"] == "arena-gpu-k8s"
    # What `prefect deploy` stores: {{ $VAR }} placeholders resolved from the deployer's environment.
    job_variables = apply_values(deployment["work_pool"]["job_variables"], {})
    template = json.loads((ROOT / "deploy" / "kubernetes" / "gpu-job-template.json").read_text())

    configuration = _render(template, job_variables)
    flow_run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="fold-0")
    configuration.prepare_for_flow_run(flow_run)
    manifest = configuration.job_manifest

    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "registry.example/arena-pref:1.2"
    assert container["args"] == ["prefect", "flow-run", "execute"]
    env = {item["name"]: item for item in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "https://mlflow.internal"
    assert env["PREFECT__FLOW_RUN_ID"]["value"] == str(flow_run.id)  # what `prefect flow-run execute` runs
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token", "optional": True}
    scratch = env["ARENA_PREF_OUTPUT_DIR"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert scratch.startswith(mounts["scratch"] + "/")
    assert {"name": "scratch", "emptyDir": {}} in pod["volumes"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_gpu_count_is_a_job_variable():
    template = json.loads((ROOT / "deploy" / "kubernetes" / "gpu-job-template.json").read_text())
    configuration = _render(template, {"image": "img", "gpu_count": 2, "hf_token_secret": "team-hf"})
    configuration.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="fold-1"))
    (container,) = configuration.job_manifest["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    env = {item["name"]: item for item in container["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "team-hf"


def test_the_parent_k8s_deployment_sends_its_folds_to_train_fold_k8s():
    parent = _deployment("arena_pref.flows.cv_training", "k8s")
    assert parent["parameters"]["fold_execution"] == "deployment"
    assert "cv.fold_deployment=train-fold/k8s" in parent["parameters"]["overrides"]
