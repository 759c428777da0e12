"""The flight-delay Grafana dashboard, built with grafana-foundation-sdk and written beside this file as
the ConfigMap that the Grafana Helm chart's dashboard sidecar loads (it watches the label
grafana_dashboard: "1"; kube-prometheus-stack runs that sidecar):

    .venv/bin/python deploy/k8s/dashboard/dashboard.py      # writes flight-delay-dashboard.yaml
    kubectl -n GRAFANA_NAMESPACE apply -f deploy/k8s/dashboard/flight-delay-dashboard.yaml

Every panel reads the series a pod exports or the recording rules of
deploy/k8s/alerts/flight-delay.rules.yml; tests/test_dashboard.py runs each query through promtool and
checks that the committed ConfigMap is this program's output.
"""

import argparse
import json
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
)

CONFIGMAP = Path(__file__).with_name("flight-delay-dashboard.yaml")
JSON_KEY = "flight-delay.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
POD = 'job="flight-delay", namespace="$namespace"'  # the scrape's labels, as the rules select them
NAMESPACE = 'namespace="$namespace"'  # recorded series keep only the labels they are summed by
PREDICTIONS = f'{POD}, endpoint=~"/v1/prediction|/predict"'
PAIR = "{{challenger}} against {{champion}}"


def query(expr: str, legend: str) -> prometheus.Dataquery:
    """A PromQL target with its legend."""
    return prometheus.Dataquery().expr(expr).legend_format(legend)


def graph(
    title: str, description: str, unit: str, targets: list[prometheus.Dataquery], bound: float | None = None
) -> timeseries.Panel:
    """A time series panel; `bound`, when given, is drawn as a dashed red line (the alert's threshold or
    the comparison's margin)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(12)
        .height(8)
        .targets([target.ref_id(chr(ord("A") + index)) for index, target in enumerate(targets)])
    )
    if bound is not None:
        panel = panel.thresholds(
            builders.ThresholdsConfig()
            .mode(ThresholdsMode.ABSOLUTE)
            .steps([Threshold(value=None, color="green"), Threshold(value=bound, color="red")])
        ).thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED))
    return panel


def verdict() -> stat.Panel:
    """The recorded verdict of each champion and challenger pair, by name and colour."""
    names = {
        "-1": ("worse", "red"),
        "0": ("undecided", "text"),
        "1": ("non-inferior", "green"),
        "2": ("better", "blue"),
    }
    return (
        stat.Panel()
        .title("Verdict")
        .description(
            "The challenger against the champion on the last 6 hours' paired outcomes: better (Brier lower at "
            "95%, calibration within 0.02), non-inferior (within the margins), undecided (under 2,000 outcomes, "
            "or an interval across a margin), worse (beyond a margin)."
        )
        .datasource(DATASOURCE)
        .span(8)
        .height(8)
        .targets([query(f"champion_challenger:flight_delay_comparison_verdict:6h{{{NAMESPACE}}}", PAIR).ref_id("A")])
        .mappings(
            [ValueMap({value: ValueMappingResult(text=text, color=color) for value, (text, color) in names.items()})]
        )
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
    )


def traffic() -> list[Any]:
    """Requests, latency, refusals and closed connections, as the first four alerts see them."""
    return [
        graph(
            "Requests per second",
            "Answered by BentoML, by endpoint (the request layer's own refusals are in the next panels).",
            "reqps",
            [
                query(
                    f"sum by (endpoint) (rate(bentoml_service_request_total{{{POD}}}[$__rate_interval]))",
                    "{{endpoint}}",
                )
            ],
        ),
        graph(
            "Prediction latency",
            "Median and 99th percentile of both prediction routes; FlightDelayP99LatencyHigh's target is 250 ms.",
            "s",
            [
                query(
                    f"histogram_quantile({quantile}, sum by (le) "
                    f"(rate(bentoml_service_request_duration_seconds_bucket{{{PREDICTIONS}}}[$__rate_interval])))",
                    f"p{round(quantile * 100)}",
                )
                for quantile in (0.5, 0.99)
            ],
            bound=0.25,
        ),
        graph(
            "Shed (503) and timed out (504)",
            "Refused by the request layer (never in BentoML's counts) and by BentoML itself; "
            "FlightDelayHigh503Share pages above 5% of predictions.",
            "reqps",
            [
                query(
                    f"sum by (status) (rate(guard_error_responses_total"
                    f'{{{POD}, status=~"503|504"}}[$__rate_interval]))',
                    "request layer {{status}}",
                ),
                query(
                    f"sum by (http_response_code) (rate(bentoml_service_request_total"
                    f'{{{POD}, http_response_code=~"503|504"}}[$__rate_interval]))',
                    "BentoML {{http_response_code}}",
                ),
            ],
        ),
        graph(
            "Connections closed by the workers",
            "By reason: idle, request_deadline (408), send_deadline (an answer not read), unsent_bytes, "
            "evicted or refused (at the connection cap).",
            "cps",
            [query(f"sum by (reason) (rate(connections_closed_total{{{POD}}}[$__rate_interval]))", "{{reason}}")],
        ),
    ]


def quality() -> list[Any]:
    """The served models' inputs and outcomes, from the monitoring recording rules."""
    unknown = f"rate(flight_delay_unknown_values_total{{{POD}}}[1h])"
    scored = f"rate(flight_delay_probability_bin_flights_total{{{POD}}}[1h])"
    return [
        graph(
            "Input drift",
            "Jensen-Shannon distance of each input's last hour from the model's training data, judged from 100 "
            "flights per value; FlightDelayInputDrifted fires above 0.1 on airline, international and destination.",
            "none",
            [query(f"model_input:flight_delay_input_drift:js1h{{{NAMESPACE}}}", "{{input}} ({{model}})")],
            bound=0.1,
        ),
        graph(
            "Flights refused for an airline or city the model does not know",
            "Share of the last hour's flights, by input; FlightDelayUnknownValues fires above 1% "
            "(both inputs together).",
            "percentunit",
            [
                query(
                    f"sum by (model, input) ({unknown}) / on (model) group_left () "
                    f"(sum by (model) ({scored}) + sum by (model) ({unknown}))",
                    "{{input}} ({{model}})",
                )
            ],
            bound=0.01,
        ),
        graph(
            "Delay rate: expected against realized",
            "Over the last 6 hours' outcomes: the mean probability the model gave those flights and the share "
            "that left late; FlightDelayEstimateMissesOutcomes fires 0.03 apart.",
            "percentunit",
            [
                query(f"model:flight_delay_outcome_expected_delay_rate:ratio6h{{{NAMESPACE}}}", "expected {{model}}"),
                query(f"model:flight_delay_outcome_delay_rate:ratio6h{{{NAMESPACE}}}", "realized {{model}}"),
            ],
        ),
        graph(
            "Calibration error",
            "Over the last 6 hours' outcomes, ten equal-count bins; FlightDelayCalibrationDegraded fires above 0.05.",
            "none",
            [query(f"model:flight_delay_outcome_calibration_error:ratio6h{{{NAMESPACE}}}", "{{model}}")],
            bound=0.05,
        ),
    ]


