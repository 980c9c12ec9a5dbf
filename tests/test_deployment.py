"""Kubernetes manifests (kustomize overlays) against the Kubernetes schemas, skaffold.yaml against its
schema, and the Dockerfiles' promises (public pinned bases, only existing sources copied)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

from contracts.config import REPO_ROOT
from tests.helpers import CONFIG

KUBERNETES_VERSION = "1.30.0"
OVERLAYS = ["local", "gcp"]
SKAFFOLD_SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "skaffold-v4beta14.json"


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the kustomize overlays"
    path = REPO_ROOT / "k8s" / "overlays" / overlay
    out = subprocess.run([kubectl, "kustomize", str(path)], check=True, capture_output=True, text=True)
    return list(yaml.safe_load_all(out.stdout))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_the_kubernetes_schemas(overlay):
    docs = render(overlay)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert ("Deployment", "bloodcell-serving") in kinds and ("Deployment", "bloodcell-web") in kinds
    expected = {"Service", "PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "ConfigMap"}
    assert {k for k, _ in kinds} >= expected
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["metadata"].get("namespace", "kubeflow") == "kubeflow"


def test_a_broken_manifest_is_caught():
    serving = next(d for d in render("local") if d["kind"] == "Deployment")
    serving["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(serving, KUBERNETES_VERSION, strict=True)


def by_name(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_tf_serving_reads_what_the_pusher_writes():
    docs = render("gcp")
    deployment = by_name(docs, "Deployment", "bloodcell-serving")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+", container["image"])  # official image, pinned
    args = dict(a.split("=", 1) for a in container["args"])
    assert args["--port"] == "8500" and args["--rest_api_port"] == "8501"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    # The pipeline pods' path: the models.config that `bloodcell adapt` writes names the models by it.
    assert mount["mountPath"] == CONFIG.kubeflow.models_mount and mount["readOnly"]
    assert args["--model_config_file"] == f"{mount['mountPath']}/models.config"
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]  # the base model alone until a site is adapted
    written = init["command"][-1]
    assert f'base_path: "{mount["mountPath"]}/{CONFIG.model_name}"' in written.replace("\\n", "\n")
    assert f'name: "{CONFIG.model_name}"' in written
    claim = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    assert claim["persistentVolumeClaim"]["claimName"] == CONFIG.kubeflow.models_pvc  # the pipeline pods' volume
    assert container["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{CONFIG.model_name}"
    assert container["resources"]["limits"] and container["resources"]["requests"]
    monitoring = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("tf-serving-monitoring"))
    assert "prometheus_config" in monitoring["data"]["monitoring_config.txt"]
    assert deployment["spec"]["replicas"] == 2
    assert all(p["spec"]["storageClassName"] == "standard-rwx" for p in docs if p["kind"] == "PersistentVolumeClaim")
    service = by_name(docs, "Service", "bloodcell-serving")
    assert sorted(p["port"] for p in service["spec"]["ports"]) == [8500, 9090]  # gRPC and metrics, not REST predict


def test_only_labelled_clients_reach_tf_serving():
    docs = render("local")
    policy = by_name(docs, "NetworkPolicy", "bloodcell-serving")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "bloodcell-serving"}
    clients = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    web = by_name(docs, "Deployment", "bloodcell-web")["spec"]["template"]["metadata"]["labels"]
    assert clients.items() <= web.items()
    web_args = by_name(docs, "Deployment", "bloodcell-web")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert web_args[:3] == ["web", "--grpc", "bloodcell-serving:8500"]


def test_network_policies_deny_by_default_and_never_open_rest_predict():
    docs = render("local")
    serving, web = by_name(docs, "NetworkPolicy", "bloodcell-serving"), by_name(docs, "NetworkPolicy", "bloodcell-web")
    for policy in (serving, web):
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    opened = [port["port"] for rule in serving["spec"]["ingress"] for port in rule["ports"]]
    assert sorted(opened) == [8500, 9090] and serving["spec"]["egress"] == []
    assert [p["port"] for r in web["spec"]["ingress"] for p in r["ports"]] == [8000]
    web_egress = {(p["port"], p.get("protocol", "TCP")) for r in web["spec"]["egress"] for p in r["ports"]}
    assert web_egress == {(8500, "TCP"), (53, "UDP"), (53, "TCP")}
    proxy = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("tf-serving-metrics-proxy"))
    conf = proxy["data"]["metrics-proxy.conf"]
    assert "listen 9090" in conf and "location = /monitoring/prometheus/metrics" in conf and "return 404" in conf
    annotations = by_name(docs, "Deployment", "bloodcell-serving")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9090"


@pytest.mark.parametrize("name", ["bloodcell-serving", "bloodcell-web"])
def test_serving_pods_run_unprivileged_with_read_only_root(name):
    pod = by_name(render("gcp"), "Deployment", name)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert container["resources"]["limits"], container["name"]


def test_skaffold_yaml_validates_and_builds_both_images():
    schema = json.loads(SKAFFOLD_SCHEMA.read_text())
    config = yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["apiVersion"] == "skaffold/v4beta14"
    dockerfiles = {a["docker"]["dockerfile"] for a in config["build"]["artifacts"]}
    assert dockerfiles == {"Dockerfile", "Dockerfile.web"}
    assert {a["image"] for a in config["build"]["artifacts"]} >= {CONFIG.kubeflow.image.rsplit(":", 1)[0]}
    overlays = {tuple(p["manifests"]["kustomize"]["paths"]) for p in config["profiles"] if "manifests" in p}
    assert overlays == {("k8s/overlays/gcp",)} and config["manifests"]["kustomize"]["paths"] == ["k8s/overlays/local"]
    broken = dict(config, build={"artifacts": [{"image": "x", "docker": {"dockerfile": 3}}]})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize(
    "dockerfile, base", [("Dockerfile", "tensorflow/tfx:1.16.0"), ("Dockerfile.web", "python:3.10.13-slim-bookworm")]
)
def test_dockerfiles_build_from_pinned_public_bases_and_copy_existing_sources(dockerfile, base):
    lines = (REPO_ROOT / dockerfile).read_text().splitlines()
    assert [line.split()[1] for line in lines if line.startswith("FROM ")] == [base]
    copied = [part for line in lines if line.startswith("COPY ") for part in line.split()[1:-1]]
    assert copied and all((REPO_ROOT / path).exists() for path in copied)
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore and all(f"!{path}" in ignore for path in copied)  # data and outputs never enter the images
