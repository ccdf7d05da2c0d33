"""The Helm chart (helm/mdpipe), rendered by Helm's own engine from Python (helm-python-sdk: Helm's Go SDK, no
helm binary), linted, validated against the Kubernetes JSON schemas (kubernetes-validate), and checked for
what matters: MDL replicas (one leads, through the lease) rolled one at a time under a budget, SCP stateless
and rolled (SQLite only as one replica on a volume), disruption budgets, network policies that keep the data
plane closed, hardened containers with probes and resources, each secret (the vendor key, the broker's
credential, ...) in its readers only, no secret in values.yaml, a strict values schema, settings each
component accepts in production mode, and a dashboard and alerts on metrics that exist; and the Redis user of
each signal service (signalServices), whose ACL line is mdc/acl.py's.

No cluster, network or RabbitMQ: everything here is offline but one test, which applies the ACL line the chart
renders to the local Redis (tests/conftest.py's) and publishes with it.
"""

from __future__ import annotations

import argparse
import base64
import functools
import importlib
import ipaddress
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="needs helm-python-sdk (the dev extras)")
kv = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (the dev extras)")

CHART = Path(__file__).resolve().parent.parent / "helm" / "mdpipe"
RELEASE, NAMESPACE = "demo", "markets"
FULL = f"{RELEASE}-mdpipe"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.27", kv.utils.latest_version())
MDPIPE_COMPONENTS = ("mdl", "mdp", "wds", "scp", "sim")
DATA_PLANE = {"mdl", "mdp", "wds", "scp"}
VENDOR_CLIENTS = {"mdl", "mdp"}  # the vendor key and the vendor egress: MDL's stream, MDP's REST calls
SIM_REST = f"http://{FULL}-sim:9100"  # the emulator's HTTP port, which serves the vendor's REST paths
TMP = "/tmp"  # noqa: S108 - the path the containers mount an emptyDir on (read-only root)

EXTERNAL = {
    "rabbitmq": {
        "enabled": False,
        "external": {"existingSecret": "mq", "egressTo": [{"ipBlock": {"cidr": "10.9.0.0/16"}}]},
    },
    "redis": {"enabled": False, "external": {"existingSecret": "cache", "port": 6380}},
    "postgresql": {"enabled": False, "external": {"existingSecret": "db"}},
}
# An external Redis Cluster: seeds (one of them on a port `ports` leaves out), the nodes' ports, their range.
CLUSTER_SEEDS = ["10.20.0.1:7000", "10.20.0.2:7001", "redis-2.cache.example.org:7005"]
REDIS_CLUSTER = {
    "enabled": False,
    "external": {
        "existingSecret": "cache",
        "clusterNodes": CLUSTER_SEEDS,
        "ports": [7000, 7001, 7002],
        "egressTo": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
    },
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-services": EXTERNAL,
    "external-redis-cluster": {**EXTERNAL, "redis": REDIS_CLUSTER},
    "massive-existing-secret": {"massive": {"existingSecret": "massive-key", "existingSecretKey": "key"}},
    "massive-key-value": {"massive": {"apiKey": "vendor-key-given-as-a-value"}},
    "per-class-mdp": {
        "mdq": {"shards": 2},
        "mdp": {
            "groups": [
                {
                    "name": "trades",
                    "classes": "trades.0,trades.1,aggregates.0,aggregates.1",
                    "autoscaling": {"enabled": True, "maxReplicas": 4},
                },
                {
                    "name": "quotes",
                    "classes": "quotes",
                    "replicas": 3,
                    "autoscaling": {"enabled": False},
                    "resources": {"limits": {"memory": "2Gi"}},
                },
                {
                    "name": "rest",
                    "classes": "halts,imbalances,values,other",
                    "pdb": {"enabled": False},
                },
            ]
        },
    },
    "ingress-off": {"scp": {"ingress": {"enabled": False}}, "wds": {"ingress": {"enabled": False}}},
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "prometheusRule": {"enabled": True},
        },
        "grafana": {"dashboard": {"enabled": True}},
    },
    "existing-secrets-hosts": {
        "wds": {
            "token": {"existingSecret": "wds-token"},
            "ingress": {"host": "ws.example.org"},
            "allowedOrigins": ["https://desk.example.org"],
        },
        "scp": {
            "session": {"existingSecret": "scp-session"},
            "ingress": {"host": "md.example.org"},
            "admin": {"existingSecret": "scp-admin"},
            "replicas": 3,
        },
        "emulator": {"existingSecret": "sim-key"},
        "rabbitmq": {"existingSecret": "mq-password"},
        "redis": {"existingSecret": "redis-password"},
        "postgresql": {"existingSecret": "pg-password"},
        "networkPolicy": {"allowExternal": True},
    },
    "scp-autoscaling": {"scp": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 6}}},
    "scp-sqlite": {
        "postgresql": {"enabled": False},
        "scp": {"sqlite": True, "replicas": 1, "persistence": {"enabled": True}},
    },
    "signal-services": {
        "mdc": {"prefix": "us"},
        "signalServices": [{"name": "breakouts"}, {"name": "my_bot", "existingSecret": "bot-redis"}],
    },
}
SIGNAL_LABEL = "mdpipe.io/signal-service"  # what a signal service's pods carry to reach Redis


# -- rendering --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart():
    loaded = helm.Chart.load(CHART)
    yield loaded
    loaded.close()


@functools.cache
def _render(key: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    values = json.loads(key)
    with helm.Chart.load(CHART) as loaded:
        files = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith(".yaml"):
            docs.extend((path, doc) for doc in yaml.safe_load_all(text) if doc)
    return tuple(docs)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [doc for _, doc in _render(json.dumps(values or {}, sort_keys=True))]


def notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART) as loaded:
        return loaded.render(values, name=RELEASE, namespace=NAMESPACE)["mdpipe/templates/NOTES.txt"]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")]


def component(doc: dict[str, Any]) -> str:
    return doc["metadata"]["labels"].get("app.kubernetes.io/component", "")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_values(docs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {
        (s["metadata"]["name"], key): base64.b64decode(value).decode()
        for s in of_kind(docs, "Secret")
        for key, value in s.get("data", {}).items()
    }


@pytest.fixture(params=sorted(VALUE_SETS), ids=sorted(VALUE_SETS))
def values_case(request) -> tuple[str, dict[str, Any]]:
    return request.param, VALUE_SETS[request.param]


# -- Helm's checks: lint, schema -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_is_clean(name):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [
        m for m in report["messages"] if m["severity"] >= 2
    ] == []  # info (e.g. "icon is recommended") only


def test_chart_metadata(chart):
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == "0.1.0"
    assert chart.schema["additionalProperties"] is False


@pytest.mark.parametrize(
    "bad",
    [
        {"wdss": {"replicas": 2}},  # a typo'd top-level key
        {"replicaCount": 3},
        {"wds": {"replica": 2}},
        {"mdp": {"groups": [{"name": "trades", "classes": "trades", "replica": 2}]}},
        {"mdp": {"groups": [{"name": "Trades!", "classes": "trades"}]}},
        {"environment": "prod"},
        {"rabbitmq": {"username": "guest"}},
        {"mdl": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": None}}},
        {"networkPolicy": {"prometheus": {"namespaceSelectr": {}}}},
        {"scp": {"pdb": {"maxUnavailable": 1}}},  # SCP's budget is a minAvailable
        {"scp": {"pdb": {"minAvailable": 0}}},
        {"scp": {"sqlite": "yes"}},
        {"massive": {"restUrl": "https://api.massive.com/v2"}},  # a base URL, no path
        {"massive": {"restUrl": "api.massive.com"}},
        {"massive": {"rest": {"rate": 1}}},
        {"mdc": {"prefix": "md prices"}},  # mdc.names refuses it; it would break the ACL rules too
        {"signalServices": [{"name": "Breakouts"}]},  # signals.NAME: [a-z0-9_]{1,40}
        {"signalServices": [{"name": "break-outs"}]},
        {"signalServices": [{"name": "b" * 41}]},
        {"signalServices": [{"name": ""}]},
        {"signalServices": [{"existingSecret": "s"}]},
        {"signalServices": [{"name": "breakouts", "password": "pw"}]},
        {"signalServices": {"name": "breakouts"}},
        {"redis": {"external": {"clusterNodes": "10.0.0.1:7000,10.0.0.2:7000"}}},  # a list, not a string
        {"redis": {"external": {"clusterNodes": ["10.0.0.1"]}}},  # host:port
        {"redis": {"external": {"clusterNodes": ["10.0.0.1:70000"]}}},
        {"redis": {"external": {"clusterNodes": ["10.0.0.1:0"]}}},
        {"redis": {"external": {"clusterNodes": ["10.0.0.1:7000", "10.0.0.1:7000"]}}},
        {"redis": {"external": {"ports": [0]}}},
        {"redis": {"external": {"ports": "7000-7005"}}},
        {"rabbitmq": {"external": {"clusterNodes": ["10.0.0.1:5672"]}}},  # Redis only
    ],
    ids=lambda v: json.dumps(v)[:60],
)
def test_schema_refuses_bad_values(chart, bad):
    with pytest.raises(helm.HelmValuesError):
        chart.render(bad, name=RELEASE, namespace=NAMESPACE)


NO_POSTGRESQL = {"postgresql": {"enabled": False}}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rabbitmq": {"enabled": False}}, "rabbitmq.external.existingSecret"),
        ({"redis": {"enabled": False}}, "redis.external.existingSecret"),
        (
            {"redis": {"external": {"clusterNodes": CLUSTER_SEEDS}}},
            "redis.external.clusterNodes needs redis.enabled=false: the built-in Redis is one server",
        ),
        (
            {"redis": {"enabled": False, "external": {"clusterNodes": CLUSTER_SEEDS}}},
            "redis.external.existingSecret",
        ),
        ({"config": {"REDIS_CLUSTER_NODES": "10.0.0.1:7000"}}, "set redis.external.clusterNodes"),
        (
            {"redis": REDIS_CLUSTER, "wds": {"env": {"REDIS_CLUSTER_NODES": "10.0.0.1:7000"}}},
            "REDIS_CLUSTER_NODES cannot be set in config or env",
        ),
        ({"postgresql": {"enabled": False}}, "postgresql.external.existingSecret"),
        (
            NO_POSTGRESQL | {"scp": {"sqlite": True}},
            "scp.sqlite needs scp.persistence.enabled=true, scp.replicas=1 and scp.autoscaling.enabled=false",
        ),
        (
            {
                "postgresql": {"enabled": False, "external": {"existingSecret": "db"}},
                "scp": {"sqlite": True, "replicas": 1, "persistence": {"enabled": True}},
            },
            "scp.sqlite needs no postgresql.external.existingSecret:",
        ),
        (
            {"scp": {"sqlite": True, "replicas": 1, "persistence": {"enabled": True}}},
            "scp.sqlite needs postgresql.enabled=false:",
        ),
        (
            NO_POSTGRESQL | {"scp": {"sqlite": True, "replicas": 2, "persistence": {"enabled": True}}},
            "scp.sqlite needs scp.replicas=1",
        ),
        (
            NO_POSTGRESQL
            | {
                "scp": {
                    "sqlite": True,
                    "replicas": 1,
                    "persistence": {"enabled": True},
                    "autoscaling": {"enabled": True},
                }
            },
            "scp.sqlite needs scp.replicas=1",
        ),
        (
            NO_POSTGRESQL
            | {
                "scp": {
                    "sqlite": True,
                    "replicas": 2,
                    "persistence": {"enabled": True, "accessModes": ["ReadWriteMany"]},
                }
            },
            "cannot be shared by several replicas",
        ),  # not even on a shared volume
        ({"scp": {"persistence": {"enabled": True}}}, "cannot share a ReadWriteOnce scp.persistence volume"),
        (
            {"scp": {"replicas": 1, "autoscaling": {"enabled": True}, "persistence": {"enabled": True}}},
            "cannot share a ReadWriteOnce",
        ),
        ({"config": {"RABBITMQ_URL": "amqp://u:p@h/"}}, "RABBITMQ_URL holds a secret"),
        ({"wds": {"env": {"WDS_TOKEN_SECRET": "x" * 40}}}, "WDS_TOKEN_SECRET holds a secret"),
        ({"mdl": {"env": {"MASSIVE_API_KEY": "k"}}}, "MASSIVE_API_KEY holds a secret"),
        ({"mdp": {"env": {"MASSIVE_API_KEY": "k"}}}, "MASSIVE_API_KEY holds a secret"),
        ({"wds": {"env": {"MASSIVE_API_KEY": "k"}}}, "MASSIVE_API_KEY holds a secret"),
        (
            {"mdq": {"shards": 2}, "mdp": {"groups": [{"name": "s", "classes": "trades.0,aggregates.1"}]}},
            "names trades.0 without aggregates.0: trades and aggregates feed the same day stats",
        ),
        ({"mdp": {"groups": [{"name": "b", "classes": "aggregates"}]}}, "names aggregates without trades"),
        (
            {"signalServices": [{"name": "bot_"}]},
            "signalServices[0].name bot_ must start and end with a letter",
        ),
        ({"signalServices": [{"name": "a"}, {"name": "_a"}]}, "signalServices[1].name _a must start and end"),
        ({"signalServices": [{"name": "a"}, {"name": "a"}]}, "signalServices[1]: a is listed twice"),
    ],
)
def test_render_refuses_incomplete_or_unsafe_values(chart, values, message):
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


