"""The scale-out drills' load balancer and Prometheus configs are valid and agree; their reports are readable."""

import os
import re
import shutil
import subprocess

import yaml
from helpers import skip_unless_ci

from loadtest.cluster import GRACE_S, PRESTOP_S, SLOTS, port
from loadtest.scale import markdown
from models.config import PROJECT_DIR

HAPROXY_CONFIG = PROJECT_DIR / "deploy" / "local" / "haproxy.cfg"
PROMETHEUS_CONFIG = PROJECT_DIR / "deploy" / "local" / "prometheus.yml"


def tool(name: str) -> str:
    """The path of a command-line tool; skipped where it is missing, except in CI, which must have it."""
    path = shutil.which(name)
    if path is None:
        skip_unless_ci(f"{name} is not installed (.ci/run installs it)")
    return path


def test_haproxy_config_is_valid(tmp_path: object) -> None:
    result = subprocess.run(
        [tool("haproxy"), "-c", "-f", str(HAPROXY_CONFIG)],
        env={**os.environ, "LB_SOCKET": f"{tmp_path}/lb.sock"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr  # zero-warning: a warning fails too


def test_prometheus_config_is_valid() -> None:
    command = [tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_and_prometheus_know_the_same_replica_slots() -> None:
    servers = re.findall(r"^\s*server r(\d) 127\.0\.0\.1:(\d+)$", HAPROXY_CONFIG.read_text(), re.MULTILINE)
    assert [(int(slot), int(number)) for slot, number in servers] == [(slot, port(slot)) for slot in SLOTS]
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == [f"127.0.0.1:{port(slot)}" for slot in SLOTS]


def test_haproxy_health_check_is_the_readiness_probe() -> None:
    deployment = yaml.safe_load((PROJECT_DIR / "deploy" / "k8s" / "base" / "deployment.yaml").read_text())
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    config = HAPROXY_CONFIG.read_text()
    assert f"http-check send meth GET uri {probe['httpGet']['path']}\n" in config
    period, fall, rise = probe["periodSeconds"], probe["failureThreshold"], probe.get("successThreshold", 1)
    assert f"default-server check inter {period}s fall {fall} rise {rise}\n" in config


def test_drills_terminate_replicas_as_the_deployment_does() -> None:
    pod = yaml.safe_load((PROJECT_DIR / "deploy" / "k8s" / "base" / "deployment.yaml").read_text())["spec"]["template"]
    assert pod["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/sleep", str(PRESTOP_S)]
    assert pod["spec"]["terminationGracePeriodSeconds"] == GRACE_S


def test_scale_report_lists_figures_points_and_events() -> None:
    report = markdown(
        {
            "drill": "rolling-update",
            "date": "2026-11-28 01:00",
            "failed": 0,
            "outcomes": {"200": 10},
            "points": [{"share_of_capacity": 0.4, "cpu_utilization": 0.5, "requests_per_s": 900, "p50_ms": 2.0,
                        "p99_ms": 6.5, "failed": 0}],
            "events": [{"t_s": 10.2, "event": "r3 ready"}],
        }
    )  # fmt: skip
    assert "python -m loadtest.scale rolling-update" in report
    assert "- failed: 0" in report and '- outcomes: {"200": 10}' in report
    assert "| 40% | 900 | 50% | 2.0 | 6.5 | 0 |" in report
    assert "| 10.2 | r3 ready |" in report


def test_prometheus_config_loads_the_project_rules_each_scrape() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    rules = [(PROMETHEUS_CONFIG.parent / path).resolve() for path in config["rule_files"]]
    assert rules == [PROJECT_DIR / "deploy" / "k8s" / "alerts" / "flight-delay.rules.yml"]
    assert config["global"]["evaluation_interval"] == config["global"]["scrape_interval"]  # the cluster drill's wait
