"""Offline tests of the webhook-enricher Helm chart.

The chart is rendered with Helm's own engine (helm-python-sdk binds Helm v4's Go SDK: no helm
binary, no cluster), for the default values and every ci/*-values.yaml scenario. The manifests
are validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields
are errors), the custom resources (ServiceMonitor, ScaledObject, TriggerAuthentication,
KafkaTopic) against the fields the chart relies on, and the operational invariants are asserted.

Run with `.ci/helm-test` (creates a venv, installs requirements.txt, runs pytest).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CHART_DIR = Path(__file__).resolve().parents[1] / "webhook-enricher"
RELEASE = "rel"
NAMESPACE = "enrich"
# The chart's floor (Chart.yaml kubeVersion) and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
UID = 10001

SCENARIO_FILES = {p.name.removesuffix("-values.yaml"): p for p in sorted(CHART_DIR.glob("ci/*-values.yaml"))}
SCENARIOS = ["default", *SCENARIO_FILES]

# Values that must never leave the Secret.
SECRET_VALUES = {
    "clearsalePassword": "s3cret-clearsale-pw",
    "unicoApiKey": "s3cret-unico-api-key",
    "unicoPrivateKey": "-----BEGIN PRIVATE KEY-----\ns3cret-unico-key\n-----END PRIVATE KEY-----\n",
    "kafkaSaslUsername": "s3cret-sasl-user",
    "kafkaSaslPassword": "s3cret-sasl-pw",
    "kafkaTlsKeyPassword": "s3cret-tls-key-pw",
    "registryUsername": "s3cret-registry-user",
    "registryPassword": "s3cret-registry-pw",
    "receiveClearsalePassword": "s3cret-recv-cs:pw",
    "receiveClearsaleToken": "s3cret-recv-cs-token",
    "receiveClearsaleApiKey": "s3cret-recv-cs-key",
    "receiveUnicoPassword": "s3cret-recv-unico:pw",
    "receiveUnicoToken": "s3cret-recv-unico-token",
    "receiveUnicoApiKey": "s3cret-recv-unico-key",
}
# values key -> key in the Secret.
VALUES_KEY_OF = {
    "clearsalePassword": "clearsale-password",
    "unicoApiKey": "unico-api-key",
    "unicoPrivateKey": "unico-private-key.pem",
    "kafkaSaslUsername": "kafka-sasl-username",
    "kafkaSaslPassword": "kafka-sasl-password",
    "kafkaTlsKeyPassword": "kafka-tls-key-password",
    "registryUsername": "registry-username",
    "registryPassword": "registry-password",
    "receiveClearsalePassword": "receive-clearsale-password",
    "receiveClearsaleToken": "receive-clearsale-token",
    "receiveClearsaleApiKey": "receive-clearsale-api-key",
    "receiveUnicoPassword": "receive-unico-password",
    "receiveUnicoToken": "receive-unico-token",
    "receiveUnicoApiKey": "receive-unico-api-key",
}
# Secret key -> environment variable of the enricher's pods (`run`; the service's
# WEBHOOK_ENRICHER_<SECTION>__<KEY> names).
SECRET_ENV = {
    "clearsale-password": "WEBHOOK_ENRICHER_CLEARSALE__PASSWORD",
    "unico-api-key": "WEBHOOK_ENRICHER_UNICO__API_KEY",
    "kafka-sasl-username": "WEBHOOK_ENRICHER_KAFKA__SASL__USERNAME",
    "kafka-sasl-password": "WEBHOOK_ENRICHER_KAFKA__SASL__PASSWORD",
    "kafka-tls-key-password": "WEBHOOK_ENRICHER_KAFKA__TLS__KEY_PASSWORD",
    "registry-username": "WEBHOOK_ENRICHER_OUTPUT__ENCODING__REGISTRY__USERNAME",
    "registry-password": "WEBHOOK_ENRICHER_OUTPUT__ENCODING__REGISTRY__PASSWORD",
}
# Secret key -> environment variable of the receiver's pods (`receive`): the Kafka credentials
# and the webhook credentials, none of the provider API ones.
RECEIVE_SECRET_ENV = {
    "kafka-sasl-username": "WEBHOOK_ENRICHER_KAFKA__SASL__USERNAME",
    "kafka-sasl-password": "WEBHOOK_ENRICHER_KAFKA__SASL__PASSWORD",
    "kafka-tls-key-password": "WEBHOOK_ENRICHER_KAFKA__TLS__KEY_PASSWORD",
    "receive-clearsale-password": "WEBHOOK_ENRICHER_RECEIVE__CLEARSALE__AUTH__PASSWORD",
    "receive-clearsale-token": "WEBHOOK_ENRICHER_RECEIVE__CLEARSALE__AUTH__TOKEN",
    "receive-clearsale-api-key": "WEBHOOK_ENRICHER_RECEIVE__CLEARSALE__AUTH__API_KEY",
    "receive-unico-password": "WEBHOOK_ENRICHER_RECEIVE__UNICO__AUTH__PASSWORD",
    "receive-unico-token": "WEBHOOK_ENRICHER_RECEIVE__UNICO__AUTH__TOKEN",
    "receive-unico-api-key": "WEBHOOK_ENRICHER_RECEIVE__UNICO__AUTH__API_KEY",
}


# --------------------------------------------------------------------------------------------
# Rendering


@dataclass
class Rendered:
    """The manifests of one render, by kind."""

    docs: list[dict[str, Any]]
    notes: str
    raw: dict[str, str] = field(repr=False)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        return {d["kind"] for d in self.docs}

    def enricher(self, kind: str) -> dict[str, Any]:
        """The one object of `kind` that belongs to the enricher (not to the receiver)."""
        found = [d for d in self.all(kind) if component(d) != "receiver"]
        assert len(found) == 1, f"expected one enricher {kind}, found {len(found)}"
        return found[0]

    def receiver(self, kind: str) -> list[dict[str, Any]]:
        """The receiver's objects of `kind`."""
        return [d for d in self.all(kind) if component(d) == "receiver"]

    @property
    def config_text(self) -> str:
        return self.one("ConfigMap")["data"]["config.toml"]

    @property
    def config(self) -> dict[str, Any]:
        return tomllib.loads(self.config_text)

    def workloads(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(workload, pod spec) of the Deployments and the backfill Job, if any."""
        return [(w, w["spec"]["template"]["spec"]) for w in self.docs if w["kind"] in ("Deployment", "Job")]


def component(doc: dict[str, Any]) -> str | None:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def scenario_values(name: str) -> dict[str, Any]:
    """A scenario's values, parsed by Helm's own YAML reader (as `helm -f` would)."""
    if name == "default":
        return {}
    return helm.values_from_yaml(SCENARIO_FILES[name].read_text())


def render(chart, values: dict[str, Any] | None = None) -> Rendered:
    raw = chart.render(copy.deepcopy(values or {}), name=RELEASE, namespace=NAMESPACE)
    docs: list[dict[str, Any]] = []
    notes = ""
    for path, text in raw.items():
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return Rendered(docs, notes, raw)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture(scope="session", params=SCENARIOS)
def scenario(request, chart) -> tuple[str, dict[str, Any], Rendered]:
    values = scenario_values(request.param)
    return request.param, values, render(chart, values)


# --------------------------------------------------------------------------------------------
# Helpers on the manifests


def humantime_seconds(text: str) -> float:
    """An independent reading of a humantime duration (what the service parses)."""
    units = {
        "ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60,
        "mins": 60, "h": 3600, "hr": 3600, "hrs": 3600, "d": 86400,
    }
    parts = re.findall(r"(\d+)\s*([a-z]+)", text.strip().lower())
    assert parts and re.fullmatch(r"(\s*\d+\s*[a-z]+\s*)+", text.lower()), text
    return sum(int(n) * units[u] for n, u in parts)


def container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec["containers"]
    return only


def env_map(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def port_number(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    matches = [p["containerPort"] for p in c["ports"] if p.get("name") == port]
    assert matches, f"no container port named {port!r}"
    return matches[0]


def admin_listen_port(rendered: Rendered) -> int:
    listen = rendered.config["admin"]["listen"]
    host, _, port = listen.rpartition(":")
    assert host in ("0.0.0.0", "[::]"), f"admin.listen {listen!r} is not reachable by the kubelet"
    return int(port)


# --------------------------------------------------------------------------------------------
# Schema validation of every rendered object


CUSTOM_RESOURCES = {"ServiceMonitor", "ScaledObject", "TriggerAuthentication", "KafkaTopic"}
# metadata.name of most objects (DNS-1123 label) and of a KafkaTopic (DNS-1123 subdomain).
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Kafka's own rule for topic names (spec.topicName).
KAFKA_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def check_custom_resource(doc: dict[str, Any]) -> None:
    """Structural checks of the custom resources (not in the Kubernetes schemas)."""
    kind, spec = doc["kind"], doc["spec"]
    if kind == "KafkaTopic":
        check_kafka_topic(doc)
        return
    assert DNS_LABEL.fullmatch(doc["metadata"]["name"])
    if kind == "ServiceMonitor":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert spec["selector"]["matchLabels"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
            assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["interval"])
            assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["scrapeTimeout"])
    elif kind == "ScaledObject":
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        assert spec["scaleTargetRef"]["kind"] == "Deployment"
        for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
            assert isinstance(spec[key], int), key
        for trigger in spec["triggers"]:
            assert trigger["type"] == "kafka"
            # KEDA reads trigger metadata as a map of strings.
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger["metadata"]
            assert {"bootstrapServers", "consumerGroup", "lagThreshold"} <= set(trigger["metadata"])
    elif kind == "TriggerAuthentication":
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        for ref in spec["secretTargetRef"]:
            assert set(ref) == {"parameter", "name", "key"}
    else:  # pragma: no cover
        raise AssertionError(f"unexpected custom resource {kind}")


def check_kafka_topic(doc: dict[str, Any]) -> None:
    """A Strimzi KafkaTopic (kafka.strimzi.io/v1beta2 CRD: spec.topicName, partitions >= 1,
    replicas 1..32767, config of scalars), as the chart must render it."""
    meta, spec = doc["metadata"], doc["spec"]
    assert doc["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert len(meta["name"]) <= 253 and DNS_SUBDOMAIN.fullmatch(meta["name"]), meta["name"]
    assert DNS_LABEL.fullmatch(meta["namespace"])
    cluster = meta["labels"]["strimzi.io/cluster"]
    assert cluster and len(cluster) <= 63 and DNS_SUBDOMAIN.fullmatch(cluster)
    assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
    assert set(spec) <= {"topicName", "partitions", "replicas", "config"}
    # Always set: the resource name is derived, the topic name is exact.
    assert KAFKA_TOPIC.fullmatch(spec["topicName"]) and spec["topicName"] not in (".", "..")
    assert isinstance(spec["partitions"], int) and not isinstance(spec["partitions"], bool) and spec["partitions"] >= 1
    assert isinstance(spec["replicas"], int) and not isinstance(spec["replicas"], bool) and 1 <= spec["replicas"] <= 32767
    for key, value in spec.get("config", {}).items():
        assert isinstance(key, str) and isinstance(value, (str, int, float, bool)), (key, value)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_manifests_are_valid_kubernetes_objects(scenario, kube_version):
    _, _, rendered = scenario
    assert rendered.docs
    for doc in rendered.docs:
        if doc["kind"] in CUSTOM_RESOURCES:
            check_custom_resource(doc)
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on {kube_version}: {error.message} at {list(error.path)}")


def test_chart_lints_clean():
    report = helm.lint(CHART_DIR, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_objects(chart):
    rendered = render(chart)
    assert rendered.kinds() == {"ConfigMap", "Secret", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"}
    assert "WARNING" in rendered.notes  # no credentials in the defaults: NOTES says so


# --------------------------------------------------------------------------------------------
# Probes, ports and the admin listener


def test_probes_and_ports_follow_admin_listen(scenario):
    _, _, rendered = scenario
    port = admin_listen_port(rendered)
    deployment = rendered.enricher("Deployment")
    c = container(deployment["spec"]["template"]["spec"])
    assert port_number(c, "admin") == port
    liveness, readiness = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz"
    assert readiness["path"] == "/readyz"
    assert port_number(c, liveness["port"]) == port
    assert port_number(c, readiness["port"]) == port

    service = rendered.enricher("Service")
    (service_port,) = service["spec"]["ports"]
    assert port_number(c, service_port["targetPort"]) == port
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitors = [m for m in rendered.all("ServiceMonitor") if m["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "enricher"]
    for monitor in monitors:
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] == service_port["name"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_admin_port_moves_config_container_and_probes_together(chart):
    rendered = render(chart, {"admin": {"port": 9555}})
    assert admin_listen_port(rendered) == 9555
    c = container(rendered.enricher("Deployment")["spec"]["template"]["spec"])
    assert port_number(c, c["readinessProbe"]["httpGet"]["port"]) == 9555


def test_admin_listen_cannot_be_set_in_config(chart):
    with pytest.raises(helm.HelmRenderError, match="set admin.port instead"):
        render(chart, {"config": {"admin": {"listen": "0.0.0.0:8080"}}})


def test_admin_server_cannot_be_disabled(chart):
    with pytest.raises(helm.HelmRenderError, match="probes"):
        render(chart, {"config": {"admin": {"enabled": False}}})


def test_other_admin_settings_pass_through(chart):
    rendered = render(chart, {"config": {"admin": {"circuit_open_unready_after": "2m"}}})
    assert rendered.config["admin"] == {"circuit_open_unready_after": "2m", "listen": "0.0.0.0:9090"}


# --------------------------------------------------------------------------------------------
# Graceful shutdown


def test_grace_period_exceeds_the_whole_shutdown_budget(scenario):
    _, _, rendered = scenario
    engine = rendered.config["engine"]
    receive = rendered.config.get("receive", {})
    engine_budget = sum(humantime_seconds(engine[k]) for k in ("drain_timeout", "flush_timeout", "close_timeout"))
    # The receiver: serve while unready, drain, flush (service defaults 0s, 20s, 5s).
    receive_budget = sum(
        humantime_seconds(receive.get(k, default))
        for k, default in (("shutdown_delay", "0s"), ("drain_timeout", "20s"), ("write_timeout", "5s"))
    )
    for workload, pod_spec in rendered.workloads():
        budget = receive_budget if component(workload) == "receiver" else engine_budget
        grace = pod_spec["terminationGracePeriodSeconds"]
        assert grace > budget, (
            f"{workload['kind']}: grace period {grace}s is not above the shutdown budget {budget}s "
            "(drain + flush + close)"
        )


@pytest.mark.parametrize(
    ("drain_timeout", "expected_grace"),
    # drain (rounded up) + flush 10 s + close 30 s + margin 5 s
    [("30s", 75), ("1m 30s", 135), ("2m", 165), ("500ms", 46), ("1h", 3645), ("90 s", 135)],
)
def test_grace_period_is_derived_from_drain_timeout(chart, drain_timeout, expected_grace):
    rendered = render(chart, {"config": {"engine": {"drain_timeout": drain_timeout}}})
    assert rendered.config["engine"]["drain_timeout"] == drain_timeout
    grace = rendered.enricher("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == expected_grace
    assert grace > humantime_seconds(drain_timeout)


def test_grace_period_follows_flush_and_close_timeouts(chart):
    rendered = render(
        chart,
        {"config": {"engine": {"drain_timeout": "20s", "flush_timeout": "1m", "close_timeout": "15s"}}},
    )
    grace = rendered.enricher("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == 20 + 60 + 15 + 5


@pytest.mark.parametrize("drain_timeout", ["soon", "30x", "1.5s", "30"])
def test_unparseable_drain_timeout_is_refused(chart, drain_timeout):
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)):
        render(chart, {"config": {"engine": {"drain_timeout": drain_timeout}}})


def test_env_cannot_override_chart_derived_settings(chart):
    for name in ("WEBHOOK_ENRICHER_ENGINE__DRAIN_TIMEOUT", "WEBHOOK_ENRICHER_ADMIN__LISTEN"):
        with pytest.raises(helm.HelmRenderError, match=name):
            render(chart, {"extraEnv": [{"name": name, "value": "5m"}]})


# --------------------------------------------------------------------------------------------
# Config file and its checksum


def checksum(rendered: Rendered) -> str:
    return rendered.enricher("Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_checksum_is_sha256_of_the_config_file(scenario):
    _, _, rendered = scenario
    assert checksum(rendered) == hashlib.sha256(rendered.config_text.encode()).hexdigest()
    for deployment in rendered.receiver("Deployment"):
        assert deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"] == checksum(rendered)


def test_checksum_changes_with_config_and_only_with_config(chart):
    base = render(chart)
    assert checksum(render(chart)) == checksum(base)
    assert checksum(render(chart, {"replicas": 5, "logLevel": "debug"})) == checksum(base)
    assert checksum(render(chart, {"config": {"engine": {"max_in_flight": 64}}})) != checksum(base)
    assert checksum(render(chart, {"config": {"input": {"topics": ["other.raw"]}}})) != checksum(base)
    assert checksum(render(chart, {"admin": {"port": 9091}})) != checksum(base)


def test_config_toml_keeps_types(chart):
    """Integers stay integers (the service's usize settings reject 1024.0 and 1e+06)."""
    config = {
        "engine": {"max_in_flight": 1024, "dedupe": {"max_entries": 1000000}, "breaker": {"multiplier": 1.5}},
        "input": {"unico_statuses": [2, 3], "topic_providers": {"unico.raw": "unico"}},
        "kafka": {"consumer": {"session.timeout.ms": "45000", "fetch.wait.max.ms": "100"}},
        "enrich": {"include_raw_response": False},
        "clearsale": {"user": 'quote " and \\ backslash'},
    }
    rendered = render(chart, {"config": config})
    parsed = rendered.config
    for section, settings in config.items():
        assert merge(parsed[section], settings) == parsed[section], section
    assert parsed["engine"]["max_in_flight"] == 1024 and isinstance(parsed["engine"]["max_in_flight"], int)
    assert isinstance(parsed["engine"]["dedupe"]["max_entries"], int)
    assert parsed["input"]["unico_statuses"] == [2, 3]
    assert "1e+06" not in rendered.config_text and "1024.0" not in rendered.config_text


def test_unknown_config_section_is_refused(chart):
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"config": {"kakfa": {"bootstrap_servers": "x:9092"}}})