# -- Kubernetes schemas and wiring ------------------------------------------------------------------------


def test_manifests_match_the_kubernetes_schemas(values_case):
    _, values = values_case
    docs = render(values)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            check_prometheus_operator_object(doc)
            continue
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                pytest.fail(
                    f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {exc.message} "
                    f"at {list(exc.path)}"
                )
    identities = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(identities) == len(set(identities)), "two objects of one kind share a name"
    for kind, name in identities:
        assert len(name) <= name_limit(kind) and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), (
            kind,
            name,
        )


def name_limit(kind: str) -> int:
    """A Secret's name is a DNS subdomain (253); Services, pods' owners and the rest are labels (63)."""
    return 253 if kind == "Secret" else 63


def test_long_release_and_group_names_fit(chart):
    """Names stay valid at Helm's longest release name (53) and the longest MDP group name (18)."""
    values = {
        "mdp": {"groups": [{"name": "g" * 18, "classes": "trades,aggregates"}]},
        "signalServices": [{"name": "s" * 40}, {"name": "s" * 20 + "_" + "s" * 19}],
        **VALUE_SETS["monitoring"],
    }
    files = chart.render(values, name="r" * 53, namespace=NAMESPACE)
    docs = [d for p, t in files.items() if p.endswith(".yaml") for d in yaml.safe_load_all(t) if d]
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names))
    assert len([n for k, n in names if k == "Secret" and "-signals-" in n]) == 2
    for kind, name in names:
        assert len(name) <= name_limit(kind) and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), (
            kind,
            name,
        )
        if kind == "StatefulSet":  # its pods' controller-revision-hash label adds 11 characters
            assert len(name) <= 52, name


def check_prometheus_operator_object(doc: dict[str, Any]) -> None:
    """The CRDs are not in kubernetes-validate: the fields the operator needs, by hand."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    if doc["kind"] == "ServiceMonitor":
        assert set(doc["spec"]) == {"selector", "namespaceSelector", "endpoints"}
        for endpoint in doc["spec"]["endpoints"]:
            assert set(endpoint) <= {"port", "path", "params", "interval", "scrapeTimeout", "relabelings"}
            assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    elif doc["kind"] == "PrometheusRule":
        for group in doc["spec"]["groups"]:
            assert set(group) == {"name", "rules"}
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
                assert rule["labels"]["severity"] in ("critical", "warning", "info")
    else:
        pytest.fail(f"unexpected {doc['kind']}")


def test_every_reference_resolves(values_case):
    """Services select pods and name their ports, Ingresses, HPAs, PDBs, ServiceMonitors and volumes find
    what they point at."""
    _, values = values_case
    docs = render(values)
    pods = [(w, w["spec"]["template"]["metadata"]["labels"]) for w in workloads(docs)]
    port_names = {id(w): {p["name"] for c in containers(w) for p in c.get("ports", [])} for w, _ in pods}
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for service in services.values():
        selected = [w for w, labels in pods if selects({"matchLabels": service["spec"]["selector"]}, labels)]
        assert selected, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert all(target in port_names[id(w)] for w in selected), (service["metadata"]["name"], target)
    for ingress in of_kind(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["port"]["name"] in {
                    p["name"] for p in services[backend["name"]]["spec"]["ports"]
                }
    deployments = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        target = deployments[hpa["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], "an autoscaled Deployment must not pin replicas"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        assert [w for w, labels in pods if selects(pdb["spec"]["selector"], labels)], pdb["metadata"]["name"]
    for monitor in of_kind(docs, "ServiceMonitor"):
        matched = [
            s for s in services.values() if selects(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert matched, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in matched)
    configmaps = {c["metadata"]["name"] for c in of_kind(docs, "ConfigMap")}
    claims = {c["metadata"]["name"] for c in of_kind(docs, "PersistentVolumeClaim")}
    for w in workloads(docs):
        spec = pod_spec(w)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        templates = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for c in containers(w):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in templates, (w["metadata"]["name"], mount)
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_standard_labels_on_every_object(values_case):
    _, values = values_case
    for doc in render(values):
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "mdpipe", doc["metadata"]["name"]
        assert labels.get("app.kubernetes.io/instance") == RELEASE
        assert labels.get("app.kubernetes.io/managed-by") == "Helm"
        assert labels.get("app.kubernetes.io/version") == "0.1.0"
        assert labels.get("app.kubernetes.io/part-of") == "mdpipe"
        assert labels.get("helm.sh/chart") == "mdpipe-0.1.0"
    for w in workloads(render(values)):
        template_labels = w["spec"]["template"]["metadata"]["labels"]
        assert template_labels["app.kubernetes.io/component"] == component(w)
        assert selects(w["spec"]["selector"], template_labels)


# -- MDL: one connection, any number of replicas (the lease) -----------------------------------------------


def test_mdl_is_two_replicas_rolled_one_at_a_time_under_a_budget(values_case):
    """The lease in Redis lets one replica hold the vendor connection: a standby runs beside it, a new
    pod starts as a standby before the old one stops (RollingUpdate), and a drain keeps one."""
    _, values = values_case
    docs = render(values)
    mdl = [w for w in workloads(docs) if component(w) == "mdl"]
    assert len(mdl) == 1
    assert mdl[0]["kind"] == "Deployment"
    assert mdl[0]["spec"]["replicas"] == 2
    assert mdl[0]["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    labels = mdl[0]["spec"]["template"]["metadata"]["labels"]
    assert not [
        h
        for h in of_kind(docs, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == mdl[0]["metadata"]["name"]
    ]
    (pdb,) = [p for p in of_kind(docs, "PodDisruptionBudget") if selects(p["spec"]["selector"], labels)]
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]
    (c,) = containers(mdl[0])
    assert "MDL_LEASE" not in env_of(c) and "REDIS_URL" in env_of(c)  # the lease is on: Redis is given
    # nothing else selects MDL's pods (another Deployment with the same labels would hold another lease)
    assert [w for w in workloads(docs) if selects(w["spec"]["selector"], labels)] == mdl


def test_mdl_replicas_by_values_and_no_budget_for_one(chart):
    single = render({"mdl": {"replicas": 1}})
    assert named(single, "Deployment", f"{FULL}-mdl")["spec"]["replicas"] == 1
    assert not [p for p in of_kind(single, "PodDisruptionBudget") if component(p) == "mdl"]
    assert named(render({"mdl": {"replicas": 3}}), "Deployment", f"{FULL}-mdl")["spec"]["replicas"] == 3
    for wrong in ({"replicas": 0}, {"pdb": {"maxUnavailable": 1}}):
        with pytest.raises(helm.HelmValuesError):
            chart.render({"mdl": wrong}, name=RELEASE, namespace=NAMESPACE)


# -- containers: probes, resources, hardening -------------------------------------------------------------


def test_every_container_is_hardened_probed_and_bounded(values_case):
    _, values = values_case
    for w in workloads(render(values)):
        spec = pod_spec(w)
        where = w["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["enableServiceLinks"] is False, where  # a Service named wds would set WDS_PORT=tcp://...
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        for c in containers(w):
            where = f"{w['metadata']['name']}/{c['name']}"
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in c, f"{where}: no {probe}"
            resources = c["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert {"cpu", "memory"} <= set(resources["limits"]), where
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["runAsUser"] > 0, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc.get("privileged", False) is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            if component(w) in MDPIPE_COMPONENTS:
                assert c["image"] == "ghcr.io/mdpipe/mdpipe:0.1.0", where
                assert c["args"] == [component(w)], where
                assert sc["runAsUser"] == 10001 and sc["runAsGroup"] == 10001, where
                ports = {p["name"] for p in c["ports"]}
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", where
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", where
                assert c["livenessProbe"]["httpGet"]["port"] in ports, where
                assert c["readinessProbe"]["httpGet"]["port"] in ports, where
                assert any(m["mountPath"] == TMP for m in c["volumeMounts"]), where


def test_scp_has_writable_data_and_tmp(values_case):
    _, values = values_case
    scp = named(render(values), "Deployment", f"{FULL}-scp")
    (c,) = containers(scp)
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert env_of(c)["SCP_DATA_DIR"]["value"] in mounts
    assert TMP in mounts


def test_scp_is_stateless_replicated_and_rolled():
    """pyDAL's migration records are in the database: SCP_DATA_DIR is an emptyDir, no claim anywhere, two
    replicas rolled one at a time under a disruption budget."""
    docs = render()
    scp = named(docs, "Deployment", f"{FULL}-scp")
    assert scp["spec"]["replicas"] == 2
    assert scp["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    volumes = {v["name"]: v for v in pod_spec(scp)["volumes"]}
    (c,) = containers(scp)
    data = next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == env_of(c)["SCP_DATA_DIR"]["value"])
    assert set(volumes[data]) == {"name", "emptyDir"}
    assert not of_kind(docs, "PersistentVolumeClaim")
    assert env_of(c)["PYDAL_URI"]["value"].startswith("postgres://")
    pdb = named(docs, "PodDisruptionBudget", f"{FULL}-scp")
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]
    assert selects(pdb["spec"]["selector"], scp["spec"]["template"]["metadata"]["labels"])
    assert not [h for h in of_kind(docs, "HorizontalPodAutoscaler") if component(h) == "scp"]
    # one replica: no budget (minAvailable 1 of 1 would block every drain)
    single = render({"scp": {"replicas": 1}})
    assert named(single, "Deployment", f"{FULL}-scp")["spec"]["strategy"]["type"] == "RollingUpdate"
    assert not [p for p in of_kind(single, "PodDisruptionBudget") if component(p) == "scp"]


def test_scp_autoscales_like_wds_when_asked():
    docs = render(VALUE_SETS["scp-autoscaling"])
    scp = named(docs, "Deployment", f"{FULL}-scp")
    assert "replicas" not in scp["spec"]
    hpa = named(docs, "HorizontalPodAutoscaler", f"{FULL}-scp")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{FULL}-scp",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 6)
    assert named(docs, "PodDisruptionBudget", f"{FULL}-scp")["spec"]["minAvailable"] == 1
    docs = render({"scp": {"autoscaling": {"enabled": True, "minReplicas": 1}}})
    assert not [p for p in of_kind(docs, "PodDisruptionBudget") if component(p) == "scp"]


def test_scp_sqlite_is_one_replica_on_a_kept_volume():
    docs = render(VALUE_SETS["scp-sqlite"])
    scp = named(docs, "Deployment", f"{FULL}-scp")
    assert scp["spec"]["replicas"] == 1 and scp["spec"]["strategy"] == {"type": "Recreate"}
    (c,) = containers(scp)
    assert env_of(c)["PYDAL_URI"] == {"name": "PYDAL_URI", "value": "sqlite://scp.sqlite"}  # in SCP_DATA_DIR
    data = next(v for v in pod_spec(scp)["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"]["claimName"] == f"{FULL}-scp"
    claim = named(docs, "PersistentVolumeClaim", f"{FULL}-scp")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert (
        claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    )  # the users outlive an uninstall
    assert not [p for p in of_kind(docs, "PodDisruptionBudget") if component(p) == "scp"]
    assert not [d for d in docs if component(d) == "postgresql"]
    assert "postgres-password" not in {k for _, k in secret_values(docs)}
    policies = of_kind(docs, "NetworkPolicy")
    assert not allowed(policies, pod("scp"), INTERNET, 5432)  # no database server to reach
    docs = render(
        VALUE_SETS["scp-sqlite"]
        | {
            "scp": {
                **VALUE_SETS["scp-sqlite"]["scp"],
                "persistence": {"enabled": True, "existingClaim": "users"},
            }
        }
    )
    assert not of_kind(docs, "PersistentVolumeClaim")
    data = next(
        v for v in pod_spec(named(docs, "Deployment", f"{FULL}-scp"))["volumes"] if v["name"] == "data"
    )
    assert data["persistentVolumeClaim"]["claimName"] == "users"


# Budgets the values turn off on purpose.
PDB_TURNED_OFF = {"per-class-mdp": {f"{FULL}-mdp-rest"}}


def test_every_deployment_of_several_pods_has_a_disruption_budget(values_case):
    """A Deployment that always runs two pods or more has one budget, which never blocks a drain; a single
    pod (the emulator, SCP with SQLite, MDL or SCP scaled to one) has none that would."""
    name, values = values_case
    docs = render(values)
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(docs, "HorizontalPodAutoscaler")}
    budgets = of_kind(docs, "PodDisruptionBudget")
    for d in of_kind(docs, "Deployment"):
        deployment = d["metadata"]["name"]
        least = hpas[deployment]["spec"]["minReplicas"] if deployment in hpas else d["spec"]["replicas"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        mine = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        if least > 1 and deployment not in PDB_TURNED_OFF.get(name, set()):
            assert len(mine) == 1, f"{deployment}: {least} pods, {len(mine)} budgets"
        for b in mine:
            if "minAvailable" in b["spec"]:
                assert b["spec"]["minAvailable"] < least, f"{b['metadata']['name']} blocks drains"
            else:
                assert b["spec"]["maxUnavailable"] >= 1, b["metadata"]["name"]
    for b in budgets:  # and each budget covers one Deployment's pods
        covered = [
            d
            for d in of_kind(docs, "Deployment")
            if selects(b["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(covered) == 1, b["metadata"]["name"]


# -- secrets ----------------------------------------------------------------------------------------------


def secret_refs(workload: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (Secret, key) a workload reads, by env, envFrom or volume (key "*" for a whole Secret)."""
    refs = set()
    spec = pod_spec(workload)
    for c in containers(workload):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
        for source in c.get("envFrom", []):
            if "secretRef" in source:
                refs.add((source["secretRef"]["name"], "*"))
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            refs.add((volume["secret"]["secretName"], "*"))
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                refs.add((source["secret"]["name"], "*"))
    return refs


