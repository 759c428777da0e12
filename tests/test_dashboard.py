"""The Grafana dashboard (deploy/k8s/dashboard/): the committed ConfigMap is its generator's output, a
valid Kubernetes object that Grafana's sidecar finds, and every panel's query returns numbers in
promtool from the series a pod exports and the recording rules make of them.

How a query is tested: promtool's `promql_expr_test` compares the samples of a query with the expected
ones exactly, and a panel's samples (which series, what values) are not the point here, so each panel
query E is asked as `group((E) > -Inf)`. That is one sample `{}` of value 1 when E returns at least one
number, and nothing when E returns nothing or only NaN (a misspelt metric or label, a label a
recording rule drops, a division by a series that is absent), which fails the case. The test file
loads the rule file itself, so the panels reading recorded series get them, and Grafana's variables
are replaced first: `$namespace` by the inputs' namespace, `$__rate_interval` by 5m.
"""

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_deploy import KUBERNETES_VERSION, RULES_FILE, tool

from models.config import PROJECT_DIR

DASHBOARD_DIR = PROJECT_DIR / "deploy" / "k8s" / "dashboard"
NAMESPACE = "prod"
VARIABLES = {"$namespace": NAMESPACE, "$__rate_interval": "5m"}
EVAL_TIME = "60m"  # the inputs' first hour: drift's window is full, the 6-hour ones hold an hour
LAST_APPLIED_MAX = 262_144  # bytes: `kubectl apply` keeps the object in an annotation of at most this


def generator() -> ModuleType:
    """deploy/k8s/dashboard/dashboard.py, loaded as a module (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("dashboard", DASHBOARD_DIR / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed() -> dict[str, Any]:
    """The committed ConfigMap."""
    configmap: dict[str, Any] = yaml.safe_load((DASHBOARD_DIR / "flight-delay-dashboard.yaml").read_text())
    return configmap


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' own panels included."""
    panels = [*board["panels"], *(inner for panel in board["panels"] for inner in panel.get("panels", []))]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    """An input series as scraped from pod a of the test's namespace."""
    text = ", ".join(f'{key}="{value}"' for key, value in {"pod": "flight-delay-a", **labels}.items())
    return {"series": f'{name}{{job="flight-delay", namespace="{NAMESPACE}", {text}}}', "values": values}


def inputs() -> list[dict[str, str]]:
    """A minute-by-minute hour of every series the dashboard reads, one model and one challenger:
    predictions, refusals and closed connections; the monitoring counts (airline drift, unknown values,
    outcomes); the champion-challenger counts."""
    ok, prediction = {"http_response_code": "200"}, {"endpoint": "/v1/prediction"}
    model, pair = {"model": "flight_delay:v1"}, {"champion": "flight_delay:v1", "challenger": "flight_delay:v2"}
    buckets = [("0.1", "540"), ("0.25", "570"), ("0.5", "600"), ("+Inf", "600")]
    per_bin = [("flights", "50"), ("delayed", "10"), ("probability_sum", "9")]
    return [
        series("bentoml_service_request_total", "0+600x60", **prediction, **ok),
        series("bentoml_service_request_total", "0+6x60", **prediction, http_response_code="503"),
        *(
            series("bentoml_service_request_duration_seconds_bucket", f"0+{count}x60", **prediction, **ok, le=le)
            for le, count in buckets
        ),
        series("guard_error_responses_total", "0+12x60", status="503"),
        series("guard_error_responses_total", "0+1x60", status="504"),
        series("connections_closed_total", "0+30x60", reason="idle"),
        series("flight_delay_input_flights_total", "0+120x60", **model, input="airline", value="A"),
        series("flight_delay_input_flights_total", "0+60x60", **model, input="airline", value="B"),
        *(
            series("flight_delay_reference_share", "0.5x60", **model, input="airline", value=value)
            for value in ("A", "B")
        ),
        series("flight_delay_unknown_values_total", "0+3x60", **model, input="airline"),
        series("flight_delay_probability_bin_flights_total", "0+180x60", **model, bin="5"),
        *(series(f"flight_delay_outcome_{name}_total", f"0+{count}x60", **model, bin="5") for name, count in per_bin),
        series("flight_delay_challenger_flights_total", "0+180x60", **pair),
        series("flight_delay_challenger_agreed_flights_total", "0+170x60", **pair),
        series("flight_delay_challenger_probability_gap_sum_total", "0+9x60", **pair),
        series("flight_delay_challenger_dropped_flights_total", "0+1x60", **pair),
        series("flight_delay_challenger_unknown_flights_total", "0+2x60", **pair),
        series("flight_delay_comparison_outcomes_total", "0+50x60", **pair),
        series("flight_delay_comparison_squared_error_total", "0+7.5x60", **pair, role="champion"),
        series("flight_delay_comparison_squared_error_total", "0+7.25x60", **pair, role="challenger"),
        series("flight_delay_comparison_brier_difference_squares_total", "0+0.125x60", **pair),
        *(
            series(f"flight_delay_comparison_bin_{name}_total", f"0+{count}x60", **pair, role=role, bin=bin_)
            for role, bin_ in (("champion", "5"), ("challenger", "12"))
            for name, count in per_bin
        ),
    ]