def test_values_typo_is_refused(chart):
    with pytest.raises(helm.HelmValuesError, match="replcias"):
        render(chart, {"replcias": 3})
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"secrets": {"clearsalePasword": "x"}})


# --------------------------------------------------------------------------------------------
# Security context


def test_security_context(scenario):
    _, _, rendered = scenario
    for _, pod_spec in rendered.workloads():
        pod = pod_spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] == UID
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = container(pod_spec)["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == UID
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "add" not in sc["capabilities"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod_spec["automountServiceAccountToken"] is False


# --------------------------------------------------------------------------------------------
# Secrets


def secret_refs(pod_spec: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """secretKeyRef by env name, and the names of the Secrets mounted as volumes."""
    refs = {
        name: e["valueFrom"]["secretKeyRef"]
        for name, e in env_map(container(pod_spec)).items()
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    volumes = [v["secret"]["secretName"] for v in pod_spec["volumes"] if "secret" in v]
    return refs, volumes


def test_existing_secret_is_used_and_not_rendered(chart):
    values = scenario_values("existing-secret")
    name = values["secrets"]["existingSecret"]
    rendered = render(chart, values)
    assert rendered.all("Secret") == []
    _, pod_spec = rendered.workloads()[0]
    refs, volumes = secret_refs(pod_spec)
    assert {env: ref["key"] for env, ref in refs.items()} == {env: key for key, env in SECRET_ENV.items()}
    assert all(ref["name"] == name for ref in refs.values())
    assert volumes == [name]
    annotations = rendered.enricher("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations


def test_chart_secret_carries_every_credential(chart):
    rendered = render(chart, {"secrets": SECRET_VALUES})
    secret = rendered.one("Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded["unico-private-key.pem"] == SECRET_VALUES["unicoPrivateKey"]
    assert decoded["clearsale-password"] == SECRET_VALUES["clearsalePassword"]
    assert set(decoded) == {*SECRET_ENV, *RECEIVE_SECRET_ENV, "unico-private-key.pem"}
    _, pod_spec = rendered.workloads()[0]
    refs, volumes = secret_refs(pod_spec)
    assert {ref["name"] for ref in refs.values()} | set(volumes) == {secret["metadata"]["name"]}
    for env, ref in refs.items():
        assert SECRET_ENV[ref["key"]] == env
    for values_key, secret_key in VALUES_KEY_OF.items():
        assert decoded[secret_key] == SECRET_VALUES[values_key]



def test_unico_key_file_is_mounted_where_the_config_points(scenario):
    _, _, rendered = scenario
    path = rendered.config["unico"]["private_key_file"]
    for workload, pod_spec in rendered.workloads():
        if component(workload) == "receiver":
            # The receiver needs no provider API credential.
            assert all(v["name"] != "unico-key" for v in pod_spec["volumes"])
            continue
        mounts = {m["name"]: m for m in container(pod_spec)["volumeMounts"]}
        volume = next(v for v in pod_spec["volumes"] if v["name"] == "unico-key")
        (item,) = volume["secret"]["items"]
        assert f"{mounts['unico-key']['mountPath']}/{item['path']}" == path
        assert item["key"] == "unico-private-key.pem"


def test_no_secret_value_outside_the_secret(chart):
    for name in SCENARIOS:
        values = merge(scenario_values(name), {"secrets": SECRET_VALUES})
        values["secrets"].pop("existingSecret", None)
        rendered = render(chart, values)
        for doc in rendered.docs:
            if doc["kind"] == "Secret":
                continue
            text = yaml.safe_dump(doc)
            for key, secret in SECRET_VALUES.items():
                assert secret.strip() not in text, f"{name}: secrets.{key} appears in {doc['kind']}"
        assert "s3cret" not in rendered.config_text
        assert "s3cret" not in rendered.notes


@pytest.mark.parametrize(
    "config",
    [
        {"clearsale": {"password": "plain"}},
        {"unico": {"api_key": "plain"}},
        {"unico": {"private_key_pem": "plain"}},
        {"kafka": {"sasl": {"password": "plain"}}},
        {"output": {"encoding": {"registry": {"password": "plain"}}}},
        {"kafka": {"consumer": {"sasl.password": "plain"}}},
        {"kafka": {"producer": {"ssl.key.pem": "plain"}}},
    ],
)
def test_secrets_in_config_are_refused(chart, config):
    with pytest.raises(helm.HelmRenderError, match="ConfigMap"):
        render(chart, {"config": config})


# --------------------------------------------------------------------------------------------
# Availability and scaling


def test_pod_disruption_budget(scenario):
    _, _, rendered = scenario
    pdb = rendered.enricher("PodDisruptionBudget")
    pod_labels = rendered.enricher("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    for job in rendered.all("Job"):
        job_labels = job["spec"]["template"]["metadata"]["labels"]
        assert not pdb["spec"]["selector"]["matchLabels"].items() <= job_labels.items()


def test_autoscaling_is_capped_at_partitions(scenario):
    _, values, rendered = scenario
    deployment = rendered.enricher("Deployment")
    autoscalers = rendered.all("ScaledObject") + rendered.all("HorizontalPodAutoscaler")
    if not autoscalers:
        assert deployment["spec"]["replicas"] == values.get("replicas", 2)
        return
    (autoscaler,) = autoscalers
    # The autoscaler owns the replica count: the Deployment must not fight it on upgrades.
    assert "replicas" not in deployment["spec"]
    partitions = values["autoscaling"]["partitions"]
    spec = autoscaler["spec"]
    maximum = spec.get("maxReplicaCount", spec.get("maxReplicas"))
    assert 1 <= maximum <= partitions
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_keda_trigger_reads_the_consumer_group_lag(chart):
    values = scenario_values("keda")
    rendered = render(chart, values)
    scaled = rendered.one("ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    config = rendered.config
    assert trigger["metadata"]["bootstrapServers"] == config["kafka"]["bootstrap_servers"]
    assert trigger["metadata"]["consumerGroup"] == config["kafka"]["group_id"]
    assert trigger["metadata"]["topic"] == config["input"]["topics"][0]
    assert trigger["metadata"]["lagThreshold"] == "500"
    assert trigger["metadata"]["allowIdleConsumers"] == "false"
    assert scaled["spec"]["maxReplicaCount"] == 12
    assert "sasl" not in trigger["metadata"] and "authenticationRef" not in trigger
    # Without maxReplicaCount the cap is the partition count.
    values["autoscaling"]["keda"]["maxReplicaCount"] = None
    assert render(chart, values).one("ScaledObject")["spec"]["maxReplicaCount"] == 12


def test_keda_authenticates_like_the_service(chart):
    rendered = render(chart, scenario_values("confluent-sasl"))
    (trigger,) = rendered.one("ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["sasl"] == "plaintext"  # SASL mechanism PLAIN
    assert trigger["metadata"]["tls"] == "enable"  # sasl_ssl
    auth = rendered.one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    secret = rendered.one("Secret")
    assert {p: (r["name"], r["key"]) for p, r in refs.items()} == {
        "username": (secret["metadata"]["name"], "kafka-sasl-username"),
        "password": (secret["metadata"]["name"], "kafka-sasl-password"),
    }
    assert {r["key"] for r in refs.values()} <= set(secret["data"])


@pytest.mark.parametrize(
    "autoscaling",
    [
        {"partitions": 12, "keda": {"enabled": True, "maxReplicaCount": 13}},
        {"partitions": 4, "hpa": {"enabled": True, "maxReplicas": 8}},
        {"keda": {"enabled": True}},
        {"partitions": 4, "keda": {"enabled": True}, "hpa": {"enabled": True}},
    ],
)
def test_autoscaling_misconfigurations_are_refused(chart, autoscaling):
    with pytest.raises(helm.HelmRenderError, match="autoscaling"):
        render(chart, {"autoscaling": autoscaling})


def test_topology_spread_gets_the_pod_selector(chart):
    constraint = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    rendered = render(chart, {"topologySpreadConstraints": [constraint]})
    deployment = rendered.enricher("Deployment")
    (spread,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(deployment, version, strict=True)


# --------------------------------------------------------------------------------------------
# Backfill Job


def test_backfill_is_disabled_by_default(chart):
    assert render(chart).all("Job") == []


def test_backfill_job(chart):
    values = scenario_values("backfill")
    rendered = render(chart, values)
    job = rendered.one("Job")
    pod_spec = job["spec"]["template"]["spec"]
    c = container(pod_spec)
    # The replay values become the command's options (log lines for progress: no terminal).
    assert c["args"] == [
        "replay", "--from", "-6h", "--to", "latest", "--output-suffix", ".backfill",
        "--max-provider-rps", "5", "--progress", "log",
    ]
    assert pod_spec["restartPolicy"] == "Never"
    assert job["spec"]["activeDeadlineSeconds"] == 21600
    deployment = rendered.enricher("Deployment")
    assert container(deployment["spec"]["template"]["spec"])["args"] == ["run"]
    # Same config and credentials as the consumers, but not selected by them.
    assert env_map(c)["WEBHOOK_ENRICHER_CONFIG"] == env_map(container(deployment["spec"]["template"]["spec"]))["WEBHOOK_ENRICHER_CONFIG"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    # New arguments give a new Job (its pod template is immutable); the same ones, the same Job.
    assert render(chart, values).one("Job")["metadata"]["name"] == job["metadata"]["name"]
    other = merge(values, {"backfill": {"replay": {"from": "-12h"}}})
    assert render(chart, other).one("Job")["metadata"]["name"] != job["metadata"]["name"]


def test_backfill_replay_values_cover_every_option(chart):
    replay = {
        "from": "2024-05-01T00:00:00Z",
        "to": "2024-05-02T00:00:00Z",
        "partitionOffsets": "0=120,3=998",
        "group": "backfill-may",
        "clearsaleTopic": "cs.shadow",
        "unicoTopic": "unico.shadow",
        "deadLetterTopic": "dlq.shadow",
        "dedupe": False,
        "renormalize": True,
        "dryRun": True,
    }
    job = render(chart, {"backfill": {"enabled": True, "replay": replay}}).one("Job")
    assert container(job["spec"]["template"]["spec"])["args"] == [
        "replay", "--from", "2024-05-01T00:00:00Z", "--to", "2024-05-02T00:00:00Z",
        "--partition-offsets", "0=120,3=998", "--group", "backfill-may",
        "--clearsale-topic", "cs.shadow", "--unico-topic", "unico.shadow",
        "--dead-letter-topic", "dlq.shadow", "--dedupe", "off", "--renormalize", "--dry-run",
        "--progress", "log",
    ]


def test_backfill_shadow_topics_get_kafkatopics(chart):
    values = merge(scenario_values("backfill"), {"topics": {"strimzi": {"enabled": True, "cluster": "main"}}})
    roles = {
        t["spec"]["topicName"]: t["metadata"]["labels"]["webhook-enricher.io/topic-role"]
        for t in render(chart, values).all("KafkaTopic")
    }
    assert roles["clearsale.analysis.enriched.backfill"] == "backfill-output"
    assert roles["unico.process.enriched.backfill"] == "backfill-output"
    assert roles["unico.process.enriched"] == "output"
    # Without a shadow, the backfill writes to the release's own topics: nothing more.
    plain = merge(values, {"backfill": {"replay": {"outputSuffix": ""}}})
    names = [t["spec"]["topicName"] for t in render(chart, plain).all("KafkaTopic")]
    assert not [n for n in names if "backfill" in n]
    assert len(names) == len(set(names))


def test_backfill_args_are_an_escape_hatch(chart):
    args = ["replay", "--from", "earliest", "--to", "100"]
    values = {"backfill": {"enabled": True, "args": args, "replay": {"from": "-6h"}}}
    job = render(chart, values).one("Job")
    assert container(job["spec"]["template"]["spec"])["args"] == args


def test_backfill_needs_a_start(chart):
    with pytest.raises(helm.HelmRenderError, match="backfill.replay.from"):
        render(chart, {"backfill": {"enabled": True}})
    # partitionOffsets alone is a start.
    job = render(chart, {"backfill": {"enabled": True, "replay": {"partitionOffsets": "0=5"}}}).one("Job")
    assert "--partition-offsets" in container(job["spec"]["template"]["spec"])["args"]


def test_backfill_replay_values_are_checked(chart):
    for bad, where in (
        ({"maxProviderRps": 0}, "maxProviderRps"),
        ({"partitionOffsets": "0:5"}, "partitionOffsets"),
        ({"bogus": 1}, "bogus"),
    ):
        with pytest.raises(helm.HelmValuesError, match=where):
            render(chart, {"backfill": {"enabled": True, "replay": {"from": "-1h", **bad}}})


# --------------------------------------------------------------------------------------------
# The webhook receiver


RECEIVER_AUTH = {"receive": {"clearsale": {"auth": {"mode": "basic", "username": "cs"}}, "unico": {"auth": {"mode": "none"}}}}


def test_receiver_is_off_by_default(chart):
    rendered = render(chart)
    assert all(component(d) != "receiver" for d in rendered.docs)
    assert "listen" not in rendered.config.get("receive", {})


def test_receiver_objects(chart):
    values = scenario_values("receiver")
    rendered = render(chart, values)
    (deployment,) = rendered.receiver("Deployment")
    pod_spec = deployment["spec"]["template"]["spec"]
    c = container(pod_spec)
    assert c["args"] == ["receive"]
    assert deployment["spec"]["replicas"] == 3
    # The listener port: config, container port, Service, Ingress.
    port = values["receiver"]["port"]
    host, _, listen_port = rendered.config["receive"]["listen"].rpartition(":")
    assert (host, int(listen_port)) == ("0.0.0.0", port)
    assert port_number(c, "http") == port
    # Probes on the admin port, as for the enricher.
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert port_number(c, "admin") == admin_listen_port(rendered)
    # Its pods are selected by its Services and PDB, never by the enricher's (and vice versa).
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    enricher_labels = rendered.enricher("Deployment")["spec"]["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in rendered.receiver("Service")}
    assert len(services) == 2
    web = services[deployment["metadata"]["name"]]
    admin = next(s for n, s in services.items() if n != deployment["metadata"]["name"])
    for service in (web, admin):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert not service["spec"]["selector"].items() <= enricher_labels.items()
    (web_port,) = web["spec"]["ports"]
    assert web_port["targetPort"] == "http" and web_port["port"] == 80
    assert not web["spec"].get("publishNotReadyAddresses"), "unready receivers get no webhooks"
    assert admin["spec"]["publishNotReadyAddresses"] is True
    assert admin["spec"]["ports"][0]["targetPort"] == "admin"
    (pdb,) = rendered.receiver("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert not rendered.enricher("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # The Ingress routes exactly the two webhook paths to the web port, with TLS.
    (ingress,) = rendered.all("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "webhooks-tls", "hosts": ["webhooks.example.com"]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "webhooks.example.com"
    paths = {p["path"]: p for p in rule["http"]["paths"]}
    assert set(paths) == {"/webhooks/clearsale", "/webhooks/unico"}
    for p in paths.values():
        assert p["pathType"] == "Exact"
        assert p["backend"]["service"] == {"name": web["metadata"]["name"], "port": {"name": "http"}}
    # Metrics of both: one ServiceMonitor each, the receiver's on its admin Service.
    monitor = next(m for m in rendered.all("ServiceMonitor") if m["metadata"]["name"] == deployment["metadata"]["name"])
    assert monitor["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items()
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= web["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"
    # The grace period covers the delay, the drain and the flush: 10 + 20 + 5 + 5.
    assert pod_spec["terminationGracePeriodSeconds"] == 40


def test_receiver_pods_get_only_the_receivers_credentials(chart):
    values = merge(scenario_values("receiver"), {"secrets": SECRET_VALUES})
    rendered = render(chart, values)
    (deployment,) = rendered.receiver("Deployment")
    refs, volumes = secret_refs(deployment["spec"]["template"]["spec"])
    assert {env: ref["key"] for env, ref in refs.items()} == {env: key for key, env in RECEIVE_SECRET_ENV.items()}
    assert volumes == [], "no Unico private key in the receiver"
    enricher_refs, _ = secret_refs(rendered.enricher("Deployment")["spec"]["template"]["spec"])
    assert {ref["key"] for ref in enricher_refs.values()} == set(SECRET_ENV)
    assert not any(k.startswith("receive-") for k in (ref["key"] for ref in enricher_refs.values()))
    decoded = {k: base64.b64decode(v).decode() for k, v in rendered.one("Secret")["data"].items()}
    assert decoded["receive-clearsale-password"] == SECRET_VALUES["receiveClearsalePassword"]


def test_receiver_needs_an_auth_mode_per_enabled_endpoint(chart):
    with pytest.raises(helm.HelmRenderError, match=r"config.receive.clearsale.auth.mode is required"):
        render(chart, {"receiver": {"enabled": True}})
    config = {"receive": {"clearsale": {"auth": {"mode": "bearer"}}, "unico": {"enabled": False}}}
    rendered = render(chart, {"receiver": {"enabled": True}, "config": config})
    assert rendered.config["receive"]["unico"]["enabled"] is False
    (ingress_less,) = rendered.receiver("Deployment")
    assert rendered.all("Ingress") == []
    assert ingress_less["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 5 + 20 + 5 + 5


def test_ingress_serves_only_the_enabled_endpoints_at_their_paths(chart):
    config = {"receive": {"clearsale": {"path": "/hooks/cs", "auth": {"mode": "none"}}, "unico": {"enabled": False}}}
    rendered = render(chart, {"receiver": {"enabled": True, "ingress": {"enabled": True, "hosts": ["a.example", "b.example"]}}, "config": config})
    (ingress,) = rendered.all("Ingress")
    assert [[p["path"] for p in r["http"]["paths"]] for r in ingress["spec"]["rules"]] == [["/hooks/cs"], ["/hooks/cs"]]


def test_receiver_listen_cannot_be_set_in_config(chart):
    with pytest.raises(helm.HelmRenderError, match="set receiver.port instead"):
        render(chart, {"receiver": {"enabled": True}, "config": merge(RECEIVER_AUTH, {"receive": {"listen": "0.0.0.0:1"}})})


@pytest.mark.parametrize(
    "auth",
    [
        {"clearsale": {"auth": {"mode": "basic", "password": "plain"}}},
        {"clearsale": {"auth": {"mode": "bearer", "token": "plain"}}},
        {"unico": {"auth": {"mode": "api_key", "api_key": "plain"}}},
    ],
)
def test_receiver_secrets_in_config_are_refused(chart, auth):
    with pytest.raises(helm.HelmRenderError, match=r"secrets\.receive(Clearsale|Unico)"):
        render(chart, {"config": {"receive": auth}})


def test_load_balancer_keeps_the_client_address(chart):
    rendered = render(chart, {"receiver": {"enabled": True, "service": {"type": "LoadBalancer"}}, "config": RECEIVER_AUTH})
    web = next(s for s in rendered.receiver("Service") if s["spec"]["type"] == "LoadBalancer")
    assert web["spec"]["externalTrafficPolicy"] == "Local"


# --------------------------------------------------------------------------------------------
# Provider isolation ([engine.isolation])


# The service's defaults of [engine.isolation] (src/engine/settings.rs), which values.yaml spells out.
ISOLATION_DEFAULTS = {
    "enabled": "auto",
    "clearsale_wait_topic": "webhooks.wait.clearsale",
    "unico_wait_topic": "webhooks.wait.unico",
    "wait_group_id": "",
    "divert_after": "10s",
    "catch_up_initial": 8,
    "catch_up_ramp_every": "1s",
    "retry_rounds": ["30s", "2m"],
}


def test_isolation_settings_reach_the_config(chart):
    assert chart.values["config"]["engine"]["isolation"] == ISOLATION_DEFAULTS
    assert render(chart).config["engine"]["isolation"] == ISOLATION_DEFAULTS
    isolation = {
        "enabled": True,
        "clearsale_wait_topic": "cs.parked",
        "unico_wait_topic": "unico.parked",
        "wait_group_id": "enricher.parked",
        "divert_after": "30s",
        "catch_up_initial": 16,
        "catch_up_ramp_every": "500ms",
        "retry_rounds": ["1m"],
    }
    rendered = render(chart, {"config": {"engine": {"isolation": isolation}}})
    assert rendered.config["engine"]["isolation"] == isolation
    assert "catch_up_initial = 16\n" in rendered.config_text  # an integer, not 16.0
    assert rendered.config["engine"]["drain_timeout"] == "30s"  # the other engine settings stay
    off = render(chart, {"config": {"engine": {"isolation": {"enabled": False}}}}).config["engine"]["isolation"]
    assert off["enabled"] is False


FALLBACK_DEFAULTS = {
    "enabled": False,
    "expectations_topic": "webhooks.expectations",
    "after": "10s",
    "poll_interval": "5s",
    "max_poll_interval": "1m",
    "max_wait": "15m",
    "max_pending": 10000,
    "poll_share": 0.2,
    "max_concurrent_polls": 32,
    "seen_capacity": 100000,
    "seen_ttl": "1h",
}


def test_fallback_settings_reach_the_config(chart):
    """The chart's defaults are the service's (src/engine/fallback/settings.rs), and every
    setting reaches config.toml with its type."""
    assert chart.values["config"]["fallback"] == FALLBACK_DEFAULTS
    assert render(chart).config["fallback"] == FALLBACK_DEFAULTS
    fallback = {
        "enabled": True,
        "expectations_topic": "orders.expected",
        "after": "30s",
        "poll_interval": "2s",
        "max_poll_interval": "20s",
        "max_wait": "1h",
        "max_pending": 500,
        "poll_share": 0.5,
        "max_concurrent_polls": 4,
        "seen_capacity": 1000,
        "seen_ttl": "10m",
    }
    rendered = render(chart, {"config": {"fallback": fallback}})
    assert rendered.config["fallback"] == fallback
    assert "max_pending = 500\n" in rendered.config_text  # an integer, not 500.0


def test_fallback_expectations_topic_gets_the_input_partitions(chart):
    values = {
        "topics": {"strimzi": {"enabled": True, "cluster": "kafka", "partitions": 6}},
        "config": {"fallback": {"enabled": True, "expectations_topic": "orders.expected"}},
    }
    topics = kafka_topics(render(chart, values))
    assert topics["orders.expected"]["metadata"]["labels"]["webhook-enricher.io/topic-role"] == "expectations"
    assert topics["orders.expected"]["spec"]["partitions"] == 6
    assert "orders.expected" not in kafka_topics(render(chart, {"topics": values["topics"]}))
    with pytest.raises(helm.HelmRenderError, match="expectations topics"):
        render(chart, {**values, "topics": {"strimzi": {**values["topics"]["strimzi"], "overrides": {"orders.expected": {"partitions": 3}}}}})


@pytest.mark.parametrize(
    "fallback",
    [
        {"enabled": "yes"},
        {"poll_share": 0},
        {"poll_share": 1.5},
        {"max_pending": 0},
        {"after": "10"},
        {"expectations_topic": "expected orders"},
        {"typo": 1},
    ],
)
def test_fallback_values_are_checked(chart, fallback):
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"config": {"fallback": fallback}})


def test_notes_name_the_wait_topics_and_group(chart):
    notes = render(chart).notes
    assert "wait topics webhooks.wait.clearsale, webhooks.wait.unico" in notes
    assert 'wait group "webhook-enricher.wait"' in notes
    notes = render(chart, {"config": {"unico": {"enabled": False}, "engine": {"isolation": {"wait_group_id": "parked"}}}}).notes
    assert "wait topics webhooks.wait.clearsale\n" in notes and 'wait group "parked"' in notes
    assert "wait topics" not in render(chart, {"config": {"engine": {"isolation": {"enabled": False}}}}).notes


@pytest.mark.parametrize(
    "isolation",
    [
        {"enabled": "maybe"},
        {"catch_up_initial": 0},
        {"divert_after": "10"},
        {"catch_up_ramp_every": "soon"},
        {"retry_rounds": ["later"]},
        {"retry_rounds": "30s"},
        {"unico_wait_topic": "wait for unico"},
        {"clearsale_wait_topic": ""},
    ],
)
def test_isolation_values_are_checked(chart, isolation):
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"config": {"engine": {"isolation": isolation}}})


# --------------------------------------------------------------------------------------------
# Kafka topics (Strimzi KafkaTopics)


STRIMZI = {"topics": {"strimzi": {"enabled": True, "cluster": "my-kafka"}}}


def expected_topics(config: dict[str, Any], values: dict[str, Any]) -> dict[str, str]:
    """Every topic the release uses, by role, read independently from the rendered config.toml
    with the service's defaults: the input topics, the receiver's topic (when it is deployed),
    the enabled providers' output topics (ClearSale's module topics too), the dead-letter topic
    and, unless isolation is off, the enabled providers' wait topics."""
    inputs = config.get("input", {}).get("topics", ["webhooks.raw"])
    output = config.get("output", {})
    isolation = config.get("engine", {}).get("isolation", {})
    clearsale = config.get("clearsale", {}).get("enabled", True)
    unico = config.get("unico", {}).get("enabled", True)
    topics = {t: "input" for t in inputs}
    if values.get("receiver", {}).get("enabled"):
        topics.setdefault(config.get("receive", {}).get("topic", "webhooks.raw"), "raw")
    if clearsale:
        topics.setdefault(output.get("clearsale_topic", "clearsale.analysis.enriched"), "output")
        for topic in output.get("clearsale_module_topics", {}).values():
            topics.setdefault(topic, "output")
    if unico:
        topics.setdefault(output.get("unico_topic", "unico.process.enriched"), "output")
    topics.setdefault(output.get("dead_letter_topic", "webhooks.dead-letter"), "dead-letter")
    if isolation.get("enabled", "auto") not in (False, "false", "off"):
        if clearsale:
            topics.setdefault(isolation.get("clearsale_wait_topic", "webhooks.wait.clearsale"), "wait")
        if unico:
            topics.setdefault(isolation.get("unico_wait_topic", "webhooks.wait.unico"), "wait")
    fallback = config.get("fallback", {})
    if fallback.get("enabled"):
        topics.setdefault(fallback.get("expectations_topic", "webhooks.expectations"), "expectations")
    return topics


def kafka_topics(rendered: Rendered) -> dict[str, dict[str, Any]]:
    """The KafkaTopics by Kafka topic name (spec.topicName)."""
    found = {t["spec"]["topicName"]: t for t in rendered.all("KafkaTopic")}
    assert len(found) == len(rendered.all("KafkaTopic")), "two KafkaTopics for one topic"
    return found


def test_kafka_topics_cover_every_topic_of_the_configuration(scenario):
    _, values, rendered = scenario
    strimzi = values.get("topics", {}).get("strimzi", {})
    if not strimzi.get("enabled"):
        assert rendered.all("KafkaTopic") == []
        return
    topics = kafka_topics(rendered)
    expected = expected_topics(rendered.config, values)
    assert {t: d["metadata"]["labels"]["webhook-enricher.io/topic-role"] for t, d in topics.items()} == expected
    names = [d["metadata"]["name"] for d in topics.values()]
    assert len(set(names)) == len(names)
    for topic, doc in topics.items():
        assert doc["metadata"]["labels"]["strimzi.io/cluster"] == strimzi["cluster"]
        assert doc["metadata"]["namespace"] == (strimzi.get("namespace") or NAMESPACE)
        assert doc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        override = strimzi.get("overrides", {}).get(topic, {})
        assert doc["spec"]["replicas"] == override.get("replicas", strimzi.get("replicas", 3))
        assert doc["spec"].get("config", {}) == merge(strimzi.get("config", {}), override.get("config", {}))
    # A wait partition is read back by the owner of the input partition with the same number.
    partitions = {
        topics[t]["spec"]["partitions"] for t, role in expected.items() if role in ("input", "wait", "expectations")
    }
    assert partitions == {strimzi.get("partitions", 12)}
    if values.get("autoscaling", {}).get("partitions"):
        assert partitions == {values["autoscaling"]["partitions"]}


def test_strimzi_scenario_renders_every_kind_of_topic(chart):
    values = scenario_values("strimzi-topics")
    rendered = render(chart, values)
    topics = kafka_topics(rendered)
    assert set(topics) == {
        "webhooks.raw", "Webhooks_Legacy.raw", "clearsale.analysis.enriched", "clearsale.mfa.enriched",
        "unico.process.enriched", "webhooks.dead-letter", "webhooks.wait.clearsale", "webhooks.wait.unico",
    }
    for topic in ("webhooks.wait.clearsale", "webhooks.wait.unico", "webhooks.raw", "Webhooks_Legacy.raw"):
        assert topics[topic]["spec"]["partitions"] == 12
    dead_letter = topics["webhooks.dead-letter"]["spec"]
    assert dead_letter["partitions"] == 3
    assert dead_letter["config"] == {"min.insync.replicas": 2, "retention.ms": 2592000000}
    assert all(t["metadata"]["namespace"] == "kafka" for t in topics.values())
    # Integers stay integers (Helm hands 604800000 to templates as a float: not 6.048e+08).
    assert topics["webhooks.raw"]["spec"]["config"]["retention.ms"] == 604800000
    assert "e+0" not in "".join(rendered.raw.values())
    assert rendered.config["engine"]["isolation"]["enabled"] is True
    assert "webhooks.wait.clearsale, webhooks.wait.unico" in rendered.notes
    assert '"enricher-prod.wait"' in rendered.notes


def test_strimzi_topics_are_off_by_default(chart):
    assert chart.values["topics"]["strimzi"]["enabled"] is False
    assert render(chart).all("KafkaTopic") == []
    assert render(chart, {"topics": {"strimzi": {"cluster": "my-kafka"}}}).all("KafkaTopic") == []


def test_strimzi_topics_need_a_cluster(chart):
    with pytest.raises(helm.HelmRenderError, match=r"topics\.strimzi\.cluster is required with topics\.strimzi\.enabled"):
        render(chart, {"topics": {"strimzi": {"enabled": True}}})


def test_default_kafka_topics_and_namespace(chart):
    rendered = render(chart, STRIMZI)
    topics = kafka_topics(rendered)
    assert {t: d["metadata"]["labels"]["webhook-enricher.io/topic-role"] for t, d in topics.items()} == {
        "webhooks.raw": "input",
        "clearsale.analysis.enriched": "output",
        "unico.process.enriched": "output",
        "webhooks.dead-letter": "dead-letter",
        "webhooks.wait.clearsale": "wait",
        "webhooks.wait.unico": "wait",
    }
    for topic, doc in topics.items():
        # Valid Kubernetes names are kept as they are.
        assert doc["metadata"]["name"] == topic
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["spec"] == {"topicName": topic, "partitions": 12, "replicas": 3}
        assert doc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert "get kafkatopics" in rendered.notes


NAMES = [
    "webhooks.raw", "Webhooks.Raw", "WEBHOOKS_RAW", "webhooks_raw", "webhooks-raw", "a..b", "_private",
    "x-.y", "-dash", "trailing.", "__", "a" * 249,
]


def test_kafka_topic_names_are_dns_safe_and_exact(chart):
    rendered = render(chart, merge(STRIMZI, {"config": {"input": {"topics": NAMES}}}))
    topics = kafka_topics(rendered)
    assert set(NAMES) <= set(topics)
    names = [d["metadata"]["name"] for d in topics.values()]
    assert len(set(names)) == len(names), "two topics share a KafkaTopic name"
    for topic, doc in topics.items():
        name = doc["metadata"]["name"]
        assert len(name) <= 253 and DNS_SUBDOMAIN.fullmatch(name), name
        assert doc["spec"]["topicName"] == topic
        if DNS_SUBDOMAIN.fullmatch(topic):
            assert name == topic
        else:
            # Strimzi's convention: the name made valid, `---`, the SHA-1 of the exact name.
            assert name.endswith("---" + hashlib.sha1(topic.encode()).hexdigest()) or name == hashlib.sha1(topic.encode()).hexdigest()
    assert topics["Webhooks.Raw"]["metadata"]["name"].startswith("webhooks.raw---")
    assert topics["WEBHOOKS_RAW"]["metadata"]["name"].startswith("webhooks-raw---")


def test_invalid_kafka_topic_name_is_refused(chart):
    with pytest.raises(helm.HelmRenderError, match=r"not a valid Kafka topic name"):
        render(chart, merge(STRIMZI, {"config": {"output": {"dead_letter_topic": "dead letters"}}}))


def test_wait_topics_follow_the_enabled_providers_and_isolation(chart):
    custom = {"clearsale_wait_topic": "cs.parked", "unico_wait_topic": "unico.parked"}
    rendered = render(chart, merge(STRIMZI, {"config": {"engine": {"isolation": custom}, "input": {"topics": ["in.a", "in.b"]}}, "topics": {"strimzi": {"partitions": 7}}}))
    topics = kafka_topics(rendered)
    assert {t for t, d in topics.items() if d["metadata"]["labels"]["webhook-enricher.io/topic-role"] == "wait"} == {"cs.parked", "unico.parked"}
    assert {topics[t]["spec"]["partitions"] for t in ("cs.parked", "unico.parked", "in.a", "in.b")} == {7}
    assert "webhooks.wait.clearsale" not in topics
    # Unico disabled: none of its topics.
    rendered = render(chart, merge(STRIMZI, {"config": {"unico": {"enabled": False}}}))
    assert set(kafka_topics(rendered)) == {"webhooks.raw", "clearsale.analysis.enriched", "webhooks.dead-letter", "webhooks.wait.clearsale"}
    # ClearSale disabled: neither its output, its module topics nor its wait topic.
    rendered = render(chart, merge(STRIMZI, {"config": {"clearsale": {"enabled": False}, "output": {"clearsale_module_topics": {"mfa": "cs.mfa"}}}}))
    assert set(kafka_topics(rendered)) == {"webhooks.raw", "unico.process.enriched", "webhooks.dead-letter", "webhooks.wait.unico"}
    # Isolation off: the service reads and writes no wait topic.
    rendered = render(chart, merge(STRIMZI, {"config": {"engine": {"isolation": {"enabled": False}}}}))
    assert not any(t.startswith("webhooks.wait.") for t in kafka_topics(rendered))
    assert "wait topics" not in rendered.notes


def test_receiver_topic_gets_a_kafka_topic(chart):
    values = merge(scenario_values("receiver"), STRIMZI)
    topics = kafka_topics(render(chart, values))
    assert topics["webhooks.raw"]["metadata"]["labels"]["webhook-enricher.io/topic-role"] == "input"
    values = merge(values, {"config": {"receive": {"topic": "webhooks.incoming"}}})
    topics = kafka_topics(render(chart, values))
    assert topics["webhooks.incoming"]["metadata"]["labels"]["webhook-enricher.io/topic-role"] == "raw"
    assert "webhooks.raw" in topics


def test_topic_overrides(chart):
    overrides = {
        "unico.process.enriched": {"partitions": 4, "replicas": 2, "config": {"cleanup.policy": "compact", "retention.ms": -1}},
        "webhooks.wait.unico": {"replicas": 5, "config": {"retention.ms": 86400000}},
    }
    values = merge(STRIMZI, {"topics": {"strimzi": {"config": {"retention.ms": 604800000, "min.insync.replicas": 2}, "overrides": overrides}}})
    topics = kafka_topics(render(chart, values))
    assert topics["unico.process.enriched"]["spec"] == {
        "topicName": "unico.process.enriched", "partitions": 4, "replicas": 2,
        "config": {"cleanup.policy": "compact", "retention.ms": -1, "min.insync.replicas": 2},
    }
    assert topics["webhooks.wait.unico"]["spec"]["partitions"] == 12
    assert topics["webhooks.wait.unico"]["spec"]["replicas"] == 5
    assert topics["webhooks.wait.unico"]["spec"]["config"] == {"retention.ms": 86400000, "min.insync.replicas": 2}
    assert topics["webhooks.raw"]["spec"]["config"] == {"retention.ms": 604800000, "min.insync.replicas": 2}


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("webhooks.wait.clearsale", r"overrides\.webhooks\.wait\.clearsale\.partitions: .* is one of the wait topics"),
        ("webhooks.raw", r"overrides\.webhooks\.raw\.partitions: .* is one of the input topics"),
        ("webhooks.typo", r"\"webhooks\.typo\" is not a topic of this release"),
    ],
)
def test_topic_overrides_cannot_break_the_partition_rule(chart, topic, message):
    values = merge(STRIMZI, {"topics": {"strimzi": {"overrides": {topic: {"partitions": 3}}}}})
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


def test_strimzi_partitions_must_equal_autoscaling_partitions(chart):
    values = merge(STRIMZI, {"autoscaling": {"partitions": 6, "hpa": {"enabled": True}}})
    with pytest.raises(helm.HelmRenderError, match=r"topics\.strimzi\.partitions \(12\) and autoscaling\.partitions \(6\)"):
        render(chart, values)
    values["topics"]["strimzi"]["partitions"] = 6
    assert {t["spec"]["partitions"] for t in render(chart, values).all("KafkaTopic")} == {6}


@pytest.mark.parametrize(
    "strimzi",
    [
        {"enabled": True, "cluster": "My_Cluster"},
        {"enabled": True, "cluster": "c", "partitions": 0},
        {"enabled": True, "cluster": "c", "replicas": 0},
        {"enabled": True, "cluster": "c", "config": {"retention.ms": {"nested": 1}}},
        {"enabled": True, "cluster": "c", "overrides": {"webhooks.dead-letter": {"partitons": 3}}},
        {"enabled": True, "cluster": "c", "clusters": "typo"},
    ],
)
def test_strimzi_values_are_checked(chart, strimzi):
    with pytest.raises(helm.HelmValuesError):
        render(chart, {"topics": {"strimzi": strimzi}})


# --------------------------------------------------------------------------------------------
# Documentation of the values


def test_every_value_is_documented():
    """Every key of values.yaml has a comment above it, unless it is a plain section header
    (a mapping with no value of its own) or lies inside a documented value."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    key_re = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(.*)$")
    documented_block: int | None = None  # indentation of a documented mapping/list value
    undocumented: list[str] = []
    for i, line in enumerate(lines):
        m = key_re.match(line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).split("#")[0].strip()
        if documented_block is not None:
            if indent > documented_block:
                continue
            documented_block = None
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        has_comment = j >= 0 and lines[j].strip().startswith("#")
        if has_comment:
            if not rest:
                documented_block = indent
        elif rest:
            undocumented.append(f"line {i + 1}: {key}")
    assert undocumented == []


def test_schema_is_strict_at_the_top_level(chart):
    schema = chart.schema
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(chart.values)


# --------------------------------------------------------------------------------------------
# The image the chart runs (Dockerfile at the repository root; not built here)


def test_dockerfile_matches_the_chart(chart):
    dockerfile = (CHART_DIR.parents[1] / "Dockerfile").read_text()
    defaults = chart.values
    assert re.search(rf"useradd .*--uid {UID} ", dockerfile)
    assert re.search(rf"^USER {UID}:{UID}$", dockerfile, re.M)
    assert defaults["podSecurityContext"]["runAsUser"] == UID
    assert re.search(rf"^EXPOSE {defaults['admin']['port']}$", dockerfile, re.M)
    assert re.search(rf"^EXPOSE {defaults['receiver']['port']}$", dockerfile, re.M)
    assert 'ENTRYPOINT ["/usr/local/bin/webhook-enricher"]' in dockerfile
    assert 'CMD ["run"]' in dockerfile
    # The production build: no demo, no simulator (see .ci/run).
    assert "cargo build --release --locked --no-default-features --bin webhook-enricher" in dockerfile
    rendered = render(chart)
    assert container(rendered.enricher("Deployment")["spec"]["template"]["spec"])["image"] == f"webhook-enricher:{chart.metadata['appVersion']}"