@pytest.mark.parametrize(
    ("values", "secret"),
    [
        (VALUE_SETS["massive-existing-secret"], ("massive-key", "key")),
        (VALUE_SETS["massive-key-value"], (f"{FULL}-massive", "api-key")),
        (
            {**VALUE_SETS["per-class-mdp"], **VALUE_SETS["massive-existing-secret"]},
            ("massive-key", "key"),
        ),
    ],
    ids=["existingSecret", "value", "mdp-groups"],
)
def test_the_vendor_key_reaches_mdl_and_mdp_only(values, secret):
    """MDL streams, MDP calls the REST API (hydration, chart history): the one Secret key reaches their
    pods (every MDP group's) and no other, WDS (which asks MDP for history through Redis) and SCP
    included; MDP's REST URL is the vendor's."""
    docs = render(values)
    readers = {
        w["metadata"]["name"]
        for w in workloads(docs)
        if secret in secret_refs(w) or (secret[0], "*") in secret_refs(w)
    }
    mdp = {w["metadata"]["name"] for w in workloads(docs) if component(w) == "mdp"}
    assert mdp and readers == {f"{FULL}-mdl"} | mdp
    assert readers_of(docs, secret) == VENDOR_CLIENTS
    ref = {"name": secret[0], "key": secret[1]}
    mdl = named(docs, "Deployment", f"{FULL}-mdl")
    env = env_of(containers(mdl)[0])
    assert env["MASSIVE_API_KEY"]["valueFrom"]["secretKeyRef"] == ref
    assert env["MASSIVE_FEED"]["value"] == "socket.massive.com"
    assert env["MASSIVE_TLS"]["value"] == "auto"
    for w in workloads(docs):
        where, env = w["metadata"]["name"], env_of(containers(w)[0])
        if component(w) == "mdp":
            assert env["MASSIVE_API_KEY"]["valueFrom"]["secretKeyRef"] == ref, where
            assert env["MASSIVE_REST_URL"]["value"] == "https://api.massive.com", where
        if component(w) not in VENDOR_CLIENTS:
            assert all("MASSIVE_API_KEY" not in env_of(c) for c in containers(w)), where
        if component(w) != "mdp":
            assert not [n for c in containers(w) for n in env_of(c) if n.startswith("MASSIVE_REST")], where
    # no emulator when there is a key, and the key never lands in the release's shared Secret
    assert not [w for w in workloads(docs) if component(w) == "sim"]
    assert "sim-api-key" not in {k for (_, k) in secret_values(docs)}
    if "apiKey" in values["massive"]:
        massive = named(docs, "Secret", f"{FULL}-massive")
        assert list(massive["data"]) == ["api-key"]
        assert [
            k for (n, k) in secret_values(docs) if secret_values(docs)[(n, k)] == values["massive"]["apiKey"]
        ] == ["api-key"]


def test_mdp_rest_settings_from_the_values():
    """massive.restUrl is MDP's REST URL with a key (the emulator's without); the REST tuning goes in
    mdp.env, which reaches MDP (every group) and nothing else."""
    values = {
        "massive": {"existingSecret": "massive-key", "restUrl": "https://rest.example.org:8443/"},
        "mdp": {"env": {"MASSIVE_REST_RATE": 0.08, "MDP_HYDRATE": "false"}},
    }
    docs = render(values)
    env = env_of(containers(named(docs, "Deployment", f"{FULL}-mdp"))[0])
    assert env["MASSIVE_REST_URL"]["value"] == "https://rest.example.org:8443"  # as the app stores it
    assert env["MASSIVE_REST_RATE"]["value"] == "0.08" and env["MDP_HYDRATE"]["value"] == "false"
    for w in workloads(docs):
        if component(w) != "mdp":
            assert "MASSIVE_REST_RATE" not in env_of(containers(w)[0]), component(w)
    emulated = render({"massive": {"restUrl": "https://rest.example.org"}})
    env = env_of(containers(named(emulated, "Deployment", f"{FULL}-mdp"))[0])
    assert env["MASSIVE_REST_URL"]["value"] == SIM_REST


def readers_of(docs: list[dict[str, Any]], secret: tuple[str, str]) -> set[str]:
    """The components whose pods read the Secret key (or the whole Secret)."""
    return {
        component(w)
        for w in workloads(docs)
        if secret in secret_refs(w) or (secret[0], "*") in secret_refs(w)
    }


