"""deploy/helm/hybridllm: the chart renders (tests/serving/gotemplate.py: no helm binary can be installed
from this project's package registries) under several value sets, every Kubernetes object validates
against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail), and the
pieces agree with each other and with the code: selectors, named ports, probes, the HPA's metric is a
gauge we export and the one the prometheus-adapter rule serves, and the containers' flags are ones
tritonserver and `hybridllm openai` accept."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from hybridllm.cli import build_parser
from hybridllm.serving.triton.metrics import FAMILIES

from .gotemplate import Chart, TemplateError

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "hybridllm"
K8S_VERSIONS = ("1.27", "1.37")    # the chart's kubeVersion floor and the newest schemas bundled
VARIANTS = {
    "default": {},
    "minimal": {"openai": {"enabled": False}, "autoscaling": {"enabled": False},
                "metrics": {"scrapeAnnotations": False}},
    "everything": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
                   "triton": {"extraArgs": ["--log-verbose=1"]}, "nodeSelector": {"gpu": "h100"},
                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                   "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                       "nodeSelectorTerms": [{"matchExpressions": [
                           {"key": "gpu", "operator": "In", "values": ["h100"]}]}]}}}},
}


def render(variant: str) -> list[dict]:
    files = Chart(CHART).render(release="demo", overrides=VARIANTS[variant])
    docs = []
    for name, text in files.items():
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict]) -> dict[str, dict]:
    out = {d["kind"]: d for d in docs}
    assert len(out) == len(docs), "one object per kind expected"
    return out


def test_chart_metadata_and_values_are_well_formed():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == CHART.name
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert isinstance(yaml.safe_load((CHART / "values.yaml").read_text()), dict)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_validates_against_the_kubernetes_schemas(variant):
    import kubernetes_validate
    docs = render(variant)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service"} <= kinds
    assert ("HorizontalPodAutoscaler" in kinds) == (variant != "minimal")
    assert ("ServiceMonitor" in kinds) == (variant == "everything")
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # a CRD: not in the Kubernetes schemas; checked below
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_objects_agree_with_each_other(variant):
    k = by_kind(render(variant))
    dep, svc = k["Deployment"], k["Service"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    ports = {p["name"]: p["containerPort"] for c in containers.values() for p in c.get("ports", [])}
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in ports and p["port"] == ports[p["targetPort"]]
    triton = containers["triton"]
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for c in containers.values():
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["port"] in [p["name"] for p in c["ports"]]
    shm = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"][0]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in triton["volumeMounts"]
    assert "nvidia.com/gpu" in triton["resources"]["limits"]
    assert ("openai" in containers) == (variant != "minimal")
    if "openai" in containers:
        assert containers["openai"]["readinessProbe"]["httpGet"]["path"] == "/health"
        assert "openai" in [p["name"] for p in svc["spec"]["ports"]]
    if variant != "minimal":
        assert "prometheus.io/scrape" in pod["metadata"]["annotations"]
        hpa, rules = k["HorizontalPodAutoscaler"], k["ConfigMap"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
        (metric,) = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
        assert FAMILIES[metric][0] == "GAUGE" and metric == "hybridllm_num_requests_waiting"
        (rule,) = yaml.safe_load(rules["data"]["config.yaml"])["rules"]
        assert rule["name"]["as"] == metric and metric in rule["seriesQuery"]
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    if "ServiceMonitor" in k:
        sm = k["ServiceMonitor"]
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"]


def test_the_containers_flags_exist():
    """The OpenAI container's command parses with our CLI; every tritonserver flag is in its --help."""
    containers = {c["name"]: c for c in by_kind(render("everything"))["Deployment"]["spec"]["template"]["spec"]
                  ["containers"]}
    openai = containers["openai"]["command"]
    assert openai[0] == "hybridllm"
    args = build_parser().parse_args(openai[1:])
    assert args.triton_metrics_url.endswith(":8002/metrics") and args.host == "0.0.0.0"

    from hybridllm.serving.launch.repository import find_triton, server_env
    triton = containers["triton"]["command"]
    assert triton[0] == "tritonserver"
    usage = subprocess.run([str(find_triton().server), "--help"], env=server_env(), capture_output=True,
                           text=True, timeout=60)
    text = usage.stdout + usage.stderr
    for flag in triton[1:]:
        name = flag.split("=", 1)[0]
        assert name in text, f"tritonserver 2.51 has no {name}"


def test_the_renderer_refuses_what_it_does_not_know(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "Chart.yaml").write_text("apiVersion: v2\nname: x\nversion: 0.1.0\n")
    (tmp_path / "values.yaml").write_text("a: 1\n")
    (tmp_path / "templates" / "x.yaml").write_text("{{ range .Values.a }}{{ end }}\n")
    with pytest.raises(TemplateError, match="subset"):
        Chart(tmp_path).render()