def comparison() -> list[Any]:
    """The challenger against the champion, from the comparison recording rules."""

    def bounds(metric: str, point: str) -> list[prometheus.Dataquery]:
        return [
            query(f"champion_challenger:{metric}:{operation}{{{NAMESPACE}}}", f"{name} {PAIR}")
            for operation, name in ((point, "difference"), ("lower6h", "lower bound"), ("upper6h", "upper bound"))
        ]

    return [
        verdict(),
        graph(
            "Paired outcomes",
            "Outcomes of the last 6 hours scored by both models; no verdict under 2,000.",
            "none",
            [query(f"champion_challenger:flight_delay_comparison_outcomes:increase6h{{{NAMESPACE}}}", PAIR)],
            bound=2000,
        ).span(8),
        graph(
            "Agreement with the champion",
            "Of the champion's flights of the last 6 hours: the share given the same label by both, and the mean "
            "absolute difference of their probabilities.",
            "percentunit",
            [
                query(
                    f"champion_challenger:flight_delay_challenger_agreement:ratio6h{{{NAMESPACE}}}",
                    f"same label {PAIR}",
                ),
                query(
                    f"champion_challenger:flight_delay_challenger_probability_gap:mean6h{{{NAMESPACE}}}",
                    f"probability gap {PAIR}",
                ),
            ],
        ).span(8),
        graph(
            "Brier score difference, challenger minus champion",
            "With its one-sided 95% bounds; below 0 the challenger is better, a lower bound above the 0.003 "
            "margin makes it worse.",
            "none",
            bounds("flight_delay_comparison_brier_difference", "mean6h"),
            bound=0.003,
        ),
        graph(
            "Calibration error difference, challenger minus champion",
            "With its one-sided 95% bounds (the two models' variances added); a lower bound above the 0.02 "
            "margin makes it worse.",
            "none",
            bounds("flight_delay_comparison_calibration_error_difference", "ratio6h"),
            bound=0.02,
        ),
        graph(
            "Flights the challenger dropped or could not score",
            "Shares of the champion's flights of the last 6 hours handed to it: dropped because it fell behind "
            "(FlightDelayChallengerDropping above 1%), and of an airline or city it does not know.",
            "percentunit",
            [
                query(f"champion_challenger:flight_delay_challenger_dropped:ratio6h{{{NAMESPACE}}}", f"dropped {PAIR}"),
                query(f"champion_challenger:flight_delay_challenger_unknown:ratio6h{{{NAMESPACE}}}", f"unknown {PAIR}"),
            ],
            bound=0.01,
        ),
    ]


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    board = (
        builders.Dashboard("flight-delay")
        .uid("flight-delay")
        .description(
            "The flight-delay API: traffic, the served models' inputs and outcomes, champion against challenger"
        )
        .tags(["flight-delay"])
        .refresh("1m")
        .time("now-6h", "now")
        .with_variable(builders.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            builders.QueryVariable("namespace")
            .label("Namespace")
            .datasource(DATASOURCE)
            .query('label_values(bentoml_service_request_total{job="flight-delay"}, namespace)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
    )
    ids = iter(range(1, 100))  # Grafana keys a panel's links and state by its id
    for title, panels in (
        ("Traffic", traffic()),
        ("Inputs and outcomes", quality()),
        ("Champion against challenger", comparison()),
    ):
        board = board.with_row(builders.Row(title).id(next(ids)))
        for panel in panels:
            board = board.with_panel(panel.id(next(ids)))
    model: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return model


def configmap() -> str:
    """The ConfigMap holding the dashboard's JSON, as committed beside this file."""
    text = json.dumps(build(), indent=2, sort_keys=True)
    return (
        "# Generated by dashboard.py beside it: edit that and run it (tests/test_dashboard.py checks they agree).\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: flight-delay-dashboard\n"
        "  labels:\n"
        '    grafana_dashboard: "1"\n'
        "    app.kubernetes.io/name: flight-delay\n"
        "    app.kubernetes.io/component: dashboard\n"
        "    app.kubernetes.io/part-of: flight-delay\n"
        "data:\n"
        f"  {JSON_KEY}: |\n" + "".join(f"    {line}\n" for line in text.splitlines())
    )


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # --help prints, writes nothing
    CONFIGMAP.write_text(configmap())
    print(f"wrote {CONFIGMAP}")