@pytest.mark.parametrize(
    ("case", "secret", "readers"),
    [
        ("defaults", (FULL, "rabbitmq-password"), {"rabbitmq", "mdl", "mdp", "scp"}),
        ("existing-secrets-hosts", ("mq-password", "rabbitmq-password"), {"rabbitmq", "mdl", "mdp", "scp"}),
        ("external-services", ("mq", "rabbitmq-url"), {"mdl", "mdp", "scp"}),
    ],
)
def test_the_broker_credential_reaches_its_clients_only(case, secret, readers):
    """MDL, MDP and SCP use RabbitMQ; WDS and the emulator get no broker URL at all (production mode asks
    them for none), so no credential and no placeholder either."""
    docs = render(VALUE_SETS[case])
    assert readers_of(docs, secret) == readers
    for w in workloads(docs):
        if component(w) not in readers:
            for c in containers(w):
                assert not [n for n in env_of(c) if "RABBITMQ" in n], f"{w['metadata']['name']}/{c['name']}"
    for comp in ("mdl", "mdp", "scp"):
        (w,) = [w for w in workloads(docs) if component(w) == comp]
        assert "RABBITMQ_URL" in env_of(containers(w)[0])


def test_each_generated_secret_reaches_its_readers_only():
    """docs/kubernetes.md's table of secrets, "Read by", for the default install."""
    docs = render()
    expected = {
        "wds-token-secret": {"wds", "scp"},
        "scp-session-secret": {"scp"},
        "scp-admin-password": {"scp"},
        "sim-api-key": {"sim", "mdl", "mdp"},  # MDL's and MDP's vendor key when the emulator is the vendor
        "rabbitmq-password": {"rabbitmq", "mdl", "mdp", "scp"},
        "redis-password": {"redis", "mdl", "mdp", "wds", "scp"},
        "postgres-password": {"postgresql", "scp"},
    }
    assert {key: readers_of(docs, (FULL, key)) for key in expected} == expected


@pytest.mark.parametrize("case", ["defaults", "per-class-mdp"])
def test_without_a_key_mdl_and_mdp_read_the_emulator(case):
    docs = render(VALUE_SETS[case])
    sim = named(docs, "Deployment", f"{FULL}-sim")
    mdl = named(docs, "Deployment", f"{FULL}-mdl")
    mdl_env, sim_env = env_of(containers(mdl)[0]), env_of(containers(sim)[0])
    assert mdl_env["MASSIVE_FEED"]["value"] == f"{FULL}-sim:8765"
    assert mdl_env["MASSIVE_TLS"]["value"] == "false"
    assert mdl_env["MASSIVE_API_KEY"]["valueFrom"] == sim_env["SIM_API_KEY"]["valueFrom"]
    service = named(docs, "Service", f"{FULL}-sim")
    assert {p["port"] for p in service["spec"]["ports"]} == {8765, 9100}
    assert sim_env["SIM_MARKET"]["value"] == mdl_env["MASSIVE_MARKET"]["value"]
    # MDP's REST calls go to the emulator's HTTP port, with the emulator's key
    assert f"http://{service['metadata']['name']}:{sim_env['SIM_HTTP_PORT']['value']}" == SIM_REST
    mdp = [w for w in workloads(docs) if component(w) == "mdp"]
    assert len(mdp) == (3 if case == "per-class-mdp" else 1)
    for w in mdp:
        mdp_env = env_of(containers(w)[0])
        assert mdp_env["MASSIVE_REST_URL"]["value"] == SIM_REST, w["metadata"]["name"]
        assert mdp_env["MASSIVE_API_KEY"]["valueFrom"] == sim_env["SIM_API_KEY"]["valueFrom"]
    assert readers_of(docs, (FULL, "sim-api-key")) == {"sim"} | VENDOR_CLIENTS


def test_no_secret_in_values_yaml():
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    secretish = re.compile(r"(password|secret|apikey|api_key|token|cookie|key)$", re.IGNORECASE)

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                here = f"{path}.{k}"
                if secretish.search(k) and not isinstance(v, dict | list) and not k.endswith("SecretKey"):
                    assert v in ("", None), f"{here} has a value in values.yaml"
                if k == "existingSecret":
                    assert v == "", f"{here} names a Secret by default"
                walk(v, here)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(values, "")
    for docs in (render(), render(VALUE_SETS["external-services"])):
        generated = secret_values(docs)
        assert generated, "the release generates its secrets"
        for (name, key), value in generated.items():
            assert value not in text, f"{name}/{key} comes from values.yaml"
            assert len(value) >= (24 if key == "scp-admin-password" else 32), key
            assert value.isalnum(), key  # safe inside the URLs the chart composes