def promtool_test(queries: list[tuple[str, str]], path: Path) -> subprocess.CompletedProcess[str]:
    """Run each query (variables replaced) as a promtool case that expects at least one number."""
    cases = []
    for title, expr in queries:
        for variable, value in VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{title}: a Grafana variable the test does not replace: {expr}"
        cases.append(
            {"expr": f"group(({expr}) > -Inf)", "eval_time": EVAL_TIME, "exp_samples": [{"labels": "{}", "value": 1}]}
        )
    test = {
        "rule_files": [str(RULES_FILE)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "every panel query returns numbers",
                "interval": "1m",
                "input_series": inputs(),
                "promql_expr_test": cases,
            }
        ],
    }
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    return subprocess.run(
        [tool("promtool", "apt-get install -y prometheus"), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_configmap_is_the_generators_output() -> None:
    assert generator().configmap() == (DASHBOARD_DIR / "flight-delay-dashboard.yaml").read_text(), (
        "run .venv/bin/python deploy/k8s/dashboard/dashboard.py and commit its output"
    )


def test_configmap_is_found_by_grafanas_sidecar_and_applies() -> None:
    configmap = committed()
    kubernetes_validate.validate(configmap, KUBERNETES_VERSION, strict=True)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's default label
    assert list(configmap["data"]) == ["flight-delay.json"]
    assert len((DASHBOARD_DIR / "flight-delay-dashboard.yaml").read_bytes()) < LAST_APPLIED_MAX


def test_dashboard_has_unique_panel_ids_and_a_namespace_variable() -> None:
    board = json.loads(committed()["data"]["flight-delay.json"])
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    assert "namespace" in [variable["name"] for variable in board["templating"]["list"]]
    assert all('namespace="$namespace"' in expr for _title, expr in panel_queries(board))


def test_every_panel_query_returns_numbers_in_promtool(tmp_path: Path) -> None:
    queries = panel_queries(json.loads(committed()["data"]["flight-delay.json"]))
    assert len(queries) >= 20
    result = promtool_test(queries, tmp_path / "dashboard.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("right", "wrong"),
    [
        ("connections_closed_total", "connection_closed_total"),  # a misspelt metric
        ('namespace="$namespace"', 'namespace="$namespace", model="flight_delay:v9"'),  # a label it does not have
    ],
)
def test_a_query_that_returns_nothing_fails_the_promtool_check(tmp_path: Path, right: str, wrong: str) -> None:
    queries = panel_queries(json.loads(committed()["data"]["flight-delay.json"]))
    title, expr = next((title, expr) for title, expr in queries if right in expr)
    result = promtool_test([(title, expr.replace(right, wrong, 1))], tmp_path / "broken.test.yml")
    assert result.returncode != 0