def test_generated_secrets_are_random_and_kept_on_upgrade(chart):
    first = secret_values(render())
    again = {
        (s["metadata"]["name"], k): v
        for path, text in chart.render({}, name=RELEASE, namespace=NAMESPACE).items()
        if path.endswith(".yaml")
        for s in yaml.safe_load_all(text)
        if s and s["kind"] == "Secret"
        for k, v in s["data"].items()
    }
    assert {
        k: base64.b64decode(v).decode() for k, v in again.items()
    } != first  # offline: no lookup, new values
    assert set(again) == set(first)
    source = (CHART / "templates" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in source
    secret = named(render(), "Secret", FULL)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert set(secret["data"]) == {
        "wds-token-secret",
        "scp-session-secret",
        "scp-admin-password",
        "sim-api-key",
        "rabbitmq-password",
        "redis-password",
        "postgres-password",
    }


def test_existing_secrets_replace_generated_ones():
    docs = render(VALUE_SETS["existing-secrets-hosts"])
    assert not of_kind(docs, "Secret")  # every secret was given
    scp = env_of(containers(named(docs, "Deployment", f"{FULL}-scp"))[0])
    wds = env_of(containers(named(docs, "Deployment", f"{FULL}-wds"))[0])
    assert scp["SCP_SESSION_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "scp-session",
        "key": "session-secret",
    }
    assert scp["SCP_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "scp-admin", "key": "password"}
    assert scp["WDS_TOKEN_SECRET"] == wds["WDS_TOKEN_SECRET"]
    assert wds["WDS_TOKEN_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "wds-token"
    rabbitmq = env_of(containers(named(docs, "StatefulSet", f"{FULL}-rabbitmq"))[0])
    assert rabbitmq["RABBITMQ_DEFAULT_PASS"]["valueFrom"]["secretKeyRef"]["name"] == "mq-password"
    assert scp["MDPIPE_K8S_RABBITMQ_PASSWORD"]["valueFrom"] == rabbitmq["RABBITMQ_DEFAULT_PASS"]["valueFrom"]


def test_notes_tell_how_to_read_the_admin_password():
    text = notes()
    assert (
        f"kubectl -n {NAMESPACE} get secret {FULL} -o jsonpath='{{.data.scp-admin-password}}' | base64 -d"
        in text
    )
    assert "admin@example.com" in text
    assert "scp-admin" in notes(VALUE_SETS["existing-secrets-hosts"])
    assert "no MDP group consumes" not in notes(VALUE_SETS["per-class-mdp"])
    partial = {"mdp": {"groups": [{"name": "stats", "classes": "trades,aggregates"}]}}
    assert "no MDP group consumes quotes, halts, imbalances, values, other" in notes(partial)


# -- signal services: a Redis user each ------------------------------------------------------------------


SIGNALS = VALUE_SETS["signal-services"]


def is_signal_services_peer(peer: dict[str, Any]) -> bool:
    """The peer Redis admits for the signal services: this namespace's pods labelled with a listed name."""
    return set(peer) == {"podSelector"} and [
        e["key"] for e in peer["podSelector"].get("matchExpressions", [])
    ] == [SIGNAL_LABEL]


def redis_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = containers(named(docs, "StatefulSet", f"{FULL}-redis"))
    return c


def acl_lines(docs: list[dict[str, Any]], tmp_path: Path) -> list[str]:
    """The ``user`` lines the chart's Redis writes at start: its start script run by sh with the environment
    it gets (the Secrets as rendered, stand-ins for the user's), /run/redis in a temporary folder and a
    redis-server that does nothing."""
    c = redis_container(docs)
    assert c["command"] == ["sh", "-c"]
    (script,) = c["args"]
    assert script.count("/run/redis/auth.conf") >= 1 and "/run/redis/" not in script.replace(
        "/run/redis/auth.conf", ""
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "redis-server").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", **resolved_env(docs, c)}
    subprocess.run(
        ["sh", "-c", script.replace("/run/redis/", f"{tmp_path}/")], env=env, check=True, timeout=10
    )
    conf = (tmp_path / "auth.conf").read_text().splitlines()
    assert conf[0] == f'requirepass "{env["REDIS_PASSWORD"]}"'
    assert oct((tmp_path / "auth.conf").stat().st_mode & 0o777) == "0o600"
    return conf[1:]


def test_each_signal_service_gets_the_acl_line_of_mdc_acl(tmp_path):
    """The line the chart's Redis loads for a service is mdc.acl's, under the chart's MDC prefix: the chart
    cannot drift from the one declaration. The password is the service's Secret's (generated, or the
    user's existingSecret), and the same one is in the service's REDIS_URL."""
    from mdc import acl

    docs = render(SIGNALS)
    prefix = SIGNALS["mdc"]["prefix"]
    assert {
        env_of(containers(w)[0]).get("MDC_PREFIX", {}).get("value")
        for w in workloads(docs)
        if component(w) in ("mdp", "wds", "scp")
    } == {prefix}
    lines = acl_lines(docs, tmp_path)
    env = resolved_env(docs, redis_container(docs))
    passwords = {}
    for line, service in zip(lines, SIGNALS["signalServices"], strict=True):
        name = service["name"]
        password = line.split(" ", 4)[3].removeprefix(">")
        assert line == f"user {acl.user(name)} on >{password} {acl.rules(name, prefix)}"
        passwords[name] = password
    generated = secret_values(docs)
    secret = f"{FULL}-signals-breakouts"
    assert passwords["breakouts"] == generated[(secret, "redis-password")]
    assert len(passwords["breakouts"]) >= 32 and passwords["breakouts"].isalnum()
    url = generated[(secret, "REDIS_URL")]
    assert url == f"redis://mdpipe-breakouts:{passwords['breakouts']}@{FULL}-redis:6379/0"
    assert named(docs, "Service", f"{FULL}-redis")["spec"]["ports"][0]["port"] == 6379
    # the user's Secret: read by Redis under the key redis-password, and no Secret of the chart for it
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis_container(docs)["env"] if "valueFrom" in e
    }
    assert refs["REDIS_SIGNALS_PASSWORD_MY_BOT"] == {"name": "bot-redis", "key": "redis-password"}
    assert refs["REDIS_SIGNALS_PASSWORD_BREAKOUTS"] == {"name": secret, "key": "redis-password"}
    assert passwords["my_bot"] == env["REDIS_SIGNALS_PASSWORD_MY_BOT"]
    assert {s["metadata"]["name"] for s in of_kind(docs, "Secret")} == {FULL, secret}
    # no password in the ConfigMap, nor in the pod's command: they come from the environment
    config = named(docs, "ConfigMap", f"{FULL}-redis")["data"]["redis.conf"]
    for password in passwords.values():
        assert password not in json.dumps(config) and password not in json.dumps(
            redis_container(docs)["args"]
        )
    assert "include /run/redis/auth.conf" in config


def test_the_start_script_refuses_a_password_redis_or_a_url_would_mangle(tmp_path):
    docs = render({"signalServices": [{"name": "crosses", "existingSecret": "crosses-redis"}]})
    c = redis_container(docs)
    (script,) = c["args"]
    for bad in ("", "two words", 'a"quote', "a@b"):
        env = {**resolved_env(docs, c), "REDIS_SIGNALS_PASSWORD_CROSSES": bad, "PATH": os.environ["PATH"]}
        result = subprocess.run(
            ["sh", "-c", script.replace("/run/redis/", f"{tmp_path}/")],
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert result.returncode == 1 and "the password of mdpipe-crosses" in result.stderr, bad


@pytest.mark.parametrize(
    "values", [SIGNALS, {**SIGNALS, **VALUE_SETS["per-class-mdp"]}], ids=["signal-services", "mdp-groups"]
)
def test_the_signal_secrets_reach_redis_only(values):
    """A service's credential is for its own pods: no workload of the chart but Redis reads it (never WDS,
    SCP, MDL, MDP or the emulator), by env, envFrom or volume, nor finds its user in its environment."""
    docs = render(values)
    services = values["signalServices"]
    signal_secrets = {
        s.get("existingSecret") or f"{FULL}-signals-{s['name'].replace('_', '-')}" for s in services
    }
    assert signal_secrets == {f"{FULL}-signals-breakouts", "bot-redis"}
    for secret in signal_secrets:
        readers = {component(w) for w in workloads(docs) if secret in {n for n, _ in secret_refs(w)}}
        assert readers == {"redis"}, (secret, readers)
    seen = set()
    for w in workloads(docs):
        seen.add(component(w))
        if component(w) != "redis":
            text = json.dumps(pod_spec(w))
            assert "-signals-" not in text and "bot-redis" not in text, w["metadata"]["name"]
            assert not [s for s in services if f"mdpipe-{s['name']}" in text], w["metadata"]["name"]
            assert "REDIS_SIGNALS" not in text, w["metadata"]["name"]
    assert seen >= DATA_PLANE | {"sim", "redis"}
    # nothing of theirs in the release's shared Secret
    assert {k for n, k in secret_values(docs) if n == FULL} == {
        k for n, k in secret_values(render()) if n == FULL
    }


def test_signal_passwords_are_generated_once_and_kept_on_upgrade(chart):
    first = secret_values(render(SIGNALS))
    again = {
        (s["metadata"]["name"], k): base64.b64decode(v).decode()
        for path, text in chart.render(SIGNALS, name=RELEASE, namespace=NAMESPACE).items()
        if path.endswith(".yaml")
        for s in yaml.safe_load_all(text)
        if s and s["kind"] == "Secret"
        for k, v in s["data"].items()
    }
    key = (f"{FULL}-signals-breakouts", "redis-password")
    assert again[key] != first[key]  # offline: no lookup, a new value
    source = (CHART / "templates" / "signals.yaml").read_text()
    assert 'lookup "v1" "Secret" $.Release.Namespace $name' in source
    assert "randAlphaNum 32" in source


def test_signal_services_reach_redis_through_the_network_policies():
    policies = of_kind(render(SIGNALS), "NetworkPolicy")
    ok = functools.partial(allowed, policies)
    redis = pod("redis")
    for name in ("breakouts", "my_bot"):
        assert ok(outside_pod(NAMESPACE, **{SIGNAL_LABEL: name}), redis, 6379), name
        assert not ok(outside_pod(NAMESPACE, **{SIGNAL_LABEL: name}), redis, 6380)
        assert not ok(outside_pod("default", **{SIGNAL_LABEL: name}), redis, 6379)  # this namespace only
    assert not ok(outside_pod(NAMESPACE, **{SIGNAL_LABEL: "momentum"}), redis, 6379)  # a name not listed
    for stranger in (STRANGER_SAME_NS, STRANGER_OTHER_NS, OTHER_RELEASE, INGRESS_NGINX):
        assert not ok(stranger, redis, 6379)
    for comp in ("mdl", "mdp", "wds", "scp"):
        assert ok(pod(comp), redis, 6379)
    (rule,) = [r for p in policies if component(p) == "redis" for r in p["spec"]["ingress"]]
    (peer,) = [p for p in rule["from"] if is_signal_services_peer(p)]
    assert peer["podSelector"]["matchExpressions"] == [
        {"key": SIGNAL_LABEL, "operator": "In", "values": ["breakouts", "my_bot"]}
    ]
    # none listed: Redis admits the data plane only
    (rule,) = [
        r for p in of_kind(render(), "NetworkPolicy") if component(p) == "redis" for r in p["spec"]["ingress"]
    ]
    assert not [p for p in rule["from"] if "podSelector" in p and "matchExpressions" in p["podSelector"]]


def test_with_an_external_redis_the_notes_give_the_acl_lines():
    from mdc import acl

    values = {**SIGNALS, "redis": EXTERNAL["redis"]}
    docs = render(values)
    assert not [s for s in of_kind(docs, "Secret") if "-signals-" in s["metadata"]["name"]]
    assert not [d for d in docs if component(d) == "redis"]
    text = notes(values)
    for service in SIGNALS["signalServices"]:
        name = service["name"]
        assert f"  user {acl.user(name)} on >PASSWORD {acl.rules(name, 'us')}\n" in text, name
    text = notes(SIGNALS)
    assert f"REDIS_URL from the Secret {FULL}-signals-breakouts" in text
    assert (
        f"{SIGNAL_LABEL}=breakouts" in text
        and "password from the Secret bot-redis (key redis-password)" in text
    )
    assert "Signal services" not in notes()
    assert "ACL users per node" not in text
    text = notes({**SIGNALS, "redis": REDIS_CLUSTER})
    assert "a Redis Cluster keeps ACL users per node: add each line on every node" in text
    assert f"REDIS_CLUSTER_NODES={','.join(CLUSTER_SEEDS)}" in text


def test_an_external_redis_cluster_reaches_every_redis_client():
    """REDIS_CLUSTER_NODES goes with REDIS_URL, the cluster's credential, into every pod that gets it (MDL,
    MDP of every group, WDS, SCP): one value, the seeds in order. Never into the emulator, nor with one
    Redis."""
    for values in ({"redis": REDIS_CLUSTER}, {"redis": REDIS_CLUSTER, **VALUE_SETS["per-class-mdp"]}):
        docs = render(values)
        readers = {}
        for w in workloads(docs):
            env = env_of(containers(w)[0])
            assert ("REDIS_URL" in env) == ("REDIS_CLUSTER_NODES" in env), w["metadata"]["name"]
            if "REDIS_CLUSTER_NODES" in env:
                assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "cache", "key": "redis-url"}
                readers[w["metadata"]["name"]] = env["REDIS_CLUSTER_NODES"]["value"]
        assert {n.removeprefix(f"{FULL}-").split("-")[0] for n in readers} == DATA_PLANE
        assert set(readers.values()) == {",".join(CLUSTER_SEEDS)}
        assert not [w for w in workloads(docs) if component(w) == "redis"]
    for values in VALUE_SETS.values():
        if values.get("redis") is not REDIS_CLUSTER:
            assert "REDIS_CLUSTER_NODES" not in json.dumps(render(values))


async def test_the_rendered_acl_line_lets_a_service_publish_its_own_signals_only(tmp_path):
    """The real Redis: the exact line the chart renders for a service, under a prefix and a name of this
    run, applied with ACL SETUSER (mdc.acl._split keeps the selector one argument); that user publishes
    with mdc.publisher.Publisher on its own channels, and cannot publish on a market channel nor write the
    market state."""
    from redis.asyncio import Redis
    from redis.exceptions import NoPermissionError

    from mdc import acl
    from mdc.names import Names
    from mdc.publisher import Publisher

    from .conftest import REDIS_URL, eventually

    run = os.urandom(4).hex()
    name, prefix = f"t{run}", f"helmacl{run}"
    docs = render({"mdc": {"prefix": prefix}, "signalServices": [{"name": name}]})
    (line,) = acl_lines(docs, tmp_path)
    password = secret_values(docs)[(f"{FULL}-signals-t{run}", "redis-password")]
    words = line.split(" ", 3)
    assert words[:3] == ["user", acl.user(name), "on"] and words[3].startswith(f">{password} ")
    admin = Redis.from_url(REDIS_URL)
    await admin.execute_command("ACL", "SETUSER", acl.user(name), "reset", *acl._split(line.split(" ", 2)[2]))
    host_url = REDIS_URL.replace("redis://", f"redis://{acl.user(name)}:{password}@")
    service = Redis.from_url(host_url)
    received: list[dict[str, Any]] = []
    pubsub = admin.pubsub()
    try:
        assert await service.execute_command("PING")
        await pubsub.psubscribe(Names(prefix).redis_channel("signals.*"))
        await pubsub.get_message(timeout=1)  # the subscription's confirmation
        async with Publisher(host_url, name, prefix=prefix, instance="chart") as pub:
            pub.publish({"sym": "AAPL", "level": 1}, suffix="AAPL", type="breakout")
            pub.publish({"n": 2})
            await pub.flush()
            assert pub.stats["published"] == 2 and pub.pending.dropped == 0
            assert pub.last_seq == {f"signals.{name}.AAPL": 1, f"signals.{name}": 1}
            heartbeat = Names(prefix).heartbeat(f"signals.{name}", "chart")  # written under its own name
            await eventually(lambda: admin.exists(heartbeat))
        while len(received) < 2:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert message, "the signals were not published"
            received.append(json.loads(message["data"]))
        assert [(m["channel"], m["type"], m["seq"]) for m in received] == [
            (f"signals.{name}.AAPL", "breakout", 1),
            (f"signals.{name}", "signal", 1),
        ]
        names = Names(prefix)
        for channel in (names.redis_channel("trades.AAPL"), "md:trades.AAPL",
                        names.redis_channel("signals.momentum")):  # fmt: skip
            with pytest.raises(NoPermissionError):
                await service.publish(channel, b"{}")
        for key in (names.stats("AAPL"), "md:stats:AAPL", names.signal_seq("signals.momentum")):
            with pytest.raises(NoPermissionError):
                await service.set(key, b"{}")
        assert not await admin.exists(names.stats("AAPL"))
    finally:
        await pubsub.aclose()
        await service.aclose()
        await admin.execute_command("ACL", "DELUSER", acl.user(name))
        keys = [k async for k in admin.scan_iter(match=f"{prefix}:*")]
        if keys:
            await admin.delete(*keys)
        await admin.aclose()


# -- the settings each component gets ---------------------------------------------------------------------

GROUPS = {  # as mdpipe.cli loads them
    "mdl": ("MassiveSettings", "MdqSettings", "MdlSettings"),
    "mdp": ("MdqSettings", "MdcSettings", "MdpSettings", "MassiveRestSettings"),
    "wds": ("MdcSettings", "WdsSettings", "MassiveRestSettings", "TradingDaySettings"),  # without a key
    "scp": ("MarketSettings", "MdcSettings", "MdqSettings", "ScpSettings", "WdsSettings"),
    "sim": ("SimSettings",),
}
GIVEN = {  # what a user's existingSecret would hold
    "mq": "amqp://mdpipe:pw@rabbitmq.example.org:5672/md",
    "cache": "rediss://:pw@redis.example.org:6380/0",
    "db": "postgres://scp:pw@db.example.org:5432/scp",
}


def resolved_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment the container would see: Secrets read (generated ones as rendered, the user's as
    stand-ins) and $(VAR) references expanded as the kubelet does."""
    generated = secret_values(docs)
    out: dict[str, str] = {}
    for e in container["env"]:
        if "value" in e:
            out[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: out.get(m.group(1), m.group(0)), e["value"])
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            out[e["name"]] = generated.get((ref["name"], ref["key"]), GIVEN.get(ref["name"], "s3cret" * 8))
    return out


def test_each_component_accepts_its_settings_in_production_mode(values_case, monkeypatch):
    """The rendered environment passes the app's own validation (mdpipe.cli loading mdpipe.settings as the
    command does), production mode included: no development secret, no guest RabbitMQ user in the
    components that use the broker, addresses every pod can be reached on."""
    settings = importlib.import_module("mdpipe.settings")
    cli, logs = importlib.import_module("mdpipe.cli"), importlib.import_module("mdpipe.logs")
    monkeypatch.setattr(logs, "setup", lambda *a, **k: None)  # the test's logging stays as it is
    monkeypatch.setattr(logs, "register_secret", lambda value: None)
    _, values = values_case
    docs = render(values)
    seen = set()
    for w in workloads(docs):
        name = component(w)
        if name not in GROUPS:
            continue
        seen.add(name)
        env = resolved_env(docs, containers(w)[0])
        assert not [v for v in env.values() if "$(" in v], "an unresolved $(VAR)"
        for var in list(os.environ):
            if var.startswith(
                (
                    "MDPIPE_",
                    "LOG_",
                    "RABBITMQ_",
                    "REDIS_",
                    "PYDAL_",
                    "MASSIVE_",
                    "MDQ_",
                    "MDL_",
                    "MDC_",
                    "MDP_",
                    "WDS_",
                    "SCP_",
                    "SIM_",
                )
            ):
                monkeypatch.delenv(var)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        groups = [getattr(settings, g) for g in GROUPS[name]]
        common = cli._prepare(name, argparse.Namespace(), *groups)[0]
        assert common.mdpipe_env == "production"
        if settings.MdqSettings in groups:  # the broker's users: without their URL, production refuses
            monkeypatch.delenv("RABBITMQ_URL")
            with pytest.raises(settings.ConfigError, match="RABBITMQ_URL"):
                cli._prepare(name, argparse.Namespace(), *groups)
            monkeypatch.setenv("RABBITMQ_URL", env["RABBITMQ_URL"])
        else:
            assert "RABBITMQ_URL" not in env, name
        assert env.get(f"{name.upper()}_HOST", env.get(f"{name.upper()}_HTTP_HOST")) == "0.0.0.0"
        if name in VENDOR_CLIENTS:
            assert env["MASSIVE_API_KEY"]
        else:
            assert "MASSIVE_API_KEY" not in env, name
        if name == "mdp":  # the REST URL the app accepts: the emulator's Service, or the vendor's
            rest = settings.load(settings.MassiveRestSettings, production=True)
            assert rest.massive_rest_url in (SIM_REST, "https://api.massive.com"), rest.massive_rest_url
            assert (rest.massive_rest_url == SIM_REST) == any(component(s) == "sim" for s in workloads(docs))
        for var in env:
            monkeypatch.delenv(var)
    assert seen >= DATA_PLANE


def test_components_share_the_contracts(values_case):
    _, values = values_case
    docs = render(values)
    envs: dict[str, list[dict[str, Any]]] = {}
    for w in workloads(docs):
        if component(w) in MDPIPE_COMPONENTS:
            envs.setdefault(component(w), []).append(env_of(containers(w)[0]))

    def one(var: str, names: tuple[str, ...]) -> None:
        found = {json.dumps(e[var], sort_keys=True) for n in names for e in envs[n]}
        assert len(found) == 1, f"{var} differs: {found}"

    one("MDQ_EXCHANGE", ("mdl", "mdp", "scp"))
    one("MDQ_SHARDS", ("mdl", "mdp", "scp"))
    one("MDC_PREFIX", ("mdp", "wds", "scp"))
    one("WDS_TOKEN_SECRET", ("wds", "scp"))
    one("RABBITMQ_URL", ("mdl", "mdp", "scp"))
    one("REDIS_URL", ("mdl", "mdp", "wds", "scp"))
    one("MASSIVE_MARKET", ("mdl", "scp"))
    one("MASSIVE_API_KEY", ("mdl", "mdp"))  # the one vendor key (or the emulator's)


def test_browser_urls_follow_the_ingress():
    docs = render()
    scp = env_of(containers(named(docs, "Deployment", f"{FULL}-scp"))[0])
    wds = env_of(containers(named(docs, "Deployment", f"{FULL}-wds"))[0])
    assert scp["SCP_WDS_URL"]["value"] == "wss://mdpipe.example.com/ws"
    assert wds["WDS_ALLOWED_ORIGINS"]["value"] == "https://mdpipe.example.com"
    docs = render(VALUE_SETS["existing-secrets-hosts"])
    scp = env_of(containers(named(docs, "Deployment", f"{FULL}-scp"))[0])
    wds = env_of(containers(named(docs, "Deployment", f"{FULL}-wds"))[0])
    assert scp["SCP_WDS_URL"]["value"] == "wss://ws.example.org/ws"
    assert wds["WDS_ALLOWED_ORIGINS"]["value"] == "https://md.example.org,https://desk.example.org"
    docs = render(VALUE_SETS["ingress-off"])
    assert not of_kind(docs, "Ingress")
    scp = env_of(containers(named(docs, "Deployment", f"{FULL}-scp"))[0])
    wds = env_of(containers(named(docs, "Deployment", f"{FULL}-wds"))[0])
    assert "SCP_WDS_URL" not in scp and "WDS_ALLOWED_ORIGINS" not in wds  # the app's defaults (port-forward)
    docs = render(
        {
            "scp": {"ingress": {"enabled": False}, "publicUrl": "https://md.example.org/"},
            "wds": {"ingress": {"enabled": False}},
        }
    )
    wds = env_of(containers(named(docs, "Deployment", f"{FULL}-wds"))[0])
    assert wds["WDS_ALLOWED_ORIGINS"]["value"] == "https://md.example.org"


def test_large_numbers_stay_integers_in_the_environment():
    docs = render({"config": {"MDQ_MAX_BYTES": 67108864, "MDP_SPIKE_RATIO": 5.5}, "mdq": {"shards": 16}})
    env = env_of(containers(named(docs, "Deployment", f"{FULL}-mdp"))[0])
    assert env["MDQ_MAX_BYTES"]["value"] == "67108864"
    assert env["MDP_SPIKE_RATIO"]["value"] == "5.5"
    assert env["MDQ_SHARDS"]["value"] == "16"


# -- ingress and WebSockets -------------------------------------------------------------------------------


def test_wds_ingress_keeps_websockets_open():
    docs = render()
    ingress = named(docs, "Ingress", f"{FULL}-wds")
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/ws" and path["backend"]["service"] == {
        "name": f"{FULL}-wds",
        "port": {"name": "ws"},
    }
    scp = named(docs, "Ingress", f"{FULL}-scp")
    assert scp["spec"]["rules"][0]["host"] == rule["host"] == "mdpipe.example.com"
    assert scp["spec"]["tls"][0]["secretName"] == ingress["spec"]["tls"][0]["secretName"]
    # the metrics ports are never behind an Ingress
    backends = {
        (p["backend"]["service"]["name"], p["backend"]["service"]["port"]["name"])
        for i in of_kind(docs, "Ingress")
        for r in i["spec"]["rules"]
        for p in r["http"]["paths"]
    }
    assert backends == {(f"{FULL}-wds", "ws"), (f"{FULL}-scp", "http")}


# -- scaling ----------------------------------------------------------------------------------------------


def test_wds_autoscales_mdp_runs_a_standby_both_with_disruption_budgets():
    """WDS scales on CPU; MDP does not by default (a queue's one active consumer is the first to subscribe,
    so an added replica stands by): two replicas, each queue's consumer and its standby."""
    docs = render()
    hpa = named(docs, "HorizontalPodAutoscaler", f"{FULL}-wds")
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{FULL}-wds"}
    assert hpa["spec"]["scaleTargetRef"] == target
    assert hpa["spec"]["minReplicas"] >= 2
    assert not [h for h in of_kind(docs, "HorizontalPodAutoscaler") if component(h) == "mdp"]
    assert named(docs, "Deployment", f"{FULL}-mdp")["spec"]["replicas"] == 2
    for name in (f"{FULL}-mdp", f"{FULL}-wds"):
        assert named(docs, "PodDisruptionBudget", name)["spec"]["maxUnavailable"] == 1


def test_mdp_groups_are_deployments_of_their_own():
    docs = render(VALUE_SETS["per-class-mdp"])
    mdp = {w["metadata"]["name"]: w for w in workloads(docs) if component(w) == "mdp"}
    assert set(mdp) == {f"{FULL}-mdp-trades", f"{FULL}-mdp-quotes", f"{FULL}-mdp-rest"}
    classes = {n: env_of(containers(w)[0])["MDP_CLASSES"]["value"] for n, w in mdp.items()}
    assert classes == {
        f"{FULL}-mdp-trades": "trades.0,trades.1,aggregates.0,aggregates.1",
        f"{FULL}-mdp-quotes": "quotes",
        f"{FULL}-mdp-rest": "halts,imbalances,values,other",
    }
    for w in mdp.values():  # each Deployment owns its pods only
        others = [o for o in mdp.values() if o is not w]
        assert not [
            o for o in others if selects(w["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"])
        ]
    hpas = {
        h["metadata"]["name"]: h for h in of_kind(docs, "HorizontalPodAutoscaler") if component(h) == "mdp"
    }
    assert set(hpas) == {f"{FULL}-mdp-trades"}
    assert hpas[f"{FULL}-mdp-trades"]["spec"]["maxReplicas"] == 4
    assert mdp[f"{FULL}-mdp-quotes"]["spec"]["replicas"] == 3
    quotes = containers(mdp[f"{FULL}-mdp-quotes"])[0]["resources"]
    assert quotes["limits"] == {"cpu": "2", "memory": "2Gi"}  # the group's limit over the shared one
    pdbs = {p["metadata"]["name"] for p in of_kind(docs, "PodDisruptionBudget") if component(p) == "mdp"}
    assert pdbs == {f"{FULL}-mdp-trades", f"{FULL}-mdp-quotes"}
    # one metrics Service for every group, and the default Deployment is gone
    assert named(docs, "Service", f"{FULL}-mdp")["spec"]["selector"]["app.kubernetes.io/component"] == "mdp"


# -- network policies -------------------------------------------------------------------------------------


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@dataclass(frozen=True)
class Endpoint:
    """A pod (labels, namespace) or an address outside the cluster (ip only)."""

    labels: dict[str, str] = field(default_factory=dict, hash=False)
    namespace: str | None = None
    ns_labels: dict[str, str] = field(default_factory=dict, hash=False)
    ip: str = "10.0.0.1"


def pod(comp: str, namespace: str = NAMESPACE, release: str = RELEASE, **extra: str) -> Endpoint:
    labels = {
        "app.kubernetes.io/name": "mdpipe",
        "app.kubernetes.io/instance": release,
        "app.kubernetes.io/component": comp,
        **extra,
    }
    return Endpoint(labels, namespace, {"kubernetes.io/metadata.name": namespace})


def outside_pod(namespace: str, **labels: str) -> Endpoint:
    return Endpoint(dict(labels), namespace, {"kubernetes.io/metadata.name": namespace})


INGRESS_NGINX = outside_pod("ingress-nginx", **{"app.kubernetes.io/name": "ingress-nginx"})
PROMETHEUS = outside_pod("monitoring", **{"app.kubernetes.io/name": "prometheus"})
KUBE_DNS = outside_pod("kube-system", **{"k8s-app": "kube-dns"})
STRANGER_SAME_NS = outside_pod(NAMESPACE, app="debug")
STRANGER_OTHER_NS = outside_pod("default", app="debug")
OTHER_RELEASE = pod("mdl", release="other")
INTERNET = Endpoint(ip="203.0.113.7")


def peer_matches(peer: dict[str, Any], ep: Endpoint, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(ep.ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if ep.namespace is None:  # pod and namespace selectors match pods only
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], ep.ns_labels):
            return False
    elif ep.namespace != policy_ns:
        return False
    return selects(peer.get("podSelector") or {}, ep.labels)


def port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    return not ports or any(p.get("protocol", "TCP") == protocol and p.get("port") == port for p in ports)


def direction_allows(
    policies: list[dict[str, Any]], subject: Endpoint, other: Endpoint, port: int, protocol: str, kind: str
) -> bool:
    """Whether the policies selecting `subject` let traffic in (kind Ingress, from `other`) or out (kind
    Egress, to `other`). Not selected by any policy of that kind: not isolated, allowed."""
    if subject.namespace is None:
        return True
    relevant = [
        p
        for p in policies
        if p["metadata"].get("namespace", NAMESPACE) == subject.namespace
        and selects(p["spec"]["podSelector"], subject.labels)
        and kind in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not relevant:
        return True
    rules_key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    for p in relevant:
        for rule in p["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            if port_matches(rule.get("ports"), port, protocol) and (
                not peers or any(peer_matches(peer, other, subject.namespace or NAMESPACE) for peer in peers)
            ):
                return True
    return False


def allowed(
    policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP"
) -> bool:
    return direction_allows(policies, src, dst, port, protocol, "Egress") and direction_allows(
        policies, dst, src, port, protocol, "Ingress"
    )


METRICS_PORTS = {"mdl": 9101, "mdp": 9102, "wds": 9103, "scp": 8000, "sim": 9100, "rabbitmq": 15692}


def test_every_pod_is_isolated_by_default_deny(values_case):
    _, values = values_case
    docs = render(values)
    policies = of_kind(docs, "NetworkPolicy")
    deny = named(docs, "NetworkPolicy", f"{FULL}-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    for w in workloads(docs):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert selects(deny["spec"]["podSelector"], labels), w["metadata"]["name"]
        own = [p for p in policies if p is not deny and selects(p["spec"]["podSelector"], labels)]
        assert len(own) == 1 and own[0]["spec"]["policyTypes"] == ["Ingress", "Egress"], w["metadata"]["name"]
    assert not selects(deny["spec"]["podSelector"], OTHER_RELEASE.labels)  # other releases are left alone


def test_only_wds_and_scp_admit_traffic_from_outside_the_release(values_case):
    """Structurally: a rule admitting anything but this release's pods (other namespaces, addresses, or
    anyone) is on WDS's or SCP's public port, or on a metrics port."""
    _, values = values_case
    for policy in of_kind(render(values), "NetworkPolicy"):
        comp = component(policy)
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            foreign = not peers or any(
                "ipBlock" in p
                or "namespaceSelector" in p
                or p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/instance")
                != RELEASE
                for p in peers
                if not (comp == "redis" and is_signal_services_peer(p))  # the release's own listed services
            )
            if not foreign:
                continue
            ports = {p["port"] for p in rule["ports"]}
            assert rule["ports"], f"{policy['metadata']['name']}: a rule open on every port"
            if comp in ("wds", "scp") and ports <= {8780, 8000}:
                continue
            assert ports == {METRICS_PORTS[comp]}, f"{policy['metadata']['name']} admits {peers} on {ports}"
            assert peers == [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                    "podSelector": {},
                }
            ], "only Prometheus scrapes"


def test_redis_rabbitmq_and_database_admit_their_clients_only():
    docs = render()
    by_comp = {component(p): p for p in of_kind(docs, "NetworkPolicy") if component(p)}

    def clients(comp: str, port: int) -> set[str]:
        (rule,) = [r for r in by_comp[comp]["spec"]["ingress"] if port_matches(r["ports"], port, "TCP")]
        out = set()
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, "same namespace, pods of the release only"
            labels = peer["podSelector"]["matchLabels"]
            assert labels["app.kubernetes.io/instance"] == RELEASE
            out.add(labels["app.kubernetes.io/component"])
        return out

    assert clients("redis", 6379) == DATA_PLANE
    assert clients("rabbitmq", 5672) == {"mdl", "mdp", "scp"}
    assert clients("postgresql", 5432) == {"scp"}
    assert clients("sim", 8765) == {"mdl"}
    # the emulator's HTTP port: MDP (its REST paths), besides Prometheus (/metrics)
    release_peers = [
        peer["podSelector"]["matchLabels"]
        for rule in by_comp["sim"]["spec"]["ingress"]
        if port_matches(rule["ports"], 9100, "TCP")
        for peer in rule["from"]
        if "namespaceSelector" not in peer
    ]
    assert [labels["app.kubernetes.io/component"] for labels in release_peers] == ["mdp"]


def test_traffic_matrix_with_built_in_services():
    policies = of_kind(render(), "NetworkPolicy")
    ok = functools.partial(allowed, policies)
    mdl, mdp, wds, scp, sim = (pod(c) for c in ("mdl", "mdp", "wds", "scp", "sim"))
    rabbitmq, redis, postgresql = pod("rabbitmq"), pod("redis"), pod("postgresql")
    # the public side
    assert ok(INGRESS_NGINX, wds, 8780) and ok(INGRESS_NGINX, scp, 8000)
    for target, port in (
        (wds, 9103),
        (mdl, 9101),
        (mdp, 9102),
        (rabbitmq, 5672),
        (redis, 6379),
        (postgresql, 5432),
        (sim, 8765),
        (rabbitmq, 15672),
    ):
        assert not ok(INGRESS_NGINX, target, port), (target.labels, port)
    for stranger in (STRANGER_SAME_NS, STRANGER_OTHER_NS, OTHER_RELEASE):
        for target, port in (
            (wds, 8780),
            (scp, 8000),
            (rabbitmq, 5672),
            (redis, 6379),
            (postgresql, 5432),
            (sim, 8765),
            (mdl, 9101),
        ):
            assert not ok(stranger, target, port), (stranger, target.labels, port)
    # Prometheus scrapes every metrics port, and nothing else
    for target, port in ((mdl, 9101), (mdp, 9102), (wds, 9103), (scp, 8000), (sim, 9100), (rabbitmq, 15692)):
        assert ok(PROMETHEUS, target, port)
    for target, port in ((redis, 6379), (rabbitmq, 5672), (postgresql, 5432), (wds, 8780), (sim, 8765)):
        assert not ok(PROMETHEUS, target, port)
    # the data plane
    expected = {
        (rabbitmq, 5672): {"mdl", "mdp", "scp"},
        (redis, 6379): {"mdl", "mdp", "wds", "scp"},
        (postgresql, 5432): {"scp"},
        (sim, 8765): {"mdl"},  # the feed
        (sim, 9100): {"mdp"},  # the REST paths (and /metrics, which Prometheus scrapes)
        (mdl, 9101): set(),
        (wds, 8780): set(),
    }
    everyone = {
        "mdl": mdl,
        "mdp": mdp,
        "wds": wds,
        "scp": scp,
        "sim": sim,
        "rabbitmq": rabbitmq,
        "redis": redis,
        "postgresql": postgresql,
    }
    for (target, port), clients in expected.items():
        reached = {n for n, src in everyone.items() if src is not target and ok(src, target, port)}
        assert reached == clients, (target.labels["app.kubernetes.io/component"], port, reached)
    for stranger in (INGRESS_NGINX, STRANGER_SAME_NS, STRANGER_OTHER_NS, OTHER_RELEASE):
        assert not ok(stranger, sim, 9100), stranger
    # egress: DNS for the mdpipe pods, nothing to the internet (the emulator replaces the vendor)
    for src in (mdl, mdp, wds, scp):
        assert ok(src, KUBE_DNS, 53, "UDP") and ok(src, KUBE_DNS, 53, "TCP")
        assert not ok(src, INTERNET, 443) and not ok(src, STRANGER_OTHER_NS, 80)
    for src in (sim, redis, postgresql, rabbitmq):
        assert not ok(src, INTERNET, 443)


def test_traffic_matrix_with_the_vendor_and_external_services():
    policies = of_kind(render({**EXTERNAL, **VALUE_SETS["massive-existing-secret"]}), "NetworkPolicy")
    ok = functools.partial(allowed, policies)
    mdl, mdp, wds, scp = (pod(c) for c in ("mdl", "mdp", "wds", "scp"))
    # MDL (the feed) and MDP (the REST API, every group's pods) reach the vendor on 443 only; WDS and SCP
    # never reach the internet on 443
    for src in (mdl, mdp, pod("mdp", **{"mdpipe.io/mdp-group": "trades"})):
        assert ok(src, INTERNET, 443), src.labels
        assert not ok(src, INTERNET, 80) and not ok(src, INTERNET, 5432) and not ok(src, INTERNET, 8765)
    for src in (wds, scp):
        assert not ok(src, INTERNET, 443)
    assert not ok(mdp, pod("sim"), 9100)  # no emulator to reach
    # external RabbitMQ (10.9.0.0/16 in the values), Redis (6380), database (5432)
    broker, elsewhere = Endpoint(ip="10.9.1.2"), Endpoint(ip="10.8.1.2")
    assert ok(mdl, broker, 5672) and ok(mdp, broker, 5672) and ok(scp, broker, 5672)
    assert not ok(wds, broker, 5672) and not ok(mdl, elsewhere, 5672)
    for src in (mdl, mdp, wds, scp):
        assert ok(src, INTERNET, 6380)
        assert not ok(src, INTERNET, 6379)
    assert ok(scp, INTERNET, 5432)
    for src in (mdl, mdp, wds):
        assert not ok(src, INTERNET, 5432)
    assert not [p for p in policies if component(p) in ("rabbitmq", "redis", "postgresql", "sim")]


def test_a_redis_cluster_is_reached_on_every_node_port():
    """A cluster client connects to every node it is told about: the Redis clients' egress opens
    redis.external.ports and each seed's port, to egressTo, and `port` no longer; with `ports` alone (no
    cluster) those replace `port` too. Nothing else changes."""
    policies = of_kind(render(VALUE_SETS["external-redis-cluster"]), "NetworkPolicy")
    ok = functools.partial(allowed, policies)
    node, elsewhere = Endpoint(ip="10.20.3.4"), Endpoint(ip="10.21.0.1")
    for src in (pod(c) for c in sorted(DATA_PLANE)):
        for port in (7000, 7001, 7002, 7005):
            assert ok(src, node, port), (src.labels, port)
            assert not ok(src, elsewhere, port)
        assert not ok(src, node, 6379) and not ok(src, node, 7003)
    assert not ok(pod("sim"), node, 7000)
    rules = {
        json.dumps(r, sort_keys=True)
        for p in policies
        for r in p["spec"].get("egress", [])
        if port_matches(r.get("ports"), 7000, "TCP")
    }
    assert [[p["port"] for p in json.loads(r)["ports"]] for r in rules] == [[7000, 7001, 7002, 7005]]
    # `ports` without a cluster: several servers of one Redis deployment, `port` replaced too
    single = {"enabled": False, "external": {"existingSecret": "cache", "ports": [6380, 6381]}}
    policies = of_kind(render({"redis": single}), "NetworkPolicy")
    for port, reached in ((6380, True), (6381, True), (6379, False)):
        assert allowed(policies, pod("wds"), INTERNET, port) is reached, port


def test_allow_external_opens_wds_and_scp_only():
    policies = of_kind(render(VALUE_SETS["existing-secrets-hosts"]), "NetworkPolicy")
    ok = functools.partial(allowed, policies)
    for stranger in (STRANGER_OTHER_NS, INTERNET):
        assert ok(stranger, pod("wds"), 8780) and ok(stranger, pod("scp"), 8000)
        assert not ok(stranger, pod("wds"), 9103)
        for comp, port in (("redis", 6379), ("rabbitmq", 5672), ("postgresql", 5432), ("mdl", 9101)):
            assert not ok(stranger, pod(comp), port)


def test_network_policies_can_be_turned_off():
    docs = render({"networkPolicy": {"enabled": False}})
    assert not of_kind(docs, "NetworkPolicy")
    assert "network policies are off" in notes({"networkPolicy": {"enabled": False}})


# -- metrics: ServiceMonitors, alerts, dashboard ----------------------------------------------------------


@functools.cache
def exposed_metric_names() -> frozenset[str]:
    """Every sample name mdpipe exposes, from the metric objects in the code."""
    from prometheus_client.metrics import MetricWrapperBase

    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names = set()
    for module in ("mdl.metrics", "mdp.metrics", "wds.metrics", "scp.metrics", "sim.metrics"):
        for obj in vars(importlib.import_module(module)).values():
            if isinstance(obj, MetricWrapperBase):
                for family in obj.describe():
                    names.update(family.name + s for s in suffixes[family.type])
            elif type(obj).__module__.endswith(".metrics") and callable(getattr(obj, "collect", None)):
                for family in obj.collect():  # a collector of mdpipe's own (wds.metrics.FlushHistogram)
                    names.update(sample.name for sample in family.samples)
    assert len(names) > 50
    return frozenset(names)


# Not mdpipe's: RabbitMQ's Prometheus plugin (the per-queue family the chart scrapes), Prometheus' own.
FOREIGN_METRICS = {"rabbitmq_detailed_queue_messages", "up"}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (strings, label matchers, ranges, grouping labels and
    function names left out)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", s):
        if s[m.end() :].lstrip().startswith("(") or m.group() in PROMQL_KEYWORDS:
            continue
        names.add(m.group())
    return names


def test_metric_name_extraction():
    assert metric_names('sum by (le) (rate(a_bucket{x="y{z}"}[5m])) > 1e3 and b offset 5m') == {
        "a_bucket",
        "b",
    }
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, route) (rate(c_bucket{n=~"$ns"}[$__rate_interval])))'
    ) == {"c_bucket"}


def check_metrics_exist(exprs: list[str]) -> set[str]:
    used = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr}"
        for name in names:
            if name.startswith("mdpipe_"):
                assert name in exposed_metric_names(), f"{name} does not exist in the code ({expr})"
            else:
                assert name in FOREIGN_METRICS, f"{name} is not an mdpipe metric ({expr})"
        used |= names
    return used


def test_service_monitors_scrape_every_component():
    docs = render(VALUE_SETS["monitoring"])
    monitors = {component(m): m for m in of_kind(docs, "ServiceMonitor")}
    assert set(monitors) == {"mdl", "mdp", "wds", "scp", "sim", "rabbitmq"}
    for m in monitors.values():
        assert m["metadata"]["labels"]["release"] == "prom"
        assert m["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert [e["port"] for e in monitors["scp"]["spec"]["endpoints"]] == ["http"]
    detailed = [e for e in monitors["rabbitmq"]["spec"]["endpoints"] if e["path"] == "/metrics/detailed"]
    assert detailed and detailed[0]["params"] == {"family": ["queue_coarse_metrics"]}
    assert not of_kind(render(), "ServiceMonitor") and not of_kind(render(), "PrometheusRule")


def test_alerts_use_real_metrics():
    docs = render(VALUE_SETS["monitoring"])
    (rule,) = of_kind(docs, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    used = check_metrics_exist([r["expr"] for r in alerts.values()])
    assert {
        "MdpipeMdlVendorDisconnected",
        "MdpipeMdlDroppingFrames",
        "MdpipeMdlDroppingEvents",
        "MdpipeMdpLag",
        "MdpipeWdsSlowClientCloses",
    } <= set(alerts)
    assert "mdpipe_mdl_connected" in alerts["MdpipeMdlVendorDisconnected"]["expr"]
    assert "mdpipe_mdp_message_age_seconds_bucket" in alerts["MdpipeMdpLag"]["expr"]
    assert 'code="4008"' in alerts["MdpipeWdsSlowClientCloses"]["expr"]
    assert {"mdpipe_mdl_dropped_frames_total", "mdpipe_mdl_dropped_events_total"} <= used
    for r in alerts.values():  # every alert is scoped to this release's Services
        assert f'namespace="{NAMESPACE}"' in r["expr"] and f'job="{FULL}-' in r["expr"], r["alert"]
        assert "{{" not in r["expr"]
    assert "{{ $labels.cause }}" in alerts["MdpipeMdlDroppingFrames"]["annotations"]["description"]
    # the lease: one leader, and a standby when MDL runs several replicas
    assert "mdpipe_mdl_leader" in alerts["MdpipeMdlSeveralLeaders"]["expr"]
    assert "mdpipe_mdl_leader" in alerts["MdpipeMdlNoStandby"]["expr"]
    (single,) = of_kind(render({**VALUE_SETS["monitoring"], "mdl": {"replicas": 1}}), "PrometheusRule")
    assert "MdpipeMdlNoStandby" not in {r["alert"] for g in single["spec"]["groups"] for r in g["rules"]}


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


def test_dashboard_is_valid_and_uses_real_metrics():
    dashboard = json.loads((CHART / "dashboards" / "mdpipe.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24
    used = check_metrics_exist(dashboard_exprs(dashboard))
    wanted = {
        "mdpipe_mdl_events_total",
        "mdpipe_mdl_dropped_frames_total",
        "mdpipe_mdl_connected",
        "rabbitmq_detailed_queue_messages",
        "mdpipe_mdp_events_total",
        "mdpipe_mdp_message_age_seconds_bucket",
        "mdpipe_wds_connections",
        "mdpipe_wds_deliveries_total",
        "mdpipe_wds_delivery_latency_seconds_bucket",
        "mdpipe_wds_closes_total",
        "mdpipe_scp_api_requests_total",
    }
    assert wanted <= used, wanted - used
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for words in (
        "mdl events",
        "drops",
        "vendor connection",
        "queue depths",
        "mdp events",
        "lag",
        "wds clients",
        "deliveries",
        "latency",
        "slow-client closes",
        "scp api requests",
        "scp api errors",
    ):
        assert words in titles, words


def test_dashboard_configmap_for_the_grafana_sidecar():
    assert not [c for c in of_kind(render(), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    docs = render(VALUE_SETS["monitoring"])
    cm = named(docs, "ConfigMap", f"{FULL}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["mdpipe.json"]) == json.loads(
        (CHART / "dashboards" / "mdpipe.json").read_text()
    )
    docs = render({"grafana": {"dashboard": {"enabled": True, "namespace": "grafana"}}})
    assert named(docs, "ConfigMap", f"{FULL}-dashboard")["metadata"]["namespace"] == "grafana"
